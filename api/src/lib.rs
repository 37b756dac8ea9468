//! vfvmm's REST API (Cloud Hypervisor-compatible routes and bodies): HTTP framing and typed
//! requests. See `CH_COMPAT.md` for what `ch-remote` sends and accepts.
//!
//! Work in progress for the API issue: requests are parsed, validated and routed here; the
//! socket server, the VMM-thread handlers and `vfctl` come next. `--api-socket` is still
//! refused at start-up.

pub mod client;
pub mod http;
pub mod request;
pub mod server;

pub use http::{parse_request, HttpError, HttpRequest, Response};
pub use request::{route, AddDevice, ApiError, ApiRequest, Refusal};
pub use server::{ApiMessage, ApiReceiver, ApiServer, ApiServerError};
