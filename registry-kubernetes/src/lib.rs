//! The kubernetes backend of `registry`.
//!
//! This crate is a placeholder that compiles; its adapter over
//! [`registry_core::store`] arrives with the kubernetes backend issue.

pub use registry_core;
