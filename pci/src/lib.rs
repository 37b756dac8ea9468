//! PCI: the root bus with its host bridge, configuration access through the legacy
//! 0xCF8/0xCFC ports and ECAM MMIO, and the BAR address allocator.

pub mod aer;
pub mod allocator;
pub mod bar;
pub mod bus;
pub mod config_access;
pub mod configuration;
pub mod host_bridge;
pub mod msi;
pub mod msix;
pub mod rcec;
pub mod vfio;

pub use allocator::{BarAllocator, BarRegion};
pub use bus::{PciBus, PciDevice};
pub use config_access::{PciConfigIo, PciConfigMmio};
pub use configuration::PciConfiguration;
pub use host_bridge::PciHostBridge;
