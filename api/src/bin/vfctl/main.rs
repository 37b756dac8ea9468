//! `vfctl`: drive running vfvmm VMs through their API sockets, and manage the host's SR-IOV
//! VFs across them (`vm list`, `pf list|show|set-vfs`, `attach`, `detach`).

use std::path::{Path, PathBuf};
use std::process::exit;

use api::rest::client::{request, ClientResponse};
use clap::{Parser, Subcommand};

mod host;

#[derive(Parser)]
#[command(name = "vfctl", version, about = "Control vfvmm VMs and the host's SR-IOV VFs")]
struct Cli {
    /// The VMM's --api-socket path (for the VM commands).
    #[arg(long = "api-socket", value_name = "PATH", global = true, conflicts_with = "vm")]
    api_socket: Option<PathBuf>,
    /// The VM's --name, looked up in the run directory (instead of --api-socket).
    #[arg(long, value_name = "NAME", global = true)]
    vm: Option<String>,
    /// Where running VMs register themselves (vfvmm --run-dir).
    #[arg(long = "run-dir", value_name = "DIR", global = true, default_value = api::host::registry::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// Print JSON (the raw API answers for VM commands; structured listings for host ones).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReconfigureMode {
    Pause,
    Detach,
    Live,
}

#[derive(Subcommand)]
enum Command {
    /// Running VMs.
    #[command(subcommand)]
    Vm(host::VmCommand),
    /// SR-IOV physical functions and their VFs.
    #[command(subcommand)]
    Pf(host::PfCommand),
    /// Hot-attach a free VF of PF (or VF K) to VM, binding it to vfio-pci if needed.
    Attach {
        vm: String,
        pf: String,
        #[arg(long = "vf", value_name = "K")]
        vf: Option<u32>,
        /// Device id in the VM (default: the VMM's).
        #[arg(long)]
        id: Option<String>,
    },
    /// Change PF's VF count under the VMs that hold its VFs (plan printed first).
    Reconfigure {
        pf: String,
        #[arg(long = "num-vfs", value_name = "N")]
        num_vfs: u32,
        /// pause: VMs paused, VFs released and re-acquired (no unplug in the guests);
        /// detach: VFs hot-detached and re-attached; live: VFs released while the VMs run
        /// (their drivers wait through PCIe error recovery) and re-acquired.
        #[arg(long, value_enum, default_value = "pause")]
        mode: ReconfigureMode,
        /// Print the plan and change nothing.
        #[arg(long = "dry-run")]
        dry_run: bool,
        /// Hot-detach VFs whose index is not below N (otherwise the change is refused).
        #[arg(long = "allow-detach")]
        allow_detach: bool,
        /// Seconds each guest has to eject a device.
        #[arg(long = "eject-timeout", default_value_t = 60)]
        eject_timeout: u64,
        /// Seconds each new VF may take to become usable through vfio-pci.
        #[arg(long = "bind-timeout", default_value_t = 10)]
        bind_timeout: u64,
    },
    /// Hot-detach device ID from VM and wait until the host has the VF back.
    Detach {
        vm: String,
        id: String,
        /// Seconds to wait for the guest to eject it.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Is the VMM alive.
    Ping,
    /// VM state, configuration and devices.
    Info,
    /// Hot-attach a device: path=/sys/bus/pci/devices/BDF[,id=ID].
    AddDevice { spec: String },
    /// Hot-detach a device by id.
    RemoveDevice { id: String },
    /// Pause the VM: vCPUs stop and every device is quiesced (no DMA, no interrupts).
    Pause {
        /// Then release every device to the host (the guest keeps them; resume re-acquires).
        #[arg(long)]
        release: bool,
    },
    /// Resume: released devices are re-acquired at their paths, then everything runs again.
    Resume,
    /// While paused: release one device's host side (the guest keeps the device). With --live,
    /// while running: the guest's driver is told its function failed and waits for it.
    ReleaseDevice {
        id: String,
        #[arg(long)]
        live: bool,
    },
    /// Take a released device back (VM paused, or running for a live-released device),
    /// optionally from another path=/sys/bus/pci/devices/BDF.
    AcquireDevice {
        id: String,
        path: Option<String>,
        /// Accepted for symmetry with release-device --live: a live-released device is taken
        /// back while the VM runs either way.
        #[arg(long)]
        live: bool,
    },
    /// The VM's lifecycle events (vfvmm --event-monitor path=FILE), one JSON object per line;
    /// follows them until the VM exits unless --no-follow.
    Events {
        #[arg(long = "no-follow")]
        no_follow: bool,
    },
    /// ACPI power button: the guest powers off.
    Shutdown,
    /// Stop the VMM now.
    ShutdownVmm,
}

pub(crate) fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("vfctl: error: {message}");
    exit(1);
}

