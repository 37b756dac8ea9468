use std::sync::Arc;

use super::*;
use crate::aer::{UNCOR_MASK, UNCOR_STATUS};
use crate::bus::PciDevice;
use crate::configuration::{COMMAND_BUS_MASTER, COMMAND_MEMORY_SPACE, REG_COMMAND_STATUS};
use crate::vfio::device::discover_bars;
use crate::vfio::fake::{FakePlatform, FakeVfio};

const BAR0: u64 = 0xc000_0000;
const BAR3: u64 = 0xc000_4000;
/// The fake igb VF's PCI Express capability (0xa0) registers, as dword indices.
const EXP_CAPS_REG: usize = 0xa0 / 4;
const DEVCAP_REG: usize = 0xa4 / 4;
const DEVCTL_REG: usize = 0xa8 / 4;
/// Its AER capability at 0x100.
const AER_REG: usize = 0x100 / 4;

fn device(fake: Arc<FakeVfio>) -> (VfioPciDevice, Arc<FakePlatform>) {
    let platform = Arc::new(FakePlatform::new());
    let bars = discover_bars(fake.as_ref());
    let dev = VfioPciDevice::new(fake, platform.clone(), &bars, &[(0, BAR0), (3, BAR3)]).unwrap();
    (dev, platform)
}

/// A function whose guest driver enabled it, and enabled error reporting as Linux's AER
/// service does (correctable, non-fatal, fatal, unsupported request).
fn enabled(fake: Arc<FakeVfio>) -> (VfioPciDevice, Arc<FakePlatform>) {
    let (mut dev, platform) = device(fake);
    dev.config_write(REG_COMMAND_STATUS, 0, &(COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER).to_le_bytes());
    dev.config_write(DEVCTL_REG, 0, &0x000fu16.to_le_bytes());
    (dev, platform)
}

fn wakes(p: &FakePlatform) -> u32 {
    *p.wakes.lock().unwrap()
}

/// The fake config space of an NVMe VF in the testbed: MSI-X at 0x40, PCIe at 0x80, ARI at
/// 0x100 and no AER capability.
fn nvme_like() -> Arc<FakeVfio> {
    let fake = FakeVfio::igb_vf();
    {
        let mut cfg = fake.config.lock().unwrap();
        let mut put = |off: usize, v: u32| cfg[off..off + 4].copy_from_slice(&v.to_le_bytes());
        put(0x34, 0x40);
        put(0x40, 0x0002_8011); // MSI-X, next 0x80
        put(0x44, 0x0000_0003);
        put(0x48, 0x0000_2003);
        put(0x70, 0);
        put(0x74, 0);
        put(0x78, 0);
        put(0xa0, 0);
        put(0xa4, 0);
        put(0xa8, 0);
        put(0x80, 0x0002_0010); // PCIe, end of list
        put(0x84, 0x1000_8020);
        put(0x100, 0x0001_000e); // ARI, end
        put(0x10c, 0);
        put(0x150, 0);
    }
    Arc::new(fake)
}

#[test]
fn the_guest_sees_an_integrated_endpoint_that_can_do_flr_with_its_own_aer() {
    let (mut dev, _) = device(Arc::new(FakeVfio::igb_vf()));
    let caps = dev.config_read(EXP_CAPS_REG);
    assert_eq!((caps >> 20) & 0xf, 0x9, "device/port type: Root Complex Integrated Endpoint");
    assert_eq!(caps & 0xffff, 0x0010, "id and next unchanged");
    assert_ne!(dev.config_read(DEVCAP_REG) & (1 << 28), 0, "FLR capable");
    // Device Status: the device's own error bits are not the guest's.
    assert_eq!(dev.config_read(DEVCTL_REG) >> 16, 0x0010, "aux power stays, correctable error does not");
    // The device's AER stays where it is, emulated: the chain to ARI is kept.
    assert_eq!(dev.config_read(AER_REG), 0x1502_0001);
    assert_eq!(dev.config_read(0x150 / 4), 0x0001_000e);
    assert_eq!(dev.config_read(AER_REG + 3), 0x0046_2030, "default severity");
}

#[test]
fn a_function_without_aer_gets_one_at_0x100_and_the_rest_is_hidden() {
    let (mut dev, _) = device(nvme_like());
    assert_eq!(dev.config_read(0x80 / 4) >> 20 & 0xf, 0x9);
    assert_eq!(dev.config_read(AER_REG), 0x0002_0001, "AER, version 2, end of the list");
    assert_eq!(dev.config_read(0x200 / 4), 0, "the rest of extended space reads 0");
    dev.config_write(0x200 / 4, 0, &[0xff]);
    // A conventional PCI function gets no AER at all.
    let (mut plain, _) = {
        let fake = Arc::new(FakeVfio::msi_only());
        let platform = Arc::new(FakePlatform::new());
        let bars = discover_bars(fake.as_ref());
        (VfioPciDevice::new(fake, platform.clone(), &bars, &[(0, BAR0)]).unwrap(), platform)
    };
    assert!(!plain.errors.supported());
    assert_eq!(plain.config_read(AER_REG), 0);
}

