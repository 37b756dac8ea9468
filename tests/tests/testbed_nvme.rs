//! NVMe VFs (storage), the second class of VF, in the nested testbed (one L1 boot:
//! tests/testbed/scenarios/vfvmm-nvme.sh): vfctl provisions the NVMe PF's secondary
//! controllers; a VF at boot, hot-detach and hot-attach, a plain pause, the lifecycle (pause,
//! release, VFs re-created, resume) and a detach-mode reconfigure, each with the guest's data
//! checked (every block read back with O_DIRECT against the sequence number last written to
//! it); a hot-add into a VM booted without devices. `#[ignore]`d for a quick `cargo test`, run
//! by `make test`.

use std::sync::OnceLock;

use vfvmm_tests::{field, run_suite, SuiteRun};

fn suite() -> &'static SuiteRun {
    static RUN: OnceLock<SuiteRun> = OnceLock::new();
    RUN.get_or_init(|| run_suite("tests/testbed/scenarios/vfvmm-nvme.sh", 1800))
}

/// The `nvme.txt` line starting with `key ` (without the key).
fn fact(key: &str) -> String {
    suite().fact("nvme.txt", key)
}

fn number(line: &str, name: &str) -> u64 {
    field(line, name).parse().unwrap_or_else(|_| panic!("{name}= is not a number in '{line}'"))
}

/// A vfctl run recorded as `KEY rc=N output...` succeeded.
fn assert_vfctl_ok(key: &str) -> String {
    let line = fact(key);
    assert!(line.starts_with("rc=0 "), "{key}: vfctl failed: {line}");
    line
}

/// Every block of the workload read back with the sequence number last written to it.
fn assert_all_good(key: &str, blocks: u64) {
    let line = fact(key);
    assert_eq!(number(&line, "blocks"), blocks, "{key}: {line}");
    assert_eq!(number(&line, "good"), blocks, "{key}: a block is stale, ahead or corrupt: {line}");
}

/// The guest's namespace is there (its block device name).
fn namespace(key: &str) -> String {
    let line = fact(key);
    let dev = field(&line, "dev").to_string();
    assert!(dev.starts_with("nvme"), "{key}: no NVMe namespace in the guest: {line}");
    dev
}

