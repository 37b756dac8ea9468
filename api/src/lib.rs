//! REST API on a unix socket (Cloud Hypervisor-compatible routes and bodies).
//!
//! Empty until the API issue lands: `--api-socket` is parsed and validated by `vmm::config`
//! and rejected at start-up with "not implemented yet".
