use std::collections::BTreeSet;

use super::*;
use crate::host::manage::VmDevice;
use crate::host::registry::VmRecord;
use crate::host::sriov::VfInfo;

/// PF with `count` VFs; `held[i]` = "vm/id" holding VF i.
fn pf(count: u32, held: &[(u32, &str)]) -> PfInfo {
    PfInfo {
        address: "0000:01:00.0".into(),
        class: "ethernet".into(),
        nvme: None,
        provisioning_error: None,
        driver: Some("igb".into()),
        netdev: Some("eth0".into()),
        total_vfs: 7,
        num_vfs: count,
        drivers_autoprobe: false,
        vfs: (0..count)
            .map(|i| VfInfo {
                address: format!("0000:01:10.{}", i * 2),
                index: i,
                driver: Some("vfio-pci".into()),
                iommu_group: Some(20 + i),
                held_by: held.iter().find(|(k, _)| *k == i).map(|(_, h)| h.to_string()),
            })
            .collect(),
    }
}

fn views(names: &[&str]) -> Vec<VmView> {
    names
        .iter()
        .map(|n| VmView {
            record: VmRecord {
                name: n.to_string(),
                pid: 1,
                socket: format!("/run/{n}.sock").into(),
                started: 0,
                events: None,
            },
            state: Ok("Running".into()),
            devices: vec![VmDevice {
                id: "vf0".into(),
                path: "/x".into(),
                state: "Attached".into(),
                binding: "Bound".into(),
            }],
        })
        .collect()
}

/// Records every operation; fails the ones listed.
#[derive(Default)]
struct FakeOps {
    log: Vec<String>,
    fail: BTreeSet<String>,
    count: u32,
    not_bound: BTreeSet<String>,
    /// The re-created VFs keep their addresses (as real SR-IOV VFs do at the same index).
    same_addresses: bool,
}

impl FakeOps {
    fn op(&mut self, what: String) -> Result<(), String> {
        self.log.push(what.clone());
        if self.fail.contains(&what) {
            Err(format!("{what} failed"))
        } else {
            Ok(())
        }
    }
}

impl Operations for FakeOps {
    fn pause(&mut self, vm: &str) -> Result<(), String> {
        self.op(format!("pause {vm}"))
    }
    fn resume(&mut self, vm: &str) -> Result<(), String> {
        self.op(format!("resume {vm}"))
    }
    fn release(&mut self, vm: &str, id: &str) -> Result<(), String> {
        self.op(format!("release {vm}/{id}"))
    }
    fn live_release(&mut self, vm: &str, id: &str) -> Result<(), String> {
        self.op(format!("live_release {vm}/{id}"))
    }
    fn acquire(&mut self, vm: &str, id: &str, address: &str) -> Result<(), String> {
        self.op(format!("acquire {vm}/{id} {address}"))
    }
    fn detach(&mut self, vm: &str, id: &str) -> Result<(), String> {
        self.op(format!("detach {vm}/{id}"))
    }
    fn attach(&mut self, vm: &str, id: &str, address: &str) -> Result<(), String> {
        self.op(format!("attach {vm}/{id} {address}"))
    }
    fn set_vfs(&mut self, _pf: &str, count: u32) -> Result<Vec<String>, String> {
        self.op(format!("set_vfs {count}"))?;
        self.count = count;
        // The re-created VFs get other addresses (here: function numbers shifted by one).
        let shift = u32::from(!self.same_addresses);
        Ok((0..count).map(|i| format!("0000:01:10.{}", i * 2 + shift)).collect())
    }
    fn binding(&mut self, vm: &str, id: &str) -> Result<String, String> {
        let key = format!("{vm}/{id}");
        Ok(if self.not_bound.contains(&key) { "Released (gone)".into() } else { "Bound".into() })
    }
}

fn run(plan: &Plan, ops: &mut FakeOps) -> Report {
    let mut seen = Vec::new();
    let report = execute(plan, ops, &mut |s| seen.push(s.what.clone()));
    assert_eq!(seen, report.steps.iter().map(|s| s.what.clone()).collect::<Vec<_>>(), "steps reported as they happen");
    report
}

