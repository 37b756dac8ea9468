//! Command line → validated VM configuration.
//!
//! Options follow Cloud Hypervisor's style: `--cpus boot=2`, `--memory size=512M`,
//! `--serial tty|off|file=PATH`, `--device path=...,id=...`, `--api-socket path=...`.

use std::path::{Path, PathBuf};

use clap::Parser;

/// Defaults.
pub const DEFAULT_CPUS: u8 = 1;
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// Smallest guest we accept: the boot structures live in the first MiB and a kernel needs
/// room above it.
pub const MIN_MEMORY: u64 = 2 << 20;
/// APIC ids are one byte and 0xff is the broadcast id.
pub const MAX_CPUS: u8 = 254;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0}")]
    Usage(String),
    #[error("--{option}: unknown key '{key}' (expected {expected})")]
    UnknownKey { option: &'static str, key: String, expected: &'static str },
    #[error("--{option}: '{item}' is not of the form key=value")]
    NotKeyValue { option: &'static str, item: String },
    #[error("--{option}: '{key}' given twice")]
    DuplicateKey { option: &'static str, key: String },
    #[error("--{option}: missing '{key}='")]
    MissingKey { option: &'static str, key: &'static str },
    #[error("--cpus: boot={0} is not a number of vCPUs from 1 to {MAX_CPUS}")]
    InvalidCpus(String),
    #[error("--memory: size={0} is not a size (use e.g. 512M, 2G; suffixes K, M, G, T)")]
    InvalidSize(String),
    #[error("--memory: size={0} is too small (at least 2M)")]
    MemoryTooSmall(String),
    #[error("--memory: {key}={value} is not on or off")]
    InvalidSwitch { key: &'static str, value: String },
    #[error("--memory: size={0} is not a whole number of 2 MiB huge pages")]
    HugepageMultiple(String),
    #[error("--serial: '{0}' is not tty, off or file=PATH")]
    InvalidSerial(String),
    #[error("--kernel: cannot read '{path}': {reason}")]
    KernelUnreadable { path: String, reason: String },
    #[error("--kernel: '{0}' is neither a bzImage nor an ELF vmlinux")]
    KernelNotRecognized(String),
    #[error("--initramfs: cannot read '{path}': {reason}")]
    InitramfsUnreadable { path: String, reason: String },
    #[error("--cmdline: {len} bytes is longer than the limit of {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("--cmdline: contains a NUL byte")]
    CmdlineHasNul,
    #[error("--device: id '{0}' must be 1-64 characters of [A-Za-z0-9_-]")]
    InvalidDeviceId(String),
    #[error("--device: path '{0}' is not under /sys/bus/pci/devices/")]
    InvalidDevicePath(String),
    #[error("--device: id '{0}' is used twice")]
    DuplicateDeviceId(String),
    #[error("--device: '{0}' is given twice")]
    DuplicateDevicePath(String),
}

/// The raw command line.
#[derive(Debug, Parser)]
#[command(name = "vfvmm", version, about = "A minimal KVM VMM for passing SR-IOV VFs into Linux guests")]
pub struct Cli {
    /// Guest kernel: bzImage or ELF vmlinux.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initramfs (cpio, optionally compressed).
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = "")]
    pub cmdline: String,
    /// vCPUs: boot=N (default 1).
    #[arg(long, value_name = "boot=N")]
    pub cpus: Option<String>,
    /// Guest RAM: size=SIZE with K/M/G/T suffix (default 512M); hugepages=on backs it with
    /// 2 MiB huge pages (the host must have them free: /proc/sys/vm/nr_hugepages); prefault=on
    /// allocates all of it and maps it for the guest before the guest starts.
    #[arg(long, value_name = "size=SIZE[,hugepages=on|off][,prefault=on|off]")]
    pub memory: Option<String>,
    /// Serial console: tty (default), off, or file=PATH.
    #[arg(long, value_name = "tty|off|file=PATH")]
    pub serial: Option<String>,
    /// VFIO device to pass through: path=SYSFS_PATH[,id=ID] (repeatable).
    #[arg(long, value_name = "path=PATH[,id=ID]")]
    pub device: Vec<String>,
    /// REST API socket: path=PATH.
    #[arg(long = "api-socket", value_name = "path=PATH")]
    pub api_socket: Option<String>,
    /// Seconds the guest has to eject a device after remove-device (then vm.info says so).
    #[arg(long = "eject-timeout", value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_SECS))]
    pub eject_timeout: u64,
    /// Seconds vm.resume waits for a released device to be back on the host (e.g. re-created
    /// VFs being bound to vfio-pci) before resuming without it.
    #[arg(long = "reacquire-timeout", value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(0..=MAX_TIMEOUT_SECS))]
    pub reacquire_timeout: u64,
    /// The VM's name in the registry of running VMs (with --api-socket; default vfvmm-PID).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Seccomp filters per thread: true (a forbidden call ends vfvmm), log (the kernel logs it
    /// and lets it through) or false.
    #[arg(long, value_name = "true|false|log", default_value = "true", value_parser = ["true", "false", "log"])]
    pub seccomp: String,
    /// Lifecycle events as JSON lines (VM state, device attach/detach, release/acquire,
    /// recoveries) to a file (appended to) or an inherited descriptor: path=FILE or fd=N.
    #[arg(long = "event-monitor", value_name = "path=FILE|fd=N")]
    pub event_monitor: Option<String>,
    /// Where running VMs register themselves for vfctl (created with mode 0700).
    #[arg(long = "run-dir", value_name = "DIR", default_value = api::host::registry::DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
}

