//! Host-side VF management for `vfctl`: which VM holds which VF (from the registry and each
//! VM's `vm.info`), picking a free VF, and the checks before a PF's VF count may change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::host::registry::{self, VmRecord};
use crate::host::sriov::{PfInfo, Sysfs};
use crate::rest::client::{request, ClientError};

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error(transparent)]
    Sriov(#[from] crate::host::sriov::SriovError),
    #[error("VM '{vm}': {source}")]
    Client { vm: String, source: ClientError },
    #[error("VM '{vm}': {message} ({status})")]
    Refused { vm: String, status: u16, message: String },
    #[error("VF {index} of {pf} is held by {holder}")]
    VfHeld { pf: String, index: u32, holder: String },
    #[error("{pf} has no free VF (held: {held})")]
    NoFreeVf { pf: String, held: String },
    #[error("{pf}: its VFs are held by running VMs ({holders}); use vfctl reconfigure to change the count under them")]
    PfInUse { pf: String, holders: String },
}

/// One device of a VM, as its `vm.info` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDevice {
    pub id: String,
    pub path: PathBuf,
    pub state: String,
    pub binding: String,
}

/// A running VM with its state and devices.
#[derive(Debug, Clone)]
pub struct VmView {
    pub record: VmRecord,
    /// `None` when the VM did not answer (the reason).
    pub state: Result<String, String>,
    pub devices: Vec<VmDevice>,
}

/// Calls `endpoint` on VM `vm` and returns the body of a 2xx answer.
pub fn call(vm: &VmRecord, method: &str, endpoint: &str, body: Option<&str>) -> Result<String, ManageError> {
    let r = request(&vm.socket, method, endpoint, body)
        .map_err(|source| ManageError::Client { vm: vm.name.clone(), source })?;
    if !r.ok() {
        return Err(ManageError::Refused { vm: vm.name.clone(), status: r.status, message: r.error_message() });
    }
    Ok(r.body)
}

/// The devices in a `vm.info` answer.
pub fn parse_devices(info: &serde_json::Value) -> Vec<VmDevice> {
    info["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| {
            Some(VmDevice {
                id: d["id"].as_str()?.to_string(),
                path: PathBuf::from(d["path"].as_str()?),
                state: d["state"].as_str()?.to_string(),
                binding: d["binding"].as_str().unwrap_or("?").to_string(),
            })
        })
        .collect()
}

/// Every registered VM with what it says about itself.
pub fn vms(run_dir: &Path) -> Result<Vec<VmView>, ManageError> {
    Ok(registry::list(run_dir)?
        .into_iter()
        .map(|record| match call(&record, "GET", "vm.info", None) {
            Ok(body) => {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let state = v["state"].as_str().unwrap_or("?").to_string();
                VmView { devices: parse_devices(&v), state: Ok(state), record }
            }
            Err(e) => VmView { state: Err(e.to_string()), devices: Vec::new(), record },
        })
        .collect())
}

/// Which VM device holds each host function (by canonical sysfs path): every device that is
/// not Detached, including Released ones (their VM takes them back at resume).
pub fn holders(views: &[VmView]) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for v in views {
        for d in v.devices.iter().filter(|d| d.state != "Detached") {
            let path = std::fs::canonicalize(&d.path).unwrap_or_else(|_| d.path.clone());
            out.insert(path, format!("{}/{}", v.record.name, d.id));
        }
    }
    out
}

/// `pf` with each VF's holder filled in.
pub fn pf_with_holders(sysfs: &Sysfs, pf: &str, holders: &BTreeMap<PathBuf, String>) -> Result<PfInfo, ManageError> {
    let mut info = sysfs.pf(pf)?;
    for vf in &mut info.vfs {
        vf.held_by = sysfs.canonical(&vf.address).and_then(|p| holders.get(&p).cloned());
    }
    Ok(info)
}