#[test]
fn plan_says_what_happens_to_each_vm_and_refuses_losses_unless_allowed() {
    let info = pf(2, &[(0, "a/vf0"), (1, "b/vf0")]);
    let p = plan(&info, &views(&["a", "b"]), 4, Mode::Pause);
    assert_eq!(p.items.iter().map(|(_, f)| *f).collect::<Vec<_>>(), [Fate::Keep, Fate::Keep]);
    let text = p.describe().join("\n");
    assert!(text.starts_with("0000:01:00.0: VFs 2 -> 0 -> 4 (pause mode)"), "{text}");
    assert!(text.contains("a/vf0: VF 0 (0000:01:10.0): VM paused, VF released"), "{text}");
    assert!(p.check(false).is_ok());

    let p = plan(&info, &views(&["a", "b"]), 1, Mode::Detach);
    assert_eq!(p.items[1].1, Fate::Lose);
    assert_eq!(
        p.check(false),
        Err(ReconfigureError::WouldLose { count: 1, who: "b/vf0 (VF 1)".into() }),
        "refused before anything changes"
    );
    assert!(p.check(true).is_ok());
    assert!(matches!(plan(&info, &views(&["a"]), 8, Mode::Pause).check(true), Err(ReconfigureError::TooMany { .. })));
    // A holder that is not a registered VM is not in the plan.
    assert_eq!(plan(&info, &views(&["a"]), 4, Mode::Pause).items.len(), 1);
}

#[test]
fn pause_mode_pauses_releases_changes_the_count_reacquires_by_index_and_resumes() {
    let p = plan(&pf(2, &[(0, "a/vf0"), (1, "b/vf0")]), &views(&["a", "b"]), 4, Mode::Pause);
    let mut ops = FakeOps::default();
    let r = run(&p, &mut ops);
    assert_eq!(
        ops.log,
        [
            "pause a",
            "release a/vf0",
            "pause b",
            "release b/vf0",
            "set_vfs 4",
            "acquire a/vf0 0000:01:10.1",
            "resume a",
            "acquire b/vf0 0000:01:10.3",
            "resume b"
        ]
    );
    assert!(r.ok && !r.rolled_back, "{r:?}");
    assert!(r.vms.iter().all(|v| v.ok && v.downtime_ms.is_some()), "{:?}", r.vms);
}

#[test]
fn a_failed_count_change_rolls_back_and_resumes_everyone_at_their_old_vfs() {
    let p = plan(&pf(2, &[(0, "a/vf0"), (1, "b/vf0")]), &views(&["a", "b"]), 4, Mode::Pause);
    let mut ops = FakeOps { fail: ["set_vfs 4".to_string()].into(), ..Default::default() };
    let r = run(&p, &mut ops);
    assert_eq!(
        ops.log[4..],
        ["set_vfs 4", "set_vfs 2", "acquire a/vf0 0000:01:10.1", "resume a", "acquire b/vf0 0000:01:10.3", "resume b"]
    );
    assert!(!r.ok && r.rolled_back);
    assert!(r.vms.iter().all(|v| v.downtime_ms.is_some()), "everyone resumed: {:?}", r.vms);
    assert!(r.steps.iter().any(|s| s.error.as_deref() == Some("set_vfs 4 failed")));
}

#[test]
fn a_vm_that_cannot_be_paused_stops_the_change_and_those_paused_are_resumed() {
    let p = plan(&pf(2, &[(0, "a/vf0"), (1, "b/vf0")]), &views(&["a", "b"]), 4, Mode::Pause);
    let mut ops = FakeOps { fail: ["pause b".to_string()].into(), ..Default::default() };
    let r = run(&p, &mut ops);
    assert_eq!(ops.log, ["pause a", "release a/vf0", "pause b", "acquire a/vf0 0000:01:10.0", "resume a"]);
    assert!(!r.ok && r.rolled_back);
    assert!(!ops.log.iter().any(|l| l.starts_with("set_vfs")), "the count was never touched");
}

#[test]
fn a_vm_that_cannot_be_resumed_is_reported_while_the_others_go_on() {
    let p = plan(&pf(2, &[(0, "a/vf0"), (1, "b/vf0")]), &views(&["a", "b"]), 4, Mode::Pause);
    let mut ops = FakeOps {
        fail: ["resume a".to_string()].into(),
        not_bound: ["b/vf0".to_string()].into(),
        ..Default::default()
    };
    let r = run(&p, &mut ops);
    assert_eq!(ops.log.last().map(String::as_str), Some("resume b"));
    assert!(!r.ok);
    let a = r.vms.iter().find(|v| v.vm == "a").unwrap();
    assert!(!a.ok && a.note.starts_with("STILL PAUSED"), "{a:?}");
    let b = r.vms.iter().find(|v| v.vm == "b").unwrap();
    assert!(!b.ok && b.devices.iter().any(|d| d == "vf0 is Released (gone)"), "{b:?}");
}

