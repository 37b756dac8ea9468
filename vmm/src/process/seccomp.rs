//! Seccomp filters, one per thread role, installed by each thread before it touches guest or
//! client input (`--seccomp true|false|log`, default true).
//!
//! | thread | installs its filter | may |
//! |---|---|---|
//! | `vcpu<N>` | at start, before the first KVM_RUN | run the vCPU, reach devices (port/MMIO emulation, VFIO config and BAR regions, MSI routes and irqfds) |
//! | `api` | at start, before the first accept | serve the socket (poll, accept, read, write) and hand requests over |
//! | `console` | at start | write guest output to stdout or a file |
//! | `log` | at start | write vfvmm's log lines to stderr |
//! | `vfio-dma` | at start | map guest RAM for DMA |
//! | `vfio-host` | at start | open, reset and close host devices (the VMM thread waits for it with a bound) |
//! | `vmm` (main) | before its event loop, once every other thread is started | everything device set-up and teardown need (VFIO, sysfs, KVM, eventfds, threads) |
//!
//! A thread started later inherits its parent's filter as well as installing its own, so the
//! `vmm` filter covers what `vfio-dma` needs. A forbidden call ends the process with one line
//! naming the thread and the call (SIGSYS); with `--seccomp log` the kernel logs it and lets
//! it through (`dmesg`: `audit: type=1326 ... comm="vcpu0" ... syscall=N`).

use std::cell::Cell;
use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp filter for the {0} thread: {1}")]
    Build(&'static str, String),
    #[error("cannot install the seccomp filter of the {0} thread: {1}")]
    Install(&'static str, String),
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// What a thread's forbidden system call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompMode {
    /// The process ends with a message naming the thread and the call.
    Enforce,
    /// Logged by the kernel and allowed (to find what a filter misses).
    Log,
    /// No filters.
    Off,
}

/// The thread roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRole {
    Vmm,
    Vcpu,
    Api,
    Console,
    Log,
    DmaMapper,
    HostWorker,
}

