//! The REST API against a running VM on this machine's /dev/kvm: a hand-assembled guest
//! prints on COM1 without end; ping, info, pause (output stops), pause again (405), resume
//! (output goes on), resume again (405), unknown route (404), vmm.shutdown (clean exit).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vmm::platform::config::{SerialConfig, VmConfig};
use vmm::GuestExit;

fn call(sock: &Path, method: &str, endpoint: &str) -> (u16, String) {
    let mut s = UnixStream::connect(sock).expect("connect");
    write!(s, "{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().expect("status");
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Whether the file grows beyond `from` within `timeout`.
fn grows_within(p: &Path, from: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if size(p) > from {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The file's size once it stopped changing for 200 ms.
fn settled(p: &Path) -> u64 {
    let mut last = size(p);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = size(p);
        if now == last {
            return now;
        }
        last = now;
    }
}

#[test]
fn ping_info_pause_resume_shutdown() {
    let dir = std::env::temp_dir().join(format!("vfvmm-api-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("api.sock");
    let out = dir.join("serial.out");
    // Real mode at 1000:0000: mov dx,0x3f8; top: mov al,'.'; out dx,al; mov cx,0x4000; loop $; jmp top
    let code = [0xba, 0xf8, 0x03, 0xb0, b'.', 0xee, 0xb9, 0x00, 0x40, 0xe2, 0xfe, 0xeb, 0xf6];
    let config = VmConfig {
        cpus: 2,
        memory: 16 << 20,
        hugepages: false,
        prefault: false,
        serial: SerialConfig::File(out.clone()),
        devices: vec![],
        api_socket: Some(sock.clone()),
        eject_timeout: std::time::Duration::from_secs(30),
        reacquire_timeout: std::time::Duration::from_secs(10),
        name: Some("api-test".into()),
        run_dir: dir.join("run"),
        seccomp: vmm::process::seccomp::SeccompMode::Enforce,
    };
    let run_dir = dir.join("run");
    let vm = std::thread::spawn(move || vmm::run_flat(&code, 0x10000, &config));
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "API socket never came up");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Registered for vfctl while it runs.
    let vms = api::host::registry::list(&run_dir).unwrap();
    assert_eq!(vms.len(), 1);
    assert_eq!((vms[0].name.as_str(), vms[0].pid, &vms[0].socket), ("api-test", std::process::id(), &sock));
    let (status, body) = call(&sock, "GET", "vmm.ping");
    assert_eq!(status, 200);
    let ping: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ping["pid"], std::process::id());
    let (status, body) = call(&sock, "GET", "vm.info");
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["state"], "Running");
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], 2);
    let memory = &info["config"]["memory"];
    assert_eq!(
        (memory["size"].as_u64(), memory["hugepages"].as_bool(), memory["prefault"].as_bool()),
        (Some(16 << 20), Some(false), Some(false))
    );

    // The guest is printing (polled: a loaded 2-core machine may take a while).
    let before = size(&out);
    assert!(grows_within(&out, before, Duration::from_secs(10)), "guest makes progress");

    assert_eq!(call(&sock, "PUT", "vm.pause").0, 204);
    // Console output is written by the console thread: let what the guest printed before the
    // pause reach the file, then nothing more may come.
    let paused_at = settled(&out);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(size(&out), paused_at, "no progress while paused");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&call(&sock, "GET", "vm.info").1).unwrap()["state"], "Paused");
    let (status, body) = call(&sock, "PUT", "vm.pause");
    assert_eq!(status, 405, "{body}");
    assert!(body.contains("the VM is Paused, it cannot pause"), "{body}");

    assert_eq!(call(&sock, "PUT", "vm.resume").0, 204);
    assert!(grows_within(&out, paused_at, Duration::from_secs(10)), "progress after resume");
    assert_eq!(call(&sock, "PUT", "vm.resume").0, 405);
    assert_eq!(call(&sock, "GET", "vm.nothing").0, 404);

    assert_eq!(call(&sock, "PUT", "vmm.shutdown").0, 204);
    let exit = vm.join().unwrap().expect("VM ran");
    assert_eq!(exit, GuestExit::VmmShutdown);
    assert!(!sock.exists(), "socket removed on exit");
    assert!(api::host::registry::list(&run_dir).unwrap().is_empty(), "registry entry removed on exit");
    let _ = std::fs::remove_dir_all(&dir);
}
