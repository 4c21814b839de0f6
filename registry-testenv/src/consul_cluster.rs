//! [`ConsulCluster`]: a real Consul cluster on loopback — 3 servers and 2
//! client agents — for the fault scenarios, as in production: services
//! register through one client agent, discovery reads through another.
//!
//! Every agent binds its own loopback address with Consul's default ports
//! (HTTP 8500, server RPC 8300, serf LAN 8301, serf WAN 8302; DNS off) and
//! has its own data dir (under `/dev/shm` when there is one, like
//! [`super::consul`]) and its own group id, so one agent can be silently
//! partitioned. Address blocks are `127.0.0.151-155` (servers `.151-.153`,
//! clients `.154-.155`), `156-160`, … up to `186-190`, each held by a lock
//! file while the cluster lives ([`super::member::ClusterSlot`]). The layout
//! is the one verified in `/work/shared/clusters/FACTS.md`:
//! `-server -bootstrap-expect 3 -retry-join` each server, client agents
//! `-retry-join` the servers; plus `raft_multiplier = 1` (production timing,
//! as Consul recommends) and no update check.
//!
//! [`ConsulCluster::start`] returns when a leader is elected, all five
//! members are `alive` and both client agents have a passing `serfHealth`
//! (sessions need it). Fault tools: [`kill_agent`](ConsulCluster::kill_agent),
//! [`restart_agent`](ConsulCluster::restart_agent),
//! [`kill_server`](ConsulCluster::kill_server),
//! [`restart_server`](ConsulCluster::restart_server),
//! [`kill_leader`](ConsulCluster::kill_leader),
//! [`partition_agent`](ConsulCluster::partition_agent) (the agent falls
//! silent for everyone), [`cut_agent_from_cluster`](ConsulCluster::cut_agent_from_cluster)
//! (its host is cut off; local applications still reach it). Every agent
//! is killed on drop.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::http;
use super::member::ClusterSlot;
use super::partition::{Cut, Partition};
use super::process::Process;
use super::{Unavailable, binary};

/// Server agents.
pub const SERVERS: usize = 3;
/// Client agents.
pub const CLIENTS: usize = 2;
/// Most client agents [`ConsulCluster::start_fleet`] starts.
pub const FLEET_CLIENTS_MAX: usize = 10;
/// HTTP port of every agent (Consul's default).
pub const HTTP_PORT: u16 = 8500;
/// Server RPC port (Consul's default).
pub const SERVER_PORT: u16 = 8300;
/// How long agents may take to form a ready cluster. A bound, not a
/// typical time (a few seconds): the six tests of `registry-consul`'s
/// cluster suite start 30 agents at once, and in a cold CI run, beside the
/// background builds, one cluster became ready just past 45 s.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Deadline of one readiness probe.
const PROBE: Duration = Duration::from_secs(2);

/// A running Consul cluster: servers `0..3`, client agents `0..2` (or the
/// shape [`ConsulCluster::start_fleet`] asked for).
#[derive(Debug)]
pub struct ConsulCluster {
    /// Servers first, then client agents.
    agents: Vec<Process>,
    /// How many of `agents` are servers.
    servers: usize,
    /// Data dirs and logs; removed after the agents are killed.
    dir: tempfile::TempDir,
    /// The address block; released last.
    _slot: ClusterSlot,
}

/// A cheap check that a cluster can be started here (the `consul` binary is installed).
pub fn available() -> Result<(), Unavailable> {
    binary("consul").map(|_| ())
}

fn data_dir_root() -> Option<&'static Path> {
    let shm = Path::new("/dev/shm");
    shm.is_dir().then_some(shm)
}

impl ConsulCluster {
    /// Starts 3 servers and 2 client agents and waits until the cluster is ready.
    pub async fn start() -> Result<Self, Unavailable> {
        let slot = ClusterSlot::acquire("consul", 151, (SERVERS + CLIENTS) as u8, 8)?;
        Self::start_shape(slot, SERVERS, CLIENTS, &[]).await
    }

