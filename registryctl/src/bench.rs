//! `registryctl bench`: a fleet of live instances on a backend, and what it
//! costs — heartbeats kept over 3×TTL, a separate discoverer's cold start,
//! CPU, memory and bytes read, propagation, crash expiry and lookup latency.
//!
//! - `--instances N`: one size, one summary line (`key=value`);
//! - `--sweep 100,1000,10000`: each size in turn, then a CSV and an SVG plot
//!   of the cost curves (`--out PREFIX`: `PREFIX.csv`, `PREFIX.svg`);
//! - `--plot A.csv,B.csv --out PREFIX`: one SVG of several backends' CSVs.
//!
//! The fleet's registrars are the library's own ([`registry::Registrar`]),
//! sharing one connection, each with its keepalive task; the TTL is chosen
//! so that the fleet writes at most `--max-write-rate` heartbeats a second.
//! The separate discoverer runs in a process of its own (see [`observe`]).
//! The bench fails (after printing) when a heartbeat failed, an instance went
//! down, or the separate discoverer did not see the whole fleet.

mod observe;
mod plot;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use clap::Args;
use futures::StreamExt;
use futures::stream::{BoxStream, FuturesUnordered};
use hdrhistogram::Histogram;
use registry::store::{Scope, StoreWriter};
use registry::{
    Discovery, DiscoveryEvent, GrpcServices, Meta, Register, Registrar, Registry, RetryHooks, ServiceConf, ServiceNode,
};
use tokio::io::AsyncBufReadExt;

use crate::servers;
use registry::options::redact;

/// The URL of the backend, handed to the `--observe` child (kept out of its argv).
const URL_ENV: &str = "REGISTRYCTL_BENCH_URL";
/// Apps of the fleet are named `fleet-<i>`.
pub(crate) const FLEET_PREFIX: &str = "fleet-";

/// Options of `registryctl bench`.
#[derive(Args, Debug)]
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

const ENV: &str = "bench";
const PROBE_APP: &str = "probe";
/// TTL of the probe instances (propagation and crash expiry), whatever the fleet's.
const PROBE_TTL: Duration = Duration::from_secs(2);
const VISIBLE_WITHIN: Duration = Duration::from_secs(30);
/// Attempts of one fleet member's install.
const INSTALL_ATTEMPTS: u32 = 5;

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

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
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
            rows.extend(plot::read_csv(csv)?);
        }
        let svg = args.out().with_extension("svg");
        plot::write_svg(&svg, "registry: cost against instances in one env", &rows)?;
        eprintln!("bench: wrote {}", svg.display());
        return Ok(());
    }
    anyhow::ensure!(args.samples >= 1, "--samples must be at least 1");
    let target = servers::resolve(&args.backend, args.url.clone()).await?;
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
        let row = match measure(&args, &target, &sides, &writer_side, &reader_side, instances).await {
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
        plot::write_csv(&csv, &rows)?;
        plot::write_svg(&svg, &format!("registry bench: {}", args.backend), &rows)?;
        eprintln!("bench: wrote {} and {}", csv.display(), svg.display());
    }
    anyhow::ensure!(failures.is_empty(), "the fleet was not carried: {}", failures.join("; "));
    Ok(())
}

/// One fleet size's results (a line of the CSV).
#[derive(Clone, Debug, Default)]
pub struct Row {
    backend: String,
    instances: usize,
    ttl_s: f64,
    /// Time to install the whole fleet, s.
    install_s: f64,
    /// Fleet installs that failed and were tried again.
    install_retries: u64,
    /// Heartbeat writes per second the fleet made during the hold.
    writes_per_s: f64,
    /// Heartbeats that failed (keepalive retries), install to end.
    failed_heartbeats: u64,
    /// Fewest instances the separate discoverer saw during the hold.
    min_visible: usize,
    /// `Down` events the separate discoverer saw during the hold.
    downs: u64,
    /// Median cold start of the separate discoverer, ms.
    cold_start_ms: f64,
    cold_start_min_ms: f64,
    cold_start_max_ms: f64,
    /// Discovery events (`Up`/`Down`/`Reset`: changes of the view, not the
    /// store events behind them) per second the separate discoverer delivered during the hold.
    disc_events_per_s: f64,
    /// CPU of the separate discoverer during the hold, % of one core.
    disc_cpu_pct: f64,
    /// RSS of the separate discoverer's process at the end of the hold, MiB.
    disc_rss_mib: f64,
    disc_hwm_mib: f64,
    /// Bytes the separate discoverer received (TCP) per heartbeat write during the hold.
    bytes_read_per_write: f64,
    /// Bytes the separate discoverer received (TCP) per probe install or
    /// uninstall, beyond its rate during the hold.
    bytes_per_change: f64,
    install_p50_ms: f64,
    install_p99_ms: f64,
    uninstall_p50_ms: f64,
    uninstall_p99_ms: f64,
    /// p99 of install→visible and uninstall→gone together.
    propagation_p99_ms: f64,
    expiry_ms: f64,
    lookup_ns: f64,
    /// CPU of the bench process (the fleet and the propagation discoverer) during the hold, % of one core.
    fleet_cpu_pct: f64,
    load1_before: f64,
    load1_after: f64,
}

