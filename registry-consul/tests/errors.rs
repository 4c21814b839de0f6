//! Bad input and lost state on a real agent: an agent that is down, a token
//! Consul does not know, a token that may not write — each a precise error,
//! and the token never in any error or `Debug` text; a service deregistered
//! or a KV record released behind the registrar's back — `LeaseExpired` and
//! a fresh registration, or the record written again.
// Test code: failed expectations panic.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;
use std::time::Duration;

use conformance::Runner;
use conformance::fixtures::{
    PROPAGATION, TTL, conf, eventually, eventually_async, leases_for, meta, method, node, unique,
};
use registry_consul::{ConsulConfig, ConsulStore, META_VALUE_LIMIT};
use registry_core::store::Scope;
use registry_core::{Discoverer, Discovery, Error, GrpcServices, Register, Registrar};
use registry_testenv::consul::{self, ConsulServer};
use registry_testenv::free_port;

const MASTER_TOKEN: &str = "master-token-3b9e0c1d";
const WRONG_TOKEN: &str = "wrong-token-5f0e1c2d";

fn shows(err: &Error) -> String {
    format!("{err} | {err:?}")
}

async fn nothing_listening_is_backend_unavailable() -> anyhow::Result<()> {
    let config = ConsulConfig::new(format!("http://127.0.0.1:{}", free_port())).with_token(WRONG_TOKEN);
    let err = ConsulStore::connect(config).await.expect_err("no agent there");
    assert!(matches!(err, Error::BackendUnavailable { backend: "consul", .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(!shows(&err).contains(WRONG_TOKEN), "{}", shows(&err));
    Ok(())
}

async fn agent_stopped_under_a_registrar_is_backend_unavailable() -> anyhow::Result<()> {
    let mut server = ConsulServer::start_local().await.expect("agent");
    let store = ConsulStore::connect(ConsulConfig::new(server.address())).await.expect("connected");
    let namespace = unique("ns");
    // `install` retries an unreachable agent until its deadline (30 s by default).
    let conf = conf(&namespace).with_install_deadline(Duration::from_secs(1));
    let registrar = Registrar::new(&store, meta(&unique("env"), "app"), conf).expect("registrar");
    server.stop().expect("stopped");
    let err = registrar.install(node("t.Down", &["A"])).await.expect_err("agent is down");
    assert!(matches!(err, Error::BackendUnavailable { backend: "consul", .. }), "{err:?}");
    Ok(())
}

async fn acl_tokens_are_checked_and_never_shown() -> anyhow::Result<()> {
    let server = ConsulServer::start_local_with_acl(MASTER_TOKEN).await.expect("ACL agent");
    let base = || ConsulConfig::new(server.address());

    // A token Consul does not know: refused at connect.
    let err = ConsulStore::connect(base().with_token(WRONG_TOKEN)).await.expect_err("unknown token");
    assert!(matches!(err, Error::PermissionDenied { backend: "consul", .. }), "{err:?}");
    assert!(!err.is_transient());
    assert!(!shows(&err).contains(WRONG_TOKEN), "{}", shows(&err));

    // No token (anonymous, default deny): connects, but may not register.
    let anonymous = ConsulStore::connect(base()).await.expect("anonymous connects");
    let namespace = unique("ns");
    let env = unique("env");
    let registrar = Registrar::new(&anonymous, meta(&env, "app"), conf(&namespace)).expect("registrar");
    let err = registrar.install(node("t.Acl", &["A"])).await.expect_err("anonymous may not write");
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");

    // A valid token without rights: connects, refused on write, never shown.
    let (status, body) =
        server.request("PUT", "/v1/acl/token", Some(r#"{"Description":"no rights"}"#)).await.expect("token created");
    assert_eq!(status, 200, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).expect("json");
    let powerless = created["SecretID"].as_str().expect("SecretID").to_owned();
    let store = ConsulStore::connect(base().with_token(&powerless)).await.expect("a known token connects");
    let registrar = Registrar::new(&store, meta(&env, "app"), conf(&namespace)).expect("registrar");
    let err = registrar.install(node("t.Acl", &["A"])).await.expect_err("no service:write");
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
    assert!(!shows(&err).contains(&powerless), "{}", shows(&err));

    // The master token may.
    let master = ConsulStore::connect(base().with_token(MASTER_TOKEN)).await.expect("master connects");
    assert!(!format!("{master:?}").contains(MASTER_TOKEN));
    let registrar = Registrar::new(&master, meta(&env, "app"), conf(&namespace)).expect("registrar");
    registrar.install(node("t.Acl", &["A"])).await.expect("master token installs");
    registrar.uninstall().await.expect("uninstalled");
    Ok(())
}

fn config_debug_hides_the_token() {
    let config = ConsulConfig::new("http://127.0.0.1:8500").with_token(MASTER_TOKEN);
    let shown = format!("{config:?}");
    assert!(!shown.contains(MASTER_TOKEN), "{shown}");
    let url = url::Url::parse(&format!("consul://{MASTER_TOKEN}@127.0.0.1:8500?dc=dc1")).expect("url");
    let config = ConsulConfig::from_url(&url).expect("parsed");
    assert_eq!(config.token.as_deref(), Some(MASTER_TOKEN));
    assert!(!format!("{config:?}").contains(MASTER_TOKEN));
}

/// Any agent (the user's, or a local one).
async fn any_agent() -> ConsulServer {
    ConsulServer::start().await.expect("consul agent starts")
}

fn config_for(server: &ConsulServer) -> ConsulConfig {
    let config = ConsulConfig::new(server.address());
    match server.token() {
        Some(token) => config.with_token(token),
        None => config,
    }
}

/// The session holding `key`, if the key exists.
async fn kv_session(server: &ConsulServer, key: &str) -> Option<String> {
    let (status, body) = server.request("GET", &format!("/v1/kv/{key}"), None).await.expect("kv read");
    if status == 404 {
        return None;
    }
    let entries: serde_json::Value = serde_json::from_str(&body).expect("json");
    entries[0]["Session"].as_str().map(str::to_owned)
}

async fn service_deregistered_behind_our_back_is_registered_again() -> anyhow::Result<()> {
    let server = any_agent().await;
    let store = ConsulStore::connect(config_for(&server)).await.expect("connected");
    let (namespace, env) = (unique("ns"), unique("env"));
    let scope = Scope::new(namespace.clone(), env.clone());
    let registrar = Registrar::new(&store, meta(&env, "phoenix"), conf(&namespace)).expect("registrar");
    let discoverer = Discoverer::new(&store, &env, conf(&namespace)).expect("discoverer");
    discoverer.watcher().await.expect("watching");
    let installed = registrar.install(node("t.Phoenix", &["Rise"])).await.expect("installed");
    let keepalive = tokio::spawn({
        let r = registrar.clone();
        async move { r.sustain_lease().await }
    });
    let m = method("t.Phoenix", "Rise");
    eventually(PROPAGATION, "visible", || leases_for(&discoverer, &m) == [installed.lease_id]).await.expect("visible");

    let service_id = ConsulStore::service_id(&scope, "phoenix", installed.lease_id);
    let (status, body) =
        server.request("PUT", &format!("/v1/agent/service/deregister/{service_id}"), None).await.expect("deregistered");
    assert_eq!(status, 200, "{body}");

    // The next heartbeat finds its check gone (LeaseExpired) and registers a new instance.
    let fresh = || registrar.node().map(|n| n.lease_id).filter(|l| *l != installed.lease_id);
    eventually(TTL * 2, "registered again under a new lease", || fresh().is_some()).await.expect("re-registered");
    let again = fresh().expect("new lease");
    eventually(PROPAGATION, "discovery follows", || leases_for(&discoverer, &m) == [again]).await.expect("follows");

    registrar.uninstall().await.expect("uninstalled");
    keepalive.await.expect("joined").expect("keepalive ended cleanly");
    discoverer.unwatch();
    Ok(())
}

async fn kv_record_released_behind_our_back_is_written_again() -> anyhow::Result<()> {
    let server = any_agent().await;
    let store = ConsulStore::connect(config_for(&server)).await.expect("connected");
    let (namespace, env) = (unique("ns"), unique("env"));
    let scope = Scope::new(namespace.clone(), env.clone());
    let registrar = Registrar::new(&store, meta(&env, "sturdy"), conf(&namespace)).expect("registrar");
    // Too large for the `node` meta: discovery depends on the KV record.
    let names: Vec<String> = (0..40).map(|i| format!("Method{i:02}")).collect();
    let node = GrpcServices::new().service("t.Sturdy", &names).expect("valid").into_node();
    let installed = registrar.install(node).await.expect("installed");
    assert!(installed.to_json().expect("json").len() > META_VALUE_LIMIT);
    let keepalive = tokio::spawn({
        let r = registrar.clone();
        async move { r.sustain_lease().await }
    });

    let key = scope.record_key("sturdy", installed.lease_id);
    let first = kv_session(&server, &key).await.expect("KV record held by a session");
    let (status, body) = server.request("PUT", &format!("/v1/session/destroy/{first}"), None).await.expect("destroyed");
    assert_eq!(status, 200, "{body}");

    // `Behavior=delete`: the record went with the session; the next heartbeat writes it again.
    eventually_async(TTL * 2, "KV record written again under a new session", || async {
        kv_session(&server, &key).await.is_some_and(|s| s != first)
    })
    .await
    .expect("rewritten");
    let discoverer = Discoverer::new(&store, &env, conf(&namespace)).expect("discoverer");
    discoverer.watcher().await.expect("watching");
    let m = method("t.Sturdy", "Method39");
    eventually(PROPAGATION, "same instance visible", || leases_for(&discoverer, &m) == [installed.lease_id])
        .await
        .expect("visible");

    registrar.uninstall().await.expect("uninstalled");
    keepalive.await.expect("joined").expect("keepalive ended cleanly");
    tokio::time::sleep(Duration::from_millis(10)).await;
    discoverer.unwatch();
    Ok(())
}

fn main() -> ExitCode {
    Runner::new()
        .test("nothing_listening_is_backend_unavailable", Ok(()), nothing_listening_is_backend_unavailable)
        .test(
            "agent_stopped_under_a_registrar_is_backend_unavailable",
            consul::local_available(),
            agent_stopped_under_a_registrar_is_backend_unavailable,
        )
        .test(
            "acl_tokens_are_checked_and_never_shown",
            consul::local_available(),
            acl_tokens_are_checked_and_never_shown,
        )
        .test("config_debug_hides_the_token", Ok(()), || async {
            config_debug_hides_the_token();
            Ok(())
        })
        .test(
            "service_deregistered_behind_our_back_is_registered_again",
            consul::available(),
            service_deregistered_behind_our_back_is_registered_again,
        )
        .test(
            "kv_record_released_behind_our_back_is_written_again",
            consul::available(),
            kv_record_released_behind_our_back_is_written_again,
        )
        .run()
}
