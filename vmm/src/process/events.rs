//! Lifecycle events for an orchestrator: one JSON object per line (`--event-monitor
//! path=FILE|fd=N`, Cloud Hypervisor's option and line shape), so that it watches the VM
//! instead of polling `vm.info`:
//!
//! ```text
//! {"timestamp":{"secs":12,"nanos":345},"unix_ms":1764960000123,"source":"device","event":"live-released","properties":{"id":"vf0","binding":"Released live"}}
//! ```
//!
//! `timestamp` is the time since vfvmm started; `unix_ms` the wall clock. Sources: `vm`
//! (booting, booted, paused, resumed, shutdown) and `device` (added, attached, removing,
//! removed; quiesced, released, live-released, acquired, acquire-failed, given-up; error-
//! signalled, reset, recovered). Lines are written from the VMM thread; a file is appended to;
//! a descriptor is made non-blocking, and a line it cannot take at once is dropped and counted
//! (a reader that stalls cannot stall the VM).

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("--event-monitor: {0} (expected path=FILE or fd=N)")]
    Usage(String),
    #[error("--event-monitor {what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("--event-monitor given twice")]
    Twice,
}

/// Where events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventTarget {
    Path(PathBuf),
    Fd(i32),
}

/// Parses `path=FILE` or `fd=N` (N > 2: not stdin, stdout or stderr).
pub fn parse(value: &str) -> Result<EventTarget, EventsError> {
    match value.split_once('=') {
        Some(("path", p)) if !p.is_empty() && !p.contains(',') => Ok(EventTarget::Path(p.into())),
        Some(("fd", n)) => match n.parse::<i32>() {
            Ok(fd) if fd > 2 => Ok(EventTarget::Fd(fd)),
            _ => Err(EventsError::Usage(format!("fd={n} is not a descriptor above 2"))),
        },
        _ => Err(EventsError::Usage(format!("'{value}'"))),
    }
}

struct Monitor {
    out: Mutex<File>,
    started: Instant,
    path: Option<PathBuf>,
    dropped: AtomicU64,
}

static MONITOR: OnceLock<Monitor> = OnceLock::new();

/// Opens the event target; from then on [`emit`] writes to it.
pub fn init(target: &EventTarget, started: Instant) -> Result<(), EventsError> {
    let (file, path) = match target {
        EventTarget::Path(p) => {
            let io = |source| EventsError::Io { what: p.display().to_string(), source };
            let file = File::options().create(true).append(true).open(p).map_err(io)?;
            (file, Some(std::fs::canonicalize(p).map_err(io)?))
        }
        EventTarget::Fd(fd) => {
            let io = |source| EventsError::Io { what: format!("fd={fd}"), source };
            // SAFETY: F_GETFL only reads the descriptor's flags; an invalid fd gives EBADF.
            let flags = unsafe { libc::fcntl(*fd, libc::F_GETFL) };
            if flags < 0 {
                return Err(io(std::io::Error::last_os_error()));
            }
            // SAFETY: as above; sets O_NONBLOCK on a descriptor that is ours.
            if unsafe { libc::fcntl(*fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
                return Err(io(std::io::Error::last_os_error()));
            }
            // SAFETY: the descriptor was handed to vfvmm on its command line for this purpose
            // only, is open (checked above) and nothing else in vfvmm owns it.
            (unsafe { File::from_raw_fd(*fd) }, None)
        }
    };
    MONITOR
        .set(Monitor { out: Mutex::new(file), started, path, dropped: AtomicU64::new(0) })
        .map_err(|_| EventsError::Twice)
}

/// The event file, when events go to one (for the registry, so that `vfctl events` finds it).
pub fn path() -> Option<&'static Path> {
    MONITOR.get()?.path.as_deref()
}

/// Lines a descriptor could not take at once.
pub fn dropped() -> u64 {
    MONITOR.get().map_or(0, |m| m.dropped.load(Ordering::Relaxed))
}

/// The JSON line of one event.
pub fn line(
    since_start: std::time::Duration,
    unix_ms: u64,
    source: &str,
    event: &str,
    properties: &serde_json::Value,
) -> String {
    let mut line = json!({
        "timestamp": { "secs": since_start.as_secs(), "nanos": since_start.subsec_nanos() },
        "unix_ms": unix_ms,
        "source": source,
        "event": event,
        "properties": properties,
    })
    .to_string();
    line.push('\n');
    line
}

/// Writes one event, when an event monitor is set.
pub fn emit(source: &str, event: &str, properties: serde_json::Value) {
    let Some(m) = MONITOR.get() else {
        return;
    };
    let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let line = line(m.started.elapsed(), unix_ms, source, event, &properties);
    let written = m.out.lock().map(|mut f| f.write_all(line.as_bytes()).is_ok()).unwrap_or(false);
    if !written {
        m.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// A device event with its id and properties.
pub fn device(event: &str, id: &str, mut properties: serde_json::Value) {
    if MONITOR.get().is_none() {
        return;
    }
    if let Some(map) = properties.as_object_mut() {
        map.insert("id".into(), id.into());
    } else {
        properties = json!({ "id": id });
    }
    emit("device", event, properties);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_parsed_and_bad_ones_refused() {
        assert_eq!(parse("path=/run/vm1.events").unwrap(), EventTarget::Path("/run/vm1.events".into()));
        assert_eq!(parse("fd=3").unwrap(), EventTarget::Fd(3));
        for bad in ["fd=1", "fd=x", "path=", "file=/x", "/x", "path=/a,b"] {
            assert!(matches!(parse(bad), Err(EventsError::Usage(_))), "{bad}");
        }
    }

    #[test]
    fn a_line_is_one_json_object_in_cloud_hypervisors_shape() {
        let l = line(
            std::time::Duration::new(12, 345),
            1_764_960_000_123,
            "device",
            "live-released",
            &json!({ "id": "vf0" }),
        );
        assert!(l.ends_with('\n') && l.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["timestamp"], json!({ "secs": 12, "nanos": 345 }));
        assert_eq!((v["source"].as_str(), v["event"].as_str()), (Some("device"), Some("live-released")));
        assert_eq!(v["properties"]["id"], "vf0");
        assert_eq!(v["unix_ms"], 1_764_960_000_123u64);
    }
}
