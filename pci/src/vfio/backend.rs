//! The real backend: a device opened through the VFIO container/group API (vfio-ioctls).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vfio_ioctls::{VfioDevice, VfioRegionInfoCap};
use vmm_sys_util::eventfd::EventFd;

use super::{
    HostMapping, RegionInfo, VfioBackend, VfioBackendError, VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_REQ_IRQ_INDEX,
};

use vfio_bindings::bindings::vfio::{
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};

/// A private stand-in for a device's sysfs directory: `DIR/BDF/iommu_group` → the device's
/// IOMMU group. vfio-ioctls reads that link when it opens the device and again, `unwrap()`ing,
/// when it drops it — after closing the device fd, which lets a host that is destroying the VF
/// finish and delete the real link first (that aborted vfvmm: 2 of 9 host-initiated releases of
/// two VFs in the testbed). The stand-in outlives the real directory.
pub struct DeviceAlias {
    root: PathBuf,
    path: PathBuf,
}

impl DeviceAlias {
    /// Creates the stand-in for function `bdf` in IOMMU group `group` under `base` (a private
    /// directory of this process).
    pub fn create(base: &Path, bdf: &str, group: u32) -> std::io::Result<Self> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = base.join(format!("{n}"));
        std::fs::create_dir(&root)?;
        let alias = Self { path: root.join(bdf), root };
        std::fs::create_dir(&alias.path)?;
        std::os::unix::fs::symlink(format!("/sys/kernel/iommu_groups/{group}"), alias.path.join("iommu_group"))?;
        Ok(alias)
    }

    /// The path to open the device with.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DeviceAlias {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.path.join("iommu_group"));
        let _ = std::fs::remove_dir(&self.path);
        let _ = std::fs::remove_dir(&self.root);
    }
}

pub struct RealVfio {
    device: Arc<VfioDevice>,
    /// Dropped after `device` (field order), which reads it when dropped.
    _alias: Option<DeviceAlias>,
}

impl RealVfio {
    pub fn new(device: Arc<VfioDevice>, alias: Option<DeviceAlias>) -> Self {
        Self { device, _alias: alias }
    }

    fn dev(&self) -> &VfioDevice {
        &self.device
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

    fn enable_error_irq(&self, fd: &EventFd) -> Result<(), VfioBackendError> {
        if self.irq_count(VFIO_PCI_ERR_IRQ_INDEX) == 0 {
            return Err(VfioBackendError::Vfio("the device has no error interrupt".into()));
        }
        self.dev().enable_irq(VFIO_PCI_ERR_IRQ_INDEX, vec![fd]).map_err(|e| VfioBackendError::Vfio(e.to_string()))
    }
}
