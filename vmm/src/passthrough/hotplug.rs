//! Device attach/detach at run time (ACPI PCI hotplug), on the VMM thread.
//!
//! add-device: validate the host device, open it, place it in a free slot, announce it
//! (slot-up + GED interrupt) → Attaching; the guest's acpiphp enables it → Attached.
//! remove-device: slot-down + GED interrupt → Detaching; the guest's `_EJ0` writes the eject
//! register → torn down here → Detached, the VF is free on the host. A guest that does not
//! eject within the timeout shows "Detaching (eject timed out)"; remove-device again retries.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use api::{AddDevice, ApiError, Refusal};
use serde_json::json;
use vmm_sys_util::eventfd::EventFd;

use crate::passthrough::attachment::{transition, AttachAction, AttachEvent, AttachState};
use crate::passthrough::binding::BindingState;
use crate::passthrough::device_host::DeviceHost;
use crate::passthrough::vfio::{HostDevice, VfioError};
use crate::platform::config::DeviceConfig;
use crate::platform::timeline::{Timeline, Timings};
use devices::timing::names;
use pci::vfio::DmaState;

/// The attach timeline's mark for the guest's hotplug notification.
const GUEST_NOTIFIED: &str = "guest notified (GED interrupt)";

/// Detached devices `vm.info` still shows.
const MAX_DETACHED_SHOWN: usize = 16;

pub(crate) struct Entry {
    pub(crate) host: HostDevice,
    pub(crate) slot: u8,
    /// The guest's side (attachment state machine).
    pub(crate) state: AttachState,
    /// The host's side (binding state machine).
    pub(crate) binding: BindingState,
    pub(crate) eject_deadline: Option<Instant>,
    /// Live-released: when it gives up waiting for the device to come back.
    pub(crate) live_deadline: Option<Instant>,
    /// Live-released, its function bound to vfio-pci again but not opened yet: when to try
    /// again (the host's bind event can come before the function opens through VFIO).
    pub(crate) live_retry: Option<Instant>,
    /// Order of detachment (for forgetting the oldest detached devices).
    pub(crate) detached_seq: u64,
    /// The host-request eventfd the event loop watches; re-armed on each new binding.
    pub(crate) request: Option<EventFd>,
    /// The host-error eventfd (VFIO's error interrupt) the event loop watches; re-armed on
    /// each new binding.
    pub(crate) host_error: Option<EventFd>,
}

/// Changes to the set of host-request and host-error eventfds the event loop must watch.
pub enum RequestWatch {
    Add {
        slot: u8,
        fd: EventFd,
    },
    AddError {
        slot: u8,
        fd: EventFd,
    },
    /// Both of the slot's.
    Remove {
        slot: u8,
    },
}

pub struct Hotplug {
    /// The host and VM side of every operation.
    pub(crate) host: Box<dyn DeviceHost>,
    pub(crate) entries: BTreeMap<String, Entry>,
    eject_timeout: Duration,
    pub(crate) reacquire_timeout: Duration,
    /// When the VM was paused (devices quiesced), while it is.
    pub(crate) paused_since: Option<Instant>,
    next_index: usize,
    /// Devices detached so far.
    detached_count: u64,
    /// Pending changes for the event loop, and the eventfd that tells it to look.
    request_watch: Vec<RequestWatch>,
    resync: EventFd,
    /// Boot and the last attach and detach, for `vm.info`.
    pub timings: Timings,
    /// A detach in progress: `(device id, timeline from the request)`.
    detaching: Option<(String, Timeline)>,
    /// Whether the last attach's full timeline has been logged.
    attach_logged: bool,
    /// Slots of devices added while guest RAM was still being DMA-mapped: the guest is told
    /// about them once mapping is done, so that it cannot start their DMA before it works.
    announce_when_mapped: Vec<u8>,
}

/// How long boot and resume wait for guest RAM to be DMA-mapped for their devices.
pub const DMA_WAIT: Duration = Duration::from_secs(300);

/// The milestones the host and guest reach that belong to an attach.
const ATTACH_MILESTONES: [&str; 6] = [
    names::DEVICE_OPENED,
    names::GUEST_SAW_SLOT,
    names::MEMORY_ENABLED,
    names::MSIX_ENABLED,
    names::DMA_MAPPED,
    names::BUS_MASTER,
];

