//! The registered record: [`ServiceNode`] and its parts.
//!
//! The JSON field names are a wire contract shared with the Go framework
//! (`proto_count`, `lease_id`, `weight`, `run_date`, `methods`, `network`,
//! `kernel`, `meta`): a record written by a Go service deserialises here, and
//! one we write is readable there. Fields this library adds
//! (`registered_at_ms`, `renewed_at_ms`, `ttl`) are optional and ignored by Go
//! readers; missing fields default (`weight` to [`DEFAULT_WEIGHT`]), and every
//! field the Go writer can emit as `null` (`methods` of a node registered
//! without methods, `network`, `kernel`, `meta`) reads as empty, so either side
//! can read the other's records.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A node's gRPC methods, `/pkg.Service/Method` → `true`, serialised as the
/// plain JSON object the Go framework writes.
///
/// The map is shared copy-on-write: instances of one app usually serve the
/// same methods, and discovery keeps one copy for all of them (about half of
/// a node's memory). Read it like a `BTreeMap`; [`Methods::insert`] and
/// [`Methods::remove`] copy only when shared.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Methods(Arc<BTreeMap<String, bool>>);

impl Methods {
    /// Adds or replaces a method.
    pub fn insert(&mut self, method: impl Into<String>, served: bool) -> Option<bool> {
        Arc::make_mut(&mut self.0).insert(method.into(), served)
    }

    /// Removes a method.
    pub fn remove(&mut self, method: &str) -> Option<bool> {
        Arc::make_mut(&mut self.0).remove(method)
    }

    /// True when both share one allocation.
    pub fn ptr_eq(&self, other: &Methods) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Deref for Methods {
    type Target = BTreeMap<String, bool>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl From<BTreeMap<String, bool>> for Methods {
    fn from(map: BTreeMap<String, bool>) -> Self {
        Methods(Arc::new(map))
    }
}

impl FromIterator<(String, bool)> for Methods {
    fn from_iter<I: IntoIterator<Item = (String, bool)>>(iter: I) -> Self {
        Methods(Arc::new(iter.into_iter().collect()))
    }
}

impl Serialize for Methods {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Methods {
    /// An object of booleans, or `null` (what the Go writer emits for a node
    /// registered without methods), which reads as no methods.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Option::<BTreeMap<String, bool>>::deserialize(deserializer).map(|m| Methods::from(m.unwrap_or_default()))
    }
}

/// Reads `null` as the type's default: Go's pointer and map fields
/// (`*Network`, `*Kernel`, `*Meta`) are written as `null` when unset.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

/// Weight of a node that states none (a record written before the Go
/// framework added `weight`), and of nodes registered with the default
/// [`crate::ServiceConf`].
pub const DEFAULT_WEIGHT: i64 = 100;

/// Who a service is: environment, application and version.
///
/// `env` separates environments completely: a discoverer of one env never
/// sees nodes of another.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Meta {
    /// Environment (`prod`, `staging`, …).
    pub env: String,
    /// Application id; instances of several versions share one app id.
    pub app_id: String,
    /// Version of this instance.
    pub version: String,
}

impl Meta {
    /// Builds a `Meta` from its three parts.
    pub fn new(env: impl Into<String>, app_id: impl Into<String>, version: impl Into<String>) -> Self {
        Self { env: env.into(), app_id: app_id.into(), version: version.into() }
    }
}

/// Where an instance listens.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Network {
    /// Network-card / zone identifier; gateways prefer nodes with their own `sn`.
    pub sn: String,
    /// Address reachable inside the cluster (`host:port`).
    pub internal: String,
    /// Address reachable from outside, if any.
    pub external: String,
}

/// What runtime an instance runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Kernel {
    /// Implementation language (`rust` for services using this library; the Go framework writes `Golang`).
    pub language: String,
    /// Version of the framework or library.
    pub version: String,
}

