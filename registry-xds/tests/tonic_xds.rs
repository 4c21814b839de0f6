//! tonic-xds (the crate, alpha) as a Rust proxyless client of the server:
//! one channel to `xds:///prod` routes per method, follows installs and
//! uninstalls, sends no new call to a drained instance, and NACKs nothing.
//! Weights are not checked: tonic-xds balances with power of two choices.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use registry_core::Register;
use support::{Env, PkgA, PkgB, RawCodec};
use tonic_xds::{BootstrapConfig, XdsChannelBuilder, XdsChannelConfig, XdsUri};

type Channel = tonic_xds::XdsChannelGrpc;

async fn call_once(grpc: &mut tonic::client::Grpc<Channel>, method: &str) -> Result<String, tonic::Status> {
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = method.parse().map_err(|_| tonic::Status::internal("bad path"))?;
    let mut request = tonic::Request::new(bytes::Bytes::from_static(b"ping"));
    request.set_timeout(Duration::from_secs(5));
    let reply = grpc.unary(request, path, RawCodec).await?;
    Ok(String::from_utf8_lossy(&reply.into_inner()).into_owned())
}

async fn calls(grpc: &mut tonic::client::Grpc<Channel>, method: &str, count: u32) -> BTreeMap<String, u64> {
    let mut seen = BTreeMap::new();
    for _ in 0..count {
        let key = match call_once(grpc, method).await {
            Ok(id) => id,
            Err(status) => format!("error {:?}", status.code()),
        };
        *seen.entry(key).or_default() += 1;
    }
    seen
}

/// Calls until `id` answers (`present`) or 200 calls in a row miss it.
async fn until(grpc: &mut tonic::client::Grpc<Channel>, method: &str, present: bool, id: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut misses = 0;
    while start.elapsed() < Duration::from_secs(30) {
        let hit = call_once(grpc, method).await.is_ok_and(|answer| answer == id);
        if present && hit {
            return Ok(());
        }
        misses = if hit { 0 } else { misses + 1 };
        if !present && misses >= 200 {
            return Ok(());
        }
    }
    anyhow::bail!("{id} still {} after 30 s", if present { "absent" } else { "answering" })
}

fn only(seen: &BTreeMap<String, u64>, ids: &[&str]) -> anyhow::Result<()> {
    anyhow::ensure!(seen.keys().all(|id| ids.contains(&id.as_str())), "calls reached {seen:?}; expected only {ids:?}");
    Ok(())
}

fn main() -> ExitCode {
    conformance::Runner::new()
        .test("tonic_xds::routes_follow_drain_no_nacks", Ok(()), || async {
            let env = Env::start().await?;
            let _a1 = env.instance::<PkgA>("a", "a-1", 100).await?;
            let a2 = env.instance::<PkgA>("a", "a-2", 100).await?;
            let _b1 = env.instance::<PkgB>("b", "b-1", 100).await?;
            let bootstrap = serde_json::json!({
                "xds_servers": [{"server_uri": format!("http://{}", env.xds_addr), "channel_creds": [{"type": "insecure"}]}],
                "node": {"id": "tonic-xds"},
            });
            let bootstrap = BootstrapConfig::from_json(&bootstrap.to_string())?;
            let channel = XdsChannelBuilder::new(XdsChannelConfig::new(XdsUri::parse("xds:///prod")?).with_bootstrap(bootstrap))
                .build_grpc_channel()?;
            let mut grpc = tonic::client::Grpc::new(channel);
            for (method, id) in [("/pkg.A/Echo", "a-1"), ("/pkg.A/Echo", "a-2"), ("/pkg.B/Echo", "b-1")] {
                until(&mut grpc, method, true, id).await?;
            }
            only(&calls(&mut grpc, "/pkg.A/Echo", 200).await, &["a-1", "a-2"])?;
            only(&calls(&mut grpc, "/pkg.B/Other", 100).await, &["b-1"])?;

            let a3 = env.instance::<PkgA>("a", "a-3", 100).await?;
            until(&mut grpc, "/pkg.A/Echo", true, "a-3").await?;
            a3.registrar.uninstall().await?;
            until(&mut grpc, "/pkg.A/Echo", false, "a-3").await?;
            drop(a3);
            a2.registrar.drain().await?;
            until(&mut grpc, "/pkg.A/Echo", false, "a-2").await?;
            only(&calls(&mut grpc, "/pkg.A/Echo", 300).await, &["a-1"])?;

            let state = env.xds.clients().into_iter().find(|c| c.node_id == "tonic-xds").ok_or_else(|| anyhow::anyhow!("no ADS stream from tonic-xds"))?;
            for (kind, t) in &state.types {
                anyhow::ensure!(t.nacks == 0, "tonic-xds NACKed {kind:?}: {:?}", t.last_nack);
            }
            Ok(())
        })
        .run()
}