/// How the API reports a host-device problem.
pub(crate) fn refusal(e: &VfioError) -> Refusal {
    match e {
        VfioError::NotPciDevice { .. } => Refusal::NotFound,
        VfioError::Duplicate { .. } => Refusal::Conflict,
        VfioError::KvmVfioDevice(_) | VfioError::Container(_) | VfioError::DmaMap(_) => Refusal::Internal,
        VfioError::HostBusy { .. } => Refusal::HostBusy,
        _ => Refusal::BadRequest,
    }
}

impl Hotplug {
    pub fn new(
        host: Box<dyn DeviceHost>,
        eject_timeout: Duration,
        reacquire_timeout: Duration,
        resync: EventFd,
    ) -> Self {
        Self {
            request_watch: Vec::new(),
            resync,
            host,
            entries: BTreeMap::new(),
            eject_timeout,
            reacquire_timeout,
            paused_since: None,
            next_index: 0,
            detached_count: 0,
            timings: Timings::default(),
            detaching: None,
            attach_logged: true,
            announce_when_mapped: Vec::new(),
        }
    }

    /// Brings the last attach's timeline up to date with what the host and guest did since,
    /// and logs it once the device masters the bus (the end of an attach).
    fn complete_attach_timing(&mut self) {
        let Some((id, timeline)) = self.timings.last_attach.as_mut() else { return };
        let Some(slot) = self.entries.get(id.as_str()).filter(|e| e.state != AttachState::Detached).map(|e| e.slot)
        else {
            return;
        };
        for (name, m) in self.host.milestones(slot) {
            if ATTACH_MILESTONES.contains(&name) {
                timeline.add(name, m);
            }
        }
        if !self.attach_logged && timeline.has(names::BUS_MASTER) {
            self.attach_logged = true;
            log::info!("timing attach {id}: {}", timeline.summary());
        }
    }

    /// Plugs a validated device; returns its guest slot.
    fn plug(&mut self, host: HostDevice) -> Result<u8, VfioError> {
        let request = EventFd::new(libc::EFD_NONBLOCK).ok();
        let slot = self.host.plug(host.clone(), request.as_ref())?;
        crate::process::events::device(
            "added",
            &host.id,
            serde_json::json!({ "path": host.path, "bdf": format!("0000:00:{slot:02x}.0") }),
        );
        let kept = request.as_ref().and_then(|fd| fd.try_clone().ok());
        let host_error = EventFd::new(libc::EFD_NONBLOCK).ok().filter(|fd| match self.host.arm_host_errors(slot, fd) {
            Ok(()) => true,
            Err(e) => {
                log::info!("{}: host errors of the device cannot be forwarded: {e}", host.id);
                false
            }
        });
        let error_watch = host_error.as_ref().and_then(|fd| fd.try_clone().ok());
        self.entries.insert(
            host.id.clone(),
            Entry {
                host,
                slot,
                state: AttachState::Attaching,
                binding: BindingState::Bound,
                eject_deadline: None,
                live_deadline: None,
                live_retry: None,
                detached_seq: 0,
                request: kept,
                host_error,
            },
        );
        if let Some(fd) = request {
            self.watch(RequestWatch::Add { slot, fd });
        }
        if let Some(fd) = error_watch {
            self.watch(RequestWatch::AddError { slot, fd });
        }
        Ok(slot)
    }

    fn watch(&mut self, change: RequestWatch) {
        self.request_watch.push(change);
        self.wake_event_loop();
    }

    /// Makes the event loop's hotplug watcher look at host-request watches and recoveries.
    pub(crate) fn wake_event_loop(&self) {
        if let Err(e) = self.resync.write(1) {
            log::error!("cannot wake the event loop's hotplug watcher: {e}");
        }
    }

    /// Host-request eventfds to start or stop watching.
    pub fn take_request_watch(&mut self) -> Vec<RequestWatch> {
        std::mem::take(&mut self.request_watch)
    }

    /// The host detected an error on the device in `slot`: its guest driver is told (AER).
    pub fn on_host_error(&mut self, slot: u8) {
        let Some(entry) = self.entries.values().find(|e| e.slot == slot && e.state != AttachState::Detached) else {
            return;
        };
        log::info!("{}: the host reports an error on {}: signalling it to the guest", entry.host.id, entry.host.bdf);
        self.host.signal_host_error(slot);
    }