#[test]
fn device_control_reporting_bits_are_the_guests_and_the_rest_reaches_the_device() {
    let fake = Arc::new(FakeVfio::igb_vf());
    let (mut dev, _) = device(fake.clone());
    // Reporting enables and Max Payload Size (bits 5..7) in one write.
    dev.config_write(DEVCTL_REG, 0, &0x002fu16.to_le_bytes());
    assert_eq!(dev.config_read(DEVCTL_REG) & 0xffff, 0x002f);
    let device_devctl = u16::from_le_bytes({
        let cfg = fake.config.lock().unwrap();
        [cfg[0xa8], cfg[0xa9]]
    });
    assert_eq!(device_devctl, 0x0020, "the host device's reporting enables stay off");
    // Device Status error bits are write-1-to-clear, and never written to the device.
    dev.config_write(DEVCTL_REG, 2, &0xffffu16.to_le_bytes());
    assert_eq!(dev.config_read(DEVCTL_REG) >> 16, 0x0010);
}

#[test]
fn a_reacquired_function_signals_a_fatal_error_the_vmm_sends_to_the_rcec() {
    let (mut dev, platform) = enabled(Arc::new(FakeVfio::igb_vf()));
    dev.quiesce();
    drop(dev.release().unwrap());
    dev.rebind(Arc::new(FakeVfio::igb_vf())).unwrap();
    let woken = wakes(&platform);
    dev.unquiesce();
    assert_eq!(wakes(&platform), woken + 1, "the VMM thread is woken");
    assert_eq!(dev.config_read(AER_REG + UNCOR_STATUS / 4), crate::aer::UNCOR_INTERNAL);
    assert_ne!(dev.config_read(DEVCTL_REG) & (1 << 18), 0, "Device Status: fatal error detected");
    assert_eq!(dev.take_error_report(), Some(Severity::Fatal));
    assert_eq!(dev.take_error_report(), None, "sent once");
    let stats = dev.recovery_stats();
    assert_eq!(stats.signalled, 1);
    let last = stats.last.unwrap();
    assert_eq!((last.cause, last.delivered, last.reset_after_ms), (RecoveryCause::Reacquired, true, None));
}

#[test]
fn only_a_function_the_driver_was_using_is_recovered_and_only_if_reporting_is_on() {
    // Paused with bus mastering on: its DMA may have been cut.
    let (mut dev, _) = enabled(Arc::new(FakeVfio::igb_vf()));
    dev.quiesce();
    dev.unquiesce();
    assert_eq!(dev.recovery_stats().last.map(|l| l.cause), Some(RecoveryCause::PausedDuringDma));
    // Bus mastering off: nothing was in flight.
    let (mut dev, _) = enabled(Arc::new(FakeVfio::igb_vf()));
    dev.config_write(REG_COMMAND_STATUS, 0, &COMMAND_MEMORY_SPACE.to_le_bytes());
    dev.quiesce();
    dev.unquiesce();
    assert_eq!(dev.recovery_stats().signalled, 0);
    // Resumed while released: nothing is behind the function yet.
    let (mut dev, _) = enabled(Arc::new(FakeVfio::igb_vf()));
    dev.quiesce();
    drop(dev.release().unwrap());
    dev.unquiesce();
    assert_eq!(dev.recovery_stats().signalled, 0);
    // A guest that did not enable reporting, or masked the error: logged, not sent.
    let (mut dev, platform) = device(Arc::new(FakeVfio::igb_vf()));
    dev.config_write(REG_COMMAND_STATUS, 0, &(COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER).to_le_bytes());
    dev.quiesce();
    dev.unquiesce();
    assert_eq!((dev.take_error_report(), wakes(&platform)), (None, 0));
    assert!(!dev.recovery_stats().last.unwrap().delivered);
    let (mut dev, _) = enabled(Arc::new(FakeVfio::igb_vf()));
    dev.config_write(AER_REG + UNCOR_MASK / 4, 0, &crate::aer::UNCOR_INTERNAL.to_le_bytes());
    dev.quiesce();
    dev.unquiesce();
    assert_eq!(dev.take_error_report(), None);
}

