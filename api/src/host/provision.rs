//! Changing a PF's VF count with what the PF's class needs so that the new VFs are usable,
//! behind one small interface. Most classes (igb and other NICs) need nothing: the VFs work
//! once enabled. An NVMe PF whose controller does Virtualization Management needs its
//! secondary controllers offline before the change, resources assigned while no VF exists, and
//! online once they do ([`crate::host::nvme`]). The class is read from the PF's PCI class code
//! (a standard, vendor-independent property), never from vendor or device ids.

use std::time::Duration;

use crate::host::nvme::{self, AdminDevice, NvmeAdmin, NvmeError, NvmeVfs};
use crate::host::sriov::{PfInfo, SriovError, Sysfs};

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Sriov(#[from] SriovError),
    #[error("{pf}: {source}")]
    Nvme { pf: String, source: NvmeError },
}

/// The steps around a VF-count change that a PF class may need.
pub trait VfProvisioning {
    /// Whether `count` VFs can be provisioned; called before anything changes.
    fn check(&self, count: u32) -> Result<(), ProvisionError>;
    /// The old VFs still exist (none is held by a VM).
    fn before_disable(&self) -> Result<(), ProvisionError>;
    /// No VF exists; `count` are about to be enabled.
    fn before_enable(&self, count: u32) -> Result<(), ProvisionError>;
    /// The `count` VFs exist and are not bound to any driver yet.
    fn after_enable(&self, count: u32) -> Result<(), ProvisionError>;
}

/// Classes whose VFs work as soon as they are enabled.
pub struct Nothing;

impl VfProvisioning for Nothing {
    fn check(&self, _count: u32) -> Result<(), ProvisionError> {
        Ok(())
    }
    fn before_disable(&self) -> Result<(), ProvisionError> {
        Ok(())
    }
    fn before_enable(&self, _count: u32) -> Result<(), ProvisionError> {
        Ok(())
    }
    fn after_enable(&self, _count: u32) -> Result<(), ProvisionError> {
        Ok(())
    }
}

impl<A: NvmeAdmin> NvmeVfs<A> {
    fn wrap<T>(&self, r: Result<T, NvmeError>) -> Result<T, ProvisionError> {
        r.map_err(|source| ProvisionError::Nvme { pf: self.pf.clone(), source })
    }
}

impl<A: NvmeAdmin> VfProvisioning for NvmeVfs<A> {
    fn check(&self, count: u32) -> Result<(), ProvisionError> {
        self.wrap(self.check(count).map(drop))
    }
    fn before_disable(&self) -> Result<(), ProvisionError> {
        self.wrap(self.take_offline())
    }
    fn before_enable(&self, count: u32) -> Result<(), ProvisionError> {
        self.wrap(self.assign(count))
    }
    fn after_enable(&self, count: u32) -> Result<(), ProvisionError> {
        self.wrap(self.bring_online(count))
    }
}

/// A short name for a PCI class code.
pub fn class_name(code: Option<u32>) -> String {
    match code {
        Some(nvme::CLASS_NVME) => "nvme".into(),
        Some(c) if c >> 8 == 0x0200 => "ethernet".into(),
        Some(c) if c >> 16 == 0x02 => "network".into(),
        Some(c) if c >> 16 == 0x01 => "storage".into(),
        Some(c) => format!("class-{c:06x}"),
        None => "unknown".into(),
    }
}

/// The NVMe controller of `pf` if it is an NVMe PF that manages its VFs' resources.
fn nvme_vfs(sysfs: &Sysfs, pf: &str) -> Result<Option<NvmeVfs<AdminDevice>>, ProvisionError> {
    if sysfs.class_code(pf) != Some(nvme::CLASS_NVME) {
        return Ok(None);
    }
    let wrap = |source| ProvisionError::Nvme { pf: pf.to_string(), source };
    let vfs = NvmeVfs { pf: pf.to_string(), admin: AdminDevice::for_pf(&sysfs.sys, &sysfs.dev, pf).map_err(wrap)? };
    Ok(vfs.manages_virtualization().map_err(wrap)?.then_some(vfs))
}

