//! An xDS control plane (ADS, State of the World) fed by any registry
//! backend: Envoy and proxyless gRPC clients (grpc-go, grpc-java, grpcio,
//! tonic-xds...) discover what is registered, with a route per registered
//! gRPC method.
//!
//! - [`snapshot`]: the pure derivation, a [`Discovery`](registry_core::Discovery)
//!   view → the resources a kind of client gets (Listener, RouteConfiguration,
//!   Cluster, ClusterLoadAssignment), checked for consistency.
//! - [`names`]: the names clients ask for (`<env>`, `<app_id>.<env>`).
//! - [`server`]: the ADS server, as a tonic service to add to your server
//!   ([`XdsServer::service`]) or standalone ([`XdsServer::serve`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use registry_core::{Discoverer, Discovery, ServiceConf, memory::MemoryStore};
//! use registry_xds::XdsServer;
//!
//! let store = MemoryStore::new();
//! let discoverer = Arc::new(Discoverer::new(&store, "prod", ServiceConf::default())?);
//! discoverer.watcher().await?;
//! let xds = XdsServer::new(discoverer, "prod")?;
//! xds.serve("127.0.0.1:18000".parse()?, futures::future::pending()).await?;
//! # Ok(()) }
//! ```
//!
//! The mapping and the choices behind it: `docs/xds.md`.
#![forbid(unsafe_code)]

mod clients;
pub mod names;
pub mod server;
pub mod snapshot;

pub use server::{ClientState, Error, Nack, TypeState, XdsServer};
pub use snapshot::{NodeKind, ResourceType, Snapshot, derive};
