//! `registryctl`: command-line tool for the registry library.
//!
//! - `registryctl list|get|watch --url URL --env ENV` shows what a backend holds;
//! - `registryctl migrate --from URL --to URL --env ENV` mirrors live nodes;
//! - `registryctl drain|undrain --url URL --env ENV --lease-id ID` marks
//!   another process's instance draining (or serving again);
//! - `--metrics-addr HOST:PORT` (any command) serves Prometheus metrics;
//! - `registryctl conformance --backend URL` runs the conformance suite against it.
//!
//! The scale bench is a workspace tool of its own (`registry-bench`, not published).
//!
//! Errors are one line naming the backend and the cause; the exit code is non-zero.

mod conformance;
mod inspect;
mod migrate;
mod namespaces;
mod operate;
mod publish;
mod xds;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Command-line tool for the registry library.
#[derive(Parser)]
#[command(name = "registryctl", version, about)]
struct Cli {
    /// Serve the library's metrics (registrations, heartbeats, discovery
    /// health, cache size, propagation lag) for Prometheus on this address,
    /// at `/metrics`, while the command runs (e.g. `127.0.0.1:9464`).
    #[arg(long, global = true, env = "REGISTRYCTL_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    #[command(subcommand)]
    command: Command,
}

/// Installs the Prometheus exporter (listening on `addr`) as the `metrics`
/// recorder, from inside the runtime that serves it.
fn serve_metrics(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    registry::telemetry::describe();
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    Ok(())
}

#[derive(Subcommand)]
enum Command {
    /// List apps and nodes (table, or --json).
    List(inspect::Scope),
    /// Nodes serving one gRPC method, newest first; draining ones last (STATE column).
    Get(inspect::GetArgs),
    /// Stream changes with timestamps until Ctrl-C.
    Watch(inspect::Scope),
    /// Mark an instance draining (operator drain): get_service stops answering it; its own writes keep the mark.
    Drain(operate::DrainArgs),
    /// Clear an operator's drain mark.
    Undrain(operate::DrainArgs),
    /// Declare an app's gRPC methods on its Service (Kubernetes `endpointslice` mode), from a descriptor set.
    Publish(publish::PublishArgs),
    /// Mirror live nodes from one backend to another (etcd → Kubernetes migrations).
    Migrate(migrate::MigrateArgs),
    /// Run the conformance suite against a reachable server, one line per scenario.
    Conformance(conformance::ConformanceArgs),
    /// Serve an env over xDS (ADS) to Envoy and proxyless gRPC clients, with a route per gRPC method.
    Xds(xds::XdsArgs),
}

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    // The suite drives its own runtime.
    let cli = match cli.command {
        Command::Conformance(args) => {
            return conformance::run(args).unwrap_or_else(|e| {
                eprintln!("registryctl: {}", report(&e));
                ExitCode::FAILURE
            });
        }
        other => Cli { command: other, ..cli },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("registryctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        if let Some(addr) = cli.metrics_addr {
            serve_metrics(addr)?;
        }
        match cli.command {
            Command::List(scope) => inspect::list(scope).await,
            Command::Get(args) => inspect::get(args).await,
            Command::Watch(scope) => inspect::watch(scope).await,
            Command::Migrate(args) => migrate::run(args).await,
            Command::Publish(args) => publish::run(args).await,
            Command::Drain(args) => operate::run(args, true).await,
            Command::Undrain(args) => operate::run(args, false).await,
            Command::Xds(args) => xds::run(args).await,
            Command::Conformance(_) => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("registryctl: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once: a cause whose text
/// the message already contains (the library's errors embed their source,
/// so `{e}` alone is useful to library users) is not printed again.
fn report(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::report;

    #[test]
    fn each_cause_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let embedded = registry::Error::unavailable("etcd", io);
        let e = anyhow::Error::new(embedded).context("cannot list shop/prod");
        assert_eq!(report(&e), "cannot list shop/prod: etcd is unavailable: connection refused");
    }
}
