//! Passed-through devices: VFIO set-up, the host side behind one trait (and its worker
//! thread), hotplug and the VF lifecycle with their state machines (attachment, binding).

pub mod attachment;
pub mod binding;
pub mod device_host;
pub mod host_worker;
pub mod hotplug;
pub mod lifecycle;
pub mod vfio;
