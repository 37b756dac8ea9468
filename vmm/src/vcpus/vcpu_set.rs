//! The running vCPU threads as one unit the VMM thread can pause, resume and stop.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::vcpus::exit_counters::ExitCounters;
use crate::vcpus::vcpu::{VcpuHandle, VcpuShared};
use crate::vcpus::vm_state::{transition, InvalidVmTransition, VmEvent, VmState};

/// How long pause waits for every vCPU to park.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VcpuSetError {
    #[error(transparent)]
    WrongState(#[from] InvalidVmTransition),
    #[error("the VM state is unavailable (lock poisoned)")]
    Poisoned,
    #[error("{parked} of {total} vCPUs stopped within the pause timeout")]
    PauseTimeout { parked: usize, total: usize },
}

pub struct VcpuSet {
    shared: Arc<VcpuShared>,
    handles: Mutex<Vec<VcpuHandle>>,
    /// The VM's state ([`crate::vcpus::vm_state`]'s table), kept with the vCPUs it describes.
    state: Mutex<VmState>,
}

impl VcpuSet {
    pub fn new(shared: Arc<VcpuShared>, handles: Vec<VcpuHandle>) -> Self {
        // The threads are running already: Created --Start--> Running.
        let running = transition(VmState::Created, VmEvent::Start).unwrap_or(VmState::Running);
        Self { shared, handles: Mutex::new(handles), state: Mutex::new(running) }
    }

    pub fn state(&self) -> VmState {
        self.state.lock().map(|s| *s).unwrap_or(VmState::Shutdown)
    }

    /// Whether `event` is allowed now (nothing changes).
    pub fn check(&self, event: VmEvent) -> Result<(), VcpuSetError> {
        transition(self.state(), event).map(|_| ()).map_err(VcpuSetError::from)
    }

    /// Kicks every running vCPU out of KVM_RUN once; returns how many were kicked.
    fn kick_all(&self) -> usize {
        let Ok(handles) = self.handles.lock() else {
            return 0;
        };
        handles.iter().filter(|h| h.is_running()).map(VcpuHandle::kick).count()
    }

    /// Stops every vCPU between two KVM_RUNs; returns once all are parked. One kick each is
    /// enough: the kick sets `immediate_exit`, so it cannot be lost before KVM_RUN.
    pub fn pause(&self) -> Result<(), VcpuSetError> {
        let mut state = self.state.lock().map_err(|_| VcpuSetError::Poisoned)?;
        let next = transition(*state, VmEvent::Pause)?;
        self.shared.pause.set_requested(true);
        let total = self.kick_all();
        let parked = self.shared.pause.wait_parked(total, Instant::now() + PAUSE_TIMEOUT);
        if parked < total {
            self.shared.pause.set_requested(false);
            return Err(VcpuSetError::PauseTimeout { parked, total });
        }
        *state = next;
        Ok(())
    }

    pub fn resume(&self) -> Result<(), VcpuSetError> {
        let mut state = self.state.lock().map_err(|_| VcpuSetError::Poisoned)?;
        let next = transition(*state, VmEvent::Resume)?;
        self.shared.pause.set_requested(false);
        *state = next;
        Ok(())
    }

    /// Stops and joins every vCPU thread; returns their exit counters.
    pub fn stop(&self) -> Vec<(u8, ExitCounters)> {
        if let Ok(mut state) = self.state.lock() {
            *state = transition(*state, VmEvent::Stop).unwrap_or(VmState::Shutdown);
        }
        self.shared.stop.store(true, Ordering::Release);
        self.shared.pause.set_requested(false);
        let handles = self.handles.lock().map(|mut h| std::mem::take(&mut *h)).unwrap_or_default();
        handles
            .into_iter()
            .filter_map(|h| {
                let id = h.id;
                h.stop().map(|c| (id, c))
            })
            .collect()
    }
}
