//! The VMM thread's event loop (event-manager): host console input to the serial port, and
//! guest exit requests.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use devices::serial::SerialDevice;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::vcpus::vcpu::{ExitSignal, GuestExit};

/// Input we hold for the guest before we stop reading the host's stdin.
const MAX_PENDING_INPUT: usize = 4096;
const STDIN_FD: i32 = libc::STDIN_FILENO;

/// Host stdin → serial receive FIFO, with back-pressure when the guest is not reading.
pub struct ConsoleInput {
    serial: Arc<Mutex<SerialDevice>>,
    rx_space: EventFd,
    pending: VecDeque<u8>,
    stdin_watched: bool,
    stdin_open: bool,
}

impl ConsoleInput {
    pub fn new(serial: Arc<Mutex<SerialDevice>>, rx_space: EventFd) -> Self {
        Self { serial, rx_space, pending: VecDeque::new(), stdin_watched: false, stdin_open: true }
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let taken = match self.serial.lock() {
            Ok(mut s) => s.enqueue_input(self.pending.make_contiguous()),
            Err(_) => 0,
        };
        self.pending.drain(..taken);
    }

    fn watch_stdin(&mut self, ops: &mut EventOps, watch: bool) {
        if watch == self.stdin_watched || (watch && !self.stdin_open) {
            return;
        }
        let ev = Events::new_raw(STDIN_FD, EventSet::IN);
        let result = if watch { ops.add(ev) } else { ops.remove(ev) };
        match result {
            Ok(()) => self.stdin_watched = watch,
            Err(e) => {
                // A regular file or /dev/null cannot be polled: the guest simply gets no input.
                log::debug!("stdin cannot be watched ({e:?}); no console input");
                self.stdin_open = false;
            }
        }
    }

    fn read_stdin(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 256];
        // SAFETY: reading into a stack buffer of the length we pass; fd 0 stays open for the
        // life of the process.
        let n = unsafe { libc::read(STDIN_FD, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            n if n > 0 => self.pending.extend(&buf[..n as usize]),
            0 => {
                self.watch_stdin(ops, false);
                self.stdin_open = false;
            }
            _ => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::WouldBlock && err.kind() != std::io::ErrorKind::Interrupted {
                    log::warn!("stdin: {err}; console input stops");
                    self.watch_stdin(ops, false);
                    self.stdin_open = false;
                }
            }
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.rx_space, EventSet::IN)) {
            log::warn!("cannot watch the serial receive FIFO: {e:?}");
        }
        self.watch_stdin(ops, true);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == STDIN_FD {
            if events.event_set().contains(EventSet::IN) {
                self.read_stdin(ops);
            } else {
                // HUP or ERR without data.
                self.watch_stdin(ops, false);
                self.stdin_open = false;
            }
        } else if events.fd() == self.rx_space.as_raw_fd() {
            let _ = self.rx_space.read();
        }
        self.flush();
        self.watch_stdin(ops, self.pending.len() < MAX_PENDING_INPUT);
    }
}

/// Turns device power events into guest exits and notices when the VM must stop.
pub struct ExitWatcher {
    exit: Arc<ExitSignal>,
    power_off: EventFd,
    reset: EventFd,
    done: Arc<AtomicBool>,
}

impl ExitWatcher {
    pub fn new(exit: Arc<ExitSignal>, power_off: EventFd, reset: EventFd, done: Arc<AtomicBool>) -> Self {
        Self { exit, power_off, reset, done }
    }
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        for fd in [&self.exit.evt, &self.power_off, &self.reset] {
            if let Err(e) = ops.add(Events::new(fd, EventSet::IN)) {
                log::error!("cannot watch a guest exit event: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.power_off.as_raw_fd() {
            let _ = self.power_off.read();
            self.exit.raise(GuestExit::PowerOff);
        } else if fd == self.reset.as_raw_fd() {
            let _ = self.reset.read();
            self.exit.raise(GuestExit::Reset);
        } else if fd == self.exit.evt.as_raw_fd() {
            let _ = self.exit.evt.read();
            self.done.store(true, Ordering::Release);
        }
    }
}

/// Termination signals (SIGTERM, SIGINT, SIGHUP) become a clean VM stop: the handler only
/// writes to an eventfd, which the event loop turns into [`GuestExit::Terminated`].
pub struct TerminationSignals {
    evt: EventFd,
    exit: Arc<ExitSignal>,
}

static TERMINATION_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
static TERMINATION_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
const TERMINATION_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

extern "C" fn on_termination_signal(signal: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    TERMINATION_SIGNAL.store(signal, Ordering::SeqCst);
    let fd = TERMINATION_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `fd` is an eventfd kept open by the
        // `TerminationSignals` that published it, and we pass a valid 8-byte buffer.
        unsafe { libc::write(fd, (&one as *const u64).cast(), std::mem::size_of::<u64>()) };
    }
}

