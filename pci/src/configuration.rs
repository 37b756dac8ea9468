//! A type-0 configuration space: register values plus the bits the guest may write.

/// Bytes of PCI Express configuration space.
pub const CONFIG_SPACE_SIZE: usize = 4096;
pub const NUM_CONFIG_REGISTERS: usize = CONFIG_SPACE_SIZE / 4;

pub const REG_ID: usize = 0;
pub const REG_COMMAND_STATUS: usize = 1;
pub const REG_CLASS: usize = 2;
pub const REG_HEADER: usize = 3;
pub const REG_SUBSYSTEM: usize = 11;

/// Command register bits.
pub const COMMAND_IO_SPACE: u16 = 1 << 0;
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;

pub struct PciConfiguration {
    registers: Box<[u32; NUM_CONFIG_REGISTERS]>,
    writable: Box<[u32; NUM_CONFIG_REGISTERS]>,
}

/// Identity of a function.
#[derive(Debug, Clone, Copy)]
pub struct PciIdentity {
    pub vendor_id: u16,
    pub device_id: u16,
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub revision: u8,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
}

impl PciConfiguration {
    pub fn new(id: PciIdentity) -> Self {
        let mut registers = Box::new([0u32; NUM_CONFIG_REGISTERS]);
        let mut writable = Box::new([0u32; NUM_CONFIG_REGISTERS]);
        registers[REG_ID] = u32::from(id.device_id) << 16 | u32::from(id.vendor_id);
        registers[REG_CLASS] = u32::from(id.class) << 24
            | u32::from(id.subclass) << 16
            | u32::from(id.prog_if) << 8
            | u32::from(id.revision);
        registers[REG_SUBSYSTEM] = u32::from(id.subsystem_id) << 16 | u32::from(id.subsystem_vendor_id);
        // Command register: I/O, memory, bus master, INTx disable are writable.
        writable[REG_COMMAND_STATUS] =
            u32::from(COMMAND_IO_SPACE | COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE);
        // Cache line size and latency timer are plain read/write storage.
        writable[REG_HEADER] = 0x0000_ffff;
        Self { registers, writable }
    }

    pub fn read_reg(&self, reg: usize) -> u32 {
        self.registers.get(reg).copied().unwrap_or(0xffff_ffff)
    }

    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` within register `reg`, honouring
    /// the writable mask. Out-of-range or misaligned accesses are ignored.
    pub fn write_reg(&mut self, reg: usize, offset: u64, data: &[u8]) {
        let Some(mask) = self.writable.get(reg).copied() else {
            return;
        };
        self.registers[reg] = merge_writable(self.registers[reg], offset, data, mask);
    }

    /// Sets a register value and its writable mask directly (for device set-up).
    pub fn set_reg(&mut self, reg: usize, value: u32, writable: u32) {
        if reg < NUM_CONFIG_REGISTERS {
            self.registers[reg] = value;
            self.writable[reg] = writable;
        }
    }

    pub fn command(&self) -> u16 {
        self.registers[REG_COMMAND_STATUS] as u16
    }
}

/// Decodes a 1/2/4-byte access at `offset` in a dword into `(value, bit shift, width mask)`.
/// `None` for other sizes and accesses that cross the dword.
/// Whether `len` bytes at byte `offset` of a dword are one access the hardware could make to
/// a single register: 1, 2 or 4 bytes, not crossing into the next dword.
pub fn is_register_access(offset: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && offset + len as u64 <= 4
}

pub fn merge_bytes(offset: u64, data: &[u8]) -> Option<(u32, u32, u32)> {
    let (value, width_mask) = match *data {
        [a] => (u32::from(a), 0xff),
        [a, b] => (u32::from(u16::from_le_bytes([a, b])), 0xffff),
        [a, b, c, d] => (u32::from_le_bytes([a, b, c, d]), 0xffff_ffff),
        _ => return None,
    };
    if offset + data.len() as u64 > 4 {
        return None;
    }
    Some((value, (offset * 8) as u32, width_mask))
}

/// `old` with a 1, 2 or 4-byte write of `data` at byte `offset` merged in where `writable`
/// allows; `old` unchanged for an access that is not one register's.
pub fn merge_writable(old: u32, offset: u64, data: &[u8], writable: u32) -> u32 {
    match merge_bytes(offset, data) {
        Some((value, shift, width)) => {
            let lanes = (width << shift) & writable;
            (old & !lanes) | ((value << shift) & lanes)
        }
        None => old,
    }
}

/// Extracts `data.len()` bytes at `offset` from a dword.
pub fn extract_bytes(dword: u32, offset: u64, data: &mut [u8]) {
    let bytes = dword.to_le_bytes();
    let start = offset.min(4) as usize;
    let end = (start + data.len()).min(4);
    data.fill(0xff);
    data[..end - start].copy_from_slice(&bytes[start..end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PciConfiguration {
        PciConfiguration::new(PciIdentity {
            vendor_id: 0x1234,
            device_id: 0x5678,
            class: 6,
            subclass: 0,
            prog_if: 0,
            revision: 1,
            subsystem_vendor_id: 0xaaaa,
            subsystem_id: 0xbbbb,
        })
    }

    #[test]
    fn identity_registers() {
        let c = cfg();
        assert_eq!(c.read_reg(REG_ID), 0x5678_1234);
        assert_eq!(c.read_reg(REG_CLASS), 0x0600_0001);
        assert_eq!(c.read_reg(REG_SUBSYSTEM), 0xbbbb_aaaa);
        assert_eq!(c.read_reg(NUM_CONFIG_REGISTERS), 0xffff_ffff);
    }

    #[test]
    fn writes_honour_the_mask_and_width() {
        let mut c = cfg();
        c.write_reg(REG_ID, 0, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(c.read_reg(REG_ID), 0x5678_1234, "ids are read-only");
        c.write_reg(REG_COMMAND_STATUS, 0, &[0xff, 0xff]);
        assert_eq!(c.command(), 0x0407);
        c.write_reg(REG_COMMAND_STATUS, 0, &[0x02]);
        assert_eq!(c.command(), 0x0402, "byte write keeps the upper byte");
        c.write_reg(REG_HEADER, 1, &[0x40]);
        assert_eq!(c.read_reg(REG_HEADER) & 0xff00, 0x4000);
        // Crossing the dword or odd sizes are ignored.
        c.write_reg(REG_HEADER, 3, &[1, 2]);
        c.write_reg(REG_HEADER, 0, &[1, 2, 3]);
        assert_eq!(c.read_reg(REG_HEADER) & 0xff00, 0x4000);
    }

    #[test]
    fn extract_sub_dword() {
        let mut b = [0u8; 2];
        extract_bytes(0x1122_3344, 2, &mut b);
        assert_eq!(b, [0x22, 0x11]);
        let mut b = [0u8; 1];
        extract_bytes(0x1122_3344, 1, &mut b);
        assert_eq!(b, [0x33]);
        let mut b = [0u8; 4];
        extract_bytes(0x1122_3344, 2, &mut b);
        assert_eq!(b, [0x22, 0x11, 0xff, 0xff]);
    }
}