impl ThreadRole {
    pub fn name(self) -> &'static str {
        match self {
            ThreadRole::Vmm => "vmm",
            ThreadRole::Vcpu => "vcpu",
            ThreadRole::Api => "api",
            ThreadRole::Console => "console",
            ThreadRole::Log => "log",
            ThreadRole::DmaMapper => "vfio-dma",
            ThreadRole::HostWorker => "vfio-host",
        }
    }

    /// The system calls the role needs (x86_64).
    fn syscalls(self) -> Vec<i64> {
        // Every thread: memory, locks, time, signals, logging, exiting.
        let mut calls = vec![
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_writev,
            libc::SYS_close,
            libc::SYS_futex,
            libc::SYS_mmap,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_mprotect,
            libc::SYS_brk,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_sched_yield,
            libc::SYS_sched_getaffinity,
            libc::SYS_getrandom,
            libc::SYS_gettid,
            libc::SYS_getpid,
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            libc::SYS_sigaltstack,
            libc::SYS_restart_syscall,
            libc::SYS_exit,
            libc::SYS_exit_group,
            libc::SYS_rseq,
            libc::SYS_set_robust_list,
            libc::SYS_prctl,
            libc::SYS_fcntl, // std's debug checks of fds, and O_NONBLOCK
        ];
        calls.extend(match self {
            ThreadRole::Vcpu => vec![
                libc::SYS_ioctl, // KVM_RUN and the KVM/VFIO calls device emulation makes
                libc::SYS_pread64,
                libc::SYS_pwrite64,
                libc::SYS_tgkill,
            ],
            ThreadRole::Api => vec![
                libc::SYS_poll,
                libc::SYS_ppoll,
                libc::SYS_accept4,
                libc::SYS_accept,
                libc::SYS_ioctl, // FIONBIO
                libc::SYS_fcntl,
                libc::SYS_recvfrom,
                libc::SYS_sendto,
                libc::SYS_recvmsg,
                libc::SYS_sendmsg,
                libc::SYS_shutdown,
            ],
            ThreadRole::Console | ThreadRole::Log => vec![libc::SYS_fsync, libc::SYS_fdatasync],
            ThreadRole::DmaMapper => vec![libc::SYS_ioctl],
            // The host-device work it takes off the VMM thread: the VMM thread's calls.
            ThreadRole::HostWorker | ThreadRole::Vmm => vec![
                libc::SYS_ioctl,
                libc::SYS_pread64,
                libc::SYS_pwrite64,
                libc::SYS_readv,
                libc::SYS_epoll_wait,
                libc::SYS_epoll_pwait,
                libc::SYS_epoll_ctl,
                libc::SYS_epoll_create1,
                libc::SYS_eventfd2,
                libc::SYS_timerfd_create,
                libc::SYS_timerfd_settime,
                libc::SYS_timerfd_gettime,
                libc::SYS_openat,
                libc::SYS_open,
                libc::SYS_fstat,
                libc::SYS_newfstatat,
                libc::SYS_statx,
                libc::SYS_stat,
                libc::SYS_lstat,
                libc::SYS_lseek,
                libc::SYS_readlink,
                libc::SYS_readlinkat,
                libc::SYS_getdents64,
                libc::SYS_access,
                libc::SYS_faccessat,
                libc::SYS_faccessat2,
                libc::SYS_fcntl,
                libc::SYS_dup,
                libc::SYS_dup3,
                libc::SYS_unlink,
                libc::SYS_unlinkat,
                libc::SYS_rename,
                libc::SYS_renameat,
                libc::SYS_renameat2,
                libc::SYS_mkdir,
                libc::SYS_mkdirat,
                libc::SYS_rmdir,
                libc::SYS_symlink,
                libc::SYS_symlinkat,
                libc::SYS_chmod,
                libc::SYS_fchmod,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_tgkill,
                libc::SYS_kill,
                libc::SYS_rt_sigaction,
                libc::SYS_getcwd,
                libc::SYS_prlimit64,
                libc::SYS_poll,
                libc::SYS_ppoll,
                libc::SYS_uname,
                libc::SYS_sched_getparam,
                libc::SYS_sched_setscheduler,
                libc::SYS_getuid,
                libc::SYS_geteuid,
                libc::SYS_seccomp, // threads started later install their own filters
            ],
        });
        calls.sort_unstable();
        calls.dedup();
        calls
    }
}

/// The process's mode, set once at start-up (before any thread is started).
static MODE: std::sync::OnceLock<SeccompMode> = std::sync::OnceLock::new();

/// Sets the process's mode (the first call wins) and installs the SIGSYS handler.
pub fn set_mode(mode: SeccompMode) -> Result<(), SeccompError> {
    let mode = *MODE.get_or_init(|| mode);
    if mode != SeccompMode::Off {
        tune_malloc_for_filters();
        install_sigsys_handler()?;
    }
    Ok(())
}

/// glibc's malloc opens files behind its callers' backs, which a thread whose filter allows
/// no `openat` (vCPUs, `api`, `console`, `log`) must never be made to do:
/// - the first time a thread's own heap (arena) shrinks, it reads
///   /proc/sys/vm/overcommit_memory — seen: an API request with a 20,000-character device id
///   (a 20 KiB answer) ended the process through the `api` thread's filter;
/// - when a 9th arena would be made, it counts the CPUs from /sys/devices/system/cpu/online.
///
/// A trim threshold no thread heap reaches (they are 64 MiB at most) means heaps never shrink,
/// and a fixed arena limit means the CPUs are never counted. Called before any thread starts.
fn tune_malloc_for_filters() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets malloc tunables; it takes no pointers.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 8);
    }
}

/// Installs `role`'s filter on the calling thread, in the process's mode.
pub fn install_for(role: ThreadRole) -> Result<(), SeccompError> {
    install(role, MODE.get().copied().unwrap_or(SeccompMode::Off))
}

