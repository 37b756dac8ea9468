//! Routes (`/api/v1/...`) and typed request bodies. Unknown fields are rejected, except the
//! ones `ch-remote` always sends with their default values (see CH_COMPAT.md).

use serde::Deserialize;

use crate::rest::http::HttpRequest;

pub const API_PREFIX: &str = "/api/v1/";

/// Every route served, `(method, endpoint)`; the OpenAPI file must list exactly these.
pub const ROUTES: [(&str, &str); 10] = [
    ("GET", "vmm.ping"),
    ("PUT", "vmm.shutdown"),
    ("GET", "vm.info"),
    ("PUT", "vm.add-device"),
    ("PUT", "vm.remove-device"),
    ("PUT", "vm.pause"),
    ("PUT", "vm.resume"),
    ("PUT", "vm.shutdown"),
    ("PUT", "vm.release-device"),
    ("PUT", "vm.acquire-device"),
];

/// `vm.add-device`. Cloud Hypervisor's extra fields are accepted at their defaults only.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDevice {
    pub path: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    iommu: Option<bool>,
    #[serde(default)]
    pci_segment: Option<u16>,
    #[serde(default)]
    x_exclude_mmap_bars: Option<Vec<u64>>,
    #[serde(default)]
    x_nv_gpudirect_clique: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveDeviceBody {
    id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseDeviceBody {
    id: String,
    #[serde(default)]
    live: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcquireDeviceBody {
    id: String,
    #[serde(default)]
    path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    VmmPing,
    VmmShutdown,
    VmInfo,
    VmAddDevice(AddDevice),
    VmRemoveDevice {
        id: String,
    },
    VmPause,
    VmResume,
    VmShutdown,
    /// While paused: let go of a device's host side (the guest keeps the device). With `live`,
    /// while running: the guest's driver is told its function failed and waits for it.
    VmReleaseDevice {
        id: String,
        live: bool,
    },
    /// While paused, or while running for a live-released device: take a released device
    /// back, at its path or at `path`.
    VmAcquireDevice {
        id: String,
        path: Option<String>,
    },
}

/// Why the VMM refused a request. The VMM says what went wrong; the HTTP status for each kind
/// is decided here only ([`Refusal::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed or unusable input (400).
    BadRequest,
    /// No such device or host device (404).
    NotFound,
    /// The request is not allowed in the VM's state (405, as Cloud Hypervisor answers).
    WrongVmState,
    /// Conflicts with a device's state or another device (409).
    Conflict,
    /// The VMM failed (500).
    Internal,
    /// The host did not finish what the request needs in time (a device open or reset); the
    /// VM is unchanged and the request may be tried again (503).
    HostBusy,
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::BadRequest => 400,
            Refusal::NotFound => 404,
            Refusal::WrongVmState => 405,
            Refusal::Conflict => 409,
            Refusal::Internal => 500,
            Refusal::HostBusy => 503,
        }
    }
}

impl ApiError {
    pub fn refused(kind: Refusal, message: impl Into<String>) -> Self {
        ApiError { status: kind.status(), message: message.into() }
    }
}

/// A request the API refuses, with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError { status: 400, message: message.into() }
}

fn json_body<'a, T: Deserialize<'a>>(endpoint: &str, body: &'a [u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(bad(format!("{endpoint}: a JSON body is required")));
    }
    let text = std::str::from_utf8(body).map_err(|_| bad(format!("{endpoint}: the body is not UTF-8")))?;
    serde_json::from_str(text).map_err(|e| bad(format!("{endpoint}: invalid body: {e}")))
}

/// Device ids: 1-64 characters of `[A-Za-z0-9_-]` (the CLI and the API share this rule).
pub fn valid_device_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A device path as given (CLI or API, with or without a trailing `/`) normalized, if it
/// names something under `/sys/bus/pci/devices/`.
pub fn normalize_device_path(path: &str) -> Option<&str> {
    const PREFIX: &str = "/sys/bus/pci/devices/";
    let trimmed = path.trim_end_matches('/');
    (trimmed.starts_with(PREFIX) && trimmed.len() > PREFIX.len()).then_some(trimmed)
}

