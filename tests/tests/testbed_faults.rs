//! Faults and leaks in the nested testbed (one L1 boot: tests/testbed/scenarios/vfvmm-faults.sh):
//! a guest that ignores eject, the PF's driver unbound under a running VM, and 50 hot-attach/
//! detach cycles with vfvmm's fds, MSI routes, BAR memory slots and RSS measured. `#[ignore]`d
//! for a quick `cargo test`, run by `make test`.

use std::sync::OnceLock;

use vfvmm_tests::{field, run_suite, SuiteRun};

fn suite() -> &'static SuiteRun {
    static RUN: OnceLock<SuiteRun> = OnceLock::new();
    RUN.get_or_init(|| run_suite("tests/testbed/scenarios/vfvmm-faults.sh", 1800))
}

/// The `faults.txt` line starting with `key ` (without the key).
fn fact(key: &str) -> String {
    suite().fact("faults.txt", key)
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn l1_suite_completes() {
    suite().assert_completed("faults.txt");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn a_guest_that_ignores_eject_times_out_and_the_vmm_stays_in_control() {
    assert_eq!(fact("ne_ged"), "GED-BOUND 0");
    assert_eq!(fact("ne_after_remove"), "Detaching");
    assert_eq!(fact("ne_timed_out"), "Detaching (eject timed out)");
    assert_eq!(fact("ne_guest"), "ALIVE", "the VM is fine");
    assert_eq!(fact("ne_retry"), "Detaching", "a second remove retries");
    let shutdown = fact("ne_shutdown");
    assert_eq!(field(&shutdown, "rc"), "0", "{shutdown}");
    assert!(field(&shutdown, "ms").parse::<u64>().unwrap_or(u64::MAX) < 10_000, "{shutdown}");
    assert_eq!(field(&shutdown, "vf0_driver"), "vfio-pci", "the VF is the host's again");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn the_pf_driver_unbound_under_a_running_vm_takes_the_vf_through_the_guest() {
    let unbind = fact("pu_unbind");
    assert_eq!(field(&unbind, "vfs"), "0", "{unbind}");
    assert_eq!(fact("pu_state"), "Detached");
    assert_eq!(fact("pu_guest"), "IGBVF-DEVICES 0", "the guest let go of it and runs on");
    assert_eq!(fact("pu_pf_back"), "driver=igb numvfs=2");
    assert_eq!(fact("pu_exit"), "rc=0");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn fifty_attach_detach_cycles_leak_nothing() {
    assert_eq!(fact("cy_cycles"), "ok=50");
    let (before, after) = (fact("cy_before"), fact("cy_after"));
    assert_eq!(field(&after, "fds"), field(&before, "fds"), "open fds: {before} -> {after}");
    assert_eq!(field(&after, "routes_slots"), field(&before, "routes_slots"), "{before} -> {after}");
    assert_eq!(field(&after, "routes_slots"), "0,0", "nothing attached: no route, no slot");
    let rss = |l: &str| field(l, "rss_kb").parse::<i64>().unwrap_or(i64::MAX);
    assert!(rss(&after) - rss(&before) < 4096, "RSS grew by more than 4 MiB: {before} -> {after}");
    assert_eq!(fact("cy_guest"), "ALIVE");
}
