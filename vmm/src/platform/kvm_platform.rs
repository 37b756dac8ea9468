//! The KVM side of passthrough ([`KvmPlatform`]): memory slots for BAR mmaps, MSI routes and
//! GSIs (given back and reused), irqfds, the MMIO router for the trapped parts of BARs
//! ([`BarRouter`]) and whether guest RAM is DMA-mapped yet ([`DmaGate`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use devices::timing::Milestone;
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_userspace_memory_region, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use pci::msix::MsiMessage;
use pci::vfio::{BarHandler, BarMap, DmaState, VmPlatform};
use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_device::DeviceMmio;
use vmm_sys_util::eventfd::EventFd;

/// IOAPIC pins; GSIs from here up are ours for MSI routes.
const IOAPIC_PINS: u32 = 24;

/// Guest MMIO to the trapped parts of passed-through BARs, registered over the PCI windows.
#[derive(Default)]
pub struct BarRouter {
    bars: BarMap,
}

impl DeviceMmio for BarRouter {
    fn mmio_read(&self, base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        match self.bars.find(base.0 + offset) {
            Some((h, off)) => h.read(off, data),
            None => data.fill(0xff),
        }
    }

    fn mmio_write(&self, base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        if let Some((h, off)) = self.bars.find(base.0 + offset) {
            h.write(off, data);
        }
    }
}

/// Whether guest RAM is DMA-mapped yet: mapping runs on its own thread while the guest boots.
pub struct DmaGate {
    /// `(generation, outcome)`: a mapping started for an earlier container (before a
    /// [`reset`](Self::reset)) finishes without touching the current state.
    state: Mutex<(u64, Option<Result<(), String>>)>,
    /// When the current generation's mapping finished.
    mapped: Mutex<Option<Milestone>>,
    /// Signalled when mapping finishes: the VMM thread then applies deferred bus mastering.
    done: EventFd,
    /// Notified when mapping finishes, for [`wait`](Self::wait).
    finished: Condvar,
}

impl DmaGate {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            state: Mutex::new((0, None)),
            mapped: Mutex::new(None),
            done: EventFd::new(libc::EFD_NONBLOCK)?,
            finished: Condvar::new(),
        })
    }

    /// Waits up to `timeout` for the mapping under way to finish: its outcome, or an error when
    /// it did not finish in time. Only for a mapping that was started (nothing else ends it).
    pub fn wait(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut s = self.state.lock().map_err(|_| "DMA gate poisoned".to_string())?;
        while s.1.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("guest RAM was not DMA-mapped within {} s", timeout.as_secs()));
            }
            s = self.finished.wait_timeout(s, left).map_err(|_| "DMA gate poisoned".to_string())?.0;
        }
        s.1.clone().unwrap_or(Ok(()))
    }

    /// The generation a mapping started now reports with.
    pub fn generation(&self) -> u64 {
        self.state.lock().map(|s| s.0).unwrap_or(u64::MAX)
    }

    pub fn set(&self, generation: u64, result: Result<(), String>) {
        match self.state.lock() {
            Ok(mut s) if s.0 == generation => s.1 = Some(result),
            _ => return,
        }
        self.finished.notify_all();
        if let Ok(mut m) = self.mapped.lock() {
            *m = Some(Milestone::now());
        }
        if let Err(e) = self.done.write(1) {
            log::error!("cannot tell the VMM thread that DMA mapping finished: {e}");
        }
    }

    /// Back to "not mapped" (the container lost its mappings with its last group).
    pub fn reset(&self) {
        if let Ok(mut s) = self.state.lock() {
            *s = (s.0.wrapping_add(1), None);
        }
        if let Ok(mut m) = self.mapped.lock() {
            *m = None;
        }
    }

    pub fn state(&self) -> DmaState {
        match self.state.lock().map(|s| s.1.clone()) {
            Ok(None) => DmaState::Pending,
            Ok(Some(Ok(()))) => DmaState::Ready,
            Ok(Some(Err(e))) => DmaState::Failed(e),
            Err(_) => DmaState::Failed("DMA gate poisoned".into()),
        }
    }
}

