//! NVMe PFs whose VFs are secondary controllers (the NVMe specification's virtualization
//! enhancements). Such a VF is usable only once its secondary controller has flexible
//! resources assigned (queues "VQ" and interrupt vectors "VI") and is online; enabling VFs in
//! sysfs alone gives controllers that never become ready. This module talks to the PF's
//! controller through the kernel's admin pass-through (`/dev/nvmeN`): Identify (primary
//! controller capabilities, secondary controller list) and Virtualization Management.
//!
//! Resource policy: the flexible pool not held by the primary controller is shared evenly
//! among the VFs being enabled, each VF's share capped at the controller's per-secondary
//! maximum and rounded down to its granularity; a VF needs at least 2 queues (admin + one
//! I/O queue) and 1 interrupt. Flexible resources held by the primary are left alone: moving
//! them takes a reset of the PF's controller, which is the host administrator's call.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// PCI class code of an NVMe controller (mass storage, non-volatile memory, NVMe).
pub const CLASS_NVME: u32 = 0x01_08_02;

#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("NVMe PF {0} has no controller device (is it bound to the nvme driver?)")]
    NoController(String),
    #[error("{what}: the controller answered status {status:#x}")]
    Command { what: String, status: i32 },
    #[error("the controller's identify data is too short ({0} bytes)")]
    Short(usize),
    #[error("{pf} has {available} flexible {kind} for VFs ({held} held by the primary controller); {count} VFs need at least {need} each")]
    NotEnough { pf: String, kind: &'static str, available: u32, held: u32, count: u32, need: u32 },
    #[error("{pf} has no secondary controller for VF {vf_number}")]
    NoSecondary { pf: String, vf_number: u32 },
}

/// A Virtualization Management action (command dword 10, bits 3:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtAction {
    SecondaryOffline = 7,
    SecondaryAssign = 8,
    SecondaryOnline = 9,
}

/// A flexible resource type (command dword 10, bits 10:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Queues = 0,
    Interrupts = 1,
}

/// The admin commands this module sends; the real one is [`AdminDevice`], tests use a fake.
pub trait NvmeAdmin {
    /// Identify with `cns` for controller `cntid`: the 4096-byte data structure.
    fn identify(&self, cns: u8, cntid: u16) -> Result<Vec<u8>, NvmeError>;
    /// Virtualization Management; `count` is ignored by online/offline.
    fn virt_mgmt(&self, action: VirtAction, resource: Resource, cntlid: u16, count: u16) -> Result<(), NvmeError>;
}

const OPCODE_IDENTIFY: u8 = 0x06;
const OPCODE_VIRT_MGMT: u8 = 0x1c;
const CNS_CONTROLLER: u8 = 0x01;
const CNS_PRIMARY_CAPS: u8 = 0x14;
const CNS_SECONDARY_LIST: u8 = 0x15;
/// Identify Controller: Optional Admin Command Support, bit 7 = Virtualization Management.
const OACS_OFFSET: usize = 256;
const OACS_VIRT_MGMT: u16 = 1 << 7;

/// The kernel's `struct nvme_passthru_cmd` (include/uapi/linux/nvme_ioctl.h).
#[repr(C)]
#[derive(Default)]
struct PassthruCmd {
    opcode: u8,
    flags: u8,
    rsvd1: u16,
    nsid: u32,
    cdw2: u32,
    cdw3: u32,
    metadata: u64,
    addr: u64,
    metadata_len: u32,
    data_len: u32,
    cdw10: u32,
    cdw11: u32,
    cdw12: u32,
    cdw13: u32,
    cdw14: u32,
    cdw15: u32,
    timeout_ms: u32,
    result: u32,
}

/// `NVME_IOCTL_ADMIN_CMD` = `_IOWR('N', 0x41, struct nvme_passthru_cmd)`.
const NVME_IOCTL_ADMIN_CMD: libc::c_ulong =
    (3 << 30) | ((std::mem::size_of::<PassthruCmd>() as libc::c_ulong) << 16) | ((b'N' as libc::c_ulong) << 8) | 0x41;

/// A PF's controller character device (`/dev/nvmeN`).
pub struct AdminDevice {
    file: File,
    path: PathBuf,
}

