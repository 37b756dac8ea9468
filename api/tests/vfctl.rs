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
