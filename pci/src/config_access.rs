//! The two ways a guest reaches configuration space: the legacy 0xCF8 address / 0xCFC data
//! port pair, and the ECAM MMIO window.

use std::sync::{Arc, RwLock};

use vm_device::bus::{MmioAddress, MmioAddressOffset, PioAddress, PioAddressOffset};
use vm_device::{MutDeviceMmio, MutDevicePio};

use crate::bus::{ConfigAddress, PciBus};
use crate::configuration::{extract_bytes, merge_bytes};

pub const PCI_CONFIG_IO_PORT: u16 = 0xcf8;
pub const PCI_CONFIG_IO_PORT_SIZE: u16 = 8;
const CONFIG_ADDRESS_ENABLE: u32 = 1 << 31;

/// Decodes a 0xCF8 value. `None` when the enable bit is clear.
pub fn decode_cf8(value: u32) -> Option<ConfigAddress> {
    if value & CONFIG_ADDRESS_ENABLE == 0 {
        return None;
    }
    Some(ConfigAddress {
        bus: ((value >> 16) & 0xff) as u8,
        device: ((value >> 11) & 0x1f) as u8,
        function: ((value >> 8) & 0x7) as u8,
        register: ((value >> 2) & 0x3f) as usize,
    })
}

/// Decodes an offset into the ECAM window into a register address and byte offset.
pub fn decode_ecam(offset: u64) -> (ConfigAddress, u64) {
    (
        ConfigAddress {
            bus: ((offset >> 20) & 0xff) as u8,
            device: ((offset >> 15) & 0x1f) as u8,
            function: ((offset >> 12) & 0x7) as u8,
            register: ((offset & 0xfff) >> 2) as usize,
        },
        offset & 0x3,
    )
}

/// 0xCF8..0xCFF.
pub struct PciConfigIo {
    bus: Arc<RwLock<PciBus>>,
    config_address: u32,
}

impl PciConfigIo {
    pub fn new(bus: Arc<RwLock<PciBus>>) -> Self {
        Self { bus, config_address: 0 }
    }
}

impl MutDevicePio for PciConfigIo {
    fn pio_read(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        let offset = u64::from(offset);
        if offset < 4 {
            extract_bytes(self.config_address, offset, data);
            return;
        }
        match (decode_cf8(self.config_address), self.bus.read()) {
            (Some(addr), Ok(bus)) => bus.config_read(addr, offset - 4, data),
            _ => data.fill(0xff),
        }
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let offset = u64::from(offset);
        if offset < 4 {
            if let Some((value, shift, width)) = merge_bytes(offset, data) {
                let mask = width << shift;
                self.config_address = (self.config_address & !mask) | (value << shift);
            }
            return;
        }
        if let (Some(addr), Ok(bus)) = (decode_cf8(self.config_address), self.bus.read()) {
            bus.config_write(addr, offset - 4, data);
        }
    }
}

/// The ECAM window.
pub struct PciConfigMmio {
    bus: Arc<RwLock<PciBus>>,
}

impl PciConfigMmio {
    pub fn new(bus: Arc<RwLock<PciBus>>) -> Self {
        Self { bus }
    }
}

impl MutDeviceMmio for PciConfigMmio {
    fn mmio_read(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        let (addr, byte) = decode_ecam(offset);
        match self.bus.read() {
            Ok(bus) if byte + data.len() as u64 <= 4 => bus.config_read(addr, byte, data),
            _ => data.fill(0xff),
        }
    }

