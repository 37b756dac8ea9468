//! The guest-visible PCI hotplug / GED registers: any sequence of port reads and writes of any
//! width at any offset. Nothing may panic.
#![no_main]

use devices::hotplug::HotplugRegisters;
use libfuzzer_sys::fuzz_target;
use vm_device::bus::PioAddress;
use vm_device::MutDevicePio;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let (Ok(ged), Ok(eject)) = (EventFd::new(libc_nonblock()), EventFd::new(libc_nonblock())) else {
        return;
    };
    let mut regs = HotplugRegisters::new(ged, eject);
    // Each op: kind (1), offset (1), length (1), value (4).
    for op in data.chunks_exact(7) {
        let offset = u16::from(op[1] % 32);
        let len = usize::from(op[2] % 5);
        let mut buf = [0u8; 4];
        match op[0] % 4 {
            0 => regs.pio_write(PioAddress(0x610), offset, &op[3..3 + len]),
            1 => regs.pio_read(PioAddress(0x610), offset, &mut buf[..len]),
            2 => regs.slot_up(op[1] % 40),
            _ => regs.slot_down(op[1] % 40),
        }
        let _ = regs.take_ejected();
    }
});

fn libc_nonblock() -> i32 {
    0o4000 // EFD_NONBLOCK
}
