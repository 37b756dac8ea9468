//! Device orchestration (hotplug and the VF lifecycle) against a fake host: what is asked of
//! the host and the VM, in which order, and what is refused in which state (changing nothing).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::passthrough::device_host::DeviceHost;
use crate::passthrough::vfio::ReacquireError;

/// What the fake host was asked, and how it answers.
#[derive(Default)]
struct HostState {
    calls: Vec<String>,
    /// Paths that do not validate (the VF does not exist).
    missing: BTreeSet<PathBuf>,
    /// Paths holding another kind of device (re-acquire refuses them).
    other_kind: BTreeSet<PathBuf>,
    ejected: u32,
    enabled: BTreeSet<u8>,
    /// Slots whose host-error interrupt is armed, how many times.
    armed_errors: BTreeMap<u8, u32>,
    /// Error-recovery work each slot's device has (a reset takes this many ms).
    recovery_work: BTreeMap<u8, u64>,
    /// Slots in use (the lowest free one is taken, as on the real bus).
    used: BTreeSet<u8>,
    /// Paths whose open the host does not finish within vfvmm's bound.
    hung: BTreeSet<PathBuf>,
    /// What the guest did with each slot's device, for timings.
    milestones: BTreeMap<u8, Vec<(&'static str, devices::timing::Milestone)>>,
    /// Guest RAM's DMA mapping: None is mapped (Ready).
    dma: Option<pci::vfio::DmaState>,
}

#[derive(Clone, Default)]
struct FakeHost(Arc<Mutex<HostState>>);

impl FakeHost {
    fn hung_open(&self, host: &HostDevice) -> Result<(), VfioError> {
        if !self.0.lock().unwrap().hung.contains(&host.path) {
            return Ok(());
        }
        let reason = crate::passthrough::host_worker::HostWorkError::TimedOut {
            what: format!("opening {}", host.bdf),
            after: Duration::from_secs(20),
        };
        Err(VfioError::HostBusy { path: host.path.display().to_string(), reason })
    }

    fn log(&self, call: String) {
        self.0.lock().unwrap().calls.push(call);
    }

    fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap().calls)
    }
}

fn host_device(path: &str, id: &str) -> HostDevice {
    let bdf = path.rsplit('/').next().unwrap_or_default().to_string();
    HostDevice { path: PathBuf::from(path), bdf, group: 7, id: id.to_string() }
}

impl DeviceHost for FakeHost {
    fn validate(&self, cfg: &DeviceConfig) -> Result<HostDevice, VfioError> {
        self.log(format!("validate {}", cfg.path.display()));
        if self.0.lock().unwrap().missing.contains(&cfg.path) {
            return Err(VfioError::NotPciDevice { path: cfg.path.display().to_string() });
        }
        Ok(host_device(&cfg.path.display().to_string(), cfg.id.as_deref().unwrap_or("?")))
    }

    fn plug(&mut self, host: HostDevice, request: Option<&EventFd>) -> Result<u8, VfioError> {
        assert!(request.is_some(), "every device gets a host-request eventfd");
        self.hung_open(&host)?;
        let mut s = self.0.lock().unwrap();
        let slot = (1..32u8)
            .find(|n| !s.used.contains(n))
            .ok_or(VfioError::Setup { path: host.path.display().to_string(), reason: "no free slot".into() })?;
        s.used.insert(slot);
        s.calls.push(format!("plug {} {slot}", host.id));
        Ok(slot)
    }

    fn unplug(&mut self, slot: u8) -> Vec<(&'static str, devices::timing::Milestone)> {
        self.0.lock().unwrap().used.remove(&slot);
        self.log(format!("unplug {slot}"));
        vec![("VF free on the host", devices::timing::Milestone::now())]
    }

    fn announce(&self, slot: u8, present: bool) {
        self.log(format!("announce {slot} {}", if present { "up" } else { "down" }));
    }

    fn take_ejected(&self) -> u32 {
        std::mem::take(&mut self.0.lock().unwrap().ejected)
    }

    fn power_button(&self) {
        self.log("power_button".into());
    }

    fn guest_enabled(&self, slot: u8) -> bool {
        self.0.lock().unwrap().enabled.contains(&slot)
    }

    fn quiesce(&mut self, slot: u8) {
        self.log(format!("quiesce {slot}"));
    }