    /// The host asked for the device in `slot` back: while paused, release it at once (the
    /// guest keeps the device); while running, ask the guest to eject it.
    pub fn on_host_request(&mut self, slot: u8) {
        if self.paused_since.is_some() {
            let id = self
                .entries
                .values()
                .find(|e| e.slot == slot && e.state != AttachState::Detached)
                .map(|e| e.host.id.clone());
            if let Some(id) = id {
                match self.release(&id) {
                    Ok(()) => {
                        log::info!("{id}: the host wants it back while the VM is paused: released")
                    }
                    Err(e) => log::info!("{id}: host request while paused: {}", e.message),
                }
            }
            return;
        }
        let Some(entry) = self.entries.values_mut().find(|e| e.slot == slot && e.state != AttachState::Detached) else {
            return;
        };
        match transition(entry.state, AttachEvent::HostRequested) {
            Ok((next, action)) => {
                log::info!("{}: the host wants {} back; asking the guest to eject it", entry.host.id, entry.host.bdf);
                entry.state = next;
                if action == AttachAction::NotifyEject {
                    entry.eject_deadline.get_or_insert(Instant::now() + self.eject_timeout);
                    self.host.announce(slot, false);
                }
            }
            Err(e) => log::warn!("slot {slot}: host request ignored: {e}"),
        }
    }

    /// Devices given on the command line, before the guest boots.
    pub fn attach_at_boot(&mut self, hosts: Vec<HostDevice>) -> Result<(), VfioError> {
        self.next_index = hosts.len();
        for host in hosts {
            self.plug(host)?;
        }
        Ok(())
    }

    pub(crate) fn live(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values().filter(|e| e.state != AttachState::Detached)
    }

    /// Refuses a request that needs a running guest while the VM is paused.
    fn refuse_if_paused(&self, what: &str) -> Result<(), ApiError> {
        match self.paused_since {
            Some(_) => Err(ApiError::refused(
                Refusal::WrongVmState,
                format!("{what} needs a running VM (it is paused): resume it first"),
            )),
            None => Ok(()),
        }
    }

    /// Takes back a device just plugged for an attach that is refused after all.
    fn unplug_refused(&mut self, id: &str, slot: u8) {
        self.entries.remove(id);
        self.host.unplug(slot);
        self.watch(RequestWatch::Remove { slot });
    }

    /// Guest RAM finished DMA-mapping: the guest is told about the devices added meanwhile
    /// (or, if mapping failed, they are taken back and the guest never sees them).
    pub(crate) fn announce_mapped_devices(&mut self) {
        let state = self.host.dma_state();
        if state == DmaState::Pending {
            return;
        }
        for slot in std::mem::take(&mut self.announce_when_mapped) {
            let Some(id) = self
                .entries
                .values()
                .find(|e| e.slot == slot && e.state == AttachState::Attaching)
                .map(|e| e.host.id.clone())
            else {
                continue;
            };
            if let DmaState::Failed(reason) = &state {
                log::error!("{id}: not shown to the guest: guest RAM cannot be DMA-mapped for it: {reason}");
                self.unplug_refused(&id, slot);
                continue;
            }
            self.host.announce(slot, true);
            log::info!("{id}: guest RAM is DMA-mapped; the guest is told about the device now");
            if let Some((_, timeline)) = self.timings.last_attach.as_mut().filter(|(a, _)| *a == id) {
                timeline.mark(GUEST_NOTIFIED);
            }
        }
    }

