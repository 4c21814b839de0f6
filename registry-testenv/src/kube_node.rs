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

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use super::{Unavailable, binary, free_port, testenv_dir};

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

fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
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
        let (kubeconfig, client, times) = launch(&mut host, &programs).await?;
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
        let mut pids: Vec<u32> = self.host.components.iter().map(|c| c.child.id()).collect();
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

/// Starts the components one after the other; `host` undoes everything on failure (its `Drop`).
async fn launch(
    host: &mut Host,
    programs: &Programs,
) -> Result<(PathBuf, Client, Vec<(&'static str, Duration)>), Unavailable> {
    let run = host.run_dir.clone();
    for dir in ["logs", "pids", "etcd", "pod-logs", "cni-ipam", "kubelet", "containerd", "runc", "images"] {
        fs::create_dir_all(run.join(dir)).map_err(|e| failed(SERVER, format!("{}: {e}", run.join(dir).display())))?;
    }
    let pki = Pki::generate()
        .and_then(|p| p.write(&run.join("pki")).map_err(|e| anyhow::anyhow!(e)))
        .map_err(|e| failed(SERVER, format!("certificates: {e}")))?;
    build_node_images(&programs.busybox, &run.join("images")).map_err(|e| failed(SERVER, format!("images: {e:#}")))?;
    let ports = Ports::pick();
    let conf = write_configs(&run, &pki, programs, &ports).map_err(|e| failed(SERVER, format!("configs: {e}")))?;
    host.create_bridge().map_err(|e| failed(SERVER, format!("bridge {BRIDGE}: {e:#}")))?;
    host.create_cgroup_root().map_err(|e| failed(SERVER, format!("cgroup root /{CGROUP_ROOT}: {e:#}")))?;

    let mut times = Vec::new();
    let t0 = Instant::now();
    let mark = |times: &mut Vec<(&'static str, Duration)>, what: &'static str| times.push((what, t0.elapsed()));

    // 1. etcd on loopback.
    let etcd_url = format!("http://127.0.0.1:{}", ports.etcd_client);
    let peer_url = format!("http://127.0.0.1:{}", ports.etcd_peer);
    host.spawn(
        "etcd",
        &programs.etcd,
        vec![
            "--name=node".into(),
            format!("--data-dir={}", run.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=node={peer_url}"),
            format!("--listen-metrics-urls=http://127.0.0.1:{}", ports.etcd_health),
            "--log-level=warn".into(),
            "--quota-backend-bytes=1073741824".into(),
            // A test cluster need not survive a power cut.
            "--unsafe-no-fsync".into(),
        ],
    )?;
    let health = ports.etcd_health;
    host.wait_until("etcd", ETCD_TIMEOUT, async || etcd_healthy(health).await).await?;
    mark(&mut times, "etcd_healthy");

    // 2. kube-apiserver on the bridge address.
    host.spawn("kube-apiserver", &programs.apiserver, apiserver_args(&run, &pki, &etcd_url))?;
    let client = client_from(&conf.admin).await.map_err(|e| failed("kube-apiserver", format!("client: {e:#}")))?;
    host.wait_until("kube-apiserver", APISERVER_TIMEOUT, async || readyz(&client).await).await?;
    mark(&mut times, "apiserver_ready");

    // 3. controller-manager and scheduler, serving on loopback.
    host.spawn(
        "kube-controller-manager",
        &programs.controller_manager,
        controller_manager_args(&run, &pki, &conf, &ports),
    )?;
    host.spawn("kube-scheduler", &programs.scheduler, scheduler_args(&conf, &ports))?;

    // 4. containerd (private instance) and the images.
    host.spawn("containerd", &programs.containerd, vec!["--config".into(), conf.containerd.display().to_string()])?;
    let ctr = host.ctr_command();
    host.wait_until("containerd", CONTAINERD_TIMEOUT, async || run_quiet(ctr().arg("version")).map(|_| ())).await?;
    mark(&mut times, "containerd_ready");
    for image in ["busybox", "pause"] {
        host.import_image(&run.join("images").join(format!("{image}.tar")))
            .map_err(|e| failed("containerd", format!("image import: {e:#}")))?;
    }
    mark(&mut times, "images_imported");

    // 5. kubelet.
    host.spawn(
        "kubelet",
        &programs.kubelet,
        vec![
            format!("--config={}", conf.kubelet_config.display()),
            format!("--kubeconfig={}", conf.kubelet.display()),
            format!("--root-dir={}", run.join("kubelet").display()),
            // Default /usr/libexec/kubernetes/kubelet-plugins/volume/exec (created at start).
            format!("--volume-plugin-dir={}", run.join("volume-plugins").display()),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={BRIDGE_ADDR}"),
            "--v=1".into(),
        ],
    )?;
    let nodes: Api<Node> = Api::all(client.clone());
    host.wait_until("kubelet", NODE_READY_TIMEOUT, async || match nodes.get_opt(NODE_NAME).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("Node not registered".to_owned()),
        Err(e) => Err(e.to_string()),
    })
    .await?;
    mark(&mut times, "node_registered");
    host.wait_until("kubelet", NODE_READY_TIMEOUT, async || node_ready(&nodes).await).await?;
    mark(&mut times, "node_ready");
    // Pod admission rejects Pods until the serviceaccount controller made `default`.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    host.wait_until("kube-controller-manager", SERVICE_ACCOUNT_TIMEOUT, async || {
        match accounts.get_opt("default").await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err("ServiceAccount default/default not created yet".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    mark(&mut times, "default_service_account");
    Ok((conf.admin, client, times))
}

async fn node_ready(nodes: &Api<Node>) -> Result<(), String> {
    let node = nodes.get(NODE_NAME).await.map_err(|e| e.to_string())?;
    let conditions = node.status.and_then(|s| s.conditions).unwrap_or_default();
    match conditions.iter().find(|c| c.type_ == "Ready") {
        Some(c) if c.status == "True" => Ok(()),
        Some(c) => Err(format!("Ready={} ({})", c.status, c.message.clone().unwrap_or_default())),
        None => Err("no Ready condition yet".to_owned()),
    }
}

async fn readyz(client: &Client) -> Result<(), String> {
    let request = http::Request::get("/readyz").body(Vec::new()).map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(5), client.request_text(request)).await {
        Ok(Ok(body)) if body.trim() == "ok" => Ok(()),
        Ok(Ok(body)) => Err(body),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

/// One `GET /health` on etcd's plain-HTTP metrics port.
async fn etcd_healthy(port: u16) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await?;
        let mut body = Vec::new();
        stream.read_to_end(&mut body).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&body).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(2), probe).await {
        Ok(Ok(body)) if body.contains(r#""health":"true""#) => Ok(()),
        Ok(Ok(body)) => Err(body),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

async fn client_from(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

// --- processes ------------------------------------------------------------------

/// A component process, killed by PID.
struct Component {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Component {
    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `lines` lines of a file.
fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a command, its output captured: Ok(stdout) on success, Err(stderr/why) otherwise.
fn run_quiet(cmd: &mut Command) -> Result<String, String> {
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

fn run_checked(cmd: &mut Command) -> anyhow::Result<String> {
    run_quiet(cmd).map_err(|e| anyhow::anyhow!(e))
}

/// PIDs of every live process (not zombies) other than this one.
fn all_pids() -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && alive(pid))
        .collect()
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Processes whose command line names `dir` (the components, containerd's
/// shims: `-address <run>/containerd/containerd.sock`).
fn processes_naming(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    all_pids()
        .into_iter()
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).split('\0').any(|arg| arg.contains(&needle)))
        })
        .collect()
}

/// Every process in the node's cgroups (any hierarchy).
fn cgroup_processes() -> Vec<u32> {
    let mut pids = Vec::new();
    for root in cgroup_mounts().into_iter().map(|m| m.join(CGROUP_ROOT)) {
        for dir in dirs_below(&root) {
            if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
        }
    }
    pids.retain(|&p| p != std::process::id() && alive(p));
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn kill_pids(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let mut cmd = Command::new("kill");
    cmd.arg("-KILL").args(pids.iter().map(u32::to_string)).stdout(Stdio::null()).stderr(Stdio::null());
    let _ = cmd.status();
}

/// Waits until none of `pids` is alive (or `timeout`); returns the survivors.
fn wait_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() || start.elapsed() > timeout {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// --- mounts and cgroups -------------------------------------------------------------

/// `(mount point, fs type)` of every mount, from `/proc/self/mountinfo`.
fn mounts() -> Vec<(String, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let point = unescape_mount(fields.get(4)?);
            let sep = fields.iter().position(|f| *f == "-")?;
            Some((point, (*fields.get(sep + 1)?).to_owned()))
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && let Ok(value) = u8::from_str_radix(&String::from_utf8_lossy(digits), 8)
        {
            out.push(value);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    mounts()
        .into_iter()
        .map(|(point, _)| point)
        .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
        .collect()
}

/// The cgroup hierarchies: every cgroup v1 mount, and cgroup2 mounts (the
/// unified hierarchy, where runc may also create directories).
fn cgroup_mounts() -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mounts()
        .into_iter()
        .filter(|(_, fstype)| fstype == "cgroup" || fstype == "cgroup2")
        .map(|(point, _)| PathBuf::from(point))
        .collect();
    points.sort();
    points.dedup();
    points
}

/// `root` and every directory below it, deepest first.
fn dirs_below(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&entry.path(), out);
                }
            }
        }
        out.push(dir.to_owned());
    }
    if root.is_dir() {
        walk(root, &mut out);
    }
    out
}

// --- host state -------------------------------------------------------------------

/// One node per host: an exclusive lock on a file in the temp dir, which
/// records the holder's run dir (for the next start to sweep if the holder
/// was killed without tearing down).
struct HostLock {
    file: Option<File>,
}

impl HostLock {
    async fn acquire() -> Result<Self, Unavailable> {
        let path = std::env::temp_dir().join(LOCK_FILE);
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| failed(SERVER, format!("{}: {e}", path.display())))?;
        let start = Instant::now();
        let mut announced = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) => {
                    if !announced {
                        eprintln!("kube_node: another node runs on this host; waiting for {}", path.display());
                        announced = true;
                    }
                    if start.elapsed() > LOCK_TIMEOUT {
                        return Err(failed(
                            SERVER,
                            format!("another node held {} for {LOCK_TIMEOUT:?}", path.display()),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(fs::TryLockError::Error(e)) => return Err(failed(SERVER, format!("lock {}: {e}", path.display()))),
            }
        }
        let mut lock = Self { file: Some(file) };
        // A previous holder that died without tearing down left its run dir here.
        let (stale, created) = lock.recorded();
        sweep_stale(stale.as_deref(), &created);
        Ok(lock)
    }

    /// The run dir and created host paths of the last holder (none after a clean teardown).
    fn recorded(&mut self) -> (Option<PathBuf>, Created) {
        let mut text = String::new();
        if let Some(file) = self.file.as_mut()
            && file.seek(SeekFrom::Start(0)).is_ok()
        {
            let _ = file.read_to_string(&mut text);
        }
        let mut lines = text.lines().map(str::trim);
        // Only a run dir this module made (never sweep a path someone else wrote there).
        let dir = lines.next().map(PathBuf::from).filter(|dir| {
            dir.parent() == Some(std::env::temp_dir().as_path())
                && dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(RUN_DIR_PREFIX))
        });
        // Only paths from HOST_PATHS.
        let paths = lines.filter_map(|line| HOST_PATHS.iter().copied().find(|(p, _)| *p == line)).collect();
        (dir, Created { paths })
    }

    /// Records the holder's run dir and the host paths it will create.
    fn record(&mut self, run_dir: &Path, created: &Created) -> std::io::Result<()> {
        if let Some(file) = self.file.as_mut() {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            writeln!(file, "{}", run_dir.display())?;
            for (path, _) in &created.paths {
                writeln!(file, "{path}")?;
            }
            file.sync_all()?;
        }
        Ok(())
    }

    fn release(&mut self) {
        if let Some(file) = self.file.take() {
            let _ = file.set_len(0);
            let _ = file.unlock();
        }
    }
}

