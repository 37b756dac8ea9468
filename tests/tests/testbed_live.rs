//! Replacing VFs under running VMs in the nested testbed (one L1 boot:
//! tests/testbed/scenarios/vfvmm-live.sh): `vfctl reconfigure --mode live` under two VMs whose
//! vCPUs never stop (heartbeat gaps against a detach-mode reconfigure of the same run), an NVMe
//! VF with its writer running, a VF that never comes back, bad input. `#[ignore]`d for a quick
//! `cargo test`, run by `make test`.

use std::sync::OnceLock;

use vfvmm_tests::{field, run_suite, SuiteRun};

fn suite() -> &'static SuiteRun {
    static RUN: OnceLock<SuiteRun> = OnceLock::new();
    RUN.get_or_init(|| run_suite("tests/testbed/scenarios/vfvmm-live.sh", 1800))
}

/// The `live.txt` line starting with `key ` (without the key).
fn fact(key: &str) -> String {
    suite().fact("live.txt", key)
}

fn ms(line: &str, name: &str) -> u64 {
    field(line, name).parse().unwrap_or_else(|_| panic!("{name}= is not a number of ms in '{line}'"))
}

/// Under nested TCG a running guest's heartbeat (every 100 ms) shows gaps of up to ~1 s of
/// plain jitter; a stopped vCPU shows the whole window (4.4-4.7 s measured in pause mode).
const JITTER_MS: u64 = 1_500;

