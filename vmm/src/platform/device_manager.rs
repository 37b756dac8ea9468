//! Creates the platform devices and wires them to the port-I/O and MMIO buses and to KVM
//! interrupts.

use std::fs::File;
use std::sync::{Arc, Mutex, RwLock};

use arch::acpi_hotplug::{GED_GSI, HOTPLUG_PORT, HOTPLUG_PORT_LEN};
use arch::layout::*;
use devices::cmos::{Cmos, CMOS_PORT, CMOS_PORT_COUNT};
use devices::console::{self, ConsoleDrain};
use devices::hotplug::HotplugRegisters;
use devices::power::{
    AcpiPmDevice, I8042Reset, PowerEvents, ACPI_PM_PORT, ACPI_PM_PORT_COUNT, I8042_COMMAND_PORT, I8042_DATA_PORT,
};
use devices::serial::{SerialDevice, SerialOut};
use kvm_ioctls::VmFd;
use pci::config_access::{PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_PORT_SIZE};
use pci::{PciBus, PciConfigIo, PciConfigMmio, PciHostBridge};
use vm_device::bus::{BusRange, MmioAddress, PioAddress};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vm_device::{DeviceMmio, DevicePio};
use vmm_sys_util::eventfd::EventFd;

use crate::platform::config::SerialConfig;
use crate::platform::kvm_platform::BarRouter;

#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot open serial output file '{path}': {source}")]
    SerialFile { path: String, source: std::io::Error },
    #[error("cannot start the console thread: {0}")]
    Console(std::io::Error),
    #[error("cannot wire IRQ {irq} to KVM: {source}")]
    Irqfd { irq: u32, source: kvm_ioctls::Error },
    #[error("cannot register {what} on the I/O bus: {source:?}")]
    Bus { what: &'static str, source: vm_device::bus::Error },
    #[error("PCI: {0}")]
    Pci(#[from] pci::bus::PciBusError),
}

/// The devices the VMM thread still talks to after set-up.
pub struct Devices {
    pub io: Arc<RwLock<IoManager>>,
    pub serial: Arc<Mutex<SerialDevice>>,
    /// Signalled when the guest drains the serial receive FIFO.
    pub serial_rx_space: EventFd,
    pub power_off: EventFd,
    pub reset: EventFd,
    pub pci_bus: Arc<RwLock<PciBus>>,
    /// Trapped parts of passed-through BARs.
    pub bar_router: Arc<BarRouter>,
    /// PCI hotplug / GED registers, and the eventfd signalled when the guest ejects a slot.
    pub hotplug: Arc<Mutex<HotplugRegisters>>,
    pub eject_evt: EventFd,
    /// Tells the event loop the set of host-request eventfds changed.
    pub hotplug_resync: EventFd,
    /// Buffered console output, drained (for a bounded time) at exit.
    pub console: Option<ConsoleDrain>,
}

fn eventfd() -> Result<EventFd, DeviceManagerError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)
}

fn clone_fd(fd: &EventFd) -> Result<EventFd, DeviceManagerError> {
    fd.try_clone().map_err(DeviceManagerError::EventFd)
}

/// The serial port's output: stdout or a file behind a console thread (a vCPU never blocks
/// on it), or nothing.
fn serial_output(cfg: &SerialConfig) -> Result<(SerialOut, Option<ConsoleDrain>), DeviceManagerError> {
    let out: Box<dyn std::io::Write + Send> = match cfg {
        SerialConfig::Tty => Box::new(std::io::stdout()),
        SerialConfig::Off => return Ok((Box::new(std::io::sink()), None)),
        SerialConfig::File(path) => Box::new(
            File::create(path)
                .map_err(|source| DeviceManagerError::SerialFile { path: path.display().to_string(), source })?,
        ),
    };
    let (writer, drain) = console::spawn_with_init(
        "console",
        out,
        console::CONSOLE_BUFFER,
        crate::process::seccomp::hook(crate::process::seccomp::ThreadRole::Console),
    )
    .map_err(DeviceManagerError::Console)?;
    Ok((Box::new(writer), Some(drain)))
}

