//! The namespaces `registryctl conformance` creates on a user's Kubernetes
//! cluster (each scenario works in a namespace of its own), and deletes
//! again when the suite's backend is dropped.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

/// How long dropping [`Namespaces`] waits for the deletions to be sent.
const DELETE_WITHIN: Duration = Duration::from_secs(30);

/// Namespaces created on the cluster of one kubeconfig.
pub struct Namespaces {
    client: Client,
    created: Mutex<Vec<String>>,
}

impl Namespaces {
    /// A client of the cluster the kubeconfig at `path` names, checked by asking its version.
    pub async fn connect(path: &Path) -> anyhow::Result<Self> {
        let kubeconfig = Kubeconfig::read_from(path)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        let client = Client::try_from(config)?;
        client.apiserver_version().await?;
        Ok(Self { client, created: Mutex::new(Vec::new()) })
    }

    /// Creates `namespace` and its `default` ServiceAccount (which Pod
    /// admission needs where no controller creates it). Already existing is fine.
    pub async fn create(&self, namespace: &str) -> anyhow::Result<()> {
        let meta = |name: &str| ObjectMeta { name: Some(name.to_owned()), ..ObjectMeta::default() };
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let created = namespaces
            .create(&PostParams::default(), &Namespace { metadata: meta(namespace), ..Namespace::default() })
            .await;
        match created {
            Ok(_) => self.created.lock().map_err(|_| anyhow::anyhow!("lock poisoned"))?.push(namespace.to_owned()),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let account = ServiceAccount { metadata: meta("default"), ..ServiceAccount::default() };
        match accounts.create(&PostParams::default(), &account).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let namespaces = self.created.lock().map(|mut c| std::mem::take(&mut *c)).unwrap_or_default();
        if namespaces.is_empty() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let api: Api<Namespace> = Api::all(self.client.clone());
        let (done, wait) = std::sync::mpsc::channel();
        handle.spawn(async move {
            for namespace in namespaces {
                let _ = api.delete(&namespace, &DeleteParams::default()).await;
            }
            let _ = done.send(());
        });
        // The runner drops the suite's backend in `block_on`, outside the
        // runtime's worker threads, so waiting here does not stall them.
        let _ = wait.recv_timeout(DELETE_WITHIN);
    }
}
