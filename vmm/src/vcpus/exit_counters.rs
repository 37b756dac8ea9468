//! Per-vCPU counts of the exits that reached the VMM, by address range. Logged at shutdown
//! (`RUST_LOG=info`), they show e.g. that a passed-through BAR is mapped, not trapped.

use arch::layout::{ACPI_SLEEP_CONTROL_PORT, COM1_PORT, PCI_ECAM_SIZE, PCI_ECAM_START};
use devices::timing::{ExitKind, EXITS};

/// `(name, first port, ports, kind in the VM's exit tally)`.
const PIO_RANGES: [(&str, u16, u16, ExitKind); 5] = [
    ("serial", COM1_PORT, 8, ExitKind::Serial),
    ("pci-config", 0xcf8, 8, ExitKind::PciConfigIo),
    ("cmos", 0x70, 2, ExitKind::OtherIo),
    ("acpi-pm", ACPI_SLEEP_CONTROL_PORT, 3, ExitKind::OtherIo),
    ("i8042", 0x60, 5, ExitKind::OtherIo),
];

#[derive(Debug, Clone, Default)]
pub struct ExitCounters {
    /// Per entry of `PIO_RANGES`, then "other".
    pio: [u64; PIO_RANGES.len() + 1],
    mmio_ecam: u64,
    mmio_pci_bars: u64,
    mmio_other: u64,
    pub unhandled_pio: u64,
    pub unhandled_mmio: u64,
    /// Guest writes KVM queued instead of exiting, replayed by the vCPU thread (not exits).
    pub queued_writes: u64,
}

impl ExitCounters {
    pub fn record_pio(&mut self, port: u16, handled: bool) {
        let i = PIO_RANGES
            .iter()
            .position(|&(_, base, len, _)| port >= base && port - base < len)
            .unwrap_or(PIO_RANGES.len());
        self.pio[i] += 1;
        EXITS.count(PIO_RANGES.get(i).map_or(ExitKind::OtherIo, |r| r.3));
        self.unhandled_pio += u64::from(!handled);
    }

    /// `pci_windows`: the PCI MMIO windows, where passed-through BARs live.
    pub fn record_mmio(&mut self, addr: u64, handled: bool, pci_windows: &[(u64, u64)]) {
        if (PCI_ECAM_START..PCI_ECAM_START + PCI_ECAM_SIZE).contains(&addr) {
            self.mmio_ecam += 1;
            EXITS.count(ExitKind::Ecam);
        } else if pci_windows.iter().any(|&(base, size)| addr >= base && addr - base < size) {
            self.mmio_pci_bars += 1;
            EXITS.count(ExitKind::BarMmio);
        } else {
            self.mmio_other += 1;
            EXITS.count(ExitKind::OtherMmio);
        }
        self.unhandled_mmio += u64::from(!handled);
    }

    pub fn pio_total(&self) -> u64 {
        self.pio.iter().sum()
    }

    pub fn mmio_total(&self) -> u64 {
        self.mmio_ecam + self.mmio_pci_bars + self.mmio_other
    }

    /// One line: `pio=N (serial=.. pci-config=.. ...) mmio=N (ecam=.. pci-bars=.. other=..) unhandled ...`.
    pub fn summary(&self) -> String {
        let pio: Vec<String> = PIO_RANGES
            .iter()
            .map(|(name, ..)| *name)
            .chain(std::iter::once("other"))
            .zip(self.pio.iter())
            .map(|(name, n)| format!("{name}={n}"))
            .collect();
        format!(
            "pio={} ({}) mmio={} (ecam={} pci-bars={} other={}) unhandled pio={} mmio={}; queued writes={}",
            self.pio_total(),
            pio.join(" "),
            self.mmio_total(),
            self.mmio_ecam,
            self.mmio_pci_bars,
            self.mmio_other,
            self.unhandled_pio,
            self.unhandled_mmio,
            self.queued_writes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_land_in_their_ranges() {
        let mut c = ExitCounters::default();
        c.record_pio(0x3f8, true);
        c.record_pio(0x3fd, true);
        c.record_pio(0xcfc, true);
        c.record_pio(0x80, false);
        c.record_mmio(0xe000_0010, true, &[(0xc000_0000, 0x2000_0000)]);
        c.record_mmio(0xc000_3000, true, &[(0xc000_0000, 0x2000_0000)]);
        c.record_mmio(0xfed0_0000, false, &[(0xc000_0000, 0x2000_0000)]);
        assert_eq!(
            c.summary(),
            "pio=4 (serial=2 pci-config=1 cmos=0 acpi-pm=0 i8042=0 other=1) mmio=3 (ecam=1 pci-bars=1 other=1) unhandled pio=1 mmio=1; queued writes=0"
        );
    }
}
