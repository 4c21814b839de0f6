//! TLS on a real etcd: certificates made for the test (`registry_testenv::pki`), an etcd that
//! serves clients over TLS and demands client certificates.

mod support;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use conformance::Runner;
use conformance::fixtures::{PROPAGATION, eventually, leases_for, meta, method, node, unique};
use registry_core::{Discoverer, Discovery, Error, Register, Registrar};
use registry_etcd::{EtcdConfig, EtcdStore, EtcdTls};
use registry_testenv::etcd::local_available;
use registry_testenv::etcd::{EtcdServer, ServerTls};
use registry_testenv::pki::{self, Ca};
use support::conf;

/// A CA, and PEM files signed by it, in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    fn new(name: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = Ca::new(name)?;
        pki::write(dir.path(), "ca.pem", &ca.own().cert)?;
        Ok(Self { dir, ca })
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

/// An etcd serving TLS with a certificate of `pki`, demanding client
/// certificates of `pki`; and a client certificate for the tests.
async fn tls_etcd(pki: &Pki) -> anyhow::Result<(EtcdServer, PathBuf, PathBuf)> {
    let (cert, key) = pki.ca.server("server", &["127.0.0.1", "localhost"])?.write(pki.dir.path(), "server")?;
    let server = EtcdServer::start_local_tls(&ServerTls { cert, key, client_ca: Some(pki.ca()) }).await?;
    let (client_cert, client_key) = pki.ca.client("client", None)?.write(pki.dir.path(), "client")?;
    Ok((server, client_cert, client_key))
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// An `etcds://` URL with CA, client certificate and key connects, and
/// registration and discovery work over TLS.
async fn tls_with_client_certificate_registers_and_discovers() -> anyhow::Result<()> {
    let pki = Pki::new("registry-test-ca")?;
    let (server, cert, key) = tls_etcd(&pki).await?;
    let url = format!(
        "etcds://{}?ca={}&cert={}&key={}",
        server.endpoints().join(","),
        path(&pki.ca()),
        path(&cert),
        path(&key)
    );
    let store = EtcdStore::connect(EtcdConfig::parse_url(&url)?).await?;
    let (namespace, env) = (unique("ns"), unique("env"));
    let discoverer = Discoverer::new(&store, &env, conf(&namespace))?;
    discoverer.watcher().await?;
    let registrar = Registrar::new(&store, meta(&env, "secure"), conf(&namespace))?;
    let installed = registrar.install(node("t.Tls", &["Call"])).await?;
    let m = method("t.Tls", "Call");
    eventually(PROPAGATION, "node visible over TLS", || leases_for(&discoverer, &m) == [installed.lease_id]).await?;
    registrar.uninstall().await?;
    discoverer.unwatch();
    Ok(())
}

/// Installing must fail, and promptly: the connection cannot be established.
async fn install_is_refused(config: EtcdConfig) -> anyhow::Result<Error> {
    let limit = config.request_timeout;
    let store = EtcdStore::connect(config).await?;
    // `install` retries a connection failure until its deadline: one request timeout here.
    let registrar = Registrar::new(&store, meta("dev", "untrusted"), conf(&unique("ns")).with_install_deadline(limit))?;
    let start = Instant::now();
    let Err(error) = registrar.install(node("t.Tls", &["Call"])).await else {
        anyhow::bail!("install succeeded over a connection that should have been refused");
    };
    anyhow::ensure!(start.elapsed() <= limit + Duration::from_millis(700), "failed after {:?}", start.elapsed());
    Ok(error)
}

/// A server certificate from a CA the client does not trust is refused.
async fn untrusted_server_certificate_is_refused() -> anyhow::Result<()> {
    let pki = Pki::new("registry-test-ca")?;
    let (server, cert, key) = tls_etcd(&pki).await?;
    let stranger = Pki::new("some-other-ca")?;
    let config = EtcdConfig::new(server.endpoints())
        .with_tls(EtcdTls::with_ca(stranger.ca()).with_identity(cert, key))
        .with_request_timeout(Duration::from_secs(1));
    let error = install_is_refused(config).await?;
    anyhow::ensure!(matches!(error, Error::BackendUnavailable { .. }), "{error:?}");
    Ok(())
}

/// A client without a certificate is refused by an etcd that demands one.
async fn missing_client_certificate_is_refused() -> anyhow::Result<()> {
    let pki = Pki::new("registry-test-ca")?;
    let (server, _cert, _key) = tls_etcd(&pki).await?;
    let config = EtcdConfig::new(server.endpoints())
        .with_tls(EtcdTls::with_ca(pki.ca()))
        .with_request_timeout(Duration::from_secs(1));
    let error = install_is_refused(config).await?;
    anyhow::ensure!(matches!(error, Error::BackendUnavailable { .. }), "{error:?}");
    Ok(())
}

/// A CA file that cannot be read is an `InvalidConfig` naming the file, at connect.
async fn unreadable_ca_file_is_invalid_config() -> anyhow::Result<()> {
    let config = EtcdConfig::new(["127.0.0.1:2379"]).with_tls(EtcdTls::with_ca("/nonexistent/ca.pem"));
    let Err(error) = EtcdStore::connect(config).await else {
        anyhow::bail!("connect accepted a missing CA file");
    };
    anyhow::ensure!(
        matches!(&error, Error::InvalidConfig { reason, .. } if reason.contains("/nonexistent/ca.pem")),
        "{error:?}"
    );
    Ok(())
}

fn main() -> ExitCode {
    Runner::new()
        .test(
            "tls_with_client_certificate_registers_and_discovers",
            local_available(),
            tls_with_client_certificate_registers_and_discovers,
        )
        .test("untrusted_server_certificate_is_refused", local_available(), untrusted_server_certificate_is_refused)
        .test("missing_client_certificate_is_refused", local_available(), missing_client_certificate_is_refused)
        .test("unreadable_ca_file_is_invalid_config", Ok(()), unreadable_ca_file_is_invalid_config)
        .run()
}
