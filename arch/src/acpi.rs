//! ACPI tables: RSDP, XSDT, FADT (hardware-reduced), MADT, MCFG and the DSDT.
//!
//! The DSDT describes the PCI host bridge (with `_CRS` covering the bus, the config ports and
//! both MMIO windows, and an `_OSC` that hands the OS native AER), COM1 and the `_S5_` sleep
//! state. Callers can add children to the `\_SB.PCI0` device (hotplug slots) without touching
//! this module.

use acpi_tables::aml::{self, AddressSpaceCacheable};
use acpi_tables::fadt::{FADTBuilder, Flags, PmProfile};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::layout::*;

const OEM_ID: [u8; 6] = *b"VFVMM ";
const OEM_TABLE_ID: [u8; 8] = *b"VFVMMTBL";
const OEM_REVISION: u32 = 1;
/// FADT IAPC_BOOT_ARCH: VGA not present, no 8042, no CMOS RTC flags beyond that.
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables ({0} bytes) do not fit the ACPI area")]
    TooLarge(u64),
    #[error("cannot write ACPI tables to guest memory: {0}")]
    Write(GuestMemoryError),
}

/// `_OSC` UUID of a PCI Express / PCI host bridge (PCI Firmware spec 4.5.1).
pub const PCI_HOST_BRIDGE_OSC_UUID: &str = "33DB4D5B-1FF7-401C-9657-7441C03DD766";
/// `_OSC` control bits (CDW3) of the PCI host bridge UUID (PCI Firmware spec 4.5.1).
pub const OSC_CTRL_PCIE_NATIVE_HOTPLUG: u32 = 1 << 0;
pub const OSC_CTRL_SHPC_NATIVE_HOTPLUG: u32 = 1 << 1;
pub const OSC_CTRL_PCIE_PME: u32 = 1 << 2;
pub const OSC_CTRL_PCIE_AER: u32 = 1 << 3;
pub const OSC_CTRL_PCIE_CAPABILITY: u32 = 1 << 4;
pub const OSC_CTRL_PCIE_LTR: u32 = 1 << 5;
pub const OSC_CTRL_PCIE_DPC: u32 = 1 << 7;
/// What the firmware grants of what the OS asks for: AER and the PCIe capability structure.
pub const OSC_GRANTED_CONTROLS: u32 = OSC_CTRL_PCIE_AER | OSC_CTRL_PCIE_CAPABILITY;
/// `_OSC` status bits (CDW1, ACPI 6.2.11).
const OSC_STATUS_UNRECOGNIZED_UUID: u32 = 1 << 2;
const OSC_STATUS_UNRECOGNIZED_REVISION: u32 = 1 << 3;
const OSC_STATUS_CAPABILITIES_MASKED: u32 = 1 << 4;

/// What the tables describe.
#[derive(Debug, Clone)]
pub struct AcpiConfig {
    pub cpu_count: u8,
    pub pci_mmio32: (u64, u64),
    pub pci_mmio64: Option<(u64, u64)>,
    /// Describe the PCI hotplug slots, the GED and the power button.
    pub hotplug: bool,
}

