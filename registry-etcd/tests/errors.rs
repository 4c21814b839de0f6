//! Bad input and failures, each mapped to the error that names it:
//! unreachable or silent endpoints, refused credentials, a lost lease, a
//! compacted resume point — on real sockets and a real etcd.

mod support;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use conformance::Runner;
use conformance::fixtures::{PROPAGATION, eventually, leases_for, meta, method, node, unique};
use etcd_client::{Permission, PutOptions};
use registry_core::store::{ListWatch, Scope};
use registry_core::{Discoverer, Discovery, Error, Register, Registrar};
use registry_etcd::{EtcdConfig, EtcdStore};
use registry_testenv::etcd::local_available;
use registry_testenv::free_port;
use support::{conf, config, local_etcd, raw_client, store};

/// The request timeout of the unreachable-endpoint tests.
const TIMEOUT: Duration = Duration::from_millis(500);
/// Slack for scheduling on a busy machine.
const SLACK: Duration = Duration::from_millis(700);

fn is_unreachable(error: &Error) -> bool {
    matches!(error, Error::BackendUnavailable { backend: "etcd", .. } | Error::Timeout { backend: "etcd", .. })
}

/// A loopback port nothing listens on: connections are refused.
fn refused_endpoint() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A loopback port that accepts connections and never answers a byte.
async fn silent_endpoint() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    Ok(address.to_string())
}

fn quick(endpoint: String) -> EtcdConfig {
    EtcdConfig::new([endpoint]).with_connect_timeout(TIMEOUT).with_request_timeout(TIMEOUT)
}

async fn install_fails_fast(endpoint: String) -> anyhow::Result<()> {
    let store = EtcdStore::connect(quick(endpoint)).await?;
    // `install` retries an unreachable backend until its deadline: the
    // request timeout here, so the test sees the mapped error promptly.
    let registrar = Registrar::new(&store, meta("dev", "lonely"), conf(&unique("ns")).with_install_deadline(TIMEOUT))?;
    let start = Instant::now();
    let Err(error) = registrar.install(node("t.Err", &["Call"])).await else {
        anyhow::bail!("no etcd there: expected an error");
    };
    let took = start.elapsed();
    anyhow::ensure!(is_unreachable(&error), "install: expected BackendUnavailable or Timeout, got {error:?}");
    anyhow::ensure!(took <= TIMEOUT + SLACK, "install failed after {took:?}, timeout {TIMEOUT:?}");
    Ok(())
}

async fn watcher_fails_fast(endpoint: String) -> anyhow::Result<()> {
    let store = EtcdStore::connect(quick(endpoint)).await?;
    let discoverer = Discoverer::new(&store, "dev", conf(&unique("ns")))?;
    let start = Instant::now();
    let Err(error) = discoverer.watcher().await else {
        anyhow::bail!("no etcd there: expected an error");
    };
    let took = start.elapsed();
    discoverer.unwatch();
    anyhow::ensure!(is_unreachable(&error), "watcher: expected BackendUnavailable or Timeout, got {error:?}");
    anyhow::ensure!(took <= TIMEOUT + SLACK, "watcher failed after {took:?}, timeout {TIMEOUT:?}");
    Ok(())
}

/// Connection refused: `install` fails with `BackendUnavailable` within the request timeout.
async fn refused_endpoint_install_is_unavailable() -> anyhow::Result<()> {
    install_fails_fast(refused_endpoint()).await
}

/// Connection refused: `watcher` fails with `BackendUnavailable` within the request timeout.
async fn refused_endpoint_watcher_is_unavailable() -> anyhow::Result<()> {
    watcher_fails_fast(refused_endpoint()).await
}

/// A server that accepts and never answers: `install` fails within the request timeout.
async fn silent_endpoint_install_times_out() -> anyhow::Result<()> {
    install_fails_fast(silent_endpoint().await?).await
}

/// A server that accepts and never answers: `watcher` fails within the request timeout.
async fn silent_endpoint_watcher_times_out() -> anyhow::Result<()> {
    watcher_fails_fast(silent_endpoint().await?).await
}

/// Authenticating against an unreachable etcd fails within connect + request timeout.
async fn unreachable_endpoint_with_auth_fails_connect() -> anyhow::Result<()> {
    let start = Instant::now();
    let Err(error) = EtcdStore::connect(quick(silent_endpoint().await?).with_user("root", "pw")).await else {
        anyhow::bail!("silent: expected an error");
    };
    let took = start.elapsed();
    anyhow::ensure!(is_unreachable(&error), "connect: expected BackendUnavailable or Timeout, got {error:?}");
    anyhow::ensure!(took <= TIMEOUT * 2 + SLACK, "connect failed after {took:?}");
    Ok(())
}

