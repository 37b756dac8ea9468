use std::cell::RefCell;

use super::*;

/// A fake NVMe PF controller: a flexible pool, secondary controllers, and the commands sent.
struct FakeController {
    virt_mgmt: bool,
    caps: PrimaryCaps,
    secondaries: RefCell<Vec<Secondary>>,
    log: RefCell<Vec<String>>,
}

fn pool(total: u32, primary: u32, max: u32) -> FlexPool {
    FlexPool { total, assigned: 0, primary, max_per_secondary: max, granularity: 1 }
}

/// Like the testbed's QEMU PF: 8 flexible queues (4 at most per VF), 4 interrupts (2 per VF),
/// two secondary controllers (VF 1 and 2).
fn testbed_like() -> FakeController {
    FakeController {
        virt_mgmt: true,
        caps: PrimaryCaps { cntlid: 0, queues: pool(8, 0, 4), interrupts: pool(4, 0, 2) },
        secondaries: RefCell::new(
            (1..=2).map(|n| Secondary { cntlid: n, vf_number: n, online: false, queues: 0, interrupts: 0 }).collect(),
        ),
        log: RefCell::new(Vec::new()),
    }
}

fn encode_caps(c: &PrimaryCaps) -> Vec<u8> {
    let mut d = vec![0u8; 4096];
    d[0..2].copy_from_slice(&c.cntlid.to_le_bytes());
    for (base, p) in [(32, &c.queues), (64, &c.interrupts)] {
        d[base..base + 4].copy_from_slice(&p.total.to_le_bytes());
        d[base + 4..base + 8].copy_from_slice(&p.assigned.to_le_bytes());
        d[base + 8..base + 10].copy_from_slice(&(p.primary as u16).to_le_bytes());
        d[base + 12..base + 14].copy_from_slice(&(p.max_per_secondary as u16).to_le_bytes());
        d[base + 14..base + 16].copy_from_slice(&(p.granularity as u16).to_le_bytes());
    }
    d
}

fn encode_secondaries(list: &[Secondary]) -> Vec<u8> {
    let mut d = vec![0u8; 4096];
    d[0] = list.len() as u8;
    for (i, s) in list.iter().enumerate() {
        let e = &mut d[32 + i * 32..64 + i * 32];
        e[0..2].copy_from_slice(&s.cntlid.to_le_bytes());
        e[4] = u8::from(s.online);
        e[8..10].copy_from_slice(&s.vf_number.to_le_bytes());
        e[10..12].copy_from_slice(&s.queues.to_le_bytes());
        e[12..14].copy_from_slice(&s.interrupts.to_le_bytes());
    }
    d
}

impl NvmeAdmin for &FakeController {
    fn identify(&self, cns: u8, _cntid: u16) -> Result<Vec<u8>, NvmeError> {
        Ok(match cns {
            CNS_CONTROLLER => {
                let mut d = vec![0u8; 4096];
                let oacs: u16 = if self.virt_mgmt { 0x1aa } else { 0x2a };
                d[OACS_OFFSET..OACS_OFFSET + 2].copy_from_slice(&oacs.to_le_bytes());
                d
            }
            CNS_PRIMARY_CAPS => encode_caps(&self.caps),
            CNS_SECONDARY_LIST => encode_secondaries(&self.secondaries.borrow()),
            _ => return Err(NvmeError::Command { what: format!("identify {cns:#x}"), status: 0x2 }),
        })
    }

    fn virt_mgmt(&self, action: VirtAction, resource: Resource, cntlid: u16, count: u16) -> Result<(), NvmeError> {
        self.log.borrow_mut().push(format!("{action:?} {resource:?} {cntlid} {count}"));
        let mut list = self.secondaries.borrow_mut();
        let s = list
            .iter_mut()
            .find(|s| s.cntlid == cntlid)
            .ok_or(NvmeError::Command { what: "no such controller".into(), status: 0x11f })?;
        match action {
            // As the specification (and QEMU) require: resources change only while offline.
            VirtAction::SecondaryAssign if s.online => {
                return Err(NvmeError::Command { what: "assign while online".into(), status: 0x120 })
            }
            VirtAction::SecondaryAssign if resource == Resource::Queues => s.queues = count,
            VirtAction::SecondaryAssign => s.interrupts = count,
            VirtAction::SecondaryOnline => s.online = true,
            VirtAction::SecondaryOffline => s.online = false,
        }
        Ok(())
    }
}

#[test]
fn the_admin_ioctl_matches_the_kernel_uapi() {
    assert_eq!(std::mem::size_of::<PassthruCmd>(), 72);
    assert_eq!(NVME_IOCTL_ADMIN_CMD, 0xC048_4E41);
}