fn add_device_body(spec: &str) -> Result<String, String> {
    let mut path = None;
    let mut id = None;
    for item in spec.split(',') {
        match item.split_once('=') {
            Some(("path", v)) => path = Some(v.to_string()),
            Some(("id", v)) => id = Some(v.to_string()),
            _ => return Err(format!("'{item}' is not path=... or id=...")),
        }
    }
    let path = path.ok_or("missing path=")?;
    Ok(serde_json::json!({ "path": path, "id": id }).to_string())
}

fn print_human(command: &Command, r: &ClientResponse) {
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null);
    match command {
        Command::Ping => println!("vfvmm {} (pid {})", v["version"].as_str().unwrap_or("?"), v["pid"]),
        Command::Info => {
            println!("state: {}", v["state"].as_str().unwrap_or("?"));
            println!("vcpus: {}  memory: {} bytes", v["config"]["cpus"]["boot_vcpus"], v["config"]["memory"]["size"]);
            for d in v["devices"].as_array().into_iter().flatten() {
                println!(
                    "device {}: {} at {} ({}, {})",
                    d["id"].as_str().unwrap_or("?"),
                    d["path"].as_str().unwrap_or("?"),
                    d["bdf"].as_str().unwrap_or("?"),
                    d["state"].as_str().unwrap_or("?"),
                    d["binding"].as_str().unwrap_or("?")
                );
            }
        }
        Command::AddDevice { .. } => {
            println!("{} attached at {}", v["id"].as_str().unwrap_or("?"), v["bdf"].as_str().unwrap_or("?"))
        }
        _ => println!("ok"),
    }
}

fn call(socket: &Path, method: &str, endpoint: &str, body: Option<&str>) -> ClientResponse {
    let response = request(socket, method, endpoint, body).unwrap_or_else(|e| fail(e));
    if !response.ok() {
        fail(format!("{} ({})", response.error_message(), response.status));
    }
    response
}

/// `pause --release`: pause, then release every attached device that is still bound.
fn pause_and_release(socket: &Path, json: bool) {
    call(socket, "PUT", "vm.pause", None);
    let info = call(socket, "GET", "vm.info", None);
    let v: serde_json::Value = serde_json::from_str(&info.body).unwrap_or(serde_json::Value::Null);
    let mut released = Vec::new();
    for d in v["devices"].as_array().into_iter().flatten() {
        let (Some(id), Some(state), Some(binding)) = (d["id"].as_str(), d["state"].as_str(), d["binding"].as_str())
        else {
            continue;
        };
        if state != "Detached" && !binding.starts_with("Released") {
            call(socket, "PUT", "vm.release-device", Some(&serde_json::json!({ "id": id }).to_string()));
            released.push(id.to_string());
        }
    }
    if json {
        println!("{}", serde_json::json!({ "released": released }));
    } else {
        println!("paused; released: {}", if released.is_empty() { "none".into() } else { released.join(", ") });
    }
}

