//! Host tier: runs a tiny hand-assembled real-mode guest on this machine's /dev/kvm through
//! the VMM core, proving exit dispatch (serial output, PCI config through 0xCF8/0xCFC, the
//! ACPI power-off register) without the nested testbed.

use vmm::platform::config::{SerialConfig, VmConfig};
use vmm::GuestExit;

/// A minimal 16-bit assembler for the handful of instructions the guest needs.
#[derive(Default)]
struct Asm(Vec<u8>);

impl Asm {
    fn mov_dx(&mut self, v: u16) -> &mut Self {
        self.0.push(0xba);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn mov_al(&mut self, v: u8) -> &mut Self {
        self.0.extend_from_slice(&[0xb0, v]);
        self
    }
    fn mov_eax(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&[0x66, 0xb8]);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn out_dx_al(&mut self) -> &mut Self {
        self.0.push(0xee);
        self
    }
    fn out_dx_eax(&mut self) -> &mut Self {
        self.0.extend_from_slice(&[0x66, 0xef]);
        self
    }
    fn in_eax_dx(&mut self) -> &mut Self {
        self.0.extend_from_slice(&[0x66, 0xed]);
        self
    }
    fn shr_eax_8(&mut self) -> &mut Self {
        self.0.extend_from_slice(&[0x66, 0xc1, 0xe8, 0x08]);
        self
    }
    fn hlt_forever(&mut self) -> &mut Self {
        self.0.extend_from_slice(&[0xf4, 0xeb, 0xfd]);
        self
    }
    /// Writes `text` to COM1.
    fn print(&mut self, text: &[u8]) -> &mut Self {
        self.mov_dx(0x3f8);
        for b in text {
            self.mov_al(*b).out_dx_al();
        }
        self
    }
    /// Reads config dword `address` (0xCF8 format) and writes its 4 bytes to COM1.
    fn dump_config_dword(&mut self, address: u32) -> &mut Self {
        self.mov_dx(0xcf8).mov_eax(address).out_dx_eax().mov_dx(0xcfc).in_eax_dx().print_eax()
    }
    /// Writes eax's 4 bytes, lowest first, to COM1.
    fn print_eax(&mut self) -> &mut Self {
        self.mov_dx(0x3f8);
        for i in 0..4 {
            if i > 0 {
                self.shr_eax_8();
            }
            self.out_dx_al();
        }
        self
    }
    /// Writes `address` to the config address port and reads the port back to COM1: with the
    /// address write queued by KVM (coalesced), the read must still see it.
    fn dump_config_address(&mut self, address: u32) -> &mut Self {
        self.mov_dx(0xcf8).mov_eax(address).out_dx_eax().in_eax_dx().print_eax()
    }
}

fn run_guest(code: &[u8], tag: &str) -> (Result<GuestExit, vmm::VmmError>, Vec<u8>) {
    let out = std::env::temp_dir().join(format!("vfvmm-host-tier-{tag}-{}.out", std::process::id()));
    let config = VmConfig {
        cpus: 1,
        memory: 16 << 20,
        hugepages: false,
        prefault: false,
        serial: SerialConfig::File(out.clone()),
        devices: vec![],
        api_socket: None,
        eject_timeout: std::time::Duration::from_secs(30),
        reacquire_timeout: std::time::Duration::from_secs(10),
        name: None,
        run_dir: std::env::temp_dir().join("vfvmm-test-run"),
        seccomp: vmm::process::seccomp::SeccompMode::Enforce,
    };
    let result = vmm::run_flat(code, 0x10000, &config);
    let bytes = std::fs::read(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    (result, bytes)
}

#[test]
fn serial_pci_config_and_power_off() {
    let mut asm = Asm::default();
    asm.print(b"vfvmm host tier\n")
        .dump_config_dword(0x8000_0000) // 00:00.0 vendor/device
        .dump_config_dword(0x8000_0008) // 00:00.0 class/revision
        .dump_config_dword(0x8000_f000) // 00:1e.0: empty slot (31 is the RCEC's)
        .dump_config_address(0x8000_0010)
        .print(b"\nbye\n")
        .mov_dx(0x600)
        .mov_al((5 << 2) | (1 << 5)) // SLP_TYP = S5, SLP_EN
        .out_dx_al()
        .hlt_forever();
    let (result, out) = run_guest(&asm.0, "pci");
    assert_eq!(result.expect("VM runs"), GuestExit::PowerOff);
    let mut want = b"vfvmm host tier\n".to_vec();
    want.extend_from_slice(&0x0008_1b36u32.to_le_bytes()); // host bridge 1b36:0008
    want.extend_from_slice(&0x0600_0000u32.to_le_bytes()); // class 06 (bridge) 00 (host)
    want.extend_from_slice(&0xffff_ffffu32.to_le_bytes()); // nothing in slot 30
    want.extend_from_slice(&0x8000_0010u32.to_le_bytes()); // the address port reads back
    want.extend_from_slice(b"\nbye\n");
    assert_eq!(out, want, "serial output: {:?}", String::from_utf8_lossy(&out));
}

#[test]
fn keyboard_controller_reset_is_a_reset() {
    let mut asm = Asm::default();
    asm.print(b"reset\n").mov_dx(0x64).mov_al(0xfe).out_dx_al().hlt_forever();
    let (result, out) = run_guest(&asm.0, "reset");
    assert_eq!(result.expect("VM runs"), GuestExit::Reset);
    assert_eq!(out, b"reset\n");
}

#[test]
fn acpi_reset_register_is_a_reset() {
    let mut asm = Asm::default();
    asm.mov_dx(0x602).mov_al(1).out_dx_al().hlt_forever();
    let (result, _) = run_guest(&asm.0, "acpireset");
    assert_eq!(result.expect("VM runs"), GuestExit::Reset);
}

#[test]
fn restart_through_the_reset_vector_is_a_reset() {
    // What Linux does on reboot with hardware-reduced ACPI and no EFI: jump to F000:FFF0.
    let mut asm = Asm::default();
    asm.print(b"far jump\n");
    asm.0.extend_from_slice(&[0xea, 0xf0, 0xff, 0x00, 0xf0]); // jmp far f000:fff0
    let (result, out) = run_guest(&asm.0, "resetvector");
    assert_eq!(result.expect("VM runs"), GuestExit::Reset);
    assert_eq!(out, b"far jump\n");
}