/// The provisioning `pf`'s class needs.
pub fn for_pf(sysfs: &Sysfs, pf: &str) -> Result<Box<dyn VfProvisioning>, ProvisionError> {
    Ok(match nvme_vfs(sysfs, pf)? {
        Some(vfs) => Box::new(vfs),
        None => Box::new(Nothing),
    })
}

/// Fills in what `info`'s class adds: the NVMe controller's secondary controllers.
pub fn describe(sysfs: &Sysfs, info: &mut PfInfo) {
    let details = nvme_vfs(sysfs, &info.address).and_then(|vfs| match vfs {
        Some(vfs) => vfs.wrap(vfs.details()).map(Some),
        None => Ok(None),
    });
    match details {
        Ok(d) => info.nvme = d,
        Err(e) => info.provisioning_error = Some(e.to_string()),
    }
}

/// Sets `pf`'s VF count to `count` (through 0, autoprobe off) with its class's provisioning,
/// then binds every VF to vfio-pci (each within `bind_timeout`). Returns the VFs' addresses.
/// The caller has checked that no VM holds one of the PF's VFs.
pub fn set_vfs(sysfs: &Sysfs, pf: &str, count: u32, bind_timeout: Duration) -> Result<Vec<String>, ProvisionError> {
    let info = sysfs.pf(pf)?;
    if count > info.total_vfs {
        return Err(SriovError::TooMany { pf: info.address, total: info.total_vfs, wanted: count }.into());
    }
    let provisioning = for_pf(sysfs, &info.address)?;
    if count > 0 {
        provisioning.check(count)?;
    }
    provisioning.before_disable()?;
    sysfs.set_num_vfs(&info.address, 0)?;
    if count > 0 {
        provisioning.before_enable(count)?;
        sysfs.set_num_vfs(&info.address, count)?;
        provisioning.after_enable(count)?;
    }
    let vfs = sysfs.vf_addresses(&info.address)?;
    for vf in &vfs {
        sysfs.bind_vfio(vf, bind_timeout)?;
    }
    Ok(vfs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_named_from_the_class_code() {
        assert_eq!(class_name(Some(0x010802)), "nvme");
        assert_eq!(class_name(Some(0x020000)), "ethernet");
        assert_eq!(class_name(Some(0x028000)), "network");
        assert_eq!(class_name(Some(0x010601)), "storage");
        assert_eq!(class_name(Some(0x120000)), "class-120000");
        assert_eq!(class_name(None), "unknown");
    }

    /// A PF directory with a class file only.
    fn fake_pf(tag: &str, class: &str) -> (Sysfs, std::path::PathBuf) {
        let root = std::env::temp_dir().join(format!("vfvmm-provision-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let pf = root.join("sys/bus/pci/devices/0000:03:00.0");
        std::fs::create_dir_all(&pf).unwrap();
        std::fs::write(pf.join("class"), format!("{class}\n")).unwrap();
        (Sysfs { sys: root.join("sys"), dev: root.join("dev") }, root)
    }

    #[test]
    fn a_nic_needs_nothing_and_an_nvme_pf_without_its_controller_is_refused() {
        let (s, root) = fake_pf("nic", "0x020000");
        assert_eq!(s.class_code("0000:03:00.0"), Some(0x020000));
        assert!(for_pf(&s, "0000:03:00.0").is_ok());
        std::fs::remove_dir_all(root).unwrap();
        let (s, root) = fake_pf("nvme", "0x010802");
        let e = for_pf(&s, "0000:03:00.0").err().expect("refused").to_string();
        assert!(e.contains("has no controller device (is it bound to the nvme driver?)"), "{e}");
        std::fs::remove_dir_all(root).unwrap();
    }
}
