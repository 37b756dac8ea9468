//! The kernel's device events (uevents) on the VMM thread: a live-released device is taken back
//! as soon as the host binds its function to vfio-pci again, without polling.
//!
//! The netlink socket is opened while the VM is set up (before the VMM thread's seccomp filter,
//! which allows only `read` on it) and read without blocking from the event loop.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// One kernel uevent, the fields this needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    pub action: String,
    /// Under /sys, e.g. /devices/pci0000:00/0000:00:01.0/0000:01:10.0.
    pub devpath: String,
    pub driver: Option<String>,
}

impl Uevent {
    /// A function bound to vfio-pci: what a released device waits for.
    pub fn is_vfio_bind(&self) -> bool {
        self.action == "bind" && self.driver.as_deref() == Some("vfio-pci")
    }
}

/// Parses one kernel uevent message (`ACTION@DEVPATH` then NUL-separated `KEY=VALUE`s);
/// `None` for anything else (udev's own messages start with "libudev").
pub fn parse(message: &[u8]) -> Option<Uevent> {
    let mut fields = message.split(|&b| b == 0).filter_map(|f| std::str::from_utf8(f).ok());
    let header = fields.next()?;
    header.split_once('@')?;
    let (mut action, mut devpath, mut driver) = (None, None, None);
    for field in fields {
        match field.split_once('=') {
            Some(("ACTION", v)) => action = Some(v.to_string()),
            Some(("DEVPATH", v)) => devpath = Some(v.to_string()),
            Some(("DRIVER", v)) => driver = Some(v.to_string()),
            _ => {}
        }
    }
    Some(Uevent { action: action?, devpath: devpath?, driver })
}

/// The kernel's uevent multicast group.
const KERNEL_UEVENTS: u32 = 1;

pub struct UeventSocket {
    fd: OwnedFd,
}

impl UeventSocket {
    /// Opens a non-blocking NETLINK_KOBJECT_UEVENT socket on the kernel's group.
    pub fn open() -> std::io::Result<Self> {
        // SAFETY: plain socket creation; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_KOBJECT_UEVENT,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor this function just created and owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; zero is a valid start value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = KERNEL_UEVENTS;
        // SAFETY: `addr` is a valid sockaddr_nl and its size is passed with it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Every uevent waiting on the socket (it never blocks).
    pub fn drain(&self) -> Vec<Uevent> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        // A burst (VFs created by the dozen) is bounded per call: the rest comes next time.
        for _ in 0..256 {
            // SAFETY: `buf` is writable for its whole length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            if let Some(e) = parse(&buf[..n as usize]) {
                out.push(e);
            }
        }
        out
    }
}

impl AsRawFd for UeventSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_messages_are_parsed_and_others_ignored() {
        let msg = b"bind@/devices/pci0000:00/0000:00:01.0/0000:01:10.0\0ACTION=bind\0DEVPATH=/devices/pci0000:00/0000:00:01.0/0000:01:10.0\0SUBSYSTEM=pci\0DRIVER=vfio-pci\0SEQNUM=4242\0";
        let e = parse(msg).unwrap();
        assert_eq!(e.devpath, "/devices/pci0000:00/0000:00:01.0/0000:01:10.0");
        assert!(e.is_vfio_bind());
        let add = b"add@/devices/x\0ACTION=add\0DEVPATH=/devices/x\0";
        assert!(!parse(add).unwrap().is_vfio_bind());
        let igbvf = b"bind@/devices/x\0ACTION=bind\0DEVPATH=/devices/x\0DRIVER=igbvf\0";
        assert!(!parse(igbvf).unwrap().is_vfio_bind());
        assert_eq!(parse(b"libudev\0\xfe\xed"), None);
        assert_eq!(parse(b"bind@/devices/x\0ACTION=bind\0"), None, "no DEVPATH");
        assert_eq!(parse(b""), None);
    }
}
