//! The etcd backend of `registry`.
//!
//! This crate is a placeholder that compiles; its adapter over
//! [`registry_core::store`] arrives with the etcd backend issue.

pub use registry_core;
