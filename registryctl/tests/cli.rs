//! `registryctl list`, `get` and `watch` against every backend on real servers, and
//! `registryctl publish` of a `protoc` descriptor set onto a Service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::process::{ExitCode, Stdio};
use std::time::Duration;

use conformance::Runner;
use registry::{GrpcServices, Meta, ServiceConf};
use registry_testenv::consul::{self, ConsulServer};
use registry_testenv::etcd::{self, EtcdServer};
use registry_testenv::kube::{self, KubeServer};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_registryctl");

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
    let listed: serde_json::Value = serde_json::from_str(&out).expect("JSON object");
    let nodes = listed["nodes"].as_array().expect("`nodes` array");
    assert!(nodes.iter().any(|n| n["lease_id"] == installed.lease_id), "list --json on {url}: {out}");
    let health = listed["health"].as_array().expect("`health` array, one entry per source");
    assert!(
        health.len() == 1 && health[0]["ready"] == true && health[0]["stale"] == false,
        "list --json reports a ready, current source on {url}: {out}"
    );

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

async fn list_get_watch_on_etcd() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await.expect("etcd");
    check_backend(&format!("etcd://{}", etcd.endpoints().join(",")), &namespace()).await;
    Ok(())
}

async fn list_get_watch_on_consul() -> anyhow::Result<()> {
    let consul = ConsulServer::start().await.expect("consul");
    let host = consul.address().trim_start_matches("http://").to_owned();
    check_backend(&format!("consul://{host}"), &namespace()).await;
    Ok(())
}

async fn list_get_watch_on_kubernetes() -> anyhow::Result<()> {
    let kube = KubeServer::start().await.expect("kube-apiserver");
    let namespace = namespace();
    kube.create_namespace(&namespace).await.expect("namespace");
    for mode in ["lease", "configmap"] {
        let url = format!("kubernetes://?mode={mode}&kubeconfig={}", kube.kubeconfig().display());
        check_backend(&url, &namespace).await;
    }
    Ok(())
}

/// `registryctl publish` declares the methods of a descriptor set that
/// `protoc` wrote onto the app's Service (endpointslice mode), idempotently.
async fn publish_declares_a_descriptor_sets_methods() -> anyhow::Result<()> {
    use ::kube::api::{Api, PostParams};
    use k8s_openapi::api::core::v1::Service;
    let kube = KubeServer::start().await.expect("kube-apiserver");
    let namespace = format!("pub-{:x}", std::process::id());
    kube.create_namespace(&namespace).await?;
    let services: Api<Service> = Api::namespaced(kube.client(), &namespace);
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "orders" },
        "spec": { "ports": [{ "name": "grpc", "port": 80 }] },
    }))?;
    services.create(&PostParams::default(), &service).await?;
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("orders.proto"),
        "syntax = \"proto3\";\npackage shop.v1;\nmessage Req {}\nmessage Resp {}\n\
         service Orders {\n  rpc Create(Req) returns (Resp);\n  rpc Get(Req) returns (Resp);\n}\n",
    )?;
    let protoc = Command::new("protoc")
        .current_dir(dir.path())
        .args(["--descriptor_set_out=orders.pb", "--include_imports", "orders.proto"])
        .status()
        .await?;
    assert!(protoc.success(), "protoc failed");
    let descriptors = dir.path().join("orders.pb");
    let url = format!("kubernetes://?mode=endpointslice&kubeconfig={}", kube.kubeconfig().display());
    let args = [
        "publish",
        "--url",
        &url,
        "--namespace",
        &namespace,
        "--env",
        "prod",
        "--app",
        "orders",
        "--descriptor-set",
        descriptors.to_str().unwrap(),
        "--version",
        "v3",
    ];
    let (ok, out, err) = registryctl(&args).await;
    assert!(ok && out.contains("updated Service `orders`: 2 methods"), "publish: {out}{err}");
    let annotations = services.get("orders").await?.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations.get("registry.fireflycore.io/methods").map(String::as_str),
        Some(r#"["/shop.v1.Orders/Create","/shop.v1.Orders/Get"]"#)
    );
    assert_eq!(annotations.get("registry.fireflycore.io/version").map(String::as_str), Some("v3"));
    let (ok, out, err) = registryctl(&args).await;
    assert!(ok && out.contains("unchanged"), "publish again: {out}{err}");
    let lease = url.replace("endpointslice", "lease");
    let wrong = [&["publish", "--url", &lease][..], &args[3..]].concat();
    let (ok, _, err) = registryctl(&wrong).await;
    assert!(!ok && err.contains("mode=endpointslice"), "publish in lease mode: {err}");
    Ok(())
}

/// `protoc` on the PATH (installed by scripts/install-test-servers.sh).
fn protoc_available() -> Result<(), registry_testenv::Unavailable> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("protoc").is_file()));
    if found {
        Ok(())
    } else {
        Err(registry_testenv::Unavailable::MissingBinary { binary: "protoc".into(), path: "PATH".into() })
    }
}

fn namespace() -> String {
    format!("cli-{:x}", std::process::id())
}

/// `registryctl migrate` mirrors etcd nodes into Kubernetes, follows their
/// removal, and removes its mirrors when stopped.
async fn migrate_mirrors_etcd_into_kubernetes_and_cleans_up() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await.expect("etcd");
    let kube = KubeServer::start().await.expect("kube-apiserver");
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
    Ok(())
}

/// `registryctl conformance --backend URL` runs the suite against a reachable server.
async fn conformance_command_runs_the_suite_against_a_url() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await.expect("etcd");
    let url = format!("etcd://{}", etcd.endpoints().join(","));
    let (ok, out, err) = registryctl(&["conformance", "--backend", &url]).await;
    assert!(ok, "conformance failed:\n{out}\n{err}");
    assert!(out.contains("url::install_then_discover_by_every_method") && out.contains("... ok"), "{out}");
    assert!(out.contains("18 passed; 0 failed; 2 ignored"), "{out}");
    assert!(out.contains("needs a server it can stop"), "the outage scenario says why it is not run:\n{out}");
    Ok(())
}

fn main() -> ExitCode {
    Runner::new()
        .test("list_get_watch_on_etcd", etcd::available(), list_get_watch_on_etcd)
        .test("list_get_watch_on_consul", consul::available(), list_get_watch_on_consul)
        .test("list_get_watch_on_kubernetes", kube::KubeServer::available(), list_get_watch_on_kubernetes)
        .test(
            "migrate_mirrors_etcd_into_kubernetes_and_cleans_up",
            kube::KubeServer::available().and(etcd::available()),
            migrate_mirrors_etcd_into_kubernetes_and_cleans_up,
        )
        .test(
            "publish_declares_a_descriptor_sets_methods",
            kube::KubeServer::available().and(protoc_available()),
            publish_declares_a_descriptor_sets_methods,
        )
        .test(
            "conformance_command_runs_the_suite_against_a_url",
            etcd::available(),
            conformance_command_runs_the_suite_against_a_url,
        )
        .run()
}