/// Undoes what a node killed without teardown left behind (run dir and
/// created host paths from the lock file).
fn sweep_stale(run_dir: Option<&Path>, created: &Created) {
    let dirty = run_dir.is_some_and(Path::exists)
        || Path::new("/sys/class/net").join(BRIDGE).exists()
        || cgroup_mounts().iter().any(|m| m.join(CGROUP_ROOT).exists())
        || created.paths.iter().any(|(p, _)| Path::new(p).exists());
    if !dirty {
        return;
    }
    eprintln!(
        "kube_node: sweeping what an earlier node left behind ({})",
        run_dir.map(|d| d.display().to_string()).unwrap_or_default()
    );
    let problems = undo_host(run_dir, created, None);
    if !problems.is_empty() {
        eprintln!("kube_node: the sweep left: {}", problems.join("; "));
    }
}

/// How teardown removes a host path the node (the kubelet, containerd, CNI,
/// `mount`) created outside the run dir.
#[derive(Clone, Copy, Debug)]
enum Removal {
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
const HOST_PATHS: [(&str, Removal); 5] = [
    (CONTAINER_LOG_LINKS, Removal::IfEmpty),
    ("/var/lib/kubelet", Removal::Tree),
    ("/var/lib/cni", Removal::Tree),
    ("/run/containerd", Removal::EmptyTree),
    ("/run/mount", Removal::IfEmpty),
];

/// The [`HOST_PATHS`] that did not exist before the node started (so teardown removes them).
#[derive(Default, Debug)]
struct Created {
    paths: Vec<(&'static str, Removal)>,
}

impl Created {
    fn now() -> Self {
        Self { paths: HOST_PATHS.iter().copied().filter(|(p, _)| !Path::new(p).exists()).collect() }
    }
}

/// Everything a node changed on the host, undone by [`Host::teardown`] (and on drop).
struct Host {
    run_dir: PathBuf,
    components: Vec<Component>,
    lock: HostLock,
    ctr: PathBuf,
    created: Created,
    env_path: String,
    torn_down: bool,
}

impl Host {
    fn new(run_dir: PathBuf, lock: HostLock, programs: &Programs) -> Self {
        let created = Created::now();
        let path = std::env::var("PATH").unwrap_or_default();
        let env_path = format!("{path}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        Self { run_dir, components: Vec::new(), lock, ctr: programs.ctr.clone(), created, env_path, torn_down: false }
    }

    fn socket(&self) -> PathBuf {
        self.run_dir.join("containerd").join("containerd.sock")
    }

    /// A factory of `ctr` commands against this node's containerd, namespace `k8s.io`.
    fn ctr_command(&self) -> impl Fn() -> Command + use<> {
        let ctr = self.ctr.clone();
        let socket = self.socket();
        move || ctr_cmd(&ctr, &socket)
    }

    fn import_image(&self, tar: &Path) -> anyhow::Result<()> {
        let mut cmd = ctr_cmd(&self.ctr, &self.socket());
        cmd.args(["images", "import"]).arg(tar);
        run_checked(&mut cmd).map(|_| ())
    }

    fn spawn(&mut self, name: &'static str, program: &Path, args: Vec<String>) -> Result<(), Unavailable> {
        let log = self.run_dir.join("logs").join(format!("{name}.log"));
        let fail = |e: std::io::Error| failed(name, format!("spawn {}: {e}", program.display()));
        let out = File::options().create(true).append(true).open(&log).map_err(fail)?;
        let err = out.try_clone().map_err(fail)?;
        let child = Command::new(program)
            .args(&args)
            .env("PATH", &self.env_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(fail)?;
        let pid = child.id();
        self.components.push(Component { name, child, log });
        fs::write(self.run_dir.join("pids").join(format!("{name}.pid")), format!("{pid}\n")).map_err(fail)?;
        Ok(())
    }

    /// Polls `ready` every 100 ms until it answers Ok, a component exits, or
    /// `timeout` passes (then the error carries `name`'s log tail).
    async fn wait_until(
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
                if !c.running() {
                    return Err(failed(c.name, format!("exited early; log tail:\n{}", tail(&c.log, 40))));
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

    fn create_bridge(&self) -> anyhow::Result<()> {
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
    fn create_cgroup_root(&self) -> anyhow::Result<()> {
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
    fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let mut problems = Vec::new();
        // 1. The kubelet first, so nothing restarts containers.
        self.kill_component("kubelet");
        // 2. Every task and container through containerd: the shims exit and unmount the rootfs.
        let socket = self.socket();
        if self.components.iter_mut().any(|c| c.name == "containerd" && c.running()) {
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
        for c in self.components.iter_mut().filter(|c| c.name == name) {
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

fn ctr_cmd(ctr: &Path, socket: &Path) -> Command {
    let mut cmd = Command::new(ctr);
    cmd.arg("--address").arg(socket).args(["--namespace", "k8s.io", "--connect-timeout", "5s"]);
    cmd
}

/// Kills and deletes every task (`tasks rm --force` sends SIGKILL), then
/// deletes every container (CRI sandboxes included) of the containerd at
/// `socket`: the shims then shut down and remove their sockets.
fn remove_containers(ctr: &Path, socket: &Path) {
    let list = |what: &str| -> Vec<String> {
        let mut cmd = ctr_cmd(ctr, socket);
        cmd.args([what, "ls", "-q"]);
        run_quiet(&mut cmd)
            .map(|out| out.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect())
            .unwrap_or_default()
    };
    let tasks = list("tasks");
    if !tasks.is_empty() {
        let _ = run_quiet(ctr_cmd(ctr, socket).args(["tasks", "rm", "--force"]).args(&tasks));
    }
    let containers = list("containers");
    if !containers.is_empty() {
        let _ = run_quiet(ctr_cmd(ctr, socket).args(["containers", "rm"]).args(&containers));
    }
}

/// Everything after the components are dead: leftover processes, mounts,
/// cgroups, the bridge, log links, host dirs the node created, the run dir.
fn undo_host(run_dir: Option<&Path>, created: &Created, socket: Option<&Path>) -> Vec<String> {
    let mut problems = Vec::new();
    let sockets = run_dir.map(shim_sockets).unwrap_or_default();
    let sandboxes = run_dir.map(sandbox_ids).unwrap_or_default();
    // Shims (which exit by themselves once their last task is deleted), then
    // anything still in the node's cgroups or naming the run dir.
    if let Some(dir) = run_dir {
        let shims = processes_naming(dir);
        let _ = wait_gone(&shims, if socket.is_some() { Duration::from_secs(3) } else { Duration::ZERO });
    }
    for _ in 0..5 {
        let mut pids = cgroup_processes();
        if let Some(dir) = run_dir {
            pids.extend(processes_naming(dir));
        }
        if pids.is_empty() {
            break;
        }
        kill_pids(&pids);
        let left = wait_gone(&pids, Duration::from_secs(5));
        if !left.is_empty() {
            problems.push(format!("processes {left:?} survived SIGKILL"));
        }
    }
    // A shim that was killed (not shut down by containerd) leaves its socket behind.
    for socket in sockets {
        if fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket())
            && let Err(e) = fs::remove_file(&socket)
        {
            problems.push(format!("{}: {e}", socket.display()));
        }
    }
    // Mounts under the run dir, deepest first (overlay rootfs, shm, netns, volumes).
    if let Some(dir) = run_dir {
        for _ in 0..5 {
            let mut points = mounts_under(dir);
            if points.is_empty() {
                break;
            }
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for point in points {
                if run_quiet(Command::new("umount").arg(&point)).is_err() {
                    let _ = run_quiet(Command::new("umount").arg("-l").arg(&point));
                }
            }
        }
        let left = mounts_under(dir);
        if !left.is_empty() {
            problems.push(format!("mounts {left:?}"));
        }
    }
    // Cgroups below the cgroup root, deepest first (a dying process may hold one for a moment).
    for root in cgroup_mounts().into_iter().map(|m| m.join(CGROUP_ROOT)) {
        let mut left = Vec::new();
        for _ in 0..50 {
            left = dirs_below(&root).into_iter().filter(|d| fs::remove_dir(d).is_err() && d.exists()).collect();
            if left.is_empty() {
                break;
            }
            kill_pids(&cgroup_processes());
            std::thread::sleep(Duration::from_millis(100));
        }
        if !left.is_empty() {
            problems.push(format!("cgroups {left:?}"));
        }
    }
    // Veths left on the bridge (their Pod netns is gone with its mount and processes), then the bridge.
    let bridge = Path::new("/sys/class/net").join(BRIDGE);
    if let Ok(ports) = fs::read_dir(bridge.join("brif")) {
        for port in ports.flatten() {
            let _ = run_quiet(Command::new("ip").args(["link", "del"]).arg(port.file_name()));
        }
    }
    if bridge.exists()
        && let Err(e) = run_quiet(Command::new("ip").args(["link", "del", BRIDGE]))
    {
        problems.push(format!("bridge {BRIDGE}: {e}"));
    }
    // Container log links into the run dir (the kubelet hard-codes /var/log/containers).
    if let Some(dir) = run_dir
        && let Ok(entries) = fs::read_dir(CONTAINER_LOG_LINKS)
    {
        for entry in entries.flatten() {
            let path = entry.path();
            if fs::read_link(&path).is_ok_and(|target| target.starts_with(dir))
                && let Err(e) = fs::remove_file(&path)
            {
                problems.push(format!("{}: {e}", path.display()));
            }
        }
    }
    // libcni's result cache (/var/lib/cni/results/<network>-<sandbox>-<ifname>):
    // a sandbox that got no CNI DEL (killed, not stopped through the CRI) keeps its entries.
    for entry in fs::read_dir(CNI_CACHE).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = [CNI_NETWORK, "cni-loopback"].iter().any(|net| name.starts_with(&format!("{net}-")));
        if ours && sandboxes.iter().any(|id| name.contains(&format!("-{id}-"))) {
            let _ = fs::remove_file(entry.path());
        }
    }
    for &(path, removal) in &created.paths {
        let path = Path::new(path);
        if !path.exists() {
            continue;
        }
        let _ = match removal {
            Removal::IfEmpty => fs::remove_dir(path),
            Removal::EmptyTree => {
                dirs_below(path).into_iter().for_each(|dir| {
                    // A shim killed with its sandbox (not stopped through the
                    // CRI) leaves its socket; the shims are gone by now.
                    for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                        if entry.file_type().is_ok_and(|t| std::os::unix::fs::FileTypeExt::is_socket(&t)) {
                            let _ = fs::remove_file(entry.path());
                        }
                    }
                    let _ = fs::remove_dir(dir);
                });
                Ok(())
            }
            Removal::Tree => fs::remove_dir_all(path),
        };
        if path.exists() {
            problems.push(format!("{} (created by the node) not empty", path.display()));
        }
    }
    // The run dir, unless something is still mounted in it (never delete through a mount).
    if let Some(dir) = run_dir
        && dir.exists()
    {
        if mounts_under(dir).is_empty() {
            if let Err(e) = fs::remove_dir_all(dir) {
                problems.push(format!("{}: {e}", dir.display()));
            }
        } else {
            problems.push(format!("{} kept: mounts remain", dir.display()));
        }
    }
    problems
}

/// IDs of the node's CRI sandboxes and containerd tasks (from containerd's root and state dirs).
fn sandbox_ids(run_dir: &Path) -> Vec<String> {
    let containerd = run_dir.join("containerd");
    let dirs = [
        containerd.join("root").join("io.containerd.grpc.v1.cri").join("sandboxes"),
        containerd.join("state").join("io.containerd.runtime.v2.task").join("k8s.io"),
    ];
    let mut ids: Vec<String> = dirs
        .iter()
        .flat_map(|dir| fs::read_dir(dir).into_iter().flatten().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The sockets of the node's shims (`/run/containerd/s/<hash>`), from the
/// `address` file containerd keeps in each task bundle under its state dir.
fn shim_sockets(run_dir: &Path) -> Vec<PathBuf> {
    let tasks = run_dir.join("containerd").join("state").join("io.containerd.runtime.v2.task");
    let mut sockets = Vec::new();
    for namespace in fs::read_dir(tasks).into_iter().flatten().flatten() {
        for bundle in fs::read_dir(namespace.path()).into_iter().flatten().flatten() {
            if let Ok(address) = fs::read_to_string(bundle.path().join("address"))
                && let Some(path) = address.trim().strip_prefix("unix://")
                && path.starts_with("/run/containerd/s/")
            {
                sockets.push(PathBuf::from(path));
            }
        }
    }
    sockets.sort();
    sockets.dedup();
    sockets
}

// --- configuration ----------------------------------------------------------------

/// Loopback ports of one node.
struct Ports {
    etcd_client: u16,
    etcd_peer: u16,
    etcd_health: u16,
    controller_manager: u16,
    scheduler: u16,
    kubelet_healthz: u16,
}

impl Ports {
    fn pick() -> Self {
        let mut ports = Vec::new();
        while ports.len() < 6 {
            let port = free_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        Self {
            etcd_client: ports[0],
            etcd_peer: ports[1],
            etcd_health: ports[2],
            controller_manager: ports[3],
            scheduler: ports[4],
            kubelet_healthz: ports[5],
        }
    }
}

/// Config files written into the run dir.
struct Conf {
    admin: PathBuf,
    controller_manager: PathBuf,
    scheduler: PathBuf,
    kubelet: PathBuf,
    kubelet_config: PathBuf,
    containerd: PathBuf,
}

fn write_configs(run: &Path, pki: &PkiFiles, programs: &Programs, ports: &Ports) -> std::io::Result<Conf> {
    let conf_dir = run.join("conf");
    let cni_dir = run.join("cni").join("net.d");
    fs::create_dir_all(&conf_dir)?;
    fs::create_dir_all(&cni_dir)?;
    let d = |p: &Path| p.display().to_string();
    let server = format!("https://{BRIDGE_ADDR}:{APISERVER_PORT}");

    let containerd = conf_dir.join("containerd.toml");
    fs::write(
        &containerd,
        format!(
            r#"version = 2
# Private root, state and sockets: /var/lib/containerd and /run/containerd/containerd.sock stay untouched.
root = "{run}/containerd/root"
state = "{run}/containerd/state"
[grpc]
  address = "{run}/containerd/containerd.sock"
[ttrpc]
  address = "{run}/containerd/containerd.sock.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "{run}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  # Imported locally; never pulled.
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # Pod netns bind mounts under the state dir, not /var/run/netns.
  netns_mounts_under_state_dir = true
  # This VM has no CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below 0
  # (the sandbox asks for -998). Clamp every requested score to containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        Root = "{run}/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"#,
            run = d(run),
            runc = d(&programs.runc),
            cni_bin = d(&programs.cni_bin),
            cni_conf = d(&cni_dir),
        ),
    )?;

    // No gateway, no masquerading: Pods get an on-link route to the bridge only.
    fs::write(
        cni_dir.join("10-registry-node.conflist"),
        format!(
            r#"{{
  "cniVersion": "1.0.0",
  "name": "{CNI_NETWORK}",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{BRIDGE}",
      "isGateway": false,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "dataDir": "{ipam}",
        "ranges": [[{{"subnet": "{POD_SUBNET}", "gateway": "{BRIDGE_ADDR}"}}]]
      }}
    }}
  ]
}}
"#,
            ipam = d(&run.join("cni-ipam")),
        ),
    )?;

    let kubeconfig = |name: &str, cert: &Path, key: &Path| -> std::io::Result<PathBuf> {
        let path = conf_dir.join(format!("{name}.kubeconfig"));
        fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: registry-node\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
                 users:\n- name: {name}\n  user:\n    client-certificate: {cert}\n    client-key: {key}\n\
                 contexts:\n- name: registry-node\n  context:\n    cluster: registry-node\n    user: {name}\ncurrent-context: registry-node\n",
                ca = d(&pki.ca_cert),
                cert = d(cert),
                key = d(key),
            ),
        )?;
        Ok(path)
    };
    let admin = kubeconfig("admin", &pki.admin.0, &pki.admin.1)?;
    let controller_manager = kubeconfig("controller-manager", &pki.controller_manager.0, &pki.controller_manager.1)?;
    let scheduler = kubeconfig("scheduler", &pki.scheduler.0, &pki.scheduler.1)?;
    let kubelet = kubeconfig("kubelet", &pki.kubelet.0, &pki.kubelet.1)?;

