//! `vfctl`: drive a running vfvmm through its API socket.

use std::path::PathBuf;
use std::process::exit;

use api::client::{request, ClientResponse};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "vfctl", version, about = "Control a running vfvmm over its API socket")]
struct Cli {
    /// The VMM's --api-socket path.
    #[arg(long = "api-socket", value_name = "PATH")]
    api_socket: PathBuf,
    /// Print the raw JSON answers (for scripts).
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    /// While paused: release one device's host side (the guest keeps the device).
    ReleaseDevice { id: String },
    /// While paused: take a released device back, optionally from another path=/sys/bus/pci/devices/BDF.
    AcquireDevice { id: String, path: Option<String> },
    /// ACPI power button: the guest powers off.
    Shutdown,
    /// Stop the VMM now.
    ShutdownVmm,
}

fn fail(message: impl std::fmt::Display) -> ! {
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

fn call(socket: &std::path::Path, method: &str, endpoint: &str, body: Option<&str>) -> ClientResponse {
    let response = request(socket, method, endpoint, body).unwrap_or_else(|e| fail(e));
    if !response.ok() {
        fail(format!("{} ({})", response.error_message(), response.status));
    }
    response
}

/// `pause --release`: pause, then release every attached device that is still bound.
fn pause_and_release(socket: &std::path::Path, json: bool) {
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

fn main() {
    let cli = Cli::parse();
    if let Command::Pause { release: true } = cli.command {
        pause_and_release(&cli.api_socket, cli.json);
        return;
    }
    let (method, endpoint, body) = match &cli.command {
        Command::Ping => ("GET", "vmm.ping", None),
        Command::Info => ("GET", "vm.info", None),
        Command::AddDevice { spec } => {
            ("PUT", "vm.add-device", Some(add_device_body(spec).unwrap_or_else(|e| fail(e))))
        }
        Command::RemoveDevice { id } => ("PUT", "vm.remove-device", Some(serde_json::json!({ "id": id }).to_string())),
        Command::Pause { .. } => ("PUT", "vm.pause", None),
        Command::Resume => ("PUT", "vm.resume", None),
        Command::ReleaseDevice { id } => {
            ("PUT", "vm.release-device", Some(serde_json::json!({ "id": id }).to_string()))
        }
        Command::AcquireDevice { id, path } => {
            let path = path.as_deref().map(|p| p.strip_prefix("path=").unwrap_or(p).to_string());
            ("PUT", "vm.acquire-device", Some(serde_json::json!({ "id": id, "path": path }).to_string()))
        }
        Command::Shutdown => ("PUT", "vm.shutdown", None),
        Command::ShutdownVmm => ("PUT", "vmm.shutdown", None),
    };
    let response = call(&cli.api_socket, method, endpoint, body.as_deref());
    if cli.json {
        println!("{}", response.body);
    } else {
        print_human(&cli.command, &response);
    }
}
