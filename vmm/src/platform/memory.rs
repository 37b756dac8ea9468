//! Guest RAM: anonymous private mappings (accounted, so the host refuses what it cannot
//! back), registered with KVM as one memory slot per range.

use kvm_bindings::{kvm_pre_fault_memory, kvm_userspace_memory_region, KVMIO, KVM_CAP_PRE_FAULT_MEMORY};
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap};
use vmm_sys_util::ioctl::ioctl_with_mut_ref;

pub type GuestMemory = GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot allocate {size} of guest memory: {source}")]
    Allocate { size: String, source: vm_memory::mmap::MmapRegionError },
    #[error(
        "cannot allocate {size} of guest memory in 2 MiB huge pages ({source}): the host has {free} free; reserve more with: echo N > /proc/sys/vm/nr_hugepages"
    )]
    AllocateHuge { size: String, free: String, source: vm_memory::mmap::MmapRegionError },
    #[error("guest memory layout is invalid: {0}")]
    Layout(String),
    #[error("{size} of guest memory exceeds what this host's guests can address ({max})")]
    TooLarge { size: String, max: String },
    #[error("KVM refused guest memory slot {slot}: {source}")]
    RegisterSlot { slot: u32, source: kvm_ioctls::Error },
    #[error("KVM cannot map guest memory ahead of the guest (no KVM_CAP_PRE_FAULT_MEMORY)")]
    PrefaultUnsupported,
    #[error("KVM could not map guest memory at {gpa:#x} ahead of the guest: {source}")]
    Prefault { gpa: u64, source: std::io::Error },
}

vmm_sys_util::ioctl_iowr_nr!(KVM_PRE_FAULT_MEMORY, KVMIO, 0xd5, kvm_pre_fault_memory);

/// Human-readable size, exact when it is a whole number of units.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (name, shift) in UNITS {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {name}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// The huge page size `hugepages=on` uses.
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;

/// Free 2 MiB huge pages on this host, for the error message.
fn free_huge_pages() -> String {
    std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .map(|n| format!("{} pages", n.trim()))
        .unwrap_or_else(|_| "none".into())
}

/// Allocates RAM for a guest of `size` bytes whose physical address space is `phys_bits`;
/// with `hugepages`, in 2 MiB huge pages (fewer nested page faults and cheaper DMA mapping);
/// with `populate`, every page now rather than at its first touch.
pub fn create_guest_memory(
    size: u64,
    phys_bits: u8,
    hugepages: bool,
    populate: bool,
) -> Result<GuestMemory, MemoryError> {
    let max = arch::layout::max_memory(phys_bits);
    if size > max {
        return Err(MemoryError::TooLarge { size: human_size(size), max: human_size(max) });
    }
    let mut regions = Vec::new();
    for (start, len) in arch::layout::ram_ranges(size) {
        let len_usize = usize::try_from(len).map_err(|_| MemoryError::Layout(format!("range of {len} bytes")))?;
        let huge = if hugepages { libc::MAP_HUGETLB | libc::MAP_HUGE_2MB } else { 0 };
        let populate = if populate { libc::MAP_POPULATE } else { 0 };
        let mapping = MmapRegionBuilder::new(len_usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | huge | populate)
            .build()
            .map_err(|source| match hugepages {
                true => MemoryError::AllocateHuge { size: human_size(size), free: free_huge_pages(), source },
                false => MemoryError::Allocate { size: human_size(size), source },
            })?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or_else(|| MemoryError::Layout(format!("range at {start:#x} overflows")))?;
        regions.push(region);
    }
    GuestMemory::from_regions(regions).map_err(|e| MemoryError::Layout(e.to_string()))
}

/// Registers every region with KVM.
pub fn register_with_kvm(vm: &VmFd, mem: &GuestMemory) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let host_addr = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| MemoryError::Layout(e.to_string()))? as u64;
        let region_desc = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host_addr,
            flags: 0,
        };
        // SAFETY: the mapping described by `region_desc` is owned by `mem`, which the VMM
        // keeps alive for as long as the VM exists, and it is not shared with other slots.
        unsafe { vm.set_user_memory_region(region_desc) }
            .map_err(|source| MemoryError::RegisterSlot { slot, source })?;
    }
    Ok(())
}

/// How many times in a row KVM may interrupt a prefault without making progress.
const PREFAULT_STALLS: u32 = 1000;

/// Maps all of guest RAM into the guest's stage-2 page tables before the guest runs
/// (`KVM_PRE_FAULT_MEMORY` on `vcpu`, which has not run yet), so that the guest's first touch of
/// each page is not a nested page fault: in a nested host each of those is a round trip
/// through the outer hypervisor.
pub fn map_ahead_of_guest(vm: &VmFd, vcpu: &VcpuFd, mem: &GuestMemory) -> Result<(), MemoryError> {
    if vm.check_extension_raw(libc::c_ulong::from(KVM_CAP_PRE_FAULT_MEMORY)) <= 0 {
        return Err(MemoryError::PrefaultUnsupported);
    }
    for region in mem.iter() {
        let mut range = kvm_pre_fault_memory { gpa: region.start_addr().0, size: region.len(), ..Default::default() };
        let mut stalls = 0;
        while range.size > 0 {
            let before = range.size;
            // SAFETY: `vcpu` is a KVM vCPU fd and `range` a valid kvm_pre_fault_memory that the
            // kernel reads and updates in place (the part left to do); the return is checked.
            let ret = unsafe { ioctl_with_mut_ref(vcpu, KVM_PRE_FAULT_MEMORY(), &mut range) };
            if ret >= 0 {
                continue;
            }
            let e = std::io::Error::last_os_error();
            let retry = matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN));
            stalls = if range.size < before { 0 } else { stalls + 1 };
            if !retry || stalls >= PREFAULT_STALLS {
                return Err(MemoryError::Prefault { gpa: range.gpa, source: e });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(64 << 40), "64 TiB");
        assert_eq!(human_size(256 << 20), "256 MiB");
        assert_eq!(human_size(1536 << 20), "1536 MiB");
        assert_eq!(human_size(1000), "1000 bytes");
    }

    /// With huge pages free (nr_hugepages), guest RAM is backed by them; without, the error
    /// says how many there are and how to reserve more.
    #[test]
    fn hugepage_memory_is_backed_by_huge_pages_or_refused_with_the_fix() {
        match create_guest_memory(4 << 20, 40, true, false) {
            Ok(m) => {
                let host = m.iter().next().unwrap().get_host_address(vm_memory::MemoryRegionAddress(0)).unwrap();
                assert_eq!(host as u64 % HUGE_PAGE_SIZE, 0, "huge pages are 2 MiB aligned");
            }
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains("2 MiB huge pages") && text.contains("nr_hugepages"), "{text}");
            }
        }
    }

    #[test]
    fn small_guest_is_one_region_and_huge_is_refused() {
        let m = create_guest_memory(4 << 20, 40, false, false).unwrap();
        assert_eq!(m.num_regions(), 1);
        assert!(matches!(create_guest_memory(1 << 40, 40, false, false), Err(MemoryError::TooLarge { .. })));
    }
}
