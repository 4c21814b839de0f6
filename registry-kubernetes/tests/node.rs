//! The Kubernetes backend on a real single-node cluster
//! ([`registry_testenv::kube_node::KubeNode`]: kubelet, controllers,
//! scheduler, containerd) with the demo service (`demo/`, image
//! [`registry_testenv::demo_image::DEMO_IMAGE`]) in real Pods.
//!
//! One node serves every test of this binary (started by the first, torn
//! down after the run); tests run one at a time (they measure delays).
//! Without root or the node's binaries every test is reported ignored with
//! the reason, or fails under `REGISTRY_TEST_REQUIRE=1`.
//!
//! `REGISTRY_NODE_REPEAT=N` repeats each measurement N times (default 1) and
//! prints the median.
// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod node_support;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use conformance::fixtures::unique;
use conformance::{Arguments, Runner};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::ResourceExt;
use kube::api::DeleteParams;
use node_support::{Cluster, Demo, cluster, demo_pid, kill, median, phase, pod_ip, ready, restarts, set_ready_file};
use registry_core::store::{Scope, Store, StoreEvent};
use registry_core::{Discoverer, Discovery, ServiceConf};
use registry_core::{Register, Registrar};
use registry_kubernetes::{KubernetesConfig, KubernetesStore, Mode, instance_id, lease_name};

const METHOD: &str = "/grpc.health.v1.Health/Check";
const MODES: [Mode; 3] = [Mode::Lease, Mode::ConfigMap, Mode::Pod];

fn repeat() -> usize {
    std::env::var("REGISTRY_NODE_REPEAT").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(1)
}

fn main() -> ExitCode {
    let mut runner =
        Runner::new().test("node::conformance_suite_through_kubeconfig", node_support::available(), || {
            conformance_through_kubeconfig()
        });
    runner = runner.test("node::registryctl_conformance_through_kubeconfig", node_support::available(), || {
        registryctl_conformance()
    });
    for mode in MODES {
        runner = runner
            .test(format!("node::in_cluster_{mode}"), node_support::available(), move || in_cluster(mode))
            .test(format!("node::crash_expiry_{mode}"), node_support::available(), move || crash_expiry(mode));
    }
    runner = runner.test("node::lease_garbage_collected_with_pod", node_support::available(), lease_gc).test(
        "node::pod_mode_lifecycle_with_kubelet",
        node_support::available(),
        pod_lifecycle,
    );
    for mode in MODES.into_iter().chain([Mode::EndpointSlice]) {
        runner =
            runner.test(format!("node::rbac_minimal_{mode}"), node_support::available(), move || rbac_minimal(mode));
    }
    for mode in [Mode::Lease, Mode::ConfigMap] {
        runner = runner
            .test(format!("node::readiness_option_{mode}"), node_support::available(), move || readiness_option(mode));
    }
    let migration_needs = node_support::available().and_then(|()| registry_testenv::binary("etcd").map(|_| ()));
    runner = runner.test("node::migration_runbook_on_a_deployment", migration_needs, migration);
    // Endpointslice mode (issue 12).
    runner = runner
        .test("node::endpointslice_deployment_scales", node_support::available(), endpointslice_deployment_scales)
        .test("node::endpointslice_readiness", node_support::available(), endpointslice_readiness)
        .test("node::endpointslice_rolling_update", node_support::available(), endpointslice_rolling_update)
        .test("node::endpointslice_address_service", node_support::available(), endpointslice_address_service)
        .test("node::crash_expiry_endpointslice", node_support::available(), crash_expiry_endpointslice)
        .test("node::endpointslice_readiness_gate", node_support::available(), endpointslice_readiness_gate)
        .test("node::endpointslice_mixed_fleet", node_support::available(), endpointslice_mixed_fleet);
    let mut args = Arguments::from_args();
    // One at a time: one node, and the tests measure delays.
    args.test_threads.get_or_insert(1);
    let code = runner.run_with(args);
    node_support::shutdown();
    code
}

/// A discoverer in the test process (admin kubeconfig) for `env` in `namespace`.
async fn discoverer(c: &Cluster, mode: Mode, namespace: &str, env: &str) -> anyhow::Result<Discoverer> {
    discoverer_with(c, KubernetesConfig::new(mode), namespace, env).await
}

/// A discoverer in the test process with `config` (admin kubeconfig).
async fn discoverer_with(
    c: &Cluster,
    config: KubernetesConfig,
    namespace: &str,
    env: &str,
) -> anyhow::Result<Discoverer> {
    let store = KubernetesStore::connect(config.with_kubeconfig(c.node.kubeconfig()).with_pod_name(None)).await?;
    let discoverer = Discoverer::new(&store, env, ServiceConf::default().with_namespace(namespace))?;
    discoverer.watcher().await?;
    Ok(discoverer)
}

/// The addresses `discovery` lists for [`METHOD`].
fn addresses(discovery: &dyn Discovery) -> Vec<String> {
    discovery.get_service(METHOD).map(|n| n.iter().map(|n| n.network.internal.clone()).collect()).unwrap_or_default()
}

