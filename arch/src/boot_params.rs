//! Linux x86 boot protocol: the zero page (`boot_params`) and its e820 map.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};

use crate::layout::*;

/// e820 entry types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// Magic values of the boot protocol.
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
/// `loadflags` bit: the kernel may use the heap up to `heap_end_ptr`.
const CAN_USE_HEAP: u8 = 0x80;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootParamsError {
    #[error("the e820 map has more than {0} entries")]
    E820TooManyEntries(usize),
    #[error("the initramfs address {0:#x} does not fit the 32-bit boot protocol field")]
    InitrdAddressTooHigh(u64),
}

/// What the loader found and placed; everything the zero page needs.
#[derive(Debug, Clone, Default)]
pub struct BootParamsInput {
    /// The kernel's own setup header (bzImage). `None` for an ELF vmlinux.
    pub setup_header: Option<setup_header>,
    pub mem_size: u64,
    pub cmdline_addr: u64,
    /// Length of the command line without the NUL.
    pub cmdline_len: usize,
    /// `(address, size)` of the initramfs, if any.
    pub initrd: Option<(u64, u64)>,
    /// Physical address of the RSDP.
    pub rsdp_addr: Option<u64>,
}

/// The e820 map of a guest with `mem_size` bytes of RAM.
pub fn e820_map(mem_size: u64) -> Vec<boot_e820_entry> {
    let entry = |addr, size, kind| boot_e820_entry { addr, size, r#type: kind };
    let mut map = vec![entry(0, EBDA_START, E820_RAM)];
    let low_end = low_ram_end(mem_size);
    if low_end > HIMEM_START {
        map.push(entry(HIMEM_START, low_end - HIMEM_START, E820_RAM));
    }
    map.push(entry(PCI_ECAM_START, PCI_ECAM_SIZE, E820_RESERVED));
    if let Some(&(start, size)) = ram_ranges(mem_size).get(1) {
        map.push(entry(start, size, E820_RAM));
    }
    map
}

/// Builds the zero page.
pub fn build_boot_params(input: &BootParamsInput) -> Result<boot_params, BootParamsError> {
    let mut params = boot_params::default();
    match input.setup_header {
        Some(hdr) => params.hdr = hdr,
        None => {
            // ELF vmlinux: no setup header, make the fields the kernel checks up ourselves.
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = KERNEL_HDR_MAGIC;
            params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
        }
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.loadflags |= CAN_USE_HEAP;
    params.hdr.heap_end_ptr = (BOOT_STACK_POINTER - 0x200) as u16;
    params.hdr.cmd_line_ptr = input.cmdline_addr as u32;
    params.hdr.cmdline_size = input.cmdline_len as u32;
    if let Some((addr, size)) = input.initrd {
        let addr32 = u32::try_from(addr).map_err(|_| BootParamsError::InitrdAddressTooHigh(addr))?;
        params.hdr.ramdisk_image = addr32;
        params.hdr.ramdisk_size = size as u32;
    }
    if let Some(rsdp) = input.rsdp_addr {
        params.acpi_rsdp_addr = rsdp;
    }
    let map = e820_map(input.mem_size);
    if map.len() > params.e820_table.len() {
        return Err(BootParamsError::E820TooManyEntries(params.e820_table.len()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(map.iter()) {
        *slot = *entry;
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Where to put an initramfs of `size` bytes: as high as allowed, page aligned, below the
/// 32-bit hole, the kernel's `initrd_addr_max`, and above `kernel_end`.
pub fn initrd_address(mem_size: u64, size: u64, initrd_addr_max: Option<u32>, kernel_end: u64) -> Option<u64> {
    // Boot protocol: initrd_addr_max is the highest address the *last byte* may occupy.
    let max_end = initrd_addr_max.filter(|&m| m != 0).map(|m| u64::from(m) + 1).unwrap_or(0x3800_0000);
    let end = low_ram_end(mem_size).min(max_end);
    let start = end.checked_sub(size)? & !0xfff;
    (start >= kernel_end && start >= HIMEM_START).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(p: &boot_params) -> Vec<(u64, u64, u32)> {
        p.e820_table[..p.e820_entries as usize].iter().map(|e| (e.addr, e.size, e.r#type)).collect()
    }

    #[test]
    fn e820_small_guest() {
        let p = build_boot_params(&BootParamsInput { mem_size: 256 << 20, ..Default::default() }).unwrap();
        assert_eq!(
            entries(&p),
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x100000, (256 << 20) - 0x100000, E820_RAM),
                (0xe000_0000, 0x10_0000, E820_RESERVED),
            ]
        );
    }

    #[test]
    fn e820_large_guest_has_ram_above_4g_and_a_hole() {
        let p = build_boot_params(&BootParamsInput { mem_size: 6 << 30, ..Default::default() }).unwrap();
        let e = entries(&p);
        assert_eq!(e[1], (0x100000, 0xc000_0000 - 0x100000, E820_RAM));
        assert_eq!(e[3], (0x1_0000_0000, (6u64 << 30) - 0xc000_0000, E820_RAM));
        let ram: u64 = e.iter().filter(|x| x.2 == E820_RAM).map(|x| x.1).sum();
        // All RAM but the legacy hole between EBDA and 1 MiB is usable.
        assert_eq!(ram, (6u64 << 30) - (0x100000 - 0x9fc00));
        // Nothing reported as RAM inside the 32-bit MMIO hole.
        assert!(e.iter().filter(|x| x.2 == E820_RAM).all(|x| x.0 + x.1 <= 0xc000_0000 || x.0 >= 0x1_0000_0000));
    }

    #[test]
    fn header_fields_for_elf_and_bzimage() {
        let input = BootParamsInput {
            mem_size: 512 << 20,
            cmdline_addr: CMDLINE_START,
            cmdline_len: 12,
            initrd: Some((0x1000_0000, 0x2345)),
            rsdp_addr: Some(ACPI_START),
            ..Default::default()
        };
        let p = build_boot_params(&input).unwrap();
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ p.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.cmdline_size }, 12);
        assert_eq!({ p.hdr.ramdisk_image }, 0x1000_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x2345);
        assert_eq!({ p.acpi_rsdp_addr }, ACPI_START);

        let hdr = setup_header { version: 0x20f, kernel_alignment: 0x20_0000, ..Default::default() };
        let p = build_boot_params(&BootParamsInput { setup_header: Some(hdr), ..input }).unwrap();
        assert_eq!({ p.hdr.version }, 0x20f);
        assert_eq!({ p.hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
    }

    #[test]
    fn initrd_goes_high_and_aligned() {
        let a = initrd_address(256 << 20, 0x12345, Some(0x7fff_ffff), 0x200_0000).unwrap();
        assert_eq!(a % 4096, 0);
        assert!(a + 0x12345 <= 256 << 20);
        assert!(a + 0x12345 > (256 << 20) - 0x2000);
        // Respect initrd_addr_max.
        let a = initrd_address(4 << 30, 0x1000, Some(0x37ff_ffff), 0x200_0000).unwrap();
        assert_eq!(a, 0x3800_0000 - 0x1000);
        // Does not fit above the kernel.
        assert!(initrd_address(64 << 20, 60 << 20, None, 0x200_0000).is_none());
    }
}
