//! `vfctl reconfigure`: change a PF's VF count (which destroys every VF: the count goes
//! through 0) under the VMs that hold its VFs.
//!
//! - pause mode: every VM holding a VF of the PF is paused and its VFs released, the count is
//!   set, each device is re-acquired at its VF index (an index keeps its meaning; the address
//!   may change) and the VM resumed. The guests see no unplug.
//! - detach mode: every held VF is hot-detached (the guest ejects it), the count is set and
//!   each device hot-attached again at its VF index with the same id.
//! - live mode: every held VF is released while its VM runs (`vm.release-device` live: the
//!   guest's driver is told its function failed and waits for it), the count is set and each
//!   device re-acquired at its VF index while the VM runs. No vCPU stops, no unplug.
//!
//! A VF whose index is not below the new count cannot be kept: refused unless allowed, then
//! hot-detached first. A failing step rolls back (old count, devices re-acquired or
//! re-attached, VMs resumed) and every outcome is reported; no VM is left paused silently.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::host::manage::VmView;
use crate::host::sriov::PfInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Mode {
    Pause,
    Detach,
    Live,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReconfigureError {
    #[error("{pf} supports at most {total} VFs, not {wanted}")]
    TooMany { pf: String, total: u32, wanted: u32 },
    #[error("these VMs would lose their VF (index >= {count}): {who}; add --allow-detach to hot-detach them first")]
    WouldLose { count: u32, who: String },
    #[error("{0}")]
    Failed(String),
}

/// A device of a VM that holds a VF of the PF.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Held {
    pub vm: String,
    pub id: String,
    pub index: u32,
    pub address: String,
}

/// What happens to one held VF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Fate {
    /// Kept across the change (by the plan's mode).
    Keep,
    /// Its index is not below the new count: hot-detached, not re-attached.
    Lose,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub pf: String,
    pub old_count: u32,
    pub new_count: u32,
    pub total: u32,
    pub mode: Mode,
    pub items: Vec<(Held, Fate)>,
}

/// Builds the plan from the PF (with holders) and the VMs' device lists.
pub fn plan(info: &PfInfo, views: &[VmView], new_count: u32, mode: Mode) -> Plan {
    let mut items = Vec::new();
    for vf in &info.vfs {
        let Some(holder) = &vf.held_by else { continue };
        let Some((vm, id)) = holder.split_once('/') else { continue };
        if !views.iter().any(|v| v.record.name == vm) {
            continue;
        }
        let held = Held { vm: vm.into(), id: id.into(), index: vf.index, address: vf.address.clone() };
        items.push((held, if vf.index < new_count { Fate::Keep } else { Fate::Lose }));
    }
    Plan { pf: info.address.clone(), old_count: info.num_vfs, new_count, total: info.total_vfs, mode, items }
}

impl Plan {
    /// Refuses what cannot be done, before anything changes.
    pub fn check(&self, allow_detach: bool) -> Result<(), ReconfigureError> {
        if self.new_count > self.total {
            return Err(ReconfigureError::TooMany { pf: self.pf.clone(), total: self.total, wanted: self.new_count });
        }
        let losing: Vec<String> = self
            .items
            .iter()
            .filter(|(_, f)| *f == Fate::Lose)
            .map(|(h, _)| format!("{}/{} (VF {})", h.vm, h.id, h.index))
            .collect();
        if !losing.is_empty() && !allow_detach {
            return Err(ReconfigureError::WouldLose { count: self.new_count, who: losing.join(", ") });
        }
        Ok(())
    }

    /// The plan in words, one line per step.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "{}: VFs {} -> 0 -> {} ({} mode)",
            self.pf,
            self.old_count,
            self.new_count,
            match self.mode {
                Mode::Pause => "pause",
                Mode::Detach => "detach",
                Mode::Live => "live",
            }
        )];
        if self.items.is_empty() {
            lines.push("no VM holds a VF of this PF".into());
        }
        for (h, fate) in &self.items {
            lines.push(match (fate, self.mode) {
                (Fate::Lose, _) => format!(
                    "{}/{}: VF {} ({}) does not exist after the change: hot-detached, not re-attached",
                    h.vm, h.id, h.index, h.address
                ),
                (Fate::Keep, Mode::Pause) => format!(
                    "{}/{}: VF {} ({}): VM paused, VF released, re-acquired at VF {} after the change, VM resumed",
                    h.vm, h.id, h.index, h.address, h.index
                ),
                (Fate::Keep, Mode::Detach) => format!(
                    "{}/{}: VF {} ({}): hot-detached, hot-attached again at VF {} as {}",
                    h.vm, h.id, h.index, h.address, h.index, h.id
                ),
                (Fate::Keep, Mode::Live) => format!(
                    "{}/{}: VF {} ({}): released while the VM runs (its driver waits), re-acquired at VF {} after the change",
                    h.vm, h.id, h.index, h.address, h.index
                ),
            });
        }
        lines
    }

    fn kept(&self) -> impl Iterator<Item = &Held> {
        self.items.iter().filter(|(_, f)| *f == Fate::Keep).map(|(h, _)| h)
    }

    fn lost(&self) -> impl Iterator<Item = &Held> {
        self.items.iter().filter(|(_, f)| *f == Fate::Lose).map(|(h, _)| h)
    }

    /// VMs with a kept VF, in order, without repeats.
    fn kept_vms(&self) -> Vec<String> {
        let mut vms: Vec<String> = Vec::new();
        for h in self.kept() {
            if !vms.contains(&h.vm) {
                vms.push(h.vm.clone());
            }
        }
        vms
    }
}

