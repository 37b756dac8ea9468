use super::*;
use crate::rest::http::{parse_request, Response};

fn req(method: &str, path: &str, body: &str) -> HttpRequest {
    HttpRequest { method: method.into(), path: path.into(), body: body.as_bytes().to_vec() }
}

#[test]
fn every_route_parses() {
    assert_eq!(route(&req("GET", "/api/v1/vmm.ping", "")), Ok(ApiRequest::VmmPing));
    assert_eq!(route(&req("PUT", "/api/v1/vmm.shutdown", "")), Ok(ApiRequest::VmmShutdown));
    assert_eq!(route(&req("GET", "/api/v1/vm.info", "")), Ok(ApiRequest::VmInfo));
    assert_eq!(route(&req("PUT", "/api/v1/vm.pause", "")), Ok(ApiRequest::VmPause));
    assert_eq!(route(&req("PUT", "/api/v1/vm.resume", "")), Ok(ApiRequest::VmResume));
    assert_eq!(route(&req("PUT", "/api/v1/vm.shutdown", "")), Ok(ApiRequest::VmShutdown));
    assert_eq!(
        route(&req("PUT", "/api/v1/vm.remove-device", r#"{"id":"vf0"}"#)),
        Ok(ApiRequest::VmRemoveDevice { id: "vf0".into() })
    );
    // Both ch-remote generations' add-device bodies, with a trailing slash on the path.
    for body in [
        r#"{"path":"/sys/bus/pci/devices/0000:01:10.0/","iommu":false,"id":null,"pci_segment":0,"x_nv_gpudirect_clique":null}"#,
        r#"{"pci_segment":0,"path":"/sys/bus/pci/devices/0000:01:10.0/","x_exclude_mmap_bars":[]}"#,
        r#"{"path":"/sys/bus/pci/devices/0000:01:10.0"}"#,
    ] {
        match route(&req("PUT", "/api/v1/vm.add-device", body)) {
            Ok(ApiRequest::VmAddDevice(d)) => {
                assert_eq!(d.path, "/sys/bus/pci/devices/0000:01:10.0");
                assert_eq!(d.id, None);
            }
            other => panic!("{body}: {other:?}"),
        }
    }
    let d = route(&req("PUT", "/api/v1/vm.add-device", r#"{"path":"/sys/bus/pci/devices/0000:01:10.0","id":"vf0"}"#));
    assert!(matches!(d, Ok(ApiRequest::VmAddDevice(AddDevice { id: Some(ref id), .. })) if id == "vf0"));
}

/// Malformed requests, from the raw bytes: each gets a 4xx/5xx with a message, and parsing
/// the next request is unaffected (there is no state between requests).
#[test]
fn malformed_requests_get_a_clear_error() {
    let huge_body = format!("PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: {}\r\n\r\n", 70 * 1024);
    let cases: Vec<(String, u16, &str)> = vec![
        ("GET /api/v1/vmm.pong HTTP/1.1\r\n\r\n".into(), 404, "no such endpoint"),
        ("GET /api/v2/vmm.ping HTTP/1.1\r\n\r\n".into(), 404, "no such endpoint"),
        ("GET / HTTP/1.1\r\n\r\n".into(), 404, "no such endpoint"),
        ("GET /api/v1/ HTTP/1.1\r\n\r\n".into(), 404, "no such endpoint"),
        ("GET /api/v1/vm.info/extra HTTP/1.1\r\n\r\n".into(), 404, "no such endpoint"),
        ("PUT /api/v1/vmm.ping HTTP/1.1\r\n\r\n".into(), 405, "does not take PUT"),
        ("POST /api/v1/vm.pause HTTP/1.1\r\n\r\n".into(), 405, "does not take POST"),
        ("DELETE /api/v1/vm.remove-device HTTP/1.1\r\n\r\n".into(), 405, "does not take DELETE"),
        ("GET /api/v1/vm.add-device HTTP/1.1\r\n\r\n".into(), 405, "does not take GET"),
        ("PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}".into(), 400, "takes no body"),
        ("PUT /api/v1/vm.add-device HTTP/1.1\r\n\r\n".into(), 400, "a JSON body is required"),
        ("PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: 5\r\n\r\n{path".into(), 400, "invalid body"),
        ("PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: 2\r\n\r\n[]".into(), 400, "invalid body"),
        ("PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}".into(), 400, "missing field `path`"),
        ("PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: 10\r\n\r\n{\"path\":1}".into(), 400, "invalid type"),
        ("PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: 43\r\n\r\n{\"path\":\"/sys/bus/pci/devices/x\",\"speed\":9}".into(), 400, "unknown field `speed`"),
        ("PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: 19\r\n\r\n{\"path\":\"/dev/sda\"}".into(), 400, "not under /sys/bus/pci/devices/"),
        ("PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: 31\r\n\r\n{\"path\":\"/sys/bus/pci/devices\"}".into(), 400, "not under /sys/bus/pci/devices/"),
        ("PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: 44\r\n\r\n{\"path\":\"/sys/bus/pci/devices/x\",\"id\":\"a b\"}".into(), 400, "must be 1-64 characters"),
        ("PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: 46\r\n\r\n{\"path\":\"/sys/bus/pci/devices/x\",\"iommu\":true}".into(), 400, "iommu=on is not supported"),
        ("PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: 49\r\n\r\n{\"path\":\"/sys/bus/pci/devices/x\",\"pci_segment\":1}".into(), 400, "only PCI segment 0"),
        ("PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: 59\r\n\r\n{\"path\":\"/sys/bus/pci/devices/x\",\"x_exclude_mmap_bars\":[0]}".into(), 400, "x_exclude_mmap_bars"),
        ("PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}".into(), 400, "missing field `id`"),
        ("PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: 8\r\n\r\n{\"id\":1}".into(), 400, "invalid type"),
        ("PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: 4\r\n\r\n\u{ff}\u{fe}{}".into(), 400, "not UTF-8"),
        ("PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: 20\r\n\r\n{\"id\":\"a\",\"force\":1}".into(), 400, "unknown field `force`"),
        ("PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: 12\r\n\r\n{\"id\":\"a/b\"}".into(), 400, "must be 1-64 characters"),
        (huge_body, 413, "larger than"),
        ("GET /api/v1/vmm.ping HTTP/1.0\r\n\r\n".into(), 400, "only HTTP/1.1"),
        ("GET /api/v1/vmm.ping HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".into(), 501, "chunked"),
        ("PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Length: x\r\n\r\n".into(), 400, "Content-Length"),
        ("BAD\x01REQUEST\r\n\r\n".into(), 400, "malformed"),
        ("GET /api/v1/vmm.ping HTTP/1.1\r\nBad Header\r\n\r\n".into(), 400, "malformed"),
    ];
    assert!(cases.len() >= 30);
    for (raw, status, needle) in cases {
        // Strings above use \xff as two chars; send the intended bytes.
        let bytes: Vec<u8> = raw.chars().map(|c| c as u32 as u8).collect();
        let outcome = match parse_request(&bytes) {
            Err(e) => Response::error(e.status(), &e.to_string()),
            Ok(None) => Response::error(400, "incomplete request"),
            Ok(Some(r)) => match route(&r) {
                Ok(ok) => panic!("{raw:?} was accepted as {ok:?}"),
                Err(e) => Response::error(e.status, &e.message),
            },
        };
        assert_eq!(outcome.status, status, "{raw:?}: {:?}", outcome.body);
        let body = outcome.body.unwrap_or_default();
        let messages: Vec<String> = serde_json::from_str(&body).expect("errors are a JSON array of strings");
        assert!(messages[0].contains(needle), "{raw:?}: {messages:?} lacks {needle:?}");
        // The next request is served normally.
        let ping = parse_request(b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(route(&ping), Ok(ApiRequest::VmmPing));
    }
}

#[test]
fn openapi_file_lists_exactly_the_served_routes() {
    let spec = include_str!("../../openapi.yaml");
    let mut documented = Vec::new();
    let mut current: Option<String> = None;
    for line in spec.lines() {
        if let Some(p) = line.strip_prefix("  /").and_then(|p| p.strip_suffix(':')) {
            current = Some(p.to_string());
        } else if let (Some(p), Some(m)) = (&current, line.strip_prefix("    ").and_then(|m| m.strip_suffix(':'))) {
            if matches!(m, "get" | "put" | "post" | "delete" | "patch") {
                documented.push((m.to_uppercase(), p.clone()));
            }
        } else if !line.starts_with("   ") && !line.starts_with("  /") {
            current = None;
        }
    }
    let mut served: Vec<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
}

#[test]
fn release_and_acquire_routes() {
    assert_eq!(
        route(&req("PUT", "/api/v1/vm.release-device", r#"{"id":"vf0"}"#)),
        Ok(ApiRequest::VmReleaseDevice { id: "vf0".into(), live: false })
    );
    assert_eq!(
        route(&req("PUT", "/api/v1/vm.acquire-device", r#"{"id":"vf0"}"#)),
        Ok(ApiRequest::VmAcquireDevice { id: "vf0".into(), path: None })
    );
    assert_eq!(
        route(&req("PUT", "/api/v1/vm.acquire-device", r#"{"id":"vf0","path":"/sys/bus/pci/devices/0000:01:10.4/"}"#)),
        Ok(ApiRequest::VmAcquireDevice { id: "vf0".into(), path: Some("/sys/bus/pci/devices/0000:01:10.4".into()) })
    );
    for (path, body, want) in [
        ("vm.release-device", r#"{"id":"../x"}"#, "must be 1-64 characters"),
        ("vm.release-device", r#"{}"#, "missing field `id`"),
        ("vm.acquire-device", r#"{"id":"vf0","path":"/etc/passwd"}"#, "not under /sys/bus/pci/devices/"),
        ("vm.acquire-device", r#"{"id":"vf0","force":true}"#, "unknown field `force`"),
    ] {
        let e = route(&req("PUT", &format!("/api/v1/{path}"), body)).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains(want), "{path} {body}: {}", e.message);
    }
}

#[test]
fn refusal_kinds_map_to_cloud_hypervisor_statuses() {
    let statuses: Vec<u16> = [
        Refusal::BadRequest,
        Refusal::NotFound,
        Refusal::WrongVmState,
        Refusal::Conflict,
        Refusal::Internal,
        Refusal::HostBusy,
    ]
    .iter()
    .map(|r| r.status())
    .collect();
    assert_eq!(statuses, [400, 404, 405, 409, 500, 503]);
    assert_eq!(ApiError::refused(Refusal::Conflict, "x"), ApiError { status: 409, message: "x".into() });
}
