//! Support for the cluster fault scenarios of the backend crates
//! (`registry-etcd/tests/cluster.rs`, `registry-consul/tests/cluster.rs`):
//! a runner that reports a scenario whose cluster or partitions cannot be
//! had as ignored with the reason (a failure under `REGISTRY_TEST_REQUIRE=1`),
//! the lookup loop that measures discovery during a fault, and one
//! greppable line of figures per scenario.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU32;

use conformance::Runner;
use registry_core::store::Store;
use registry_core::{Discovery, Register, Registrar, RetryHooks};
use tokio::task::JoinHandle;

use super::{Unavailable, consul_cluster, etcd_cluster, member, partition};
use conformance::fixtures::{TTL, conf, meta, method, node};

/// How often the lookup loop asks discovery (as the migration test does).
pub const LOOKUP_EVERY: Duration = Duration::from_millis(10);

/// Slack a scenario adds to a documented, timer-driven bound before it
/// fails: the bound is the library's (e.g. "stale 7 s after the last
/// message"), the slack is the machine's. On a loaded 2-core box (CI, or
/// other test binaries building and running at once) tokio timers fire
/// late, the `eventually` poll (20 ms) and the lookup loop run late, and a
/// member's answer can take a scheduling round; measured lateness under that
/// load stays well under a second. Assertions read `bound + TIMER_SLACK`;
/// figures print the bound itself.
pub const TIMER_SLACK: Duration = Duration::from_secs(3);

/// How soon a silent source makes `health()` report it stale, the bound
/// docs/cluster-faults.md documents for every backend: its reader asks for
/// progress (etcd) or probes (Consul, Kubernetes) after 2 s without a
/// message and gives that the request timeout (5 s), and core marks a source
/// silent for its `stale_after` (the same 7 s) stale: 7 s after the last
/// message at most. Asserted with [`TIMER_SLACK`] on top.
pub const STALE_BOUND: Duration = Duration::from_secs(7);

/// How long a member, agent or API server stays silent in a health
/// scenario: longer than [`STALE_BOUND`], so the stale report is seen inside the cut.
pub const SILENT_FOR: Duration = Duration::from_secs(10);

/// How long a scenario keeps watching after the fault (or the heal) for late
/// changes: a lease that expired during the fault shows as a removal up to a
/// TTL later.
pub const OBSERVE_AFTER: Duration = Duration::from_secs(4);

/// Longest a scenario's partition may last before its watchdog heals it (a
/// guard the scenario forgot, or a scenario killed mid-fault); a scenario
/// heals its own cuts long before.
pub const PARTITION_BOUND: Duration = Duration::from_secs(90);

/// What a fault scenario needs from this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A local 3-member etcd cluster.
    EtcdCluster,
    /// A local Consul cluster (3 servers, 2 client agents).
    ConsulCluster,
    /// Silent partitions of cluster members (nftables, root).
    Partitions,
}

impl Need {
    fn check(self) -> Result<(), Unavailable> {
        match self {
            Need::EtcdCluster => etcd_cluster::available(),
            Need::ConsulCluster => consul_cluster::available(),
            Need::Partitions => {
                partition::available()?;
                if member::can_isolate() {
                    Ok(())
                } else {
                    Err(Unavailable::NotApplicable(
                        "partitions of members need root (members run under their own group id)".into(),
                    ))
                }
            }
        }
    }
}

/// A scenario's body.
pub type FaultFn = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send>;

/// One named fault scenario.
pub struct FaultTest {
    /// Test name.
    pub name: &'static str,
    /// What it needs.
    pub needs: &'static [Need],
    /// Its body (run on a multi-threaded tokio runtime of its own).
    pub run: FaultFn,
}

impl FaultTest {
    /// Scenario `name`, which needs `needs` and runs `run`.
    pub fn new<F, Fut>(name: &'static str, needs: &'static [Need], run: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Self { name, needs, run: Box::new(move || Box::pin(run())) }
    }
}

/// How many scenarios of one binary run at once by default. Each starts
/// its own cluster on an address block of its own (eight blocks per kind),
/// and most of a scenario's time is spent waiting out a fault, so they run
/// side by side; `--test-threads` overrides it.
pub const PARALLEL_SCENARIOS: usize = 6;

