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

use super::binding::HostBinding;
use super::caps::{find_capability, CAP_ID_MSI, CAP_ID_MSIX};
use super::msix_routing::{InterruptRouting, MsiRouting, MsixRouting, MsixRoutingError};
use super::recovery::ErrorRecovery;
use super::{BarHandler, HostMapping, VfioBackend, VmPlatform, VFIO_PCI_BAR0_REGION_INDEX};
use crate::bar::{BarInfo, BarKind, BarShadow, NUM_BARS, ROM_REG};
use crate::bus::PciDevice;
use crate::configuration::{merge_bytes, COMMAND_BUS_MASTER, COMMAND_MEMORY_SPACE, REG_COMMAND_STATUS};
use crate::msi::MsiCapability;
use crate::msix::MsixLayout;
use devices::timing::{names, Milestone};

const PAGE_SIZE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum VfioPciError {
    #[error("BAR {index}: size {size:#x} is not a power of two")]
    BadBarSize { index: usize, size: u64 },
    #[error(transparent)]
    Msix(#[from] MsixRoutingError),
    #[error("the device has neither MSI-X nor MSI (INTx-only devices are not supported)")]
    NoMsi,
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

/// mmaps `spans` of region `region`; a part that cannot be mapped traps instead.
pub(super) fn mmap_spans(backend: &dyn VfioBackend, region: u32, spans: &[Span]) -> Vec<(u64, HostMapping)> {
    let mut areas = Vec::new();
    for &(offset, size) in spans {
        match backend.mmap(region, offset, size) {
            Ok(m) => areas.push((offset, m)),
            Err(e) => log::warn!("region {region}: {e}; that part will trap"),
        }
    }
    areas
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
pub(super) struct BarMapping {
    pub(super) info: BarInfo,
    /// The parts of the BAR to mmap (mmappable areas minus the MSI-X pages), `(offset, size)`.
    pub(super) spans: Vec<Span>,
    /// mmapped parts `(offset in BAR, host mapping)`; created once per binding, reused across
    /// moves, dropped when the device is released.
    pub(super) areas: Vec<(u64, HostMapping)>,
    trapped: Arc<TrappedBar>,
    /// Where it is mapped now: guest base and the platform's slot handles.
    live: Option<(u64, Vec<u32>)>,
}

pub struct VfioPciDevice {
    /// The host device; everything below reaches it through this (see [`HostBinding`]).
    pub(super) binding: Arc<HostBinding>,
    /// `binding`, as the backend the routing and trapped BARs hold.
    pub(super) backend: Arc<dyn VfioBackend>,
    pub(super) platform: Arc<dyn VmPlatform>,
    pub(super) bars: BarShadow,
    pub(super) mappings: Vec<BarMapping>,
    /// Byte offset of the MSI-X capability and its routing.
    pub(super) msix: Option<(usize, Arc<Mutex<MsixRouting>>)>,
    /// Byte offset of the MSI capability and its routing.
    pub(super) msi: Option<(usize, MsiRouting)>,
    pub(super) decode: bool,
    /// Pause/release state (see `lifecycle.rs`).
    pub(super) life: super::lifecycle::Lifecycle,
    /// When the guest first enabled each part of the device (for attach timings).
    pub(super) milestones: GuestMilestones,
    /// Error reporting to the guest and the resets it asks for (see `recovery.rs`).
    pub(super) errors: ErrorRecovery,
}

/// The first time the guest's driver enabled each part of the device.
#[derive(Debug, Default, Clone, Copy)]
pub struct GuestMilestones {
    pub memory_enabled: Option<Milestone>,
    pub msix_enabled: Option<Milestone>,
    pub bus_master: Option<Milestone>,
}

impl GuestMilestones {
    pub(super) fn reach(slot: &mut Option<Milestone>) {
        slot.get_or_insert_with(Milestone::now);
    }

    /// `(what, when)` of those reached.
    pub fn reached(&self) -> Vec<(&'static str, Milestone)> {
        [
            (names::MEMORY_ENABLED, self.memory_enabled),
            (names::MSIX_ENABLED, self.msix_enabled),
            (names::BUS_MASTER, self.bus_master),
        ]
        .into_iter()
        .filter_map(|(what, m)| Some((what, m?)))
        .collect()
    }
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
        let binding = Arc::new(HostBinding::new(backend));
        let backend: Arc<dyn VfioBackend> = binding.clone();
        let read = |reg: usize| backend.config_read_u32(reg);
        let msix_cap = find_capability(read, CAP_ID_MSIX);
        let msi_cap = find_capability(read, CAP_ID_MSI);
        let errors = ErrorRecovery::new(read);
        let hidden = errors.hidden_extended(read);
        if !hidden.is_empty() {
            log::info!(
                "extended capabilities {hidden:04x?} hidden from the guest: AER takes 0x100 (the device has none)"
            );
        }
        if !errors.supported() {
            log::info!("a conventional PCI function (no PCI Express capability): no error recovery for its driver");
        }
        if msix_cap.is_none() && msi_cap.is_none() {
            return Err(VfioPciError::NoMsi);
        }
        let msix = match msix_cap {
            Some(cap) => {
                let cap0 = backend.config_read_u32(cap / 4);
                let layout = MsixLayout::from_capability(
                    (cap0 >> 16) as u16,
                    backend.config_read_u32(cap / 4 + 1),
                    backend.config_read_u32(cap / 4 + 2),
                );
                Some((cap, layout, Arc::new(Mutex::new(MsixRouting::new(layout, backend.clone(), platform.clone())?))))
            }
            None => None,
        };
        let msi = match msi_cap {
            Some(cap) => {
                let control = (backend.config_read_u32(cap / 4) >> 16) as u16;
                let routing =
                    MsiRouting::new(MsiCapability::new(cap, control), control, backend.clone(), platform.clone())?;
                Some((cap, routing))
            }
            None => None,
        };

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
            let mut msix_here = None;
            if let Some((_, layout, routing)) = &msix {
                // A structure in another BAR can never match an offset here.
                let none = (u64::MAX, 0);
                let mut spans = [none, none];
                for (i, (bar, offset, size)) in [
                    (layout.table_bar, layout.table_offset, layout.table_size()),
                    (layout.pba_bar, layout.pba_offset, layout.pba_size()),
                ]
                .into_iter()
                .enumerate()
                {
                    if usize::from(bar) == info.index {
                        if u64::from(offset) + size > info.size {
                            return Err(VfioPciError::MsixOutsideBar(bar));
                        }
                        holes.push(page_span(u64::from(offset), size));
                        spans[i] = (u64::from(offset), size);
                    }
                }
                if spans != [none, none] {
                    msix_here = Some((spans[0], spans[1], routing.clone()));
                }
            }
            let info_region = backend.region(region).unwrap_or_default();
            let spans = subtract_spans(&info_region.mmappable_areas(), &holes);
            let areas = mmap_spans(backend.as_ref(), region, &spans);
            let trapped = Arc::new(TrappedBar {
                region,
                backend: backend.clone(),
                msix: msix_here,
                forwarded: AtomicU64::new(0),
            });
            mappings.push(BarMapping { info: *info, spans, areas, trapped, live: None });
        }
        Ok(Self {
            binding,
            backend,
            platform,
            bars: BarShadow::new(&placed),
            mappings,
            msix: msix.map(|(cap, _, routing)| (cap, routing)),
            msi,
            decode: false,
            life: Default::default(),
            milestones: GuestMilestones::default(),
            errors,
        })
    }

    /// When the guest first enabled decoding, MSI-X and bus mastering.
    pub fn milestones(&self) -> GuestMilestones {
        self.milestones
    }

    /// Whether the guest has enabled the function (memory decoding, MSI-X or MSI).
    pub fn guest_enabled(&self) -> bool {
        self.decode
            || self.msix.as_ref().is_some_and(|(_, r)| r.lock().is_ok_and(|r| r.state.enabled()))
            || self.msi.as_ref().is_some_and(|(_, r)| r.state.enabled())
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

    pub(super) fn unmap_bar(&mut self, i: usize) {
        let m = &mut self.mappings[i];
        if let Some((base, slots)) = m.live.take() {
            for slot in slots {
                self.platform.unmap_memory(slot);
            }
            self.platform.unregister_bar(base);
        }
    }

    pub(super) fn map_bar(&mut self, i: usize) {
        let Some(base) = self.bars.address(self.mappings[i].info.index) else {
            return;
        };
        if self.mappings[i].live.as_ref().is_some_and(|(b, _)| *b == base) {
            return;
        }
        self.unmap_bar(i);
        let m = &mut self.mappings[i];
        if let Err(e) = self.platform.register_bar(base, m.info.size, m.trapped.clone()) {
            devices::warn_guest!("BAR {} at {base:#x}: {e}", m.info.index);
            return;
        }
        let mut slots = Vec::new();
        for (offset, host) in &m.areas {
            // SAFETY: `host` lives in `self.mappings` and outlives the slot: every path that
            // drops it (unmap_bar, Drop) removes the slot first.
            match unsafe { self.platform.map_memory(base + offset, host.size() as u64, host.addr()) } {
                Ok(slot) => slots.push(slot),
                Err(e) => devices::warn_guest!("BAR {} +{offset:#x}: cannot map, it will trap: {e}", m.info.index),
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

    fn msix_control_reg(&self) -> Option<usize> {
        self.msix.as_ref().map(|(cap, _)| cap / 4)
    }

    /// Dword index within the MSI capability, if `reg` is one of its registers.
    fn msi_dword(&self, reg: usize) -> Option<usize> {
        let (cap, routing) = self.msi.as_ref()?;
        let index = reg.checked_sub(cap / 4)?;
        (index < routing.state.capability().dwords()).then_some(index)
    }

    /// Runs `f` on the MSI-X routing and on the MSI routing, those the function has.
    pub(super) fn for_each_routing(&mut self, mut f: impl FnMut(&mut dyn InterruptRouting)) {
        if let Some(Ok(mut r)) = self.msix.as_ref().map(|(_, r)| r.lock()) {
            f(&mut *r);
        }
        if let Some((_, r)) = self.msi.as_mut() {
            f(r);
        }
    }

    /// Removes the device from the VM: MSI-X off and BARs unmapped, the function reset.
    pub fn shutdown(&mut self) {
        if let Some(backend) = self.take_down() {
            backend.reset();
        }
    }

    /// [`shutdown`](Self::shutdown) up to the reset: the guest's view of the device is gone and
    /// the host device is returned for the caller to drop, which closes it (vfio-pci resets a
    /// device when its last fd closes) — work that waits for the device, done where it cannot
    /// hold up the VMM. `None` if released.
    pub fn take_down(&mut self) -> Option<Arc<dyn VfioBackend>> {
        self.for_each_routing(|r| r.shutdown());
        for i in 0..self.mappings.len() {
            self.unmap_bar(i);
        }
        // The host mmaps of the BARs go too: each holds the device open in the kernel, which
        // would keep the device (and its IOMMU group) from being released when the caller
        // drops the backend.
        for m in &mut self.mappings {
            m.areas.clear();
        }
        self.decode = false;
        self.binding.replace(None)
    }
}

impl Drop for VfioPciDevice {
    fn drop(&mut self) {
        for i in 0..self.mappings.len() {
            self.unmap_bar(i);
        }
    }
}

impl VfioPciDevice {
    /// The dword `reg` as it would be after a partial write of `data` at `offset`.
    fn merged_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<u32> {
        let (value, shift, width) = merge_bytes(offset, data)?;
        let mask = width << shift;
        Some((self.config_read(reg) & !mask) | (value << shift))
    }
}

impl PciDevice for VfioPciDevice {
    fn config_read(&mut self, reg: usize) -> u32 {
        if self.errors.resetting() {
            // A function being reset does not answer yet (the guest's reset wait polls).
            return 0xffff_ffff;
        }
        if BarShadow::is_bar_register(reg) {
            return self.bars.read(reg);
        }
        if reg == ROM_REG {
            return 0;
        }
        if self.errors.virtualizes(reg) {
            let device = self.device_config_read(reg);
            if let Some(value) = self.errors.config_read(reg, || device) {
                return value;
            }
        }
        let mut value = self.device_config_read(reg);
        if reg == REG_COMMAND_STATUS && self.life.deferred_bus_master {
            // The guest sees the bus mastering it asked for; the device gets it once RAM is mapped.
            value |= u32::from(COMMAND_BUS_MASTER);
        }
        if Some(reg) == self.msix_control_reg() {
            let control = self.msix.as_ref().and_then(|(_, r)| r.lock().ok().map(|r| r.state.control())).unwrap_or(0);
            return (value & 0xffff) | (u32::from(control) << 16);
        }
        if let (Some(index), Some((_, routing))) = (self.msi_dword(reg), self.msi.as_ref()) {
            let emulated = routing.state.read(index);
            return if index == 0 { (value & 0xffff) | emulated } else { emulated };
        }
        value
    }

    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) {
        if self.errors.resetting() {
            return; // dropped, as by a function that is not ready
        }
        if BarShadow::is_bar_register(reg) {
            // BARs are programmed with whole dwords; narrower writes are ignored.
            if let (0, &[a, b, c, d]) = (offset, data) {
                if let Some((bar, _)) = self.bars.write(reg, u32::from_le_bytes([a, b, c, d])) {
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
        if Some(reg) == self.msix_control_reg() {
            // Bytes 2..3 are Message Control; bytes 0..1 (id, next) are read-only.
            if let Some(merged) = self.merged_write(reg, offset, data).filter(|_| offset + data.len() as u64 > 2) {
                if let Some(Ok(mut r)) = self.msix.as_ref().map(|(_, r)| r.lock()) {
                    r.set_control((merged >> 16) as u16);
                    if r.state.enabled() {
                        GuestMilestones::reach(&mut self.milestones.msix_enabled);
                    }
                }
            }
            return;
        }
        if let Some(index) = self.msi_dword(reg) {
            if let Some(merged) = self.merged_write(reg, offset, data) {
                if let Some((_, routing)) = self.msi.as_mut() {
                    routing.write(index, merged);
                }
            }
            return;
        }
        if self.errors.virtualizes(reg) {
            let (device, mut flr) = (self.device_config_read(reg), false);
            if let Some(to_device) = self.errors.config_write(reg, offset, data, device, &mut flr) {
                if let Some(devctl) = to_device {
                    self.device_config_write(reg, 0, &devctl);
                }
                if flr {
                    self.errors.request_reset();
                    self.platform.wake_vmm();
                }
                return;
            }
        }
        if reg == REG_COMMAND_STATUS && offset < 2 && self.is_quiesced() {
            // The VM runs while the function is quiesced (a live release): the guest's command
            // is kept for when the function runs again; the function gets it without bus
            // mastering, and its BARs stay unmapped.
            if let Some(merged) = self.merged_write(reg, offset, data) {
                let command = merged as u16;
                self.set_quiesced_command(command);
                self.decode = command & COMMAND_MEMORY_SPACE != 0;
                self.device_config_write(reg, 0, &(command & !COMMAND_BUS_MASTER).to_le_bytes());
            }
            return;
        }
        let mut data = data.to_vec();
        if reg == REG_COMMAND_STATUS && offset == 0 {
            if let Some(first) = data.first_mut() {
                if *first & COMMAND_BUS_MASTER as u8 != 0 {
                    self.note_bus_master();
                }
                self.filter_bus_master(first);
                if *first & COMMAND_BUS_MASTER as u8 != 0 {
                    GuestMilestones::reach(&mut self.milestones.bus_master);
                }
            }
        }
        self.device_config_write(reg, offset, &data);
        if reg == REG_COMMAND_STATUS && offset < 2 {
            let command = self.device_config_read(REG_COMMAND_STATUS) as u16;
            self.set_decode(command & COMMAND_MEMORY_SPACE != 0);
            if self.decode {
                GuestMilestones::reach(&mut self.milestones.memory_enabled);
            }
        }
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