    /// Starts one server and `clients` client agents (at most
    /// [`FLEET_CLIENTS_MAX`]) on `127.0.0.211` and up, every agent given the
    /// extra `-hcl` lines `hcl`, and waits until the cluster is ready: the
    /// shape of a fleet spread over nodes, each node's instances on its own
    /// agent (`registry-bench --backend consul-agents`). A Consul agent's
    /// anti-entropy scans every service and check registered on it at each
    /// change, so one agent carrying a whole fleet of thousands measures
    /// that agent, not Consul (see `docs/performance.md`).
    pub async fn start_fleet(clients: usize, hcl: &[&str]) -> Result<Self, Unavailable> {
        if clients == 0 || clients > FLEET_CLIENTS_MAX {
            return Err(Unavailable::NotApplicable(format!(
                "a fleet cluster has 1 to {FLEET_CLIENTS_MAX} client agents, not {clients}"
            )));
        }
        // Always a block of the largest shape, so fleet clusters of
        // different sizes never share addresses.
        let slot = ClusterSlot::acquire("consul-fleet", 211, (1 + FLEET_CLIENTS_MAX) as u8, 4)?;
        Self::start_shape(slot, 1, clients, hcl).await
    }

    /// Starts `servers` servers and `clients` client agents on the first
    /// addresses of `slot` and waits until the cluster is ready.
    async fn start_shape(slot: ClusterSlot, servers: usize, clients: usize, hcl: &[&str]) -> Result<Self, Unavailable> {
        let program = binary("consul")?;
        let fail = |reason: String| Unavailable::StartFailed { server: "consul cluster".into(), reason };
        let builder = {
            let mut b = tempfile::Builder::new();
            b.prefix("registry-consul-cluster-");
            b
        };
        let dir = match data_dir_root() {
            Some(root) => builder.tempdir_in(root),
            None => builder.tempdir(),
        }
        .map_err(|e| fail(e.to_string()))?;
        let joins: Vec<String> =
            slot.addresses[..servers].iter().flat_map(|a| ["-retry-join".to_owned(), a.to_string()]).collect();
        let mut agents = Vec::with_capacity(servers + clients);
        for (i, address) in slot.addresses.iter().take(servers + clients).enumerate() {
            let server = i < servers;
            let node = if server { format!("s{i}") } else { format!("c{}", i - servers) };
            let data = dir.path().join(&node);
            let mut args: Vec<String> = vec!["agent".into()];
            if server {
                args.extend(["-server".into(), "-bootstrap-expect".into(), servers.to_string()]);
            }
            args.extend(
                [
                    "-node",
                    &node,
                    "-bind",
                    &address.to_string(),
                    "-client",
                    &address.to_string(),
                    "-data-dir",
                    &data.to_string_lossy(),
                    "-dns-port",
                    "-1",
                    "-log-level",
                    "info",
                    "-hcl",
                    "performance { raft_multiplier = 1 }",
                    "-hcl",
                    "disable_update_check = true",
                ]
                .iter()
                .map(|s| s.to_string()),
            );
            args.extend(hcl.iter().flat_map(|line| ["-hcl".to_owned(), (*line).to_owned()]));
            args.extend(joins.iter().cloned());
            let log = dir.path().join(format!("{node}.log"));
            let process =
                Process::new(&format!("consul {node} ({address})"), &program, args, log).member(*address).start()?;
            agents.push(process);
        }
        let mut cluster = Self { agents, servers, dir, _slot: slot };
        cluster.wait_ready(START_TIMEOUT).await?;
        Ok(cluster)
    }

    /// Number of client agents.
    pub fn clients(&self) -> usize {
        self.agents.len() - self.servers
    }

    /// Address of server `i`.
    pub fn server_address(&self, i: usize) -> Ipv4Addr {
        self.agents[i].address()
    }

