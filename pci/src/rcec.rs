//! An emulated PCI Express Root Complex Event Collector (RCEC) on bus 0.
//!
//! The guest sees each passthrough function as a Root Complex Integrated Endpoint (RCiEP) on
//! bus 0. RCiEPs have no Root Port above them, so their error messages go to an RCEC: the
//! guest's port driver binds to this function by class (0x0807) and PCI Express port type
//! (RC_EC), its AER service reads the root registers of our AER capability, and the RCEC
//! Endpoint Association capability tells it which bus-0 devices are ours.
//!
//! Config space (nothing else is implemented: it reads 0 and ignores writes):
//! - 0x000: type-0 header, capabilities list at 0x40, no BARs, no INTx;
//! - 0x040: PCI Express capability (version 2, RC_EC, Role-Based Error Reporting);
//! - 0x080: MSI, 64-bit, one vector, no per-vector masking: the AER interrupt;
//! - 0x100: AER with the root registers ([`AerRegisters`]);
//! - 0x140: RCEC Endpoint Association, version 1 (bus 0 only).
//!
//! Guest accesses log nothing: what went wrong with the MSI route is kept and handed to the
//! caller of [`Rcec::report_uncorrectable`], which logs it.

use std::fmt;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::aer::{AerRegisters, Severity, EXT_CAP_ID_RCEC_ASSOC};
use crate::bus::PciDevice;
use crate::configuration::{merge_writable, PciConfiguration, PciIdentity, REG_COMMAND_STATUS};
use crate::msi::{MsiCapability, MsiState};
use crate::msix::{MsiMessage, VectorChange};
use crate::vfio::VmPlatform;

/// Red Hat's vendor id (as for the host bridge) with a device id that is vfvmm's own choice
/// for its emulated RCEC. Linux matches an RCEC by class and PCI Express port type, not by id.
pub const RCEC_VENDOR_ID: u16 = 0x1b36;
pub const RCEC_DEVICE_ID: u16 = 0x00f0;
/// Base class "system peripheral", subclass "Root Complex Event Collector".
const CLASS_SYSTEM: u8 = 0x08;
const SUBCLASS_RCEC: u8 = 0x07;

const STATUS_CAPABILITIES_LIST: u32 = 1 << (16 + 4);
const REG_CAPABILITIES_POINTER: usize = 0x34 / 4;
/// Dwords of the type-0 header.
const HEADER_DWORDS: usize = 0x40 / 4;

/// PCI Express capability.
pub const PCIE_CAP_OFFSET: usize = 0x40;
const CAP_ID_PCIE: u8 = 0x10;
/// Capability version 2, device/port type Root Complex Event Collector.
const PCIE_CAP_VERSION: u16 = 2;
pub const PCIE_TYPE_RC_EC: u16 = 0xa;
/// Byte offsets of the registers this device implements within the capability.
const PCIE_DEVCAP: usize = 0x04;
const PCIE_DEVCTL: usize = 0x08;
const PCIE_ROOT_CONTROL: usize = 0x1c;
const PCIE_DEVCTL2: usize = 0x28;
/// A version 2 capability runs through Slot Status 2 (0x3a).
const PCIE_CAP_SIZE: usize = 0x3c;
/// Role-Based Error Reporting.
const DEVCAP_RBER: u32 = 1 << 15;
/// Device Control: error reporting enables (0-3), relaxed ordering (4), max payload size
/// (5-7), extended tag (8), phantom functions (9), aux power (10), no snoop (11), max read
/// request size (12-14). Bit 15 (initiate FLR) stays 0: no FLR.
const DEVCTL_WRITABLE: u32 = 0x7fff;
/// The specification's reset value: relaxed ordering and no snoop enabled, 512-byte max read
/// request size.
const DEVCTL_DEFAULT: u32 = (1 << 4) | (1 << 11) | (2 << 12);
/// Root Control: system error on correctable/non-fatal/fatal error (0-2) and PME interrupt
/// enable (3). CRS Software Visibility Enable (4) is hardwired to 0 because Root Capabilities
/// (all 0) does not advertise CRS Software Visibility.
const ROOT_CONTROL_WRITABLE: u32 = 0x000f;
/// Device Control 2 is plain storage (Device Capabilities 2 advertises nothing).
const DEVCTL2_WRITABLE: u32 = 0xffff;

