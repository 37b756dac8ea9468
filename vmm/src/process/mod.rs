//! The process around the VM: per-thread seccomp filters (and the ioctl requests each
//! thread may make), a log that never blocks a thread, and the lifecycle event stream.

pub mod events;
pub mod logging;
pub mod seccomp;
mod seccomp_ioctls;
