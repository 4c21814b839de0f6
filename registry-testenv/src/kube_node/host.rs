//! Everything a node changes on the host — its component processes, the
//! bridge, the cgroup root, host paths outside the run dir — and the
//! teardown that undoes it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::containerd::{ctr_cmd, remove_containers};
use super::host_lock::HostLock;
use super::procs::mounts;
use super::undo::undo_host;
use super::*;
use crate::process::Process;

/// How teardown removes a host path the node (the kubelet, containerd, CNI,
/// `mount`) created outside the run dir.
#[derive(Clone, Copy, Debug)]
pub(super) enum Removal {
    /// The directory, if empty (its entries were the node's and are gone by then).
    IfEmpty,
    /// Empty directories from the deepest up, and the sockets left in them
    /// (containerd's shim socket dirs).
    EmptyTree,
    /// The whole tree (node-only state, e.g. the kubelet's hard-coded device-plugin socket).
    Tree,
}

/// Host paths outside the run dir the node may create: the kubelet's
/// `/var/log/containers` links and `/var/lib/kubelet/device-plugins/kubelet.sock`
/// (both hard-coded), libcni's cache, containerd's shim sockets, libmount's
/// `/run/mount`.
pub(super) const HOST_PATHS: [(&str, Removal); 5] = [
    (CONTAINER_LOG_LINKS, Removal::IfEmpty),
    ("/var/lib/kubelet", Removal::Tree),
    ("/var/lib/cni", Removal::Tree),
    ("/run/containerd", Removal::EmptyTree),
    ("/run/mount", Removal::IfEmpty),
];

/// The [`HOST_PATHS`] that did not exist before the node started (so teardown removes them).
#[derive(Default, Debug)]
pub(super) struct Created {
    pub(super) paths: Vec<(&'static str, Removal)>,
}

impl Created {
    pub(super) fn now() -> Self {
        Self { paths: HOST_PATHS.iter().copied().filter(|(p, _)| !Path::new(p).exists()).collect() }
    }
}

/// Everything a node changed on the host, undone by [`Host::teardown`] (and on drop).
pub(super) struct Host {
    pub(super) run_dir: PathBuf,
    pub(super) components: Vec<Process>,
    pub(super) lock: HostLock,
    ctr: PathBuf,
    pub(super) created: Created,
    env_path: String,
    torn_down: bool,
}

impl Host {
    pub(super) fn new(run_dir: PathBuf, lock: HostLock, programs: &Programs) -> Self {
        let created = Created::now();
        let path = std::env::var("PATH").unwrap_or_default();
        let env_path = format!("{path}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        Self { run_dir, components: Vec::new(), lock, ctr: programs.ctr.clone(), created, env_path, torn_down: false }
    }

    pub(super) fn socket(&self) -> PathBuf {
        self.run_dir.join("containerd").join("containerd.sock")
    }

    /// A factory of `ctr` commands against this node's containerd, namespace `k8s.io`.
    pub(super) fn ctr_command(&self) -> impl Fn() -> Command + use<> {
        let ctr = self.ctr.clone();
        let socket = self.socket();
        move || ctr_cmd(&ctr, &socket)
    }

    pub(super) fn import_image(&self, tar: &Path) -> anyhow::Result<()> {
        let mut cmd = ctr_cmd(&self.ctr, &self.socket());
        cmd.args(["images", "import"]).arg(tar);
        run_checked(&mut cmd).map(|_| ())
    }

    pub(super) fn spawn(&mut self, name: &str, program: &Path, args: Vec<String>) -> Result<(), Unavailable> {
        let log = self.run_dir.join("logs").join(format!("{name}.log"));
        let process = Process::new(name, program, args, log).env("PATH", &self.env_path).start()?;
        let pid = process.pid().map(|p| p.to_string()).unwrap_or_default();
        self.components.push(process);
        fs::write(self.run_dir.join("pids").join(format!("{name}.pid")), format!("{pid}\n"))
            .map_err(|e| failed(name, format!("pid file: {e}")))?;
        Ok(())
    }

    /// Polls `ready` every 100 ms until it answers Ok, a component exits, or
    /// `timeout` passes (then the error carries `name`'s log tail).
    pub(super) async fn wait_until(
        &mut self,
        name: &str,
        timeout: Duration,
        mut ready: impl AsyncFnMut() -> Result<(), String>,
    ) -> Result<(), Unavailable> {
        let start = Instant::now();
        loop {
            let last = match ready().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            for c in &mut self.components {
                if !c.is_running() {
                    return Err(failed(c.name(), format!("exited early; log tail:\n{}", c.log_tail(40))));
                }
            }
            if start.elapsed() > timeout {
                let log = self.run_dir.join("logs").join(format!("{name}.log"));
                return Err(failed(
                    name,
                    format!("not ready after {timeout:?} ({last}); log tail:\n{}", tail(&log, 40)),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(super) fn create_bridge(&self) -> anyhow::Result<()> {
        let ip = |args: &[&str]| run_checked(Command::new("ip").args(args));
        if !Path::new("/sys/class/net").join(BRIDGE).exists() {
            ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        }
        ip(&["addr", "replace", &format!("{BRIDGE_ADDR}/{BRIDGE_PREFIX}"), "dev", BRIDGE])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        Ok(())
    }

    /// `/<CGROUP_ROOT>` in every cgroup v1 hierarchy (and in the cgroup2
    /// root when the host is cgroup v2 only): the kubelet refuses a cgroup
    /// root that does not exist.
    pub(super) fn create_cgroup_root(&self) -> anyhow::Result<()> {
        let all = mounts();
        let v1: Vec<PathBuf> = all.iter().filter(|(_, t)| t == "cgroup").map(|(p, _)| PathBuf::from(p)).collect();
        let targets = if v1.is_empty() {
            all.iter().filter(|(p, t)| t == "cgroup2" && p == "/sys/fs/cgroup").map(|(p, _)| PathBuf::from(p)).collect()
        } else {
            v1
        };
        anyhow::ensure!(!targets.is_empty(), "no cgroup hierarchy mounted");
        for hierarchy in targets {
            let dir = hierarchy.join(CGROUP_ROOT);
            fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
            // A cpuset cgroup takes no process before it has cpus and mems.
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let parent = hierarchy.join(file);
                if hierarchy.join("cpuset.cpus").exists()
                    && let Ok(value) = fs::read_to_string(&parent)
                {
                    fs::write(dir.join(file), value.trim()).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
                }
            }
        }
        Ok(())
    }

    /// The whole teardown; returns what could not be undone. Idempotent.
    pub(super) fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let mut problems = Vec::new();
        // 1. The kubelet first, so nothing restarts containers.
        self.kill_component("kubelet");
        // 2. Every task and container through containerd: the shims exit and unmount the rootfs.
        let socket = self.socket();
        if self.components.iter_mut().any(|c| c.name() == "containerd" && c.is_running()) {
            remove_containers(&self.ctr, &socket);
        }
        // 3. The other components, by PID.
        for name in ["kube-scheduler", "kube-controller-manager", "containerd", "kube-apiserver", "etcd"] {
            self.kill_component(name);
        }
        for c in &mut self.components {
            c.kill();
        }
        problems.extend(undo_host(Some(&self.run_dir), &self.created, Some(&socket)));
        self.lock.release();
        problems
    }

    fn kill_component(&mut self, name: &str) {
        for c in self.components.iter_mut().filter(|c| c.name() == name) {
            c.kill();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let problems = self.teardown();
        if !problems.is_empty() {
            eprintln!("kube_node: teardown left: {}", problems.join("; "));
        }
    }
}
