//! vfctl's host-side commands: running VMs, PFs and VFs, VF counts, attach/detach by VF.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use api::host::manage::{self, VmView};
use api::host::provision;
use api::host::reconfigure::{self, Mode, Operations, Step};
use api::host::registry::{self, VmRecord};
use api::host::sriov::{PfInfo, Sysfs};
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
    /// One PF: class, driver, netdev, VF counts, autoprobe, an NVMe PF's secondary controllers
    /// and flexible resources, and each VF with its holder.
    Show { pf: String },
    /// Set PF's VF count (through 0), provision what the PF's class needs (an NVMe PF: its
    /// secondary controllers' resources and online state) and bind the new VFs to vfio-pci;
    /// refused while a VM holds one of its VFs.
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
    let mut info = ok(manage::pf_with_holders(&ctx.sysfs, pf, &holders));
    provision::describe(&ctx.sysfs, &mut info);
    info
}

fn print_pf(info: &PfInfo) {
    println!(
        "PF {}  class {}  driver {}  netdev {}  VFs {}/{}  autoprobe {}",
        info.address,
        info.class,
        info.driver.as_deref().unwrap_or("-"),
        info.netdev.as_deref().unwrap_or("-"),
        info.num_vfs,
        info.total_vfs,
        if info.drivers_autoprobe { "on" } else { "off" }
    );
    if let Some(nvme) = &info.nvme {
        let pool = |p: &api::host::nvme::FlexPool| {
            format!(
                "{} total, {} assigned, {} primary, {} per VF at most",
                p.total, p.assigned, p.primary, p.max_per_secondary
            )
        };
        println!("    flexible queues: {}", pool(&nvme.primary.queues));
        println!("    flexible interrupts: {}", pool(&nvme.primary.interrupts));
        for s in &nvme.secondaries {
            println!(
                "    secondary controller {}  VF {}  {}  queues {}  interrupts {}",
                s.cntlid,
                s.vf_number.checked_sub(1).map_or("-".into(), |i| i.to_string()),
                if s.online { "online" } else { "offline" },
                s.queues,
                s.interrupts
            );
        }
    }
    if let Some(e) = &info.provisioning_error {
        println!("    provisioning state unreadable: {e}");
    }
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
            let vfs = ok(provision::set_vfs(&ctx.sysfs, &info.address, *count, Duration::from_secs(*timeout)));
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

/// Asks VM `record` to hot-detach `id` and waits (up to `timeout`) until the guest let go of
/// it; returns the device's host path and how long it took.
fn detach_and_wait(record: &VmRecord, id: &str, timeout: Duration) -> Result<(PathBuf, u128), String> {
    let started = Instant::now();
    let body = serde_json::json!({ "id": id }).to_string();
    manage::call(record, "PUT", "vm.remove-device", Some(&body)).map_err(|e| e.to_string())?;
    let deadline = started + timeout;
    loop {
        let info = manage::call(record, "GET", "vm.info", None).map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&info).unwrap_or_default();
        match manage::parse_devices(&v).into_iter().find(|d| d.id == id) {
            Some(d) if d.state == "Detached" => return Ok((d.path, started.elapsed().as_millis())),
            Some(d) if Instant::now() >= deadline => {
                return Err(format!("still {} after {} s (the guest did not eject it)", d.state, timeout.as_secs()))
            }
            None => return Err(format!("no device '{id}'")),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

pub fn detach(ctx: &Context, vm: &str, id: &str, timeout: u64) {
    let record = ok(registry::find(&ctx.run_dir, vm));
    let (path, ms) =
        detach_and_wait(&record, id, Duration::from_secs(timeout)).unwrap_or_else(|e| fail(format!("{vm}/{id}: {e}")));
    if ctx.json {
        print_json(&serde_json::json!({ "vm": vm, "id": id, "path": path, "ms": ms as u64 }));
    } else {
        println!("{id} detached from {vm}; {} is free on the host ({ms} ms)", path.display());
    }
}

/// `vfctl reconfigure`'s operations on the real VMs and host.
struct RealOps<'a> {
    ctx: &'a Context,
    vms: BTreeMap<String, VmRecord>,
    eject_timeout: Duration,
    bind_timeout: Duration,
}

impl RealOps<'_> {
    fn put(&self, vm: &str, endpoint: &str, body: Option<serde_json::Value>) -> Result<String, String> {
        let record = self.vms.get(vm).ok_or_else(|| format!("no VM '{vm}'"))?;
        let body = body.map(|b| b.to_string());
        manage::call(record, "PUT", endpoint, body.as_deref()).map_err(|e| e.to_string())
    }
}

fn device_path(address: &str) -> String {
    format!("/sys/bus/pci/devices/{address}")
}

impl Operations for RealOps<'_> {
    fn pause(&mut self, vm: &str) -> Result<(), String> {
        self.put(vm, "vm.pause", None).map(drop)
    }
    fn resume(&mut self, vm: &str) -> Result<(), String> {
        self.put(vm, "vm.resume", None).map(drop)
    }
    fn release(&mut self, vm: &str, id: &str) -> Result<(), String> {
        self.put(vm, "vm.release-device", Some(serde_json::json!({ "id": id }))).map(drop)
    }
    fn live_release(&mut self, vm: &str, id: &str) -> Result<(), String> {
        self.put(vm, "vm.release-device", Some(serde_json::json!({ "id": id, "live": true }))).map(drop)
    }
    fn acquire(&mut self, vm: &str, id: &str, address: &str) -> Result<(), String> {
        let body = serde_json::json!({ "id": id, "path": device_path(address) });
        self.put(vm, "vm.acquire-device", Some(body)).map(drop)
    }
    fn detach(&mut self, vm: &str, id: &str) -> Result<(), String> {
        let record = self.vms.get(vm).ok_or_else(|| format!("no VM '{vm}'"))?;
        detach_and_wait(record, id, self.eject_timeout).map(drop)
    }
    fn attach(&mut self, vm: &str, id: &str, address: &str) -> Result<(), String> {
        let body = serde_json::json!({ "id": id, "path": device_path(address) });
        self.put(vm, "vm.add-device", Some(body)).map(drop)
    }
    fn set_vfs(&mut self, pf: &str, count: u32) -> Result<Vec<String>, String> {
        provision::set_vfs(&self.ctx.sysfs, pf, count, self.bind_timeout).map_err(|e| e.to_string())
    }
    fn binding(&mut self, vm: &str, id: &str) -> Result<String, String> {
        let record = self.vms.get(vm).ok_or_else(|| format!("no VM '{vm}'"))?;
        let info = manage::call(record, "GET", "vm.info", None).map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&info).unwrap_or_default();
        manage::parse_devices(&v)
            .into_iter()
            .find(|d| d.id == id)
            .map(|d| d.binding)
            .ok_or_else(|| format!("no device '{id}'"))
    }
}

