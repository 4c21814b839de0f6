//! Least privilege on a real etcd with auth enabled (docs/operations.md has
//! the recipe these tests prove):
//! - a role with read-write on exactly the namespace's key prefix is enough to
//!   register, keep alive, discover, drain and operator-drain;
//! - a read-only role on the prefix is enough to discover;
//! - each missing permission fails with `PermissionDenied` naming the
//!   permission and the key or prefix it was needed on;
//! - a user of namespace `a` can neither read nor write namespace `b`;
//! - a writer confined to `<namespace>/<env>/<app_id>/` registers its own
//!   app and cannot register, update or delete another app's instances
//!   (registry poisoning).

#![allow(clippy::expect_used)] // test code: a missing refusal panics with what was expected

mod support;

use std::process::ExitCode;
use std::sync::Arc;

use conformance::Runner;
use conformance::fixtures::{PROPAGATION, TTL, eventually, leases_for, meta, method, node, unique};
use etcd_client::Permission;
use registry_core::store::{Scope, Store};
use registry_core::{Discoverer, Discovery, Error, Register, Registrar, ServiceNode};
use registry_etcd::EtcdStore;
use registry_testenv::etcd::{EtcdServer, local_available};
use support::{conf, config, local_etcd, raw_client};

/// An etcd with auth on, the namespaces `a` and `b` (random names) and one
/// env, and a user per role of the recipe (password = user name + `-pw`).
struct Secured {
    server: EtcdServer,
    a: String,
    b: String,
    env: String,
}

impl Secured {
    async fn start() -> anyhow::Result<Self> {
        let server = local_etcd().await?;
        let (a, b, env) = (unique("nsa"), unique("nsb"), unique("env"));
        let mut admin = raw_client(&server).await?;
        admin.user_add("root", "root-pw", None).await?;
        admin.user_grant_role("root", "root").await?;
        let roles: [(&str, Vec<Permission>); 6] = [
            ("writer-a", vec![Permission::read_write(format!("{a}/")).with_prefix()]),
            ("reader-a", vec![Permission::read(format!("{a}/")).with_prefix()]),
            ("write-only-a", vec![Permission::write(format!("{a}/")).with_prefix()]),
            ("writer-b", vec![Permission::read_write(format!("{b}/")).with_prefix()]),
            // Registry poisoning: read the env, write only app `orders`.
            (
                "orders-only",
                vec![
                    Permission::read(format!("{a}/{env}/")).with_prefix(),
                    Permission::read_write(format!("{a}/{env}/orders/")).with_prefix(),
                ],
            ),
            ("nothing", vec![]),
        ];
        for (role, permissions) in roles {
            admin.role_add(role).await?;
            for permission in permissions {
                admin.role_grant_permission(role, permission).await?;
            }
            admin.user_add(role, format!("{role}-pw"), None).await?;
            admin.user_grant_role(role, role).await?;
        }
        admin.auth_enable().await?;
        Ok(Self { server, a, b, env })
    }

    async fn store_of(&self, user: &str) -> anyhow::Result<EtcdStore> {
        Ok(EtcdStore::connect(config(&self.server).with_user(user, format!("{user}-pw"))).await?)
    }
}

/// `error` is `PermissionDenied` and its message names `needed`.
fn denied_naming(error: &Error, needed: &str) -> anyhow::Result<()> {
    match error {
        Error::PermissionDenied { backend: "etcd", message } if message.contains(needed) => Ok(()),
        other => anyhow::bail!("expected PermissionDenied naming `{needed}`, got {other:?}"),
    }
}

async fn install_error(store: &EtcdStore, namespace: &str, env: &str, app: &str) -> anyhow::Result<Error> {
    let registrar = Registrar::new(store, meta(env, app), conf(namespace))?;
    match registrar.install(node("t.Priv", &["Call"])).await {
        Ok(node) => anyhow::bail!("{app} installed as {} in {namespace}: expected a refusal", node.lease_id),
        Err(error) => Ok(error),
    }
}

async fn watch_error(store: &EtcdStore, namespace: &str, env: &str) -> anyhow::Result<Error> {
    let discoverer = Discoverer::new(store, env, conf(namespace))?;
    let result = discoverer.watcher().await;
    discoverer.unwatch();
    match result {
        Ok(()) => anyhow::bail!("discovery of {namespace}/{env} listed: expected a refusal"),
        Err(error) => Ok(error),
    }
}

