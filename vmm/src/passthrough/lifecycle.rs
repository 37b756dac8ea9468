//! The VF lifecycle's Paused state, on the VMM thread: quiesce every device when the VM
//! pauses, release a device's host side while paused (by API or because the host asked for
//! it), re-acquire released devices (by API, or at resume at their own paths), and let the
//! devices run again when the VM resumes. The guest keeps every device throughout: nothing here
//! touches the hotplug slots.

use std::time::{Duration, Instant};

use api::{ApiError, Refusal};

use crate::passthrough::attachment::AttachState;
use crate::passthrough::binding::{transition, BindingAction, BindingEvent, BindingState};
use crate::passthrough::hotplug::{refusal, Hotplug};
use crate::passthrough::vfio::{HostDevice, ReacquireError};
use crate::platform::config::DeviceConfig;
use crate::process::events;

/// A binding event's name in the event stream, and its reason if it has one.
fn event_name(event: &BindingEvent) -> (&'static str, Option<String>) {
    match event {
        BindingEvent::Quiesce => ("quiesced", None),
        BindingEvent::Unquiesce => ("unquiesced", None),
        BindingEvent::Release => ("released", None),
        BindingEvent::Acquired => ("acquired", None),
        BindingEvent::AcquireFailed(r) => ("acquire-failed", Some(r.clone())),
        BindingEvent::LiveRelease => ("live-released", None),
        BindingEvent::GiveUp(r) => ("given-up", Some(r.clone())),
    }
}

/// The host-error eventfd of a device's entry, to re-arm on a new binding.
fn entry_error_fd(entry: Option<&crate::passthrough::hotplug::Entry>) -> Option<vmm_sys_util::eventfd::EventFd> {
    entry?.host_error.as_ref()?.try_clone().ok()
}

/// The most a live-released device may stay away: Linux waits 60 s for a function after its
/// reset before its recovery fails; the bound stays below that.
const LIVE_REACQUIRE_MAX: Duration = Duration::from_secs(55);

/// How soon a live-released device whose function came back, but did not open, is tried again.
const LIVE_RETRY: Duration = Duration::from_millis(100);

/// How often resume looks for a released device's path while it waits for it.
const REACQUIRE_POLL: Duration = Duration::from_millis(50);

impl Hotplug {
    /// Applies `event` to device `id`'s binding and carries out the quiesce/unquiesce action.
    fn binding_event(&mut self, id: &str, event: BindingEvent) -> Result<BindingAction, ApiError> {
        let entry = self
            .entries
            .get_mut(id)
            .ok_or_else(|| ApiError::refused(Refusal::NotFound, format!("no device '{id}'")))?;
        let (name, reason) = event_name(&event);
        let (next, action) = transition(&entry.binding, event)
            .map_err(|e| ApiError::refused(Refusal::Conflict, format!("{id}: {e}")))?;
        events::device(name, id, serde_json::json!({ "binding": next.to_string(), "reason": reason }));
        entry.binding = next;
        let slot = entry.slot;
        match action {
            BindingAction::Quiesce => self.host.quiesce(slot),
            BindingAction::Unquiesce => self.host.unquiesce(slot),
            BindingAction::Release | BindingAction::None => {}
        }
        Ok(action)
    }

    fn live_ids(&self) -> Vec<String> {
        self.live().map(|e| e.host.id.clone()).collect()
    }

    /// Guest RAM is DMA-mapped: devices added meanwhile are shown to the guest, and devices get
    /// the bus mastering the guest enabled meanwhile.
    pub fn on_dma_mapped(&mut self) {
        self.announce_mapped_devices();
        let slots: Vec<u8> = self.live().map(|e| e.slot).collect();
        for slot in slots {
            self.host.apply_deferred_bus_master(slot);
        }
    }

    /// Carries out the devices' error-recovery work (see `pci::vfio::recovery`): errors to
    /// report to the guest, resets the guest asked for. Called on the VMM thread whenever a
    /// device woke it.
    pub fn service_recoveries(&mut self) {
        self.give_up_overdue_live_releases(Instant::now());
        self.retry_auto_acquires(Instant::now());
        let devices: Vec<(u8, String)> = self.live().map(|e| (e.slot, e.host.id.clone())).collect();
        for (slot, id) in devices {
            let done = self.host.service_recovery(slot);
            if let Some((severity, reported)) = done.reported {
                let cause = done.cause.unwrap_or("?");
                log::info!("{id}: {cause}: {severity:?} uncorrectable error reported to the guest's RCEC: {reported}");
                events::device(
                    "error-signalled",
                    &id,
                    serde_json::json!({ "cause": cause, "severity": format!("{severity:?}"),
                                        "interrupt": reported.raised(), "detail": reported.to_string() }),
                );
            }
            // The guest can ask for resets (and re-enable its function) at will: rate-limited.
            if let Some(ms) = done.reset_ms {
                devices::info_guest!("{id}: function level reset asked by the guest, done through VFIO in {ms} ms");
                events::device("reset", &id, serde_json::json!({ "ms": ms }));
            }
            if let Some(ms) = done.reenabled_ms {
                devices::info_guest!(
                    "{id}: recovered: the guest's driver re-enabled the function {ms} ms after the error"
                );
                events::device("recovered", &id, serde_json::json!({ "after_error_ms": ms }));
            }
        }
    }

