//! PCI Express Advanced Error Reporting: the AER extended capability, emulated.
//!
//! Every passthrough function shows the guest an AER capability whose registers vfvmm owns
//! (the guest's mask and severity writes are kept here, status bits are what vfvmm reported),
//! and the Root Complex Event Collector has one with the root registers through which its
//! associated functions' errors reach the guest's AER driver (`crate::rcec`).

use crate::configuration::{merge_bytes, merge_writable};

/// Extended capability ids.
pub const EXT_CAP_ID_AER: u16 = 0x0001;
pub const EXT_CAP_ID_RCEC_ASSOC: u16 = 0x0007;

/// Byte offsets of AER registers within the capability.
pub const UNCOR_STATUS: usize = 0x04;
pub const UNCOR_MASK: usize = 0x08;
pub const UNCOR_SEVERITY: usize = 0x0c;
pub const COR_STATUS: usize = 0x10;
pub const COR_MASK: usize = 0x14;
pub const CAP_CONTROL: usize = 0x18;
pub const ROOT_COMMAND: usize = 0x2c;
pub const ROOT_STATUS: usize = 0x30;
pub const ERROR_SOURCE: usize = 0x34;

/// Size of an endpoint's AER capability (through the header log) and of a root's (through
/// the error source identification register).
pub const ENDPOINT_SIZE: usize = 0x2c;
pub const ROOT_SIZE: usize = 0x38;

/// Uncorrectable Internal Error: what vfvmm reports when a function lost its state (reset,
/// re-created) under the guest's driver. Fatal by default (the specification's default
/// severity), so the guest's AER core resets the function and its driver re-initialises it.
pub const UNCOR_INTERNAL: u32 = 1 << 22;
/// Uncorrectable errors a function may log: bits 4, 5 and 12 to 26.
const UNCOR_IMPLEMENTED: u32 = 0x07ff_f030;
/// The specification's default severity: Data Link Protocol, Surprise Down, Flow Control
/// Protocol, Receiver Overflow, Malformed TLP and Uncorrectable Internal errors are fatal.
const UNCOR_SEVERITY_DEFAULT: u32 = 0x0046_2030;
/// Correctable errors: bits 0, 6 to 8 and 12 to 15; Advisory Non-Fatal (13) masked by default.
const COR_IMPLEMENTED: u32 = 0x0000_f1c1;
const COR_MASK_DEFAULT: u32 = 1 << 13;

/// Root Error Command: reporting enables for correctable, non-fatal and fatal errors.
pub const ROOT_CMD_COR: u32 = 1 << 0;
pub const ROOT_CMD_NONFATAL: u32 = 1 << 1;
pub const ROOT_CMD_FATAL: u32 = 1 << 2;
/// Root Error Status bits.
pub const ROOT_UNCOR_RCV: u32 = 1 << 2;
pub const ROOT_MULTI_UNCOR_RCV: u32 = 1 << 3;
pub const ROOT_FIRST_FATAL: u32 = 1 << 4;
pub const ROOT_NONFATAL_RCV: u32 = 1 << 5;
pub const ROOT_FATAL_RCV: u32 = 1 << 6;
/// Status bits software clears by writing 1 (bits 0 to 6).
const ROOT_STATUS_RW1C: u32 = 0x7f;

/// Severity of an uncorrectable error, from the severity register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    NonFatal,
    Fatal,
}

/// One AER capability's registers.
#[derive(Debug, Clone)]
pub struct AerRegisters {
    /// Byte offset of the capability in config space.
    base: usize,
    /// Byte offset of the next extended capability (0: last).
    next: u16,
    root: bool,
    uncor_status: u32,
    uncor_mask: u32,
    uncor_severity: u32,
    cor_status: u32,
    cor_mask: u32,
    /// First Error Pointer (bits 4:0); the ECRC bits stay 0 (not capable).
    first_error: u32,
    root_command: u32,
    root_status: u32,
    error_source: u32,
}

impl AerRegisters {
    /// An endpoint's (`root` false) or a root's AER capability at byte `base`.
    pub fn new(base: usize, next: u16, root: bool) -> Self {
        Self {
            base,
            next,
            root,
            uncor_status: 0,
            uncor_mask: 0,
            uncor_severity: UNCOR_SEVERITY_DEFAULT,
            cor_status: 0,
            cor_mask: COR_MASK_DEFAULT,
            first_error: 0,
            root_command: 0,
            root_status: 0,
            error_source: 0,
        }
    }

    pub fn base(&self) -> usize {
        self.base
    }

    fn size(&self) -> usize {
        if self.root {
            ROOT_SIZE
        } else {
            ENDPOINT_SIZE
        }
    }

