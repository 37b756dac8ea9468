//! vfctl as the host's VF manager in the nested testbed (one L1 boot:
//! tests/testbed/scenarios/vfvmm-manager.sh): the VM registry and PF inventory, set-vfs refused
//! under VMs, reconfigure in pause and detach mode under three VMs, VFs that cannot stay, a
//! guest that ignores eject (rolled back). `#[ignore]`d for a quick `cargo test`, run by
//! `make test`.

use std::sync::OnceLock;

use vfvmm_tests::{field, run_suite, SuiteRun};

fn suite() -> &'static SuiteRun {
    static RUN: OnceLock<SuiteRun> = OnceLock::new();
    RUN.get_or_init(|| run_suite("tests/testbed/scenarios/vfvmm-manager.sh", 1800))
}

/// The `manager.txt` line starting with `key ` (without the key).
fn fact(key: &str) -> String {
    suite().fact("manager.txt", key)
}

/// A ping through the VF came back, within 10 s.
fn assert_pings(key: &str) {
    let line = fact(key);
    assert!(line.starts_with("VFWAIT ") && field(&line, "ok") == "1", "{key}: no ping through the VF: {line}");
    let ms: u64 = field(&line, "ms").parse().unwrap_or(u64::MAX);
    assert!(ms < 10_000, "{key}: ping came back after {ms} ms: {line}");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn l1_suite_completes() {
    suite().assert_completed("manager.txt");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn vms_register_by_name_and_the_pf_inventory_names_their_vfs() {
    let list = fact("vm_list");
    for vm in ["a pid ", "b pid "] {
        assert!(list.contains(vm), "{list}");
    }
    assert_eq!(list.matches("(Attached, Bound)").count(), 2, "{list}");
    assert_eq!(fact("pf_show"), "2 7 igb 0=a/vf0 1=b/vf0");
    assert!(
        fact("pf_list").starts_with("PF 0000:01:00.0 class ethernet driver igb netdev eth0 VFs 2/7"),
        "{}",
        fact("pf_list")
    );
    assert_eq!(fact("registry_after_exit"), "no running VM in /run/vfvmm", "entries removed at exit");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn set_vfs_is_refused_under_vms_and_a_dry_run_changes_nothing() {
    let refused = fact("setvfs_refused");
    assert!(refused.starts_with("rc=1 ") && refused.contains("VF 0 by a/vf0, VF 1 by b/vf0"), "{refused}");
    assert_eq!(fact("after_setvfs"), "numvfs=2");
    let dry = fact("dryrun");
    assert!(dry.starts_with("rc=0 plan:") && dry.ends_with("dry run: nothing changed"), "{dry}");
    assert_eq!(fact("after_dryrun"), "numvfs=2 a:Running vf0=Attached/Bound; b:Running vf0=Attached/Bound");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn reconfigure_by_pause_keeps_both_guests_devices_without_an_unplug() {
    let out = fact("pause");
    assert!(out.starts_with("rc=0 plan:") && out.contains("summary ("), "{out}");
    assert_eq!(fact("after_pause"), "numvfs=4 a:Running vf0=Attached/Bound; b:Running vf0=Attached/Bound");
    for vm in ["a", "b"] {
        assert_pings(&format!("pause_{vm}"));
        let (before, after) = (fact(&format!("before_{vm}")), fact(&format!("pause_state_{vm}")));
        for f in ["ifindex", "pcidevs", "removed"] {
            assert_eq!(field(&after, f), field(&before, f), "{vm}: {f} changed: {before} -> {after}");
        }
    }
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn attach_gives_a_third_vm_a_free_vf_and_detach_mode_reattaches_everyone() {
    let attach = fact("attach");
    assert!(attach.starts_with("rc=0 VF 2 (0000:01:10.4) attached to c as vf0 at "), "{attach}");
    assert_pings("attach_ping_c");
    let out = fact("detach");
    assert!(out.starts_with("rc=0 plan:") && out.contains("(detach mode)"), "{out}");
    assert!(fact("after_detach").starts_with("numvfs=4 "), "{}", fact("after_detach"));
    for vm in ["a", "b", "c"] {
        assert_pings(&format!("detach_ping_{vm}"));
    }
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn vfs_that_cannot_stay_are_refused_unless_allowed_then_detached_cleanly() {
    let refused = fact("lose_refused");
    assert!(
        refused.starts_with("rc=1 ") && refused.contains("b/vf0 (VF 1), c/vf0 (VF 2); add --allow-detach"),
        "{refused}"
    );
    let after = fact("after_lose_refused");
    assert!(after.starts_with("numvfs=4 ") && after.matches("Attached/Bound").count() == 3, "{after}");
    assert!(fact("lose").starts_with("rc=0 "), "{}", fact("lose"));
    assert_eq!(
        fact("after_lose"),
        "numvfs=1 a:Running vf0=Attached/Bound; b:Running vf0=Detached/Bound; c:Running vf0=Detached/Bound"
    );
    assert_pings("lose_ping_a");
    assert_eq!(fact("lose_guest_b"), "IGBVF-DEVICES 0", "b's guest let go of its VF");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn a_guest_that_ignores_eject_rolls_detach_mode_back() {
    assert_eq!(fact("ged_unbind_c"), "GED-BOUND 0", "c's guest no longer handles hotplug events");
    let out = fact("rollback");
    assert!(out.starts_with("rc=1 ") && out.contains("rolled back"), "{out}");
    assert!(out.contains("c: hot-detach stuck (VF 1) FAILED"), "{out}");
    let after = fact("after_rollback");
    assert!(after.starts_with("numvfs=2 a:Running vf0=Attach"), "the count is unchanged, a has its VF: {after}");
    assert_pings("rollback_ping_a");
}
