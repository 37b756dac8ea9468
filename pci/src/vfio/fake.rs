//! In-memory stand-ins for the kernel ([`FakeVfio`]) and the VM ([`FakePlatform`]), so the
//! passthrough logic is tested without VFIO hardware.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::{
    BarHandler, BarMap, HostMapping, RegionInfo, VfioBackend, VfioBackendError, VmPlatform,
    VFIO_PCI_CONFIG_REGION_INDEX,
};
use crate::msix::MsiMessage;

/// A VFIO device: config space bytes, regions, and a log of what the VMM asked.
#[derive(Default)]
pub struct FakeVfio {
    pub config: Mutex<Vec<u8>>,
    pub regions: BTreeMap<u32, RegionInfo>,
    /// Forwarded region accesses: `(region, offset, len, is_write)`.
    pub accesses: Mutex<Vec<(u32, u64, usize, bool)>>,
    /// Number of eventfds passed at each MSI-X enable; `0` records a disable.
    pub msix_calls: Mutex<Vec<usize>>,
    /// The same for MSI.
    pub msi_calls: Mutex<Vec<usize>>,
    pub resets: Mutex<u32>,
    /// Values of 4-byte BAR reads `(region, offset)`; other BAR reads return 0x5a bytes.
    pub bar_words: Mutex<BTreeMap<(u32, u64), u32>>,
}

impl FakeVfio {
    /// An igbvf-like VF: 16 KiB BAR0 and BAR3 (64-bit, MSI-X table at 0, PBA at 0x2000 in
    /// BAR3), 3 vectors, capabilities MSI-X (0x70) → PCIe (0xa0).
    pub fn igb_vf() -> Self {
        let mut cfg = vec![0u8; 4096];
        let mut put = |off: usize, v: u32| cfg[off..off + 4].copy_from_slice(&v.to_le_bytes());
        put(0x00, 0x10ca_8086);
        put(0x04, 0x0010_0000); // status: capabilities list
        put(0x08, 0x0200_0001);
        put(0x10, 0x0000_000c); // BAR0: 64-bit prefetchable... as the hardware reports it
        put(0x1c, 0x0000_000c); // BAR3
        put(0x34, 0x70);
        put(0x70, 0x0002_a011); // MSI-X, next 0xa0, 3 vectors
        put(0x74, 0x0000_0003); // table: BAR3 + 0
        put(0x78, 0x0000_2003); // PBA: BAR3 + 0x2000
        put(0xa0, 0x0002_0010); // PCIe v2 endpoint, end of list
        put(0xa4, 0x1000_8020); // Device Capabilities: FLR, role-based error reporting
        put(0xa8, 0x0011_0000); // Device Control; Device Status: correctable error, aux power
        put(0x100, 0x1501_0001); // AER v1, next: ARI at 0x150 (as the testbed's igb VF)
        put(0x10c, 0x0046_2030); // AER severity as the device reports it
        put(0x150, 0x0001_000e); // ARI, end of list
        let bar = |sparse| RegionInfo {
            size: 0x4000,
            readable: true,
            writable: true,
            mmappable: true,
            sparse,
            msix_mappable: false,
        };
        let mut regions = BTreeMap::new();
        regions.insert(0, bar(None));
        regions.insert(3, bar(Some(vec![(0x1000, 0x1000), (0x3000, 0x1000)])));
        regions.insert(
            VFIO_PCI_CONFIG_REGION_INDEX,
            RegionInfo { size: 4096, readable: true, writable: true, ..Default::default() },
        );
        Self { config: Mutex::new(cfg), regions, ..Default::default() }
    }

    /// A function with only MSI (64-bit, per-vector masking, 4 vectors) at 0x50 and one
    /// 4 KiB 32-bit BAR.
    pub fn msi_only() -> Self {
        let mut cfg = vec![0u8; 4096];
        let mut put = |off: usize, v: u32| cfg[off..off + 4].copy_from_slice(&v.to_le_bytes());
        put(0x00, 0x1234_1af4);
        put(0x04, 0x0010_0000);
        put(0x34, 0x50);
        put(0x50, 0x0184_0005); // MSI, end of list; control: per-vector mask, 64-bit, MMC=2
        let mut regions = BTreeMap::new();
        regions.insert(
            0,
            RegionInfo {
                size: 0x1000,
                readable: true,
                writable: true,
                mmappable: true,
                sparse: None,
                msix_mappable: false,
            },
        );
        regions.insert(
            VFIO_PCI_CONFIG_REGION_INDEX,
            RegionInfo { size: 4096, readable: true, writable: true, ..Default::default() },
        );
        Self { config: Mutex::new(cfg), regions, ..Default::default() }
    }
}