    /// `vm.add-device`.
    pub fn add(&mut self, req: AddDevice) -> Result<serde_json::Value, ApiError> {
        self.refuse_if_paused("add-device")?;
        let mut timeline = Timeline::starting_now();
        let id = req.id.clone().unwrap_or_else(|| {
            self.next_index += 1;
            format!("vfio{}", self.next_index - 1)
        });
        if self.live().any(|e| e.host.id == id) {
            return Err(ApiError::refused(Refusal::Conflict, format!("device id '{id}' is in use")));
        }
        let cfg = DeviceConfig { path: req.path.clone().into(), id: Some(id.clone()) };
        let host = self.host.validate(&cfg).map_err(|e| ApiError::refused(refusal(&e), e.to_string()))?;
        if self.live().any(|e| e.host.path == host.path) {
            return Err(ApiError::refused(Refusal::Conflict, format!("{} is already attached", req.path)));
        }
        timeline.mark("request validated");
        // A detached entry with this id is history now.
        self.entries.remove(&id);
        let slot = self.plug(host).map_err(|e| ApiError::refused(refusal(&e), e.to_string()))?;
        timeline.mark("BARs placed and plugged into the bus");
        match self.host.dma_state() {
            DmaState::Ready => {
                self.host.announce(slot, true);
                timeline.mark(GUEST_NOTIFIED);
            }
            DmaState::Pending => self.announce_when_mapped.push(slot),
            DmaState::Failed(reason) => {
                self.unplug_refused(&id, slot);
                return Err(ApiError::refused(
                    Refusal::Internal,
                    format!("{id}: guest RAM cannot be DMA-mapped for it: {reason}"),
                ));
            }
        }
        for (name, m) in self.host.milestones(slot) {
            if name == names::DEVICE_OPENED {
                timeline.add(name, m);
            }
        }
        log::info!("timing attach {id} (host side): {}", timeline.summary());
        self.complete_attach_timing();
        self.timings.last_attach = Some((id.clone(), timeline));
        self.attach_logged = false;
        Ok(json!({ "id": id, "bdf": format!("0000:00:{slot:02x}.0") }))
    }

    /// `vm.remove-device`: ask the guest to eject.
    pub fn remove(&mut self, id: &str) -> Result<(), ApiError> {
        self.refuse_if_paused("remove-device")?;
        self.refresh();
        let entry = self
            .entries
            .get_mut(id)
            .ok_or_else(|| ApiError::refused(Refusal::NotFound, format!("no device '{id}'")))?;
        let (next, action) = transition(entry.state, AttachEvent::RemoveRequested)
            .map_err(|e| ApiError::refused(Refusal::Conflict, e.to_string()))?;
        crate::process::events::device("removing", id, serde_json::json!({ "state": next.to_string() }));
        entry.state = next;
        if action == AttachAction::NotifyEject {
            let mut timeline = Timeline::starting_now();
            entry.eject_deadline = Some(Instant::now() + self.eject_timeout);
            self.host.announce(entry.slot, false);
            timeline.mark(GUEST_NOTIFIED);
            self.detaching = Some((id.to_string(), timeline));
        }
        Ok(())
    }

    /// The guest ran `_EJ0` for some slots: tear those devices down.
    pub fn on_guest_eject(&mut self) {
        let ejected = self.host.take_ejected();
        let slots: Vec<u8> = (1..32u8).filter(|s| ejected & (1 << s) != 0).collect();
        for slot in slots {
            let Some(entry) = self.entries.values_mut().find(|e| e.slot == slot && e.state != AttachState::Detached)
            else {
                continue;
            };
            match transition(entry.state, AttachEvent::GuestEjected) {
                Ok((next, AttachAction::TearDown)) => {
                    let id = entry.host.id.clone();
                    // The last attach's timeline is complete before the device goes.
                    if self.timings.last_attach.as_ref().is_some_and(|(a, _)| *a == id) {
                        self.complete_attach_timing();
                    }
                    let ejected = self.host.milestones(slot).into_iter().find(|(n, _)| *n == names::GUEST_EJECTED);
                    let Some(entry) = self.entries.get_mut(&id) else { continue };
                    crate::process::events::device("removed", &id, serde_json::json!({ "path": entry.host.path }));
                    entry.state = next;
                    entry.eject_deadline = None;
                    // A detached device keeps only its history: no fd.
                    entry.request = None;
                    entry.host_error = None;
                    entry.live_deadline = None;
                    entry.live_retry = None;
                    self.detached_count += 1;
                    entry.detached_seq = self.detached_count;
                    let mut timeline = match self.detaching.take() {
                        Some((d, t)) if d == id => t,
                        // Not asked through the API (the host wanted it, or the guest let go).
                        _ => Timeline::starting_at(ejected.map_or_else(devices::timing::Milestone::now, |(_, m)| m)),
                    };
                    if let Some((name, m)) = ejected {
                        timeline.add(name, m);
                    }
                    timeline.mark("eject seen by the VMM thread");
                    for (name, m) in self.host.unplug(slot) {
                        timeline.add(name, m);
                    }
                    timeline.mark("torn down");
                    log::info!("timing detach {id}: {}", timeline.summary());
                    self.timings.last_detach = Some((id, timeline));
                    self.watch(RequestWatch::Remove { slot });
                }
                Ok((next, _)) => entry.state = next,
                Err(e) => devices::warn_guest!("slot {slot}: guest eject ignored: {e}"),
            }
        }
        self.forget_old_detached();
    }

