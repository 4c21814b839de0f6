//! The test environment of the `registry` workspace: real servers on
//! loopback, or the user's own — single etcd, Consul and kube-apiserver
//! servers, a 3-member etcd cluster, a Consul cluster of servers and client
//! agents, silent network partitions with nftables, and a real single-node
//! Kubernetes cluster (kubelet, controllers, containerd).
//!
//! The scenarios and the runner that use these servers live in the
//! `conformance` crate, which depends on no server; a backend's test glue
//! depends on both. Not published: it starts processes, writes nftables
//! rules and (for the Kubernetes node) needs root.
//!
//! Server binaries live in `${REGISTRY_TESTENV:-$HOME/.cache/registry-testenv}/bin`
//! (put there by `scripts/install-test-servers.sh`). Each server module
//! starts its server on free `127.0.0.1` ports with its own temp dir and
//! stops it on drop — or, when the user's variable is set (`ETCD_ENDPOINTS`,
//! `CONSUL_HTTP_ADDR`, `KUBECONFIG`), uses that server instead.
//!
//! With `REGISTRY_TEST_REQUIRE=1` a missing server is a failure; without it
//! the suite reports the backend's scenarios as ignored, loudly, with the reason.

#![deny(missing_docs, rustdoc::broken_intra_doc_links)]
#![forbid(unsafe_code)]
// Test-support code: a failed expectation is reported through `anyhow` or a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod consul;
pub mod consul_cluster;
pub mod demo_image;
pub mod etcd;
pub mod etcd_cluster;
pub mod faults;
pub mod kube;
pub mod kube_node;
pub mod local;
pub mod member;
pub mod partition;
pub mod process;

use std::net::TcpListener;
use std::path::PathBuf;

pub use conformance::{Unavailable, required};

/// Root of the test-server cache.
pub fn testenv_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("REGISTRY_TESTENV") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache").join("registry-testenv")
}

/// Path of an installed server binary, or why it is missing.
pub fn binary(name: &str) -> Result<PathBuf, Unavailable> {
    let path = testenv_dir().join("bin").join(name);
    if path.is_file() { Ok(path) } else { Err(Unavailable::MissingBinary { binary: name.to_owned(), path }) }
}

/// A free TCP port on 127.0.0.1 (bound then released; servers bind it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// A non-empty environment variable.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}
