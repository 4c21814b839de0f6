//! `registryctl drain` and `undrain`: an operator marks another process's
//! instance draining (or serving again) in the store.
//!
//! The mark is kept by the store beside (or carried inside) the instance's
//! record, so the instance's heartbeats and installs keep it, and it is
//! written with the store's precondition, so it never undoes a write of the
//! instance that raced it (see `registry_core::operator`). The command then
//! waits until discovery shows the change, so when it returns, new
//! discoverers and `get_service` already see it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use registry::{Discovery, DrainingNodes, ServiceNode};
use registry_core::options::redact;

use crate::inspect::{Scope, open};

/// How long the command waits for discovery to show the change.
const SEEN_WITHIN: Duration = Duration::from_secs(30);

/// Options of `registryctl drain` and `undrain`.
#[derive(Args, Debug)]
pub struct DrainArgs {
    /// Backend, namespace and env (`--json` prints the node as discovery
    /// shows it afterwards).
    #[command(flatten)]
    scope: Scope,
    /// The instance's lease id (`registryctl list` shows it).
    #[arg(long)]
    lease_id: i64,
    /// The instance's app id; needed only when two apps have an instance
    /// with this lease id (found from the listing otherwise).
    #[arg(long)]
    app: Option<String>,
}

fn describe(node: &ServiceNode) -> String {
    format!(
        "{}/{} ({} {} at {})",
        node.meta.app_id, node.lease_id, node.meta.app_id, node.meta.version, node.network.internal
    )
}

/// The instance with `lease_id` (of `app`, if given) in the discovered view.
fn find(discovery: &dyn Discovery, lease_id: i64, app: Option<&str>) -> anyhow::Result<Arc<ServiceNode>> {
    let all = discovery.snapshot().all_nodes();
    let found: Vec<&Arc<ServiceNode>> =
        all.iter().filter(|n| n.lease_id == lease_id && app.is_none_or(|a| n.meta.app_id == a)).collect();
    match found.as_slice() {
        [one] => Ok(Arc::clone(one)),
        [] => anyhow::bail!(
            "no live instance with lease id {lease_id}{} (see `registryctl list`)",
            app.map(|a| format!(" in app `{a}`")).unwrap_or_default()
        ),
        many => anyhow::bail!(
            "lease id {lease_id} is held by instances of several apps ({}): choose one with --app",
            many.iter().map(|n| n.meta.app_id.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// `registryctl drain` (`drained = true`) and `undrain`.
pub async fn run(args: DrainArgs, drained: bool) -> anyhow::Result<()> {
    let url = redact(&args.scope.url);
    let (registry, discovery) = open(&args.scope, DrainingNodes::Exclude).await?;
    let node = find(&*discovery, args.lease_id, args.app.as_deref())?;
    let operator = registry.operator(&args.scope.namespace, &args.scope.env)?;
    operator
        .set_drained(&node.meta.app_id, node.lease_id, drained)
        .await
        .with_context(|| format!("marking {} on {url}", describe(&node)))?;
    // Wait until discovery shows it: then every discoverer will.
    let shown = tokio::time::timeout(SEEN_WITHIN, async {
        loop {
            if let Ok(now) = find(&*discovery, node.lease_id, Some(&node.meta.app_id))
                && now.drained_by_operator == drained
            {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .with_context(|| format!("the mark was written but discovery did not show it within {SEEN_WITHIN:?}"))?;
    discovery.unwatch();
    if args.scope.json {
        println!("{}", serde_json::to_string_pretty(&*shown)?);
    } else if drained {
        println!("drained {}: get_service no longer answers it; `registryctl undrain` takes it back", describe(&shown));
    } else if shown.draining {
        println!("undrained {}: the instance itself is still draining", describe(&shown));
    } else {
        println!("undrained {}: serving again", describe(&shown));
    }
    Ok(())
}
