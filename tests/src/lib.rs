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

/// Boots L1 once with `scenario` (a path relative to the repo) and returns its results.
/// There is no retry: an L1 run that times out or ends without its exit marker is reported
/// here with the reason, and the tests asserting on its results fail.
pub fn run_suite(scenario: &str, timeout_secs: u64) -> SuiteRun {
    build_images();
    vfvmm_binary();
    let name = Path::new(scenario).file_stem().and_then(|s| s.to_str()).unwrap_or("suite").to_string();
    let run = run_suite_once(scenario, &name, timeout_secs);
    match run.l1_exit {
        Some(124) => eprintln!("testbed: the L1 run for {scenario} timed out after {timeout_secs} s (no retry)"),
        Some(125) => {
            eprintln!(
                "testbed: the L1 run for {scenario} ended without its exit marker: L1 crashed or reset (no retry)"
            )
        }
        Some(126) => eprintln!(
            "testbed: the L1 run for {scenario} froze (no console output or heartbeat; no retry): {}",
            run.file("l1-freeze.txt").lines().next().unwrap_or("no dump")
        ),
        None => eprintln!("testbed: the L1 run for {scenario} was killed by a signal (no retry)"),
        _ => {}
    }
    run
}

fn run_suite_once(scenario: &str, name: &str, timeout_secs: u64) -> SuiteRun {
    let dir = std::env::temp_dir().join(format!("vfvmm-testbed-{name}-{}", std::process::id()));
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
