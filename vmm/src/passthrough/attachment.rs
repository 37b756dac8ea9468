//! The per-device attachment state machine, as one transition table.
//!
//! ```text
//! Attaching --GuestEnabled--> Attached
//! Attaching | Attached --RemoveRequested | HostRequested--> Detaching
//! Detaching --RemoveRequested--> Detaching (notify the guest again)
//! Detaching --EjectTimedOut--> Detaching (marked timed out; a new remove retries)
//! Detaching --GuestEjected--> Detached (torn down, the VF is free on the host)
//! ```
//! Anything else is refused and changes nothing.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachState {
    /// Announced to the guest; the guest has not enabled it yet.
    Attaching,
    /// The guest enabled memory decoding or MSI-X.
    Attached,
    /// Ejection requested; waiting for the guest's _EJ0.
    Detaching { timed_out: bool },
    /// Torn down.
    Detached,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachEvent {
    GuestEnabled,
    RemoveRequested,
    /// The host wants the device back (VFIO device-request interrupt).
    HostRequested,
    EjectTimedOut,
    GuestEjected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("device is {from}, cannot take {event:?}")]
pub struct InvalidTransition {
    pub from: AttachState,
    pub event: AttachEvent,
}

impl std::fmt::Display for AttachState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachState::Attaching => "Attaching",
            AttachState::Attached => "Attached",
            AttachState::Detaching { timed_out: false } => "Detaching",
            AttachState::Detaching { timed_out: true } => "Detaching (eject timed out)",
            AttachState::Detached => "Detached",
        })
    }
}

/// What the VMM must do after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachAction {
    None,
    /// Ask the guest to eject (slot-down notification).
    NotifyEject,
    /// Tear the device down on the VMM thread.
    TearDown,
}

/// The transition table.
pub fn transition(from: AttachState, event: AttachEvent) -> Result<(AttachState, AttachAction), InvalidTransition> {
    use AttachAction as A;
    use AttachEvent as E;
    use AttachState as S;
    let next = match (from, event) {
        (S::Attaching, E::GuestEnabled) => (S::Attached, A::None),
        (S::Attached, E::GuestEnabled) => (S::Attached, A::None),
        (S::Attaching | S::Attached, E::RemoveRequested | E::HostRequested) => {
            (S::Detaching { timed_out: false }, A::NotifyEject)
        }
        (S::Detaching { .. }, E::RemoveRequested | E::HostRequested) => {
            (S::Detaching { timed_out: false }, A::NotifyEject)
        }
        (S::Detaching { .. }, E::EjectTimedOut) => (S::Detaching { timed_out: true }, A::None),
        (S::Detaching { .. }, E::GuestEjected) => (S::Detached, A::TearDown),
        _ => return Err(InvalidTransition { from, event }),
    };
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use AttachAction as A;
    use AttachEvent as E;
    use AttachState as S;

    const STATES: [AttachState; 5] =
        [S::Attaching, S::Attached, S::Detaching { timed_out: false }, S::Detaching { timed_out: true }, S::Detached];
    const EVENTS: [AttachEvent; 5] =
        [E::GuestEnabled, E::RemoveRequested, E::HostRequested, E::EjectTimedOut, E::GuestEjected];

    /// The full table: every (state, event) pair, valid or not.
    #[test]
    fn full_transition_table() {
        let detaching = S::Detaching { timed_out: false };
        let timed_out = S::Detaching { timed_out: true };
        let expected = |from: AttachState, event: AttachEvent| -> Option<(AttachState, AttachAction)> {
            match (from, event) {
                (S::Attaching, E::GuestEnabled) | (S::Attached, E::GuestEnabled) => Some((S::Attached, A::None)),
                (S::Attaching | S::Attached, E::RemoveRequested | E::HostRequested) => {
                    Some((detaching, A::NotifyEject))
                }
                (S::Detaching { .. }, E::RemoveRequested | E::HostRequested) => Some((detaching, A::NotifyEject)),
                (S::Detaching { .. }, E::EjectTimedOut) => Some((timed_out, A::None)),
                (S::Detaching { .. }, E::GuestEjected) => Some((S::Detached, A::TearDown)),
                _ => None,
            }
        };
        let mut valid = 0;
        for from in STATES {
            for event in EVENTS {
                match (transition(from, event), expected(from, event)) {
                    (Ok(got), Some(want)) => {
                        assert_eq!(got, want, "{from:?} + {event:?}");
                        valid += 1;
                    }
                    (Err(e), None) => assert_eq!(e, InvalidTransition { from, event }),
                    (got, want) => panic!("{from:?} + {event:?}: got {got:?}, want {want:?}"),
                }
            }
        }
        assert_eq!(valid, 14);
    }

    #[test]
    fn invalid_transitions_name_the_state() {
        assert_eq!(
            transition(S::Detached, E::RemoveRequested).unwrap_err().to_string(),
            "device is Detached, cannot take RemoveRequested"
        );
        assert!(transition(S::Attaching, E::GuestEjected).is_err(), "no eject before a request");
        assert!(transition(S::Attached, E::EjectTimedOut).is_err());
        assert_eq!(S::Detaching { timed_out: true }.to_string(), "Detaching (eject timed out)");
    }

    #[test]
    fn a_whole_life() {
        let mut s = S::Attaching;
        for (event, action) in [
            (E::GuestEnabled, A::None),
            (E::RemoveRequested, A::NotifyEject),
            (E::EjectTimedOut, A::None),
            (E::RemoveRequested, A::NotifyEject),
            (E::GuestEjected, A::TearDown),
        ] {
            let (next, act) = transition(s, event).unwrap();
            assert_eq!(act, action, "{s:?} + {event:?}");
            s = next;
        }
        assert_eq!(s, S::Detached);
    }
}