    fn unquiesce(&mut self, slot: u8) {
        self.log(format!("unquiesce {slot}"));
    }

    fn release(&mut self, slot: u8) -> Result<(), String> {
        self.log(format!("release {slot}"));
        Ok(())
    }

    fn reacquire(&mut self, slot: u8, host: HostDevice, _request: Option<&EventFd>) -> Result<(), ReacquireError> {
        self.log(format!("reacquire {slot} {}", host.path.display()));
        self.hung_open(&host).map_err(ReacquireError::Open)?;
        if self.0.lock().unwrap().other_kind.contains(&host.path) {
            return Err(ReacquireError::Kind(format!(
                "{}: vendor:device 8086:100e, was 8086:10ca",
                host.path.display()
            )));
        }
        Ok(())
    }

    fn apply_deferred_bus_master(&mut self, slot: u8) {
        self.log(format!("bus_master {slot}"));
    }

    fn dma_state(&self) -> pci::vfio::DmaState {
        self.0.lock().unwrap().dma.clone().unwrap_or(pci::vfio::DmaState::Ready)
    }

    fn wait_dma(&self, _timeout: Duration) -> Result<(), String> {
        self.log("wait_dma".into());
        match self.dma_state() {
            pci::vfio::DmaState::Ready => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }

    fn arm_host_errors(&mut self, slot: u8, _fd: &EventFd) -> Result<(), String> {
        *self.0.lock().unwrap().armed_errors.entry(slot).or_default() += 1;
        Ok(())
    }

    fn signal_host_error(&mut self, slot: u8) {
        self.log(format!("host_error {slot}"));
    }

    fn signal_live_release(&mut self, slot: u8) -> bool {
        self.log(format!("signal_live {slot}"));
        true
    }

    fn service_recovery(&mut self, slot: u8) -> crate::passthrough::device_host::RecoveryService {
        let work = self.0.lock().unwrap().recovery_work.remove(&slot);
        if work.is_some() {
            self.log(format!("service_recovery {slot}"));
        }
        crate::passthrough::device_host::RecoveryService {
            reported: work.map(|_| (pci::aer::Severity::Fatal, pci::rcec::Reported::Raised)),
            cause: work.map(|_| "re-acquired"),
            reset_ms: work,
            reenabled_ms: work.map(|ms| ms + 1),
        }
    }

    fn shutdown(&mut self) {
        self.log("shutdown".into());
    }

    fn milestones(&self, slot: u8) -> Vec<(&'static str, devices::timing::Milestone)> {
        self.0.lock().unwrap().milestones.get(&slot).cloned().unwrap_or_default()
    }
}

const VF0: &str = "/sys/bus/pci/devices/0000:01:10.0";
const VF1: &str = "/sys/bus/pci/devices/0000:01:10.2";
const VF2: &str = "/sys/bus/pci/devices/0000:01:10.4";
const VF3: &str = "/sys/bus/pci/devices/0000:01:10.6";

/// A VM with vf0 (slot 1) and vf1 (slot 2) plugged at boot and enabled by the guest.
fn vm_with_two_vfs() -> (Hotplug, FakeHost) {
    vm_with(&[(VF0, "vf0"), (VF1, "vf1")], Duration::from_millis(0))
}

/// A VM booted with `devices` (path, id) in slots 1.., all enabled by the guest, with
/// `reacquire` as its re-acquire timeout; the calls of the boot are taken.
fn vm_with(devices: &[(&str, &str)], reacquire: Duration) -> (Hotplug, FakeHost) {
    let host = FakeHost::default();
    let resync = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut h = Hotplug::new(Box::new(host.clone()), Duration::from_secs(5), reacquire, resync);
    h.attach_at_boot(devices.iter().map(|(path, id)| host_device(path, id)).collect()).unwrap();
    host.0.lock().unwrap().enabled.extend(1..=devices.len() as u8);
    let plugs: Vec<String> = devices.iter().zip(1..).map(|((_, id), slot)| format!("plug {id} {slot}")).collect();
    assert_eq!(host.take_calls(), plugs);
    (h, host)
}

/// `id=state/binding` of every device, as vm.info shows them.
fn states(h: &mut Hotplug) -> Vec<String> {
    h.info().iter().map(|d| format!("{}={}/{}", d["id"].as_str().unwrap(), d["state"], d["binding"])).collect()
}

fn add_request(path: &str, id: &str) -> api::AddDevice {
    serde_json::from_value(serde_json::json!({ "path": path, "id": id })).unwrap()
}

#[test]
fn pause_quiesces_every_device_and_resume_lets_them_run_again() {
    let (mut h, host) = vm_with_two_vfs();
    assert_eq!(states(&mut h), [r#"vf0="Attached"/"Bound""#, r#"vf1="Attached"/"Bound""#]);
    h.pause_devices();
    assert_eq!(host.take_calls(), ["quiesce 1", "quiesce 2"]);
    assert_eq!(states(&mut h), [r#"vf0="Attached"/"Quiesced""#, r#"vf1="Attached"/"Quiesced""#]);
    h.resume_devices();
    // Nothing to re-acquire; guest RAM is DMA-mapped before the devices run again.
    assert_eq!(host.take_calls(), ["wait_dma", "unquiesce 1", "unquiesce 2"]);
    assert_eq!(states(&mut h), [r#"vf0="Attached"/"Bound""#, r#"vf1="Attached"/"Bound""#]);
}

#[test]
fn requests_that_need_the_other_vm_state_are_refused_and_change_nothing() {
    let (mut h, host) = vm_with_two_vfs();
    // Running: release needs a paused VM (or live), and a bound device cannot be acquired.
    assert_eq!(h.release("vf0").unwrap_err().status, 405);
    assert_eq!(h.acquire("vf0", None).unwrap_err().status, 409);
    // Paused: add and remove need a guest that answers.
    h.pause_devices();
    host.take_calls();
    let before = states(&mut h);
    assert_eq!(h.add(add_request(VF2, "vf2")).unwrap_err().status, 405);
    assert_eq!(h.remove("vf1").unwrap_err().status, 405);
    // Unknown ids, and a device in the wrong binding state.
    assert_eq!(h.release("nosuch").unwrap_err().status, 404);
    assert_eq!(h.acquire("nosuch", None).unwrap_err().status, 404);
    assert_eq!(h.acquire("vf0", None).unwrap_err().status, 409, "vf0 is not released");
    assert_eq!(host.take_calls(), Vec::<String>::new(), "nothing was asked of the host");
    assert_eq!(states(&mut h), before);
}

#[test]
fn release_while_paused_and_resume_reacquires_at_the_same_path_before_the_devices_run() {
    let (mut h, host) = vm_with_two_vfs();
    h.pause_devices();
    h.release("vf0").unwrap();
    assert_eq!(h.release("vf0").unwrap_err().status, 409, "released twice");
    assert_eq!(host.take_calls(), ["quiesce 1", "quiesce 2", "release 1"]);
    assert_eq!(states(&mut h)[0], r#"vf0="Attached"/"Released""#);
    h.resume_devices();
    assert_eq!(
        host.take_calls(),
        [
            format!("validate {VF0}"),
            format!("reacquire 1 {VF0}"),
            "wait_dma".into(), // the re-acquired device's container is mapped again first
            "unquiesce 1".into(),
            "unquiesce 2".into()
        ]
    );
    assert_eq!(states(&mut h)[0], r#"vf0="Attached"/"Bound""#);
}

#[test]
fn a_device_that_does_not_come_back_stays_released_with_the_reason_and_the_vm_resumes() {
    let (mut h, host) = vm_with_two_vfs();
    h.pause_devices();
    h.release("vf0").unwrap();
    host.0.lock().unwrap().missing.insert(VF0.into());
    host.take_calls();
    h.resume_devices();
    let calls = host.take_calls();
    assert_eq!(calls.last().map(String::as_str), Some("unquiesce 2"), "the other device runs: {calls:?}");
    assert!(calls.contains(&"unquiesce 1".to_string()), "the released one gets its traps back: {calls:?}");
    assert!(!calls.iter().any(|c| c.starts_with("reacquire")), "{calls:?}");
    let vf0 = &states(&mut h)[0];
    assert!(vf0.contains("Released (") && vf0.contains("not a PCI device"), "{vf0}");
    // Later, paused again with the VF back: acquire-device binds it.
    host.0.lock().unwrap().missing.clear();
    h.pause_devices();
    host.take_calls();
    h.acquire("vf0", None).unwrap();
    assert_eq!(host.take_calls(), [format!("validate {VF0}"), format!("reacquire 1 {VF0}")]);
    assert_eq!(states(&mut h)[0], r#"vf0="Attached"/"Quiesced""#);
}

#[test]
fn acquire_refuses_another_kind_of_device_and_a_path_another_device_holds_changing_nothing() {
    let (mut h, host) = vm_with_two_vfs();
    h.pause_devices();
    h.release("vf0").unwrap();
    host.0.lock().unwrap().other_kind.insert(VF2.into());
    host.take_calls();
    let e = h.acquire("vf0", Some(VF2.into())).unwrap_err();
    assert_eq!((e.status, e.message.contains("8086:100e")), (409, true), "{}", e.message);
    assert_eq!(h.acquire("vf0", Some(VF1.into())).unwrap_err().status, 409, "vf1 holds that path");
    assert_eq!(states(&mut h)[0], r#"vf0="Attached"/"Released""#, "no failure reason recorded");
    host.take_calls();
    // A VF of the same kind elsewhere is fine.
    host.0.lock().unwrap().other_kind.clear();
    h.acquire("vf0", Some(VF2.into())).unwrap();
    assert_eq!(host.take_calls(), [format!("validate {VF2}"), format!("reacquire 1 {VF2}")]);
}

#[test]
fn a_host_request_releases_at_once_while_paused_and_asks_the_guest_while_running() {
    let (mut h, host) = vm_with_two_vfs();
    h.on_host_request(2);
    assert_eq!(host.take_calls(), ["announce 2 down"]);
    assert_eq!(states(&mut h)[1], r#"vf1="Detaching"/"Bound""#);
    let deadline = h.entries["vf1"].eject_deadline;
    h.on_host_request(2);
    assert_eq!(host.take_calls(), ["announce 2 down"], "the guest is asked again ...");
    assert_eq!(h.entries["vf1"].eject_deadline, deadline, "... with the first deadline");
    let (mut h, host) = vm_with_two_vfs();
    h.pause_devices();
    host.take_calls();
    h.on_host_request(1);
    assert_eq!(host.take_calls(), ["release 1"], "no eject asked of a paused guest");
    assert_eq!(states(&mut h)[0], r#"vf0="Attached"/"Released""#);
    h.on_host_request(1);
    assert_eq!(host.take_calls(), Vec::<String>::new(), "released already");
}

#[test]
fn guest_eject_unplugs_and_the_eject_timeout_does_not_run_while_paused() {
    let (mut h, host) = vm_with_two_vfs();
    h.remove("vf1").unwrap();
    assert_eq!(host.take_calls(), ["announce 2 down"]);
    let deadline = h.entries["vf1"].eject_deadline.unwrap();
    h.pause_devices();
    // A long pause: its length is added to the eject deadline at resume.
    h.paused_since = Some(Instant::now() - Duration::from_secs(60));
    h.resume_devices();
    assert!(h.entries["vf1"].eject_deadline.unwrap() >= deadline + Duration::from_secs(60));
    assert_eq!(states(&mut h)[1], r#"vf1="Detaching"/"Bound""#);
    host.take_calls();
    host.0.lock().unwrap().ejected = 1 << 2;
    h.on_guest_eject();
    assert_eq!(host.take_calls(), ["unplug 2"]);
    assert_eq!(states(&mut h)[1], r#"vf1="Detached"/"Bound""#);
    assert!(matches!(h.take_request_watch().last(), Some(RequestWatch::Remove { slot: 2 })));
    // A detached device keeps its history only: none of its eventfds (50 attach/detach cycles
    // in the testbed would otherwise keep the last remembered devices' fds open).
    assert!(h.entries["vf1"].request.is_none() && h.entries["vf1"].host_error.is_none());
    // The id can be used again.
    h.add(add_request(VF1, "vf1")).unwrap();
    assert_eq!(
        host.take_calls(),
        [format!("validate {VF1}"), "plug vf1 2".into(), "announce 2 up".into()],
        "its slot is free again"
    );
}

#[test]
fn add_refuses_an_id_or_a_path_in_use() {
    let (mut h, host) = vm_with_two_vfs();
    assert_eq!(h.add(add_request(VF2, "vf0")).unwrap_err().status, 409);
    assert_eq!(h.add(add_request(VF0, "vf9")).unwrap_err().status, 409);
    host.0.lock().unwrap().missing.insert(VF2.into());
    assert_eq!(h.add(add_request(VF2, "vf2")).unwrap_err().status, 404);
    let calls = host.take_calls();
    assert!(calls.iter().all(|c| c.starts_with("validate")), "nothing plugged: {calls:?}");
}

#[test]
fn recovery_work_is_done_for_every_live_device_that_has_some() {
    let (mut h, host) = vm_with_two_vfs();
    h.service_recoveries();
    host.0.lock().unwrap().recovery_work.extend([(2, 120)]);
    h.service_recoveries();
    assert_eq!(host.take_calls(), ["service_recovery 2"]);
    h.service_recoveries();
    assert!(host.take_calls().is_empty(), "the work was done once");
    h.on_dma_mapped();
    assert_eq!(host.take_calls(), ["bus_master 1", "bus_master 2"]);
}

#[test]
fn only_the_most_recent_detached_devices_are_remembered() {
    let (mut h, host) = vm_with_two_vfs();
    for i in 0..40 {
        let id = format!("x{i}");
        h.add(add_request(&format!("/sys/bus/pci/devices/0000:02:00.{i}"), &id)).unwrap();
        let slot = h.entries[&id].slot;
        h.remove(&id).unwrap();
        host.0.lock().unwrap().ejected = 1 << slot;
        h.on_guest_eject();
    }
    let info = states(&mut h);
    assert_eq!(info.len(), 2 + 16, "{info:?}");
    assert!(
        h.entries.values().filter(|e| e.state == AttachState::Detached).all(|e| e.request.is_none()),
        "a detached device holds no host-request eventfd"
    );
    assert!(info.iter().any(|d| d.starts_with("x39=")) && !info.iter().any(|d| d.starts_with("x23=")), "{info:?}");
}

/// The host does not open a device within the bound (its reset hangs): add-device and
/// acquire-device answer 503 naming what the host did not finish, and the VM is unchanged —
/// no slot taken, nothing announced, the released device still released.
#[test]
fn a_host_that_does_not_open_a_device_in_time_gets_503_and_changes_nothing() {
    let (mut h, host) = vm_with_two_vfs();
    host.0.lock().unwrap().hung.insert(PathBuf::from(VF2));
    let before = states(&mut h);
    let e = h.add(add_request(VF2, "vf2")).unwrap_err();
    assert_eq!(e.status, 503, "{}", e.message);
    assert!(e.message.contains("did not finish opening 0000:01:10.4 within 20 s"), "{}", e.message);
    assert_eq!(host.take_calls(), [format!("validate {VF2}")], "no slot taken, nothing announced");
    assert_eq!(states(&mut h), before);

    h.pause_devices();
    h.release("vf0").unwrap();
    host.take_calls();
    let e = h.acquire("vf0", Some(VF2.into())).unwrap_err();
    assert_eq!(e.status, 503, "{}", e.message);
    assert_eq!(states(&mut h)[0], r#"vf0="Attached"/"Released""#);
    // Once the host answers again, the same request works.
    host.0.lock().unwrap().hung.clear();
    h.acquire("vf0", Some(VF2.into())).unwrap();
    assert_eq!(states(&mut h)[0], r#"vf0="Attached"/"Quiesced""#);
}

fn phase_names(timeline: &serde_json::Value) -> Vec<String> {
    timeline["phases"].as_array().unwrap().iter().map(|p| p["phase"].as_str().unwrap().to_string()).collect()
}

/// vm.info's `timings`: the last attach from the request to the device mastering the bus (what
/// the guest did merged in as it happens), the last detach from the request to the VF free.
#[test]
fn vm_info_times_the_last_attach_and_detach_phase_by_phase() {
    use devices::timing::Milestone;
    let (mut h, host) = vm_with_two_vfs();
    h.add(add_request(VF2, "vf2")).unwrap();
    let t = h.timings();
    assert_eq!(t["last_attach"]["id"], "vf2");
    assert_eq!(
        phase_names(&t["last_attach"]),
        ["request validated", "BARs placed and plugged into the bus", "guest notified (GED interrupt)"]
    );
    assert!(t["last_detach"].is_null());
    // The guest's driver comes up: its milestones join the timeline, in time order; one of
    // another name (not an attach milestone) is left out.
    std::thread::sleep(Duration::from_millis(2));
    let enabled = Milestone::now();
    std::thread::sleep(Duration::from_millis(2));
    let bus_master = Milestone::now();
    host.0.lock().unwrap().milestones.insert(
        3,
        vec![
            ("device got bus mastering", bus_master),
            ("guest enabled MSI-X", enabled),
            ("guest ejected the device", bus_master),
        ],
    );
    let t = h.timings();
    let names = phase_names(&t["last_attach"]);
    assert_eq!(names[3..], ["guest enabled MSI-X", "device got bus mastering"]);
    assert!(t["last_attach"]["total_ms"].as_u64().unwrap() >= 4);

    host.0.lock().unwrap().milestones.clear();
    h.remove("vf2").unwrap();
    host.0.lock().unwrap().ejected = 1 << 3;
    h.on_guest_eject();
    let t = h.timings();
    assert_eq!(t["last_detach"]["id"], "vf2");
    assert_eq!(
        phase_names(&t["last_detach"]),
        ["guest notified (GED interrupt)", "eject seen by the VMM thread", "VF free on the host", "torn down"]
    );
    // The attach's timeline stays as it was when the device went.
    assert_eq!(phase_names(&t["last_attach"]).len(), 5);
}

/// A device added while guest RAM is still being DMA-mapped is shown to the guest only once
/// mapping is done: the guest cannot start its DMA before DMA works (issue 18). If mapping
/// fails, the guest never sees it and it goes back to the host.
#[test]
fn a_device_added_before_guest_ram_is_mapped_is_announced_once_it_is() {
    use pci::vfio::DmaState;
    let (mut h, host) = vm_with_two_vfs();
    host.0.lock().unwrap().dma = Some(DmaState::Pending);
    h.add(add_request(VF2, "vf2")).unwrap();
    assert_eq!(host.take_calls(), [format!("validate {VF2}"), "plug vf2 3".to_string()], "not announced yet");
    h.on_dma_mapped(); // a mapping that is still under way (a stale wake-up) changes nothing
    assert!(!host.take_calls().iter().any(|c| c.starts_with("announce")));
    host.0.lock().unwrap().dma = Some(DmaState::Ready);
    h.on_dma_mapped();
    let calls = host.take_calls();
    assert_eq!(calls[0], "announce 3 up", "{calls:?}");
    assert!(phase_names(&h.timings()["last_attach"]).contains(&"guest notified (GED interrupt)".to_string()));
    h.on_dma_mapped(); // announced once
    assert!(!host.take_calls().iter().any(|c| c.starts_with("announce")));

    // Mapping fails: the device is taken back, the guest never hears of it.
    host.0.lock().unwrap().dma = Some(DmaState::Pending);
    h.add(add_request(VF3, "vf3")).unwrap();
    host.take_calls();
    host.0.lock().unwrap().dma = Some(DmaState::Failed("no IOMMU room".into()));
    h.on_dma_mapped();
    let calls = host.take_calls();
    assert!(calls.contains(&"unplug 4".to_string()) && !calls.iter().any(|c| c.starts_with("announce")), "{calls:?}");
    assert!(!states(&mut h).iter().any(|s| s.starts_with("vf3=")), "{:?}", states(&mut h));
    // And an add while mapping has already failed is refused, changing nothing.
    let e = h.add(add_request(VF3, "vf3")).unwrap_err();
    assert_eq!(e.status, 500, "{}", e.message);
    assert!(!states(&mut h).iter().any(|s| s.starts_with("vf3=")));
}

#[test]
fn host_errors_are_watched_per_device_rearmed_on_reacquire_and_forwarded() {
    let (mut h, host) = vm_with_two_vfs();
    let watches = h.take_request_watch();
    let errors: Vec<u8> = watches
        .iter()
        .filter_map(|w| if let RequestWatch::AddError { slot, .. } = w { Some(*slot) } else { None })
        .collect();
    assert_eq!(errors, [1, 2]);
    h.on_host_error(2);
    assert_eq!(host.take_calls(), ["host_error 2"]);
    h.on_host_error(7);
    assert!(host.take_calls().is_empty(), "no device in slot 7");
    // A re-acquired device gets its error interrupt armed again.
    h.pause_devices();
    h.release("vf1").unwrap();
    h.acquire("vf1", None).unwrap();
    assert_eq!(host.0.lock().unwrap().armed_errors.get(&2), Some(&2));
}

#[test]
fn a_live_release_tells_the_guest_and_a_live_acquire_lets_the_device_run_again() {
    let (mut h, host) = vm_with(&[(VF0, "vf0"), (VF1, "vf1")], Duration::from_secs(30));
    h.live_release("vf1").unwrap();
    assert_eq!(host.take_calls(), ["quiesce 2", "signal_live 2", "release 2"]);
    assert_eq!(states(&mut h), [r#"vf0="Attached"/"Bound""#, r#"vf1="Attached"/"Released live""#]);
    // Twice, unknown, a bound device's acquire: refused, nothing changes.
    assert_eq!(h.live_release("vf1").unwrap_err().status, 409);
    assert_eq!(h.live_release("nosuch").unwrap_err().status, 404);
    assert_eq!(h.acquire("vf0", None).unwrap_err().status, 409);
    assert!(host.take_calls().is_empty());
    // Back while running: re-acquired at its path and running again.
    h.acquire("vf1", None).unwrap();
    assert_eq!(host.take_calls(), [format!("validate {VF1}"), format!("reacquire 2 {VF1}"), "unquiesce 2".into()]);
    assert_eq!(states(&mut h), [r#"vf0="Attached"/"Bound""#, r#"vf1="Attached"/"Bound""#]);
    assert_eq!(h.next_live_deadline(), None);
    // While paused, live release is refused (release-device without live is the paused way).
    h.pause_devices();
    assert_eq!(h.live_release("vf0").unwrap_err().status, 405);
}

#[test]
fn a_live_released_device_not_back_in_time_is_given_up_and_a_pause_resolves_it() {
    // No time to come back.
    let (mut h, _host) = vm_with(&[(VF0, "vf0")], Duration::from_millis(0));
    h.live_release("vf0").unwrap();
    assert!(h.next_live_deadline().is_some());
    h.service_recoveries();
    let info = states(&mut h);
    assert!(info[0].contains("Released (not back within 0 s of its live release)"), "{info:?}");
    assert_eq!(h.next_live_deadline(), None);
    // A later pause + acquire + resume brings it back as any released device.
    h.pause_devices();
    h.acquire("vf0", None).unwrap();
    h.resume_devices();
    assert_eq!(states(&mut h), [r#"vf0="Attached"/"Bound""#]);
}

#[test]
fn a_live_released_device_comes_back_when_the_host_binds_its_function_to_vfio_pci() {
    let (mut h, host) = vm_with(&[(VF0, "vf0"), (VF1, "vf1")], Duration::from_secs(30));
    h.live_release("vf1").unwrap();
    host.take_calls();
    // Another function bound: nothing happens.
    h.on_host_function_bound("/devices/pci0000:00/0000:00:01.0/0000:01:10.6");
    assert!(host.take_calls().is_empty());
    // Its own (the uevent's DEVPATH is under /sys): re-acquired and running.
    h.on_host_function_bound(VF1.strip_prefix("/sys").unwrap());
    assert_eq!(host.take_calls(), [format!("validate {VF1}"), format!("reacquire 2 {VF1}"), "unquiesce 2".into()]);
    assert_eq!(states(&mut h)[1], r#"vf1="Attached"/"Bound""#);
    // A bound device is left alone.
    h.on_host_function_bound(VF0.strip_prefix("/sys").unwrap());
    assert!(host.take_calls().is_empty());
}

#[test]
fn a_function_bound_before_it_opens_is_tried_again_until_it_does() {
    let (mut h, host) = vm_with(&[(VF0, "vf0")], Duration::from_secs(30));
    h.live_release("vf0").unwrap();
    // The bind event comes, but the function does not open yet.
    host.0.lock().unwrap().missing.insert(VF0.into());
    h.on_host_function_bound(VF0.strip_prefix("/sys").unwrap());
    let retry = h.entries["vf0"].live_retry.expect("a retry is scheduled");
    assert!(h.next_live_deadline() <= Some(retry), "the event loop's timer wakes for it");
    assert!(states(&mut h)[0].contains("Released live"));
    // It opens now; the retry, when due, takes it back.
    host.0.lock().unwrap().missing.clear();
    h.entries.get_mut("vf0").unwrap().live_retry = Some(Instant::now());
    h.service_recoveries();
    assert_eq!(states(&mut h), [r#"vf0="Attached"/"Bound""#]);
    assert_eq!(h.entries["vf0"].live_retry, None);
}
