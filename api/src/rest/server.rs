//! The API server: one thread (`api`) serving a unix socket (mode 0600 from the start), one
//! request per connection. The thread is event-driven (poll): it accepts, reads, waits for the
//! VMM and writes for many connections at once, so an idle or slow client never delays another
//! (up to [`MAX_CONNECTIONS`] at a time; each has [`READ_TIMEOUT`] to send its request). Each
//! valid request goes to the VMM thread through a channel plus an eventfd wake-up; nothing is
//! handled on the API thread. A request the VMM has not answered within [`REPLY_TIMEOUT`] gets
//! 504 saying it is still queued (`vm.info` shows what it did), never a silent 500.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempdir::TempDir;

use crate::rest::http::{parse_request, Response};
use crate::rest::request::{route, ApiRequest};

/// How long a client may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long we wait for the VMM thread to answer.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client may take to read its answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;

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
    pub reply: Reply,
}

/// Where the VMM thread sends its answer (it wakes the API thread).
pub struct Reply {
    tx: Sender<Response>,
    wake: Arc<EventFd>,
}

impl Reply {
    /// Sends the answer; `Err` when the client is gone.
    pub fn send(&self, response: Response) -> Result<(), Response> {
        self.tx.send(response).map_err(|e| e.0)?;
        let _ = self.wake.write(1);
        Ok(())
    }
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
    // mkdtemp: mode 0700, removed (with what is left in it) when dropped.
    let private = TempDir::new_with_prefix(dir.join(".vfvmm.")).map_err(|e| io(e.into()))?;
    let staged = private.as_path().join("s");
    let listener = UnixListener::bind(&staged).map_err(io)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    std::fs::rename(&staged, path).map_err(io)?;
    Ok(listener)
}

/// What a thread runs first (e.g. installing its seccomp filter); an error stops it.
pub type ThreadInit = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// Starts the `api` thread on `listener` (bound at `path`).
pub fn start(listener: UnixListener, path: &Path) -> Result<(ApiServer, ApiReceiver), ApiServerError> {
    start_with(listener, path, REPLY_TIMEOUT, Box::new(|| Ok(())))
}

/// [`start`], with `init` run first on the new thread (before it accepts anything).
pub fn start_with_init(
    listener: UnixListener,
    path: &Path,
    init: ThreadInit,
) -> Result<(ApiServer, ApiReceiver), ApiServerError> {
    start_with(listener, path, REPLY_TIMEOUT, init)
}

fn start_with(
    listener: UnixListener,
    path: &Path,
    reply_timeout: Duration,
    init: ThreadInit,
) -> Result<(ApiServer, ApiReceiver), ApiServerError> {
    let shown = path.display().to_string();
    let io = |source| ApiServerError::Io { path: shown.clone(), source };
    let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(io)?;
    let thread_wake = wake.try_clone().map_err(io)?;
    let replies = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(io)?);
    listener.set_nonblocking(true).map_err(io)?;
    let (tx, rx) = channel();
    let (started_tx, started) = channel();
    let thread = std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            let ready = init();
            let ok = ready.is_ok();
            let _ = started_tx.send(ready);
            if ok {
                Server { listener, tx, wake: thread_wake, replies, conns: Vec::new(), reply_timeout }.run()
            }
        })
        .map_err(io)?;
    match started.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ApiServerError::Io { path: shown.clone(), source: std::io::Error::other(e) }),
        Err(_) => {
            return Err(ApiServerError::Io {
                path: shown.clone(),
                source: std::io::Error::other("the API thread died"),
            })
        }
    }
    Ok((ApiServer { path: path.to_path_buf(), _thread: thread }, ApiReceiver { wake, requests: rx }))
}

enum Phase {
    /// Reading the request until the deadline.
    Reading { buf: Vec<u8>, deadline: Instant },
    /// Sent to the VMM; its answer comes on `rx`.
    Waiting { rx: Receiver<Response>, deadline: Instant },
    /// Writing the answer.
    Writing { out: Vec<u8>, done: usize, deadline: Instant },
}

struct Conn {
    stream: UnixStream,
    phase: Phase,
}

