//! `registryctl conformance --backend URL`: the conformance suite against any
//! reachable server (a user's kind cluster, a staging etcd), with a pass/fail
//! line per scenario.
//!
//! Scenarios that need what a URL cannot give are reported as not applicable
//! with the reason: stopping the server (outage) and raw writes in the
//! backend's own format (foreign records). The backend crates' own test suites
//! run those on local servers.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;

use async_trait::async_trait;
use clap::Args;
use conformance::{Arguments, Backend, Capability, Runner, ServerUse, Unavailable};
use registry::Registry;
use registry_core::store::{Scope, Store};
use registry_kubernetes::{ClusterSource, KubernetesConfig, Mode};

use crate::namespaces::Namespaces;

use registry_core::options::redact;

/// Options of `registryctl conformance`.
#[derive(Args, Debug)]
pub struct ConformanceArgs {
    /// Backend URL: `memory://`, `etcd://…`, `consul://…`, `kubernetes://?mode=lease|configmap`.
    #[arg(long)]
    backend: String,
    /// Run only scenarios whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Scenarios run at once.
    #[arg(long, default_value_t = 8)]
    threads: usize,
}

static URL: OnceLock<String> = OnceLock::new();

/// The backend a URL names, as the suite sees it.
struct UrlBackend {
    registry: Registry,
    kube: Option<Namespaces>,
}

fn unavailable(e: impl std::fmt::Display) -> Unavailable {
    Unavailable::StartFailed { server: URL.get().cloned().unwrap_or_default(), reason: e.to_string() }
}

/// The kubeconfig a `kubernetes://` URL uses: `?kubeconfig=`, else `$KUBECONFIG`, else `~/.kube/config`.
/// The Kubernetes configuration of `url` when it names the Kubernetes backend.
fn kubernetes_config(url: &str) -> Option<KubernetesConfig> {
    let scheme = url.split_once("://")?.0.to_ascii_lowercase();
    if !registry_kubernetes::BACKEND.schemes.contains(&scheme.as_str()) {
        return None;
    }
    url.parse().ok()
}

/// The kubeconfig a Kubernetes configuration reads.
fn kubeconfig_of(config: &KubernetesConfig) -> PathBuf {
    match &config.cluster {
        ClusterSource::Kubeconfig(path) => path.clone(),
        _ => std::env::var_os("KUBECONFIG").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".kube").join("config")
        }),
    }
}

#[async_trait]
impl Backend for UrlBackend {
    fn store(&self) -> &dyn Store {
        &**self.registry.store()
    }

    fn dedicated_available() -> Result<(), Unavailable> {
        Err(Unavailable::NotApplicable("a server given by URL cannot be stopped and restarted by this tool".into()))
    }

    fn capability(capability: Capability) -> Result<(), String> {
        match capability {
            Capability::RawWrites => Err("raw writes in the backend's own format need its crate's test suite".into()),
            _ => Ok(()),
        }
    }

    async fn start(_server: ServerUse) -> Result<Self, Unavailable> {
        let url = URL.get().ok_or_else(|| unavailable("no URL"))?;
        let registry = registry::connect(url.as_str()).await.map_err(unavailable)?;
        let kube = match kubernetes_config(url) {
            Some(config) => Some(Namespaces::connect(&kubeconfig_of(&config)).await.map_err(unavailable)?),
            None => None,
        };
        Ok(Self { registry, kube })
    }

    async fn prepare_namespace(&self, namespace: &str) -> anyhow::Result<()> {
        if let Some(kube) = &self.kube {
            kube.create(namespace).await?;
        }
        Ok(())
    }

    async fn put_foreign(&self, _scope: &Scope, _name: &str, _value: &str) -> anyhow::Result<()> {
        anyhow::bail!("not applicable to a URL backend")
    }

    async fn remove_foreign(&self, _scope: &Scope, _name: &str) -> anyhow::Result<()> {
        anyhow::bail!("not applicable to a URL backend")
    }

    /// A URL gives the suite the library's API only, which cannot list raw
    /// keys: the check is reported as not made. (On Kubernetes the
    /// namespaces the suite created are deleted when it ends, see
    /// `KubeServer`'s drop.)
    async fn leftovers(&self, _namespace: &str) -> anyhow::Result<Option<Vec<String>>> {
        Ok(None)
    }

    async fn stop_server(&self) -> anyhow::Result<()> {
        anyhow::bail!("not applicable to a URL backend")
    }

    async fn start_server(&self) -> anyhow::Result<()> {
        anyhow::bail!("not applicable to a URL backend")
    }
}

/// Runs the suite; blocking (it drives its own runtime), so call it outside any runtime.
pub fn run(args: ConformanceArgs) -> anyhow::Result<ExitCode> {
    if kubernetes_config(&args.backend).is_some_and(|c| matches!(c.mode, Mode::Pod | Mode::EndpointSlice)) {
        anyhow::bail!(
            "`pod` and `endpointslice` modes need a Pod per registrar; run \
             `KUBECONFIG=… REGISTRY_TEST_POD_IMAGE=… cargo test -p registry-kubernetes --test conformance`"
        );
    }
    URL.set(args.backend.clone()).map_err(|_| anyhow::anyhow!("URL already set"))?;
    let test_args = Arguments { filter: args.filter, test_threads: Some(args.threads.max(1)), ..Arguments::default() };
    println!("conformance suite against {}", redact(&args.backend));
    Ok(Runner::new().suite::<UrlBackend>("url").run_with(test_args))
}