    /// `vm.pause` (after the vCPUs stopped): every device stops DMA and interrupts.
    pub fn pause_devices(&mut self) {
        self.paused_since = Some(Instant::now());
        for id in self.live_ids() {
            if let Err(e) = self.binding_event(&id, BindingEvent::Quiesce) {
                log::warn!("pause: {}", e.message);
            }
        }
    }

    /// `vm.release-device`: only while paused.
    pub fn release(&mut self, id: &str) -> Result<(), ApiError> {
        if self.paused_since.is_none() {
            return Err(ApiError::refused(Refusal::WrongVmState, "release-device needs a paused VM: pause it first"));
        }
        let entry =
            self.entries.get(id).ok_or_else(|| ApiError::refused(Refusal::NotFound, format!("no device '{id}'")))?;
        if entry.state == AttachState::Detached {
            return Err(ApiError::refused(Refusal::Conflict, format!("{id} is detached")));
        }
        let slot = entry.slot;
        let (next, _) = transition(&entry.binding, BindingEvent::Release)
            .map_err(|e| ApiError::refused(Refusal::Conflict, format!("{id}: {e}")))?;
        self.host.release(slot).map_err(|e| ApiError::refused(Refusal::Internal, format!("{id}: {e}")))?;
        events::device("released", id, serde_json::json!({ "binding": next.to_string() }));
        if let Some(entry) = self.entries.get_mut(id) {
            entry.binding = next;
        }
        Ok(())
    }

    /// `vm.release-device` with `live`: only while running, for a bound device. The device is
    /// quiesced, its guest driver told the function failed (AER; the driver stops using it and
    /// waits in its reset), and its host side let go of; `acquire-device` brings it back
    /// while the VM runs, within the re-acquire bound (below Linux's 60 s reset wait), or it is
    /// given up (the guest's wait runs out; `vm.info` says why).
    pub fn live_release(&mut self, id: &str) -> Result<(), ApiError> {
        if self.paused_since.is_some() {
            return Err(ApiError::refused(
                Refusal::WrongVmState,
                "live release is for a running VM: release-device without live releases a paused VM's device",
            ));
        }
        self.refresh();
        let entry =
            self.entries.get(id).ok_or_else(|| ApiError::refused(Refusal::NotFound, format!("no device '{id}'")))?;
        if entry.state != AttachState::Attached {
            return Err(ApiError::refused(Refusal::Conflict, format!("{id} is {}, not attached", entry.state)));
        }
        let slot = entry.slot;
        let (next, _) = transition(&entry.binding, BindingEvent::LiveRelease)
            .map_err(|e| ApiError::refused(Refusal::Conflict, format!("{id}: {e}")))?;
        self.host.quiesce(slot);
        let told = self.host.signal_live_release(slot);
        if let Err(e) = self.host.release(slot) {
            // Nothing let go of: the device runs on (the guest recovers from the error).
            self.host.unquiesce(slot);
            return Err(ApiError::refused(Refusal::Internal, format!("{id}: {e}")));
        }
        let bound = self.live_reacquire_bound();
        events::device(
            "live-released",
            id,
            serde_json::json!({ "binding": next.to_string(), "guest_told": told, "bound_secs": bound.as_secs() }),
        );
        if let Some(entry) = self.entries.get_mut(id) {
            entry.binding = next;
            entry.live_deadline = Some(Instant::now() + bound);
        }
        log::info!(
            "{id}: released while the VM runs ({}); it has {} s to come back",
            if told { "its guest driver was told and waits" } else { "the guest has not enabled error reporting" },
            bound.as_secs()
        );
        self.wake_event_loop();
        Ok(())
    }

