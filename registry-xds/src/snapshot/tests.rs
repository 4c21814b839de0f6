use super::*;
use prost::Message;
use registry_core::{GrpcServices, Meta, Network};

fn node(app: &str, address: &str, weight: i64, services: &[(&str, &[&str])]) -> Arc<ServiceNode> {
    let mut grpc = GrpcServices::new();
    for (service, methods) in services {
        grpc = grpc.service(service, methods.iter().copied()).unwrap();
    }
    let mut node = grpc.into_node();
    node.meta = Meta::new("prod", app, "v1");
    node.network = Network { sn: "zone-a".into(), internal: address.into(), external: String::new() };
    node.weight = weight;
    Arc::new(node)
}

fn decode<T: Message + Default>(resource: &Resource) -> T {
    T::decode(resource.any.value.as_slice()).unwrap()
}

fn fleet() -> Vec<Arc<ServiceNode>> {
    vec![
        node("a", "127.0.0.1:7001", 300, &[("pkg.A", &["One", "Two"])]),
        node("a", "127.0.0.1:7002", 100, &[("pkg.A", &["One", "Two"])]),
        node("b", "127.0.0.1:7101", 0, &[("pkg.B", &["Three"]), ("pkg.Shared", &["Both"])]),
        node("c", "127.0.0.1:7201", 100, &[("pkg.Shared", &["Both"])]),
    ]
}

fn routes_of(snapshot: &Snapshot, name: &str) -> Vec<(String, String)> {
    let config: RouteConfiguration = decode(&snapshot.resource(ResourceType::Route, name).unwrap());
    assert_eq!(config.virtual_hosts.len(), 1);
    assert_eq!(config.virtual_hosts[0].domains, ["*"]);
    config.virtual_hosts[0]
        .routes
        .iter()
        .map(|r| {
            let matcher = match r.r#match.as_ref().unwrap().path_specifier.as_ref().unwrap() {
                route_match::PathSpecifier::Path(p) => format!("path {p}"),
                route_match::PathSpecifier::Prefix(p) => format!("prefix {p}"),
                other => panic!("unexpected matcher {other:?}"),
            };
            let Some(route::Action::Route(action)) = &r.action else { panic!("not a route action") };
            let to = match action.cluster_specifier.as_ref().unwrap() {
                route_action::ClusterSpecifier::Cluster(c) => c.clone(),
                route_action::ClusterSpecifier::WeightedClusters(w) => w
                    .clusters
                    .iter()
                    .map(|c| format!("{}={}", c.name, c.weight.unwrap().value))
                    .collect::<Vec<_>>()
                    .join(","),
                other => panic!("unexpected action {other:?}"),
            };
            (matcher, to)
        })
        .collect()
}

#[test]
fn env_routes_send_each_method_to_its_app_methods_first_then_services() {
    let snapshot = derive(&fleet(), "prod", &NodeKind::Grpc).unwrap();
    let routes = routes_of(&snapshot, "prod");
    let expected: Vec<(String, String)> = [
        ("path /pkg.A/One", "a.prod"),
        ("path /pkg.A/Two", "a.prod"),
        ("path /pkg.B/Three", "b.prod"),
        ("path /pkg.Shared/Both", "b.prod=100,c.prod=100"),
        ("prefix /pkg.A/", "a.prod"),
        ("prefix /pkg.B/", "b.prod"),
        ("prefix /pkg.Shared/", "b.prod=100,c.prod=100"),
    ]
    .iter()
    .map(|(m, c)| ((*m).to_owned(), (*c).to_owned()))
    .collect();
    assert_eq!(routes, expected);
    assert_eq!(snapshot.resource(ResourceType::Route, "prod").unwrap().references, ["a.prod", "b.prod", "c.prod"]);
}

#[test]
fn a_service_split_between_apps_gets_no_prefix_route() {
    let nodes = vec![
        node("a", "127.0.0.1:7001", 100, &[("pkg.S", &["X"])]),
        node("b", "127.0.0.1:7002", 100, &[("pkg.S", &["Y"])]),
    ];
    let snapshot = derive(&nodes, "prod", &NodeKind::Grpc).unwrap();
    let routes = routes_of(&snapshot, "prod");
    assert_eq!(
        routes,
        [("path /pkg.S/X".to_owned(), "a.prod".to_owned()), ("path /pkg.S/Y".to_owned(), "b.prod".to_owned())]
    );
}

#[test]
fn app_target_routes_everything_to_the_app() {
    let snapshot = derive(&fleet(), "prod", &NodeKind::Grpc).unwrap();
    assert_eq!(routes_of(&snapshot, "a.prod"), [("prefix /".to_owned(), "a.prod".to_owned())]);
}

