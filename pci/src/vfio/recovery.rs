//! Bringing any guest driver back after its function lost its state, through standard PCIe
//! error recovery (AER) — no knowledge of the device.
//!
//! The guest sees each passthrough function as a Root Complex Integrated Endpoint (RCiEP) on
//! bus 0 whose errors are collected by the emulated Root Complex Event Collector
//! (`crate::rcec`). vfvmm virtualizes, in the function's config space:
//! - the PCI Express capability: device/port type RCiEP; Function Level Reset capable (vfvmm
//!   performs the FLR through VFIO); the error reporting enables of Device Control and the
//!   error bits of Device Status are vfvmm's (the host device's own stay untouched);
//! - an AER capability: the device's own position when it has one, else at 0x100 (its other
//!   extended capabilities are then hidden from the guest); the registers are emulated
//!   ([`crate::aer::AerRegisters`]).
//!
//! When the function lost its state under the guest's driver — re-acquired after a release
//! (a new or re-opened function), or paused while it could do DMA (clearing bus mastering
//! drops DMA in flight, so work may be lost) — vfvmm logs an Uncorrectable Internal Error
//! (fatal by the specification's default severity) and the VMM thread sends it to the RCEC,
//! which interrupts the guest. Linux's AER core then calls the driver's `error_detected`,
//! resets the function with an FLR (the guest's write to Device Control traps here; the VMM
//! thread resets the function through VFIO while config reads answer all ones, as a function
//! that is not ready after reset does), and calls `slot_reset` and `resume`: the driver
//! re-initialises its function. The episode ends when the guest enables bus mastering again.
//!
//! The FLR keeps the config space the guest programmed (BARs, command, MSI/MSI-X): a driver
//! that does not restore it in `slot_reset` (igbvf) finds it as Linux's bus-reset path would
//! have restored it; one that does (nvme) writes the same values again.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use vmm_sys_util::eventfd::EventFd;

use super::caps::{extended_capabilities, find_capability, CAP_ID_EXP, EXT_CAPABILITIES_START};
use super::device::VfioPciDevice;
use super::VfioBackend;
use crate::aer::{AerRegisters, Severity, EXT_CAP_ID_AER, UNCOR_INTERNAL};
use crate::configuration::merge_bytes;

/// PCI Express capability registers (byte offsets in the capability).
const EXP_CAPS: usize = 0x00;
const EXP_DEVCAP: usize = 0x04;
const EXP_DEVCTL: usize = 0x08;
/// Device/port type field of the PCI Express Capabilities register, in the capability's
/// first dword (bits 23:20), and the Slot Implemented bit (24).
const EXP_TYPE_SHIFT: u32 = 20;
const EXP_TYPE_MASK: u32 = 0xf << EXP_TYPE_SHIFT;
const EXP_SLOT_IMPLEMENTED: u32 = 1 << 24;
const EXP_TYPE_RC_END: u32 = 0x9;
const DEVCAP_FLR: u32 = 1 << 28;
/// Device Control: correctable/non-fatal/fatal/unsupported-request reporting enables, and
/// Initiate Function Level Reset.
const DEVCTL_REPORTING: u32 = 0x000f;
const DEVCTL_NFERE: u32 = 1 << 1;
const DEVCTL_FERE: u32 = 1 << 2;
const DEVCTL_FLR: u32 = 1 << 15;
/// Device Status (upper half of the Device Control dword): error detected bits.
const DEVSTA_NONFATAL: u32 = 1 << 1;
const DEVSTA_FATAL: u32 = 1 << 2;
const DEVSTA_ERRORS: u32 = 0x000f;

/// Why vfvmm told the guest a function failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryCause {
    /// Re-acquired after a release: a re-created or re-opened (reset) function.
    Reacquired,
    /// Paused with bus mastering on: its DMA in flight may have been dropped.
    PausedDuringDma,
    /// The host reported an error on the device (VFIO error interrupt).
    HostError,
    /// Released while the VM runs (`vm.release-device` with `live`): the driver must stop
    /// using it and wait, in its reset, until it is re-acquired.
    LiveRelease,
}

impl RecoveryCause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reacquired => "re-acquired",
            Self::PausedDuringDma => "paused during DMA",
            Self::HostError => "host device error",
            Self::LiveRelease => "released while running",
        }
    }
}

