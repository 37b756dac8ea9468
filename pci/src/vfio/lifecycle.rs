//! Pause, release and re-acquire of a passed-through function (the SVFF "VFIO paused" state).
//!
//! - [`VfioPciDevice::quiesce`] (VM paused): Bus Master Enable cleared on the device (no DMA),
//!   every MSI/MSI-X irqfd detached (arrivals wait in the eventfds and show in the PBA), the
//!   BAR memory slots removed. The guest's view does not change.
//! - [`VfioPciDevice::release`] (quiesced only): config space is snapshotted, VFIO's interrupts
//!   are turned off, the BAR mmaps are dropped and the VFIO device is let go of, so the host may
//!   unbind or destroy the function. The guest keeps the function: config space is served from
//!   the snapshot, BARs read all ones.
//! - [`VfioPciDevice::rebind`] (released only): a host function of the same kind is checked
//!   (ids, BARs, MSI-X layout) and bound; BARs are mmapped again and the guest-visible state
//!   the device holds (command register, MSI/MSI-X enable) is replayed. It stays quiesced.
//! - [`VfioPciDevice::unquiesce`] (VM resumes): slots mapped, bus mastering restored (or, while
//!   guest RAM is still being DMA-mapped, deferred until it is), each vector the guest unmasked
//!   raised once (interrupts sent while bus mastering was off are lost) and irqfds attached.

use std::sync::Arc;

use super::device::{discover_bars, mmap_spans, VfioPciDevice};
use super::recovery::RecoveryCause;
use super::{DmaState, VfioBackend, VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX};
use crate::configuration::{merge_bytes, COMMAND_BUS_MASTER, NUM_CONFIG_REGISTERS, REG_COMMAND_STATUS, REG_ID};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LifecycleError {
    #[error("the device must be quiesced (VM paused) first")]
    NotQuiesced,
    #[error("the device is not released")]
    NotReleased,
    #[error("the device is released to the host")]
    Released,
    #[error("not the same kind of device: {0}")]
    Mismatch(String),
    #[error("{0}")]
    Vfio(String),
}

/// Where a function is in its pause/release life.
#[derive(Debug, Default)]
pub struct Lifecycle {
    quiesced: bool,
    /// The guest's command register, kept while the device runs with bus mastering off.
    saved_command: u16,
    /// Config space as the guest last saw it, while released.
    released_config: Option<Vec<u32>>,
    /// The guest enabled bus mastering before guest RAM was DMA-mapped: the device gets it
    /// from [`VfioPciDevice::apply_deferred_bus_master`] (the guest already reads it back).
    pub(super) deferred_bus_master: bool,
    /// The function was re-opened (re-acquired) during this pause: it has been reset already.
    reopened: bool,
}

impl VfioPciDevice {
    pub fn is_quiesced(&self) -> bool {
        self.life.quiesced
    }

    pub fn is_released(&self) -> bool {
        self.life.released_config.is_some()
    }

    /// Config register `reg` of the device, or of the snapshot while released.
    pub(super) fn device_config_read(&self, reg: usize) -> u32 {
        match &self.life.released_config {
            Some(snapshot) => snapshot.get(reg).copied().unwrap_or(0xffff_ffff),
            None => self.backend.config_read_u32(reg),
        }
    }

    /// A guest config write the device takes; kept in the snapshot while released.
    pub(super) fn device_config_write(&mut self, reg: usize, offset: u64, data: &[u8]) {
        match self.life.released_config.as_mut() {
            Some(snapshot) => {
                if let (Some(old), Some((value, shift, width))) =
                    (snapshot.get(reg).copied(), merge_bytes(offset, data))
                {
                    snapshot[reg] = (old & !(width << shift)) | (value << shift);
                }
            }
            None => self.backend.region_write(VFIO_PCI_CONFIG_REGION_INDEX, reg as u64 * 4 + offset, data),
        }
    }

