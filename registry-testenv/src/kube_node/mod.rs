//! [`KubeNode`]: a real single-node Kubernetes cluster — etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler and a kubelet on a
//! private containerd with runc and the CNI `bridge` plugin — for the tests
//! that need controllers, a scheduler and real containers. The bare
//! kube-apiserver of [`super::kube`] stays for the fast tests.
//!
//! Everything follows `../shared/kubernetes-node/RECIPE.md` (Kubernetes
//! v1.34.4 on containerd 1.6 / runc 1.1, cgroup v1, no CAP_SYS_RESOURCE):
//!
//! * **Network.** [`KubeNode::start`] creates the bridge [`BRIDGE`] with
//!   [`BRIDGE_ADDR`]`/16` itself before anything starts. The only
//!   non-loopback addresses in use are that one and the Pods' (from
//!   [`POD_SUBNET`]): kube-apiserver (`:6443`) and the kubelet API (`:10250`)
//!   listen on the bridge address so Pods reach them; etcd, the
//!   controller-manager, the scheduler, the kubelet's healthz and
//!   containerd's streaming server listen on `127.0.0.1`. The CNI bridge has
//!   no gateway, no masquerading and no default route: no iptables rules, no
//!   `ip_forward`, nothing leaves the machine. There is no kube-proxy, so
//!   Service ClusterIPs do not route; a Pod that talks to the API server sets
//!   `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT` to
//!   [`BRIDGE_ADDR`]/[`APISERVER_PORT`] ([`KubeNode::in_cluster_env`]).
//! * **Images** come from no registry: [`busybox_rootfs`] +
//!   [`docker_archive`] build docker-archive tars from the host's static
//!   `/bin/busybox`; the node imports [`BUSYBOX_IMAGE`] and [`PAUSE_IMAGE`]
//!   (the CRI sandbox image) into its containerd, and
//!   [`KubeNode::import_image`] imports more. Pods use
//!   `imagePullPolicy: Never`.
//! * **PKI** is generated with `rcgen` (ECDSA P-256): a CA, the API server's
//!   serving certificate (bridge address, loopback, `10.96.0.1`, the
//!   `kubernetes.default…` names), client certificates for the admin
//!   (`system:masters`), the controller-manager, the scheduler and the kubelet
//!   (`system:node:`[`NODE_NAME`]), the API server's kubelet client, the
//!   kubelet's serving certificate, and the service-account key.
//! * **The two workarounds this VM needs** (RECIPE "Blockers"): the kubelet's
//!   cgroup root `/`[`CGROUP_ROOT`] is created in every cgroup v1 hierarchy
//!   (with `cpuset.cpus`/`cpuset.mems` copied from the root) before the
//!   kubelet starts; and since processes lack CAP_SYS_RESOURCE, containerd
//!   runs with `restrict_oom_score_adj = true` and the kubelet with
//!   `oomScoreAdj: 0` (OOM scores are clamped at 0).
//! * **State** lives in a new temp run dir per start (`/tmp/registry-kube-node-*`):
//!   etcd data, PKI, configs, logs (`logs/<component>.log`), PID files,
//!   containerd root/state/socket, runc state, the kubelet root dir, Pod logs,
//!   CNI IPAM data. The admin kubeconfig is [`KubeNode::kubeconfig`].
//!
//! **Teardown** ([`KubeNode::stop`], or `Drop`, so also when a test
//! panics): the kubelet is killed first; containerd removes every task and
//! container (so the shims exit); the other components are killed by PID;
//! any process left in the node's cgroups or naming the run dir (shims,
//! container processes) is killed; everything mounted under the run dir is
//! unmounted (deepest first); the cgroups under `/`[`CGROUP_ROOT`] are
//! removed (deepest first); veths on the bridge and the bridge are deleted;
//! the `/var/log/containers` links into the run dir are removed, and so are
//! the host paths the kubelet, containerd, CNI and `mount` create when they
//! did not exist before the start (`/var/log/containers`,
//! `/var/lib/kubelet` — the kubelet's device-plugin socket is hard-coded
//! there —, `/var/lib/cni`, `/run/containerd`, `/run/mount`), and when
//! they did exist, the node's entries in them (libcni's result cache for its
//! sandboxes, its shims' sockets); then the run dir. Only one node runs on a host at a time (the
//! bridge, its address and the cgroup root are host-wide): a lock file in the
//! temp dir (`registry-kube-node.lock`, empty when no node runs) serializes
//! them and records the holder's run dir and the host paths it created, so
//! what a node whose test process was killed outright (no `Drop`) left
//! behind is swept by the next start (or [`KubeNode::sweep`]).
//!
//! Needs root, and the binaries that `scripts/install-test-servers.sh`
//! installs ([`KubeNode::available`] says which one is missing).

