//! The etcd backend of `registry`.
//!
//! [`EtcdStore`] implements core's adapter contract
//! ([`registry_core::store::Store`]); core's [`registry_core::Registrar`] and
//! [`registry_core::Discoverer`] do the rest. Records use the Go framework's
//! layout, so Go and Rust services share one registry:
//!
//! - key `<namespace>/<env>/<app_id>/<lease_id>`, value the node JSON,
//!   written with an etcd lease of the configured TTL whose id is the node's
//!   `lease_id`;
//! - the lease is kept alive through etcd's keepalive stream; when it is
//!   lost (expired during an outage, revoked) core grants a new one and
//!   writes the record again;
//! - discovery lists `<namespace>/<env>/` (trailing slash included) and
//!   watches it from the listing's revision + 1; a compacted revision makes
//!   core list again.
//!
//! Members that go silent (partitioned: packets dropped, no reset) are
//! noticed without waiting for the HTTP/2 keepalive: a watch that delivers
//! nothing for [`WATCH_PROGRESS_AFTER`] asks for a progress report and is
//! resumed elsewhere when none comes within the request timeout (7 s with
//! the defaults), and a lease renewal is tried in eight slices of its TTL/2 on fresh
//! keepalive streams, so a silent member costs an attempt, not the lease.
//!
//! Connection options ([`EtcdConfig`]): several endpoints, user/password,
//! TLS (CA, client certificate and key), connect and request timeouts,
//! HTTP/2 keepalive — also as a URL:
//! `etcd://user:pass@h1:2379,h2:2379?tls=true&ca=/etc/etcd/ca.pem&timeout=2s`.
//!
//! ```no_run
//! # async fn demo() -> registry_core::Result<()> {
//! use registry_core::{GrpcServices, Meta, Register, Registrar, ServiceConf};
//! use registry_etcd::{EtcdConfig, EtcdStore};
//!
//! let store = EtcdStore::connect(EtcdConfig::new(["127.0.0.1:2379"])).await?;
//! let registrar = Registrar::new(&store, Meta::new("prod", "greeter", "v1"), ServiceConf::default())?;
//! registrar.install(GrpcServices::new().service("hello.Greeter", ["SayHello"])?.into_node()).await?;
//! # Ok(()) }
//! ```
//!
//! Errors are mapped precisely at the edge:
//! unreachable → `BackendUnavailable`/`Timeout`, refused credentials →
//! `PermissionDenied` with etcd's message, a lost lease → `LeaseExpired`,
//! compaction → `ResumeLost`, an oversized record → `TooLarge`.
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]
#![forbid(unsafe_code)]

mod config;
mod error;
mod operator;
mod reader;
mod store;
mod writer;

pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEEPALIVE, DEFAULT_PORT, DEFAULT_REQUEST_TIMEOUT, EtcdConfig, EtcdTls, Keepalive,
};
pub use error::DEFAULT_MAX_REQUEST_BYTES;
pub use reader::WATCH_PROGRESS_AFTER;
pub use store::EtcdStore;

use std::sync::Arc;

use registry_core::store::{BackendSpec, Store};

/// The etcd backend: `etcd://…` and `etcds://…` URLs ([`EtcdConfig::parse_url`]).
pub const BACKEND: BackendSpec = BackendSpec {
    name: "etcd",
    schemes: &["etcd", "etcds"],
    connect: |url| {
        Box::pin(async move { Ok(Arc::new(EtcdStore::connect(url.parse::<EtcdConfig>()?).await?) as Arc<dyn Store>) })
    },
};