/// `Debug` of a config with a password shows everything but the password.
async fn config_debug_hides_the_password() -> anyhow::Result<()> {
    let config = EtcdConfig::parse_url("etcd://registry:hunter2@h1:2379,h2:2379?timeout=1500ms")?;
    let debug = format!("{config:?}");
    anyhow::ensure!(!debug.contains("hunter2"), "password printed: {debug}");
    anyhow::ensure!(debug.contains("registry") && debug.contains("h2:2379"), "useful fields missing: {debug}");
    Ok(())
}

/// A local etcd with auth on: user `root` (password `root-pw`, role root)
/// and user `reader` (password `reader-pw`), who may only read `readonly/`.
async fn etcd_with_auth() -> anyhow::Result<registry_testenv::etcd::EtcdServer> {
    let server = local_etcd().await?;
    let mut admin = raw_client(&server).await?;
    admin.user_add("root", "root-pw", None).await?;
    admin.user_grant_role("root", "root").await?;
    admin.role_add("readonly").await?;
    admin.role_grant_permission("readonly", Permission::read("readonly/").with_prefix()).await?;
    admin.user_add("reader", "reader-pw", None).await?;
    admin.user_grant_role("reader", "readonly").await?;
    admin.auth_enable().await?;
    Ok(server)
}

/// A wrong password is `PermissionDenied` carrying etcd's own message (and
/// not the password), and is not retried as if etcd were down.
async fn wrong_password_is_permission_denied() -> anyhow::Result<()> {
    let server = etcd_with_auth().await?;
    let Err(error) = EtcdStore::connect(config(&server).with_user("root", "not-the-password")).await else {
        anyhow::bail!("refused: expected an error");
    };
    let Error::PermissionDenied { backend: "etcd", message } = &error else {
        anyhow::bail!("expected PermissionDenied, got {error:?}");
    };
    anyhow::ensure!(message.contains("authentication failed, invalid user ID or password"), "message: {message}");
    anyhow::ensure!(!error.to_string().contains("not-the-password"), "password in the error: {error}");
    anyhow::ensure!(!error.is_transient(), "refused credentials must not be retried");
    Ok(())
}

/// With the right password, registration and discovery work on an etcd with auth.
async fn right_password_registers_and_discovers() -> anyhow::Result<()> {
    let server = etcd_with_auth().await?;
    let store = EtcdStore::connect(config(&server).with_user("root", "root-pw")).await?;
    let (namespace, env) = (unique("ns"), unique("env"));
    let discoverer = Discoverer::new(&store, &env, conf(&namespace))?;
    discoverer.watcher().await?;
    let registrar = Registrar::new(&store, meta(&env, "authed"), conf(&namespace))?;
    let installed = registrar.install(node("t.Auth", &["Call"])).await?;
    let m = method("t.Auth", "Call");
    eventually(PROPAGATION, "node visible", || leases_for(&discoverer, &m) == [installed.lease_id]).await?;
    registrar.uninstall().await?;
    discoverer.unwatch();
    Ok(())
}

/// A user who may not write the prefix gets `PermissionDenied` naming etcd's reason.
async fn user_without_write_permission_is_permission_denied() -> anyhow::Result<()> {
    let server = etcd_with_auth().await?;
    let store = EtcdStore::connect(config(&server).with_user("reader", "reader-pw")).await?;
    let registrar = Registrar::new(&store, meta("dev", "sneaky"), conf("readonly"))?;
    let Err(error) = registrar.install(node("t.Ro", &["Call"])).await else {
        anyhow::bail!("read-only user: expected an error");
    };
    let Error::PermissionDenied { message, .. } = &error else {
        anyhow::bail!("expected PermissionDenied, got {error:?}");
    };
    anyhow::ensure!(message.contains("permission denied"), "message: {message}");
    Ok(())
}

/// The lease is revoked behind the registrar's back (as when it expired
/// during an outage): renew reports `LeaseExpired`, and core registers the
/// instance again under a new lease within one TTL.
async fn revoked_lease_is_registered_again() -> anyhow::Result<()> {
    let server = local_etcd().await?;
    let store = store(&server).await?;
    let mut client = raw_client(&server).await?;
    let (namespace, env) = (unique("ns"), unique("env"));
    let discoverer = Discoverer::new(&store, &env, conf(&namespace))?;
    discoverer.watcher().await?;
    let registrar = Registrar::new(&store, meta(&env, "phoenix"), conf(&namespace))?;
    let first = registrar.install(node("t.Lease", &["Call"])).await?;
    let keepalive = tokio::spawn({
        let r = registrar.clone();
        async move { r.sustain_lease().await }
    });
    let m = method("t.Lease", "Call");
    eventually(PROPAGATION, "first lease visible", || leases_for(&discoverer, &m) == [first.lease_id]).await?;
    let ttl = registrar.conf().ttl;
    // Let a few heartbeats pass, so the keepalive stream is open when the lease goes.
    tokio::time::sleep(ttl).await;
    client.lease_revoke(first.lease_id).await?;
    eventually(ttl + Duration::from_millis(500), "registered again under a new lease", || {
        registrar.node().is_some_and(|n| n.lease_id != first.lease_id) && {
            let leases = leases_for(&discoverer, &m);
            leases.len() == 1 && leases[0] != first.lease_id
        }
    })
    .await?;
    registrar.uninstall().await?;
    keepalive.await??;
    discoverer.unwatch();
    Ok(())
}

