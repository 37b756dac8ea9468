//! What device orchestration (hotplug and the VF lifecycle, in `hotplug.rs` and
//! `lifecycle.rs`) asks of the host and of the VM, behind one trait: the real one
//! ([`KvmDeviceHost`]: sysfs, VFIO, the PCI bus, KVM, the ACPI hotplug registers) and a fake in
//! the orchestration's tests, so that the order of operations and the refusals are tested
//! without KVM or VFIO.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use devices::hotplug::HotplugRegisters;
use devices::timing::{names, Milestone};
use kvm_ioctls::VmFd;
use pci::vfio::{DmaState, VfioPciDevice};
use pci::{BarAllocator, PciBus};
use vmm_sys_util::eventfd::EventFd;

use crate::passthrough::vfio::{validate_device, HostDevice, HostRoots, ReacquireError, VfioError, VfioManager};
use crate::platform::config::DeviceConfig;
use crate::platform::kvm_platform::KvmPlatform;
use crate::platform::memory::GuestMemory;

/// The host/VM operations on passed-through devices, by guest slot.
pub trait DeviceHost: Send {
    /// Checks a host path for passthrough (PCI device, vfio-pci, viable group).
    fn validate(&self, cfg: &DeviceConfig) -> Result<HostDevice, VfioError>;
    /// Opens `host` and plugs it into a free slot (not yet announced to the guest); `request`
    /// is signalled when the host asks for the device back. Returns the slot.
    fn plug(&mut self, host: HostDevice, request: Option<&EventFd>) -> Result<u8, VfioError>;
    /// Takes the device in `slot` out of the VM (the guest ejected it); the host gets it back.
    /// Returns the milestones of the teardown (quiesced, reset and closed).
    fn unplug(&mut self, slot: u8) -> Vec<(&'static str, Milestone)>;
    /// What the host and the guest did with the device in `slot` so far, for attach and
    /// detach timings (opened, guest saw / ejected the slot, enabled decoding, MSI-X, ...).
    fn milestones(&self, _slot: u8) -> Vec<(&'static str, Milestone)> {
        Vec::new()
    }
    /// Tells the guest a device appeared in / should leave `slot` (ACPI hotplug).
    fn announce(&self, slot: u8, present: bool);
    /// Slots the guest ejected since the last call (bit per slot).
    fn take_ejected(&self) -> u32;
    fn power_button(&self);
    /// Whether the guest enabled the device in `slot` (memory decoding or MSI-X on).
    fn guest_enabled(&self, slot: u8) -> bool;
    fn quiesce(&mut self, slot: u8);
    fn unquiesce(&mut self, slot: u8);
    /// Lets go of the (quiesced) device's host side; the guest keeps the function.
    fn release(&mut self, slot: u8) -> Result<(), String>;
    /// Binds the released device in `slot` to `host`, its guest-visible state replayed.
    fn reacquire(&mut self, slot: u8, host: HostDevice, request: Option<&EventFd>) -> Result<(), ReacquireError>;
    /// Guest RAM is DMA-mapped: the device gets the bus mastering its guest asked for.
    fn apply_deferred_bus_master(&mut self, slot: u8);
    /// Whether guest RAM is DMA-mapped for the VM's devices (mapping runs in the background).
    fn dma_state(&self) -> DmaState;
    /// Waits up to `timeout` for the DMA mapping under way to finish.
    fn wait_dma(&self, timeout: Duration) -> Result<(), String>;
    /// Advances the device's driver recovery; when to call again.
    fn recovery_tick(&mut self, slot: u8, now: Instant) -> Option<Instant>;
    /// VM exit: every device quiesced, reset and released.
    fn shutdown(&mut self);
    /// KVM resources in use for passthrough: `(MSI GSIs, memory slots for BARs)`.
    fn usage(&self) -> (usize, usize) {
        (0, 0)
    }
}

/// The real host: sysfs, VFIO (one container per VM), the guest's PCI bus and KVM.
pub struct KvmDeviceHost {
    vm: Arc<VmFd>,
    memory: GuestMemory,
    bus: Arc<RwLock<PciBus>>,
    allocator: Arc<Mutex<BarAllocator>>,
    platform: Arc<KvmPlatform>,
    registers: Arc<Mutex<HotplugRegisters>>,
    /// Created with the first device.
    vfio: Option<VfioManager>,
}

impl KvmDeviceHost {
    pub fn new(
        vm: Arc<VmFd>,
        memory: GuestMemory,
        bus: Arc<RwLock<PciBus>>,
        allocator: Arc<Mutex<BarAllocator>>,
        platform: Arc<KvmPlatform>,
        registers: Arc<Mutex<HotplugRegisters>>,
    ) -> Self {
        Self { vm, memory, bus, allocator, platform, registers, vfio: None }
    }

