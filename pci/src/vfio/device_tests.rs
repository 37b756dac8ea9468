use super::*;
use crate::msix::MsiMessage;
use crate::vfio::fake::{FakePlatform, FakeVfio};

const BAR0: u64 = 0xc000_0000;
const BAR3: u64 = 0xc000_4000;

fn device() -> (VfioPciDevice, Arc<FakeVfio>, Arc<FakePlatform>) {
    let backend = Arc::new(FakeVfio::igb_vf());
    let platform = Arc::new(FakePlatform::new());
    let bars = discover_bars(backend.as_ref());
    let dev = VfioPciDevice::new(backend.clone(), platform.clone(), &bars, &[(0, BAR0), (3, BAR3)]).unwrap();
    (dev, backend, platform)
}

fn write32(dev: &mut VfioPciDevice, reg: usize, v: u32) {
    dev.config_write(reg, 0, &v.to_le_bytes());
}

fn enable_memory(dev: &mut VfioPciDevice) {
    dev.config_write(1, 0, &(COMMAND_MEMORY_SPACE | crate::configuration::COMMAND_BUS_MASTER).to_le_bytes());
}

#[test]
fn subtract_spans_cuts_holes() {
    assert_eq!(
        subtract_spans(&[(0, 0x4000)], &[(0, 0x1000), (0x2000, 0x1000)]),
        vec![(0x1000, 0x1000), (0x3000, 0x1000)]
    );
    assert_eq!(subtract_spans(&[(0, 0x4000)], &[]), vec![(0, 0x4000)]);
    assert_eq!(subtract_spans(&[(0, 0x1000)], &[(0, 0x4000)]), vec![]);
    assert_eq!(page_span(0x2000, 8), (0x2000, 0x1000));
    assert_eq!(page_span(0x0ff8, 0x10), (0, 0x2000));
}

#[test]
fn bars_are_discovered_and_shadowed() {
    let (mut dev, backend, _) = device();
    let bars = discover_bars(backend.as_ref());
    assert_eq!(
        bars.iter().map(|b| (b.index, b.size, b.kind)).collect::<Vec<_>>(),
        vec![(0, 0x4000, BarKind::Mem64), (3, 0x4000, BarKind::Mem64)]
    );
    assert_eq!(dev.config_read(4), BAR0 as u32 | 0xc);
    assert_eq!(dev.config_read(5), 0);
    // Sizing does not reach the device.
    write32(&mut dev, 4, 0xffff_ffff);
    assert_eq!(dev.config_read(4), 0xffff_c00c);
    assert_eq!(u32::from_le_bytes(backend.config.lock().unwrap()[0x10..0x14].try_into().unwrap()), 0xc);
    write32(&mut dev, 4, BAR0 as u32);
    // No expansion ROM; identity passes through.
    assert_eq!(dev.config_read(ROM_REG), 0);
    assert_eq!(dev.config_read(0), 0x10ca_8086);
}

#[test]
fn bars_map_only_while_decoding_and_msix_pages_trap() {
    let (mut dev, _, platform) = device();
    assert!(!dev.guest_enabled());
    assert!(platform.slots.lock().unwrap().is_empty(), "nothing mapped before decode is on");
    enable_memory(&mut dev);
    let mut slots: Vec<(u64, u64)> = platform.slots.lock().unwrap().values().copied().collect();
    slots.sort();
    assert!(dev.guest_enabled());
    // BAR0 whole; BAR3 without the table page (0) and the PBA page (0x2000).
    assert_eq!(slots, vec![(BAR0, 0x4000), (BAR3 + 0x1000, 0x1000), (BAR3 + 0x3000, 0x1000)]);
    assert_eq!(platform.bars.bases(), vec![BAR0, BAR3]);
    // Decode off: everything unmapped.
    dev.config_write(1, 0, &0u16.to_le_bytes());
    assert!(platform.slots.lock().unwrap().is_empty());
    assert!(platform.bars.bases().is_empty());
}

