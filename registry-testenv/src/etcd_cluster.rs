//! [`EtcdCluster`]: a real 3-member etcd cluster on loopback, for the fault
//! scenarios (leader loss, a partitioned member, quorum loss).
//!
//! Each member listens on its own loopback address with etcd's default
//! ports — clients on `http://127.0.0.x:2379`, peers on `:2380` — and has
//! its own data dir (in one temp dir, removed on drop) and its own group id,
//! so one member can be silently partitioned
//! ([`EtcdCluster::partition`]). Address blocks are `127.0.0.101-103`,
//! `104-106`, … up to `122-124` (eight clusters at once), each held by a lock
//! file while the cluster lives ([`super::member::ClusterSlot`]).
//!
//! Members run with etcd's default timing (heartbeat 100 ms, election
//! timeout 1 s, gRPC keepalive minimum 5 s) and `--unsafe-no-fsync` (a test
//! cluster must survive a killed process, not a power cut). The fault tools
//! are small named functions: [`stop`](EtcdCluster::stop) (SIGTERM),
//! [`kill`](EtcdCluster::kill) (SIGKILL), [`restart`](EtcdCluster::restart),
//! [`kill_leader`](EtcdCluster::kill_leader),
//! [`move_leader`](EtcdCluster::move_leader); [`leader`](EtcdCluster::leader)
//! and [`watch_streams`](EtcdCluster::watch_streams) tell which member does
//! what. Every member is killed on drop.
//!
//! This cluster is always local: `ETCD_ENDPOINTS` (the user's cluster) is for
//! the scenarios that do not break servers.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::http;
use super::member::ClusterSlot;
use super::partition::Partition;
use super::process::Process;
use super::{Unavailable, binary};

/// Members in the cluster.
pub const SIZE: usize = 3;
/// Client port of every member (etcd's default).
pub const CLIENT_PORT: u16 = 2379;
/// Peer port of every member (etcd's default).
pub const PEER_PORT: u16 = 2380;
/// How long starting members may take to form a healthy cluster.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one status or health probe.
const PROBE: Duration = Duration::from_secs(1);

/// A running 3-member etcd cluster.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    /// Data dirs and logs; removed after the members are killed.
    dir: tempfile::TempDir,
    /// The address block; released last.
    _slot: ClusterSlot,
}

#[derive(Debug)]
struct Member {
    process: Process,
    /// etcd's member id, learnt when the cluster is first healthy.
    id: u64,
}

/// What one member says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its member id.
    pub id: u64,
    /// The leader it knows (0: none).
    pub leader: u64,
    /// Its raft term.
    pub term: u64,
}

/// A cheap check that a cluster can be started here (the `etcd` binary is installed).
pub fn available() -> Result<(), Unavailable> {
    binary("etcd").map(|_| ())
}

