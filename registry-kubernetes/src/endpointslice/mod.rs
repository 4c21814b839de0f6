//! `endpointslice` mode: instances are the endpoints Kubernetes keeps for a
//! Service, methods are declared once per app on the Service.
//!
//! **Discovery** watches two things in the namespace and joins them:
//!
//! - Services labelled `<prefix>/type=service,<prefix>/env=<env>`. Each is
//!   one app (`<prefix>/app`, else the Service's name) and carries the
//!   app-wide part of a node in annotations: `<prefix>/methods` (a JSON list
//!   of `/pkg.Service/Method` paths), `<prefix>/version`, `<prefix>/weight`
//!   and optionally `<prefix>/port` (the port's name or number).
//! - Every EndpointSlice with a `kubernetes.io/service-name` label. The
//!   slices of one Service are **merged** (a Service has several once it
//!   passes 100 endpoints, and two during a rebalancing; go-zero's resolver
//!   rebuilt its set from one slice and lost endpoints).
//!
//! An endpoint is a node while its `ready` condition holds (`nil` counts as
//! ready, the API's rule). One that is `serving` and `terminating` is a
//! draining node (discovery answers it only with `DrainingNodes::Last`); any
//! other is not a node. Its `address:port` is `network.internal` (the port
//! named by the `port` annotation, else the one named `grpc`, else the
//! slice's only port; a Service with several ports and none of these is
//! reported malformed), its zone `network.sn`, and its lease id a stable
//! hash of its Pod's UID ([`instance_id`]) — the id the registrar in that
//! Pod was granted, so an instance finds itself in discovery.
//!
//! With [`AddressMode::Service`] (`address=service`), each Service is one
//! node while it has a ready endpoint, addressed by its cluster DNS name and
//! port (`<svc>.<ns>.svc.<cluster domain>:<port>`): discovery answers which
//! Service serves a method and the mesh (Istio) balances.
//!
//! **Registration** writes no per-instance record. `install` merges the
//! node's methods into its Service's `methods` annotation (a union: an
//! instance never removes another version's methods; `registryctl publish
//! --replace` does) and writes `version` and `weight`, with the Service's
//! `resourceVersion` as precondition (409: re-read, retry with backoff),
//! never touching other annotations and skipping the write when nothing
//! changes. The Service must exist (it is a deployment's object, with its
//! selector and ports). `<prefix>/registered` is the instance's own
//! switch: when its Pod declares that condition type as a readiness gate,
//! install sets the condition `True` and uninstall or drain `False`, so the
//! kubelet takes the Pod out of every endpoint list — ours, kube-proxy's,
//! the mesh's. Liveness is Kubernetes': nothing is renewed
//! (`StoreWriter::needs_heartbeats` is false), a crash is seen when the
//! kubelet marks the endpoint not ready.
//!
//! The parts: `parse.rs` reads a Service's declaration and an endpoint's
//! state and port; `view.rs` turns a Service and its slices into records;
//! `reader.rs` watches both kinds and joins them; `writer.rs` declares
//! methods on the Service and keeps the instance's readiness gate.

use std::time::Duration;

const SERVICES: &str = "services";
const SLICES: &str = "endpointslices";
/// The label the EndpointSlice controller puts on a Service's slices.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The port name used when the Service names none in `<prefix>/port`.
pub const DEFAULT_PORT_NAME: &str = "grpc";

const CONFLICT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const CONFLICT_BACKOFF_MAX: Duration = Duration::from_millis(250);
/// A Service's declaration is one object that every instance of an app may
/// write at once (a Deployment's Pods starting together with a new method
/// set): each 409 means another writer landed, so a writer keeps trying,
/// with short jittered pauses, up to this many times `max_conflict_retries`
/// (the caller's deadline — core bounds an install by the TTL — still holds).
const CONFLICT_ROUNDS: u32 = 3;

/// The lease id of an instance in `endpointslice` mode: a stable 63-bit hash
/// (FNV-1a) of its Pod's UID, never 0. The registrar in the Pod and every
/// discoverer compute the same id.
pub fn instance_id(uid: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in uid.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Masked to 63 bits, so the cast keeps the value and it is never negative.
    let id = (hash & (i64::MAX as u64)) as i64;
    if id == 0 { 1 } else { id }
}

mod parse;
mod reader;
mod view;
mod writer;

pub(crate) use parse::{methods_value, parse_methods};
pub(crate) use reader::SliceReader;
pub(crate) use view::View;
pub use writer::Published;
pub(crate) use writer::{Declaration, SliceWriter, declare};
