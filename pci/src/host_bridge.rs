//! The root complex's host bridge at 00:00.0.

use crate::bus::PciDevice;
use crate::configuration::{PciConfiguration, PciIdentity};

/// Red Hat's vendor id with the generic PCIe host bridge device id.
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x1b36;
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0008;
const CLASS_BRIDGE: u8 = 0x06;
const SUBCLASS_HOST: u8 = 0x00;

pub struct PciHostBridge {
    config: PciConfiguration,
}

impl Default for PciHostBridge {
    fn default() -> Self {
        Self {
            config: PciConfiguration::new(PciIdentity {
                vendor_id: HOST_BRIDGE_VENDOR_ID,
                device_id: HOST_BRIDGE_DEVICE_ID,
                class: CLASS_BRIDGE,
                subclass: SUBCLASS_HOST,
                prog_if: 0,
                revision: 0,
                subsystem_vendor_id: HOST_BRIDGE_VENDOR_ID,
                subsystem_id: 0x1100,
            }),
        }
    }
}

impl PciDevice for PciHostBridge {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.config.read_reg(reg)
    }

    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) {
        self.config.write_reg(reg, offset, data);
    }
}
