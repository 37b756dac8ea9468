//! The `ioctl` request numbers each filtered thread may use (as Firecracker does): a vCPU
//! thread runs its vCPU and reaches the devices it emulates (MSI routes, irqfds, BAR memory
//! slots, VFIO interrupts and resets); the `vmm` and `vfio-host` threads set up and tear down
//! devices (KVM, VFIO container/group/device, the kvm-vfio device) and drive the terminal;
//! `vfio-dma` maps guest RAM. Any other request is a forbidden call.
#![allow(non_snake_case)] // the generated functions carry the kernel's ioctl names

use kvm_bindings::*;

use crate::process::seccomp::ThreadRole;

vmm_sys_util::ioctl_io_nr!(KVM_CHECK_EXTENSION, KVMIO, 0x03);
vmm_sys_util::ioctl_io_nr!(KVM_GET_VCPU_MMAP_SIZE, KVMIO, 0x04);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_USER_MEMORY_REGION, KVMIO, 0x46, kvm_userspace_memory_region);
vmm_sys_util::ioctl_iow_nr!(KVM_IRQ_LINE, KVMIO, 0x61, kvm_irq_level);
vmm_sys_util::ioctl_iow_nr!(KVM_REGISTER_COALESCED_MMIO, KVMIO, 0x67, kvm_coalesced_mmio_zone);
vmm_sys_util::ioctl_iow_nr!(KVM_UNREGISTER_COALESCED_MMIO, KVMIO, 0x68, kvm_coalesced_mmio_zone);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
vmm_sys_util::ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
vmm_sys_util::ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);
vmm_sys_util::ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
vmm_sys_util::ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_msrs);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_fpu);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_fpu);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_CPUID2, KVMIO, 0x90, kvm_cpuid2);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
vmm_sys_util::ioctl_iow_nr!(KVM_SIGNAL_MSI, KVMIO, 0xa5, kvm_msi);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_XCRS, KVMIO, 0xa7, kvm_xcrs);
vmm_sys_util::ioctl_io_nr!(KVM_KVMCLOCK_CTRL, KVMIO, 0xad);
vmm_sys_util::ioctl_iowr_nr!(KVM_PRE_FAULT_MEMORY, KVMIO, 0xd5, kvm_pre_fault_memory);
vmm_sys_util::ioctl_iowr_nr!(KVM_CREATE_DEVICE, KVMIO, 0xe0, kvm_create_device);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_DEVICE_ATTR, KVMIO, 0xe1, kvm_device_attr);
vmm_sys_util::ioctl_iow_nr!(KVM_GET_DEVICE_ATTR, KVMIO, 0xe2, kvm_device_attr);
vmm_sys_util::ioctl_iow_nr!(KVM_HAS_DEVICE_ATTR, KVMIO, 0xe3, kvm_device_attr);

/// VFIO's requests are `_IO(';', 100 + n)` (linux/vfio.h).
const fn vfio(n: u64) -> u64 {
    (b';' as u64) << 8 | (100 + n)
}
const VFIO_GET_API_VERSION: u64 = vfio(0);
const VFIO_CHECK_EXTENSION: u64 = vfio(1);
const VFIO_SET_IOMMU: u64 = vfio(2);
const VFIO_GROUP_GET_STATUS: u64 = vfio(3);
const VFIO_GROUP_SET_CONTAINER: u64 = vfio(4);
const VFIO_GROUP_UNSET_CONTAINER: u64 = vfio(5);
const VFIO_GROUP_GET_DEVICE_FD: u64 = vfio(6);
const VFIO_DEVICE_GET_INFO: u64 = vfio(7);
const VFIO_DEVICE_GET_REGION_INFO: u64 = vfio(8);
const VFIO_DEVICE_GET_IRQ_INFO: u64 = vfio(9);
const VFIO_DEVICE_SET_IRQS: u64 = vfio(10);
const VFIO_DEVICE_RESET: u64 = vfio(11);
const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: u64 = vfio(12); // the same number as IOMMU_GET_INFO
const VFIO_DEVICE_PCI_HOT_RESET: u64 = vfio(13); // the same number as IOMMU_MAP_DMA
const VFIO_IOMMU_UNMAP_DMA: u64 = vfio(14);
const VFIO_DEVICE_FEATURE: u64 = vfio(17);
const VFIO_IOMMU_GET_INFO: u64 = vfio(12);
const VFIO_IOMMU_MAP_DMA: u64 = vfio(13);