macro_rules! row_fields {
    ($m:ident) => {
        $m!(
            instances,
            ttl_s,
            install_s,
            install_retries,
            writes_per_s,
            failed_heartbeats,
            min_visible,
            downs,
            cold_start_ms,
            cold_start_min_ms,
            cold_start_max_ms,
            disc_events_per_s,
            disc_cpu_pct,
            disc_rss_mib,
            disc_hwm_mib,
            bytes_read_per_write,
            bytes_per_change,
            install_p50_ms,
            install_p99_ms,
            uninstall_p50_ms,
            uninstall_p99_ms,
            propagation_p99_ms,
            expiry_ms,
            lookup_ns,
            fleet_cpu_pct,
            load1_before,
            load1_after
        )
    };
}

impl Row {
    /// Column names after `backend`.
    fn names() -> Vec<&'static str> {
        macro_rules! names_of {
            ($($f:ident),*) => { vec![$(stringify!($f)),*] };
        }
        row_fields!(names_of)
    }

    fn csv_header() -> String {
        format!("backend,{}", Self::names().join(","))
    }

    fn values(&self) -> Vec<String> {
        macro_rules! values_of {
            ($($f:ident),*) => { vec![$(fmt_value(&self.$f)),*] };
        }
        row_fields!(values_of)
    }

    fn to_csv(&self) -> String {
        let mut line = self.backend.clone();
        for v in self.values() {
            line.push(',');
            line.push_str(&v);
        }
        line
    }

    fn summary(&self) -> String {
        let names = Self::names();
        let mut line = format!("backend={}", self.backend);
        for (name, value) in names.into_iter().zip(self.values()) {
            line.push_str(&format!(" {name}={value}"));
        }
        line
    }

    fn from_csv(header: &[&str], line: &str) -> anyhow::Result<Self> {
        let mut row = Row::default();
        for (name, value) in header.iter().zip(line.split(',')) {
            macro_rules! set {
                ($($f:ident),*) => {
                    match *name {
                        "backend" => row.backend = value.to_owned(),
                        $(stringify!($f) => row.$f = parse_value(value).with_context(|| format!("column {name}"))?,)*
                        _ => {}
                    }
                };
            }
            row_fields!(set);
        }
        Ok(row)
    }

    /// Why this size did not carry its fleet, if it did not.
    fn problem(&self) -> Option<String> {
        let mut problems = Vec::new();
        if self.failed_heartbeats > 0 {
            problems.push(format!("{} heartbeats failed", self.failed_heartbeats));
        }
        if self.downs > 0 {
            problems.push(format!("{} instances went down", self.downs));
        }
        if self.min_visible < self.instances {
            problems.push(format!("the separate discoverer saw {} of {}", self.min_visible, self.instances));
        }
        (!problems.is_empty()).then(|| problems.join(", "))
    }
}

/// A CSV/summary value: integers as such, reals with 2 decimals, NaN as `NaN`.
trait Value: Sized {
    fn fmt(&self) -> String;
    fn parse(s: &str) -> Option<Self>;
}

impl Value for f64 {
    fn fmt(&self) -> String {
        if self.is_finite() { format!("{self:.2}") } else { "NaN".into() }
    }
    fn parse(s: &str) -> Option<Self> {
        s.trim().parse().ok()
    }
}