    /// `vm.info` keeps the most recent detached devices only (a VM that attaches and detaches
    /// for ever must not grow without bound).
    fn forget_old_detached(&mut self) {
        let mut detached: Vec<(u64, String)> = self
            .entries
            .values()
            .filter(|e| e.state == AttachState::Detached)
            .map(|e| (e.detached_seq, e.host.id.clone()))
            .collect();
        if detached.len() > MAX_DETACHED_SHOWN {
            detached.sort();
            for (_, id) in &detached[..detached.len() - MAX_DETACHED_SHOWN] {
                self.entries.remove(id);
            }
        }
    }

    /// Brings states up to date: guest-enabled devices are Attached, overdue ejects time out,
    /// live-released devices not back in time are given up.
    pub(crate) fn refresh(&mut self) {
        let now = Instant::now();
        self.give_up_overdue_live_releases(now);
        for entry in self.entries.values_mut() {
            let event = match entry.state {
                AttachState::Attaching => self.host.guest_enabled(entry.slot).then_some(AttachEvent::GuestEnabled),
                // The eject timeout does not run while the VM is paused.
                AttachState::Detaching { timed_out: false } if self.paused_since.is_none() => {
                    entry.eject_deadline.is_some_and(|d| now >= d).then_some(AttachEvent::EjectTimedOut)
                }
                _ => None,
            };
            if let Some(Ok((next, _))) = event.map(|e| transition(entry.state, e)) {
                crate::process::events::device(
                    if next == AttachState::Attached { "attached" } else { "eject-timed-out" },
                    &entry.host.id,
                    serde_json::json!({ "state": next.to_string() }),
                );
                entry.state = next;
            }
        }
    }

    /// `timings` for `vm.info`.
    pub fn timings(&mut self) -> serde_json::Value {
        self.complete_attach_timing();
        self.timings.to_json()
    }

    /// Devices for `vm.info`.
    pub fn info(&mut self) -> Vec<serde_json::Value> {
        self.refresh();
        self.entries
            .values()
            .map(|e| {
                json!({
                    "id": e.host.id,
                    "path": e.host.path.display().to_string(),
                    "bdf": format!("0000:00:{:02x}.0", e.slot),
                    "state": e.state.to_string(),
                    "binding": e.binding.to_string(),
                    "recovery": self.host.recovery_stats(e.slot).map(recovery_json),
                })
            })
            .collect()
    }

    /// KVM resources passthrough uses now, for `vm.info`.
    pub fn usage(&self) -> serde_json::Value {
        let (msi_routes, memory_slots) = self.host.usage();
        json!({ "msi_routes": msi_routes, "bar_memory_slots": memory_slots })
    }

    /// `vm.shutdown`: press the ACPI power button (GED).
    pub fn power_button(&self) {
        self.host.power_button();
    }

    /// VM exit: every device quiesced, reset and released.
    pub fn shutdown(&mut self) {
        self.host.shutdown();
    }
}

/// A device's error recoveries for `vm.info`: how many were signalled, the guest's resets, and
/// the last one (why, when, whether the guest got it, how long until it reset and re-enabled
/// the function).
fn recovery_json(s: pci::vfio::recovery::RecoveryStats) -> serde_json::Value {
    json!({
        "signalled": s.signalled,
        "resets": s.resets,
        "last": s.last.map(|l| json!({
            "cause": l.cause.as_str(),
            "signalled_at_ms": l.signalled_at_ms,
            "delivered": l.delivered,
            "reset_after_ms": l.reset_after_ms,
            "reenabled_after_ms": l.reenabled_after_ms,
        })),
    })
}

#[cfg(test)]
#[path = "hotplug_tests.rs"]
mod tests;
