//! `registryctl list`, `get` and `watch` against every backend on real servers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::process::Stdio;
use std::time::Duration;

use registry::{GrpcServices, Meta, ServiceConf};
use registry_testenv::consul::ConsulServer;
use registry_testenv::etcd::EtcdServer;
use registry_testenv::kube::KubeServer;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_registryctl");

fn skip_or_fail(what: &str, e: impl std::fmt::Display) {
    assert!(!conformance::required(), "{what} unavailable (REGISTRY_TEST_REQUIRE=1): {e}");
    eprintln!("SKIPPED: {what} unavailable: {e}");
}

async fn registryctl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().await.expect("registryctl runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Registers one node on `url`, then checks list (table and JSON), get, and watch.
async fn check_backend(url: &str, namespace: &str) {
    let registry = registry::connect(url).await.expect("connect");
    let conf = ServiceConf::default().with_namespace(namespace);
    let registrar = registry.registrar(Meta::new("cli", "cli-demo", "v7"), conf).unwrap();
    let node = GrpcServices::new().service("cli.Demo", ["Hello"]).unwrap().into_node();
    let installed = registrar.install(node).await.expect("installed");
    let scope = ["--url", url, "--namespace", namespace, "--env", "cli"];

    let (ok, out, err) = registryctl(&[&["list"][..], &scope[..]].concat()).await;
    assert!(ok, "list failed on {url}: {err}");
    assert!(out.contains("cli-demo") && out.contains("v7"), "list on {url} lacks the node:\n{out}");

    let (ok, out, err) = registryctl(&[&["list"][..], &scope[..], &["--json"][..]].concat()).await;
    assert!(ok, "list --json failed on {url}: {err}");
    let nodes: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON array");
    assert!(nodes.iter().any(|n| n["lease_id"] == installed.lease_id), "list --json on {url}: {out}");

    let (ok, out, err) = registryctl(&[&["get", "/cli.Demo/Hello"][..], &scope[..]].concat()).await;
    assert!(ok, "get failed on {url}: {err}");
    assert!(out.contains("cli-demo"), "get on {url}:\n{out}");

    let (ok, _, err) = registryctl(&[&["get", "/cli.Demo/Missing"][..], &scope[..]].concat()).await;
    assert!(!ok && err.contains("no node serves method"), "get of a missing method on {url}: {err}");

    // watch prints the current node, then the removal.
    let mut watch = Command::new(BIN)
        .args([&["watch"][..], &scope[..]].concat())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("watch runs");
    tokio::time::sleep(Duration::from_secs(3)).await;
    registrar.uninstall().await.expect("uninstalled");
    tokio::time::sleep(Duration::from_secs(2)).await;
    watch.start_kill().expect("stop watch");
    let mut out = String::new();
    watch.stdout.take().expect("stdout").read_to_string(&mut out).await.expect("read");
    assert!(out.contains(" UP ") && out.contains(" DOWN "), "watch on {url}:\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_get_watch_work_on_every_backend() {
    let namespace = format!("cli-{:x}", std::process::id());
    match EtcdServer::start().await {
        Ok(etcd) => check_backend(&format!("etcd://{}", etcd.endpoints().join(",")), &namespace).await,
        Err(e) => skip_or_fail("etcd", e),
    }
    match ConsulServer::start().await {
        Ok(consul) => {
            let host = consul.address().trim_start_matches("http://").to_owned();
            check_backend(&format!("consul://{host}"), &namespace).await;
        }
        Err(e) => skip_or_fail("consul", e),
    }
    match KubeServer::start().await {
        Ok(kube) => {
            kube.create_namespace(&namespace).await.expect("namespace");
            for mode in ["lease", "configmap"] {
                let url = format!("kubernetes://?mode={mode}&kubeconfig={}", kube.kubeconfig().display());
                check_backend(&url, &namespace).await;
            }
        }
        Err(e) => skip_or_fail("kube-apiserver", e),
    }
}

/// `registryctl migrate` mirrors etcd nodes into Kubernetes, follows their
/// removal, and removes its mirrors when stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_mirrors_etcd_into_kubernetes_and_cleans_up() {
    let etcd = match EtcdServer::start().await {
        Ok(s) => s,
        Err(e) => return skip_or_fail("etcd", e),
    };
    let kube = match KubeServer::start().await {
        Ok(s) => s,
        Err(e) => return skip_or_fail("kube-apiserver", e),
    };
    let namespace = format!("mig-{:x}", std::process::id());
    kube.create_namespace(&namespace).await.expect("namespace");
    let from_url = format!("etcd://{}", etcd.endpoints().join(","));
    let to_url = format!("kubernetes://?mode=lease&kubeconfig={}", kube.kubeconfig().display());
    let conf = ServiceConf::default().with_namespace(&namespace);
    let source = registry::connect(from_url.as_str()).await.expect("etcd");
    let target = registry::connect(to_url.as_str()).await.expect("kubernetes");
    let node = || GrpcServices::new().service("mig.Demo", ["Go"]).unwrap().into_node();
    let stays = source.registrar(Meta::new("prod", "stays", "v1"), conf.clone()).unwrap();
    let leaves = source.registrar(Meta::new("prod", "leaves", "v1"), conf.clone()).unwrap();
    stays.install(node()).await.unwrap();
    leaves.install(node()).await.unwrap();
    let keep = tokio::spawn({
        let r = stays.clone();
        async move { r.sustain_lease().await }
    });
    let view = target.discoverer("prod", conf.clone()).unwrap();
    view.watcher().await.unwrap();
    let apps = || view.apps().iter().map(|a| a.to_string()).collect::<Vec<_>>();

    let mut migrate = Command::new(BIN)
        .args([
            "migrate",
            "--from",
            &from_url,
            "--to",
            &to_url,
            "--namespace",
            &namespace,
            "--env",
            "prod",
            "--ttl",
            "10",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("migrate runs");
    let wait = |want: Vec<&'static str>| {
        let apps = &apps;
        async move {
            for _ in 0..250 {
                if apps() == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            panic!("target apps {:?}, want {want:?}", apps());
        }
    };
    wait(vec!["leaves", "stays"]).await;
    leaves.uninstall().await.unwrap();
    wait(vec!["stays"]).await;
    let pid = migrate.id().expect("pid").to_string();
    let status = std::process::Command::new("kill").args(["-INT", &pid]).status().expect("kill");
    assert!(status.success());
    let done =
        tokio::time::timeout(Duration::from_secs(20), migrate.wait()).await.expect("migrate stops").expect("status");
    assert!(done.success(), "migrate exited with {done}");
    let mut out = String::new();
    migrate.stdout.take().expect("stdout").read_to_string(&mut out).await.unwrap();
    assert!(out.contains("2 mirrored") && out.contains("1 removed"), "summary: {out}");
    wait(vec![]).await;
    stays.uninstall().await.unwrap();
    keep.await.unwrap().unwrap();
}

/// `registryctl conformance --backend URL` runs the suite against a reachable server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_command_runs_the_suite_against_a_url() {
    let etcd = match EtcdServer::start().await {
        Ok(s) => s,
        Err(e) => return skip_or_fail("etcd", e),
    };
    let url = format!("etcd://{}", etcd.endpoints().join(","));
    let (ok, out, err) = registryctl(&["conformance", "--backend", &url]).await;
    assert!(ok, "conformance failed:\n{out}\n{err}");
    assert!(out.contains("url::install_then_discover_by_every_method") && out.contains("... ok"), "{out}");
    assert!(out.contains("18 passed; 0 failed; 2 ignored"), "{out}");
    assert!(out.contains("needs a server it can stop"), "the outage scenario says why it is not run:\n{out}");
}
