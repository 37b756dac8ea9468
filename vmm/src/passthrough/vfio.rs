//! VFIO passthrough at the VM level: validating `--device` paths and the VFIO container (one
//! per VM, with all guest RAM DMA-mapped) with the devices opened in it. The KVM side of
//! passed-through devices is in `kvm_platform.rs`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use kvm_ioctls::VmFd;
use pci::bar::BarKind;
use pci::vfio::device::discover_bars;
use pci::vfio::{LifecycleError, RealVfio, VfioPciDevice};
use pci::{BarAllocator, BarRegion, PciBus};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd};
use vmm_sys_util::eventfd::EventFd;

use crate::passthrough::host_worker::HostWorker;
use crate::platform::config::DeviceConfig;
use crate::platform::kvm_platform::KvmPlatform;
use crate::platform::memory::GuestMemory;
use devices::timing::Milestone;

/// BARs this large go to the 64-bit window.
const LARGE_BAR: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    #[error("{path}: not a PCI device (no such device in sysfs)")]
    NotPciDevice { path: String },
    #[error("{path}: bound to {driver}, not vfio-pci; bind it first: echo vfio-pci > {path}/driver_override; echo {bdf} > /sys/bus/pci/drivers/{driver}/unbind; echo {bdf} > /sys/bus/pci/drivers_probe")]
    WrongDriver { path: String, bdf: String, driver: String },
    #[error("{path}: bound to no driver; bind it to vfio-pci first: echo vfio-pci > {path}/driver_override; echo {bdf} > /sys/bus/pci/drivers_probe")]
    NoDriver { path: String, bdf: String },
    #[error("{path}: has no IOMMU group (is the IOMMU on, e.g. intel_iommu=on?)")]
    NoIommuGroup { path: String },
    #[error(
        "{path}: IOMMU group {group} is not viable: {other} is bound to {driver}; bind every device of the group to vfio-pci"
    )]
    GroupNotViable { path: String, group: u32, other: String, driver: String },
    #[error("{path}: /dev/vfio/{group} is missing")]
    NoGroupNode { path: String, group: u32 },
    #[error("{path}: the same device is given twice")]
    Duplicate { path: String },
    #[error("cannot create the KVM VFIO device: {0}")]
    KvmVfioDevice(kvm_ioctls::Error),
    #[error("cannot open the VFIO container: {0}")]
    Container(String),
    #[error("{path}: cannot open it through VFIO: {reason}")]
    Open { path: String, reason: String },
    #[error("{path}: {reason}")]
    HostBusy { path: String, reason: crate::passthrough::host_worker::HostWorkError },
    #[error("{path}: {reason}")]
    Setup { path: String, reason: String },
    #[error("cannot DMA-map guest memory for VFIO: {0}")]
    DmaMap(String),
}

/// Why a released device could not be taken back.
#[derive(Debug, thiserror::Error)]
pub enum ReacquireError {
    #[error("no device in slot {0}")]
    NoDevice(u8),
    /// The host device could not be opened or set up.
    #[error(transparent)]
    Open(VfioError),
    /// It is not the same kind of device.
    #[error("{0}")]
    Kind(String),
}

fn link_name(path: &Path) -> Option<String> {
    std::fs::read_link(path).ok()?.file_name()?.to_str().map(str::to_string)
}

/// A validated `--device`: the canonical sysfs path, its BDF and IOMMU group.
#[derive(Debug, Clone)]
pub struct HostDevice {
    pub path: PathBuf,
    pub bdf: String,
    pub group: u32,
    pub id: String,
}

/// Where sysfs and /dev are (tests point these at a fake tree).
#[derive(Debug, Clone)]
pub struct HostRoots {
    pub sys: PathBuf,
    pub dev: PathBuf,
}

impl Default for HostRoots {
    fn default() -> Self {
        Self { sys: PathBuf::from("/sys"), dev: PathBuf::from("/dev") }
    }
}

