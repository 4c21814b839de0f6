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
pub mod http;
pub mod kube;
pub mod kube_node;
pub mod local;
pub mod member;
pub mod partition;
pub mod pki;
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
///
/// `etcd` is the server named by [`ETCD_SERVER_VAR`] when it is set (the
/// etcd suites run once per server version, `scripts/test.sh`).
pub fn binary(name: &str) -> Result<PathBuf, Unavailable> {
    let server = match name {
        "etcd" => std::env::var(ETCD_SERVER_VAR).ok().filter(|s| !s.is_empty()),
        _ => None,
    };
    let name = server.as_deref().unwrap_or(name);
    let path = testenv_dir().join("bin").join(name);
    if path.is_file() { Ok(path) } else { Err(Unavailable::MissingBinary { binary: name.to_owned(), path }) }
}

/// Which etcd server binary under the test environment's `bin/` every local
/// etcd (single server and cluster members) runs: unset, `etcd` (3.5 from
/// Debian); `etcd-3.6` for the 3.6 build of `scripts/install-test-servers.sh`.
pub const ETCD_SERVER_VAR: &str = "REGISTRY_ETCD_SERVER";

/// A free TCP port on 127.0.0.1 (bound then released; servers bind it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// The `cargo` that runs the tests (`CARGO`, else `cargo` on the `PATH`),
/// for a build or test run from inside a test, without the variables cargo
/// sets for the running crate (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`,
/// `OUT_DIR`, ...). Build scripts declare some of them with
/// `rerun-if-env-changed` (ring: `CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`),
/// and cargo compares its own environment: left set, they would rebuild
/// ring and everything above it in the nested run, and again in the next
/// outer one.
pub fn cargo_command() -> std::process::Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if is_crate_variable(name) {
            command.env_remove(name);
        }
    }
    command
}

/// A variable cargo sets for the crate it builds or runs (not one a user sets
/// to configure cargo, such as `CARGO_TARGET_DIR` or `CARGO_HOME`).
fn is_crate_variable(name: &str) -> bool {
    const EXACT: [&str; 7] = [
        "OUT_DIR",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
    ];
    const PREFIXES: [&str; 3] = ["CARGO_PKG_", "CARGO_BIN_", "CARGO_RUSTC_CURRENT_DIR"];
    EXACT.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Starts of a local server tried before a lost port race is reported.
const PORT_RACE_ATTEMPTS: u32 = 3;

/// Runs `start` (which picks fresh ports with [`free_port`] each time) again
/// when the server exited because another process took one of its ports
/// between [`free_port`] releasing it and the server binding it (tests start
/// servers in parallel; seen once in CI: `bind: address already in use`).
pub(crate) async fn retry_port_race<T, F, Fut>(server: &str, mut start: F) -> Result<T, Unavailable>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Unavailable>>,
{
    let mut attempt = 1;
    loop {
        match start().await {
            Err(Unavailable::StartFailed { reason, .. })
                if attempt < PORT_RACE_ATTEMPTS && reason.contains("address already in use") =>
            {
                eprintln!("testenv: {server} lost a port race (attempt {attempt}); starting it on fresh ports");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// True when this process runs as root (it may then isolate cluster members,
/// write nftables rules and start a Kubernetes node).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // `/proc/self` belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A non-empty environment variable.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::{Unavailable, is_crate_variable, retry_port_race};

    fn failed(reason: &str) -> Unavailable {
        Unavailable::StartFailed { server: "etcd".into(), reason: reason.into() }
    }

    #[tokio::test]
    async fn a_lost_port_race_is_started_again_and_other_failures_are_not() {
        let mut calls = 0;
        let started = retry_port_race("etcd", || {
            calls += 1;
            let first = calls == 1;
            async move { if first { Err(failed("exited early: bind: address already in use")) } else { Ok(calls) } }
        })
        .await;
        assert!(matches!(started, Ok(2)), "{started:?}");

        assert_eq!(starts_always_failing("exited early: permission denied").await, 1);
        assert_eq!(starts_always_failing("address already in use").await, 3, "gives up after three starts");
    }

    /// How many starts `retry_port_race` makes when every start fails with `reason`.
    async fn starts_always_failing(reason: &str) -> u32 {
        let mut calls = 0;
        let started: Result<(), _> = retry_port_race("etcd", || {
            calls += 1;
            async { Err(failed(reason)) }
        })
        .await;
        assert!(started.is_err());
        calls
    }

    #[test]
    fn crate_variables_are_told_from_cargo_configuration() {
        for name in
            ["CARGO_MANIFEST_DIR", "CARGO_PKG_NAME", "CARGO_PKG_VERSION_MAJOR", "OUT_DIR", "CARGO_BIN_EXE_registryctl"]
        {
            assert!(is_crate_variable(name), "{name}");
        }
        for name in ["CARGO_TARGET_DIR", "CARGO_HOME", "CARGO_INCREMENTAL", "CARGO_ENCODED_RUSTFLAGS", "CARGO", "PATH"]
        {
            assert!(!is_crate_variable(name), "{name}");
        }
    }
}
