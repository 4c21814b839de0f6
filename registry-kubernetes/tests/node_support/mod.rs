//! Fixtures of the tests on the real single-node cluster
//! ([`registry_testenv::kube_node::KubeNode`]): one node per test binary,
//! started by the first test that needs it and torn down by [`shutdown`]
//! after the run; the demo service image ([`DEMO_IMAGE`]) imported into it;
//! namespaces deleted when their guard drops; demo Pods; host-side access to
//! a container's processes and files (kill, readiness file).
// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, LogParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use registry_kubernetes::Mode;
use registry_testenv::Unavailable;
use registry_testenv::demo_image::{DEMO_IMAGE, import_demo_image};
use registry_testenv::kube_node::{self, KubeNode};

/// The node of this test binary: `None` until a test starts it, then the node or why it did not start.
static NODE: tokio::sync::Mutex<Option<Result<Arc<KubeNode>, String>>> = tokio::sync::Mutex::const_new(None);

/// Whether a node can be started here (binaries installed, root).
pub fn available() -> Result<(), Unavailable> {
    KubeNode::available()
}

/// The shared node and an admin client made on the calling test's runtime.
pub struct Cluster {
    /// The node.
    pub node: Arc<KubeNode>,
    /// Admin client (`system:masters`).
    pub client: Client,
}

/// The node of this binary, started (with the demo image imported) on first use.
pub async fn cluster() -> anyhow::Result<Cluster> {
    let node = {
        let mut slot = NODE.lock().await;
        if slot.is_none() {
            let started = Instant::now();
            let result = async {
                let node = KubeNode::start().await?;
                eprintln!("node: Ready and default ServiceAccount after {:.2?}", started.elapsed());
                for (milestone, at) in node.startup_times() {
                    eprintln!("node:   {milestone:<24} +{:.2}s after etcd start", at.as_secs_f64());
                }
                let image = Instant::now();
                import_demo_image(&node)?;
                eprintln!("node: demo image built (cargo, cached) and imported in {:.2?}", image.elapsed());
                anyhow::Ok(node)
            }
            .await;
            *slot = Some(result.map(Arc::new).map_err(|e| format!("{e:#}")));
        }
        match slot.as_ref() {
            Some(Ok(node)) => Arc::clone(node),
            Some(Err(e)) => anyhow::bail!("the Kubernetes node did not start: {e}"),
            None => anyhow::bail!("unreachable: node slot empty"),
        }
    };
    let client = client_from(node.kubeconfig()).await?;
    Ok(Cluster { node, client })
}

/// Tears the node down (call after the run).
pub fn shutdown() {
    if let Ok(mut slot) = NODE.try_lock() {
        drop(slot.take());
    }
}

/// An admin client from `kubeconfig`, on the current runtime.
pub async fn client_from(kubeconfig: &Path) -> anyhow::Result<Client> {
    let config =
        kube::Config::from_custom_kubeconfig(Kubeconfig::read_from(kubeconfig)?, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// A namespace deleted (with everything in it) when dropped.
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    kubeconfig: PathBuf,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let (name, kubeconfig) = (self.name.clone(), self.kubeconfig.clone());
        // A runtime and client of its own: Drop may run while the test's runtime is shutting down.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(async move {
                if let Ok(client) = client_from(&kubeconfig).await {
                    let namespaces: Api<Namespace> = Api::all(client);
                    let _ = namespaces.delete(&name, &DeleteParams::background()).await;
                }
            });
        })
        .join();
    }
}