impl Value for u64 {
    fn fmt(&self) -> String {
        self.to_string()
    }
    fn parse(s: &str) -> Option<Self> {
        s.trim().parse().ok()
    }
}

impl Value for usize {
    fn fmt(&self) -> String {
        self.to_string()
    }
    fn parse(s: &str) -> Option<Self> {
        s.trim().parse().ok()
    }
}

fn fmt_value<T: Value>(v: &T) -> String {
    v.fmt()
}

fn parse_value<T: Value>(s: &str) -> anyhow::Result<T> {
    T::parse(s).with_context(|| format!("not a number: {s:?}"))
}

/// Counts the fleet's heartbeat writes.
#[derive(Default)]
struct Writes {
    renewed: AtomicU64,
}

/// A [`StoreWriter`] that counts successful renewals.
struct CountingWriter {
    inner: Arc<dyn StoreWriter>,
    writes: Arc<Writes>,
}

#[async_trait]
impl StoreWriter for CountingWriter {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn grant(&self, ttl: Duration) -> registry::Result<i64> {
        self.inner.grant(ttl).await
    }
    async fn put(&self, node: &ServiceNode, ttl: Duration) -> registry::Result<()> {
        self.inner.put(node, ttl).await
    }
    async fn renew(&self, node: &ServiceNode, ttl: Duration) -> registry::Result<()> {
        let result = self.inner.renew(node, ttl).await;
        if result.is_ok() {
            self.writes.renewed.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
    async fn remove(&self, node: &ServiceNode) -> registry::Result<()> {
        self.inner.remove(node).await
    }
    fn needs_heartbeats(&self) -> bool {
        self.inner.needs_heartbeats()
    }
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// A registrar of the fleet and its keepalive task.
type Member = (Arc<dyn Register>, tokio::task::JoinHandle<registry::Result<()>>);

/// The fleet: its registrars and their keepalive tasks.
struct Fleet {
    members: Vec<Member>,
    writes: Arc<Writes>,
    failed: Arc<AtomicU64>,
    /// Installs that failed and were tried again while the fleet started.
    install_retries: u64,
}

impl Fleet {
    async fn start(
        args: &BenchArgs,
        target: &servers::Target,
        sides: &[&Registry],
        conf: &ServiceConf,
        instances: usize,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!sides.is_empty(), "a fleet needs a side to register on");
        let writes = Arc::new(Writes::default());
        let failed = Arc::new(AtomicU64::new(0));
        let install_retries = Arc::new(AtomicU64::new(0));
        let apps = (instances / 10).max(8);
        let scope = Scope::new(conf.namespace.clone(), ENV);
        let mut members = Vec::with_capacity(instances);
        let mut pending = FuturesUnordered::new();
        for i in 0..instances {
            let meta = Meta::new(ENV, format!("{FLEET_PREFIX}{}", i % apps), "v1");
            let side = sides[i % sides.len()];
            let registrar: Arc<dyn Register> = if target.pods() {
                target.registrar(side, meta, conf.clone()).await?.registrar
            } else {
                let writer = CountingWriter { inner: side.store().writer(&scope)?, writes: Arc::clone(&writes) };
                Arc::new(Registrar::from_writer(Arc::new(writer), meta, conf.clone())?)
            };
            let counter = Arc::clone(&failed);
            registrar.set_hooks(RetryHooks::new().before_retry(move |_| {
                counter.fetch_add(1, Ordering::Relaxed);
            }));
            let method = format!("M{}", i % apps);
            let retried = Arc::clone(&install_retries);
            pending.push(async move {
                // An install that fails is tried again, as a restarting process would (counted).
                let mut attempt = 1;
                loop {
                    match registrar.install(node("fleet.Svc", &method)).await {
                        Ok(_) => return Ok(registrar),
                        Err(e) if attempt < INSTALL_ATTEMPTS => {
                            tracing::warn!(error = %e, attempt, "fleet install failed; trying again");
                            retried.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                            attempt += 1;
                        }
                        Err(e) => return Err(anyhow::Error::new(e).context("installing the fleet")),
                    }
                }
            });
            while pending.len() >= args.concurrency.max(1) {
                if let Some(installed) = pending.next().await {
                    members.push(keep(installed?));
                }
            }
        }
        while let Some(installed) = pending.next().await {
            members.push(keep(installed?));
        }
        Ok(Self { members, writes, failed, install_retries: install_retries.load(Ordering::Relaxed) })
    }

    async fn stop(self, concurrency: usize) {
        let mut removals = FuturesUnordered::new();
        for (registrar, keepalive) in self.members {
            removals.push(async move {
                let _ = registrar.uninstall().await;
                let _ = keepalive.await;
            });
            while removals.len() >= concurrency.max(1) {
                removals.next().await;
            }
        }
        while removals.next().await.is_some() {}
    }
}

fn keep(registrar: Arc<dyn Register>) -> Member {
    let keepalive = tokio::spawn({
        let r = Arc::clone(&registrar);
        async move { r.sustain_lease().await }
    });
    (registrar, keepalive)
}

/// The separate discoverer, running.
enum Observer {
    Child {
        child: Box<tokio::process::Child>,
        lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    },
    Thread {
        ready: Option<tokio::sync::oneshot::Receiver<()>>,
        held: Option<tokio::sync::oneshot::Receiver<()>>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        done: tokio::sync::oneshot::Receiver<anyhow::Result<observe::Observed>>,
    },
}

impl Observer {
    fn start(args: &BenchArgs, url: &str, namespace: &str, ttl: Duration, hold: Duration) -> anyhow::Result<Self> {
        if url.starts_with("memory://") {
            // The embedded store lives in this process: observe from a thread of its own.
            let (ready_tx, ready) = tokio::sync::oneshot::channel();
            let (held_tx, held) = tokio::sync::oneshot::channel();
            let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let (done_tx, done) = tokio::sync::oneshot::channel();
            let plan =
                observe::Plan { env: ENV.to_owned(), conf: conf(namespace, ttl), cold_starts: args.cold_starts, hold };
            let url = url.to_owned();
            std::thread::Builder::new().name("bench-observer".into()).spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("observer runtime")
                    .and_then(|rt| {
                        rt.block_on(observe::observe(
                            || async move { Ok(registry::connect(url.as_str()).await?) },
                            plan,
                            observe::Scope::Thread,
                            observe::Signals {
                                ready: move || {
                                    let _ = ready_tx.send(());
                                },
                                held: move || {
                                    let _ = held_tx.send(());
                                },
                                stop: async move {
                                    let _ = stop_rx.await;
                                },
                            },
                        ))
                    });
                let _ = done_tx.send(result);
            })?;
            return Ok(Observer::Thread { ready: Some(ready), held: Some(held), stop: Some(stop), done });
        }
        // This very binary, even when a rebuild replaced its file meanwhile.
        let own = std::path::Path::new("/proc/self/exe");
        let exe = if own.exists() {
            own.to_path_buf()
        } else {
            std::env::current_exe().context("locating registryctl for the separate discoverer")?
        };
        let mut child = tokio::process::Command::new(exe)
            .args(["bench", "--observe", "--backend", &args.backend, "--namespace", namespace, "--env", ENV])
            .args(["--ttl", &ttl.as_secs().to_string(), "--hold", &hold.as_secs().to_string()])
            .args(["--cold-starts", &args.cold_starts.to_string()])
            .env(URL_ENV, url)
            .stdout(Stdio::piped())
            .stdin(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the separate discoverer")?;
        let stdout = child.stdout.take().context("separate discoverer's stdout")?;
        Ok(Observer::Child { child: Box::new(child), lines: tokio::io::BufReader::new(stdout).lines() })
    }

    /// Waits until the hold starts (cold starts done).
    async fn ready(&mut self) -> anyhow::Result<()> {
        match self {
            Observer::Child { lines, .. } => Self::line(lines, "ready").await,
            Observer::Thread { ready, .. } => {
                if let Some(ready) = ready.take() {
                    ready.await.context("the separate discoverer ended before it was ready")?;
                }
                Ok(())
            }
        }
    }

    /// Waits until the hold ended.
    async fn held(&mut self) -> anyhow::Result<()> {
        match self {
            Observer::Child { lines, .. } => Self::line(lines, "held").await,
            Observer::Thread { held, .. } => {
                if let Some(held) = held.take() {
                    held.await.context("the separate discoverer ended in its hold")?;
                }
                Ok(())
            }
        }
    }

    async fn line(
        lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
        want: &str,
    ) -> anyhow::Result<()> {
        loop {
            match lines.next_line().await? {
                Some(line) if line.trim() == want => return Ok(()),
                Some(_) => {}
                None => anyhow::bail!("the separate discoverer ended before `{want}`"),
            }
        }
    }

    /// Tells the observer the probes are done.
    async fn stop(&mut self) -> anyhow::Result<()> {
        match self {
            Observer::Child { child, .. } => {
                use tokio::io::AsyncWriteExt;
                if let Some(mut stdin) = child.stdin.take() {
                    stdin.write_all(b"stop\n").await?;
                }
                Ok(())
            }
            Observer::Thread { stop, .. } => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
                Ok(())
            }
        }
    }

