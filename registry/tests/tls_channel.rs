//! A balanced channel over TLS and mTLS, on real tonic servers with
//! certificates of a test CA (rcgen): the endpoint template carries tonic's
//! `ClientTlsConfig`; a client that trusts another CA fails with an error
//! that says why. The template's request timeout applies to every node.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{CHECK, CountingServer, check, register};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use registry::balance::{ChannelBuilder, Selector, WeightedChannel};
use registry::{Discovery, Register, ServiceConf};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic_health::pb::health_client::HealthClient;

/// A test CA that issues certificates in memory.
struct TestCa {
    key: KeyPair,
    params: CertificateParams,
    pem: String,
}

impl TestCa {
    fn new(name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let pem = params.self_signed(&key)?.pem();
        Ok(Self { key, params, pem })
    }

    fn certificate(&self) -> Certificate {
        Certificate::from_pem(&self.pem)
    }

    /// A certificate and key for `names` (IP addresses become IP SANs).
    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> anyhow::Result<Identity> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("client"));
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &Issuer::from_params(&self.params, &self.key))?;
        Ok(Identity::from_pem(cert.pem(), key.serialize_pem()))
    }
}

/// Two TLS servers of app `app` with certificates of `ca` for 127.0.0.1,
/// demanding client certificates of `client_ca` when given; registered.
async fn tls_fleet(
    registry: &registry::Registry,
    app: &str,
    ca: &TestCa,
    client_ca: Option<&TestCa>,
) -> anyhow::Result<(Vec<CountingServer>, Vec<Arc<dyn Register>>)> {
    let (mut servers, mut registrars) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let mut tls = ServerTlsConfig::new().identity(ca.issue(&["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth)?);
        if let Some(client_ca) = client_ca {
            tls = tls.client_ca_root(client_ca.certificate());
        }
        let builder = tonic::transport::Server::builder().tls_config(tls)?;
        let server = CountingServer::with(builder, tokio::net::TcpListener::bind("127.0.0.1:0").await?).await?;
        registrars.push(register(registry, app, server.addr, 100).await?);
        servers.push(server);
    }
    Ok((servers, registrars))
}

async fn discovery(registry: &registry::Registry) -> anyhow::Result<Arc<dyn Discovery>> {
    let discovery = registry.discoverer("dev", ServiceConf::default())?;
    discovery.watcher().await?;
    Ok(discovery)
}

fn tls_channel(discovery: Arc<dyn Discovery>, app: &str, tls: ClientTlsConfig) -> WeightedChannel {
    ChannelBuilder::new(discovery, Selector::app(app))
        .scheme("https")
        .endpoint(move |endpoint| endpoint.connect_timeout(Duration::from_secs(2)).tls_config(tls.clone()))
        .wait_for_nodes(Duration::ZERO)
        .build()
}

async fn uninstall(registrars: Vec<Arc<dyn Register>>) -> anyhow::Result<()> {
    for registrar in registrars {
        registrar.uninstall().await?;
    }
    Ok(())
}

#[tokio::test]
async fn tls_calls_reach_every_node() -> anyhow::Result<()> {
    let registry = registry::connect("memory://tls").await?;
    let ca = TestCa::new("registry test CA")?;
    let (servers, registrars) = tls_fleet(&registry, "tls-greeter", &ca, None).await?;
    let channel = tls_channel(
        discovery(&registry).await?,
        "tls-greeter",
        ClientTlsConfig::new().ca_certificate(ca.certificate()),
    );
    let mut client = HealthClient::new(channel);
    for _ in 0..20 {
        check(&mut client).await?;
    }
    assert_eq!(servers.iter().map(CountingServer::served).collect::<Vec<_>>(), [10, 10]);
    uninstall(registrars).await
}

#[tokio::test]
async fn mtls_calls_succeed_with_a_client_certificate_and_fail_without() -> anyhow::Result<()> {
    let registry = registry::connect("memory://mtls").await?;
    let ca = TestCa::new("registry test CA")?;
    let (servers, registrars) = tls_fleet(&registry, "mtls-greeter", &ca, Some(&ca)).await?;
    let discovery = discovery(&registry).await?;
    let client_identity = ca.issue(&["gateway"], ExtendedKeyUsagePurpose::ClientAuth)?;
    let with_certificate = ClientTlsConfig::new().ca_certificate(ca.certificate()).identity(client_identity);
    let mut client = HealthClient::new(tls_channel(Arc::clone(&discovery), "mtls-greeter", with_certificate));
    for _ in 0..20 {
        check(&mut client).await?;
    }
    assert_eq!(servers.iter().map(CountingServer::served).collect::<Vec<_>>(), [10, 10]);

    let without = ClientTlsConfig::new().ca_certificate(ca.certificate());
    let status = check(&mut HealthClient::new(tls_channel(discovery, "mtls-greeter", without)))
        .await
        .expect_err("the servers demand a client certificate");
    println!("without a client certificate: {status:?}");
    assert!(format!("{status:?}").contains("CertificateRequired"), "the error says why: {status:?}");
    assert_eq!(servers.iter().map(CountingServer::served).sum::<u64>(), 20, "no call got through");
    uninstall(registrars).await
}

#[tokio::test]
async fn a_wrong_ca_fails_with_an_error_naming_the_certificate() -> anyhow::Result<()> {
    let registry = registry::connect("memory://tls-wrong-ca").await?;
    let ca = TestCa::new("registry test CA")?;
    let other = TestCa::new("some other CA")?;
    let (servers, registrars) = tls_fleet(&registry, "tls-strict", &ca, None).await?;
    let channel = tls_channel(
        discovery(&registry).await?,
        "tls-strict",
        ClientTlsConfig::new().ca_certificate(other.certificate()),
    );
    let status = check(&mut HealthClient::new(channel)).await.expect_err("the server's CA is not trusted");
    let text = format!("{status:?}");
    println!("wrong CA: {text}");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{text}");
    assert_eq!(status.message(), "invalid peer certificate: UnknownIssuer", "the error says why: {text}");
    assert_eq!(servers.iter().map(CountingServer::served).sum::<u64>(), 0);
    uninstall(registrars).await
}

#[tokio::test]
async fn the_templates_request_timeout_applies_to_every_node() -> anyhow::Result<()> {
    let registry = registry::connect("memory://template-timeout").await?;
    // Accepts connections and never answers: only a timeout ends a call to it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let registrar = register(&registry, "silent", silent.local_addr()?, 100).await?;
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let channel = ChannelBuilder::new(discovery(&registry).await?, Selector::method(CHECK))
        .endpoint(|endpoint| Ok(endpoint.timeout(Duration::from_millis(300))))
        .build();
    let started = tokio::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(10), check(&mut HealthClient::new(channel))).await;
    let status = outcome?.expect_err("nothing answers");
    println!("silent node after {:?}: {status:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(5), "the template's 300 ms timeout ended the call");
    held.abort();
    registrar.uninstall().await?;
    Ok(())
}
