//! `registry-demo`: a tonic service that registers itself through the
//! `registry` facade, configured from its environment — what the workspace
//! runs in Pods on the real Kubernetes test node, and a template for a
//! service in a container.
//!
//! ```text
//! registry-demo [serve]   serve gRPC health, register, keep it alive; on SIGTERM drain, wait, uninstall, stop
//! registry-demo lookup    discover LOOKUP_METHOD and print every change of the node set
//! ```
//!
//! Environment (all optional except `REGISTRY_URL`):
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `REGISTRY_URL` | backend URL(s), separated by whitespace; several mean dual registration (`FanoutRegistrar`) and a merged discovery | — |
//! | `REGISTRY_NAMESPACE` | registry namespace (the Kubernetes namespace) | `POD_NAMESPACE` (downward API), else the library default |
//! | `REGISTRY_ENV` | env | `dev` |
//! | `REGISTRY_APP` | app id | `demo` |
//! | `REGISTRY_TTL_SECS` | heartbeat TTL in seconds | 10 |
//! | `REGISTRY_GRACE_MS` | drain → uninstall grace period | 1000 |
//! | `REGISTRY_DEMO_LISTEN_PORT` | gRPC port (listens on all addresses of the Pod's network namespace; not `DEMO_PORT`, which Kubernetes sets to `tcp://…` in every Pod of a namespace with a Service named `demo`) | 50051 |
//! | `POD_IP` | advertised address (downward API `status.podIP`) | `127.0.0.1` |
//! | `POD_NAME` | read by the Kubernetes backend: the Lease's owner, pod mode's Pod | `HOSTNAME` |
//! | `LOOKUP_METHOD` | method `lookup` follows | `/grpc.health.v1.Health/Check` |
//! | `RUST_LOG` | log filter | `info` |
//!
//! Errors are logged with their full message (a permission error names the
//! verb and resource the API server refused) and end the process with
//! status 1; nothing panics.

use std::sync::Arc;
use std::time::Duration;

use registry::serve::{self, ServeOptions};
use registry::{Discovery, FanoutRegistrar, GrpcServices, Meta, Network, Register, ServiceConf, merged_discovery};

/// The configuration read from the environment.
struct Config {
    urls: Vec<String>,
    namespace: Option<String>,
    env: String,
    app: String,
    ttl: Duration,
    grace: Duration,
    port: u16,
    advertise: String,
    lookup_method: String,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

fn number<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|e| anyhow::anyhow!("{name}={v}: {e}")),
    }
}

impl Config {
    fn from_env() -> anyhow::Result<Self> {
        let urls: Vec<String> = var("REGISTRY_URL").unwrap_or_default().split_whitespace().map(str::to_owned).collect();
        anyhow::ensure!(!urls.is_empty(), "REGISTRY_URL is not set (e.g. kubernetes://in-cluster?mode=lease)");
        let port = number("REGISTRY_DEMO_LISTEN_PORT", 50051u16)?;
        let ip = var("POD_IP").unwrap_or_else(|| "127.0.0.1".to_owned());
        Ok(Self {
            urls,
            namespace: var("REGISTRY_NAMESPACE").or_else(|| var("POD_NAMESPACE")),
            env: var("REGISTRY_ENV").unwrap_or_else(|| "dev".to_owned()),
            app: var("REGISTRY_APP").unwrap_or_else(|| "demo".to_owned()),
            ttl: Duration::from_secs(number("REGISTRY_TTL_SECS", 10u64)?),
            grace: Duration::from_millis(number("REGISTRY_GRACE_MS", 1000u64)?),
            port,
            advertise: format!("{ip}:{port}"),
            lookup_method: var("LOOKUP_METHOD").unwrap_or_else(|| "/grpc.health.v1.Health/Check".to_owned()),
        })
    }

    fn conf(&self) -> ServiceConf {
        let mut conf = ServiceConf::default()
            .with_ttl(self.ttl)
            .with_ttl_floor(self.ttl.min(ServiceConf::default().ttl_floor))
            .with_network(Network { internal: self.advertise.clone(), ..Default::default() });
        if let Some(namespace) = &self.namespace {
            conf = conf.with_namespace(namespace.clone());
        }
        conf
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(false)
        .init();
    let command = std::env::args().nth(1).unwrap_or_else(|| "serve".to_owned());
    let result = match command.as_str() {
        "serve" => serve_main().await,
        "lookup" => lookup_main().await,
        other => Err(anyhow::anyhow!("unknown command `{other}` (serve | lookup)")),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("registry-demo {command} failed: {}", chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause only when its text is not already
/// part of the message (`ServeError` repeats its source in its own text).
fn chain(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

/// Connects every URL.
async fn connect(config: &Config) -> anyhow::Result<Vec<registry::Registry>> {
    let mut registries = Vec::new();
    for url in &config.urls {
        let registry = registry::connect(url.as_str()).await.map_err(|e| anyhow::anyhow!("connect {url}: {e}"))?;
        tracing::info!(backend = registry.kind(), "connected");
        registries.push(registry);
    }
    Ok(registries)
}

async fn serve_main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let conf = config.conf();
    let registries = connect(&config).await?;
    let meta = Meta::new(config.env.clone(), config.app.clone(), "v1");
    let mut members = Vec::new();
    for registry in &registries {
        members.push(registry.registrar(meta.clone(), conf.clone())?);
    }
    let registrar: Arc<dyn Register> =
        if members.len() == 1 { members.remove(0) } else { Arc::new(FanoutRegistrar::new(members)?) };

    let listener = tokio::net::TcpListener::bind(("0.0.0.0", config.port)).await?;
    let (reporter, health) = tonic_health::server::health_reporter();
    let router = tonic::transport::Server::builder().add_service(health);
    let node = GrpcServices::new().service("grpc.health.v1.Health", ["Check", "Watch"])?.into_node();
    let options = ServeOptions::default().with_grace(config.grace).with_health(reporter, [config.app.clone()]);
    let advertise = config.advertise.clone();
    let app = config.app.clone();
    serve::serve(router, listener, registrar, node, options, serve::shutdown_signal(), move |serving| {
        tracing::info!(%app, address = %advertise, "listening and registered");
        let mut state = serving.registration();
        tokio::spawn(async move {
            while state.changed().await.is_ok() {
                let now = state.borrow().clone();
                tracing::info!(registration = ?now, "registration changed");
            }
        });
    })
    .await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn lookup_main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let conf = config.conf();
    let registries = connect(&config).await?;
    let mut sources = Vec::new();
    for registry in &registries {
        sources.push(registry.discoverer(&config.env, conf.clone())?);
    }
    let discovery: Arc<dyn Discovery> = if sources.len() == 1 {
        sources.remove(0)
    } else {
        Arc::new(merged_discovery(sources, conf.namespace.clone(), config.env.clone(), conf.ttl)?)
    };
    if let Err(e) = discovery.watcher().await {
        // Discovery keeps retrying in the background; say why it is not ready yet.
        tracing::error!("discovery not ready: {e}");
        discovery.wait_ready().await;
    }
    let method = config.lookup_method.clone();
    tracing::info!(%method, "discovery ready");
    let mut last: Option<Vec<String>> = None;
    loop {
        let mut now: Vec<String> = match discovery.get_service(&method) {
            Ok(nodes) => nodes.iter().map(|n| format!("{}@{}", n.meta.app_id, n.network.internal)).collect(),
            Err(_) => Vec::new(),
        };
        now.sort();
        if last.as_ref() != Some(&now) {
            println!("lookup {method}: {} node(s): {}", now.len(), now.join(" "));
            last = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