    async fn done(self) -> anyhow::Result<observe::Observed> {
        match self {
            Observer::Child { mut child, mut lines } => {
                let mut report = None;
                while let Some(line) = lines.next_line().await? {
                    if let Some(json) = line.strip_prefix("done ") {
                        report = Some(observe::Observed::from_json(&serde_json::from_str(json)?)?);
                    }
                }
                let status = child.wait().await?;
                anyhow::ensure!(status.success(), "the separate discoverer failed ({status})");
                report.context("the separate discoverer printed no report")
            }
            Observer::Thread { done, .. } => done.await.context("the observer thread ended")?,
        }
    }
}

async fn measure(
    args: &BenchArgs,
    target: &servers::Target,
    fleet_sides: &[&Registry],
    writer_side: &Registry,
    reader_side: &Registry,
    instances: usize,
) -> anyhow::Result<Row> {
    let namespace = format!(
        "bench-{:x}-{}-{instances}",
        std::process::id(),
        std::time::UNIX_EPOCH.elapsed().map(|d| d.as_secs() % 100_000).unwrap_or(0)
    );
    target.prepare_namespace(&namespace).await?;
    let ttl = args.ttl_for(instances);
    let hold = args.hold.map_or(ttl * 3, Duration::from_secs);
    let fleet_conf = conf(&namespace, ttl);
    let mut row = Row { backend: args.backend.clone(), instances, ttl_s: ttl.as_secs_f64(), ..Row::default() };
    row.load1_before = load1();
    eprintln!(
        "bench: {instances} instances, ttl {ttl:?} (~{:.0} heartbeats/s), hold {hold:?}, namespace {namespace}",
        instances as f64 / (ttl.as_secs_f64() / 2.0)
    );

    let started = Instant::now();
    let fleet = Fleet::start(args, target, fleet_sides, &fleet_conf, instances).await?;
    row.install_s = started.elapsed().as_secs_f64();
    row.install_retries = fleet.install_retries;
    eprintln!("bench: fleet installed in {:.1} s", row.install_s);

    // Cold starts and the hold, in the separate discoverer.
    let mut observer = Observer::start(args, &target.url, &namespace, ttl, hold)?;
    observer.ready().await?;
    let renewed_before = fleet.writes.renewed.load(Ordering::Relaxed);
    let cpu_before = observe::cpu_seconds(observe::Scope::Process).unwrap_or(f64::NAN);
    let hold_start = Instant::now();
    observer.held().await?;
    let held = hold_start.elapsed().as_secs_f64();
    let fleet_cpu = observe::cpu_seconds(observe::Scope::Process).unwrap_or(f64::NAN) - cpu_before;
    let writes = fleet.writes.renewed.load(Ordering::Relaxed) - renewed_before;

    // Propagation, with the fleet live (the separate discoverer counts the bytes it receives meanwhile).
    let probes = probe(args, target, writer_side, reader_side, &namespace, &fleet_conf, &mut row).await;
    observer.stop().await?;
    let observed = observer.done().await?;
    probes?;
    row.writes_per_s = writes as f64 / held;
    row.min_visible = observed.min_visible.min(observed.visible_at_start);
    row.downs = observed.downs;
    row.cold_start_ms = observed.cold_start_median_ms();
    row.cold_start_min_ms = observed.cold_start_ms.iter().copied().fold(f64::INFINITY, f64::min);
    row.cold_start_max_ms = observed.cold_start_ms.iter().copied().fold(0.0, f64::max);
    row.disc_events_per_s = observed.events as f64 / observed.hold_s;
    row.disc_cpu_pct = observed.cpu_s / observed.hold_s * 100.0;
    row.disc_rss_mib = if observed.rss_kib > 0 { observed.rss_kib as f64 / 1024.0 } else { f64::NAN };
    row.disc_hwm_mib = if observed.hwm_kib > 0 { observed.hwm_kib as f64 / 1024.0 } else { f64::NAN };
    row.bytes_read_per_write =
        if writes > 0 && observed.read_bytes > 0 { observed.read_bytes as f64 / writes as f64 } else { f64::NAN };
    // The bench process: the fleet (and, for memory, the observer thread too).
    row.fleet_cpu_pct =
        (fleet_cpu - if target.url.starts_with("memory://") { observed.cpu_s } else { 0.0 }) / held * 100.0;
    eprintln!(
        "bench: cold start median {:.0} ms ({:?}), hold {:.0} s: min visible {}/{instances}, downs {}, discoverer cpu {:.1}%",
        row.cold_start_ms, observed.cold_start_ms, observed.hold_s, row.min_visible, row.downs, row.disc_cpu_pct
    );

    // Each sample installs and uninstalls; the crash-expiry probe installs and expires.
    let changes = (2 * args.samples + 2) as f64;
    let baseline = observed.read_bytes as f64 / observed.hold_s * observed.probe_s;
    row.bytes_per_change =
        if observed.probe_bytes > 0 { (observed.probe_bytes as f64 - baseline).max(0.0) / changes } else { f64::NAN };
    row.failed_heartbeats = fleet.failed.load(Ordering::Relaxed);
    row.load1_after = load1();
    fleet.stop(args.concurrency).await;
    Ok(row)
}

