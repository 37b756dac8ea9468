//! vfvmm's REST API (Cloud Hypervisor-compatible routes and bodies): HTTP framing, typed
//! requests, the socket server and client, and what `vfctl` needs besides: the registry of
//! running VMs and the host's SR-IOV functions. See `CH_COMPAT.md` for what `ch-remote` sends
//! and accepts.

pub mod client;
pub mod http;
pub mod manage;
pub mod reconfigure;
pub mod registry;
pub mod request;
pub mod server;
pub mod sriov;

pub use http::{parse_request, HttpError, HttpRequest, Response};
pub use request::{route, AddDevice, ApiError, ApiRequest, Refusal};
pub use server::{ApiMessage, ApiReceiver, ApiServer, ApiServerError};