    fn mmio_write(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        let (addr, byte) = decode_ecam(offset);
        if let Ok(bus) = self.bus.read() {
            bus.config_write(addr, byte, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_bridge::PciHostBridge;
    use std::sync::Mutex;

    fn bus() -> Arc<RwLock<PciBus>> {
        let mut b = PciBus::new();
        b.add_device_at(0, Arc::new(Mutex::new(PciHostBridge::default()))).unwrap();
        Arc::new(RwLock::new(b))
    }

    #[test]
    fn cf8_decoding() {
        assert_eq!(decode_cf8(0x0000_0000), None);
        assert_eq!(decode_cf8(0x8001_0a0c), Some(ConfigAddress { bus: 1, device: 1, function: 2, register: 3 }));
        assert_eq!(decode_cf8(0x80ff_fffc), Some(ConfigAddress { bus: 0xff, device: 31, function: 7, register: 63 }));
    }

    #[test]
    fn ecam_decoding() {
        let (a, b) = decode_ecam((2 << 20) | (3 << 15) | (4 << 12) | 0x106);
        assert_eq!(a, ConfigAddress { bus: 2, device: 3, function: 4, register: 0x41 });
        assert_eq!(b, 2);
    }

    #[test]
    fn cf8_cfc_reads_the_host_bridge() {
        let mut io = PciConfigIo::new(bus());
        let base = PioAddress(PCI_CONFIG_IO_PORT);
        io.pio_write(base, 0, &0x8000_0000u32.to_le_bytes());
        let mut d = [0u8; 4];
        io.pio_read(base, 0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_0000, "address reads back");
        io.pio_read(base, 4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0008_1b36);
        let mut w = [0u8; 2];
        io.pio_read(base, 6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x0008);
        // Class register via byte access at 0xCFF: base class 0x06.
        io.pio_write(base, 0, &0x8000_0008u32.to_le_bytes());
        let mut b = [0u8; 1];
        io.pio_read(base, 7, &mut b);
        assert_eq!(b[0], 0x06);
        // Byte write to 0xCFB changes only that byte of the address.
        io.pio_write(base, 3, &[0x01]);
        io.pio_read(base, 0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0100_0008);
        // Disabled address: all ones.
        io.pio_read(base, 4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xffff_ffff);
        // Empty slot: all ones.
        io.pio_write(base, 0, &0x8000_0800u32.to_le_bytes());
        io.pio_read(base, 4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xffff_ffff);
    }

    #[test]
    fn ecam_reads_and_writes_the_command_register() {
        let mut m = PciConfigMmio::new(bus());
        let base = MmioAddress(0xe000_0000);
        let mut d = [0u8; 4];
        m.mmio_read(base, 0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0008_1b36);
        m.mmio_write(base, 4, &[0x06, 0x00]);
        let mut w = [0u8; 2];
        m.mmio_read(base, 4, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x0006);
        m.mmio_read(base, 1 << 15, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xffff_ffff);
        // An 8-byte access is not a config access.
        let mut q = [0u8; 8];
        m.mmio_read(base, 0, &mut q);
        assert_eq!(q, [0xff; 8]);
    }

    /// Records the writes a device receives.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<(usize, u64, Vec<u8>)>,
    }

    impl crate::bus::PciDevice for Recorder {
        fn config_read(&mut self, _reg: usize) -> u32 {
            0x1234_5678
        }
        fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) {
            self.writes.push((reg, offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_straddling_two_registers_never_reach_a_device() {
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        let mut b = PciBus::new();
        b.add_device_at(1, recorder.clone()).unwrap();
        let bus = Arc::new(RwLock::new(b));
        let slot1 = 1u64 << 15;
        // ECAM: 2 bytes at byte 3 of register 0 (would reach the command register), 8 bytes
        // at register 4 (BAR0 and BAR1), 3 bytes.
        let mut m = PciConfigMmio::new(bus.clone());
        let base = MmioAddress(0xe000_0000);
        m.mmio_write(base, slot1 + 3, &[0x06, 0x00]);
        m.mmio_write(base, slot1 + 0x10, &[0xff; 8]);
        m.mmio_write(base, slot1 + 4, &[1, 2, 3]);
        // 0xCF8/0xCFC: a 2-byte write at 0xCFF.
        let mut io = PciConfigIo::new(bus);
        let port = PioAddress(PCI_CONFIG_IO_PORT);
        io.pio_write(port, 0, &0x8000_0800u32.to_le_bytes());
        io.pio_write(port, 7, &[0x06, 0x00]);
        assert!(recorder.lock().unwrap().writes.is_empty(), "{:?}", recorder.lock().unwrap().writes);
        // Reads that straddle read all ones, without asking the device.
        let mut w = [0u8; 2];
        io.pio_read(port, 7, &mut w);
        assert_eq!(w, [0xff; 2]);
        // A proper access still goes through, once.
        io.pio_write(port, 6, &[0x06, 0x00]);
        m.mmio_write(base, slot1 + 4, &[0x06]);
        assert_eq!(recorder.lock().unwrap().writes, [(0, 2, vec![0x06, 0x00]), (1, 0, vec![0x06])]);
    }
}