/// Install→visible and uninstall→gone of a probe instance, its crash expiry
/// and the lookup latency, all with the fleet live; into `row`.
async fn probe(
    args: &BenchArgs,
    target: &servers::Target,
    writer_side: &Registry,
    reader_side: &Registry,
    namespace: &str,
    fleet_conf: &ServiceConf,
    row: &mut Row,
) -> anyhow::Result<()> {
    let probe_conf = conf(namespace, PROBE_TTL);
    let discovery = reader_side.discoverer(ENV, fleet_conf.clone())?;
    discovery.watcher().await.context("starting discovery")?;
    let mut events = discovery.events();
    let mut installs = Histogram::<u64>::new(3)?;
    let mut uninstalls = Histogram::<u64>::new(3)?;
    let mut both = Histogram::<u64>::new(3)?;
    let probe = target.registrar(writer_side, Meta::new(ENV, PROBE_APP, "v1"), probe_conf.clone()).await?.registrar;
    for _ in 0..args.samples {
        let start = Instant::now();
        let installed = probe.install(node("probe.Svc", "Ping")).await?;
        wait_for(&mut events, &*discovery, installed.lease_id, true).await?;
        let took = micros(start.elapsed());
        installs.record(took)?;
        both.record(took)?;
        let start = Instant::now();
        probe.uninstall().await?;
        wait_for(&mut events, &*discovery, installed.lease_id, false).await?;
        let took = micros(start.elapsed());
        uninstalls.record(took)?;
        both.record(took)?;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    row.install_p50_ms = ms(installs.value_at_quantile(0.5));
    row.install_p99_ms = ms(installs.value_at_quantile(0.99));
    row.uninstall_p50_ms = ms(uninstalls.value_at_quantile(0.5));
    row.uninstall_p99_ms = ms(uninstalls.value_at_quantile(0.99));
    row.propagation_p99_ms = ms(both.value_at_quantile(0.99));

    // Crash expiry: keepalive stops without uninstall.
    let crashy_instance = target.registrar(writer_side, Meta::new(ENV, PROBE_APP, "v1"), probe_conf.clone()).await?;
    let crashy = Arc::clone(&crashy_instance.registrar);
    let installed = crashy.install(node("probe.Svc", "Ping")).await?;
    let keepalive = tokio::spawn({
        let r = Arc::clone(&crashy);
        async move { r.sustain_lease().await }
    });
    wait_for(&mut events, &*discovery, installed.lease_id, true).await?;
    tokio::time::sleep(PROBE_TTL).await;
    keepalive.abort();
    let crashed = Instant::now();
    target.crashed(&crashy_instance).await?;
    wait_for(&mut events, &*discovery, installed.lease_id, false).await?;
    row.expiry_ms = crashed.elapsed().as_secs_f64() * 1e3;

    // Lookup: median over rounds of a tight loop.
    row.lookup_ns = lookup_median_ns(&*discovery, "/fleet.Svc/M7")?;
    drop(events);
    discovery.unwatch();
    Ok(())
}

fn node(svc: &str, method: &str) -> ServiceNode {
    GrpcServices::new().service(svc, [method]).map(|g| g.into_node()).unwrap_or_default()
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Whether the probe's instance `lease` is in the discovery's view.
fn probe_present(discovery: &dyn Discovery, lease: i64) -> bool {
    discovery.get_app(PROBE_APP).is_ok_and(|nodes| nodes.iter().any(|n| n.lease_id == lease))
}

/// Waits for the probe's `Up` (or `Down`) event; after a `Reset` (the
/// subscriber fell behind) the view itself answers.
async fn wait_for(
    events: &mut BoxStream<'static, DiscoveryEvent>,
    discovery: &dyn Discovery,
    lease: i64,
    up: bool,
) -> anyhow::Result<()> {
    let found = tokio::time::timeout(VISIBLE_WITHIN, async {
        while let Some(event) = events.next().await {
            match (&event, up) {
                (DiscoveryEvent::Up { node, .. }, true) | (DiscoveryEvent::Down { node, .. }, false)
                    if node.lease_id == lease && node.meta.app_id == PROBE_APP =>
                {
                    return true;
                }
                (DiscoveryEvent::Reset, _) if probe_present(discovery, lease) == up => return true,
                _ => {}
            }
        }
        false
    })
    .await;
    anyhow::ensure!(
        matches!(found, Ok(true)),
        "probe lease {lease} not seen {} within {VISIBLE_WITHIN:?}",
        if up { "up" } else { "down" }
    );
    Ok(())
}

fn lookup_median_ns(discovery: &dyn Discovery, method: &str) -> anyhow::Result<f64> {
    if discovery.get_service(method).is_err() {
        return Ok(f64::NAN);
    }
    const CALLS: u32 = 200_000;
    let rounds: Vec<f64> = (0..11)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..CALLS {
                std::hint::black_box(discovery.get_service(std::hint::black_box(method)).ok());
            }
            start.elapsed().as_nanos() as f64 / f64::from(CALLS)
        })
        .collect();
    Ok(observe::median(&rounds))
}