    let kubelet_config = conf_dir.join("kubelet-config.yaml");
    fs::write(
        &kubelet_config,
        format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failSwapOn: false
failCgroupV1: false
cgroupDriver: cgroupfs
# Must exist in every cgroup v1 hierarchy before the kubelet starts (created by the harness).
cgroupRoot: /{CGROUP_ROOT}
cgroupsPerQOS: true
enforceNodeAllocatable: [\"pods\"]
# No CAP_SYS_RESOURCE here: nothing may lower oom_score_adj below 0.
oomScoreAdj: 0
makeIPTablesUtilChains: false
containerRuntimeEndpoint: unix://{sock}
podLogsDir: {pod_logs}
staticPodPath: \"\"
address: {BRIDGE_ADDR}
port: {KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
tlsCertFile: {serving_cert}
tlsPrivateKeyFile: {serving_key}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization:
  mode: Webhook
nodeStatusUpdateFrequency: 10s
syncFrequency: 10s
serializeImagePulls: false
evictionHard: {{}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: /etc/resolv.conf
",
            sock = d(&run.join("containerd").join("containerd.sock")),
            pod_logs = d(&run.join("pod-logs")),
            healthz = ports.kubelet_healthz,
            serving_cert = d(&pki.kubelet_serving.0),
            serving_key = d(&pki.kubelet_serving.1),
            ca = d(&pki.ca_cert),
        ),
    )?;
    Ok(Conf { admin, controller_manager, scheduler, kubelet, kubelet_config, containerd })
}

fn apiserver_args(run: &Path, pki: &PkiFiles, etcd_url: &str) -> Vec<String> {
    let d = |p: &Path| p.display().to_string();
    vec![
        format!("--etcd-servers={etcd_url}"),
        format!("--bind-address={BRIDGE_ADDR}"),
        format!("--advertise-address={BRIDGE_ADDR}"),
        format!("--secure-port={APISERVER_PORT}"),
        format!("--cert-dir={}", d(&run.join("apiserver-certs"))),
        format!("--tls-cert-file={}", d(&pki.apiserver.0)),
        format!("--tls-private-key-file={}", d(&pki.apiserver.1)),
        format!("--client-ca-file={}", d(&pki.ca_cert)),
        format!("--service-account-issuer={ISSUER}"),
        format!("--service-account-key-file={}", d(&pki.sa_pub)),
        format!("--service-account-signing-key-file={}", d(&pki.sa_key)),
        "--authorization-mode=Node,RBAC".into(),
        "--enable-admission-plugins=NodeRestriction".into(),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        format!("--kubelet-client-certificate={}", d(&pki.apiserver_kubelet_client.0)),
        format!("--kubelet-client-key={}", d(&pki.apiserver_kubelet_client.1)),
        format!("--kubelet-certificate-authority={}", d(&pki.ca_cert)),
        "--kubelet-preferred-address-types=InternalIP".into(),
        "--allow-privileged=true".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ]
}

fn controller_manager_args(run: &Path, pki: &PkiFiles, conf: &Conf, ports: &Ports) -> Vec<String> {
    let d = |p: &Path| p.display().to_string();
    let kc = d(&conf.controller_manager);
    vec![
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={}", ports.controller_manager),
        "--controllers=*".into(),
        "--use-service-account-credentials=true".into(),
        format!("--service-account-private-key-file={}", d(&pki.sa_key)),
        format!("--root-ca-file={}", d(&pki.ca_cert)),
        format!("--cluster-signing-cert-file={}", d(&pki.ca_cert)),
        format!("--cluster-signing-key-file={}", d(&pki.ca_key)),
        // Default /usr/libexec/kubernetes/kubelet-plugins/volume/exec (created at start).
        format!("--flex-volume-plugin-dir={}", d(&run.join("volume-plugins"))),
        "--leader-elect=false".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ]
}

fn scheduler_args(conf: &Conf, ports: &Ports) -> Vec<String> {
    let kc = conf.scheduler.display().to_string();
    vec![
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={}", ports.scheduler),
        "--leader-elect=false".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ]
}

// --- images -----------------------------------------------------------------------

/// Builds a minimal root filesystem in `dir` from the static busybox at
/// `busybox`: `/bin/busybox` with a link per applet, `/tmp` (1777), `/etc/passwd`
/// and `/etc/group` for root and nobody, and empty `/proc`, `/sys`, `/dev`, `/var/run`.
pub fn busybox_rootfs(busybox: &Path, dir: &Path) -> anyhow::Result<()> {
    for sub in ["bin", "tmp", "etc", "proc", "sys", "dev", "var/run"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let target = dir.join("bin").join("busybox");
    fs::copy(busybox, &target)?;
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755))?;
    let list = run_checked(Command::new(busybox).arg("--list"))?;
    for applet in list.lines().map(str::trim).filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/')) {
        let link = dir.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::write(
        dir.join("etc").join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    fs::write(dir.join("etc").join("group"), "root:x:0:\nnobody:x:65534:\n")?;
    Ok(())
}

/// Packs `rootfs` as one layer into a docker-archive tar at `out` (the
/// format `docker save` writes and `ctr images import` reads), tagged `tag`,
/// with the given entrypoint and command (`None`: unset) and `PATH=/bin`.
/// Reproducible: owners 0, sorted names, mtime 0. `work` is a scratch dir
/// (removed afterwards).
pub fn docker_archive(
    rootfs: &Path,
    tag: &str,
    entrypoint: Option<&[&str]>,
    cmd: Option<&[&str]>,
    out: &Path,
    work: &Path,
) -> anyhow::Result<()> {
    let layer_dir = work.join("l");
    fs::create_dir_all(&layer_dir)?;
    let layer = layer_dir.join("layer.tar");
    run_checked(
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "--sort=name", "--mtime=@0", "-C"])
            .arg(rootfs)
            .arg("-cf")
            .arg(&layer)
            .arg("."),
    )?;
    let sum = run_checked(Command::new("sha256sum").arg(&layer))?;
    let digest = sum.split_whitespace().next().ok_or_else(|| anyhow::anyhow!("sha256sum printed nothing"))?.to_owned();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": { "Env": ["PATH=/bin"], "Entrypoint": entrypoint, "Cmd": cmd, "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{digest}")] },
        "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "registry_testenv::kube_node" }],
    });
    fs::write(work.join("config.json"), serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!([{ "Config": "config.json", "RepoTags": [tag], "Layers": ["l/layer.tar"] }]);
    fs::write(work.join("manifest.json"), serde_json::to_vec(&manifest)?)?;
    run_checked(Command::new("tar").arg("-C").arg(work).arg("-cf").arg(out).args([
        "manifest.json",
        "config.json",
        "l/layer.tar",
    ]))?;
    fs::remove_dir_all(work)?;
    Ok(())
}

/// [`BUSYBOX_IMAGE`] and [`PAUSE_IMAGE`] as `busybox.tar` and `pause.tar` in `dir`.
fn build_node_images(busybox: &Path, dir: &Path) -> anyhow::Result<()> {
    let rootfs = dir.join("rootfs");
    busybox_rootfs(busybox, &rootfs)?;
    docker_archive(&rootfs, BUSYBOX_IMAGE, None, Some(&["sh"]), &dir.join("busybox.tar"), &dir.join("busybox.work"))?;
    docker_archive(
        &rootfs,
        PAUSE_IMAGE,
        Some(&["/bin/sleep", "2147483647"]),
        None,
        &dir.join("pause.tar"),
        &dir.join("pause.work"),
    )?;
    fs::remove_dir_all(&rootfs)?;
    Ok(())
}

// --- PKI --------------------------------------------------------------------------

/// `(certificate, key)` file pairs and the other PKI files.
struct PkiFiles {
    ca_cert: PathBuf,
    ca_key: PathBuf,
    apiserver: (PathBuf, PathBuf),
    admin: (PathBuf, PathBuf),
    controller_manager: (PathBuf, PathBuf),
    scheduler: (PathBuf, PathBuf),
    kubelet: (PathBuf, PathBuf),
    apiserver_kubelet_client: (PathBuf, PathBuf),
    kubelet_serving: (PathBuf, PathBuf),
    sa_key: PathBuf,
    sa_pub: PathBuf,
}

/// PEM texts of one node's PKI.
struct Pki {
    ca: (String, String),
    leaves: Vec<(&'static str, String, String)>,
    sa_key: String,
    sa_pub: String,
}

impl Pki {
    fn generate() -> anyhow::Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(DnType::CommonName, "registry-node-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::from_params(&ca_params, &ca_key);

        let bridge = BRIDGE_ADDR.to_string();
        let leaf = |name: &'static str,
                    cn: &str,
                    org: Option<&str>,
                    sans: Vec<String>,
                    usage: ExtendedKeyUsagePurpose|
         -> anyhow::Result<(&'static str, String, String)> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(sans)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            if let Some(org) = org {
                params.distinguished_name.push(DnType::OrganizationName, org);
            }
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer)?;
            Ok((name, cert.pem(), key.serialize_pem()))
        };
        let client = ExtendedKeyUsagePurpose::ClientAuth;
        let server = ExtendedKeyUsagePurpose::ServerAuth;
        let service_ip = "10.96.0.1".to_owned();
        let leaves = vec![
            leaf(
                "apiserver",
                "kube-apiserver",
                None,
                vec![
                    bridge.clone(),
                    "127.0.0.1".into(),
                    service_ip,
                    "localhost".into(),
                    "kubernetes".into(),
                    "kubernetes.default".into(),
                    "kubernetes.default.svc".into(),
                    "kubernetes.default.svc.cluster.local".into(),
                ],
                server.clone(),
            )?,
            leaf("admin", "registry-admin", Some("system:masters"), Vec::new(), client.clone())?,
            leaf("controller-manager", "system:kube-controller-manager", None, Vec::new(), client.clone())?,
            leaf("scheduler", "system:kube-scheduler", None, Vec::new(), client.clone())?,
            leaf("kubelet", &format!("system:node:{NODE_NAME}"), Some("system:nodes"), Vec::new(), client.clone())?,
            leaf(
                "apiserver-kubelet-client",
                "kube-apiserver-kubelet-client",
                Some("system:masters"),
                Vec::new(),
                client,
            )?,
            leaf("kubelet-serving", NODE_NAME, None, vec![NODE_NAME.into(), bridge, "127.0.0.1".into()], server)?,
        ];
        let sa = KeyPair::generate()?;
        Ok(Self {
            ca: (ca.pem(), ca_key.serialize_pem()),
            leaves,
            sa_key: sa.serialize_pem(),
            sa_pub: sa.public_key_pem(),
        })
    }

