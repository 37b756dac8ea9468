//! Platform devices of a vfvmm guest: the 16550 serial console, the CMOS RTC, and the
//! power/reset controls (ACPI sleep/reset registers and the i8042 reset line).

pub mod cmos;
pub mod console;
pub mod hotplug;
pub mod power;
pub mod ratelimit;
pub mod serial;
pub mod timing;