/// What reconfigure does to VMs and the host; the real one talks to the VMs' APIs and sysfs.
pub trait Operations {
    fn pause(&mut self, vm: &str) -> Result<(), String>;
    fn resume(&mut self, vm: &str) -> Result<(), String>;
    fn release(&mut self, vm: &str, id: &str) -> Result<(), String>;
    /// Releases a device while its VM runs (its guest driver waits for it).
    fn live_release(&mut self, vm: &str, id: &str) -> Result<(), String>;
    fn acquire(&mut self, vm: &str, id: &str, address: &str) -> Result<(), String>;
    /// Hot-detach and wait until the guest let go of it.
    fn detach(&mut self, vm: &str, id: &str) -> Result<(), String>;
    fn attach(&mut self, vm: &str, id: &str, address: &str) -> Result<(), String>;
    /// Sets the VF count through 0 and binds the VFs to vfio-pci; their addresses by index.
    fn set_vfs(&mut self, pf: &str, count: u32) -> Result<Vec<String>, String>;
    /// The device's binding state (`Bound` when all is well).
    fn binding(&mut self, vm: &str, id: &str) -> Result<String, String>;
}

/// One step done (or failed), as it happens.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub what: String,
    pub ms: u64,
    pub error: Option<String>,
}

/// A VM's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct VmOutcome {
    pub vm: String,
    /// Pause (or first detach) to resumed-and-bound (or re-attached).
    pub downtime_ms: Option<u64>,
    pub devices: Vec<String>,
    pub ok: bool,
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub rolled_back: bool,
    pub steps: Vec<Step>,
    pub vms: Vec<VmOutcome>,
    pub total_ms: u64,
}

struct Run<'a> {
    ops: &'a mut dyn Operations,
    on_step: &'a mut dyn FnMut(&Step),
    steps: Vec<Step>,
    started: Instant,
}

impl Run<'_> {
    fn step<T>(&mut self, what: String, f: impl FnOnce(&mut dyn Operations) -> Result<T, String>) -> Result<T, String> {
        let t = Instant::now();
        let result = f(self.ops);
        let step = Step { what, ms: t.elapsed().as_millis() as u64, error: result.as_ref().err().cloned() };
        (self.on_step)(&step);
        self.steps.push(step);
        result
    }
}

/// Carries out a checked plan. Never leaves a VM paused without reporting it.
pub fn execute(plan: &Plan, ops: &mut dyn Operations, on_step: &mut dyn FnMut(&Step)) -> Report {
    let mut run = Run { ops, on_step, steps: Vec::new(), started: Instant::now() };
    let mut outcomes = Outcomes::new();
    let mut failed = None;
    // VFs that cannot stay go first, with the guest's cooperation.
    for h in plan.lost() {
        let what = format!("{}: hot-detach {} (VF {} goes away)", h.vm, h.id, h.index);
        let result = run.step(what, |ops| ops.detach(&h.vm, &h.id));
        let o = entry(&mut outcomes, &h.vm);
        match result {
            Ok(()) => o.note = format!("lost {} (VF {})", h.id, h.index),
            Err(e) => {
                o.ok = false;
                o.note = format!("{} not detached: {e}", h.id);
                failed = Some(format!("{}/{}: {e}", h.vm, h.id));
                break;
            }
        }
    }
    let mut rolled_back = false;
    if failed.is_none() {
        let result = match plan.mode {
            Mode::Pause => by_pause(plan, &mut run, &mut outcomes),
            Mode::Detach => while_running(plan, &mut run, &mut outcomes, &DETACH),
            Mode::Live => while_running(plan, &mut run, &mut outcomes, &LIVE),
        };
        if let Err((e, rb)) = result {
            failed = Some(e);
            rolled_back = rb;
        }
    }
    let vms: Vec<VmOutcome> = outcomes.into_values().collect();
    let ok = failed.is_none() && vms.iter().all(|v| v.ok);
    Report { ok, rolled_back, steps: run.steps, vms, total_ms: run.started.elapsed().as_millis() as u64 }
}

