//! The node's certificates (through [`crate::pki`]): a CA, the API server's
//! serving certificate (bridge address, loopback, `10.96.0.1`, the
//! `kubernetes.default…` names), client certificates for the admin
//! (`system:masters`), the controller-manager, the scheduler and the kubelet
//! (`system:node:`[`NODE_NAME`]), the API server's kubelet client, the
//! kubelet's serving certificate, and the service-account key.

use std::path::{Path, PathBuf};

use super::{BRIDGE_ADDR, NODE_NAME};
use crate::pki::{Ca, ServiceAccountKey};

/// `(certificate, key)` file pairs and the other PKI files.
pub(super) struct PkiFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub apiserver: (PathBuf, PathBuf),
    pub admin: (PathBuf, PathBuf),
    pub controller_manager: (PathBuf, PathBuf),
    pub scheduler: (PathBuf, PathBuf),
    pub kubelet: (PathBuf, PathBuf),
    pub apiserver_kubelet_client: (PathBuf, PathBuf),
    pub kubelet_serving: (PathBuf, PathBuf),
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

impl PkiFiles {
    /// Generates the node's certificates and keys into `dir`.
    pub(super) fn generate(dir: &Path) -> anyhow::Result<Self> {
        let ca = Ca::new("registry-node-ca")?;
        let bridge = BRIDGE_ADDR.to_string();
        let (ca_cert, ca_key) = ca.own().write(dir, "ca")?;
        let apiserver_names = [
            bridge.as_str(),
            "127.0.0.1",
            "10.96.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ];
        let kubelet_user = format!("system:node:{NODE_NAME}");
        let (sa_key, sa_pub) = ServiceAccountKey::generate()?.write(dir)?;
        Ok(Self {
            ca_cert,
            ca_key,
            apiserver: ca.server("kube-apiserver", &apiserver_names)?.write(dir, "apiserver")?,
            admin: ca.client("registry-admin", Some("system:masters"))?.write(dir, "admin")?,
            controller_manager: ca.client("system:kube-controller-manager", None)?.write(dir, "controller-manager")?,
            scheduler: ca.client("system:kube-scheduler", None)?.write(dir, "scheduler")?,
            kubelet: ca.client(&kubelet_user, Some("system:nodes"))?.write(dir, "kubelet")?,
            apiserver_kubelet_client: ca
                .client("kube-apiserver-kubelet-client", Some("system:masters"))?
                .write(dir, "apiserver-kubelet-client")?,
            kubelet_serving: ca
                .server(NODE_NAME, &[NODE_NAME, bridge.as_str(), "127.0.0.1"])?
                .write(dir, "kubelet-serving")?,
            sa_key,
            sa_pub,
        })
    }
}
