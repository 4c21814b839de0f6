//! The ADS protocol rules, asserted with the raw ADS client of `envoy-types`
//! against the server fed by a real discoverer over the embedded memory
//! backend: absent names, wildcards, NACKs, stale nonces, per-type versions
//! and make-before-break ordering.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::{Message, Name};
use registry_core::memory::MemoryStore;
use registry_core::{Discoverer, Discovery, GrpcServices, Meta, Network, Register, Registrar, ServiceConf};
use registry_xds::{ResourceType, XdsServer};
use tokio::sync::mpsc;
use tonic::Streaming;

const ENV: &str = "prod";
const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing more is sent" is watched for.
const QUIET: Duration = Duration::from_millis(400);

struct Fixture {
    store: MemoryStore,
    server: XdsServer,
    addr: SocketAddr,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Fixture {
    async fn start() -> Fixture {
        let store = MemoryStore::new();
        let discoverer = Arc::new(Discoverer::new(&store, ENV, ServiceConf::default()).unwrap());
        discoverer.watcher().await.unwrap();
        let server = XdsServer::new(discoverer, ENV).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let serving = server.clone();
        tokio::spawn(async move {
            serving
                .serve_with_listener(listener, async {
                    stop.await.ok();
                })
                .await
        });
        Fixture { store, server, addr, _shutdown: shutdown }
    }

    async fn install(&self, app: &str, address: &str, services: &[(&str, &[&str])]) -> Registrar {
        let conf = ServiceConf::default().with_network(Network {
            sn: "zone-a".into(),
            internal: address.into(),
            external: String::new(),
        });
        let registrar = Registrar::new(&self.store, Meta::new(ENV, app, "v1"), conf).unwrap();
        let mut grpc = GrpcServices::new();
        for (service, methods) in services {
            grpc = grpc.service(service, methods.iter().copied()).unwrap();
        }
        registrar.install(grpc.into_node()).await.unwrap();
        registrar
    }

    async fn client(&self, node_id: &str) -> Client {
        let mut ads = AggregatedDiscoveryServiceClient::connect(format!("http://{}", self.addr)).await.unwrap();
        let (tx, rx) = mpsc::channel(16);
        let responses = ads
            .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Client { tx, responses, node: Node { id: node_id.into(), ..Default::default() }, first: true }
    }
}

struct Client {
    tx: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
    node: Node,
    first: bool,
}

impl Client {
    async fn request(&mut self, kind: ResourceType, names: &[&str], ack_of: Option<&DiscoveryResponse>) {
        self.send(kind, names, ack_of.map(|r| (r.version_info.as_str(), r.nonce.as_str())), None).await;
    }

    async fn send(
        &mut self,
        kind: ResourceType,
        names: &[&str],
        version_nonce: Option<(&str, &str)>,
        error: Option<&str>,
    ) {
        let (version, nonce) = version_nonce.unwrap_or_default();
        let request = DiscoveryRequest {
            version_info: version.into(),
            node: if std::mem::take(&mut self.first) { Some(self.node.clone()) } else { None },
            resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
            type_url: kind.type_url(),
            response_nonce: nonce.into(),
            error_detail: error.map(|message| RpcStatus { code: 3, message: message.into(), details: vec![] }),
            ..Default::default()
        };
        self.tx.send(request).await.unwrap();
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(WAIT, self.responses.message()).await.expect("a response in time").unwrap().unwrap()
    }

    async fn recv_type(&mut self, kind: ResourceType) -> DiscoveryResponse {
        let response = self.recv().await;
        assert_eq!(response.type_url, kind.type_url(), "expected {kind:?}, got {}", response.type_url);
        response
    }

