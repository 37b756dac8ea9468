//! Hostile input against the real API thread with its seccomp filter on (issue 18): a VM runs
//! in a child process (this test binary re-run), and every route gets malformed and valid
//! requests with fields up to the API's size limits. The VMM must answer each one and live on.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmm::platform::config::{SerialConfig, VmConfig};

const CHILD: &str = "VFVMM_HOSTILE_CHILD";
/// In the child: descriptors to take as stdout and stderr (full pipes nobody reads).
const PIPED_FDS: &str = "VFVMM_HOSTILE_PIPES";

/// In the child: a VM whose guest prints dots forever, with its API socket in `dir`.
fn child(dir: &Path) -> ! {
    if let Ok(fds) = std::env::var(PIPED_FDS) {
        for (fd, target) in fds.split(' ').zip([1, 2]) {
            let fd: i32 = fd.parse().expect("fd");
            // SAFETY: dup2 of an inherited descriptor onto stdout/stderr of this process.
            assert_eq!(unsafe { libc::dup2(fd, target) }, target);
        }
    }
    vmm::init_logging();
    // Real mode at 1000:0000: mov dx,0x3f8; top: mov al,'.'; out dx,al; mov cx,0x400; loop $; jmp top
    let code = [0xba, 0xf8, 0x03, 0xb0, b'.', 0xee, 0xb9, 0x00, 0x04, 0xe2, 0xfe, 0xeb, 0xf6];
    let config = VmConfig {
        cpus: 1,
        memory: 16 << 20,
        hugepages: false,
        prefault: false,
        serial: SerialConfig::Tty,
        devices: vec![],
        api_socket: Some(dir.join("api.sock")),
        eject_timeout: Duration::from_secs(30),
        reacquire_timeout: Duration::from_secs(10),
        name: None,
        run_dir: dir.join("run"),
        seccomp: vmm::process::seccomp::SeccompMode::Enforce,
    };
    vmm::exit_with(vmm::run_flat(&code, 0x10000, &config))
}

#[test]
fn child_entry() {
    if let Ok(dir) = std::env::var(CHILD) {
        child(Path::new(&dir));
    }
}

struct Vm {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
    _readers: Vec<std::os::fd::OwnedFd>,
}

/// Starts the child VM; `piped`: its stdout and stderr are pipes nobody reads (kept open).
fn start(name: &str, piped: bool) -> Vm {
    let dir = std::env::temp_dir().join(format!("vfvmm-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("api.sock");
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"]).env(CHILD, &dir).env("RUST_LOG", "info");
    let mut pipes = Vec::new();
    cmd.stdout(Stdio::null()).stderr(std::fs::File::create(dir.join("stderr")).unwrap());
    if piped {
        // The test harness prints on stdout before the child's code runs: the child takes
        // these pipes as its stdout and stderr itself (PIPED_FDS).
        pipes = vec![full_pipe(), full_pipe()];
        cmd.env(PIPED_FDS, format!("{} {}", pipes[0].1.as_raw_fd(), pipes[1].1.as_raw_fd()));
    }
    let child = cmd.spawn().expect("child starts");
    // The child has its copies of the write ends. (Built before waiting: its drop kills the child.)
    let _readers = pipes.into_iter().map(|(read, _write)| read).collect();
    let vm = Vm { child, dir, sock, _readers };
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&vm.sock).is_err() {
        assert!(Instant::now() < deadline, "API socket never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    vm
}

/// A pipe of 4 KiB that is already full and that nobody reads: (read end, write end). The
/// write end is inherited by children (no close-on-exec).
fn full_pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array; each is owned exactly once below.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), 0) }, 0);
    // SAFETY: fds[0] and fds[1] are fresh descriptors owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let junk = [b'x'; 4096];
    // SAFETY: fcntl and write on our own descriptors, from a live buffer.
    unsafe {
        libc::fcntl(read.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, 4096);
        libc::fcntl(write.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
        while libc::write(write.as_raw_fd(), junk.as_ptr().cast(), junk.len()) > 0 {}
        // The child gets a blocking descriptor, as a supervisor's pipe is.
        libc::fcntl(write.as_raw_fd(), libc::F_SETFL, 0);
    }
    (read, write)
}