/// Numbers handed out upward, given back and reused (memory slot ids, GSIs).
#[derive(Debug)]
pub struct IdAllocator {
    next: u32,
    free: Vec<u32>,
}

impl IdAllocator {
    pub fn new(first: u32) -> Self {
        Self { next: first, free: Vec::new() }
    }

    pub fn allocate(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop() {
            return Some(id);
        }
        let id = self.next;
        self.next = self.next.checked_add(1)?;
        Some(id)
    }

    pub fn release(&mut self, id: u32) {
        if id < self.next && !self.free.contains(&id) {
            self.free.push(id);
        }
    }

    /// How many ids were ever handed out (the high-water mark).
    pub fn high_water(&self) -> u32 {
        self.next
    }
}

/// The KVM side of passthrough.
pub struct KvmPlatform {
    dma: DmaGate,
    vm: Arc<VmFd>,
    slot_ids: Mutex<IdAllocator>,
    /// slot → guest address (for removal).
    slots: Mutex<BTreeMap<u32, u64>>,
    routes: Mutex<BTreeMap<u32, MsiMessage>>,
    gsis: Mutex<IdAllocator>,
    router: Arc<BarRouter>,
    /// Wakes the VMM thread's device watcher (a device has an error to report or a reset to do).
    wake: Option<EventFd>,
}

impl KvmPlatform {
    pub fn new(vm: Arc<VmFd>, first_free_slot: u32, router: Arc<BarRouter>) -> std::io::Result<Self> {
        Ok(Self {
            wake: None,
            dma: DmaGate::new()?,
            vm,
            slot_ids: Mutex::new(IdAllocator::new(first_free_slot)),
            slots: Mutex::new(BTreeMap::new()),
            routes: Mutex::new(BTreeMap::new()),
            gsis: Mutex::new(IdAllocator::new(IOAPIC_PINS)),
            router,
        })
    }

    /// Devices wake the VMM thread through `wake` (see [`VmPlatform::wake_vmm`]).
    pub fn with_wake(mut self, wake: EventFd) -> Self {
        self.wake = Some(wake);
        self
    }

    /// `(MSI routes, memory slots)` in use for passthrough.
    pub fn usage(&self) -> (usize, usize) {
        let routes = self.routes.lock().map(|r| r.len()).unwrap_or(0);
        let slots = self.slots.lock().map(|s| s.len()).unwrap_or(0);
        (routes, slots)
    }

    /// When guest RAM finished being DMA-mapped into the current container.
    pub fn dma_mapped(&self) -> Option<Milestone> {
        self.dma.mapped.lock().ok().and_then(|m| *m)
    }

    /// The DMA gate, for the VFIO container that maps guest RAM.
    pub fn dma(&self) -> &DmaGate {
        &self.dma
    }

    /// An eventfd signalled each time DMA mapping of guest RAM finishes.
    pub fn dma_done_fd(&self) -> std::io::Result<EventFd> {
        self.dma.done.try_clone()
    }

    /// The full routing table: KVM's default irqchip routes plus our MSI routes.
    fn routing_table(routes: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
        let mut entries = Vec::new();
        let mut irqchip = |gsi: u32, chip: u32, pin: u32| {
            let mut e = kvm_irq_routing_entry { gsi, type_: KVM_IRQ_ROUTING_IRQCHIP, ..Default::default() };
            e.u.irqchip.irqchip = chip;
            e.u.irqchip.pin = pin;
            entries.push(e);
        };
        for gsi in 0..16 {
            if gsi != 2 {
                let (chip, pin) =
                    if gsi < 8 { (KVM_IRQCHIP_PIC_MASTER, gsi) } else { (KVM_IRQCHIP_PIC_SLAVE, gsi - 8) };
                irqchip(gsi, chip, pin);
            }
        }
        for pin in 0..IOAPIC_PINS {
            irqchip(pin, KVM_IRQCHIP_IOAPIC, pin);
        }
        for (gsi, msg) in routes {
            let mut e = kvm_irq_routing_entry { gsi: *gsi, type_: KVM_IRQ_ROUTING_MSI, ..Default::default() };
            e.u.msi.address_lo = msg.address as u32;
            e.u.msi.address_hi = (msg.address >> 32) as u32;
            e.u.msi.data = msg.data;
            entries.push(e);
        }
        entries
    }
}