struct Server {
    listener: UnixListener,
    tx: Sender<ApiMessage>,
    wake: EventFd,
    /// Signalled by the VMM thread with each answer.
    replies: Arc<EventFd>,
    conns: Vec<Conn>,
    reply_timeout: Duration,
}

impl Server {
    fn run(mut self) {
        loop {
            let now = Instant::now();
            let deadline = self.conns.iter().map(|c| c.deadline()).min();
            let timeout_ms =
                deadline.map_or(-1, |d| d.saturating_duration_since(now).as_millis().min(60_000) as i32 + 1);
            let mut fds = vec![
                libc::pollfd { fd: self.replies.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd {
                    fd: self.listener.as_raw_fd(),
                    // Over the limit, new clients wait in the backlog.
                    events: if self.conns.len() < MAX_CONNECTIONS { libc::POLLIN } else { 0 },
                    revents: 0,
                },
            ];
            for c in &self.conns {
                let events = match c.phase {
                    Phase::Reading { .. } => libc::POLLIN,
                    Phase::Writing { .. } => libc::POLLOUT,
                    Phase::Waiting { .. } => 0,
                };
                fds.push(libc::pollfd { fd: c.stream.as_raw_fd(), events, revents: 0 });
            }
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the whole call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::error!("api: poll: {e}; the API stops");
                    return;
                }
                continue;
            }
            if fds[0].revents != 0 {
                let _ = self.replies.read();
            }
            let ready: Vec<bool> = fds[2..].iter().map(|f| f.revents != 0).collect();
            for (conn, ready) in self.conns.iter_mut().zip(ready) {
                conn.advance(ready, &self.tx, &self.wake, &self.replies, self.reply_timeout);
            }
            self.conns.retain(|c| !c.finished());
            if fds[1].revents != 0 {
                self.accept();
            }
        }
    }

    fn accept(&mut self) {
        while self.conns.len() < MAX_CONNECTIONS {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = stream.set_nonblocking(true) {
                        log::warn!("api: {e}");
                        continue;
                    }
                    let deadline = Instant::now() + READ_TIMEOUT;
                    self.conns.push(Conn { stream, phase: Phase::Reading { buf: Vec::new(), deadline } });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("api: accept: {e}");
                    return;
                }
            }
        }
    }
}

impl Conn {
    fn deadline(&self) -> Instant {
        match &self.phase {
            Phase::Reading { deadline, .. } | Phase::Waiting { deadline, .. } | Phase::Writing { deadline, .. } => {
                *deadline
            }
        }
    }

    fn finished(&self) -> bool {
        matches!(&self.phase, Phase::Writing { out, done, .. } if *done >= out.len())
    }

    fn answer(&mut self, response: Response) {
        self.phase = Phase::Writing { out: response.to_bytes(), done: 0, deadline: Instant::now() + WRITE_TIMEOUT };
    }

    /// Moves the connection on: reads what arrived, passes a complete request to the VMM,
    /// collects the VMM's answer, writes, and enforces each phase's deadline.
    fn advance(
        &mut self,
        ready: bool,
        tx: &Sender<ApiMessage>,
        wake: &EventFd,
        replies: &Arc<EventFd>,
        reply_timeout: Duration,
    ) {
        let now = Instant::now();
        match &mut self.phase {
            Phase::Reading { buf, deadline } => {
                let deadline = *deadline;
                let outcome = if ready { read_more(&mut self.stream, buf) } else { Ok(None) };
                match outcome {
                    Err(response) => self.answer(response),
                    Ok(Some(request)) => {
                        let (reply, rx) = channel();
                        let message = ApiMessage { request, reply: Reply { tx: reply, wake: replies.clone() } };
                        if tx.send(message).is_err() || wake.write(1).is_err() {
                            self.answer(Response::error(503, "the VMM is shutting down"));
                        } else {
                            self.phase = Phase::Waiting { rx, deadline: now + reply_timeout };
                        }
                    }
                    Ok(None) if now >= deadline => self.answer(Response::error(408, "request not received in time")),
                    Ok(None) => {}
                }
            }
            Phase::Waiting { rx, deadline } => match rx.try_recv() {
                Ok(response) => self.answer(response),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.answer(Response::error(503, "the VMM is shutting down"))
                }
                Err(std::sync::mpsc::TryRecvError::Empty) if now >= *deadline => self.answer(Response::error(
                    504,
                    "the VMM has not answered in time; the request is still queued and may still be carried out: see vm.info",
                )),
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
            },
            Phase::Writing { out, done, deadline } => {
                if ready {
                    match self.stream.write(&out[*done..]) {
                        Ok(n) => *done += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            log::debug!("api: cannot answer: {e}");
                            *done = out.len();
                        }
                    }
                }
                if now >= *deadline {
                    *done = out.len(); // the client does not read: drop it
                }
            }
        }
    }
}