impl Vm {
    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// Waits up to `limit` for the child to exit; its exit code.
    fn exits_within(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `raw` and returns the HTTP status of the answer (0: no answer).
fn send_raw(sock: &Path, raw: &[u8]) -> u16 {
    let Ok(mut s) = UnixStream::connect(sock) else { return 0 };
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    let _ = s.write_all(raw);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    std::str::from_utf8(out.get(9..12).unwrap_or_default()).ok().and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn request(method: &str, endpoint: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

#[test]
fn a_long_device_id_is_refused_and_the_vmm_lives_on() {
    let mut vm = start("long-id", false);
    for n in [65, 1000, 8000, 20_000, 60_000] {
        let body = format!(r#"{{"path":"/sys/bus/pci/devices/0000:99:00.0","id":"{}"}}"#, "a".repeat(n));
        let status = send_raw(&vm.sock, &request("PUT", "vm.add-device", body.as_bytes()));
        assert_eq!(status, 400, "id of {n} characters; stderr:\n{}", vm.stderr());
        assert!(vm.alive(), "id of {n} characters killed the VMM:\n{}", vm.stderr());
    }
}

/// The hostile-input campaign: every route, with bodies and fields from empty to the API's
/// limits, malformed and well-formed. Every request gets an answer and the VMM lives on.
#[test]
fn every_route_survives_hostile_input_up_to_the_size_limits() {
    use api::rest::http::{MAX_BODY_BYTES, MAX_HEADER_BYTES};
    use api::rest::request::ROUTES;
    let mut vm = start("campaign", false);
    // Field sizes: small, just over the id limit, mid, and what fills a body to its limit.
    let fill = MAX_BODY_BYTES - 100;
    let sizes = [0, 1, 64, 65, 1000, 8000, 20_000, fill];
    let mut bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{}".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"{".to_vec(),
        vec![0xff, 0xfe, b'{', b'}'],
        vec![b'['; 10_000],                                      // deep nesting
        format!("{{\"id\":{}}}", "9".repeat(fill)).into_bytes(), // huge number
        vec![b'x'; MAX_BODY_BYTES],                              // at the limit, not JSON
        vec![b'x'; MAX_BODY_BYTES + 1],                          // over the limit
    ];
    for n in sizes {
        let long = "a".repeat(n);
        let path = format!("/sys/bus/pci/devices/{long}");
        bodies.push(format!(r#"{{"id":"{long}"}}"#).into_bytes());
        bodies.push(format!(r#"{{"id":"vf0","path":"{path}"}}"#).into_bytes());
        bodies.push(format!(r#"{{"path":"{path}","id":"{long}"}}"#).into_bytes());
        bodies.push(
            format!(r#"{{"path":"/sys/bus/pci/devices/0000:99:00.0","id":"{long}","iommu":false}}"#).into_bytes(),
        );
        bodies.push(format!(r#"{{"id":"vf0","{long}":1}}"#).into_bytes());
    }
    let mut sent = 0;
    for (method, endpoint) in ROUTES {
        for body in &bodies {
            // A request that would end the VM is left for the end.
            let ends_vm = matches!(endpoint, "vmm.shutdown" | "vm.shutdown") && body.is_empty();
            if ends_vm {
                continue;
            }
            for m in [method, if method == "GET" { "PUT" } else { "GET" }] {
                let status = send_raw(&vm.sock, &request(m, endpoint, body));
                sent += 1;
                assert!(
                    (200..600).contains(&status),
                    "{m} {endpoint} with a {}-byte body got no answer; stderr:\n{}",
                    body.len(),
                    vm.stderr()
                );
                assert!(vm.alive(), "{m} {endpoint} ({} bytes) ended the VMM:\n{}", body.len(), vm.stderr());
            }
        }
    }
    // The request line and headers, up to and over their limit.
    let long_path = format!("PUT /api/v1/{} HTTP/1.1\r\n\r\n", "p".repeat(MAX_HEADER_BYTES - 40));
    let many_headers = format!("GET /api/v1/vm.info HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(100));
    let big_header = format!("GET /api/v1/vm.info HTTP/1.1\r\nX-A: {}\r\n\r\n", "b".repeat(MAX_HEADER_BYTES));
    let lying_length = "PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n{}";
    for raw in [
        long_path.as_bytes(),
        many_headers.as_bytes(),
        big_header.as_bytes(),
        lying_length.as_bytes(),
        b"\x00\x01\x02\r\n\r\n",
    ] {
        let status = send_raw(&vm.sock, raw);
        sent += 1;
        assert!(
            (400..600).contains(&status),
            "{status} for {:?}...",
            String::from_utf8_lossy(&raw[..40.min(raw.len())])
        );
        assert!(vm.alive(), "ended the VMM:\n{}", vm.stderr());
    }
    // Still serving, and it shuts down cleanly.
    assert_eq!(send_raw(&vm.sock, &request("GET", "vm.info", b"")), 200);
    assert_eq!(send_raw(&vm.sock, &request("PUT", "vmm.shutdown", b"")), 204);
    assert_eq!(vm.exits_within(Duration::from_secs(5)), Some(0), "{}", vm.stderr());
    eprintln!("{sent} hostile requests answered");
}

/// vfvmm leaves within 3 s of being asked, with stdout and stderr on full pipes nobody reads
/// (a supervisor that stopped reading), the guest printing all along.
#[test]
fn stdout_and_stderr_nobody_reads_do_not_keep_the_vmm_from_exiting() {
    for how in ["vmm.shutdown", "SIGTERM"] {
        let mut vm = start(&format!("pipes-{how}"), true);
        std::thread::sleep(Duration::from_secs(1)); // the guest's output and the log pile up
        for _ in 0..100 {
            assert_eq!(send_raw(&vm.sock, &request("GET", "vm.info", b"")), 200);
        }
        let asked = Instant::now();
        if how == "SIGTERM" {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) };
        } else {
            assert_eq!(send_raw(&vm.sock, &request("PUT", "vmm.shutdown", b"")), 204);
        }
        let code = vm.exits_within(Duration::from_secs(3));
        let expected = if how == "SIGTERM" { 128 + libc::SIGTERM } else { 0 };
        assert_eq!(code, Some(expected), "{how}: vfvmm did not exit within 3 s");
        eprintln!("{how}: exited after {:?}", asked.elapsed());
    }
}