/// `\_SB.PCI0._OSC`: the OS asks the host bridge for control of PCIe features.
///
/// Why: Linux enables its AER service on PCIe ports and Root Complex Event Collectors only when
/// the host bridge's `_OSC` grants it AER control (`host_bridge->native_aer`); without an
/// `_OSC` the RCEC in [`crate::acpi_hotplug::RCEC_SLOT`] would never report the passthrough functions' errors. Linux
/// also insists on PCI Express Capability Structure control before it takes anything, so that
/// is granted too. Everything else stays with the firmware: native PCIe/SHPC hotplug (the VMM
/// hotplugs through the ACPI GED slots, and granting native hotplug would make the guest's
/// pciehp and acpiphp fight over the slots), PME, LTR and DPC (none of them emulated).
///
/// ```text
/// Method (_OSC, 4, Serialized) {
///     CreateDWordField (Arg3, 0, CDW1)
///     If (Arg0 == ToUUID ("33DB4D5B-1FF7-401C-9657-7441C03DD766")) {
///         CreateDWordField (Arg3, 4, CDW2)   // support: nothing depends on it
///         CreateDWordField (Arg3, 8, CDW3)   // control
///         Local0 = CDW3 & 0x18
///         If (Arg1 != 1) { CDW1 |= 0x08 }    // unrecognized revision
///         If (CDW3 != Local0) { CDW1 |= 0x10 } // capabilities masked
///         CDW3 = Local0
///     } Else {
///         CDW1 |= 0x04                       // unrecognized UUID
///     }
///     Return (Arg3)
/// }
/// ```
///
/// No state is kept between calls, so a query (CDW1 bit 0) and a request get the same answer,
/// as the spec asks of a platform that never changes its mind.
fn pci_host_bridge_osc() -> crate::acpi_hotplug::RawAml {
    let (arg0, arg1, arg3) = (aml::Arg(0), aml::Arg(1), aml::Arg(3));
    let local0 = aml::Local(0);
    let (cdw1, cdw2, cdw3) = (aml::Path::new("CDW1"), aml::Path::new("CDW2"), aml::Path::new("CDW3"));
    let (off4, off8) = (4u8, 8u8);
    let create_cdw1 = aml::CreateDWordField::new(&cdw1, &arg3, &aml::ZERO);

    let uuid = aml::Uuid::new(PCI_HOST_BRIDGE_OSC_UUID);
    let is_pci = aml::Equal::new(&arg0, &uuid);
    let create_cdw2 = aml::CreateDWordField::new(&cdw2, &arg3, &off4);
    let create_cdw3 = aml::CreateDWordField::new(&cdw3, &arg3, &off8);
    let granted = OSC_GRANTED_CONTROLS;
    let mask = aml::And::new(&local0, &cdw3, &granted);
    let revision_one = 1u8;
    let bad_revision = aml::NotEqual::new(&arg1, &revision_one);
    let revision_bit = OSC_STATUS_UNRECOGNIZED_REVISION;
    let flag_revision = aml::Or::new(&cdw1, &cdw1, &revision_bit);
    let if_bad_revision = aml::If::new(&bad_revision, vec![&flag_revision]);
    let masked = aml::NotEqual::new(&cdw3, &local0);
    let masked_bit = OSC_STATUS_CAPABILITIES_MASKED;
    let flag_masked = aml::Or::new(&cdw1, &cdw1, &masked_bit);
    let if_masked = aml::If::new(&masked, vec![&flag_masked]);
    let grant = aml::Store::new(&cdw3, &local0);
    let if_pci = aml::If::new(&is_pci, vec![&create_cdw2, &create_cdw3, &mask, &if_bad_revision, &if_masked, &grant]);

    let uuid_bit = OSC_STATUS_UNRECOGNIZED_UUID;
    let flag_uuid = aml::Or::new(&cdw1, &cdw1, &uuid_bit);
    let else_other = aml::Else::new(vec![&flag_uuid]);
    let ret = aml::Return::new(&arg3);
    // Serialized: the method creates named buffer fields, which a re-entered non-serialized
    // method would create twice (AE_ALREADY_EXISTS).
    let osc = aml::Method::new("_OSC".into(), 4, true, vec![&create_cdw1, &if_pci, &else_other, &ret]);
    let mut out = Vec::new();
    osc.to_aml_bytes(&mut out);
    crate::acpi_hotplug::RawAml(out)
}