/// Reads what is available; the routed request once it is complete.
fn read_more(stream: &mut UnixStream, buf: &mut Vec<u8>) -> Result<Option<ApiRequest>, Response> {
    let mut chunk = [0u8; 4096];
    let mut closed = false;
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => {
                // The client finished sending (it may have shut its side): parse what came.
                closed = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Response::error(400, &format!("read error: {e}"))),
        }
        // Bounded: parse_request refuses oversized headers and bodies.
        if buf.len() > crate::rest::http::MAX_HEADER_BYTES + crate::rest::http::MAX_BODY_BYTES + 4096 {
            break;
        }
    }
    match parse_request(buf) {
        Ok(None) if closed => Err(Response::error(400, "connection closed before a complete request")),
        Ok(None) => Ok(None),
        Ok(Some(req)) => route(&req).map(Some).map_err(|e| Response::error(e.status, &e.message)),
        Err(e) => Err(Response::error(e.status(), &e.to_string())),
    }
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

    /// A server on a fresh socket `name`, its requests answered by [`fake_vmm`].
    fn serving_pings(name: &str) -> (PathBuf, ApiServer) {
        let path = sock(name);
        let _ = std::fs::remove_file(&path);
        let (server, rx) = start(bind(&path).unwrap(), &path).unwrap();
        fake_vmm(rx);
        (path, server)
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
        let (path, server) = serving_pings("serve");
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

    #[test]
    fn idle_connections_do_not_delay_other_clients() {
        let (path, server) = serving_pings("idle");
        // 100 clients connect and send nothing (or half a request).
        let idle: Vec<UnixStream> = (0..100)
            .map(|i| {
                let mut s = UnixStream::connect(&path).unwrap();
                if i % 2 == 0 {
                    s.write_all(b"PUT /api/v1/vmm.shut").unwrap();
                }
                s
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        let ok = call(&path, b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 \r\n"), "{ok}");
        assert!(t.elapsed() < Duration::from_secs(1), "answered after {:?} behind idle clients", t.elapsed());
        drop(idle);
        drop(server);
    }

    #[test]
    fn a_request_the_vmm_does_not_answer_in_time_is_reported_as_still_queued() {
        let path = sock("late");
        let _ = std::fs::remove_file(&path);
        let (server, rx) =
            start_with(bind(&path).unwrap(), &path, Duration::from_millis(300), Box::new(|| Ok(()))).unwrap();
        // A VMM that takes its time (and answers a client that is gone).
        let late = std::thread::spawn(move || {
            let m = rx.requests.recv().unwrap();
            std::thread::sleep(Duration::from_millis(800));
            m.reply.send(Response::no_content()).is_err()
        });
        let out = call(&path, b"PUT /api/v1/vm.pause HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 504 \r\n") && out.contains("still queued"), "{out}");
        assert!(late.join().unwrap(), "the late answer finds nobody");
        drop(server);
    }

    #[test]
    fn a_client_that_shuts_its_side_after_the_request_is_answered() {
        let (path, server) = serving_pings("halfclose");
        // Sends `raw`, shuts the writing side, reads the answer.
        let half_closed = |raw: &[u8]| {
            let mut s = UnixStream::connect(&path).unwrap();
            s.write_all(raw).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let out = half_closed(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200 \r\n"), "{out}");
        // Half a request and then the end: 400.
        let out = half_closed(b"GET /api/v1/vmm.ping HTTP/1.1\r\n");
        assert!(out.starts_with("HTTP/1.1 400 \r\n"), "{out}");
        drop(server);
    }
}
