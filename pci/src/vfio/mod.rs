//! VFIO PCI passthrough: a passed-through function as a [`crate::PciDevice`].
//!
//! Everything that touches the kernel goes through [`VfioBackend`] (real: `vfio-ioctls`,
//! tests: [`fake::FakeVfio`]); everything that touches the VM (memory slots, MSI routes,
//! irqfds, the BAR MMIO router) goes through [`VmPlatform`]. What is left — config-space
//! virtualization, BAR placement and mapping, MSI-X — is plain logic, unit-tested here.

pub mod backend;
pub mod binding;
pub mod caps;
pub mod device;
/// The fakes: for tests and fuzz targets only (feature `fake`), never in vfvmm itself.
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod lifecycle;
pub mod msix_routing;
pub mod recovery;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use vmm_sys_util::eventfd::EventFd;

use crate::msix::MsiMessage;

pub use backend::RealVfio;
pub use device::{VfioPciDevice, VfioPciError};
pub use lifecycle::LifecycleError;

/// VFIO PCI region and IRQ indices (linux/vfio.h).
pub use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_REQ_IRQ_INDEX, VFIO_PCI_ROM_REGION_INDEX,
};

#[derive(Debug, thiserror::Error)]
pub enum VfioBackendError {
    #[error("VFIO: {0}")]
    Vfio(String),
    #[error("cannot mmap region {index} at {offset:#x}+{size:#x}: {source}")]
    Mmap { index: u32, offset: u64, size: u64, source: std::io::Error },
}

/// What the kernel says about one region.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionInfo {
    pub size: u64,
    pub readable: bool,
    pub writable: bool,
    pub mmappable: bool,
    /// Sparse-mmap areas `(offset, size)`; `None` means the whole region when `mmappable`.
    pub sparse: Option<Vec<(u64, u64)>>,
    /// The MSI-X table and PBA pages may be mmapped too (we still trap them to emulate).
    pub msix_mappable: bool,
}

impl RegionInfo {
    /// The parts of the region that may be mmapped, as `(offset, size)`.
    pub fn mmappable_areas(&self) -> Vec<(u64, u64)> {
        if !self.mmappable {
            return vec![];
        }
        match &self.sparse {
            Some(areas) => areas.clone(),
            None => vec![(0, self.size)],
        }
    }
}

/// A host mapping of part of a device region; unmapped on drop.
pub struct HostMapping {
    addr: *mut u8,
    size: usize,
}

// SAFETY: the mapping is plain shared memory (device MMIO); the pointer is only handed to KVM
// as a memory slot backing and never dereferenced by Rust code.
unsafe impl Send for HostMapping {}
// SAFETY: as above; no interior state is accessed through `&HostMapping`.
unsafe impl Sync for HostMapping {}

impl HostMapping {
    /// # Safety
    /// `addr` must be the start of a live `mmap` of `size` bytes owned by the new value.
    pub unsafe fn from_raw(addr: *mut u8, size: usize) -> Self {
        Self { addr, size }
    }

    pub fn addr(&self) -> *mut u8 {
        self.addr
    }

    pub fn size(&self) -> usize {
        self.size
    }
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        // SAFETY: we own this mapping (see `from_raw`) and nothing uses it after drop: the VM
        // removed its memory slot before the owner dropped it.
        unsafe { libc::munmap(self.addr.cast(), self.size) };
    }
}

/// The kernel side of one VFIO device.
pub trait VfioBackend: Send + Sync {
    fn region(&self, index: u32) -> Option<RegionInfo>;
    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]);
    fn region_write(&self, index: u32, offset: u64, data: &[u8]);
    fn mmap(&self, index: u32, offset: u64, size: u64) -> Result<HostMapping, VfioBackendError>;
    /// Number of interrupts of IRQ index `index` (0 when absent).
    fn irq_count(&self, index: u32) -> u32;
    fn enable_msix(&self, fds: &[&EventFd]) -> Result<(), VfioBackendError>;
    fn disable_msix(&self) -> Result<(), VfioBackendError>;
    fn enable_msi(&self, fds: &[&EventFd]) -> Result<(), VfioBackendError>;
    fn disable_msi(&self) -> Result<(), VfioBackendError>;
    fn reset(&self);
    /// Signals `fd` when the host asks for the device back (e.g. its VF is being destroyed).
    fn enable_request_irq(&self, _fd: &EventFd) -> Result<(), VfioBackendError> {
        Ok(())
    }
    /// Signals `fd` when the host detects an error on the device (VFIO's error interrupt,
    /// raised by the host's AER handling of the device).
    fn enable_error_irq(&self, _fd: &EventFd) -> Result<(), VfioBackendError> {
        Err(VfioBackendError::Vfio("no error interrupt".into()))
    }

    fn config_read_u32(&self, reg: usize) -> u32 {
        let mut b = [0u8; 4];
        self.region_read(VFIO_PCI_CONFIG_REGION_INDEX, (reg * 4) as u64, &mut b);
        u32::from_le_bytes(b)
    }
}