#[test]
fn bar_moves_apply_only_with_decode_on() {
    let (mut dev, _, platform) = device();
    write32(&mut dev, 4, 0xd000_0000);
    assert!(platform.slots.lock().unwrap().is_empty(), "moved while decode off: nothing mapped");
    enable_memory(&mut dev);
    assert!(platform.slots.lock().unwrap().values().any(|&(a, _)| a == 0xd000_0000));
    write32(&mut dev, 4, 0xd100_0000);
    let slots: Vec<u64> = platform.slots.lock().unwrap().values().map(|s| s.0).collect();
    assert!(slots.contains(&0xd100_0000) && !slots.contains(&0xd000_0000), "{slots:x?}");
    assert!(platform.bars.bases().contains(&0xd100_0000));
    assert_eq!(dev.mapped_ranges().len(), 3);
}

#[test]
fn msix_enable_program_unmask_routes_and_attaches() {
    let (mut dev, backend, platform) = device();
    enable_memory(&mut dev);
    // Message Control reads the emulated table size (3 vectors → 2), disabled.
    assert_eq!(dev.config_read(0x70 / 4) >> 16, 2);
    // Enable + function mask, as Linux does first.
    dev.config_write(0x70 / 4, 2, &(0xc000u16).to_le_bytes());
    assert_eq!(*backend.msix_calls.lock().unwrap(), vec![3], "VFIO gets one eventfd per vector");
    assert_eq!(dev.config_read(0x70 / 4) >> 16, 0xc002);
    // Program vector 1 through the trapped table page and unmask it.
    assert!(platform.mmio_write(BAR3 + 16, &0xfee0_0000u32.to_le_bytes()));
    platform.mmio_write(BAR3 + 24, &0x4041u32.to_le_bytes());
    platform.mmio_write(BAR3 + 28, &0u32.to_le_bytes());
    assert!(platform.irqfds.lock().unwrap().is_empty(), "function still masked");
    dev.config_write(0x70 / 4, 2, &(0x8000u16).to_le_bytes());
    let gsi1 = 25;
    assert_eq!(platform.routes.lock().unwrap().get(&gsi1), Some(&MsiMessage { address: 0xfee0_0000, data: 0x4041 }));
    assert_eq!(*platform.irqfds.lock().unwrap(), vec![gsi1]);
    // Mask the vector: irqfd detached; table reads back.
    platform.mmio_write(BAR3 + 28, &1u32.to_le_bytes());
    assert!(platform.irqfds.lock().unwrap().is_empty());
    let mut d = [0u8; 4];
    platform.mmio_read(BAR3 + 24, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x4041);
    // Disable MSI-X: VFIO told.
    dev.config_write(0x70 / 4, 2, &0u16.to_le_bytes());
    assert_eq!(*backend.msix_calls.lock().unwrap(), vec![3, 0]);
}

#[test]
fn trapped_non_msix_accesses_are_forwarded_and_counted() {
    let (mut dev, backend, platform) = device();
    enable_memory(&mut dev);
    // Inside the table page but past the table (3 entries = 48 bytes).
    let mut d = [0u8; 4];
    assert!(platform.mmio_read(BAR3 + 0x800, &mut d));
    assert_eq!(d, [0x5a; 4]);
    platform.mmio_write(BAR3 + 0x2800, &[1, 2, 3, 4]);
    // PBA writes are dropped.
    platform.mmio_write(BAR3 + 0x2000, &[1, 2, 3, 4]);
    assert_eq!(*backend.accesses.lock().unwrap(), vec![(3, 0x800, 4, false), (3, 0x2800, 4, true)]);
    assert_eq!(dev.forwarded_accesses(), vec![(0, 0), (3, 2)]);
}

#[test]
fn other_config_writes_reach_the_device_and_shutdown_resets() {
    let (mut dev, backend, platform) = device();
    dev.config_write(3, 0, &[0x10]); // cache line size
    assert_eq!(backend.config.lock().unwrap()[0x0c], 0x10);
    enable_memory(&mut dev);
    dev.config_write(0x70 / 4, 2, &(0x8000u16).to_le_bytes());
    dev.shutdown();
    assert!(platform.slots.lock().unwrap().is_empty());
    assert_eq!(*backend.resets.lock().unwrap(), 1);
    assert_eq!(backend.msix_calls.lock().unwrap().last(), Some(&0));
}

