//! The host side of a passed-through function as something the VMM can let go of and take
//! back while the guest keeps the function.
//!
//! Every part of a [`super::VfioPciDevice`] that talks to the kernel (config space, trapped BAR
//! accesses, MSI/MSI-X enabling) goes through one [`HostBinding`]. Releasing it drops the VFIO
//! device (and with it the device and group fds); until it is bound again, reads return all
//! ones (what a missing function returns), writes are dropped and interrupt set-up fails.

use std::sync::{Arc, RwLock};

use vmm_sys_util::eventfd::EventFd;

use super::{HostMapping, RegionInfo, VfioBackend, VfioBackendError};

/// The VFIO device currently behind a guest function, if any.
pub struct HostBinding {
    backend: RwLock<Option<Arc<dyn VfioBackend>>>,
}

impl HostBinding {
    pub fn new(backend: Arc<dyn VfioBackend>) -> Self {
        Self { backend: RwLock::new(Some(backend)) }
    }

    /// The bound backend; `None` while released.
    pub fn current(&self) -> Option<Arc<dyn VfioBackend>> {
        self.backend.read().ok().and_then(|b| b.clone())
    }

    pub fn is_bound(&self) -> bool {
        self.current().is_some()
    }

    /// Binds `backend` (or releases with `None`); returns what was bound. The caller drops the
    /// returned backend to close it, after everything mapped from it is gone.
    pub fn replace(&self, backend: Option<Arc<dyn VfioBackend>>) -> Option<Arc<dyn VfioBackend>> {
        match self.backend.write() {
            Ok(mut b) => std::mem::replace(&mut *b, backend),
            Err(_) => None,
        }
    }

    fn released() -> VfioBackendError {
        VfioBackendError::Vfio("the device is released to the host".into())
    }
}

impl VfioBackend for HostBinding {
    fn region(&self, index: u32) -> Option<RegionInfo> {
        self.current()?.region(index)
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) {
        match self.current() {
            Some(b) => b.region_read(index, offset, data),
            None => data.fill(0xff),
        }
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) {
        if let Some(b) = self.current() {
            b.region_write(index, offset, data);
        }
    }

    fn mmap(&self, index: u32, offset: u64, size: u64) -> Result<HostMapping, VfioBackendError> {
        self.current().ok_or_else(Self::released)?.mmap(index, offset, size)
    }

    fn irq_count(&self, index: u32) -> u32 {
        self.current().map_or(0, |b| b.irq_count(index))
    }

    fn enable_msix(&self, fds: &[&EventFd]) -> Result<(), VfioBackendError> {
        self.current().ok_or_else(Self::released)?.enable_msix(fds)
    }

    fn disable_msix(&self) -> Result<(), VfioBackendError> {
        self.current().map_or(Ok(()), |b| b.disable_msix())
    }

    fn enable_msi(&self, fds: &[&EventFd]) -> Result<(), VfioBackendError> {
        self.current().ok_or_else(Self::released)?.enable_msi(fds)
    }

    fn disable_msi(&self) -> Result<(), VfioBackendError> {
        self.current().map_or(Ok(()), |b| b.disable_msi())
    }

    fn reset(&self) {
        if let Some(b) = self.current() {
            b.reset();
        }
    }

    fn enable_request_irq(&self, fd: &EventFd) -> Result<(), VfioBackendError> {
        self.current().ok_or_else(Self::released)?.enable_request_irq(fd)
    }

    fn enable_error_irq(&self, fd: &EventFd) -> Result<(), VfioBackendError> {
        self.current().ok_or_else(Self::released)?.enable_error_irq(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::fake::FakeVfio;
    use crate::vfio::VFIO_PCI_CONFIG_REGION_INDEX;

    #[test]
    fn released_reads_all_ones_and_refuses_interrupts() {
        let fake = Arc::new(FakeVfio::igb_vf());
        let binding = HostBinding::new(fake.clone());
        assert_eq!(binding.config_read_u32(0), 0x10ca_8086);
        let old = binding.replace(None);
        assert!(old.is_some() && !binding.is_bound());
        assert_eq!(binding.config_read_u32(0), 0xffff_ffff);
        binding.region_write(VFIO_PCI_CONFIG_REGION_INDEX, 4, &[0xff, 0xff]);
        assert_eq!(fake.config.lock().unwrap()[4], 0, "a write while released reaches nothing");
        let fd = EventFd::new(0).unwrap();
        assert!(binding.enable_msix(&[&fd]).is_err());
        assert!(binding.disable_msix().is_ok());
        assert!(binding.mmap(0, 0, 4096).is_err());
        assert_eq!(binding.irq_count(2), 0);
        binding.replace(old);
        assert_eq!(binding.config_read_u32(0), 0x10ca_8086);
    }
}
