//! `endpointslice` mode on a real kube-apiserver (one per test: each test
//! body runs on a runtime of its own, and so do its clients): what the mode writes
//! (the Service declaration: merged, idempotent, concurrent, bounded, never
//! clobbering) and how it reads Services and EndpointSlices (slices merged,
//! draining endpoints, port choice, `address=service`, malformed Services).
//!
//! The bare API server runs no EndpointSlice controller, so the reading
//! tests write the slices themselves, as a custom slice manager may
//! (`endpointslice.kubernetes.io/managed-by`); the controller's own slices,
//! from real Pods and a kubelet, are read in `tests/node.rs`.
// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::ExitCode;
use std::time::Duration;

use conformance::Runner;
use conformance::fixtures::{PROPAGATION, conf, eventually, meta, method, node, unique};
use futures::future::try_join_all;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use registry_core::store::Scope;
use registry_core::{Discoverer, Discovery, DrainingNodes, Error, Register, Registrar, ServiceConf};
use registry_kubernetes::{AddressMode, KubernetesConfig, KubernetesStore, Mode, Names, SERVICE_NAME_LABEL};
use registry_testenv::kube::KubeServer;

const PREFIX: &str = registry_kubernetes::DEFAULT_PREFIX;

/// A store in endpointslice mode on the shared test server, with `config`'s extras.
async fn store(server: &KubeServer, config: KubernetesConfig) -> KubernetesStore {
    KubernetesStore::connect(
        config.with_mode(Mode::EndpointSlice).with_kubeconfig(server.kubeconfig()).with_pod_name(None),
    )
    .await
    .unwrap()
}

/// A Service `name` with a `grpc` port 80 → 9090 and `annotations`.
async fn create_service(server: &KubeServer, ns: &str, name: &str, annotations: serde_json::Value) -> Api<Service> {
    let api: Api<Service> = Api::namespaced(server.client(), ns);
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "annotations": annotations },
        "spec": { "ports": [{ "name": "grpc", "port": 80, "targetPort": 9090 }, { "name": "http", "port": 8080 }] },
    }))
    .unwrap();
    api.create(&PostParams::default(), &svc).await.unwrap();
    api
}

