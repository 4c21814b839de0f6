//! [`KubeServer`]: a real kube-apiserver backed by a real etcd, on free
//! loopback ports — or the user's cluster when `KUBECONFIG` is set.
//!
//! The local server has no controllers and no kubelet: tests create their
//! namespaces, ServiceAccounts and Pods themselves and move Pods to
//! `Running` through the status subresource. Generated for each server (with
//! `rcgen`): a CA, a serving certificate for `127.0.0.1`/`localhost`, an
//! admin client certificate in group `system:masters`, and the
//! service-account signing key; `--authorization-mode=RBAC`; a kubeconfig in
//! the server's temp dir. [`KubeServer::stop`] and [`KubeServer::restart`]
//! stop and start kube-apiserver on the same port and etcd (outage
//! scenarios); `restart` returns once `/readyz` answers `ok`.
//!
//! With `KUBECONFIG` set the suite uses that cluster: every namespace a test
//! creates through [`KubeServer::create_namespace`] is deleted when the
//! server handle is dropped, and stopping the server is not possible.
//!
//! [`KubeServer::start_partitionable`] starts a local server whose
//! kube-apiserver can be silently partitioned ([`KubeServer::partition`]):
//! it listens on a loopback address of its own (`127.0.0.201:6443`, next
//! server `202`, … up to eight at once, each held by a lock file,
//! [`super::member::ClusterSlot`]) and runs under a group id of its own
//! ([`Process::member`](super::process::Process::member)), so a [`Cut::Member`](super::partition::Cut::Member)
//! drops every packet between it and everyone — its clients and its etcd.
//! Always local (a user's cluster is not partitioned), and needs root.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

use super::etcd::EtcdServer;
use super::member::ClusterSlot;
use super::partition::Partition;
use super::pki::{Ca, ServiceAccountKey};
use super::process::Process;
use super::{Unavailable, binary, free_port, var};

/// How long [`KubeServer::endpoint_pod`] waits for its Pod to run.
const POD_START_TIMEOUT: Duration = Duration::from_secs(120);

/// The scheduling gate on test Pods (see [`KubeServer::create_pod`]).
pub const POD_GATE: &str = "registry.fireflycore.io/test-no-kubelet";

/// How long kube-apiserver may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// The service-account token issuer and audience of the local server.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

fn failed(server: &str, reason: impl std::fmt::Display) -> Unavailable {
    Unavailable::StartFailed { server: server.to_owned(), reason: reason.to_string() }
}

/// Port of a partitionable server's kube-apiserver, on its own address.
pub const PARTITIONABLE_PORT: u16 = 6443;

/// Fields drop in order: kube-apiserver, then etcd, then the temp dir and
/// the address block.
struct Local {
    /// A plain child on `127.0.0.1`, or a member on its own address and
    /// group id (partitionable).
    apiserver: Mutex<Process>,
    /// Keeps running while kube-apiserver is stopped (the outage is the API server's).
    _etcd: EtcdServer,
    _dir: tempfile::TempDir,
    _slot: Option<ClusterSlot>,
}

/// A kube-apiserver for tests (see the module docs).
pub struct KubeServer {
    local: Option<Local>,
    kubeconfig: PathBuf,
    server_url: String,
    /// The kubeconfig line that makes a client trust the server.
    ca_line: String,
    client: Client,
    /// Namespaces to delete on drop (user clusters only).
    created: Mutex<Vec<String>>,
}

impl std::fmt::Debug for KubeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeServer")
            .field("local", &self.local.is_some())
            .field("server_url", &self.server_url)
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

impl KubeServer {
    /// A cheap check that a server can be had: `KUBECONFIG` is set, or
    /// `kube-apiserver` and `etcd` are installed.
    pub fn available() -> Result<(), Unavailable> {
        if var("KUBECONFIG").is_some() {
            return Ok(());
        }
        binary("kube-apiserver")?;
        binary("etcd")?;
        Ok(())
    }

    /// The user's cluster when `KUBECONFIG` is set, else a new local server.
    pub async fn start() -> Result<Self, Unavailable> {
        match var("KUBECONFIG") {
            Some(path) => Self::user(PathBuf::from(path)).await,
            None => Self::start_local().await,
        }
    }