impl AdminDevice {
    /// The controller device of PF `pf` (sysfs `.../PF/nvme/nvmeN` names it).
    pub fn for_pf(sys: &Path, dev: &Path, pf: &str) -> Result<Self, NvmeError> {
        let name = std::fs::read_dir(sys.join("bus/pci/devices").join(pf).join("nvme"))
            .ok()
            .and_then(|mut d| d.find_map(|e| e.ok()?.file_name().to_str().map(str::to_string)))
            .ok_or_else(|| NvmeError::NoController(pf.to_string()))?;
        let path = dev.join(name);
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| NvmeError::Io { path: path.display().to_string(), source })?;
        Ok(Self { file, path })
    }

    fn submit(&self, what: &str, cmd: &mut PassthruCmd) -> Result<(), NvmeError> {
        // SAFETY: `cmd` is a live, properly laid out nvme_passthru_cmd; when it names a data
        // buffer, the caller's buffer outlives this call and is `data_len` bytes long.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), NVME_IOCTL_ADMIN_CMD as _, cmd as *mut PassthruCmd) };
        match rc {
            0 => Ok(()),
            r if r < 0 => Err(NvmeError::Io {
                path: format!("{} ({what})", self.path.display()),
                source: std::io::Error::last_os_error(),
            }),
            status => Err(NvmeError::Command { what: what.to_string(), status }),
        }
    }
}

impl NvmeAdmin for AdminDevice {
    fn identify(&self, cns: u8, cntid: u16) -> Result<Vec<u8>, NvmeError> {
        let mut data = vec![0u8; 4096];
        let mut cmd = PassthruCmd {
            opcode: OPCODE_IDENTIFY,
            addr: data.as_mut_ptr() as u64,
            data_len: data.len() as u32,
            cdw10: u32::from(cns) | (u32::from(cntid) << 16),
            ..Default::default()
        };
        self.submit(&format!("identify cns {cns:#x}"), &mut cmd)?;
        Ok(data)
    }

    fn virt_mgmt(&self, action: VirtAction, resource: Resource, cntlid: u16, count: u16) -> Result<(), NvmeError> {
        let mut cmd = PassthruCmd {
            opcode: OPCODE_VIRT_MGMT,
            cdw10: action as u32 | ((resource as u32) << 8) | (u32::from(cntlid) << 16),
            cdw11: u32::from(count),
            ..Default::default()
        };
        self.submit(
            &format!("virtualization management {action:?} {resource:?} controller {cntlid} count {count}"),
            &mut cmd,
        )
    }
}

/// The flexible resources of one type (queues or interrupts) as the primary controller
/// reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FlexPool {
    /// Flexible resources in total.
    pub total: u32,
    /// Assigned to secondary controllers.
    pub assigned: u32,
    /// Allocated to the primary controller.
    pub primary: u32,
    /// Most a secondary controller may have.
    pub max_per_secondary: u32,
    /// Assignment granularity.
    pub granularity: u32,
}

/// Identify "Primary Controller Capabilities" (CNS 14h), the fields vfctl uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PrimaryCaps {
    pub cntlid: u16,
    pub queues: FlexPool,
    pub interrupts: FlexPool,
}

fn le16(d: &[u8], at: usize) -> u32 {
    u32::from(u16::from_le_bytes([d[at], d[at + 1]]))
}

fn le32(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

impl PrimaryCaps {
    pub fn parse(d: &[u8]) -> Result<Self, NvmeError> {
        if d.len() < 80 {
            return Err(NvmeError::Short(d.len()));
        }
        // VQ fields at 32..48, VI fields at 64..80, with the same layout.
        let pool = |base: usize| FlexPool {
            total: le32(d, base),
            assigned: le32(d, base + 4),
            primary: le16(d, base + 8),
            max_per_secondary: le16(d, base + 12),
            granularity: le16(d, base + 14).max(1),
        };
        Ok(Self { cntlid: le16(d, 0) as u16, queues: pool(32), interrupts: pool(64) })
    }
}

/// One entry of the Identify "Secondary Controller List" (CNS 15h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Secondary {
    pub cntlid: u16,
    /// The VF it belongs to, 1-based (VF index + 1); 0 for none.
    pub vf_number: u16,
    pub online: bool,
    pub queues: u16,
    pub interrupts: u16,
}

/// The entries of a Secondary Controller List.
pub fn parse_secondaries(d: &[u8]) -> Result<Vec<Secondary>, NvmeError> {
    let count = usize::from(*d.first().ok_or(NvmeError::Short(0))?).min(127);
    if d.len() < 32 + count * 32 {
        return Err(NvmeError::Short(d.len()));
    }
    Ok((0..count)
        .map(|i| {
            let e = &d[32 + i * 32..64 + i * 32];
            Secondary {
                cntlid: le16(e, 0) as u16,
                online: e[4] & 1 == 1,
                vf_number: le16(e, 8) as u16,
                queues: le16(e, 10) as u16,
                interrupts: le16(e, 12) as u16,
            }
        })
        .collect())
}

