//! Least privilege on a Consul agent with ACLs in default-deny (the recipe in
//! docs/operations.md): the minimal writer policy registers, keeps alive,
//! drains and uninstalls; the minimal reader policy discovers; removing any
//! one rule of the writer policy fails the install with `PermissionDenied`
//! carrying the agent's message, and removing any one rule of the reader
//! policy fails or empties discovery. In the per-app layout a writer's policy can
//! name its own app's service and KV folder only: it cannot register under
//! another app's name (registry poisoning).
// Test code: failed expectations panic.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;

use conformance::Runner;
use conformance::fixtures::{PROPAGATION, TTL, conf, eventually, leases_for, meta, method, node, unique};
use registry_consul::{ConsulConfig, ConsulStore, Layout};
use registry_core::{Discoverer, Discovery, Error, Register, Registrar};
use registry_testenv::consul::{self, ConsulServer};

const MASTER_TOKEN: &str = "master-token-7c1d2e3f";

/// The rules of the minimal writer policy of `<namespace>/<env>` in the
/// default (single service per env) layout, one per line.
fn writer_rules(namespace: &str, env: &str) -> Vec<String> {
    vec![
        format!(r#"service "{namespace}-{env}" {{ policy = "write" }}"#),
        format!(r#"key_prefix "{namespace}/{env}/" {{ policy = "write" }}"#),
        r#"session_prefix "" { policy = "write" }"#.to_owned(),
    ]
}

/// The rules of the minimal reader policy (discovery only).
fn reader_rules(namespace: &str, env: &str) -> Vec<String> {
    vec![
        format!(r#"service "{namespace}-{env}" {{ policy = "read" }}"#),
        format!(r#"key_prefix "{namespace}/{env}/" {{ policy = "read" }}"#),
        r#"node_prefix "" { policy = "read" }"#.to_owned(),
    ]
}

/// Creates a policy of `rules` and a token holding it; returns the token's secret.
async fn token_with(server: &ConsulServer, rules: &[String]) -> anyhow::Result<String> {
    let name = unique("policy");
    let policy = serde_json::json!({ "Name": name, "Rules": rules.join("\n") });
    let (status, body) = server.request("PUT", "/v1/acl/policy", Some(&policy.to_string())).await?;
    anyhow::ensure!(status == 200, "policy: HTTP {status}: {body}");
    let token = serde_json::json!({ "Policies": [{ "Name": name }] });
    let (status, body) = server.request("PUT", "/v1/acl/token", Some(&token.to_string())).await?;
    anyhow::ensure!(status == 200, "token: HTTP {status}: {body}");
    let created: serde_json::Value = serde_json::from_str(&body)?;
    Ok(created["SecretID"].as_str().ok_or_else(|| anyhow::anyhow!("no SecretID in {body}"))?.to_owned())
}

async fn store(server: &ConsulServer, token: &str, layout: Layout) -> anyhow::Result<ConsulStore> {
    Ok(ConsulStore::connect(ConsulConfig::new(server.address()).with_token(token).with_layout(layout)).await?)
}

/// The minimal writer policy is enough for the whole life of an instance,
/// and the minimal reader policy for discovery.
async fn minimal_policies_are_enough() -> anyhow::Result<()> {
    let server = ConsulServer::start_local_with_acl(MASTER_TOKEN).await?;
    let (namespace, env) = (unique("ns"), unique("env"));
    let writer = store(&server, &token_with(&server, &writer_rules(&namespace, &env)).await?, Layout::Single).await?;
    let reader = store(&server, &token_with(&server, &reader_rules(&namespace, &env)).await?, Layout::Single).await?;
    let discoverer = Discoverer::new(&reader, &env, conf(&namespace))?;
    discoverer.watcher().await?;
    let registrar = Registrar::new(&writer, meta(&env, "orders"), conf(&namespace))?;
    let installed = registrar.install(node("t.Acl", &["Call"])).await?;
    let keepalive = tokio::spawn({
        let r = registrar.clone();
        async move { r.sustain_lease().await }
    });
    let m = method("t.Acl", "Call");
    eventually(PROPAGATION, "discovered with the reader policy", || {
        leases_for(&discoverer, &m) == [installed.lease_id]
    })
    .await?;
    tokio::time::sleep(TTL * 3).await;
    anyhow::ensure!(!keepalive.is_finished(), "the keepalive ended under the writer policy");
    anyhow::ensure!(leases_for(&discoverer, &m) == [installed.lease_id], "the registration lapsed");
    registrar.drain().await?;
    eventually(PROPAGATION, "drain seen", || discoverer.snapshot().all_nodes().iter().any(|n| n.draining)).await?;
    registrar.uninstall().await?;
    keepalive.await??;
    eventually(PROPAGATION, "uninstall seen", || leases_for(&discoverer, &m).is_empty()).await?;
    discoverer.unwatch();
    Ok(())
}

/// Each rule of the writer policy is needed: without it the install fails
/// with `PermissionDenied` and the agent's message, and is not retried.
async fn each_writer_rule_is_needed() -> anyhow::Result<()> {
    let server = ConsulServer::start_local_with_acl(MASTER_TOKEN).await?;
    let (namespace, env) = (unique("ns"), unique("env"));
    let rules = writer_rules(&namespace, &env);
    for dropped in 0..rules.len() {
        let mut fewer = rules.clone();
        let removed = fewer.remove(dropped);
        let writer = store(&server, &token_with(&server, &fewer).await?, Layout::Single).await?;
        let registrar = Registrar::new(&writer, meta(&env, "orders"), conf(&namespace))?;
        match registrar.install(node("t.Acl", &["Call"])).await {
            Err(Error::PermissionDenied { message, .. }) => {
                anyhow::ensure!(message.to_lowercase().contains("permission denied"), "without {removed}: {message}");
                eprintln!("without {removed}: {message}");
            }
            Ok(_) => anyhow::bail!("installed without {removed}: the rule is not needed"),
            Err(other) => anyhow::bail!("without {removed}: expected PermissionDenied, got {other:?}"),
        }
        registrar.uninstall().await.ok();
    }
    Ok(())
}

/// Each rule of the reader policy is needed: without it discovery either
/// fails with `PermissionDenied` (the agent's message), or — where Consul
/// filters what a token may not read instead of refusing — never shows the
/// instance. Either is printed, naming the rule.
async fn each_reader_rule_is_needed() -> anyhow::Result<()> {
    let server = ConsulServer::start_local_with_acl(MASTER_TOKEN).await?;
    let (namespace, env) = (unique("ns"), unique("env"));
    let writer = store(&server, &token_with(&server, &writer_rules(&namespace, &env)).await?, Layout::Single).await?;
    let registrar = Registrar::new(&writer, meta(&env, "orders"), conf(&namespace))?;
    let installed = registrar.install(node("t.Acl", &["Call"])).await?;
    let m = method("t.Acl", "Call");
    let rules = reader_rules(&namespace, &env);
    for dropped in 0..rules.len() {
        let mut fewer = rules.clone();
        let removed = fewer.remove(dropped);
        let reader = store(&server, &token_with(&server, &fewer).await?, Layout::Single).await?;
        let discoverer = Discoverer::new(&reader, &env, conf(&namespace))?;
        match discoverer.watcher().await {
            Err(Error::PermissionDenied { message, .. }) => {
                eprintln!("without {removed}: discovery refused: {message}")
            }
            Err(other) => anyhow::bail!("without {removed}: expected PermissionDenied, got {other:?}"),
            Ok(()) => {
                let seen = eventually(PROPAGATION, "seen", || leases_for(&discoverer, &m) == [installed.lease_id]);
                anyhow::ensure!(seen.await.is_err(), "discovered without {removed}: the rule is not needed");
                eprintln!("without {removed}: the agent filters the instance out (no error, nothing discovered)");
            }
        }
        discoverer.unwatch();
    }
    registrar.uninstall().await?;
    Ok(())
}

/// Per-app layout: a writer whose policy names only its own app's service
/// and KV folder registers that app and cannot register another app's
/// instances (the registry-poisoning attack of a writer of the whole env).
async fn per_app_writer_is_confined_to_its_app() -> anyhow::Result<()> {
    let server = ConsulServer::start_local_with_acl(MASTER_TOKEN).await?;
    let (namespace, env) = (unique("ns"), unique("env"));
    let rules = vec![
        format!(r#"service "{namespace}-{env}-orders" {{ policy = "write" }}"#),
        format!(r#"key_prefix "{namespace}/{env}/orders/" {{ policy = "write" }}"#),
        r#"session_prefix "" { policy = "write" }"#.to_owned(),
    ];
    let confined = store(&server, &token_with(&server, &rules).await?, Layout::PerApp).await?;
    let own = Registrar::new(&confined, meta(&env, "orders"), conf(&namespace))?;
    own.install(node("t.Orders", &["Call"])).await?;
    let intruder = Registrar::new(&confined, meta(&env, "payments"), conf(&namespace))?;
    match intruder.install(node("t.Payments", &["Pay"])).await {
        Err(Error::PermissionDenied { message, .. }) => eprintln!("registering another app: {message}"),
        Ok(_) => anyhow::bail!("a writer confined to orders registered payments"),
        Err(other) => anyhow::bail!("expected PermissionDenied, got {other:?}"),
    }
    own.uninstall().await?;
    Ok(())
}

fn main() -> ExitCode {
    let available = || consul::local_available();
    Runner::new()
        .test("minimal_policies_are_enough", available(), minimal_policies_are_enough)
        .test("each_writer_rule_is_needed", available(), each_writer_rule_is_needed)
        .test("each_reader_rule_is_needed", available(), each_reader_rule_is_needed)
        .test("per_app_writer_is_confined_to_its_app", available(), per_app_writer_is_confined_to_its_app)
        .run()
}
