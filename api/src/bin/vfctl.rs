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
    Pause,
    Resume,
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
                    "device {}: {} at {} ({})",
                    d["id"].as_str().unwrap_or("?"),
                    d["path"].as_str().unwrap_or("?"),
                    d["bdf"].as_str().unwrap_or("?"),
                    d["state"].as_str().unwrap_or("?")
                );
            }
        }
        Command::AddDevice { .. } => println!("{} attached at {}", v["id"].as_str().unwrap_or("?"), v["bdf"].as_str().unwrap_or("?")),
        _ => println!("ok"),
    }
}

fn main() {
    let cli = Cli::parse();
    let (method, endpoint, body) = match &cli.command {
        Command::Ping => ("GET", "vmm.ping", None),
        Command::Info => ("GET", "vm.info", None),
        Command::AddDevice { spec } => ("PUT", "vm.add-device", Some(add_device_body(spec).unwrap_or_else(|e| fail(e)))),
        Command::RemoveDevice { id } => ("PUT", "vm.remove-device", Some(serde_json::json!({ "id": id }).to_string())),
        Command::Pause => ("PUT", "vm.pause", None),
        Command::Resume => ("PUT", "vm.resume", None),
        Command::Shutdown => ("PUT", "vm.shutdown", None),
        Command::ShutdownVmm => ("PUT", "vmm.shutdown", None),
    };
    let response = request(&cli.api_socket, method, endpoint, body.as_deref()).unwrap_or_else(|e| fail(e));
    if !response.ok() {
        fail(format!("{} ({})", response.error_message(), response.status));
    }
    if cli.json {
        println!("{}", response.body);
    } else {
        print_human(&cli.command, &response);
    }
}