    /// Whether dword register `reg` belongs to this capability.
    pub fn contains(&self, reg: usize) -> bool {
        let byte = reg * 4;
        byte >= self.base && byte < self.base + self.size()
    }

    /// Reads dword register `reg` (which [`contains`](Self::contains)).
    pub fn read(&self, reg: usize) -> u32 {
        match (reg * 4).wrapping_sub(self.base) {
            0 => (u32::from(self.next) << 20) | (2 << 16) | u32::from(EXT_CAP_ID_AER),
            UNCOR_STATUS => self.uncor_status,
            UNCOR_MASK => self.uncor_mask,
            UNCOR_SEVERITY => self.uncor_severity,
            COR_STATUS => self.cor_status,
            COR_MASK => self.cor_mask,
            CAP_CONTROL => self.first_error,
            ROOT_COMMAND if self.root => self.root_command,
            ROOT_STATUS if self.root => self.root_status,
            ERROR_SOURCE if self.root => self.error_source,
            _ => 0,
        }
    }

    /// Writes 1, 2 or 4 bytes at byte `offset` of dword register `reg`: mask, severity and
    /// root command are read/write, the status registers write-1-to-clear, the rest read-only.
    pub fn write(&mut self, reg: usize, offset: u64, data: &[u8]) {
        let Some((value, shift, width)) = merge_bytes(offset, data) else {
            return;
        };
        let (value, lanes) = (value << shift, width << shift);
        let rw = |old: u32, writable: u32| merge_writable(old, offset, data, writable);
        match (reg * 4).wrapping_sub(self.base) {
            UNCOR_STATUS => {
                self.uncor_status &= !(value & lanes);
                self.update_first_error();
            }
            UNCOR_MASK => self.uncor_mask = rw(self.uncor_mask, UNCOR_IMPLEMENTED),
            UNCOR_SEVERITY => self.uncor_severity = rw(self.uncor_severity, UNCOR_IMPLEMENTED),
            COR_STATUS => self.cor_status &= !(value & lanes),
            COR_MASK => self.cor_mask = rw(self.cor_mask, COR_IMPLEMENTED),
            ROOT_COMMAND if self.root => {
                self.root_command = rw(self.root_command, ROOT_CMD_COR | ROOT_CMD_NONFATAL | ROOT_CMD_FATAL)
            }
            ROOT_STATUS if self.root => self.root_status &= !(value & lanes & ROOT_STATUS_RW1C),
            _ => {}
        }
    }

    /// The First Error Pointer names the lowest pending uncorrectable error (0 when none).
    fn update_first_error(&mut self) {
        if self.uncor_status & (1 << self.first_error) == 0 || self.first_error == 0 {
            self.first_error = if self.uncor_status == 0 { 0 } else { self.uncor_status.trailing_zeros() };
        }
    }

    /// Logs uncorrectable error `bit` (one of the `UNCOR_*` bits); `None` when the guest masked
    /// it (nothing is to be signalled), else its severity.
    pub fn log_uncorrectable(&mut self, bit: u32) -> Option<Severity> {
        if self.uncor_mask & bit != 0 {
            return None;
        }
        let first = self.uncor_status & !self.uncor_mask == 0;
        self.uncor_status |= bit;
        if first {
            self.first_error = bit.trailing_zeros();
        }
        Some(if self.uncor_severity & bit != 0 { Severity::Fatal } else { Severity::NonFatal })
    }

    /// Unmasked uncorrectable errors logged and not yet cleared by the guest.
    pub fn pending_uncorrectable(&self) -> u32 {
        self.uncor_status & !self.uncor_mask
    }

