//! The PCI hotplug and power-button register block the DSDT's GED and slot methods use
//! (see `arch::acpi_hotplug`):
//! - PCIU (read-to-clear): slots the guest must check (new device);
//! - PCID (read-to-clear): slots the guest is asked to eject;
//! - B0EJ (write): slots the guest ejected (its `_EJ0` ran) — queued for the VMM thread;
//! - GED event (read-to-clear): why the GED interrupt fired.
//!
//! The VMM thread raises events ([`HotplugRegisters::slot_up`], `slot_down`,
//! `power_button`); the GED interrupt is an eventfd wired to a KVM irqfd. Ejects arrive on a
//! vCPU thread and are only recorded here, then signalled to the VMM thread.

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;
use vmm_sys_util::eventfd::EventFd;

use crate::timing::Milestone;

// The layout is the DSDT's contract: one definition, in `arch`.
pub use arch::acpi_hotplug::{
    B0EJ_OFFSET, GED_EVENT_OFFSET, GED_EVENT_PCI_HOTPLUG, GED_EVENT_POWER_BUTTON, PCID_OFFSET, PCIU_OFFSET,
};

pub struct HotplugRegisters {
    up: u32,
    down: u32,
    ged_events: u32,
    ejected: u32,
    /// Raises the GED interrupt.
    ged_irq: EventFd,
    /// Tells the VMM thread that `ejected` has bits.
    eject_evt: EventFd,
    /// Per slot: when the guest last read PCIU with the slot's bit set (it saw the new device)
    /// and last wrote the slot to B0EJ (it ejected the device), for attach/detach timings.
    checked: [Option<Milestone>; 32],
    ejected_at: [Option<Milestone>; 32],
}

impl HotplugRegisters {
    pub fn new(ged_irq: EventFd, eject_evt: EventFd) -> Self {
        Self {
            up: 0,
            down: 0,
            ged_events: 0,
            ejected: 0,
            ged_irq,
            eject_evt,
            checked: [None; 32],
            ejected_at: [None; 32],
        }
    }

    fn raise(&mut self, event: u32) {
        self.ged_events |= event;
        if let Err(e) = self.ged_irq.write(1) {
            log::error!("cannot raise the GED interrupt: {e}");
        }
    }

    /// A device was plugged into `slot`.
    pub fn slot_up(&mut self, slot: u8) {
        if slot < 32 {
            self.up |= 1 << slot;
            self.raise(GED_EVENT_PCI_HOTPLUG);
        }
    }

    /// Ask the guest to eject `slot`.
    pub fn slot_down(&mut self, slot: u8) {
        if slot < 32 {
            self.down |= 1 << slot;
            self.raise(GED_EVENT_PCI_HOTPLUG);
        }
    }

    pub fn power_button(&mut self) {
        self.raise(GED_EVENT_POWER_BUTTON);
    }

    /// Slots the guest ejected since the last call.
    pub fn take_ejected(&mut self) -> u32 {
        std::mem::take(&mut self.ejected)
    }

    /// When the guest last saw a new device in `slot` (read PCIU with its bit set).
    pub fn checked(&self, slot: u8) -> Option<Milestone> {
        *self.checked.get(usize::from(slot))?
    }

    /// When the guest last ejected `slot`.
    pub fn ejected_at(&self, slot: u8) -> Option<Milestone> {
        *self.ejected_at.get(usize::from(slot))?
    }

    fn stamp(stamps: &mut [Option<Milestone>; 32], slots: u32) {
        if slots != 0 {
            let now = Milestone::now();
            for (i, stamp) in stamps.iter_mut().enumerate() {
                if slots & (1 << i) != 0 {
                    *stamp = Some(now);
                }
            }
        }
    }
}

impl MutDevicePio for HotplugRegisters {
    fn pio_read(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        let value = match offset {
            PCIU_OFFSET => {
                let up = std::mem::take(&mut self.up);
                Self::stamp(&mut self.checked, up);
                up
            }
            PCID_OFFSET => std::mem::take(&mut self.down),
            GED_EVENT_OFFSET => std::mem::take(&mut self.ged_events),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
        data[n..].fill(0);
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        if offset != B0EJ_OFFSET || data.len() != 4 {
            return;
        }
        let slots = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) & !1; // never the host bridge
        if slots != 0 {
            Self::stamp(&mut self.ejected_at, slots);
            self.ejected |= slots;
            if let Err(e) = self.eject_evt.write(1) {
                log::error!("cannot signal a guest eject: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs() -> (HotplugRegisters, EventFd, EventFd) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let ej = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (HotplugRegisters::new(irq.try_clone().unwrap(), ej.try_clone().unwrap()), irq, ej)
    }

    fn read32(r: &mut HotplugRegisters, off: PioAddressOffset) -> u32 {
        let mut d = [0u8; 4];
        r.pio_read(PioAddress(0x610), off, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn plug_and_eject_round_trip() {
        let (mut r, irq, ej) = regs();
        r.slot_up(3);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(read32(&mut r, GED_EVENT_OFFSET), GED_EVENT_PCI_HOTPLUG);
        assert_eq!(read32(&mut r, GED_EVENT_OFFSET), 0, "read clears");
        assert_eq!(r.checked(3), None);
        assert_eq!(read32(&mut r, PCIU_OFFSET), 1 << 3);
        let checked = r.checked(3).expect("the guest saw slot 3");
        assert_eq!(read32(&mut r, PCIU_OFFSET), 0);
        assert_eq!(r.checked(3), Some(checked), "an empty read stamps nothing");
        assert_eq!((r.checked(4), r.ejected_at(3)), (None, None));
        r.slot_down(3);
        assert_eq!(read32(&mut r, PCID_OFFSET), 1 << 3);
        // The guest's _EJ0.
        r.pio_write(PioAddress(0x610), B0EJ_OFFSET, &(1u32 << 3).to_le_bytes());
        assert!(r.ejected_at(3).is_some_and(|e| e.at >= checked.at));
        assert_eq!(r.ejected_at(40), None);
        assert_eq!(ej.read().unwrap(), 1);
        assert_eq!(r.take_ejected(), 1 << 3);
        assert_eq!(r.take_ejected(), 0);
    }

    #[test]
    fn bad_guest_writes_change_nothing() {
        let (mut r, _irq, ej) = regs();
        r.pio_write(PioAddress(0x610), B0EJ_OFFSET, &[1]); // not a dword
        r.pio_write(PioAddress(0x610), PCIU_OFFSET, &0xffu32.to_le_bytes()); // read-only
        r.pio_write(PioAddress(0x610), B0EJ_OFFSET, &1u32.to_le_bytes()); // the host bridge
        assert!(ej.read().is_err());
        assert_eq!(r.take_ejected(), 0);
        assert_eq!(read32(&mut r, PCIU_OFFSET), 0);
        r.slot_up(40); // out of range
        assert_eq!(read32(&mut r, GED_EVENT_OFFSET), 0);
        r.power_button();
        assert_eq!(read32(&mut r, GED_EVENT_OFFSET), GED_EVENT_POWER_BUTTON);
    }
}
