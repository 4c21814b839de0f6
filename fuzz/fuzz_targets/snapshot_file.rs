//! The last-known-good snapshot file a discoverer loads at start: whatever
//! the file holds, loading gives a snapshot or a typed error, never a panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use registry_core::snapshot;
use registry_core::store::Scope;

/// One file per fuzzing process, rewritten for every input.
fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| std::env::temp_dir().join(format!("registry-fuzz-snapshot-{}.json", std::process::id())))
}

fuzz_target!(|data: &[u8]| {
    let path = path();
    if std::fs::write(path, data).is_err() {
        return;
    }
    let _ = snapshot::load(path, "etcd", &Scope::new("shop", "prod"));
});