impl TerminationSignals {
    pub fn install(exit: Arc<ExitSignal>) -> std::io::Result<Self> {
        let evt = EventFd::new(libc::EFD_NONBLOCK)?;
        TERMINATION_FD.store(evt.as_raw_fd(), Ordering::SeqCst);
        for signal in TERMINATION_SIGNALS {
            vmm_sys_util::signal::register_signal_handler(signal, on_termination_signal)
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        }
        Ok(Self { evt, exit })
    }
}

impl Drop for TerminationSignals {
    fn drop(&mut self) {
        TERMINATION_FD.store(-1, Ordering::SeqCst);
    }
}

impl MutEventSubscriber for TerminationSignals {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            log::warn!("cannot watch termination signals: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        let signal = TERMINATION_SIGNAL.load(Ordering::SeqCst);
        log::info!("signal {signal}: stopping the VM");
        self.exit.raise(GuestExit::Terminated(signal));
    }
}

/// Hotplug events for the VMM thread: the guest ejected a slot (tear the device down), the
/// host asked for a device back (ask the guest to eject it, or release it while paused),
/// guest RAM finished DMA-mapping (deferred bus mastering), changes to the set of
/// host-request eventfds to watch; `resync` also wakes it when a device has error-recovery
/// work (an error to report, a reset the guest asked for), done after every event.
pub struct HotplugWatcher {
    eject: EventFd,
    resync: EventFd,
    dma_done: EventFd,
    requests: std::collections::BTreeMap<u8, EventFd>,
    errors: std::collections::BTreeMap<u8, EventFd>,
    /// Fires when a live-released device is due to be given up.
    live_timer: TimerFd,
    /// The kernel's device events: a live-released device comes back when the host binds its
    /// function to vfio-pci (None: no uevents here; acquire-device still works).
    uevents: Option<crate::control::uevents::UeventSocket>,
    hotplug: Arc<Mutex<crate::passthrough::hotplug::Hotplug>>,
}

/// Event data of host-request eventfds: this plus the slot.
const REQUEST_DATA_BASE: u32 = 0x100;
/// Event data of host-error eventfds: this plus the slot.
const ERROR_DATA_BASE: u32 = 0x200;

impl HotplugWatcher {
    pub fn new(
        eject: EventFd,
        resync: EventFd,
        dma_done: EventFd,
        hotplug: Arc<Mutex<crate::passthrough::hotplug::Hotplug>>,
    ) -> std::io::Result<Self> {
        let live_timer = TimerFd::new().map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        let uevents = crate::control::uevents::UeventSocket::open()
            .map_err(|e| log::info!("no kernel uevents ({e}): live-released devices come back by acquire-device only"))
            .ok();
        Ok(Self {
            uevents,
            eject,
            resync,
            dma_done,
            requests: Default::default(),
            errors: Default::default(),
            live_timer,
            hotplug,
        })
    }

    /// Arms the timer for the next live-released device's bound (or disarms it).
    fn arm_live_timer(&mut self) {
        let next = self.hotplug.lock().ok().and_then(|h| h.next_live_deadline());
        let result = match next {
            // A zero duration would disarm the timer.
            Some(due) => self.live_timer.reset(
                due.saturating_duration_since(std::time::Instant::now()).max(std::time::Duration::from_millis(1)),
                None,
            ),
            None => self.live_timer.clear(),
        };
        if let Err(e) = result {
            log::warn!("cannot arm the live-release timer: {e}");
        }
    }

