//! A local server by backend name, for tools that are asked for "a server
//! of backend X" (`registry-bench --backend X` without `--url`): the one
//! place that maps a backend name to the module that starts its server. A
//! new backend with a server adds its arm here, next to its server module.

use std::any::Any;
use std::sync::Arc;

use crate::Unavailable;
use crate::consul::ConsulServer;
use crate::etcd::EtcdServer;
use crate::kube::KubeServer;

/// The backend names [`start`] knows: the facade's backend names, and the
/// Kubernetes backend once per mode.
pub const NAMES: &[&str] = &[
    "memory",
    "etcd",
    "etcd-cluster",
    "consul",
    "consul-per-app",
    "consul-agents",
    "consul-agents-per-app",
    "kubernetes-lease",
    "kubernetes-configmap",
    "kubernetes-pod",
];

/// Client agents of `consul-agents`: the first serves discovery, the fleet
/// is spread over the other seven.
pub const CONSUL_AGENTS: usize = 8;

/// The agent flag `consul-per-app` and `consul-agents-per-app` add (the
/// latter on every agent): a per-app discoverer holds one blocking
/// connection per app (plus one), and an agent refuses more than
/// `limits.http_max_conns_per_client` (200 by default) from one address —
/// here the bench's fleet, its discoverer and the separate discoverer all
/// come from 127.0.0.1 (both discoverers, 1,002 connections at 5,000
/// instances, through one agent).
pub const CONSUL_PER_APP_LIMITS: &str = "limits { http_max_conns_per_client = 8192 }";

/// A started local server (or the user's, named by `ETCD_ENDPOINTS`,
/// `CONSUL_HTTP_ADDR` or `KUBECONFIG`), running until dropped.
pub struct LocalServer {
    /// The URL `registry::connect` takes for it.
    pub url: String,
    /// The Kubernetes API server, whose namespaces must be created before use
    /// and which can play the kubelet's part for `pod` mode.
    pub kube: Option<Arc<KubeServer>>,
    /// Kubernetes `pod` mode: every registrar needs a running Pod of its own.
    pub pods: bool,
    /// Where a fleet's instances register, spread over these URLs in turn
    /// (`consul-agents`: one client agent per node); empty: at [`url`](Self::url).
    pub fleet_urls: Vec<String>,
    _server: Option<Box<dyn Any + Send>>,
}

/// Starts the local server of backend `name` (one of [`NAMES`]).
pub async fn start(name: &str) -> Result<LocalServer, Unavailable> {
    let plain = |url: String, server: Option<Box<dyn Any + Send>>| LocalServer {
        url,
        kube: None,
        pods: false,
        fleet_urls: Vec::new(),
        _server: server,
    };
    match name {
        "memory" => Ok(plain("memory://bench".into(), None)),
        "etcd" => {
            let server = EtcdServer::start().await?;
            Ok(plain(format!("etcd://{}", server.endpoints().join(",")), Some(Box::new(server))))
        }
        // Three members on 127.0.0.x (`crate::etcd_cluster`), the client given all endpoints.
        "etcd-cluster" => {
            let mut cluster = crate::etcd_cluster::EtcdCluster::start().await?;
            cluster.wait_healthy(std::time::Duration::from_secs(30)).await?;
            Ok(plain(format!("etcd://{}", cluster.endpoints().join(",")), Some(Box::new(cluster))))
        }
        "consul" | "consul-per-app" => {
            let per_app = name == "consul-per-app";
            let server = if per_app {
                ConsulServer::start_local_with(&["-hcl", CONSUL_PER_APP_LIMITS], None).await?
            } else {
                ConsulServer::start().await?
            };
            let host = server.address().trim_start_matches("http://").to_owned();
            let mut url = match server.token() {
                Some(token) => format!("consul://{token}@{host}"),
                None => format!("consul://{host}"),
            };
            if per_app {
                url.push_str("?layout=per-app");
            }
            Ok(plain(url, Some(Box::new(server))))
        }
        // One server and client agents like nodes (`crate::consul_cluster`):
        // discovery reads through the first agent, the fleet registers
        // through the others in turn, so no agent carries the whole fleet.
        "consul-agents" | "consul-agents-per-app" => {
            let per_app = name == "consul-agents-per-app";
            let hcl: &[&str] = if per_app { &[CONSUL_PER_APP_LIMITS] } else { &[] };
            let cluster = crate::consul_cluster::ConsulCluster::start_fleet(CONSUL_AGENTS, hcl).await?;
            let query = if per_app { "?layout=per-app" } else { "" };
            let url_of = |j: usize| {
                format!("consul://{}:{}{query}", cluster.client_address(j), crate::consul_cluster::HTTP_PORT)
            };
            let fleet_urls = (1..cluster.clients()).map(url_of).collect();
            Ok(LocalServer { fleet_urls, ..plain(url_of(0), Some(Box::new(cluster))) })
        }
        _ => match name.strip_prefix("kubernetes-").filter(|mode| ["lease", "configmap", "pod"].contains(mode)) {
            Some(mode) => {
                let server = KubeServer::shared().await?;
                let url = format!("kubernetes://?mode={mode}&kubeconfig={}", server.kubeconfig().display());
                Ok(LocalServer { kube: Some(server), pods: mode == "pod", ..plain(url, None) })
            }
            None => Err(Unavailable::NotApplicable(format!(
                "no local server for backend `{name}`; one of: {}",
                NAMES.join(", ")
            ))),
        },
    }
}