/// Upper bound of the timeout options (a day): larger values would overflow deadlines.
pub const MAX_TIMEOUT_SECS: u64 = 86_400;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialConfig {
    /// Guest output to stdout, stdin to the guest.
    Tty,
    Off,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    pub path: PathBuf,
    pub id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelFormat {
    BzImage,
    Elf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelConfig {
    pub path: PathBuf,
    pub format: KernelFormat,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub cpus: u8,
    pub memory: u64,
    /// Guest RAM in 2 MiB huge pages (hugetlbfs).
    pub hugepages: bool,
    /// Guest RAM allocated, and mapped for the guest, before the guest starts.
    pub prefault: bool,
    pub serial: SerialConfig,
    pub devices: Vec<DeviceConfig>,
    pub api_socket: Option<PathBuf>,
    pub eject_timeout: std::time::Duration,
    pub reacquire_timeout: std::time::Duration,
    /// Registry name (with an API socket) and directory.
    pub name: Option<String>,
    pub run_dir: PathBuf,
    pub seccomp: crate::process::seccomp::SeccompMode,
}

/// Splits `a=1,b=2` into pairs, rejecting unknown and repeated keys.
fn key_values<'a>(
    option: &'static str,
    value: &'a str,
    allowed: &[&'static str],
    expected: &'static str,
) -> Result<Vec<(&'static str, &'a str)>, ConfigError> {
    let mut out: Vec<(&'static str, &'a str)> = Vec::new();
    for item in value.split(',') {
        let (key, val) =
            item.split_once('=').ok_or_else(|| ConfigError::NotKeyValue { option, item: item.to_string() })?;
        let key = allowed.iter().copied().find(|k| *k == key).ok_or_else(|| ConfigError::UnknownKey {
            option,
            key: key.to_string(),
            expected,
        })?;
        if out.iter().any(|(k, _)| *k == key) {
            return Err(ConfigError::DuplicateKey { option, key: key.to_string() });
        }
        out.push((key, val));
    }
    Ok(out)
}

fn required<'a>(
    option: &'static str,
    pairs: &[(&'static str, &'a str)],
    key: &'static str,
) -> Result<&'a str, ConfigError> {
    pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v).ok_or(ConfigError::MissingKey { option, key })
}

/// Parses `512M`, `2G`, `1048576`, `64T`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 10),
        (i, 'm' | 'M') => (&s[..i], 20),
        (i, 'g' | 'G') => (&s[..i], 30),
        (i, 't' | 'T') => (&s[..i], 40),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

fn parse_cpus(value: &str) -> Result<u8, ConfigError> {
    let pairs = key_values("cpus", value, &["boot"], "boot=N")?;
    let boot = required("cpus", &pairs, "boot")?;
    match boot.parse::<u8>() {
        Ok(n) if (1..=MAX_CPUS).contains(&n) => Ok(n),
        _ => Err(ConfigError::InvalidCpus(boot.to_string())),
    }
}