    /// One server shared by every caller of this process while any of them
    /// holds it (the Kubernetes backend's modes share one API server).
    pub async fn shared() -> Result<Arc<Self>, Unavailable> {
        static SHARED: tokio::sync::Mutex<Weak<KubeServer>> = tokio::sync::Mutex::const_new(Weak::new());
        let mut slot = SHARED.lock().await;
        if let Some(server) = slot.upgrade() {
            return Ok(server);
        }
        let server = Arc::new(Self::start().await?);
        *slot = Arc::downgrade(&server);
        Ok(server)
    }

    /// The cluster of the kubeconfig at `path` (a user's cluster: never stopped).
    pub async fn user(path: PathBuf) -> Result<Self, Unavailable> {
        let kubeconfig = Kubeconfig::read_from(&path).map_err(|e| failed("kubernetes (KUBECONFIG)", e))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| failed("kubernetes (KUBECONFIG)", e))?;
        let server_url = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(|e| failed("kubernetes (KUBECONFIG)", e))?;
        client.apiserver_version().await.map_err(|e| failed("kubernetes (KUBECONFIG)", e))?;
        let ca_line = user_ca_line(&path);
        Ok(Self { local: None, kubeconfig: path, server_url, ca_line, client, created: Mutex::new(Vec::new()) })
    }

    /// Starts etcd and kube-apiserver on free loopback ports in a new temp dir.
    pub async fn start_local() -> Result<Self, Unavailable> {
        Self::launch(None).await
    }

    /// A cheap check that [`start_partitionable`](Self::start_partitionable)
    /// can work here: `kube-apiserver` and `etcd` are installed, and this
    /// process may start servers under a group id of their own (root).
    /// `KUBECONFIG` plays no part: a user's cluster is never partitioned.
    pub fn partitionable_available() -> Result<(), Unavailable> {
        binary("kube-apiserver")?;
        binary("etcd")?;
        super::partition::available()?;
        if super::member::can_isolate() {
            Ok(())
        } else {
            Err(Unavailable::NotApplicable(
                "a partitionable kube-apiserver needs root (it runs under a group id of its own)".into(),
            ))
        }
    }

    /// Starts a local server whose kube-apiserver listens on a loopback
    /// address of its own and can be [partitioned](Self::partition) (see the
    /// module docs). Always local, whatever `KUBECONFIG` says.
    pub async fn start_partitionable() -> Result<Self, Unavailable> {
        let slot = ClusterSlot::acquire("kube-apiserver", 201, 1, 8)?;
        Self::launch(Some(slot)).await
    }

    async fn launch(slot: Option<ClusterSlot>) -> Result<Self, Unavailable> {
        let apiserver_bin = binary("kube-apiserver")?;
        let dir =
            tempfile::Builder::new().prefix("registry-kube-").tempdir().map_err(|e| failed("kube-apiserver", e))?;
        let address = slot.as_ref().and_then(|s| s.addresses.first().copied());
        let files = PkiFiles::generate(&dir.path().join("pki"), address)
            .map_err(|e| failed("kube-apiserver", format!("certificates: {e}")))?;

        let etcd = EtcdServer::start_local().await?;
        let (host, port) = match address {
            Some(a) => (a.to_string(), PARTITIONABLE_PORT),
            None => ("127.0.0.1".to_owned(), free_port()),
        };
        let server_url = format!("https://{host}:{port}");
        let args = apiserver_args(&host, port, &etcd.client_url(), &files, dir.path());
        let log = dir.path().join("kube-apiserver.log");
        let apiserver = match address {
            Some(a) => Process::new(&format!("kube-apiserver ({a})"), &apiserver_bin, args, log).member(a),
            None => Process::new("kube-apiserver", &apiserver_bin, args, log),
        }
        .start()?;
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, admin_kubeconfig(&server_url, &files)).map_err(|e| failed("kube-apiserver", e))?;
        let client = client_from(&kubeconfig).await.map_err(|e| failed("kube-apiserver", e))?;
        let server = Self {
            local: Some(Local { apiserver: Mutex::new(apiserver), _etcd: etcd, _dir: dir, _slot: slot }),
            kubeconfig,
            server_url,
            ca_line: format!("certificate-authority: {}", files.ca_cert.display()),
            client,
            created: Mutex::new(Vec::new()),
        };
        server.wait_ready().await?;
        Ok(server)
    }

    /// True for a server this process started (it can be stopped).
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// An admin client (`system:masters` locally; the kubeconfig's user otherwise).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The admin kubeconfig file.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>` (or the user's cluster URL).
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// Waits until `/readyz` answers `ok` (or the process dies, or [`READY_TIMEOUT`]).
    pub async fn wait_ready(&self) -> Result<(), Unavailable> {
        let start = Instant::now();
        loop {
            let request = http::Request::get("/readyz").body(Vec::new()).map_err(|e| failed("kube-apiserver", e))?;
            let last = match tokio::time::timeout(Duration::from_secs(5), self.client.request_text(request)).await {
                Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
                Ok(Ok(body)) => body,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_owned(),
            };
            if let Some(local) = &self.local {
                let mut apiserver = local.apiserver.lock().map_err(|_| failed("kube-apiserver", "lock poisoned"))?;
                if !apiserver.is_running() {
                    return Err(failed("kube-apiserver", format!("exited; log tail:\n{}", apiserver.log_tail(40))));
                }
                if start.elapsed() > READY_TIMEOUT {
                    return Err(failed(
                        "kube-apiserver",
                        format!("not ready after {READY_TIMEOUT:?} ({last}); log tail:\n{}", apiserver.log_tail(40)),
                    ));
                }
            } else if start.elapsed() > READY_TIMEOUT {
                return Err(failed("kubernetes", format!("not ready after {READY_TIMEOUT:?}: {last}")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Silently partitions kube-apiserver from everyone — its clients and
    /// its etcd — until the guard drops, and at most for `bound`. Only a
    /// server from [`start_partitionable`](Self::start_partitionable) (as root).
    pub fn partition(&self, bound: Duration) -> Result<Partition, Unavailable> {
        let not = |why: &str| Unavailable::NotApplicable(format!("partition of kube-apiserver: {why}"));
        let local = self.local.as_ref().ok_or_else(|| not("a user's cluster (KUBECONFIG)"))?;
        let apiserver = local.apiserver.lock().map_err(|_| not("lock poisoned"))?;
        apiserver.partition(bound)
    }

    /// Stops kube-apiserver (etcd keeps its data and keeps running).
    pub fn stop(&self) -> anyhow::Result<()> {
        let local = self.local.as_ref().ok_or_else(|| anyhow::anyhow!("cannot stop a user's cluster (KUBECONFIG)"))?;
        local.apiserver.lock().map_err(|_| anyhow::anyhow!("lock poisoned"))?.kill();
        Ok(())
    }

    /// Starts kube-apiserver again on the same port and etcd; returns once it is ready.
    pub async fn restart(&self) -> anyhow::Result<()> {
        let local =
            self.local.as_ref().ok_or_else(|| anyhow::anyhow!("cannot restart a user's cluster (KUBECONFIG)"))?;
        local.apiserver.lock().map_err(|_| anyhow::anyhow!("lock poisoned"))?.restart()?;
        self.wait_ready().await?;
        Ok(())
    }

    /// Creates `namespace` (and its `default` ServiceAccount, which Pod
    /// admission needs and no controller creates here). Already existing is fine.
    pub async fn create_namespace(&self, namespace: &str) -> anyhow::Result<()> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let ns = Namespace {
            metadata: ObjectMeta { name: Some(namespace.to_owned()), ..ObjectMeta::default() },
            ..Namespace::default()
        };
        match namespaces.create(&PostParams::default(), &ns).await {
            Ok(_) => {
                if let Ok(mut created) = self.created.lock() {
                    created.push(namespace.to_owned());
                }
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        self.create_service_account(namespace, "default").await
    }

    /// Creates Pod `name` in `namespace` with extra `labels` and
    /// `annotations`, not yet running. A scheduling gate keeps schedulers and
    /// kubelets away (a user's kind cluster would otherwise try to run it).
    pub async fn create_pod(
        &self,
        namespace: &str,
        name: &str,
        labels: serde_json::Value,
        annotations: serde_json::Value,
    ) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": labels, "annotations": annotations },
            "spec": {
                "containers": [{ "name": "app", "image": "registry.invalid/app:test" }],
                "automountServiceAccountToken": false,
                "schedulingGates": [{ "name": POD_GATE }],
            }
        }))?;
        pods.create(&PostParams::default(), &pod)
            .await
            .map_err(|e| anyhow::anyhow!("create Pod {namespace}/{name}: {e}"))?;
        Ok(())
    }

    /// For `endpointslice` mode on a cluster with controllers and a kubelet:
    /// ensures Service `service` (selecting label `registry-test/app=<service>`,
    /// port `grpc` 9090) and creates Pod `name` behind it, running `image`
    /// (a container that needs no command, e.g. the cluster's pause image),
    /// with readiness gate `gate`, and waits until its container runs and is
    /// ready (what a registrar inside a Pod sees when it starts): it becomes
    /// an endpoint once its registrar sets `gate`.
    pub async fn endpoint_pod(
        &self,
        namespace: &str,
        service: &str,
        name: &str,
        image: &str,
        gate: &str,
    ) -> anyhow::Result<()> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": { "name": service },
            "spec": {
                "selector": { "registry-test/app": service },
                "ports": [{ "name": "grpc", "port": 9090, "targetPort": 9090 }],
            }
        }))?;
        match services.create(&PostParams::default(), &svc).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => anyhow::bail!("create Service {namespace}/{service}: {e}"),
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "registry-test/app": service } },
            "spec": {
                "containers": [{ "name": "app", "image": image, "imagePullPolicy": "IfNotPresent" }],
                "automountServiceAccountToken": false,
                "terminationGracePeriodSeconds": 0,
                "readinessGates": [{ "conditionType": gate }],
            }
        }))?;
        pods.create(&PostParams::default(), &pod)
            .await
            .map_err(|e| anyhow::anyhow!("create Pod {namespace}/{name}: {e}"))?;
        let deadline = Instant::now() + POD_START_TIMEOUT;
        loop {
            let pod = pods.get(name).await.map_err(|e| anyhow::anyhow!("get Pod {namespace}/{name}: {e}"))?;
            let status = pod.status.as_ref();
            let containers_ready = status
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "ContainersReady" && c.status == "True");
            if containers_ready && status.and_then(|s| s.phase.as_deref()) == Some("Running") {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "Pod {namespace}/{name} not running after {POD_START_TIMEOUT:?}: {:?}",
                status.and_then(|s| s.phase.as_deref())
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deletes Pod `name` at once (grace period 0), as after a node failure.
    pub async fn delete_pod_now(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match pods.delete(name, &DeleteParams::default().grace_period(0)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(anyhow::anyhow!("delete Pod {namespace}/{name}: {e}")),
        }
    }

    /// Creates Pod `name` and moves it to `Running` (there is no kubelet).
    pub async fn running_pod(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        self.create_pod(namespace, name, serde_json::json!({}), serde_json::json!({})).await?;
        self.set_pod_phase(namespace, name, "Running").await
    }

    /// Sets a Pod's `status.phase` through the status subresource, as a kubelet would.
    pub async fn set_pod_phase(&self, namespace: &str, name: &str, phase: &str) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let status = serde_json::json!({ "status": { "phase": phase } });
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(|e| anyhow::anyhow!("set Pod {namespace}/{name} phase {phase}: {e}"))?;
        Ok(())
    }

    /// Creates a ServiceAccount (already existing is fine).
    pub async fn create_service_account(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        create_service_account(&self.client, namespace, name).await
    }

    /// A token for ServiceAccount `namespace/name` (TokenRequest, one hour).
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> anyhow::Result<String> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec { expiration_seconds: Some(3600), ..TokenRequestSpec::default() },
            ..TokenRequest::default()
        };
        let answer = accounts.create_token_request(name, &PostParams::default(), &request).await?;
        answer.status.map(|s| s.token).ok_or_else(|| anyhow::anyhow!("TokenRequest answered without a token"))
    }

    /// Writes a kubeconfig that authenticates with `token` (next to the admin
    /// one) and returns its path.
    pub fn token_kubeconfig(&self, label: &str, token: &str) -> anyhow::Result<PathBuf> {
        let dir = self.kubeconfig.parent().ok_or_else(|| anyhow::anyhow!("kubeconfig has no directory"))?;
        let path = dir.join(format!("kubeconfig-{label}"));
        let ca = &self.ca_line;
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    {ca}\n\
             users:\n- name: {label}\n  user:\n    token: {token}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: {label}\ncurrent-context: test\n",
            server = self.server_url,
        );
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

