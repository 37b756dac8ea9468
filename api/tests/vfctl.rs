//! `vfctl` against an API server whose VMM side is a stand-in thread.

use std::process::Command;

use api::{ApiRequest, Response};

fn vfctl(sock: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vfctl")).arg("--api-socket").arg(sock).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn human_and_json_output_and_errors() {
    let sock = std::env::temp_dir().join(format!("vfvmm-vfctl-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let (_server, rx) = api::rest::server::start(api::rest::server::bind(&sock).unwrap(), &sock).unwrap();
    std::thread::spawn(move || {
        while let Ok(m) = rx.requests.recv() {
            let r = match m.request {
                ApiRequest::VmmPing => Response::json(200, r#"{"version":"0.1.0","pid":42}"#.into()),
                ApiRequest::VmInfo => Response::json(
                    200,
                    r#"{"state":"Running","config":{"cpus":{"boot_vcpus":2},"memory":{"size":268435456}},"devices":[{"id":"vf0","path":"/sys/bus/pci/devices/0000:01:10.0","bdf":"0000:00:01.0","state":"Attached","binding":"Bound"}]}"#.into(),
                ),
                ApiRequest::VmPause => Response::error(405, "the VM is already paused"),
                ApiRequest::VmReleaseDevice { id, .. } if id != "vf0" => Response::error(404, &format!("no device '{id}'")),
                ApiRequest::VmAcquireDevice { id, path } if id == "vf0" && path.as_deref() == Some("/sys/bus/pci/devices/0000:01:10.4") => {
                    Response::no_content()
                }
                ApiRequest::VmAcquireDevice { .. } => Response::error(400, "unexpected acquire body"),
                ApiRequest::VmAddDevice(d) => Response::json(200, format!(r#"{{"id":"{}","bdf":"0000:00:02.0"}}"#, d.id.unwrap_or_default())),
                _ => Response::no_content(),
            };
            let _ = m.reply.send(r);
        }
    });
    assert_eq!(vfctl(&sock, &["ping"]), (0, "vfvmm 0.1.0 (pid 42)\n".into(), String::new()));
    let (code, out, _) = vfctl(&sock, &["info"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("state: Running")
            && out.contains("device vf0: /sys/bus/pci/devices/0000:01:10.0 at 0000:00:01.0 (Attached, Bound)"),
        "{out}"
    );
    assert_eq!(vfctl(&sock, &["release-device", "vf0"]).1, "ok\n");
    let (code, _, err) = vfctl(&sock, &["release-device", "vf9"]);
    assert_eq!((code, err.as_str()), (1, "vfctl: error: no device 'vf9' (404)\n"));
    assert_eq!(vfctl(&sock, &["acquire-device", "vf0", "path=/sys/bus/pci/devices/0000:01:10.4"]).1, "ok\n");
    let (code, out, _) = vfctl(&sock, &["--json", "ping"]);
    assert_eq!((code, out.trim()), (0, r#"{"version":"0.1.0","pid":42}"#));
    assert_eq!(vfctl(&sock, &["resume"]).1, "ok\n");
    let (code, _, err) = vfctl(&sock, &["pause"]);
    assert_eq!((code, err.as_str()), (1, "vfctl: error: the VM is already paused (405)\n"));
    let (code, out, _) = vfctl(&sock, &["add-device", "path=/sys/bus/pci/devices/0000:01:10.2/,id=vf1"]);
    assert_eq!((code, out.as_str()), (0, "vf1 attached at 0000:00:02.0\n"));
    let (code, _, err) = vfctl(&sock, &["add-device", "bogus"]);
    assert_eq!(code, 1);
    assert!(err.contains("'bogus' is not path=... or id=..."), "{err}");
    let (code, _, err) = vfctl(std::path::Path::new("/nonexistent/sock"), &["ping"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("vfctl: error: cannot connect to /nonexistent/sock"), "{err}");
}

#[test]
fn events_prints_a_vms_event_file_and_says_when_there_is_none() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("vfvmm-vfctl-events-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let events = dir.join("vm1.events");
    let lines = "{\"source\":\"vm\",\"event\":\"booted\"}\n{\"source\":\"device\",\"event\":\"live-released\"}\n";
    std::fs::write(&events, lines).unwrap();
    let record = |name: &str, events: Option<std::path::PathBuf>| api::host::registry::VmRecord {
        name: name.into(),
        pid: std::process::id(),
        socket: dir.join(format!("{name}.sock")),
        started: 0,
        events,
    };
    let _a = api::host::registry::register(&dir, &record("vm1", Some(events.clone()))).unwrap();
    let _b = api::host::registry::register(&dir, &record("vm2", None)).unwrap();
    let run = |vm: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_vfctl"))
            .args(["--run-dir", dir.to_str().unwrap(), "--vm", vm, "events", "--no-follow"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    assert_eq!(run("vm1"), (Some(0), lines.to_string(), String::new()));
    let (code, _, err) = run("vm2");
    assert_eq!(code, Some(1));
    assert!(err.contains("VM 'vm2' has no event file (start it with --event-monitor path=FILE)"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
