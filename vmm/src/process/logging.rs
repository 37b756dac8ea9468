//! vfvmm's log: `vfvmm: <level>: <message>` lines on stderr (level from RUST_LOG, default warn)
//! that never block a thread. Until the VM is set up (command-line checks) a line goes straight
//! to stderr; from [`start_thread`] on, it goes into a bounded buffer that a `log` thread drains
//! into stderr, and what does not fit while stderr is blocked is dropped and counted — a full
//! pipe nobody reads stalls neither a vCPU nor the VMM thread nor the process's exit.

use std::io::{self, Write};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use devices::console::{self, ConsoleDrain, ConsoleWriter, ThreadInit};

/// Bytes of log lines buffered before lines are dropped.
const LOG_BUFFER: usize = 256 * 1024;
/// How long the process waits at exit for its last log lines to reach stderr.
pub const LOG_DRAIN_AT_EXIT: Duration = Duration::from_millis(500);

/// The `log` thread's side, once it runs.
static BUFFERED: Mutex<Option<ConsoleWriter>> = Mutex::new(None);
static DRAIN: OnceLock<ConsoleDrain> = OnceLock::new();

/// Where the logger's lines go: the buffer once the `log` thread runs, stderr before.
struct Sink;

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match BUFFERED.lock() {
            Ok(mut buffered) => match buffered.as_mut() {
                Some(writer) => writer.write(data),
                None => io::stderr().write(data),
            },
            Err(_) => Ok(data.len()), // a thread panicked while logging: drop the line
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Installs the process's logger (once; later calls do nothing).
pub fn init() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format(|buf, record| writeln!(buf, "vfvmm: {}: {}", record.level().as_str().to_lowercase(), record.args()))
        .target(env_logger::Target::Pipe(Box::new(Sink)))
        .try_init();
}

/// Starts the `log` thread (once per process; `init` runs first on it, e.g. its seccomp filter).
pub fn start_thread(init: ThreadInit) -> io::Result<()> {
    if DRAIN.get().is_some() {
        return Ok(());
    }
    let (writer, drain) = console::spawn_with_init("log", Box::new(io::stderr()), LOG_BUFFER, init)?;
    if DRAIN.set(drain).is_ok() {
        if let Ok(mut buffered) = BUFFERED.lock() {
            *buffered = Some(writer);
        }
    }
    Ok(())
}

/// Writes `line` (with its newline) to the log whatever the level filter says.
pub fn write_line(line: &str) {
    let _ = Sink.write_all(format!("{line}\n").as_bytes());
}

/// Waits up to `timeout` for buffered lines to reach stderr (at exit).
pub fn flush(timeout: Duration) {
    if let Some(drain) = DRAIN.get() {
        drain.wait(timeout);
    }
}