type Outcomes = BTreeMap<String, VmOutcome>;

fn entry<'a>(outcomes: &'a mut Outcomes, vm: &str) -> &'a mut VmOutcome {
    outcomes.entry(vm.to_string()).or_insert_with(|| VmOutcome {
        vm: vm.into(),
        downtime_ms: None,
        devices: vec![],
        ok: true,
        note: String::new(),
    })
}

/// Sets the plan's VF count; if that fails, puts the old count back (everyone then returns to
/// the VF index it had). The VFs' addresses by index (empty when even the rollback failed),
/// and the failure.
fn change_count(plan: &Plan, run: &mut Run) -> (Vec<String>, Option<String>) {
    let what = format!("{}: VFs {} -> 0 -> {}, bound to vfio-pci", plan.pf, plan.old_count, plan.new_count);
    match run.step(what, |ops| ops.set_vfs(&plan.pf, plan.new_count)) {
        Ok(addresses) => (addresses, None),
        Err(e) => {
            let what = format!("rollback: {}: VFs back to {}", plan.pf, plan.old_count);
            let addresses = run.step(what, |ops| ops.set_vfs(&plan.pf, plan.old_count)).unwrap_or_default();
            (addresses, Some(format!("{}: {e}", plan.pf)))
        }
    }
}

/// Pause mode. On failure: `(reason, rolled back)`.
fn by_pause(plan: &Plan, run: &mut Run, outcomes: &mut Outcomes) -> Result<(), (String, bool)> {
    let mut paused: Vec<(String, Instant)> = Vec::new();
    let mut released: Vec<&Held> = Vec::new();
    let mut failure = None;
    'pause: for vm in plan.kept_vms() {
        let t = Instant::now();
        if let Err(e) = run.step(format!("{vm}: pause"), |ops| ops.pause(&vm)) {
            failure = Some(format!("{vm}: pause: {e}"));
            break;
        }
        paused.push((vm.clone(), t));
        for h in plan.kept().filter(|h| h.vm == vm) {
            if let Err(e) = run.step(format!("{vm}: release {} (VF {})", h.id, h.index), |ops| ops.release(&vm, &h.id))
            {
                failure = Some(format!("{vm}/{}: release: {e}", h.id));
                break 'pause;
            }
            released.push(h);
        }
    }
    // The new VFs by index; after a failure, the VFs as they were.
    let mut addresses: Vec<String> = Vec::new();
    if failure.is_none() {
        (addresses, failure) = change_count(plan, run);
    }
    let address_of =
        |h: &Held| -> String { addresses.get(h.index as usize).cloned().unwrap_or_else(|| h.address.clone()) };
    for (vm, paused_at) in &paused {
        let mut devices = Vec::new();
        for h in released.iter().filter(|h| &h.vm == vm) {
            let address = address_of(h);
            let what = format!("{vm}: acquire {} at VF {} ({address})", h.id, h.index);
            match run.step(what, |ops| ops.acquire(vm, &h.id, &address)) {
                Ok(()) => devices.push(format!("{} -> {address}", h.id)),
                Err(e) => devices.push(format!("{} not re-acquired: {e}", h.id)),
            }
        }
        let resumed = run.step(format!("{vm}: resume"), |ops| ops.resume(vm));
        let mut bound = true;
        if resumed.is_ok() {
            for h in plan.kept().filter(|h| &h.vm == vm) {
                let state = run.ops.binding(vm, &h.id).unwrap_or_else(|e| e);
                if state != "Bound" {
                    bound = false;
                    devices.push(format!("{} is {state}", h.id));
                }
            }
        }
        let o = entry(outcomes, vm);
        o.devices.extend(devices);
        match resumed {
            Ok(()) => {
                o.downtime_ms = Some(paused_at.elapsed().as_millis() as u64);
                o.ok = bound;
                if !bound {
                    o.note = "resumed, but a device is not bound (see devices)".into();
                }
            }
            Err(e) => {
                o.ok = false;
                o.note = format!("STILL PAUSED: resume failed: {e}");
            }
        }
    }
    match failure {
        None => Ok(()),
        Some(e) => Err((e, true)),
    }
}

