//! The node's config files in its run dir: containerd, CNI, kubeconfigs
//! and the kubelet's configuration.

use std::fs;
use std::path::{Path, PathBuf};

use super::args::Ports;
use super::pki::PkiFiles;
use super::*;

/// Config files written into the run dir.
pub(super) struct Conf {
    pub(super) admin: PathBuf,
    pub(super) controller_manager: PathBuf,
    pub(super) scheduler: PathBuf,
    pub(super) kubelet: PathBuf,
    pub(super) kubelet_config: PathBuf,
    pub(super) containerd: PathBuf,
}

pub(super) fn write_configs(run: &Path, pki: &PkiFiles, programs: &Programs, ports: &Ports) -> std::io::Result<Conf> {
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
