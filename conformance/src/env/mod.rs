//! The test environment: real servers on loopback, or the user's own.
//!
//! Server binaries live in `${REGISTRY_TESTENV:-$HOME/.cache/registry-testenv}/bin`
//! (put there by `scripts/install-test-servers.sh`). Each server module
//! starts its server on free `127.0.0.1` ports with its own temp dir and
//! stops it on drop — or, when the user's variable is set (`ETCD_ENDPOINTS`,
//! `CONSUL_HTTP_ADDR`, `KUBECONFIG`), uses that server instead.
//!
//! With `REGISTRY_TEST_REQUIRE=1` a missing server is a failure; without it
//! the suite reports the backend's scenarios as ignored, loudly, with the reason.

pub mod consul;
pub mod consul_cluster;
pub mod etcd;
pub mod etcd_cluster;
pub mod faults;
pub mod kube;
pub mod kube_node;
pub mod member;
pub mod partition;
pub mod process;

use std::net::TcpListener;
use std::path::PathBuf;

/// Why a server is not available.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// The binary is not installed.
    #[error("`{binary}` not found at {path} (run scripts/install-test-servers.sh)")]
    MissingBinary {
        /// Binary name.
        binary: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// What a scenario needs cannot be had here (e.g. stopping a server given by URL).
    #[error("{0}")]
    NotApplicable(String),
    /// The server did not start.
    #[error("{server} did not start: {reason}")]
    StartFailed {
        /// Server name.
        server: String,
        /// Why (including the tail of its log).
        reason: String,
    },
}

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

/// True when `REGISTRY_TEST_REQUIRE=1`: a missing server fails the run.
pub fn required() -> bool {
    std::env::var("REGISTRY_TEST_REQUIRE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
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
