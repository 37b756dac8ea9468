//! Guest config-space accesses through 0xCF8/0xCFC and ECAM, on a bus with the host bridge, a
//! VFIO function (igbvf-like, over the fake backend; with its emulated PCIe/AER registers and
//! Function Level Reset) and the Root Complex Event Collector in slot 31: any sequence of reads
//! and writes of any width at any offset. Nothing may panic.
#![no_main]

use std::sync::{Arc, Mutex, RwLock};

use libfuzzer_sys::fuzz_target;
use pci::vfio::device::discover_bars;
use pci::vfio::fake::{FakePlatform, FakeVfio};
use pci::vfio::VfioPciDevice;
use pci::{PciBus, PciConfigIo, PciConfigMmio, PciHostBridge};
use vm_device::bus::{MmioAddress, PioAddress};
use vm_device::{MutDeviceMmio, MutDevicePio};

fuzz_target!(|data: &[u8]| {
    let backend = Arc::new(FakeVfio::igb_vf());
    let platform = Arc::new(FakePlatform::new());
    let bars = discover_bars(backend.as_ref());
    let Ok(device) = VfioPciDevice::new(backend, platform.clone(), &bars, &[(0, 0xc000_0000), (3, 0xc000_4000)])
    else {
        return;
    };
    let Ok(rcec) = pci::rcec::Rcec::new(platform, 0x7fff_fffe) else {
        return;
    };
    let mut bus = PciBus::new();
    let _ = bus.add_device_at(0, Arc::new(Mutex::new(PciHostBridge::default())));
    let _ = bus.add_device_at(1, Arc::new(Mutex::new(device)));
    let _ = bus.add_device_at(31, Arc::new(Mutex::new(rcec)));
    let bus = Arc::new(RwLock::new(bus));
    let mut io = PciConfigIo::new(bus.clone());
    let mut ecam = PciConfigMmio::new(bus);
    // Each op: kind (1 byte), offset (4 bytes), length (1 byte), value (8 bytes).
    for op in data.chunks_exact(14) {
        let offset = u32::from_le_bytes([op[1], op[2], op[3], op[4]]);
        let len = usize::from(op[5] % 9);
        let value = &op[6..6 + len.min(8)];
        let mut buf = [0u8; 8];
        match op[0] % 4 {
            0 => io.pio_write(PioAddress(0xcf8), (offset % 8) as u16, value),
            1 => io.pio_read(PioAddress(0xcf8), (offset % 8) as u16, &mut buf[..len]),
            2 => ecam.mmio_write(MmioAddress(0xe000_0000), u64::from(offset % (1 << 20)), value),
            _ => ecam.mmio_read(MmioAddress(0xe000_0000), u64::from(offset % (1 << 20)), &mut buf[..len]),
        }
    }
});