/// The API request a VM command makes (`None` for host commands).
#[allow(clippy::type_complexity)]
fn api_call(command: &Command) -> Option<(&'static str, &'static str, Option<String>)> {
    Some(match command {
        Command::Vm(_)
        | Command::Pf(_)
        | Command::Attach { .. }
        | Command::Detach { .. }
        | Command::Events { .. }
        | Command::Reconfigure { .. } => return None,
        Command::Ping => ("GET", "vmm.ping", None),
        Command::Info => ("GET", "vm.info", None),
        Command::AddDevice { spec } => {
            ("PUT", "vm.add-device", Some(add_device_body(spec).unwrap_or_else(|e| fail(e))))
        }
        Command::RemoveDevice { id } => ("PUT", "vm.remove-device", Some(serde_json::json!({ "id": id }).to_string())),
        Command::Pause { .. } => ("PUT", "vm.pause", None),
        Command::Resume => ("PUT", "vm.resume", None),
        Command::ReleaseDevice { id, live } => {
            let body =
                if *live { serde_json::json!({ "id": id, "live": true }) } else { serde_json::json!({ "id": id }) };
            ("PUT", "vm.release-device", Some(body.to_string()))
        }
        Command::AcquireDevice { id, path, .. } => {
            let path = path.as_deref().map(|p| p.strip_prefix("path=").unwrap_or(p).to_string());
            ("PUT", "vm.acquire-device", Some(serde_json::json!({ "id": id, "path": path }).to_string()))
        }
        Command::Shutdown => ("PUT", "vm.shutdown", None),
        Command::ShutdownVmm => ("PUT", "vmm.shutdown", None),
    })
}

/// The API socket of the VM the command is for: --api-socket, or --vm through the registry.
fn socket(cli: &Cli) -> PathBuf {
    match (&cli.api_socket, &cli.vm) {
        (Some(path), _) => path.clone(),
        (None, Some(name)) => {
            api::host::registry::find(&cli.run_dir, name).map(|r| r.socket).unwrap_or_else(|e| fail(e))
        }
        (None, None) => fail("this command is for one VM: give --api-socket PATH or --vm NAME"),
    }
}

fn main() {
    let cli = Cli::parse();
    let ctx = host::Context { run_dir: cli.run_dir.clone(), json: cli.json, sysfs: api::host::sriov::Sysfs::default() };
    match &cli.command {
        Command::Vm(c) => return host::vm(&ctx, c),
        Command::Pf(c) => return host::pf(&ctx, c),
        Command::Attach { vm, pf, vf, id } => return host::attach(&ctx, vm, pf, *vf, id.as_deref()),
        Command::Detach { vm, id, timeout } => return host::detach(&ctx, vm, id, *timeout),
        Command::Events { no_follow } => {
            let name = cli.vm.as_deref().unwrap_or_else(|| fail("events: give --vm NAME"));
            return host::events(&ctx, name, !no_follow);
        }
        Command::Reconfigure { pf, num_vfs, mode, dry_run, allow_detach, eject_timeout, bind_timeout } => {
            let args = host::ReconfigureArgs {
                pf: pf.clone(),
                num_vfs: *num_vfs,
                mode: match mode {
                    ReconfigureMode::Pause => api::host::reconfigure::Mode::Pause,
                    ReconfigureMode::Detach => api::host::reconfigure::Mode::Detach,
                    ReconfigureMode::Live => api::host::reconfigure::Mode::Live,
                },
                dry_run: *dry_run,
                allow_detach: *allow_detach,
                eject_timeout: *eject_timeout,
                bind_timeout: *bind_timeout,
            };
            return host::reconfigure(&ctx, &args);
        }
        _ => {}
    }
    let api_socket = socket(&cli);
    if let Command::Pause { release: true } = cli.command {
        pause_and_release(&api_socket, cli.json);
        return;
    }
    let Some((method, endpoint, body)) = api_call(&cli.command) else {
        return;
    };

    let response = call(&api_socket, method, endpoint, body.as_deref());
    if cli.json {
        println!("{}", response.body);
    } else {
        print_human(&cli.command, &response);
    }
}
