//! x86_64 guest platform: memory layout, Linux boot protocol, vCPU boot state, CPUID, MSRs,
//! LAPIC and ACPI tables. Pure functions over guest memory and KVM structures; no ioctls.

pub mod acpi;
pub mod acpi_hotplug;
pub mod boot_params;
pub mod cpuid;
pub mod lapic;
pub mod layout;
pub mod msr;
pub mod regs;
