//! The registry of running VMs: every vfvmm with an API socket leaves one small JSON file in a
//! run directory (default `/run/vfvmm`, mode 0700), removed when it exits, so that `vfctl`
//! finds VMs by name. An entry whose process is gone is stale and is removed by whoever sees it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_RUN_DIR: &str = "/run/vfvmm";
const MAX_NAME: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("VM name '{0}': use 1-64 letters, digits, '.', '_' or '-', not starting with '.'")]
    BadName(String),
    #[error("a VM named '{name}' is already running (pid {pid})")]
    NameTaken { name: String, pid: u32 },
    #[error("run directory {0} is not a directory owned by this user with mode 0700")]
    UnsafeDir(String),
    #[error("no running VM named '{0}' (see vfctl vm list)")]
    NotFound(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io { path: path.display().to_string(), source }
}

/// One running VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub name: String,
    pub pid: u32,
    pub socket: PathBuf,
    /// Seconds since the Unix epoch.
    pub started: u64,
    /// The VM's event file (`--event-monitor path=`), for `vfctl events`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<PathBuf>,
}

pub fn validate_name(name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::BadName(name.to_string()))
    }
}

/// Whether process `pid` exists (signal 0 is only a permission check).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only reports whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Creates `dir` with mode 0700 if missing; refuses one that others could write into.
fn ensure_dir(dir: &Path) -> Result<(), RegistryError> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
            // The umask may have taken bits away, never added any; make it exactly 0700.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))
        }
        Err(e) => Err(io(dir)(e)),
        Ok(m) => {
            // SAFETY: geteuid has no preconditions.
            let uid = unsafe { libc::geteuid() };
            if !m.is_dir() || m.uid() != uid || m.mode() & 0o077 != 0 {
                return Err(RegistryError::UnsafeDir(dir.display().to_string()));
            }
            Ok(())
        }
    }
}

fn record_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

fn read_record(path: &Path) -> Option<VmRecord> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// A VM's entry; removed when dropped.
#[derive(Debug)]
pub struct Registration {
    path: PathBuf,
}

impl Registration {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Registers `record` in `dir`. A stale entry of the same name is replaced; a live one refused.
pub fn register(dir: &Path, record: &VmRecord) -> Result<Registration, RegistryError> {
    validate_name(&record.name)?;
    ensure_dir(dir)?;
    let path = record_path(dir, &record.name);
    if let Some(old) = read_record(&path) {
        if old.pid != record.pid && pid_alive(old.pid) {
            return Err(RegistryError::NameTaken { name: old.name, pid: old.pid });
        }
    }
    // Written aside and renamed, so a reader never sees half a record.
    let tmp = dir.join(format!(".{}.{}.tmp", record.name, record.pid));
    let body = serde_json::to_string(record).map_err(|e| io(&tmp)(e.into()))?;
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(body.as_bytes()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(Registration { path })
}

/// Every live VM in `dir`, by name; stale entries are removed on the way.
pub fn list(dir: &Path) -> Result<Vec<VmRecord>, RegistryError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut vms = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        match read_record(&path) {
            Some(r) if pid_alive(r.pid) => vms.push(r),
            Some(r) => {
                log::info!("removing the stale entry of VM '{}' (pid {} is gone)", r.name, r.pid);
                let _ = std::fs::remove_file(&path);
            }
            None => {}
        }
    }
    vms.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(vms)
}

/// The live VM called `name`.
pub fn find(dir: &Path, name: &str) -> Result<VmRecord, RegistryError> {
    validate_name(name)?;
    list(dir)?.into_iter().find(|r| r.name == name).ok_or_else(|| RegistryError::NotFound(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vfvmm-registry-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn record(name: &str, pid: u32) -> VmRecord {
        VmRecord { name: name.into(), pid, socket: format!("/run/{name}.sock").into(), started: 1, events: None }
    }

    #[test]
    fn names_are_checked() {
        for good in ["vm1", "a.b_c-d", &"x".repeat(64)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "a/b", "../x", "sp ace", &"x".repeat(65), "é"] {
            assert!(matches!(validate_name(bad), Err(RegistryError::BadName(_))), "{bad}");
        }
    }

    #[test]
    fn a_registration_is_listed_until_dropped_in_a_private_directory() {
        let dir = temp_dir("live").join("run");
        let me = std::process::id();
        let reg = register(&dir, &record("vm1", me)).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(list(&dir).unwrap(), vec![record("vm1", me)]);
        assert_eq!(find(&dir, "vm1").unwrap().pid, me);
        // The same name while it runs is refused (as another process would be).
        let taken = register(&dir, &record("vm1", 1));
        assert!(matches!(taken, Err(RegistryError::NameTaken { pid, .. }) if pid == me), "{taken:?}");
        drop(reg);
        assert!(list(&dir).unwrap().is_empty());
        assert!(matches!(find(&dir, "vm1"), Err(RegistryError::NotFound(_))));
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }

    #[test]
    fn stale_entries_are_removed_and_their_names_reused() {
        let dir = temp_dir("stale");
        // A pid that cannot exist (above the kernel's maximum).
        let dead = record("old", 0x7fff_fff0);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(record_path(&dir, "old"), serde_json::to_string(&dead).unwrap()).unwrap();
        std::fs::write(dir.join("garbage.json"), "{").unwrap();
        assert!(list(&dir).unwrap().is_empty());
        assert!(!record_path(&dir, "old").exists(), "the stale entry is gone");
        let reg = register(&dir, &record("old", std::process::id())).unwrap();
        assert_eq!(list(&dir).unwrap().len(), 1);
        drop(reg);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let dir = temp_dir("open");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let r = register(&dir, &record("vm", std::process::id()));
        assert!(matches!(r, Err(RegistryError::UnsafeDir(_))), "{r:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
