//! Whether what a test needs can be had here: the one skip rule of the
//! workspace's tests.
//!
//! A test that needs a server the machine does not have is reported as
//! ignored, with the reason, when `REGISTRY_TEST_REQUIRE` is unset, and fails
//! when it is set (`scripts/test.sh` and CI set it). [`Runner`](crate::Runner)
//! applies the rule to scenarios and to a crate's own tests alike.

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

/// True when `REGISTRY_TEST_REQUIRE=1`: a missing server fails the run.
pub fn required() -> bool {
    std::env::var("REGISTRY_TEST_REQUIRE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}
