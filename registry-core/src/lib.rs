//! Core of the `registry` library: the model, the [`Register`] and
//! [`Discovery`] traits, and the machinery every backend shares.
//!
//! - Model: [`ServiceNode`] (wire-compatible with the Go framework),
//!   [`ServiceConf`] with its defaults, [`GrpcServices`] to build `methods`.
//! - Traits: [`Register`] (install, keepalive, uninstall) and [`Discovery`]
//!   (lookup by method from a local cache, change events).
//! - Machinery, written once: [`Registrar`] (keepalive/retry driver),
//!   [`Discoverer`] (index, expiry, event fan-out), [`list_watch`] (list,
//!   watch, resume, relist with backoff).
//! - Decorators for migrations: [`FanoutRegistrar`] (register on several
//!   backends) and [`merged_discovery`] (discover from several).
//! - Staleness: [`Discovery::health`] ([`Health`], per source), empty-set
//!   protection ([`EmptyProtection`]) and the last-known-good [`snapshot`].
//! - The adapter contract a backend implements: [`store`].
//! - The embedded backend: [`memory`].
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
pub mod conf;
mod discoverer;
mod discovery;
mod error;
mod fanout;
mod grpc;
pub mod health;
mod index;
pub mod list_watch;
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub mod memory;
pub mod merge;
mod model;
pub mod operator;
pub mod options;
mod register;
mod registrar;
pub mod snapshot;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing;

pub use conf::{AfterMaxRetry, DiscoveryOptions, EmptyProtection, ServiceConf};
pub use discoverer::{Discoverer, app_lease_key};
pub use discovery::{Discovery, DiscoveryEvent, DrainingNodes};
pub use error::{BoxError, Error, Result};
pub use fanout::FanoutRegistrar;
pub use grpc::GrpcServices;
pub use health::{Health, SourceHealth};
pub use index::{Nodes, ServiceIndex};
pub use merge::{cross_backend_identity, merged_discovery};
pub use model::{DEFAULT_WEIGHT, Kernel, Meta, Methods, Network, ServiceNode};
pub use register::{Register, RetryHooks, RetryInfo};
pub use registrar::Registrar;
