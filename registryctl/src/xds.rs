//! `registryctl xds`: serves one env of a backend over xDS (ADS, State of
//! the World) to Envoy and proxyless gRPC clients (`registry-xds`).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::inspect::Scope;

/// Options of `registryctl xds`.
#[derive(Args, Debug)]
pub struct XdsArgs {
    /// Backend URL (`memory://`, `etcd://host:2379`, `consul://host:8500`, `kubernetes://?mode=lease`).
    #[arg(long, env = "REGISTRY_URL")]
    url: String,
    /// Namespace.
    #[arg(long, default_value = registry_core::conf::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Environment served (the env target is `xds:///<env>`, an app's `xds:///<app_id>.<env>`).
    #[arg(long)]
    env: String,
    /// Address of the ADS server (loopback by default).
    #[arg(long, default_value = "127.0.0.1:18000")]
    listen: SocketAddr,
    /// Print the connected clients (node id, kind, ACKed version per type, NACKs) every this many seconds; 0: never.
    #[arg(long, default_value_t = 0)]
    status_every: u64,
}

/// Serves until Ctrl-C.
pub async fn run(args: XdsArgs) -> anyhow::Result<()> {
    let scope = Scope { url: args.url, namespace: args.namespace, env: args.env.clone(), json: false };
    let (_registry, discovery) = crate::inspect::open(&scope, registry::DrainingNodes::Exclude).await?;
    let server = registry_xds::XdsServer::new(discovery, &args.env)?;
    eprintln!("registryctl: serving xDS for env {} on {} (Ctrl-C stops)", args.env, args.listen);
    if args.status_every > 0 {
        let server = server.clone();
        let every = Duration::from_secs(args.status_every);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                print_clients(&server);
            }
        });
    }
    server
        .serve(args.listen, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn print_clients(server: &registry_xds::XdsServer) {
    let clients = server.clients();
    eprintln!("view generation {:?}, {} client(s)", server.generation(), clients.len());
    for client in clients {
        let types: Vec<String> = client
            .types
            .iter()
            .map(|(kind, t)| {
                let nack = t.last_nack.as_ref().map(|n| format!(" last NACK of {}: {}", n.version, n.message));
                format!(
                    "{} acked {} sent {} nacks {}{}",
                    kind.short(),
                    t.acked_version,
                    t.sent_version,
                    t.nacks,
                    nack.unwrap_or_default()
                )
            })
            .collect();
        eprintln!("  {} ({}, {}): {}", client.node_id, client.kind, client.user_agent, types.join("; "));
    }
}
