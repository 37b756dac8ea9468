//! vCPU threads: set-up of the architectural state, the KVM_RUN loop and exit dispatch.
//!
//! Each vCPU runs on its own thread named `vcpu<N>`. A vCPU thread never tears devices down;
//! it reports guest-initiated exits to the VMM thread through [`ExitSignal`] and stops when
//! the VMM thread asks it to (a stop flag plus a signal that interrupts KVM_RUN).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use devices::ratelimit::RateLimiter;
use devices::warn_ratelimited;
use kvm_bindings::{CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_device::bus::{MmioAddress, PioAddress};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::platform::boot::EntryPoint;
use crate::vcpus::coalesced_io::CoalescedRing;
use crate::vcpus::exit_counters::ExitCounters;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot create vCPU {id}: {source}")]
    Create { id: u8, source: kvm_ioctls::Error },
    #[error("vCPU {id}: cannot set {what}: {source}")]
    Setup { id: u8, what: &'static str, source: kvm_ioctls::Error },
    #[error("vCPU {id}: cannot build the MSR list: {reason}")]
    Msrs { id: u8, reason: String },
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    #[error("cannot start thread vcpu{id}: {source}")]
    Spawn { id: u8, source: std::io::Error },
}

/// Why the guest stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestExit {
    /// ACPI S5 or `vmm.shutdown`.
    PowerOff,
    /// Reboot request or triple fault: vfvmm does not restart guests.
    Reset,
    /// The VM cannot continue.
    Failed(String),
    /// `vmm.shutdown` through the API.
    VmmShutdown,
    /// vfvmm received this termination signal (SIGTERM, SIGINT, SIGHUP).
    Terminated(i32),
}

/// First-reason-wins notification from any thread to the VMM thread.
pub struct ExitSignal {
    pub evt: EventFd,
    reason: Mutex<Option<GuestExit>>,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self { evt: EventFd::new(libc::EFD_NONBLOCK)?, reason: Mutex::new(None) })
    }

    pub fn raise(&self, exit: GuestExit) {
        if let Ok(mut r) = self.reason.lock() {
            r.get_or_insert(exit);
        }
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot notify the VMM thread of a guest exit: {e}");
        }
    }

    pub fn reason(&self) -> Option<GuestExit> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }
}

static UNHANDLED_LOG: Mutex<RateLimiter> = Mutex::new(RateLimiter::new(10, Duration::from_secs(1)));

/// Everything a vCPU thread shares with the rest of the VMM.
pub struct VcpuShared {
    pub io: Arc<RwLock<IoManager>>,
    pub exit: Arc<ExitSignal>,
    pub stop: AtomicBool,
    /// PCI MMIO windows, for the exit counters.
    pub pci_windows: Vec<(u64, u64)>,
    pub pause: PauseGate,
    /// Guest writes KVM queued instead of exiting (the PCI config address port), when KVM can.
    pub queued_writes: Option<CoalescedRing>,
}

impl VcpuShared {
    /// A guest port write to the bus; whether a device took it.
    fn pio_write(&self, port: u16, data: &[u8]) -> bool {
        self.io.read().map(|io| io.pio_write(PioAddress(port), data).is_ok()).unwrap_or(false)
    }

    /// A guest MMIO write to the bus; whether a device took it.
    fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        self.io.read().map(|io| io.mmio_write(MmioAddress(addr), data).is_ok()).unwrap_or(false)
    }

    /// Replays the writes KVM queued before the exit being handled, so that the exit's access
    /// sees them; counts them in `counters`.
    fn replay_queued_writes(&self, counters: &mut ExitCounters) {
        let Some(ring) = &self.queued_writes else { return };
        let replayed = ring.replay(|w| {
            if w.pio {
                counters.unhandled_pio += u64::from(!self.pio_write(w.addr as u16, w.bytes()));
            } else {
                counters.unhandled_mmio += u64::from(!self.mmio_write(w.addr, w.bytes()));
            }
        });
        counters.queued_writes += replayed as u64;
    }
}

/// Parks vCPU threads between KVM_RUNs while a pause is requested.
#[derive(Default)]
pub struct PauseGate {
    state: Mutex<PauseState>,
    changed: Condvar,
}

#[derive(Default)]
struct PauseState {
    requested: bool,
    parked: usize,
}

impl PauseGate {
    /// Called by a vCPU thread between runs: waits while paused (or until `stop`).
    /// `on_park` runs once before the thread reports itself parked.
    fn park_if_requested(&self, stop: &AtomicBool, on_park: impl FnOnce()) {
        let Ok(mut s) = self.state.lock() else { return };
        if !s.requested {
            return;
        }
        on_park();
        s.parked += 1;
        self.changed.notify_all();
        while s.requested && !stop.load(Ordering::Acquire) {
            s = match self.changed.wait_timeout(s, Duration::from_millis(100)) {
                Ok((guard, _)) => guard,
                Err(_) => return,
            };
        }
        s.parked -= 1;
        self.changed.notify_all();
    }