fn register_pio(
    io: &mut IoManager,
    what: &'static str,
    base: u16,
    len: u16,
    dev: Arc<dyn DevicePio + Send + Sync>,
) -> Result<(), DeviceManagerError> {
    let range = BusRange::new(PioAddress(base), len).map_err(|source| DeviceManagerError::Bus { what, source })?;
    io.register_pio(range, dev).map_err(|source| DeviceManagerError::Bus { what, source })
}

fn register_mmio(
    io: &mut IoManager,
    what: &'static str,
    base: u64,
    len: u64,
    dev: Arc<dyn DeviceMmio + Send + Sync>,
) -> Result<(), DeviceManagerError> {
    let range = BusRange::new(MmioAddress(base), len).map_err(|source| DeviceManagerError::Bus { what, source })?;
    io.register_mmio(range, dev).map_err(|source| DeviceManagerError::Bus { what, source })
}

/// Builds every platform device for `vm`.
pub fn create_devices(
    vm: &VmFd,
    serial_cfg: &SerialConfig,
    pci_windows: &[(u64, u64)],
) -> Result<Devices, DeviceManagerError> {
    let mut io = IoManager::new();

    let (serial_out, console) = serial_output(serial_cfg)?;
    let serial_irq = eventfd()?;
    vm.register_irqfd(&serial_irq, COM1_IRQ).map_err(|source| DeviceManagerError::Irqfd { irq: COM1_IRQ, source })?;
    let serial_rx_space = eventfd()?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, clone_fd(&serial_rx_space)?, serial_out)));
    register_pio(&mut io, "serial", COM1_PORT, 8, serial.clone())?;

    register_pio(&mut io, "cmos", CMOS_PORT, CMOS_PORT_COUNT, Arc::new(Mutex::new(Cmos::default())))?;

    let power_off = eventfd()?;
    let reset = eventfd()?;
    let pm = AcpiPmDevice::new(
        PowerEvents { power_off: clone_fd(&power_off)?, reset: clone_fd(&reset)? },
        ACPI_S5_SLEEP_TYPE,
        ACPI_RESET_VALUE,
    );
    register_pio(&mut io, "acpi-pm", ACPI_PM_PORT, ACPI_PM_PORT_COUNT, Arc::new(Mutex::new(pm)))?;
    let i8042 = Arc::new(Mutex::new(I8042Reset::new(clone_fd(&reset)?)));
    register_pio(&mut io, "i8042", I8042_DATA_PORT, 1, i8042.clone())?;
    register_pio(&mut io, "i8042", I8042_COMMAND_PORT, 1, i8042)?;

    let mut bus = PciBus::new();
    bus.add_device_at(0, Arc::new(Mutex::new(PciHostBridge::default())))?;
    let pci_bus = Arc::new(RwLock::new(bus));
    register_pio(
        &mut io,
        "pci-config-io",
        PCI_CONFIG_IO_PORT,
        PCI_CONFIG_IO_PORT_SIZE,
        Arc::new(Mutex::new(PciConfigIo::new(pci_bus.clone()))),
    )?;
    register_mmio(
        &mut io,
        "pci-ecam",
        PCI_ECAM_START,
        PCI_ECAM_SIZE,
        Arc::new(Mutex::new(PciConfigMmio::new(pci_bus.clone()))),
    )?;

    let ged_irq = eventfd()?;
    vm.register_irqfd(&ged_irq, GED_GSI).map_err(|source| DeviceManagerError::Irqfd { irq: GED_GSI, source })?;
    let eject_evt = eventfd()?;
    let hotplug = Arc::new(Mutex::new(HotplugRegisters::new(ged_irq, clone_fd(&eject_evt)?)));
    register_pio(&mut io, "pci-hotplug", HOTPLUG_PORT, HOTPLUG_PORT_LEN, hotplug.clone())?;

    let bar_router = Arc::new(BarRouter::default());
    for &(base, size) in pci_windows {
        register_mmio(&mut io, "pci-bars", base, size, bar_router.clone())?;
    }

    Ok(Devices {
        io: Arc::new(RwLock::new(io)),
        serial,
        serial_rx_space,
        power_off,
        reset,
        pci_bus,
        bar_router,
        hotplug,
        eject_evt,
        hotplug_resync: eventfd()?,
        console,
    })
}
