//! Issue 3 acceptance in the nested testbed: a real igb VF passed into L2 by vfvmm.
//! One L1 boot (tests/testbed/scenarios/vfvmm-vf.sh) serves every check; `#[ignore]`d for a
//! quick `cargo test`, run by `make test`.

use std::sync::OnceLock;

use vfvmm_tests::{run_suite, SuiteRun};

fn suite() -> &'static SuiteRun {
    static RUN: OnceLock<SuiteRun> = OnceLock::new();
    RUN.get_or_init(|| run_suite("tests/testbed/scenarios/vfvmm-vf.sh", 900))
}

/// Sum of the counters whose interrupt name ends with `suffix` in `L2-IRQ-<when>` lines.
fn irq_count(run: &SuiteRun, name: &str, when: &str, suffix: &str) -> Option<u64> {
    run.markers(name)
        .iter()
        .filter_map(|m| m.strip_prefix(&format!("L2-IRQ-{when} ")))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(irq, _)| irq.ends_with(suffix))
        .map(|(_, n)| n.parse::<u64>().ok())
        .sum()
}

/// Everything a VM with a working VF shows.
fn assert_vf_works(run: &SuiteRun, name: &str, ip: &str) {
    let markers = run.markers(name);
    let ctx = || format!("{name}: markers {markers:#?}\nstderr: {}", run.stderr(name));
    assert!(markers.iter().any(|m| m.starts_with("L2-PCIDEV 0000:00:01.0 0x8086 0x10ca")), "{}", ctx());
    assert!(markers.iter().any(|m| m == "L2-VF-BOUND 0000:00:01.0 driver=igbvf"), "{}", ctx());
    assert!(
        markers.iter().any(|m| m.starts_with("L2-VF-NET ") && m.ends_with(&format!("carrier=1 ip={ip}"))),
        "{}",
        ctx()
    );
    assert!(markers.iter().any(|m| m == "L2-PING sent=3 received=3"), "{}", ctx());
    for queue in ["-rx-0", "-tx-0"] {
        let before = irq_count(run, name, "BEFORE", queue).unwrap_or_else(|| panic!("no {queue} counter: {}", ctx()));
        let after = irq_count(run, name, "AFTER", queue).unwrap_or_else(|| panic!("no {queue} counter: {}", ctx()));
        assert!(after > before, "{queue} MSI-X count did not grow ({before} -> {after}): {}", ctx());
    }
    assert_eq!(run.rc(name), Some(0), "{}", ctx());
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn vf_at_boot_binds_pings_and_takes_msix_interrupts() {
    assert_vf_works(suite(), "vf-boot", "192.0.2.10");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn bar0_is_mapped_not_trapped() {
    let run = suite();
    let err = run.stderr("vf-boot");
    assert!(err.contains("vf0 BAR0: 0 trapped accesses forwarded to the device"), "{err}");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn vf_is_reset_and_released_at_exit() {
    let run = suite();
    for name in ["vf-boot", "vf-reuse", "vm-a", "vm-b"] {
        let err = run.stderr(name);
        assert!(err.contains("vf0: 0000:01:10.") && err.contains("quiesced, reset and released"), "{name}: {err}");
    }
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn vf_is_released_and_reusable_after_exit() {
    assert_vf_works(suite(), "vf-reuse", "192.0.2.10");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn two_vms_with_one_vf_each_ping_at_once() {
    let run = suite();
    assert_vf_works(run, "vm-a", "192.0.2.10");
    assert_vf_works(run, "vm-b", "192.0.2.11");
    assert_eq!(run.file("final.drivers").trim(), "vfio-pci vfio-pci");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn bad_devices_fail_before_the_guest_starts_and_change_nothing() {
    let run = suite();
    for (name, needle, drivers) in [
        ("bad-not-pci", "not a PCI device", "vfio-pci igbvf"),
        ("bad-host-driver", "bound to igbvf, not vfio-pci", "vfio-pci igbvf"),
        ("bad-pf", "bound to igb, not vfio-pci", "vfio-pci igbvf"),
        ("bad-twice", "given twice", "vfio-pci igbvf"),
    ] {
        let err = run.stderr(name);
        assert_eq!(run.rc(name), Some(1), "{name}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{name}: one error line, got {err:?}");
        assert!(lines[0].starts_with("vfvmm: error: ") && lines[0].contains(needle), "{name}: {err}");
        assert!(run.log(name).is_empty(), "{name}: the guest must not start");
        assert_eq!(run.file(&format!("{name}.drivers")).trim(), drivers, "{name}: drivers changed");
    }
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn a_non_viable_iommu_group_is_refused_and_left_alone() {
    let run = suite();
    let err = run.stderr("bad-group");
    let other = run.file("bad-group.other");
    assert_eq!(run.rc("bad-group"), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("is not viable") && err.contains(&format!("{} is bound to e1000", other.trim())), "{err}");
    assert!(run.log("bad-group").is_empty());
    assert_eq!(run.file("bad-group.drivers").trim(), "vfio-pci e1000");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn vfctl_info_shows_the_vf_attached_pause_resume_and_shutdown_vmm() {
    let run = suite();
    assert_vf_works_until_ping(run, "vf-api");
    let info: serde_json::Value = serde_json::from_str(&run.file("vf-api.info")).unwrap_or_else(|e| {
        panic!("vf-api.info is not JSON ({e}): {:?}\nstderr: {}", run.file("vf-api.info"), run.stderr("vf-api"))
    });
    assert_eq!(info["state"], "Running");
    let dev = &info["devices"][0];
    assert_eq!(
        (dev["id"].as_str(), dev["bdf"].as_str(), dev["state"].as_str()),
        (Some("vf0"), Some("0000:00:01.0"), Some("Attached")),
        "{info}"
    );
    assert!(dev["path"].as_str().unwrap_or_default().ends_with("0000:01:10.0"), "{info}");
    assert!(run.file("vf-api.info-human").contains("device vf0: "), "{}", run.file("vf-api.info-human"));
    let pause = run.file("vf-api.pause");
    assert_eq!(pause, "ok\nvfctl: error: the VM is Paused, it cannot pause (405)\nrc=1\nok\n");
    // The guest's counter stops while paused and goes on after resume.
    let counts: Vec<u64> = run.file("vf-api.counters").split_whitespace().filter_map(|n| n.parse().ok()).collect();
    assert_eq!(counts.len(), 3, "{:?}", run.file("vf-api.counters"));
    assert!(counts[0] > 0, "the counter ran before the pause: {counts:?}");
    assert_eq!(counts[0], counts[1], "no progress while paused: {counts:?}");
    assert!(counts[2] > counts[1], "progress after resume: {counts:?}");
    assert_eq!(run.file("vf-api.shutdown"), "ok\n");
    assert_eq!(run.rc("vf-api"), Some(0), "vmm.shutdown exits 0; stderr: {}", run.stderr("vf-api"));
    assert_eq!(run.file("vf-api.socket").trim(), "removed");
}

/// The part of [`assert_vf_works`] that holds for a guest that stays up.
fn assert_vf_works_until_ping(run: &SuiteRun, name: &str) {
    let markers = run.markers(name);
    assert!(markers.iter().any(|m| m == "L2-VF-BOUND 0000:00:01.0 driver=igbvf"), "{markers:#?}");
    assert!(markers.iter().any(|m| m == "L2-PING sent=3 received=3"), "{markers:#?}");
}

/// README's "Running vfvmm on a real host" block, run verbatim in L1 as a host admin would.
#[test]
#[ignore = "nested testbed: run by make test"]
fn readme_real_host_commands_work_as_written() {
    let run = suite();
    let script = run.file("real-host.sh");
    let readme = std::fs::read_to_string(vfvmm_tests::repo_root().join("README.md")).expect("README.md");
    assert!(script.contains("sriov_numvfs") && script.contains("$VFVMM --kernel"), "block not found: {script}");
    assert!(readme.contains(&script), "the block run is not README's text");
    assert_vf_works(run, "real-host", "192.0.2.10");
}
