//! AML for ACPI PCI hotplug on the root bus and the power button, driven through a Generic
//! Event Device (hardware-reduced ACPI):
//! - `\_SB.PCI0.SLxx` (slots 1..=30) with `_ADR`, `_SUN` and `_EJ0`; slot 31 is the RCEC's;
//! - a register block in I/O space: slots to check (`PCIU`), slots to eject (`PCID`), and the
//!   eject register the guest's `_EJ0` writes (`B0EJ`);
//! - `\_SB.GED_` (`ACPI0013`) whose interrupt runs `_EVT`: bit 0 of its event register notifies
//!   the slots (`PCNT`), bit 1 presses `\_SB.PWRB` (`PNP0C0C`).
//!
//! The guest's acpiphp and the ACPI button driver do the rest.

use acpi_tables::aml;
use acpi_tables::{Aml, AmlSink};

/// I/O ports of the hotplug register block: PCIU, PCID, B0EJ, then the GED event register.
pub const HOTPLUG_PORT: u16 = 0x0610;
pub const HOTPLUG_PORT_LEN: u16 = 16;
pub const PCIU_OFFSET: u16 = 0;
pub const PCID_OFFSET: u16 = 4;
pub const B0EJ_OFFSET: u16 = 8;
pub const GED_EVENT_OFFSET: u16 = 12;
/// GED event bits.
pub const GED_EVENT_PCI_HOTPLUG: u32 = 1 << 0;
pub const GED_EVENT_POWER_BUTTON: u32 = 1 << 1;
/// The GED's interrupt (ISA IRQ 5, edge, active high).
pub const GED_GSI: u32 = 5;
/// Hotpluggable slots on bus 0 (slot 0 is the host bridge, slot 31 the RCEC).
pub const FIRST_HOTPLUG_SLOT: u8 = 1;
pub const LAST_HOTPLUG_SLOT: u8 = 30;
/// Slot 31 of bus 0 holds the emulated Root Complex Event Collector: the passthrough functions
/// are Root Complex Integrated Endpoints on bus 0, which have no root port above them, so their
/// AER messages go to an RCEC. It is part of the platform and never hotplugged, so the DSDT has
/// no `SL1F` device for it (an ACPI slot there would let the guest eject it).
pub const RCEC_SLOT: u8 = 31;