impl Cluster {
    /// Creates a fresh namespace `<prefix>-<random>` with its `default` ServiceAccount.
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<TestNamespace> {
        let name = conformance::fixtures::unique(prefix);
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &Namespace {
                    metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
                    ..Namespace::default()
                },
            )
            .await?;
        let guard = TestNamespace { name: name.clone(), kubeconfig: self.node.kubeconfig().to_owned() };
        // The serviceaccount controller makes `default`; creating it ourselves is the same and faster.
        self.service_account(&name, "default").await?;
        Ok(guard)
    }

    /// Creates ServiceAccount `namespace/name` (existing is fine).
    pub async fn service_account(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        registry_testenv::kube::create_service_account(&self.client, namespace, name).await
    }

    /// Applies `deploy/rbac/<mode>.yaml` in `namespace`, bound to ServiceAccount
    /// `account`; `edit` may change the Role's rules first (RBAC minimality).
    /// The Role and RoleBinding are named `<name in the manifest>-<account>`,
    /// so several accounts of one namespace get Roles of their own.
    pub async fn apply_rbac(
        &self,
        mode: Mode,
        namespace: &str,
        account: &str,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> anyhow::Result<()> {
        let path = rbac_manifest(mode);
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let roles: Api<Role> = Api::namespaced(self.client.clone(), namespace);
        let bindings: Api<RoleBinding> = Api::namespaced(self.client.clone(), namespace);
        let mut edit = Some(edit);
        for document in serde_yaml::Deserializer::from_str(&text) {
            let mut value: serde_json::Value = serde::Deserialize::deserialize(document)?;
            value["metadata"]["namespace"] = namespace.into();
            let name = format!("{}-{account}", value["metadata"]["name"].as_str().unwrap_or("registry"));
            value["metadata"]["name"] = name.clone().into();
            match value["kind"].as_str().unwrap_or_default() {
                "Role" => {
                    if let Some(edit) = edit.take() {
                        edit(&mut value["rules"]);
                    }
                    roles.create(&PostParams::default(), &serde_json::from_value(value)?).await?;
                }
                "RoleBinding" => {
                    let role = format!("{}-{account}", value["roleRef"]["name"].as_str().unwrap_or("registry"));
                    value["roleRef"]["name"] = role.into();
                    for subject in value["subjects"].as_array_mut().into_iter().flatten() {
                        subject["namespace"] = namespace.into();
                        subject["name"] = account.into();
                    }
                    bindings.create(&PostParams::default(), &serde_json::from_value(value)?).await?;
                }
                other => anyhow::bail!("unexpected kind {other} in {}", path.display()),
            }
        }
        Ok(())
    }

    /// Pods of `namespace`.
    pub fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Creates a demo Pod.
    pub async fn create_demo(&self, namespace: &str, demo: &Demo) -> anyhow::Result<()> {
        let pod = demo.pod(&self.node)?;
        self.pods(namespace)
            .create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("create Pod {}", demo.name))?;
        Ok(())
    }

    /// Polls Pod `name` until `check` says yes, for at most `timeout`.
    pub async fn wait_pod(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
        what: &str,
        check: impl Fn(&Pod) -> bool,
    ) -> anyhow::Result<Pod> {
        let pods = self.pods(namespace);
        let deadline = Instant::now() + timeout;
        loop {
            let pod = pods.get_opt(name).await?;
            if let Some(pod) = &pod
                && check(pod)
            {
                return Ok(pod.clone());
            }
            if Instant::now() > deadline {
                let log = self.logs(namespace, name).await.unwrap_or_default();
                anyhow::bail!(
                    "Pod {namespace}/{name} not {what} after {timeout:?}: status {:?}\nlog:\n{log}",
                    pod.and_then(|p| p.status)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the Pod to be Running and Ready; returns it.
    pub async fn wait_ready(&self, namespace: &str, name: &str) -> anyhow::Result<Pod> {
        self.wait_pod(namespace, name, Duration::from_secs(60), "Running and Ready", |p| {
            phase(p) == "Running" && ready(p)
        })
        .await
    }

    /// The log of the Pod's (only) container.
    pub async fn logs(&self, namespace: &str, name: &str) -> anyhow::Result<String> {
        Ok(self.pods(namespace).logs(name, &LogParams::default()).await?)
    }

    /// Polls the Pod's log until it contains `needle`; returns the log.
    pub async fn wait_log(
        &self,
        namespace: &str,
        name: &str,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.logs(namespace, name).await.unwrap_or_default();
            if log.contains(needle) {
                return Ok(log);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "log of {namespace}/{name} lacks {needle:?} after {timeout:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The Pod's phase (empty when unknown).
pub fn phase(pod: &Pod) -> String {
    pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default()
}

/// True when the Pod's Ready condition is True.
pub fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The Pod's IP.
pub fn pod_ip(pod: &Pod) -> String {
    pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default()
}

/// Restart count of the Pod's first container.
pub fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map(|c| c.restart_count)
        .unwrap_or_default()
}

/// `deploy/rbac/<mode>.yaml` of this repository.
pub fn rbac_manifest(mode: Mode) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("deploy").join("rbac").join(format!("{}.yaml", mode.as_str()))
}

/// A demo-service Pod (`registry-demo`, see `demo/`).
#[derive(Clone, Debug)]
pub struct Demo {
    /// Pod name.
    pub name: String,
    /// ServiceAccount.
    pub account: String,
    /// `serve` or `lookup`.
    pub command: &'static str,
    /// `REGISTRY_URL`.
    pub url: String,
    /// `REGISTRY_ENV`.
    pub env: String,
    /// `REGISTRY_APP`.
    pub app: String,
    /// `REGISTRY_TTL_SECS`.
    pub ttl_secs: u64,
    /// `restartPolicy: Never` instead of `Always`.
    pub never_restart: bool,
    /// A readiness probe `cat /tmp/ready` (1 s period): Ready only while the file exists.
    pub readiness_file: bool,
    /// `terminationGracePeriodSeconds`.
    pub grace_secs: i64,
    /// Extra labels (e.g. for a Deployment-like selector).
    pub labels: serde_json::Value,
}

impl Demo {
    /// A demo service `name` registering through `url` in env `env` as app `demo`.
    pub fn serve(name: &str, account: &str, url: &str, env: &str) -> Self {
        Self {
            name: name.to_owned(),
            account: account.to_owned(),
            command: "serve",
            url: url.to_owned(),
            env: env.to_owned(),
            app: "demo".to_owned(),
            ttl_secs: 10,
            never_restart: false,
            readiness_file: false,
            grace_secs: 2,
            labels: serde_json::json!({}),
        }
    }

    /// A gateway Pod printing what it discovers.
    pub fn lookup(name: &str, account: &str, url: &str, env: &str) -> Self {
        Self { command: "lookup", ..Self::serve(name, account, url, env) }
    }

    /// The Pod object.
    pub fn pod(&self, node: &KubeNode) -> anyhow::Result<Pod> {
        let field = |path: &str| serde_json::json!({ "fieldRef": { "fieldPath": path } });
        let mut env = vec![
            serde_json::json!({ "name": "REGISTRY_URL", "value": self.url }),
            serde_json::json!({ "name": "REGISTRY_ENV", "value": self.env }),
            serde_json::json!({ "name": "REGISTRY_APP", "value": self.app }),
            serde_json::json!({ "name": "REGISTRY_TTL_SECS", "value": self.ttl_secs.to_string() }),
            serde_json::json!({ "name": "REGISTRY_GRACE_MS", "value": "500" }),
            serde_json::json!({ "name": "RUST_LOG", "value": "info" }),
            serde_json::json!({ "name": "POD_NAME", "valueFrom": field("metadata.name") }),
            serde_json::json!({ "name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace") }),
            serde_json::json!({ "name": "POD_IP", "valueFrom": field("status.podIP") }),
        ];
        for (name, value) in node.in_cluster_env() {
            env.push(serde_json::json!({ "name": name, "value": value }));
        }
        let mut container = serde_json::json!({
            "name": "demo",
            "image": DEMO_IMAGE,
            "imagePullPolicy": "Never",
            "args": [self.command],
            "env": env,
        });
        if self.readiness_file {
            container["readinessProbe"] = serde_json::json!({
                "exec": { "command": ["cat", "/tmp/ready"] },
                "periodSeconds": 1,
                "failureThreshold": 1,
            });
        }
        let mut labels = self.labels.clone();
        if !labels.is_object() {
            labels = serde_json::json!({});
        }
        labels["demo"] = self.name.clone().into();
        Ok(serde_json::from_value(serde_json::json!({
            "metadata": { "name": self.name, "labels": labels },
            "spec": {
                "serviceAccountName": self.account,
                "restartPolicy": if self.never_restart { "Never" } else { "Always" },
                "terminationGracePeriodSeconds": self.grace_secs,
                "containers": [container],
            }
        }))?)
    }
}

/// The container ID (without `containerd://`) of the Pod's first container.
pub fn container_id(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .container_id
        .as_deref()
        .map(|id| id.trim_start_matches("containerd://").to_owned())
}

/// Host PIDs of the processes in container `id` (its cgroup under the node's cgroup root).
pub fn container_pids(id: &str) -> Vec<u32> {
    let root = Path::new("/sys/fs/cgroup/pids").join(kube_node::CGROUP_ROOT);
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            if entry.file_name().to_string_lossy() == id {
                return std::fs::read_to_string(path.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
            }
            stack.push(path);
        }
    }
    Vec::new()
}

/// The host PID of the `registry-demo` process in the Pod's container.
pub fn demo_pid(pod: &Pod) -> anyhow::Result<u32> {
    let id = container_id(pod).ok_or_else(|| anyhow::anyhow!("Pod has no running container"))?;
    container_pids(&id)
        .into_iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.starts_with(registry_testenv::demo_image::DEMO_BINARY_IN_IMAGE.as_bytes()))
        })
        .ok_or_else(|| anyhow::anyhow!("no registry-demo process in container {id}"))
}

