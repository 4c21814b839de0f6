//! The single-node Kubernetes test cluster ([`registry_testenv::kube_node`]):
//! it starts, runs a busybox Pod with an exec readiness probe to Running and
//! Ready, and once dropped leaves no process, mount, cgroup, network link or
//! `/var/log/containers` link behind.
//!
//! Without `REGISTRY_TEST_REQUIRE=1` the test is reported ignored, with the
//! reason, when a binary is missing (or the process is not root).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use conformance::Runner;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{LogParams, PostParams};
use registry_testenv::kube_node::{self, BUSYBOX_IMAGE, KubeNode};

const POD: &str = "probe-demo";

fn main() -> ExitCode {
    Runner::new()
        .test("kube_node::busybox_pod_ready_then_clean_teardown", KubeNode::available(), || async {
            // `run` drives runtimes of its own (one per phase, so a dropped
            // node is observed from outside any runtime): a thread of its own.
            std::thread::spawn(run).join().map_err(|_| anyhow::anyhow!("the test thread panicked"))?
        })
        .run()
}

/// What the node looked like just before it was dropped.
struct Footprint {
    run_dir: PathBuf,
    pids: Vec<u32>,
}

fn run() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // Whatever a node killed outright (no Drop) left is swept first, so the
    // snapshot is of a clean host.
    runtime.block_on(KubeNode::sweep())?;
    let before = Host::snapshot();
    let started = Instant::now();
    let (scenario, footprint) = runtime.block_on(async {
        let node = KubeNode::start().await?;
        eprintln!("kube_node: started in {:.2?} ({})", started.elapsed(), node.run_dir().display());
        for (milestone, at) in node.startup_times() {
            eprintln!("kube_node:   {milestone:<24} +{:.2}s after etcd start", at.as_secs_f64());
        }
        let scenario = pod_scenario(&node).await;
        if let Err(e) = &scenario {
            eprintln!("kube_node: kubelet log tail:\n{}", node.log_tail("kubelet", 30));
            eprintln!("kube_node: scenario failed: {e:#}");
        }
        let footprint = Footprint { run_dir: node.run_dir().to_owned(), pids: node.pids() };
        let stopping = Instant::now();
        drop(node);
        eprintln!("kube_node: torn down in {:.2?}", stopping.elapsed());
        anyhow::Ok((scenario, footprint))
    })?;
    let clean = check_clean(&before, &footprint);
    match (scenario, clean) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) => Err(e),
        (Ok(()), Err(e)) => Err(e.context("teardown")),
        (Err(e), Err(c)) => Err(e.context(format!("and teardown: {c:#}"))),
    }
}

