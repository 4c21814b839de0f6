//! Small named helpers that scenarios build on.

use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng;
use registry_core::{Discovery, Error, GrpcServices, Meta, ServiceConf, ServiceNode};

/// TTL used by every scenario (the lowest floor the library allows).
pub const TTL: Duration = Duration::from_secs(2);
/// How long a change may take to become visible before a scenario fails.
pub const PROPAGATION: Duration = Duration::from_secs(5);

/// A fresh random DNS-label name with `prefix`.
pub fn unique(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}-{:012x}", n & 0xffff_ffff_ffff)
}

/// The configuration scenarios use: TTL 2 s in `namespace`.
pub fn conf(namespace: &str) -> ServiceConf {
    ServiceConf::default().with_namespace(namespace).with_ttl_floor(TTL).with_ttl(TTL)
}

/// Identity of an instance.
pub fn meta(env: &str, app: &str) -> Meta {
    Meta::new(env, app, "v1")
}

/// A node serving `Method` names of service `svc` (full name `pkg.Svc`).
pub fn node(svc: &str, methods: &[&str]) -> ServiceNode {
    GrpcServices::new().service(svc, methods.iter().copied()).expect("valid method names").into_node()
}

/// Full method path.
pub fn method(svc: &str, name: &str) -> String {
    format!("/{svc}/{name}")
}

/// Polls `check` every 20 ms until it returns true or `within` passes.
pub async fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if check() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            anyhow::bail!("{what}: not true after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Same as [`eventually`] with an async check.
pub async fn eventually_async<F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            anyhow::bail!("{what}: not true after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lease ids of the nodes serving `method`, in the order discovery returns them.
pub fn leases_for(discovery: &dyn Discovery, method: &str) -> Vec<i64> {
    discovery.get_service(method).map(|nodes| nodes.iter().map(|n| n.lease_id).collect()).unwrap_or_default()
}

/// True when discovery answers `MethodNotFound` for `method`.
pub fn method_absent(discovery: &dyn Discovery, method: &str) -> bool {
    matches!(discovery.get_service(method), Err(Error::MethodNotFound { .. }))
}
