//! The VMM thread's control loop: its event sources and the adapter that turns API requests
//! into VM and device operations.

pub mod api_handler;
pub mod event_loop;
pub mod uevents;
