//! Records captured from the real Go framework, and the Go readers' rules.
//!
//! The files under `conformance/interop/go-framework/` were captured from a
//! live etcd 3.5.16 and Consul 1.8.7 while the Go framework's own
//! `registry/etcd` and `registry/consul` code registered instances (see the
//! README there). Tests write them raw into real servers and discover them
//! through the public API; and they decode what this library writes with the
//! Go readers' rules ([`go_etcd_read`], [`go_consul_read`]), a serde model of
//! the Go struct ([`GoServiceNode`]) with Go's field types.

use std::collections::BTreeMap;

use registry_core::ServiceNode;
use serde::Deserialize;
use serde_json::Value;

/// `etcdctl get --prefix ""` of the etcd the Go services registered on.
pub const ETCD_RECORDS: &str = include_str!("../interop/go-framework/etcd-records.json");
/// `GET /v1/agent/services` of the agent the Go service registered with.
pub const CONSUL_AGENT_SERVICES: &str = include_str!("../interop/go-framework/consul-agent-services.json");
/// `GET /v1/health/service/shop-prod?passing=1` of that agent.
pub const CONSUL_HEALTH_SERVICE: &str = include_str!("../interop/go-framework/consul-health-service.json");

/// One captured etcd key and value.
#[derive(Clone, Debug, Deserialize)]
pub struct EtcdRecord {
    /// The key, e.g. `shop/prod/orders/8109190794186803717`.
    pub key: String,
    /// The value, the node JSON exactly as the Go writer put it.
    pub value: String,
}

/// The captured etcd records.
pub fn etcd_records() -> Vec<EtcdRecord> {
    serde_json::from_str(ETCD_RECORDS).expect("the captured etcd records are valid JSON")
}

/// The captured agent services (`GET /v1/agent/services`), by service ID.
pub fn consul_agent_services() -> BTreeMap<String, Value> {
    serde_json::from_str(CONSUL_AGENT_SERVICES).expect("the captured agent services are valid JSON")
}

/// The Go framework's `ServiceNode` as `encoding/json` reads it: `int` fields
/// must be JSON integers, `methods` an object of booleans or `null`,
/// `network`/`kernel`/`meta` objects or `null`; unknown fields are ignored and
/// missing ones are zero values. A value that does not decode is skipped by a
/// Go reader.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct GoServiceNode {
    /// `ProtoCount int`.
    pub proto_count: i64,
    /// `LeaseId int`.
    pub lease_id: i64,
    /// `Weight int`.
    pub weight: i64,
    /// `RunDate string`.
    pub run_date: String,
    /// `Methods map[string]bool`.
    pub methods: Option<BTreeMap<String, bool>>,
    /// `Network *Network`.
    pub network: Option<GoNetwork>,
    /// `Kernel *Kernel`.
    pub kernel: Option<GoKernel>,
    /// `Meta *Meta`.
    pub meta: Option<GoMeta>,
}

/// The Go `Network`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct GoNetwork {
    /// `SN string`.
    pub sn: String,
    /// `Internal string`.
    pub internal: String,
    /// `External string`.
    pub external: String,
}

/// The Go `Kernel`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct GoKernel {
    /// `Language string`.
    pub language: String,
    /// `Version string`.
    pub version: String,
}

/// The Go `Meta`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct GoMeta {
    /// `Env string`.
    pub env: String,
    /// `AppId string`.
    pub app_id: String,
    /// `Version string`.
    pub version: String,
}

/// What a Go etcd reader of `namespace`/`env` keeps of `records` (key,
/// value): every value under the prefix `<namespace>/<env>` (no trailing
/// slash, as the Go reader has it) that decodes into [`GoServiceNode`].
pub fn go_etcd_read<'a>(
    records: impl IntoIterator<Item = (&'a str, &'a str)>,
    namespace: &str,
    env: &str,
) -> Vec<GoServiceNode> {
    let prefix = format!("{namespace}/{env}");
    records
        .into_iter()
        .filter(|(key, _)| key.starts_with(&prefix))
        .filter_map(|(_, value)| serde_json::from_str(value).ok())
        .collect()
}

/// What a Go Consul reader of `env` keeps of a `health/service/<ns>-<env>?passing`
/// answer: entries whose service meta `env` is `env` and whose meta `node`
/// is non-empty, decodes into [`GoServiceNode`] and has non-empty
/// `meta.app_id` and `meta.env`. Nothing outside the service meta is read.
pub fn go_consul_read(health: &Value, env: &str) -> Vec<GoServiceNode> {
    let entries = health.as_array().map(Vec::as_slice).unwrap_or_default();
    entries
        .iter()
        .filter_map(|entry| {
            let meta = entry.get("Service")?.get("Meta")?;
            if meta.get("env")?.as_str()? != env {
                return None;
            }
            let node = meta.get("node")?.as_str().filter(|n| !n.is_empty())?;
            let node: GoServiceNode = serde_json::from_str(node).ok()?;
            let m = node.meta.as_ref()?;
            (!m.app_id.is_empty() && !m.env.is_empty()).then_some(node)
        })
        .collect()
}

