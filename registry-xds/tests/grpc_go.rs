//! grpc-go (v1.85, `google.golang.org/grpc/xds`) as a proxyless client of
//! the server: the program in `registry-xds/interop/grpc-go`, built by
//! `scripts/install-test-servers.sh`, with one channel to `xds:///prod`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::ExitCode;

use support::{Env, LineClient, available, proxyless_scenario, testenv_bin};

const CLIENT: &str = "xds-grpc-go-client";

/// The grpc-go client and an etcd (a local one, or `ETCD_ENDPOINTS`).
fn etcd_and_client() -> Result<(), conformance::Unavailable> {
    registry_testenv::etcd::available()?;
    available(testenv_bin(CLIENT))
}

fn main() -> ExitCode {
    conformance::Runner::new()
        .test("grpc_go::routes_weights_follow_drain_no_nacks", available(testenv_bin(CLIENT)), || async {
            let env = Env::start().await?;
            let mut command = tokio::process::Command::new(testenv_bin(CLIENT));
            command.arg("xds:///prod").env("GRPC_XDS_BOOTSTRAP_CONFIG", env.bootstrap("grpc-go"));
            let mut client = LineClient::spawn(command, "grpc-go")?;
            proxyless_scenario(&env, &mut client, "grpc-go").await?;
            client.quit().await
        })
        .test("grpc_go::etcd::routes_weights_follow_drain_no_nacks", etcd_and_client(), || async {
            let etcd = registry_testenv::etcd::EtcdServer::start().await?;
            let store = registry_etcd::EtcdStore::connect(registry_etcd::EtcdConfig::new(etcd.endpoints())).await?;
            let namespace = format!("xds-{}", std::process::id());
            let env = Env::start_on(std::sync::Arc::new(store), &namespace).await?;
            let mut command = tokio::process::Command::new(testenv_bin(CLIENT));
            command.arg("xds:///prod").env("GRPC_XDS_BOOTSTRAP_CONFIG", env.bootstrap("grpc-go-etcd"));
            let mut client = LineClient::spawn(command, "grpc-go (etcd)")?;
            proxyless_scenario(&env, &mut client, "grpc-go-etcd").await?;
            client.quit().await?;
            drop(env);
            drop(etcd);
            Ok(())
        })
        .run()
}