    async fn expect_quiet(&mut self) {
        if let Ok(message) = tokio::time::timeout(QUIET, self.responses.message()).await {
            panic!("expected no response, got {:?}", message.map(|m| m.map(|r| (r.type_url, r.version_info))));
        }
    }
}

fn names_of(response: &DiscoveryResponse) -> BTreeSet<String> {
    response
        .resources
        .iter()
        .map(|any| {
            if any.type_url == Listener::type_url() {
                Listener::decode(any.value.as_slice()).unwrap().name
            } else if any.type_url == Cluster::type_url() {
                Cluster::decode(any.value.as_slice()).unwrap().name
            } else if any.type_url == RouteConfiguration::type_url() {
                RouteConfiguration::decode(any.value.as_slice()).unwrap().name
            } else {
                ClusterLoadAssignment::decode(any.value.as_slice()).unwrap().cluster_name
            }
        })
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

fn endpoints(response: &DiscoveryResponse, cluster: &str) -> usize {
    response
        .resources
        .iter()
        .map(|any| ClusterLoadAssignment::decode(any.value.as_slice()).unwrap())
        .find(|a| a.cluster_name == cluster)
        .map(|a| a.endpoints.len())
        .unwrap_or(0)
}

#[tokio::test]
async fn absent_names_are_answered_absent_then_sent_when_they_appear() {
    let fx = Fixture::start().await;
    let _a = fx.install("a", "127.0.0.1:7001", &[("pkg.A", &["One"])]).await;
    let mut client = fx.client("absent").await;
    client.request(ResourceType::Listener, &["prod", "late.prod", "bad/name"], None).await;
    let first = client.recv_type(ResourceType::Listener).await;
    assert_eq!(names_of(&first), set(&["prod"]), "LDS carries what exists; absent names are left out");
    client.request(ResourceType::Listener, &["prod", "late.prod", "bad/name"], Some(&first)).await;
    client.expect_quiet().await;
    let _late = fx.install("late", "127.0.0.1:7002", &[("pkg.Late", &["Hi"])]).await;
    let second = client.recv_type(ResourceType::Listener).await;
    assert_eq!(names_of(&second), set(&["prod", "late.prod"]), "a remembered name is sent when it appears");
    assert_ne!(second.nonce, first.nonce);
}

#[tokio::test]
async fn an_empty_first_request_on_lds_or_cds_is_a_wildcard_and_eds_is_by_name() {
    let fx = Fixture::start().await;
    let _a = fx.install("a", "127.0.0.1:7001", &[("pkg.A", &["One"])]).await;
    let _b = fx.install("b", "127.0.0.1:7101", &[("pkg.B", &["Two"])]).await;
    let mut client = fx.client("wildcard").await;
    client.request(ResourceType::Cluster, &[], None).await;
    let cds = client.recv_type(ResourceType::Cluster).await;
    assert_eq!(names_of(&cds), set(&["a.prod", "b.prod"]));
    client.request(ResourceType::Endpoint, &["b.prod"], None).await;
    let eds = client.recv_type(ResourceType::Endpoint).await;
    assert_eq!(names_of(&eds), set(&["b.prod"]));
    // After names were given, an empty list unsubscribes (it is not a wildcard).
    client.request(ResourceType::Listener, &["prod"], None).await;
    let lds = client.recv_type(ResourceType::Listener).await;
    assert_eq!(names_of(&lds), set(&["prod"]));
    client.request(ResourceType::Listener, &[], Some(&lds)).await;
    let none = client.recv_type(ResourceType::Listener).await;
    assert!(none.resources.is_empty());
}

#[tokio::test]
async fn a_nack_is_recorded_and_not_resent_and_the_next_change_is() {
    let fx = Fixture::start().await;
    let _a1 = fx.install("a", "127.0.0.1:7001", &[("pkg.A", &["One"])]).await;
    let mut client = fx.client("nacker").await;
    client.request(ResourceType::Endpoint, &["a.prod"], None).await;
    let good = client.recv_type(ResourceType::Endpoint).await;
    client.request(ResourceType::Endpoint, &["a.prod"], Some(&good)).await;
    client.expect_quiet().await;

    let _a2 = fx.install("a", "127.0.0.1:7002", &[("pkg.A", &["One"])]).await;
    let bad = client.recv_type(ResourceType::Endpoint).await;
    assert_eq!(endpoints(&bad, "a.prod"), 2);
    client
        .send(ResourceType::Endpoint, &["a.prod"], Some((&good.version_info, &bad.nonce)), Some("rejected on purpose"))
        .await;
    // The rejected version is not sent again.
    client.expect_quiet().await;
    let state = fx.server.clients().into_iter().find(|c| c.node_id == "nacker").unwrap();
    let eds = state.get(ResourceType::Endpoint);
    assert_eq!(eds.nacks, 1);
    let nack = eds.last_nack.as_ref().unwrap();
    assert_eq!((nack.version.as_str(), nack.message.as_str()), (bad.version_info.as_str(), "rejected on purpose"));
    assert_eq!(eds.acked_version, good.version_info, "a NACK keeps the last good version");

    // The next change of the view is sent, and its ACK is recorded.
    let _a3 = fx.install("a", "127.0.0.1:7003", &[("pkg.A", &["One"])]).await;
    let next = client.recv_type(ResourceType::Endpoint).await;
    assert_eq!(endpoints(&next, "a.prod"), 3);
    assert_ne!(next.version_info, bad.version_info);
    client.request(ResourceType::Endpoint, &["a.prod"], Some(&next)).await;
    client.expect_quiet().await;
    let state = fx.server.clients().into_iter().find(|c| c.node_id == "nacker").unwrap();
    assert_eq!(state.get(ResourceType::Endpoint).acked_version, next.version_info);
    assert_eq!(state.kind, "grpc");
}

#[tokio::test]
async fn a_request_with_a_stale_nonce_is_ignored() {
    let fx = Fixture::start().await;
    let _a = fx.install("a", "127.0.0.1:7001", &[("pkg.A", &["One"])]).await;
    let _b = fx.install("b", "127.0.0.1:7101", &[("pkg.B", &["Two"])]).await;
    let mut client = fx.client("stale").await;
    client.request(ResourceType::Cluster, &["a.prod"], None).await;
    let first = client.recv_type(ResourceType::Cluster).await;
    client.request(ResourceType::Cluster, &["a.prod", "b.prod"], Some(&first)).await;
    let second = client.recv_type(ResourceType::Cluster).await;
    assert_eq!(names_of(&second), set(&["a.prod", "b.prod"]));
    // A request answering the first response (its nonce is stale) changes nothing.
    client.send(ResourceType::Cluster, &["b.prod"], Some((&first.version_info, &first.nonce)), None).await;
    client.expect_quiet().await;
    let state = fx.server.clients().into_iter().find(|c| c.node_id == "stale").unwrap();
    assert_eq!(state.get(ResourceType::Cluster).subscribed, ["a.prod", "b.prod"]);
    assert_eq!(state.get(ResourceType::Cluster).acked_version, first.version_info);
    // The current nonce is honoured.
    client.request(ResourceType::Cluster, &["b.prod"], Some(&second)).await;
    assert_eq!(names_of(&client.recv_type(ResourceType::Cluster).await), set(&["b.prod"]));
}

/// Subscribes to everything an Envoy-like client would and ACKs each answer.
async fn subscribe_all(client: &mut Client) -> [DiscoveryResponse; 4] {
    client.request(ResourceType::Cluster, &[], None).await;
    let cds = client.recv_type(ResourceType::Cluster).await;
    client.request(ResourceType::Cluster, &[], Some(&cds)).await;
    let clusters: Vec<String> = names_of(&cds).into_iter().collect();
    let clusters: Vec<&str> = clusters.iter().map(String::as_str).collect();
    client.request(ResourceType::Endpoint, &clusters, None).await;
    let eds = client.recv_type(ResourceType::Endpoint).await;
    client.request(ResourceType::Endpoint, &clusters, Some(&eds)).await;
    client.request(ResourceType::Listener, &["prod"], None).await;
    let lds = client.recv_type(ResourceType::Listener).await;
    client.request(ResourceType::Listener, &["prod"], Some(&lds)).await;
    client.request(ResourceType::Route, &["prod"], None).await;
    let rds = client.recv_type(ResourceType::Route).await;
    client.request(ResourceType::Route, &["prod"], Some(&rds)).await;
    client.expect_quiet().await;
    [cds, eds, lds, rds]
}

#[tokio::test]
async fn an_endpoint_change_resends_eds_only() {
    let fx = Fixture::start().await;
    let _a = fx.install("a", "127.0.0.1:7001", &[("pkg.A", &["One"])]).await;
    let mut client = fx.client("versions").await;
    let [cds, eds, lds, rds] = subscribe_all(&mut client).await;
    let _a2 = fx.install("a", "127.0.0.1:7002", &[("pkg.A", &["One"])]).await;
    let next = client.recv_type(ResourceType::Endpoint).await;
    assert_eq!(endpoints(&next, "a.prod"), 2);
    client.request(ResourceType::Endpoint, &["a.prod"], Some(&next)).await;
    client.expect_quiet().await;
    let state = fx.server.clients().into_iter().find(|c| c.node_id == "versions").unwrap();
    assert_eq!(state.get(ResourceType::Endpoint).acked_version, next.version_info);
    assert_ne!(next.version_info, eds.version_info);
    for (kind, response) in [(ResourceType::Cluster, cds), (ResourceType::Listener, lds), (ResourceType::Route, rds)] {
        assert_eq!(state.get(kind).acked_version, response.version_info, "{kind:?} untouched");
        assert_eq!(state.get(kind).responses, 1, "{kind:?} sent once");
    }
}

#[tokio::test]
async fn clusters_come_before_the_routes_that_use_them_and_leave_after() {
    let fx = Fixture::start().await;
    let _a = fx.install("a", "127.0.0.1:7001", &[("pkg.A", &["One"])]).await;
    let mut client = fx.client("ordering").await;
    subscribe_all(&mut client).await;

    // Make: the new cluster is sent before the route that uses it.
    let c = fx.install("c", "127.0.0.1:7201", &[("pkg.C", &["Three"])]).await;
    let cds = client.recv_type(ResourceType::Cluster).await;
    assert_eq!(names_of(&cds), set(&["a.prod", "c.prod"]));
    let rds = client.recv_type(ResourceType::Route).await;
    let routes = RouteConfiguration::decode(rds.resources[0].value.as_slice()).unwrap();
    assert!(format!("{routes:?}").contains("/pkg.C/Three"));
    client.request(ResourceType::Cluster, &[], Some(&cds)).await;
    client.request(ResourceType::Route, &["prod"], Some(&rds)).await;
    client.request(ResourceType::Endpoint, &["a.prod", "c.prod"], None).await;
    let eds = client.recv_type(ResourceType::Endpoint).await;
    assert_eq!(names_of(&eds), set(&["c.prod"]), "EDS carries what changed for the client");
    client.request(ResourceType::Endpoint, &["a.prod", "c.prod"], Some(&eds)).await;
    client.expect_quiet().await;

    // Break: the route goes first; the cluster stays until those routes are ACKed.
    c.uninstall().await.unwrap();
    let rds = client.recv_type(ResourceType::Route).await;
    let routes = RouteConfiguration::decode(rds.resources[0].value.as_slice()).unwrap();
    assert!(!format!("{routes:?}").contains("/pkg.C/Three"));
    client.expect_quiet().await;
    client.request(ResourceType::Route, &["prod"], Some(&rds)).await;
    let cds = client.recv_type(ResourceType::Cluster).await;
    assert_eq!(names_of(&cds), set(&["a.prod"]), "the cluster leaves once no ACKed route uses it");
}

#[tokio::test]
async fn envoy_nodes_get_a_socket_listener_and_bad_node_metadata_is_refused() {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let fx = Fixture::start().await;
    let _a = fx.install("a", "127.0.0.1:7001", &[("pkg.A", &["One"])]).await;
    let mut envoy = fx.client("envoy-1").await;
    envoy.node.user_agent_name = "envoy".into();
    let listen = |v: &str| Struct {
        fields: [("registry.xds.listen".to_owned(), Value { kind: Some(Kind::StringValue(v.into())) })].into(),
    };
    envoy.node.metadata = Some(listen("127.0.0.1:15001"));
    envoy.request(ResourceType::Listener, &[], None).await;
    let lds = envoy.recv_type(ResourceType::Listener).await;
    let listener = Listener::decode(lds.resources[0].value.as_slice()).unwrap();
    assert_eq!(listener.name, "prod");
    assert!(listener.api_listener.is_none());
    assert!(format!("{:?}", listener.address).contains("15001"));
    assert_eq!(fx.server.clients()[0].kind, "envoy");

    let mut bad = fx.client("envoy-bad").await;
    bad.node.user_agent_name = "envoy".into();
    bad.node.metadata = Some(listen("not an address"));
    bad.request(ResourceType::Listener, &[], None).await;
    let status = tokio::time::timeout(WAIT, bad.responses.message()).await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("registry.xds.listen"), "{}", status.message());
}
