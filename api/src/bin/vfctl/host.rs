//! vfctl's host-side commands: running VMs, PFs and VFs, VF counts, attach/detach by VF.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use api::manage::{self, VmView};
use api::registry;
use api::sriov::{PfInfo, Sysfs};
use clap::Subcommand;

use super::fail;

#[derive(Subcommand)]
pub enum VmCommand {
    /// Every running VM: state and devices (id, host path, attachment and binding state).
    List,
}

#[derive(Subcommand)]
pub enum PfCommand {
    /// Every SR-IOV PF with its VF count.
    List,
    /// One PF: driver, netdev, VF counts, autoprobe, and each VF with its holder.
    Show { pf: String },
    /// Set PF's VF count (through 0) and bind the new VFs to vfio-pci; refused while a VM holds
    /// one of its VFs.
    SetVfs {
        pf: String,
        count: u32,
        /// Seconds each VF may take to become usable through vfio-pci.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
}

pub struct Context {
    pub run_dir: PathBuf,
    pub json: bool,
    pub sysfs: Sysfs,
}

fn ok<T>(r: Result<T, impl std::fmt::Display>) -> T {
    r.unwrap_or_else(|e| fail(e))
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|e| fail(e)));
}

pub fn vm(ctx: &Context, command: &VmCommand) {
    match command {
        VmCommand::List => {
            let views = ok(manage::vms(&ctx.run_dir));
            if ctx.json {
                let list: Vec<_> = views.iter().map(view_json).collect();
                return print_json(&list);
            }
            if views.is_empty() {
                println!("no running VM in {}", ctx.run_dir.display());
            }
            for v in &views {
                let state = v.state.clone().unwrap_or_else(|e| format!("not answering: {e}"));
                println!("{}  pid {}  {}  {}", v.record.name, v.record.pid, state, v.record.socket.display());
                for d in &v.devices {
                    println!("    {}: {} ({}, {})", d.id, d.path.display(), d.state, d.binding);
                }
            }
        }
    }
}

fn view_json(v: &VmView) -> serde_json::Value {
    serde_json::json!({
        "name": v.record.name,
        "pid": v.record.pid,
        "socket": v.record.socket,
        "started": v.record.started,
        "state": v.state.as_ref().ok(),
        "error": v.state.as_ref().err(),
        "devices": v.devices.iter().map(|d| serde_json::json!({
            "id": d.id, "path": d.path, "state": d.state, "binding": d.binding })).collect::<Vec<_>>(),
    })
}

fn pf_info(ctx: &Context, pf: &str) -> PfInfo {
    let holders = manage::holders(&ok(manage::vms(&ctx.run_dir)));
    ok(manage::pf_with_holders(&ctx.sysfs, pf, &holders))
}

fn print_pf(info: &PfInfo) {
    println!(
        "PF {}  driver {}  netdev {}  VFs {}/{}  autoprobe {}",
        info.address,
        info.driver.as_deref().unwrap_or("-"),
        info.netdev.as_deref().unwrap_or("-"),
        info.num_vfs,
        info.total_vfs,
        if info.drivers_autoprobe { "on" } else { "off" }
    );
    for vf in &info.vfs {
        println!(
            "    VF {}  {}  driver {}  group {}  {}",
            vf.index,
            vf.address,
            vf.driver.as_deref().unwrap_or("-"),
            vf.iommu_group.map_or("-".into(), |g| g.to_string()),
            vf.held_by.as_ref().map_or("free".into(), |h| format!("held by {h}"))
        );
    }
}

pub fn pf(ctx: &Context, command: &PfCommand) {
    match command {
        PfCommand::List => {
            let infos: Vec<PfInfo> = ok(ctx.sysfs.pfs()).iter().map(|pf| pf_info(ctx, pf)).collect();
            if ctx.json {
                return print_json(&infos);
            }
            if infos.is_empty() {
                println!("no SR-IOV PF on this host");
            }
            for info in &infos {
                print_pf(info);
            }
        }
        PfCommand::Show { pf } => {
            let info = pf_info(ctx, pf);
            if ctx.json {
                print_json(&info)
            } else {
                print_pf(&info)
            }
        }
        PfCommand::SetVfs { pf, count, timeout } => {
            let info = pf_info(ctx, pf);
            ok(manage::check_pf_free(&info));
            let started = Instant::now();
            ok(ctx.sysfs.set_num_vfs(&info.address, *count));
            let vfs = ok(ctx.sysfs.vf_addresses(&info.address));
            for vf in &vfs {
                ok(ctx.sysfs.bind_vfio(vf, Duration::from_secs(*timeout)));
            }
            if ctx.json {
                print_json(
                    &serde_json::json!({ "pf": info.address, "vfs": vfs, "ms": started.elapsed().as_millis() as u64 }),
                );
            } else {
                println!(
                    "{}: {} VFs, bound to vfio-pci ({} ms): {}",
                    info.address,
                    vfs.len(),
                    started.elapsed().as_millis(),
                    vfs.join(" ")
                );
            }
        }
    }
}

pub fn attach(ctx: &Context, vm: &str, pf: &str, vf: Option<u32>, id: Option<&str>) {
    let record = ok(registry::find(&ctx.run_dir, vm));
    let info = pf_info(ctx, pf);
    let (index, address) = ok(manage::pick_vf(&info, vf));
    ok(ctx.sysfs.bind_vfio(&address, Duration::from_secs(10)));
    let body = serde_json::json!({ "path": format!("/sys/bus/pci/devices/{address}"), "id": id }).to_string();
    let answer = ok(manage::call(&record, "PUT", "vm.add-device", Some(&body)));
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
    if ctx.json {
        print_json(&serde_json::json!({ "vm": vm, "vf": index, "address": address, "id": v["id"], "bdf": v["bdf"] }));
    } else {
        println!(
            "VF {index} ({address}) attached to {vm} as {} at {}",
            v["id"].as_str().unwrap_or("?"),
            v["bdf"].as_str().unwrap_or("?")
        );
    }
}

pub fn detach(ctx: &Context, vm: &str, id: &str, timeout: u64) {
    let record = ok(registry::find(&ctx.run_dir, vm));
    let started = Instant::now();
    ok(manage::call(&record, "PUT", "vm.remove-device", Some(&serde_json::json!({ "id": id }).to_string())));
    let deadline = started + Duration::from_secs(timeout);
    loop {
        let info = ok(manage::call(&record, "GET", "vm.info", None));
        let v: serde_json::Value = serde_json::from_str(&info).unwrap_or_default();
        let device = manage::parse_devices(&v).into_iter().find(|d| d.id == id);
        match device {
            Some(d) if d.state == "Detached" => {
                let ms = started.elapsed().as_millis();
                if ctx.json {
                    print_json(&serde_json::json!({ "vm": vm, "id": id, "path": d.path, "ms": ms as u64 }));
                } else {
                    println!("{id} detached from {vm}; {} is free on the host ({ms} ms)", d.path.display());
                }
                return;
            }
            Some(d) if Instant::now() >= deadline => {
                fail(format!("{vm}/{id} is still {} after {timeout} s (the guest did not eject it)", d.state))
            }
            None => fail(format!("{vm} has no device '{id}'")),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
