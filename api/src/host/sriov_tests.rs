use std::os::unix::fs::symlink;

use super::*;

/// A fake sysfs + /dev: PF 0000:01:00.0 (igb, eth0, 7 VFs max, 2 enabled) with VF0 on vfio-pci
/// (group 12, node present) and VF1 on igbvf (group 13); a non-SR-IOV device 0000:00:02.0.
fn fake(tag: &str) -> (Sysfs, PathBuf) {
    let root = std::env::temp_dir().join(format!("vfvmm-sriov-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let sys = root.join("sys");
    let devices = sys.join("bus/pci/devices");
    let drivers = sys.join("bus/pci/drivers");
    let groups = sys.join("kernel/iommu_groups");
    for d in [&devices, &drivers.join("igb"), &drivers.join("igbvf"), &drivers.join("vfio-pci"), &root.join("dev/vfio")]
    {
        std::fs::create_dir_all(d).unwrap();
    }
    let dev = |a: &str| {
        let d = devices.join(a);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let pf = dev("0000:01:00.0");
    std::fs::write(pf.join("sriov_totalvfs"), "7\n").unwrap();
    std::fs::write(pf.join("sriov_numvfs"), "2\n").unwrap();
    std::fs::write(pf.join("sriov_drivers_autoprobe"), "1\n").unwrap();
    std::fs::create_dir_all(pf.join("net/eth0")).unwrap();
    symlink(drivers.join("igb"), pf.join("driver")).unwrap();
    for (i, (vf, driver, group)) in [("0000:01:10.0", "vfio-pci", 12), ("0000:01:10.2", "igbvf", 13)].iter().enumerate()
    {
        let d = dev(vf);
        symlink(&d, pf.join(format!("virtfn{i}"))).unwrap();
        symlink(drivers.join(driver), d.join("driver")).unwrap();
        std::fs::create_dir_all(groups.join(group.to_string())).unwrap();
        symlink(groups.join(group.to_string()), d.join("iommu_group")).unwrap();
    }
    std::fs::write(root.join("dev/vfio/12"), "").unwrap();
    dev("0000:00:02.0");
    (Sysfs { sys, dev: root.join("dev") }, root)
}

#[test]
fn pfs_and_their_vfs_are_listed_with_index_driver_and_group() {
    let (s, root) = fake("list");
    assert_eq!(s.pfs().unwrap(), ["0000:01:00.0"]);
    let pf = s.pf("/sys/bus/pci/devices/0000:01:00.0").unwrap();
    assert_eq!(pf.address, "0000:01:00.0");
    assert_eq!((pf.driver.as_deref(), pf.netdev.as_deref()), (Some("igb"), Some("eth0")));
    assert_eq!((pf.total_vfs, pf.num_vfs, pf.drivers_autoprobe), (7, 2, true));
    let vfs: Vec<_> =
        pf.vfs.iter().map(|v| (v.index, v.address.as_str(), v.driver.as_deref(), v.iommu_group)).collect();
    assert_eq!(vfs, [(0, "0000:01:10.0", Some("vfio-pci"), Some(12)), (1, "0000:01:10.2", Some("igbvf"), Some(13))]);
    assert!(matches!(s.pf("0000:00:02.0"), Err(SriovError::NotPf(_))));
    assert!(matches!(s.pf("0000:09:00.0"), Err(SriovError::NotPf(_))));
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn the_vf_count_goes_through_zero_with_autoprobe_off_and_is_bounded() {
    let (s, root) = fake("count");
    let pf = s.sys.join("bus/pci/devices/0000:01:00.0");
    assert!(matches!(s.set_num_vfs("0000:01:00.0", 8), Err(SriovError::TooMany { total: 7, .. })));
    assert_eq!(
        std::fs::read_to_string(pf.join("sriov_numvfs")).unwrap().trim(),
        "2",
        "a refused count changes nothing"
    );
    s.set_num_vfs("0000:01:00.0", 4).unwrap();
    assert_eq!(std::fs::read_to_string(pf.join("sriov_numvfs")).unwrap(), "4");
    assert_eq!(std::fs::read_to_string(pf.join("sriov_drivers_autoprobe")).unwrap(), "0");
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn binding_to_vfio_pci_waits_for_the_group_node_and_says_why_it_failed() {
    let (s, root) = fake("bind");
    s.bind_vfio("0000:01:10.0", Duration::from_millis(50)).unwrap();
    // VF1 is on igbvf: override + unbind are written; nothing rebinds it in a fake tree.
    let e = s.bind_vfio("0000:01:10.2", Duration::from_millis(50)).unwrap_err().to_string();
    assert!(e.contains("bound to igbvf"), "{e}");
    let vf1 = s.sys.join("bus/pci/devices/0000:01:10.2");
    assert_eq!(std::fs::read_to_string(vf1.join("driver_override")).unwrap(), "vfio-pci");
    assert_eq!(std::fs::read_to_string(vf1.join("driver/unbind")).unwrap(), "0000:01:10.2");
    let _ = std::fs::remove_dir_all(root);
}