impl VmPlatform for KvmPlatform {
    unsafe fn map_memory(&self, guest_addr: u64, size: u64, host_addr: *mut u8) -> Result<u32, String> {
        let slot = self
            .slot_ids
            .lock()
            .map_err(|_| "slot lock poisoned".to_string())?
            .allocate()
            .ok_or("no memory slot id left")?;
        let region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr as u64,
            flags: 0,
        };
        // SAFETY: the caller guarantees `host_addr..+size` stays mapped until unmap_memory.
        if let Err(e) = unsafe { self.vm.set_user_memory_region(region) } {
            // Refused (e.g. a guest moved a BAR over RAM): the id is free again.
            if let Ok(mut ids) = self.slot_ids.lock() {
                ids.release(slot);
            }
            return Err(format!("memory slot {slot}: {e}"));
        }
        if let Ok(mut s) = self.slots.lock() {
            s.insert(slot, guest_addr);
        }
        Ok(slot)
    }

    fn unmap_memory(&self, slot: u32) {
        let Some(guest_addr) = self.slots.lock().ok().and_then(|mut s| s.remove(&slot)) else {
            return;
        };
        let region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: guest_addr,
            memory_size: 0,
            userspace_addr: 0,
            flags: 0,
        };
        // SAFETY: a zero-sized region deletes the slot; no host memory is referenced.
        if let Err(e) = unsafe { self.vm.set_user_memory_region(region) } {
            log::warn!("cannot remove memory slot {slot}: {e}");
            return;
        }
        if let Ok(mut ids) = self.slot_ids.lock() {
            ids.release(slot);
        }
    }

    fn allocate_gsi(&self) -> Result<u32, String> {
        let mut gsis = self.gsis.lock().map_err(|_| "GSI lock poisoned".to_string())?;
        gsis.allocate().ok_or_else(|| "no GSI left".to_string())
    }

    fn release_gsis(&self, released: &[u32]) {
        let Ok(mut routes) = self.routes.lock() else {
            return;
        };
        // Every route goes (not `any`, which would stop at the first).
        let removed = released.iter().filter(|gsi| routes.remove(gsi).is_some()).count();
        if let Ok(mut gsis) = self.gsis.lock() {
            for &gsi in released {
                gsis.release(gsi);
            }
        }
        if removed > 0 {
            let entries = Self::routing_table(&routes);
            match KvmIrqRouting::from_entries(&entries) {
                Ok(table) => {
                    if let Err(e) = self.vm.set_gsi_routing(&table) {
                        log::warn!("KVM_SET_GSI_ROUTING after a device left: {e}");
                    }
                }
                Err(e) => log::warn!("routing table: {e:?}"),
            }
        }
    }

    fn set_msi_route(&self, gsi: u32, message: MsiMessage) -> Result<(), String> {
        let mut routes = self.routes.lock().map_err(|_| "route lock poisoned".to_string())?;
        routes.insert(gsi, message);
        let entries = Self::routing_table(&routes);
        let table = KvmIrqRouting::from_entries(&entries).map_err(|e| format!("routing table: {e:?}"))?;
        self.vm.set_gsi_routing(&table).map_err(|e| format!("KVM_SET_GSI_ROUTING: {e}"))
    }

    fn attach_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), String> {
        self.vm.register_irqfd(fd, gsi).map_err(|e| format!("irqfd for GSI {gsi}: {e}"))
    }

    fn detach_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), String> {
        self.vm.unregister_irqfd(fd, gsi).map_err(|e| format!("irqfd for GSI {gsi}: {e}"))
    }

    fn register_bar(&self, base: u64, size: u64, handler: Arc<dyn BarHandler>) -> Result<(), String> {
        self.router.bars.insert(base, size, handler)
    }

    fn unregister_bar(&self, base: u64) {
        self.router.bars.remove(base);
    }

    fn dma_state(&self) -> DmaState {
        self.dma.state()
    }

    fn wake_vmm(&self) {
        if let Some(Err(e)) = self.wake.as_ref().map(|w| w.write(1)) {
            log::warn!("cannot wake the VMM thread for a device: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_table_keeps_the_irqchip_routes() {
        let mut routes = BTreeMap::new();
        routes.insert(24, MsiMessage { address: 0x1_fee0_1000, data: 0x41 });
        let t = KvmPlatform::routing_table(&routes);
        assert_eq!(t.iter().filter(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP).count(), 15 + 24);
        let msi = t.iter().find(|e| e.gsi == 24).unwrap();
        assert_eq!(msi.type_, KVM_IRQ_ROUTING_MSI);
        // SAFETY: reading the union member this entry's type says is set.
        let (lo, hi, data) = unsafe { (msi.u.msi.address_lo, msi.u.msi.address_hi, msi.u.msi.data) };
        assert_eq!((lo, hi, data), (0xfee0_1000, 1, 0x41));
        // COM1's IRQ 4 still reaches both the PIC and the IOAPIC.
        assert_eq!(t.iter().filter(|e| e.gsi == 4).count(), 2);
    }

    #[test]
    fn ids_are_reused_after_release() {
        let mut ids = IdAllocator::new(24);
        assert_eq!((ids.allocate(), ids.allocate(), ids.allocate()), (Some(24), Some(25), Some(26)));
        ids.release(25);
        ids.release(25); // twice: still once
        ids.release(99); // never handed out: ignored
        assert_eq!((ids.allocate(), ids.allocate()), (Some(25), Some(27)));
        assert_eq!(ids.high_water(), 28);
        let mut last = IdAllocator::new(u32::MAX);
        assert_eq!((last.allocate(), last.allocate()), (None, None), "no wrap-around");
    }

    /// On this machine's /dev/kvm: GSIs and memory slot ids come back (a VM that attaches and
    /// detaches devices for ever, or whose guest keeps moving a BAR over RAM, never runs out).
    #[test]
    fn kvm_platform_gives_back_gsis_routes_and_refused_slot_ids() {
        use pci::vfio::VmPlatform;
        let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
        let vm = kvm.create_vm().expect("a VM");
        vm.create_irq_chip().expect("irqchip");
        let platform = KvmPlatform::new(Arc::new(vm), 4, Arc::new(BarRouter::default())).unwrap();
        let message = MsiMessage { address: 0xfee0_0000, data: 0x41 };
        for _ in 0..2000 {
            let gsis: Vec<u32> = (0..3).map(|_| platform.allocate_gsi().unwrap()).collect();
            for &gsi in &gsis {
                platform.set_msi_route(gsi, message).unwrap();
            }
            platform.release_gsis(&gsis);
        }
        assert_eq!(platform.gsis.lock().unwrap().high_water(), IOAPIC_PINS + 3);
        assert!(platform.routes.lock().unwrap().is_empty());
        // A slot KVM refuses (not page aligned) gives its id back.
        let mut page = vec![0u8; 8192];
        for _ in 0..100 {
            // SAFETY: `page` outlives the attempt, which fails anyway.
            let refused = unsafe { platform.map_memory(0x1000_0000, 0x10, page.as_mut_ptr()) };
            assert!(refused.is_err());
        }
        assert_eq!(platform.slot_ids.lock().unwrap().high_water(), 5, "one id, reused");
    }
}
