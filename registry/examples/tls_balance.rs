//! A balanced channel over TLS: a test CA (rcgen) issues certificates for
//! two real tonic servers on 127.0.0.1, both register on the embedded
//! backend, and a client balances across them with the production endpoint
//! template — TLS, connect and request timeouts, HTTP/2 keepalive and a
//! per-node concurrency limit. A client that trusts another CA is refused.
//!
//! Run: `cargo run -p grpc-registry --features tls --example tls_balance`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use registry::balance::{ChannelBuilder, Selector, WeightedChannel};
use registry::{Discovery, GrpcServices, Meta, Network, ServiceConf};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, Server, ServerTlsConfig};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A self-signed CA: its certificate (PEM), and an issuer of server certificates.
fn test_ca(name: &str) -> anyhow::Result<(String, impl Fn() -> anyhow::Result<Identity>)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let pem = params.self_signed(&key)?.pem();
    let issue = move || -> anyhow::Result<Identity> {
        let server_key = KeyPair::generate()?;
        let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned()])?;
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = server.signed_by(&server_key, &Issuer::from_params(&params, &key))?;
        Ok(Identity::from_pem(cert.pem(), server_key.serialize_pem()))
    };
    Ok((pem, issue))
}

/// A TLS health server on a free loopback port; counts the calls it answers.
async fn start_tls_server(identity: Identity) -> anyhow::Result<(String, Arc<AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let served = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&served);
    let counted = tonic::service::interceptor::InterceptedService::new(health, move |req| {
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(req)
    });
    let router = Server::builder().tls_config(ServerTlsConfig::new().identity(identity))?.add_service(counted);
    tokio::spawn(router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)));
    Ok((addr, served))
}

/// The production form: TLS with the CA to trust, timeouts, keepalive, a limit per node.
fn tls_channel(discovery: Arc<dyn Discovery>, ca_pem: &str) -> WeightedChannel {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    ChannelBuilder::new(discovery, Selector::method("/grpc.health.v1.Health/Check"))
        .scheme("https")
        .endpoint(move |endpoint| {
            endpoint
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(3))
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
                .concurrency_limit(256)
                .tls_config(tls.clone())
        })
        .wait_for_nodes(Duration::from_secs(2))
        .build()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let registry = registry::connect("memory://tls-example").await?;
    let (ca_pem, issue) = test_ca("example CA")?;
    let services = GrpcServices::new().service("grpc.health.v1.Health", ["Check"])?;
    let mut servers = Vec::new();
    for name in ["a", "b"] {
        let (addr, served) = start_tls_server(issue()?).await?;
        let conf = ServiceConf::default().with_network(Network { internal: addr.clone(), ..Default::default() });
        let registrar = registry.registrar(Meta::new("dev", "tls-greeter", "v1"), conf)?;
        registrar.install(services.clone().into_node()).await?;
        println!("TLS server {name} on {addr}, registered");
        servers.push((registrar, served));
    }

    let discovery = registry.discoverer("dev", ServiceConf::default())?;
    discovery.watcher().await?;
    let mut client = HealthClient::new(tls_channel(Arc::clone(&discovery), &ca_pem));
    for _ in 0..40 {
        client.check(HealthCheckRequest { service: String::new() }).await?;
    }
    let counts: Vec<u64> = servers.iter().map(|(_, s)| s.load(Ordering::Relaxed)).collect();
    println!("40 calls over TLS: a={} b={}", counts[0], counts[1]);
    anyhow::ensure!(counts == [20, 20], "the weights are equal: 20 calls each");

    let (other_ca, _) = test_ca("another CA")?;
    let mut untrusting = HealthClient::new(tls_channel(discovery, &other_ca));
    match untrusting.check(HealthCheckRequest { service: String::new() }).await {
        Ok(_) => anyhow::bail!("a client trusting another CA reached a server"),
        Err(status) => println!("a client trusting another CA is refused: {:?} {}", status.code(), status.message()),
    }
    for (registrar, _) in servers {
        registrar.uninstall().await?;
    }
    println!("ok");
    Ok(())
}