/// A busybox Pod whose exec readiness probe succeeds only after the
/// container created `/tmp/ready`: first Running and not Ready, then Ready.
async fn pod_scenario(node: &KubeNode) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(node.client(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": POD, "labels": { "app": POD } },
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "main",
                "image": BUSYBOX_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", "echo started; sleep 3; touch /tmp/ready; exec sleep 3600"],
                "readinessProbe": {
                    "exec": { "command": ["cat", "/tmp/ready"] },
                    "periodSeconds": 1,
                    "failureThreshold": 1,
                },
            }],
        },
    }))?;
    let created = Instant::now();
    pods.create(&PostParams::default(), &pod).await?;
    let mut running_at = None;
    let mut seen_unready = false;
    let deadline = Duration::from_secs(120);
    loop {
        let pod = pods.get(POD).await?;
        let status = pod.status.clone().unwrap_or_default();
        let phase = status.phase.clone().unwrap_or_default();
        let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
        if phase == "Running" {
            running_at.get_or_insert(created.elapsed());
            if !ready {
                seen_unready = true;
            }
        }
        if phase == "Running" && ready {
            let ip = status.pod_ip.clone().unwrap_or_default();
            eprintln!(
                "kube_node: Pod {POD} Running after {:.2?}, Ready after {:.2?} (seen Running but not Ready: {seen_unready}), IP {ip}",
                running_at.unwrap_or_default(),
                created.elapsed()
            );
            anyhow::ensure!(
                seen_unready,
                "the Pod was never Running-but-not-Ready: the readiness probe did not gate it"
            );
            anyhow::ensure!(ip.starts_with("10.88."), "Pod IP {ip} is not on the node's bridge network");
            break;
        }
        anyhow::ensure!(phase != "Failed" && phase != "Succeeded", "Pod ended in phase {phase}: {status:?}");
        anyhow::ensure!(created.elapsed() < deadline, "Pod not Running and Ready after {deadline:?}: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // apiserver -> kubelet (on the bridge address) -> container log.
    let log = pods.logs(POD, &LogParams::default()).await?;
    anyhow::ensure!(log.contains("started"), "unexpected container log: {log:?}");
    Ok(())
}

/// Host paths a kubelet, containerd, runc or CNI plugin may create outside the run dir.
const HOST_PATHS: [&str; 14] = [
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/var/lib/cni",
    "/var/log/pods",
    "/var/run/netns",
    "/run/containerd",
    "/run/runc",
    "/run/mount",
    "/etc/kubernetes",
    "/etc/cni",
    "/opt/cni",
    "/usr/libexec/kubernetes",
    "/var/lib/kubelet/device-plugins/kubelet.sock",
    "/var/log/containers",
];

/// Host state the node may touch, outside its run dir.
#[derive(Debug, PartialEq)]
struct Host {
    links: BTreeSet<String>,
    log_links: Option<BTreeSet<String>>,
    cni_results: Option<BTreeSet<String>>,
    existing: BTreeSet<&'static str>,
}

impl Host {
    fn snapshot() -> Self {
        let links = command("ip", &["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().split('@').next().unwrap_or_default().to_owned()))
            .collect();
        let entries = |dir: &str| -> Option<BTreeSet<String>> {
            std::fs::read_dir(dir)
                .ok()
                .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        };
        let log_links = entries(kube_node::CONTAINER_LOG_LINKS);
        let cni_results = entries("/var/lib/cni/results");
        let existing = HOST_PATHS.into_iter().filter(|p| Path::new(p).exists()).collect();
        Self { links, log_links, cni_results, existing }
    }
}

fn command(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checks, with `ps`, `mount`, `ip link` and the file system, that nothing of the node is left.
fn check_clean(before: &Host, footprint: &Footprint) -> anyhow::Result<()> {
    let run_dir = footprint.run_dir.to_string_lossy().into_owned();
    let mut problems = Vec::new();
    anyhow::ensure!(
        footprint.pids.len() >= 8,
        "expected 6 components + shim + container processes, saw {:?}",
        footprint.pids
    );

    let ps = command("ps", &["-eo", "pid=,stat=,args="]);
    let live: BTreeSet<u32> = ps
        .lines()
        .filter(|l| !l.split_whitespace().nth(1).is_some_and(|s| s.starts_with('Z')))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    let left: Vec<u32> = footprint.pids.iter().copied().filter(|p| live.contains(p)).collect();
    if !left.is_empty() {
        problems.push(format!("processes still running: {left:?}"));
    }
    let naming: Vec<&str> = ps.lines().filter(|l| l.contains(&run_dir)).collect();
    if !naming.is_empty() {
        problems.push(format!("processes naming the run dir: {naming:?}"));
    }

    let mount = command("mount", &[]);
    let mounted: Vec<&str> =
        mount.lines().filter(|l| l.contains(&run_dir) || l.contains(kube_node::RUN_DIR_PREFIX)).collect();
    if !mounted.is_empty() {
        problems.push(format!("mounts left: {mounted:?}"));
    }

    let cgroups: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join(kube_node::CGROUP_ROOT))
        .filter(|p| p.exists())
        .collect();
    if !cgroups.is_empty() {
        problems.push(format!("cgroups left: {cgroups:?}"));
    }

    let after = Host::snapshot();
    if after.links.contains(kube_node::BRIDGE) {
        problems.push(format!("bridge {} left", kube_node::BRIDGE));
    }
    if after.links != before.links {
        problems.push(format!("network links before {:?}, after {:?}", before.links, after.links));
    }
    if after.log_links != before.log_links {
        problems.push(format!(
            "{} before {:?}, after {:?}",
            kube_node::CONTAINER_LOG_LINKS,
            before.log_links,
            after.log_links
        ));
    }
    if after.cni_results != before.cni_results {
        problems.push(format!("CNI result cache before {:?}, after {:?}", before.cni_results, after.cni_results));
    }
    if after.existing != before.existing {
        problems.push(format!("host paths existing before: {:?}, after: {:?}", before.existing, after.existing));
    }
    if footprint.run_dir.exists() {
        problems.push(format!("run dir {run_dir} left"));
    }
    if problems.is_empty() {
        eprintln!(
            "kube_node: clean after teardown: {} processes gone, no mount/cgroup/link/log link left, run dir removed",
            footprint.pids.len()
        );
        Ok(())
    } else {
        Err(anyhow::anyhow!(problems.join("\n")))
    }
}