#[cfg(test)]
mod tests {
    // Test code: a failed expectation panics.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn args(extra: &[&str]) -> BenchArgs {
        Cli::parse_from(std::iter::once("bench").chain(extra.iter().copied())).bench
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

    #[test]
    fn a_row_survives_its_csv_line() {
        let row = Row {
            backend: "etcd".into(),
            instances: 10_000,
            ttl_s: 50.0,
            failed_heartbeats: 3,
            min_visible: 9_999,
            cold_start_ms: 253.32,
            disc_rss_mib: f64::NAN,
            ..Row::default()
        };
        let header = Row::csv_header();
        let header: Vec<&str> = header.split(',').collect();
        let back = Row::from_csv(&header, &row.to_csv()).unwrap();
        assert_eq!(back.to_csv(), row.to_csv());
        assert_eq!(back.instances, 10_000);
        assert_eq!(back.failed_heartbeats, 3);
        assert!(back.disc_rss_mib.is_nan());
        assert!(row.summary().starts_with("backend=etcd instances=10000 ttl_s=50.00"));
    }

    #[test]
    fn a_fleet_not_carried_is_a_problem() {
        let carried = Row { instances: 10, min_visible: 10, ..Row::default() };
        assert_eq!(carried.problem(), None);
        let lost = Row { instances: 10, min_visible: 9, downs: 1, failed_heartbeats: 2, ..Row::default() };
        let problem = lost.problem().unwrap();
        assert!(problem.contains("2 heartbeats failed"), "{problem}");
        assert!(problem.contains("1 instances went down"), "{problem}");
        assert!(problem.contains("saw 9 of 10"), "{problem}");
    }
}
