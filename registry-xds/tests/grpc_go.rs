//! grpc-go (v1.85, `google.golang.org/grpc/xds`) as a proxyless client of
//! the server: the program in `registry-xds/interop/grpc-go`, built by
//! `scripts/install-test-servers.sh`, with one channel to `xds:///prod`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::ExitCode;

use support::{Env, LineClient, available, proxyless_scenario, testenv_bin};

const CLIENT: &str = "xds-grpc-go-client";

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
        .run()
}
