//! A node record as etcd values, Consul KV entries and meta, and Kubernetes
//! annotations hold it (the Go framework's JSON): decoding never panics, and
//! whatever decodes encodes and decodes again to the same node.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_core::ServiceNode;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(node) = ServiceNode::from_json(text) else { return };
    let encoded = node.to_json().expect("a decoded node encodes");
    let again = ServiceNode::from_json(&encoded).expect("an encoded node decodes");
    assert_eq!(again.to_json().expect("encodes"), encoded, "encoding is stable");
});
