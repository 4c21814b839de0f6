//! Service registration and discovery for gRPC services, with pluggable
//! backends behind two traits.
//!
//! A service registers a [`ServiceNode`] (who it is, where it listens, which
//! gRPC methods it serves) through [`Register`] and keeps it alive; a gateway
//! or client finds nodes by method through [`Discovery`], answered from a
//! local cache that the backend's change stream keeps current. Pick a backend
//! by URL — the rest of the code does not change:
//!
//! ```
//! # async fn demo() -> registry::Result<()> {
//! use registry::{GrpcServices, Meta, ServiceConf};
//!
//! let registry = registry::connect("memory://").await?; // or "etcd://…", "consul://…", "kubernetes://?mode=lease"
//! let registrar = registry.registrar(Meta::new("prod", "greeter", "v1"), ServiceConf::default())?;
//! registrar.install(GrpcServices::new().service("hello.Greeter", ["SayHello"])?.into_node()).await?;
//!
//! let discovery = registry.discoverer("prod", ServiceConf::default())?;
//! discovery.watcher().await?;
//! let nodes = discovery.get_service("/hello.Greeter/SayHello")?;
//! assert_eq!(nodes[0].meta.app_id, "greeter");
//! registrar.uninstall().await?;
//! # Ok(()) }
//! ```
//!
//! Cargo features choose which backends are compiled in: `memory` (default),
//! `etcd`, `consul`, `kubernetes` ([`backends`] lists them); and the tonic
//! integration: `tonic` (`balance`: discovered nodes → a balanced tonic
//! channel), `tls` (TLS/mTLS for it), `tonic-server` (`serve`: a tonic
//! server with its registration). A URL whose
//! backend is not compiled in is a clear [`Error::InvalidConfig`] naming the
//! feature to enable.
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub mod balance;
mod connect;
#[cfg(feature = "tonic-server")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic-server")))]
pub mod serve;

pub use connect::{Registry, Target, backends, connect};
// The user's API, named one by one (at most 30 names at the root): the
// backend contract (`registry_core::store`, `list_watch`, `options`, the
// `Registrar`/`Discoverer` machinery) is for implementers, who depend on
// `registry-core` itself; a backend's own configuration types are in its
// crate (`registry-etcd`, …).
pub use registry_core::telemetry;
pub use registry_core::{
    AfterMaxRetry, Discovery, DiscoveryEvent, DiscoveryOptions, DrainingNodes, EmptyProtection, Error, FanoutRegistrar,
    GrpcServices, Health, Meta, Methods, Network, Nodes, Register, Result, RetryHooks, RetryInfo, ServiceConf,
    ServiceIndex, ServiceNode, SourceHealth, merged_discovery,
};
