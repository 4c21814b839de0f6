//! `registry-bench`: a fleet of live instances on a backend, and what it
//! costs — heartbeats kept over 3×TTL, a separate discoverer's cold start,
//! CPU, memory and bytes read, propagation, crash expiry and lookup latency.
//! A tool of the workspace (not published): without `--url` it starts a
//! local server from the test environment (`registry-testenv`).
//!
//! - `--instances N`: one size, one summary line (`key=value`);
//! - `--sweep 100,1000,10000`: each size in turn, then a CSV and an SVG plot
//!   of the cost curves (`--out PREFIX`: `PREFIX.csv`, `PREFIX.svg`);
//! - `--plot A.csv,B.csv --out PREFIX`: one SVG of several backends' CSVs.
//!
//! The fleet's registrars are the library's own ([`fleet`]); the TTL is
//! chosen so that the fleet writes at most `--max-write-rate` heartbeats a
//! second. The separate discoverer runs in a process of its own (see
//! [`observe`], started by [`observer`]); the probes ([`probe`]) run with the
//! fleet live. The bench fails (after printing) when a heartbeat failed, an
//! instance went down, or the separate discoverer did not see the whole fleet.

mod fleet;
mod measure;
mod observe;
mod observer;
mod plot;
mod probe;
mod row;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use registry::{GrpcServices, Registry, ServiceConf, ServiceNode};
use registry_core::options::redact;

/// The URL of the backend, handed to the `--observe` child (kept out of its argv).
const URL_ENV: &str = "REGISTRY_BENCH_URL";

/// Options of `registry-bench`.
#[derive(Parser, Debug)]
#[command(name = "registry-bench", about)]
pub struct BenchArgs {
    /// Backend: memory, etcd, etcd-cluster (3 members), consul, consul-per-app (Consul's per-app
    /// layout), consul-agents and consul-agents-per-app (a server and 8 client agents: the fleet
    /// spread over 7, discovery through the first), kubernetes-lease, kubernetes-configmap,
    /// kubernetes-pod.
    #[arg(long, default_value = "memory")]
    backend: String,
    /// Connect to this URL instead of starting a local server.
    #[arg(long)]
    url: Option<String>,
    /// Live instances in the env while measuring (the fleet; 10 per app).
    #[arg(long, default_value_t = 100)]
    instances: usize,
    /// Measure at each of these fleet sizes (e.g. 100,1000,10000) and write `--out`.csv and .svg.
    #[arg(long, value_delimiter = ',')]
    sweep: Vec<usize>,
    /// Prefix of the CSV and SVG files written by --sweep or --plot (default: `bench-<backend>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Draw one SVG (`--out`.svg) from these CSV files of earlier sweeps, one line per backend.
    #[arg(long, value_delimiter = ',')]
    plot: Vec<PathBuf>,
    /// Propagation samples (each: one install and one uninstall).
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Fleet TTL in seconds (the floor is lowered to allow 2); default: the
    /// shortest (≥ 2 s) that keeps the fleet within --max-write-rate.
    #[arg(long)]
    ttl: Option<u64>,
    /// Heartbeat writes per second the fleet may make when the TTL is chosen for it.
    #[arg(long, default_value_t = 400)]
    max_write_rate: u64,
    /// Length of the hold in which heartbeats and the separate discoverer are
    /// watched, in seconds; default 3×TTL.
    #[arg(long)]
    hold: Option<u64>,
    /// Cold starts of the separate discoverer to time (the median is reported).
    #[arg(long, default_value_t = 5)]
    cold_starts: usize,
    /// Installs in flight at once while the fleet starts.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Internal: be the separate discoverer (a child process of the bench).
    #[arg(long, hide = true)]
    observe: bool,
    /// Internal (--observe): namespace of the fleet.
    #[arg(long, hide = true)]
    namespace: Option<String>,
    /// Internal (--observe): env of the fleet.
    #[arg(long, hide = true)]
    env: Option<String>,
}

/// The env of the fleet and the probes.
const ENV: &str = "bench";

impl BenchArgs {
    fn ttl_for(&self, instances: usize) -> Duration {
        let auto = || {
            // Each instance writes every TTL/2: N / (TTL/2) ≤ rate.
            let rate = self.max_write_rate.max(1);
            (2 * instances as u64).div_ceil(rate).max(2)
        };
        Duration::from_secs(self.ttl.unwrap_or_else(auto))
    }

