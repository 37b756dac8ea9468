//! The API server: one thread (`api`) accepting on a unix socket (mode 0600 from the start), one request per
//! connection. Each valid request goes to the VMM thread through a channel plus an eventfd
//! wake-up, and the thread waits for the VMM's reply; nothing is handled on the API thread.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::http::{parse_request, Response};
use crate::request::{route, ApiRequest};

/// How long a client may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long we wait for the VMM thread to answer.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("--api-socket {0}: another process is serving on this socket")]
    InUse(String),
    #[error("--api-socket {0}: exists and is not a socket; refusing to replace it")]
    NotASocket(String),
    #[error("--api-socket {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("--api-socket: directory {0} is writable by others (and not sticky); use a private directory")]
    UnsafeDirectory(String),
}

/// A request for the VMM thread and where to send the answer.
pub struct ApiMessage {
    pub request: ApiRequest,
    pub reply: Sender<Response>,
}

/// The VMM thread's end: wake-up eventfd and the request queue.
pub struct ApiReceiver {
    pub wake: EventFd,
    pub requests: Receiver<ApiMessage>,
}

/// The running server; removes its socket file when dropped.
pub struct ApiServer {
    path: PathBuf,
    _thread: JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path`: a stale socket (nobody listening) is replaced, a live one or a non-socket
/// file is an error, and so is a directory that others may write into without the sticky bit
/// (they could swap the socket). The socket is never reachable by others, whatever the umask:
/// it is bound and made 0600 in a fresh private (0700) directory next to `path`, then renamed
/// into place.
pub fn bind(path: &Path) -> Result<UnixListener, ApiServerError> {
    let shown = path.display().to_string();
    let io = |source| ApiServerError::Io { path: shown.clone(), source };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir_mode = std::fs::metadata(&dir).map_err(io)?.permissions().mode();
    if dir_mode & 0o002 != 0 && dir_mode & 0o1000 == 0 {
        return Err(ApiServerError::UnsafeDirectory(dir.display().to_string()));
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ApiServerError::NotASocket(shown));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(ApiServerError::InUse(shown));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let private = PrivateDir::create(&dir).map_err(io)?;
    let staged = private.0.join("s");
    let listener = UnixListener::bind(&staged).map_err(io)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    std::fs::rename(&staged, path).map_err(io)?;
    Ok(listener)
}

/// A directory only we can enter (mkdtemp: mode 0700), removed when dropped.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn create(parent: &Path) -> std::io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        let template = parent.join(".vfvmm.XXXXXX");
        let mut bytes = std::ffi::CString::new(template.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("NUL in the socket path"))?
            .into_bytes_with_nul();
        // SAFETY: `bytes` is a NUL-terminated, writable template ending in XXXXXX, as mkdtemp
        // requires; it replaces the Xs in place and returns NULL on failure.
        let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
        if made.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        bytes.pop(); // the NUL
        Ok(Self(PathBuf::from(std::ffi::OsStr::from_bytes(&bytes))))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0.join("s"));
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Starts the `api` thread on `listener` (bound at `path`).
pub fn start(listener: UnixListener, path: &Path) -> Result<(ApiServer, ApiReceiver), ApiServerError> {
    let shown = path.display().to_string();
    let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| ApiServerError::Io { path: shown.clone(), source })?;
    let thread_wake = wake.try_clone().map_err(|source| ApiServerError::Io { path: shown.clone(), source })?;
    let (tx, rx) = channel();
    let thread = std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => serve(s, &tx, &thread_wake),
                    Err(e) => log::warn!("api: accept: {e}"),
                }
            }
        })
        .map_err(|source| ApiServerError::Io { path: shown, source })?;
    Ok((ApiServer { path: path.to_path_buf(), _thread: thread }, ApiReceiver { wake, requests: rx }))
}

/// Reads one request (bounded in size and time), answers it, closes the connection.
fn serve(mut stream: UnixStream, tx: &Sender<ApiMessage>, wake: &EventFd) {
    let response = match read_request(&mut stream) {
        Err(r) => r,
        Ok(request) => ask_vmm(request, tx, wake),
    };
    if let Err(e) = stream.write_all(&response.to_bytes()) {
        log::debug!("api: cannot answer: {e}");
    }
}

fn read_request(stream: &mut UnixStream) -> Result<ApiRequest, Response> {
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(Response::error(408, "request not received in time"));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(Response::error(400, "connection closed before a complete request")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(Response::error(408, "request not received in time"));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Response::error(400, &format!("read error: {e}"))),
        }
        match parse_request(&buf) {
            Ok(None) => continue,
            Ok(Some(req)) => return route(&req).map_err(|e| Response::error(e.status, &e.message)),
            Err(e) => return Err(Response::error(e.status(), &e.to_string())),
        }
    }
}

fn ask_vmm(request: ApiRequest, tx: &Sender<ApiMessage>, wake: &EventFd) -> Response {
    let (reply_tx, reply_rx) = channel();
    if tx.send(ApiMessage { request, reply: reply_tx }).is_err() || wake.write(1).is_err() {
        return Response::error(503, "the VMM is shutting down");
    }
    reply_rx.recv_timeout(REPLY_TIMEOUT).unwrap_or_else(|_| Response::error(500, "the VMM did not answer in time"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("vfvmm-api-{name}-{}.sock", std::process::id()))
    }

    fn call(path: &Path, raw: &[u8]) -> String {
        let mut s = UnixStream::connect(path).unwrap();
        s.write_all(raw).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// A VMM stand-in that answers pings.
    fn fake_vmm(rx: ApiReceiver) {
        std::thread::spawn(move || {
            while let Ok(m) = rx.requests.recv() {
                let _ = rx.wake.read();
                let r = match m.request {
                    ApiRequest::VmmPing => Response::json(200, "{\"version\":\"t\"}".into()),
                    _ => Response::error(501, "no"),
                };
                let _ = m.reply.send(r);
            }
        });
    }

    #[test]
    fn socket_is_private_stale_replaced_live_refused() {
        let path = sock("bind");
        let _ = std::fs::remove_file(&path);
        // A stale socket: bound once, listener dropped.
        drop(UnixListener::bind(&path).unwrap());
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(bind(&path), Err(ApiServerError::InUse(_))));
        drop(listener);
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(bind(&path), Err(ApiServerError::NotASocket(_))));
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket", "user file left alone");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn serves_bad_slow_and_good_clients_in_turn() {
        let path = sock("serve");
        let _ = std::fs::remove_file(&path);
        let (server, rx) = start(bind(&path).unwrap(), &path).unwrap();
        fake_vmm(rx);
        let bad = call(&path, b"GET /api/v1/nope HTTP/1.1\r\n\r\n");
        assert!(bad.starts_with("HTTP/1.1 404 \r\n"), "{bad}");
        // A client that sends half a request and stalls gets 408 after the read timeout...
        let mut slow = UnixStream::connect(&path).unwrap();
        slow.write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\n").unwrap();
        let mut out = String::new();
        slow.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 408 \r\n"), "{out}");
        // ...and the next client is served.
        let ok = call(&path, b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 \r\n") && ok.ends_with("{\"version\":\"t\"}"), "{ok}");
        drop(server);
        assert!(!path.exists(), "socket removed on drop");
    }
}