/// What each of `count` VFs gets: (queues, interrupts).
pub fn share(pf: &str, caps: &PrimaryCaps, count: u32) -> Result<(u16, u16), NvmeError> {
    let one = |pool: &FlexPool, kind: &'static str, need: u32| {
        let available = pool.total.saturating_sub(pool.primary);
        let each = (available / count.max(1)).min(pool.max_per_secondary);
        let each = each - each % pool.granularity;
        if each < need {
            return Err(NvmeError::NotEnough { pf: pf.to_string(), kind, available, held: pool.primary, count, need });
        }
        Ok(each.min(u32::from(u16::MAX)) as u16)
    };
    Ok((one(&caps.queues, "queues", 2)?, one(&caps.interrupts, "interrupts", 1)?))
}

/// An NVMe PF's virtualization state, for `vfctl pf show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NvmeDetails {
    pub primary: PrimaryCaps,
    pub secondaries: Vec<Secondary>,
}

/// Provisioning of an NVMe PF's VFs through its controller.
pub struct NvmeVfs<A: NvmeAdmin> {
    pub pf: String,
    pub admin: A,
}

impl<A: NvmeAdmin> NvmeVfs<A> {
    /// Whether the controller implements Virtualization Management (without it, its VFs have
    /// fixed resources and need nothing from vfctl).
    pub fn manages_virtualization(&self) -> Result<bool, NvmeError> {
        let id = self.admin.identify(CNS_CONTROLLER, 0)?;
        if id.len() < OACS_OFFSET + 2 {
            return Err(NvmeError::Short(id.len()));
        }
        Ok(le16(&id, OACS_OFFSET) as u16 & OACS_VIRT_MGMT != 0)
    }

    pub fn details(&self) -> Result<NvmeDetails, NvmeError> {
        Ok(NvmeDetails {
            primary: PrimaryCaps::parse(&self.admin.identify(CNS_PRIMARY_CAPS, 0)?)?,
            secondaries: parse_secondaries(&self.admin.identify(CNS_SECONDARY_LIST, 0)?)?,
        })
    }

    /// Before the VFs go away: every online secondary controller offline (the specification
    /// wants them offline before their resources change).
    pub fn take_offline(&self) -> Result<(), NvmeError> {
        for s in self.details()?.secondaries.iter().filter(|s| s.online) {
            self.admin.virt_mgmt(VirtAction::SecondaryOffline, Resource::Queues, s.cntlid, 0)?;
        }
        Ok(())
    }

    /// Whether `count` VFs can be provisioned (a secondary controller each, enough resources):
    /// their share (queues, interrupts). Sends no command that changes anything.
    pub fn check(&self, count: u32) -> Result<(u16, u16), NvmeError> {
        self.checked(count).map(|(share, _)| share)
    }

    /// [`check`](Self::check), and the controller state it read.
    fn checked(&self, count: u32) -> Result<((u16, u16), NvmeDetails), NvmeError> {
        let details = self.details()?;
        for vf_number in 1..=count {
            if !details.secondaries.iter().any(|s| u32::from(s.vf_number) == vf_number) {
                return Err(NvmeError::NoSecondary { pf: self.pf.clone(), vf_number });
            }
        }
        Ok((share(&self.pf, &details.primary, count)?, details))
    }

    /// With no VFs enabled: every secondary controller's resources returned to the pool, then
    /// VFs 1..=count given their share.
    pub fn assign(&self, count: u32) -> Result<(), NvmeError> {
        let ((queues, interrupts), details) = self.checked(count)?;
        for s in details.secondaries.iter().filter(|s| s.queues > 0 || s.interrupts > 0) {
            self.admin.virt_mgmt(VirtAction::SecondaryAssign, Resource::Queues, s.cntlid, 0)?;
            self.admin.virt_mgmt(VirtAction::SecondaryAssign, Resource::Interrupts, s.cntlid, 0)?;
        }
        for s in details.secondaries.iter().filter(|s| s.vf_number >= 1 && u32::from(s.vf_number) <= count) {
            self.admin.virt_mgmt(VirtAction::SecondaryAssign, Resource::Queues, s.cntlid, queues)?;
            self.admin.virt_mgmt(VirtAction::SecondaryAssign, Resource::Interrupts, s.cntlid, interrupts)?;
        }
        Ok(())
    }

    /// Once VFs 1..=count exist: their secondary controllers online.
    pub fn bring_online(&self, count: u32) -> Result<(), NvmeError> {
        for s in self.details()?.secondaries.iter().filter(|s| s.vf_number >= 1 && u32::from(s.vf_number) <= count) {
            self.admin.virt_mgmt(VirtAction::SecondaryOnline, Resource::Queues, s.cntlid, 0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "nvme_tests.rs"]
mod tests;