/// One registered instance of a service: identity, addresses and the gRPC
/// methods it serves.
///
/// `methods` maps full gRPC paths (`/pkg.Service/Method`) to `true`, the shape
/// the Go framework writes. Build it with [`crate::GrpcServices`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceNode {
    /// Number of gRPC services (proto service definitions) the instance serves.
    pub proto_count: i64,
    /// Instance identity within its app (etcd: the lease id; elsewhere a unique local id).
    pub lease_id: i64,
    /// Relative share of calls a weighted balancer sends to this instance
    /// ([`DEFAULT_WEIGHT`] when the record has no `weight`). Kept exactly as
    /// written: the Go framework writes `0` for a node whose weight was never
    /// set, and `registry::balance` reads a weight ≤ 0 as [`DEFAULT_WEIGHT`].
    pub weight: i64,
    /// Last heartbeat in the writer's local time, Go layout `YYYY-MM-DD HH:MM:SS`.
    ///
    /// Informational only: expiry never depends on it, because writers' clocks
    /// and time zones differ from the reader's.
    pub run_date: String,
    /// Served gRPC methods, `/pkg.Service/Method` → `true` (`null` reads as none).
    pub methods: Methods,
    /// Addresses (`null` reads as empty).
    #[serde(deserialize_with = "null_as_default")]
    pub network: Network,
    /// Runtime (`null` reads as empty).
    #[serde(deserialize_with = "null_as_default")]
    pub kernel: Kernel,
    /// Identity (`null` reads as empty).
    #[serde(deserialize_with = "null_as_default")]
    pub meta: Meta,
    /// First registration of this instance, UTC milliseconds since the Unix
    /// epoch. Orders nodes "newest registration first" in a fresh listing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registered_at_ms: Option<i64>,
    /// Last heartbeat, UTC milliseconds since the Unix epoch. Heartbeat-based
    /// stores use its change (not its value) as the sign of life.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewed_at_ms: Option<i64>,
    /// The writer's TTL in seconds: how long a heartbeat-based reader waits
    /// for the next change before hiding the node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// The instance is shutting down: registered, finishing its calls, and
    /// taking no new ones ([`crate::Register::drain`]). Written only while
    /// true. Go readers ignore the field, so a Go gateway keeps sending to a
    /// draining Rust instance until it uninstalls.
    ///
    /// In nodes answered by discovery it is the instance's effective state:
    /// true also when an operator drained it (`drained_by_operator`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// An operator marked the instance draining from outside
    /// (`registryctl drain`, [`crate::operator::Operator`]), whatever the
    /// instance itself says; only an operator clears it (`registryctl
    /// undrain`). The instance's own writes (installs, heartbeats, its own
    /// drain and undrain) keep the mark: stores that keep it inside the
    /// record carry it over, the others keep it beside the record. Go readers
    /// ignore it. A registrar never sets it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub drained_by_operator: bool,
}

impl Default for ServiceNode {
    fn default() -> Self {
        Self {
            proto_count: 0,
            lease_id: 0,
            weight: DEFAULT_WEIGHT,
            run_date: String::new(),
            methods: Methods::default(),
            network: Network::default(),
            kernel: Kernel::default(),
            meta: Meta::default(),
            registered_at_ms: None,
            renewed_at_ms: None,
            ttl: None,
            draining: false,
            drained_by_operator: false,
        }
    }
}

/// The node as the Go framework's struct declares it: its fields only, in its
/// order. Written where only a Go reader looks (Consul's service meta `node`,
/// whose 512-character limit the additions would push small nodes over).
#[derive(Serialize)]
struct GoNode<'a> {
    proto_count: i64,
    lease_id: i64,
    weight: i64,
    run_date: &'a str,
    methods: &'a Methods,
    network: &'a Network,
    kernel: &'a Kernel,
    meta: &'a Meta,
}

impl ServiceNode {
    /// True if the node declares `method` (a full `/pkg.Service/Method` path).
    pub fn serves(&self, method: &str) -> bool {
        self.methods.get(method).copied().unwrap_or(false)
    }

    /// The methods this node serves, in sorted order.
    pub fn served_methods(&self) -> impl Iterator<Item = &str> {
        self.methods.iter().filter(|(_, on)| **on).map(|(m, _)| m.as_str())
    }

    /// Serialises the node as the JSON stored in every backend.
    pub fn to_json(&self) -> crate::Result<String> {
        serde_json::to_string(self).map_err(|e| crate::Error::Encode { reason: e.to_string() })
    }

    /// Serialises only the fields the Go framework's `ServiceNode` has, in its
    /// field order: the form for places only Go readers look at.
    pub fn to_go_json(&self) -> crate::Result<String> {
        let go = GoNode {
            proto_count: self.proto_count,
            lease_id: self.lease_id,
            weight: self.weight,
            run_date: &self.run_date,
            methods: &self.methods,
            network: &self.network,
            kernel: &self.kernel,
            meta: &self.meta,
        };
        serde_json::to_string(&go).map_err(|e| crate::Error::Encode { reason: e.to_string() })
    }

    /// Parses a node from its stored JSON (unknown fields ignored).
    pub fn from_json(raw: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(raw)
    }
}