/// The last recovery of a function, for `vm.info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastRecovery {
    pub cause: RecoveryCause,
    /// When it was signalled (ms since the Unix epoch).
    pub signalled_at_ms: u64,
    /// Whether the error reached the guest (it had enabled the reporting).
    pub delivered: bool,
    /// From the signal to the guest's FLR request, and to its re-enabling the function (bus
    /// mastering on after the reset); `None` while not (yet) seen.
    pub reset_after_ms: Option<u64>,
    pub reenabled_after_ms: Option<u64>,
}

/// Recoveries of a function so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    pub signalled: u64,
    /// Function level resets the guest asked for (and vfvmm performed through VFIO).
    pub resets: u64,
    pub last: Option<LastRecovery>,
}

/// What became of an error vfvmm wanted to signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signalled {
    /// Logged; the VMM thread sends it to the RCEC.
    Sent,
    /// Logged, not sent: the guest has not enabled reporting it (or masked it).
    NotEnabled,
    /// Not needed: the guest is already resetting the function for an earlier error.
    AlreadyResetting,
    /// A conventional PCI function: no error reporting.
    Unsupported,
}

/// Where a guest-requested Function Level Reset is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResetState {
    Idle,
    /// The guest wrote Initiate FLR; the VMM thread has not taken it yet.
    Requested,
    /// The VMM thread is resetting the function: it does not answer config reads.
    InProgress,
}

