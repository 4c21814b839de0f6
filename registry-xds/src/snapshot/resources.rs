//! The xDS resources themselves: addresses, the ADS config source, clusters,
//! routes, route configurations and listeners (an `api_listener` for gRPC,
//! a socket listener for Envoy), built from what [`derive`](super::derive)
//! decided.

use super::*;

pub(super) fn socket_address(address: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(address.port()))),
            ..Default::default()
        })),
    }
}

pub(super) fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

pub(super) fn cluster(name: &str, kind: &NodeKind) -> Cluster {
    let mut cluster = Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig { eds_config: Some(ads()), service_name: String::new() }),
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        connect_timeout: Some(PbDuration { seconds: 5, nanos: 0 }),
        ..Default::default()
    };
    if let NodeKind::Envoy { .. } = kind {
        let http2 = HttpProtocolOptions {
            upstream_protocol_options: Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Default::default(),
                        ),
                    ),
                },
            )),
            ..Default::default()
        };
        cluster.typed_extension_protocol_options.insert(HTTP_PROTOCOL_OPTIONS.to_owned(), pack_any(http2));
    }
    cluster
}

pub(super) fn path_match(path: &str) -> RouteMatch {
    RouteMatch { path_specifier: Some(route_match::PathSpecifier::Path(path.to_owned())), ..Default::default() }
}

pub(super) fn prefix_match(prefix: &str) -> RouteMatch {
    RouteMatch { path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.to_owned())), ..Default::default() }
}

pub(super) fn route_to(matcher: RouteMatch, destination: &Destination, cluster_of: impl Fn(&str) -> String) -> Route {
    let specifier = match destination.iter().next() {
        Some((app, _)) if destination.len() == 1 => route_action::ClusterSpecifier::Cluster(cluster_of(app)),
        _ => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: destination
                .iter()
                .map(|(app, weight)| weighted_cluster::ClusterWeight {
                    name: cluster_of(app),
                    weight: Some(UInt32Value { value: *weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    Route {
        r#match: Some(matcher),
        action: Some(route::Action::Route(RouteAction { cluster_specifier: Some(specifier), ..Default::default() })),
        ..Default::default()
    }
}

/// Method routes (sorted), then a prefix route per service whose methods
/// all go to the same destination.
pub(super) fn env_routes(methods: &BTreeMap<&str, Destination>, env: &str) -> Vec<Route> {
    let cluster_of = |app: &str| names::app_name(app, env);
    let mut routes: Vec<Route> =
        methods.iter().map(|(method, destination)| route_to(path_match(method), destination, cluster_of)).collect();
    let mut services: BTreeMap<&str, Option<&Destination>> = BTreeMap::new();
    for (method, destination) in methods {
        let Some(service) = service_of(method) else { continue };
        services
            .entry(service)
            .and_modify(|shared| {
                if shared.is_some_and(|d| d != destination) {
                    *shared = None;
                }
            })
            .or_insert(Some(destination));
    }
    routes.extend(
        services
            .into_iter()
            .filter_map(|(service, destination)| Some(route_to(prefix_match(service), destination?, cluster_of))),
    );
    routes
}

pub(super) fn route_configuration(name: &str, routes: Vec<Route>) -> Arc<Resource> {
    let clusters: BTreeSet<String> = routes
        .iter()
        .filter_map(|r| match &r.action {
            Some(route::Action::Route(action)) => action.cluster_specifier.as_ref(),
            _ => None,
        })
        .flat_map(|specifier| match specifier {
            route_action::ClusterSpecifier::Cluster(name) => vec![name.clone()],
            route_action::ClusterSpecifier::WeightedClusters(w) => w.clusters.iter().map(|c| c.name.clone()).collect(),
            _ => Vec::new(),
        })
        .collect();
    let configuration = RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: name.to_owned(),
            domains: vec!["*".to_owned()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    };
    Resource::new(name.to_owned(), configuration, clusters.into_iter().collect())
}

pub(super) fn connection_manager(route_name: &str) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: route_name.to_owned(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_name.to_owned(),
        })),
        http_filters: vec![HttpFilter {
            name: ROUTER_FILTER.to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub(super) fn api_listener(name: &str) -> Listener {
    Listener {
        name: name.to_owned(),
        api_listener: Some(ApiListener { api_listener: Some(pack_any(connection_manager(name))) }),
        ..Default::default()
    }
}

pub(super) fn socket_listener(name: &str, listen: SocketAddr) -> Listener {
    Listener {
        name: name.to_owned(),
        address: Some(socket_address(listen)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: HCM_FILTER.to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(connection_manager(name)))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}