mod args;
mod config;
mod containerd;
mod host;
mod host_lock;
mod images;
mod launch;
mod pki;
mod procs;
mod undo;

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kube::Client;

use self::host::Host;
use self::host_lock::HostLock;
pub use self::images::{busybox_rootfs, docker_archive};
use self::procs::{cgroup_processes, processes_naming};
use super::process::tail;
use super::{Unavailable, binary, is_root, testenv_dir};

/// The bridge the node creates; Pods attach to it.
pub const BRIDGE: &str = "regnode0";
/// The bridge's address: kube-apiserver and the kubelet API listen here.
pub const BRIDGE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
/// Prefix length of [`BRIDGE_ADDR`] and [`POD_SUBNET`].
pub const BRIDGE_PREFIX: u8 = 16;
/// Pod addresses (CNI host-local IPAM), on the bridge.
pub const POD_SUBNET: &str = "10.88.0.0/16";
/// kube-apiserver's port on [`BRIDGE_ADDR`].
pub const APISERVER_PORT: u16 = 6443;
/// The kubelet API's port on [`BRIDGE_ADDR`].
pub const KUBELET_PORT: u16 = 10250;
/// Service ClusterIP range (allocated, but not routed: there is no kube-proxy).
pub const SERVICE_CIDR: &str = "10.96.0.0/24";
/// The Node's name (and the kubelet certificate's `system:node:` name).
pub const NODE_NAME: &str = "registry-node";
/// The kubelet's cgroup root, below every cgroup hierarchy's root.
pub const CGROUP_ROOT: &str = "registry-kube-node";
/// A busybox image (`Cmd ["sh"]`) imported into every node.
pub const BUSYBOX_IMAGE: &str = "registry-node.local/busybox:1";
/// The CRI sandbox image (busybox `sleep`), imported into every node.
pub const PAUSE_IMAGE: &str = "registry-node.local/pause:1";
/// The service-account token issuer.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Where the kubelet links container logs (hard-coded in the kubelet).
pub const CONTAINER_LOG_LINKS: &str = "/var/log/containers";
/// Prefix of the run dirs (in the system temp dir).
pub const RUN_DIR_PREFIX: &str = "registry-kube-node-";

const ETCD_TIMEOUT: Duration = Duration::from_secs(30);
const APISERVER_TIMEOUT: Duration = Duration::from_secs(120);
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(30);
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(180);
const SERVICE_ACCOUNT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a start waits for another node on this host to go away.
const LOCK_TIMEOUT: Duration = Duration::from_secs(900);
const LOCK_FILE: &str = "registry-kube-node.lock";
/// The CNI network's name (in the conflist).
const CNI_NETWORK: &str = "registry-node";
/// libcni's result cache (containerd 1.6 has no setting for it).
const CNI_CACHE: &str = "/var/lib/cni/results";
const SERVER: &str = "kubernetes node";

fn failed(server: &str, reason: impl std::fmt::Display) -> Unavailable {
    Unavailable::StartFailed { server: server.to_owned(), reason: reason.to_string() }
}

/// A running single-node cluster (see the module docs). Dropping it tears
/// everything down.
pub struct KubeNode {
    host: Host,
    kubeconfig: PathBuf,
    client: Client,
    times: Vec<(&'static str, Duration)>,
}

impl std::fmt::Debug for KubeNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeNode")
            .field("run_dir", &self.host.run_dir)
            .field("kubeconfig", &self.kubeconfig)
            .field("times", &self.times)
            .finish_non_exhaustive()
    }
}

