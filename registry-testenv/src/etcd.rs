//! [`EtcdServer`]: a real etcd on loopback for tests — or the user's cluster
//! when `ETCD_ENDPOINTS` is set.
//!
//! A started server listens on free `127.0.0.1` client and peer ports (and
//! a plain-HTTP `/health` port) with its own temp data dir, optionally
//! serves clients over TLS ([`EtcdServer::start_local_tls`]), is healthy
//! when [`EtcdServer::start`] returns, can
//! be [stopped](EtcdServer::stop) and [restarted](EtcdServer::restart) on
//! the same ports and data (outage scenarios), and is killed on drop. It is
//! general on purpose: the Kubernetes test environment runs kube-apiserver
//! on one ([`EtcdServer::client_url`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::process::Process;
use super::{Unavailable, binary, free_port, http, var};

/// Variable naming the user's cluster: comma-separated `host:port` or URLs.
pub const ENDPOINTS_VAR: &str = "ETCD_ENDPOINTS";
/// How long a starting etcd may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// An etcd for tests: a process this module started, or the user's cluster.
#[derive(Debug)]
pub struct EtcdServer {
    endpoints: Vec<String>,
    /// Clients must use TLS.
    tls: bool,
    local: Option<Local>,
}

/// The serving side of a TLS etcd: PEM files.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The server's certificate (valid for `127.0.0.1`).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug)]
struct Local {
    process: Process,
    /// Plain-HTTP port serving `/health`.
    health_port: u16,
    /// Data dir and log; removed on drop (after the process is killed).
    _dir: tempfile::TempDir,
}

/// True when the user named a cluster with `ETCD_ENDPOINTS`.
pub fn external_configured() -> bool {
    var(ENDPOINTS_VAR).is_some()
}

/// A cheap check for tests that need an etcd of its own (they stop it, enable
/// auth, or write fixed keys, so never the user's server): the `etcd` binary
/// is installed.
pub fn local_available() -> Result<(), Unavailable> {
    binary("etcd").map(|_| ())
}

/// A cheap check that an etcd can be had: `ETCD_ENDPOINTS` is set or the
/// `etcd` binary is installed.
pub fn available() -> Result<(), Unavailable> {
    if external_configured() { Ok(()) } else { binary("etcd").map(|_| ()) }
}

impl EtcdServer {
    /// The user's cluster when `ETCD_ENDPOINTS` is set, else a new local etcd.
    pub async fn start() -> Result<Self, Unavailable> {
        match var(ENDPOINTS_VAR) {
            Some(list) => Ok(Self::external(&list)),
            None => Self::start_local().await,
        }
    }

    /// A new local etcd, whatever `ETCD_ENDPOINTS` says (for scenarios that
    /// stop and restart their server).
    pub async fn start_local() -> Result<Self, Unavailable> {
        Self::start_local_with(&[]).await
    }

    /// A new local etcd with extra command-line flags (e.g. `--auth-token=…`).
    pub async fn start_local_with(extra_args: &[&str]) -> Result<Self, Unavailable> {
        Self::launch(extra_args, None).await
    }

    /// A new local etcd serving its clients over TLS with `tls`'s
    /// certificate (and, with [`ServerTls::client_ca`], demanding client
    /// certificates signed by that CA). [`endpoints`](Self::endpoints) stay
    /// `127.0.0.1:PORT`; [`client_url`](Self::client_url) is `https://…`.
    pub async fn start_local_tls(tls: &ServerTls) -> Result<Self, Unavailable> {
        Self::launch(&[], Some(tls)).await
    }

    async fn launch(extra_args: &[&str], tls: Option<&ServerTls>) -> Result<Self, Unavailable> {
        super::retry_port_race("etcd", || Self::launch_once(extra_args, tls)).await
    }