/// The DSDT, with `pci_children` added inside `\_SB.PCI0`.
pub fn dsdt(cfg: &AcpiConfig, pci_children: &[&dyn Aml]) -> Vec<u8> {
    let (m32_start, m32_size) = cfg.pci_mmio32;
    let bus = aml::AddressSpace::new_bus_number(0u16, 0u16);
    let cfg_ports = aml::IO::new(0xcf8, 0xcf8, 1, 8);
    let io_low = aml::AddressSpace::new_io(0u16, 0x0cf7u16, None);
    let io_high = aml::AddressSpace::new_io(0x0d00u16, 0xffffu16, None);
    let mmio32 = aml::AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        m32_start as u32,
        (m32_start + m32_size - 1) as u32,
        None,
    );
    let mmio64 = cfg.pci_mmio64.map(|(start, size)| {
        aml::AddressSpace::new_memory(AddressSpaceCacheable::NotCacheable, true, start, start + size - 1, None)
    });
    let mut crs: Vec<&dyn Aml> = vec![&bus, &cfg_ports, &io_low, &io_high, &mmio32];
    if let Some(m) = &mmio64 {
        crs.push(m);
    }
    let pci_crs = aml::ResourceTemplate::new(crs);

    let pci_hid = aml::EISAName::new("PNP0A08");
    let pci_cid = aml::EISAName::new("PNP0A03");
    let hid = aml::Name::new("_HID".into(), &pci_hid);
    let cid = aml::Name::new("_CID".into(), &pci_cid);
    let adr = aml::Name::new("_ADR".into(), &aml::ZERO);
    let seg = aml::Name::new("_SEG".into(), &aml::ZERO);
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let bbn = aml::Name::new("_BBN".into(), &aml::ZERO);
    let crs = aml::Name::new("_CRS".into(), &pci_crs);
    let osc = pci_host_bridge_osc();
    let mut pci0_children: Vec<&dyn Aml> = vec![&hid, &cid, &adr, &seg, &uid, &bbn, &crs, &osc];
    let hotplug = cfg.hotplug.then(crate::acpi_hotplug::pci_hotplug_aml);
    if let Some(h) = &hotplug {
        pci0_children.push(h);
    }
    pci0_children.extend_from_slice(pci_children);
    let pci0 = aml::Device::new("_SB_.PCI0".into(), pci0_children);

    // ECAM is reserved through a motherboard-resources device, as the kernel checks.
    let ecam = aml::Memory32Fixed::new(false, PCI_ECAM_START as u32, PCI_ECAM_SIZE as u32);
    let ecam_crs = aml::ResourceTemplate::new(vec![&ecam]);
    let mbrs_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C02"));
    let mbrs_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let mbrs_crs = aml::Name::new("_CRS".into(), &ecam_crs);
    let mbrs = aml::Device::new("_SB_.MBRS".into(), vec![&mbrs_hid, &mbrs_uid, &mbrs_crs]);

    let com1_io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let com1_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let com1_crs = aml::Name::new("_CRS".into(), &com1_crs);
    let com1 = aml::Device::new("_SB_.COM1".into(), vec![&com1_hid, &com1_uid, &com1_crs]);

    let s5_package = aml::Package::new(vec![&ACPI_S5_SLEEP_TYPE, &aml::ZERO, &aml::ZERO, &aml::ZERO]);
    let s5 = aml::Name::new("_S5_".into(), &s5_package);

    let mut body = Vec::new();
    pci0.to_aml_bytes(&mut body);
    mbrs.to_aml_bytes(&mut body);
    com1.to_aml_bytes(&mut body);
    if cfg.hotplug {
        crate::acpi_hotplug::ged_aml().to_aml_bytes(&mut body);
    }
    s5.to_aml_bytes(&mut body);

    let mut table = acpi_tables::sdt::Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.append_slice(&body);
    table.as_slice().to_vec()
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let io_byte = |port: u16| GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port.into());
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .preferred_pm_profile(PmProfile::EnterpriseServer);
    b.sleep_control_reg = io_byte(ACPI_SLEEP_CONTROL_PORT);
    b.sleep_status_reg = io_byte(ACPI_SLEEP_STATUS_PORT);
    b.reset_reg = io_byte(ACPI_RESET_PORT);
    b.reset_value = ACPI_RESET_VALUE;
    b.iapc_boot_arch = IAPC_BOOT_ARCH_VGA_NOT_PRESENT.into();
    b.hypervisor_vendor_identity = u64::from_le_bytes(*b"VFVMM\0\0\0").into();
    let mut out = Vec::new();
    b.finalize().to_aml_bytes(&mut out);
    out
}

fn madt(cpu_count: u8) -> Vec<u8> {
    let mut m = MADT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION, LocalInterruptController::Address(APIC_START as u32));
    for cpu in 0..cpu_count {
        m.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    m.add_structure(IoApic::new(0, IOAPIC_START as u32, 0));
    let mut out = Vec::new();
    m.to_aml_bytes(&mut out);
    out
}

fn mcfg() -> Vec<u8> {
    let mut m = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    m.add_ecam(PCI_ECAM_START, 0, 0, 0);
    let mut out = Vec::new();
    m.to_aml_bytes(&mut out);
    out
}