/// Polls until `check(addresses)` holds; returns when it did.
async fn until(
    discovery: &dyn Discovery,
    timeout: Duration,
    what: &str,
    check: impl Fn(&[String]) -> bool,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = addresses(discovery);
        if check(&now) {
            return Ok(Instant::now());
        }
        anyhow::ensure!(Instant::now() < deadline, "discovery not {what} after {timeout:?}: {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Step 2 of issue 11: the whole Kubernetes conformance suite, run exactly
/// as a user with a kind cluster runs it — `KUBECONFIG=<the node's admin
/// kubeconfig> cargo test -p registry-kubernetes --test conformance` — with
/// controllers, a scheduler and a kubelet present.
async fn conformance_through_kubeconfig() -> anyhow::Result<()> {
    let c = cluster().await?;
    let started = Instant::now();
    let output = tokio::process::Command::from(registry_testenv::cargo_command())
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        // The outer run's package selection and features (`scripts/test.sh`:
        // `--workspace --all-features`), so cargo reuses its artifacts instead
        // of building another feature set; the filter keeps the Kubernetes suites.
        .args(["test", "--workspace", "--all-features", "--test", "conformance", "--", "kubernetes-"])
        .env("KUBECONFIG", c.node.kubeconfig())
        // The endpointslice suite's Pods run the node's pause image (no pull).
        .env("REGISTRY_TEST_POD_IMAGE", registry_testenv::kube_node::PAUSE_IMAGE)
        .env("REGISTRY_TEST_REQUIRE", "1")
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary = stdout.lines().filter(|l| l.starts_with("test result:")).collect::<Vec<_>>().join("; ");
    eprintln!("node: conformance suite through KUBECONFIG in {:.1?}: {summary}", started.elapsed());
    // The only ignored scenarios: those endpointslice mode declares not
    // applicable (its capabilities), each with its reason. Nothing else skips.
    let mut ignored: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_end().ends_with("ignored"))
        .filter_map(|l| l.split_whitespace().find(|w| w.contains("::")))
        .collect();
    ignored.sort_unstable();
    let expected = [
        "kubernetes-endpointslice::drain_is_seen_and_undone",
        "kubernetes-endpointslice::foreign_and_malformed_entries_ignored",
        "kubernetes-endpointslice::install_then_discover_by_every_method",
        "kubernetes-endpointslice::method_index_follows_nodes",
        "kubernetes-endpointslice::operator_drain_survives_the_owner",
        "kubernetes-endpointslice::outage_then_recovery",
        "kubernetes-endpointslice::two_instances_newest_first",
    ];
    anyhow::ensure!(
        output.status.success() && summary.contains(" 0 failed") && ignored == expected,
        "the suite against the node failed ({}; ignored: {ignored:?}):\n{stdout}\n{stderr}",
        output.status
    );
    Ok(())
}

/// The same suite through `registryctl conformance --backend
/// 'kubernetes://?mode=<mode>&kubeconfig=<the node's>'` (lease and configmap:
/// pod mode needs a Pod per registrar, which a URL cannot give; the CLI
/// reports outage and raw-write scenarios as not applicable, with the reason).
async fn registryctl_conformance() -> anyhow::Result<()> {
    let c = cluster().await?;
    // Built with the outer run's selection and features (see above), so a
    // `scripts/test.sh` run finds it built; cargo puts it beside `deps/`.
    let built = tokio::process::Command::from(registry_testenv::cargo_command())
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["build", "--quiet", "--workspace", "--all-features", "--bin", "registryctl"])
        .status()
        .await?;
    anyhow::ensure!(built.success(), "building registryctl failed");
    let registryctl = std::env::current_exe()?
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("registryctl"))
        .ok_or_else(|| anyhow::anyhow!("no target dir above the test binary"))?;
    for mode in [Mode::Lease, Mode::ConfigMap] {
        let url = format!("kubernetes://?mode={mode}&kubeconfig={}", c.node.kubeconfig().display());
        let started = Instant::now();
        let output = tokio::process::Command::new(&registryctl)
            .args(["conformance", "--backend", &url])
            .env("REGISTRY_TEST_REQUIRE", "1")
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let summary = stdout.lines().filter(|l| l.starts_with("test result:")).collect::<Vec<_>>().join("; ");
        eprintln!("node: registryctl conformance {mode} in {:.1?}: {summary}", started.elapsed());
        anyhow::ensure!(
            output.status.success() && summary.contains(" 0 failed"),
            "registryctl conformance {mode} failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Scenario 1: the demo service in a Pod registers through in-cluster
/// configuration only (ServiceAccount token, CA and namespace files,
/// `POD_NAME`/`POD_NAMESPACE`/`POD_IP` from the downward API, the Role of
/// `deploy/rbac/<mode>.yaml`); a second Pod discovers it; a Pod whose
/// ServiceAccount lacks the Role logs the permission error naming the verb
/// and resource and exits with status 1, no panic.
async fn in_cluster(mode: Mode) -> anyhow::Result<()> {
    let c = cluster().await?;
    let ns = c.namespace("incluster").await?;
    let ns = ns.name.as_str();
    c.service_account(ns, "registry").await?;
    c.apply_rbac(mode, ns, "registry", |_| {}).await?;
    c.service_account(ns, "norole").await?;
    let env = unique("env");
    let url = format!("kubernetes://in-cluster?mode={mode}");

    c.create_demo(ns, &Demo::serve("svc", "registry", &url, &env)).await?;
    c.create_demo(ns, &Demo::lookup("gw", "registry", &url, &env)).await?;
    let denied = Demo { never_restart: true, ..Demo::serve("denied", "norole", &url, &env) };
    c.create_demo(ns, &denied).await?;

    let svc = c.wait_ready(ns, "svc").await?;
    let address = format!("{}:50051", pod_ip(&svc));
    let found = format!("1 node(s): demo@{address}");
    let log = c.wait_log(ns, "gw", &found, Duration::from_secs(60)).await?;
    eprintln!(
        "node: {mode}: gateway Pod discovered {address}: {}",
        log.lines().rev().find(|l| l.contains(&found)).unwrap_or_default()
    );

    // The test process sees it too (admin kubeconfig).
    let discovery = discoverer(&c, mode, ns, &env).await?;
    until(&discovery, Duration::from_secs(10), "listing the Pod", |a| a == [address.clone()]).await?;

    let failed = c.wait_pod(ns, "denied", Duration::from_secs(60), "Failed", |p| phase(p) == "Failed").await?;
    let exit = failed
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|s| s.first())
        .and_then(|s| s.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .map(|t| t.exit_code);
    let log = c.logs(ns, "denied").await?;
    let line = log.lines().find(|l| l.contains("denied permission")).unwrap_or_default().to_owned();
    eprintln!("node: {mode}: without the Role: exit {exit:?}: {line}");
    anyhow::ensure!(exit == Some(1), "denied Pod exit code {exit:?} (1 expected):\n{log}");
    anyhow::ensure!(!log.contains("panicked"), "denied Pod panicked:\n{log}");
    let resource = match mode {
        Mode::Lease => "\"leases\"",
        Mode::ConfigMap => "\"configmaps\"",
        _ => "\"pods\"",
    };
    anyhow::ensure!(
        line.contains("forbidden") && line.contains(resource) && line.contains("cannot "),
        "the permission error does not name the verb and {resource}:\n{log}"
    );
    Ok(())
}

/// Scenario 4: SIGKILL of the registered process inside its Pod
/// (`restartPolicy: Never`), per mode: how long until discovery drops it.
/// Lease and ConfigMap modes: the heartbeat stops, so at most TTL + 2 s;
/// pod mode: the kubelet marks the Pod `Failed` within seconds.
async fn crash_expiry(mode: Mode) -> anyhow::Result<()> {
    const TTL: Duration = Duration::from_secs(6);
    let c = cluster().await?;
    let ns = c.namespace("crash").await?;
    let ns = ns.name.as_str();
    c.service_account(ns, "registry").await?;
    c.apply_rbac(mode, ns, "registry", |_| {}).await?;
    let env = unique("env");
    let url = format!("kubernetes://in-cluster?mode={mode}");
    let discovery = discoverer(&c, mode, ns, &env).await?;
    let mut delays = Vec::new();
    for round in 0..repeat() {
        let name = format!("crash-{round}");
        let demo = Demo { never_restart: true, ttl_secs: TTL.as_secs(), ..Demo::serve(&name, "registry", &url, &env) };
        c.create_demo(ns, &demo).await?;
        let pod = c.wait_ready(ns, &name).await?;
        let address = format!("{}:50051", pod_ip(&pod));
        until(&discovery, Duration::from_secs(20), "listing the Pod", |a| a.contains(&address)).await?;
        // Let one heartbeat land, so the kill is mid-window as in life.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let pid = demo_pid(&pod)?;
        let killed = Instant::now();
        kill(pid, "-KILL")?;
        let gone =
            until(&discovery, TTL + Duration::from_secs(10), "dropping the killed instance", |a| !a.contains(&address))
                .await?;
        let delay = gone - killed;
        eprintln!("node: {mode}: crash expiry round {round}: {:.2}s (TTL {}s)", delay.as_secs_f64(), TTL.as_secs());
        delays.push(delay);
        c.pods(ns).delete(&name, &DeleteParams::default()).await?;
    }
    let med = median(&delays);
    eprintln!(
        "node: {mode}: crash expiry median {:.2}s over {} run(s): {:?}",
        med.as_secs_f64(),
        delays.len(),
        delays.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect::<Vec<_>>()
    );
    for d in &delays {
        anyhow::ensure!(*d <= TTL + Duration::from_secs(2), "{mode}: dropped {d:?} after the kill (TTL {TTL:?} + 2 s)");
    }
    Ok(())
}

/// Scenario 2: in lease mode the Lease carries an ownerReference to the
/// registrar's Pod; when the Pod object goes (force delete, the process
/// frozen so it cannot uninstall), the garbage collector deletes the Lease
/// and discovery drops the instance at once — long before its TTL (30 s).
async fn lease_gc() -> anyhow::Result<()> {
    const TTL: Duration = Duration::from_secs(30);
    let c = cluster().await?;
    let ns = c.namespace("gc").await?;
    let ns = ns.name.as_str();
    c.service_account(ns, "registry").await?;
    c.apply_rbac(Mode::Lease, ns, "registry", |_| {}).await?;
    let env = unique("env");
    let url = "kubernetes://in-cluster?mode=lease";
    let discovery = discoverer(&c, Mode::Lease, ns, &env).await?;
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), ns);
    let (mut gc_delays, mut drop_delays) = (Vec::new(), Vec::new());
    for round in 0..repeat() {
        let name = format!("owner-{round}");
        let demo = Demo { never_restart: true, ttl_secs: TTL.as_secs(), ..Demo::serve(&name, "registry", url, &env) };
        c.create_demo(ns, &demo).await?;
        let pod = c.wait_ready(ns, &name).await?;
        let address = format!("{}:50051", pod_ip(&pod));
        until(&discovery, Duration::from_secs(20), "listing the Pod", |a| a.contains(&address)).await?;
        let node = discovery
            .get_service(METHOD)?
            .iter()
            .find(|n| n.network.internal == address)
            .map(|n| (**n).clone())
            .ok_or_else(|| anyhow::anyhow!("instance vanished"))?;
        let lease_name = lease_name(&env, &node.meta.app_id, node.lease_id);
        let lease = leases.get(&lease_name).await?;
        let owners = lease.owner_references().to_vec();
        anyhow::ensure!(
            owners.len() == 1
                && owners[0].kind == "Pod"
                && owners[0].name == name
                && Some(&owners[0].uid) == pod.metadata.uid.as_ref(),
            "Lease {lease_name} ownerReferences {owners:?}, expected Pod {name} uid {:?}",
            pod.metadata.uid
        );
        // Freeze the service so it cannot uninstall on SIGTERM: only the garbage collector can remove the Lease.
        kill(demo_pid(&pod)?, "-STOP")?;
        let deleted = Instant::now();
        c.pods(ns).delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() }).await?;
        let mut lease_gone = None;
        let mut dropped = None;
        while (lease_gone.is_none() || dropped.is_none()) && deleted.elapsed() < TTL {
            if lease_gone.is_none() && leases.get_opt(&lease_name).await?.is_none() {
                lease_gone = Some(deleted.elapsed());
            }
            if dropped.is_none() && !addresses(&discovery).contains(&address) {
                dropped = Some(deleted.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (Some(lease_gone), Some(dropped)) = (lease_gone, dropped) else {
            anyhow::bail!("after {TTL:?}: Lease gone {lease_gone:?}, dropped from discovery {dropped:?}");
        };
        eprintln!(
            "node: lease GC round {round}: Pod deleted -> Lease gone {:.3}s, -> dropped from discovery {:.3}s (TTL {}s)",
            lease_gone.as_secs_f64(),
            dropped.as_secs_f64(),
            TTL.as_secs()
        );
        gc_delays.push(lease_gone);
        drop_delays.push(dropped);
        anyhow::ensure!(
            dropped < Duration::from_secs(10),
            "dropped {dropped:?} after the Pod deletion: not the GC path"
        );
    }
    eprintln!(
        "node: lease GC median over {} run(s): Lease gone {:.3}s, dropped from discovery {:.3}s",
        gc_delays.len(),
        median(&gc_delays).as_secs_f64(),
        median(&drop_delays).as_secs_f64()
    );
    Ok(())
}

/// Scenario 3: pod mode with a kubelet. `kill -9` of the container's
/// process: the Pod stops being Ready and leaves discovery, the kubelet
/// restarts the container (restartCount 1) and the service is back; a
/// terminating Pod (deletionTimestamp set, its process frozen so it cannot
/// uninstall, 20 s grace period running) leaves discovery at once; a Pod whose
/// readiness probe fails is not discovered until it is Ready, and leaves
/// again when the probe fails. (`restartPolicy: Never` → `Failed` → gone is
/// `crash_expiry_pod`.)
async fn pod_lifecycle() -> anyhow::Result<()> {
    let c = cluster().await?;
    let ns = c.namespace("podlife").await?;
    let ns = ns.name.as_str();
    c.service_account(ns, "registry").await?;
    c.apply_rbac(Mode::Pod, ns, "registry", |_| {}).await?;
    let env = unique("env");
    let url = "kubernetes://in-cluster?mode=pod";
    let discovery = discoverer(&c, Mode::Pod, ns, &env).await?;

    // 1. kill -9 with restartPolicy Always.
    c.create_demo(ns, &Demo::serve("restarts", "registry", url, &env)).await?;
    let pod = c.wait_ready(ns, "restarts").await?;
    let address = format!("{}:50051", pod_ip(&pod));
    until(&discovery, Duration::from_secs(20), "listing the Pod", |a| a.contains(&address)).await?;
    let killed = Instant::now();
    kill(demo_pid(&pod)?, "-KILL")?;
    let dropped =
        until(&discovery, Duration::from_secs(20), "dropping the killed container", |a| !a.contains(&address)).await?;
    let pod = c
        .wait_pod(ns, "restarts", Duration::from_secs(60), "restarted and Ready", |p| restarts(p) >= 1 && ready(p))
        .await?;
    let back =
        until(&discovery, Duration::from_secs(20), "listing the restarted container", |a| a.contains(&address)).await?;
    eprintln!(
        "node: pod mode: kill -9 -> dropped {:.2}s, restartCount {} and back in discovery {:.2}s",
        (dropped - killed).as_secs_f64(),
        restarts(&pod),
        (back - killed).as_secs_f64()
    );

    // 2. A terminating Pod leaves discovery while its grace period runs.
    let term = Demo { grace_secs: 20, ..Demo::serve("terminating", "registry", url, &env) };
    c.create_demo(ns, &term).await?;
    let pod = c.wait_ready(ns, "terminating").await?;
    let term_address = format!("{}:50051", pod_ip(&pod));
    until(&discovery, Duration::from_secs(20), "listing the Pod", |a| a.contains(&term_address)).await?;
    let pid = demo_pid(&pod)?;
    kill(pid, "-STOP")?;
    let deleting = Instant::now();
    c.pods(ns).delete("terminating", &DeleteParams::default()).await?;
    let dropped =
        until(&discovery, Duration::from_secs(5), "dropping the terminating Pod", |a| !a.contains(&term_address))
            .await?;
    let still = c.pods(ns).get_opt("terminating").await?;
    anyhow::ensure!(
        still.as_ref().is_some_and(|p| p.metadata.deletion_timestamp.is_some()),
        "the Pod should still be terminating (grace 20 s), found {:?}",
        still.map(|p| p.metadata.deletion_timestamp)
    );
    eprintln!(
        "node: pod mode: terminating Pod (deletionTimestamp set, grace 20 s) dropped {:.2}s after the delete",
        (dropped - deleting).as_secs_f64()
    );
    // The frozen process would hold the grace period: end it now.
    let _ = kill(pid, "-KILL");

    // 3. Readiness probe.
    let probed = Demo { readiness_file: true, ..Demo::serve("probed", "registry", url, &env) };
    c.create_demo(ns, &probed).await?;
    let pod = c.wait_pod(ns, "probed", Duration::from_secs(60), "Running", |p| phase(p) == "Running").await?;
    let probe_address = format!("{}:50051", pod_ip(&pod));
    c.wait_log(ns, "probed", "listening and registered", Duration::from_secs(30)).await?;
    let annotated = c.pods(ns).get("probed").await?;
    anyhow::ensure!(
        annotated.annotations().keys().any(|k| k.contains("/service-demo")) && !ready(&annotated),
        "expected a registered, not Ready Pod: ready={} annotations={:?}",
        ready(&annotated),
        annotated.annotations().keys().collect::<Vec<_>>()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    anyhow::ensure!(!addresses(&discovery).contains(&probe_address), "a not-Ready Pod is discovered");
    let pid = demo_pid(&pod)?;
    let touched = Instant::now();
    set_ready_file(pid, true)?;
    let listed =
        until(&discovery, Duration::from_secs(20), "listing the Ready Pod", |a| a.contains(&probe_address)).await?;
    let removed = Instant::now();
    set_ready_file(pid, false)?;
    let unlisted =
        until(&discovery, Duration::from_secs(20), "dropping the not-Ready Pod", |a| !a.contains(&probe_address))
            .await?;
    set_ready_file(pid, true)?;
    until(&discovery, Duration::from_secs(20), "listing the Ready-again Pod", |a| a.contains(&probe_address)).await?;
    eprintln!(
        "node: pod mode: readiness probe passes -> discovered {:.2}s; fails -> dropped {:.2}s",
        (listed - touched).as_secs_f64(),
        (unlisted - removed).as_secs_f64()
    );
    Ok(())
}

/// Scenario 6: `deploy/rbac/<mode>.yaml` is enough — install, discover,
/// uninstall as a ServiceAccount bound to exactly that Role — and removing
/// any single verb of any rule makes registration or discovery fail with a
/// permission error that names the verb and the resource. (Lease mode's
/// `pods: get` is the one optional rule: without it the Lease has no
/// ownerReference — checked — and registration goes on.) Endpointslice
/// mode: the host Pod declares the `registered` readiness gate (uninstall
/// takes it out of discovery) and each case's app has its Service selecting
/// it; with the whole manifest the discovered lease id is the hash of the
/// host Pod's UID (checked).
async fn rbac_minimal(mode: Mode) -> anyhow::Result<()> {
    let c = cluster().await?;
    let ns = c.namespace("rbac").await?;
    let ns = ns.name.as_str();
    let sleeper = "host-pod";
    if mode == Mode::EndpointSlice {
        gated_sleeper(&c, ns, sleeper, sleeper).await?;
    } else {
        c.sleeper(ns, sleeper).await?;
    }
    let rules: serde_json::Value = {
        let text = std::fs::read_to_string(node_support::rbac_manifest(mode))?;
        let role = serde_yaml::Deserializer::from_str(&text)
            .map(<serde_json::Value as serde::Deserialize>::deserialize)
            .find_map(|d| d.ok().filter(|v| v["kind"] == "Role"))
            .ok_or_else(|| anyhow::anyhow!("no Role in the manifest"))?;
        role["rules"].clone()
    };
    let mut cases: Vec<Option<(usize, String)>> = vec![None];
    for (i, rule) in rules.as_array().into_iter().flatten().enumerate() {
        for verb in rule["verbs"].as_array().into_iter().flatten().filter_map(|v| v.as_str()) {
            cases.push(Some((i, verb.to_owned())));
        }
    }
    let mut unneeded = Vec::new();
    let pod_env = unique("env");
    for (n, case) in cases.iter().enumerate() {
        // A fresh env per case: nothing left by an earlier case (a ConfigMap) spares a verb.
        // (Pod mode: one env, the host Pod keeps its env label; it creates nothing.)
        let env = if mode == Mode::Pod { pod_env.clone() } else { unique("env") };
        let account = format!("sa-{n}");
        c.service_account(ns, &account).await?;
        let removed = case.clone();
        c.apply_rbac(mode, ns, &account, move |rules| {
            if let Some((i, verb)) = &removed {
                let verbs = rules[*i]["verbs"].as_array_mut().expect("verbs");
                verbs.retain(|v| v.as_str() != Some(verb.as_str()));
                if verbs.is_empty() {
                    rules.as_array_mut().expect("rules").remove(*i);
                }
            }
        })
        .await?;
        let kubeconfig = c.token_kubeconfig(ns, &account).await?;
        let app = format!("app{n}");
        if mode == Mode::EndpointSlice {
            create_service(&c, ns, &app, sleeper).await?;
        }
        let result = rbac_workflow(&c, &kubeconfig, mode, ns, &env, sleeper, &app).await;
        let resource = rules
            .get(case.as_ref().map_or(0, |(i, _)| *i))
            .map(|r| r["resources"][0].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        match (case, result) {
            (None, Ok(true)) => {
                eprintln!("node: rbac {mode}: the manifest as written: install, discover, uninstall OK")
            }
            (None, Ok(false)) if mode == Mode::EndpointSlice => {
                anyhow::bail!("{mode}: with the manifest as written the lease id is not the host Pod's")
            }
            (None, Ok(false)) => anyhow::bail!("{mode}: with the manifest as written the Lease has no ownerReference"),
            (None, Err(e)) => anyhow::bail!("{mode}: the manifest as written is not enough: {e:#}"),
            (Some((_, verb)), Err(e)) => {
                let text = format!("{e:#}");
                anyhow::ensure!(
                    text.contains(&format!("cannot {verb} resource \"{resource}\"")),
                    "{mode}: without `{verb}` on {resource} the error does not say so: {text}"
                );
                eprintln!("node: rbac {mode}: without {verb} {resource}: {}", text.lines().next().unwrap_or_default());
            }
            (Some((_, verb)), Ok(false)) if mode == Mode::Lease && resource == "pods" && verb == "get" => {
                eprintln!("node: rbac {mode}: without get pods: registered, Lease without ownerReference (checked)");
            }
            (Some((_, verb)), Ok(_)) => unneeded.push(format!("{verb} {resource}")),
        }
    }
    anyhow::ensure!(unneeded.is_empty(), "{mode}: not needed, so the Role is not minimal: {unneeded:?}");
    Ok(())
}

/// Install, discover (list + watch), uninstall, as the kubeconfig's user,
/// registering on Pod `pod`. Errors carry the API server's message. Returns
/// whether the registration is tied to `pod`: the Lease's ownerReference
/// (lease mode), the discovered lease id being `instance_id` of its UID
/// (endpointslice mode); always true in the other modes.
async fn rbac_workflow(
    c: &Cluster,
    kubeconfig: &std::path::Path,
    mode: Mode,
    ns: &str,
    env: &str,
    pod: &str,
    app: &str,
) -> anyhow::Result<bool> {
    let store = KubernetesStore::connect(
        KubernetesConfig::new(mode).with_kubeconfig(kubeconfig).with_pod_name(Some(pod.to_owned())),
    )
    .await?;
    let conf = ServiceConf::default().with_namespace(ns);
    let scope = Scope::new(ns, env);
    // Discovery first: the raw change stream says exactly what failed (list, then watch).
    let reader = store.reader(&scope)?;
    let mut events = reader.events();
    let registrar = Registrar::new(&store, registry_core::Meta::new(env, app, "v1"), conf.clone())?;
    registrar
        .install(registry_core::GrpcServices::new().service("grpc.health.v1.Health", ["Check"])?.into_node())
        .await?;
    let mut owned = true;
    if mode == Mode::Lease {
        let leases: Api<Lease> = Api::namespaced(c.client.clone(), ns);
        let node = registrar.node().ok_or_else(|| anyhow::anyhow!("installed without a node"))?;
        let lease = leases.get(&lease_name(env, app, node.lease_id)).await?;
        owned = lease.owner_references().iter().any(|o| o.kind == "Pod" && o.name == pod);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut synced = false;
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), events.next()).await {
            Ok(Some(StoreEvent::Error(e))) => return Err(anyhow::anyhow!("discovery: {e}")),
            Ok(Some(StoreEvent::Synced)) => synced = true,
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => break,
        }
    }
    anyhow::ensure!(synced, "discovery never listed");
    let discoverer = Discoverer::new(&store, env, conf)?;
    tokio::time::timeout(Duration::from_secs(5), discoverer.watcher()).await??;
    let method = "/grpc.health.v1.Health/Check";
    conformance::fixtures::eventually(Duration::from_secs(5), "discovered", || {
        discoverer.get_service(method).is_ok_and(|n| n.iter().any(|n| n.meta.app_id == app))
    })
    .await?;
    if mode == Mode::EndpointSlice {
        let uid = c.pods(ns).get(pod).await?.metadata.uid.unwrap_or_default();
        let found = discoverer.get_service(method)?.iter().find(|n| n.meta.app_id == app).map(|n| n.lease_id);
        owned = found == Some(instance_id(&uid));
    }
    registrar.uninstall().await.map_err(|e| anyhow::anyhow!("uninstall: {e}"))?;
    conformance::fixtures::eventually(Duration::from_secs(5), "gone after uninstall", || {
        !discoverer.get_service(method).is_ok_and(|n| n.iter().any(|n| n.meta.app_id == app))
    })
    .await?;
    Ok(owned)
}

/// Scenario 5: docs/migrate-etcd-to-kubernetes.md executed for real. A
/// Deployment of the demo service (2 replicas, rolling update with a gRPC
/// readiness probe: a Pod is Ready once registered) registers on an etcd
/// reachable from the Pods (on the bridge address), then on both (step 1:
/// `REGISTRY_URL` lists both URLs, `FanoutRegistrar`), then on Kubernetes
/// only (step 4); the gateway — this test — discovers through
/// `merged_discovery` (step 2), then from Kubernetes only (step 3), looking
/// `METHOD` up every 10 ms: not one lookup may find it missing.
async fn migration() -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::api::{Patch, PatchParams, PostParams};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let c = cluster().await?;
    let ns = c.namespace("migrate").await?;
    let ns = ns.name.as_str();
    c.service_account(ns, "registry").await?;
    c.apply_rbac(Mode::Lease, ns, "registry", |_| {}).await?;
    // The fleet's etcd, reachable from the Pods: on the bridge address (the only non-loopback one allowed).
    let port = registry_testenv::free_port();
    let etcd_url = format!("http://{}:{port}", c.node.bridge_addr());
    let _etcd = registry_testenv::etcd::EtcdServer::start_local_with(&[
        "--listen-client-urls",
        &etcd_url,
        "--advertise-client-urls",
        &etcd_url,
    ])
    .await?;
    let etcd = format!("etcd://{}:{port}", c.node.bridge_addr());
    let kube_in_pod = "kubernetes://in-cluster?mode=lease";
    let env = unique("env");
    let conf = ServiceConf::default().with_namespace(ns);

    let deployment = |url: &str| -> anyhow::Result<Deployment> {
        let demo =
            Demo { labels: serde_json::json!({ "app": "orders" }), ..Demo::serve("orders", "registry", url, &env) };
        let mut template = serde_json::to_value(demo.pod(&c.node)?)?;
        template["metadata"] = serde_json::json!({ "labels": { "app": "orders" } });
        template["spec"]["containers"][0]["readinessProbe"] =
            serde_json::json!({ "grpc": { "port": 50051 }, "periodSeconds": 1, "failureThreshold": 1 });
        Ok(serde_json::from_value(serde_json::json!({
            "metadata": { "name": "orders" },
            "spec": {
                "replicas": 2,
                "selector": { "matchLabels": { "app": "orders" } },
                "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxSurge": 1, "maxUnavailable": 0 } },
                "template": template,
            }
        }))?)
    };
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), ns);
    // Waits until the Deployment's new Pods are all updated and available and the old ones gone.
    let rolled_out = |generation_at_least: i64| {
        let deployments = deployments.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let d = deployments.get("orders").await?;
                let st = d.status.clone().unwrap_or_default();
                let observed = st.observed_generation.unwrap_or_default();
                if observed >= generation_at_least
                    && st.updated_replicas == Some(2)
                    && st.available_replicas == Some(2)
                    && st.replicas == Some(2)
                {
                    return anyhow::Ok(());
                }
                anyhow::ensure!(Instant::now() < deadline, "Deployment not rolled out: {st:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };

    // Before: etcd only.
    deployments.create(&PostParams::default(), &deployment(&etcd)?).await?;
    rolled_out(1).await?;
    let from = (registry_etcd::BACKEND.connect)(etcd.clone()).await?;
    let to = KubernetesStore::connect(
        KubernetesConfig::new(Mode::Lease).with_kubeconfig(c.node.kubeconfig()).with_pod_name(None),
    )
    .await?;
    let etcd_view: Arc<dyn Discovery> = Arc::new(Discoverer::new(from.as_ref(), &env, conf.clone())?);
    let kube_view: Arc<dyn Discovery> = Arc::new(Discoverer::new(&to, &env, conf.clone())?);
    etcd_view.watcher().await?;
    kube_view.watcher().await?;
    until(etcd_view.as_ref(), Duration::from_secs(20), "listing both replicas on etcd", |a| a.len() == 2).await?;

    // The gateway: one source at a time, swapped by the test; a lookup every 10 ms.
    let source: Arc<arc_swap_like::Slot> = Arc::new(arc_swap_like::Slot::new(Arc::clone(&etcd_view)));
    let (lookups, misses, stop) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let checker = tokio::spawn({
        let (source, lookups, misses, stop) =
            (Arc::clone(&source), Arc::clone(&lookups), Arc::clone(&misses), Arc::clone(&stop));
        async move {
            let mut first_miss = None;
            while !stop.load(Ordering::Relaxed) {
                lookups.fetch_add(1, Ordering::Relaxed);
                if source.get().get_service(METHOD).map(|n| n.is_empty()).unwrap_or(true) {
                    misses.fetch_add(1, Ordering::Relaxed);
                    first_miss.get_or_insert_with(Instant::now);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            first_miss
        }
    });
    let phase_started = Instant::now();

    // Step 1: the services register on both backends (a rolling update of the Deployment).
    let both = format!("{etcd} {kube_in_pod}");
    let patch = |url: String| serde_json::json!({ "spec": { "template": { "spec": { "containers": [{ "name": "demo", "env": [{ "name": "REGISTRY_URL", "value": url }] }] } } } });
    deployments.patch("orders", &PatchParams::default(), &Patch::Strategic(patch(both))).await?;
    rolled_out(2).await?;
    // Verify (runbook): the Kubernetes side lists the same instances as etcd.
    until(kube_view.as_ref(), Duration::from_secs(20), "listing both replicas on Kubernetes", |a| a.len() == 2).await?;
    until(etcd_view.as_ref(), Duration::from_secs(20), "listing only the new replicas on etcd", |a| a.len() == 2)
        .await?;
    let mut on_etcd = addresses(etcd_view.as_ref());
    let mut on_kube = addresses(kube_view.as_ref());
    on_etcd.sort();
    on_kube.sort();
    anyhow::ensure!(on_etcd == on_kube, "step 1 verify: etcd lists {on_etcd:?}, Kubernetes {on_kube:?}");
    eprintln!(
        "node: migration step 1 (dual registration) rolled out in {:.1?}: both list {on_kube:?}",
        phase_started.elapsed()
    );

    // Step 2: the gateway discovers from both.
    let merged: Arc<dyn Discovery> = Arc::new(registry_core::merged_discovery(
        vec![Arc::clone(&etcd_view), Arc::clone(&kube_view)],
        ns,
        env.clone(),
        conf.ttl,
    )?);
    merged.watcher().await?;
    until(merged.as_ref(), Duration::from_secs(10), "the merged view listing both replicas once", |a| a.len() == 2)
        .await?;
    source.set(Arc::clone(&merged));

    // Step 3: the gateway discovers from Kubernetes only.
    source.set(Arc::clone(&kube_view));

    // Step 4: the services register on Kubernetes only; etcd can go.
    let step4 = Instant::now();
    deployments.patch("orders", &PatchParams::default(), &Patch::Strategic(patch(kube_in_pod.to_owned()))).await?;
    rolled_out(3).await?;
    until(etcd_view.as_ref(), Duration::from_secs(20), "etcd empty", |a| a.is_empty()).await?;
    until(kube_view.as_ref(), Duration::from_secs(20), "Kubernetes listing the 2 new replicas", |a| a.len() == 2)
        .await?;
    eprintln!("node: migration step 4 (Kubernetes only) rolled out in {:.1?}; etcd lists nothing", step4.elapsed());

    stop.store(true, Ordering::Relaxed);
    let first_miss = checker.await?;
    let (lookups, misses) = (lookups.load(Ordering::Relaxed), misses.load(Ordering::Relaxed));
    eprintln!("node: migration: {lookups} lookups every 10 ms over {:.1?}, {misses} missed", phase_started.elapsed());
    anyhow::ensure!(
        misses == 0,
        "{misses} of {lookups} lookups found {METHOD} missing (first after {:?})",
        first_miss.map(|t| t - phase_started)
    );
    Ok(())
}

/// The gateway's current discovery, swapped while the checker reads it.
mod arc_swap_like {
    use std::sync::{Arc, RwLock};

    use registry_core::Discovery;

    pub struct Slot(RwLock<Arc<dyn Discovery>>);

    impl Slot {
        pub fn new(d: Arc<dyn Discovery>) -> Self {
            Self(RwLock::new(d))
        }
        pub fn get(&self) -> Arc<dyn Discovery> {
            Arc::clone(&self.0.read().expect("slot"))
        }
        pub fn set(&self, d: Arc<dyn Discovery>) {
            *self.0.write().expect("slot") = d;
        }
    }
}

/// Scenario 3 for lease and ConfigMap modes with the readiness option on
/// (`KubernetesConfig::with_readiness(true)`; off by default in these
/// modes): a Pod whose readiness probe fails is not discovered although its
/// record is written and heartbeating, is discovered once Ready, leaves when
/// the probe fails again; a terminating Pod (process frozen, grace period
/// running) leaves at once. With the option off the same not-Ready Pod is
/// discovered (the modes follow the heartbeat only).
async fn readiness_option(mode: Mode) -> anyhow::Result<()> {
    let c = cluster().await?;
    let ns = c.namespace("ready").await?;
    let ns = ns.name.as_str();
    c.service_account(ns, "registry").await?;
    c.apply_rbac(mode, ns, "registry", |_| {}).await?;
    let env = unique("env");
    let url = format!("kubernetes://in-cluster?mode={mode}");
    let honouring = discoverer_with(&c, KubernetesConfig::new(mode).with_readiness(true), ns, &env).await?;
    let plain = discoverer(&c, mode, ns, &env).await?;

    let probed = Demo { readiness_file: true, grace_secs: 20, ..Demo::serve("probed", "registry", &url, &env) };
    c.create_demo(ns, &probed).await?;
    let pod = c.wait_pod(ns, "probed", Duration::from_secs(60), "Running", |p| phase(p) == "Running").await?;
    let address = format!("{}:50051", pod_ip(&pod));
    c.wait_log(ns, "probed", "listening and registered", Duration::from_secs(30)).await?;
    until(&plain, Duration::from_secs(10), "listing the not-Ready Pod without the option", |a| a.contains(&address))
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    anyhow::ensure!(!ready(&c.pods(ns).get("probed").await?), "the Pod became Ready without its file");
    anyhow::ensure!(
        !addresses(&honouring).contains(&address),
        "{mode}: a not-Ready Pod is discovered with readiness on"
    );
    let pid = demo_pid(&pod)?;
    let touched = Instant::now();
    set_ready_file(pid, true)?;
    let listed = until(&honouring, Duration::from_secs(20), "listing the Ready Pod", |a| a.contains(&address)).await?;
    let removed = Instant::now();
    set_ready_file(pid, false)?;
    let unlisted =
        until(&honouring, Duration::from_secs(20), "dropping the not-Ready Pod", |a| !a.contains(&address)).await?;
    anyhow::ensure!(addresses(&plain).contains(&address), "{mode}: without the option the Pod should stay listed");
    set_ready_file(pid, true)?;
    until(&honouring, Duration::from_secs(20), "listing the Ready-again Pod", |a| a.contains(&address)).await?;
    kill(pid, "-STOP")?;
    let deleting = Instant::now();
    c.pods(ns).delete("probed", &DeleteParams::default()).await?;
    let gone =
        until(&honouring, Duration::from_secs(5), "dropping the terminating Pod", |a| !a.contains(&address)).await?;
    let _ = kill(pid, "-KILL");
    eprintln!(
        "node: {mode} with readiness: probe passes -> discovered {:.2}s; fails -> dropped {:.2}s; terminating -> dropped {:.2}s",
        (listed - touched).as_secs_f64(),
        (unlisted - removed).as_secs_f64(),
        (gone - deleting).as_secs_f64()
    );
    Ok(())
}

// ----- endpointslice mode (issue 12) -----

/// The demo's URL in endpointslice mode, inside a Pod.
const ES_URL: &str = "kubernetes://in-cluster?mode=endpointslice";
/// The `grpc` port of the tests' Services: not the container's 50051, so
/// `address=service` provably answers the Service's port, endpoints the Pod's.
const SERVICE_PORT: i32 = 8080;

/// Service `name` in `ns` with port `grpc` ([`SERVICE_PORT`] → 50051), selecting the Pods labelled `app: <selects>`.
async fn create_service(c: &Cluster, ns: &str, name: &str, selects: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Service;
    let services: Api<Service> = Api::namespaced(c.client.clone(), ns);
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "spec": {
            "selector": { "app": selects },
            "ports": [{ "name": "grpc", "port": SERVICE_PORT, "targetPort": 50051, "protocol": "TCP" }],
        }
    }))?;
    services.create(&kube::api::PostParams::default(), &service).await?;
    Ok(())
}

