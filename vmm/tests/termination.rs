//! SIGTERM stops a running VM cleanly: the vCPU threads are stopped and `run_flat` returns
//! `Terminated(SIGTERM)` instead of the process dying. (Its own test binary: the handler is
//! process-wide.)

use std::time::Duration;

use vmm::platform::config::{SerialConfig, VmConfig};
use vmm::GuestExit;

#[test]
fn sigterm_stops_the_vm_cleanly() {
    // Real mode: hlt; jmp back to hlt — the guest idles forever.
    let code = [0xf4, 0xeb, 0xfd];
    let config = VmConfig {
        cpus: 2,
        memory: 16 << 20,
        hugepages: false,
        prefault: false,
        serial: SerialConfig::Off,
        devices: vec![],
        api_socket: None,
        eject_timeout: std::time::Duration::from_secs(30),
        reacquire_timeout: std::time::Duration::from_secs(10),
        name: None,
        run_dir: std::env::temp_dir().join("vfvmm-test-run"),
        seccomp: vmm::process::seccomp::SeccompMode::Enforce,
    };
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: sending a signal to our own process; the VMM has a handler installed.
        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    });
    let exit = vmm::run_flat(&code, 0x10000, &config).expect("VM runs");
    assert_eq!(exit, GuestExit::Terminated(libc::SIGTERM));
    assert_eq!(exit.exit_code(), 128 + libc::SIGTERM);
}
