//! A VFIO function's MSI-X capability and trapped table/PBA pages: any sequence of config
//! writes (Message Control: enable, function mask) and table/PBA accesses of any width, plus
//! pause/resume of the device. Nothing may panic.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pci::vfio::device::discover_bars;
use pci::vfio::fake::{FakePlatform, FakeVfio};
use pci::vfio::VfioPciDevice;
use pci::PciDevice;

const BAR3: u64 = 0xc000_4000;

fuzz_target!(|data: &[u8]| {
    let backend = Arc::new(FakeVfio::igb_vf());
    let platform = Arc::new(FakePlatform::new());
    let bars = discover_bars(backend.as_ref());
    let Ok(mut dev) = VfioPciDevice::new(backend, platform.clone(), &bars, &[(0, 0xc000_0000), (3, BAR3)]) else {
        return;
    };
    // Memory decoding on, so the table traps.
    dev.config_write(1, 0, &[0x06, 0x00]);
    // Each op: kind (1), offset (2), length (1), value (4).
    for op in data.chunks_exact(8) {
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]])) % 0x4000;
        let len = usize::from(op[3] % 9).min(4);
        let value = &op[4..4 + len];
        let mut buf = [0u8; 4];
        match op[0] % 6 {
            0 => {
                platform.mmio_write(BAR3 + offset, value);
            }
            1 => {
                platform.mmio_read(BAR3 + offset, &mut buf[..len]);
            }
            2 => dev.config_write(0x70 / 4, u64::from(op[1] % 4), value),
            3 => {
                let _ = dev.config_read(usize::from(op[1]) % 1024);
            }
            4 => dev.quiesce(),
            _ => dev.unquiesce(),
        }
    }
});
