//! A protobuf `FileDescriptorSet` given to `GrpcServices` (`registryctl
//! publish --descriptor-set`): bytes that are not one are a typed error,
//! never a panic; a decoded set yields well-formed method paths.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_core::GrpcServices;

fuzz_target!(|data: &[u8]| {
    if let Ok(services) = GrpcServices::new().descriptor_set_bytes(data) {
        for method in services.into_node().methods.keys() {
            assert!(method.starts_with('/') && method[1..].contains('/'), "malformed method path {method:?}");
        }
    }
});
