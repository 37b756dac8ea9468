//! Drives vfvmm's nested testbed (see `resources/` and `tests/testbed/`): builds the images,
//! boots L1 under QEMU/TCG once per scenario suite, and hands the results to the tests.
//!
//! Scenario scripts run inside L1 and leave, for each VMM run NAME, `NAME.log` (the guest
//! console), `NAME.rc` (exit code), `NAME.err` and timing files in the results directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Results of one L1 run.
#[derive(Debug)]
pub struct SuiteRun {
    pub dir: PathBuf,
    pub l1_exit: Option<i32>,
}

impl SuiteRun {
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn stderr(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.err"))).unwrap_or_default()
    }

    /// Exit code of VMM run `name`, if it ran.
    pub fn rc(&self, name: &str) -> Option<i32> {
        std::fs::read_to_string(self.dir.join(format!("{name}.rc"))).ok()?.trim().parse().ok()
    }

    pub fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// The line of the facts file `facts` (a scenario's `fact KEY ...` lines) starting with
    /// `key `, without the key.
    pub fn try_fact(&self, facts: &str, key: &str) -> Option<String> {
        self.file(facts).lines().find_map(|l| l.strip_prefix(&format!("{key} "))).map(str::to_string)
    }

    /// [`try_fact`](Self::try_fact), panicking with the facts file when the key is missing.
    pub fn fact(&self, facts: &str, key: &str) -> String {
        self.try_fact(facts, key)
            .unwrap_or_else(|| panic!("no '{key}' in {facts}:\n{}\nsee {}", self.file(facts), self.dir.display()))
    }

    /// The L1 run ended cleanly and its scenario wrote its last fact (`done`) into `facts`.
    pub fn assert_completed(&self, facts: &str) {
        assert_eq!(self.l1_exit, Some(0), "L1 run failed, see {}", self.dir.display());
        assert!(self.file(facts).lines().any(|l| l == "done"), "{}", self.file(facts));
    }

    /// The console lines that carry L2 markers (`L2-...`), trimmed.
    pub fn markers(&self, name: &str) -> Vec<String> {
        self.log(name).lines().filter_map(|l| l.find("L2-").map(|i| l[i..].trim_end().to_string())).collect()
    }
}

/// The value of `name=` in a fact line of `name=value` fields.
pub fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in '{line}'"))
}

