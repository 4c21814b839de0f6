//! `registryctl drain` / `undrain` on every backend with a server (etcd,
//! Consul, Kubernetes lease and configmap modes; pod mode is covered by the
//! conformance scenario `operator_drain_survives_the_owner`), and
//! `--metrics-addr` scraped for the library's real metric names.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::process::{ExitCode, Stdio};
use std::time::Duration;

use conformance::Runner;
use registry::{Error, GrpcServices, Meta, ServiceConf};
use registry_testenv::consul::{self, ConsulServer};
use registry_testenv::etcd::{self, EtcdServer};
use registry_testenv::kube::KubeServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_registryctl");
const METHOD: &str = "/ops.Demo/Hello";

async fn registryctl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().await.expect("registryctl runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn conf(namespace: &str) -> ServiceConf {
    ServiceConf::default()
        .with_namespace(namespace)
        .with_ttl_floor(Duration::from_secs(2))
        .with_ttl(Duration::from_secs(2))
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..250 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not true after 5 s");
}

/// An instance of this process heartbeats on `url`; the operator drains it
/// with the CLI; the mark holds through the instance's heartbeats and a
/// re-install; undrain takes it back; an unknown lease id is an error.
async fn drain_and_undrain(url: &str, namespace: &str) {
    let registry = registry::connect(url).await.expect("connect");
    let registrar = registry.registrar(Meta::new("ops", "ops-demo", "v3"), conf(namespace)).unwrap();
    let node = || GrpcServices::new().service("ops.Demo", ["Hello"]).unwrap().into_node();
    let lease = registrar.install(node()).await.expect("installed").lease_id;
    let keepalive = tokio::spawn({
        let r = registrar.clone();
        async move { r.sustain_lease().await }
    });
    let discovery = registry.discoverer("ops", conf(namespace)).unwrap();
    discovery.watcher().await.unwrap();
    eventually("node served", || discovery.get_service(METHOD).is_ok()).await;
    let lease_arg = lease.to_string();
    let scope = ["--url", url, "--namespace", namespace, "--env", "ops", "--lease-id", &lease_arg];

    let (ok, out, err) = registryctl(&[&["drain"][..], &scope[..]].concat()).await;
    assert!(ok, "drain failed on {url}: {err}");
    assert!(out.contains(&format!("drained ops-demo/{lease}")), "drain on {url} said:\n{out}");
    eventually("drain seen", || matches!(discovery.get_service(METHOD), Err(Error::AllDraining { .. }))).await;

    // The instance keeps writing: heartbeats past a TTL, and an install.
    registrar.install(node()).await.expect("installed again");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(matches!(discovery.get_service(METHOD), Err(Error::AllDraining { .. })), "the mark did not hold on {url}");
    let list = ["--url", url, "--namespace", namespace, "--env", "ops"];
    let (ok, out, err) = registryctl(&[&["list"][..], &list[..]].concat()).await;
    assert!(ok && out.contains("drained-by-operator"), "list on {url}:\n{out}\n{err}");

    let (ok, out, err) = registryctl(&[&["undrain"][..], &scope[..], &["--json"][..]].concat()).await;
    assert!(ok, "undrain failed on {url}: {err}");
    let shown: serde_json::Value = serde_json::from_str(&out).expect("JSON node");
    assert_eq!(shown["lease_id"], lease, "{out}");
    assert!(shown.get("drained_by_operator").is_none(), "{out}");
    eventually("undrain seen", || discovery.get_service(METHOD).is_ok_and(|n| n[0].lease_id == lease)).await;

    let unknown = (lease + 1).to_string();
    let (ok, _, err) =
        registryctl(&["drain", "--url", url, "--namespace", namespace, "--env", "ops", "--lease-id", &unknown]).await;
    assert!(!ok && err.contains("no live instance with lease id"), "unknown lease on {url}: {err}");

    discovery.unwatch();
    registrar.uninstall().await.unwrap();
    keepalive.await.unwrap().unwrap();
}

fn namespace(tag: &str) -> String {
    format!("ops-{tag}-{:x}", std::process::id())
}

async fn drain_on_etcd() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    drain_and_undrain(&format!("etcd://{}", etcd.endpoints().join(",")), &namespace("etcd")).await;
    Ok(())
}

async fn drain_on_consul() -> anyhow::Result<()> {
    let consul = ConsulServer::start().await?;
    let host = consul.address().trim_start_matches("http://").to_owned();
    drain_and_undrain(&format!("consul://{host}"), &namespace("consul")).await;
    Ok(())
}

async fn drain_on_kubernetes() -> anyhow::Result<()> {
    let kube = KubeServer::start().await?;
    for mode in ["lease", "configmap"] {
        let namespace = namespace(mode);
        kube.create_namespace(&namespace).await?;
        let url = format!("kubernetes://?mode={mode}&kubeconfig={}", kube.kubeconfig().display());
        drain_and_undrain(&url, &namespace).await;
    }
    Ok(())
}

/// GET `/metrics` on `addr` with plain HTTP/1.0; the body, or `None` while nothing listens.
async fn scrape(addr: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await.ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok()?;
    answer.starts_with("HTTP/1").then_some(answer)
}

/// `registryctl watch --metrics-addr` serves the library's metrics: the
/// discoverer's cache size, stream health and propagation lag, with HELP lines.
async fn metrics_endpoint_serves_the_library_metrics() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let url = format!("etcd://{}", etcd.endpoints().join(","));
    let namespace = namespace("metrics");
    let registry = registry::connect(url.as_str()).await?;
    let registrar = registry.registrar(Meta::new("ops", "metered", "v1"), conf(&namespace))?;
    registrar.install(GrpcServices::new().service("ops.Demo", ["Hello"])?.into_node()).await?;
    let addr = {
        let free = std::net::TcpListener::bind("127.0.0.1:0")?;
        free.local_addr()?.to_string()
    };
    let mut watch = Command::new(BIN)
        .args(["watch", "--url", &url, "--namespace", &namespace, "--env", "ops", "--metrics-addr", &addr])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let wanted = [
        "registry_cache_nodes{",
        "registry_discovery_stream_healthy{",
        "registry_discovery_last_confirmed_timestamp_seconds{",
        "registry_propagation_lag_seconds",
        "# HELP registry_cache_nodes",
    ];
    let mut body = String::new();
    for _ in 0..100 {
        body = scrape(&addr).await.unwrap_or_default();
        if wanted.iter().all(|w| body.contains(w)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch.start_kill()?;
    for w in wanted {
        assert!(body.contains(w), "`{w}` missing from the scrape of {addr}:\n{body}");
    }
    let nodes = body
        .lines()
        .find(|l| l.starts_with("registry_cache_nodes{") && l.contains(&namespace))
        .unwrap_or_else(|| panic!("no cache gauge for {namespace}:\n{body}"));
    assert!(nodes.ends_with(" 1"), "the discoverer of registryctl holds the one node: {nodes}");
    registrar.uninstall().await?;
    Ok(())
}

fn main() -> ExitCode {
    Runner::new()
        .test("drain_undrain_on_etcd", etcd::available(), drain_on_etcd)
        .test("drain_undrain_on_consul", consul::available(), drain_on_consul)
        .test("drain_undrain_on_kubernetes_lease_and_configmap", KubeServer::available(), drain_on_kubernetes)
        .test(
            "metrics_endpoint_serves_the_library_metrics",
            etcd::available(),
            metrics_endpoint_serves_the_library_metrics,
        )
        .run()
}
