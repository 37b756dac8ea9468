//! VM lifecycle: KVM set-up, memory, devices, boot, vCPU threads and the event loop.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use pci::BarAllocator;
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::terminal::Terminal;

use crate::control::api_handler::ApiHandler;
use crate::control::event_loop::{ConsoleInput, ExitWatcher, HotplugWatcher, TerminationSignals};
use crate::passthrough::device_host::KvmDeviceHost;
use crate::passthrough::hotplug::Hotplug;
use crate::passthrough::vfio::HostDevice;
use crate::platform::boot::{self, EntryPoint};
use crate::platform::config::{SerialConfig, VmConfig};
use crate::platform::device_manager::{create_devices, Devices};
use crate::platform::kvm_platform::KvmPlatform;
use crate::platform::memory::{create_guest_memory, register_with_kvm, GuestMemory};
use crate::vcpus::coalesced_io::CoalescedRing;
use crate::vcpus::vcpu::{create_vcpu, install_kick_handler, ExitSignal, GuestExit, VcpuHandle, VcpuShared};
use crate::vcpus::vcpu_set::VcpuSet;
use crate::VmmError;
use api::ApiReceiver;

/// How long exit waits for buffered console output to be written.
const CONSOLE_DRAIN_AT_EXIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Physical address width assumed when KVM does not report one.
const DEFAULT_PHYS_BITS: u8 = 36;

pub struct Vm {
    kvm: Kvm,
    fd: Arc<VmFd>,
    cpuid: CpuId,
    pub memory: GuestMemory,
    pub phys_bits: u8,
    devices: Devices,
    config: VmConfig,
    hotplug: Arc<Mutex<Hotplug>>,
    /// Signalled when guest RAM has been DMA-mapped (deferred bus mastering is applied then).
    dma_done: vmm_sys_util::eventfd::EventFd,
}

impl Vm {
    /// Opens KVM and builds an (unstarted) VM: irqchip, PIT, RAM, devices.
    pub fn new(config: &VmConfig) -> Result<Self, VmmError> {
        let kvm = Kvm::new().map_err(|e| VmmError::Kvm(format!("cannot open /dev/kvm: {e}")))?;
        for (cap, name) in
            [(Cap::Irqchip, "in-kernel irqchip"), (Cap::Irqfd, "irqfd"), (Cap::UserMemory, "user memory")]
        {
            if !kvm.check_extension(cap) {
                return Err(VmmError::Kvm(format!("KVM lacks the {name} capability")));
            }
        }
        let max_vcpus = kvm.get_max_vcpus();
        if usize::from(config.cpus) > max_vcpus {
            return Err(VmmError::Kvm(format!("{} vCPUs requested, KVM allows {max_vcpus}", config.cpus)));
        }
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VmmError::Kvm(format!("cannot read supported CPUID: {e}")))?;
        let phys_bits = arch::cpuid::phys_address_bits(cpuid.as_slice()).unwrap_or(DEFAULT_PHYS_BITS);
        let fd = kvm.create_vm().map_err(|e| VmmError::Kvm(format!("cannot create a VM: {e}")))?;
        fd.set_tss_address(arch::layout::KVM_TSS_ADDRESS as usize)
            .map_err(|e| VmmError::Kvm(format!("cannot set the TSS address: {e}")))?;
        fd.create_irq_chip().map_err(|e| VmmError::Kvm(format!("cannot create the irqchip: {e}")))?;
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        fd.create_pit2(pit).map_err(|e| VmmError::Kvm(format!("cannot create the PIT: {e}")))?;