impl Drop for KubeServer {
    fn drop(&mut self) {
        if self.local.is_some() {
            // Everything lives in the temp etcd, which goes away with the server.
            return;
        }
        let namespaces = self.created.lock().map(|mut c| std::mem::take(&mut *c)).unwrap_or_default();
        if namespaces.is_empty() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let client = self.client.clone();
        let (done, wait) = std::sync::mpsc::channel();
        handle.spawn(async move {
            let api: Api<Namespace> = Api::all(client);
            for ns in namespaces {
                let _ = api.delete(&ns, &DeleteParams::default()).await;
            }
            let _ = done.send(());
        });
        // Drop runs outside the runtime's worker threads (the runner drops
        // the shared backend in `block_on`), so waiting here does not stall them.
        let _ = wait.recv_timeout(Duration::from_secs(30));
    }
}

async fn client_from(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn apiserver_args(host: &str, port: u16, etcd_url: &str, files: &PkiFiles, dir: &Path) -> Vec<String> {
    let p = |path: &PathBuf| path.display().to_string();
    vec![
        format!("--etcd-servers={etcd_url}"),
        format!("--bind-address={host}"),
        format!("--advertise-address={host}"),
        format!("--secure-port={port}"),
        format!("--cert-dir={}", dir.join("certs").display()),
        format!("--tls-cert-file={}", p(&files.serving_cert)),
        format!("--tls-private-key-file={}", p(&files.serving_key)),
        format!("--client-ca-file={}", p(&files.ca_cert)),
        format!("--service-account-issuer={ISSUER}"),
        format!("--service-account-key-file={}", p(&files.sa_pub)),
        format!("--service-account-signing-key-file={}", p(&files.sa_key)),
        "--authorization-mode=RBAC".to_owned(),
        "--service-cluster-ip-range=10.96.0.0/24".to_owned(),
        "--endpoint-reconciler-type=none".to_owned(),
        "--enable-priority-and-fairness=false".to_owned(),
        "--profiling=false".to_owned(),
        "--v=1".to_owned(),
    ]
}

fn admin_kubeconfig(server_url: &str, files: &PkiFiles) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server_url}\n    certificate-authority: {ca}\n\
         users:\n- name: admin\n  user:\n    client-certificate: {cert}\n    client-key: {key}\n\
         contexts:\n- name: local\n  context:\n    cluster: local\n    user: admin\ncurrent-context: local\n",
        ca = files.ca_cert.display(),
        cert = files.admin_cert.display(),
        key = files.admin_key.display(),
    )
}