/// The error-recovery side of one passthrough function.
#[derive(Debug, Clone)]
pub struct ErrorRecovery {
    /// Byte offset of the PCI Express capability; `None`: a conventional PCI function, which
    /// gets no error reporting.
    exp: Option<usize>,
    aer: Option<AerRegisters>,
    /// The AER capability replaced the device's own extended capabilities (it had no AER).
    hides_extended: bool,
    /// Device Control reporting enables and Device Status error bits, as the guest sees them.
    devctl_reporting: u32,
    devsta_errors: u32,
    /// An error logged that the VMM thread has to send to the RCEC.
    pending: Option<Severity>,
    reset: ResetState,
    /// The episode in progress: when it was signalled.
    episode: Option<Instant>,
    /// The guest re-enabled the function after an episode's reset (ms since the signal), for
    /// the VMM thread's log, once.
    reenabled: Option<u64>,
    stats: RecoveryStats,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl ErrorRecovery {
    /// From the device's config space (dword reader).
    pub fn new(read: impl Fn(usize) -> u32) -> Self {
        let exp = find_capability(&read, CAP_ID_EXP);
        let ext = if exp.is_some() { extended_capabilities(&read) } else { Vec::new() };
        let aer = exp.map(|_| match ext.iter().find(|&&(id, _, _)| id == EXT_CAP_ID_AER) {
            Some(&(_, _, at)) => {
                let next = ((read(at / 4) >> 20) & 0xffc) as u16;
                AerRegisters::new(at, next, false)
            }
            None => AerRegisters::new(EXT_CAPABILITIES_START, 0, false),
        });
        let hides_extended = exp.is_some() && !ext.iter().any(|&(id, _, _)| id == EXT_CAP_ID_AER) && !ext.is_empty();
        Self {
            exp,
            aer,
            hides_extended,
            devctl_reporting: 0,
            devsta_errors: 0,
            pending: None,
            reset: ResetState::Idle,
            episode: None,
            reenabled: None,
            stats: RecoveryStats::default(),
        }
    }

    /// Whether the function can report errors to the guest (it is a PCI Express function).
    pub fn supported(&self) -> bool {
        self.aer.is_some()
    }

    /// Extended capabilities of the device the guest does not see (ids), for the log.
    pub fn hidden_extended(&self, read: impl Fn(usize) -> u32) -> Vec<u16> {
        if self.hides_extended {
            extended_capabilities(read).into_iter().map(|(id, _, _)| id).collect()
        } else {
            Vec::new()
        }
    }

    /// The function does not answer config requests: an FLR is under way.
    pub fn resetting(&self) -> bool {
        self.reset != ResetState::Idle
    }

    fn exp_reg(&self, offset: usize) -> Option<usize> {
        self.exp.map(|cap| (cap + offset) / 4)
    }

    /// Whether this virtualizes config register `reg`.
    pub fn virtualizes(&self, reg: usize) -> bool {
        self.aer.as_ref().is_some_and(|a| a.contains(reg))
            || (self.hides_extended && reg * 4 >= EXT_CAPABILITIES_START)
            || [EXP_CAPS, EXP_DEVCAP, EXP_DEVCTL].iter().any(|&o| self.exp_reg(o) == Some(reg))
    }

    /// The guest-visible value of `reg`, given the device's value, when this virtualizes it.
    pub fn config_read(&self, reg: usize, device: impl FnOnce() -> u32) -> Option<u32> {
        if let Some(aer) = self.aer.as_ref().filter(|a| a.contains(reg)) {
            return Some(aer.read(reg));
        }
        if self.hides_extended && reg * 4 >= EXT_CAPABILITIES_START {
            return Some(0);
        }
        let value = if Some(reg) == self.exp_reg(EXP_CAPS) {
            (device() & !(EXP_TYPE_MASK | EXP_SLOT_IMPLEMENTED)) | (EXP_TYPE_RC_END << EXP_TYPE_SHIFT)
        } else if Some(reg) == self.exp_reg(EXP_DEVCAP) {
            device() | DEVCAP_FLR
        } else if Some(reg) == self.exp_reg(EXP_DEVCTL) {
            let v = device();
            (v & !(DEVCTL_REPORTING | DEVCTL_FLR | (DEVSTA_ERRORS << 16)))
                | self.devctl_reporting
                | (self.devsta_errors << 16)
        } else {
            return None;
        };
        Some(value)
    }

    /// Handles a guest write to `reg` if this virtualizes it. Returns `None` when it does not
    /// (the caller writes the device), else the bytes still to write to the device's Device
    /// Control (`Some(Some(..))`: the 16-bit register without the virtualized bits), and sets
    /// `flr` when the guest asked for a Function Level Reset.
    pub fn config_write(
        &mut self,
        reg: usize,
        offset: u64,
        data: &[u8],
        device_devctl: u32,
        flr: &mut bool,
    ) -> Option<Option<[u8; 2]>> {
        if let Some(aer) = self.aer.as_mut().filter(|a| a.contains(reg)) {
            aer.write(reg, offset, data);
            return Some(None);
        }
        if self.hides_extended && reg * 4 >= EXT_CAPABILITIES_START {
            return Some(None);
        }
        if Some(reg) == self.exp_reg(EXP_CAPS) || Some(reg) == self.exp_reg(EXP_DEVCAP) {
            return Some(None); // read-only
        }
        if Some(reg) != self.exp_reg(EXP_DEVCTL) {
            return None;
        }
        // Not a register access (the bus drops those before they get here): nothing reaches the
        // device, least of all its Initiate FLR bit.
        let Some((value, shift, width)) = merge_bytes(offset, data) else {
            return Some(None);
        };
        let (value, lanes) = (value << shift, width << shift);
        self.devctl_reporting =
            (self.devctl_reporting & !(lanes & DEVCTL_REPORTING)) | (value & lanes & DEVCTL_REPORTING);
        self.devsta_errors &= !((value & lanes) >> 16);
        if value & lanes & DEVCTL_FLR != 0 {
            *flr = true;
        }
        // The rest of Device Control (payload sizes, relaxed ordering, ...) goes to the device.
        let passed = lanes & 0x7ff0;
        if passed == 0 {
            return Some(None);
        }
        let current = device_devctl & 0xffff;
        let merged = (current & !passed) | (value & passed);
        Some(Some((merged as u16).to_le_bytes()))
    }

    /// The function lost its state under the guest's driver: an Uncorrectable Internal Error
    /// is logged in its AER capability and Device Status; it is to be sent to the RCEC (see
    /// [`take_report`](Self::take_report)) if the guest enabled reporting it.
    pub fn signal(&mut self, cause: RecoveryCause) -> Signalled {
        let Some(aer) = self.aer.as_mut() else {
            return Signalled::Unsupported;
        };
        if self.reset != ResetState::Idle {
            // The guest is already resetting the function for an earlier error: that reset
            // (done once the function is back) is the recovery this one asks for.
            return Signalled::AlreadyResetting;
        }
        let severity = aer.log_uncorrectable(UNCOR_INTERNAL);
        if let Some(s) = severity {
            self.devsta_errors |= if s == Severity::Fatal { DEVSTA_FATAL } else { DEVSTA_NONFATAL };
        }
        let enabled = match severity {
            Some(Severity::Fatal) => self.devctl_reporting & DEVCTL_FERE != 0,
            Some(Severity::NonFatal) => self.devctl_reporting & DEVCTL_NFERE != 0,
            None => false,
        };
        self.stats.signalled += 1;
        self.stats.last = Some(LastRecovery {
            cause,
            signalled_at_ms: unix_ms(),
            delivered: enabled,
            reset_after_ms: None,
            reenabled_after_ms: None,
        });
        self.episode = enabled.then(Instant::now);
        self.pending = if enabled { severity } else { None };
        if enabled {
            Signalled::Sent
        } else {
            Signalled::NotEnabled
        }
    }

    /// The error to send to the RCEC, once.
    pub fn take_report(&mut self) -> Option<Severity> {
        self.pending.take()
    }

    /// The guest asked for an FLR.
    pub fn request_reset(&mut self) {
        if self.reset == ResetState::Idle {
            self.reset = ResetState::Requested;
        }
    }

    /// The VMM thread takes a requested FLR: the function stops answering until
    /// [`finish_reset`](Self::finish_reset).
    pub fn take_reset(&mut self) -> bool {
        if self.reset != ResetState::Requested {
            return false;
        }
        self.reset = ResetState::InProgress;
        self.stats.resets += 1;
        if let (Some(since), Some(last)) = (self.episode, self.stats.last.as_mut()) {
            last.reset_after_ms.get_or_insert(since.elapsed().as_millis() as u64);
        }
        true
    }

    /// The FLR is done: the function answers again; the error it reported is cleared (its
    /// status bits would otherwise make it look like the source of later errors).
    pub fn finish_reset(&mut self) {
        self.reset = ResetState::Idle;
        self.devsta_errors = 0;
        if let Some(aer) = self.aer.as_mut() {
            let reg = aer.base() / 4 + 1;
            aer.write(reg, 0, &u32::MAX.to_le_bytes());
        }
    }

    /// The guest enabled bus mastering: after a reset in an episode, the driver has its
    /// function back. Returns true when that ended an episode.
    pub fn on_bus_master(&mut self) -> bool {
        if self.reset != ResetState::Idle || self.stats.last.is_none_or(|l| l.reset_after_ms.is_none()) {
            return false;
        }
        let (Some(since), Some(last)) = (self.episode.take(), self.stats.last.as_mut()) else {
            return false;
        };
        let ms = since.elapsed().as_millis() as u64;
        last.reenabled_after_ms = Some(ms);
        self.reenabled = Some(ms);
        true
    }

    /// An episode that ended since the last call: ms from its signal to the re-enable.
    pub fn take_reenabled(&mut self) -> Option<u64> {
        self.reenabled.take()
    }

    pub fn stats(&self) -> RecoveryStats {
        self.stats
    }
}

impl VfioPciDevice {
    /// Tells the guest the function failed (see the module documentation); the VMM thread is
    /// woken to send the error to the RCEC.
    pub fn signal_error(&mut self, cause: RecoveryCause) -> Signalled {
        let outcome = self.errors.signal(cause);
        match outcome {
            Signalled::Sent => self.platform.wake_vmm(),
            Signalled::NotEnabled => log::info!(
                "{}: the guest has not enabled error reporting for a function; its driver is on its own",
                cause.as_str()
            ),
            Signalled::AlreadyResetting | Signalled::Unsupported => {}
        }
        outcome
    }

