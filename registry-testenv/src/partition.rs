//! [`Partition`]: a silent network partition on loopback — packets dropped,
//! never refused — healed when the guard drops, also when the test panics,
//! and in any case after a bound.
//!
//! # How
//!
//! Each partition is one nftables table of its own,
//! `inet regtest_part_<pid>_<n>`, created in one `nft -f` transaction and
//! deleted on heal, so partitions of concurrent tests never touch each
//! other's rules. Its chains hook `input` and `output`, where every loopback
//! packet passes (FACTS: on loopback both directions cross `input`):
//!
//! - [`Cut::Address`]: `ip daddr A drop; ip saddr A drop` on input — no
//!   packet to or from the address.
//! - [`Cut::Port`]: `tcp dport P drop; tcp sport P drop` on input.
//! - [`Cut::Member`]: a whole server process. Its address alone is not
//!   enough: the connections a member *opens* (etcd's raft streams and
//!   pipelines, Consul's RPC and gossip dials) leave from `127.0.0.1`, not
//!   from its own address, so peers would still hear it over them. Members
//!   run under a group id of their own ([`super::member`]), so the output
//!   chain drops every packet its sockets send (`meta skgid G`) and marks
//!   the connection (`ct mark set M`); the input chain drops packets of
//!   marked connections and packets to or from its address. Packets already
//!   in flight when the cut starts may still arrive (as on a real network).
//! - [`Cut::Between`]: two groups of server processes lose each other —
//!   a host cut off from the rest of a cluster — while everything else
//!   (the test process, the host's own applications) still reaches both:
//!   the output chain drops and marks packets a process of one group sends
//!   to an address of the other (`meta skgid {…} ip daddr {…}`), the input
//!   chain drops the marked connections.
//!
//! # Bounded
//!
//! A partition is created with a bound: a detached watchdog
//! (`sh -c 'sleep N; nft delete table …'`) deletes the table after it even
//! if this process is killed before it can drop the guard. Dropping the
//! guard deletes the table at once and ends the watchdog. Tables left by a
//! process that no longer exists are deleted by the next partition.
//!
//! Needs `nft` (Debian package `nftables`, installed by
//! `scripts/install-test-servers.sh`) and root (`CAP_NET_ADMIN`).

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::Unavailable;

/// Prefix of every table this module creates.
pub const TABLE_PREFIX: &str = "regtest_part_";

static NEXT: AtomicU32 = AtomicU32::new(1);

/// A server process a partition can tell apart: its address and group id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Process {
    /// Its loopback address.
    pub address: Ipv4Addr,
    /// The group id its sockets carry.
    pub gid: u32,
}

/// What a partition cuts off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cut {
    /// All traffic to and from one loopback address.
    Address(Ipv4Addr),
    /// All TCP traffic to and from one port, on any address.
    Port(u16),
    /// One server process: its address, and every packet its sockets send
    /// (matched by its group id) with the connections they belong to.
    Member {
        /// Its loopback address.
        address: Ipv4Addr,
        /// The group id its sockets carry.
        gid: u32,
    },
    /// Two groups of processes from each other (each keeps talking within
    /// its group, and to everyone else).
    Between {
        /// One side.
        a: Vec<Process>,
        /// The other side.
        b: Vec<Process>,
    },
}

fn list<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    format!("{{ {} }}", items.map(|i| i.to_string()).collect::<Vec<_>>().join(", "))
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cut::Address(a) => write!(f, "address {a}"),
            Cut::Port(p) => write!(f, "tcp port {p}"),
            Cut::Member { address, gid } => write!(f, "member {address} (gid {gid})"),
            Cut::Between { a, b } => {
                write!(f, "{} from {}", list(a.iter().map(|p| p.address)), list(b.iter().map(|p| p.address)))
            }
        }
    }
}

/// An active silent partition; healed on drop.
#[derive(Debug)]
pub struct Partition {
    table: String,
    cut: Cut,
    started: Instant,
    watchdog: Option<Child>,
    healed: bool,
}

fn nft_binary() -> Option<PathBuf> {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"].iter().map(PathBuf::from).find(|p| p.is_file())
}

fn unavailable(reason: impl Into<String>) -> Unavailable {
    Unavailable::NotApplicable(format!("silent partitions: {}", reason.into()))
}

