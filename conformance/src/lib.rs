//! The conformance suite of the `registry` library.
//!
//! Every backend runs the same scenarios ([`scenarios`]) against a real
//! server, through the [`Backend`] trait: a backend's test file is one small
//! `main` that calls [`Runner::suite`] with its `Backend` type, and test names
//! read `<backend>::<scenario>`. The [`env`](mod@env) module starts the real servers
//! (or uses the user's, via `ETCD_ENDPOINTS`, `CONSUL_HTTP_ADDR`, `KUBECONFIG`).
//!
//! Rules the suite keeps: every scenario works in its own random namespace and
//! env and asserts only on what it wrote; with `REGISTRY_TEST_REQUIRE=1` a
//! missing server fails the run; a scenario a backend cannot run is reported
//! as ignored with the reason, never passed silently.
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]
#![forbid(unsafe_code)]
// Test-support code: a failed expectation is reported through `anyhow` or a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod backend;
pub mod env;
pub mod fixtures;
pub mod interop;
mod runner;
pub mod scenarios;

pub use backend::{Backend, ServerUse};
pub use env::Unavailable;
pub use libtest_mimic::Arguments;
pub use runner::Runner;