        let memory = create_guest_memory(config.memory, phys_bits, config.hugepages, config.prefault)?;
        register_with_kvm(&fd, &memory)?;
        arch::regs::write_reset_vector(&memory).map_err(boot::BootError::from)?;
        let windows = arch::layout::pci_windows(config.memory, phys_bits);
        let devices = create_devices(&fd, &config.serial, &windows)?;
        let bar_allocator = Arc::new(Mutex::new(
            BarAllocator::new(windows[0], windows.get(1).copied()).map_err(|e| VmmError::Kvm(e.to_string()))?,
        ));
        let fd = Arc::new(fd);
        let platform = Arc::new(
            KvmPlatform::new(fd.clone(), memory.num_regions() as u32, devices.bar_router.clone())
                .map_err(VmmError::EventLoop)?
                .with_wake(devices.hotplug_resync.try_clone().map_err(VmmError::EventLoop)?),
        );
        let dma_done = platform.dma_done_fd().map_err(VmmError::EventLoop)?;
        let rcec = add_rcec(&devices.pci_bus, platform.clone())?;
        let host = KvmDeviceHost::new(
            fd.clone(),
            memory.clone(),
            devices.pci_bus.clone(),
            bar_allocator,
            platform,
            devices.hotplug.clone(),
            rcec,
        );
        let hotplug = Arc::new(Mutex::new(Hotplug::new(
            Box::new(host),
            config.eject_timeout,
            config.reacquire_timeout,
            devices.hotplug_resync.try_clone().map_err(VmmError::EventLoop)?,
        )));
        Ok(Self { kvm, fd, cpuid, memory, phys_bits, devices, config: config.clone(), hotplug, dma_done })
    }

    /// Opens and plugs the validated `--device`s (before the guest boots).
    pub fn attach_vfio_devices(&mut self, hosts: Vec<HostDevice>) -> Result<(), VmmError> {
        let mut hotplug = self.hotplug.lock().map_err(|_| VmmError::Kvm("hotplug lock poisoned".into()))?;
        hotplug.attach_at_boot(hosts)?;
        Ok(())
    }

    /// Waits until guest RAM is DMA-mapped for the devices given at boot: their drivers may
    /// start DMA as soon as the guest runs.
    pub fn wait_for_device_dma(&self) -> Result<(), VmmError> {
        let hotplug = self.hotplug.lock().map_err(|_| VmmError::Kvm("hotplug lock poisoned".into()))?;
        hotplug
            .host
            .wait_dma(crate::passthrough::hotplug::DMA_WAIT)
            .map_err(|e| VmmError::Vfio(crate::passthrough::vfio::VfioError::DmaMap(e)))
    }

    /// Boot's timeline so far (`vm.info` shows it; the rest is marked as boot goes on).
    pub fn set_boot_timeline(&mut self, boot: crate::platform::timeline::Timeline) {
        if let Ok(mut h) = self.hotplug.lock() {
            h.timings.boot = Some(boot);
        }
    }

    fn mark_boot(&self, name: &str) {
        if let Some(boot) = self.hotplug.lock().ok().as_mut().and_then(|h| h.timings.boot.as_mut()) {
            boot.mark(name);
        }
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::json!({
            "cpus": { "boot_vcpus": self.config.cpus },
            "memory": { "size": self.config.memory, "hugepages": self.config.hugepages, "prefault": self.config.prefault },
            "devices": self.config.devices.iter().map(|d| serde_json::json!({
                "path": d.path.display().to_string(), "id": d.id })).collect::<Vec<_>>(),
        })
    }

    /// The PCI MMIO windows (32-bit, and 64-bit when it fits).
    pub fn pci_windows(&self) -> Vec<(u64, u64)> {
        arch::layout::pci_windows(self.config.memory, self.phys_bits)
    }

    /// ACPI description of this VM.
    pub fn acpi_config(&self) -> arch::acpi::AcpiConfig {
        let windows = self.pci_windows();
        arch::acpi::AcpiConfig {
            cpu_count: self.config.cpus,
            pci_mmio32: windows[0],
            pci_mmio64: windows.get(1).copied(),
            hotplug: true,
        }
    }

    /// Starts the vCPUs at `entry` and runs the event loop until the guest exits.
    /// `api`: requests from the API server, served on this thread.
    pub fn run(self, entry: EntryPoint, api: Option<ApiReceiver>) -> Result<GuestExit, VmmError> {
        install_kick_handler()?;
        let exit = Arc::new(ExitSignal::new().map_err(VmmError::EventLoop)?);
        let mut vcpus = Vec::with_capacity(usize::from(self.config.cpus));
        for id in 0..self.config.cpus {
            vcpus.push(create_vcpu(&self.fd, &self.cpuid, id, self.config.cpus, entry)?);
        }
        // VFVMM_COALESCED_PIO=off: every 0xCF8 write exits (an A/B switch for diagnosis; the
        // testbed's stability table in tests/testbed/README.md was measured with it).
        let coalesce = std::env::var_os("VFVMM_COALESCED_PIO").is_none_or(|v| v != "off");
        let ring = vcpus.first().filter(|_| coalesce).map(|vcpu| CoalescedRing::setup(&self.kvm, &self.fd, vcpu));
        let queued_writes = match ring {
            Some(Ok(ring)) => Some(ring),
            Some(Err(e)) => {
                log::info!("PCI config address writes exit to vfvmm: {e}");
                None
            }
            None => None,
        };
        let shared = Arc::new(VcpuShared {
            io: self.devices.io.clone(),
            exit: exit.clone(),
            stop: AtomicBool::new(false),
            pci_windows: self.pci_windows(),
            pause: Default::default(),
            queued_writes,
        });

        let done = Arc::new(AtomicBool::new(false));
        let mut manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
            .map_err(|e| VmmError::EventLoop(std::io::Error::other(format!("{e:?}"))))?;
        let watcher = ExitWatcher::new(
            exit.clone(),
            self.devices.power_off.try_clone().map_err(VmmError::EventLoop)?,
            self.devices.reset.try_clone().map_err(VmmError::EventLoop)?,
            done.clone(),
        );
        manager.add_subscriber(Arc::new(Mutex::new(watcher)));
        let hotplug_watcher = HotplugWatcher::new(
            self.devices.eject_evt.try_clone().map_err(VmmError::EventLoop)?,
            self.devices.hotplug_resync.try_clone().map_err(VmmError::EventLoop)?,
            self.dma_done.try_clone().map_err(VmmError::EventLoop)?,
            self.hotplug.clone(),
        )
        .map_err(VmmError::EventLoop)?;
        manager.add_subscriber(Arc::new(Mutex::new(hotplug_watcher)));
        let signals = TerminationSignals::install(exit.clone()).map_err(VmmError::EventLoop)?;
        manager.add_subscriber(Arc::new(Mutex::new(signals)));
        let _raw_terminal = if self.config.serial == SerialConfig::Tty {
            let rx = self.devices.serial_rx_space.try_clone().map_err(VmmError::EventLoop)?;
            manager.add_subscriber(Arc::new(Mutex::new(ConsoleInput::new(self.devices.serial.clone(), rx))));
            RawTerminal::enter()
        } else {
            None
        };

        self.mark_boot("vCPUs created");
        if self.config.prefault {
            if let Some(vcpu) = vcpus.first() {
                match crate::platform::memory::map_ahead_of_guest(&self.fd, vcpu, &self.memory) {
                    Ok(()) => self.mark_boot("guest RAM mapped ahead of the guest"),
                    Err(e) => log::warn!("prefault: {e}; the guest's first touches map its pages instead"),
                }
            }
        }
        log::info!("VM set up in {} ms; starting {} vCPU(s)", crate::process_age_ms(), vcpus.len());
        let mut handles = Vec::with_capacity(vcpus.len());
        for (id, vcpu) in vcpus.into_iter().enumerate() {
            match VcpuHandle::spawn(id as u8, vcpu, shared.clone()) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    exit.raise(GuestExit::Failed(e.to_string()));
                    break;
                }
            }
        }
        let vcpu_set = Arc::new(VcpuSet::new(shared.clone(), handles));
        crate::process::events::emit("vm", "booted", serde_json::json!({ "vcpus": self.config.cpus }));
        if let Some(rx) = api {
            let handler = ApiHandler::new(rx, vcpu_set.clone(), exit.clone(), self.config_json(), self.hotplug.clone());
            manager.add_subscriber(Arc::new(Mutex::new(handler)));
        }

        // Every other thread is running: the VMM thread's own filter, before any input.
        if let Err(e) = crate::process::seccomp::install_for(crate::process::seccomp::ThreadRole::Vmm) {
            exit.raise(GuestExit::Failed(e.to_string()));
        }
        while !done.load(Ordering::Acquire) {
            if let Err(e) = manager.run() {
                exit.raise(GuestExit::Failed(format!("event loop: {e:?}")));
                break;
            }
        }

        for (id, c) in vcpu_set.stop() {
            log::info!("vcpu{id} exits: {}", c.summary());
        }
        if let Some(boot) = self.hotplug.lock().ok().and_then(|h| h.timings.boot()) {
            log::info!("timing boot: {}", boot.summary());
        }
        // Devices go after the vCPUs, on this (the VMM) thread.
        if let Ok(mut hotplug) = self.hotplug.lock() {
            hotplug.shutdown();
        }
        // The guest's last words, unless the output is blocked (then they are reported lost).
        if let Some(console) = &self.devices.console {
            console.wait(CONSOLE_DRAIN_AT_EXIT);
        }
        let reason = exit.reason().unwrap_or_else(|| GuestExit::Failed("the VM stopped for no recorded reason".into()));
        crate::process::events::emit("vm", "shutdown", serde_json::json!({ "reason": format!("{reason:?}") }));
        if crate::process::events::dropped() > 0 {
            log::warn!(
                "{} event lines dropped (the event monitor's reader did not keep up)",
                crate::process::events::dropped()
            );
        }
        Ok(reason)
    }
}