/// How a mode whose VMs keep running takes a device away and gives it back.
struct RunningMode {
    /// Step names: `take` with the device's id and VF index, `give` with id, index, address.
    take: fn(&Held) -> String,
    give: fn(&Held, &str) -> String,
    take_op: fn(&mut dyn Operations, &Held) -> Result<(), String>,
    give_op: fn(&mut dyn Operations, &Held, &str) -> Result<(), String>,
    /// What happens to a device taken away, and what one that could not be stays.
    taken: &'static str,
    stays: &'static str,
    /// Whether a device given back is checked to be bound (and reported still released if not).
    live: bool,
}

const DETACH: RunningMode = RunningMode {
    take: |h| format!("{}: hot-detach {} (VF {})", h.vm, h.id, h.index),
    give: |h, a| format!("{}: hot-attach {} at VF {} ({a})", h.vm, h.id, h.index),
    take_op: |ops, h| ops.detach(&h.vm, &h.id),
    give_op: |ops, h, a| ops.attach(&h.vm, &h.id, a),
    taken: "detached",
    stays: "attached",
    live: false,
};

const LIVE: RunningMode = RunningMode {
    take: |h| format!("{}: live release {} (VF {})", h.vm, h.id, h.index),
    give: |h, a| format!("{}: acquire {} at VF {} ({a}), VM running", h.vm, h.id, h.index),
    take_op: |ops, h| ops.live_release(&h.vm, &h.id),
    give_op: live_acquire,
    taken: "released",
    stays: "bound",
    live: true,
};

/// A live-released device back at `address`: the VM may have taken it back by itself already
/// (it re-acquires a device whose function the host binds to vfio-pci at its path, which is the
/// same VF index), and then its acquire is refused as not released — it is back all the same.
fn live_acquire(ops: &mut dyn Operations, h: &Held, address: &str) -> Result<(), String> {
    match ops.acquire(&h.vm, &h.id, address) {
        Ok(()) => Ok(()),
        Err(_) if address == h.address && ops.binding(&h.vm, &h.id).as_deref() == Ok("Bound") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Detach and live mode: each kept device taken away while its VM runs, the count changed,
/// each given back at its VF index. On failure: `(reason, rolled back)`.
fn while_running(
    plan: &Plan,
    run: &mut Run,
    outcomes: &mut Outcomes,
    mode: &RunningMode,
) -> Result<(), (String, bool)> {
    let mut taken: Vec<(&Held, Instant)> = Vec::new();
    let mut failure = None;
    for h in plan.kept() {
        let t = Instant::now();
        match run.step((mode.take)(h), |ops| (mode.take_op)(ops, h)) {
            Ok(()) => taken.push((h, t)),
            Err(e) => {
                let o = entry(outcomes, &h.vm);
                o.ok = false;
                o.note = format!("{} was not {} ({e}); it stays {}", h.id, mode.taken, mode.stays);
                failure = Some(format!("{}/{}: {e}", h.vm, h.id));
                break;
            }
        }
    }
    // The new VFs by index; after a failure, the VFs as they were (or none: old addresses).
    let mut addresses: Vec<String> = Vec::new();
    if failure.is_none() {
        (addresses, failure) = change_count(plan, run);
    }
    for (h, taken_at) in taken {
        let address = addresses.get(h.index as usize).cloned().unwrap_or_else(|| h.address.clone());
        let result = run.step((mode.give)(h, &address), |ops| (mode.give_op)(ops, h, &address));
        let state = match &result {
            Ok(()) if mode.live => Some(run.ops.binding(&h.vm, &h.id).unwrap_or_else(|e| e)),
            _ => None,
        };
        let o = entry(outcomes, &h.vm);
        match (result, state.as_deref()) {
            (Ok(()), None | Some("Bound")) => {
                o.devices.push(format!("{} -> {address}", h.id));
                let ms = taken_at.elapsed().as_millis() as u64;
                o.downtime_ms = Some(o.downtime_ms.map_or(ms, |d| d.max(ms)));
            }
            (Ok(()), Some(state)) => {
                o.ok = false;
                o.devices.push(format!("{} -> {address} is {state}", h.id));
            }
            (Err(e), _) if mode.live => {
                o.ok = false;
                o.devices.push(format!("{} not re-acquired: {e}", h.id));
                o.note =
                    format!("STILL RELEASED: {} (its guest driver waits; the VM gives it up after its bound)", h.id);
            }
            (Err(e), _) => {
                o.ok = false;
                o.devices.push(format!("{} NOT re-attached: {e}", h.id));
            }
        }
    }
    match failure {
        None => Ok(()),
        Some(e) => Err((e, true)),
    }
}

/// How long to give each guest to eject a device in detach mode.
pub const DEFAULT_EJECT_WAIT: Duration = Duration::from_secs(60);

#[cfg(test)]
#[path = "reconfigure_tests.rs"]
mod tests;
