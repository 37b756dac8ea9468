//! The root PCI bus (bus 0): up to 32 single-function devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use devices::warn_ratelimited;

use crate::configuration::{extract_bytes, is_register_access};

/// Guest config accesses that straddle registers (a guest can make these at will).
static MISALIGNED_LOG: Mutex<devices::ratelimit::RateLimiter> =
    Mutex::new(devices::ratelimit::RateLimiter::new(5, std::time::Duration::from_secs(1)));

/// Number of device slots on a bus.
pub const NUM_SLOTS: u8 = 32;

/// A PCI function's configuration space, as the bus sees it.
pub trait PciDevice: Send {
    /// Reads dword register `reg` (0..1024).
    fn config_read(&mut self, reg: usize) -> u32;
    /// Writes 1, 2 or 4 bytes at byte `offset` (0..4) within dword register `reg`.
    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciBusError {
    #[error("no free PCI slot on bus 0")]
    NoFreeSlot,
    #[error("PCI slot {0} is already in use")]
    SlotInUse(u8),
    #[error("PCI slot {0} does not exist")]
    InvalidSlot(u8),
}

/// Decoded address of a configuration register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigAddress {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
    /// Dword register index.
    pub register: usize,
}

type SharedDevice = Arc<Mutex<dyn PciDevice>>;

#[derive(Default)]
pub struct PciBus {
    devices: BTreeMap<u8, SharedDevice>,
}

impl PciBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Plugs `device` into `slot`.
    pub fn add_device_at(&mut self, slot: u8, device: SharedDevice) -> Result<(), PciBusError> {
        if slot >= NUM_SLOTS {
            return Err(PciBusError::InvalidSlot(slot));
        }
        if self.devices.contains_key(&slot) {
            return Err(PciBusError::SlotInUse(slot));
        }
        self.devices.insert(slot, device);
        Ok(())
    }

    /// Plugs `device` into the lowest free slot and returns it.
    pub fn add_device(&mut self, device: SharedDevice) -> Result<u8, PciBusError> {
        let slot = (0..NUM_SLOTS).find(|s| !self.devices.contains_key(s)).ok_or(PciBusError::NoFreeSlot)?;
        self.add_device_at(slot, device)?;
        Ok(slot)
    }

    pub fn remove_device(&mut self, slot: u8) -> Option<SharedDevice> {
        self.devices.remove(&slot)
    }

    fn device(&self, addr: ConfigAddress) -> Option<&SharedDevice> {
        if addr.bus != 0 || addr.function != 0 {
            return None;
        }
        self.devices.get(&addr.device)
    }

    /// Reads `data.len()` bytes at byte `offset` of the addressed register. Absent
    /// functions, and accesses that are not 1, 2 or 4 bytes within one dword, read as all ones.
    pub fn config_read(&self, addr: ConfigAddress, offset: u64, data: &mut [u8]) {
        if !is_register_access(offset, data.len()) {
            warn_ratelimited!(
                &MISALIGNED_LOG,
                "config read of {} bytes at byte {offset} of a dword: all ones",
                data.len()
            );
            data.fill(0xff);
            return;
        }
        let value = match self.device(addr) {
            Some(dev) => dev.lock().map(|mut d| d.config_read(addr.register)).unwrap_or(0xffff_ffff),
            None => 0xffff_ffff,
        };
        extract_bytes(value, offset, data);
    }

    /// Writes to the addressed register; writes to absent functions are dropped, and so are
    /// writes that are not 1, 2 or 4 bytes within one dword (a device only ever sees one
    /// register's bytes: a write straddling two would reach the second unfiltered).
    pub fn config_write(&self, addr: ConfigAddress, offset: u64, data: &[u8]) {
        if !is_register_access(offset, data.len()) {
            warn_ratelimited!(
                &MISALIGNED_LOG,
                "config write of {} bytes at byte {offset} of a dword dropped",
                data.len()
            );
            return;
        }
        if let Some(dev) = self.device(addr) {
            if let Ok(mut d) = dev.lock() {
                d.config_write(addr.register, offset, data);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_bridge::PciHostBridge;

    fn addr(device: u8, function: u8, register: usize) -> ConfigAddress {
        ConfigAddress { bus: 0, device, function, register }
    }

    #[test]
    fn slots_fill_in_order_and_reject_duplicates() {
        let mut bus = PciBus::new();
        assert_eq!(bus.add_device(Arc::new(Mutex::new(PciHostBridge::default()))).unwrap(), 0);
        assert_eq!(bus.add_device(Arc::new(Mutex::new(PciHostBridge::default()))).unwrap(), 1);
        assert_eq!(
            bus.add_device_at(1, Arc::new(Mutex::new(PciHostBridge::default()))),
            Err(PciBusError::SlotInUse(1))
        );
        assert_eq!(
            bus.add_device_at(32, Arc::new(Mutex::new(PciHostBridge::default()))),
            Err(PciBusError::InvalidSlot(32))
        );
        assert!(bus.remove_device(1).is_some());
        assert_eq!(bus.add_device(Arc::new(Mutex::new(PciHostBridge::default()))).unwrap(), 1);
    }

    #[test]
    fn absent_functions_read_all_ones() {
        let mut bus = PciBus::new();
        bus.add_device_at(0, Arc::new(Mutex::new(PciHostBridge::default()))).unwrap();
        let mut d = [0u8; 4];
        bus.config_read(addr(0, 0, 0), 0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0008_1b36);
        bus.config_read(addr(0, 1, 0), 0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xffff_ffff);
        bus.config_read(addr(5, 0, 0), 0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xffff_ffff);
        bus.config_read(ConfigAddress { bus: 1, device: 0, function: 0, register: 0 }, 0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xffff_ffff);
        bus.config_write(addr(5, 0, 1), 0, &[0xff, 0xff]);
    }
}
