//! One generic client, written once against the traits, run unchanged on every backend.

use std::time::Duration;

use registry_core::{Discovery, Error, Register};

use super::World;
use crate::Backend;
use crate::fixtures::{PROPAGATION, eventually, method, node};

/// What every backend must print for [`generic_client_transcript`].
pub const EXPECTED_TRANSCRIPT: &[&str] = &[
    "get /demo.Greeter/Hello -> greeter",
    "get /demo.Common/Ping -> [worker, greeter]",
    "apps -> [greeter, worker]",
    "after greeter leaves: get /demo.Greeter/Hello -> MethodNotFound",
    "after greeter leaves: get /demo.Common/Ping -> [worker]",
    "after worker leaves: apps -> []",
];

fn apps_of(d: &dyn Discovery, m: &str) -> String {
    match d.get_service(m) {
        Ok(nodes) => format!("[{}]", nodes.iter().map(|n| n.meta.app_id.as_str()).collect::<Vec<_>>().join(", ")),
        Err(Error::MethodNotFound { .. }) => "MethodNotFound".to_owned(),
        Err(e) => format!("error: {e}"),
    }
}

/// A client that only knows `dyn Register` and `dyn Discovery`: installs two
/// apps, looks them up, removes them, and records what it saw.
pub async fn generic_client_transcript(
    greeter: &dyn Register,
    worker: &dyn Register,
    disc: &dyn Discovery,
) -> anyhow::Result<Vec<String>> {
    let (hello, ping) = (method("demo.Greeter", "Hello"), method("demo.Common", "Ping"));
    let mut g = node("demo.Greeter", &["Hello"]);
    for (method, served) in node("demo.Common", &["Ping"]).methods.iter() {
        g.methods.insert(method.clone(), *served);
    }
    greeter.install(g).await?;
    eventually(PROPAGATION, "greeter visible", || disc.get_service(&ping).is_ok()).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    worker.install(node("demo.Common", &["Ping"])).await?;
    eventually(PROPAGATION, "worker visible", || disc.get_service(&ping).map(|n| n.len() == 2).unwrap_or(false))
        .await?;
    let mut out = Vec::new();
    let hello_apps = apps_of(disc, &hello);
    out.push(format!("get {hello} -> {}", hello_apps.trim_matches(|c| c == '[' || c == ']')));
    out.push(format!("get {ping} -> {}", apps_of(disc, &ping)));
    out.push(format!("apps -> [{}]", disc.apps().iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")));
    greeter.uninstall().await?;
    eventually(PROPAGATION, "greeter gone", || disc.get_service(&hello).is_err()).await?;
    eventually(PROPAGATION, "ping has one provider", || disc.get_service(&ping).map(|n| n.len() == 1).unwrap_or(false))
        .await?;
    out.push(format!("after greeter leaves: get {hello} -> {}", apps_of(disc, &hello)));
    out.push(format!("after greeter leaves: get {ping} -> {}", apps_of(disc, &ping)));
    worker.uninstall().await?;
    eventually(PROPAGATION, "worker gone", || disc.apps().is_empty()).await?;
    out.push(format!(
        "after worker leaves: apps -> [{}]",
        disc.apps().iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
    ));
    Ok(out)
}

/// The generic client's transcript equals [`EXPECTED_TRANSCRIPT`] on this backend.
pub async fn generic_client_gives_identical_results<B: Backend>(b: &B) -> anyhow::Result<()> {
    let mut w = World::new(b).await?;
    let disc = w.discoverer().await?;
    let greeter = w.registrar("greeter").await?;
    let worker = w.registrar("worker").await?;
    let transcript = generic_client_transcript(&greeter, &worker, &*disc).await?;
    anyhow::ensure!(
        transcript == EXPECTED_TRANSCRIPT,
        "transcript differs:\n  got:  {transcript:#?}\n  want: {EXPECTED_TRANSCRIPT:#?}"
    );
    w.cleanup().await?;
    Ok(())
}