impl GoServiceNode {
    /// Decodes a node JSON the way a Go reader does (`None`: a Go reader skips it).
    pub fn decode(json: &str) -> Option<Self> {
        serde_json::from_str(json).ok()
    }
}

/// Checks that `node` (as this library read a record) carries every field
/// of `go` (as a Go reader reads the same record) with the same value; Go's
/// `null` (methods, network, kernel, meta) equals empty. Names every field
/// that differs.
pub fn same_fields(node: &ServiceNode, go: &GoServiceNode) -> anyhow::Result<()> {
    let mut differ = Vec::new();
    let mut check = |field: &str, ours: String, theirs: String| {
        if ours != theirs {
            differ.push(format!("{field}: ours {ours}, Go {theirs}"));
        }
    };
    check("proto_count", node.proto_count.to_string(), go.proto_count.to_string());
    check("lease_id", node.lease_id.to_string(), go.lease_id.to_string());
    check("weight", node.weight.to_string(), go.weight.to_string());
    check("run_date", node.run_date.clone(), go.run_date.clone());
    check("methods", format!("{:?}", *node.methods), format!("{:?}", go.methods.clone().unwrap_or_default()));
    let network = go.network.clone().unwrap_or_default();
    check("network.sn", node.network.sn.clone(), network.sn);
    check("network.internal", node.network.internal.clone(), network.internal);
    check("network.external", node.network.external.clone(), network.external);
    let kernel = go.kernel.clone().unwrap_or_default();
    check("kernel.language", node.kernel.language.clone(), kernel.language);
    check("kernel.version", node.kernel.version.clone(), kernel.version);
    let meta = go.meta.clone().unwrap_or_default();
    check("meta.env", node.meta.env.clone(), meta.env);
    check("meta.app_id", node.meta.app_id.clone(), meta.app_id);
    check("meta.version", node.meta.version.clone(), meta.version);
    anyhow::ensure!(differ.is_empty(), "node {} differs from the Go reading: {}", node.lease_id, differ.join("; "));
    Ok(())
}

/// Checks what a Go reader needs to use a node it decoded: `methods` an
/// object (not `null`), `network`, `kernel` and `meta` present, `meta.app_id`
/// and `meta.env` non-empty, `network.internal` set.
pub fn usable_by_go(go: &GoServiceNode) -> anyhow::Result<()> {
    anyhow::ensure!(go.methods.is_some(), "methods is null: {go:?}");
    let network = go.network.as_ref().ok_or_else(|| anyhow::anyhow!("network is null: {go:?}"))?;
    anyhow::ensure!(!network.internal.is_empty() && !network.sn.is_empty(), "network {network:?}");
    let kernel = go.kernel.as_ref().ok_or_else(|| anyhow::anyhow!("kernel is null: {go:?}"))?;
    anyhow::ensure!(!kernel.language.is_empty(), "kernel {kernel:?}");
    let meta = go.meta.as_ref().ok_or_else(|| anyhow::anyhow!("meta is null: {go:?}"))?;
    anyhow::ensure!(!meta.app_id.is_empty() && !meta.env.is_empty(), "meta {meta:?}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_captures_decode_with_the_go_rules() {
        let records = etcd_records();
        assert_eq!(records.len(), 3);
        let shop = go_etcd_read(records.iter().map(|r| (r.key.as_str(), r.value.as_str())), "shop", "prod");
        assert_eq!(shop.len(), 2, "orders and bare");
        let bare = shop.iter().find(|n| n.methods.is_none()).expect("the bare node has methods: null");
        assert_eq!(bare.meta.as_ref().map(|m| m.app_id.as_str()), Some("bare"));
        let health: Value = serde_json::from_str(CONSUL_HEALTH_SERVICE).expect("json");
        let nodes = go_consul_read(&health, "prod");
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].weight, 50);
        assert!(go_consul_read(&health, "staging").is_empty());
        assert_eq!(consul_agent_services().len(), 1);
    }

    #[test]
    fn our_parse_of_each_capture_has_the_go_fields() {
        for record in etcd_records() {
            let go = GoServiceNode::decode(&record.value).expect("Go decodes it");
            let ours = ServiceNode::from_json(&record.value).expect("we parse it");
            same_fields(&ours, &go).expect("same fields");
        }
        let mut other = ServiceNode::from_json(&etcd_records()[1].value).expect("parses");
        other.weight = 7;
        let go = GoServiceNode::decode(&etcd_records()[1].value).expect("decodes");
        assert!(same_fields(&other, &go).is_err(), "a different weight is noticed");
        assert!(usable_by_go(&go).is_ok());
        let bare = GoServiceNode::decode(&etcd_records()[0].value).expect("decodes");
        assert!(usable_by_go(&bare).is_err(), "methods: null is not usable");
    }
}
