//! The process around the VM: per-thread seccomp filters (and the ioctl requests each
//! thread may make), and a log that never blocks a thread.

pub mod logging;
pub mod seccomp;
mod seccomp_ioctls;