    /// A root receives an uncorrectable error message from function `source` (bus/devfn):
    /// root status and error source updated; true when the root's interrupt is to be raised
    /// (the guest enabled reporting for that severity).
    pub fn root_receive_uncorrectable(&mut self, source: u16, severity: Severity) -> bool {
        if self.root_status & ROOT_UNCOR_RCV != 0 {
            self.root_status |= ROOT_MULTI_UNCOR_RCV;
        } else {
            self.root_status |= ROOT_UNCOR_RCV;
            self.error_source = (self.error_source & 0xffff) | (u32::from(source) << 16);
            if severity == Severity::Fatal {
                self.root_status |= ROOT_FIRST_FATAL;
            }
        }
        match severity {
            Severity::Fatal => {
                self.root_status |= ROOT_FATAL_RCV;
                self.root_command & ROOT_CMD_FATAL != 0
            }
            Severity::NonFatal => {
                self.root_status |= ROOT_NONFATAL_RCV;
                self.root_command & ROOT_CMD_NONFATAL != 0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: usize = 0x100;

    fn reg(offset: usize) -> usize {
        (BASE + offset) / 4
    }

    #[test]
    fn the_header_chains_and_the_capability_has_its_size() {
        let ep = AerRegisters::new(BASE, 0x148, false);
        assert_eq!(ep.read(reg(0)), 0x1482_0001);
        assert!(ep.contains(reg(0)) && ep.contains(reg(0x28)) && !ep.contains(reg(0x2c)));
        let root = AerRegisters::new(BASE, 0, true);
        assert!(root.contains(reg(ERROR_SOURCE)) && !root.contains(reg(0x38)));
        assert_eq!(ep.read(reg(ROOT_COMMAND)), 0, "an endpoint has no root registers");
        assert_eq!(ep.read(reg(UNCOR_SEVERITY)), UNCOR_SEVERITY_DEFAULT);
        assert_eq!(ep.read(reg(COR_MASK)), COR_MASK_DEFAULT);
    }

    #[test]
    fn status_is_write_one_to_clear_and_mask_and_severity_keep_only_implemented_bits() {
        let mut ep = AerRegisters::new(BASE, 0, false);
        assert_eq!(ep.log_uncorrectable(UNCOR_INTERNAL), Some(Severity::Fatal));
        assert_eq!(ep.read(reg(UNCOR_STATUS)), UNCOR_INTERNAL);
        assert_eq!(ep.read(reg(CAP_CONTROL)), 22, "first error pointer");
        ep.write(reg(UNCOR_STATUS), 0, &0u32.to_le_bytes());
        assert_eq!(ep.read(reg(UNCOR_STATUS)), UNCOR_INTERNAL, "writing 0 clears nothing");
        // Byte 2 of the status register holds bits 16..23: bit 22 is 0x40 there.
        ep.write(reg(UNCOR_STATUS), 2, &[0x40]);
        assert_eq!(ep.read(reg(UNCOR_STATUS)), 0);
        assert_eq!(ep.read(reg(CAP_CONTROL)), 0);
        ep.write(reg(UNCOR_MASK), 0, &u32::MAX.to_le_bytes());
        assert_eq!(ep.read(reg(UNCOR_MASK)), UNCOR_IMPLEMENTED);
        ep.write(reg(UNCOR_SEVERITY), 0, &0u32.to_le_bytes());
        assert_eq!(ep.read(reg(UNCOR_SEVERITY)), 0);
        ep.write(reg(0), 0, &u32::MAX.to_le_bytes());
        assert_eq!(ep.read(reg(0)), 0x0002_0001, "the header is read-only");
    }

    #[test]
    fn masked_errors_are_not_signalled_and_severity_follows_the_guest() {
        let mut ep = AerRegisters::new(BASE, 0, false);
        ep.write(reg(UNCOR_MASK), 0, &UNCOR_INTERNAL.to_le_bytes());
        assert_eq!(ep.log_uncorrectable(UNCOR_INTERNAL), None);
        assert_eq!(ep.pending_uncorrectable(), 0);
        ep.write(reg(UNCOR_MASK), 0, &0u32.to_le_bytes());
        ep.write(reg(UNCOR_SEVERITY), 0, &0u32.to_le_bytes());
        assert_eq!(ep.log_uncorrectable(UNCOR_INTERNAL), Some(Severity::NonFatal));
        assert_eq!(ep.pending_uncorrectable(), UNCOR_INTERNAL);
    }

    #[test]
    fn a_root_records_the_source_and_interrupts_only_when_enabled() {
        let mut root = AerRegisters::new(BASE, 0, true);
        assert!(!root.root_receive_uncorrectable(0x0008, Severity::Fatal), "reporting not enabled");
        assert_eq!(root.read(reg(ROOT_STATUS)), ROOT_UNCOR_RCV | ROOT_FIRST_FATAL | ROOT_FATAL_RCV);
        assert_eq!(root.read(reg(ERROR_SOURCE)), 0x0008_0000);
        root.write(reg(ROOT_STATUS), 0, &u32::MAX.to_le_bytes());
        assert_eq!(root.read(reg(ROOT_STATUS)), 0);
        root.write(reg(ROOT_COMMAND), 0, &0xffu32.to_le_bytes());
        assert_eq!(root.read(reg(ROOT_COMMAND)), 0x7);
        assert!(root.root_receive_uncorrectable(0x0010, Severity::Fatal));
        assert!(root.root_receive_uncorrectable(0x0018, Severity::NonFatal));
        let status = root.read(reg(ROOT_STATUS));
        assert_eq!(status & (ROOT_MULTI_UNCOR_RCV | ROOT_NONFATAL_RCV), ROOT_MULTI_UNCOR_RCV | ROOT_NONFATAL_RCV);
        assert_eq!(root.read(reg(ERROR_SOURCE)) >> 16, 0x0010, "the first source is kept");
    }
}