/// Sets (or adds) environment variable `name` of the first container of a Pod spec's JSON.
fn set_env(pod_spec: &mut serde_json::Value, name: &str, value: &str) {
    let env = &mut pod_spec["containers"][0]["env"];
    if let Some(list) = env.as_array_mut() {
        list.retain(|e| e["name"] != name);
        list.push(serde_json::json!({ "name": name, "value": value }));
    }
}

/// A Deployment `demo.name` of the demo service: Pods labelled
/// `app: <demo.name>`, `replicas`, rolling updates with `maxSurge: 1,
/// maxUnavailable: 0`, no service-link variables, and (unless the demo has
/// its readiness-file probe) a gRPC readiness probe on the app's health,
/// which `serve` sets `SERVING` once installed.
fn demo_deployment(c: &Cluster, demo: &Demo, replicas: i32) -> anyhow::Result<k8s_openapi::api::apps::v1::Deployment> {
    let mut template = serde_json::to_value(demo.pod(&c.node)?)?;
    template["metadata"] = serde_json::json!({ "labels": { "app": demo.name } });
    // No Docker-link variables (`DEMO_PORT=tcp://…` and the like for a Service
    // named `demo`): the demo once read `DEMO_PORT` as its port, and the Pods
    // need none of them.
    template["spec"]["enableServiceLinks"] = false.into();
    if !demo.readiness_file {
        template["spec"]["containers"][0]["readinessProbe"] = serde_json::json!({
            "grpc": { "port": 50051, "service": demo.app }, "periodSeconds": 1, "failureThreshold": 1,
        });
    }
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": { "name": demo.name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": demo.name } },
            "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxSurge": 1, "maxUnavailable": 0 } },
            "template": template,
        }
    }))?)
}