/// What `--memory` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MemorySpec {
    bytes: u64,
    hugepages: bool,
    prefault: bool,
}

fn parse_memory(value: &str) -> Result<MemorySpec, ConfigError> {
    let pairs = key_values(
        "memory",
        value,
        &["size", "hugepages", "prefault"],
        "size=SIZE[,hugepages=on|off][,prefault=on|off]",
    )?;
    let size = required("memory", &pairs, "size")?;
    let bytes = parse_size(size).ok_or_else(|| ConfigError::InvalidSize(size.to_string()))?;
    if bytes < MIN_MEMORY {
        return Err(ConfigError::MemoryTooSmall(size.to_string()));
    }
    let switch = |key: &'static str| match pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v) {
        None | Some("off") => Ok(false),
        Some("on") => Ok(true),
        Some(other) => Err(ConfigError::InvalidSwitch { key, value: other.to_string() }),
    };
    let (hugepages, prefault) = (switch("hugepages")?, switch("prefault")?);
    if hugepages && !bytes.is_multiple_of(crate::platform::memory::HUGE_PAGE_SIZE) {
        return Err(ConfigError::HugepageMultiple(size.to_string()));
    }
    Ok(MemorySpec { bytes, hugepages, prefault })
}

fn parse_serial(value: &str) -> Result<SerialConfig, ConfigError> {
    match value {
        "tty" => Ok(SerialConfig::Tty),
        "off" => Ok(SerialConfig::Off),
        _ => match value.strip_prefix("file=") {
            Some(p) if !p.is_empty() => Ok(SerialConfig::File(PathBuf::from(p))),
            _ => Err(ConfigError::InvalidSerial(value.to_string())),
        },
    }
}

fn parse_device(value: &str) -> Result<DeviceConfig, ConfigError> {
    let pairs = key_values("device", value, &["path", "id"], "path=PATH[,id=ID]")?;
    let path = required("device", &pairs, "path")?;
    let normalized = api::rest::request::normalize_device_path(path)
        .ok_or_else(|| ConfigError::InvalidDevicePath(path.to_string()))?;
    let id = pairs.iter().find(|(k, _)| *k == "id").map(|(_, v)| v.to_string());
    if let Some(id) = &id {
        if !api::rest::request::valid_device_id(id) {
            return Err(ConfigError::InvalidDeviceId(id.clone()));
        }
    }
    Ok(DeviceConfig { path: PathBuf::from(normalized), id })
}

fn parse_api_socket(value: &str) -> Result<PathBuf, ConfigError> {
    // Cloud Hypervisor also accepts a bare path.
    if !value.contains('=') {
        return Ok(PathBuf::from(value));
    }
    let pairs = key_values("api-socket", value, &["path"], "path=PATH")?;
    Ok(PathBuf::from(required("api-socket", &pairs, "path")?))
}

/// Reads the first bytes of the kernel to tell bzImage from ELF.
pub fn detect_kernel_format(path: &Path) -> Result<KernelFormat, ConfigError> {
    use std::io::Read;
    let display = path.display().to_string();
    let unreadable = |e: std::io::Error| ConfigError::KernelUnreadable { path: display.clone(), reason: e.to_string() };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(ConfigError::KernelUnreadable { path: display, reason: "not a regular file".into() });
    }
    let mut head = [0u8; 0x210];
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]).map_err(unreadable)? {
            0 => break,
            n => filled += n,
        }
    }
    if filled >= 4 && head[..4] == [0x7f, b'E', b'L', b'F'] {
        return Ok(KernelFormat::Elf);
    }
    if filled >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(ConfigError::KernelNotRecognized(display))
}