/// All tables with their guest addresses, RSDP first (at `ACPI_START`).
pub fn build_tables(cfg: &AcpiConfig, pci_children: &[&dyn Aml]) -> Result<Vec<(u64, Vec<u8>)>, AcpiError> {
    let align = |x: u64| x.next_multiple_of(8);
    let mut next = align(ACPI_START + Rsdp::len() as u64);
    let mut place = |len: usize| {
        let at = next;
        next = align(next + len as u64);
        at
    };
    let dsdt = dsdt(cfg, pci_children);
    let dsdt_addr = place(dsdt.len());
    let fadt = fadt(dsdt_addr);
    let fadt_addr = place(fadt.len());
    let madt = madt(cfg.cpu_count);
    let madt_addr = place(madt.len());
    let mcfg = mcfg();
    let mcfg_addr = place(mcfg.len());

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for addr in [fadt_addr, madt_addr, mcfg_addr] {
        xsdt.add_entry(addr);
    }
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let xsdt_addr = place(xsdt_bytes.len());
    if next > ACPI_END {
        return Err(AcpiError::TooLarge(next - ACPI_START));
    }
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    Ok(vec![
        (ACPI_START, rsdp),
        (dsdt_addr, dsdt),
        (fadt_addr, fadt),
        (madt_addr, madt),
        (mcfg_addr, mcfg),
        (xsdt_addr, xsdt_bytes),
    ])
}

