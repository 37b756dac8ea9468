//! A VFIO function on the guest's PCI bus: config-space virtualization, BAR placement and
//! mapping, MSI-X.
//!
//! - BARs are shadowed ([`BarShadow`]); the guest sizes and moves them freely, and moves take
//!   effect only while memory decoding is enabled.
//! - Each memory BAR is mmapped into the guest (memory slots: no exits), except the pages of
//!   the MSI-X table and PBA, which trap to the emulated table. Trapped accesses elsewhere in
//!   those pages are forwarded to the device.
//! - Config writes other than BARs, the ROM BAR and MSI-X's Message Control go to vfio-pci,
//!   which filters what is unsafe; the expansion ROM is hidden.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::caps::{find_capability, CAP_ID_MSIX};
use super::msix_routing::{MsixRouting, MsixRoutingError};
use super::{BarHandler, HostMapping, VfioBackend, VmPlatform, VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX};
use crate::bar::{BarInfo, BarKind, BarShadow, NUM_BARS, ROM_REG};
use crate::bus::PciDevice;
use crate::configuration::{merge_bytes, COMMAND_MEMORY_SPACE, REG_COMMAND_STATUS};
use crate::msix::MsixLayout;

const PAGE_SIZE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum VfioPciError {
    #[error("BAR {index}: size {size:#x} is not a power of two")]
    BadBarSize { index: usize, size: u64 },
    #[error(transparent)]
    Msix(#[from] MsixRoutingError),
    #[error("the device has no MSI-X capability (MSI-only devices are not supported yet)")]
    NoMsix,
    #[error("MSI-X table or PBA lies outside BAR {0}")]
    MsixOutsideBar(u8),
}

/// A range of a BAR, `(offset, size)`.
type Span = (u64, u64);

/// `areas` minus `holes`, all as `(offset, size)`.
pub fn subtract_spans(areas: &[Span], holes: &[Span]) -> Vec<Span> {
    let mut out: Vec<Span> = areas.to_vec();
    for &(hs, hl) in holes {
        let he = hs + hl;
        out = out
            .into_iter()
            .flat_map(|(s, l)| {
                let e = s + l;
                let mut parts = Vec::new();
                if he <= s || hs >= e {
                    parts.push((s, l));
                } else {
                    if hs > s {
                        parts.push((s, hs - s));
                    }
                    if he < e {
                        parts.push((he, e - he));
                    }
                }
                parts
            })
            .collect();
    }
    out.retain(|&(_, l)| l > 0);
    out
}

fn page_span(offset: u64, size: u64) -> Span {
    let start = offset & !(PAGE_SIZE - 1);
    let end = (offset + size).next_multiple_of(PAGE_SIZE);
    (start, end - start)
}

/// Guest MMIO to the trapped parts of one BAR.
struct TrappedBar {
    region: u32,
    backend: Arc<dyn VfioBackend>,
    /// `(table span, pba span, routing)` when this BAR holds MSI-X structures.
    msix: Option<(Span, Span, Arc<Mutex<MsixRouting>>)>,
    /// Accesses forwarded to the device (neither table nor PBA).
    forwarded: AtomicU64,
}

fn within(span: Span, offset: u64, len: usize) -> Option<u64> {
    (offset >= span.0 && offset + len as u64 <= span.0 + span.1).then(|| offset - span.0)
}

impl BarHandler for TrappedBar {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if let Some((table, pba, routing)) = &self.msix {
            if let Some(o) = within(*table, offset, data.len()) {
                if let Ok(r) = routing.lock() {
                    r.table_read(o, data);
                }
                return;
            }
            if let Some(o) = within(*pba, offset, data.len()) {
                if let Ok(mut r) = routing.lock() {
                    r.pba_read(o, data);
                }
                return;
            }
        }
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        self.backend.region_read(self.region, offset, data);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if let Some((table, pba, routing)) = &self.msix {
            if let Some(o) = within(*table, offset, data.len()) {
                if let Ok(mut r) = routing.lock() {
                    r.table_write(o, data);
                }
                return;
            }
            if within(*pba, offset, data.len()).is_some() {
                return; // the PBA is read-only
            }
        }
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        self.backend.region_write(self.region, offset, data);
    }
}

/// The BARs a device implements: sizes from VFIO, types from its BAR registers.
pub fn discover_bars(backend: &dyn VfioBackend) -> Vec<BarInfo> {
    let mut bars = Vec::new();
    let mut index = 0;
    while index < NUM_BARS {
        let region = VFIO_PCI_BAR0_REGION_INDEX + index as u32;
        let size = backend.region(region).map(|r| r.size).unwrap_or(0);
        let register = backend.config_read_u32(crate::bar::BAR0_REG + index);
        let info = BarInfo::from_register(index, register, size);
        if size > 0 {
            bars.push(info);
        }
        index += if info.kind == BarKind::Mem64 { 2 } else { 1 };
    }
    bars
}