    async fn launch_once(extra_args: &[&str], tls: Option<&ServerTls>) -> Result<Self, Unavailable> {
        let program = binary("etcd")?;
        let fail = |reason: String| Unavailable::StartFailed { server: "etcd".into(), reason };
        let dir = tempfile::Builder::new().prefix("registry-etcd-").tempdir().map_err(|e| fail(e.to_string()))?;
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let port = free_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let (client_port, peer_port, health_port) = (ports[0], ports[1], ports[2]);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let data_dir = dir.path().join("data");
        // A single server is a cluster of one member.
        let initial = format!("registry-test={peer_url}");
        let mut args = member_args("registry-test", &data_dir, &client_url, &peer_url, &initial);
        // `/health` in plain HTTP on a port of its own, whatever the client
        // port demands (TLS, client certificates).
        args.extend(["--listen-metrics-urls".to_owned(), format!("http://127.0.0.1:{health_port}")]);
        if let Some(tls) = tls {
            args.extend(["--cert-file".to_owned(), path_str(&tls.cert), "--key-file".to_owned(), path_str(&tls.key)]);
            if let Some(ca) = &tls.client_ca {
                args.extend(["--client-cert-auth".to_owned(), "--trusted-ca-file".to_owned(), path_str(ca)]);
            }
        }
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let process = Process::new("etcd", &program, args, dir.path().join("etcd.log")).start()?;
        let mut server = Self {
            endpoints: vec![format!("127.0.0.1:{client_port}")],
            tls: tls.is_some(),
            local: Some(Local { process, health_port, _dir: dir }),
        };
        server.wait_healthy().await?;
        Ok(server)
    }

    fn external(list: &str) -> Self {
        let endpoints = list.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_owned).collect();
        Self { endpoints, tls: false, local: None }
    }

    /// The endpoints, `host:port` for a local server (as in `ETCD_ENDPOINTS` for the user's).
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    /// The first endpoint as a URL (`http://127.0.0.1:PORT`, `https://…`
    /// for a TLS server), e.g. for kube-apiserver's `--etcd-servers`.
    pub fn client_url(&self) -> String {
        let first = self.endpoints.first().map(String::as_str).unwrap_or_default();
        let scheme = if self.tls { "https" } else { "http" };
        if first.contains("://") { first.to_owned() } else { format!("{scheme}://{first}") }
    }

    /// True when this is a server this module started (and so can stop).
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// Kills the server (SIGKILL: an abrupt outage), keeping its data.
    pub fn stop(&mut self) -> Result<(), Unavailable> {
        let local = self.local_mut()?;
        local.process.kill();
        Ok(())
    }

    /// Starts the server again on the same ports and data dir, and waits
    /// until it is healthy.
    pub async fn restart(&mut self) -> Result<(), Unavailable> {
        self.local_mut()?.process.restart()?;
        self.wait_healthy().await
    }

    /// The last lines of the server's log (empty for the user's cluster).
    pub fn log_tail(&self, lines: usize) -> String {
        self.local.as_ref().map(|l| l.process.log_tail(lines)).unwrap_or_default()
    }

    fn local_mut(&mut self) -> Result<&mut Local, Unavailable> {
        self.local.as_mut().ok_or_else(|| Unavailable::StartFailed {
            server: "etcd".into(),
            reason: format!("the cluster from {ENDPOINTS_VAR} cannot be stopped or restarted by the tests"),
        })
    }

    /// Polls `GET /health` until etcd reports healthy (it has a leader and
    /// serves reads), the process exits, or [`START_TIMEOUT`] passes.
    async fn wait_healthy(&mut self) -> Result<(), Unavailable> {
        let Some(local) = self.local.as_mut() else { return Ok(()) };
        let authority = format!("127.0.0.1:{}", local.health_port);
        let poll = Duration::from_millis(50);
        local.process.wait_until(START_TIMEOUT, poll, || health(&authority, Duration::from_secs(1))).await
    }
}

/// The arguments of member `name` of a new cluster whose members are
/// `initial` (`name=peer-url,…`): its data dir, client and peer URLs.
pub(crate) fn member_args(name: &str, data_dir: &Path, client_url: &str, peer_url: &str, initial: &str) -> Vec<String> {
    [
        "--name",
        name,
        "--data-dir",
        &path_str(data_dir),
        "--listen-client-urls",
        client_url,
        "--advertise-client-urls",
        client_url,
        "--listen-peer-urls",
        peer_url,
        "--initial-advertise-peer-urls",
        peer_url,
        "--initial-cluster",
        initial,
        "--initial-cluster-state",
        "new",
        "--log-level",
        "warn",
        // A test server's data need not survive a power cut; it must
        // survive a killed process, which the page cache guarantees.
        "--unsafe-no-fsync",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// One `GET /health` on an etcd's client or metrics port (`authority`):
/// `Ok` when it answers `"health":"true"` (it has a leader and serves a
/// linearizable read), else what it answered.
pub(crate) async fn health(authority: &str, limit: Duration) -> Result<(), String> {
    match http::request(authority, "GET", "/health", None, &[], limit).await {
        Ok((_, body)) if body.contains(r#""health":"true""#) => Ok(()),
        Ok((status, body)) => Err(format!("HTTP {status}: {body}")),
        Err(e) => Err(e.to_string()),
    }
}