/// The PKI files of one local server.
struct PkiFiles {
    ca_cert: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    admin_cert: PathBuf,
    admin_key: PathBuf,
    sa_key: PathBuf,
    sa_pub: PathBuf,
}

impl PkiFiles {
    /// A CA, a serving certificate for loopback, the `kubernetes` names and
    /// `address`, an admin client certificate (`system:masters`) and the
    /// service-account key, written into `dir`.
    fn generate(dir: &Path, address: Option<std::net::Ipv4Addr>) -> anyhow::Result<Self> {
        let ca = Ca::new("registry-test-ca")?;
        let mut names = vec!["127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"];
        let address = address.map(|a| a.to_string());
        names.extend(address.as_deref());
        let (serving_cert, serving_key) = ca.server("kube-apiserver", &names)?.write(dir, "apiserver")?;
        let (admin_cert, admin_key) = ca.client("registry-admin", Some("system:masters"))?.write(dir, "admin")?;
        let (ca_cert, _) = ca.own().write(dir, "ca")?;
        let (sa_key, sa_pub) = ServiceAccountKey::generate()?.write(dir)?;
        Ok(Self { ca_cert, serving_cert, serving_key, admin_cert, admin_key, sa_key, sa_pub })
    }
}

/// How a user's kubeconfig trusts its cluster, as one kubeconfig line.
fn user_ca_line(path: &Path) -> String {
    let Ok(kc) = Kubeconfig::read_from(path) else { return "insecure-skip-tls-verify: true".to_owned() };
    let current = kc.current_context.clone();
    let cluster_name = kc
        .contexts
        .iter()
        .find(|c| Some(&c.name) == current.as_ref())
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone());
    let cluster = kc
        .clusters
        .iter()
        .find(|c| Some(&c.name) == cluster_name.as_ref())
        .or_else(|| kc.clusters.first())
        .and_then(|c| c.cluster.clone());
    match cluster {
        Some(c) if c.certificate_authority_data.is_some() => {
            format!("certificate-authority-data: {}", c.certificate_authority_data.unwrap_or_default())
        }
        Some(c) if c.certificate_authority.is_some() => {
            format!("certificate-authority: {}", c.certificate_authority.unwrap_or_default())
        }
        _ => "insecure-skip-tls-verify: true".to_owned(),
    }
}

/// Creates ServiceAccount `namespace/name` through `client` (already
/// existing is fine): for this server and for the Kubernetes node alike.
pub async fn create_service_account(client: &Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let sa = ServiceAccount {
        metadata: ObjectMeta { name: Some(name.to_owned()), ..ObjectMeta::default() },
        ..ServiceAccount::default()
    };
    match accounts.create(&PostParams::default(), &sa).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
