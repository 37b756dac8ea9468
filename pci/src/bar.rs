//! Shadow Base Address Registers of a passed-through function: the guest sizes and places
//! BARs in this shadow; the device's real BARs (host addresses) are never touched.

/// Config-space register index of BAR 0.
pub const BAR0_REG: usize = 4;
pub const NUM_BARS: usize = 6;
/// Expansion ROM base register.
pub const ROM_REG: usize = 12;

const BAR_IO: u32 = 0x1;
const BAR_MEM_TYPE_64: u32 = 0x4;
const BAR_PREFETCH: u32 = 0x8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
    Mem64,
}

/// One implemented BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarInfo {
    pub index: usize,
    pub size: u64,
    pub kind: BarKind,
    pub prefetchable: bool,
}

impl BarInfo {
    /// Decodes a device's original BAR register value (type bits) and the region size.
    pub fn from_register(index: usize, register: u32, size: u64) -> Self {
        let kind = if register & BAR_IO != 0 {
            BarKind::Io
        } else if register & 0x6 == BAR_MEM_TYPE_64 {
            BarKind::Mem64
        } else {
            BarKind::Mem32
        };
        Self { index, size, kind, prefetchable: kind != BarKind::Io && register & BAR_PREFETCH != 0 }
    }

    fn flags(&self) -> u32 {
        match self.kind {
            BarKind::Io => BAR_IO,
            BarKind::Mem32 => u32::from(self.prefetchable) * BAR_PREFETCH,
            BarKind::Mem64 => BAR_MEM_TYPE_64 | (u32::from(self.prefetchable) * BAR_PREFETCH),
        }
    }
}

/// The guest's view of the six BAR registers.
#[derive(Debug, Clone, Default)]
pub struct BarShadow {
    bars: [Option<BarInfo>; NUM_BARS],
    /// Guest-programmed base address per BAR (64-bit BARs keep it in their first slot).
    addresses: [u64; NUM_BARS],
}

impl BarShadow {
    /// `bars`: the implemented BARs, with their initial guest addresses.
    pub fn new(bars: &[(BarInfo, u64)]) -> Self {
        let mut s = Self::default();
        for (info, address) in bars {
            if info.index < NUM_BARS && info.size.is_power_of_two() {
                s.bars[info.index] = Some(*info);
                s.addresses[info.index] = *address & !(info.size - 1);
            }
        }
        s
    }

    pub fn bar(&self, index: usize) -> Option<BarInfo> {
        self.bars.get(index).copied().flatten()
    }