/// Installs an instance of `app` with the root user and starts its keepalive.
async fn root_instance(s: &Secured, app: &str) -> anyhow::Result<(Registrar, ServiceNode)> {
    let root = s.store_of("root").await?;
    let registrar = Registrar::new(&root, meta(&s.env, app), conf(&s.a))?;
    let node = registrar.install(node("t.Priv", &["Call"])).await?;
    Ok((registrar, node))
}

/// Read-write on exactly `<namespace>/` registers, keeps alive across
/// several TTLs, discovers, drains itself and operator-drains; a read-only
/// user of the namespace sees all of it.
async fn namespace_role_is_enough() -> anyhow::Result<()> {
    let s = Secured::start().await?;
    let writer = s.store_of("writer-a").await?;
    let reader = Discoverer::new(&s.store_of("reader-a").await?, &s.env, conf(&s.a))?;
    reader.watcher().await?;
    let own = Discoverer::new(&writer, &s.env, conf(&s.a))?;
    own.watcher().await?;
    let registrar = Registrar::new(&writer, meta(&s.env, "orders"), conf(&s.a))?;
    let installed = registrar.install(node("t.Priv", &["Call"])).await?;
    let keepalive = tokio::spawn({
        let r = registrar.clone();
        async move { r.sustain_lease().await }
    });
    let m = method("t.Priv", "Call");
    eventually(PROPAGATION, "seen by the reader", || leases_for(&reader, &m) == [installed.lease_id]).await?;
    tokio::time::sleep(TTL * 3).await;
    anyhow::ensure!(!keepalive.is_finished(), "the keepalive ended");
    anyhow::ensure!(leases_for(&own, &m) == [installed.lease_id], "the lease lapsed under the namespace role");
    registrar.drain().await?;
    let drained = |d: &Discoverer| d.snapshot().all_nodes().iter().any(|n| n.draining);
    eventually(PROPAGATION, "drain seen by the reader", || drained(&reader)).await?;
    registrar.undrain().await?;
    let operator = writer.operator(&Scope::new(s.a.clone(), s.env.clone()))?;
    operator.set_drained("orders", installed.lease_id, true).await?;
    eventually(PROPAGATION, "operator drain seen", || {
        reader.snapshot().all_nodes().iter().any(|n| n.drained_by_operator)
    })
    .await?;
    registrar.uninstall().await?;
    keepalive.await??;
    eventually(PROPAGATION, "uninstall seen by the reader", || leases_for(&reader, &m).is_empty()).await?;
    reader.unwatch();
    own.unwatch();
    Ok(())
}

/// Each permission missing fails, naming it: read-only cannot register
/// (read and write on the record's key) nor operator-drain; write without
/// read cannot register (the put reads the operator's mark first) nor
/// discover (read on the prefix); a user with no permission cannot discover.
async fn each_missing_permission_is_named() -> anyhow::Result<()> {
    let s = Secured::start().await?;
    let key_prefix = format!("{}/{}/orders/", s.a, s.env);
    let env_prefix = format!("{}/{}/", s.a, s.env);

    let reader = s.store_of("reader-a").await?;
    let error = install_error(&reader, &s.a, &s.env, "orders").await?;
    denied_naming(&error, &format!("read and write permission on the key `{key_prefix}"))?;
    let (owner, installed) = root_instance(&s, "orders").await?;
    let operator = reader.operator(&Scope::new(s.a.clone(), s.env.clone()))?;
    let error = operator.set_drained("orders", installed.lease_id, true).await.expect_err("read-only drain");
    denied_naming(&error, &format!("read and write permission on the key `{key_prefix}{}`", installed.lease_id))?;

    let write_only = s.store_of("write-only-a").await?;
    let error = install_error(&write_only, &s.a, &s.env, "orders").await?;
    denied_naming(&error, &format!("read and write permission on the key `{key_prefix}"))?;
    let error = watch_error(&write_only, &s.a, &s.env).await?;
    denied_naming(&error, &format!("read permission on the key prefix `{env_prefix}`"))?;

    let nothing = s.store_of("nothing").await?;
    let error = watch_error(&nothing, &s.a, &s.env).await?;
    denied_naming(&error, &format!("read permission on the key prefix `{env_prefix}`"))?;
    anyhow::ensure!(!error.is_transient(), "a refused permission must not be retried: {error:?}");
    owner.uninstall().await?;
    Ok(())
}

