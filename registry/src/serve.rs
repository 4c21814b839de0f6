//! A tonic server with its registration: installed once it listens,
//! heartbeating while it runs, drained and uninstalled before it stops, and
//! gRPC health kept in step.
//!
//! ```no_run
//! use registry::serve::{self, ServeOptions};
//! use registry::{GrpcServices, Meta, ServiceConf};
//!
//! async fn run(listener: tokio::net::TcpListener) -> registry::Result<()> {
//! let registry = registry::connect("memory://").await?;
//! // Advertise the address this listener accepts on: its IP and port.
//! let conf = serve::advertise(ServiceConf::default(), &listener)?;
//! let registrar = registry.registrar(Meta::new("prod", "greeter", "v1"), conf)?;
//! let (health, health_service) = tonic_health::server::health_reporter();
//! let router = tonic::transport::Server::builder().add_service(health_service);
//! let node = GrpcServices::new().service("grpc.health.v1.Health", ["Check", "Watch"])?.into_node();
//! let options = ServeOptions::default().with_health(health, ["grpc.health.v1.Health"]);
//! // `ServeError` converts into `registry::Error`, so `?` works in a `registry::Result` function.
//! serve::serve(router, listener, registrar, node, options, serve::shutdown_signal(), |_| {}).await?;
//! Ok(())
//! }
//! ```
//!
//! [`serve`] runs a tonic [`Router`] on a bound listener:
//! 1. the listener is already bound when [`serve`] is called, so the node is
//!    installed only once the server accepts connections. It is installed
//!    draining, its advertised address checked against the listener (an
//!    address without a port is refused with [`ServeError::Address`]: peers
//!    would call port 80), and only then marked serving, so no peer ever
//!    sees a wrong address. [`advertise`] fills the address from the
//!    listener;
//! 2. the registration is kept alive in the background; while a keepalive is
//!    failing and retrying, gRPC health answers `NOT_SERVING`, and `SERVING`
//!    again once it recovers; after `max_retry` failures the registration is
//!    reported [`Registration::Lost`] until it recovers. If the keepalive is
//!    configured to give up, the helper does not stop for good (the peers' worst bug, a healthy process
//!    that silently leaves discovery): it installs again every TTL until that
//!    succeeds. Every change is reported on [`Serving::registration`];
//! 3. when `shutdown` completes (for example [`shutdown_signal`]: SIGTERM or
//!    ctrl-c): health goes `NOT_SERVING`, the instance is **drained**
//!    (gateways stop sending new calls), the **grace period** passes (calls in
//!    flight finish, gateways see the drain), the instance is **uninstalled**,
//!    and the server stops, waiting for the calls it is still serving.
//!
//! The helper replaces the registrar's retry hooks with its own.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use registry_core::{Error, Register, RetryHooks, ServiceConf, ServiceNode};
use tokio::sync::watch;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Grace period between drain and uninstall when none is configured.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// Why [`serve`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The first install failed (the server was stopped again).
    #[error("registration failed: {0}")]
    Register(#[from] Error),
    /// The tonic server failed.
    #[error("server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The server task panicked.
    #[error("server task panicked: {0}")]
    Panicked(String),
    /// The address the node would advertise is not one peers can reach this
    /// server on, or cannot be known (the server was stopped again).
    #[error(
        "cannot advertise this server: {reason} (set `network.internal` with `serve::advertise(conf, &listener)` or `ServiceConf::with_network`)"
    )]
    Address {
        /// What is missing or wrong, naming the values.
        reason: String,
    },
}

impl From<ServeError> for Error {
    /// A registration failure is itself; an address problem is
    /// [`Error::InvalidConfig`] on `network.internal`; a server failure is
    /// [`Error::Backend`] of the `tonic server`.
    fn from(error: ServeError) -> Self {
        match error {
            ServeError::Register(e) => e,
            ServeError::Address { reason } => Error::invalid("network.internal", reason),
            ServeError::Transport(e) => {
                Error::Backend { backend: "tonic server", message: e.to_string(), source: Some(Box::new(e)) }
            }
            ServeError::Panicked(message) => Error::backend("tonic server", format!("server task panicked: {message}")),
        }
    }
}