#[test]
fn identify_structures_are_parsed() {
    let c = testbed_like();
    let caps = PrimaryCaps::parse(&encode_caps(&c.caps)).unwrap();
    assert_eq!(caps, c.caps);
    let list = parse_secondaries(&encode_secondaries(&c.secondaries.borrow())).unwrap();
    assert_eq!(list, *c.secondaries.borrow());
    assert!(matches!(PrimaryCaps::parse(&[0; 40]), Err(NvmeError::Short(40))));
    let mut short = vec![0u8; 40];
    short[0] = 2;
    assert!(matches!(parse_secondaries(&short), Err(NvmeError::Short(40))));
    assert_eq!(parse_secondaries(&[0u8; 32]).unwrap(), []);
}

#[test]
fn the_pool_is_shared_evenly_within_the_per_vf_maximum_and_granularity() {
    let caps = testbed_like().caps;
    assert_eq!(share("pf", &caps, 1).unwrap(), (4, 2));
    assert_eq!(share("pf", &caps, 2).unwrap(), (4, 2));
    assert_eq!(share("pf", &caps, 3).unwrap(), (2, 1));
    let e = share("pf", &caps, 5).unwrap_err().to_string();
    assert!(e.contains("5 VFs need at least 2 each"), "{e}");
    let mut held = caps;
    held.queues.primary = 6;
    let e = share("pf", &held, 2).unwrap_err().to_string();
    assert_eq!(e, "pf has 2 flexible queues for VFs (6 held by the primary controller); 2 VFs need at least 2 each");
    let mut coarse = caps;
    coarse.queues.granularity = 3;
    assert_eq!(share("pf", &coarse, 2).unwrap(), (3, 2));
}

#[test]
fn a_count_change_offlines_reassigns_and_onlines_the_secondary_controllers() {
    let c = testbed_like();
    let vfs = NvmeVfs { pf: "0000:03:00.0".into(), admin: &c };
    assert!(vfs.manages_virtualization().unwrap());
    // First enablement of 2 VFs.
    vfs.take_offline().unwrap();
    vfs.assign(2).unwrap();
    vfs.bring_online(2).unwrap();
    let after: Vec<_> = c.secondaries.borrow().iter().map(|s| (s.online, s.queues, s.interrupts)).collect();
    assert_eq!(after, [(true, 4, 2), (true, 4, 2)]);
    // 2 -> 1: both offline first, every resource returned, only VF 1 provisioned and online.
    c.log.borrow_mut().clear();
    vfs.take_offline().unwrap();
    vfs.assign(1).unwrap();
    vfs.bring_online(1).unwrap();
    assert_eq!(
        *c.log.borrow(),
        [
            "SecondaryOffline Queues 1 0",
            "SecondaryOffline Queues 2 0",
            "SecondaryAssign Queues 1 0",
            "SecondaryAssign Interrupts 1 0",
            "SecondaryAssign Queues 2 0",
            "SecondaryAssign Interrupts 2 0",
            "SecondaryAssign Queues 1 4",
            "SecondaryAssign Interrupts 1 2",
            "SecondaryOnline Queues 1 0",
        ]
    );
    let after: Vec<_> = c.secondaries.borrow().iter().map(|s| (s.online, s.queues, s.interrupts)).collect();
    assert_eq!(after, [(true, 4, 2), (false, 0, 0)]);
}

#[test]
fn more_vfs_than_secondary_controllers_or_resources_change_nothing() {
    let c = testbed_like();
    let vfs = NvmeVfs { pf: "0000:03:00.0".into(), admin: &c };
    assert_eq!(vfs.check(2).unwrap(), (4, 2));
    assert!(vfs.check(3).is_err() && vfs.check(5).is_err());
    let e = vfs.assign(3).unwrap_err().to_string();
    assert_eq!(e, "0000:03:00.0 has no secondary controller for VF 3");
    // Five secondary controllers, but only 8 queues for them.
    c.secondaries.borrow_mut().extend((3..=5).map(|n| Secondary {
        cntlid: n,
        vf_number: n,
        online: false,
        queues: 0,
        interrupts: 0,
    }));
    let e = vfs.assign(5).unwrap_err().to_string();
    assert!(e.contains("flexible queues") && e.contains("5 VFs need at least 2 each"), "{e}");
    assert!(c.log.borrow().is_empty(), "{:?}", c.log.borrow());
}

#[test]
fn a_controller_without_virtualization_management_needs_nothing() {
    let mut c = testbed_like();
    c.virt_mgmt = false;
    assert!(!NvmeVfs { pf: "x".into(), admin: &c }.manages_virtualization().unwrap());
}
