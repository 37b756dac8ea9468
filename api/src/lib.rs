//! Two rooms:
//! - [`rest`]: vfvmm's REST API (Cloud Hypervisor-compatible routes and bodies): HTTP framing,
//!   typed requests, the socket server and client. See `CH_COMPAT.md` for what `ch-remote`
//!   sends and accepts.
//! - [`host`]: the host-side VF manager `vfctl` is built on: the registry of running VMs, the
//!   host's SR-IOV functions, attach/detach across VMs and PF reconfiguration. It talks to VMs
//!   through [`rest`]'s client; nothing in [`rest`] depends on it.

pub mod host;
pub mod rest;

pub use rest::http::{parse_request, HttpError, HttpRequest, Response};
pub use rest::request::{route, AddDevice, ApiError, ApiRequest, Refusal};
pub use rest::server::{ApiMessage, ApiReceiver, ApiServer, ApiServerError};