    /// Address of client agent `j`.
    pub fn client_address(&self, j: usize) -> Ipv4Addr {
        self.agents[self.servers + j].address()
    }

    /// HTTP API of client agent `j`: `http://127.0.0.x:8500`.
    pub fn client_http(&self, j: usize) -> String {
        format!("http://{}:{HTTP_PORT}", self.client_address(j))
    }

    /// HTTP API of server `i`: `http://127.0.0.x:8500`.
    pub fn server_http(&self, i: usize) -> String {
        format!("http://{}:{HTTP_PORT}", self.server_address(i))
    }

    /// Where the data dirs and logs are.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Node name of client agent `j` (`c0`, `c1`).
    pub fn client_node(&self, j: usize) -> String {
        format!("c{j}")
    }

    /// The last lines of server `i`'s log.
    pub fn server_log(&self, i: usize, lines: usize) -> String {
        self.agents[i].log_tail(lines)
    }

    /// The last lines of client agent `j`'s log.
    pub fn client_log(&self, j: usize, lines: usize) -> String {
        self.agents[self.servers + j].log_tail(lines)
    }

    /// One plain-HTTP request to agent `agent` (servers `0..3`, then clients):
    /// `(status, body)`.
    async fn request(&self, agent: usize, method: &str, path: &str) -> std::io::Result<(u16, String)> {
        let authority = format!("{}:{HTTP_PORT}", self.agents[agent].address());
        http::request(&authority, method, path, None, &[], PROBE).await
    }

    /// One plain-HTTP GET to client agent `j` (test glue: read what another client would see).
    pub async fn client_get(&self, j: usize, path: &str) -> std::io::Result<(u16, String)> {
        self.request(self.servers + j, "GET", path).await
    }