impl VfioBackend for FakeVfio {
    fn region(&self, index: u32) -> Option<RegionInfo> {
        self.regions.get(&index).cloned()
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) {
        if index == VFIO_PCI_CONFIG_REGION_INDEX {
            let cfg = self.config.lock().unwrap();
            let o = offset as usize;
            data.copy_from_slice(&cfg[o..o + data.len()]);
            return;
        }
        self.accesses.lock().unwrap().push((index, offset, data.len(), false));
        match self.bar_words.lock().unwrap().get(&(index, offset)) {
            Some(word) if data.len() == 4 => data.copy_from_slice(&word.to_le_bytes()),
            _ => data.fill(0x5a),
        }
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) {
        if index == VFIO_PCI_CONFIG_REGION_INDEX {
            let mut cfg = self.config.lock().unwrap();
            let o = offset as usize;
            cfg[o..o + data.len()].copy_from_slice(data);
            return;
        }
        self.accesses.lock().unwrap().push((index, offset, data.len(), true));
    }

    fn mmap(&self, _index: u32, _offset: u64, size: u64) -> Result<HostMapping, VfioBackendError> {
        // SAFETY: an anonymous private mapping, checked below and owned by the HostMapping.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        // SAFETY: the live mapping created above.
        Ok(unsafe { HostMapping::from_raw(addr.cast(), size as usize) })
    }

    fn irq_count(&self, _index: u32) -> u32 {
        3
    }

    fn enable_msix(&self, fds: &[&EventFd]) -> Result<(), VfioBackendError> {
        self.msix_calls.lock().unwrap().push(fds.len());
        Ok(())
    }

    fn disable_msix(&self) -> Result<(), VfioBackendError> {
        self.msix_calls.lock().unwrap().push(0);
        Ok(())
    }

    fn enable_msi(&self, fds: &[&EventFd]) -> Result<(), VfioBackendError> {
        self.msi_calls.lock().unwrap().push(fds.len());
        Ok(())
    }

    fn disable_msi(&self) -> Result<(), VfioBackendError> {
        self.msi_calls.lock().unwrap().push(0);
        Ok(())
    }

    fn reset(&self) {
        *self.resets.lock().unwrap() += 1;
    }
}

/// A VM: records memory slots, MSI routes, irqfds and BAR traps.
#[derive(Default)]
pub struct FakePlatform {
    next_slot: Mutex<u32>,
    next_gsi: Mutex<u32>,
    /// GSIs given back, reused first (as the real platform does).
    pub free_gsis: Mutex<Vec<u32>>,
    /// slot → (guest address, size)
    pub slots: Mutex<BTreeMap<u32, (u64, u64)>>,
    pub routes: Mutex<BTreeMap<u32, MsiMessage>>,
    /// GSIs with an attached irqfd.
    pub irqfds: Mutex<Vec<u32>>,
    pub bars: BarMap,
    /// What [`VmPlatform::dma_state`] answers (default: ready).
    pub dma: Mutex<Option<super::DmaState>>,
    /// Times a device woke the VMM thread.
    pub wakes: Mutex<u32>,
}

impl FakePlatform {
    pub fn new() -> Self {
        Self { next_gsi: Mutex::new(24), ..Default::default() }
    }

    /// Routes a guest MMIO access the way the VM would: to a trap if one covers it.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        self.bars.find(addr).map(|(h, off)| h.write(off, data)).is_some()
    }

    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.bars.find(addr).map(|(h, off)| h.read(off, data)).is_some()
    }
}

impl VmPlatform for FakePlatform {
    unsafe fn map_memory(&self, guest_addr: u64, size: u64, _host_addr: *mut u8) -> Result<u32, String> {
        let mut n = self.next_slot.lock().unwrap();
        *n += 1;
        self.slots.lock().unwrap().insert(*n, (guest_addr, size));
        Ok(*n)
    }

    fn unmap_memory(&self, handle: u32) {
        self.slots.lock().unwrap().remove(&handle);
    }

    fn allocate_gsi(&self) -> Result<u32, String> {
        if let Some(gsi) = self.free_gsis.lock().unwrap().pop() {
            return Ok(gsi);
        }
        let mut n = self.next_gsi.lock().unwrap();
        *n += 1;
        Ok(*n - 1)
    }

    fn release_gsis(&self, gsis: &[u32]) {
        let mut routes = self.routes.lock().unwrap();
        for gsi in gsis {
            routes.remove(gsi);
        }
        self.free_gsis.lock().unwrap().extend(gsis);
    }

    fn set_msi_route(&self, gsi: u32, message: MsiMessage) -> Result<(), String> {
        self.routes.lock().unwrap().insert(gsi, message);
        Ok(())
    }

    fn attach_irqfd(&self, _fd: &EventFd, gsi: u32) -> Result<(), String> {
        self.irqfds.lock().unwrap().push(gsi);
        Ok(())
    }

    fn detach_irqfd(&self, _fd: &EventFd, gsi: u32) -> Result<(), String> {
        self.irqfds.lock().unwrap().retain(|g| *g != gsi);
        Ok(())
    }

    fn register_bar(&self, base: u64, size: u64, handler: Arc<dyn BarHandler>) -> Result<(), String> {
        self.bars.insert(base, size, handler)
    }

    fn unregister_bar(&self, base: u64) {
        self.bars.remove(base);
    }

    fn dma_state(&self) -> super::DmaState {
        self.dma.lock().unwrap().clone().unwrap_or(super::DmaState::Ready)
    }

    fn wake_vmm(&self) {
        *self.wakes.lock().unwrap() += 1;
    }
}