/// Checks that partitions can be made here: `nft` is installed and may
/// change the ruleset (it lists the tables as a probe).
pub fn available() -> Result<(), Unavailable> {
    let nft = nft_binary().ok_or_else(|| unavailable("`nft` not found (run scripts/install-test-servers.sh)"))?;
    let out = Command::new(&nft)
        .args(["list", "tables"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| unavailable(format!("{}: {e}", nft.display())))?;
    if !out.status.success() {
        return Err(unavailable(format!(
            "`nft list tables` failed (needs root / CAP_NET_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Names of the tables of this module that exist now.
pub fn leftover_tables() -> Vec<String> {
    let Some(nft) = nft_binary() else { return Vec::new() };
    let Ok(out) = Command::new(nft).args(["list", "tables"]).stdin(Stdio::null()).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table inet "))
        .filter(|name| name.starts_with(TABLE_PREFIX))
        .map(str::to_owned)
        .collect()
}

/// Deletes tables whose creating process is gone.
fn sweep_orphans() {
    for table in leftover_tables() {
        let pid = table.strip_prefix(TABLE_PREFIX).and_then(|rest| rest.split('_').next());
        if let Some(pid) = pid
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = delete_table(&table);
        }
    }
}

fn delete_table(table: &str) -> Result<(), String> {
    let nft = nft_binary().ok_or("`nft` not found")?;
    let out = Command::new(nft)
        .args(["delete", "table", "inet", table])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()) }
}

impl Partition {
    /// Cuts `cut` off, silently, until the guard is dropped or [healed](Self::heal),
    /// and at most for `bound`.
    pub fn start(cut: Cut, bound: Duration) -> Result<Self, Unavailable> {
        let nft = nft_binary().ok_or_else(|| unavailable("`nft` not found (run scripts/install-test-servers.sh)"))?;
        if bound.is_zero() {
            return Err(unavailable("a partition needs a bound greater than zero"));
        }
        sweep_orphans();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let table = format!("{TABLE_PREFIX}{pid}_{n}");
        // A connection mark of our own: pid and sequence, never 0.
        let mark = (pid.wrapping_mul(4096) ^ n) | 0x4000_0000;
        let (input, output) = match &cut {
            Cut::Address(a) => (format!("ip daddr {a} drop\nip saddr {a} drop"), String::new()),
            Cut::Port(p) => (format!("tcp dport {p} drop\ntcp sport {p} drop"), String::new()),
            Cut::Member { address, gid } => (
                format!("ct mark {mark:#x} drop\nip daddr {address} drop\nip saddr {address} drop"),
                format!("meta skgid {gid} ct mark set {mark:#x} drop"),
            ),
            Cut::Between { a, b } => {
                if a.is_empty() || b.is_empty() {
                    return Err(unavailable("a partition between groups needs a process on each side"));
                }
                let one_way = |from: &[Process], to: &[Process]| {
                    format!(
                        "meta skgid {} ip daddr {} ct mark set {mark:#x} drop",
                        list(from.iter().map(|p| p.gid)),
                        list(to.iter().map(|p| p.address))
                    )
                };
                (format!("ct mark {mark:#x} drop"), format!("{}\n{}", one_way(a, b), one_way(b, a)))
            }
        };
        let script = format!(
            "table inet {table} {{\n\
             chain input {{ type filter hook input priority -10; policy accept;\n{input}\n}}\n\
             chain output {{ type filter hook output priority -10; policy accept;\n{output}\n}}\n\
             }}\n"
        );
        let mut child = Command::new(&nft)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| unavailable(format!("{}: {e}", nft.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes()).map_err(|e| unavailable(format!("nft -f -: {e}")))?;
        }
        let out = child.wait_with_output().map_err(|e| unavailable(format!("nft -f -: {e}")))?;
        if !out.status.success() {
            return Err(unavailable(format!(
                "nft refused the partition of {cut}: {}\n{script}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let started = Instant::now();
        // The watchdog outlives this process if it is killed: the bound
        // holds. In a process group of its own, so that healing ends its
        // `sleep` with it.
        let watchdog = Command::new("sh")
            .process_group(0)
            .args([
                "-c",
                &format!(
                    "sleep {secs}; exec {nft} delete table inet {table} 2>/dev/null",
                    secs = bound.as_secs_f64().ceil() as u64,
                    nft = nft.display()
                ),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let watchdog = match watchdog {
            Ok(child) => Some(child),
            Err(e) => {
                let _ = delete_table(&table);
                return Err(unavailable(format!("watchdog for {table}: {e}")));
            }
        };
        tracing::info!(%cut, %table, ?bound, "partition started");
        Ok(Self { table, cut, started, watchdog, healed: false })
    }

    /// What is cut off.
    pub fn cut(&self) -> &Cut {
        &self.cut
    }

    /// The nftables table holding the rules.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// How long the partition has lasted.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Heals now: deletes the table (an error if it cannot be deleted and
    /// still exists) and returns how long the partition lasted.
    pub fn heal(mut self) -> Result<Duration, Unavailable> {
        let lasted = self.started.elapsed();
        self.heal_now().map_err(|e| unavailable(format!("cannot heal {}: {e}", self.cut)))?;
        Ok(lasted)
    }

    fn heal_now(&mut self) -> Result<(), String> {
        if self.healed {
            return Ok(());
        }
        self.healed = true;
        if let Some(mut watchdog) = self.watchdog.take() {
            // The whole group: `sh` and the `sleep` it waits on.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", watchdog.id())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let result = delete_table(&self.table);
        tracing::info!(cut = %self.cut, table = %self.table, lasted = ?self.started.elapsed(), "partition healed");
        match result {
            // Already gone (the bound passed): healed all the same.
            Err(_) if !leftover_tables().contains(&self.table) => Ok(()),
            other => other,
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if let Err(e) = self.heal_now() {
            eprintln!("partition of {}: could not delete nft table {}: {e}", self.cut, self.table);
        }
    }
}