/// Writes slice `name` of Service `service` with `endpoints` (ip, ready, serving, terminating).
async fn put_slice(server: &KubeServer, ns: &str, service: &str, name: &str, endpoints: &[(&str, bool, bool, bool)]) {
    let api: Api<EndpointSlice> = Api::namespaced(server.client(), ns);
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": {
            SERVICE_NAME_LABEL: service, "endpointslice.kubernetes.io/managed-by": "registry-tests" } },
        "addressType": "IPv4",
        "ports": [{ "name": "grpc", "port": 9090, "protocol": "TCP" }, { "name": "http", "port": 8080, "protocol": "TCP" }],
        "endpoints": endpoints.iter().map(|(ip, ready, serving, terminating)| serde_json::json!({
            "addresses": [ip],
            "conditions": { "ready": ready, "serving": serving, "terminating": terminating },
            "targetRef": { "kind": "Pod", "name": format!("pod-{ip}"), "uid": format!("uid-{ip}") },
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    let params = PatchParams::apply("registry-tests").force();
    api.patch(name, &params, &Patch::Apply(&slice)).await.unwrap();
}

fn addresses(discovery: &dyn Discovery, m: &str) -> Vec<String> {
    let mut out: Vec<String> =
        discovery.get_service(m).map(|n| n.iter().map(|n| n.network.internal.clone()).collect()).unwrap_or_default();
    out.sort();
    out
}

/// Install merges methods into the Service annotation, keeps every other
/// annotation, skips unchanged writes; `publish --replace` replaces; the
/// Service must exist and belong to the app and env.
async fn install_declares_methods_on_the_service() -> anyhow::Result<()> {
    let server = KubeServer::start().await?;
    let ns = unique("ns");
    server.create_namespace(&ns).await?;
    let env = unique("env");
    let names = Names::new(PREFIX);
    let api = create_service(&server, &ns, "orders", serde_json::json!({ "team": "shop" })).await;
    let s = store(&server, KubernetesConfig::default()).await;
    let first = Registrar::new(&s, meta(&env, "orders"), conf(&ns))?;
    first.install(node("shop.Orders", &["Create", "Get"])).await?;
    let second = Registrar::new(&s, meta(&env, "orders"), conf(&ns))?;
    second.install(node("shop.Orders", &["Get", "List"])).await?;
    let svc = api.get("orders").await?;
    let annotations = svc.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get(&names.methods_annotation()).map(String::as_str),
        Some(r#"["/shop.Orders/Create","/shop.Orders/Get","/shop.Orders/List"]"#)
    );
    assert_eq!(annotations.get("team").map(String::as_str), Some("shop"), "a foreign annotation was clobbered");
    let labels = svc.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get(&names.env_label()), Some(&env));
    assert_eq!(labels.get(&names.app_label()).map(String::as_str), Some("orders"));
    // Idempotent: the same install again writes nothing.
    let version = svc.metadata.resource_version.clone();
    second.install(node("shop.Orders", &["Get", "List"])).await?;
    assert_eq!(api.get("orders").await?.metadata.resource_version, version, "an unchanged install wrote");
    // Uninstall leaves the app's declaration (its other instances share it).
    first.uninstall().await?;
    assert!(
        api.get("orders").await?.metadata.annotations.unwrap_or_default().contains_key(&names.methods_annotation())
    );
    // publish --replace replaces the set.
    let scope = Scope::new(&ns, &env);
    let published = s.publish(&scope, "orders", &[method("shop.Orders", "Get")], Some("v9"), true).await?;
    assert!(published.changed && published.methods == 1, "{published:?}");
    let annotations = api.get("orders").await?.metadata.annotations.unwrap_or_default();
    assert_eq!(annotations.get(&names.methods_annotation()).map(String::as_str), Some(r#"["/shop.Orders/Get"]"#));
    assert_eq!(annotations.get(&names.version_annotation()).map(String::as_str), Some("v9"));
    // No Service: a clear InvalidConfig; another env's Service: refused.
    let missing = Registrar::new(&s, meta(&env, "nowhere"), conf(&ns))?.install(node("t.N", &["A"])).await;
    assert!(
        matches!(&missing, Err(Error::InvalidConfig { field: "kubernetes.service", reason }) if reason.contains("not found")),
        "{missing:?}"
    );
    let other_env =
        Registrar::new(&s, meta(&format!("{env}x"), "orders"), conf(&ns))?.install(node("t.N", &["A"])).await;
    assert!(matches!(other_env, Err(Error::InvalidConfig { field: "meta.env", .. })), "{other_env:?}");
    // An app id that is not a Service name needs `service=`.
    let bad = Registrar::new(&s, meta(&env, "Orders_V2"), conf(&ns));
    assert!(matches!(bad, Err(Error::InvalidConfig { field: "meta.app_id", .. })), "{bad:?}");
    let named = store(&server, KubernetesConfig::default().with_service("orders")).await;
    assert!(Registrar::new(&named, meta(&env, "Orders_V2"), conf(&ns)).is_ok());
    second.uninstall().await?;
    Ok(())
}

/// Twenty instances installing different methods at once: every method lands
/// (optimistic concurrency with retries, no lost update).
async fn concurrent_installs_lose_no_method() -> anyhow::Result<()> {
    let server = KubeServer::start().await?;
    let ns = unique("ns");
    server.create_namespace(&ns).await?;
    let env = unique("env");
    create_service(&server, &ns, "crowd", serde_json::json!({})).await;
    let s = store(&server, KubernetesConfig::default()).await;
    // The TTL bounds each install (there are no heartbeats in this mode): a
    // production-like 20 s, not the suite's 2 s, since twenty writes of one
    // object are serialised by the API server.
    let ttl = conf(&ns).with_ttl(Duration::from_secs(20));
    let registrars: Vec<Registrar> =
        (0..20).map(|_| Registrar::new(&s, meta(&env, "crowd"), ttl.clone())).collect::<Result<_, _>>()?;
    let names: Vec<String> = (0..20).map(|i| format!("M{i:02}")).collect();
    try_join_all(registrars.iter().zip(&names).map(|(r, m)| r.install(node("t.Crowd", &[m.as_str()])))).await?;
    let svc: Api<Service> = Api::namespaced(server.client(), &ns);
    let value = svc.get("crowd").await?.metadata.annotations.unwrap_or_default()
        [&Names::new(PREFIX).methods_annotation()]
        .clone();
    let listed: Vec<String> = serde_json::from_str(&value)?;
    assert_eq!(listed.len(), 20, "methods lost under concurrency: {listed:?}");
    Ok(())
}

/// A method set past Kubernetes' 256 KiB of annotations is `TooLarge`, and
/// the Service is left as it was.
async fn oversized_declaration_is_too_large() -> anyhow::Result<()> {
    let server = KubeServer::start().await?;
    let ns = unique("ns");
    server.create_namespace(&ns).await?;
    let env = unique("env");
    let api = create_service(&server, &ns, "big", serde_json::json!({})).await;
    let s = store(&server, KubernetesConfig::default()).await;
    let methods: Vec<String> = (0..6000).map(|i| format!("/big.v1.Service/Method{i:06}WithAFairlyLongName")).collect();
    let err = s.publish(&Scope::new(&ns, &env), "big", &methods, None, false).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { limit: 262_144, .. }), "{err:?}");
    assert!(api.get("big").await?.metadata.annotations.unwrap_or_default().is_empty(), "a refused write wrote");
    Ok(())
}

/// Discovery joins Services and slices: endpoints of every slice, ready ones
/// serving, serving+terminating ones draining (answered only with
/// `DrainingNodes::Last`), others absent; changes follow; a malformed
/// Service hides only itself; `address=service` gives the Service's FQDN.
async fn discovery_reads_services_and_their_slices() -> anyhow::Result<()> {
    let server = KubeServer::start().await?;
    let ns = unique("ns");
    server.create_namespace(&ns).await?;
    let env = unique("env");
    create_service(&server, &ns, "greeter", serde_json::json!({})).await;
    let s = store(&server, KubernetesConfig::default()).await;
    let scope = Scope::new(&ns, &env);
    let hello = method("demo.Greeter", "Hello");
    s.publish(&scope, "greeter", std::slice::from_ref(&hello), Some("v1"), false).await?;
    put_slice(
        &server,
        &ns,
        "greeter",
        "greeter-a",
        &[("10.1.0.1", true, true, false), ("10.1.0.2", false, true, true)],
    )
    .await;
    put_slice(
        &server,
        &ns,
        "greeter",
        "greeter-b",
        &[("10.1.0.3", true, true, false), ("10.1.0.4", false, false, false)],
    )
    .await;
    let conf = ServiceConf::default().with_namespace(&ns);
    let disc = Discoverer::new(&s, &env, conf.clone())?;
    disc.watcher().await?;
    assert_eq!(addresses(&disc, &hello), ["10.1.0.1:9090", "10.1.0.3:9090"]);
    let last = Discoverer::new(&s, &env, conf.clone())?;
    last.set_draining_nodes(DrainingNodes::Last);
    last.watcher().await?;
    let nodes = last.get_service(&hello)?;
    assert_eq!(nodes.len(), 3);
    assert!(nodes[2].draining && nodes[2].network.internal == "10.1.0.2:9090", "{nodes:?}");
    assert_eq!(nodes[0].meta.version, "v1");
    // A slice change is followed; a deleted slice takes its endpoints.
    put_slice(
        &server,
        &ns,
        "greeter",
        "greeter-b",
        &[("10.1.0.3", false, false, false), ("10.1.0.5", true, true, false)],
    )
    .await;
    eventually(PROPAGATION, "slice change", || addresses(&disc, &hello) == ["10.1.0.1:9090", "10.1.0.5:9090"]).await?;
    let slices: Api<EndpointSlice> = Api::namespaced(server.client(), &ns);
    slices.delete("greeter-a", &DeleteParams::default()).await?;
    eventually(PROPAGATION, "slice deleted", || addresses(&disc, &hello) == ["10.1.0.5:9090"]).await?;
    // A second app with a bad declaration is skipped; the first stays.
    let broken =
        create_service(&server, &ns, "broken", serde_json::json!({ format!("{PREFIX}/methods"): "nope" })).await;
    let labels = serde_json::json!({ "metadata": { "labels": {
        format!("{PREFIX}/type"): "service", format!("{PREFIX}/env"): env.as_str() } } });
    broken.patch("broken", &PatchParams::default(), &Patch::Merge(&labels)).await?;
    put_slice(&server, &ns, "broken", "broken-a", &[("10.1.0.9", true, true, false)]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(addresses(&disc, &hello), ["10.1.0.5:9090"]);
    assert!(!disc.apps().iter().any(|a| &**a == "broken"), "a malformed Service was served");
    // Service address mode: one node, the FQDN and the Service's own port.
    let fqdn = store(&server, KubernetesConfig::default().with_address(AddressMode::Service)).await;
    let by_service = Discoverer::new(&fqdn, &env, conf)?;
    by_service.watcher().await?;
    assert_eq!(addresses(&by_service, &hello), [format!("greeter.{ns}.svc.cluster.local:80")]);
    slices.delete("greeter-b", &DeleteParams::default()).await?;
    eventually(PROPAGATION, "no endpoint, no service node", || addresses(&by_service, &hello).is_empty()).await?;
    Ok(())
}

/// The Service manifest `docs/kubernetes-endpointslice.md` documents
/// (the third way to declare methods), applied as written: discovery
/// answers its methods from the Service's endpoints, nothing else written.
async fn documented_manifest_declares_methods() -> anyhow::Result<()> {
    let server = KubeServer::start().await?;
    let ns = unique("ns");
    server.create_namespace(&ns).await?;
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/kubernetes-endpointslice.md"))?;
    let yaml = doc
        .split("```yaml")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .find(|block| block.contains("kind: Service"))
        .ok_or_else(|| anyhow::anyhow!("no Service manifest in the docs"))?;
    let service: Service = serde_yaml::from_str(yaml)?;
    let api: Api<Service> = Api::namespaced(server.client(), &ns);
    api.create(&PostParams::default(), &service).await?;
    put_slice(&server, &ns, "orders", "orders-a", &[("10.2.0.1", true, true, false)]).await;
    let s = store(&server, KubernetesConfig::default()).await;
    let disc = Discoverer::new(&s, "prod", ServiceConf::default().with_namespace(&ns))?;
    disc.watcher().await?;
    for name in ["Create", "Get"] {
        assert_eq!(addresses(&disc, &method("shop.v1.Orders", name)), ["10.2.0.1:9090"], "{name}");
    }
    let node = &disc.get_service(&method("shop.v1.Orders", "Get"))?[0];
    assert_eq!((node.meta.app_id.as_str(), node.meta.version.as_str(), node.weight), ("orders", "v2", 100));
    Ok(())
}

fn main() -> ExitCode {
    let available = KubeServer::available;
    Runner::new()
        .test(
            "endpointslice::install_declares_methods_on_the_service",
            available(),
            install_declares_methods_on_the_service,
        )
        .test("endpointslice::concurrent_installs_lose_no_method", available(), concurrent_installs_lose_no_method)
        .test("endpointslice::oversized_declaration_is_too_large", available(), oversized_declaration_is_too_large)
        .test("endpointslice::documented_manifest_declares_methods", available(), documented_manifest_declares_methods)
        .test(
            "endpointslice::discovery_reads_services_and_their_slices",
            available(),
            discovery_reads_services_and_their_slices,
        )
        .run()
}
