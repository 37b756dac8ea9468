//! The API socket never exists with a mode other than 0600, even under umask 000 (an
//! unprivileged user could otherwise connect between bind and chmod), and a socket path in a
//! directory others can write into without the sticky bit is refused. Its own test binary:
//! it changes the process umask.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[test]
fn the_socket_is_never_reachable_by_others_and_unsafe_directories_are_refused() {
    let dir = std::env::temp_dir().join(format!("vfvmm-sockmode-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.join("api.sock");
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(0) };
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, sock) = (stop.clone(), sock.clone());
        std::thread::spawn(move || {
            let mut bad = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(m) = std::fs::symlink_metadata(&sock) {
                    let mode = m.permissions().mode() & 0o777;
                    if mode != 0o600 {
                        bad.push(mode);
                    }
                }
            }
            bad
        })
    };
    for _ in 0..2000 {
        let listener = api::rest::server::bind(&sock).unwrap();
        drop(listener);
        std::fs::remove_file(&sock).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let bad = watcher.join().unwrap();
    assert!(
        bad.is_empty(),
        "the socket was seen with mode(s) {:?} (octal; {} times)",
        bad.iter().take(5).map(|m| format!("{m:o}")).collect::<Vec<_>>(),
        bad.len()
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing left behind");

    // A directory anyone may write into, without the sticky bit: refused, nothing created.
    let open = dir.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = api::rest::server::bind(&open.join("api.sock")).unwrap_err().to_string();
    assert!(e.contains("writable by others"), "{e}");
    assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);
    // With the sticky bit (like /tmp) it is fine.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    drop(api::rest::server::bind(&open.join("api.sock")).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}
