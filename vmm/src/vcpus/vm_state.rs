//! The VM's run state machine, as one transition table.
//!
//! ```text
//! Created --Start--> Running --Pause--> Paused --Resume--> Running
//! Created | Running | Paused --Stop--> Shutdown
//! ```
//! Anything else is refused and changes nothing (the API answers 405, as Cloud Hypervisor).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Set up; vCPUs not started.
    Created,
    Running,
    /// vCPUs parked, devices quiesced.
    Paused,
    /// vCPUs stopped for good.
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEvent {
    Start,
    Pause,
    Resume,
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the VM is {from}, it cannot {event}")]
pub struct InvalidVmTransition {
    pub from: VmState,
    pub event: VmEvent,
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VmState::Created => "Created",
            VmState::Running => "Running",
            VmState::Paused => "Paused",
            VmState::Shutdown => "Shutdown",
        })
    }
}

impl std::fmt::Display for VmEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VmEvent::Start => "start",
            VmEvent::Pause => "pause",
            VmEvent::Resume => "resume",
            VmEvent::Stop => "stop",
        })
    }
}

/// The transition table.
pub fn transition(from: VmState, event: VmEvent) -> Result<VmState, InvalidVmTransition> {
    use VmEvent as E;
    use VmState as S;
    match (from, event) {
        (S::Created, E::Start) => Ok(S::Running),
        (S::Running, E::Pause) => Ok(S::Paused),
        (S::Paused, E::Resume) => Ok(S::Running),
        (S::Created | S::Running | S::Paused, E::Stop) => Ok(S::Shutdown),
        _ => Err(InvalidVmTransition { from, event }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use VmEvent as E;
    use VmState as S;

    /// Every (state, event) pair, valid or not.
    #[test]
    fn full_transition_table() {
        let states = [S::Created, S::Running, S::Paused, S::Shutdown];
        let events = [E::Start, E::Pause, E::Resume, E::Stop];
        let expected = |from, event| match (from, event) {
            (S::Created, E::Start) => Some(S::Running),
            (S::Running, E::Pause) => Some(S::Paused),
            (S::Paused, E::Resume) => Some(S::Running),
            (S::Created | S::Running | S::Paused, E::Stop) => Some(S::Shutdown),
            _ => None,
        };
        let mut valid = 0;
        for from in states {
            for event in events {
                match (transition(from, event), expected(from, event)) {
                    (Ok(got), Some(want)) => {
                        assert_eq!(got, want, "{from:?} + {event:?}");
                        valid += 1;
                    }
                    (Err(e), None) => assert_eq!(e, InvalidVmTransition { from, event }),
                    (got, want) => panic!("{from:?} + {event:?}: got {got:?}, want {want:?}"),
                }
            }
        }
        assert_eq!(valid, 6);
    }

    #[test]
    fn refusals_read_well() {
        assert_eq!(transition(S::Paused, E::Pause).unwrap_err().to_string(), "the VM is Paused, it cannot pause");
        assert_eq!(transition(S::Running, E::Resume).unwrap_err().to_string(), "the VM is Running, it cannot resume");
    }
}