/// MSI capability: the last in the list.
pub const MSI_CAP_OFFSET: usize = 0x80;
const CAP_ID_MSI: u8 = 0x05;
/// Message Control: 64-bit address capable, one vector, no per-vector masking.
const MSI_CONTROL: u16 = 1 << 7;

/// Extended capabilities.
pub const AER_OFFSET: usize = 0x100;
pub const RCEC_ASSOC_OFFSET: usize = 0x140;
const RCEC_ASSOC_VERSION: u32 = 1;
/// Byte offset of the Association Bitmap for RCiEPs within its capability.
const RCEC_ASSOC_BITMAP: usize = 0x04;

#[derive(Debug, thiserror::Error)]
pub enum RcecError {
    #[error("cannot create the RCEC's interrupt eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// What became of an error reported to the RCEC. Its root registers are updated in every case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reported {
    /// The guest's AER interrupt was raised.
    Raised,
    /// The guest has not enabled reporting of this severity (Root Error Command).
    ReportingDisabled,
    /// The guest has not enabled MSI on the RCEC.
    MsiDisabled,
    /// MSI is enabled but its route or irqfd could not be set up (why).
    MsiNotRouted(String),
    /// Writing the interrupt eventfd failed (why).
    SignalFailed(String),
}

impl Reported {
    pub fn raised(&self) -> bool {
        *self == Reported::Raised
    }
}

impl fmt::Display for Reported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reported::Raised => write!(f, "AER interrupt raised"),
            Reported::ReportingDisabled => write!(f, "no interrupt: the guest has not enabled reporting"),
            Reported::MsiDisabled => write!(f, "no interrupt: the guest has not enabled MSI on the RCEC"),
            Reported::MsiNotRouted(why) => write!(f, "no interrupt: the RCEC's MSI is not routed: {why}"),
            Reported::SignalFailed(why) => write!(f, "no interrupt: cannot signal the RCEC's eventfd: {why}"),
        }
    }
}

/// The Root Complex Event Collector function.
pub struct Rcec {
    config: PciConfiguration,
    devctl: u32,
    root_control: u32,
    devctl2: u32,
    msi: MsiState,
    aer: AerRegisters,
    /// Association Bitmap for RCiEPs: bit N is device N on bus 0.
    associated_slots: u32,
    platform: Arc<dyn VmPlatform>,
    eventfd: EventFd,
    /// Allocated on the first route, released on drop.
    gsi: Option<u32>,
    /// The eventfd is attached to `gsi` as an irqfd.
    attached: bool,
    /// Why the last routing attempt failed, if it did.
    routing_error: Option<String>,
    interrupts: u64,
}

impl Rcec {
    /// An RCEC associated with the bus-0 devices whose bits are set in `associated_slots`.
    pub fn new(platform: Arc<dyn VmPlatform>, associated_slots: u32) -> Result<Self, RcecError> {
        let eventfd = EventFd::new(libc::EFD_NONBLOCK).map_err(RcecError::EventFd)?;
        let config = PciConfiguration::new(PciIdentity {
            vendor_id: RCEC_VENDOR_ID,
            device_id: RCEC_DEVICE_ID,
            class: CLASS_SYSTEM,
            subclass: SUBCLASS_RCEC,
            prog_if: 0,
            revision: 0,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        });
        Ok(Self {
            config,
            devctl: DEVCTL_DEFAULT,
            root_control: 0,
            devctl2: 0,
            msi: MsiState::new(MsiCapability::new(MSI_CAP_OFFSET, MSI_CONTROL), MSI_CONTROL),
            aer: AerRegisters::new(AER_OFFSET, RCEC_ASSOC_OFFSET as u16, true),
            associated_slots,
            platform,
            eventfd,
            gsi: None,
            attached: false,
            routing_error: None,
            interrupts: 0,
        })
    }