    pub fn bars(&self) -> impl Iterator<Item = BarInfo> + '_ {
        self.bars.iter().flatten().copied()
    }

    /// Current guest address of BAR `index`.
    pub fn address(&self, index: usize) -> Option<u64> {
        self.bar(index).map(|_| self.addresses[index])
    }

    /// Whether register `reg` is a BAR register (0..6 → config registers 4..9).
    pub fn is_bar_register(reg: usize) -> bool {
        (BAR0_REG..BAR0_REG + NUM_BARS).contains(&reg)
    }

    /// The BAR that owns register slot `slot` (0..6): itself, or the 64-bit BAR below it.
    fn owner(&self, slot: usize) -> Option<(BarInfo, bool)> {
        if let Some(b) = self.bar(slot) {
            return Some((b, false));
        }
        let below = self.bar(slot.checked_sub(1)?)?;
        (below.kind == BarKind::Mem64).then_some((below, true))
    }

    /// Register value as the guest reads it.
    pub fn read(&self, reg: usize) -> u32 {
        let slot = reg.wrapping_sub(BAR0_REG);
        match self.owner(slot) {
            None => 0,
            Some((bar, false)) => {
                let addr = self.addresses[bar.index];
                match bar.kind {
                    BarKind::Io => (addr as u32 & !0x3) | bar.flags(),
                    _ => (addr as u32 & !0xf) | bar.flags(),
                }
            }
            Some((bar, true)) => (self.addresses[bar.index] >> 32) as u32,
        }
    }

    /// Applies a full-dword guest write. Returns the BAR whose address changed, with its new
    /// address. Sizing writes (all ones) land here too: the size mask keeps only the bits the
    /// BAR decodes, so reading back gives the size.
    pub fn write(&mut self, reg: usize, value: u32) -> Option<(BarInfo, u64)> {
        let slot = reg.wrapping_sub(BAR0_REG);
        let (bar, high) = self.owner(slot)?;
        let mask = !(bar.size - 1);
        let old = self.addresses[bar.index];
        let new = if high {
            ((u64::from(value) << 32) | (old & 0xffff_ffff)) & mask
        } else {
            let low = u64::from(value & if bar.kind == BarKind::Io { !0x3 } else { !0xf });
            let high_part = if bar.kind == BarKind::Mem64 { old & 0xffff_ffff_0000_0000 } else { 0 };
            (high_part | low) & mask & if bar.kind == BarKind::Mem64 { u64::MAX } else { 0xffff_ffff }
        };
        self.addresses[bar.index] = new;
        (new != old).then_some((bar, new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shadow() -> BarShadow {
        BarShadow::new(&[
            (BarInfo::from_register(0, 0x0000_0000, 0x4000), 0xc000_0000),
            (BarInfo::from_register(2, 0x0000_000c, 0x10_0000), 0x1_0000_0000),
            (BarInfo::from_register(5, 0x0000_0001, 0x20), 0x1000),
        ])
    }

    #[test]
    fn decode_kinds() {
        assert_eq!(BarInfo::from_register(0, 0x0, 16).kind, BarKind::Mem32);
        let b = BarInfo::from_register(0, 0xc, 16);
        assert_eq!((b.kind, b.prefetchable), (BarKind::Mem64, true));
        let io = BarInfo::from_register(0, 0x9, 16);
        assert_eq!((io.kind, io.prefetchable), (BarKind::Io, false));
    }

    #[test]
    fn reads_show_address_and_type_bits() {
        let s = shadow();
        assert_eq!(s.read(4), 0xc000_0000);
        assert_eq!(s.read(5), 0, "unimplemented BAR reads 0");
        assert_eq!(s.read(6), 0x0000_000c);
        assert_eq!(s.read(7), 0x1, "upper half of the 64-bit BAR");
        assert_eq!(s.read(9), 0x1001);
        assert_eq!(s.address(2), Some(0x1_0000_0000));
        assert!(BarShadow::is_bar_register(9) && !BarShadow::is_bar_register(10));
    }

    #[test]
    fn sizing_then_restore() {
        let mut s = shadow();
        assert!(s.write(4, 0xffff_ffff).is_some());
        assert_eq!(s.read(4), 0xffff_c000, "32-bit BAR size 16 KiB");
        assert_eq!(s.write(4, 0xc000_0000).map(|(_, a)| a), Some(0xc000_0000));
        // 64-bit: both halves.
        s.write(6, 0xffff_ffff);
        s.write(7, 0xffff_ffff);
        assert_eq!(s.read(6), 0xfff0_000c);
        assert_eq!(s.read(7), 0xffff_ffff);
        s.write(6, 0x0000_000c);
        s.write(7, 0x1);
        assert_eq!(s.address(2), Some(0x1_0000_0000));
        // I/O BAR.
        s.write(9, 0xffff_ffff);
        assert_eq!(s.read(9), 0xffff_ffe1);
        // Unimplemented slot: ignored.
        assert_eq!(s.write(5, 0xffff_ffff), None);
        assert_eq!(s.read(5), 0);
    }

    #[test]
    fn relocation_reports_the_move_and_alignment_is_forced() {
        let mut s = shadow();
        let (bar, addr) = s.write(4, 0xd000_1234).unwrap();
        assert_eq!(bar.index, 0);
        assert_eq!(addr, 0xd000_0000);
        assert_eq!(s.write(4, 0xd000_0000), None, "same address: no move");
        let (bar, addr) = s.write(7, 0x2).unwrap();
        assert_eq!((bar.index, addr), (2, 0x2_0000_0000));
    }
}