    /// A guest write of the command register's low byte: bus mastering only once guest RAM is
    /// DMA-mapped. Never blocks (a vCPU is writing, with the PCI bus locked).
    pub(super) fn filter_bus_master(&mut self, low_byte: &mut u8) {
        let bus_master = COMMAND_BUS_MASTER as u8;
        self.life.deferred_bus_master = false;
        if *low_byte & bus_master == 0 {
            return;
        }
        match self.platform.dma_state() {
            DmaState::Ready => {}
            DmaState::Pending => {
                *low_byte &= !bus_master;
                self.life.deferred_bus_master = true;
            }
            DmaState::Failed(e) => {
                *low_byte &= !bus_master;
                devices::warn_guest!("bus mastering stays off: guest memory is not DMA-mapped: {e}");
            }
        }
    }

    /// Called on the VMM thread when guest RAM has been DMA-mapped: gives the device the bus
    /// mastering the guest asked for meanwhile.
    pub fn apply_deferred_bus_master(&mut self) {
        if !self.life.deferred_bus_master || self.life.quiesced || self.is_released() {
            return;
        }
        match self.platform.dma_state() {
            DmaState::Pending => return,
            DmaState::Ready => {
                let command = self.backend.config_read_u32(REG_COMMAND_STATUS) as u16;
                self.write_command(command | COMMAND_BUS_MASTER);
                super::device::GuestMilestones::reach(&mut self.milestones.bus_master);
            }
            DmaState::Failed(e) => {
                devices::warn_guest!("bus mastering stays off: guest memory is not DMA-mapped: {e}")
            }
        }
        self.life.deferred_bus_master = false;
    }

    fn write_command(&self, command: u16) {
        self.backend.region_write(
            VFIO_PCI_CONFIG_REGION_INDEX,
            (REG_COMMAND_STATUS * 4) as u64,
            &command.to_le_bytes(),
        );
    }

    /// The guest wrote its command register while the function is quiesced and the VM runs
    /// (a live release): what [`unquiesce`](Self::unquiesce) restores.
    pub(super) fn set_quiesced_command(&mut self, command: u16) {
        self.life.saved_command = command;
    }

    /// Stops the device's DMA and interrupts and unmaps its BARs from the guest.
    pub fn quiesce(&mut self) {
        if self.life.quiesced {
            return;
        }
        if !self.is_released() {
            let mut command = self.backend.config_read_u32(REG_COMMAND_STATUS) as u16;
            if std::mem::take(&mut self.life.deferred_bus_master) {
                command |= COMMAND_BUS_MASTER;
            }
            self.life.saved_command = command;
            if command & COMMAND_BUS_MASTER != 0 {
                self.write_command(command & !COMMAND_BUS_MASTER);
            }
        }
        self.for_each_routing(|r| r.quiesce());
        for i in 0..self.mappings.len() {
            self.unmap_bar(i);
        }
        self.life.quiesced = true;
    }

    /// Lets go of the host device: afterwards this holds no mapping and no fd of it.
    /// Returns the backend that was bound, for the caller to drop (which closes it).
    pub fn release(&mut self) -> Result<Arc<dyn VfioBackend>, LifecycleError> {
        if !self.life.quiesced {
            return Err(LifecycleError::NotQuiesced);
        }
        if self.is_released() {
            return Err(LifecycleError::Released);
        }
        let dwords = self
            .backend
            .region(VFIO_PCI_CONFIG_REGION_INDEX)
            .map_or(64, |r| (r.size / 4) as usize)
            .clamp(64, NUM_CONFIG_REGISTERS);
        let mut snapshot: Vec<u32> = (0..dwords).map(|reg| self.backend.config_read_u32(reg)).collect();
        // The guest's command register, not the quiesced one.
        snapshot[REG_COMMAND_STATUS] =
            (snapshot[REG_COMMAND_STATUS] & 0xffff_0000) | u32::from(self.life.saved_command);
        self.for_each_routing(|r| r.release());
        for m in &mut self.mappings {
            m.areas.clear();
        }
        self.life.released_config = Some(snapshot);
        self.binding.replace(None).ok_or(LifecycleError::NotQuiesced)
    }

