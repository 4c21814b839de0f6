//! Fixtures shared by the etcd test binaries that are not the conformance
//! suite (they run through `conformance::Runner::test`, the workspace's one
//! skip rule): a local etcd of the test's own, stores and raw clients on it.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::time::Duration;

use registry_core::ServiceConf;
use registry_etcd::{EtcdConfig, EtcdStore};
use registry_testenv::etcd::EtcdServer;

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
