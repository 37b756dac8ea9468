//! The testbed's watchdog (issue 17): an L1 that stops making progress is caught from L0 within
//! the watchdog's limit, its CPUs' state is dumped through QMP into `l1-freeze.txt`, and the run
//! ends with exit 126 instead of waiting for its timeout.
//!
//! L1 is frozen for real here: QEMU's own `stop` (through the QMP socket run-l1.sh gives every
//! L1), not a stopped process inside L1, whose heartbeat would go on.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vfvmm_tests::{build_images, repo_root};

const WATCHDOG_SECS: u64 = 20;

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "no {what} after {limit:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// An idle L1 started with the watchdog at [`WATCHDOG_SECS`], up and with its symbols written.
fn idle_l1(name: &str) -> (std::process::Child, std::path::PathBuf) {
    build_images();
    let dir = std::env::temp_dir().join(format!("vfvmm-testbed-watchdog-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("results dir");
    let l1 = Command::new("bash")
        .arg(repo_root().join("tests/testbed/run-l1.sh"))
        .arg(repo_root().join("tests/testbed/scenarios/l1-idle.sh"))
        .arg(&dir)
        .arg("600")
        .env("VFVMM_L1_WATCHDOG", WATCHDOG_SECS.to_string())
        .stdout(std::fs::File::create(dir.join("run-l1.out")).expect("log file"))
        .stderr(std::fs::File::create(dir.join("run-l1.err")).expect("log file"))
        .spawn()
        .expect("run-l1.sh starts");
    eprintln!("testbed results in {}", dir.display());
    wait_for("L1-IDLE on L1's console", Duration::from_secs(240), || read(&dir, "l1-console.log").contains("L1-IDLE"));
    wait_for("L1 symbols", Duration::from_secs(60), || read(&dir, "l1-kallsyms").contains(" _etext"));
    std::thread::sleep(Duration::from_secs(3)); // the symbol file is complete
    (l1, dir)
}

/// Waits up to `limit` for run-l1.sh to end; its exit code (None: killed).
fn ends_within(l1: &mut std::process::Child, limit: Duration, dir: &Path) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = l1.try_wait().expect("run-l1.sh wait") {
            return status.code();
        }
        if start.elapsed() > limit {
            let _ = l1.kill();
            panic!("the frozen L1 was still running {limit:?} after it froze; see {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn a_frozen_l1_is_caught_by_the_watchdog_with_a_dump_of_its_cpus() {
    let (mut l1, dir) = idle_l1("stop");
    // Freeze it from L0: QEMU stops running L1's CPU (its monitor still answers).
    let socket = read(&dir, "l1-qmp");
    let stop = Command::new("python3")
        .arg(repo_root().join("tests/testbed/qmp.py"))
        .arg(socket.trim())
        .arg("stop")
        .output()
        .expect("qmp.py runs");
    assert!(stop.status.success(), "QMP stop: {}", String::from_utf8_lossy(&stop.stdout));
    let stopped = Instant::now();
    let code = ends_within(&mut l1, Duration::from_secs(WATCHDOG_SECS + 60), &dir);
    let caught_after = stopped.elapsed();
    let err = read(&dir, "run-l1.err");
    assert_eq!(code, Some(126), "run-l1.sh must say 'L1 frozen' (126):\n{err}");
    // Silence counts from the last heartbeat (every 5 s) or console line before the stop.
    assert!(caught_after >= Duration::from_secs(WATCHDOG_SECS - 7), "caught after {caught_after:?}: before the limit");
    assert!(err.contains("L1 frozen") && err.contains("L1-FREEZE status=paused"), "{err}");

    // The dump: every sample of the stopped CPU at the same place, resolved against L1's own
    // symbols, with its registers and stack.
    let dump = read(&dir, "l1-freeze.txt");
    let summary = dump.lines().next().unwrap_or_default();
    assert!(summary.starts_with("L1-FREEZE status=paused cpus=1 samples=20 where="), "{dump}");
    let wheres = summary.split(" where=").nth(1).and_then(|w| w.split(' ').next()).unwrap_or_default();
    assert_eq!(wheres.split(',').count(), 1, "a stopped CPU does not move: {summary}");
    assert!(wheres.ends_with(":20"), "{summary}");
    assert!(!dump.contains("no L1 symbols"), "{dump}");
    assert!(dump.contains("== L1 CPU 0: registers") && dump.contains("RIP="), "{dump}");
    assert!(dump.contains("== L1 CPU 0: L1 code addresses on the stack"), "{dump}");
    // An idle L1 is halted or scheduling in its kernel: the stack names L1 kernel functions.
    let stack = dump.split("L1 code addresses on the stack").nth(1).unwrap_or_default();
    assert!(stack.lines().skip(1).any(|l| l.trim().contains("+0x")), "no resolved frame:\n{dump}");
    eprintln!("watchdog caught the stopped L1 after {caught_after:?}: {summary}");
}

/// The whole emulator frozen (L0's QEMU process stopped, its monitor silent too): the watchdog
/// says so in the dump and kills that QEMU — a frozen L1 still costs about a minute.
#[test]
#[ignore = "nested testbed: run by make test"]
fn a_frozen_emulator_is_killed_by_the_watchdog() {
    let (mut l1, dir) = idle_l1("sigstop");
    let socket = read(&dir, "l1-qmp");
    let pgrep = Command::new("pgrep").args(["-f", &format!("unix:{},", socket.trim())]).output().expect("pgrep");
    let qemu: Vec<i32> = String::from_utf8_lossy(&pgrep.stdout)
        .lines()
        .filter_map(|p| p.trim().parse().ok())
        .filter(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.starts_with("qemu-system")))
        .collect();
    assert_eq!(qemu.len(), 1, "L1's QEMU: {pgrep:?}");
    let stop = Command::new("kill").args(["-STOP", &qemu[0].to_string()]).status().expect("kill");
    assert!(stop.success(), "SIGSTOP to L1's QEMU");
    let stopped = Instant::now();
    // Watchdog limit, dump attempt (20 s), quit attempt (5 s), then SIGKILL.
    let code = ends_within(&mut l1, Duration::from_secs(WATCHDOG_SECS + 60), &dir);
    let err = read(&dir, "run-l1.err");
    assert_eq!(code, Some(126), "{err}");
    let dump = read(&dir, "l1-freeze.txt");
    assert!(dump.starts_with("L1-FREEZE status=no-answer"), "{dump}");
    // Gone, or a zombie nobody reaped yet (its parent, timeout, is killed with it).
    let state = std::fs::read_to_string(format!("/proc/{}/stat", qemu[0])).unwrap_or_default();
    let state = state.rsplit_once(") ").map_or("", |(_, rest)| &rest[..1]);
    assert!(state.is_empty() || state == "Z", "the stopped QEMU was not killed (state {state})");
    eprintln!("the stopped emulator was killed after {:?}", stopped.elapsed());
}
