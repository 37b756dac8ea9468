//! Seccomp filters: a call outside a thread's list ends the process with one line naming the
//! thread and the call; in log mode it goes through. Each case runs in a child process (this
//! test binary re-run with an environment variable), since the filter is for good.

use std::process::Command;

use vmm::process::seccomp::{install, set_mode, SeccompMode, ThreadRole};

const CHILD: &str = "VFVMM_SECCOMP_TEST_CHILD";

/// In the child: a vCPU-filtered thread opens a file (vCPUs open nothing).
fn child(mode: SeccompMode) {
    set_mode(mode).unwrap();
    let t = std::thread::spawn(move || {
        install(ThreadRole::Vcpu, mode).unwrap();
        std::fs::File::open("/proc/self/status").is_ok()
    });
    let opened = t.join().unwrap();
    println!("opened={opened}");
    std::process::exit(0);
}

fn run(mode: &str) -> (Option<i32>, String, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD, mode)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// In the child: a vCPU-filtered thread makes a listed ioctl (KVM_CHECK_EXTENSION, on a
/// descriptor that is not KVM's: it fails with ENOTTY but goes through), then an unlisted one
/// (TCGETS: a vCPU has no terminal).
fn child_ioctl() {
    set_mode(SeccompMode::Enforce).unwrap();
    let t = std::thread::spawn(move || {
        install(ThreadRole::Vcpu, SeccompMode::Enforce).unwrap();
        let mut termios = [0u8; 64];
        // SAFETY: ioctls on stdin with a live buffer; their results are only printed.
        let listed = unsafe { libc::ioctl(0, 0xae03, 0) };
        println!("listed={listed}");
        // SAFETY: as above; TCGETS writes at most a termios (60 bytes) into the 64-byte buffer.
        let unlisted = unsafe { libc::ioctl(0, libc::TCGETS, termios.as_mut_ptr()) };
        println!("unlisted={unlisted}");
    });
    let _ = t.join();
    std::process::exit(0);
}

#[test]
fn child_entry() {
    match std::env::var(CHILD).as_deref() {
        Ok("enforce") => child(SeccompMode::Enforce),
        Ok("log") => child(SeccompMode::Log),
        Ok("ioctl") => child_ioctl(),
        _ => {} // not the child: nothing to do
    }
}

#[test]
fn a_vcpu_thread_may_make_its_own_ioctls_only() {
    let (code, out, err) = run("ioctl");
    assert_eq!(code, Some(1), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("listed=-1"), "a listed request goes through (and fails: not KVM's fd): {out}");
    assert!(!out.contains("unlisted="), "the unlisted request did not return: {out}");
    assert!(err.contains("the vcpu thread made a forbidden system call (number 16, ioctl request 0x5401)"), "{err}");
}

#[test]
fn a_forbidden_call_ends_the_process_naming_the_thread_and_the_call() {
    let (code, out, err) = run("enforce");
    assert_eq!(code, Some(1), "stdout: {out}\nstderr: {err}");
    assert!(!out.contains("opened="), "the call did not return: {out}");
    assert!(
        err.contains("vfvmm: error: seccomp: the vcpu thread made a forbidden system call (number 257); see --seccomp"),
        "{err}"
    );
}

#[test]
fn log_mode_lets_the_call_through() {
    let (code, out, err) = run("log");
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("opened=true"), "{out}");
}