/// A thread-start hook for threads other crates start (`api`, `console`).
pub fn hook(role: ThreadRole) -> Box<dyn FnOnce() -> Result<(), String> + Send> {
    Box::new(move || install_for(role).map_err(|e| e.to_string()))
}

thread_local! {
    /// This thread's role, for the SIGSYS message.
    static ROLE: Cell<&'static str> = const { Cell::new("unfiltered") };
}

/// Builds the BPF program of `role`.
pub fn filter(role: ThreadRole, mode: SeccompMode) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = role.syscalls().into_iter().map(|nr| (nr, vec![])).collect();
    if let (Some(ioctl), Some(requests)) =
        (rules.get_mut(&libc::SYS_ioctl), crate::process::seccomp_ioctls::allowed(role))
    {
        for request in requests {
            let only = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
                .map_err(|e| SeccompError::Build(role.name(), e.to_string()))?;
            ioctl.push(SeccompRule::new(vec![only]).map_err(|e| SeccompError::Build(role.name(), e.to_string()))?);
        }
    }
    let mismatch = match mode {
        SeccompMode::Log => SeccompAction::Log,
        _ => SeccompAction::Trap,
    };
    let arch =
        TargetArch::try_from(std::env::consts::ARCH).map_err(|e| SeccompError::Build(role.name(), format!("{e:?}")))?;
    let f = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .map_err(|e| SeccompError::Build(role.name(), e.to_string()))?;
    BpfProgram::try_from(f).map_err(|e| SeccompError::Build(role.name(), e.to_string()))
}

/// Installs `role`'s filter on the calling thread (nothing with [`SeccompMode::Off`]).
pub fn install(role: ThreadRole, mode: SeccompMode) -> Result<(), SeccompError> {
    if mode == SeccompMode::Off {
        return Ok(());
    }
    let program = filter(role, mode)?;
    ROLE.with(|r| r.set(role.name()));
    seccompiler::apply_filter(&program).map_err(|e| SeccompError::Install(role.name(), e.to_string()))
}

/// Installs the SIGSYS handler that reports a forbidden call and ends the process.
pub fn install_sigsys_handler() -> Result<(), SeccompError> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
        .map_err(|e| SeccompError::Handler(std::io::Error::from_raw_os_error(e.errno())))
}

extern "C" fn on_sigsys(_signal: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // siginfo's SIGSYS fields: the call's address (8 bytes at 16), then its number (at 24).
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS, which is at least 128 bytes.
    let nr = unsafe { info.cast::<u8>().add(24).cast::<i32>().read_unaligned() };
    let role = ROLE.with(|r| r.get());
    let mut msg = [0u8; 200];
    let mut len = 0;
    for part in ["vfvmm: error: seccomp: the ", role, " thread made a forbidden system call (number "] {
        len += copy_into(&mut msg[len..], part.as_bytes());
    }
    len += write_decimal(&mut msg[len..], nr);
    if i64::from(nr) == libc::SYS_ioctl && !ctx.is_null() {
        // The request is the call's second argument (rsi) in the interrupted context.
        // SAFETY: for a SA_SIGINFO handler the kernel passes a valid ucontext_t.
        let request = unsafe { (*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RSI as usize] };
        len += copy_into(&mut msg[len..], b", ioctl request ");
        len += write_hex(&mut msg[len..], request as u64);
    }
    len += copy_into(&mut msg[len..], b"); see --seccomp\n");
    // SAFETY: write(2) and _exit(2) are async-signal-safe and allowed by every filter.
    unsafe {
        libc::write(libc::STDERR_FILENO, msg.as_ptr().cast(), len);
        libc::_exit(1);
    }
}

fn copy_into(dst: &mut [u8], src: &[u8]) -> usize {
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src[..n]);
    n
}

