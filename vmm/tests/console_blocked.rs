//! A guest printing into a console nobody reads (stdout a pipe that is never read) keeps the
//! VMM in control: pause answers at once, vmm.shutdown ends the VM within seconds. Before the
//! console thread, the vCPU blocked in the write: pause failed after 5 s and shutdown never
//! completed. Its own test binary: it swaps this process's stdout.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vmm::platform::config::{SerialConfig, VmConfig};
use vmm::GuestExit;

fn call(sock: &Path, method: &str, endpoint: &str) -> u16 {
    let mut s = UnixStream::connect(sock).expect("connect");
    write!(s, "{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out[9..12].parse().expect("status")
}

#[test]
fn a_console_nobody_reads_never_stalls_the_vmm() {
    let dir = std::env::temp_dir().join(format!("vfvmm-console-blocked-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("api.sock");
    // stdout becomes a pipe nobody reads (it fills after 64 KiB).
    let mut fds = [0; 2];
    // SAFETY: plain fd juggling on this process's own descriptors, all checked.
    let saved = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        let saved = libc::dup(1);
        assert!(saved >= 0);
        assert_eq!(libc::dup2(fds[1], 1), 1);
        saved
    };
    // Real mode at 1000:0000: mov dx,0x3f8; top: mov al,'.'; out dx,al; jmp top
    let code = [0xba, 0xf8, 0x03, 0xb0, b'.', 0xee, 0xeb, 0xfb];
    let config = VmConfig {
        cpus: 1,
        memory: 16 << 20,
        hugepages: false,
        prefault: false,
        serial: SerialConfig::Tty,
        devices: vec![],
        api_socket: Some(sock.clone()),
        eject_timeout: Duration::from_secs(30),
        reacquire_timeout: Duration::from_secs(10),
        name: None,
        run_dir: dir.join("run"),
        seccomp: vmm::process::seccomp::SeccompMode::Enforce,
    };
    let vm = std::thread::spawn(move || vmm::run_flat(&code, 0x10000, &config));
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "API socket never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Long enough for the pipe and the console buffer to be full.
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    let paused = call(&sock, "PUT", "vm.pause");
    let pause_ms = t.elapsed().as_millis();
    let resumed = call(&sock, "PUT", "vm.resume");
    let t = Instant::now();
    let shut = call(&sock, "PUT", "vmm.shutdown");
    let mut exit = None;
    while t.elapsed() < Duration::from_secs(10) && exit.is_none() {
        if vm.is_finished() {
            exit = Some(vm.join().unwrap());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let shutdown_ms = t.elapsed().as_millis();
    // Give stdout back (the console thread's blocked write ends when the pipe closes).
    // SAFETY: as above.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        libc::dup2(null, 1);
        libc::close(fds[0]);
        libc::close(fds[1]);
        std::thread::sleep(Duration::from_millis(200));
        libc::dup2(saved, 1);
        libc::close(null);
        libc::close(saved);
    }
    // Asserted only now: a failure must not print into the full pipe.
    assert_eq!((paused, resumed, shut), (204, 204, 204), "refused with the console blocked");
    assert!(pause_ms < 2000, "pause took {pause_ms} ms");
    assert!(matches!(exit, Some(Ok(GuestExit::VmmShutdown))), "the VM did not stop in 10 s: {exit:?}");
    assert!(shutdown_ms < 5000, "shutdown took {shutdown_ms} ms");
    assert!(!sock.exists(), "socket removed");
    let _ = std::fs::remove_dir_all(&dir);
}
