//! A tonic server with its registration: installed once it listens,
//! heartbeating while it runs, drained and uninstalled before it stops, and
//! gRPC health kept in step.
//!
//! [`serve`] runs a tonic [`Router`] on a bound listener:
//! 1. the listener is already bound when [`serve`] is called, so the node is
//!    installed only once the server accepts connections;
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
use std::sync::Arc;
use std::time::Duration;

use registry_core::{Error, Register, RetryHooks, ServiceNode};
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

    // Serving starts first: the listener is bound, so the node is installed
    // only once connections are accepted.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stopped.await;
    }));

    if let Err(e) = registrar.install(node.clone()).await {
        let _ = stop.send(());
        let _ = server.await;
        return Err(e.into());
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

fn server_result(
    joined: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), ServeError> {
    match joined {
        Ok(result) => Ok(result?),
        Err(join) => Err(ServeError::Panicked(join.to_string())),
    }
}
