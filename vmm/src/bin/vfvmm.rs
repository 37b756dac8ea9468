//! `vfvmm`: boot a Linux guest from the command line.

use std::process::exit;

use clap::error::ErrorKind;
use vmm::{fail, Cli};

fn main() {
    vmm::init_logging();

    let cli = match Cli::parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            print!("{e}");
            exit(0);
        }
        Err(e) => {
            // One line: clap's message up to its first blank line, without its own prefix.
            let text = e.to_string();
            let message: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
            fail(format!("{} (see --help)", message.join(" ").trim_start_matches("error: ")));
        }
    };
    let (kernel, config) = cli.validate().unwrap_or_else(|e| fail(e));
    if let Some(target) = cli.event_monitor.as_deref() {
        let target = vmm::process::events::parse(target).unwrap_or_else(|e| fail(e));
        vmm::process::events::init(&target, std::time::Instant::now()).unwrap_or_else(|e| fail(e));
    }
    vmm::exit_with(vmm::run_linux(&kernel, &config))
}