/// Already-serialized AML.
pub struct RawAml(pub Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

fn bytes(a: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    a.to_aml_bytes(&mut v);
    v
}

fn slot_name(slot: u8) -> String {
    format!("SL{slot:02X}")
}

fn slot_device(slot: u8) -> Vec<u8> {
    let adr = u32::from(slot) << 16;
    let sun = u32::from(slot);
    let name_adr = aml::Name::new("_ADR".into(), &adr);
    let name_sun = aml::Name::new("_SUN".into(), &sun);
    let sun_path = aml::Path::new("_SUN");
    let call = aml::MethodCall::new("PCEJ".into(), vec![&sun_path]);
    let ej0 = aml::Method::new("_EJ0".into(), 1, false, vec![&call]);
    bytes(&aml::Device::new(slot_name(slot).as_str().into(), vec![&name_adr, &name_sun, &ej0]))
}

/// Children for `\_SB.PCI0`: the register block, `PCEJ`, `PCNT` and the slot devices.
pub fn pci_hotplug_aml() -> RawAml {
    let mut out = Vec::new();
    let base = u32::from(HOTPLUG_PORT);
    let len = 12u32;
    out.extend(bytes(&aml::OpRegion::new("PCST".into(), aml::OpRegionSpace::SystemIO, &base, &len)));
    out.extend(bytes(&aml::Field::new(
        "PCST".into(),
        aml::FieldAccessType::DWord,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![
            aml::FieldEntry::Named(*b"PCIU", 32),
            aml::FieldEntry::Named(*b"PCID", 32),
            aml::FieldEntry::Named(*b"B0EJ", 32),
        ],
    )));
    // PCEJ(slot): B0EJ = 1 << slot
    let b0ej = aml::Path::new("B0EJ");
    let shift = aml::ShiftLeft::new(&b0ej, &aml::ONE, &aml::Arg(0));
    out.extend(bytes(&aml::Method::new("PCEJ".into(), 1, true, vec![&shift])));
    // PCNT(): notify device check / eject request per pending bit.
    let (pciu, pcid) = (aml::Path::new("PCIU"), aml::Path::new("PCID"));
    let (l0, l1) = (aml::Local(0), aml::Local(1));
    let load_up = aml::Store::new(&l0, &pciu);
    let load_down = aml::Store::new(&l1, &pcid);
    let mut body = bytes(&load_up);
    body.extend(bytes(&load_down));
    for slot in FIRST_HOTPLUG_SLOT..=LAST_HOTPLUG_SLOT {
        let bit = 1u32 << slot;
        let target = aml::Path::new(&slot_name(slot));
        for (local, event) in [(&l0, 1u8), (&l1, 3u8)] {
            let test = aml::And::new(&aml::ZERO, local, &bit);
            let notify = aml::Notify::new(&target, &event);
            body.extend(bytes(&aml::If::new(&test, vec![&notify])));
        }
    }
    let body = RawAml(body);
    out.extend(bytes(&aml::Method::new("PCNT".into(), 0, true, vec![&body])));
    for slot in FIRST_HOTPLUG_SLOT..=LAST_HOTPLUG_SLOT {
        out.extend(slot_device(slot));
    }
    RawAml(out)
}

/// Top-level devices: the GED and the power button.
pub fn ged_aml() -> RawAml {
    let hid = aml::Name::new("_HID".into(), &"ACPI0013");
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let irq = aml::Interrupt::new(true, true, false, false, GED_GSI);
    let crs_template = aml::ResourceTemplate::new(vec![&irq]);
    let crs = aml::Name::new("_CRS".into(), &crs_template);
    let base = u32::from(HOTPLUG_PORT + GED_EVENT_OFFSET);
    let four = 4u32;
    let region = aml::OpRegion::new("GDST".into(), aml::OpRegionSpace::SystemIO, &base, &four);
    let field = aml::Field::new(
        "GDST".into(),
        aml::FieldAccessType::DWord,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![aml::FieldEntry::Named(*b"GDAT", 32)],
    );
    let l0 = aml::Local(0);
    let gdat = aml::Path::new("GDAT");
    let load = aml::Store::new(&l0, &gdat);
    let hotplug_bit = GED_EVENT_PCI_HOTPLUG;
    let button_bit = GED_EVENT_POWER_BUTTON;
    let is_hotplug = aml::And::new(&aml::ZERO, &l0, &hotplug_bit);
    let pcnt = aml::MethodCall::new("\\_SB_.PCI0.PCNT".into(), vec![]);
    let if_hotplug = aml::If::new(&is_hotplug, vec![&pcnt]);
    let is_button = aml::And::new(&aml::ZERO, &l0, &button_bit);
    let pwrb = aml::Path::new("\\_SB_.PWRB");
    let press = 0x80u8;
    let notify = aml::Notify::new(&pwrb, &press);
    let if_button = aml::If::new(&is_button, vec![&notify]);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&load, &if_hotplug, &if_button]);
    let mut out = bytes(&aml::Device::new("_SB_.GED_".into(), vec![&hid, &uid, &crs, &region, &field, &evt]));

    let button_hid_id = aml::EISAName::new("PNP0C0C");
    let button_hid = aml::Name::new("_HID".into(), &button_hid_id);
    let button_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    out.extend(bytes(&aml::Device::new("_SB_.PWRB".into(), vec![&button_hid, &button_uid])));
    RawAml(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots 1..=30 are hotpluggable; slot 0 is the host bridge and slot 31 the RCEC, neither
    /// of which the guest may eject.
    #[test]
    fn slots_cover_the_root_bus_but_the_host_bridge_and_the_rcec() {
        let a = pci_hotplug_aml().0;
        let has = |n: &[u8]| a.windows(n.len()).any(|w| w == n);
        for name in [&b"PCST"[..], b"PCIU", b"PCID", b"B0EJ", b"PCEJ", b"PCNT", b"SL01", b"SL1E", b"_EJ0", b"_SUN"] {
            assert!(has(name), "{}", String::from_utf8_lossy(name));
        }
        for slot in FIRST_HOTPLUG_SLOT..=LAST_HOTPLUG_SLOT {
            assert!(has(slot_name(slot).as_bytes()), "slot {slot}");
        }
        assert_eq!(RCEC_SLOT, LAST_HOTPLUG_SLOT + 1);
        assert!(!has(b"SL00"), "the host bridge is not a hotplug slot");
        assert!(!has(slot_name(RCEC_SLOT).as_bytes()), "the RCEC (slot 31, SL1F) is not a hotplug slot");
        assert!(!has(b"SL20"));
        let g = ged_aml().0;
        assert!(g.windows(8).any(|w| w == b"ACPI0013"));
        assert!(g.windows(4).any(|w| w == b"GDAT") && g.windows(4).any(|w| w == b"PWRB"));
    }
}
