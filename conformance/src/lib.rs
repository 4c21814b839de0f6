//! The conformance suite of the `registry` library.
//!
//! Every backend runs the same scenarios ([`scenarios`]) against a real
//! server, through the [`Backend`] trait: a backend's test file is one small
//! `main` that calls [`Runner::suite`] with its `Backend` type, and test names
//! read `<backend>::<scenario>`. The same runner runs a crate's own tests
//! that need a server ([`Runner::test`]), so every test of the workspace
//! skips — or, under `REGISTRY_TEST_REQUIRE=1`, fails — by one rule
//! ([`availability`]).
//!
//! This crate depends on no server: a third party who writes a backend runs
//! the suite against their own. The workspace's local servers (etcd, Consul,
//! kube-apiserver, clusters, a Kubernetes node, partitions) are the
//! unpublished `registry-testenv` crate.
//!
//! Rules the suite keeps: every scenario works in its own random namespace and
//! env and asserts only on what it wrote; with `REGISTRY_TEST_REQUIRE=1` a
//! missing server fails the run; a scenario a backend cannot run is reported
//! as ignored with the reason, never passed silently.
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]
#![forbid(unsafe_code)]
// Test-support code: a failed expectation is reported through `anyhow` or a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod availability;
mod backend;
pub mod fixtures;
pub mod interop;
mod runner;
pub mod scenarios;

pub use availability::{Unavailable, required};
pub use backend::{Backend, Capability, ServerUse};
pub use libtest_mimic::Arguments;
pub use runner::Runner;