    /// Function `source` (requester id: bus << 8 | device << 3 | function) signalled an
    /// uncorrectable error of `severity`: the root registers record it and, when the guest
    /// enabled reporting and MSI, the AER interrupt is raised.
    pub fn report_uncorrectable(&mut self, source: u16, severity: Severity) -> Reported {
        if !self.aer.root_receive_uncorrectable(source, severity) {
            return Reported::ReportingDisabled;
        }
        if !self.msi.enabled() {
            return Reported::MsiDisabled;
        }
        if !self.attached {
            let why = self.routing_error.clone().unwrap_or_else(|| "no route programmed".to_string());
            return Reported::MsiNotRouted(why);
        }
        match self.eventfd.write(1) {
            Ok(()) => {
                self.interrupts += 1;
                Reported::Raised
            }
            Err(e) => Reported::SignalFailed(e.to_string()),
        }
    }

    /// The MSI routes the RCEC holds (its one GSI, once the guest enabled its MSI): platform
    /// resources, not passthrough ones.
    pub fn msi_routes(&self) -> usize {
        usize::from(self.gsi.is_some())
    }

    /// AER interrupts raised so far.
    pub fn interrupts_raised(&self) -> u64 {
        self.interrupts
    }

    /// Route first, then attach: the interrupt never goes out with a stale message.
    fn route(&mut self, message: MsiMessage) {
        let gsi = match self.gsi {
            Some(gsi) => gsi,
            None => match self.platform.allocate_gsi() {
                Ok(gsi) => *self.gsi.insert(gsi),
                Err(e) => {
                    self.routing_error = Some(format!("cannot allocate a GSI: {e}"));
                    return;
                }
            },
        };
        if let Err(e) = self.platform.set_msi_route(gsi, message) {
            // The old route may be stale: better no interrupt than a misdirected one.
            self.detach();
            self.routing_error = Some(format!("cannot set the MSI route of GSI {gsi}: {e}"));
            return;
        }
        if !self.attached {
            if let Err(e) = self.platform.attach_irqfd(&self.eventfd, gsi) {
                self.routing_error = Some(format!("cannot attach the irqfd to GSI {gsi}: {e}"));
                return;
            }
            self.attached = true;
        }
        self.routing_error = None;
    }

    fn detach(&mut self) {
        if let (true, Some(gsi)) = (self.attached, self.gsi) {
            // Nothing to do about a failure: the eventfd is no longer signalled (MSI is off or
            // the route failed), so a leftover irqfd stays silent.
            let _ = self.platform.detach_irqfd(&self.eventfd, gsi);
        }
        self.attached = false;
    }

    fn apply(&mut self, changes: Vec<VectorChange>) {
        for change in changes {
            match change {
                VectorChange::Route { message, .. } => self.route(message),
                VectorChange::Mask { .. } => self.detach(),
            }
        }
    }

    /// Dword `index` of the PCI Express capability.
    fn pcie_read(&self, index: usize) -> u32 {
        match index * 4 {
            0 => {
                let caps = (PCIE_TYPE_RC_EC << 4) | PCIE_CAP_VERSION;
                (u32::from(caps) << 16) | ((MSI_CAP_OFFSET as u32) << 8) | u32::from(CAP_ID_PCIE)
            }
            PCIE_DEVCAP => DEVCAP_RBER,
            // Device Status: the RCEC itself detects no errors.
            PCIE_DEVCTL => self.devctl,
            // Root Capabilities (high half) are 0.
            PCIE_ROOT_CONTROL => self.root_control,
            PCIE_DEVCTL2 => self.devctl2,
            // Link and slot registers (no link), Root Status, Device Capabilities 2.
            _ => 0,
        }
    }

    fn pcie_write(&mut self, index: usize, offset: u64, data: &[u8]) {
        match index * 4 {
            PCIE_DEVCTL => self.devctl = merge_writable(self.devctl, offset, data, DEVCTL_WRITABLE),
            PCIE_ROOT_CONTROL => {
                self.root_control = merge_writable(self.root_control, offset, data, ROOT_CONTROL_WRITABLE)
            }
            PCIE_DEVCTL2 => self.devctl2 = merge_writable(self.devctl2, offset, data, DEVCTL2_WRITABLE),
            // Device Status is write-1-to-clear but always 0; the rest is read-only.
            _ => {}
        }
    }

