//! [`View`]: how discovery in this mode turns Services and their slices
//! into records, and where nodes are addressed.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use registry_core::store::RawRecord;
use registry_core::{Meta, Network, Result, ServiceNode};

use super::parse::{AppInfo, EndpointState, pick_port, service_port, state_of};
use super::*;
use crate::config::AddressMode;
use crate::encode::Names;

/// How discovery in this mode addresses nodes, and where.
#[derive(Clone, Debug)]
pub(crate) struct View {
    pub(super) names: Names,
    pub(super) env: String,
    namespace: String,
    address: AddressMode,
    cluster_domain: String,
}

impl View {
    pub(crate) fn new(
        names: Names,
        env: String,
        namespace: String,
        address: AddressMode,
        cluster_domain: String,
    ) -> Self {
        Self { names, env, namespace, address, cluster_domain }
    }

    /// The node JSON of one instance (or Service) of `app`.
    fn node(&self, app: &AppInfo, lease_id: i64, internal: String, sn: String, draining: bool) -> Result<String> {
        let services: BTreeSet<&str> =
            app.methods.keys().filter_map(|m| m.trim_start_matches('/').split_once('/').map(|(s, _)| s)).collect();
        let node = ServiceNode {
            proto_count: i64::try_from(services.len()).unwrap_or(i64::MAX),
            lease_id,
            weight: app.weight,
            methods: app.methods.clone(),
            network: Network { sn, internal, external: String::new() },
            meta: Meta::new(self.env.clone(), app.app_id.clone(), app.version.clone()),
            draining,
            ..ServiceNode::default()
        };
        node.to_json()
    }