/// Formats a time the way the Go framework writes `run_date`.
pub(crate) fn go_run_date(now: chrono::DateTime<chrono::Local>) -> String {
    now.format("%Y-%m-%d %H:%M:%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `orders` record the real Go framework wrote to etcd, byte for byte
    /// (`conformance/interop/go-framework/etcd-records.json`), plus a field
    /// from a newer Go version that we do not know.
    const GO_NODE: &str = r#"{"proto_count":1,"lease_id":8109190794186803717,"weight":50,"run_date":"2026-11-25 00:33:49","methods":{"/shop.v1.Orders/Create":true,"/shop.v1.Orders/Get":true,"/shop.v1.Orders/List":true},"network":{"sn":"firefly-main-network","internal":"10.1.2.3:9001","external":"127.0.0.1"},"kernel":{"language":"Golang","version":"v0.0.1"},"meta":{"env":"prod","app_id":"orders","version":"v1"},"zone":"eu-1"}"#;

    #[test]
    fn go_record_deserialises_with_unknown_fields_ignored() {
        let node = ServiceNode::from_json(GO_NODE).expect("Go shape parses");
        assert_eq!(node.proto_count, 1);
        assert_eq!(node.lease_id, 8109190794186803717);
        assert_eq!(node.weight, 50);
        assert_eq!(node.run_date, "2026-11-25 00:33:49");
        assert!(node.serves("/shop.v1.Orders/List"));
        assert_eq!(node.network.internal, "10.1.2.3:9001");
        assert_eq!(node.network.external, "127.0.0.1");
        assert_eq!(node.kernel.language, "Golang");
        assert_eq!(node.meta, Meta::new("prod", "orders", "v1"));
        assert_eq!(node.registered_at_ms, None);
    }

    #[test]
    fn our_record_has_every_go_field_under_its_go_name() {
        let node = ServiceNode::from_json(GO_NODE).expect("parses");
        let value: serde_json::Value = serde_json::from_str(&node.to_json().expect("encodes")).expect("json");
        for field in ["proto_count", "lease_id", "run_date", "methods", "network", "kernel", "meta"] {
            assert!(value.get(field).is_some(), "missing {field}");
        }
        assert_eq!(value["network"]["sn"], "firefly-main-network");
        assert_eq!(value["kernel"]["version"], "v0.0.1");
        assert_eq!(value["meta"]["app_id"], "orders");
        assert_eq!(value["methods"]["/shop.v1.Orders/Get"], true);
        assert_eq!(value["weight"], 50);
        // Optional additions are left out when unset, so Go-written nodes round-trip byte-compatible.
        assert!(value.get("registered_at_ms").is_none());
        let back = ServiceNode::from_json(&node.to_json().expect("encodes")).expect("parses");
        assert_eq!(back, node);
    }

    #[test]
    fn missing_fields_default() {
        let node = ServiceNode::from_json(r#"{"meta":{"env":"dev","app_id":"a"}}"#).expect("parses");
        assert_eq!(node.meta.version, "");
        assert!(node.methods.is_empty());
        assert_eq!(node.weight, DEFAULT_WEIGHT);
    }

    #[test]
    fn go_null_fields_read_as_empty() {
        let raw = r#"{"proto_count":1,"lease_id":5,"weight":0,"run_date":"","methods":null,
                      "network":null,"kernel":null,"meta":null}"#;
        let node = ServiceNode::from_json(raw).expect("nulls parse");
        assert!(node.methods.is_empty());
        assert_eq!(node.network, Network::default());
        assert_eq!(node.kernel, Kernel::default());
        assert_eq!(node.meta, Meta::default());
        assert_eq!(node.weight, 0, "a written weight is kept as written");
    }

    #[test]
    fn go_json_has_go_fields_only_in_go_order() {
        let mut node = ServiceNode::from_json(GO_NODE).expect("parses");
        node.registered_at_ms = Some(1);
        node.renewed_at_ms = Some(2);
        node.ttl = Some(10);
        let go = node.to_go_json().expect("encodes");
        let fields: Vec<&str> =
            ["proto_count", "lease_id", "weight", "run_date", "methods", "network", "kernel", "meta"]
                .into_iter()
                .collect();
        let mut at = 0;
        for field in &fields {
            let pos = go.find(&format!("\"{field}\":")).unwrap_or_else(|| panic!("missing {field} in {go}"));
            assert!(pos >= at, "{field} out of Go order in {go}");
            at = pos;
        }
        let value: serde_json::Value = serde_json::from_str(&go).expect("json");
        assert_eq!(value.as_object().map(|o| o.len()), Some(fields.len()), "{go}");
        // What the Go writer wrote, byte for byte (less the unknown field).
        assert_eq!(go, GO_NODE.replace(r#","zone":"eu-1""#, ""));
    }

    #[test]
    fn run_date_uses_go_layout() {
        let t = chrono::DateTime::parse_from_rfc3339("2025-01-02T03:04:05+00:00").expect("time");
        let local = t.with_timezone(&chrono::Local);
        let s = go_run_date(local);
        assert_eq!(s.len(), "2006-01-02 15:04:05".len());
        assert_eq!(&s[4..5], "-");
        assert_eq!(&s[10..11], " ");
    }
}
