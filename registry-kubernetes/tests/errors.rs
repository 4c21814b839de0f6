//! Typed errors: an unreachable API server, a ConfigMap that would pass
//! 1 MiB, an app id pod mode cannot encode, a node too large for an annotation.
// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use conformance::Runner;
use conformance::fixtures::{conf, meta, unique};
use registry_core::{Discoverer, Discovery, Error, GrpcServices, Register, Registrar, ServiceNode};
use registry_kubernetes::{KubernetesConfig, KubernetesStore, MAX_CONFIGMAP_BYTES, Mode};
use registry_testenv::free_port;
use registry_testenv::kube::KubeServer;
use std::process::ExitCode;

/// A kubeconfig for a loopback port where nothing listens.
fn unreachable_kubeconfig() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: nowhere\n  cluster:\n    server: https://127.0.0.1:{}\n    insecure-skip-tls-verify: true\n\
         users:\n- name: u\n  user:\n    token: not-a-real-token\n\
         contexts:\n- name: nowhere\n  context:\n    cluster: nowhere\n    user: u\ncurrent-context: nowhere\n",
        free_port()
    );
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// A store whose client points at nothing (built without a round trip).
async fn offline_store(mode: Mode) -> (tempfile::TempDir, KubernetesStore) {
    let (dir, path) = unreachable_kubeconfig();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let config = KubernetesConfig::new(mode).with_pod_name(Some("my-pod".into()));
    (dir, KubernetesStore::from_client(client, config).unwrap())
}

/// A node of at least `bytes` bytes of JSON (and not much more).
fn node_of_size(bytes: usize) -> ServiceNode {
    let build = |n: usize| {
        let methods: Vec<String> = (0..n).map(|i| format!("Method{i:06}ThatHasQuiteALongNameForPadding")).collect();
        GrpcServices::new().service("big.v1.Svc", &methods).unwrap().into_node()
    };
    let mut n = bytes / 64;
    loop {
        let node = build(n);
        if node.to_json().unwrap().len() >= bytes {
            return node;
        }
        n += n / 100 + 1;
    }
}

async fn unreachable_api_server_is_backend_unavailable() -> anyhow::Result<()> {
    let (_dir, path) = unreachable_kubeconfig();
    let err = KubernetesStore::connect(KubernetesConfig::new(Mode::Lease).with_kubeconfig(&path)).await.unwrap_err();
    assert!(matches!(err, Error::BackendUnavailable { backend: "kubernetes", .. }), "connect: {err:?}");

    for mode in [Mode::Lease, Mode::ConfigMap, Mode::Pod] {
        let (_dir, store) = offline_store(mode).await;
        // `install` retries an unreachable server until its deadline (30 s by default).
        let quick = conf("default").with_install_deadline(std::time::Duration::from_secs(1));
        let registrar = Registrar::new(&store, meta("dev", "lonely"), quick).unwrap();
        let err = registrar.install(support_node()).await.unwrap_err();
        assert!(matches!(err, Error::BackendUnavailable { .. }), "{mode} install: {err:?}");
        let discoverer = Discoverer::new(&store, "dev", conf("default")).unwrap();
        let err = discoverer.watcher().await.unwrap_err();
        assert!(matches!(err, Error::BackendUnavailable { .. }), "{mode} watch: {err:?}");
        discoverer.unwatch();
    }
    Ok(())
}

fn support_node() -> ServiceNode {
    GrpcServices::new().service("t.Err", ["Call"]).unwrap().into_node()
}

