//! Where time goes: milestones (an instant plus the VM's exit counts at that instant), so that
//! every phase of boot and of a device attach/detach can be reported with its duration and the
//! exits the guest caused in it. The vCPU threads count exits into [`EXITS`] (relaxed atomic
//! adds beside their own per-thread counters); devices and the VMM take [`Milestone`]s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Exit kinds, in [`Exits::counts`] order.
pub const EXIT_KINDS: [&str; 6] = ["serial", "pci-config-io", "other-io", "ecam", "bar-mmio", "other-mmio"];

/// An exit's kind, an index into [`EXIT_KINDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    Serial = 0,
    PciConfigIo = 1,
    OtherIo = 2,
    Ecam = 3,
    BarMmio = 4,
    OtherMmio = 5,
}

/// The VM's exits so far, by kind (all vCPUs).
pub struct ExitTally {
    counts: [AtomicU64; EXIT_KINDS.len()],
}

/// The process's tally (one VM per process).
pub static EXITS: ExitTally = ExitTally { counts: [const { AtomicU64::new(0) }; EXIT_KINDS.len()] };

impl ExitTally {
    pub fn count(&self, kind: ExitKind) {
        self.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Exits {
        Exits { counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)) }
    }
}

/// Exit counts by kind (a snapshot, or the difference of two).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exits {
    pub counts: [u64; EXIT_KINDS.len()],
}

impl Exits {
    /// The exits between `earlier` and this.
    pub fn since(&self, earlier: &Exits) -> Exits {
        Exits { counts: std::array::from_fn(|i| self.counts[i].saturating_sub(earlier.counts[i])) }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(kind, count)` of the kinds that occurred.
    pub fn nonzero(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        EXIT_KINDS.iter().zip(self.counts).filter(|(_, n)| *n > 0).map(|(k, n)| (*k, n))
    }
}

/// A moment in the VM's life, with the exits up to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Milestone {
    pub at: Instant,
    pub exits: Exits,
}

impl Milestone {
    pub fn now() -> Self {
        Self { at: Instant::now(), exits: EXITS.snapshot() }
    }
}

/// A milestone that happens once per process (the first vCPU entry, the first serial byte).
pub struct OnceMilestone(OnceLock<Milestone>);

impl OnceMilestone {
    pub const fn new() -> Self {
        Self(OnceLock::new())
    }

    /// Records now, the first time only.
    pub fn reach(&self) {
        if self.0.get().is_none() {
            let _ = self.0.set(Milestone::now());
        }
    }

    pub fn get(&self) -> Option<Milestone> {
        self.0.get().copied()
    }
}

impl Default for OnceMilestone {
    fn default() -> Self {
        Self::new()
    }
}

/// Names of the milestones devices and the VMM reach for attach and detach timings.
pub mod names {
    /// The host opened the device (vfio-pci resets it then).
    pub const DEVICE_OPENED: &str = "VFIO device opened (host reset it)";
    /// The guest read the hotplug register with the device's slot set.
    pub const GUEST_SAW_SLOT: &str = "guest saw the slot";
    /// The guest's `_EJ0` wrote the device's slot.
    pub const GUEST_EJECTED: &str = "guest ejected the device";
    /// The guest's driver turned memory decoding on.
    pub const MEMORY_ENABLED: &str = "guest enabled memory decoding";
    /// The guest's driver turned MSI-X on.
    pub const MSIX_ENABLED: &str = "guest enabled MSI-X";
    /// Guest RAM is mapped for the device's DMA.
    pub const DMA_MAPPED: &str = "guest RAM DMA-mapped";
    /// The device may master the bus (the end of an attach).
    pub const BUS_MASTER: &str = "device got bus mastering";
}

/// The first time a vCPU entered the guest.
pub static FIRST_VCPU_ENTRY: OnceMilestone = OnceMilestone::new();
/// The first byte the guest wrote to its serial port.
pub static FIRST_SERIAL_BYTE: OnceMilestone = OnceMilestone::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milestones_carry_the_exits_between_them() {
        let a = Milestone::now();
        EXITS.count(ExitKind::Ecam);
        EXITS.count(ExitKind::Ecam);
        EXITS.count(ExitKind::Serial);
        let b = Milestone::now();
        let between = b.exits.since(&a.exits);
        // Other tests may count too: at least these.
        assert!(between.counts[ExitKind::Ecam as usize] >= 2 && between.counts[ExitKind::Serial as usize] >= 1);
        assert!(between.total() >= 3);
        assert!(between.nonzero().any(|(k, _)| k == "ecam"));
        assert!(b.at >= a.at);
    }

    #[test]
    fn a_once_milestone_keeps_the_first_time() {
        let m = OnceMilestone::new();
        assert!(m.get().is_none());
        m.reach();
        let first = m.get().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        m.reach();
        assert_eq!(m.get(), Some(first));
    }
}