/// Watching from a revision etcd has compacted away is `ResumeLost` (core
/// then lists again); watching from a live revision streams the changes.
async fn compacted_resume_point_is_resume_lost() -> anyhow::Result<()> {
    let server = local_etcd().await?;
    let store = store(&server).await?;
    let mut client = raw_client(&server).await?;
    let scope = Scope::new(unique("ns"), unique("env"));
    let prefix = scope.key_prefix();
    let source = store.list_watch(&scope);
    let before = source.list().await?.resume;
    for i in 0..3 {
        client.put(format!("{prefix}app/{i}"), "{}", None).await?;
    }
    let now = source.list().await?;
    anyhow::ensure!(now.records.len() == 3 && now.resume >= before + 3, "listing {now:?}");
    client.compact(i64::try_from(now.resume)?, None).await?;

    let lost = match source.watch(before).await {
        Err(e) => e,
        Ok(mut stream) => loop {
            // The watch may confirm it is alive (created) before etcd cancels it.
            match futures::StreamExt::next(&mut stream).await {
                Some(Ok(registry_core::store::WatchUpdate::Progress)) => continue,
                Some(Err(e)) => break e,
                other => anyhow::bail!("watch from a compacted revision gave {other:?}"),
            }
        },
    };
    anyhow::ensure!(matches!(lost, Error::ResumeLost { backend: "etcd", revision } if revision == before), "{lost:?}");

    let mut stream = source.watch(now.resume).await?;
    client.put(format!("{prefix}app/late"), "{}", Some(PutOptions::new())).await?;
    let update = tokio::time::timeout(PROPAGATION, async {
        loop {
            match futures::StreamExt::next(&mut stream).await {
                Some(Ok(registry_core::store::WatchUpdate::Progress)) => continue,
                other => break other,
            }
        }
    })
    .await?;
    let Some(Ok(registry_core::store::WatchUpdate::Changes { changes, resume: revision })) = update else {
        anyhow::bail!("expected changes, got {update:?}");
    };
    anyhow::ensure!(changes.len() == 1 && revision == now.resume + 1, "changes {changes:?} at {revision}");
    Ok(())
}

/// A node larger than etcd accepts is `TooLarge`, naming its size and
/// etcd's limit — both past etcd's request limit (1.5 MiB) and past its gRPC
/// message limit (2 MiB + overhead), which etcd reports differently.
async fn oversized_node_is_too_large() -> anyhow::Result<()> {
    let server = local_etcd().await?;
    let store = store(&server).await?;
    for methods in [60_000, 120_000] {
        let names: Vec<String> = (0..methods).map(|i| format!("Method{i:06}")).collect();
        let big = registry_core::GrpcServices::new().service("t.Big", &names)?.into_node();
        let registrar = Registrar::new(&store, meta("dev", "big"), conf(&unique("ns")))?;
        let Err(error) = registrar.install(big).await else {
            anyhow::bail!("a node with {methods} methods was accepted");
        };
        let Error::TooLarge { size, limit, .. } = error else {
            anyhow::bail!("{methods} methods: expected TooLarge, got {error:?}");
        };
        anyhow::ensure!(
            size > limit && limit == registry_etcd::DEFAULT_MAX_REQUEST_BYTES,
            "size {size}, limit {limit}"
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    Runner::new()
        .test("config_debug_hides_the_password", Ok(()), config_debug_hides_the_password)
        .test("refused_endpoint_install_is_unavailable", Ok(()), refused_endpoint_install_is_unavailable)
        .test("refused_endpoint_watcher_is_unavailable", Ok(()), refused_endpoint_watcher_is_unavailable)
        .test("silent_endpoint_install_times_out", Ok(()), silent_endpoint_install_times_out)
        .test("silent_endpoint_watcher_times_out", Ok(()), silent_endpoint_watcher_times_out)
        .test("unreachable_endpoint_with_auth_fails_connect", Ok(()), unreachable_endpoint_with_auth_fails_connect)
        .test("wrong_password_is_permission_denied", local_available(), wrong_password_is_permission_denied)
        .test("right_password_registers_and_discovers", local_available(), right_password_registers_and_discovers)
        .test(
            "user_without_write_permission_is_permission_denied",
            local_available(),
            user_without_write_permission_is_permission_denied,
        )
        .test("revoked_lease_is_registered_again", local_available(), revoked_lease_is_registered_again)
        .test("compacted_resume_point_is_resume_lost", local_available(), compacted_resume_point_is_resume_lost)
        .test("oversized_node_is_too_large", local_available(), oversized_node_is_too_large)
        .run()
}