fn json_u64(value: &serde_json::Value) -> u64 {
    match value {
        serde_json::Value::String(s) => s.parse().unwrap_or(0),
        serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

impl EtcdCluster {
    /// Starts three members and waits until all are healthy (a leader elected).
    pub async fn start() -> Result<Self, Unavailable> {
        let program = binary("etcd")?;
        let slot = ClusterSlot::acquire("etcd", 101, SIZE as u8, 8)?;
        let fail = |reason: String| Unavailable::StartFailed { server: "etcd cluster".into(), reason };
        let dir =
            tempfile::Builder::new().prefix("registry-etcd-cluster-").tempdir().map_err(|e| fail(e.to_string()))?;
        let token = dir.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let initial = slot
            .addresses
            .iter()
            .enumerate()
            .map(|(i, a)| format!("m{i}=http://{a}:{PEER_PORT}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::with_capacity(SIZE);
        for (i, address) in slot.addresses.iter().enumerate() {
            let client = format!("http://{address}:{CLIENT_PORT}");
            let peer = format!("http://{address}:{PEER_PORT}");
            let data = dir.path().join(format!("m{i}"));
            let mut args = super::etcd::member_args(&format!("m{i}"), &data, &client, &peer, &initial);
            args.extend(["--initial-cluster-token".to_owned(), token.clone()]);
            let log = dir.path().join(format!("m{i}.log"));
            let process =
                Process::new(&format!("etcd m{i} ({address})"), &program, args, log).member(*address).start()?;
            members.push(Member { process, id: 0 });
        }
        let mut cluster = Self { members, dir, _slot: slot };
        cluster.wait_healthy(START_TIMEOUT).await?;
        for i in 0..SIZE {
            let status = cluster.status(i).await.map_err(|e| cluster.members[i].process.failed(e))?;
            cluster.members[i].id = status.id;
        }
        Ok(cluster)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Client endpoints of every member, `127.0.0.x:2379`, for `EtcdConfig::new`.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Client endpoint of member `i`, `127.0.0.x:2379`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("{}:{CLIENT_PORT}", self.address(i))
    }

    /// Loopback address of member `i`.
    pub fn address(&self, i: usize) -> Ipv4Addr {
        self.members[i].process.address()
    }

    /// etcd's member id of member `i`.
    pub fn member_id(&self, i: usize) -> u64 {
        self.members[i].id
    }

    /// Where the data dirs and logs are.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// True while member `i`'s process runs.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.members[i].process.is_running()
    }

    /// The last lines of member `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        self.members[i].process.log_tail(lines)
    }

    /// Member `i`'s own status (`POST /v3/maintenance/status` on its client port).
    pub async fn status(&self, i: usize) -> Result<MemberStatus, String> {
        let (code, body) = http::request(&self.endpoint(i), "POST", "/v3/maintenance/status", Some("{}"), &[], PROBE)
            .await
            .map_err(|e| e.to_string())?;
        if code != 200 {
            return Err(format!("status: HTTP {code}: {body}"));
        }
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("status: {e}: {body}"))?;
        Ok(MemberStatus {
            id: json_u64(&v["header"]["member_id"]),
            leader: json_u64(&v["leader"]),
            term: json_u64(&v["raftTerm"]),
        })
    }

    /// True when member `i` answers `/health` with `"health":"true"` (it
    /// has a leader and serves a linearizable read).
    pub async fn healthy(&self, i: usize) -> bool {
        super::etcd::health(&self.endpoint(i), PROBE).await.is_ok()
    }

    /// Index of the current leader, as the running members that answer
    /// report it (the highest term wins), or `None` while there is none.
    pub async fn leader(&mut self) -> Option<usize> {
        let mut best: Option<MemberStatus> = None;
        for i in 0..self.len() {
            if !self.is_running(i) {
                continue;
            }
            if let Ok(status) = self.status(i).await
                && status.leader != 0
                && best.is_none_or(|b| status.term > b.term)
            {
                best = Some(status);
            }
        }
        let leader = best?.leader;
        self.members.iter().position(|m| m.id == leader)
    }

    /// Waits until a leader is elected among the running members.
    pub async fn wait_leader(&mut self, timeout: Duration) -> Result<usize, Unavailable> {
        let start = Instant::now();
        loop {
            if let Some(i) = self.leader().await
                && self.is_running(i)
            {
                return Ok(i);
            }
            if start.elapsed() > timeout {
                return Err(Unavailable::StartFailed {
                    server: "etcd cluster".into(),
                    reason: format!("no leader after {timeout:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running member is healthy.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<(), Unavailable> {
        let start = Instant::now();
        loop {
            let mut all = true;
            for i in 0..self.len() {
                if self.members[i].process.crashed() {
                    return Err(self.members[i].process.failed("exited"));
                }
                if !self.members[i].process.is_running() {
                    // Stopped by the test.
                    continue;
                }
                if !self.healthy(i).await {
                    all = false;
                }
            }
            if all {
                return Ok(());
            }
            if start.elapsed() > timeout {
                let unhealthy = self.unhealthy().await;
                let tails = unhealthy
                    .iter()
                    .map(|&i| format!("m{i}:\n{}", self.log_tail(i, 15)))
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(Unavailable::StartFailed {
                    server: "etcd cluster".into(),
                    reason: format!("members {unhealthy:?} not healthy after {timeout:?}; log tails:\n{tails}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn unhealthy(&mut self) -> Vec<usize> {
        let mut out = Vec::new();
        for i in 0..self.len() {
            if self.members[i].process.is_running() && !self.healthy(i).await {
                out.push(i);
            }
        }
        out
    }

    /// Stops member `i` gracefully (SIGTERM; SIGKILL after 10 s).
    pub fn stop(&mut self, i: usize) {
        self.members[i].process.terminate(Duration::from_secs(10));
    }

    /// Kills member `i` (SIGKILL: a crash), keeping its data.
    pub fn kill(&mut self, i: usize) {
        self.members[i].process.kill();
    }

    /// Starts member `i` again on its address and data without waiting
    /// (e.g. the second of two members that restore a quorum together).
    pub fn revive(&mut self, i: usize) -> Result<(), Unavailable> {
        self.members[i].process.restart()
    }

    /// Starts member `i` again and waits until it is healthy.
    pub async fn restart(&mut self, i: usize) -> Result<(), Unavailable> {
        self.revive(i)?;
        let start = Instant::now();
        while !self.healthy(i).await {
            if !self.members[i].process.is_running() {
                return Err(self.members[i].process.failed("exited after restart"));
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(self.members[i].process.failed(format!("not healthy {START_TIMEOUT:?} after restart")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Kills the current leader (SIGKILL) and returns its index.
    pub async fn kill_leader(&mut self) -> Result<usize, Unavailable> {
        let leader = self.wait_leader(START_TIMEOUT).await?;
        self.kill(leader);
        Ok(leader)
    }

    /// Makes member `i` the leader (etcd's leadership transfer, asked of the
    /// current leader), and waits until every member agrees.
    pub async fn move_leader(&mut self, i: usize) -> Result<(), Unavailable> {
        let fail = |reason: String| Unavailable::StartFailed { server: "etcd cluster".into(), reason };
        let start = Instant::now();
        loop {
            let leader = self.wait_leader(START_TIMEOUT).await?;
            if leader == i {
                return Ok(());
            }
            let body = format!(r#"{{"targetID":"{}"}}"#, self.members[i].id);
            let answer = http::request(
                &self.endpoint(leader),
                "POST",
                "/v3/maintenance/transfer-leadership",
                Some(&body),
                &[],
                Duration::from_secs(5),
            )
            .await;
            if start.elapsed() > START_TIMEOUT {
                return Err(fail(format!("leadership did not move to m{i}: {answer:?}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Open watch streams on member `i` (its `etcd_debugging_mvcc_watch_stream_total`).
    pub async fn watch_streams(&self, i: usize) -> Result<u64, String> {
        let (code, body) =
            http::request(&self.endpoint(i), "GET", "/metrics", None, &[], PROBE).await.map_err(|e| e.to_string())?;
        if code != 200 {
            return Err(format!("metrics: HTTP {code}"));
        }
        body.lines()
            .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watch_stream_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .ok_or_else(|| "metrics: no etcd_debugging_mvcc_watch_stream_total".to_owned())
    }

    /// Silently partitions member `i` from everyone (clients and peers) for
    /// at most `bound`; healed when the guard drops.
    pub fn partition(&self, i: usize, bound: Duration) -> Result<Partition, Unavailable> {
        self.members[i].process.partition(bound)
    }
}