/// One BAR's mapping state.
struct BarMapping {
    info: BarInfo,
    /// mmapped parts `(offset in BAR, host mapping)`; created once, reused across moves.
    areas: Vec<(u64, HostMapping)>,
    trapped: Arc<TrappedBar>,
    /// Where it is mapped now: guest base and the platform's slot handles.
    live: Option<(u64, Vec<u32>)>,
}

pub struct VfioPciDevice {
    backend: Arc<dyn VfioBackend>,
    platform: Arc<dyn VmPlatform>,
    bars: BarShadow,
    mappings: Vec<BarMapping>,
    msix_cap: usize,
    msix: Arc<Mutex<MsixRouting>>,
    decode: bool,
}

impl VfioPciDevice {
    /// Builds the device with BARs placed at `addresses` (guest addresses per BAR index, from
    /// the VMM's allocator).
    pub fn new(
        backend: Arc<dyn VfioBackend>,
        platform: Arc<dyn VmPlatform>,
        bars: &[BarInfo],
        addresses: &[(usize, u64)],
    ) -> Result<Self, VfioPciError> {
        let read = |reg: usize| backend.config_read_u32(reg);
        let msix_cap = find_capability(read, CAP_ID_MSIX).ok_or(VfioPciError::NoMsix)?;
        let cap0 = backend.config_read_u32(msix_cap / 4);
        let layout = MsixLayout::from_capability(
            (cap0 >> 16) as u16,
            backend.config_read_u32(msix_cap / 4 + 1),
            backend.config_read_u32(msix_cap / 4 + 2),
        );
        let routing = Arc::new(Mutex::new(MsixRouting::new(layout, backend.clone(), platform.clone())?));

        let mut placed = Vec::new();
        let mut mappings = Vec::new();
        for info in bars {
            if !info.size.is_power_of_two() {
                return Err(VfioPciError::BadBarSize { index: info.index, size: info.size });
            }
            let address = addresses.iter().find(|(i, _)| *i == info.index).map(|(_, a)| *a).unwrap_or(0);
            placed.push((*info, address));
            if info.kind == BarKind::Io {
                continue;
            }
            let region = VFIO_PCI_BAR0_REGION_INDEX + info.index as u32;
            let mut holes = Vec::new();
            let mut msix = None;
            for (bar, offset, size) in [
                (layout.table_bar, layout.table_offset, layout.table_size()),
                (layout.pba_bar, layout.pba_offset, layout.pba_size()),
            ] {
                if usize::from(bar) == info.index {
                    if u64::from(offset) + size > info.size {
                        return Err(VfioPciError::MsixOutsideBar(bar));
                    }
                    holes.push(page_span(u64::from(offset), size));
                }
            }
            if usize::from(layout.table_bar) == info.index || usize::from(layout.pba_bar) == info.index {
                let table = (u64::from(layout.table_offset), layout.table_size());
                let pba = (u64::from(layout.pba_offset), layout.pba_size());
                // A structure in another BAR can never match an offset here.
                let none = (u64::MAX, 0);
                msix = Some((
                    if usize::from(layout.table_bar) == info.index { table } else { none },
                    if usize::from(layout.pba_bar) == info.index { pba } else { none },
                    routing.clone(),
                ));
            }
            let info_region = backend.region(region).unwrap_or_default();
            let mut areas = Vec::new();
            for (offset, size) in subtract_spans(&info_region.mmappable_areas(), &holes) {
                match backend.mmap(region, offset, size) {
                    Ok(m) => areas.push((offset, m)),
                    Err(e) => log::warn!("BAR {}: {e}; that part will trap", info.index),
                }
            }
            let trapped = Arc::new(TrappedBar { region, backend: backend.clone(), msix, forwarded: AtomicU64::new(0) });
            mappings.push(BarMapping { info: *info, areas, trapped, live: None });
        }
        Ok(Self {
            backend,
            platform,
            bars: BarShadow::new(&placed),
            mappings,
            msix_cap,
            msix: routing,
            decode: false,
        })
    }

    /// Trapped accesses forwarded to the device, per BAR index (excludes MSI-X emulation).
    pub fn forwarded_accesses(&self) -> Vec<(usize, u64)> {
        self.mappings.iter().map(|m| (m.info.index, m.trapped.forwarded.load(Ordering::Relaxed))).collect()
    }