    fn write(&self, dir: &Path) -> std::io::Result<PkiFiles> {
        fs::create_dir_all(dir)?;
        let put = |name: &str, text: &str| -> std::io::Result<PathBuf> {
            let path = dir.join(name);
            fs::write(&path, text)?;
            if name.ends_with(".key") {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
            }
            Ok(path)
        };
        let mut pairs = std::collections::HashMap::new();
        for (name, cert, key) in &self.leaves {
            pairs.insert(*name, (put(&format!("{name}.crt"), cert)?, put(&format!("{name}.key"), key)?));
        }
        let mut pair = |name: &str| pairs.remove(name).ok_or_else(|| std::io::Error::other(format!("no {name} cert")));
        Ok(PkiFiles {
            ca_cert: put("ca.crt", &self.ca.0)?,
            ca_key: put("ca.key", &self.ca.1)?,
            apiserver: pair("apiserver")?,
            admin: pair("admin")?,
            controller_manager: pair("controller-manager")?,
            scheduler: pair("scheduler")?,
            kubelet: pair("kubelet")?,
            apiserver_kubelet_client: pair("apiserver-kubelet-client")?,
            kubelet_serving: pair("kubelet-serving")?,
            sa_key: put("sa.key", &self.sa_key)?,
            sa_pub: put("sa.pub", &self.sa_pub)?,
        })
    }
}