fn write_hex(dst: &mut [u8], value: u64) -> usize {
    let mut digits = [0u8; 18];
    digits[..2].copy_from_slice(b"0x");
    let mut n = 2;
    let mut started = false;
    for shift in (0..16).rev() {
        let d = ((value >> (shift * 4)) & 0xf) as u8;
        if d != 0 || started || shift == 0 {
            started = true;
            digits[n] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
            n += 1;
        }
    }
    copy_into(dst, &digits[..n])
}

fn write_decimal(dst: &mut [u8], value: i32) -> usize {
    let mut digits = [0u8; 12];
    let mut v = value.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if value < 0 {
        i -= 1;
        digits[i] = b'-';
    }
    copy_into(dst, &digits[i..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_has_a_filter_that_builds() {
        for role in [
            ThreadRole::Vmm,
            ThreadRole::Vcpu,
            ThreadRole::Api,
            ThreadRole::Console,
            ThreadRole::Log,
            ThreadRole::DmaMapper,
            ThreadRole::HostWorker,
        ] {
            for mode in [SeccompMode::Enforce, SeccompMode::Log] {
                assert!(!filter(role, mode).unwrap().is_empty(), "{role:?}");
            }
            assert!(role.syscalls().contains(&libc::SYS_exit_group) && role.syscalls().contains(&libc::SYS_write));
        }
        // The roles differ where they should.
        assert!(!ThreadRole::Vcpu.syscalls().contains(&libc::SYS_openat), "a vCPU opens nothing");
        assert!(!ThreadRole::Api.syscalls().contains(&libc::SYS_openat), "the API thread opens nothing");
        assert!(!ThreadRole::Console.syscalls().contains(&libc::SYS_ioctl));
        assert!(ThreadRole::Vmm.syscalls().contains(&libc::SYS_openat));
    }

    #[test]
    fn the_sigsys_message_names_the_number() {
        let mut b = [0u8; 20];
        let n = write_decimal(&mut b, 257);
        assert_eq!(&b[..n], b"257");
        let n = write_decimal(&mut b, -1);
        assert_eq!(&b[..n], b"-1");
        let n = write_hex(&mut b, 0xae80);
        assert_eq!(&b[..n], b"0xae80");
        let n = write_hex(&mut b, 0);
        assert_eq!(&b[..n], b"0x0");
    }

    /// vCPUs and the VMM thread may make their own ioctls only; the other threads none, or
    /// (api: FIONBIO) any.
    #[test]
    fn ioctl_requests_are_listed_per_role() {
        use crate::process::seccomp_ioctls::allowed;
        let vcpu = allowed(ThreadRole::Vcpu).unwrap();
        let vmm = allowed(ThreadRole::Vmm).unwrap();
        let kvm_run = 0xae80;
        let vfio_set_irqs = 0x3b6e;
        let vfio_group_set_container = 0x3b68;
        let tcsets = 0x5402;
        assert!(vcpu.contains(&kvm_run) && vcpu.contains(&vfio_set_irqs));
        assert!(!vcpu.contains(&vfio_group_set_container) && !vcpu.contains(&tcsets), "no device set-up on a vCPU");
        assert!(vcpu.iter().all(|n| vmm.contains(n)), "the VMM thread does what vCPUs do");
        assert!(vmm.contains(&vfio_group_set_container) && vmm.contains(&tcsets));
        assert_eq!(allowed(ThreadRole::DmaMapper).unwrap().len(), 3);
        assert!(allowed(ThreadRole::Console).is_none() && !ThreadRole::Console.syscalls().contains(&libc::SYS_ioctl));
    }

    /// A thread with the vCPU filter installed (log mode would let it through; enforce kills
    /// the process, so that is proven in a child process by `tests/seccomp.rs`).
    #[test]
    fn a_filter_installs_on_a_thread_and_allows_its_calls() {
        let t = std::thread::spawn(|| {
            install(ThreadRole::Console, SeccompMode::Enforce).unwrap();
            // Allowed: write, futex (the join), exit.
            let _ = std::io::Write::write_all(&mut std::io::sink(), b"x");
            42
        });
        assert_eq!(t.join().unwrap(), 42);
    }
}
