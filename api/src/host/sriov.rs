//! The host's SR-IOV functions as `vfctl` manages them, through sysfs: PFs and their VFs
//! (address, VF index, driver, IOMMU group), the VF count, and binding VFs to vfio-pci.
//! The sysfs root is a parameter so that tests run on a fake tree.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::host::nvme::NvmeDetails;
use crate::host::provision::class_name;

#[derive(Debug, thiserror::Error)]
pub enum SriovError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0} is not an SR-IOV physical function (no sriov_totalvfs)")]
    NotPf(String),
    #[error("{pf} supports at most {total} VFs, not {wanted}")]
    TooMany { pf: String, total: u32, wanted: u32 },
    #[error("{pf} has no VF {index} (it has {count})")]
    NoSuchVf { pf: String, index: u32, count: u32 },
    #[error("{vf} did not become usable through vfio-pci within {secs} s: {why}")]
    NotUsable { vf: String, secs: u64, why: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SriovError + '_ {
    move |source| SriovError::Io { path: path.display().to_string(), source }
}

/// One VF of a PF.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VfInfo {
    pub address: String,
    pub index: u32,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
    /// `VM/device id` of the VM holding it, filled in by the caller.
    pub held_by: Option<String>,
}

/// A PF and its VFs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PfInfo {
    pub address: String,
    /// The PCI class, named ("ethernet", "nvme", ...).
    pub class: String,
    pub driver: Option<String>,
    pub netdev: Option<String>,
    pub total_vfs: u32,
    pub num_vfs: u32,
    pub drivers_autoprobe: bool,
    pub vfs: Vec<VfInfo>,
    /// An NVMe PF's secondary controllers and flexible resources (filled in by
    /// [`crate::host::provision::describe`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nvme: Option<NvmeDetails>,
    /// Why the class's details could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provisioning_error: Option<String>,
}

/// sysfs (and /dev, for VFIO group nodes) under a root.
#[derive(Debug, Clone)]
pub struct Sysfs {
    pub sys: PathBuf,
    pub dev: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Self { sys: "/sys".into(), dev: "/dev".into() }
    }
}

fn link_name(path: &Path) -> Option<String> {
    std::fs::read_link(path).ok()?.file_name()?.to_str().map(str::to_string)
}

impl Sysfs {
    fn device(&self, address: &str) -> PathBuf {
        self.sys.join("bus/pci/devices").join(address)
    }

    fn read(&self, path: &Path) -> Result<String, SriovError> {
        std::fs::read_to_string(path).map(|s| s.trim().to_string()).map_err(io(path))
    }

    fn read_u32(&self, path: &Path) -> Result<u32, SriovError> {
        let text = self.read(path)?;
        text.parse().map_err(|_| io(path)(std::io::Error::other(format!("not a number: '{text}'"))))
    }

    fn write(&self, path: &Path, value: &str) -> Result<(), SriovError> {
        std::fs::write(path, value).map_err(io(path))
    }

    /// A PF given as an address (`0000:01:00.0`) or a sysfs path, as its address.
    pub fn resolve_pf(&self, pf: &str) -> Result<String, SriovError> {
        let address = Path::new(pf).file_name().and_then(|n| n.to_str()).unwrap_or(pf).to_string();
        if !self.device(&address).join("sriov_totalvfs").exists() {
            return Err(SriovError::NotPf(pf.to_string()));
        }
        Ok(address)
    }

    /// Every SR-IOV PF, by address.
    pub fn pfs(&self) -> Result<Vec<String>, SriovError> {
        let dir = self.sys.join("bus/pci/devices");
        let mut pfs: Vec<String> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .flatten()
            .filter(|e| e.path().join("sriov_totalvfs").exists())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        pfs.sort();
        Ok(pfs)
    }

    /// A PF's VF addresses in VF index order.
    pub fn vf_addresses(&self, pf: &str) -> Result<Vec<String>, SriovError> {
        let dev = self.device(pf);
        let count = self.read_u32(&dev.join("sriov_numvfs"))?;
        Ok((0..count).filter_map(|i| link_name(&dev.join(format!("virtfn{i}")))).collect())
    }