    /// Index of the server the cluster calls its leader, as the running
    /// agents that answer report it (`/v1/status/leader`).
    pub async fn leader(&mut self) -> Option<usize> {
        for agent in 0..self.agents.len() {
            if !self.agents[agent].is_running() {
                continue;
            }
            if let Ok((200, body)) = self.request(agent, "GET", "/v1/status/leader").await {
                let leader = body.trim().trim_matches('"');
                if let Some((host, _)) = leader.rsplit_once(':')
                    && let Some(i) = (0..self.servers).find(|&i| self.server_address(i).to_string() == host)
                {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Waits until the running servers have elected a leader.
    pub async fn wait_leader(&mut self, timeout: Duration) -> Result<usize, Unavailable> {
        let start = Instant::now();
        loop {
            if let Some(i) = self.leader().await
                && self.agents[i].is_running()
            {
                return Ok(i);
            }
            if start.elapsed() > timeout {
                return Err(Unavailable::StartFailed {
                    server: "consul cluster".into(),
                    reason: format!("no leader after {timeout:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// True when agent `agent` knows a leader and sees every running agent alive.
    async fn agent_ready(&mut self, agent: usize) -> bool {
        let Ok((200, leader)) = self.request(agent, "GET", "/v1/status/leader").await else { return false };
        if leader.trim().trim_matches('"').is_empty() {
            return false;
        }
        let Ok((200, members)) = self.request(agent, "GET", "/v1/agent/members").await else { return false };
        let Ok(serde_json::Value::Array(members)) = serde_json::from_str::<serde_json::Value>(&members) else {
            return false;
        };
        let running: Vec<bool> = (0..self.agents.len()).map(|a| self.agents[a].is_running()).collect();
        (0..self.agents.len()).filter(|&a| running[a]).all(|a| {
            let address = self.agents[a].address().to_string();
            members.iter().any(|m| m["Addr"].as_str() == Some(address.as_str()) && m["Status"].as_u64() == Some(1))
        })
    }

    /// True when client agent `j`'s node has a passing `serfHealth` in the catalog.
    async fn client_registered(&self, j: usize) -> bool {
        let path = format!("/v1/health/node/{}", self.client_node(j));
        matches!(
            self.client_get(j, &path).await,
            Ok((200, body)) if body.contains("serfHealth") && body.contains("\"passing\"")
        )
    }

    /// Waits until a leader is elected, every running agent sees every
    /// running agent alive, and every running client agent's `serfHealth` passes.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), Unavailable> {
        let start = Instant::now();
        loop {
            let mut ready = true;
            for agent in 0..self.agents.len() {
                if !self.agents[agent].is_running() {
                    continue;
                }
                if !self.agent_ready(agent).await
                    || (agent >= self.servers && !self.client_registered(agent - self.servers).await)
                {
                    ready = false;
                    break;
                }
            }
            if ready {
                return Ok(());
            }
            if let Some(dead) = (0..self.agents.len()).find(|&a| self.agents[a].crashed()) {
                return Err(self.agents[dead].failed("exited"));
            }
            if start.elapsed() > timeout {
                let tails = (0..self.agents.len())
                    .map(|a| format!("{}:\n{}", self.agents[a].name(), self.agents[a].log_tail(8)))
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(Unavailable::StartFailed {
                    server: "consul cluster".into(),
                    reason: format!("not ready after {timeout:?}; log tails:\n{tails}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills client agent `j` (SIGKILL: the host's agent crashes).
    pub fn kill_agent(&mut self, j: usize) {
        self.agents[self.servers + j].kill();
    }

    /// Starts client agent `j` again on its address and data dir and waits
    /// until it is back in the cluster with a passing `serfHealth`.
    pub async fn restart_agent(&mut self, j: usize) -> Result<(), Unavailable> {
        self.agents[self.servers + j].restart()?;
        self.wait_ready(START_TIMEOUT).await
    }

    /// Kills server `i` (SIGKILL).
    pub fn kill_server(&mut self, i: usize) {
        self.agents[i].kill();
    }

    /// Starts server `i` again and waits until the cluster is ready.
    pub async fn restart_server(&mut self, i: usize) -> Result<(), Unavailable> {
        self.agents[i].restart()?;
        self.wait_ready(START_TIMEOUT).await
    }

    /// Kills the current leader (SIGKILL) and returns its server index.
    pub async fn kill_leader(&mut self) -> Result<usize, Unavailable> {
        let leader = self.wait_leader(START_TIMEOUT).await?;
        self.kill_server(leader);
        Ok(leader)
    }

    /// Silently partitions client agent `j` from everyone — servers, other
    /// agents, and the clients of its HTTP API — for at most `bound`.
    pub fn partition_agent(&self, j: usize, bound: Duration) -> Result<Partition, Unavailable> {
        self.agents[self.servers + j].partition(bound)
    }

    /// Silently cuts client agent `j` off from the rest of the cluster (the
    /// servers and the other client agent) for at most `bound` — its host's
    /// network is partitioned — while the clients of its HTTP API (the
    /// applications on its host: this test process) still reach it.
    pub fn cut_agent_from_cluster(&self, j: usize, bound: Duration) -> Result<Partition, Unavailable> {
        let a = vec![self.agents[self.servers + j].partitionable()?];
        let b = (0..self.agents.len())
            .filter(|&i| i != self.servers + j)
            .map(|i| self.agents[i].partitionable())
            .collect::<Result<Vec<_>, _>>()?;
        Partition::start(Cut::Between { a, b }, bound)
    }

    /// Silently partitions server `i` for at most `bound`.
    pub fn partition_server(&self, i: usize, bound: Duration) -> Result<Partition, Unavailable> {
        self.agents[i].partition(bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fleet_cluster_of_no_or_too_many_clients_is_refused_before_anything_starts() {
        for clients in [0, FLEET_CLIENTS_MAX + 1] {
            let started = ConsulCluster::start_fleet(clients, &[]).await;
            assert!(
                matches!(&started, Err(Unavailable::NotApplicable(reason)) if reason.contains(&format!("not {clients}"))),
                "{clients} clients: {started:?}"
            );
        }
    }
}