/// Runs `tests` through the conformance runner (the workspace's one skip
/// rule) with libtest-mimic's command line and returns the exit code; up to
/// [`PARALLEL_SCENARIOS`] at once unless `--test-threads` says otherwise.
pub fn run(tests: Vec<FaultTest>) -> ExitCode {
    // Faults make the library warn on every retry; `RUST_LOG=warn` (or
    // `registry_etcd=debug`, …) shows what happened during one.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .with_ansi(false)
        .with_test_writer()
        .try_init();
    tests
        .into_iter()
        .fold(Runner::new(), |runner, test| {
            let available = test.needs.iter().try_for_each(|need| need.check());
            runner.test(test.name, available, test.run)
        })
        .run_with(parallel_arguments(PARALLEL_SCENARIOS))
}

/// libtest-mimic's command line, with `threads` test threads unless it sets them.
pub fn parallel_arguments(threads: usize) -> conformance::Arguments {
    let mut args = conformance::Arguments::from_args();
    if args.test_threads.is_none() {
        args.test_threads = Some(threads.max(1));
    }
    args
}

/// What the lookup loop saw.
#[derive(Clone, Debug, Default)]
pub struct LookupStats {
    /// Lookups answered with nodes.
    pub answered: u64,
    /// Lookups that failed (no node for the method, not ready).
    pub failed: u64,
    /// Answered lookups whose nodes were not the expected ones.
    pub wrong: u64,
    /// Fewest nodes in an answer (`usize::MAX` before the first).
    pub fewest: usize,
    /// When the last failed or wrong lookup happened.
    pub last_bad: Option<Instant>,
}

impl LookupStats {
    /// Lookups that were not correct (failed or wrong).
    pub fn bad(&self) -> u64 {
        self.failed + self.wrong
    }

    /// All lookups.
    pub fn total(&self) -> u64 {
        self.answered + self.failed
    }
}

