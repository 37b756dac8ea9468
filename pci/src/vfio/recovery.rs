//! Getting a guest driver to re-initialise a function that lost work while the VM was paused.
//!
//! Clearing Bus Master Enable stops a function's DMA, but not necessarily its consumption of
//! work: the emulated igb in the nested testbed (QEMU's `igb_receive_internal`) keeps taking
//! receive descriptors while the VF may not write them back, so after a pause the driver
//! waits forever for a descriptor the device has already passed (measured: traffic dead until
//! the guest's `ip link set down/up`). A re-created or re-opened VF lost all of its state the
//! same way. The guest driver must reset, without any guest-side action.
//!
//! Whether work was lost is read from the device where that is possible: an igb VF's queue
//! heads do not move while bus mastering is off on hardware that honours it, so a pause in
//! which they did not move needs nothing.
//!
//! igbvf has one reset trigger a VMM can pull: it resets when its periodic mailbox check
//! reads a NACK from the PF (`e1000_check_for_link_vf`). The PF sends a NACK when the VF
//! acknowledges a message while it is not "clear to send" — true after a function level reset
//! or re-creation — and at most every two seconds after that reset. So, for an Intel VF whose
//! work may have been lost:
//! 1. a plain pause (the function was never closed) ends with a function level reset, so the
//!    PF drops the VF's clear-to-send state; a re-opened function already went through one;
//! 2. after the PF's hold-off, [`VfioPciDevice::recovery_tick`] writes ACK to the VF's
//!    mailbox register and watches the mailbox memory until the PF's NACK is there;
//! 3. then it raises the guest's unmasked vectors once: igbvf's "other" vector handler
//!    re-checks the link, reads the NACK and schedules its own reset.
//!
//! Functions without such a recipe get only the vector kick of `unquiesce`.

use std::time::{Duration, Instant};

use super::device::VfioPciDevice;
use super::{VfioBackend, VFIO_PCI_BAR0_REGION_INDEX};
use crate::configuration::REG_ID;

/// The PF answers an ACK with a NACK only this long after the VF's reset (igb: 2 s), plus margin.
pub const PF_NACK_HOLDOFF: Duration = Duration::from_millis(2500);
/// How long to wait for the NACK after one ACK.
const NACK_WAIT: Duration = Duration::from_secs(3);
/// How often the mailbox memory is looked at while waiting.
const NACK_POLL: Duration = Duration::from_millis(100);
/// ACKs sent before giving up (the PF may already consider the VF clear to send, e.g. when the
/// guest reset on its own first).
const MAX_ACKS: u8 = 3;

/// igbvf's mailbox (82576 / i350 VF, BAR 0).
const V2PMAILBOX: u64 = 0xc40;
const VMBMEM: u64 = 0x800;
const V2PMAILBOX_ACK: u32 = 1 << 1;
const MSGTYPE_NACK: u32 = 1 << 30;
const MSGTYPE_CTS: u32 = 1 << 29;

/// Receive and transmit descriptor heads of the VF's two queue pairs.
const QUEUE_HEADS: [u64; 4] = [0x2810, 0x2910, 0x3810, 0x3910];

/// Vendor:device ids (as config register 0 holds them) of functions driven by igbvf.
const IGBVF_IDS: [u32; 2] = [0x10ca_8086, 0x1520_8086];

/// How a kind of function is brought back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryKind {
    /// An Intel igb VF: PF mailbox NACK, then a vector kick (see the module documentation).
    IntelVfMailbox,
}

impl RecoveryKind {
    /// The recipe for a function with config register 0 `id`, if there is one.
    pub fn for_id(id: u32) -> Option<Self> {
        IGBVF_IDS.contains(&id).then_some(Self::IntelVfMailbox)
    }

    /// Registers that move when the device consumes work (compared across a pause).
    pub(super) fn progress(self, backend: &dyn VfioBackend) -> Vec<u32> {
        match self {
            Self::IntelVfMailbox => QUEUE_HEADS
                .iter()
                .map(|&offset| {
                    let mut word = [0u8; 4];
                    backend.region_read(VFIO_PCI_BAR0_REGION_INDEX, offset, &mut word);
                    u32::from_le_bytes(word)
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for the PF's hold-off to end before the next ACK.
    Holdoff,
    /// ACK sent; looking for the NACK until the deadline.
    AwaitNack { until: Instant },
}

/// A recovery in progress.
#[derive(Debug, Clone, Copy)]
pub(super) struct Recovery {
    stage: Stage,
    due: Instant,
    acks: u8,
}

impl Recovery {
    pub(super) fn start(now: Instant) -> Self {
        Self { stage: Stage::Holdoff, due: now + PF_NACK_HOLDOFF, acks: 0 }
    }
}

impl VfioPciDevice {
    /// The recovery recipe for this function, if it has one.
    pub(super) fn recovery_kind(&self) -> Option<RecoveryKind> {
        RecoveryKind::for_id(self.device_config_read(REG_ID))
    }

    /// When [`Self::recovery_tick`] wants to run next, while a recovery is in progress.
    pub fn recovery_due(&self) -> Option<Instant> {
        self.life.recovery.map(|r| r.due)
    }

    /// Advances the recovery at `now` (on the VMM thread, from a timer). Never blocks.
    /// Returns when to call again, or `None` when done (or abandoned: paused again, released).
    pub fn recovery_tick(&mut self, now: Instant) -> Option<Instant> {
        let mut recovery = self.life.recovery.take()?;
        if self.is_quiesced() || self.is_released() {
            return None;
        }
        if now < recovery.due {
            self.life.recovery = Some(recovery);
            return Some(recovery.due);
        }
        let nack = || {
            let mut word = [0u8; 4];
            self.backend.region_read(VFIO_PCI_BAR0_REGION_INDEX, VMBMEM, &mut word);
            let word = u32::from_le_bytes(word);
            word & MSGTYPE_NACK != 0 && word & MSGTYPE_CTS == 0
        };
        match recovery.stage {
            Stage::Holdoff | Stage::AwaitNack { .. } if nack() => {
                log::info!("recovery: the PF refused the VF's mailbox; raising its vectors for the driver to reset");
                self.for_each_routing(|r| r.kick());
                return None;
            }
            Stage::AwaitNack { until } if now < until => recovery.due = now + NACK_POLL,
            Stage::Holdoff | Stage::AwaitNack { .. } if recovery.acks < MAX_ACKS => {
                if matches!(recovery.stage, Stage::AwaitNack { .. }) {
                    // No NACK after this ACK: the next one after another hold-off.
                    recovery.stage = Stage::Holdoff;
                    recovery.due = now + PF_NACK_HOLDOFF;
                } else {
                    self.backend.region_write(VFIO_PCI_BAR0_REGION_INDEX, V2PMAILBOX, &V2PMAILBOX_ACK.to_le_bytes());
                    recovery.acks += 1;
                    recovery.stage = Stage::AwaitNack { until: now + NACK_WAIT };
                    recovery.due = now + NACK_POLL;
                }
            }
            _ => {
                log::info!("recovery: no NACK from the PF after {MAX_ACKS} ACKs; the VF's driver is on its own");
                return None;
            }
        }
        self.life.recovery = Some(recovery);
        Some(recovery.due)
    }
}
