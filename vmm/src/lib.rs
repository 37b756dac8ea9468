//! vfvmm's VMM core: configuration, VM lifecycle, vCPU threads, the event loop and devices.

pub mod control;
pub mod passthrough;
pub mod platform;
pub mod process;
pub mod vcpus;
pub mod vm;

pub use platform::config::{Cli, KernelConfig, VmConfig};
pub use vcpus::vcpu::GuestExit;

/// Process exit codes of `vfvmm`.
pub mod exit_code {
    /// The guest powered off (ACPI S5) or the VMM was asked to shut down.
    pub const POWER_OFF: i32 = 0;
    /// Bad input or a VMM failure; the message says which.
    pub const ERROR: i32 = 1;
    /// The guest asked for a reset (`reboot`, triple fault). vfvmm does not restart guests.
    pub const GUEST_RESET: i32 = 3;
    // A termination signal (SIGTERM, SIGINT, SIGHUP) stops the VM cleanly and exits 128 + signal.
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{0}")]
    Kvm(String),
    #[error(transparent)]
    Memory(#[from] platform::memory::MemoryError),
    #[error(transparent)]
    Devices(#[from] platform::device_manager::DeviceManagerError),
    #[error(transparent)]
    Boot(#[from] platform::boot::BootError),
    #[error(transparent)]
    Vcpu(#[from] vcpus::vcpu::VcpuError),
    #[error("event loop: {0}")]
    EventLoop(std::io::Error),
    /// Device errors name the device's path; on the command line, the option too.
    #[error("--device: {0}")]
    Vfio(#[from] passthrough::vfio::VfioError),
    #[error(transparent)]
    Api(#[from] api::ApiServerError),
    #[error(transparent)]
    Seccomp(#[from] process::seccomp::SeccompError),
    #[error("VM registry: {0}")]
    Registry(#[from] api::host::registry::RegistryError),
    #[error("cannot start the log thread: {0}")]
    LogThread(std::io::Error),
}

impl GuestExit {
    pub fn exit_code(&self) -> i32 {
        match self {
            GuestExit::PowerOff | GuestExit::VmmShutdown => exit_code::POWER_OFF,
            GuestExit::Reset => exit_code::GUEST_RESET,
            GuestExit::Failed(_) => exit_code::ERROR,
            GuestExit::Terminated(signal) => 128 + signal,
        }
    }
}

/// The process's logger (see [`process::logging`]).
pub fn init_logging() {
    process::logging::init();
}

/// Logs `vfvmm: error: MESSAGE` (whatever the log level) and exits with [`exit_code::ERROR`].
pub fn fail(message: impl std::fmt::Display) -> ! {
    process::logging::write_line(&format!("vfvmm: error: {message}"));
    process::logging::flush(process::logging::LOG_DRAIN_AT_EXIT);
    std::process::exit(exit_code::ERROR);
}

/// Ends the process as a VM's run came out: the guest's exit code, or an error line.
pub fn exit_with(result: Result<GuestExit, VmmError>) -> ! {
    match result {
        Ok(GuestExit::Failed(reason)) => fail(format!("the guest stopped: {reason}")),
        Ok(guest_exit) => {
            log::info!("guest exit: {guest_exit:?}");
            process::logging::flush(process::logging::LOG_DRAIN_AT_EXIT);
            std::process::exit(guest_exit.exit_code());
        }
        Err(e) => fail(e),
    }
}

/// Milliseconds since this process started (from /proc/self/stat), for start-up timing logs.
pub fn process_age_ms() -> u64 {
    let start_ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(19)?.parse::<u64>().ok()));
    let uptime =
        std::fs::read_to_string("/proc/uptime").ok().and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok());
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    match (start_ticks, uptime) {
        (Some(t), Some(up)) => ((up - t as f64 / hz) * 1000.0).max(0.0) as u64,
        _ => 0,
    }
}

/// From here on, log lines never block (the `log` thread writes them to stderr).
fn start_log_thread() -> Result<(), VmmError> {
    process::logging::start_thread(process::seccomp::hook(process::seccomp::ThreadRole::Log))
        .map_err(VmmError::LogThread)
}

/// Starts the API thread on a socket bound earlier; the server removes the socket when dropped.
fn start_api(
    listener: Option<std::os::unix::net::UnixListener>,
    config: &VmConfig,
) -> Result<(Option<api::ApiServer>, Option<api::ApiReceiver>), VmmError> {
    match (listener, config.api_socket.as_deref()) {
        (Some(l), Some(path)) => {
            let (server, rx) =
                api::rest::server::start_with_init(l, path, process::seccomp::hook(process::seccomp::ThreadRole::Api))?;
            Ok((Some(server), Some(rx)))
        }
        _ => Ok((None, None)),
    }
}

/// Registers a VM that has an API socket in the registry of running VMs (until dropped).
fn register(config: &VmConfig) -> Result<Option<api::host::registry::Registration>, VmmError> {
    let Some(socket) = config.api_socket.as_deref() else {
        return Ok(None);
    };
    let pid = std::process::id();
    let socket = match (socket.parent().filter(|p| !p.as_os_str().is_empty()), socket.file_name()) {
        (Some(dir), Some(file)) => std::fs::canonicalize(dir).map(|d| d.join(file)).unwrap_or(socket.to_path_buf()),
        _ => std::env::current_dir().map(|d| d.join(socket)).unwrap_or(socket.to_path_buf()),
    };
    let record = api::host::registry::VmRecord {
        name: config.name.clone().unwrap_or_else(|| format!("vfvmm-{pid}")),
        pid,
        socket,
        started: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        events: process::events::path().map(std::path::Path::to_path_buf),
    };
    Ok(Some(api::host::registry::register(&config.run_dir, &record)?))
}

/// Boots a Linux guest and runs it to completion.
pub fn run_linux(kernel: &KernelConfig, config: &VmConfig) -> Result<GuestExit, VmmError> {
    // Devices and the API socket are checked before anything is created: bad input leaves
    // everything as it was.
    let mut boot = platform::timeline::Timeline::from_process_start();
    boot.mark("vfvmm started");
    process::seccomp::set_mode(config.seccomp)?;
    start_log_thread()?;
    let host_devices = passthrough::vfio::validate_devices(&passthrough::vfio::HostRoots::default(), &config.devices)?;
    let listener = config.api_socket.as_deref().map(api::rest::server::bind).transpose()?;
    let _registration = register(config)?;
    boot.mark("devices checked and API socket bound");
    let mut vm = vm::Vm::new(config)?;
    boot.mark("VM created (memory + irqchip + devices)");
    vm.attach_vfio_devices(host_devices)?;
    if !config.devices.is_empty() {
        boot.mark("VFIO devices opened and placed");
    }
    let entry = platform::boot::load_linux(&vm.memory, kernel, config.memory, &vm.acpi_config())?;
    boot.mark("kernel loaded");
    if !config.devices.is_empty() {
        vm.wait_for_device_dma()?;
        boot.mark("guest RAM DMA-mapped for the devices");
    }
    // The server lives until the VM is gone; dropping it removes the socket file.
    let (_server, receiver) = start_api(listener, config)?;
    vm.set_boot_timeline(boot);
    vm.run(entry, receiver)
}

/// Runs a flat 16-bit real-mode payload loaded at `load_address` (used to test the VMM core
/// with hand-assembled guests).
pub fn run_flat(code: &[u8], load_address: u64, config: &VmConfig) -> Result<GuestExit, VmmError> {
    process::seccomp::set_mode(config.seccomp)?;
    start_log_thread()?;
    let listener = config.api_socket.as_deref().map(api::rest::server::bind).transpose()?;
    let _registration = register(config)?;
    let vm = vm::Vm::new(config)?;
    let entry = platform::boot::load_flat(&vm.memory, code, load_address)?;
    let (_server, receiver) = start_api(listener, config)?;
    vm.run(entry, receiver)
}
