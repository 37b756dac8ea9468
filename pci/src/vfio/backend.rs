//! The real backend: a device opened through the VFIO container/group API (vfio-ioctls).

use std::mem::ManuallyDrop;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use vfio_ioctls::{VfioDevice, VfioRegionInfoCap};
use vmm_sys_util::eventfd::EventFd;

use super::{HostMapping, RegionInfo, VfioBackend, VfioBackendError, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX};

use vfio_bindings::bindings::vfio::{
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};

pub struct RealVfio {
    /// Dropped by hand (see `Drop`).
    device: ManuallyDrop<Arc<VfioDevice>>,
}

impl RealVfio {
    pub fn new(device: Arc<VfioDevice>) -> Self {
        Self { device: ManuallyDrop::new(device) }
    }

    fn dev(&self) -> &VfioDevice {
        &self.device
    }
}

impl Drop for RealVfio {
    /// vfio-ioctls closes the device fd first and then reads the device's sysfs `iommu_group`
    /// link to put its group, panicking if the link is gone. When the host is removing the
    /// device (a VF destroyed under us), closing the fd lets the kernel go on and remove that
    /// link at once: a race that aborted vfvmm (seen in the testbed, 2 of 9 host-initiated
    /// releases of two VFs). A duplicate of the device fd, closed only after the drop, keeps
    /// the kernel waiting until the group is put.
    fn drop(&mut self) {
        // SAFETY: dup of an fd we own; the duplicate is closed below and nowhere else.
        let hold = unsafe { libc::dup(self.device.as_raw_fd()) };
        // SAFETY: dropped exactly once, here; `self.device` is not used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.device) };
        if hold >= 0 {
            // SAFETY: `hold` is the duplicate made above.
            unsafe { libc::close(hold) };
        }
    }
}

impl VfioBackend for RealVfio {
    fn region(&self, index: u32) -> Option<RegionInfo> {
        let size = self.dev().get_region_size(index);
        if size == 0 {
            return None;
        }
        let flags = self.dev().get_region_flags(index);
        let mut info = RegionInfo {
            size,
            readable: flags & VFIO_REGION_INFO_FLAG_READ != 0,
            writable: flags & VFIO_REGION_INFO_FLAG_WRITE != 0,
            mmappable: flags & VFIO_REGION_INFO_FLAG_MMAP != 0,
            sparse: None,
            msix_mappable: false,
        };
        for cap in self.dev().get_region_caps(index) {
            match cap {
                VfioRegionInfoCap::SparseMmap(s) => {
                    info.sparse = Some(s.areas.iter().map(|a| (a.offset, a.size)).collect());
                }
                VfioRegionInfoCap::MsixMappable => info.msix_mappable = true,
                _ => {}
            }
        }
        Some(info)
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) {
        self.dev().region_read(index, data, offset);
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) {
        self.dev().region_write(index, data, offset);
    }

    fn mmap(&self, index: u32, offset: u64, size: u64) -> Result<HostMapping, VfioBackendError> {
        let fd_offset = self.dev().get_region_offset(index) + offset;
        let len = usize::try_from(size).map_err(|_| VfioBackendError::Vfio(format!("mmap size {size:#x}")))?;
        let off = libc::off_t::try_from(fd_offset)
            .map_err(|_| VfioBackendError::Vfio(format!("mmap offset {fd_offset:#x}")))?;
        // SAFETY: a fresh shared mapping of the device fd at an offset/size the kernel reported
        // as mmappable; the result is checked and owned by the returned HostMapping.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.dev().as_raw_fd(),
                off,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(VfioBackendError::Mmap { index, offset, size, source: std::io::Error::last_os_error() });
        }
        // SAFETY: `addr` is the live mapping of `len` bytes created above.
        Ok(unsafe { HostMapping::from_raw(addr.cast(), len) })
    }

    fn irq_count(&self, index: u32) -> u32 {
        self.dev().get_irq_info(index).map(|i| i.count).unwrap_or(0)
    }

    fn enable_msix(&self, fds: &[&EventFd]) -> Result<(), VfioBackendError> {
        debug_assert!(fds.len() as u32 <= self.irq_count(VFIO_PCI_MSIX_IRQ_INDEX));
        self.dev().enable_msix(fds.to_vec()).map_err(|e| VfioBackendError::Vfio(e.to_string()))
    }

    fn disable_msix(&self) -> Result<(), VfioBackendError> {
        self.dev().disable_msix().map_err(|e| VfioBackendError::Vfio(e.to_string()))
    }

    fn enable_msi(&self, fds: &[&EventFd]) -> Result<(), VfioBackendError> {
        self.dev().enable_msi(fds.to_vec()).map_err(|e| VfioBackendError::Vfio(e.to_string()))
    }

    fn disable_msi(&self) -> Result<(), VfioBackendError> {
        self.dev().disable_msi().map_err(|e| VfioBackendError::Vfio(e.to_string()))
    }

    fn reset(&self) {
        self.dev().reset();
    }

    fn enable_request_irq(&self, fd: &EventFd) -> Result<(), VfioBackendError> {
        if self.irq_count(VFIO_PCI_REQ_IRQ_INDEX) == 0 {
            return Err(VfioBackendError::Vfio("the device has no request interrupt".into()));
        }
        self.dev().enable_irq(VFIO_PCI_REQ_IRQ_INDEX, vec![fd]).map_err(|e| VfioBackendError::Vfio(e.to_string()))
    }
}