impl Cli {
    /// Parses `args` (including the program name). Help and version requests come back as
    /// `Err(clap::Error)` for the caller to print.
    pub fn parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Cli::try_parse_from(args)
    }

    /// Validates everything that can be checked before touching KVM.
    pub fn validate(&self) -> Result<(KernelConfig, VmConfig), ConfigError> {
        let cpus = self.cpus.as_deref().map(parse_cpus).transpose()?.unwrap_or(DEFAULT_CPUS);
        let MemorySpec { bytes: memory, hugepages, prefault } = self
            .memory
            .as_deref()
            .map(parse_memory)
            .transpose()?
            .unwrap_or(MemorySpec { bytes: DEFAULT_MEMORY, hugepages: false, prefault: false });
        let serial = self.serial.as_deref().map(parse_serial).transpose()?.unwrap_or(SerialConfig::Tty);
        let devices = self.device.iter().map(|d| parse_device(d)).collect::<Result<Vec<_>, _>>()?;
        for (i, d) in devices.iter().enumerate() {
            if devices[..i].iter().any(|o| o.path == d.path) {
                return Err(ConfigError::DuplicateDevicePath(d.path.display().to_string()));
            }
            if let Some(id) = &d.id {
                if devices[..i].iter().any(|o| o.id.as_ref() == Some(id)) {
                    return Err(ConfigError::DuplicateDeviceId(id.clone()));
                }
            }
        }
        let api_socket = self.api_socket.as_deref().map(parse_api_socket).transpose()?;
        if let Some(name) = &self.name {
            api::host::registry::validate_name(name).map_err(|e| ConfigError::Usage(format!("--name: {e}")))?;
            if api_socket.is_none() {
                return Err(ConfigError::Usage(
                    "--name needs --api-socket (the name is how vfctl finds the socket)".into(),
                ));
            }
        }

        if self.cmdline.len() >= arch::layout::CMDLINE_MAX_SIZE {
            return Err(ConfigError::CmdlineTooLong {
                len: self.cmdline.len(),
                max: arch::layout::CMDLINE_MAX_SIZE - 1,
            });
        }
        if self.cmdline.contains('\0') {
            return Err(ConfigError::CmdlineHasNul);
        }
        let format = detect_kernel_format(&self.kernel)?;
        if let Some(initramfs) = &self.initramfs {
            let meta = std::fs::metadata(initramfs).map_err(|e| ConfigError::InitramfsUnreadable {
                path: initramfs.display().to_string(),
                reason: e.to_string(),
            })?;
            if !meta.is_file() {
                return Err(ConfigError::InitramfsUnreadable {
                    path: initramfs.display().to_string(),
                    reason: "not a regular file".into(),
                });
            }
        }
        Ok((
            KernelConfig {
                path: self.kernel.clone(),
                format,
                initramfs: self.initramfs.clone(),
                cmdline: self.cmdline.clone(),
            },
            VmConfig {
                cpus,
                memory,
                hugepages,
                prefault,
                serial,
                devices,
                api_socket,
                eject_timeout: std::time::Duration::from_secs(self.eject_timeout),
                reacquire_timeout: std::time::Duration::from_secs(self.reacquire_timeout),
                name: self.name.clone(),
                run_dir: self.run_dir.clone(),
                seccomp: match self.seccomp.as_str() {
                    "log" => crate::process::seccomp::SeccompMode::Log,
                    "false" => crate::process::seccomp::SeccompMode::Off,
                    _ => crate::process::seccomp::SeccompMode::Enforce,
                },
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn kernel_file(bytes: &[u8]) -> tempfile_lite::TempFile {
        let f = tempfile_lite::TempFile::new();
        std::fs::File::create(&f.path).unwrap().write_all(bytes).unwrap();
        f
    }

    fn bzimage() -> tempfile_lite::TempFile {
        let mut b = vec![0u8; 0x400];
        b[0x202..0x206].copy_from_slice(b"HdrS");
        kernel_file(&b)
    }

    /// A self-deleting temporary file, enough for these tests.
    mod tempfile_lite {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        pub struct TempFile {
            pub path: std::path::PathBuf,
        }
        impl TempFile {
            pub fn new() -> Self {
                let n = N.fetch_add(1, Ordering::SeqCst);
                let path = std::env::temp_dir().join(format!("vfvmm-cfg-{}-{n}", std::process::id()));
                Self { path }
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    fn validate(args: &[&str]) -> Result<(KernelConfig, VmConfig), ConfigError> {
        let mut v = vec!["vfvmm"];
        v.extend_from_slice(args);
        Cli::parse_args(v).map_err(|e| ConfigError::Usage(e.to_string()))?.validate()
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("64T"), Some(64 << 40));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1K"), Some(1024));
        for bad in ["", "M", "-1M", "1.5G", "12X", "0x10M", "99999999999999999999", "20000000T"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn defaults_and_full_command_line() {
        let k = bzimage();
        let p = k.path.to_str().unwrap();
        let (kc, vc) = validate(&["--kernel", p]).unwrap();
        assert_eq!(kc.format, KernelFormat::BzImage);
        assert_eq!(kc.cmdline, "");
        assert_eq!((vc.cpus, vc.memory, vc.serial.clone(), vc.hugepages), (1, 512 << 20, SerialConfig::Tty, false));
        let (_, vc) = validate(&["--kernel", p, "--memory", "size=256M,hugepages=on"]).unwrap();
        assert_eq!((vc.memory, vc.hugepages), (256 << 20, true));
        let (_, vc) = validate(&["--kernel", p, "--memory", "size=255M,hugepages=off"]).unwrap();
        assert_eq!((vc.memory, vc.hugepages, vc.prefault), (255 << 20, false, false));
        let (_, vc) = validate(&["--kernel", p, "--memory", "size=256M,prefault=on,hugepages=on"]).unwrap();
        assert_eq!((vc.memory, vc.hugepages, vc.prefault), (256 << 20, true, true));

        let (kc, vc) = validate(&[
            "--kernel",
            p,
            "--initramfs",
            p,
            "--cmdline",
            "console=ttyS0",
            "--cpus",
            "boot=2",
            "--memory",
            "size=256M",
            "--serial",
            "file=/tmp/x",
            "--device",
            "path=/sys/bus/pci/devices/0000:01:10.0/,id=vf0",
            "--device",
            "path=/sys/bus/pci/devices/0000:01:10.2",
            "--api-socket",
            "path=/tmp/api.sock",
        ])
        .unwrap();
        assert_eq!(kc.initramfs.as_deref(), Some(Path::new(p)));
        assert_eq!(kc.cmdline, "console=ttyS0");
        assert_eq!((vc.cpus, vc.memory), (2, 256 << 20));
        assert_eq!(vc.serial, SerialConfig::File("/tmp/x".into()));
        assert_eq!(vc.devices[0].path, Path::new("/sys/bus/pci/devices/0000:01:10.0"));
        assert_eq!(vc.devices[0].id.as_deref(), Some("vf0"));
        assert_eq!(vc.devices[1].id, None);
        assert_eq!(vc.api_socket.as_deref(), Some(Path::new("/tmp/api.sock")));
        let (_, vc) = validate(&["--kernel", p, "--serial", "off", "--api-socket", "/tmp/a"]).unwrap();
        assert_eq!(vc.serial, SerialConfig::Off);
        assert_eq!(vc.api_socket.as_deref(), Some(Path::new("/tmp/a")));
    }

    #[test]
    fn elf_kernels_are_recognized() {
        let k = kernel_file(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
        let (kc, _) = validate(&["--kernel", k.path.to_str().unwrap()]).unwrap();
        assert_eq!(kc.format, KernelFormat::Elf);
    }

    #[test]
    fn every_error_case() {
        let k = bzimage();
        let p = k.path.to_str().unwrap();
        let garbage = kernel_file(b"this is not a kernel at all");
        let g = garbage.path.to_str().unwrap();
        let long = "x".repeat(5000);
        let cases: Vec<(Vec<&str>, ConfigError)> = vec![
            (
                vec!["--kernel", "/nonexistent/vmlinuz"],
                ConfigError::KernelUnreadable {
                    path: "/nonexistent/vmlinuz".into(),
                    reason: "No such file or directory (os error 2)".into(),
                },
            ),
            (
                vec!["--kernel", "/tmp"],
                ConfigError::KernelUnreadable { path: "/tmp".into(), reason: "not a regular file".into() },
            ),
            (vec!["--kernel", g], ConfigError::KernelNotRecognized(g.into())),
            (
                vec!["--kernel", p, "--initramfs", "/nonexistent/initrd"],
                ConfigError::InitramfsUnreadable {
                    path: "/nonexistent/initrd".into(),
                    reason: "No such file or directory (os error 2)".into(),
                },
            ),
            (vec!["--kernel", p, "--cpus", "boot=0"], ConfigError::InvalidCpus("0".into())),
            (vec!["--kernel", p, "--cpus", "boot=255"], ConfigError::InvalidCpus("255".into())),
            (vec!["--kernel", p, "--cpus", "boot=two"], ConfigError::InvalidCpus("two".into())),
            (vec!["--kernel", p, "--cpus", "2"], ConfigError::NotKeyValue { option: "cpus", item: "2".into() }),
            (
                vec!["--kernel", p, "--cpus", "max=2"],
                ConfigError::UnknownKey { option: "cpus", key: "max".into(), expected: "boot=N" },
            ),
            (
                vec!["--kernel", p, "--cpus", "boot=1,boot=2"],
                ConfigError::DuplicateKey { option: "cpus", key: "boot".into() },
            ),
            (vec!["--kernel", p, "--memory", "size=0"], ConfigError::MemoryTooSmall("0".into())),
            (vec!["--kernel", p, "--memory", "size=1M"], ConfigError::MemoryTooSmall("1M".into())),
            (vec!["--kernel", p, "--memory", "size=lots"], ConfigError::InvalidSize("lots".into())),
            (vec!["--kernel", p, "--memory", "size="], ConfigError::InvalidSize("".into())),
            (
                vec!["--kernel", p, "--memory", "size=256M,hugepages=yes"],
                ConfigError::InvalidSwitch { key: "hugepages", value: "yes".into() },
            ),
            (
                vec!["--kernel", p, "--memory", "size=256M,prefault=1"],
                ConfigError::InvalidSwitch { key: "prefault", value: "1".into() },
            ),
            (vec!["--kernel", p, "--memory", "size=255M,hugepages=on"], ConfigError::HugepageMultiple("255M".into())),
            (
                vec!["--kernel", p, "--memory", "256M"],
                ConfigError::NotKeyValue { option: "memory", item: "256M".into() },
            ),
            (vec!["--kernel", p, "--serial", "pty"], ConfigError::InvalidSerial("pty".into())),
            (vec!["--kernel", p, "--serial", "file="], ConfigError::InvalidSerial("file=".into())),
            (vec!["--kernel", p, "--device", "id=vf0"], ConfigError::MissingKey { option: "device", key: "path" }),
            (vec!["--kernel", p, "--device", "path=/dev/vfio/3"], ConfigError::InvalidDevicePath("/dev/vfio/3".into())),
            (
                vec!["--kernel", p, "--device", "path=/sys/bus/pci/devices/0000:01:10.0,id=bad id"],
                ConfigError::InvalidDeviceId("bad id".into()),
            ),
            (
                vec!["--kernel", p, "--device", "path=/sys/bus/pci/devices/0000:01:10.0,bdf=1"],
                ConfigError::UnknownKey { option: "device", key: "bdf".into(), expected: "path=PATH[,id=ID]" },
            ),
            (
                vec![
                    "--kernel",
                    p,
                    "--device",
                    "path=/sys/bus/pci/devices/a,id=x",
                    "--device",
                    "path=/sys/bus/pci/devices/b,id=x",
                ],
                ConfigError::DuplicateDeviceId("x".into()),
            ),
            (
                vec![
                    "--kernel",
                    p,
                    "--device",
                    "path=/sys/bus/pci/devices/a",
                    "--device",
                    "path=/sys/bus/pci/devices/a/",
                ],
                ConfigError::DuplicateDevicePath("/sys/bus/pci/devices/a".into()),
            ),
            (
                vec!["--kernel", p, "--api-socket", "file=/x"],
                ConfigError::UnknownKey { option: "api-socket", key: "file".into(), expected: "path=PATH" },
            ),
            (vec!["--kernel", p, "--cmdline", &long], ConfigError::CmdlineTooLong { len: 5000, max: 4095 }),
            (vec!["--kernel", p, "--cmdline", "a\0b"], ConfigError::CmdlineHasNul),
        ];
        for (args, want) in cases {
            assert_eq!(validate(&args).unwrap_err(), want, "{args:?}");
        }
        // clap-level errors: unknown option, missing kernel, missing value.
        for args in [vec!["--kernel", p, "--bogus"], vec![], vec!["--kernel"]] {
            assert!(matches!(validate(&args), Err(ConfigError::Usage(_))), "{args:?}");
        }
    }
}
