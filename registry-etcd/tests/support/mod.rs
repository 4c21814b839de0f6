//! A small libtest-mimic harness for the etcd test binaries that are not
//! the conformance suite: tests that need etcd are reported as ignored, with
//! the reason, when it cannot be had — and fail under `REGISTRY_TEST_REQUIRE=1`.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use conformance::required;
use libtest_mimic::{Arguments, Failed, Trial};
use registry_core::ServiceConf;
use registry_etcd::{EtcdConfig, EtcdStore};
use registry_testenv::etcd::{self, EtcdServer};

/// A test's body.
pub type TestFn = fn() -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// What a test needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Nothing but this process (e.g. an unreachable endpoint).
    Nothing,
    /// A real etcd.
    Etcd,
}

/// One named test.
pub struct Test {
    pub name: &'static str,
    pub needs: Needs,
    pub run: TestFn,
}

/// Runs `tests` and returns the exit code.
pub fn run(tests: Vec<Test>) -> ExitCode {
    let args = Arguments::from_args();
    let missing = match etcd::available() {
        Err(e) if !required() => {
            eprintln!("SKIPPING etcd tests: {e} (REGISTRY_TEST_REQUIRE=1 turns this into a failure)");
            Some(e.to_string())
        }
        _ => None,
    };
    let trials = tests
        .into_iter()
        .map(|test| {
            let body = test.run;
            let trial = Trial::test(test.name, move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
                runtime.block_on(body()).map_err(|e| Failed::from(format!("{e:#}")))
            });
            match (&missing, test.needs) {
                (Some(reason), Needs::Etcd) => trial.with_ignored_flag(true).with_kind(format!("no server: {reason}")),
                _ => trial,
            }
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// A local etcd of the test's own (never the user's cluster: tests here
/// enable auth, compact, and stop servers).
pub async fn local_etcd() -> anyhow::Result<EtcdServer> {
    Ok(EtcdServer::start_local().await?)
}

/// A store on `server` with a short request timeout.
pub async fn store(server: &EtcdServer) -> anyhow::Result<EtcdStore> {
    Ok(EtcdStore::connect(config(server)).await?)
}

/// The client options tests use.
pub fn config(server: &EtcdServer) -> EtcdConfig {
    EtcdConfig::new(server.endpoints()).with_request_timeout(Duration::from_secs(2))
}

/// A raw client, for writing the way other programs do.
pub async fn raw_client(server: &EtcdServer) -> anyhow::Result<etcd_client::Client> {
    Ok(etcd_client::Client::connect(server.endpoints(), None).await?)
}

/// The conformance suite's configuration (TTL 2 s) in `namespace`.
pub fn conf(namespace: &str) -> ServiceConf {
    conformance::fixtures::conf(namespace)
}
