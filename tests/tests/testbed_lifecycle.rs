//! The VF lifecycle's Paused state in the nested testbed (one L1 boot:
//! tests/testbed/scenarios/vfvmm-lifecycle.sh): quiesce seen from the L1 host, release and
//! re-acquire across VF re-creation with the guest's traffic coming back by itself, two VMs,
//! a VF that does not come back, bad input. `#[ignore]`d for a quick `cargo test`, run by
//! `make test`.

use std::sync::OnceLock;

use vfvmm_tests::{field, run_suite, SuiteRun};

fn suite() -> &'static SuiteRun {
    static RUN: OnceLock<SuiteRun> = OnceLock::new();
    RUN.get_or_init(|| run_suite("tests/testbed/scenarios/vfvmm-lifecycle.sh", 1800))
}

/// The `lifecycle.txt` line starting with `key ` (without the key).
fn fact(run: &SuiteRun, key: &str) -> String {
    run.try_fact("lifecycle.txt", key).unwrap_or_else(|| {
        panic!("no '{key}' in lifecycle.txt:\n{}\nlc-a stderr:\n{}", run.file("lifecycle.txt"), run.stderr("lc-a"))
    })
}

/// Milliseconds from resume to the guest's first ping reply through the VF, asserted <= 5 s
/// (the driver re-initialises its function through AER recovery).
fn assert_pings_again(line: &str) {
    assert!(line.starts_with("VFWAIT ") && field(line, "ok") == "1", "no ping through the VF: {line}");
    let ms: u64 = field(line, "ms").parse().unwrap_or(u64::MAX);
    assert!(ms <= 5_000, "ping came back after {ms} ms (must be <= 5 s): {line}");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn l1_suite_completes() {
    suite().assert_completed("lifecycle.txt");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn pause_quiesces_the_vf_as_seen_from_the_host() {
    let run = suite();
    assert_eq!(fact(run, "boot_ping"), "1");
    assert_eq!(fact(run, "paused_info"), "Paused vf0=Quiesced");
    let paused = u16::from_str_radix(&fact(run, "paused_command"), 16).expect("command register");
    assert_eq!(paused & 0x4, 0, "bus mastering is on while paused: {paused:#x}");
    // L1 really sent traffic to the paused guest, and nothing answered.
    assert_eq!(fact(run, "paused_l1_ping"), "5 packets transmitted, 0 received");
    let irqs = fact(run, "paused_irqs");
    let (before, after) = irqs.split_once(' ').expect("two counts");
    assert_eq!(before, after, "the VF's vfio MSI-X interrupts moved while paused");
    let resumed = u16::from_str_radix(&fact(run, "resumed_command"), 16).expect("command register");
    assert_eq!(resumed & 0x6, 0x6, "memory decoding and bus mastering back after resume: {resumed:#x}");
    assert_pings_again(&fact(run, "resumed_ping"));
    let l1_ping = fact(run, "resumed_l1_ping");
    assert!(l1_ping.starts_with("3 packets transmitted, ") && !l1_ping.ends_with(" 0 received"), "{l1_ping}");
    let moved = fact(run, "resumed_irqs");
    let (a, b) = moved.split_once(' ').expect("two counts");
    assert!(
        b.parse::<u64>().unwrap_or(0) > a.parse::<u64>().unwrap_or(u64::MAX),
        "interrupts did not move after resume: {moved}"
    );
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn five_release_recreate_resume_cycles_without_an_unplug() {
    let run = suite();
    let before = fact(run, "state_before");
    let ifindex = field(&before, "ifindex").to_string();
    let pcidevs = field(&before, "pcidevs").to_string();
    for cycle in 1..=5 {
        let lines: Vec<String> = run
            .file("lifecycle.txt")
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("cycle{cycle} ")).map(str::to_string))
            .collect();
        let find = |prefix: &str| {
            lines
                .iter()
                .find(|l| l.starts_with(prefix))
                .cloned()
                .unwrap_or_else(|| panic!("cycle {cycle}: no '{prefix}' in {lines:#?}"))
        };
        if cycle % 2 == 1 {
            assert!(find("how=api").ends_with("released_info Paused vf0=Released"), "{lines:#?}");
        }
        assert!(find("after_numvfs_info").ends_with("Paused vf0=Released"), "cycle {cycle}: {lines:#?}");
        let resumed = find("resume_ms");
        assert!(resumed.ends_with("info Running vf0=Bound"), "cycle {cycle}: {resumed}");
        assert_pings_again(&find("VFWAIT"));
        let state = find("VFSTATE");
        assert_eq!(field(&state, "ifindex"), ifindex, "cycle {cycle}: the guest's netdev changed: {state}");
        assert_eq!(field(&state, "pcidevs"), pcidevs, "cycle {cycle}: the guest's PCI devices changed: {state}");
        assert_eq!(
            field(&state, "removed"),
            field(&before, "removed"),
            "cycle {cycle}: the guest logged a removal: {state}"
        );
    }
    // echo 0 > sriov_numvfs returned within seconds every time (the VF was released at once).
    for line in run.file("lifecycle.txt").lines().filter_map(|l| l.strip_prefix("numvfs0_ms ")) {
        let ms: u64 = line.parse().unwrap_or(u64::MAX);
        assert!(ms < 5_000, "echo 0 > sriov_numvfs took {ms} ms");
    }
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn two_paused_vms_survive_a_vf_count_change() {
    let run = suite();
    assert_eq!(fact(run, "two_vms"), "vfs=4 a=Paused vf0=Released b=Paused vf0=Released");
    assert_pings_again(&fact(run, "two_vms_a"));
    assert_pings_again(&fact(run, "two_vms_b"));
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn a_vf_that_does_not_come_back_leaves_the_vm_running() {
    let run = suite();
    let missing = fact(run, "missing");
    assert!(missing.contains("info Running vf0=Released_("), "{missing}");
    let facts = run.file("lifecycle.txt");
    let lines: Vec<&str> = facts.lines().filter_map(|l| l.strip_prefix("missing ")).collect();
    assert!(lines.iter().any(|l| l.starts_with("guest_alive ALIVE")), "{lines:#?}");
    assert!(lines.contains(&"acquired_info Paused vf0=Quiesced"), "{lines:#?}");
    let wait = lines.iter().find(|l| l.starts_with("VFWAIT")).expect("ping after acquire");
    assert_pings_again(wait);
    let (last, before) = (fact(run, "final_state"), fact(run, "state_before"));
    assert_eq!(field(&last, "removed"), field(&before, "removed"), "the guest logged a removal: {last}");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn bad_lifecycle_requests_are_refused_and_change_nothing() {
    let run = suite();
    let facts = run.file("lifecycle.txt");
    let bad: Vec<&str> = facts.lines().filter_map(|l| l.strip_prefix("bad ")).collect();
    let find = |prefix: &str| {
        bad.iter().find(|l| l.starts_with(prefix)).copied().unwrap_or_else(|| panic!("no '{prefix}' in {bad:#?}"))
    };
    assert!(
        find("release-device vf0 ->")
            .ends_with("rc=1 vfctl: error: release-device needs a paused VM: pause it first (405)"),
        "{bad:#?}"
    );
    assert!(find("release-device nosuch ->").contains("(405)"), "{bad:#?}");
    assert!(find("acquire-device nosuch ->").ends_with("rc=1 vfctl: error: no device 'nosuch' (404)"), "{bad:#?}");
    let other = find("acquire-device vf0 path=");
    assert!(other.contains("rc=1") && other.contains("vendor:device") && other.ends_with("(409)"), "{other}");
    assert_eq!(fact(run, "after_bad_info"), "Paused vf0=Released");
    assert_pings_again(&fact(run, "after_bad"));
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn traffic_comes_back_after_a_plain_pause_and_after_a_release_without_recreation() {
    let run = suite();
    assert!(fact(run, "plain_added").contains("received=3/3"), "{}", fact(run, "plain_added"));
    // A plain pause: a VF whose ring the device consumed while bus mastering was off is reset
    // and its driver brought back (the idle VF at boot was dead after resume before that).
    assert_pings_again(&fact(run, "plain_vf0"));
    assert_pings_again(&fact(run, "plain_vf2"));
    // Released and re-opened at the same paths (vfio-pci reset both): igbvf is told by its PF.
    assert_eq!(fact(run, "reopen_info"), "Paused vf0=Released vf2=Released");
    assert_pings_again(&fact(run, "reopen_vf0"));
    assert_pings_again(&fact(run, "reopen_vf2"));
    let (state, before) = (fact(run, "reopen_state"), fact(run, "state_before"));
    assert_eq!(field(&state, "removed"), field(&before, "removed"), "the guest logged a removal: {state}");
    assert_eq!(fact(run, "reopen_recoveries"), "2", "both re-opened VFs are recovered (AER, FLR, re-enabled)");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn the_host_destroying_two_vfs_of_a_paused_vm_releases_both_and_they_come_back() {
    let run = suite();
    for k in 1..=3 {
        assert_eq!(
            fact(run, &format!("host_release{k}")),
            "alive=1 Paused vf0=Released vf2=Released",
            "round {k}: vfvmm must survive and release both"
        );
        assert_pings_again(&fact(run, &format!("host_release{k}_vf0")));
        assert_pings_again(&fact(run, &format!("host_release{k}_vf2")));
    }
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn the_guest_drivers_recover_through_aer_and_vm_info_counts_it() {
    let run = suite();
    let aer = fact(run, "guest_aer");
    assert_eq!(field(&aer, "bound"), "1", "the guest's AER service is not on the RCEC: {aer}");
    let fatal: u32 = field(&aer, "fatal").parse().unwrap_or(0);
    let recovered: u32 = field(&aer, "recovered").parse().unwrap_or(0);
    // At least: the plain pause, 5 cycles, two-VMs, missing, plain, reopen (x2), host releases.
    assert!(fatal >= 10 && recovered >= 10, "{aer}");
    assert_eq!(field(&aer, "failed"), "0", "{aer}");
    let info = fact(run, "recovery_info");
    let signalled: u32 = field(&info, "signalled").parse().unwrap_or(0);
    let resets: u32 = field(&info, "resets").parse().unwrap_or(0);
    assert!(signalled >= 10 && resets >= 10, "{info}");
    assert_eq!(field(&info, "delivered"), "True", "{info}");
    assert_ne!(field(&info, "reenabled_ms"), "None", "the last recovery did not end: {info}");
}
