//! Loading a guest: the kernel (bzImage or ELF vmlinux), initramfs, command line, zero page
//! and ACPI tables, and where the boot vCPU starts.

use std::fs::File;
use std::io::{Seek, SeekFrom};

use arch::boot_params::{build_boot_params, initrd_address, BootParamsInput};
use arch::layout::*;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, load_cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use crate::platform::config::{KernelConfig, KernelFormat};
use crate::platform::memory::GuestMemory;

/// 64-bit entry point offset inside a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open '{path}': {source}")]
    Open { path: String, source: std::io::Error },
    #[error("cannot load kernel '{path}': {source}")]
    LoadKernel { path: String, source: linux_loader::loader::Error },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("initramfs '{path}' ({size} bytes) does not fit in guest memory below {limit:#x} above the kernel")]
    InitrdDoesNotFit { path: String, size: u64, limit: u64 },
    #[error("cannot copy initramfs '{path}' into guest memory: {reason}")]
    LoadInitrd { path: String, reason: String },
    #[error(transparent)]
    BootParams(#[from] arch::boot_params::BootParamsError),
    #[error(transparent)]
    Regs(#[from] arch::regs::RegsError),
    #[error(transparent)]
    Acpi(#[from] arch::acpi::AcpiError),
    #[error("cannot write the payload to guest memory: {0}")]
    WritePayload(vm_memory::GuestMemoryError),
    #[error("cannot write boot parameters to guest memory: {0}")]
    WriteZeroPage(vm_memory::GuestMemoryError),
}

/// Where and how the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPoint {
    /// 64-bit Linux entry: long mode, `rsi` = zero page.
    Linux64 { rip: u64 },
    /// 16-bit real mode at `cs:0` with `cs = load_address >> 4` (flat test payloads).
    RealMode { load_address: u64 },
}

/// Loads the kernel and everything it needs; returns the entry point.
pub fn load_linux(
    mem: &GuestMemory,
    kernel: &KernelConfig,
    mem_size: u64,
    acpi: &arch::acpi::AcpiConfig,
) -> Result<EntryPoint, BootError> {
    let path = kernel.path.display().to_string();
    let mut file = File::open(&kernel.path).map_err(|source| BootError::Open { path: path.clone(), source })?;
    let result = match kernel.format {
        KernelFormat::BzImage => BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))),
        KernelFormat::Elf => Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))),
    }
    .map_err(|source| BootError::LoadKernel { path: path.clone(), source })?;
    let rip = match kernel.format {
        KernelFormat::BzImage => result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
        KernelFormat::Elf => result.kernel_load.0,
    };

    let max_cmdline = result
        .setup_header
        .map(|h| h.cmdline_size as usize)
        .filter(|&n| n > 0)
        .unwrap_or(CMDLINE_MAX_SIZE - 1)
        .min(CMDLINE_MAX_SIZE - 1);
    if kernel.cmdline.len() > max_cmdline {
        return Err(BootError::Cmdline(format!(
            "{} bytes is longer than the kernel's limit of {max_cmdline}",
            kernel.cmdline.len()
        )));
    }
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    if !kernel.cmdline.is_empty() {
        cmdline.insert_str(&kernel.cmdline).map_err(|e| BootError::Cmdline(e.to_string()))?;
    }
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline).map_err(|e| BootError::Cmdline(e.to_string()))?;

    let initrd = match &kernel.initramfs {
        Some(p) => {
            Some(load_initrd(mem, p, mem_size, result.setup_header.map(|h| h.initrd_addr_max), result.kernel_end)?)
        }
        None => None,
    };

    arch::regs::write_boot_structures(mem)?;
    let rsdp = arch::acpi::write_tables(mem, acpi, &[])?;
    let params = build_boot_params(&BootParamsInput {
        setup_header: result.setup_header,
        mem_size,
        cmdline_addr: CMDLINE_START,
        cmdline_len: kernel.cmdline.len(),
        initrd,
        rsdp_addr: Some(rsdp),
    })?;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START)).map_err(BootError::WriteZeroPage)?;
    Ok(EntryPoint::Linux64 { rip })
}

fn load_initrd(
    mem: &GuestMemory,
    path: &std::path::Path,
    mem_size: u64,
    initrd_addr_max: Option<u32>,
    kernel_end: u64,
) -> Result<(u64, u64), BootError> {
    let display = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::Open { path: display.clone(), source })?;
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(|e| BootError::LoadInitrd { path: display.clone(), reason: e.to_string() })?;
    file.rewind().map_err(|e| BootError::LoadInitrd { path: display.clone(), reason: e.to_string() })?;
    let addr = initrd_address(mem_size, size, initrd_addr_max, kernel_end).ok_or(BootError::InitrdDoesNotFit {
        path: display.clone(),
        size,
        limit: low_ram_end(mem_size),
    })?;
    let len =
        usize::try_from(size).map_err(|e| BootError::LoadInitrd { path: display.clone(), reason: e.to_string() })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|e| BootError::LoadInitrd { path: display, reason: e.to_string() })?;
    Ok((addr, size))
}

/// Copies a flat real-mode payload to `load_address`.
pub fn load_flat(mem: &GuestMemory, code: &[u8], load_address: u64) -> Result<EntryPoint, BootError> {
    mem.write_slice(code, GuestAddress(load_address)).map_err(BootError::WritePayload)?;
    Ok(EntryPoint::RealMode { load_address })
}
