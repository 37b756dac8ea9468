//! MSI-X emulation: the capability's control bits, the vector table and the pending-bit array.
//!
//! The guest programs vectors in an emulated table; the VMM turns each *effectively unmasked*
//! vector (MSI-X enabled, function not masked, vector not masked) into a KVM MSI route with an
//! irqfd, and detaches the irqfd of masked vectors so their interrupts wait in the eventfd
//! (KVM delivers a pending eventfd when the irqfd is attached again). This module is pure
//! logic: it reports which vectors must be routed or masked after each guest write.

/// Bytes per table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Largest table the capability can describe.
pub const MSIX_MAX_VECTORS: u16 = 2048;

const ENTRY_ADDR_LO: u64 = 0;
const ENTRY_ADDR_HI: u64 = 4;
const ENTRY_DATA: u64 = 8;
const ENTRY_CONTROL: u64 = 12;
const VECTOR_MASKED: u32 = 1;

/// Message Control bits of the capability.
pub const MSIX_CONTROL_ENABLE: u16 = 1 << 15;
pub const MSIX_CONTROL_FUNCTION_MASK: u16 = 1 << 14;
pub const MSIX_CONTROL_TABLE_SIZE_MASK: u16 = 0x7ff;

/// The MSI message a vector sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MsixEntry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

impl Default for MsixEntry {
    fn default() -> Self {
        // Vectors come out of reset masked.
        Self { addr_lo: 0, addr_hi: 0, data: 0, control: VECTOR_MASKED }
    }
}

impl MsixEntry {
    fn message(&self) -> MsiMessage {
        MsiMessage { address: (u64::from(self.addr_hi) << 32) | u64::from(self.addr_lo), data: self.data }
    }
}

/// What the VMM must do for one vector after a guest access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorChange {
    /// Route `vector` to `message` and attach its irqfd (it is now effectively unmasked).
    Route { vector: u16, message: MsiMessage },
    /// Detach `vector`'s irqfd (it is now effectively masked).
    Mask { vector: u16 },
}

/// Where the table and the PBA live, from the capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLayout {
    pub vectors: u16,
    pub table_bar: u8,
    pub table_offset: u32,
    pub pba_bar: u8,
    pub pba_offset: u32,
}

impl MsixLayout {
    /// Decodes the capability's Message Control, Table and PBA dwords.
    pub fn from_capability(control: u16, table: u32, pba: u32) -> Self {
        Self {
            vectors: (control & MSIX_CONTROL_TABLE_SIZE_MASK) + 1,
            table_bar: (table & 0x7) as u8,
            table_offset: table & !0x7,
            pba_bar: (pba & 0x7) as u8,
            pba_offset: pba & !0x7,
        }
    }

    pub fn table_size(&self) -> u64 {
        u64::from(self.vectors) * MSIX_ENTRY_SIZE
    }

    /// The PBA has one bit per vector, in qwords.
    pub fn pba_size(&self) -> u64 {
        u64::from(self.vectors).div_ceil(64) * 8
    }
}

#[derive(Debug, Clone)]
pub struct MsixState {
    entries: Vec<MsixEntry>,
    pending: Vec<u64>,
    enabled: bool,
    function_mask: bool,
}

/// Splits an access into (first dword index, dword count, byte offset) when it is a naturally
/// aligned 4- or 8-byte access; MSI-X allows nothing else.
fn dword_access(offset: u64, len: usize) -> Option<(u64, usize)> {
    match len {
        4 if offset.is_multiple_of(4) => Some((offset / 4, 1)),
        8 if offset.is_multiple_of(8) => Some((offset / 4, 2)),
        _ => None,
    }
}

impl MsixState {
    pub fn new(vectors: u16) -> Self {
        let n = usize::from(vectors.clamp(1, MSIX_MAX_VECTORS));
        Self {
            entries: vec![MsixEntry::default(); n],
            pending: vec![0; n.div_ceil(64)],
            enabled: false,
            function_mask: false,
        }
    }

    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn function_masked(&self) -> bool {
        self.function_mask
    }

    fn effectively_masked(&self, vector: usize) -> bool {
        !self.enabled || self.function_mask || self.entries[vector].control & VECTOR_MASKED != 0
    }

    pub fn message(&self, vector: u16) -> Option<MsiMessage> {
        self.entries.get(usize::from(vector)).map(MsixEntry::message)
    }

    /// Vectors whose interrupts must reach the guest right now.
    pub fn unmasked_vectors(&self) -> Vec<u16> {
        (0..self.entries.len()).filter(|&v| !self.effectively_masked(v)).map(|v| v as u16).collect()
    }

    fn snapshot(&self, vector: usize) -> (bool, MsiMessage) {
        (self.effectively_masked(vector), self.entries[vector].message())
    }

