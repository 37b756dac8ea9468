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
use pci::aer::Severity;
use pci::rcec::{Rcec, Reported};
use pci::vfio::recovery::RecoveryStats;
use pci::vfio::{DmaState, VfioPciDevice};
use pci::{BarAllocator, PciBus};
use vmm_sys_util::eventfd::EventFd;

use crate::passthrough::vfio::{validate_device, HostDevice, HostRoots, ReacquireError, VfioError, VfioManager};
use crate::platform::config::DeviceConfig;
use crate::platform::kvm_platform::KvmPlatform;
use crate::platform::memory::GuestMemory;

/// What [`DeviceHost::service_recovery`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryService {
    /// An error went to the RCEC: its severity, and whether the guest's AER interrupt was
    /// raised (it enabled reporting) or why not.
    pub reported: Option<(Severity, Reported)>,
    /// Why the error was signalled (with `reported`).
    pub cause: Option<&'static str>,
    /// The guest's Function Level Reset was done through VFIO, in this many ms.
    pub reset_ms: Option<u64>,
    /// The guest re-enabled the function: ms from the signal.
    pub reenabled_ms: Option<u64>,
}

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
    /// Carries out what the device in `slot` has for the VMM thread (see
    /// `pci::vfio::recovery`): an error to send to the guest's RCEC, a Function Level Reset
    /// the guest asked for (done through VFIO, outside the device's lock).
    fn service_recovery(&mut self, slot: u8) -> RecoveryService;
    /// Has the host signal `fd` when it detects an error on the device in `slot` (VFIO's
    /// error interrupt); re-armed after each re-acquire.
    fn arm_host_errors(&mut self, _slot: u8, _fd: &EventFd) -> Result<(), String> {
        Ok(())
    }
    /// The host detected an error on the device in `slot`: the guest is told (AER).
    fn signal_host_error(&mut self, _slot: u8) {}
    /// The (quiesced) device in `slot` is being released while the VM runs: its guest driver
    /// is told the function failed (AER). Whether the error reaches the guest.
    fn signal_live_release(&mut self, _slot: u8) -> bool {
        true
    }
    /// The device's error recoveries so far, for `vm.info`.
    fn recovery_stats(&self, _slot: u8) -> Option<RecoveryStats> {
        None
    }
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
    /// The Root Complex Event Collector the devices' errors go through.
    rcec: Arc<Mutex<Rcec>>,
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
        rcec: Arc<Mutex<Rcec>>,
    ) -> Self {
        Self { vm, memory, bus, allocator, platform, registers, rcec, vfio: None }
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

    fn service_recovery(&mut self, slot: u8) -> RecoveryService {
        let mut out = RecoveryService::default();
        let report = self.with_device(slot, |d| (d.take_error_report(), d.recovery_stats().last.map(|l| l.cause)));
        if let Some((Some(severity), cause)) = report {
            out.cause = cause.map(|c| c.as_str());
            // The function's requester id: bus 0, device `slot`, function 0.
            let source = u16::from(slot) << 3;
            let raised = match self.rcec.lock() {
                Ok(mut rcec) => rcec.report_uncorrectable(source, severity),
                Err(_) => Reported::SignalFailed("the RCEC's lock is poisoned".into()),
            };
            out.reported = Some((severity, raised));
        }
        if let Some(backend) = self.with_device(slot, |d| d.take_reset()).flatten() {
            // Outside the device's lock: the guest's reset wait reads all ones meanwhile.
            let started = Instant::now();
            backend.reset();
            self.with_device(slot, |d| d.finish_reset());
            out.reset_ms = Some(started.elapsed().as_millis() as u64);
        }
        out.reenabled_ms = self.with_device(slot, |d| d.take_reenabled()).flatten();
        out
    }

    fn arm_host_errors(&mut self, slot: u8, fd: &EventFd) -> Result<(), String> {
        self.with_device(slot, |d| d.arm_host_errors(fd)).unwrap_or_else(|| Err(format!("no device in slot {slot}")))
    }

    fn signal_host_error(&mut self, slot: u8) {
        self.with_device(slot, |d| d.signal_host_error());
    }

    fn signal_live_release(&mut self, slot: u8) -> bool {
        self.with_device(slot, |d| d.signal_error(pci::vfio::recovery::RecoveryCause::LiveRelease))
            == Some(pci::vfio::recovery::Signalled::Sent)
    }

    fn recovery_stats(&self, slot: u8) -> Option<RecoveryStats> {
        self.with_device(slot, |d| d.recovery_stats())
    }

    fn shutdown(&mut self) {
        if let Some(mut v) = self.vfio.take() {
            v.shutdown();
        }
    }

    fn usage(&self) -> (usize, usize) {
        // The RCEC's MSI route is the platform's: it stays when every device has gone.
        let (routes, slots) = self.platform.usage();
        let rcec = self.rcec.lock().map(|r| r.msi_routes()).unwrap_or(0);
        (routes.saturating_sub(rcec), slots)
    }
}
