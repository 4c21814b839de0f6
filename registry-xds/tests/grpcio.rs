//! Python grpcio (1.85, its built-in xDS resolver) as a proxyless client of
//! the server: `registry-xds/interop/python/xds_client.py` in the virtual
//! environment `scripts/install-test-servers.sh` makes, with one channel to
//! `xds:///prod`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::ExitCode;

use support::{Env, LineClient, available, proxyless_scenario, testenv_venv_python};

fn main() -> ExitCode {
    conformance::Runner::new()
        .test("grpcio::routes_weights_follow_drain_no_nacks", available(testenv_venv_python()), || async {
            let env = Env::start().await?;
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/python/xds_client.py");
            let mut command = tokio::process::Command::new(testenv_venv_python());
            command.arg(script).arg("xds:///prod").env("GRPC_XDS_BOOTSTRAP_CONFIG", env.bootstrap("grpcio"));
            let mut client = LineClient::spawn(command, "grpcio")?;
            proxyless_scenario(&env, &mut client, "grpcio").await?;
            client.quit().await
        })
        .run()
}