/// A user of namespace `b` can neither read nor write namespace `a` (and
/// the other way round), and its refusals name the other namespace's keys.
async fn namespaces_are_walled_off() -> anyhow::Result<()> {
    let s = Secured::start().await?;
    let writer_b = s.store_of("writer-b").await?;
    let error = watch_error(&writer_b, &s.a, &s.env).await?;
    denied_naming(&error, &format!("read permission on the key prefix `{}/{}/`", s.a, s.env))?;
    let error = install_error(&writer_b, &s.a, &s.env, "intruder").await?;
    denied_naming(&error, &format!("permission on the key `{}/{}/intruder/", s.a, s.env))?;
    let (owner, installed) = root_instance(&s, "orders").await?;
    let operator = writer_b.operator(&Scope::new(s.a.clone(), s.env.clone()))?;
    let error = operator.set_drained("orders", installed.lease_id, true).await.expect_err("cross-namespace drain");
    denied_naming(&error, &format!("`{}/{}/orders/{}`", s.a, s.env, installed.lease_id))?;
    // Its own namespace works.
    let own = Registrar::new(&writer_b, meta(&s.env, "orders"), conf(&s.b))?;
    own.install(node("t.Priv", &["Call"])).await?;
    own.uninstall().await?;
    let writer_a = s.store_of("writer-a").await?;
    let error = watch_error(&writer_a, &s.b, &s.env).await?;
    denied_naming(&error, &format!("read permission on the key prefix `{}/{}/`", s.b, s.env))?;
    owner.uninstall().await?;
    Ok(())
}

/// Registry poisoning: a writer confined to `<namespace>/<env>/orders/`
/// registers `orders` and discovers the env, and cannot register under
/// another app's name (attracting its calls), mark another app's instance,
/// or delete it.
async fn app_confined_writer_cannot_poison_another_app() -> anyhow::Result<()> {
    let s = Secured::start().await?;
    let (payments, victim) = root_instance(&s, "payments").await?;
    let confined = s.store_of("orders-only").await?;
    let discoverer = Discoverer::new(&confined, &s.env, conf(&s.a))?;
    discoverer.watcher().await?;
    let registrar = Registrar::new(&confined, meta(&s.env, "orders"), conf(&s.a))?;
    let own = registrar.install(node("t.Orders", &["Call"])).await?;
    let m = method("t.Orders", "Call");
    eventually(PROPAGATION, "own app discovered", || leases_for(&discoverer, &m) == [own.lease_id]).await?;

    let error = install_error(&confined, &s.a, &s.env, "payments").await?;
    denied_naming(&error, &format!("permission on the key `{}/{}/payments/", s.a, s.env))?;
    let operator = confined.operator(&Scope::new(s.a.clone(), s.env.clone()))?;
    let error = operator.set_drained("payments", victim.lease_id, true).await.expect_err("marking another app");
    denied_naming(&error, &format!("`{}/{}/payments/{}`", s.a, s.env, victim.lease_id))?;
    // Deleting it the way `uninstall` does, through a registrar of that app
    // holding the victim's lease id.
    let deleter: Arc<dyn registry_core::store::StoreWriter> =
        confined.writer(&Scope::new(s.a.clone(), s.env.clone()))?;
    let error = deleter.remove(&victim).await.expect_err("deleting another app's record");
    denied_naming(&error, &format!("write permission on the key `{}/{}/payments/{}`", s.a, s.env, victim.lease_id))?;
    let victim_method = method("t.Priv", "Call");
    eventually(PROPAGATION, "the victim is still discovered", || {
        leases_for(&discoverer, &victim_method) == [victim.lease_id]
    })
    .await?;
    registrar.uninstall().await?;
    payments.uninstall().await?;
    discoverer.unwatch();
    Ok(())
}

fn main() -> ExitCode {
    Runner::new()
        .test("namespace_role_is_enough", local_available(), namespace_role_is_enough)
        .test("each_missing_permission_is_named", local_available(), each_missing_permission_is_named)
        .test("namespaces_are_walled_off", local_available(), namespaces_are_walled_off)
        .test(
            "app_confined_writer_cannot_poison_another_app",
            local_available(),
            app_confined_writer_cannot_poison_another_app,
        )
        .run()
}