/// Serves guest MMIO to the trapped parts of a BAR.
pub trait BarHandler: Send + Sync {
    fn read(&self, offset: u64, data: &mut [u8]);
    fn write(&self, offset: u64, data: &[u8]);
}

/// The VM side a passed-through device needs.
pub trait VmPlatform: Send + Sync {
    /// Maps host memory into the guest at `guest_addr`; returns a handle for `unmap_memory`.
    ///
    /// # Safety
    /// `host_addr..host_addr + size` must stay mapped until `unmap_memory` is called.
    unsafe fn map_memory(&self, guest_addr: u64, size: u64, host_addr: *mut u8) -> Result<u32, String>;
    fn unmap_memory(&self, handle: u32);
    fn allocate_gsi(&self) -> Result<u32, String>;
    /// Gives GSIs back (their routes go too): the device that had them is gone.
    fn release_gsis(&self, gsis: &[u32]);
    fn set_msi_route(&self, gsi: u32, message: MsiMessage) -> Result<(), String>;
    fn attach_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), String>;
    fn detach_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), String>;
    /// Guest MMIO in `base..base + size` that is not mapped goes to `handler`.
    fn register_bar(&self, base: u64, size: u64, handler: Arc<dyn BarHandler>) -> Result<(), String>;
    fn unregister_bar(&self, base: u64);
    /// Whether guest RAM is DMA-mapped for devices. A device may master the bus only once it
    /// is; mapping runs while the guest boots, and nothing waits for it (see
    /// [`VfioPciDevice::apply_deferred_bus_master`]).
    fn dma_state(&self) -> DmaState {
        DmaState::Ready
    }
    /// A device has work for the VMM thread (an error to report, a reset the guest asked for;
    /// see `recovery.rs`): wake it. Never blocks.
    fn wake_vmm(&self) {}
}

/// Guest RAM in the IOMMU, as far as devices are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmaState {
    Ready,
    /// Being mapped; the VMM applies deferred bus mastering when it is done.
    Pending,
    Failed(String),
}

/// BAR base → (size, handler).
type BarTable = BTreeMap<u64, (u64, Arc<dyn BarHandler>)>;

/// Which handler serves guest MMIO at an address: the trapped BARs of passed-through devices.
#[derive(Default)]
pub struct BarMap {
    bars: RwLock<BarTable>,
}

impl BarMap {
    pub fn insert(&self, base: u64, size: u64, handler: Arc<dyn BarHandler>) -> Result<(), String> {
        let mut bars = self.bars.write().map_err(|_| "BAR map lock poisoned".to_string())?;
        let end = base.checked_add(size).ok_or_else(|| format!("BAR at {base:#x}+{size:#x} overflows"))?;
        if bars.range(..end).next_back().is_some_and(|(b, (s, _))| b + s > base) {
            return Err(format!("BAR at {base:#x}+{size:#x} overlaps another"));
        }
        bars.insert(base, (size, handler));
        Ok(())
    }

    pub fn remove(&self, base: u64) {
        if let Ok(mut bars) = self.bars.write() {
            bars.remove(&base);
        }
    }

    /// The handler covering `addr` and the offset into its BAR. The lock is released before
    /// the caller runs the handler: a config write on another vCPU may be moving BARs.
    pub fn find(&self, addr: u64) -> Option<(Arc<dyn BarHandler>, u64)> {
        let bars = self.bars.read().ok()?;
        let (base, (size, handler)) = bars.range(..=addr).next_back()?;
        (addr - base < *size).then(|| (handler.clone(), addr - base))
    }

    pub fn bases(&self) -> Vec<u64> {
        self.bars.read().map(|b| b.keys().copied().collect()).unwrap_or_default()
    }
}
