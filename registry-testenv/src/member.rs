//! [`MemberProcess`]: one server of a test cluster — its own loopback
//! address, its own group id (so a [`Partition`](super::partition::Partition)
//! can match every packet its sockets send), killed with the test.
//!
//! When this process runs as root, a member is started through `setpriv
//! --regid GID --clear-groups --pdeathsig SIGKILL`: it keeps uid 0 (so it
//! reads binaries under `/root` and writes its data dir like any test server)
//! but its sockets carry the group id [`member_gid`] derives from its
//! address, and the kernel kills it when the thread that started it ends —
//! a test binary that is itself killed leaves no server behind holding the
//! addresses of the next run. Without root, members run as plain children
//! (no group of their own: partitions of members are then unavailable).
//!
//! Because the signal follows the starting *thread*, a cluster is started
//! from a thread that lives as long as it: a test's own thread or a runtime
//! worker, never `tokio::task::spawn_blocking`, whose threads end after 10 s
//! idle and would take the cluster with them. A cluster whose members all
//! vanish at once with nothing in their logs was killed this way, or dropped.
//!
//! [`ClusterSlot`] hands out the loopback address blocks: a lock file per
//! block under the system temp dir, held for the cluster's lifetime, so
//! concurrent test binaries (and concurrent tests in one binary) never start
//! two servers on one address.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Unavailable;

/// Group id of the member listening on `address`: 64000 + the last octet.
pub fn member_gid(address: Ipv4Addr) -> u32 {
    64_000 + u32::from(address.octets()[3])
}

/// True when this process may start members under their own group id (root).
pub fn can_isolate() -> bool {
    is_root() && setpriv().is_some()
}

fn is_root() -> bool {
    // `/proc/self/status` has `Uid:\treal\teffective\t…`; no libc needed.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        .unwrap_or(false)
}

fn setpriv() -> Option<PathBuf> {
    ["/usr/bin/setpriv", "/bin/setpriv"].iter().map(PathBuf::from).find(|p| p.is_file())
}

/// A block of loopback addresses held by one cluster.
#[derive(Debug)]
pub struct ClusterSlot {
    /// The addresses of the block, in order.
    pub addresses: Vec<Ipv4Addr>,
    /// Held open (and locked) for the cluster's lifetime.
    _lock: File,
}

impl ClusterSlot {
    /// The first free block of `size` addresses among `slots` blocks
    /// starting at `127.0.0.<first>`: block `s` is `first + s*size ..`.
    pub fn acquire(kind: &str, first: u8, size: u8, slots: u8) -> Result<Self, Unavailable> {
        let dir = std::env::temp_dir().join("registry-cluster-slots");
        let fail = |reason: String| Unavailable::StartFailed { server: format!("{kind} cluster"), reason };
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        for slot in 0..slots {
            let base = u16::from(first) + u16::from(slot) * u16::from(size);
            if base + u16::from(size) > 255 {
                break;
            }
            let path = dir.join(format!("{kind}-{base}.lock"));
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| fail(format!("{}: {e}", path.display())))?;
            if file.try_lock().is_ok() {
                let addresses = (0..u16::from(size)).map(|i| Ipv4Addr::new(127, 0, 0, (base + i) as u8)).collect();
                return Ok(Self { addresses, _lock: file });
            }
        }
        Err(fail(format!("all {slots} address blocks of {size} from 127.0.0.{first} are in use")))
    }
}

/// A member's server process.
#[derive(Debug)]
pub struct MemberProcess {
    name: String,
    address: Ipv4Addr,
    gid: Option<u32>,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// Stopped or killed by the test (not crashed).
    stopped: bool,
}

impl MemberProcess {
    /// Starts `program args…` for the member `name` on `address`, appending
    /// its output to `log`.
    pub fn start(
        name: &str,
        address: Ipv4Addr,
        program: &Path,
        args: Vec<String>,
        log: PathBuf,
    ) -> Result<Self, Unavailable> {
        let gid = can_isolate().then(|| member_gid(address));
        let mut member = Self {
            name: name.to_owned(),
            address,
            gid,
            program: program.to_owned(),
            args,
            log,
            child: None,
            stopped: false,
        };
        member.spawn()?;
        Ok(member)
    }

    fn spawn(&mut self) -> Result<(), Unavailable> {
        let fail = |reason: String| Unavailable::StartFailed { server: self.name.clone(), reason };
        let out = File::options().create(true).append(true).open(&self.log).map_err(|e| fail(e.to_string()))?;
        let err = out.try_clone().map_err(|e| fail(e.to_string()))?;
        let mut command = match (self.gid, setpriv()) {
            (Some(gid), Some(setpriv)) => {
                let mut c = Command::new(setpriv);
                c.args(["--regid", &gid.to_string(), "--clear-groups", "--pdeathsig", "SIGKILL", "--"]);
                c.arg(&self.program);
                c
            }
            _ => Command::new(&self.program),
        };
        let child = command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| fail(format!("spawn {}: {e}", self.program.display())))?;
        self.child = Some(child);
        self.stopped = false;
        Ok(())
    }

    /// The member's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The loopback address it listens on.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The group id its sockets carry (`None` when not started as root).
    pub fn gid(&self) -> Option<u32> {
        self.gid
    }

    /// Kills it (SIGKILL: a crash) and waits for it.
    pub fn kill(&mut self) {
        self.stopped = true;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it gracefully (SIGTERM), killing it if it has not exited within `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        self.stopped = true;
        let Some(mut child) = self.child.take() else { return };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + grace;
        while sent && Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts it again with the same arguments (same address, ports, data dir).
    pub fn restart(&mut self) -> Result<(), Unavailable> {
        self.kill();
        self.spawn()
    }

    /// True while it runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// True when it exited without the test stopping it.
    pub fn crashed(&mut self) -> bool {
        !self.stopped && !self.is_running()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// An error naming this member, with the tail of its log.
    pub fn failed(&self, reason: impl std::fmt::Display) -> Unavailable {
        Unavailable::StartFailed {
            server: self.name.clone(),
            reason: format!("{reason}; log tail:\n{}", self.log_tail(30)),
        }
    }
}

impl Drop for MemberProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One HTTP/1.0 exchange with `authority` (no chunked answers, connection
/// closed after it), bounded by `limit`: `(status, body)`.
pub async fn http(
    authority: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    limit: Duration,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await?;
        let body = body.unwrap_or("");
        let head = format!(
            "{method} {path} HTTP/1.0\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {head:?}")))?;
        Ok((status, body.to_owned()))
    };
    tokio::time::timeout(limit, exchange).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{authority} did not answer in {limit:?}")))
    })
}