/// The Deployments of `ns`.
fn deployments(c: &Cluster, ns: &str) -> Api<k8s_openapi::api::apps::v1::Deployment> {
    Api::namespaced(c.client.clone(), ns)
}

/// Scales Deployment `name` to `replicas`.
async fn scale(c: &Cluster, ns: &str, name: &str, replicas: i32) -> anyhow::Result<()> {
    use kube::api::{Patch, PatchParams};
    let patch = serde_json::json!({ "spec": { "replicas": replicas } });
    deployments(c, ns).patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// Waits until Deployment `name` has observed generation `generation` and
/// runs exactly `replicas` updated, available Pods (the old ones gone).
async fn rolled_out(c: &Cluster, ns: &str, name: &str, replicas: i32, generation: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = deployments(c, ns).get(name).await?.status.unwrap_or_default();
        if st.observed_generation.unwrap_or_default() >= generation
            && st.updated_replicas.unwrap_or_default() == replicas
            && st.available_replicas.unwrap_or_default() == replicas
            && st.replicas.unwrap_or_default() == replicas
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "Deployment {name} not rolled out: {st:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The Pods labelled `app: <app>` (any state).
async fn app_pods(c: &Cluster, ns: &str, app: &str) -> anyhow::Result<Vec<k8s_openapi::api::core::v1::Pod>> {
    Ok(c.pods(ns).list(&kube::api::ListParams::default().labels(&format!("app={app}"))).await?.items)
}

/// `(ip:50051, lease id)` of the Running, Ready, not terminating Pods labelled `app: <app>`, sorted.
async fn ready_endpoints(c: &Cluster, ns: &str, app: &str) -> anyhow::Result<Vec<(String, i64)>> {
    let mut out: Vec<(String, i64)> = app_pods(c, ns, app)
        .await?
        .iter()
        .filter(|p| phase(p) == "Running" && ready(p) && p.metadata.deletion_timestamp.is_none())
        .map(|p| (format!("{}:50051", pod_ip(p)), instance_id(p.metadata.uid.as_deref().unwrap_or_default())))
        .collect();
    out.sort();
    Ok(out)
}

/// Discovery lists exactly the Ready Pods of `app`, each with the lease id
/// the registrar in it was granted (`instance_id` of its Pod's UID).
async fn lists_ready_pods(c: &Cluster, ns: &str, app: &str, discovery: &dyn Discovery) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let want = ready_endpoints(c, ns, app).await?;
        let mut found: Vec<(String, i64)> = discovery
            .get_service(METHOD)
            .map(|n| n.iter().map(|n| (n.network.internal.clone(), n.lease_id)).collect())
            .unwrap_or_default();
        found.sort();
        if found == want {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "discovery lists {found:?}, the Ready Pods are {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A namespace with ServiceAccount `registry` bound to `deploy/rbac/endpointslice.yaml`
/// and Service `app` selecting the Pods labelled `app: <app>`.
async fn es_namespace(c: &Cluster, prefix: &str, app: &str) -> anyhow::Result<node_support::TestNamespace> {
    let ns = c.namespace(prefix).await?;
    c.service_account(&ns.name, "registry").await?;
    c.apply_rbac(Mode::EndpointSlice, &ns.name, "registry", |_| {}).await?;
    create_service(c, &ns.name, app, app).await?;
    Ok(ns)
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Issue 12 on a real cluster: a Deployment of the demo service behind a
/// Service, registering with `REGISTRY_URL=kubernetes://in-cluster?mode=endpointslice`
/// (Service name = app id); a discoverer in the test process follows
/// scaling 1 → 3 → 1: at each step it lists exactly the Ready Pods, each
/// with the lease id its registrar was granted; install wrote the Service's
/// labels and methods annotation.
async fn endpointslice_deployment_scales() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Service;
    use kube::api::PostParams;
    let c = cluster().await?;
    let ns = es_namespace(&c, "esscale", "demo").await?;
    let ns = ns.name.as_str();
    let env = unique("env");
    let discovery = discoverer(&c, Mode::EndpointSlice, ns, &env).await?;
    let created = Instant::now();
    let demo = Demo::serve("demo", "registry", ES_URL, &env);
    deployments(&c, ns).create(&PostParams::default(), &demo_deployment(&c, &demo, 1)?).await?;
    let first = until(&discovery, Duration::from_secs(90), "listing 1 replica", |a| a.len() == 1).await? - created;
    lists_ready_pods(&c, ns, "demo", &discovery).await?;
    let mut steps = vec![format!("create 1 -> listed {}", secs(first))];
    for replicas in [3usize, 1] {
        let asked = Instant::now();
        scale(&c, ns, "demo", i32::try_from(replicas)?).await?;
        let at = until(&discovery, Duration::from_secs(90), &format!("listing {replicas} replicas"), |a| {
            a.len() == replicas
        })
        .await?;
        lists_ready_pods(&c, ns, "demo", &discovery).await?;
        steps.push(format!("scale to {replicas} -> listed {}", secs(at - asked)));
    }
    let service: Service = Api::namespaced(c.client.clone(), ns).get("demo").await?;
    let methods = service.annotations().get("registry.fireflycore.io/methods").cloned().unwrap_or_default();
    anyhow::ensure!(
        methods.contains(METHOD) && service.labels().get("registry.fireflycore.io/env") == Some(&env),
        "install did not declare the app on its Service: labels {:?}, methods {methods:?}",
        service.labels()
    );
    eprintln!("node: endpointslice scale: {}", steps.join("; "));
    Ok(())
}

/// A readiness probe failure takes the endpoint out of discovery and its
/// recovery brings it back (a Deployment whose probe is `cat /tmp/ready`,
/// the file set from the host).
async fn endpointslice_readiness() -> anyhow::Result<()> {
    use kube::api::PostParams;
    let c = cluster().await?;
    let ns = es_namespace(&c, "esready", "demo").await?;
    let ns = ns.name.as_str();
    let env = unique("env");
    let discovery = discoverer(&c, Mode::EndpointSlice, ns, &env).await?;
    let demo = Demo { readiness_file: true, ..Demo::serve("demo", "registry", ES_URL, &env) };
    deployments(&c, ns).create(&PostParams::default(), &demo_deployment(&c, &demo, 1)?).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let name = loop {
        if let Some(pod) = app_pods(&c, ns, "demo").await?.into_iter().find(|p| phase(p) == "Running") {
            break pod.name_any();
        }
        anyhow::ensure!(Instant::now() < deadline, "no Running Pod of the Deployment");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    c.wait_log(ns, &name, "listening and registered", Duration::from_secs(30)).await?;
    let pod = c.pods(ns).get(&name).await?;
    let address = format!("{}:50051", pod_ip(&pod));
    tokio::time::sleep(Duration::from_secs(2)).await;
    anyhow::ensure!(
        addresses(&discovery).is_empty(),
        "a not-Ready endpoint is discovered: {:?}",
        addresses(&discovery)
    );
    let pid = demo_pid(&pod)?;
    let touched = Instant::now();
    set_ready_file(pid, true)?;
    let listed =
        until(&discovery, Duration::from_secs(20), "listing the Ready Pod", |a| a == [address.clone()]).await?;
    let failed = Instant::now();
    set_ready_file(pid, false)?;
    let dropped = until(&discovery, Duration::from_secs(20), "dropping the not-Ready Pod", |a| a.is_empty()).await?;
    let recovered = Instant::now();
    set_ready_file(pid, true)?;
    let back =
        until(&discovery, Duration::from_secs(20), "listing the recovered Pod", |a| a == [address.clone()]).await?;
    eprintln!(
        "node: endpointslice readiness (probe period 1 s): first pass -> listed {}; failure -> dropped {}; recovery -> listed {}",
        secs(listed - touched),
        secs(dropped - failed),
        secs(back - recovered)
    );
    Ok(())
}

/// Looks `METHOD` up in `source()` every 10 ms until stopped: (lookups, misses, first miss).
struct Checker {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(u64, u64, Option<Instant>)>,
    started: Instant,
}

impl Checker {
    fn start(source: std::sync::Arc<arc_swap_like::Slot>) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = std::sync::Arc::clone(&stop);
            async move {
                let (mut lookups, mut misses, mut first_miss) = (0u64, 0u64, None);
                while !stop.load(Ordering::Relaxed) {
                    lookups += 1;
                    if source.get().get_service(METHOD).map(|n| n.is_empty()).unwrap_or(true) {
                        misses += 1;
                        first_miss.get_or_insert_with(Instant::now);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (lookups, misses, first_miss)
            }
        });
        Self { stop, task, started: Instant::now() }
    }

    /// Stops; fails on any miss; returns the report line.
    async fn finish(self) -> anyhow::Result<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (lookups, misses, first_miss) = self.task.await?;
        let line = format!("{lookups} lookups every 10 ms over {:.1?}, {misses} missed", self.started.elapsed());
        anyhow::ensure!(
            misses == 0,
            "{line} ({METHOD} missing first after {:?})",
            first_miss.map(|t| t - self.started)
        );
        Ok(line)
    }
}

/// A rolling update (an environment variable changed; `maxSurge: 1,
/// maxUnavailable: 0`, the gRPC readiness probe) of 2 replicas: `METHOD`
/// is found at every 10 ms lookup, and discovery ends on the new Pods.
async fn endpointslice_rolling_update() -> anyhow::Result<()> {
    use kube::api::{Patch, PatchParams, PostParams};
    let c = cluster().await?;
    let ns = es_namespace(&c, "esroll", "demo").await?;
    let ns = ns.name.as_str();
    let env = unique("env");
    let discovery: std::sync::Arc<dyn Discovery> =
        std::sync::Arc::new(discoverer(&c, Mode::EndpointSlice, ns, &env).await?);
    let demo = Demo::serve("demo", "registry", ES_URL, &env);
    deployments(&c, ns).create(&PostParams::default(), &demo_deployment(&c, &demo, 2)?).await?;
    rolled_out(&c, ns, "demo", 2, 1).await?;
    until(discovery.as_ref(), Duration::from_secs(30), "listing 2 replicas", |a| a.len() == 2).await?;
    let before = ready_endpoints(&c, ns, "demo").await?;
    let checker = Checker::start(std::sync::Arc::new(arc_swap_like::Slot::new(std::sync::Arc::clone(&discovery))));
    let patch = serde_json::json!({ "spec": { "template": { "spec": { "containers": [{
        "name": "demo", "env": [{ "name": "ROLLOUT", "value": "2" }],
    }] } } } });
    let rolling = Instant::now();
    deployments(&c, ns).patch("demo", &PatchParams::default(), &Patch::Strategic(&patch)).await?;
    rolled_out(&c, ns, "demo", 2, 2).await?;
    let after = ready_endpoints(&c, ns, "demo").await?;
    anyhow::ensure!(after.iter().all(|e| !before.contains(e)), "not new Pods: before {before:?}, after {after:?}");
    until(discovery.as_ref(), Duration::from_secs(20), "listing the 2 new Pods", |a| {
        let mut a = a.to_vec();
        a.sort();
        a == after.iter().map(|(address, _)| address.clone()).collect::<Vec<_>>()
    })
    .await?;
    let rolled = rolling.elapsed();
    let line = checker.finish().await?;
    eprintln!("node: endpointslice rolling update of 2 replicas in {}: {line}", secs(rolled));
    Ok(())
}

/// `address=service`: one node per Service, addressed
/// `<svc>.<ns>.svc.cluster.local:<Service port>` whatever the replica count,
/// gone once the Deployment is scaled to 0.
async fn endpointslice_address_service() -> anyhow::Result<()> {
    use kube::api::PostParams;
    use registry_kubernetes::AddressMode;
    let c = cluster().await?;
    let ns = es_namespace(&c, "essvc", "demo").await?;
    let ns = ns.name.as_str();
    let env = unique("env");
    let config = KubernetesConfig::new(Mode::EndpointSlice).with_address(AddressMode::Service);
    let discovery = discoverer_with(&c, config, ns, &env).await?;
    let fqdn = format!("demo.{ns}.svc.cluster.local:{SERVICE_PORT}");
    let demo = Demo::serve("demo", "registry", ES_URL, &env);
    deployments(&c, ns).create(&PostParams::default(), &demo_deployment(&c, &demo, 2)?).await?;
    until(&discovery, Duration::from_secs(90), "listing the Service", |a| a == [fqdn.clone()]).await?;
    rolled_out(&c, ns, "demo", 2, 1).await?;
    anyhow::ensure!(ready_endpoints(&c, ns, "demo").await?.len() == 2, "expected 2 Ready Pods");
    // Both replicas Ready, still one node.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let now = addresses(&discovery);
    anyhow::ensure!(now == [fqdn.clone()], "2 Ready replicas: expected only {fqdn}, got {now:?}");
    let asked = Instant::now();
    scale(&c, ns, "demo", 0).await?;
    let gone = until(&discovery, Duration::from_secs(30), "dropping the Service", |a| a.is_empty()).await?;
    eprintln!(
        "node: endpointslice address=service: {fqdn} (1 node for 2 replicas); scaled to 0 -> gone {}",
        secs(gone - asked)
    );
    Ok(())
}

/// SIGKILL of the registered process in a Deployment's Pod: nothing is
/// renewed in this mode, so discovery drops it when the kubelet marks the
/// endpoint not ready; the restarted container (same Pod, same address)
/// comes back.
async fn crash_expiry_endpointslice() -> anyhow::Result<()> {
    use kube::api::PostParams;
    let c = cluster().await?;
    let ns = es_namespace(&c, "escrash", "demo").await?;
    let ns = ns.name.as_str();
    let env = unique("env");
    let discovery = discoverer(&c, Mode::EndpointSlice, ns, &env).await?;
    let demo = Demo::serve("demo", "registry", ES_URL, &env);
    deployments(&c, ns).create(&PostParams::default(), &demo_deployment(&c, &demo, 1)?).await?;
    until(&discovery, Duration::from_secs(90), "listing the replica", |a| a.len() == 1).await?;
    let mut delays = Vec::new();
    for round in 0..repeat() {
        let pod =
            app_pods(&c, ns, "demo").await?.into_iter().find(ready).ok_or_else(|| anyhow::anyhow!("no Ready Pod"))?;
        let address = format!("{}:50051", pod_ip(&pod));
        until(&discovery, Duration::from_secs(30), "listing the Pod", |a| a == [address.clone()]).await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let pid = demo_pid(&pod)?;
        let killed = Instant::now();
        kill(pid, "-KILL")?;
        let dropped =
            until(&discovery, Duration::from_secs(30), "dropping the killed instance", |a| a.is_empty()).await?;
        let back =
            until(&discovery, Duration::from_secs(60), "listing the restarted container", |a| a == [address.clone()])
                .await?;
        let restarted = c.pods(ns).get(&pod.name_any()).await?;
        eprintln!(
            "node: endpointslice crash round {round}: kill -9 -> dropped {}; restartCount {} and back {}",
            secs(dropped - killed),
            restarts(&restarted),
            secs(back - killed)
        );
        delays.push(dropped - killed);
    }
    eprintln!(
        "node: endpointslice crash expiry median {} over {} run(s): {:?}",
        secs(median(&delays)),
        delays.len(),
        delays.iter().map(|d| secs(*d)).collect::<Vec<_>>()
    );
    for d in &delays {
        // The kubelet's PLEG relist (1 s), its status sync and the EndpointSlice controller.
        anyhow::ensure!(*d <= Duration::from_secs(10), "dropped {d:?} after the kill (10 s expected at most)");
    }
    Ok(())
}

/// The Pod condition (and readiness gate) an instance sets in endpointslice mode.
const REGISTERED: &str = "registry.fireflycore.io/registered";

/// True when the Pod's first container reports ready.
fn container_ready(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()).and_then(|s| s.first()).is_some_and(|s| s.ready)
}

/// The status of the Pod's condition `type_`, if it has one.
fn condition(pod: &k8s_openapi::api::core::v1::Pod, type_: &str) -> Option<String> {
    pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_).map(|c| c.status.clone())
}