/// No I/O error in the guest's kernel log over the step.
fn assert_no_io_error(key: &str) -> String {
    let line = fact(key);
    assert_eq!(number(&line, "ioerr"), 0, "{key}: the guest logged I/O errors: {line}");
    line
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn l1_suite_completes() {
    suite().assert_completed("nvme.txt");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn vfctl_provisions_the_nvme_pfs_secondary_controllers() {
    assert_ne!(fact("nvme_pf"), "none", "the L1 host has no NVMe SR-IOV PF");
    let before = fact("pf_before");
    assert!(before.starts_with("nvme numvfs=0 "), "{before}");
    assert!(before.contains(" 1:1:off:0:0 2:2:off:0:0"), "secondary controllers before: {before}");
    assert_vfctl_ok("setvfs");
    // Each VF's controller got half the flexible pool (4 queues, 2 interrupts) and is online.
    let after = fact("pf_after");
    assert!(after.starts_with("nvme numvfs=2 drivers=vfio-pci,vfio-pci "), "{after}");
    assert!(after.contains(" 1:1:on:4:2 2:2:on:4:2"), "secondary controllers after: {after}");
    let list = fact("pf_list");
    assert!(list.contains("PF 0000:01:00.0 class ethernet driver igb"), "{list}");
    assert!(list.contains("class nvme driver nvme netdev - VFs 2/2"), "{list}");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn an_nvme_vf_at_boot_beside_an_igb_vf_stores_and_returns_data() {
    namespace("boot_nvme");
    assert_eq!(fact("boot_ping"), "PING sent=3 received=3");
    let info = fact("boot_info");
    assert!(info.starts_with("Running ") && info.contains("nvme0=0000:00:02.0:Attached"), "{info}");
    assert!(info.contains("vf0=0000:00:01.0:Attached"), "{info}");
    assert!(fact("boot_fill").ends_with(" blocks=64 base=0 rc=0"), "{}", fact("boot_fill"));
    assert_all_good("boot_verify", 64);
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn hot_detach_after_finished_io_and_hot_attach_keep_the_data() {
    let writer = fact("detach_writer");
    assert!(number(&writer, "writes") > 0 && number(&writer, "errors") == 0, "{writer}");
    assert_all_good("detach_verify", 64);
    assert_vfctl_ok("detach");
    assert!(
        fact("detach_guest").starts_with("NVME dev=none"),
        "the namespace is still there: {}",
        fact("detach_guest")
    );
    assert_no_io_error("detach_dmesg");
    assert!(fact("detach_pf").contains("held=None,None"), "VF 0 still held: {}", fact("detach_pf"));
    assert_vfctl_ok("attach");
    namespace("attach_guest");
    assert_all_good("attach_verify", 64);
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn a_plain_pause_of_the_vm_holds_the_writes_and_they_continue_after_resume() {
    assert_vfctl_ok("plain");
    let outage = fact("plain_outage");
    assert!(number(&outage, "after_resume_ms") < 10_000, "writes came back late after a plain pause: {outage}");
    let ping = fact("plain_ping");
    assert!(ping.starts_with("VFWAIT ") && field(&ping, "ok") == "1", "{ping}");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn release_recreate_resume_loses_no_write_and_surfaces_no_error() {
    let plan = assert_vfctl_ok("lifecycle");
    assert!(plan.contains("VM paused, VF released, re-acquired at VF 0"), "{plan}");
    let pf = fact("lifecycle_pf");
    assert!(pf.contains("held=n/nvme0,None") && pf.contains(" 1:1:on:4:2"), "after re-creation: {pf}");
    // The guest's nvme driver is told through AER (error_detected, FLR, slot_reset, resume) and
    // resets its controller at once: I/O is back within 5 s of resume (it took ~61 s by the
    // driver's own I/O timeouts before vfvmm signalled the error).
    let outage = fact("lifecycle_outage");
    assert_ne!(field(&outage, "after_resume_ms"), "-", "no write completed after resume: {outage}");
    let after = number(&outage, "after_resume_ms");
    eprintln!("nvme: guest I/O back {after} ms after resume ({outage})");
    assert!(after <= 5_000, "the guest's I/O came back {after} ms after resume (must be <= 5 s): {outage}");
    let writes_after: u64 = fact("lifecycle_writes_after").parse().unwrap_or(0);
    assert!(writes_after > 0, "no write in the 5 s after the first one: {writes_after}");
    let writer = fact("lifecycle_writer");
    assert_eq!(number(&writer, "errors"), 0, "the application saw an error: {writer}");
    assert_eq!(fact("lifecycle_errors"), "0");
    assert_all_good("lifecycle_verify", 64);
    // The same namespace device: the guest saw no unplug.
    assert_eq!(namespace("lifecycle_guest"), namespace("boot_nvme"));
    let klog = assert_no_io_error("lifecycle_dmesg");
    assert_eq!(number(&klog, "removed"), 0, "the guest saw a removal: {klog}");
    assert_eq!(number(&klog, "timeouts"), 0, "the driver waited for a timeout instead of recovering: {klog}");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn a_detach_mode_reconfigure_gives_the_namespace_back_with_its_data() {
    let plan = assert_vfctl_ok("detachmode");
    assert!(plan.contains("hot-detached, hot-attached again at VF 0 as nvme0"), "{plan}");
    namespace("detachmode_guest");
    assert_all_good("detachmode_verify", 64);
    assert_no_io_error("detachmode_dmesg");
}

#[test]
#[ignore = "nested testbed: run by make test"]
fn hot_add_into_a_vm_booted_without_devices_and_two_vms_on_one_pf() {
    assert!(fact("hotadd_boot").starts_with("NVME dev=none"), "{}", fact("hotadd_boot"));
    assert_vfctl_ok("hotadd");
    namespace("hotadd_guest");
    // Before the hot-add waited for guest RAM's DMA mapping, the VF's first admin command
    // failed and Linux's probe gave up after 60 s.
    assert!(number(&fact("hotadd_guest"), "ms") < 60_000, "{}", fact("hotadd_guest"));
    assert!(fact("hotadd_fill").ends_with(" blocks=16 base=1024 rc=0"), "{}", fact("hotadd_fill"));
    assert_all_good("hotadd_verify", 16);
    assert!(fact("hotadd_pf").contains("held=n/nvme0,h/nvme0"), "{}", fact("hotadd_pf"));
    // VM n's blocks are untouched by VM h's writes to its own region of the shared namespace.
    assert_all_good("final_verify_n", 64);
}
