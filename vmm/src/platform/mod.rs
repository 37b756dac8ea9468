//! The machine vfvmm builds, below the vCPUs and the devices: the configuration, guest
//! memory, kernel loading, the KVM platform passthrough devices use (MSI routes, irqfds, BAR
//! slots, the DMA gate), the platform devices (serial, ACPI/GED, reset) and timings.

pub mod boot;
pub mod config;
pub mod device_manager;
pub mod kvm_platform;
pub mod memory;
pub mod timeline;