    fn sync(&mut self, ops: &mut EventOps) {
        let changes = self.hotplug.lock().map(|mut h| h.take_request_watch()).unwrap_or_default();
        for change in changes {
            match change {
                crate::passthrough::hotplug::RequestWatch::Add { slot, fd } => {
                    let ev = Events::with_data(&fd, REQUEST_DATA_BASE + u32::from(slot), EventSet::IN);
                    match ops.add(ev) {
                        Ok(()) => {
                            self.requests.insert(slot, fd);
                        }
                        Err(e) => log::warn!("slot {slot}: cannot watch host requests: {e:?}"),
                    }
                }
                crate::passthrough::hotplug::RequestWatch::AddError { slot, fd } => {
                    let ev = Events::with_data(&fd, ERROR_DATA_BASE + u32::from(slot), EventSet::IN);
                    match ops.add(ev) {
                        Ok(()) => {
                            self.errors.insert(slot, fd);
                        }
                        Err(e) => log::warn!("slot {slot}: cannot watch host errors: {e:?}"),
                    }
                }
                crate::passthrough::hotplug::RequestWatch::Remove { slot } => {
                    if let Some(fd) = self.requests.remove(&slot) {
                        let _ = ops.remove(Events::with_data(&fd, REQUEST_DATA_BASE + u32::from(slot), EventSet::IN));
                    }
                    if let Some(fd) = self.errors.remove(&slot) {
                        let _ = ops.remove(Events::with_data(&fd, ERROR_DATA_BASE + u32::from(slot), EventSet::IN));
                    }
                }
            }
        }
    }
}

impl MutEventSubscriber for HotplugWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        for fd in [&self.eject, &self.resync, &self.dma_done] {
            if let Err(e) = ops.add(Events::new(fd, EventSet::IN)) {
                log::error!("cannot watch hotplug events: {e:?}");
            }
        }
        if let Err(e) = ops.add(Events::new(&self.live_timer, EventSet::IN)) {
            log::error!("cannot watch the live-release timer: {e:?}");
        }
        if let Some(u) = &self.uevents {
            if let Err(e) = ops.add(Events::new(u, EventSet::IN)) {
                log::warn!("cannot watch kernel uevents: {e:?}");
            }
        }
        self.sync(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.eject.as_raw_fd() {
            let _ = self.eject.read();
            if let Ok(mut h) = self.hotplug.lock() {
                h.on_guest_eject();
            }
        } else if fd == self.resync.as_raw_fd() {
            let _ = self.resync.read();
        } else if fd == self.live_timer.as_raw_fd() {
            let _ = self.live_timer.wait();
        } else if let Some(u) = self.uevents.as_ref().filter(|u| u.as_raw_fd() == fd) {
            let bound: Vec<String> = u.drain().into_iter().filter(|e| e.is_vfio_bind()).map(|e| e.devpath).collect();
            if !bound.is_empty() {
                if let Ok(mut h) = self.hotplug.lock() {
                    for devpath in bound {
                        h.on_host_function_bound(&devpath);
                    }
                }
            }
        } else if fd == self.dma_done.as_raw_fd() {
            let _ = self.dma_done.read();
            if let Ok(mut h) = self.hotplug.lock() {
                h.on_dma_mapped();
            }
        } else if let Some(slot) = events.data().checked_sub(ERROR_DATA_BASE).and_then(|s| u8::try_from(s).ok()) {
            if let Some(fd) = self.errors.get(&slot) {
                let _ = fd.read();
            }
            if let Ok(mut h) = self.hotplug.lock() {
                h.on_host_error(slot);
            }
        } else if let Some(slot) = events.data().checked_sub(REQUEST_DATA_BASE).and_then(|s| u8::try_from(s).ok()) {
            if let Some(req) = self.requests.get(&slot) {
                let _ = req.read();
            }
            if let Ok(mut h) = self.hotplug.lock() {
                h.on_host_request(slot);
            }
        }
        self.sync(ops);
        if let Ok(mut h) = self.hotplug.lock() {
            h.service_recoveries();
        }
        self.arm_live_timer();
    }
}