/// Taking a device down leaves nothing of the host device behind — no guest mapping and no
/// host mmap of a BAR (each would keep the device open in the kernel after the caller drops
/// the returned backend, and its IOMMU group attached) — and does not reset it (closing does).
#[test]
fn take_down_lets_go_of_every_bar_mmap_and_hands_back_the_device() {
    let (mut dev, backend, platform) = device();
    enable_memory(&mut dev);
    assert!(dev.mappings.iter().any(|m| !m.areas.is_empty()), "BARs are mmapped");
    let taken = dev.take_down().expect("the bound device");
    assert!(dev.mappings.iter().all(|m| m.areas.is_empty()), "no host mmap left");
    assert!(platform.slots.lock().unwrap().is_empty() && dev.mapped_ranges().is_empty());
    assert_eq!(*backend.resets.lock().unwrap(), 0);
    assert!(dev.take_down().is_none(), "nothing left to take");
    drop(taken);
}

#[test]
fn msi_only_device_is_emulated_and_routed() {
    let backend = Arc::new(FakeVfio::msi_only());
    let platform = Arc::new(FakePlatform::new());
    let bars = discover_bars(backend.as_ref());
    let mut dev = VfioPciDevice::new(backend.clone(), platform.clone(), &bars, &[(0, 0xc000_0000)]).unwrap();
    // id/next from the device, control emulated (read-only bits kept, enable off).
    assert_eq!(dev.config_read(0x50 / 4), 0x0184_0005);
    // Linux: address, data, then enable with 2 vectors.
    write32(&mut dev, 0x54 / 4, 0xfee0_2000);
    write32(&mut dev, 0x58 / 4, 0);
    dev.config_write(0x5c / 4, 0, &0x4060u16.to_le_bytes());
    assert!(platform.routes.lock().unwrap().is_empty());
    dev.config_write(0x50 / 4, 2, &(0x0184u16 | 1 | (1 << 4)).to_le_bytes());
    assert_eq!(*backend.msi_calls.lock().unwrap(), vec![2], "VFIO MSI with 2 eventfds");
    let routes: Vec<u32> = platform.routes.lock().unwrap().values().map(|m| m.data).collect();
    assert_eq!(routes, vec![0x4060, 0x4061]);
    assert_eq!(platform.irqfds.lock().unwrap().len(), 2);
    // Per-vector mask of vector 0, read back; the device never saw these writes.
    write32(&mut dev, 0x60 / 4, 1);
    assert_eq!(dev.config_read(0x60 / 4), 1);
    assert_eq!(platform.irqfds.lock().unwrap().len(), 1);
    assert_eq!(u32::from_le_bytes(backend.config.lock().unwrap()[0x54..0x58].try_into().unwrap()), 0);
    dev.shutdown();
    assert_eq!(*backend.msi_calls.lock().unwrap(), vec![2, 0]);
    assert!(platform.irqfds.lock().unwrap().is_empty());
}

#[test]
fn a_device_without_msi_or_msix_is_refused() {
    let backend = Arc::new(FakeVfio::msi_only());
    backend.config.lock().unwrap()[0x34] = 0;
    let platform = Arc::new(FakePlatform::new());
    let err = VfioPciDevice::new(backend, platform, &[], &[]).err().unwrap();
    assert!(matches!(err, VfioPciError::NoMsi));
}

