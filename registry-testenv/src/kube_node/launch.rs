//! The start of a node: its run dir, PKI, images and configs, then each
//! component in turn, each waited for before the next.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

use super::args::{Ports, apiserver_args, controller_manager_args, scheduler_args};
use super::config::write_configs;
use super::host::Host;
use super::images::build_node_images;
use super::pki::PkiFiles;
use super::*;
use crate::etcd;

/// Starts the components one after the other; `host` undoes everything on failure (its `Drop`).
pub(super) async fn launch(
    host: &mut Host,
    programs: &Programs,
) -> Result<(PathBuf, Client, Vec<(&'static str, Duration)>), Unavailable> {
    let run = host.run_dir.clone();
    for dir in ["logs", "pids", "etcd", "pod-logs", "cni-ipam", "kubelet", "containerd", "runc", "images"] {
        fs::create_dir_all(run.join(dir)).map_err(|e| failed(SERVER, format!("{}: {e}", run.join(dir).display())))?;
    }
    let pki = PkiFiles::generate(&run.join("pki")).map_err(|e| failed(SERVER, format!("certificates: {e:#}")))?;
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
    let health = format!("127.0.0.1:{health}");
    host.wait_until("etcd", ETCD_TIMEOUT, async || etcd::health(&health, Duration::from_secs(2)).await).await?;
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

async fn client_from(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}
