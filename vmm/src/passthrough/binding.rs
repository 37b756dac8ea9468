//! The per-device host binding state machine, as one transition table (beside the attachment
//! state machine in `attachment.rs`, which tracks the guest's side).
//!
//! ```text
//! Bound    --Quiesce-->   Quiesced   (VM paused: no DMA, no interrupts, BARs unmapped)
//! Quiesced --Unquiesce--> Bound      (VM resumed)
//! Quiesced --Release-->   Released   (vm.release-device, or the host asked while paused)
//! Released --Acquired-->  Quiesced   (re-acquired; resume unquiesces it)
//! Released --AcquireFailed--> Released (with the reason)
//! Released --Quiesce | Unquiesce--> Released (the VM pauses/resumes without the device; its
//!                                              BAR traps and irqfds follow)
//!
//! Bound        --LiveRelease-->   LiveReleased (vm.release-device live: the VM runs, the
//!                                               guest's driver was told and waits)
//! LiveReleased --Acquired-->      Bound        (re-acquired while running: the device runs)
//! LiveReleased --AcquireFailed--> LiveReleased (with the reason; the guest still waits)
//! LiveReleased --GiveUp-->        Released     (not back within the bound: the guest's reset
//!                                               wait runs out, its driver gives the device up)
//! LiveReleased --Quiesce-->       Released     (the VM is paused: an ordinary release, which
//!                                               resume or acquire-device ends)
//! ```
//! Anything else is refused and changes nothing.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingState {
    /// vfvmm holds the VFIO device and the device runs.
    Bound,
    /// Held but silent.
    Quiesced,
    /// vfvmm holds nothing of it; `reason` says why it is not back yet, if it failed to come back.
    Released { reason: Option<String> },
    /// Released while the VM runs: the guest's driver knows its function failed and waits, in
    /// its reset, for it to come back.
    LiveReleased { reason: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingEvent {
    Quiesce,
    Unquiesce,
    Release,
    Acquired,
    AcquireFailed(String),
    LiveRelease,
    /// A live-released device did not come back within the bound (the reason).
    GiveUp(String),
}

/// What the VMM must do after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingAction {
    None,
    Quiesce,
    Unquiesce,
    Release,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device is {from}, cannot take {event}")]
pub struct InvalidBindingTransition {
    pub from: BindingState,
    pub event: &'static str,
}

impl std::fmt::Display for BindingState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindingState::Bound => f.write_str("Bound"),
            BindingState::Quiesced => f.write_str("Quiesced"),
            BindingState::Released { reason: None } => f.write_str("Released"),
            BindingState::Released { reason: Some(r) } => write!(f, "Released ({r})"),
            BindingState::LiveReleased { reason: None } => f.write_str("Released live"),
            BindingState::LiveReleased { reason: Some(r) } => write!(f, "Released live ({r})"),
        }
    }
}

impl BindingEvent {
    fn name(&self) -> &'static str {
        match self {
            BindingEvent::Quiesce => "Quiesce",
            BindingEvent::Unquiesce => "Unquiesce",
            BindingEvent::Release => "Release",
            BindingEvent::Acquired => "Acquired",
            BindingEvent::AcquireFailed(_) => "AcquireFailed",
            BindingEvent::LiveRelease => "LiveRelease",
            BindingEvent::GiveUp(_) => "GiveUp",
        }
    }
}