#[test]
fn grpc_listeners_are_api_listeners_with_rds_over_ads_and_the_router_last() {
    let snapshot = derive(&fleet(), "prod", &NodeKind::Grpc).unwrap();
    assert_eq!(snapshot.names(ResourceType::Listener), ["a.prod", "b.prod", "c.prod", "prod"]);
    for name in ["prod", "a.prod", "prod:50051", "a.prod:443"] {
        let listener: Listener = decode(&snapshot.resource(ResourceType::Listener, name).unwrap());
        assert_eq!(listener.name, name);
        assert!(listener.address.is_none() && listener.filter_chains.is_empty());
        let any = listener.api_listener.unwrap().api_listener.unwrap();
        assert_eq!(any.type_url, HttpConnectionManager::type_url());
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier else { panic!("not RDS") };
        assert_eq!(rds.route_config_name, names::parse_listener(name, "prod").unwrap().name("prod"));
        assert!(matches!(
            rds.config_source.unwrap().config_source_specifier,
            Some(config_source::ConfigSourceSpecifier::Ads(_))
        ));
        assert_eq!(hcm.http_filters.last().unwrap().name, ROUTER_FILTER);
        assert_eq!(hcm.xff_num_trusted_hops, 0);
    }
}

#[test]
fn unknown_and_malformed_names_are_absent() {
    let snapshot = derive(&fleet(), "prod", &NodeKind::Grpc).unwrap();
    for name in ["nope.prod", "a.staging", "staging", "prod:x", "", "a/b.prod"] {
        assert!(snapshot.resource(ResourceType::Listener, name).is_none(), "{name}");
        assert!(snapshot.resource(ResourceType::Route, name).is_none(), "{name}");
        assert!(snapshot.resource(ResourceType::Cluster, name).is_none(), "{name}");
    }
}

#[test]
fn envoy_gets_one_socket_listener_and_http2_clusters() {
    let listen: SocketAddr = "127.0.0.1:10000".parse().unwrap();
    let snapshot = derive(&fleet(), "prod", &NodeKind::Envoy { listen }).unwrap();
    let listeners = snapshot.all(ResourceType::Listener);
    assert_eq!(listeners.len(), 1);
    let listener: Listener = decode(&listeners[0]);
    assert_eq!(listener.name, "prod");
    assert!(listener.api_listener.is_none());
    assert_eq!(listener.address, Some(socket_address(listen)));
    assert_eq!(listener.filter_chains[0].filters[0].name, HCM_FILTER);
    let cluster: Cluster = decode(&snapshot.resource(ResourceType::Cluster, "a.prod").unwrap());
    let options = &cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS];
    let options = HttpProtocolOptions::decode(options.value.as_slice()).unwrap();
    assert!(matches!(
        options.upstream_protocol_options,
        Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(_)
                )
            }
        ))
    ));
    // gRPC clusters carry no HTTP options; both are EDS over ADS, round robin.
    let grpc = derive(&fleet(), "prod", &NodeKind::Grpc).unwrap();
    let plain: Cluster = decode(&grpc.resource(ResourceType::Cluster, "a.prod").unwrap());
    assert!(plain.typed_extension_protocol_options.is_empty());
    for c in [cluster, plain] {
        assert_eq!(
            c.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32))
        );
        assert_eq!(c.lb_policy, cluster::LbPolicy::RoundRobin as i32);
        let eds = c.eds_cluster_config.unwrap().eds_config.unwrap();
        assert!(matches!(eds.config_source_specifier, Some(config_source::ConfigSourceSpecifier::Ads(_))));
    }
}

fn endpoints_of(snapshot: &Snapshot, cluster: &str) -> Vec<(String, String, u32, u32, i32, u32)> {
    let assignment: ClusterLoadAssignment = decode(&snapshot.resource(ResourceType::Endpoint, cluster).unwrap());
    assert_eq!(assignment.cluster_name, cluster);
    assignment
        .endpoints
        .iter()
        .map(|locality| {
            assert_eq!(locality.lb_endpoints.len(), 1, "one instance per locality");
            let endpoint = &locality.lb_endpoints[0];
            let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &endpoint.host_identifier else { panic!() };
            let Some(address::Address::SocketAddress(socket)) = e.address.as_ref().unwrap().address.as_ref() else {
                panic!()
            };
            let Some(socket_address::PortSpecifier::PortValue(port)) = socket.port_specifier else { panic!() };
            let l = locality.locality.as_ref().unwrap();
            (
                format!("{}:{port}", socket.address),
                format!("{}/{}", l.zone, l.sub_zone),
                locality.load_balancing_weight.unwrap().value,
                endpoint.load_balancing_weight.unwrap().value,
                endpoint.health_status,
                locality.priority,
            )
        })
        .collect()
}

