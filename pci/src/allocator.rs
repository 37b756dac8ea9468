//! BAR address allocation in the 32-bit and 64-bit PCI MMIO windows.

use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};

#[derive(Debug, thiserror::Error)]
pub enum BarAllocError {
    #[error("invalid PCI window: {0}")]
    InvalidWindow(vm_allocator::Error),
    #[error("BAR size {0:#x} is not a power of two of at least 16 bytes")]
    InvalidSize(u64),
    #[error("no room for a {size:#x}-byte BAR in the {region:?} window: {source}")]
    Exhausted { size: u64, region: BarRegion, source: vm_allocator::Error },
    #[error("no 64-bit PCI window")]
    No64BitWindow,
    #[error("BAR range {0:#x}..={1:#x} was not allocated")]
    NotAllocated(u64, u64),
}

/// Which window a BAR lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarRegion {
    Mmio32,
    Mmio64,
}

pub struct BarAllocator {
    mmio32: AddressAllocator,
    mmio64: Option<AddressAllocator>,
}

impl BarAllocator {
    pub fn new(mmio32: (u64, u64), mmio64: Option<(u64, u64)>) -> Result<Self, BarAllocError> {
        let mmio32 = AddressAllocator::new(mmio32.0, mmio32.1).map_err(BarAllocError::InvalidWindow)?;
        let mmio64 = mmio64
            .map(|(base, size)| AddressAllocator::new(base, size))
            .transpose()
            .map_err(BarAllocError::InvalidWindow)?;
        Ok(Self { mmio32, mmio64 })
    }

    /// Allocates a naturally aligned BAR of `size` bytes.
    pub fn allocate(&mut self, size: u64, region: BarRegion) -> Result<u64, BarAllocError> {
        if size < 16 || !size.is_power_of_two() {
            return Err(BarAllocError::InvalidSize(size));
        }
        let alloc = match region {
            BarRegion::Mmio32 => &mut self.mmio32,
            BarRegion::Mmio64 => self.mmio64.as_mut().ok_or(BarAllocError::No64BitWindow)?,
        };
        // Small BARs still get a page of their own so they can be mapped separately.
        let align = size.max(4096);
        alloc
            .allocate(size, align, AllocPolicy::FirstMatch)
            .map(|r| r.start())
            .map_err(|source| BarAllocError::Exhausted { size, region, source })
    }

    pub fn free(&mut self, base: u64, size: u64, region: BarRegion) -> Result<(), BarAllocError> {
        let range = RangeInclusive::new(base, base + size - 1)
            .map_err(|_| BarAllocError::NotAllocated(base, base + size - 1))?;
        let alloc = match region {
            BarRegion::Mmio32 => &mut self.mmio32,
            BarRegion::Mmio64 => self.mmio64.as_mut().ok_or(BarAllocError::No64BitWindow)?,
        };
        alloc.free(&range).map_err(|_| BarAllocError::NotAllocated(base, base + size - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_aligned_and_distinct() {
        let mut a = BarAllocator::new((0xc000_0000, 0x2000_0000), Some((1 << 36, 1 << 36))).unwrap();
        let b1 = a.allocate(0x4000, BarRegion::Mmio32).unwrap();
        let b2 = a.allocate(0x10_0000, BarRegion::Mmio32).unwrap();
        let b3 = a.allocate(0x4000, BarRegion::Mmio32).unwrap();
        assert_eq!(b1 % 0x4000, 0);
        assert_eq!(b2 % 0x10_0000, 0);
        assert!(b3 >= b1 + 0x4000 || b3 + 0x4000 <= b1);
        assert!(b2 >= 0xc000_0000 && b2 + 0x10_0000 <= 0xe000_0000);
        let b64 = a.allocate(1 << 30, BarRegion::Mmio64).unwrap();
        assert!(b64 >= 1 << 36);
        a.free(b2, 0x10_0000, BarRegion::Mmio32).unwrap();
        assert_eq!(a.allocate(0x10_0000, BarRegion::Mmio32).unwrap(), b2);
        assert!(a.free(0x1000, 0x1000, BarRegion::Mmio32).is_err());
    }

    #[test]
    fn bad_sizes_and_exhaustion() {
        let mut a = BarAllocator::new((0xc000_0000, 0x10_0000), None).unwrap();
        assert!(matches!(a.allocate(0x3000, BarRegion::Mmio32), Err(BarAllocError::InvalidSize(_))));
        assert!(matches!(a.allocate(8, BarRegion::Mmio32), Err(BarAllocError::InvalidSize(_))));
        assert!(matches!(a.allocate(0x1000, BarRegion::Mmio64), Err(BarAllocError::No64BitWindow)));
        assert!(a.allocate(0x10_0000, BarRegion::Mmio32).is_ok());
        assert!(matches!(a.allocate(0x1000, BarRegion::Mmio32), Err(BarAllocError::Exhausted { .. })));
    }
}