#[test]
fn bus_mastering_is_deferred_until_dma_mapping_and_stays_off_when_it_failed() {
    use crate::vfio::DmaState;
    let (mut dev, backend, platform) = device();
    let device_command = || backend.config.lock().unwrap()[4];
    *platform.dma.lock().unwrap() = Some(DmaState::Pending);
    enable_memory(&mut dev);
    assert_eq!(device_command() & 0x6, 0x2, "memory on, bus mastering not yet: RAM is being mapped");
    assert_eq!(dev.config_read(1) & 0x6, 0x6, "the guest reads back what it wrote");
    dev.apply_deferred_bus_master();
    assert_eq!(device_command() & 0x4, 0, "still mapping: nothing changes");
    *platform.dma.lock().unwrap() = Some(DmaState::Ready);
    dev.apply_deferred_bus_master();
    assert_eq!(device_command() & 0x6, 0x6, "mapped: the device masters the bus");
    dev.apply_deferred_bus_master();
    // A guest that turns it off before the mapping is done does not get it later.
    dev.config_write(1, 0, &0u16.to_le_bytes());
    *platform.dma.lock().unwrap() = Some(DmaState::Pending);
    enable_memory(&mut dev);
    dev.config_write(1, 0, &COMMAND_MEMORY_SPACE.to_le_bytes());
    *platform.dma.lock().unwrap() = Some(DmaState::Ready);
    dev.apply_deferred_bus_master();
    assert_eq!(device_command() & 0x6, 0x2);
    // Mapping failed: bus mastering stays off.
    *platform.dma.lock().unwrap() = Some(DmaState::Failed("IOMMU full".into()));
    enable_memory(&mut dev);
    assert_eq!(device_command() & 0x6, 0x2, "memory on, bus master refused");
    assert_eq!(dev.config_read(1) & 0x4, 0);
}

#[test]
fn bar_map_refuses_overlaps_and_finds_offsets() {
    struct Nop;
    impl BarHandler for Nop {
        fn read(&self, _: u64, _: &mut [u8]) {}
        fn write(&self, _: u64, _: &[u8]) {}
    }
    let map = crate::vfio::BarMap::default();
    map.insert(0x1000, 0x1000, Arc::new(Nop)).unwrap();
    assert!(map.insert(0x1800, 0x1000, Arc::new(Nop)).is_err());
    assert!(map.insert(0x0800, 0x1000, Arc::new(Nop)).is_err());
    map.insert(0x2000, 0x1000, Arc::new(Nop)).unwrap();
    assert_eq!(map.find(0x2010).map(|(_, o)| o), Some(0x10));
    assert!(map.find(0x3000).is_none());
    map.remove(0x1000);
    assert!(map.find(0x1000).is_none());
    assert!(map.insert(u64::MAX - 1, 0x10, Arc::new(Nop)).is_err());
}

#[test]
fn a_removed_device_gives_its_gsis_and_routes_back() {
    let platform = Arc::new(FakePlatform::new());
    let backend = Arc::new(FakeVfio::igb_vf());
    let bars = discover_bars(backend.as_ref());
    let make = || VfioPciDevice::new(backend.clone(), platform.clone(), &bars, &[(0, BAR0), (3, BAR3)]).unwrap();
    let mut first = None;
    // Many attach/detach cycles: the GSIs in use never grow, no route stays behind.
    for _ in 0..100 {
        let mut dev = make();
        enable_memory(&mut dev);
        dev.config_write(0x70 / 4, 2, &(0x8000u16).to_le_bytes());
        platform.mmio_write(BAR3, &0xfee0_0000u32.to_le_bytes());
        platform.mmio_write(BAR3 + 8, &0x4041u32.to_le_bytes());
        platform.mmio_write(BAR3 + 12, &0u32.to_le_bytes());
        let gsis = dev.msix.as_ref().unwrap().1.lock().unwrap().gsis().to_vec();
        assert_eq!(platform.routes.lock().unwrap().len(), 1);
        assert_eq!(platform.irqfds.lock().unwrap().len(), 1);
        let mut sorted = gsis.clone();
        sorted.sort();
        assert_eq!(*first.get_or_insert(sorted.clone()), sorted, "the same GSIs are reused");
        dev.shutdown();
        drop(dev);
        assert!(platform.routes.lock().unwrap().is_empty(), "its routes went with it");
        assert!(platform.irqfds.lock().unwrap().is_empty());
    }
    assert_eq!(first.unwrap(), vec![24, 25, 26]);
}