fn checked_id(endpoint: &str, id: String) -> Result<String, ApiError> {
    if valid_device_id(&id) {
        Ok(id)
    } else {
        Err(bad(format!("{endpoint}: id '{id}' must be 1-64 characters of [A-Za-z0-9_-]")))
    }
}

impl AddDevice {
    fn validate(mut self) -> Result<Self, ApiError> {
        if self.iommu == Some(true) {
            return Err(bad("vm.add-device: iommu=on is not supported"));
        }
        if self.pci_segment.is_some_and(|s| s != 0) {
            return Err(bad("vm.add-device: only PCI segment 0 exists"));
        }
        if self.x_exclude_mmap_bars.as_ref().is_some_and(|b| !b.is_empty()) {
            return Err(bad("vm.add-device: x_exclude_mmap_bars is not supported"));
        }
        if self.x_nv_gpudirect_clique.is_some() {
            return Err(bad("vm.add-device: x_nv_gpudirect_clique is not supported"));
        }
        if let Some(id) = &self.id {
            if !valid_device_id(id) {
                return Err(bad(format!("vm.add-device: id '{id}' must be 1-64 characters of [A-Za-z0-9_-]")));
            }
        }
        // ch-remote sends the path as typed, often with a trailing slash.
        self.path = normalize_device_path(&self.path)
            .ok_or_else(|| bad(format!("vm.add-device: path '{}' is not under /sys/bus/pci/devices/", self.path)))?
            .to_string();
        Ok(self)
    }
}

/// Maps an HTTP request to an API request: 404 unknown path, 405 wrong method, 400 bad body.
pub fn route(req: &HttpRequest) -> Result<ApiRequest, ApiError> {
    let endpoint = req
        .path
        .strip_prefix(API_PREFIX)
        .filter(|e| ROUTES.iter().any(|(_, r)| r == e))
        .ok_or_else(|| ApiError { status: 404, message: format!("no such endpoint: {}", req.path) })?;
    if !ROUTES.iter().any(|(m, r)| *r == endpoint && *m == req.method) {
        return Err(ApiError { status: 405, message: format!("{endpoint} does not take {}", req.method) });
    }
    let no_body = |r: ApiRequest| {
        if req.body.is_empty() {
            Ok(r)
        } else {
            Err(bad(format!("{endpoint} takes no body")))
        }
    };
    match endpoint {
        "vmm.ping" => no_body(ApiRequest::VmmPing),
        "vmm.shutdown" => no_body(ApiRequest::VmmShutdown),
        "vm.info" => no_body(ApiRequest::VmInfo),
        "vm.pause" => no_body(ApiRequest::VmPause),
        "vm.resume" => no_body(ApiRequest::VmResume),
        "vm.shutdown" => no_body(ApiRequest::VmShutdown),
        "vm.add-device" => Ok(ApiRequest::VmAddDevice(json_body::<AddDevice>(endpoint, &req.body)?.validate()?)),
        "vm.remove-device" => {
            let body: RemoveDeviceBody = json_body(endpoint, &req.body)?;
            Ok(ApiRequest::VmRemoveDevice { id: checked_id(endpoint, body.id)? })
        }
        "vm.release-device" => {
            let body: ReleaseDeviceBody = json_body(endpoint, &req.body)?;
            Ok(ApiRequest::VmReleaseDevice { id: checked_id(endpoint, body.id)?, live: body.live })
        }
        "vm.acquire-device" => {
            let body: AcquireDeviceBody = json_body(endpoint, &req.body)?;
            let path = match body.path {
                Some(p) => Some(
                    normalize_device_path(&p)
                        .ok_or_else(|| bad(format!("{endpoint}: path '{p}' is not under /sys/bus/pci/devices/")))?
                        .to_string(),
                ),
                None => None,
            };
            Ok(ApiRequest::VmAcquireDevice { id: checked_id(endpoint, body.id)?, path })
        }
        _ => Err(ApiError { status: 404, message: format!("no such endpoint: {}", req.path) }),
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