    fn manager(&mut self) -> Result<&mut VfioManager, VfioError> {
        if self.vfio.is_none() {
            self.vfio = Some(VfioManager::new(&self.vm, self.platform.clone())?);
        }
        self.vfio.as_mut().ok_or_else(|| VfioError::Container("no VFIO container".into()))
    }

    fn with_device<T>(&self, slot: u8, f: impl FnOnce(&mut VfioPciDevice) -> T) -> Option<T> {
        let device = self.vfio.as_ref()?.devices.iter().find(|d| d.slot == slot)?;
        let mut dev = device.device.lock().ok()?;
        Some(f(&mut dev))
    }
}

impl DeviceHost for KvmDeviceHost {
    fn validate(&self, cfg: &DeviceConfig) -> Result<HostDevice, VfioError> {
        validate_device(&HostRoots::default(), cfg, 0)
    }

    fn plug(&mut self, host: HostDevice, request: Option<&EventFd>) -> Result<u8, VfioError> {
        let (memory, bus, allocator) = (self.memory.clone(), self.bus.clone(), self.allocator.clone());
        Ok(self.manager()?.attach(host, &memory, &bus, &allocator, request)?.slot)
    }

    fn unplug(&mut self, slot: u8) -> Vec<(&'static str, Milestone)> {
        match self.vfio.as_mut() {
            Some(v) => v.detach(slot, &self.bus, &self.allocator).map(|(_, m)| m).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    fn milestones(&self, slot: u8) -> Vec<(&'static str, Milestone)> {
        let mut out = Vec::new();
        if let Ok(r) = self.registers.lock() {
            out.extend(r.checked(slot).map(|m| (names::GUEST_SAW_SLOT, m)));
            out.extend(r.ejected_at(slot).map(|m| (names::GUEST_EJECTED, m)));
        }
        if let Some(d) = self.vfio.as_ref().and_then(|v| v.devices.iter().find(|d| d.slot == slot)) {
            out.push((names::DEVICE_OPENED, d.opened));
            if let Ok(dev) = d.device.lock() {
                out.extend(dev.milestones().reached());
            }
        }
        out.extend(self.platform.dma_mapped().map(|m| (names::DMA_MAPPED, m)));
        out
    }

    fn announce(&self, slot: u8, present: bool) {
        if let Ok(mut r) = self.registers.lock() {
            if present {
                r.slot_up(slot);
            } else {
                r.slot_down(slot);
            }
        }
    }

    fn take_ejected(&self) -> u32 {
        self.registers.lock().map(|mut r| r.take_ejected()).unwrap_or(0)
    }

    fn power_button(&self) {
        if let Ok(mut r) = self.registers.lock() {
            r.power_button();
        }
    }

    fn guest_enabled(&self, slot: u8) -> bool {
        self.with_device(slot, |d| d.guest_enabled()).unwrap_or(false)
    }

    fn quiesce(&mut self, slot: u8) {
        self.with_device(slot, |d| d.quiesce());
    }

    fn unquiesce(&mut self, slot: u8) {
        self.with_device(slot, |d| d.unquiesce());
    }

    fn release(&mut self, slot: u8) -> Result<(), String> {
        self.vfio.as_mut().ok_or_else(|| "no VFIO state".to_string())?.release(slot)
    }

    fn reacquire(&mut self, slot: u8, host: HostDevice, request: Option<&EventFd>) -> Result<(), ReacquireError> {
        let memory = self.memory.clone();
        match self.vfio.as_mut() {
            Some(v) => v.reacquire(slot, host, &memory, request),
            None => Err(ReacquireError::NoDevice(slot)),
        }
    }

    fn apply_deferred_bus_master(&mut self, slot: u8) {
        self.with_device(slot, |d| d.apply_deferred_bus_master());
    }

    fn dma_state(&self) -> DmaState {
        self.platform.dma().state()
    }

    fn wait_dma(&self, timeout: Duration) -> Result<(), String> {
        self.platform.dma().wait(timeout)
    }

    fn recovery_tick(&mut self, slot: u8, now: Instant) -> Option<Instant> {
        self.with_device(slot, |d| d.recovery_tick(now)).flatten()
    }

    fn shutdown(&mut self) {
        if let Some(mut v) = self.vfio.take() {
            v.shutdown();
        }
    }

    fn usage(&self) -> (usize, usize) {
        self.platform.usage()
    }
}