    /// Whether `backend` is a function this device can continue on.
    fn check_same_kind(&self, backend: &dyn VfioBackend, snapshot: &[u32]) -> Result<(), LifecycleError> {
        let mismatch = |what: String| Err(LifecycleError::Mismatch(what));
        let id = backend.config_read_u32(REG_ID);
        if id != snapshot[REG_ID] {
            return mismatch(format!(
                "vendor:device {:04x}:{:04x}, was {:04x}:{:04x}",
                id & 0xffff,
                id >> 16,
                snapshot[REG_ID] & 0xffff,
                snapshot[REG_ID] >> 16
            ));
        }
        let now: Vec<_> = discover_bars(backend)
            .into_iter()
            .filter(|b| b.kind != crate::bar::BarKind::Io)
            .map(|b| (b.index, b.size, b.kind))
            .collect();
        let before: Vec<_> = self.mappings.iter().map(|m| (m.info.index, m.info.size, m.info.kind)).collect();
        if now != before {
            return mismatch(format!("BARs {now:x?}, were {before:x?}"));
        }
        if let Some((cap, _)) = &self.msix {
            let reg = cap / 4;
            let (a, b) = ([0, 1, 2].map(|i| backend.config_read_u32(reg + i)), [0, 1, 2].map(|i| snapshot[reg + i]));
            // Table size (control bits 10:0), table and PBA locations.
            if (a[0] >> 16) & 0x7ff != (b[0] >> 16) & 0x7ff || a[1] != b[1] || a[2] != b[2] {
                return mismatch("MSI-X layout differs".into());
            }
        }
        Ok(())
    }

    /// Continues on `backend` (a re-created or another function of the same kind).
    pub fn rebind(&mut self, backend: Arc<dyn VfioBackend>) -> Result<(), LifecycleError> {
        let Some(snapshot) = self.life.released_config.clone() else {
            return Err(LifecycleError::NotReleased);
        };
        self.check_same_kind(backend.as_ref(), &snapshot)?;
        self.binding.replace(Some(backend));
        for m in &mut self.mappings {
            let region = VFIO_PCI_BAR0_REGION_INDEX + m.info.index as u32;
            m.areas = mmap_spans(self.backend.as_ref(), region, &m.spans);
        }
        self.life.released_config = None;
        self.life.reopened = true;
        // The guest's command register without bus mastering (that comes back at unquiesce).
        self.write_command(self.life.saved_command & !COMMAND_BUS_MASTER);
        let mut result = Ok(());
        self.for_each_routing(|r| {
            if result.is_ok() {
                result = r.rebind();
            }
        });
        if let Err(e) = result {
            // Back to released: nothing of the new device is kept.
            let _ = self.binding.replace(None);
            for m in &mut self.mappings {
                m.areas.clear();
            }
            self.life.released_config = Some(snapshot);
            return Err(LifecycleError::Vfio(e.to_string()));
        }
        Ok(())
    }

    /// Lets the device run again: BARs mapped, interrupts delivered, bus mastering restored.
    /// A released device only gets its BAR traps back (reads all ones).
    pub fn unquiesce(&mut self) {
        if !self.life.quiesced {
            return;
        }
        // Whether the guest's driver must re-initialise its function (see `recovery.rs`): it
        // was using the function (bus mastering on) and the function was re-opened or
        // re-created, or its DMA was cut while it may have been working.
        let cause = if self.is_released() || self.life.saved_command & COMMAND_BUS_MASTER == 0 {
            None
        } else if self.life.reopened {
            Some(RecoveryCause::Reacquired)
        } else {
            Some(RecoveryCause::PausedDuringDma)
        };
        self.life.reopened = false;
        if self.decode {
            for i in 0..self.mappings.len() {
                self.map_bar(i);
            }
        }
        self.life.quiesced = false;
        if !self.is_released() && self.life.saved_command & COMMAND_BUS_MASTER != 0 {
            // Guest RAM may still be being mapped again (after a re-acquire): then bus
            // mastering follows when it is done.
            self.life.deferred_bus_master = true;
            self.apply_deferred_bus_master();
        }
        // An MSI/MSI-X message is a memory write: whatever the device raised while bus
        // mastering was off is lost, not pending, and a driver that auto-masks a vector until
        // its handler runs (igbvf does) would never hear from that queue again. So each vector
        // the guest has unmasked is raised once; a driver takes a spurious interrupt by looking
        // at its device (after a re-acquire, that is also how it notices the reset device).
        // A released device has nothing behind it: its vectors are only wired back.
        let kick = !self.is_released();
        self.for_each_routing(|r| r.unquiesce(kick));
        if let Some(cause) = cause {
            self.signal_error(cause);
        }
    }
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