/// Terminal requests (asm-generic/ioctls.h): raw mode for an interactive console, and
/// non-blocking/close-on-exec switches the standard library makes.
const TCGETS: u64 = 0x5401;
const TCSETS: u64 = 0x5402;
const TCSETSW: u64 = 0x5403;
const TCSETSF: u64 = 0x5404;
const TIOCGWINSZ: u64 = 0x5413;
const FIONBIO: u64 = 0x5421;
const FIONCLEX: u64 = 0x5450;
const FIOCLEX: u64 = 0x5451;

/// What a vCPU thread does with its vCPU and with the devices it emulates.
fn vcpu() -> Vec<u64> {
    // c_ulong is u64 on x86_64, the only target vfvmm builds for.
    let mut v: Vec<u64> = [
        KVM_RUN(),
        KVM_GET_REGS(),
        KVM_SET_REGS(),
        KVM_GET_SREGS(),
        KVM_SET_SREGS(),
        KVM_GET_FPU(),
        KVM_SET_FPU(),
        KVM_GET_MSRS(),
        KVM_SET_MSRS(),
        KVM_SET_CPUID2(),
        KVM_GET_LAPIC(),
        KVM_SET_LAPIC(),
        KVM_GET_MP_STATE(),
        KVM_SET_MP_STATE(),
        KVM_GET_VCPU_EVENTS(),
        KVM_SET_VCPU_EVENTS(),
        KVM_GET_XCRS(),
        KVM_SET_XCRS(),
        KVM_KVMCLOCK_CTRL(),
        KVM_CHECK_EXTENSION(),
        // Devices: MSI routes and irqfds, BAR memory slots, injected interrupts.
        KVM_SET_GSI_ROUTING(),
        KVM_IRQFD(),
        KVM_SET_USER_MEMORY_REGION(),
        KVM_SIGNAL_MSI(),
        KVM_IRQ_LINE(),
    ]
    .to_vec();
    v.extend([
        VFIO_DEVICE_GET_INFO,
        VFIO_DEVICE_GET_REGION_INFO,
        VFIO_DEVICE_GET_IRQ_INFO,
        VFIO_DEVICE_SET_IRQS,
        VFIO_DEVICE_RESET,
    ]);
    v
}

/// Device set-up and teardown, and the terminal.
fn vmm() -> Vec<u64> {
    let mut v = vcpu();
    v.extend([
        KVM_GET_VCPU_MMAP_SIZE(),
        KVM_REGISTER_COALESCED_MMIO(),
        KVM_UNREGISTER_COALESCED_MMIO(),
        KVM_IOEVENTFD(),
        KVM_PRE_FAULT_MEMORY(),
        KVM_CREATE_DEVICE(),
        KVM_SET_DEVICE_ATTR(),
        KVM_GET_DEVICE_ATTR(),
        KVM_HAS_DEVICE_ATTR(),
    ]);
    v.extend([
        VFIO_GET_API_VERSION,
        VFIO_CHECK_EXTENSION,
        VFIO_SET_IOMMU,
        VFIO_GROUP_GET_STATUS,
        VFIO_GROUP_SET_CONTAINER,
        VFIO_GROUP_UNSET_CONTAINER,
        VFIO_GROUP_GET_DEVICE_FD,
        VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
        VFIO_DEVICE_PCI_HOT_RESET,
        VFIO_IOMMU_UNMAP_DMA,
        VFIO_DEVICE_FEATURE,
    ]);
    v.extend([TCGETS, TCSETS, TCSETSW, TCSETSF, TIOCGWINSZ, FIONBIO, FIONCLEX, FIOCLEX]);
    v
}

/// The requests `role` may make; None: the role makes no `ioctl` or may make any.
pub(crate) fn allowed(role: ThreadRole) -> Option<Vec<u64>> {
    let mut v = match role {
        ThreadRole::Vcpu => vcpu(),
        ThreadRole::Vmm | ThreadRole::HostWorker => vmm(),
        ThreadRole::DmaMapper => vec![VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA, VFIO_IOMMU_GET_INFO],
        ThreadRole::Api | ThreadRole::Console | ThreadRole::Log => return None,
    };
    v.sort_unstable();
    v.dedup();
    Some(v)
}