    pub fn pf(&self, pf: &str) -> Result<PfInfo, SriovError> {
        let address = self.resolve_pf(pf)?;
        let dev = self.device(&address);
        let netdev = std::fs::read_dir(dev.join("net"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .and_then(|e| e.file_name().to_str().map(str::to_string));
        let vfs = self
            .vf_addresses(&address)?
            .into_iter()
            .enumerate()
            .map(|(i, vf)| {
                let d = self.device(&vf);
                VfInfo {
                    index: i as u32,
                    driver: link_name(&d.join("driver")),
                    iommu_group: link_name(&d.join("iommu_group")).and_then(|g| g.parse().ok()),
                    held_by: None,
                    address: vf,
                }
            })
            .collect();
        Ok(PfInfo {
            class: class_name(self.class_code(&address)),
            driver: link_name(&dev.join("driver")),
            netdev,
            total_vfs: self.read_u32(&dev.join("sriov_totalvfs"))?,
            num_vfs: self.read_u32(&dev.join("sriov_numvfs"))?,
            drivers_autoprobe: self.read(&dev.join("sriov_drivers_autoprobe")).map(|v| v == "1").unwrap_or(true),
            vfs,
            address,
            nvme: None,
            provisioning_error: None,
        })
    }

    /// A function's PCI class code (sysfs `class`, e.g. 0x010802).
    pub fn class_code(&self, address: &str) -> Option<u32> {
        let text = self.read(&self.device(address).join("class")).ok()?;
        u32::from_str_radix(text.trim_start_matches("0x"), 16).ok()
    }

    /// The canonical sysfs path of a PCI function (what vfvmm reports as a device's path).
    pub fn canonical(&self, address: &str) -> Option<PathBuf> {
        std::fs::canonicalize(self.device(address)).ok()
    }

    /// Sets `pf`'s VF count to `count` the way the kernel requires (through 0), with driver
    /// autoprobing off so no host driver grabs the new VFs first.
    pub fn set_num_vfs(&self, pf: &str, count: u32) -> Result<(), SriovError> {
        let dev = self.device(pf);
        let total = self.read_u32(&dev.join("sriov_totalvfs"))?;
        if count > total {
            return Err(SriovError::TooMany { pf: pf.to_string(), total, wanted: count });
        }
        self.write(&dev.join("sriov_drivers_autoprobe"), "0")?;
        if self.read_u32(&dev.join("sriov_numvfs"))? != 0 {
            self.write(&dev.join("sriov_numvfs"), "0")?;
        }
        if count > 0 {
            self.write(&dev.join("sriov_numvfs"), &count.to_string())?;
        }
        Ok(())
    }

    /// Binds `vf` to vfio-pci (driver_override, unbind from its driver, probe) and waits up to
    /// `timeout` for its VFIO group node.
    pub fn bind_vfio(&self, vf: &str, timeout: Duration) -> Result<(), SriovError> {
        let dev = self.device(vf);
        let not_usable = |why: String| SriovError::NotUsable { vf: vf.to_string(), secs: timeout.as_secs(), why };
        if link_name(&dev.join("driver")).as_deref() != Some("vfio-pci") {
            self.write(&dev.join("driver_override"), "vfio-pci")?;
            if dev.join("driver").exists() {
                self.write(&dev.join("driver/unbind"), vf)?;
            }
            // drivers_probe fails when no driver takes the device; the check below says why.
            let _ = self.write(&self.sys.join("bus/pci/drivers_probe"), vf);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let driver = link_name(&dev.join("driver"));
            let group = link_name(&dev.join("iommu_group"));
            let node = group.as_ref().map(|g| self.dev.join("vfio").join(g));
            match (driver.as_deref(), node) {
                (Some("vfio-pci"), Some(node)) if node.exists() => return Ok(()),
                (driver, node) if Instant::now() >= deadline => {
                    return Err(not_usable(match (driver, node) {
                        (Some("vfio-pci"), Some(n)) => format!("{} is missing", n.display()),
                        (Some("vfio-pci"), None) => "no IOMMU group".into(),
                        (Some(d), _) => format!("bound to {d}"),
                        (None, _) => "bound to no driver (is vfio-pci loaded?)".into(),
                    }));
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

#[cfg(test)]
#[path = "sriov_tests.rs"]
mod tests;
