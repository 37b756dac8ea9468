//! Bad command-line input: one clear error line, exit code 1, no panic, nothing started.

use std::process::Command;

fn fake_bzimage(dir: &std::path::Path) -> std::path::PathBuf {
    let mut b = vec![0u8; 0x400];
    b[0x202..0x206].copy_from_slice(b"HdrS");
    let p = dir.join("fake-bzimage");
    std::fs::write(&p, b).unwrap();
    p
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_vfvmm")).args(args).env("RUST_BACKTRACE", "1").output().expect("vfvmm runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_input_gets_one_clear_line() {
    let dir = std::env::temp_dir().join(format!("vfvmm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = fake_bzimage(&dir);
    let k = kernel.to_str().unwrap();
    let garbage = dir.join("garbage");
    std::fs::write(&garbage, b"not a kernel").unwrap();
    let g = garbage.to_str().unwrap();

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--kernel", "/nonexistent/vmlinuz"], "cannot read '/nonexistent/vmlinuz'"),
        (vec!["--kernel", g], "neither a bzImage nor an ELF vmlinux"),
        (vec!["--kernel", k, "--memory", "size=0"], "size=0 is too small"),
        (vec!["--kernel", k, "--memory", "size=64T"], "64 TiB of guest memory"),
        (vec!["--kernel", k, "--cpus", "boot=0"], "boot=0 is not a number of vCPUs"),
        (vec!["--kernel", k, "--frobnicate"], "'--frobnicate'"),
        (vec![], "--kernel"),
        (vec!["--kernel", k, "--serial", "pty"], "'pty' is not tty, off or file=PATH"),
        (vec!["--kernel", k, "--memory", "size=16M"], "Invalid bzImage"),
        // A huge timeout used to overflow Instant + Duration at the first remove-device.
        (vec!["--kernel", k, "--eject-timeout", "18446744073709551615"], "--eject-timeout"),
        (vec!["--kernel", k, "--eject-timeout", "0"], "--eject-timeout"),
        (vec!["--kernel", k, "--reacquire-timeout", "86401"], "--reacquire-timeout"),
        (vec!["--kernel", k, "--event-monitor", "file=/tmp/x"], "--event-monitor: 'file=/tmp/x'"),
        (vec!["--kernel", k, "--event-monitor", "fd=1"], "fd=1 is not a descriptor above 2"),
        (vec!["--kernel", k, "--event-monitor", "fd=77"], "--event-monitor fd=77: Bad file descriptor"),
        (vec!["--kernel", k, "--event-monitor", "path=/nonexistent/dir/ev"], "--event-monitor /nonexistent/dir/ev"),
    ];
    for (args, needle) in cases {
        let (code, stdout, stderr) = run(&args);
        assert_eq!(code, 1, "{args:?}: exit code; stderr: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: stdout {stdout:?}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: want one line, got {stderr:?}");
        assert!(lines[0].starts_with("vfvmm: error: "), "{args:?}: {stderr:?}");
        assert!(lines[0].contains(needle), "{args:?}: {stderr:?} lacks {needle:?}");
        assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{args:?}: {stderr:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_and_version_exit_zero() {
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for opt in ["--kernel", "--initramfs", "--cmdline", "--cpus", "--memory", "--serial", "--device", "--api-socket"] {
        assert!(stdout.contains(opt), "help lacks {opt}");
    }
    let (code, stdout, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("vfvmm "));
}
