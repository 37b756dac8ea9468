//! Console output that never blocks a vCPU. The serial port writes into a bounded buffer; a
//! `console` thread drains it into the real output (stdout, a file), where a write may block
//! for as long as the reader likes. When the buffer is full, output is dropped and counted: a
//! guest printing into a pipe nobody reads keeps running, and so do pause, shutdown and signals.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Bytes buffered before output is dropped.
pub const CONSOLE_BUFFER: usize = 1 << 20;
/// Largest piece handed to the output at once.
const CHUNK: usize = 4096;

#[derive(Default)]
struct State {
    buf: VecDeque<u8>,
    /// Bytes dropped because the buffer was full, since the last report.
    dropped: u64,
    dropped_total: u64,
    /// The console thread is writing a chunk it took out of `buf`.
    writing: bool,
}

struct Shared {
    /// The thread's name, which also starts its reports ("console", "log").
    name: &'static str,
    state: Mutex<State>,
    /// Signalled when data arrives and when the buffer drains.
    changed: Condvar,
    capacity: usize,
}

/// The serial port's side: `write` never blocks on the output.
pub struct ConsoleWriter {
    shared: Arc<Shared>,
}

/// The VMM's side at exit: waits (bounded) for buffered output to reach the output.
pub struct ConsoleDrain {
    shared: Arc<Shared>,
}

/// What the console thread runs first (e.g. installing its seccomp filter).
pub type ThreadInit = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// Starts the `console` thread writing to `out`.
pub fn spawn(out: Box<dyn Write + Send>, capacity: usize) -> io::Result<(ConsoleWriter, ConsoleDrain)> {
    spawn_with_init("console", out, capacity, Box::new(|| Ok(())))
}

/// [`spawn`] for a thread called `name` (the same machinery serves the guest's console and
/// vfvmm's own log), with `init` run first on the new thread.
pub fn spawn_with_init(
    name: &'static str,
    out: Box<dyn Write + Send>,
    capacity: usize,
    init: ThreadInit,
) -> io::Result<(ConsoleWriter, ConsoleDrain)> {
    let shared = Arc::new(Shared { name, state: Mutex::new(State::default()), changed: Condvar::new(), capacity });
    let thread_shared = shared.clone();
    let (started_tx, started) = std::sync::mpsc::channel();
    std::thread::Builder::new().name(name.into()).spawn(move || {
        let ready = init();
        let ok = ready.is_ok();
        let _ = started_tx.send(ready);
        if ok {
            drain(thread_shared, out)
        }
    })?;
    match started.recv() {
        Ok(Ok(())) => Ok((ConsoleWriter { shared: shared.clone() }, ConsoleDrain { shared })),
        Ok(Err(e)) => Err(io::Error::other(e)),
        Err(_) => Err(io::Error::other("the console thread died")),
    }
}

fn drain(shared: Arc<Shared>, mut out: Box<dyn Write + Send>) {
    loop {
        let (chunk, dropped) = {
            let Ok(mut s) = shared.state.lock() else { return };
            while s.buf.is_empty() {
                s.writing = false;
                shared.changed.notify_all();
                s = match shared.changed.wait(s) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
            s.writing = true;
            let n = s.buf.len().min(CHUNK);
            let chunk: Vec<u8> = s.buf.drain(..n).collect();
            (chunk, std::mem::take(&mut s.dropped))
        };
        if dropped > 0 {
            log::warn!("{}: the output was not keeping up; {dropped} bytes dropped", shared.name);
        }
        if out.write_all(&chunk).and_then(|()| out.flush()).is_err() {
            // A closed output: nothing more will get through; keep draining so nothing blocks.
            continue;
        }
        if let Ok(s) = shared.state.lock() {
            if s.buf.is_empty() {
                shared.changed.notify_all();
            }
        }
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Ok(mut s) = self.shared.state.lock() {
            let room = self.shared.capacity.saturating_sub(s.buf.len());
            let taken = data.len().min(room);
            s.buf.extend(&data[..taken]);
            let lost = (data.len() - taken) as u64;
            s.dropped += lost;
            s.dropped_total += lost;
            self.shared.changed.notify_all();
        }
        // Accepted either way: the guest's UART never stalls on the host.
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ConsoleDrain {
    /// Waits up to `timeout` for everything buffered to be written; whether it was. Reports
    /// dropped output (after letting go of the buffer: the report may go into this very buffer,
    /// when it is the log's).
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (drained, left_over, dropped_total) = {
            let Ok(mut s) = self.shared.state.lock() else { return false };
            while (!s.buf.is_empty() || s.writing) && Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                s = match self.shared.changed.wait_timeout(s, left) {
                    Ok((s, _)) => s,
                    Err(_) => return false,
                };
            }
            (s.buf.is_empty() && !s.writing, s.buf.len(), s.dropped_total)
        };
        if !drained {
            log::warn!("{}: {left_over} bytes not written at exit (the output is blocked)", self.shared.name);
        } else if dropped_total > 0 {
            log::warn!("{}: {dropped_total} bytes were dropped in all", self.shared.name);
        }
        drained
    }

    /// Bytes dropped so far.
    pub fn dropped(&self) -> u64 {
        self.shared.state.lock().map(|s| s.dropped_total).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// An output that blocks until told to go on, and records what it got.
    struct Gate {
        go: mpsc::Receiver<()>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            let _ = self.go.recv();
            self.got.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_never_block_and_overflow_is_dropped_and_counted() {
        let (tx, go) = mpsc::channel();
        let got = Arc::new(Mutex::new(Vec::new()));
        let (mut writer, drain) = spawn(Box::new(Gate { go, got: got.clone() }), 64).unwrap();
        let started = Instant::now();
        for _ in 0..1000 {
            assert_eq!(writer.write(b"0123456789").unwrap(), 10);
        }
        assert!(started.elapsed() < Duration::from_secs(1), "the writer never waits for the output");
        // At most one chunk in flight plus a full buffer made it; the rest was dropped.
        assert!(drain.dropped() >= 10_000 - 64 - 64, "{}", drain.dropped());
        assert!(!drain.wait(Duration::from_millis(50)), "the output is blocked: not drained");
        for _ in 0..100 {
            let _ = tx.send(());
        }
        assert!(drain.wait(Duration::from_secs(5)));
        assert_eq!(got.lock().unwrap().len() as u64 + drain.dropped(), 10_000);
    }

    #[test]
    fn everything_reaches_an_output_that_keeps_up() {
        let out = crate::SharedOutput::default();
        let got = out.0.clone();
        let (mut writer, drain) = spawn(Box::new(out), CONSOLE_BUFFER).unwrap();
        for i in 0..10_000u32 {
            writer.write_all(&i.to_le_bytes()).unwrap();
        }
        assert!(drain.wait(Duration::from_secs(5)));
        let expected: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
        assert_eq!(*got.lock().unwrap(), expected);
        assert_eq!(drain.dropped(), 0);
    }
}