pub struct ReconfigureArgs {
    pub pf: String,
    pub num_vfs: u32,
    pub mode: Mode,
    pub dry_run: bool,
    pub allow_detach: bool,
    pub eject_timeout: u64,
    pub bind_timeout: u64,
}

pub fn reconfigure(ctx: &Context, args: &ReconfigureArgs) {
    let views = ok(manage::vms(&ctx.run_dir));
    let holders = manage::holders(&views);
    let info = ok(manage::pf_with_holders(&ctx.sysfs, &args.pf, &holders));
    let plan = reconfigure::plan(&info, &views, args.num_vfs, args.mode);
    if !ctx.json {
        println!("plan:");
        for line in plan.describe() {
            println!("  {line}");
        }
    }
    let checked = plan.check(args.allow_detach);
    if args.dry_run || checked.is_err() {
        if ctx.json {
            print_json(&serde_json::json!({ "plan": plan, "dry_run": args.dry_run,
                "refused": checked.as_ref().err().map(|e| e.to_string()) }));
        } else if checked.is_ok() {
            println!("dry run: nothing changed");
        }
        return ok(checked.map(drop));
    }
    let vms = views.iter().map(|v| (v.record.name.clone(), v.record.clone())).collect();
    let mut ops = RealOps {
        ctx,
        vms,
        eject_timeout: Duration::from_secs(args.eject_timeout),
        bind_timeout: Duration::from_secs(args.bind_timeout),
    };
    let json = ctx.json;
    let mut on_step = |s: &Step| {
        if !json {
            match &s.error {
                None => println!("  {:>7} ms  {}", s.ms, s.what),
                Some(e) => println!("  {:>7} ms  {}  FAILED: {e}", s.ms, s.what),
            }
        }
    };
    let report = reconfigure::execute(&plan, &mut ops, &mut on_step);
    if json {
        print_json(&serde_json::json!({ "plan": plan, "report": report }));
    } else {
        println!("summary ({} ms):", report.total_ms);
        println!("  {:<16} {:>12}  {:<6} devices / notes", "VM", "downtime ms", "ok");
        for v in &report.vms {
            let downtime = v.downtime_ms.map_or("-".into(), |d| d.to_string());
            let mut what = v.devices.join(", ");
            if !v.note.is_empty() {
                what = if what.is_empty() { v.note.clone() } else { format!("{what}; {}", v.note) };
            }
            println!("  {:<16} {:>12}  {:<6} {what}", v.vm, downtime, if v.ok { "yes" } else { "NO" });
        }
    }
    if !report.ok {
        fail(if report.rolled_back {
            "reconfigure failed and was rolled back (see the steps and the summary)"
        } else {
            "reconfigure finished with errors (see the summary)"
        });
    }
}

/// Prints VM `name`'s event file and, with `follow`, what is appended to it until the VM exits.
pub fn events(ctx: &Context, name: &str, follow: bool) {
    use std::io::{Read, Write};
    let record = ok(registry::find(&ctx.run_dir, name));
    let Some(path) = record.events.clone() else {
        fail(format!("VM '{name}' has no event file (start it with --event-monitor path=FILE)"))
    };
    let mut file = ok(std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display())));
    let mut out = std::io::stdout();
    let mut chunk = Vec::new();
    loop {
        chunk.clear();
        ok(file.read_to_end(&mut chunk).map_err(|e| format!("{}: {e}", path.display())));
        if out.write_all(&chunk).and_then(|()| out.flush()).is_err() {
            return; // the reader went away
        }
        if !follow {
            return;
        }
        if !registry::pid_alive(record.pid) {
            // The VM is gone: whatever it wrote last, then stop.
            chunk.clear();
            let _ = file.read_to_end(&mut chunk);
            let _ = out.write_all(&chunk);
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