/// The transition table.
pub fn transition(
    from: &BindingState,
    event: BindingEvent,
) -> Result<(BindingState, BindingAction), InvalidBindingTransition> {
    use BindingAction as A;
    use BindingEvent as E;
    use BindingState as S;
    let released = |reason| S::Released { reason };
    Ok(match (from, &event) {
        (S::Bound, E::Quiesce) => (S::Quiesced, A::Quiesce),
        (S::Quiesced, E::Unquiesce) => (S::Bound, A::Unquiesce),
        (S::Quiesced, E::Release) => (released(None), A::Release),
        (S::Released { .. }, E::Acquired) => (S::Quiesced, A::None),
        (S::Released { .. }, E::AcquireFailed(reason)) => (released(Some(reason.clone())), A::None),
        // A VM that ran without the device pauses again: its BAR traps and irqfds go quiet.
        (S::Released { reason }, E::Quiesce) => (released(reason.clone()), A::Quiesce),
        // The VM runs on without the device; its BAR traps come back (reading all ones).
        (S::Released { reason }, E::Unquiesce) => (released(reason.clone()), A::Unquiesce),
        (S::Bound, E::LiveRelease) => (S::LiveReleased { reason: None }, A::Release),
        (S::LiveReleased { .. }, E::Acquired) => (S::Bound, A::Unquiesce),
        (S::LiveReleased { .. }, E::AcquireFailed(reason)) => {
            (S::LiveReleased { reason: Some(reason.clone()) }, A::None)
        }
        (S::LiveReleased { .. }, E::GiveUp(reason)) => (released(Some(reason.clone())), A::None),
        (S::LiveReleased { reason }, E::Quiesce) => (released(reason.clone()), A::Quiesce),
        _ => return Err(InvalidBindingTransition { from: from.clone(), event: event.name() }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use BindingAction as A;
    use BindingEvent as E;
    use BindingState as S;

    fn states() -> Vec<BindingState> {
        vec![
            S::Bound,
            S::Quiesced,
            S::Released { reason: None },
            S::Released { reason: Some("gone".into()) },
            S::LiveReleased { reason: None },
            S::LiveReleased { reason: Some("busy".into()) },
        ]
    }

    fn events() -> Vec<BindingEvent> {
        vec![
            E::Quiesce,
            E::Unquiesce,
            E::Release,
            E::Acquired,
            E::AcquireFailed("timeout".into()),
            E::LiveRelease,
            E::GiveUp("not back".into()),
        ]
    }

    /// Every (state, event) pair, valid or not.
    #[test]
    fn full_transition_table() {
        let expected = |from: &BindingState, event: &BindingEvent| -> Option<(BindingState, BindingAction)> {
            match (from, event) {
                (S::Bound, E::Quiesce) => Some((S::Quiesced, A::Quiesce)),
                (S::Quiesced, E::Unquiesce) => Some((S::Bound, A::Unquiesce)),
                (S::Quiesced, E::Release) => Some((S::Released { reason: None }, A::Release)),
                (S::Released { .. }, E::Acquired) => Some((S::Quiesced, A::None)),
                (S::Released { .. }, E::AcquireFailed(r)) => Some((S::Released { reason: Some(r.clone()) }, A::None)),
                (S::Released { .. }, E::Quiesce) => Some((from.clone(), A::Quiesce)),
                (S::Released { .. }, E::Unquiesce) => Some((from.clone(), A::Unquiesce)),
                (S::Bound, E::LiveRelease) => Some((S::LiveReleased { reason: None }, A::Release)),
                (S::LiveReleased { .. }, E::Acquired) => Some((S::Bound, A::Unquiesce)),
                (S::LiveReleased { .. }, E::AcquireFailed(r)) => {
                    Some((S::LiveReleased { reason: Some(r.clone()) }, A::None))
                }
                (S::LiveReleased { .. }, E::GiveUp(r)) => Some((S::Released { reason: Some(r.clone()) }, A::None)),
                (S::LiveReleased { reason }, E::Quiesce) => Some((S::Released { reason: reason.clone() }, A::Quiesce)),
                _ => None,
            }
        };
        let mut valid = 0;
        for from in states() {
            for event in events() {
                match (transition(&from, event.clone()), expected(&from, &event)) {
                    (Ok(got), Some(want)) => {
                        assert_eq!(got, want, "{from:?} + {event:?}");
                        valid += 1;
                    }
                    (Err(e), None) => {
                        assert_eq!(e, InvalidBindingTransition { from: from.clone(), event: event.name() })
                    }
                    (got, want) => panic!("{from:?} + {event:?}: got {got:?}, want {want:?}"),
                }
            }
        }
        assert_eq!(valid, 3 + 2 * 4 + 1 + 2 * 4);
    }

    #[test]
    fn refusals_name_the_state() {
        assert_eq!(transition(&S::Bound, E::Release).unwrap_err().to_string(), "device is Bound, cannot take Release");
        assert_eq!(S::Released { reason: Some("no such device".into()) }.to_string(), "Released (no such device)");
    }

    #[test]
    fn a_live_release_that_comes_back_and_one_that_does_not() {
        let (s, a) = transition(&S::Bound, E::LiveRelease).unwrap();
        assert_eq!((s.to_string(), a), ("Released live".to_string(), A::Release));
        let (s, _) = transition(&s, E::AcquireFailed("VF missing".into())).unwrap();
        assert_eq!(s.to_string(), "Released live (VF missing)");
        assert_eq!(transition(&s, E::Acquired).unwrap(), (S::Bound, A::Unquiesce));
        let (s, _) = transition(&S::LiveReleased { reason: None }, E::GiveUp("not back within 10 s".into())).unwrap();
        assert_eq!(s.to_string(), "Released (not back within 10 s)");
        assert_eq!(transition(&s, E::LiveRelease).unwrap_err().event, "LiveRelease");
    }

    #[test]
    fn a_pause_with_release_and_reacquire() {
        let mut s = S::Bound;
        for (event, action) in [
            (E::Quiesce, A::Quiesce),
            (E::Release, A::Release),
            (E::AcquireFailed("VF missing".into()), A::None),
            (E::Acquired, A::None),
            (E::Unquiesce, A::Unquiesce),
        ] {
            let (next, act) = transition(&s, event.clone()).unwrap();
            assert_eq!(act, action, "{s:?} + {event:?}");
            s = next;
        }
        assert_eq!(s, S::Bound);
    }
}