/// The programs a node runs.
struct Programs {
    etcd: PathBuf,
    apiserver: PathBuf,
    controller_manager: PathBuf,
    scheduler: PathBuf,
    kubelet: PathBuf,
    containerd: PathBuf,
    ctr: PathBuf,
    runc: PathBuf,
    busybox: PathBuf,
    cni_bin: PathBuf,
}

impl Programs {
    fn find() -> Result<Self, Unavailable> {
        let (etcd, apiserver) = (binary("etcd")?, binary("kube-apiserver")?);
        let (controller_manager, scheduler) = (binary("kube-controller-manager")?, binary("kube-scheduler")?);
        let kubelet = binary("kubelet")?;
        let cni_bin = testenv_dir().join("cni").join("bin");
        for plugin in ["bridge", "host-local", "loopback"] {
            let path = cni_bin.join(plugin);
            if !path.is_file() {
                return Err(Unavailable::MissingBinary { binary: format!("CNI plugin {plugin}"), path });
            }
        }
        // Helpers the harness runs itself.
        for tool in ["ip", "tar", "sha256sum", "umount", "kill"] {
            system_binary(tool)?;
        }
        let programs = Self {
            etcd,
            apiserver,
            controller_manager,
            scheduler,
            kubelet,
            containerd: system_binary("containerd")?,
            ctr: system_binary("ctr")?,
            runc: system_binary("runc")?,
            busybox: PathBuf::from("/bin/busybox"),
            cni_bin,
        };
        system_binary("containerd-shim-runc-v2")?;
        if !programs.busybox.is_file() {
            return Err(Unavailable::MissingBinary {
                binary: "busybox (busybox-static)".into(),
                path: programs.busybox,
            });
        }
        Ok(programs)
    }
}

/// A program on `PATH` (or in the sbin dirs, which a test's `PATH` may lack).
fn system_binary(name: &str) -> Result<PathBuf, Unavailable> {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path.split(':').filter(|d| !d.is_empty()).map(PathBuf::from);
    let extra = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from);
    dirs.chain(extra).map(|d| d.join(name)).find(|p| p.is_file()).ok_or_else(|| Unavailable::MissingBinary {
        binary: name.to_owned(),
        path: PathBuf::from("/usr/bin").join(name),
    })
}

impl KubeNode {
    /// A cheap check that a node can be started here: every binary is
    /// installed (the first missing one is named) and the process is root.
    pub fn available() -> Result<(), Unavailable> {
        Programs::find()?;
        if !is_root() {
            return Err(failed(SERVER, "needs root (it creates a bridge, cgroups and mounts)"));
        }
        Ok(())
    }

    /// Undoes what an earlier node left behind when its process was killed
    /// outright (no `Drop`): its processes, mounts, cgroups, bridge, links
    /// and host paths. [`start`](Self::start) does this too; tests call it
    /// first to snapshot a clean host. Waits while another node runs.
    pub async fn sweep() -> Result<(), Unavailable> {
        HostLock::acquire().await?.release();
        Ok(())
    }

    /// Starts a node in a new run dir and returns once the Node is Ready and
    /// ServiceAccount `default/default` exists. Waits first while another
    /// node runs on this host. On failure everything started so far is torn
    /// down and the error carries the failing component's log tail.
    pub async fn start() -> Result<Self, Unavailable> {
        let programs = Programs::find()?;
        if !is_root() {
            return Err(failed(SERVER, "needs root (it creates a bridge, cgroups and mounts)"));
        }
        let lock = HostLock::acquire().await?;
        let run_dir = tempfile::Builder::new()
            .prefix(RUN_DIR_PREFIX)
            .tempdir()
            .map_err(|e| failed(SERVER, format!("run dir: {e}")))?
            .keep();
        let mut host = Host::new(run_dir, lock, &programs);
        host.lock.record(&host.run_dir, &host.created).map_err(|e| failed(SERVER, format!("lock file: {e}")))?;
        let (kubeconfig, client, times) = launch::launch(&mut host, &programs).await?;
        Ok(Self { host, kubeconfig, client, times })
    }