    /// The records of Service `service` (`app` read from it) over its slices.
    pub(super) fn records(
        &self,
        service: &str,
        app: &AppInfo,
        slices: &[&EndpointSlice],
    ) -> std::result::Result<Vec<RawRecord>, String> {
        // key → (record, ready): an endpoint listed twice (two slices during a
        // rebalancing) counts once, ready over draining.
        let mut found: BTreeMap<String, (RawRecord, bool)> = BTreeMap::new();
        let mut any_ready = false;
        let mut any_draining = false;
        for slice in slices {
            if slice.address_type == "FQDN" {
                continue;
            }
            let Some(port) = pick_port(app, slice)? else { continue };
            for endpoint in &slice.endpoints {
                let Some(state) = state_of(endpoint) else { continue };
                let ready = state == EndpointState::Ready;
                any_ready |= ready;
                any_draining |= !ready;
                if self.address == AddressMode::Service {
                    continue;
                }
                let Some(ip) = endpoint.addresses.first() else { continue };
                let address = if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") };
                let key = format!("{service}/{address}");
                if found.get(&key).is_some_and(|(_, was_ready)| *was_ready || !ready) {
                    continue;
                }
                let uid = endpoint
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.uid.as_deref());
                let lease_id = instance_id(uid.unwrap_or(&key));
                let sn = endpoint.zone.clone().unwrap_or_default();
                let value = self.node(app, lease_id, address, sn, !ready).map_err(|e| e.to_string())?;
                found.insert(key.clone(), (RawRecord::new(key, value), ready));
            }
        }
        if self.address == AddressMode::Service {
            if !any_ready && !any_draining {
                return Ok(Vec::new());
            }
            let port = service_port(app)?;
            let internal = format!("{service}.{}.svc.{}:{port}", self.namespace, self.cluster_domain);
            let value = self
                .node(
                    app,
                    instance_id(if app.uid.is_empty() { service } else { &app.uid }),
                    internal,
                    String::new(),
                    !any_ready,
                )
                .map_err(|e| e.to_string())?;
            return Ok(vec![RawRecord::new(service.to_owned(), value)]);
        }
        Ok(found.into_values().map(|(record, _)| record).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpointslice::parse::{Parsed, parse_service};
    use k8s_openapi::api::core::v1::Service;

    fn service(annotations: serde_json::Value, ports: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "greeter", "uid": "svc-uid", "labels": {}, "annotations": annotations },
            "spec": { "ports": ports },
        }))
        .unwrap_or_default()
    }

    fn slice(name: &str, endpoints: serde_json::Value, ports: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { SERVICE_NAME_LABEL: "greeter" } },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn view(address: AddressMode) -> View {
        View::new(Names::new(crate::DEFAULT_PREFIX), "prod".into(), "ns".into(), address, "cluster.local".into())
    }

    fn app() -> AppInfo {
        let names = Names::new(crate::DEFAULT_PREFIX);
        let svc = service(
            serde_json::json!({ "registry.fireflycore.io/methods": "[\"/a.B/C\",\"/a.B/D\"]", "registry.fireflycore.io/version": "v2" }),
            serde_json::json!([{ "name": "grpc", "port": 80 }, { "name": "http", "port": 81 }]),
        );
        match parse_service(&names, &svc) {
            Parsed::App(app) => *app,
            Parsed::Malformed(reason) => panic!("{reason}"),
        }
    }

    fn endpoint(ip: &str, uid: &str, ready: bool, serving: bool, terminating: bool) -> serde_json::Value {
        serde_json::json!({
            "addresses": [ip],
            "conditions": { "ready": ready, "serving": serving, "terminating": terminating },
            "targetRef": { "kind": "Pod", "uid": uid, "name": uid },
            "zone": "z1",
        })
    }

    #[test]
    fn endpoints_of_every_slice_become_nodes() {
        let ports = serde_json::json!([{ "name": "http", "port": 8081 }, { "name": "grpc", "port": 9090 }]);
        let a = slice("a", serde_json::json!([endpoint("10.0.0.1", "u1", true, true, false)]), ports.clone());
        let b = slice(
            "b",
            serde_json::json!([
                endpoint("10.0.0.2", "u2", false, true, true),
                endpoint("10.0.0.3", "u3", false, false, false),
                // Listed twice (a rebalancing): counted once, ready wins.
                endpoint("10.0.0.1", "u1", false, true, true),
            ]),
            ports,
        );
        let records =
            view(AddressMode::Endpoint).records("greeter", &app(), &[&a, &b]).unwrap_or_else(|e| panic!("{e}"));
        let nodes: Vec<ServiceNode> =
            records.iter().map(|r| ServiceNode::from_json(&r.value).unwrap_or_else(|e| panic!("{e}"))).collect();
        assert_eq!(nodes.len(), 2, "{records:?}");
        assert_eq!(nodes[0].network.internal, "10.0.0.1:9090");
        assert!(!nodes[0].draining);
        assert_eq!(nodes[0].lease_id, instance_id("u1"));
        assert_eq!(nodes[0].network.sn, "z1");
        assert_eq!(nodes[0].meta.version, "v2");
        assert!(nodes[0].serves("/a.B/D"));
        assert_eq!(nodes[0].proto_count, 1);
        assert_eq!(nodes[1].network.internal, "10.0.0.2:9090");
        assert!(nodes[1].draining, "serving and terminating: draining");
    }

    #[test]
    fn service_address_mode_gives_one_node_per_service() {
        let a = slice(
            "a",
            serde_json::json!([endpoint("10.0.0.1", "u1", true, true, false)]),
            serde_json::json!([{ "name": "grpc", "port": 9090 }]),
        );
        let records = view(AddressMode::Service).records("greeter", &app(), &[&a]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(records.len(), 1);
        let node = ServiceNode::from_json(&records[0].value).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(node.network.internal, "greeter.ns.svc.cluster.local:80");
        let none = slice("a", serde_json::json!([]), serde_json::json!([{ "name": "grpc", "port": 9090 }]));
        assert!(view(AddressMode::Service).records("greeter", &app(), &[&none]).is_ok_and(|r| r.is_empty()));
    }

    #[test]
    fn bad_declarations_are_malformed() {
        let names = Names::new(crate::DEFAULT_PREFIX);
        for annotations in [
            serde_json::json!({ "registry.fireflycore.io/methods": "not json" }),
            serde_json::json!({ "registry.fireflycore.io/methods": "[\"no-slash\"]" }),
            serde_json::json!({ "registry.fireflycore.io/weight": "heavy" }),
        ] {
            assert!(matches!(
                parse_service(&names, &service(annotations, serde_json::json!([]))),
                Parsed::Malformed(_)
            ));
        }
        let two = slice(
            "a",
            serde_json::json!([endpoint("10.0.0.1", "u1", true, true, false)]),
            serde_json::json!([{ "name": "x", "port": 1 }, { "name": "y", "port": 2 }]),
        );
        let mut plain = app();
        plain.port = None;
        assert!(view(AddressMode::Endpoint).records("greeter", &plain, &[&two]).is_err());
        plain.port = Some("y".into());
        assert!(view(AddressMode::Endpoint).records("greeter", &plain, &[&two]).is_ok_and(|r| r.len() == 1));
    }

    #[test]
    fn instance_ids_are_stable_and_positive() {
        assert_eq!(instance_id("abc"), instance_id("abc"));
        assert_ne!(instance_id("abc"), instance_id("abd"));
        assert!(instance_id("") > 0);
    }
}
