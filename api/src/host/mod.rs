//! The host-side VF manager (what `vfctl` does besides talking to one VM): the registry of
//! running VMs, the host's SR-IOV functions (PFs, VF counts, vfio-pci binding), attach/detach
//! across VMs and PF reconfiguration with rollback.

pub mod manage;
pub mod nvme;
pub mod provision;
pub mod reconfigure;
pub mod registry;
pub mod sriov;