    /// Guest address ranges that are mmapped now, `(guest address, size)`.
    pub fn mapped_ranges(&self) -> Vec<(u64, u64)> {
        self.mappings
            .iter()
            .filter_map(|m| m.live.as_ref().map(|(base, _)| (m, *base)))
            .flat_map(|(m, base)| m.areas.iter().map(move |(o, h)| (base + o, h.size() as u64)))
            .collect()
    }

    fn unmap_bar(&mut self, i: usize) {
        let m = &mut self.mappings[i];
        if let Some((base, slots)) = m.live.take() {
            for slot in slots {
                self.platform.unmap_memory(slot);
            }
            self.platform.unregister_bar(base);
        }
    }

    fn map_bar(&mut self, i: usize) {
        let Some(base) = self.bars.address(self.mappings[i].info.index) else { return };
        if self.mappings[i].live.as_ref().is_some_and(|(b, _)| *b == base) {
            return;
        }
        self.unmap_bar(i);
        let m = &mut self.mappings[i];
        if let Err(e) = self.platform.register_bar(base, m.info.size, m.trapped.clone()) {
            log::warn!("BAR {} at {base:#x}: {e}", m.info.index);
            return;
        }
        let mut slots = Vec::new();
        for (offset, host) in &m.areas {
            // SAFETY: `host` lives in `self.mappings` and outlives the slot: every path that
            // drops it (unmap_bar, Drop) removes the slot first.
            match unsafe { self.platform.map_memory(base + offset, host.size() as u64, host.addr()) } {
                Ok(slot) => slots.push(slot),
                Err(e) => log::warn!("BAR {} +{offset:#x}: cannot map, it will trap: {e}", m.info.index),
            }
        }
        m.live = Some((base, slots));
    }

    fn set_decode(&mut self, on: bool) {
        if on == self.decode {
            return;
        }
        self.decode = on;
        for i in 0..self.mappings.len() {
            if on {
                self.map_bar(i);
            } else {
                self.unmap_bar(i);
            }
        }
    }

    fn msix_control_reg(&self) -> usize {
        self.msix_cap / 4
    }

    /// Removes the device from the VM: MSI-X off, BARs unmapped, the function reset.
    pub fn shutdown(&mut self) {
        if let Ok(mut r) = self.msix.lock() {
            r.shutdown();
        }
        for i in 0..self.mappings.len() {
            self.unmap_bar(i);
        }
        self.decode = false;
        self.backend.reset();
    }
}

impl Drop for VfioPciDevice {
    fn drop(&mut self) {
        for i in 0..self.mappings.len() {
            self.unmap_bar(i);
        }
    }
}

impl PciDevice for VfioPciDevice {
    fn config_read(&mut self, reg: usize) -> u32 {
        if BarShadow::is_bar_register(reg) {
            return self.bars.read(reg);
        }
        if reg == ROM_REG {
            return 0;
        }
        let value = self.backend.config_read_u32(reg);
        if reg == self.msix_control_reg() {
            let control = self.msix.lock().map(|r| r.state.control()).unwrap_or(0);
            return (value & 0xffff) | (u32::from(control) << 16);
        }
        value
    }

    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) {
        if BarShadow::is_bar_register(reg) {
            if let (0, Some((value, _, _))) = (offset, merge_bytes(offset, data).filter(|_| data.len() == 4)) {
                if let Some((bar, _)) = self.bars.write(reg, value) {
                    if self.decode {
                        if let Some(i) = self.mappings.iter().position(|m| m.info.index == bar.index) {
                            self.map_bar(i);
                        }
                    }
                }
            }
            return;
        }
        if reg == ROM_REG {
            return;
        }
        if reg == self.msix_control_reg() {
            // Bytes 2..3 are Message Control; bytes 0..1 (id, next) are read-only.
            if let Some((value, shift, width)) = merge_bytes(offset, data) {
                if offset + data.len() as u64 > 2 {
                    let current = self.config_read(reg);
                    let mask = width << shift;
                    let merged = (current & !mask) | (value << shift);
                    if let Ok(mut r) = self.msix.lock() {
                        r.set_control((merged >> 16) as u16);
                    }
                }
            }
            return;
        }
        self.backend.region_write(VFIO_PCI_CONFIG_REGION_INDEX, reg as u64 * 4 + offset, data);
        if reg == REG_COMMAND_STATUS && offset < 2 {
            let command = self.backend.config_read_u32(REG_COMMAND_STATUS) as u16;
            self.set_decode(command & COMMAND_MEMORY_SPACE != 0);
        }
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