    fn out(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| PathBuf::from(format!("bench-{}", self.backend)))
    }
}

fn conf(namespace: &str, ttl: Duration) -> ServiceConf {
    ServiceConf::default().with_namespace(namespace).with_ttl_floor(Duration::from_secs(2)).with_ttl(ttl)
}

async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.observe {
        let url = std::env::var(URL_ENV).with_context(|| format!("--observe needs {URL_ENV}"))?;
        let namespace = args.namespace.clone().context("--observe needs --namespace")?;
        let plan = observe::Plan {
            env: args.env.clone().unwrap_or_else(|| ENV.to_owned()),
            conf: conf(&namespace, args.ttl_for(args.instances)),
            cold_starts: args.cold_starts,
            hold: Duration::from_secs(args.hold.unwrap_or(0)),
        };
        return observe::child(url, plan).await;
    }
    if !args.plot.is_empty() {
        let mut rows = Vec::new();
        for csv in &args.plot {
            rows.extend(row::read_csv(csv)?);
        }
        let svg = args.out().with_extension("svg");
        plot::write_svg(&svg, "registry: cost against instances in one env", &rows)?;
        eprintln!("bench: wrote {}", svg.display());
        return Ok(());
    }
    anyhow::ensure!(args.samples >= 1, "--samples must be at least 1");
    let target = target::resolve(&args.backend, args.url.clone()).await?;
    let writer_side = registry::connect(target.url.as_str()).await.context("connecting the registrar side")?;
    // The fleet's sides: one per agent it is spread over (`consul-agents`), else the registrar side.
    let mut fleet_sides = Vec::with_capacity(target.fleet_urls.len());
    for url in &target.fleet_urls {
        fleet_sides.push(registry::connect(url.as_str()).await.context("connecting a fleet side")?);
    }
    let sides: Vec<&Registry> = if fleet_sides.is_empty() { vec![&writer_side] } else { fleet_sides.iter().collect() };
    let reader_side = registry::connect(target.url.as_str()).await.context("connecting the discoverer side")?;
    eprintln!("bench: backend={} url={}", args.backend, redact(&target.url));
    let sizes = if args.sweep.is_empty() { vec![args.instances] } else { args.sweep.clone() };
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for &instances in &sizes {
        let row = match measure::measure(&args, &target, &sides, &writer_side, &reader_side, instances).await {
            Ok(row) => row,
            // A size the backend cannot carry is a result too: the sweep goes on.
            Err(e) if sizes.len() > 1 => {
                eprintln!("bench: {instances} instances failed: {e:#}");
                failures.push(format!("{instances} instances: {e:#}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        println!("{}", row.summary());
        if let Some(problem) = row.problem() {
            failures.push(format!("{instances} instances: {problem}"));
        }
        rows.push(row);
    }
    if !args.sweep.is_empty() {
        let out = args.out();
        let (csv, svg) = (out.with_extension("csv"), out.with_extension("svg"));
        row::write_csv(&csv, &rows)?;
        plot::write_svg(&svg, &format!("registry bench: {}", args.backend), &rows)?;
        eprintln!("bench: wrote {} and {}", csv.display(), svg.display());
    }
    anyhow::ensure!(failures.is_empty(), "the fleet was not carried: {}", failures.join("; "));
    Ok(())
}

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let args = BenchArgs::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("registry-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn node(svc: &str, method: &str) -> ServiceNode {
    GrpcServices::new().service(svc, [method]).map(|g| g.into_node()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    // Test code: a failed expectation panics.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn args(extra: &[&str]) -> BenchArgs {
        BenchArgs::parse_from(std::iter::once("registry-bench").chain(extra.iter().copied()))
    }

    #[test]
    fn ttl_keeps_the_fleet_within_the_write_rate() {
        let a = args(&[]);
        // N / (TTL / 2) <= 400, and never under 2 s.
        assert_eq!(a.ttl_for(100), Duration::from_secs(2));
        assert_eq!(a.ttl_for(1000), Duration::from_secs(5));
        assert_eq!(a.ttl_for(10_000), Duration::from_secs(50));
        assert_eq!(a.ttl_for(10_001), Duration::from_secs(51));
        assert_eq!(args(&["--max-write-rate", "100"]).ttl_for(1000), Duration::from_secs(20));
        assert_eq!(args(&["--ttl", "7"]).ttl_for(10_000), Duration::from_secs(7));
    }
}