#[test]
fn detach_mode_detaches_changes_the_count_and_reattaches_with_the_same_ids() {
    let p = plan(&pf(2, &[(0, "a/vf0"), (1, "b/vf0")]), &views(&["a", "b"]), 1, Mode::Detach);
    let mut ops = FakeOps::default();
    let r = run(&p, &mut ops);
    assert_eq!(
        ops.log,
        ["detach b/vf0", "detach a/vf0", "set_vfs 1", "attach a/vf0 0000:01:10.1"],
        "the VF that goes away first, then the kept one"
    );
    assert!(r.ok);
    let b = r.vms.iter().find(|v| v.vm == "b").unwrap();
    assert_eq!(b.note, "lost vf0 (VF 1)");
}

#[test]
fn a_guest_that_does_not_eject_in_detach_mode_rolls_back_and_nothing_changes() {
    let p = plan(&pf(2, &[(0, "a/vf0"), (1, "b/vf0")]), &views(&["a", "b"]), 4, Mode::Detach);
    let mut ops = FakeOps { fail: ["detach b/vf0".to_string()].into(), ..Default::default() };
    let r = run(&p, &mut ops);
    assert_eq!(ops.log, ["detach a/vf0", "detach b/vf0", "attach a/vf0 0000:01:10.0"]);
    assert!(!r.ok && r.rolled_back);
    let b = r.vms.iter().find(|v| v.vm == "b").unwrap();
    assert!(b.note.contains("stays attached"), "{b:?}");
}

#[test]
fn live_mode_releases_while_running_changes_the_count_and_reacquires_without_pausing() {
    let p = plan(&pf(2, &[(0, "a/vf0"), (1, "b/vf0")]), &views(&["a", "b"]), 4, Mode::Live);
    let text = p.describe().join("\n");
    assert!(text.starts_with("0000:01:00.0: VFs 2 -> 0 -> 4 (live mode)"), "{text}");
    assert!(text.contains("a/vf0: VF 0 (0000:01:10.0): released while the VM runs (its driver waits)"), "{text}");
    let mut ops = FakeOps::default();
    let r = run(&p, &mut ops);
    assert_eq!(
        ops.log,
        [
            "live_release a/vf0",
            "live_release b/vf0",
            "set_vfs 4",
            "acquire a/vf0 0000:01:10.1",
            "acquire b/vf0 0000:01:10.3"
        ],
        "no pause, no resume"
    );
    assert!(r.ok && r.vms.iter().all(|v| v.ok && v.downtime_ms.is_some()), "{r:?}");
}

#[test]
fn live_mode_rolls_back_a_failed_count_change_and_reports_a_device_that_stays_released() {
    let p = plan(&pf(2, &[(0, "a/vf0"), (1, "b/vf0")]), &views(&["a", "b"]), 4, Mode::Live);
    let mut ops =
        FakeOps { fail: ["set_vfs 4".to_string(), "acquire b/vf0 0000:01:10.3".into()].into(), ..Default::default() };
    let r = run(&p, &mut ops);
    assert!(!r.ok && r.rolled_back);
    assert_eq!(ops.log[2..], ["set_vfs 4", "set_vfs 2", "acquire a/vf0 0000:01:10.1", "acquire b/vf0 0000:01:10.3"]);
    let b = r.vms.iter().find(|v| v.vm == "b").unwrap();
    assert!(!b.ok && b.note.starts_with("STILL RELEASED: vf0"), "{b:?}");
    // A device that cannot be released stops the change before the count moves.
    let mut ops = FakeOps { fail: ["live_release b/vf0".to_string()].into(), ..Default::default() };
    let r = run(&p, &mut ops);
    assert!(!r.ok);
    assert!(!ops.log.iter().any(|l| l.starts_with("set_vfs")), "{:?}", ops.log);
    assert_eq!(ops.log.last().map(String::as_str), Some("acquire a/vf0 0000:01:10.0"), "a gets its VF back");
}

#[test]
fn live_mode_counts_a_device_the_vm_took_back_by_itself_as_back() {
    // The VM re-acquired vf0 on the host's bind before vfctl asked: its acquire is refused
    // (not released), its binding is Bound at the same VF: that is success.
    let p = plan(&pf(1, &[(0, "a/vf0")]), &views(&["a"]), 2, Mode::Live);
    let mut ops =
        FakeOps { fail: ["acquire a/vf0 0000:01:10.0".to_string()].into(), same_addresses: true, ..Default::default() };
    let r = run(&p, &mut ops);
    assert!(r.ok, "{r:?}");
    // Refused and not bound: a failure, reported.
    let mut ops = FakeOps {
        fail: ["acquire a/vf0 0000:01:10.0".to_string()].into(),
        same_addresses: true,
        not_bound: ["a/vf0".to_string()].into(),
        ..Default::default()
    };
    assert!(!run(&p, &mut ops).ok);
}
