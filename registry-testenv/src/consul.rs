//! [`ConsulServer`]: a real Consul agent on loopback for tests — or the
//! user's agent when `CONSUL_HTTP_ADDR` is set (with `CONSUL_HTTP_TOKEN`).
//!
//! A started agent runs `consul agent -dev` bound to `127.0.0.1`, with every
//! port chosen free (HTTP, serf LAN/WAN, server RPC; DNS and gRPC off) and
//! its own temp dir; it is ready when [`ConsulServer::start`] returns (a
//! leader is elected and the agent's node is registered with a passing
//! `serfHealth`, so sessions can be created at once). It can be
//! [stopped](ConsulServer::stop) and [restarted](ConsulServer::restart) on
//! the same ports and data dir — a `-dev` agent keeps the catalog, KV and
//! sessions in memory and only its agent-local services and checks in the
//! data dir, so after a restart the services are back with critical checks
//! while their sessions and KV records are gone, and registrations must be
//! completed by their keepalives, which is what the outage scenario checks —
//! and is killed on drop. [`ConsulServer::start_local_with_acl`] starts one with ACLs enabled
//! (default policy deny) and a known master token.

use std::path::Path;
use std::time::Duration;

use super::process::Process;
use super::{Unavailable, binary, free_port, http, var};

/// Variable naming the user's agent (`host:port` or `http://host:port`).
pub const ADDR_VAR: &str = "CONSUL_HTTP_ADDR";
/// Variable with the user's ACL token.
pub const TOKEN_VAR: &str = "CONSUL_HTTP_TOKEN";
/// How long a starting agent may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A Consul agent for tests: a process this module started, or the user's.
#[derive(Debug)]
pub struct ConsulServer {
    /// `http://127.0.0.1:PORT`.
    address: String,
    token: Option<String>,
    local: Option<Local>,
}

#[derive(Debug)]
struct Local {
    process: Process,
    http_port: u16,
    node: String,
    /// Data dir and log; removed on drop (after the process is killed).
    _dir: tempfile::TempDir,
}

/// True when the user named an agent with `CONSUL_HTTP_ADDR`.
pub fn external_configured() -> bool {
    var(ADDR_VAR).is_some()
}

/// A cheap check for tests that need a Consul agent of its own (they stop it, enable
/// auth, or write fixed keys, so never the user's server): the `consul` binary
/// is installed.
pub fn local_available() -> Result<(), Unavailable> {
    binary("consul").map(|_| ())
}

/// A cheap check that an agent can be had: `CONSUL_HTTP_ADDR` is set or the
/// `consul` binary is installed.
pub fn available() -> Result<(), Unavailable> {
    if external_configured() { Ok(()) } else { binary("consul").map(|_| ()) }
}

/// Where the agent's data dir goes: a RAM-backed directory when the machine
/// has one (`/dev/shm`). A `-dev` agent keeps its catalog and KV in memory
/// but persists agent-local services, checks and every TTL check's state to
/// its data dir with an fsync each; on a disk shared with busy builds those
/// fsyncs stall registrations and heartbeats for seconds, longer than the
/// suite's 2 s TTL. Elsewhere: the system temp dir.
fn data_dir_root() -> Option<&'static Path> {
    let shm = Path::new("/dev/shm");
    shm.is_dir().then_some(shm)
}