/// `conf` with `network.internal` set to where `listener` accepts calls:
/// the listener's port, and as host the one `conf.network.internal` names
/// (an IP or DNS name peers dial; a port written there is replaced) or else
/// the listener's own IP. A listener bound to every interface (`0.0.0.0`,
/// `[::]`) with no host in `conf` is [`ServeError::Address`]: which of the
/// host's addresses peers can reach is not knowable from here (set the
/// host, e.g. from a Pod's `status.podIP`, or bind one IP).
pub fn advertise(mut conf: ServiceConf, listener: &tokio::net::TcpListener) -> Result<ServiceConf, ServeError> {
    let local = listener
        .local_addr()
        .map_err(|e| ServeError::Address { reason: format!("the listener has no local address: {e}") })?;
    let host = configured_host(&conf.network.internal);
    conf.network.internal = match host {
        Some(host) => format!("{host}:{}", local.port()),
        None if local.ip().is_unspecified() => {
            return Err(ServeError::Address {
                reason: format!(
                    "the listener is bound to {local} (every interface) and `network.internal` names no host to advertise"
                ),
            });
        }
        None => local.to_string(),
    };
    Ok(conf)
}

/// The host part of an advertised address (`host`, `host:port`, `[v6]:port`,
/// a bare IPv6 address), if it names one.
fn configured_host(internal: &str) -> Option<String> {
    let internal = internal.trim();
    if internal.is_empty() {
        return None;
    }
    if let Ok(ip) = internal.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 0).to_string().trim_end_matches(":0").to_owned());
    }
    let uri = format!("http://{internal}").parse::<tonic::codegen::http::Uri>().ok()?;
    uri.host().filter(|h| !h.is_empty()).map(str::to_owned)
}

/// Checks the address a node advertises against where the server listens.
fn check_advertised(advertised: &str, listening: SocketAddr) -> Result<(), ServeError> {
    let port = format!("http://{advertised}").parse::<tonic::codegen::http::Uri>().ok().and_then(|u| u.port_u16());
    match port {
        None => Err(ServeError::Address {
            reason: format!(
                "the node would advertise `{advertised}`, which has no port, while the server listens on {listening}"
            ),
        }),
        Some(port) if port != listening.port() => {
            // Legitimate behind NAT or a port mapping; a mistake otherwise.
            tracing::warn!(%advertised, %listening, "the advertised port differs from the listener's");
            Ok(())
        }
        Some(_) => Ok(()),
    }
}

/// What the service knows about its own registration.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Registration {
    /// Installed and heartbeating.
    Registered,
    /// Keepalive failures in a row; retrying (health is `NOT_SERVING`).
    Retrying {
        /// Consecutive failures so far.
        failures: u32,
    },
    /// `max_retry` consecutive keepalive failures: the record has expired (or
    /// soon will). The keepalive goes on retrying; if it was configured to
    /// give up, the helper installs again every `reinstall_every` instead.
    Lost,
    /// Draining before shutdown.
    Draining,
    /// Uninstalled.
    Uninstalled,
}

/// Options of [`serve`].
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ServeOptions {
    /// Time between drain and uninstall ([`DEFAULT_GRACE`] when `None`).
    pub grace: Option<Duration>,
    /// The health service to keep in step, and the service names it reports
    /// (the empty name `""` — the whole server — is always reported).
    pub health: Option<(HealthReporter, Vec<String>)>,
    /// How long to wait between installs after the keepalive gave up
    /// (default: 5 s).
    pub reinstall_every: Option<Duration>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("grace", &self.grace)
            .field("health", &self.health.as_ref().map(|(_, names)| names))
            .finish()
    }
}

impl ServeOptions {
    /// Sets the grace period.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    /// Keeps `reporter`'s status for `services` (and `""`) in step.
    pub fn with_health(
        mut self,
        reporter: HealthReporter,
        services: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.health = Some((reporter, services.into_iter().map(Into::into).collect()));
        self
    }
}

/// A running [`serve`]: its registration state, for the service to watch.
#[derive(Clone, Debug)]
pub struct Serving {
    registration: watch::Receiver<Registration>,
}

impl Serving {
    /// The registration state, updated on every change.
    pub fn registration(&self) -> watch::Receiver<Registration> {
        self.registration.clone()
    }
}

/// Sets health for every reported name.
#[derive(Clone)]
struct Health {
    reporter: Option<HealthReporter>,
    names: Vec<String>,
}

impl Health {
    async fn set(&self, status: ServingStatus) {
        let Some(reporter) = &self.reporter else { return };
        for name in &self.names {
            reporter.set_service_status(name.as_str(), status).await;
        }
    }

    /// From a synchronous hook.
    fn spawn_set(&self, status: ServingStatus) {
        let health = self.clone();
        tokio::spawn(async move { health.set(status).await });
    }
}

/// Resolves on SIGTERM or ctrl-c (SIGINT): the usual shutdown request to a
/// service in a container.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