/// A busybox Pod labelled `app: <app>` that declares the `registered`
/// readiness gate; returned once its container runs and is ready (the Pod
/// itself waits on the gate).
async fn gated_sleeper(
    c: &Cluster,
    ns: &str,
    name: &str,
    app: &str,
) -> anyhow::Result<k8s_openapi::api::core::v1::Pod> {
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": { "app": app } },
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "readinessGates": [{ "conditionType": REGISTERED }],
            "containers": [{
                "name": "main",
                "image": registry_testenv::kube_node::BUSYBOX_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sleep", "3600"],
            }],
        }
    }))?;
    c.pods(ns).create(&kube::api::PostParams::default(), &pod).await?;
    c.wait_pod(ns, name, Duration::from_secs(60), "Running with its container ready", |p| {
        phase(p) == "Running" && container_ready(p)
    })
    .await
}

/// The readiness gate `registry.fireflycore.io/registered`:
/// 1. a Pod declaring it, its container running and ready, its Service's
///    methods declared (`KubernetesStore::publish`, as `registryctl
///    publish` does), is not discovered until a registrar installs on it
///    (here the test process, `pod=` that Pod), and leaves discovery on
///    uninstall — the gate alone decides;
/// 2. the demo service in such a Pod (no readiness probe) is discovered once
///    it installed and leaves discovery on SIGTERM while its process still
///    runs (drain sets the condition `False`; grace period 5 s).
async fn endpointslice_readiness_gate() -> anyhow::Result<()> {
    let c = cluster().await?;
    let ns = es_namespace(&c, "esgate", "gated").await?;
    let ns = ns.name.as_str();
    let env = unique("env");
    let discovery = discoverer(&c, Mode::EndpointSlice, ns, &env).await?;
    let store = KubernetesStore::connect(
        KubernetesConfig::new(Mode::EndpointSlice)
            .with_kubeconfig(c.node.kubeconfig())
            .with_pod_name(Some("host".to_owned())),
    )
    .await?;
    store.publish(&Scope::new(ns, env.clone()), "gated", &[METHOD.to_owned()], Some("v1"), false).await?;

    // 1. The gate alone.
    let host = gated_sleeper(&c, ns, "host", "gated").await?;
    let address = format!("{}:50051", pod_ip(&host));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let host = c.pods(ns).get("host").await?;
    anyhow::ensure!(
        !ready(&host) && addresses(&discovery).is_empty(),
        "before install: Pod Ready {} (expected false), discovered {:?}",
        ready(&host),
        addresses(&discovery)
    );
    let registrar = Registrar::new(
        &store,
        registry_core::Meta::new(&env, "gated", "v1"),
        ServiceConf::default().with_namespace(ns),
    )?;
    let installing = Instant::now();
    registrar
        .install(registry_core::GrpcServices::new().service("grpc.health.v1.Health", ["Check"])?.into_node())
        .await?;
    let listed =
        until(&discovery, Duration::from_secs(20), "listing the gated Pod after install", |a| a == [address.clone()])
            .await?;
    let node =
        discovery.get_service(METHOD)?.first().map(|n| (**n).clone()).ok_or_else(|| anyhow::anyhow!("no node"))?;
    let uid = host.metadata.uid.clone().unwrap_or_default();
    anyhow::ensure!(
        Some(node.lease_id) == registrar.node().map(|n| n.lease_id) && node.lease_id == instance_id(&uid),
        "the endpoint's lease id {} is not the registrar's {:?} (instance_id of the Pod's UID: {})",
        node.lease_id,
        registrar.node().map(|n| n.lease_id),
        instance_id(&uid)
    );
    let uninstalling = Instant::now();
    registrar.uninstall().await?;
    let dropped =
        until(&discovery, Duration::from_secs(20), "dropping the gated Pod after uninstall", |a| a.is_empty()).await?;
    let host = c.pods(ns).get("host").await?;
    anyhow::ensure!(
        condition(&host, REGISTERED).as_deref() == Some("False") && container_ready(&host),
        "after uninstall: condition {:?}, container ready {}",
        condition(&host, REGISTERED),
        container_ready(&host)
    );
    c.pods(ns).delete("host", &DeleteParams::default()).await?;

    // 2. The demo service with the gate: SIGTERM drains before the process ends.
    let demo = Demo {
        labels: serde_json::json!({ "app": "gated" }),
        app: "gated".to_owned(),
        grace_secs: 20,
        ..Demo::serve("served", "registry", ES_URL, &env)
    };
    let mut pod = serde_json::to_value(demo.pod(&c.node)?)?;
    pod["spec"]["readinessGates"] = serde_json::json!([{ "conditionType": REGISTERED }]);
    pod["spec"]["enableServiceLinks"] = false.into();
    set_env(&mut pod["spec"], "REGISTRY_GRACE_MS", "5000");
    let created = Instant::now();
    c.pods(ns).create(&kube::api::PostParams::default(), &serde_json::from_value(pod)?).await?;
    let pod = c.wait_ready(ns, "served").await?;
    let served = format!("{}:50051", pod_ip(&pod));
    let listed_demo =
        until(&discovery, Duration::from_secs(30), "listing the demo", |a| a == [served.clone()]).await? - created;
    anyhow::ensure!(condition(&pod, REGISTERED).as_deref() == Some("True"), "Ready without the registered condition");
    let pid = demo_pid(&pod)?;
    let terminated = Instant::now();
    kill(pid, "-TERM")?;
    let drained =
        until(&discovery, Duration::from_secs(5), "dropping the draining demo", |a| a.is_empty()).await? - terminated;
    anyhow::ensure!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the process ended before discovery dropped it: not the gate's doing"
    );
    eprintln!(
        "node: endpointslice readiness gate: not discovered before install (2 s, container ready); install -> listed {}; \
         uninstall -> dropped {}; demo Pod created -> listed {}; SIGTERM -> dropped {} (process still running, grace 5 s)",
        secs(listed - installing),
        secs(dropped - uninstalling),
        secs(listed_demo),
        secs(drained)
    );
    Ok(())
}