    fn change(&self, vector: usize, before: (bool, MsiMessage)) -> Option<VectorChange> {
        let after = self.snapshot(vector);
        let vector16 = vector as u16;
        match (before.0, after.0) {
            (_, false) if before != after => Some(VectorChange::Route { vector: vector16, message: after.1 }),
            (false, true) => Some(VectorChange::Mask { vector: vector16 }),
            _ => None,
        }
    }

    fn dword(&self, index: u64) -> u32 {
        let (vector, field) = ((index / 4) as usize, (index % 4) * 4);
        match self.entries.get(vector) {
            None => 0,
            Some(e) => match field {
                ENTRY_ADDR_LO => e.addr_lo,
                ENTRY_ADDR_HI => e.addr_hi,
                ENTRY_DATA => e.data,
                field => {
                    debug_assert_eq!(field, ENTRY_CONTROL);
                    e.control
                }
            },
        }
    }

    /// Guest read of the vector table.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some((first, count)) = dword_access(offset, data.len()) else {
            return;
        };
        for i in 0..count {
            data[i * 4..i * 4 + 4].copy_from_slice(&self.dword(first + i as u64).to_le_bytes());
        }
    }

    /// Guest write to the vector table; returns the vectors whose routing changed.
    pub fn table_write(&mut self, offset: u64, data: &[u8]) -> Vec<VectorChange> {
        let Some((first, count)) = dword_access(offset, data.len()) else {
            return vec![];
        };
        let mut changes = Vec::new();
        for i in 0..count {
            let index = first + i as u64;
            let vector = (index / 4) as usize;
            if vector >= self.entries.len() {
                continue;
            }
            let value = u32::from_le_bytes([data[i * 4], data[i * 4 + 1], data[i * 4 + 2], data[i * 4 + 3]]);
            let before = self.snapshot(vector);
            let entry = &mut self.entries[vector];
            match (index % 4) * 4 {
                ENTRY_ADDR_LO => entry.addr_lo = value & !0x3, // dword aligned
                ENTRY_ADDR_HI => entry.addr_hi = value,
                ENTRY_DATA => entry.data = value,
                field => {
                    debug_assert_eq!(field, ENTRY_CONTROL);
                    entry.control = value & VECTOR_MASKED; // other bits are reserved
                }
            }
            if let Some(c) = self.change(vector, before) {
                changes.push(c);
            }
        }
        changes
    }

    /// Guest read of the PBA (writes to it are ignored).
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some((first, count)) = dword_access(offset, data.len()) else {
            return;
        };
        for i in 0..count {
            let dword_index = (first + i as u64) as usize;
            let qword = self.pending.get(dword_index / 2).copied().unwrap_or(0);
            let value = if dword_index.is_multiple_of(2) { qword as u32 } else { (qword >> 32) as u32 };
            data[i * 4..i * 4 + 4].copy_from_slice(&value.to_le_bytes());
        }
    }

    pub fn set_pending(&mut self, vector: u16, pending: bool) {
        let v = usize::from(vector);
        if let Some(q) = self.pending.get_mut(v / 64) {
            if pending {
                *q |= 1 << (v % 64);
            } else {
                *q &= !(1 << (v % 64));
            }
        }
    }

    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pending.get(v / 64).is_some_and(|q| q & (1 << (v % 64)) != 0)
    }

    /// Guest write of the capability's Message Control; returns the routing changes.
    pub fn set_control(&mut self, control: u16) -> Vec<VectorChange> {
        let before: Vec<_> = (0..self.entries.len()).map(|v| self.snapshot(v)).collect();
        self.enabled = control & MSIX_CONTROL_ENABLE != 0;
        self.function_mask = control & MSIX_CONTROL_FUNCTION_MASK != 0;
        before.into_iter().enumerate().filter_map(|(v, b)| self.change(v, b)).collect()
    }

    /// The Message Control bits this state implies (table size from `vectors`).
    pub fn control(&self) -> u16 {
        let mut c = self.vectors() - 1;
        if self.enabled {
            c |= MSIX_CONTROL_ENABLE;
        }
        if self.function_mask {
            c |= MSIX_CONTROL_FUNCTION_MASK;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write32(s: &mut MsixState, offset: u64, v: u32) -> Vec<VectorChange> {
        s.table_write(offset, &v.to_le_bytes())
    }

    fn read32(s: &MsixState, offset: u64) -> u32 {
        let mut d = [0u8; 4];
        s.table_read(offset, &mut d);
        u32::from_le_bytes(d)
    }

    fn program(s: &mut MsixState, vector: u64, addr: u64, data: u32) {
        let base = vector * MSIX_ENTRY_SIZE;
        write32(s, base, addr as u32);
        write32(s, base + 4, (addr >> 32) as u32);
        write32(s, base + 8, data);
    }

    #[test]
    fn layout_from_capability() {
        let l = MsixLayout::from_capability(0x0002, 0x0000_3003, 0x0000_2003);
        assert_eq!(l, MsixLayout { vectors: 3, table_bar: 3, table_offset: 0x3000, pba_bar: 3, pba_offset: 0x2000 });
        assert_eq!(l.table_size(), 48);
        assert_eq!(l.pba_size(), 8);
        assert_eq!(MsixLayout::from_capability(0x07ff, 0, 0).pba_size(), 256);
    }

    #[test]
    fn vectors_start_masked_and_read_back() {
        let mut s = MsixState::new(3);
        assert_eq!(read32(&s, 12), 1);
        assert_eq!(read32(&s, 2 * 16 + 12), 1);
        program(&mut s, 1, 0xfee0_1000, 0x4041);
        assert_eq!(read32(&s, 16), 0xfee0_1000);
        assert_eq!(read32(&s, 20), 0);
        assert_eq!(read32(&s, 24), 0x4041);
        let mut q = [0u8; 8];
        s.table_read(16, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0xfee0_1000);
        // Out of table, unaligned or odd sizes: all ones, writes dropped.
        assert_eq!(read32(&s, 3 * 16), 0);
        let mut b = [0u8; 2];
        s.table_read(16, &mut b);
        assert_eq!(b, [0xff, 0xff]);
        assert!(s.table_write(17, &[1, 2, 3, 4]).is_empty());
        assert_eq!(read32(&s, 16), 0xfee0_1000);
    }

    #[test]
    fn nothing_routes_until_enabled_and_unmasked() {
        let mut s = MsixState::new(3);
        program(&mut s, 0, 0xfee0_0000, 0x30);
        assert!(write32(&mut s, 12, 0).is_empty(), "MSI-X still disabled");
        let changes = s.set_control(MSIX_CONTROL_ENABLE);
        assert_eq!(
            changes,
            vec![VectorChange::Route { vector: 0, message: MsiMessage { address: 0xfee0_0000, data: 0x30 } }]
        );
        assert_eq!(s.unmasked_vectors(), vec![0]);
        // Function mask masks everything that was live, and unmasking restores it.
        assert_eq!(
            s.set_control(MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK),
            vec![VectorChange::Mask { vector: 0 }]
        );
        assert_eq!(s.control() & MSIX_CONTROL_FUNCTION_MASK, MSIX_CONTROL_FUNCTION_MASK);
        assert_eq!(s.set_control(MSIX_CONTROL_ENABLE).len(), 1);
        assert_eq!(s.set_control(0), vec![VectorChange::Mask { vector: 0 }]);
        assert_eq!(s.control(), 2);
    }

    #[test]
    fn mask_unmask_and_reprogramming_a_live_vector() {
        let mut s = MsixState::new(3);
        s.set_control(MSIX_CONTROL_ENABLE);
        program(&mut s, 2, 0xfee0_0000, 0x41);
        assert_eq!(write32(&mut s, 2 * 16 + 12, 0).len(), 1);
        // Same value again: no change.
        assert!(write32(&mut s, 2 * 16 + 12, 0).is_empty());
        // New data while unmasked: re-route.
        assert_eq!(
            write32(&mut s, 2 * 16 + 8, 0x42),
            vec![VectorChange::Route { vector: 2, message: MsiMessage { address: 0xfee0_0000, data: 0x42 } }]
        );
        // Reserved control bits are ignored; mask bit masks.
        assert_eq!(write32(&mut s, 2 * 16 + 12, 0xffff_fffe), vec![]);
        assert_eq!(read32(&s, 2 * 16 + 12), 0);
        assert_eq!(write32(&mut s, 2 * 16 + 12, 1), vec![VectorChange::Mask { vector: 2 }]);
        // A masked vector can be reprogrammed silently.
        assert!(write32(&mut s, 2 * 16 + 8, 0x43).is_empty());
        assert_eq!(
            write32(&mut s, 2 * 16 + 12, 0),
            vec![VectorChange::Route { vector: 2, message: MsiMessage { address: 0xfee0_0000, data: 0x43 } }]
        );
    }

    #[test]
    fn qword_write_programs_address_in_one_access() {
        let mut s = MsixState::new(1);
        s.set_control(MSIX_CONTROL_ENABLE);
        write32(&mut s, 12, 0);
        let changes = s.table_write(0, &0x0000_0001_fee0_2000u64.to_le_bytes());
        assert_eq!(
            changes.last(),
            Some(&VectorChange::Route { vector: 0, message: MsiMessage { address: 0x1_fee0_2000, data: 0 } })
        );
    }

    #[test]
    fn pending_bits() {
        let mut s = MsixState::new(70);
        s.set_pending(0, true);
        s.set_pending(65, true);
        let mut d = [0u8; 4];
        s.pba_read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 1);
        s.pba_read(8, &mut d);
        assert_eq!(u32::from_le_bytes(d), 2);
        let mut q = [0u8; 8];
        s.pba_read(8, &mut q);
        assert_eq!(u64::from_le_bytes(q), 2);
        assert!(s.is_pending(65));
        s.set_pending(65, false);
        assert!(!s.is_pending(65));
        s.set_pending(500, true); // out of range: ignored
        s.pba_read(64, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0);
    }
}
