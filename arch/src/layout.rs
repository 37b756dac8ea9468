//! Guest physical memory map of an x86_64 vfvmm guest.
//!
//! ```text
//! 0x0000_0500  GDT            0x0000_7000  zero page (boot_params)
//! 0x0000_0520  IDT            0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4           0x0000_a000  PDPT        0x0000_b000  PD (1 GiB identity)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA start: RAM below is usable, the legacy hole follows
//! 0x000e_0000  ACPI tables (RSDP first)
//! 0x0010_0000  high memory: kernel, then RAM up to the 32-bit MMIO hole
//! 0xc000_0000  32-bit PCI MMIO window (512 MiB)
//! 0xe000_0000  PCI ECAM (bus 0)
//! 0xfec0_0000  IOAPIC       0xfee0_0000  LAPIC
//! 0x1_0000_0000 RAM above 4 GiB (when memory does not fit below the hole), then the
//!               64-bit PCI MMIO window.
//! ```

/// GDT location.
pub const BOOT_GDT_START: u64 = 0x500;
/// Maximum number of GDT entries we write.
pub const BOOT_GDT_MAX: usize = 4;
/// IDT location (an empty IDT: the kernel installs its own).
pub const BOOT_IDT_START: u64 = 0x520;
/// boot_params ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-table pages for the identity map used at the 64-bit entry point.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line we accept (the kernel's own limit is in the setup header).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// End of usable conventional memory.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables area (inside the legacy BIOS area, where the kernel also scans for the RSDP).
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_END: u64 = 0x100000;
/// Where a CPU starts after reset (F000:FFF0), just below 1 MiB.
pub const RESET_VECTOR: u64 = 0xffff0;
/// Start of high memory: where bzImage protected-mode code is loaded.
pub const HIMEM_START: u64 = 0x100000;

/// Start of the 32-bit MMIO hole: RAM below 4 GiB ends here at the latest.
pub const MEM_32BIT_HOLE_START: u64 = 0xc000_0000;
/// 32-bit PCI BAR window.
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCI Express enhanced configuration access (ECAM), bus 0 only.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
/// IOAPIC and LAPIC MMIO, as the in-kernel irqchip places them.
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's real-mode TSS (3 pages) sits just below the LAPIC area.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// First address above the 32-bit hole.
pub const RAM_64BIT_START: u64 = 0x1_0000_0000;
/// Size of the 64-bit PCI BAR window.
pub const PCI_MMIO64_SIZE: u64 = 64 << 30;

/// I/O ports of the ACPI power-management block (hardware-reduced ACPI).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
pub const ACPI_RESET_PORT: u16 = 0x602;
/// Value the guest writes to the reset register.
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// The S5 (soft-off) sleep type we advertise in `_S5_`.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;

/// COM1.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;

/// Where the RAM of a guest with `mem_size` bytes lives, as `(start, size)` ranges.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MEM_32BIT_HOLE_START {
        vec![(0, mem_size)]
    } else {
        vec![(0, MEM_32BIT_HOLE_START), (RAM_64BIT_START, mem_size - MEM_32BIT_HOLE_START)]
    }
}

/// Top of RAM below the 32-bit hole (exclusive).
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MEM_32BIT_HOLE_START)
}

/// The 64-bit PCI window: above all RAM, aligned to its own size, and inside the guest's
/// physical address space (`phys_bits`). `None` when it does not fit.
pub fn pci_mmio64_window(mem_size: u64, phys_bits: u8) -> Option<(u64, u64)> {
    let ram_top = ram_ranges(mem_size).last().map(|(start, size)| start + size).unwrap_or(0).max(RAM_64BIT_START);
    let start = ram_top.checked_next_multiple_of(PCI_MMIO64_SIZE)?;
    let end = start.checked_add(PCI_MMIO64_SIZE)?;
    let limit = 1u64.checked_shl(u32::from(phys_bits))?;
    (end <= limit).then_some((start, PCI_MMIO64_SIZE))
}

/// The PCI MMIO windows: the 32-bit one, and the 64-bit one when it fits.
pub fn pci_windows(mem_size: u64, phys_bits: u8) -> Vec<(u64, u64)> {
    std::iter::once((PCI_MMIO32_START, PCI_MMIO32_SIZE)).chain(pci_mmio64_window(mem_size, phys_bits)).collect()
}

/// Largest guest memory that fits the physical address space with the 64-bit PCI window.
pub fn max_memory(phys_bits: u8) -> u64 {
    let limit = 1u64.checked_shl(u32::from(phys_bits)).unwrap_or(u64::MAX);
    // RAM above 4 GiB + hole + 64-bit window (aligned) must stay below the limit.
    limit.saturating_sub(2 * PCI_MMIO64_SIZE).saturating_sub(RAM_64BIT_START - MEM_32BIT_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(low_ram_end(256 << 20), 256 << 20);
    }

    #[test]
    fn large_guest_skips_the_hole() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r, vec![(0, 0xc000_0000), (0x1_0000_0000, 1 << 30)]);
        assert_eq!(low_ram_end(4 << 30), 0xc000_0000);
    }

    #[test]
    fn mmio64_window_is_above_ram_and_aligned() {
        let (start, size) = pci_mmio64_window(256 << 20, 40).unwrap();
        assert_eq!(start, PCI_MMIO64_SIZE);
        assert_eq!(size, PCI_MMIO64_SIZE);
        let (start, _) = pci_mmio64_window(100 << 30, 40).unwrap();
        assert!(start >= (100u64 << 30) + RAM_64BIT_START - MEM_32BIT_HOLE_START);
        assert_eq!(start % PCI_MMIO64_SIZE, 0);
        assert!(pci_mmio64_window(1 << 40, 40).is_none());
    }

    // The fixed regions do not overlap (checked at compile time).
    const _: () = {
        assert!(PCI_MMIO32_START + PCI_MMIO32_SIZE <= PCI_ECAM_START);
        assert!(PCI_ECAM_START + PCI_ECAM_SIZE <= IOAPIC_START);
        assert!(ZERO_PAGE_START + 4096 <= BOOT_STACK_POINTER);
        assert!(BOOT_STACK_POINTER < PML4_START);
        assert!(PDE_START + 4096 <= CMDLINE_START);
        assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    };

    #[test]
    fn max_memory_leaves_room_for_the_windows() {
        assert!(max_memory(40) < 1 << 40);
    }
}
