//! The command lines of the node's components, and its loopback ports.

use std::path::Path;

use super::config::Conf;
use super::pki::PkiFiles;
use super::*;
use crate::free_port;

/// Loopback ports of one node.
pub(super) struct Ports {
    pub(super) etcd_client: u16,
    pub(super) etcd_peer: u16,
    pub(super) etcd_health: u16,
    pub(super) controller_manager: u16,
    pub(super) scheduler: u16,
    pub(super) kubelet_healthz: u16,
}

impl Ports {
    pub(super) fn pick() -> Self {
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

pub(super) fn apiserver_args(run: &Path, pki: &PkiFiles, etcd_url: &str) -> Vec<String> {
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

pub(super) fn controller_manager_args(run: &Path, pki: &PkiFiles, conf: &Conf, ports: &Ports) -> Vec<String> {
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

pub(super) fn scheduler_args(conf: &Conf, ports: &Ports) -> Vec<String> {
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