/// Checks that `cfg.path` is a PCI device bound to vfio-pci in a viable IOMMU group, before
/// the VM exists: a bad device changes nothing.
pub fn validate_device(roots: &HostRoots, cfg: &DeviceConfig, index: usize) -> Result<HostDevice, VfioError> {
    let shown = cfg.path.display().to_string();
    // Only sysfs is ever looked at: a caller's path elsewhere (a hung network mount, a FIFO)
    // is refused before it is touched, so validation cannot block the VMM thread.
    let in_sysfs = cfg.path.strip_prefix("/sys").ok().filter(|rest| {
        !rest.as_os_str().is_empty() && rest.components().all(|c| matches!(c, std::path::Component::Normal(_)))
    });
    let under_root = roots.sys.join(in_sysfs.ok_or_else(|| VfioError::NotPciDevice { path: shown.clone() })?);
    let path = under_root.canonicalize().map_err(|_| VfioError::NotPciDevice { path: shown.clone() })?;
    if !path.join("config").is_file() || !path.starts_with(roots.sys.join("devices")) {
        return Err(VfioError::NotPciDevice { path: shown });
    }
    let bdf = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    match link_name(&path.join("driver")) {
        None => return Err(VfioError::NoDriver { path: shown, bdf }),
        Some(d) if d != "vfio-pci" => return Err(VfioError::WrongDriver { path: shown, bdf, driver: d }),
        Some(_) => {}
    }
    let group: u32 = link_name(&path.join("iommu_group"))
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| VfioError::NoIommuGroup { path: shown.clone() })?;
    let members = std::fs::read_dir(roots.sys.join(format!("kernel/iommu_groups/{group}/devices")))
        .map_err(|_| VfioError::NoIommuGroup { path: shown.clone() })?;
    let mut others: Vec<(String, String)> = members
        .flatten()
        .filter_map(|m| Some((m.file_name().to_string_lossy().into_owned(), link_name(&m.path().join("driver"))?)))
        // What the kernel itself accepts in a VFIO group.
        .filter(|(_, driver)| !matches!(driver.as_str(), "vfio-pci" | "pci-stub" | "pcieport"))
        .collect();
    others.sort();
    if let Some((other, driver)) = others.into_iter().next() {
        return Err(VfioError::GroupNotViable { path: shown, group, other, driver });
    }
    if !roots.dev.join(format!("vfio/{group}")).exists() {
        return Err(VfioError::NoGroupNode { path: shown, group });
    }
    Ok(HostDevice { path, bdf, group, id: cfg.id.clone().unwrap_or_else(|| format!("vfio{index}")) })
}

/// Validates every `--device`, rejecting the same device under two names.
pub fn validate_devices(roots: &HostRoots, cfgs: &[DeviceConfig]) -> Result<Vec<HostDevice>, VfioError> {
    let mut out: Vec<HostDevice> = Vec::new();
    for (i, cfg) in cfgs.iter().enumerate() {
        let dev = validate_device(roots, cfg, i)?;
        if out.iter().any(|d| d.path == dev.path) {
            return Err(VfioError::Duplicate { path: cfg.path.display().to_string() });
        }
        out.push(dev);
    }
    Ok(out)
}

/// This process's private directory (mkdtemp, 0700) for the devices' sysfs stand-ins (see
/// `pci::vfio::backend::DeviceAlias`), created on first use.
fn alias_dir() -> std::io::Result<PathBuf> {
    static DIR: std::sync::OnceLock<Result<vmm_sys_util::tempdir::TempDir, String>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let prefix = std::env::temp_dir().join(format!("vfvmm-{}-devices.", std::process::id()));
        vmm_sys_util::tempdir::TempDir::new_with_prefix(prefix).map_err(|e| e.to_string())
    })
    .as_ref()
    .map(|d| d.as_path().to_path_buf())
    .map_err(|e| std::io::Error::other(e.clone()))
}