#[test]
#[ignore = "nested testbed: run by make test"]
fn l1_suite_completes() {
    suite().assert_completed("live.txt");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn a_live_reconfigure_never_stops_the_vcpus_and_traffic_comes_back_by_itself() {
    let live = fact("live");
    assert!(live.starts_with("rc=0 ") && live.contains("(live mode)"), "{live}");
    assert!(!live.contains("pause"), "nothing paused: {live}");
    assert!(fact("detach").starts_with("rc=0 "), "{}", fact("detach"));
    for vm in ["a", "b"] {
        let l = fact(&format!("live_{vm}"));
        let d = fact(&format!("detach_{vm}"));
        eprintln!("live {vm}: {l}\ndetach {vm}: {d}");
        // The vCPUs ran throughout: the heartbeat's longest gap is jitter, as in detach mode.
        assert!(ms(&l, "hb_gap_ms") <= JITTER_MS.max(ms(&d, "hb_gap_ms") + 500), "{vm}: {l} / detach: {d}");
        let pong = fact(&format!("live_pong_{vm}"));
        eprintln!("live {vm}: {pong}; detach: {}", fact(&format!("detach_pong_{vm}")));
        assert_ne!(field(&pong, "pong_after_ms"), "-", "{vm}: no ping reply after the change: {pong}");
        // Same device to the guest: same netdev, same ifindex, no PCI remove/add.
        let before = fact(&format!("before_{vm}"));
        let after = fact(&format!("live_state_{vm}"));
        for f in ["if", "ifindex", "pcidevs", "removed"] {
            assert_eq!(field(&before, f), field(&after, f), "{vm}: {f} changed: {before} -> {after}");
        }
        // The guest's driver went through PCIe error recovery, and it succeeded.
        let aer = fact(&format!("live_aer_{vm}"));
        assert!(field(&aer, "recovered").parse::<u32>().unwrap_or(0) >= 1, "{vm}: {aer}");
        assert_eq!(field(&aer, "failed"), "0", "{vm}: {aer}");
        let info = fact(&format!("live_info_{vm}"));
        assert!(info.starts_with("Running Bound released_while_running "), "{vm}: {info}");
        assert!(!info.ends_with(" None"), "{vm}: the guest never re-enabled its function: {info}");
    }
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn the_event_stream_tells_an_orchestrator_what_happened() {
    // In order: the device was added, the VM booted, the guest attached it, released live, the guest
    // told, the device acquired again, the guest's reset done and the function re-enabled.
    let events = fact("live_events_a");
    let want = ["added", "booted", "attached", "live-released", "error-signalled", "acquired", "reset", "recovered"];
    let mut at = 0;
    for w in want {
        let pos = events[at..].find(w).unwrap_or_else(|| panic!("no '{w}' after position {at} in: {events}"));
        at += pos + w.len();
    }
    let never = fact("never_events_a");
    assert!(never.contains("given-up(not_back_within_10_s_of_its_live_release)"), "{never}");
    assert!(never.contains("paused") && never.contains("resumed"), "{never}");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn bad_live_requests_are_refused_and_change_nothing() {
    let bad = suite().file("live.txt");
    let find = |p: &str| {
        bad.lines().find(|l| l.starts_with(&format!("bad {p}"))).unwrap_or_else(|| panic!("no 'bad {p}'")).to_string()
    };
    assert!(find("release-device nosuch --live").ends_with("(404)"), "{}", find("release-device nosuch --live"));
    assert!(find("acquire-device vf0").ends_with("is Bound, not released (409)"), "{}", find("acquire-device vf0"));
    let lines: Vec<&str> = bad.lines().filter(|l| l.starts_with("bad release-device vf0 --live")).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].ends_with("(409)"), "twice: {}", lines[0]);
    assert!(lines[1].ends_with("(405)"), "while paused: {}", lines[1]);
    let after = fact("after_bad");
    assert!(after.starts_with("VFWAIT ") && field(&after, "ok") == "1", "{after}");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn a_vf_that_never_comes_back_is_given_up_and_the_vm_runs_on() {
    assert!(fact("never_release").starts_with("rc=0"), "{}", fact("never_release"));
    assert_eq!(fact("never_info"), "Running Released_(not_back_within_10_s_of_its_live_release)");
    let alive = fact("never_alive");
    assert!(ms(&alive, "hb_gap_ms") <= JITTER_MS, "the guest stalled: {alive}");
    let guest = fact("never_guest");
    assert!(guest.starts_with("GAVEUP ") && field(&guest, "failed") != "0", "{guest}");
    // A pause + acquire-device + resume resolves it: the device is bound again.
    assert!(fact("never_acquire").starts_with("rc=0"), "{}", fact("never_acquire"));
    assert_eq!(fact("never_after"), "Running vf0=Bound");
    eprintln!("after the give-up and a re-acquire: {}", fact("never_ping"));
    assert_eq!(fact("never_vmm"), "alive=1");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn an_nvme_vf_replaced_under_its_writer_loses_nothing() {
    assert!(fact("nvme_fill").ends_with(" blocks=64 base=0 rc=0"), "{}", fact("nvme_fill"));
    assert!(fact("nvme_live").starts_with("rc=0 "), "{}", fact("nvme_live"));
    let gap = fact("nvme_gap");
    eprintln!("nvme live: {gap}");
    assert_ne!(field(&gap, "write_after_ms"), "-", "no write after the change: {gap}");
    assert!(ms(&gap, "hb_gap_ms") <= JITTER_MS, "the guest stalled: {gap}");
    let writer = fact("nvme_writer");
    assert_eq!(field(&writer, "errors"), "0", "the application saw an error: {writer}");
    let verify = fact("nvme_verify");
    assert_eq!(field(&verify, "good"), "64", "a block is stale, ahead or corrupt: {verify}");
    assert_eq!(field(&fact("nvme_dmesg"), "ioerr"), "0", "{}", fact("nvme_dmesg"));
    assert_eq!(fact("nvme_errors"), "0");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn live_released_vfs_come_back_by_themselves_when_the_host_binds_them() {
    assert_eq!(fact("auto_released"), "a=Released_live b=Released_live");
    let back = fact("auto_back");
    assert!(back.starts_with("a=Bound b=Bound "), "not re-acquired on the kernel's bind event: {back}");
    for vm in ["a", "b"] {
        let ping = fact(&format!("auto_ping_{vm}"));
        assert!(ping.starts_with("VFWAIT ") && field(&ping, "ok") == "1", "{vm}: {ping}");
    }
}
