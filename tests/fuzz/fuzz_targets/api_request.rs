//! Any bytes a client sends: HTTP framing, then routing and body validation. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(request)) = api::parse_request(data) {
        let _ = api::route(&request);
    }
});