/// Mixed fleets (issue 12): a gateway discovers through
/// `merged_discovery(lease, endpointslice)` while the app's Deployment (2
/// replicas, registering in lease mode) is rolled to endpointslice mode
/// (`REGISTRY_URL` changed; its Service created beforehand; the
/// ServiceAccount bound to both Roles); then the gateway drops the lease
/// source. A lookup every 10 ms throughout: not one miss.
async fn endpointslice_mixed_fleet() -> anyhow::Result<()> {
    use kube::api::{Patch, PatchParams, PostParams};
    use std::sync::Arc;
    let c = cluster().await?;
    let ns = es_namespace(&c, "esmix", "orders").await?;
    let ns = ns.name.as_str();
    c.apply_rbac(Mode::Lease, ns, "registry", |_| {}).await?;
    let env = unique("env");
    let lease_view: Arc<dyn Discovery> = Arc::new(discoverer(&c, Mode::Lease, ns, &env).await?);
    let es_view: Arc<dyn Discovery> = Arc::new(discoverer(&c, Mode::EndpointSlice, ns, &env).await?);
    let merged: Arc<dyn Discovery> = Arc::new(registry_core::merged_discovery(
        vec![Arc::clone(&lease_view), Arc::clone(&es_view)],
        ns,
        env.clone(),
        ServiceConf::default().ttl,
    )?);
    merged.watcher().await?;

    let demo = Demo {
        app: "orders".to_owned(),
        ..Demo::serve("orders", "registry", "kubernetes://in-cluster?mode=lease", &env)
    };
    deployments(&c, ns).create(&PostParams::default(), &demo_deployment(&c, &demo, 2)?).await?;
    rolled_out(&c, ns, "orders", 2, 1).await?;
    until(merged.as_ref(), Duration::from_secs(30), "the merged view listing 2 lease replicas", |a| a.len() == 2)
        .await?;
    anyhow::ensure!(addresses(es_view.as_ref()).is_empty(), "endpointslice mode lists an undeclared Service");

    let slot = Arc::new(arc_swap_like::Slot::new(Arc::clone(&merged)));
    let checker = Checker::start(Arc::clone(&slot));
    let rolling = Instant::now();
    let patch = serde_json::json!({ "spec": { "template": { "spec": { "containers": [{
        "name": "demo", "env": [{ "name": "REGISTRY_URL", "value": ES_URL }],
    }] } } } });
    deployments(&c, ns).patch("orders", &PatchParams::default(), &Patch::Strategic(&patch)).await?;
    rolled_out(&c, ns, "orders", 2, 2).await?;
    until(lease_view.as_ref(), Duration::from_secs(20), "no Lease left", |a| a.is_empty()).await?;
    lists_ready_pods(&c, ns, "orders", es_view.as_ref()).await?;
    let rolled = rolling.elapsed();
    // The gateway drops the lease source.
    slot.set(Arc::clone(&es_view));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let line = checker.finish().await?;
    eprintln!(
        "node: mixed fleet: lease -> endpointslice rolling update of 2 replicas in {} through the merged view, \
         then endpointslice only: {line}",
        secs(rolled)
    );
    Ok(())
}