/// A lookup of one method every [`LOOKUP_EVERY`], counting answered,
/// failed and wrong answers.
pub struct LookupLoop {
    stats: Arc<Mutex<LookupStats>>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl LookupLoop {
    /// Starts looking up `method` through `discovery`; `correct` judges the
    /// lease ids of an answer (in discovery's order).
    pub fn start(
        discovery: Arc<dyn Discovery>,
        method: &str,
        correct: impl Fn(&[i64]) -> bool + Send + Sync + 'static,
    ) -> Self {
        let stats = Arc::new(Mutex::new(LookupStats { fewest: usize::MAX, ..LookupStats::default() }));
        let stop = Arc::new(AtomicBool::new(false));
        let method = method.to_owned();
        let task = tokio::spawn({
            let stats = Arc::clone(&stats);
            let stop = Arc::clone(&stop);
            async move {
                let mut tick = tokio::time::interval(LOOKUP_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let answer = discovery.get_service(&method);
                    let Ok(mut s) = stats.lock() else { return };
                    match answer {
                        Ok(nodes) if !nodes.is_empty() => {
                            s.answered += 1;
                            s.fewest = s.fewest.min(nodes.len());
                            let leases: Vec<i64> = nodes.iter().map(|n| n.lease_id).collect();
                            if !correct(&leases) {
                                s.wrong += 1;
                                s.last_bad = Some(Instant::now());
                            }
                        }
                        _ => {
                            s.failed += 1;
                            s.fewest = 0;
                            s.last_bad = Some(Instant::now());
                        }
                    }
                }
            }
        });
        Self { stats, stop, task: Some(task) }
    }

    /// The counts so far.
    pub fn stats(&self) -> LookupStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Returns the counts so far and starts counting from zero (one window per phase).
    pub fn take(&self) -> LookupStats {
        self.stats
            .lock()
            .map(|mut s| std::mem::replace(&mut *s, LookupStats { fewest: usize::MAX, ..LookupStats::default() }))
            .unwrap_or_default()
    }

    /// Stops the loop and returns the counts of the current window.
    pub async fn stop(mut self) -> LookupStats {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.stats()
    }
}

impl Drop for LookupLoop {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Prints one line `FIGURES <scenario>: key=value …` (to stdout, which
/// libtest-mimic does not capture), for the figures in the note.
pub fn print_figures(scenario: &str, figures: &[(&str, String)]) {
    let body = figures.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
    println!("FIGURES {scenario}: {body}");
}

/// A duration as seconds with millisecond precision (`1.234s`).
pub fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// What the retry hooks of one instance saw.
#[derive(Debug, Default)]
pub struct HookLog {
    /// `before_retry` calls.
    pub retries: AtomicU32,
    /// The last `after_recovery` call.
    pub recovered_at: Mutex<Option<Instant>>,
    /// `on_give_up` calls.
    pub gave_up: AtomicU32,
}

impl HookLog {
    /// When the keepalive last recovered, if it did.
    pub fn recovered_at(&self) -> Option<Instant> {
        self.recovered_at.lock().ok().and_then(|a| *a)
    }

    fn hooks(self: &Arc<Self>) -> RetryHooks {
        RetryHooks::new()
            .before_retry({
                let log = Arc::clone(self);
                move |_| {
                    log.retries.fetch_add(1, Ordering::SeqCst);
                }
            })
            .after_recovery({
                let log = Arc::clone(self);
                move |_| {
                    if let Ok(mut at) = log.recovered_at.lock() {
                        *at = Some(Instant::now());
                    }
                }
            })
            .on_give_up({
                let log = Arc::clone(self);
                move |_| {
                    log.gave_up.fetch_add(1, Ordering::SeqCst);
                }
            })
    }
}

/// One registered instance with its keepalive task.
pub struct Instance {
    /// Its registrar.
    pub registrar: Registrar,
    /// `sustain_lease` on its own task.
    pub keepalive: JoinHandle<registry_core::Result<()>>,
    /// What its retry hooks saw.
    pub hooks: Arc<HookLog>,
    /// The lease it was installed with.
    pub first_lease: i64,
}

impl Instance {
    /// Its current lease id.
    pub fn lease(&self) -> i64 {
        self.registrar.node().map(|n| n.lease_id).unwrap_or_default()
    }
}

/// Instances of app `fleet` serving [`Fleet::method`] in a namespace and
/// env of their own, each with its keepalive running and retry hooks logged.
pub struct Fleet {
    /// Their namespace.
    pub namespace: String,
    /// Their env.
    pub env: String,
    /// The instances.
    pub instances: Vec<Instance>,
}

impl Fleet {
    /// The method every instance serves.
    pub fn method() -> String {
        method("t.Fleet", "Call")
    }

    /// Installs `count` instances, round-robin over `stores` (each store its
    /// own client, as separate processes have), and starts their keepalives.
    pub async fn start(stores: &[&dyn Store], count: usize, namespace: &str, env: &str) -> anyhow::Result<Self> {
        Self::start_with_ttl(stores, count, namespace, env, TTL).await
    }

    /// Like [`start`](Self::start), with heartbeat TTL `ttl` instead of the suite's.
    pub async fn start_with_ttl(
        stores: &[&dyn Store],
        count: usize,
        namespace: &str,
        env: &str,
        ttl: Duration,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!stores.is_empty(), "a fleet needs a store");
        let conf = conf(namespace).with_ttl_floor(ttl.min(TTL)).with_ttl(ttl);
        let mut instances = Vec::with_capacity(count);
        for i in 0..count {
            let registrar = Registrar::new(stores[i % stores.len()], meta(env, "fleet"), conf.clone())?;
            let hooks = Arc::new(HookLog::default());
            registrar.set_hooks(hooks.hooks());
            let installed = registrar.install(node("t.Fleet", &["Call"])).await?;
            let keepalive = tokio::spawn({
                let r = registrar.clone();
                async move { r.sustain_lease().await }
            });
            instances.push(Instance { registrar, keepalive, hooks, first_lease: installed.lease_id });
        }
        Ok(Self { namespace: namespace.to_owned(), env: env.to_owned(), instances })
    }

    /// The instances' current leases.
    pub fn leases(&self) -> BTreeSet<i64> {
        self.instances.iter().map(Instance::lease).collect()
    }

    /// A judge for [`LookupLoop`]: the answer is exactly the fleet's current leases.
    pub fn judge(self: &Arc<Self>) -> impl Fn(&[i64]) -> bool + Send + Sync + 'static {
        let fleet = Arc::clone(self);
        move |answer: &[i64]| {
            let got: BTreeSet<i64> = answer.iter().copied().collect();
            got.len() == answer.len() && got == fleet.leases()
        }
    }