async fn unencodable_app_id_in_pod_mode_is_invalid_config() -> anyhow::Result<()> {
    let (_dir, store) = offline_store(Mode::Pod).await;
    // Valid for core (≤ 63 characters), but `selector-<app_id>` is longer than a label name may be.
    let app = "a".repeat(60);
    // The store checks names when the registrar is built, so the error comes
    // before any write (install would report the same).
    let err = match Registrar::new(&store, meta("dev", &app), conf("default")) {
        Err(err) => err,
        Ok(registrar) => registrar.install(support_node()).await.unwrap_err(),
    };
    match err {
        Error::InvalidConfig { field, reason } => {
            assert_eq!(field, "meta.app_id");
            assert!(reason.contains("label"), "{reason}");
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    Ok(())
}

async fn pod_mode_without_a_pod_name_is_invalid_config() -> anyhow::Result<()> {
    let (_dir, store) = offline_store(Mode::Pod).await;
    let store =
        KubernetesStore::from_client(store.client().clone(), KubernetesConfig::new(Mode::Pod).with_pod_name(None))
            .unwrap();
    let err = Registrar::new(&store, meta("dev", "app"), conf("default")).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { field: "kubernetes.pod_name", .. }), "{err:?}");
    Ok(())
}

async fn node_too_large_for_an_annotation_is_too_large() -> anyhow::Result<()> {
    let (_dir, store) = offline_store(Mode::Lease).await;
    let registrar = Registrar::new(&store, meta("dev", "huge"), conf("default")).unwrap();
    let err = registrar.install(node_of_size(300 * 1024)).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { limit: 262_144, .. }), "{err:?}");
    Ok(())
}

async fn configmap_refuses_before_passing_one_mebibyte() -> anyhow::Result<()> {
    let server = KubeServer::start().await.unwrap();
    let namespace = unique("big");
    server.create_namespace(&namespace).await.unwrap();
    let store = support::store(&server, Mode::ConfigMap).await.unwrap();
    let env = unique("env");

    // One node alone over the limit: refused before any write.
    let alone = Registrar::new(&store, meta(&env, "giant"), conf(&namespace)).unwrap();
    let err = alone.install(node_of_size(MAX_CONFIGMAP_BYTES + 1024)).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { limit: MAX_CONFIGMAP_BYTES, .. }), "{err:?}");

    // Three nodes of ~300 KB fit; the fourth would pass 1 MiB and is refused, naming the ConfigMap.
    let mut fitted = Vec::new();
    for i in 0..3 {
        let r = Registrar::new(&store, meta(&env, &format!("wide-{i}")), conf(&namespace)).unwrap();
        fitted.push(r.install(node_of_size(300 * 1024)).await.unwrap().lease_id);
    }
    let fourth = Registrar::new(&store, meta(&env, "wide-3"), conf(&namespace)).unwrap();
    match fourth.install(node_of_size(300 * 1024)).await.unwrap_err() {
        Error::TooLarge { what, size, limit } => {
            assert!(what.contains(&format!("ff-registry-{env}")), "{what}");
            assert!(size > limit && limit == MAX_CONFIGMAP_BYTES, "{size} > {limit}");
            eprintln!("refused: {what}: {size} bytes > {limit}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // The entries that fit are intact.
    let discoverer = Discoverer::new(&store, &env, conf(&namespace)).unwrap();
    discoverer.watcher().await.unwrap();
    let mut seen: Vec<i64> = discoverer
        .apps()
        .iter()
        .flat_map(|a| discoverer.get_app(a).unwrap().iter().map(|n| n.lease_id).collect::<Vec<_>>())
        .collect();
    seen.sort_unstable();
    fitted.sort_unstable();
    assert_eq!(seen, fitted);
    discoverer.unwatch();
    Ok(())
}

fn main() -> ExitCode {
    Runner::new()
        .test("unreachable_api_server_is_backend_unavailable", Ok(()), unreachable_api_server_is_backend_unavailable)
        .test(
            "unencodable_app_id_in_pod_mode_is_invalid_config",
            Ok(()),
            unencodable_app_id_in_pod_mode_is_invalid_config,
        )
        .test("pod_mode_without_a_pod_name_is_invalid_config", Ok(()), pod_mode_without_a_pod_name_is_invalid_config)
        .test("node_too_large_for_an_annotation_is_too_large", Ok(()), node_too_large_for_an_annotation_is_too_large)
        .test(
            "configmap_refuses_before_passing_one_mebibyte",
            KubeServer::available(),
            configmap_refuses_before_passing_one_mebibyte,
        )
        .run()
}