    pub fn set_requested(&self, requested: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.requested = requested;
        }
        self.changed.notify_all();
    }

    pub fn parked(&self) -> usize {
        self.state.lock().map(|s| s.parked).unwrap_or(0)
    }

    /// Waits until `total` vCPUs are parked or `deadline` passes; returns how many are.
    pub fn wait_parked(&self, total: usize, deadline: std::time::Instant) -> usize {
        let Ok(mut s) = self.state.lock() else {
            return 0;
        };
        while s.parked < total {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            s = match self.changed.wait_timeout(s, deadline - now) {
                Ok((guard, _)) => guard,
                Err(_) => return 0,
            };
        }
        s.parked
    }
}

thread_local! {
    /// This thread's `kvm_run.immediate_exit` (null on threads that run no vCPU).
    static IMMEDIATE_EXIT: std::cell::Cell<*mut u8> = const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// The kick signal interrupts KVM_RUN; a kick that lands just before KVM_RUN is entered is not
/// lost either: the handler sets `immediate_exit`, so that KVM_RUN returns at once.
extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let flag = IMMEDIATE_EXIT.with(|f| f.get());
    if !flag.is_null() {
        // SAFETY: `flag` points into this thread's mmapped kvm_run, which lives until the vCPU
        // thread clears the pointer (before its VcpuFd is dropped); a volatile byte store is
        // async-signal-safe.
        unsafe { std::ptr::write_volatile(flag, 1) };
    }
}

pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(kick_signal(), kick_handler).map_err(VcpuError::Signal)
}

/// Creates and configures vCPU `id` of `count`.
pub fn create_vcpu(vm: &VmFd, base_cpuid: &CpuId, id: u8, count: u8, entry: EntryPoint) -> Result<VcpuFd, VcpuError> {
    let setup = |what, source| VcpuError::Setup { id, what, source };
    let vcpu = vm.create_vcpu(u64::from(id)).map_err(|source| VcpuError::Create { id, source })?;

    let mut cpuid = base_cpuid.clone();
    arch::cpuid::patch_cpuid(cpuid.as_mut_slice(), id, count);
    vcpu.set_cpuid2(&cpuid).map_err(|e| setup("CPUID", e))?;

    let entries = arch::msr::boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(|e| VcpuError::Msrs { id, reason: format!("{e:?}") })?;
    let written = vcpu.set_msrs(&msrs).map_err(|e| setup("MSRs", e))?;
    if written != entries.len() {
        log::debug!("vcpu{id}: KVM accepted {written} of {} boot MSRs", entries.len());
    }

    let mut lapic = vcpu.get_lapic().map_err(|e| setup("LAPIC", e))?;
    arch::lapic::set_lint(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(|e| setup("LAPIC", e))?;
    vcpu.set_fpu(&arch::regs::boot_fpu()).map_err(|e| setup("FPU", e))?;

    if id == 0 {
        let sregs = vcpu.get_sregs().map_err(|e| setup("special registers", e))?;
        match entry {
            EntryPoint::Linux64 { rip } => {
                vcpu.set_sregs(&arch::regs::long_mode_sregs(sregs)).map_err(|e| setup("special registers", e))?;
                vcpu.set_regs(&arch::regs::linux_entry_regs(rip)).map_err(|e| setup("registers", e))?;
            }
            EntryPoint::RealMode { load_address } => {
                let mut sregs = sregs;
                sregs.cs.base = load_address;
                sregs.cs.selector = (load_address >> 4) as u16;
                vcpu.set_sregs(&sregs).map_err(|e| setup("special registers", e))?;
                let regs = kvm_bindings::kvm_regs { rip: 0, rflags: 2, ..Default::default() };
                vcpu.set_regs(&regs).map_err(|e| setup("registers", e))?;
            }
        }
    }
    Ok(vcpu)
}

/// What one exit asks the loop to do next.
enum Next {
    Continue,
    Stop,
}

fn handle_exit(id: u8, exit: VcpuExit, shared: &VcpuShared, counters: &mut ExitCounters) -> Next {
    if matches!(exit, VcpuExit::IoIn(..) | VcpuExit::IoOut(..) | VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..)) {
        shared.replay_queued_writes(counters);
    }
    match exit {
        VcpuExit::IoIn(port, data) => {
            let handled = shared.io.read().map(|io| io.pio_read(PioAddress(port), data).is_ok()).unwrap_or(false);
            counters.record_pio(port, handled);
            if !handled {
                data.fill(0xff);
            }
        }
        VcpuExit::IoOut(port, data) => {
            let handled = shared.pio_write(port, data);
            counters.record_pio(port, handled);
        }
        VcpuExit::MmioRead(addr, data) => {
            let handled = shared.io.read().map(|io| io.mmio_read(MmioAddress(addr), data).is_ok()).unwrap_or(false);
            counters.record_mmio(addr, handled, &shared.pci_windows);
            if !handled {
                warn_ratelimited!(
                    &UNHANDLED_LOG,
                    "vcpu{id}: read of {} bytes at unassigned MMIO {addr:#x}",
                    data.len()
                );
                data.fill(0xff);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            let handled = shared.mmio_write(addr, data);
            counters.record_mmio(addr, handled, &shared.pci_windows);
            if !handled {
                warn_ratelimited!(
                    &UNHANDLED_LOG,
                    "vcpu{id}: write of {} bytes at unassigned MMIO {addr:#x}",
                    data.len()
                );
            }
        }
        VcpuExit::Hlt => {
            // Only seen without an in-kernel LAPIC; nothing to do but run again.
        }
        VcpuExit::Shutdown => {
            log::info!("vcpu{id}: triple fault, treating it as a reset");
            shared.exit.raise(GuestExit::Reset);
            return Next::Stop;
        }
        VcpuExit::SystemEvent(kind, _) => {
            let exit = match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => GuestExit::PowerOff,
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => GuestExit::Reset,
                other => GuestExit::Failed(format!("vcpu{id}: system event {other}")),
            };
            shared.exit.raise(exit);
            return Next::Stop;
        }
        VcpuExit::FailEntry(reason, cpu) => {
            shared.exit.raise(GuestExit::Failed(format!(
                "vcpu{id}: KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu})"
            )));
            return Next::Stop;
        }
        VcpuExit::InternalError => {
            shared.exit.raise(GuestExit::Failed(format!("vcpu{id}: KVM internal error")));
            return Next::Stop;
        }
        other => {
            warn_ratelimited!(&UNHANDLED_LOG, "vcpu{id}: unexpected exit {other:?}");
        }
    }
    Next::Continue
}