    /// True when `discovery` answers exactly the fleet's current leases.
    pub fn exactly_in(&self, discovery: &dyn Discovery) -> bool {
        let answer = leases_of(discovery, &Self::method());
        let got: BTreeSet<i64> = answer.iter().copied().collect();
        got.len() == answer.len() && got == self.leases()
    }

    /// Current leases `discovery` does not show.
    pub fn missing_from(&self, discovery: &dyn Discovery) -> usize {
        let seen: BTreeSet<i64> = leases_of(discovery, &Self::method()).into_iter().collect();
        self.leases().iter().filter(|l| !seen.contains(l)).count()
    }

    /// Instances registered again under a new lease since they were installed.
    pub fn reregistered(&self) -> usize {
        self.instances.iter().filter(|i| i.lease() != i.first_lease).count()
    }

    /// `before_retry` calls over all instances.
    pub fn retries(&self) -> u32 {
        self.instances.iter().map(|i| i.hooks.retries.load(Ordering::SeqCst)).sum()
    }

    /// Instances whose retry hooks fired.
    pub fn retried(&self) -> usize {
        self.instances.iter().filter(|i| i.hooks.retries.load(Ordering::SeqCst) > 0).count()
    }

    /// `on_give_up` calls over all instances.
    pub fn gave_up(&self) -> u32 {
        self.instances.iter().map(|i| i.hooks.gave_up.load(Ordering::SeqCst)).sum()
    }

    /// Instances whose keepalive task ended.
    pub fn keepalives_ended(&self) -> usize {
        self.instances.iter().filter(|i| i.keepalive.is_finished()).count()
    }

    /// Uninstalls every instance and waits for the keepalives.
    pub async fn stop(self) {
        for instance in &self.instances {
            let _ = instance.registrar.uninstall().await;
        }
        for instance in self.instances {
            let _ = instance.keepalive.await;
        }
    }
}

/// Lease ids of the nodes serving `method`, in discovery's order (empty on an error).
pub fn leases_of(discovery: &dyn Discovery, method: &str) -> Vec<i64> {
    discovery.get_service(method).map(|nodes| nodes.iter().map(|n| n.lease_id).collect()).unwrap_or_default()
}

/// A probe instance (app `probe`, method `/t.Probe/Ping`) written during or
/// after a fault to see when discovery follows changes again.
pub struct Probe {
    /// Its registrar.
    pub registrar: Registrar,
    keepalive: JoinHandle<registry_core::Result<()>>,
}

impl Probe {
    /// Installs the probe through `store`, retrying every 50 ms for up to
    /// `within` (the store may be failing over), and keeps it alive.
    pub async fn register(store: &dyn Store, namespace: &str, env: &str, within: Duration) -> anyhow::Result<Self> {
        let registrar = Registrar::new(store, meta(env, "probe"), conf(namespace))?;
        let start = Instant::now();
        loop {
            match registrar.install(node("t.Probe", &["Ping"])).await {
                Ok(_) => break,
                Err(e) if start.elapsed() < within => {
                    tracing::debug!(%e, "probe install failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => anyhow::bail!("probe install failed for {within:?}: {e}"),
            }
        }
        let keepalive = tokio::spawn({
            let r = registrar.clone();
            async move { r.sustain_lease().await }
        });
        Ok(Self { registrar, keepalive })
    }

    /// True when `discovery` shows the probe's current lease.
    pub fn visible(&self, discovery: &dyn Discovery) -> bool {
        let lease = self.registrar.node().map(|n| n.lease_id).unwrap_or_default();
        discovery.get_service("/t.Probe/Ping").is_ok_and(|nodes| nodes.iter().any(|n| n.lease_id == lease))
    }

    /// Uninstalls it.
    pub async fn stop(self) {
        let _ = self.registrar.uninstall().await;
        let _ = self.keepalive.await;
    }
}
