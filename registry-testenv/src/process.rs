//! [`Process`]: the harness's one server child process — its output appended
//! to a log file, killed on drop, restartable with the same arguments (for
//! outage scenarios). A single server, a cluster member and a Kubernetes
//! node's component are each a `Process`.
//!
//! A cluster member ([`Process::member`]) listens on a loopback address of
//! its own; when this process runs as root it is started through `setpriv
//! --regid GID --clear-groups --pdeathsig SIGKILL` (see [`crate::member`]):
//! it keeps uid 0 (so it reads binaries under `/root` and writes its data dir
//! like any test server) but its sockets carry the group id
//! [`member_gid`] derives from its address, so a
//! [`Partition`] can match every packet it
//! sends, and the kernel kills it when the thread that started it ends.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Unavailable;
use crate::member::{can_isolate, member_gid, setpriv};
use crate::partition::{Cut, Partition, Process as PartitionProcess};

/// A server child process (see the module docs).
#[derive(Debug)]
pub struct Process {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    /// The loopback address of a cluster member.
    address: Option<Ipv4Addr>,
    /// The group id a member's sockets carry (started as root).
    gid: Option<u32>,
    child: Option<Child>,
    /// Stopped or killed by the test (not crashed).
    stopped: bool,
}

impl Process {
    /// A process `name` that runs `program args…` with its output appended
    /// to `log`, not started yet (see [`start`](Self::start)).
    pub fn new(name: &str, program: &Path, args: Vec<String>, log: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            program: program.to_owned(),
            args,
            envs: Vec::new(),
            log,
            address: None,
            gid: None,
            child: None,
            stopped: false,
        }
    }

    /// Sets an environment variable of the process.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.envs.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Makes it a cluster member on `address`, under the group id of that
    /// address when this process may isolate it (root).
    pub fn member(mut self, address: Ipv4Addr) -> Self {
        self.address = Some(address);
        self.gid = can_isolate().then(|| member_gid(address));
        self
    }

    /// Starts it.
    pub fn start(mut self) -> Result<Self, Unavailable> {
        self.spawn()?;
        Ok(self)
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
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| fail(format!("spawn {}: {e}", self.program.display())))?;
        self.child = Some(child);
        self.stopped = false;
        Ok(())
    }

    /// Its name (in errors and logs).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The loopback address it listens on: a member's own, else `127.0.0.1`.
    pub fn address(&self) -> Ipv4Addr {
        self.address.unwrap_or(Ipv4Addr::LOCALHOST)
    }

    /// The member as a [`Cut`] can name it (its address and group id), or
    /// why it cannot be cut off alone.
    pub fn partitionable(&self) -> Result<PartitionProcess, Unavailable> {
        match (self.address, self.gid) {
            (Some(address), Some(gid)) => Ok(PartitionProcess { address, gid }),
            (Some(_), None) => Err(Unavailable::NotApplicable(format!(
                "{} runs without a group of its own (the tests do not run as root)",
                self.name
            ))),
            (None, _) => Err(Unavailable::NotApplicable(format!("{} is not a cluster member", self.name))),
        }
    }

    /// Silently partitions this member from everyone — its clients and its
    /// peers — until the guard drops, and at most for `bound`.
    pub fn partition(&self, bound: Duration) -> Result<Partition, Unavailable> {
        let PartitionProcess { address, gid } = self.partitionable()?;
        Partition::start(Cut::Member { address, gid }, bound)
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills it (SIGKILL: a crash, or an outage) and waits for it.
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
        tail(&self.log, lines)
    }

    /// An error naming this process, with the tail of its log.
    pub fn failed(&self, reason: impl std::fmt::Display) -> Unavailable {
        Unavailable::StartFailed {
            server: self.name.clone(),
            reason: format!("{reason}; log tail:\n{}", self.log_tail(30)),
        }
    }
}

impl Process {
    /// Polls `ready` every `poll` until it answers `Ok`, the process exits,
    /// or `timeout` passes; the error carries the last answer and the log tail.
    pub async fn wait_until<F>(
        &mut self,
        timeout: Duration,
        poll: Duration,
        mut ready: impl FnMut() -> F,
    ) -> Result<(), Unavailable>
    where
        F: std::future::Future<Output = Result<(), String>>,
    {
        let start = Instant::now();
        loop {
            let last = match ready().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if !self.is_running() {
                return Err(self.failed("exited early"));
            }
            if start.elapsed() > timeout {
                return Err(self.failed(format!("not ready after {timeout:?} ({last})")));
            }
            tokio::time::sleep(poll).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of a file (empty when it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