/// `n` distinct free ports.
fn free_ports(n: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    while ports.len() < n {
        let port = free_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

impl ConsulServer {
    /// The user's agent when `CONSUL_HTTP_ADDR` is set, else a new local agent.
    pub async fn start() -> Result<Self, Unavailable> {
        match var(ADDR_VAR) {
            Some(address) => Ok(Self::external(&address, var(TOKEN_VAR))),
            None => Self::start_local().await,
        }
    }

    /// A new local agent, whatever `CONSUL_HTTP_ADDR` says (for scenarios
    /// that stop and restart their agent).
    pub async fn start_local() -> Result<Self, Unavailable> {
        Self::start_local_with(&[], None).await
    }

    /// A new local agent with ACLs enabled, `default_policy = "deny"`, and
    /// `master_token` as its bootstrap (master) token, which
    /// [`token`](Self::token) returns.
    pub async fn start_local_with_acl(master_token: &str) -> Result<Self, Unavailable> {
        let hcl = format!(r#"acl {{ enabled = true default_policy = "deny" tokens {{ master = "{master_token}" }} }}"#);
        Self::start_local_with(&["-hcl", &hcl], Some(master_token.to_owned())).await
    }

    /// A new local agent with extra command-line flags; `token` is used for
    /// the readiness probe and returned by [`token`](Self::token).
    pub async fn start_local_with(extra_args: &[&str], token: Option<String>) -> Result<Self, Unavailable> {
        super::retry_port_race("consul", || Self::start_local_once(extra_args, token.clone())).await
    }

    async fn start_local_once(extra_args: &[&str], token: Option<String>) -> Result<Self, Unavailable> {
        let program = binary("consul")?;
        let fail = |reason: String| Unavailable::StartFailed { server: "consul".into(), reason };
        let dir = data_dir_root()
            .map_or_else(
                || tempfile::Builder::new().prefix("registry-consul-").tempdir(),
                |root| tempfile::Builder::new().prefix("registry-consul-").tempdir_in(root),
            )
            .map_err(|e| fail(e.to_string()))?;
        let ports = free_ports(4);
        let (http, serf_lan, serf_wan, server) = (ports[0], ports[1], ports[2], ports[3]);
        let node = format!("registry-test-{http}");
        let data_dir = dir.path().join("data");
        let mut args: Vec<String> = [
            "agent",
            "-dev",
            "-node",
            &node,
            "-bind",
            "127.0.0.1",
            "-client",
            "127.0.0.1",
            "-http-port",
            &http.to_string(),
            "-serf-lan-port",
            &serf_lan.to_string(),
            "-serf-wan-port",
            &serf_wan.to_string(),
            "-server-port",
            &server.to_string(),
            "-dns-port",
            "-1",
            "-grpc-port",
            "-1",
            "-data-dir",
            &data_dir.to_string_lossy(),
            "-log-level",
            "info",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let process = Process::new("consul", &program, args, dir.path().join("consul.log")).start()?;
        let mut agent = Self {
            address: format!("http://127.0.0.1:{http}"),
            token,
            local: Some(Local { process, http_port: http, node, _dir: dir }),
        };
        agent.wait_ready().await?;
        Ok(agent)
    }

    fn external(address: &str, token: Option<String>) -> Self {
        let address = address.trim().trim_end_matches('/');
        let address = if address.contains("://") { address.to_owned() } else { format!("http://{address}") };
        Self { address, token, local: None }
    }

    /// Base URL of the agent's HTTP API (`http://127.0.0.1:PORT`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The ACL token to use (the master token of an ACL agent, or `CONSUL_HTTP_TOKEN`).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// True when this is an agent this module started (and so can stop).
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// Kills the agent (SIGKILL: an abrupt outage). The HTTP port stays reserved for [`restart`](Self::restart).
    pub fn stop(&mut self) -> Result<(), Unavailable> {
        self.local_mut()?.process.kill();
        Ok(())
    }

    /// Starts the agent again on the same ports and data dir, and waits until it is ready.
    pub async fn restart(&mut self) -> Result<(), Unavailable> {
        self.local_mut()?.process.restart()?;
        self.wait_ready().await
    }

    /// The last lines of the agent's log (empty for the user's agent).
    pub fn log_tail(&self, lines: usize) -> String {
        self.local.as_ref().map(|l| l.process.log_tail(lines)).unwrap_or_default()
    }

    fn local_mut(&mut self) -> Result<&mut Local, Unavailable> {
        self.local.as_mut().ok_or_else(|| Unavailable::StartFailed {
            server: "consul".into(),
            reason: format!("the agent from {ADDR_VAR} cannot be stopped or restarted by the tests"),
        })
    }

    /// One plain-HTTP request to the agent (with the token, if any):
    /// `(status, body)`. For test glue that writes foreign entries or reads
    /// the API the way another client would; not for HTTPS agents.
    pub async fn request(&self, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, String)> {
        let authority = self
            .address
            .strip_prefix("http://")
            .ok_or_else(|| std::io::Error::other(format!("{} is not a plain http:// address", self.address)))?;
        http_request(authority, method, path, body, self.token.as_deref()).await
    }

    /// Polls until a leader is elected and the agent's node has a passing
    /// `serfHealth` (sessions need both), the process exits, or [`START_TIMEOUT`] passes.
    async fn wait_ready(&mut self) -> Result<(), Unavailable> {
        let token = self.token.clone();
        let Some(local) = self.local.as_mut() else { return Ok(()) };
        let authority = format!("127.0.0.1:{}", local.http_port);
        let health_path = format!("/v1/health/node/{}", local.node);
        let (authority, health_path, token) = (&authority, &health_path, token.as_deref());
        let ready = move || async move {
            match http_request(authority, "GET", "/v1/status/leader", None, token).await {
                Ok((200, body)) if body.trim() != "\"\"" => {}
                other => return Err(format!("leader: {other:?}")),
            }
            match http_request(authority, "GET", health_path, None, token).await {
                Ok((200, body)) if body.contains("serfHealth") && body.contains("\"passing\"") => Ok(()),
                other => Err(format!("node health: {other:?}")),
            }
        };
        local.process.wait_until(START_TIMEOUT, Duration::from_millis(50), ready).await
    }
}

/// One request to an agent, with its ACL token if any.
async fn http_request(
    authority: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let headers: Vec<(&str, &str)> = token.map(|t| ("X-Consul-Token", t)).into_iter().collect();
    http::request(authority, method, path, body, &headers, Duration::from_secs(10)).await
}