/// Removes the stand-in directory once no device uses it (at exit).
fn remove_alias_dir() {
    if let Ok(dir) = alias_dir() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// A passed-through device in the VM.
pub struct AttachedDevice {
    pub host: HostDevice,
    pub slot: u8,
    pub device: Arc<Mutex<VfioPciDevice>>,
    /// BAR placements from the allocator, to give back on detach.
    bars: Vec<(u64, u64, BarRegion)>,
    /// When the host finished opening it (the open includes the host's reset of the function).
    pub opened: Milestone,
}

impl AttachedDevice {
    pub fn guest_bdf(&self) -> String {
        format!("0000:00:{:02x}.0", self.slot)
    }
}

/// The VM's VFIO state: one container for every device.
pub struct VfioManager {
    container: Arc<VfioContainer>,
    /// KVM's VFIO device, for new containers.
    kvm_vfio: Arc<VfioDeviceFd>,
    platform: Arc<KvmPlatform>,
    pub devices: Vec<AttachedDevice>,
    /// Whether guest RAM is mapped, or being mapped, into `container` (by a `vfio-dma` thread
    /// started with the first device). Nobody waits for that thread: it holds the container
    /// and the guest memory it maps, so it may outlive a container the VMM replaced.
    dma_started: bool,
    /// Opens, resets and closes host devices with a bound (`host_worker.rs`).
    worker: HostWorker,
}

/// How long the VMM waits for the host to open a device (which resets it).
const OPEN_BOUND: Duration = Duration::from_secs(20);
/// How long the VMM waits for the host to close a device (which resets it).
const CLOSE_BOUND: Duration = Duration::from_secs(10);

impl VfioManager {
    pub fn new(vm: &VmFd, platform: Arc<KvmPlatform>) -> Result<Self, VfioError> {
        let mut desc = kvm_create_device { type_: kvm_device_type_KVM_DEV_TYPE_VFIO, fd: 0, flags: 0 };
        let kvm_vfio = vm.create_device(&mut desc).map_err(VfioError::KvmVfioDevice)?;
        let kvm_vfio = Arc::new(VfioDeviceFd::new_from_kvm(kvm_vfio));
        let container = VfioContainer::new(Some(kvm_vfio.clone())).map_err(|e| VfioError::Container(e.to_string()))?;
        let worker = HostWorker::spawn(crate::process::seccomp::hook(crate::process::seccomp::ThreadRole::HostWorker))
            .map_err(|e| VfioError::Container(e.to_string()))?;
        Ok(Self { container: Arc::new(container), kvm_vfio, platform, devices: Vec::new(), dma_started: false, worker })
    }

    /// Opens `host`, places its BARs, plugs it into the PCI bus and maps guest RAM for DMA.
    /// `request`: signalled when the host asks for the device back.
    pub fn attach(
        &mut self,
        host: HostDevice,
        memory: &GuestMemory,
        bus: &RwLock<PciBus>,
        allocator: &Mutex<BarAllocator>,
        request: Option<&EventFd>,
    ) -> Result<&AttachedDevice, VfioError> {
        let path = host.path.display().to_string();
        let setup = |reason: String| VfioError::Setup { path: path.clone(), reason };
        let backend = self.open(&host, memory, request)?;
        let opened = Milestone::now();
        let bars = discover_bars(backend.as_ref());
        let mut placed: Vec<(u64, u64, BarRegion)> = Vec::new();
        let result = (|| {
            let mut addresses = Vec::new();
            {
                let mut alloc = allocator.lock().map_err(|_| "allocator lock poisoned".to_string())?;
                for bar in bars.iter().filter(|b| b.kind != BarKind::Io) {
                    let region = if bar.size >= LARGE_BAR { BarRegion::Mmio64 } else { BarRegion::Mmio32 };
                    let addr = alloc.allocate(bar.size, region).map_err(|e| format!("BAR {}: {e}", bar.index))?;
                    addresses.push((bar.index, addr));
                    placed.push((addr, bar.size, region));
                }
            }
            let device = Arc::new(Mutex::new(
                VfioPciDevice::new(backend, self.platform.clone(), &bars, &addresses).map_err(|e| e.to_string())?,
            ));
            let slot = bus
                .write()
                .map_err(|_| "PCI bus lock poisoned".to_string())?
                .add_device(device.clone())
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((device, slot))
        })();
        let (device, slot) = match result {
            Ok(ok) => ok,
            Err(reason) => {
                // Nothing of this device stays behind: its BARs go back, and if no device is
                // left the container's mappings are gone with its group.
                if let Ok(mut a) = allocator.lock() {
                    for &(addr, size, region) in &placed {
                        let _ = a.free(addr, size, region);
                    }
                }
                self.forget_dma_if_unbound();
                return Err(setup(reason));
            }
        };
        log::info!("{}: {} at guest {}", host.id, host.bdf, format_args!("0000:00:{slot:02x}.0"));
        self.devices.push(AttachedDevice { host, slot, device, bars: placed, opened });
        Ok(self.devices.last().expect("just pushed"))
    }

    /// Starts DMA-mapping guest RAM unless it is mapped or being mapped. Pinning and mapping
    /// all of guest RAM takes seconds in the nested testbed; it runs on its own thread while the
    /// guest boots (or while a paused VM re-acquires), and devices wait for it before they may
    /// master the bus.
    fn ensure_dma_mapping(&mut self, memory: &GuestMemory) -> Result<(), VfioError> {
        if self.dma_started {
            return Ok(());
        }
        let (container, platform, memory) = (self.container.clone(), self.platform.clone(), memory.clone());
        let generation = platform.dma().generation();
        std::thread::Builder::new()
            .name("vfio-dma".into())
            .spawn(move || {
                if let Err(e) = crate::process::seccomp::install_for(crate::process::seccomp::ThreadRole::DmaMapper) {
                    platform.dma().set(generation, Err(e.to_string()));
                    return;
                }
                let started = std::time::Instant::now();
                // SAFETY: the regions mapped are this thread's clone of the guest memory,
                // reference-counted: they stay mapped while the container (also held here)
                // may use them, even if the VM is torn down first; guest and device share them
                // as DMA memory, which is what they are for.
                let result = unsafe { container.vfio_map_guest_memory(&memory) }.map_err(|e| e.to_string());
                match &result {
                    Ok(()) => log::info!("guest RAM DMA-mapped in {} ms", started.elapsed().as_millis()),
                    Err(e) => log::error!("cannot DMA-map guest memory for VFIO: {e}"),
                }
                platform.dma().set(generation, result);
            })
            .map_err(|e| VfioError::DmaMap(e.to_string()))?;
        self.dma_started = true;
        Ok(())
    }

    /// Opens `host` in the container, makes sure guest RAM is (being) DMA-mapped and arms the
    /// host-request interrupt on `request`: what attach and re-acquire both need.
    fn open(
        &mut self,
        host: &HostDevice,
        memory: &GuestMemory,
        request: Option<&EventFd>,
    ) -> Result<Arc<RealVfio>, VfioError> {
        let started = std::time::Instant::now();
        let open_err = |e: String| VfioError::Open { path: host.path.display().to_string(), reason: e };
        let (bdf, group, container) = (host.bdf.clone(), host.group, self.container.clone());
        let backend = self
            .worker
            .run(&format!("opening {bdf}"), OPEN_BOUND, move || {
                let alias = alias_dir()
                    .and_then(|dir| pci::vfio::backend::DeviceAlias::create(&dir, &bdf, group))
                    .map_err(|e| format!("cannot create its private sysfs stand-in: {e}"))?;
                let vfio = VfioDevice::new(alias.path(), container, false).map_err(|e| e.to_string())?;
                Ok::<_, String>(RealVfio::new(Arc::new(vfio), Some(alias)))
            })
            .map_err(|reason| VfioError::HostBusy { path: host.path.display().to_string(), reason })?
            .map_err(open_err)?;
        log::debug!("{}: opened in {} ms", host.id, started.elapsed().as_millis());
        self.ensure_dma_mapping(memory)?;
        let backend = Arc::new(backend);
        if let Some(fd) = request {
            if let Err(e) = pci::vfio::VfioBackend::enable_request_irq(backend.as_ref(), fd) {
                log::warn!("{}: the host cannot ask for it back: {e}", host.id);
            }
        }
        Ok(backend)
    }

    /// Lets go of the host side of the (quiesced) device in `slot`: its BAR mmaps, device and
    /// group fds; the guest keeps the function. When no device of the VM is bound any more,
    /// the container has lost its DMA mappings with its last group.
    pub fn release(&mut self, slot: u8) -> Result<(), String> {
        let d = self.devices.iter().find(|d| d.slot == slot).ok_or_else(|| format!("no device in slot {slot}"))?;
        log::debug!(
            "{}: releasing {} (iommu_group link {})",
            d.host.id,
            d.host.path.display(),
            if d.host.path.join("iommu_group").exists() { "present" } else { "GONE" }
        );
        let backend =
            d.device.lock().map_err(|_| "device lock poisoned".to_string())?.release().map_err(|e| e.to_string())?;
        // The last reference to the VFIO device: dropping it closes the device and group fds.
        let (id, bdf) = (d.host.id.clone(), d.host.bdf.clone());
        self.close_on_host(&id, &bdf, backend);
        log::info!("{id}: {bdf} released to the host");
        self.forget_dma_if_unbound();
        Ok(())
    }

    /// Binds the released device in `slot` to `host` (its own path again, or another function
    /// of the same kind), with its guest-visible state replayed. It stays quiesced.
    pub fn reacquire(
        &mut self,
        slot: u8,
        host: HostDevice,
        memory: &GuestMemory,
        request: Option<&EventFd>,
    ) -> Result<(), ReacquireError> {
        let index = self.devices.iter().position(|d| d.slot == slot).ok_or(ReacquireError::NoDevice(slot))?;
        let path = host.path.display().to_string();
        let started = std::time::Instant::now();
        let backend = self.open(&host, memory, request).map_err(ReacquireError::Open)?;
        let rebound = self.devices[index]
            .device
            .lock()
            .map_err(|_| ReacquireError::Kind("device lock poisoned".into()))?
            .rebind(backend);
        if let Err(e) = rebound {
            self.forget_dma_if_unbound();
            return Err(match e {
                LifecycleError::Mismatch(m) => ReacquireError::Kind(format!("{path}: {m}")),
                other => ReacquireError::Open(VfioError::Setup { path, reason: other.to_string() }),
            });
        }
        log::info!("{}: re-acquired {} in {} ms", host.id, host.bdf, started.elapsed().as_millis());
        self.devices[index].host = host;
        Ok(())
    }

    /// Takes the device in `slot` out of the VM (after the guest ejected it): quiesced, reset,
    /// unplugged, its BARs given back and its VFIO fds closed, so the host has it back. When
    /// the last device goes, the container loses its DMA mappings; the next attach maps again.
    /// Returns the host device and the milestones of the teardown.
    pub fn detach(
        &mut self,
        slot: u8,
        bus: &RwLock<PciBus>,
        allocator: &Mutex<BarAllocator>,
    ) -> Option<(HostDevice, Vec<(&'static str, Milestone)>)> {
        let index = self.devices.iter().position(|d| d.slot == slot)?;
        let d = self.devices.remove(index);
        let backend = d.device.lock().ok().and_then(|mut dev| dev.take_down());
        let mut milestones = vec![("MSI-X off and BARs unmapped", Milestone::now())];
        if let Some(backend) = backend {
            self.close_on_host(&d.host.id, &d.host.bdf, backend);
            milestones.push(("VF reset and closed: free on the host", Milestone::now()));
        }
        if let Ok(mut b) = bus.write() {
            b.remove_device(slot);
        }
        if let Ok(mut a) = allocator.lock() {
            for &(addr, size, region) in &d.bars {
                let _ = a.free(addr, size, region);
            }
        }
        milestones.push(("unplugged, BAR space given back", Milestone::now()));
        let host = d.host.clone();
        drop(d);
        milestones.push(("device state dropped (MSI routes)", Milestone::now()));
        self.forget_dma_if_unbound();
        milestones.push(("VFIO container released", Milestone::now()));
        log::info!("{}: {} quiesced, reset and released", host.id, host.bdf);
        Some((host, milestones))
    }

    /// With no device bound the container has no group and no DMA mappings: it is replaced by
    /// a fresh one, and the next attach or re-acquire maps guest RAM into that.
    ///
    /// A fresh container, because the old one may hold a dead group: when the host takes a
    /// device back (VF destroyed, driver unbound), the kernel detaches the group from the
    /// container as soon as the device fd closes, vfio-ioctls' UNSET_CONTAINER then fails and
    /// it keeps the group cached; a re-created VF in an IOMMU group of the same number would get
    /// that dead group (ENODEV on open).
    fn forget_dma_if_unbound(&mut self) {
        let bound = self.devices.iter().any(|d| d.device.lock().map(|dev| !dev.is_released()).unwrap_or(true));
        if !bound {
            self.dma_started = false;
            self.platform.dma().reset();
            match VfioContainer::new(Some(self.kvm_vfio.clone())) {
                Ok(c) => self.container = Arc::new(c),
                Err(e) => log::warn!("cannot open a new VFIO container, keeping the old one: {e}"),
            }
        }
    }

    /// Quiesces and releases every device (MSI-X off and BARs unmapped, function reset).
    pub fn shutdown(&mut self) {
        self.shutdown_devices();
        remove_alias_dir();
    }

    fn shutdown_devices(&mut self) {
        for d in std::mem::take(&mut self.devices) {
            let Ok(mut dev) = d.device.lock() else { continue };
            for (bar, n) in dev.forwarded_accesses() {
                log::info!("{} BAR{bar}: {n} trapped accesses forwarded to the device", d.host.id);
            }
            if let Some(backend) = dev.take_down() {
                drop(dev);
                self.close_on_host(&d.host.id, &d.host.bdf, backend);
            }
            log::info!("{}: {} quiesced, reset and released", d.host.id, d.host.bdf);
        }
    }

    /// Closes a host device that nothing maps any more on the `vfio-host` thread, waiting at
    /// most [`CLOSE_BOUND`]; past the bound the VMM goes on and the host gets the device when
    /// its kernel finishes. Closing the last fd is what gives the device back clean: vfio-pci
    /// clears its bus mastering, disables its interrupts and resets the function (FLR), so
    /// vfvmm does not reset it first (that would reset it twice; each reset is a wait).
    fn close_on_host(&self, id: &str, bdf: &str, backend: Arc<dyn pci::vfio::VfioBackend>) {
        let closed = self.worker.drop_there(&format!("closing {bdf}"), CLOSE_BOUND, backend);
        if let Err(e) = closed {
            log::error!("{id}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake sysfs: VF 0000:01:10.0 (vfio-pci, group 8), VF 0000:01:10.2 (igbvf, group 9),
    /// 0000:02:00.0 (vfio-pci) sharing group 10 with 0000:02:00.1 (e1000e).
    fn tree() -> (PathBuf, HostRoots) {
        let base =
            std::env::temp_dir().join(format!("vfvmm-sysfs-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&base);
        let sys = base.join("sys");
        let dev = base.join("dev");
        for d in ["bus/pci/devices", "bus/pci/drivers/vfio-pci", "bus/pci/drivers/igbvf", "bus/pci/drivers/e1000e"] {
            std::fs::create_dir_all(sys.join(d)).unwrap();
        }
        std::fs::create_dir_all(dev.join("vfio")).unwrap();
        for (bdf, driver, group) in [
            ("0000:01:10.0", "vfio-pci", 8),
            ("0000:01:10.2", "igbvf", 9),
            ("0000:02:00.0", "vfio-pci", 10),
            ("0000:02:00.1", "e1000e", 10),
        ] {
            let d = sys.join("devices/pci0000:00").join(bdf);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("config"), [0u8; 64]).unwrap();
            symlink(sys.join("bus/pci/drivers").join(driver), d.join("driver")).unwrap();
            let g = sys.join(format!("kernel/iommu_groups/{group}"));
            std::fs::create_dir_all(g.join("devices")).unwrap();
            symlink(&g, d.join("iommu_group")).unwrap();
            symlink(&d, g.join("devices").join(bdf)).unwrap();
            symlink(&d, sys.join("bus/pci/devices").join(bdf)).unwrap();
            std::fs::write(dev.join(format!("vfio/{group}")), b"").unwrap();
        }
        (base, HostRoots { sys, dev })
    }

    fn cfg(bdf: &str) -> DeviceConfig {
        DeviceConfig { path: PathBuf::from(format!("/sys/bus/pci/devices/{bdf}")), id: None }
    }

    #[test]
    fn a_vfio_bound_vf_in_its_own_group_is_accepted() {
        let (base, roots) = tree();
        let d = validate_device(&roots, &cfg("0000:01:10.0"), 0).unwrap();
        assert_eq!((d.bdf.as_str(), d.group, d.id.as_str()), ("0000:01:10.0", 8, "vfio0"));
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn bad_devices_are_refused_with_the_fix() {
        let (base, roots) = tree();
        let err = |bdf: &str| validate_device(&roots, &cfg(bdf), 0).unwrap_err().to_string();
        assert!(err("0000:99:00.0").contains("not a PCI device"));
        let e = err("0000:01:10.2");
        assert!(e.contains("bound to igbvf") && e.contains("driver_override") && e.contains("drivers_probe"), "{e}");
        let e = err("0000:02:00.0");
        assert!(e.contains("IOMMU group 10 is not viable: 0000:02:00.1 is bound to e1000e"), "{e}");
        std::fs::remove_file(roots.dev.join("vfio/8")).unwrap();
        assert!(err("0000:01:10.0").contains("/dev/vfio/8 is missing"));
        let _ = std::fs::remove_dir_all(base);
    }

    /// Validation only ever touches sysfs: a caller's path anywhere else is refused before it
    /// is looked at (it could be a hung mount), even a complete device tree.
    #[test]
    fn paths_outside_sysfs_are_refused_untouched() {
        let (base, roots) = tree();
        let real = roots.sys.join("devices/pci0000:00/0000:01:10.0");
        assert!(real.join("config").is_file());
        for path in [
            real.clone(),
            PathBuf::from("/sys/bus/pci/devices/../../../tmp/0000:01:10.0"),
            PathBuf::from("/sys"),
            PathBuf::from("bus/pci/devices/0000:01:10.0"),
        ] {
            let e = validate_device(&roots, &DeviceConfig { path: path.clone(), id: None }, 0).unwrap_err();
            assert!(matches!(e, VfioError::NotPciDevice { .. }), "{}: {e}", path.display());
        }
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn the_same_device_twice_is_refused() {
        let (base, roots) = tree();
        let e = validate_devices(&roots, &[cfg("0000:01:10.0"), cfg("0000:01:10.0")]).unwrap_err();
        assert!(e.to_string().contains("given twice"));
        let _ = std::fs::remove_dir_all(base);
    }
}