/// Runs `router` on `listener` with `node` registered through `registrar`
/// until `shutdown` completes, then drains, waits the grace period,
/// uninstalls and stops (see the module docs). `on_start` receives the
/// [`Serving`] handle once the node is installed.
pub async fn serve(
    router: Router,
    listener: tokio::net::TcpListener,
    registrar: Arc<dyn Register>,
    node: ServiceNode,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
    on_start: impl FnOnce(Serving),
) -> Result<(), ServeError> {
    let grace = options.grace.unwrap_or(DEFAULT_GRACE);
    let reinstall_every = options.reinstall_every.unwrap_or(Duration::from_secs(5));
    let health = match options.health {
        Some((reporter, mut names)) => {
            if !names.iter().any(String::is_empty) {
                names.push(String::new());
            }
            Health { reporter: Some(reporter), names }
        }
        None => Health { reporter: None, names: Vec::new() },
    };
    let (state, registration) = watch::channel(Registration::Registered);

    let listening = listener
        .local_addr()
        .map_err(|e| ServeError::Address { reason: format!("the listener has no local address: {e}") })?;
    // Serving starts first: the listener is bound, so the node is installed
    // only once connections are accepted.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stopped.await;
    }));

    if let Err(e) = install_checked(&*registrar, node.clone(), listening).await {
        let _ = stop.send(());
        let _ = server.await;
        return Err(e);
    }
    health.set(ServingStatus::Serving).await;
    let hook_health = health.clone();
    let recovered_health = health.clone();
    let retry_state = state.clone();
    let lost_state = state.clone();
    let recovered_state = state.clone();
    registrar.set_hooks(
        RetryHooks::new()
            .before_retry(move |info| {
                hook_health.spawn_set(ServingStatus::NotServing);
                if !matches!(*retry_state.borrow(), Registration::Lost) {
                    retry_state.send_replace(Registration::Retrying { failures: info.attempt });
                }
            })
            .on_lost(move |_| {
                lost_state.send_replace(Registration::Lost);
            })
            .after_recovery(move |_| {
                recovered_health.spawn_set(ServingStatus::Serving);
                recovered_state.send_replace(Registration::Registered);
            }),
    );
    on_start(Serving { registration });

    let keepalive = tokio::spawn({
        let registrar = Arc::clone(&registrar);
        let health = health.clone();
        let state = state.clone();
        async move {
            loop {
                match registrar.sustain_lease().await {
                    Ok(()) => return,
                    Err(error) => {
                        tracing::error!(%error, "registration lost; installing again until it succeeds");
                        health.set(ServingStatus::NotServing).await;
                        state.send_replace(Registration::Lost);
                        loop {
                            tokio::time::sleep(reinstall_every).await;
                            match registrar.install(node.clone()).await {
                                Ok(_) => break,
                                Err(error) => tracing::warn!(%error, "install after a lost registration failed"),
                            }
                        }
                        health.set(ServingStatus::Serving).await;
                        state.send_replace(Registration::Registered);
                    }
                }
            }
        }
    });

    let mut server = server;
    let ended = tokio::select! {
        () = shutdown => None,
        joined = &mut server => Some(joined),
    };
    if let Some(joined) = ended {
        // The server ended on its own: take the instance out of discovery.
        keepalive.abort();
        let _ = registrar.uninstall().await;
        state.send_replace(Registration::Uninstalled);
        return server_result(joined);
    }

    tracing::info!(?grace, "shutting down: drain, grace period, uninstall, stop");
    health.set(ServingStatus::NotServing).await;
    state.send_replace(Registration::Draining);
    if let Err(error) = registrar.drain().await {
        tracing::warn!(%error, "drain failed; uninstalling after the grace period anyway");
    }
    tokio::time::sleep(grace).await;
    let uninstalled = registrar.uninstall().await;
    state.send_replace(Registration::Uninstalled);
    keepalive.abort();
    let _ = stop.send(());
    server_result(server.await)?;
    uninstalled.map_err(ServeError::from)
}

/// Installs `node` draining, checks the address it advertises, then marks
/// it serving: peers never see an address the server does not listen on.
async fn install_checked(registrar: &dyn Register, node: ServiceNode, listening: SocketAddr) -> Result<(), ServeError> {
    registrar.drain().await?;
    let installed = registrar.install(node).await?;
    if let Err(e) = check_advertised(&installed.network.internal, listening) {
        let _ = registrar.uninstall().await;
        return Err(e);
    }
    registrar.undrain().await?;
    Ok(())
}

fn server_result(
    joined: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), ServeError> {
    match joined {
        Ok(result) => Ok(result?),
        Err(join) => Err(ServeError::Panicked(join.to_string())),
    }
}
