//! `vfvmm`: boot a Linux guest from the command line.

use std::io::Write;
use std::process::exit;

use clap::error::ErrorKind;
use vmm::{exit_code, Cli, GuestExit};

fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("vfvmm: error: {message}");
    exit(exit_code::ERROR);
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format(|buf, record| writeln!(buf, "vfvmm: {}: {}", record.level().as_str().to_lowercase(), record.args()))
        .init();

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
    match vmm::run_linux(&kernel, &config) {
        Ok(GuestExit::Failed(reason)) => fail(format!("the guest stopped: {reason}")),
        Ok(guest_exit) => {
            log::info!("guest exit: {guest_exit:?}");
            exit(guest_exit.exit_code());
        }
        Err(e) => fail(e),
    }
}