/// Builds (or reuses) the testbed images; panics with the builder's output on failure.
pub fn build_images() {
    let out =
        Command::new("bash").arg(repo_root().join("resources/build.sh")).output().expect("resources/build.sh runs");
    assert!(
        out.status.success(),
        "resources/build.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The release vfvmm binary the scenarios run inside L1 (built by `make test`).
pub fn vfvmm_binary() -> PathBuf {
    let bin = repo_root().join("target/release/vfvmm");
    assert!(bin.exists(), "{} is missing: run `cargo build --release` (make test does)", bin.display());
    bin
}

/// Boots L1 with `scenario` (a path relative to the repo) and returns its results.
///
/// An L1 run is re-run once, and only when run-l1.sh's watchdog found L1 frozen *and* its dump
/// shows L1's own kernel never ran in any of its RIP samples (2 s): L1's CPU stayed in guest
/// or user code without its timer interrupts ever being delivered, which no program inside L1,
/// vfvmm included, can cause — the emulator (L0's TCG running nested SVM) stopped serving L1.
/// That re-run is printed with the dump's summary ("testbed: RETRY ..."). Every other failure
/// (a time-out, no exit marker, a freeze with L1's kernel seen running, a failed assertion) is
/// reported as it is, with the reason.
pub fn run_suite(scenario: &str, timeout_secs: u64) -> SuiteRun {
    build_images();
    vfvmm_binary();
    let name = Path::new(scenario).file_stem().and_then(|s| s.to_str()).unwrap_or("suite").to_string();
    let mut run = run_suite_once(scenario, &name, timeout_secs, 1);
    if let Some(summary) = run.emulator_freeze() {
        eprintln!("testbed: RETRY 1 of {scenario}: L1 froze outside its own kernel (emulator): {summary}");
        eprintln!("testbed: the frozen run's results stay in {}", run.dir.display());
        run = run_suite_once(scenario, &name, timeout_secs, 2);
    }
    match run.l1_exit {
        Some(124) => eprintln!("testbed: the L1 run for {scenario} timed out after {timeout_secs} s"),
        Some(125) => eprintln!("testbed: the L1 run for {scenario} ended without its exit marker: L1 crashed or reset"),
        Some(126) => eprintln!(
            "testbed: the L1 run for {scenario} froze (no console output or heartbeat): {}",
            run.file("l1-freeze.txt").lines().next().unwrap_or("no dump")
        ),
        None => eprintln!("testbed: the L1 run for {scenario} was killed by a signal"),
        _ => {}
    }
    run
}

impl SuiteRun {
    /// The watchdog's summary when this run froze with L1's kernel never seen running (only
    /// `elsewhere` and `l1-user` RIP samples): see [`run_suite`].
    pub fn emulator_freeze(&self) -> Option<String> {
        if self.l1_exit != Some(126) {
            return None;
        }
        let dump = self.file("l1-freeze.txt");
        let summary = dump.lines().next()?.to_string();
        frozen_outside_l1_kernel(&summary).then_some(summary)
    }
}

/// Whether a watchdog summary (`L1-FREEZE status=running ... where=<class>:<n>,...`) says
/// L1's CPUs ran, and never in L1's own kernel or modules.
pub fn frozen_outside_l1_kernel(summary: &str) -> bool {
    let running = summary.split_whitespace().any(|w| w == "status=running");
    let Some(wheres) = summary.split_whitespace().find_map(|w| w.strip_prefix("where=")) else { return false };
    let classes: Vec<&str> = wheres.split(',').filter_map(|c| c.split(':').next()).collect();
    running && !classes.is_empty() && classes.iter().all(|c| *c == "elsewhere" || *c == "l1-user")
}

fn run_suite_once(scenario: &str, name: &str, timeout_secs: u64, attempt: u32) -> SuiteRun {
    let dir = std::env::temp_dir().join(format!("vfvmm-testbed-{name}-{}-{attempt}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("results dir");
    let script = repo_root().join(scenario);
    let status = Command::new("bash")
        .arg(repo_root().join("tests/testbed/run-l1.sh"))
        .arg(&script)
        .arg(&dir)
        .arg(timeout_secs.to_string())
        .stdout(std::fs::File::create(dir.join("run-l1.out")).expect("log file"))
        .stderr(std::process::Stdio::inherit())
        .status()
        .expect("run-l1.sh runs");
    eprintln!("testbed results in {}", dir.display());
    SuiteRun { dir, l1_exit: status.code() }
}

#[cfg(test)]
mod tests {
    use super::frozen_outside_l1_kernel;

    #[test]
    fn only_a_freeze_outside_l1_s_kernel_is_the_emulator_s() {
        let s = |w: &str, status: &str| format!("L1-FREEZE status={status} cpus=1 samples=20 where={w} top=x (20/20)");
        assert!(frozen_outside_l1_kernel(&s("elsewhere:20", "running")));
        assert!(frozen_outside_l1_kernel(&s("elsewhere:12,l1-user:8", "running")));
        assert!(!frozen_outside_l1_kernel(&s("elsewhere:19,l1-kernel:1", "running")), "L1's kernel ran");
        assert!(!frozen_outside_l1_kernel(&s("l1-module:20", "running")), "stuck in L1's KVM");
        assert!(!frozen_outside_l1_kernel(&s("elsewhere:20", "paused")), "stopped on purpose");
        assert!(!frozen_outside_l1_kernel("L1-FREEZE status=running"), "no samples");
        assert!(!frozen_outside_l1_kernel(""));
    }
}