#[test]
fn assignments_carry_weights_per_locality_and_mark_draining_nodes() {
    let mut nodes = fleet();
    let mut draining = (*node("a", "127.0.0.1:7003", 50, &[("pkg.A", &["One", "Two"])])).clone();
    draining.draining = true;
    nodes.insert(0, Arc::new(draining));
    let snapshot = derive(&nodes, "prod", &NodeKind::Grpc).unwrap();
    let healthy = HealthStatus::Healthy as i32;
    assert_eq!(
        endpoints_of(&snapshot, "a.prod"),
        [
            ("127.0.0.1:7001".into(), "zone-a/127.0.0.1:7001".into(), 300, 300, healthy, 0),
            ("127.0.0.1:7002".into(), "zone-a/127.0.0.1:7002".into(), 100, 100, healthy, 0),
            ("127.0.0.1:7003".into(), "zone-a/127.0.0.1:7003".into(), 50, 50, HealthStatus::Draining as i32, 0),
        ]
    );
    // Weight 0 (never set by a Go writer) reads as the default, never 0.
    assert_eq!(endpoints_of(&snapshot, "b.prod")[0].2, DEFAULT_WEIGHT as u32);
    // Draining nodes add no weight to method routes.
    assert_eq!(routes_of(&snapshot, "prod")[0], ("path /pkg.A/One".to_owned(), "a.prod".to_owned()));
}

#[test]
fn duplicate_and_unusable_addresses_are_skipped_and_an_app_without_any_has_no_cluster() {
    let mut draining = (*node("a", "127.0.0.1:7001", 100, &[("pkg.A", &["One"])])).clone();
    draining.draining = true;
    let nodes = vec![
        Arc::new(draining),
        node("a", "127.0.0.1:7001", 200, &[("pkg.A", &["One"])]),
        node("a", "127.0.0.1:7001", 300, &[("pkg.A", &["One"])]),
        node("a", "[::1]:7002", i64::MAX, &[("pkg.A", &["One"])]),
        node("z", "somehost:7003", 100, &[("pkg.Z", &["Gone"])]),
        node("z", "127.0.0.1:0", 100, &[("pkg.Z", &["Gone"])]),
    ];
    let snapshot = derive(&nodes, "prod", &NodeKind::Grpc).unwrap();
    let endpoints = endpoints_of(&snapshot, "a.prod");
    // The serving node wins the shared address; the draining one is dropped.
    assert_eq!(endpoints[0].0, "127.0.0.1:7001");
    assert_eq!(endpoints[0].2, 200);
    assert_eq!(endpoints[0].4, HealthStatus::Healthy as i32);
    assert_eq!(endpoints[1].0, "::1:7002");
    assert_eq!(endpoints[1].2, MAX_WEIGHT);
    assert_eq!(endpoints.len(), 2);
    assert_eq!(snapshot.skipped().len(), 4);
    assert!(snapshot.resource(ResourceType::Cluster, "z.prod").is_none());
    assert!(snapshot.resource(ResourceType::Route, "z.prod").is_none());
    assert!(routes_of(&snapshot, "prod").iter().all(|(m, _)| !m.contains("pkg.Z")));
    snapshot.check().unwrap();
}

#[test]
fn an_empty_view_still_answers_the_env_target_with_no_routes() {
    let snapshot = derive(&[], "prod", &NodeKind::Grpc).unwrap();
    assert_eq!(snapshot.names(ResourceType::Listener), ["prod"]);
    assert!(routes_of(&snapshot, "prod").is_empty());
    assert!(snapshot.all(ResourceType::Cluster).is_empty());
}

#[test]
fn derivation_is_deterministic_and_nodes_of_other_envs_are_ignored() {
    let a = derive(&fleet(), "prod", &NodeKind::Grpc).unwrap();
    let mut nodes = fleet();
    nodes.reverse();
    let mut foreign = (*node("x", "127.0.0.1:9999", 100, &[("pkg.X", &["Y"])])).clone();
    foreign.meta.env = "staging".into();
    nodes.push(Arc::new(foreign));
    let b = derive(&nodes, "prod", &NodeKind::Grpc).unwrap();
    for kind in ResourceType::ALL {
        let digests = |s: &Snapshot| s.all(kind).iter().map(|r| (r.name.clone(), r.digest)).collect::<Vec<_>>();
        // Reversed input reorders instances within an app; everything else is equal.
        if kind != ResourceType::Endpoint {
            assert_eq!(digests(&a), digests(&b), "{kind:?}");
        }
    }
    assert!(b.resource(ResourceType::Cluster, "x.prod").is_none());
}

#[test]
fn the_consistency_check_names_what_is_missing() {
    let mut snapshot = derive(&fleet(), "prod", &NodeKind::Grpc).unwrap();
    snapshot.endpoints.remove("b.prod");
    assert_eq!(
        snapshot.check().unwrap_err().to_string(),
        "cluster b.prod uses cluster load assignment b.prod, which the snapshot lacks"
    );
    snapshot.clusters.remove("b.prod");
    let error = snapshot.check().unwrap_err();
    assert_eq!((error.kind, error.missing.as_str()), ("route configuration", "b.prod"));
}

#[test]
fn type_urls_round_trip() {
    for kind in ResourceType::ALL {
        assert_eq!(ResourceType::from_type_url(&kind.type_url()), Some(kind));
    }
    assert_eq!(ResourceType::Listener.type_url(), "type.googleapis.com/envoy.config.listener.v3.Listener");
    assert_eq!(ResourceType::from_type_url("type.googleapis.com/nope"), None);
}