/// Writes all tables into guest memory; returns the RSDP address.
pub fn write_tables<M: GuestMemory>(mem: &M, cfg: &AcpiConfig, pci_children: &[&dyn Aml]) -> Result<u64, AcpiError> {
    for (addr, bytes) in build_tables(cfg, pci_children)? {
        mem.write_slice(&bytes, GuestAddress(addr)).map_err(AcpiError::Write)?;
    }
    Ok(ACPI_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AcpiConfig {
        AcpiConfig {
            cpu_count: 2,
            pci_mmio32: (PCI_MMIO32_START, PCI_MMIO32_SIZE),
            pci_mmio64: Some((64 << 30, 64 << 30)),
            hotplug: true,
        }
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn every_table_checksums_and_has_its_length() {
        let tables = build_tables(&cfg(), &[]).unwrap();
        let (rsdp_addr, rsdp) = &tables[0];
        assert_eq!(*rsdp_addr, ACPI_START);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        for (_, t) in &tables[1..] {
            assert_eq!(sum(t), 0, "checksum of {}", String::from_utf8_lossy(&t[..4]));
            assert_eq!(u32_at(t, 4) as usize, t.len());
        }
        let sigs: Vec<&[u8]> = tables[1..].iter().map(|(_, t)| &t[..4]).collect();
        assert_eq!(sigs, vec![&b"DSDT"[..], b"FACP", b"APIC", b"MCFG", b"XSDT"]);
        // Nothing overlaps and everything fits the ACPI area.
        for w in tables.windows(2) {
            assert!(w[0].0 + w[0].1.len() as u64 <= w[1].0);
        }
        let last = tables.last().unwrap();
        assert!(last.0 + last.1.len() as u64 <= ACPI_END);
    }

    #[test]
    fn rsdp_xsdt_fadt_point_at_each_other() {
        let tables = build_tables(&cfg(), &[]).unwrap();
        let find = |sig: &[u8]| tables.iter().find(|(_, t)| &t[..4] == sig).unwrap();
        let (xsdt_addr, xsdt) = find(b"XSDT");
        assert_eq!(u64_at(&tables[0].1, 24), *xsdt_addr);
        let entries: Vec<u64> = (36..xsdt.len()).step_by(8).map(|o| u64_at(xsdt, o)).collect();
        assert_eq!(entries, vec![find(b"FACP").0, find(b"APIC").0, find(b"MCFG").0]);
        let (_, fadt) = find(b"FACP");
        assert_eq!(u64_at(fadt, 140), find(b"DSDT").0); // X_DSDT
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & Flags::HwReducedAcpi as u32, 0);
        assert_ne!(flags & Flags::ResetRegSup as u32, 0);
        // RESET_REG: system I/O at the reset port; value.
        assert_eq!(fadt[116], 1);
        assert_eq!(u64_at(fadt, 120), u64::from(ACPI_RESET_PORT));
        assert_eq!(fadt[128], ACPI_RESET_VALUE);
        // SLEEP_CONTROL_REG / SLEEP_STATUS_REG.
        assert_eq!(fadt[244], 1);
        assert_eq!(u64_at(fadt, 248), u64::from(ACPI_SLEEP_CONTROL_PORT));
        assert_eq!(u64_at(fadt, 260), u64::from(ACPI_SLEEP_STATUS_PORT));
    }

    #[test]
    fn madt_lists_every_cpu_and_the_ioapic() {
        let m = madt(3);
        assert_eq!(u32_at(&m, 36), APIC_START as u32);
        let mut off = 44;
        let mut lapics = vec![];
        let mut ioapics = vec![];
        while off < m.len() {
            let (ty, len) = (m[off], m[off + 1] as usize);
            match ty {
                0 => lapics.push((m[off + 2], m[off + 3], u32_at(&m, off + 4))),
                1 => ioapics.push(u32_at(&m, off + 4)),
                _ => panic!("unexpected MADT entry {ty}"),
            }
            off += len;
        }
        assert_eq!(lapics, vec![(0, 0, 1), (1, 1, 1), (2, 2, 1)]);
        assert_eq!(ioapics, vec![IOAPIC_START as u32]);
    }

    #[test]
    fn mcfg_covers_bus_zero() {
        let m = mcfg();
        assert_eq!(u64_at(&m, 44), PCI_ECAM_START);
        assert_eq!((m[54], m[55]), (0, 0));
    }

    #[test]
    fn dsdt_names_the_devices_and_grows() {
        let d = dsdt(&cfg(), &[]);
        let has = |needle: &[u8], hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        for name in [&b"PCI0"[..], b"COM1", b"MBRS", b"_S5_", b"_CRS", b"_BBN", b"_OSC"] {
            assert!(has(name, &d), "{}", String::from_utf8_lossy(name));
        }
        let extra = aml::Name::new("SLTX".into(), &aml::ONE);
        let grown = dsdt(&cfg(), &[&extra]);
        assert!(has(b"SLTX", &grown));
        assert!(grown.len() > d.len());
        assert_eq!(sum(&grown), 0);
    }

    /// The host bridge's `_OSC` is there with or without hotplug, recognizes the PCI host
    /// bridge UUID and masks the control dword down to AER and the PCIe capability.
    #[test]
    fn dsdt_has_a_pci_host_bridge_osc() {
        let has = |needle: &[u8], hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        // ToUUID("33DB4D5B-1FF7-401C-9657-7441C03DD766"): mixed-endian, as ACPI encodes it.
        let uuid = [0x5b, 0x4d, 0xdb, 0x33, 0xf7, 0x1f, 0x1c, 0x40, 0x96, 0x57, 0x74, 0x41, 0xc0, 0x3d, 0xd7, 0x66];
        // Local0 = CDW3 & 0x18: AndOp, CDW3, BytePrefix 0x18, Local0.
        let mask = [&[0x7b][..], b"CDW3", &[0x0a, 0x18, 0x60]].concat();
        for hotplug in [true, false] {
            let d = dsdt(&AcpiConfig { hotplug, ..cfg() }, &[]);
            assert!(has(b"_OSC", &d));
            assert!(has(&uuid, &d));
            assert!(has(&mask, &d));
        }
        assert_eq!(OSC_GRANTED_CONTROLS, 0x18);
        let never = OSC_CTRL_PCIE_NATIVE_HOTPLUG
            | OSC_CTRL_SHPC_NATIVE_HOTPLUG
            | OSC_CTRL_PCIE_PME
            | OSC_CTRL_PCIE_LTR
            | OSC_CTRL_PCIE_DPC;
        assert_eq!(OSC_GRANTED_CONTROLS & never, 0, "the VMM keeps hotplug, PME, LTR and DPC");
    }

    /// Runs an ACPICA tool (from acpica-tools) in `dir`; `None` when it is not installed and
    /// VFVMM_REQUIRE_IASL=1 (CI sets it) does not make it mandatory.
    fn run_acpica(tool: &str, args: &[&std::ffi::OsStr], dir: &std::path::Path) -> Option<std::process::Output> {
        let out =
            std::process::Command::new(tool).args(args).current_dir(dir).stdin(std::process::Stdio::null()).output();
        match out {
            Err(e) if std::env::var_os("VFVMM_REQUIRE_IASL").is_none() => {
                eprintln!("note: {tool} not available ({e}); install acpica-tools");
                None
            }
            Err(e) => panic!("{tool} required but not runnable: {e}"),
            Ok(out) => {
                assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
                Some(out)
            }
        }
    }

    /// The DSDT must disassemble with ACPICA's iasl. Set VFVMM_REQUIRE_IASL=1 (CI does) to
    /// make a missing iasl an error instead of a note.
    #[test]
    fn dsdt_disassembles_with_iasl() {
        let dir = std::env::temp_dir().join(format!("vfvmm-dsdt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dsdt.aml");
        std::fs::write(&path, dsdt(&cfg(), &[])).unwrap();
        if run_acpica("iasl", &["-d".as_ref(), path.as_os_str()], &dir).is_some() {
            let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap();
            assert!(dsl.contains("PNP0A08"), "{dsl}");
            assert!(dsl.contains("PNP0501"), "{dsl}");
            assert!(dsl.contains("Name (_S5,"), "{dsl}");
            for needle in [
                "ACPI0013",
                "Method (_EVT, 1, Serialized)",
                "Device (SL1E)",
                "Method (_EJ0, 1",
                "PCNT ()",
                "Notify (SL05, 0x03)",
                "Notify (\\_SB.PWRB, 0x80)",
                "B0EJ = (One << Arg0)",
                "Method (_OSC, 4, Serialized)",
                "CreateDWordField (Arg3, Zero, CDW1)",
                "CreateDWordField (Arg3, 0x08, CDW3)",
                "Local0 = (CDW3 & 0x18)",
                "CDW3 = Local0",
                "Return (Arg3)",
            ] {
                assert!(dsl.contains(needle), "DSDT lacks {needle}:\n{dsl}");
            }
            // iasl prints ToUUID in lower case.
            assert!(dsl.to_uppercase().contains(PCI_HOST_BRIDGE_OSC_UUID), "{dsl}");
            // Slot 31 is the RCEC's, not a hotplug slot.
            assert!(!dsl.contains("SL1F"), "{dsl}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Runs `\_SB.PCI0._OSC` in ACPICA's acpiexec (shipped with iasl in acpica-tools) and
    /// checks the returned buffer: what Linux's negotiation sees.
    #[test]
    fn osc_grants_only_aer_and_the_pcie_capability() {
        const PCI: &str = "(5b 4d db 33 f7 1f 1c 40 96 57 74 41 c0 3d d7 66)";
        const OTHER: &str = "(00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff)";
        // (uuid, revision, CDW1, CDW3) in, (CDW1, CDW3) out; CDW2 (support) is always 0x1f
        // and must come back untouched.
        let cases: [(&str, u32, u32, u32, u32, u32); 6] = [
            // Linux's first query asks for everything it can take: masked down, bit 4 set.
            (PCI, 1, 0x1, 0xbf, 0x11, 0x18),
            // Its follow-up query and the request ask for exactly the grant: clean.
            (PCI, 1, 0x1, 0x18, 0x1, 0x18),
            (PCI, 1, 0x0, 0x18, 0x0, 0x18),
            // Hotplug and PME are never granted.
            (PCI, 1, 0x0, 0x1f, 0x10, 0x18),
            (PCI, 2, 0x0, 0x08, 0x08, 0x08),
            (OTHER, 1, 0x0, 0xff, 0x04, 0xff),
        ];
        let dir = std::env::temp_dir().join(format!("vfvmm-osc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dsdt.aml");
        std::fs::write(&path, dsdt(&cfg(), &[])).unwrap();
        let dwords = |v: &[u32]| v.iter().flat_map(|d| d.to_le_bytes()).map(|b| format!("{b:02x}")).collect::<Vec<_>>();
        let commands: Vec<String> = cases
            .iter()
            .map(|(uuid, rev, cdw1, cdw3, _, _)| {
                format!("evaluate \\_SB.PCI0._OSC {uuid} {rev} 3 ({})", dwords(&[*cdw1, 0x1f, *cdw3]).join(" "))
            })
            .collect();
        let batch = commands.join("; ");
        if let Some(out) = run_acpica("acpiexec", &["-b".as_ref(), batch.as_ref(), path.as_os_str()], &dir) {
            let stdout = String::from_utf8_lossy(&out.stdout);
            // "  [Buffer] Length 0C =     0000: 11 00 00 00 1F 00 00 00 18 00 00 00   // ...."
            let returned: Vec<String> = stdout
                .lines()
                .filter(|l| l.contains("[Buffer] Length 0C"))
                .filter_map(|l| l.split("0000:").nth(1))
                .map(|l| l.split("//").next().unwrap_or("").trim().to_lowercase())
                .collect();
            let want: Vec<String> =
                cases.iter().map(|(_, _, _, _, cdw1, cdw3)| dwords(&[*cdw1, 0x1f, *cdw3]).join(" ")).collect();
            assert_eq!(returned, want, "acpiexec output:\n{stdout}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