    /// The host bound the function at sysfs `devpath` (under /sys) to vfio-pci: a
    /// live-released device of that path is re-acquired at once, while the VM runs. A failure
    /// leaves it waiting (the next bind, or acquire-device, tries again).
    pub fn on_host_function_bound(&mut self, devpath: &str) {
        let path = std::path::Path::new("/sys").join(devpath.trim_start_matches('/'));
        let waiting: Vec<String> = self
            .live()
            .filter(|e| matches!(e.binding, BindingState::LiveReleased { .. }) && e.host.path == path)
            .map(|e| e.host.id.clone())
            .collect();
        for id in waiting {
            self.auto_acquire(&id);
        }
    }

    /// Re-acquires live-released device `id` whose function is back; on failure, tries again
    /// shortly (until its bound), as the host's bind event may come before the function opens.
    fn auto_acquire(&mut self, id: &str) {
        let result = self.acquire(id, None);
        let Some(entry) = self.entries.get_mut(id) else { return };
        match result {
            Ok(()) => {
                entry.live_retry = None;
                log::info!("{id}: {} is bound to vfio-pci again: re-acquired automatically", entry.host.path.display());
            }
            Err(e) => {
                if entry.live_retry.is_none() {
                    log::info!(
                        "{id}: {} is back, not re-acquired yet ({}); trying again",
                        entry.host.path.display(),
                        e.message
                    );
                }
                entry.live_retry = Some(Instant::now() + LIVE_RETRY);
            }
        }
    }

    /// Live-released devices whose function came back but did not open yet: another try each.
    fn retry_auto_acquires(&mut self, now: Instant) {
        let due: Vec<String> = self
            .live()
            .filter(|e| matches!(e.binding, BindingState::LiveReleased { .. }))
            .filter(|e| e.live_retry.is_some_and(|t| now >= t))
            .map(|e| e.host.id.clone())
            .collect();
        for id in due {
            self.auto_acquire(&id);
        }
    }

    /// When the next live-released device is due to be given up (for the event loop's timer).
    pub fn next_live_deadline(&self) -> Option<Instant> {
        self.live().flat_map(|e| [e.live_deadline, e.live_retry]).flatten().min()
    }

    /// How long a live-released device may stay away: the re-acquire timeout, kept below
    /// Linux's wait for a function after its reset (60 s), which ends the guest's recovery.
    fn live_reacquire_bound(&self) -> Duration {
        self.reacquire_timeout.min(LIVE_REACQUIRE_MAX)
    }

    /// Live-released devices whose bound passed are given up: they stay released (the
    /// guest's reset wait runs out and its driver fails the device) until a pause + acquire,
    /// or a remove-device, resolves them.
    pub(crate) fn give_up_overdue_live_releases(&mut self, now: Instant) {
        let overdue: Vec<String> = self
            .live()
            .filter(|e| matches!(e.binding, BindingState::LiveReleased { .. }))
            .filter(|e| e.live_deadline.is_some_and(|d| now >= d))
            .map(|e| e.host.id.clone())
            .collect();
        for id in overdue {
            let reason = format!("not back within {} s of its live release", self.live_reacquire_bound().as_secs());
            log::warn!("{id}: {reason}: given up (the guest's driver will fail the device)");
            if let Err(e) = self.binding_event(&id, BindingEvent::GiveUp(reason)) {
                log::warn!("{}", e.message);
            }
            if let Some(entry) = self.entries.get_mut(&id) {
                entry.live_deadline = None;
                entry.live_retry = None;
            }
        }
    }

    /// Re-acquires released device `id` at `host`. A failure leaves it released; with
    /// `record_failure`, with the reason (resume), otherwise exactly as it was (a refused API
    /// request changes nothing).
    fn reacquire(&mut self, id: &str, host: HostDevice, record_failure: bool) -> Result<(), ReacquireError> {
        let Some(entry) = self.entries.get(id) else {
            return Err(ReacquireError::Kind(format!("no device '{id}'")));
        };
        let slot = entry.slot;
        let request = entry.request.as_ref().and_then(|fd| fd.try_clone().ok());
        let result = self.host.reacquire(slot, host, request.as_ref());
        if result.is_ok() {
            if let Some(fd) = entry_error_fd(self.entries.get(id)) {
                if let Err(e) = self.host.arm_host_errors(slot, &fd) {
                    log::info!("{id}: host errors of the re-acquired device cannot be forwarded: {e}");
                }
            }
        }
        let event = match &result {
            Ok(()) => Some(BindingEvent::Acquired),
            Err(e) if record_failure => Some(BindingEvent::AcquireFailed(e.to_string())),
            Err(_) => None,
        };
        if let Some(Err(e)) = event.map(|event| self.binding_event(id, event)) {
            log::warn!("{}", e.message);
        }
        result
    }

