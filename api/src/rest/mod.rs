//! The REST API: HTTP framing, typed requests and routes, the socket server and client.

pub mod client;
pub mod http;
pub mod request;
pub mod server;