    /// The admin kubeconfig (`system:masters`, server `https://10.88.0.1:6443`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// An admin client.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// `https://<bridge address>:6443`.
    pub fn server_url(&self) -> String {
        format!("https://{BRIDGE_ADDR}:{APISERVER_PORT}")
    }

    /// The bridge's address (host side); Pods reach the host, the API server
    /// and each other on this network only.
    pub fn bridge_addr(&self) -> Ipv4Addr {
        BRIDGE_ADDR
    }

    /// Environment a Pod's container needs for in-cluster configuration to
    /// reach the API server (ClusterIPs do not route without kube-proxy), as
    /// `(name, value)` pairs for the container's `env`.
    pub fn in_cluster_env(&self) -> [(&'static str, String); 2] {
        [("KUBERNETES_SERVICE_HOST", BRIDGE_ADDR.to_string()), ("KUBERNETES_SERVICE_PORT", APISERVER_PORT.to_string())]
    }

    /// The node's run dir (state, logs under `logs/`, PID files under `pids/`).
    pub fn run_dir(&self) -> &Path {
        &self.host.run_dir
    }

    /// The CA certificate that signed every server and client certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.host.run_dir.join("pki").join("ca.crt")
    }

    /// Milestones of the last start, measured from the moment etcd was
    /// spawned: `etcd_healthy`, `apiserver_ready`, `containerd_ready`,
    /// `images_imported`, `node_registered`, `node_ready`, `default_service_account`.
    pub fn startup_times(&self) -> &[(&'static str, Duration)] {
        &self.times
    }

    /// Imports a docker-archive or OCI tar into the node's containerd (the
    /// `k8s.io` namespace, where the kubelet looks); Pods then run it with
    /// `imagePullPolicy: Never`.
    pub fn import_image(&self, tar: &Path) -> anyhow::Result<()> {
        self.host.import_image(tar)
    }

    /// Builds a docker-archive image `tag` from `rootfs` (see
    /// [`docker_archive`]) in the run dir and imports it.
    pub fn build_and_import_image(
        &self,
        rootfs: &Path,
        tag: &str,
        entrypoint: Option<&[&str]>,
        cmd: Option<&[&str]>,
    ) -> anyhow::Result<()> {
        let dir = self.host.run_dir.join("images");
        fs::create_dir_all(&dir)?;
        let file = tag.replace(['/', ':'], "_");
        let tar = dir.join(format!("{file}.tar"));
        docker_archive(rootfs, tag, entrypoint, cmd, &tar, &dir.join(format!("{file}.work")))?;
        self.import_image(&tar)
    }

    /// The last `lines` lines of a component's log (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`, `kube-scheduler`, `containerd`, `kubelet`).
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        tail(&self.host.run_dir.join("logs").join(format!("{component}.log")), lines)
    }

    /// Every process of the node right now: the components, containerd's
    /// shims, and every process in the node's cgroups (containers).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.host.components.iter().filter_map(|c| c.pid()).collect();
        pids.extend(processes_naming(&self.host.run_dir));
        pids.extend(cgroup_processes());
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Tears the node down (see the module docs); `Drop` does the same.
    /// Idempotent. Errors list what could not be undone.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let problems = self.host.teardown();
        if problems.is_empty() { Ok(()) } else { Err(anyhow::anyhow!("teardown left: {}", problems.join("; "))) }
    }
}

/// Runs a command, its output captured: Ok(stdout) on success, Err(stderr/why) otherwise.
pub(super) fn run_quiet(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let msg =
            if err.trim().is_empty() { String::from_utf8_lossy(&out.stdout).into_owned() } else { err.into_owned() };
        Err(format!("{:?} {:?}: {} {}", cmd.get_program(), cmd.get_args().collect::<Vec<_>>(), out.status, msg.trim()))
    }
}

pub(super) fn run_checked(cmd: &mut Command) -> anyhow::Result<String> {
    run_quiet(cmd).map_err(|e| anyhow::anyhow!(e))
}