/// Puts an interactive stdin in raw mode for the guest's console; restores it on drop.
struct RawTerminal;

impl RawTerminal {
    fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        match stdin.lock().set_raw_mode() {
            Ok(()) => Some(Self),
            Err(e) => {
                log::warn!("cannot put the terminal in raw mode: {e}");
                None
            }
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Err(e) = std::io::stdin().lock().set_canon_mode() {
            log::warn!("cannot restore the terminal: {e}");
        }
    }
}

/// The Root Complex Event Collector in its reserved slot: every hotplug slot's function (an
/// RCiEP to the guest) reports its errors through it (see `pci::vfio::recovery`).
fn add_rcec(
    bus: &Arc<std::sync::RwLock<pci::PciBus>>,
    platform: Arc<KvmPlatform>,
) -> Result<Arc<Mutex<pci::rcec::Rcec>>, VmmError> {
    use arch::acpi_hotplug::{FIRST_HOTPLUG_SLOT, LAST_HOTPLUG_SLOT, RCEC_SLOT};
    let slots = (FIRST_HOTPLUG_SLOT..=LAST_HOTPLUG_SLOT).fold(0u32, |bits, s| bits | (1 << s));
    let rcec =
        pci::rcec::Rcec::new(platform, slots).map_err(|e| VmmError::Kvm(format!("cannot create the RCEC: {e}")))?;
    let rcec = Arc::new(Mutex::new(rcec));
    bus.write()
        .map_err(|_| VmmError::Kvm("PCI bus lock poisoned".into()))?
        .add_device_at(RCEC_SLOT, rcec.clone())
        .map_err(|e| VmmError::Kvm(format!("cannot plug the RCEC: {e}")))?;
    Ok(rcec)
}