    /// Dword `index` of the MSI capability, with its id and (null) next pointer.
    fn msi_read(&self, index: usize) -> u32 {
        let header = if index == 0 { u32::from(CAP_ID_MSI) } else { 0 };
        self.msi.read(index) | header
    }

    fn msi_write(&mut self, index: usize, offset: u64, data: &[u8]) {
        let value = merge_writable(self.msi_read(index), offset, data, u32::MAX);
        let changes = self.msi.write(index, value);
        self.apply(changes);
    }

    fn assoc_read(&self, byte: usize) -> u32 {
        match byte {
            0 => (RCEC_ASSOC_VERSION << 16) | u32::from(EXT_CAP_ID_RCEC_ASSOC),
            RCEC_ASSOC_BITMAP => self.associated_slots,
            _ => 0,
        }
    }
}

/// Config-space regions, as dword ranges.
fn pcie_index(reg: usize) -> Option<usize> {
    let start = PCIE_CAP_OFFSET / 4;
    (start..start + PCIE_CAP_SIZE / 4).contains(&reg).then(|| reg - start)
}

fn msi_index(reg: usize, msi: &MsiState) -> Option<usize> {
    let start = MSI_CAP_OFFSET / 4;
    (start..start + msi.capability().dwords()).contains(&reg).then(|| reg - start)
}

impl PciDevice for Rcec {
    fn config_read(&mut self, reg: usize) -> u32 {
        if reg < HEADER_DWORDS {
            return match reg {
                REG_COMMAND_STATUS => self.config.read_reg(reg) | STATUS_CAPABILITIES_LIST,
                REG_CAPABILITIES_POINTER => PCIE_CAP_OFFSET as u32,
                _ => self.config.read_reg(reg),
            };
        }
        if let Some(index) = pcie_index(reg) {
            return self.pcie_read(index);
        }
        if let Some(index) = msi_index(reg, &self.msi) {
            return self.msi_read(index);
        }
        if self.aer.contains(reg) {
            return self.aer.read(reg);
        }
        match (reg * 4).checked_sub(RCEC_ASSOC_OFFSET) {
            Some(byte) if byte <= RCEC_ASSOC_BITMAP => self.assoc_read(byte),
            _ => 0,
        }
    }

    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) {
        if reg < HEADER_DWORDS {
            // Only what PciConfiguration lets the guest write (command, cache line, latency).
            self.config.write_reg(reg, offset, data);
        } else if let Some(index) = pcie_index(reg) {
            self.pcie_write(index, offset, data);
        } else if let Some(index) = msi_index(reg, &self.msi) {
            self.msi_write(index, offset, data);
        } else if self.aer.contains(reg) {
            self.aer.write(reg, offset, data);
        }
        // The association capability and everything else are read-only.
    }
}

