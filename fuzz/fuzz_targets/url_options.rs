//! Backend URL options (`?timeout=5s&tls=true…`, every backend's query
//! string): parsing never panics and an error names an option.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_core::options::{UrlOptions, parse_bool, parse_duration};

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else { return };
    let mut options = UrlOptions::from_query(query);
    let _ = options.duration("timeout");
    let _ = options.bool("tls");
    let _ = options.number("limit");
    let _ = options.string("name");
    let _ = options.finish();
    let _ = parse_duration("timeout", query);
    let _ = parse_bool("tls", query);
});