    /// The guest re-enabled the function at the end of a recovery (bus mastering back on
    /// after the reset): the VMM thread is told, to log it.
    pub(super) fn note_bus_master(&mut self) {
        if self.errors.on_bus_master() {
            self.platform.wake_vmm();
        }
    }

    /// A recovery ended since the last call: ms from the signal to the guest's re-enable.
    pub fn take_reenabled(&mut self) -> Option<u64> {
        self.errors.take_reenabled()
    }

    /// Has the host signal `fd` when it detects an error on the device.
    pub fn arm_host_errors(&self, fd: &EventFd) -> Result<(), String> {
        self.backend.enable_error_irq(fd).map_err(|e| e.to_string())
    }

    /// The host reported an error on the device (VFIO's error interrupt).
    pub fn signal_host_error(&mut self) {
        if !self.is_released() {
            self.signal_error(RecoveryCause::HostError);
        }
    }

    /// An error to send to the RCEC (once), on the VMM thread.
    pub fn take_error_report(&mut self) -> Option<Severity> {
        self.errors.take_report()
    }

    /// The host device to reset, when the guest asked for an FLR: the VMM thread resets it
    /// outside the device's lock (config reads answer all ones meanwhile), then calls
    /// [`finish_reset`](Self::finish_reset).
    pub fn take_reset(&mut self) -> Option<Arc<dyn VfioBackend>> {
        if self.is_released() || !self.errors.take_reset() {
            return None;
        }
        Some(self.backend.clone())
    }

    pub fn finish_reset(&mut self) {
        self.errors.finish_reset();
    }

    pub fn recovery_stats(&self) -> RecoveryStats {
        self.errors.stats()
    }
}

#[cfg(test)]
#[path = "recovery_tests.rs"]
mod tests;