fn run_loop(id: u8, mut vcpu: VcpuFd, shared: Arc<VcpuShared>) -> ExitCounters {
    let mut counters = ExitCounters::default();
    if let Err(e) = crate::process::seccomp::install_for(crate::process::seccomp::ThreadRole::Vcpu) {
        shared.exit.raise(GuestExit::Failed(format!("vcpu{id}: {e}")));
        return counters;
    }
    IMMEDIATE_EXIT.with(|f| f.set(&mut vcpu.get_kvm_run().immediate_exit));
    devices::timing::FIRST_VCPU_ENTRY.reach();
    while !shared.stop.load(Ordering::Acquire) {
        shared.pause.park_if_requested(&shared.stop, || {
            // The guest's clock jumps on resume; tell it it was paused (no soft-lockup reports).
            if let Err(e) = vcpu.kvmclock_ctrl() {
                log::debug!("vcpu{id}: KVM_KVMCLOCK_CTRL: {e}");
            }
        });
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        match vcpu.run() {
            Ok(exit) => {
                if let Next::Stop = handle_exit(id, exit, &shared, &mut counters) {
                    break;
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => vcpu.set_kvm_immediate_exit(0),
            Err(e) => {
                shared.exit.raise(GuestExit::Failed(format!("vcpu{id}: KVM_RUN failed: {e}")));
                break;
            }
        }
    }
    IMMEDIATE_EXIT.with(|f| f.set(std::ptr::null_mut()));
    counters
}

/// A running vCPU thread.
pub struct VcpuHandle {
    pub id: u8,
    thread: JoinHandle<ExitCounters>,
}

impl VcpuHandle {
    pub fn is_running(&self) -> bool {
        !self.thread.is_finished()
    }

    /// Interrupts KVM_RUN once (the thread then looks at its stop and pause flags).
    pub fn kick(&self) {
        if !self.thread.is_finished() {
            if let Err(e) = self.thread.kill(kick_signal()) {
                log::warn!("vcpu{}: cannot kick: {e}", self.id);
            }
        }
    }

    pub fn spawn(id: u8, vcpu: VcpuFd, shared: Arc<VcpuShared>) -> Result<Self, VcpuError> {
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || run_loop(id, vcpu, shared))
            .map_err(|source| VcpuError::Spawn { id, source })?;
        Ok(Self { id, thread })
    }

    /// Stops the thread (the caller has set the stop flag) and returns its counters.
    /// Kicks repeatedly: a signal that lands just before KVM_RUN is entered is otherwise lost.
    pub fn stop(self) -> Option<ExitCounters> {
        while !self.thread.is_finished() {
            if let Err(e) = self.thread.kill(kick_signal()) {
                log::warn!("vcpu{}: cannot kick: {e}", self.id);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.thread.join().ok()
    }
}
