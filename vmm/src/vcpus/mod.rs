//! The vCPUs: their threads and exits, the set of them that pause and resume together, the
//! VM run state machine, the exit counters and the coalesced port writes they replay.

pub mod coalesced_io;
pub mod exit_counters;
pub mod vcpu;
pub mod vcpu_set;
pub mod vm_state;
