//! Platform devices of a vfvmm guest: the 16550 serial console, the CMOS RTC, and the
//! power/reset controls (ACPI sleep/reset registers and the i8042 reset line).

pub mod cmos;
pub mod console;
pub mod hotplug;
pub mod power;
pub mod ratelimit;
pub mod serial;
pub mod timing;

/// An output that keeps what is written to it, shared with the test that reads it back.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct SharedOutput(pub(crate) std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl std::io::Write for SharedOutput {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