/// Sends `signal` (`-9`, `-STOP`, …) to a host PID.
pub fn kill(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill").arg(signal).arg(pid.to_string()).status()?;
    anyhow::ensure!(status.success(), "kill {signal} {pid}: {status}");
    Ok(())
}

/// Creates (`true`) or removes the readiness file `/tmp/ready` in the
/// container of `pid` (through `/proc/<pid>/root`, from the host).
pub fn set_ready_file(pid: u32, ready: bool) -> anyhow::Result<()> {
    let path = PathBuf::from(format!("/proc/{pid}/root/tmp/ready"));
    if ready {
        std::fs::write(&path, b"ok")?;
    } else if path.exists() {
        std::fs::remove_file(&path)?;
    }
    Ok(())
}

/// Median of `values` (sorted copy).
pub fn median(values: &[Duration]) -> Duration {
    let mut v = values.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

impl Cluster {
    /// A kubeconfig that authenticates as ServiceAccount `namespace/account`
    /// only (a TokenRequest token, one hour), next to the admin one.
    pub async fn token_kubeconfig(&self, namespace: &str, account: &str) -> anyhow::Result<PathBuf> {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec { expiration_seconds: Some(3600), ..TokenRequestSpec::default() },
            ..TokenRequest::default()
        };
        let answer = accounts.create_token_request(account, &PostParams::default(), &request).await?;
        let token = answer.status.map(|s| s.token).ok_or_else(|| anyhow::anyhow!("TokenRequest without a token"))?;
        let dir = self.node.kubeconfig().parent().ok_or_else(|| anyhow::anyhow!("kubeconfig has no directory"))?;
        let path = dir.join(format!("kubeconfig-{namespace}-{account}"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: node\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
             users:\n- name: {account}\n  user:\n    token: {token}\n\
             contexts:\n- name: node\n  context:\n    cluster: node\n    user: {account}\ncurrent-context: node\n",
            server = self.node.server_url(),
            ca = self.node.ca_cert().display(),
        );
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// A busybox Pod that sleeps (a Pod to register on or own a Lease), Running and Ready.
    pub async fn sleeper(&self, namespace: &str, name: &str) -> anyhow::Result<Pod> {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name },
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "main",
                    "image": kube_node::BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["sleep", "3600"],
                }],
            }
        }))?;
        self.pods(namespace).create(&PostParams::default(), &pod).await?;
        self.wait_ready(namespace, name).await
    }
}
