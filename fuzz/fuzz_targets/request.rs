//! An HTTP API request body (`POST /v1/chat/completions` and `/v1/completions`) parsed and
//! validated: any bytes end in a request or an `ApiError` naming the field, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use specd_openai::request::{check_defaults, parse, Endpoint, Speculative};

fuzz_target!(|data: &[u8]| {
    let defaults = Speculative::default();
    for endpoint in [Endpoint::Chat, Endpoint::Completion] {
        let _ = parse(endpoint, data, &defaults);
    }
    // The same bytes as the server's own speculative settings (the `serve` flags' JSON form).
    if let Ok(s) = serde_json::from_slice::<Speculative>(data) {
        let _ = check_defaults(&s);
    }
});