    /// `vm.acquire-device`: while paused for a released device, or while running for a
    /// live-released one; `path` may name another function of the same kind.
    pub fn acquire(&mut self, id: &str, path: Option<String>) -> Result<(), ApiError> {
        let entry =
            self.entries.get(id).ok_or_else(|| ApiError::refused(Refusal::NotFound, format!("no device '{id}'")))?;
        let live = matches!(entry.binding, BindingState::LiveReleased { .. });
        match (&entry.binding, self.paused_since.is_some()) {
            _ if entry.state == AttachState::Detached => {
                return Err(ApiError::refused(Refusal::Conflict, format!("{id} is detached")))
            }
            (BindingState::LiveReleased { .. }, _) | (BindingState::Released { .. }, true) => {}
            (BindingState::Released { .. }, false) => {
                return Err(ApiError::refused(
                    Refusal::WrongVmState,
                    "acquire-device of a released device needs a paused VM: pause it first",
                ))
            }
            (binding, _) => {
                return Err(ApiError::refused(Refusal::Conflict, format!("{id} is {binding}, not released")))
            }
        }
        let path = path.map(Into::into).unwrap_or_else(|| entry.host.path.clone());
        let cfg = DeviceConfig { path, id: Some(id.to_string()) };
        let host = self.host.validate(&cfg).map_err(|e| ApiError::refused(refusal(&e), e.to_string()))?;
        if self.live().any(|e| e.host.id != id && e.host.path == host.path) {
            return Err(ApiError::refused(
                Refusal::Conflict,
                format!("{} belongs to another device", cfg.path.display()),
            ));
        }
        self.reacquire(id, host, false).map_err(|e| match e {
            ReacquireError::Kind(m) => ApiError::refused(Refusal::Conflict, m),
            ReacquireError::Open(v) => ApiError::refused(refusal(&v), v.to_string()),
            ReacquireError::NoDevice(_) => ApiError::refused(Refusal::Internal, e.to_string()),
        })?;
        if live {
            if let Some(entry) = self.entries.get_mut(id) {
                entry.live_deadline = None;
                entry.live_retry = None;
            }
            log::info!("{id}: re-acquired while the VM runs; the guest's reset of it completes now");
            // The guest's pending reset is done by the VMM thread's device service.
            self.wake_event_loop();
        }
        Ok(())
    }

    /// Waits (up to the re-acquire timeout) for each released device's host path to be usable
    /// again, re-acquires it, then lets every device run. A device that does not come back
    /// stays released with the reason; the VM resumes anyway.
    pub fn resume_devices(&mut self) {
        let deadline = Instant::now() + self.reacquire_timeout;
        let released: Vec<(String, HostDevice)> = self
            .live()
            .filter(|e| matches!(e.binding, BindingState::Released { .. }))
            .map(|e| (e.host.id.clone(), e.host.clone()))
            .collect();
        for (id, host) in released {
            let cfg = DeviceConfig { path: host.path.clone(), id: Some(id.clone()) };
            let outcome = loop {
                let attempt = self
                    .host
                    .validate(&cfg)
                    .map_err(|e| e.to_string())
                    .and_then(|h| self.reacquire(&id, h, false).map_err(|e| e.to_string()));
                match attempt {
                    Ok(()) => break Ok(()),
                    Err(e) if Instant::now() >= deadline => break Err(e),
                    Err(_) => std::thread::sleep(REACQUIRE_POLL),
                }
            };
            if let Err(reason) = outcome {
                log::warn!("{id}: not re-acquired, the VM resumes without it: {reason}");
                if let Err(e) = self.binding_event(&id, BindingEvent::AcquireFailed(reason)) {
                    log::warn!("{}", e.message);
                }
            }
        }
        // The guest's drivers may touch their devices as soon as the vCPUs run: guest RAM is
        // DMA-mapped first (re-acquiring the only device remaps it all).
        if self.live().any(|e| !matches!(e.binding, BindingState::Released { .. })) {
            if let Err(e) = self.host.wait_dma(crate::passthrough::hotplug::DMA_WAIT) {
                log::error!("resume: {e}");
            }
        }
        for id in self.live_ids() {
            if let Err(e) = self.binding_event(&id, BindingEvent::Unquiesce) {
                log::warn!("resume: {}", e.message);
            }
        }
        // Recoveries started by unquiesce run from the event loop's timer: make it look.
        self.wake_event_loop();
        // The time paused does not count against an eject in progress.
        if let Some(since) = self.paused_since.take() {
            let paused = since.elapsed();
            for entry in self.entries.values_mut() {
                if let Some(d) = entry.eject_deadline.as_mut() {
                    *d += paused;
                }
            }
        }
    }
}