#[test]
fn the_guests_flr_resets_the_function_through_vfio_and_its_reenable_ends_the_episode() {
    let fresh = Arc::new(FakeVfio::igb_vf());
    let (mut dev, platform) = enabled(Arc::new(FakeVfio::igb_vf()));
    dev.quiesce();
    drop(dev.release().unwrap());
    dev.rebind(fresh.clone()).unwrap();
    dev.unquiesce();
    assert_eq!(dev.take_error_report(), Some(Severity::Fatal));
    // The guest's AER core: the driver lets go of bus mastering, then Initiate FLR.
    dev.config_write(REG_COMMAND_STATUS, 0, &COMMAND_MEMORY_SPACE.to_le_bytes());
    let woken = wakes(&platform);
    dev.config_write(DEVCTL_REG, 1, &[0x80]);
    assert_eq!(wakes(&platform), woken + 1);
    // Until the VMM thread has reset it, the function does not answer.
    assert_eq!(dev.config_read(REG_COMMAND_STATUS), u32::MAX);
    assert_eq!(dev.config_read(0), u32::MAX);
    dev.config_write(REG_COMMAND_STATUS, 0, &[0x06]);
    let backend = dev.take_reset().expect("a reset to do");
    assert!(dev.take_reset().is_none(), "taken once");
    assert_eq!(dev.config_read(0), u32::MAX, "still resetting");
    backend.reset();
    dev.finish_reset();
    assert_eq!(*fresh.resets.lock().unwrap(), 1, "the function was reset through VFIO");
    assert_ne!(dev.config_read(0), u32::MAX);
    // The reported error is cleared; the guest's config survived the reset.
    assert_eq!(dev.config_read(AER_REG + UNCOR_STATUS / 4), 0);
    assert_eq!(dev.config_read(DEVCTL_REG) & 0xffff, 0x000f);
    let last = dev.recovery_stats().last.unwrap();
    assert!(last.reset_after_ms.is_some() && last.reenabled_after_ms.is_none());
    // The driver's slot_reset/resume turn bus mastering back on: the function is back.
    dev.config_write(REG_COMMAND_STATUS, 0, &(COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER).to_le_bytes());
    let stats = dev.recovery_stats();
    assert_eq!(stats.resets, 1);
    assert!(stats.last.unwrap().reenabled_after_ms.is_some());
}

#[test]
fn an_flr_outside_an_episode_is_done_too_and_a_host_error_is_signalled() {
    let fake = Arc::new(FakeVfio::igb_vf());
    let (mut dev, _) = enabled(fake.clone());
    dev.config_write(DEVCTL_REG, 0, &0x800fu16.to_le_bytes());
    let backend = dev.take_reset().unwrap();
    backend.reset();
    dev.finish_reset();
    assert_eq!(*fake.resets.lock().unwrap(), 1);
    assert_eq!(dev.recovery_stats().signalled, 0);
    dev.signal_host_error();
    assert_eq!(dev.take_error_report(), Some(Severity::Fatal));
    assert_eq!(dev.recovery_stats().last.unwrap().cause, RecoveryCause::HostError);
}

#[test]
fn a_live_release_keeps_the_guest_waiting_in_its_reset_until_the_function_is_back() {
    let (mut dev, platform) = enabled(Arc::new(FakeVfio::igb_vf()));
    // Released while the VM runs: quiesced, the error signalled, the host side let go of.
    dev.quiesce();
    assert_eq!(dev.signal_error(RecoveryCause::LiveRelease), Signalled::Sent);
    drop(dev.release().unwrap());
    assert_eq!(dev.take_error_report(), Some(Severity::Fatal));
    // The guest's AER core: the driver stops, then FLR. Nothing to reset yet: the function
    // does not answer (the guest's reset wait polls).
    dev.config_write(DEVCTL_REG, 1, &[0x80]);
    assert!(dev.take_reset().is_none(), "no host device to reset");
    assert_eq!(dev.config_read(REG_COMMAND_STATUS), u32::MAX);
    // Back (a re-created function): it runs again; the reset under way is the recovery, no
    // second error is signalled; the VMM thread now does the reset and the function answers.
    let fresh = Arc::new(FakeVfio::igb_vf());
    dev.rebind(fresh.clone()).unwrap();
    let woken = wakes(&platform);
    dev.unquiesce();
    assert_eq!(dev.take_error_report(), None);
    assert_eq!(dev.recovery_stats().signalled, 1);
    assert_eq!(wakes(&platform), woken);
    let backend = dev.take_reset().expect("the guest's reset, now");
    backend.reset();
    dev.finish_reset();
    assert_eq!(*fresh.resets.lock().unwrap(), 1);
    assert_ne!(dev.config_read(REG_COMMAND_STATUS), u32::MAX);
    dev.config_write(REG_COMMAND_STATUS, 0, &(COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER).to_le_bytes());
    let last = dev.recovery_stats().last.unwrap();
    assert_eq!(last.cause, RecoveryCause::LiveRelease);
    assert!(last.reenabled_after_ms.is_some());
}

#[test]
fn command_writes_while_live_released_are_kept_for_the_return_and_bus_mastering_waits() {
    let (mut dev, _) = enabled(Arc::new(FakeVfio::igb_vf()));
    dev.quiesce();
    drop(dev.release().unwrap());
    // The guest's driver lets go of bus mastering while the function is away.
    dev.config_write(REG_COMMAND_STATUS, 0, &COMMAND_MEMORY_SPACE.to_le_bytes());
    let fresh = Arc::new(FakeVfio::igb_vf());
    dev.rebind(fresh.clone()).unwrap();
    dev.unquiesce();
    let device_command = u16::from_le_bytes({
        let cfg = fresh.config.lock().unwrap();
        [cfg[4], cfg[5]]
    });
    assert_eq!(device_command & COMMAND_BUS_MASTER, 0, "bus mastering stays off until the driver sets it");
    assert_eq!(dev.config_read(REG_COMMAND_STATUS) as u16 & COMMAND_BUS_MASTER, 0);
}
