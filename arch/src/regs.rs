//! vCPU register state at the kernel's 64-bit entry point: GDT, identity page tables,
//! long-mode segment registers, general registers and the FPU.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::layout::*;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write the boot GDT/IDT to guest memory: {0}")]
    WriteDescriptorTables(GuestMemoryError),
    #[error("cannot write the boot page tables to guest memory: {0}")]
    WritePageTables(GuestMemoryError),
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// A GDT entry from its parts.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, 64-bit code, data, TSS.
pub const BOOT_GDT: [u64; BOOT_GDT_MAX] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff), // code: present, long mode, 4 KiB granularity
    gdt_entry(0xc093, 0, 0xfffff), // data: present, 32-bit, 4 KiB granularity
    gdt_entry(0x808b, 0, 0xfffff), // TSS: present, busy 64-bit TSS
];

/// Turns a GDT entry into the `kvm_segment` the CPU would load for selector `index * 8`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    if g == 1 {
        limit = (limit << 12) | 0xfff;
    }
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(((entry >> 47) & 1) == 0),
        padding: 0,
    }
}

/// Writes the GDT, an empty IDT and identity page tables for the first GiB (2 MiB pages).
pub fn write_boot_structures<M: GuestMemory>(mem: &M) -> Result<(), RegsError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64)).map_err(RegsError::WriteDescriptorTables)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START)).map_err(RegsError::WriteDescriptorTables)?;

    // PML4[0] -> PDPT, PDPT[0] -> PD, PD[i] -> 2 MiB page i (present | rw | ps).
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START)).map_err(RegsError::WritePageTables)?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START)).map_err(RegsError::WritePageTables)?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8)).map_err(RegsError::WritePageTables)?;
    }
    Ok(())
}

/// Real-mode code at the x86 reset vector (F000:FFF0). Without firmware nothing else is there;
/// a guest that restarts through the BIOS (Linux does with hardware-reduced ACPI and no EFI)
/// lands here and asks for a reset through the ACPI reset register.
pub fn reset_vector_stub() -> [u8; 9] {
    let [port_lo, port_hi] = ACPI_RESET_PORT.to_le_bytes();
    [
        0xba,
        port_lo,
        port_hi, // mov dx, ACPI_RESET_PORT
        0xb0,
        ACPI_RESET_VALUE, // mov al, ACPI_RESET_VALUE
        0xee,             // out dx, al
        0xf4,             // hlt
        0xeb,
        0xfd, // jmp short to the hlt
    ]
}

/// Writes [`reset_vector_stub`] at the reset vector.
pub fn write_reset_vector<M: GuestMemory>(mem: &M) -> Result<(), RegsError> {
    mem.write_slice(&reset_vector_stub(), GuestAddress(RESET_VECTOR)).map_err(RegsError::WriteDescriptorTables)
}

/// Special registers for the 64-bit entry: long mode, paging on, flat segments.
pub fn long_mode_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment_from_gdt(BOOT_GDT[1], 1);
    let data = segment_from_gdt(BOOT_GDT[2], 2);
    let tss = segment_from_gdt(BOOT_GDT[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// General registers for the 64-bit Linux entry point: `rsi` points at the zero page.
pub fn linux_entry_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// FPU state after reset, as the kernel expects it.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn gdt_entries_decode_to_long_mode_segments() {
        let code = segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!(code.selector, 8);
        assert_eq!((code.l, code.db, code.present, code.s, code.type_), (1, 0, 1, 1, 0xb));
        assert_eq!(code.limit, 0xffff_ffff);
        let data = segment_from_gdt(BOOT_GDT[2], 2);
        assert_eq!((data.l, data.db, data.present, data.type_), (0, 1, 1, 3));
        let tss = segment_from_gdt(BOOT_GDT[3], 3);
        assert_eq!((tss.s, tss.type_, tss.present), (0, 0xb, 1));
        assert_eq!(segment_from_gdt(BOOT_GDT[0], 0).unusable, 1);
    }

    #[test]
    fn page_tables_identity_map_first_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_boot_structures(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let pdpte: u64 = mem.read_obj(GuestAddress(PDPTE_START)).unwrap();
        assert_eq!(pdpte, PDE_START | 3);
        for i in [0u64, 1, 255, 511] {
            let pde: u64 = mem.read_obj(GuestAddress(PDE_START + i * 8)).unwrap();
            assert_eq!(pde, (i << 21) | 0x83);
        }
        let gdt1: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(gdt1, BOOT_GDT[1]);
    }

    #[test]
    fn reset_vector_stub_fits_below_1mib_and_writes_the_reset_port() {
        let stub = reset_vector_stub();
        assert!(RESET_VECTOR + stub.len() as u64 <= HIMEM_START);
        assert_eq!(&stub[..6], &[0xba, 0x02, 0x06, 0xb0, 0x01, 0xee]);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_reset_vector(&mem).unwrap();
        let mut b = [0u8; 9];
        mem.read_slice(&mut b, GuestAddress(0xffff0)).unwrap();
        assert_eq!(b, stub);
    }

    #[test]
    fn sregs_enable_long_mode() {
        let s = long_mode_sregs(kvm_sregs::default());
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr0 & X86_CR0_PE, 0);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cs.selector, 8);
        let r = linux_entry_regs(0x1000200);
        assert_eq!((r.rip, r.rsi, r.rflags), (0x1000200, ZERO_PAGE_START, 2));
    }
}