/// VF `index` if it is free, or the first free VF.
pub fn pick_vf(info: &PfInfo, index: Option<u32>) -> Result<(u32, String), ManageError> {
    match index {
        Some(k) => {
            let vf = info.vfs.iter().find(|v| v.index == k).ok_or_else(|| {
                crate::host::sriov::SriovError::NoSuchVf { pf: info.address.clone(), index: k, count: info.num_vfs }
            })?;
            match &vf.held_by {
                Some(h) => Err(ManageError::VfHeld { pf: info.address.clone(), index: k, holder: h.clone() }),
                None => Ok((k, vf.address.clone())),
            }
        }
        None => info.vfs.iter().find(|v| v.held_by.is_none()).map(|v| (v.index, v.address.clone())).ok_or_else(|| {
            let held: Vec<String> = info.vfs.iter().filter_map(|v| v.held_by.clone()).collect();
            ManageError::NoFreeVf { pf: info.address.clone(), held: held.join(", ") }
        }),
    }
}

/// Refuses a VF-count change on a PF whose VFs running VMs hold, naming them.
pub fn check_pf_free(info: &PfInfo) -> Result<(), ManageError> {
    let held: Vec<String> =
        info.vfs.iter().filter_map(|v| v.held_by.as_ref().map(|h| format!("VF {} by {h}", v.index))).collect();
    if held.is_empty() {
        Ok(())
    } else {
        Err(ManageError::PfInUse { pf: info.address.clone(), holders: held.join(", ") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::sriov::VfInfo;

    fn pf(held: &[Option<&str>]) -> PfInfo {
        PfInfo {
            address: "0000:01:00.0".into(),
            class: "ethernet".into(),
            nvme: None,
            provisioning_error: None,
            driver: Some("igb".into()),
            netdev: None,
            total_vfs: 7,
            num_vfs: held.len() as u32,
            drivers_autoprobe: false,
            vfs: held
                .iter()
                .enumerate()
                .map(|(i, h)| VfInfo {
                    address: format!("0000:01:10.{}", i * 2),
                    index: i as u32,
                    driver: Some("vfio-pci".into()),
                    iommu_group: Some(10 + i as u32),
                    held_by: h.map(str::to_string),
                })
                .collect(),
        }
    }

    #[test]
    fn a_free_vf_is_picked_and_a_held_or_missing_one_refused() {
        assert_eq!(pick_vf(&pf(&[Some("a/vf0"), None]), None).unwrap(), (1, "0000:01:10.2".into()));
        assert_eq!(pick_vf(&pf(&[None, None]), Some(1)).unwrap().0, 1);
        let e = pick_vf(&pf(&[Some("a/vf0"), None]), Some(0)).unwrap_err().to_string();
        assert_eq!(e, "VF 0 of 0000:01:00.0 is held by a/vf0");
        assert!(pick_vf(&pf(&[None]), Some(3)).unwrap_err().to_string().contains("has no VF 3 (it has 1)"));
        let e = pick_vf(&pf(&[Some("a/vf0"), Some("b/x")]), None).unwrap_err().to_string();
        assert_eq!(e, "0000:01:00.0 has no free VF (held: a/vf0, b/x)");
    }

    #[test]
    fn a_pf_whose_vfs_are_held_cannot_change_its_count() {
        assert!(check_pf_free(&pf(&[None, None])).is_ok());
        let e = check_pf_free(&pf(&[None, Some("vm2/vf0")])).unwrap_err().to_string();
        assert!(e.contains("VF 1 by vm2/vf0") && e.contains("vfctl reconfigure"), "{e}");
    }

    #[test]
    fn devices_are_read_from_vm_info_and_detached_ones_hold_nothing() {
        let info = serde_json::json!({ "state": "Running", "devices": [
            { "id": "vf0", "path": "/nonexistent/a", "bdf": "0000:00:01.0", "state": "Attached", "binding": "Bound" },
            { "id": "vf1", "path": "/nonexistent/b", "bdf": "0000:00:02.0", "state": "Detached", "binding": "Bound" },
            { "id": "vf2", "path": "/nonexistent/c", "bdf": "0000:00:03.0", "state": "Attached", "binding": "Released" }
        ]});
        let devices = parse_devices(&info);
        assert_eq!(devices.len(), 3);
        let record = VmRecord { name: "vm1".into(), pid: 1, socket: "/x".into(), started: 0, events: None };
        let h = holders(&[VmView { record, state: Ok("Running".into()), devices }]);
        let held: Vec<_> = h.iter().map(|(p, v)| format!("{} {v}", p.display())).collect();
        assert_eq!(held, ["/nonexistent/a vm1/vf0", "/nonexistent/c vm1/vf2"]);
    }
}
