//! Issue 2 acceptance in the nested testbed: vfvmm boots the Debian kernel (bzImage and ELF
//! vmlinux) with a busybox initramfs in L2, takes console input, and exits with the
//! documented codes on poweroff and reboot. One L1 boot serves every check here.
//!
//! These tests boot QEMU/TCG and take minutes: they are `#[ignore]`d for a quick
//! `cargo test` and run by `make test` (`cargo test -p vfvmm-tests -- --ignored`).

use std::sync::OnceLock;

use vfvmm_tests::{field, run_suite, SuiteRun};

fn suite() -> &'static SuiteRun {
    static RUN: OnceLock<SuiteRun> = OnceLock::new();
    RUN.get_or_init(|| run_suite("tests/testbed/scenarios/vfvmm-boot.sh", 600))
}

fn assert_has(run: &SuiteRun, name: &str, marker: &str) {
    let markers = run.markers(name);
    assert!(
        markers.iter().any(|m| m == marker),
        "{name}: no '{marker}' in the console; markers: {markers:#?}\nstderr: {}",
        run.stderr(name)
    );
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn l1_suite_completes() {
    assert_eq!(suite().l1_exit, Some(0), "L1 run failed, see {}", suite().dir.display());
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn bzimage_boots_with_two_cpus_host_bridge_and_console_input() {
    let run = suite();
    let name = "boot-bzimage";
    let markers = run.markers(name);
    assert!(markers.iter().any(|m| m.starts_with("L2-INIT-START uptime=")), "{markers:#?}");
    assert_has(run, name, "L2-CPUS online=0-1 count=2");
    assert_has(run, name, "L2-PCIDEV 0000:00:00.0 0x1b36 0x0008 0x060000");
    assert!(markers.iter().any(|m| m.starts_with("L2-PCI ") && m.contains("0000:00:00.0")), "{markers:#?}");
    assert_has(run, name, "L2-READY-FOR-INPUT");
    assert_has(run, name, "L2-GOT-INPUT hello-from-l1");
    assert_has(run, name, "L2-ACTION poweroff");
    assert_eq!(run.rc(name), Some(0), "poweroff -f must exit 0; stderr: {}", run.stderr(name));
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn elf_vmlinux_boots_and_powers_off() {
    let run = suite();
    let name = "boot-elf";
    let markers = run.markers(name);
    assert!(markers.iter().any(|m| m.starts_with("L2-INIT-START uptime=")), "{markers:#?}");
    assert_has(run, name, "L2-CPUS online=0 count=1");
    assert_has(run, name, "L2-ACTION poweroff");
    assert_eq!(run.rc(name), Some(0), "stderr: {}", run.stderr(name));
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn reboot_exits_with_the_documented_code() {
    let run = suite();
    let name = "boot-reboot";
    assert_has(run, name, "L2-ACTION reboot");
    assert_eq!(run.rc(name), Some(vmm::exit_code::GUEST_RESET), "stderr: {}", run.stderr(name));
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn guest_ram_in_huge_pages_boots_and_is_refused_with_the_fix_when_none_are_free() {
    let run = suite();
    assert_eq!(run.rc("boot-hugepages-none"), Some(vmm::exit_code::ERROR));
    let err = run.stderr("boot-hugepages-none");
    assert!(err.contains("in 2 MiB huge pages") && err.contains("nr_hugepages"), "{err}");
    assert!(run.markers("boot-hugepages-none").is_empty(), "no guest ran");
    let name = "boot-hugepages";
    assert!(run.markers(name).iter().any(|m| m.starts_with("L2-INIT-START uptime=")), "{:#?}", run.markers(name));
    assert_has(run, name, "L2-ACTION shell");
    // 256 MiB of guest RAM is 128 huge pages (faulted in or reserved for the VM).
    assert_eq!(run.file("hugepages-in-use.txt").trim(), "held=128", "stderr: {}", run.stderr(name));
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn prefaulted_guest_ram_is_allocated_and_mapped_before_the_guest_starts() {
    let run = suite();
    let name = "boot-prefault";
    assert_has(run, name, "L2-ACTION shell");
    let err = run.stderr(name);
    let boot =
        err.lines().find_map(|l| l.split("timing boot: ").nth(1)).unwrap_or_else(|| panic!("no boot timing: {err}"));
    let order: Vec<&str> = boot.split("; ").map(|p| p.split(" +").next().unwrap_or("")).collect();
    let at = |phase: &str| order.iter().position(|p| *p == phase).unwrap_or_else(|| panic!("no '{phase}' in {boot}"));
    assert!(at("vCPUs created") < at("guest RAM mapped ahead of the guest"), "{boot}");
    assert!(at("guest RAM mapped ahead of the guest") < at("first vCPU entry"), "{boot}");
    // All 256 MiB resident while the guest idles (it touches about 100 MiB of it itself).
    let rss_line = run.file("prefault-rss.txt");
    let rss: u64 =
        field(&rss_line, "rss_kib").parse().unwrap_or_else(|e| panic!("prefault-rss.txt: {rss_line:?}: {e}"));
    assert!(rss >= 256 * 1024, "vfvmm's RSS is {rss} KiB");
}