impl Drop for Rcec {
    /// The RCEC goes: its irqfd comes off and its GSI (and route) goes back to the VM.
    fn drop(&mut self) {
        self.detach();
        if let Some(gsi) = self.gsi.take() {
            self.platform.release_gsis(&[gsi]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aer::{
        ERROR_SOURCE, EXT_CAP_ID_AER, ROOT_CMD_FATAL, ROOT_CMD_NONFATAL, ROOT_COMMAND, ROOT_FATAL_RCV,
        ROOT_FIRST_FATAL, ROOT_MULTI_UNCOR_RCV, ROOT_NONFATAL_RCV, ROOT_STATUS, ROOT_UNCOR_RCV,
    };
    use crate::vfio::caps::{capabilities, CAP_ID_MSI as CAPS_MSI};
    use crate::vfio::fake::FakePlatform;

    const MSI_ADDR: u32 = 0xfee0_1000;
    const MSI_DATA: u32 = 0x0041;

    fn rcec(slots: u32) -> (Rcec, Arc<FakePlatform>) {
        let platform = Arc::new(FakePlatform::new());
        (Rcec::new(platform.clone(), slots).unwrap(), platform)
    }

    fn write32(dev: &mut Rcec, byte: usize, value: u32) {
        dev.config_write(byte / 4, 0, &value.to_le_bytes());
    }

    fn read32(dev: &mut Rcec, byte: usize) -> u32 {
        dev.config_read(byte / 4)
    }

    /// Programs and enables MSI the way Linux does: address, data, then enable.
    fn enable_msi(dev: &mut Rcec) {
        write32(dev, MSI_CAP_OFFSET + 4, MSI_ADDR);
        write32(dev, MSI_CAP_OFFSET + 8, 0);
        write32(dev, MSI_CAP_OFFSET + 12, MSI_DATA);
        // Enable with a 16-bit write to Message Control.
        dev.config_write(MSI_CAP_OFFSET / 4, 2, &1u16.to_le_bytes());
    }

    fn enable_root_reporting(dev: &mut Rcec) {
        write32(dev, AER_OFFSET + ROOT_COMMAND, ROOT_CMD_NONFATAL | ROOT_CMD_FATAL);
    }

    #[test]
    fn header_identifies_an_rcec_and_lists_its_capabilities() {
        let (mut dev, _) = rcec(0);
        assert_eq!(read32(&mut dev, 0x00), 0x00f0_1b36);
        assert_eq!(read32(&mut dev, 0x08) >> 8, 0x08_07_00, "class 0x08, subclass 0x07, prog-if 0");
        assert_eq!((read32(&mut dev, 0x0c) >> 16) & 0x7f, 0, "header type 0");
        assert_eq!(read32(&mut dev, 0x04), STATUS_CAPABILITIES_LIST);
        assert_eq!(read32(&mut dev, 0x34), 0x40);
        assert_eq!(read32(&mut dev, 0x3c), 0, "no interrupt pin");
        let space: Vec<u32> = (0..1024).map(|r| dev.config_read(r)).collect();
        let caps = capabilities(|r| space[r]);
        assert_eq!(caps, vec![(CAP_ID_PCIE, 0x40), (CAPS_MSI, 0x80)]);
        // Command is writable as PciConfiguration allows; status and ids are not.
        write32(&mut dev, 0x04, 0xffff_ffff);
        assert_eq!(read32(&mut dev, 0x04), STATUS_CAPABILITIES_LIST | 0x0407);
        write32(&mut dev, 0x00, 0);
        write32(&mut dev, 0x10, 0xffff_ffff);
        write32(&mut dev, 0x34, 0);
        assert_eq!(read32(&mut dev, 0x00), 0x00f0_1b36);
        assert_eq!(read32(&mut dev, 0x10), 0, "no BAR");
        assert_eq!(read32(&mut dev, 0x34), 0x40);
    }

    #[test]
    fn pcie_capability_is_an_rc_ec_with_role_based_error_reporting() {
        let (mut dev, _) = rcec(0);
        let header = read32(&mut dev, 0x40);
        assert_eq!(header & 0xff, 0x10);
        assert_eq!((header >> 8) & 0xff, 0x80, "next: MSI");
        assert_eq!((header >> 16) & 0xf, 2, "version 2");
        assert_eq!((header >> 20) & 0xf, 0xa, "port type RC_EC");
        assert_eq!(read32(&mut dev, 0x80) & 0xff00, 0, "MSI is last");
        assert_eq!(read32(&mut dev, 0x44), 1 << 15);
        // Device Control: bits 0-14 writable, status reads 0 and clears nothing.
        write32(&mut dev, 0x48, 0xffff_ffff);
        assert_eq!(read32(&mut dev, 0x48), 0x7fff);
        dev.config_write(0x48 / 4, 0, &[0x00]);
        assert_eq!(read32(&mut dev, 0x48), 0x7f00, "byte write keeps the upper byte");
        // No link, no slot.
        for off in [0x4c, 0x50, 0x54, 0x58] {
            write32(&mut dev, off, 0xffff_ffff);
            assert_eq!(read32(&mut dev, off), 0, "register {off:#x}");
        }
        // Root Control bits 0-3, Root Capabilities and Root Status 0.
        write32(&mut dev, 0x5c, 0xffff_ffff);
        assert_eq!(read32(&mut dev, 0x5c), 0xf);
        write32(&mut dev, 0x60, 0xffff_ffff);
        assert_eq!(read32(&mut dev, 0x60), 0);
        // Device Capabilities 2 read-only 0, Device Control 2 storage, Status 2 0.
        write32(&mut dev, 0x64, 0xffff_ffff);
        assert_eq!(read32(&mut dev, 0x64), 0);
        write32(&mut dev, 0x68, 0xffff_0400);
        assert_eq!(read32(&mut dev, 0x68), 0x0400);
        write32(&mut dev, 0x7c, 0xffff_ffff);
        assert_eq!(read32(&mut dev, 0x7c), 0, "a gap between the capabilities");
    }

    #[test]
    fn msi_programming_routes_and_attaches_and_disabling_detaches() {
        let (mut dev, platform) = rcec(0);
        assert_eq!(read32(&mut dev, 0x80), (u32::from(MSI_CONTROL) << 16) | 0x05);
        enable_msi(&mut dev);
        assert_eq!(read32(&mut dev, 0x80), (u32::from(MSI_CONTROL | 1) << 16) | 0x05);
        assert_eq!((read32(&mut dev, 0x84), read32(&mut dev, 0x8c)), (MSI_ADDR, MSI_DATA));
        let gsi = dev.gsi.unwrap();
        assert_eq!(
            platform.routes.lock().unwrap().get(&gsi),
            Some(&MsiMessage { address: u64::from(MSI_ADDR), data: MSI_DATA })
        );
        assert_eq!(*platform.irqfds.lock().unwrap(), vec![gsi]);
        // Retargeting while enabled updates the route; the irqfd stays attached once.
        write32(&mut dev, 0x8c, 0x42);
        assert_eq!(platform.routes.lock().unwrap()[&gsi].data, 0x42);
        assert_eq!(*platform.irqfds.lock().unwrap(), vec![gsi]);
        dev.config_write(0x80 / 4, 2, &0u16.to_le_bytes());
        assert!(platform.irqfds.lock().unwrap().is_empty());
        enable_msi(&mut dev);
        assert_eq!(dev.gsi, Some(gsi), "the GSI is allocated once");
        assert_eq!(*platform.irqfds.lock().unwrap(), vec![gsi]);
        drop(dev);
        assert!(platform.irqfds.lock().unwrap().is_empty());
        assert!(platform.routes.lock().unwrap().is_empty());
        assert_eq!(*platform.free_gsis.lock().unwrap(), vec![gsi]);
    }

    #[test]
    fn reports_without_root_reporting_record_but_do_not_interrupt() {
        let (mut dev, _) = rcec(1 << 3);
        enable_msi(&mut dev);
        assert_eq!(dev.report_uncorrectable(0x0018, Severity::Fatal), Reported::ReportingDisabled);
        assert_eq!(read32(&mut dev, AER_OFFSET + ROOT_STATUS), ROOT_UNCOR_RCV | ROOT_FIRST_FATAL | ROOT_FATAL_RCV);
        assert_eq!(read32(&mut dev, AER_OFFSET + ERROR_SOURCE) >> 16, 0x0018);
        assert_eq!(dev.interrupts_raised(), 0);
        assert!(dev.eventfd.read().is_err(), "nothing signalled");
    }

    #[test]
    fn reports_interrupt_when_enabled_and_root_status_is_write_one_to_clear() {
        let (mut dev, _) = rcec(1 << 3);
        enable_root_reporting(&mut dev);
        assert_eq!(dev.report_uncorrectable(0x0018, Severity::NonFatal), Reported::MsiDisabled);
        write32(&mut dev, AER_OFFSET + ROOT_STATUS, u32::MAX);
        assert_eq!(read32(&mut dev, AER_OFFSET + ROOT_STATUS), 0);
        enable_msi(&mut dev);
        let reported = dev.report_uncorrectable(0x0018, Severity::NonFatal);
        assert!(reported.raised(), "{reported}");
        assert_eq!(dev.interrupts_raised(), 1);
        assert_eq!(dev.eventfd.read().unwrap(), 1);
        assert_eq!(read32(&mut dev, AER_OFFSET + ROOT_STATUS), ROOT_UNCOR_RCV | ROOT_NONFATAL_RCV);
        assert_eq!(dev.report_uncorrectable(0x0020, Severity::Fatal), Reported::Raised);
        let status = read32(&mut dev, AER_OFFSET + ROOT_STATUS);
        assert_eq!(status & (ROOT_MULTI_UNCOR_RCV | ROOT_FATAL_RCV), ROOT_MULTI_UNCOR_RCV | ROOT_FATAL_RCV);
        assert_eq!(read32(&mut dev, AER_OFFSET + ERROR_SOURCE) >> 16, 0x0018, "the first source is kept");
        write32(&mut dev, AER_OFFSET + ROOT_STATUS, ROOT_UNCOR_RCV);
        assert_eq!(read32(&mut dev, AER_OFFSET + ROOT_STATUS), status & !ROOT_UNCOR_RCV);
        write32(&mut dev, AER_OFFSET + ROOT_STATUS, u32::MAX);
        assert_eq!(read32(&mut dev, AER_OFFSET + ROOT_STATUS), 0);
        assert_eq!(dev.interrupts_raised(), 2);
    }

    #[test]
    fn extended_capabilities_chain_aer_then_the_association() {
        let (mut dev, _) = rcec(0b1010);
        let aer = read32(&mut dev, 0x100);
        assert_eq!((aer & 0xffff, (aer >> 16) & 0xf, aer >> 20), (u32::from(EXT_CAP_ID_AER), 2, 0x140));
        let assoc = read32(&mut dev, 0x140);
        assert_eq!((assoc & 0xffff, (assoc >> 16) & 0xf, assoc >> 20), (0x0007, 1, 0));
        assert_eq!(read32(&mut dev, 0x144), 0b1010);
        assert_eq!(read32(&mut dev, 0x148), 0, "version 1 has no bus numbers");
        for off in [0x140, 0x144, 0x148, 0x200, 0xffc] {
            write32(&mut dev, off, 0x5a5a_5a5a);
        }
        assert_eq!(read32(&mut dev, 0x140), assoc);
        assert_eq!(read32(&mut dev, 0x144), 0b1010);
        assert_eq!((read32(&mut dev, 0x148), read32(&mut dev, 0x200), read32(&mut dev, 0xffc)), (0, 0, 0));
        write32(&mut dev, 0x100, 0);
        assert_eq!(read32(&mut dev, 0x100), aer, "the AER header is read-only");
    }

    #[test]
    fn a_failed_route_is_reported_and_not_signalled() {
        struct NoGsi(FakePlatform);
        impl VmPlatform for NoGsi {
            unsafe fn map_memory(&self, _: u64, _: u64, _: *mut u8) -> Result<u32, String> {
                Err("unused".into())
            }
            fn unmap_memory(&self, _: u32) {}
            fn allocate_gsi(&self) -> Result<u32, String> {
                Err("out of GSIs".into())
            }
            fn release_gsis(&self, gsis: &[u32]) {
                self.0.release_gsis(gsis)
            }
            fn set_msi_route(&self, gsi: u32, message: MsiMessage) -> Result<(), String> {
                self.0.set_msi_route(gsi, message)
            }
            fn attach_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), String> {
                self.0.attach_irqfd(fd, gsi)
            }
            fn detach_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), String> {
                self.0.detach_irqfd(fd, gsi)
            }
            fn register_bar(&self, _: u64, _: u64, _: Arc<dyn crate::vfio::BarHandler>) -> Result<(), String> {
                Ok(())
            }
            fn unregister_bar(&self, _: u64) {}
        }
        let mut dev = Rcec::new(Arc::new(NoGsi(FakePlatform::new())), 0).unwrap();
        enable_root_reporting(&mut dev);
        enable_msi(&mut dev);
        match dev.report_uncorrectable(0x0008, Severity::Fatal) {
            Reported::MsiNotRouted(why) => assert!(why.contains("out of GSIs"), "{why}"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(dev.interrupts_raised(), 0);
        assert!(dev.eventfd.read().is_err());
    }
}
