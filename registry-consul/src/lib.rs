//! The Consul backend of `registry`.
//!
//! [`ConsulStore`] implements [`registry_core::store::Store`]; registrars
//! and discoverers built on it behave exactly like those of every other
//! backend (the shared conformance suite runs against a real agent).
//!
//! ```no_run
//! # async fn demo() -> registry_core::Result<()> {
//! use registry_consul::{ConsulConfig, ConsulStore};
//! use registry_core::{Discoverer, Meta, Registrar, ServiceConf};
//!
//! let url = url::Url::parse("consul://127.0.0.1:8500").expect("valid URL");
//! let store = ConsulStore::connect(ConsulConfig::from_url(&url)?).await?;
//! let registrar = Registrar::new(&store, Meta::new("prod", "greeter", "v1"), ServiceConf::default())?;
//! let discoverer = Discoverer::new(&store, "prod", ServiceConf::default())?;
//! # Ok(()) }
//! ```
//!
//! # Layout in Consul (the Go framework's, extended)
//!
//! - Each instance is an **agent service** named `<namespace>-<env>`, ID
//!   `<namespace>-<env>-<app_id>-<lease_id>`, tags `[app_id, version]`, meta
//!   `app_id`, `env`, `version`, `namespace`, and `node` — the node JSON with
//!   the Go framework's fields only — when that fits Consul's 512-byte meta
//!   value limit; so it shows in Consul's
//!   catalog, health API, UI and DNS like any service. Its TTL check
//!   (`service:<id>`, TTL = the registrar's TTL) is passed every TTL/2;
//!   `DeregisterCriticalServiceAfter` is 3×TTL, raised to Consul's floor of
//!   one minute ([`MIN_DEREGISTER_AFTER`]) — discovery hides a critical
//!   instance at once regardless, the reaper only cleans up the catalog.
//! - The full node JSON is always in **KV** at
//!   `<namespace>/<env>/<app_id>/<lease_id>` (up to [`KV_VALUE_LIMIT`]),
//!   acquired by a session bound to `serfHealth` and the service's check with
//!   `Behavior=delete`, so the entry vanishes with the instance. Sessions use
//!   `NodeChecks`/`ServiceChecks` (Consul ≥ 1.7).
//! - Discovery runs **blocking queries** on the health of the service
//!   (passing only) and on the KV prefix, and lists an instance while it is
//!   passing, with its KV record (or, for Go-written instances, its `node`
//!   meta when its `env` meta is the reader's env). Entries under the prefix
//!   or the service name that are not ours are skipped and counted by core,
//!   never fatal.
//!
//! # The per-app layout (opt-in)
//!
//! The layout above is the Go framework's and the default. Its cost grows
//! with the env: each change wakes every discoverer's blocking queries,
//! which answer with the whole env (about 3.7 KB per instance per change;
//! propagation p99 907 ms at 2,000 instances, `docs/performance.md`). With
//! [`Layout::PerApp`] — `consul://host:8500?layout=per-app`, or
//! [`ConsulConfig::with_layout`] — each app is its own service,
//! `<namespace>-<env>-<app_id>` (same IDs, meta, check, KV record, session
//! and operator marks), and discovery blocks on the env's app folders in KV
//! (`?keys&separator=/`) and on each app's KV prefix, reading an app's
//! passing instances only when its prefix changed. A change then costs its
//! own app's records plus the list of app names, and reaches the
//! discoverer as an incremental change.
//!
//! The trade-offs: Go readers look only at `<namespace>-<env>`, so they do
//! not see per-app instances (and per-app readers do not see Go or
//! single-layout instances): every process of an env uses one layout. Names
//! must be what Consul's DNS interface serves — letters, digits and `-`,
//! the service name at most 63 bytes — or registrars and discoverers are
//! refused with `InvalidConfig` naming the field. A discoverer holds
//! `1 + apps` blocking connections to its agent, which counts connections
//! per client address against `limits.http_max_conns_per_client` (200 by
//! default): raise it for envs of more than about 100 apps.
//!
//! # Go services on the same Consul
//!
//! Go instances (service `<namespace>-<env>`, ID
//! `<namespace>-<env>-<app_id>-<lease_id>-<uuid>`, `Address` `host:port` with
//! `Port` 0, the whole node in meta `node`) are discovered from that meta, with
//! `weight`, `methods: null` and every other field as written.
//!
//! A **Go reader sees a Rust node exactly when its Go-shaped JSON is at most
//! 512 bytes**: Go readers look only at meta `node` (with meta `env` equal to
//! theirs), and that JSON is what the Go writer itself would write for the
//! node (its fields, its order), so the limit is the one at which the Go
//! writer fails with HTTP 400: 6 methods named like `/shop.v1.Orders/MethodNN`
//! (490 bytes; each such method adds 32), measured by
//! `registry-consul/tests/interop.rs` on a real agent. A larger
//! Rust node is still fully discovered by Rust readers (from KV), but is
//! invisible to Go readers; `ServiceNode::to_go_json().len()` tells in advance.
//!
//! # The HTTP client
//!
//! `rs-consul` does the KV writes and deletes. The calls it lacks — agent
//! service register/deregister, TTL check pass, sessions bound to checks,
//! health with service meta, and KV listing that keeps the index of an empty
//! prefix — are a small typed module over the same HTTP client (one pooled
//! hyper client shared by both).
//!
//! # ACL tokens
//!
//! The token ([`ConsulConfig::token`], or `consul://token@host:port`) is
//! sent as a sensitive `X-Consul-Token` header; it never appears in `Debug`
//! output, logs or error text. A token Consul does not know is
//! `PermissionDenied` at [`ConsulStore::connect`].
//!
//! # Errors
//!
//! See the `error` module: an agent that cannot be reached is
//! `BackendUnavailable`, 403 is `PermissionDenied`, size limits are
//! `TooLarge`, an unknown check on heartbeat is `LeaseExpired` (core
//! registers again).
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

mod agent;
mod client;
mod config;
mod error;
mod names;
mod operator;
mod per_app;
mod reader;
mod store;
mod writer;

pub use config::{
    ConsulConfig, DEFAULT_ADDRESS, DEFAULT_PORT, DEFAULT_REQUEST_TIMEOUT, DEFAULT_WATCH_WAIT, Layout, MAX_WATCH_WAIT,
};
pub use error::{KV_VALUE_LIMIT, META_VALUE_LIMIT, MIN_DEREGISTER_AFTER};
pub use store::ConsulStore;

use std::sync::Arc;

use registry_core::store::{BackendSpec, Store};

/// The Consul backend: `consul://…` and `consuls://…` URLs ([`ConsulConfig::from_url`]).
pub const BACKEND: BackendSpec = BackendSpec {
    name: "consul",
    schemes: &["consul", "consuls"],
    connect: |url| {
        Box::pin(
            async move { Ok(Arc::new(ConsulStore::connect(url.parse::<ConsulConfig>()?).await?) as Arc<dyn Store>) },
        )
    },
};
