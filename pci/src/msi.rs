//! MSI emulation: the capability registers (control, address, data, per-vector mask) as pure
//! logic reporting which vectors must be routed or masked — the same contract as
//! [`crate::msix`].

use crate::msix::{MsiMessage, VectorChange};

const CONTROL_ENABLE: u16 = 1 << 0;
const CONTROL_MMC_SHIFT: u16 = 1;
const CONTROL_MME_SHIFT: u16 = 4;
const CONTROL_64BIT: u16 = 1 << 7;
const CONTROL_PER_VECTOR_MASK: u16 = 1 << 8;

/// Shape of an MSI capability, from its Message Control as the device reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiCapability {
    /// Byte offset of the capability in config space.
    pub offset: usize,
    pub is_64bit: bool,
    pub per_vector_mask: bool,
    /// Vectors the device can do (Multiple Message Capable).
    pub max_vectors: u8,
}

impl MsiCapability {
    pub fn new(offset: usize, control: u16) -> Self {
        Self {
            offset,
            is_64bit: control & CONTROL_64BIT != 0,
            per_vector_mask: control & CONTROL_PER_VECTOR_MASK != 0,
            max_vectors: 1 << ((control >> CONTROL_MMC_SHIFT) & 0x7).min(5),
        }
    }

    /// Dword index (within the capability) of the Message Data register.
    fn data_dword(&self) -> usize {
        if self.is_64bit {
            3
        } else {
            2
        }
    }

    fn mask_dword(&self) -> Option<usize> {
        self.per_vector_mask.then(|| self.data_dword() + 1)
    }

    /// Dwords the capability spans.
    pub fn dwords(&self) -> usize {
        self.data_dword() + 1 + if self.per_vector_mask { 2 } else { 0 }
    }
}

#[derive(Debug, Clone)]
pub struct MsiState {
    cap: MsiCapability,
    control: u16,
    address: u64,
    data: u16,
    mask: u32,
}

impl MsiState {
    pub fn new(cap: MsiCapability, control_from_device: u16) -> Self {
        // Keep the read-only capability bits; enable and MME start at 0.
        let control = control_from_device & !(CONTROL_ENABLE | (0x7 << CONTROL_MME_SHIFT));
        Self { cap, control, address: 0, data: 0, mask: 0 }
    }

    pub fn capability(&self) -> MsiCapability {
        self.cap
    }

    pub fn enabled(&self) -> bool {
        self.control & CONTROL_ENABLE != 0
    }

    /// Vectors the guest enabled (Multiple Message Enable, capped by the device).
    pub fn vectors(&self) -> u8 {
        let mme = ((self.control >> CONTROL_MME_SHIFT) & 0x7).min(5);
        (1u8 << mme).min(self.cap.max_vectors)
    }

    fn masked(&self, v: u8) -> bool {
        !self.enabled() || v >= self.vectors() || (self.cap.per_vector_mask && self.mask & (1 << v) != 0)
    }

    fn message(&self, v: u8) -> MsiMessage {
        // With multiple messages the vector number goes into the low data bits.
        MsiMessage { address: self.address, data: u32::from(self.data | u16::from(v)) }
    }

    fn snapshot(&self) -> Vec<(bool, MsiMessage)> {
        (0..self.cap.max_vectors).map(|v| (self.masked(v), self.message(v))).collect()
    }

    /// Dword `index` of the capability as the guest reads it (index 0 holds id/next in the
    /// low half: the caller merges those from the device).
    pub fn read(&self, index: usize) -> u32 {
        match index {
            0 => u32::from(self.control) << 16,
            1 => self.address as u32,
            2 if self.cap.is_64bit => (self.address >> 32) as u32,
            i if i == self.cap.data_dword() => u32::from(self.data),
            i if Some(i) == self.cap.mask_dword() => self.mask,
            _ => 0, // pending bits: we never hold MSI interrupts pending in the register
        }
    }

    /// Applies a guest write to dword `index` (`value` already merged to a full dword);
    /// returns the routing changes.
    pub fn write(&mut self, index: usize, value: u32) -> Vec<VectorChange> {
        let before = self.snapshot();
        match index {
            0 => {
                let writable = CONTROL_ENABLE | (0x7 << CONTROL_MME_SHIFT);
                let new = (value >> 16) as u16;
                self.control = (self.control & !writable) | (new & writable);
            }
            1 => self.address = (self.address & !0xffff_ffff) | u64::from(value & !0x3),
            2 if self.cap.is_64bit => self.address = (self.address & 0xffff_ffff) | (u64::from(value) << 32),
            i if i == self.cap.data_dword() => self.data = value as u16,
            i if Some(i) == self.cap.mask_dword() => self.mask = value,
            _ => {}
        }
        let after = self.snapshot();
        before
            .into_iter()
            .zip(after)
            .enumerate()
            .filter_map(|(v, (b, a))| match (b.0, a.0) {
                (_, false) if b != a => Some(VectorChange::Route { vector: v as u16, message: a.1 }),
                (false, true) => Some(VectorChange::Mask { vector: v as u16 }),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap64() -> MsiCapability {
        // 64-bit, per-vector masking, 4 vectors capable.
        MsiCapability::new(0x50, CONTROL_64BIT | CONTROL_PER_VECTOR_MASK | (2 << CONTROL_MMC_SHIFT))
    }

    #[test]
    fn capability_shapes() {
        let c = cap64();
        assert_eq!((c.is_64bit, c.per_vector_mask, c.max_vectors, c.dwords()), (true, true, 4, 6));
        let c32 = MsiCapability::new(0x50, 0);
        assert_eq!((c32.is_64bit, c32.max_vectors, c32.dwords()), (false, 1, 3));
    }

    #[test]
    fn enable_routes_each_enabled_vector_with_its_data() {
        let mut s = MsiState::new(cap64(), CONTROL_64BIT | CONTROL_PER_VECTOR_MASK | (2 << CONTROL_MMC_SHIFT));
        assert!(s.write(1, 0xfee0_1000).is_empty());
        s.write(2, 0);
        s.write(3, 0x4040);
        // Enable with MME = 2 vectors.
        let changes = s.write(0, u32::from(CONTROL_ENABLE | (1 << CONTROL_MME_SHIFT)) << 16);
        assert_eq!(
            changes,
            vec![
                VectorChange::Route { vector: 0, message: MsiMessage { address: 0xfee0_1000, data: 0x4040 } },
                VectorChange::Route { vector: 1, message: MsiMessage { address: 0xfee0_1000, data: 0x4041 } },
            ]
        );
        assert_eq!(s.vectors(), 2);
        assert_eq!(s.read(0) >> 16 & 1, 1);
        assert_eq!(s.read(3), 0x4040);
        // Mask vector 1, then disable.
        assert_eq!(s.write(4, 0b10), vec![VectorChange::Mask { vector: 1 }]);
        assert_eq!(s.read(4), 0b10);
        assert_eq!(s.write(0, 0), vec![VectorChange::Mask { vector: 0 }]);
    }

    #[test]
    fn read_only_bits_stay_and_32bit_layout() {
        let c = MsiCapability::new(0x50, 0);
        let mut s = MsiState::new(c, 0);
        s.write(0, 0xffff_0000);
        assert_eq!(s.read(0) >> 16, u32::from(CONTROL_ENABLE | (7 << CONTROL_MME_SHIFT)));
        assert_eq!(s.vectors(), 1, "MME capped by the device");
        s.write(2, 0x0041);
        assert_eq!(s.read(2), 0x41, "data is dword 2 without 64-bit addressing");
    }
}
