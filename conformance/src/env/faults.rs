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

use libtest_mimic::{Arguments, Failed, Trial};
use registry_core::Discovery;

use super::{Unavailable, consul_cluster, etcd_cluster, member, partition, required};

/// How often the lookup loop asks discovery (as the migration test does).
pub const LOOKUP_EVERY: Duration = Duration::from_millis(10);

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
pub type FaultFn = fn() -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// One named fault scenario.
pub struct FaultTest {
    /// Test name.
    pub name: &'static str,
    /// What it needs.
    pub needs: &'static [Need],
    /// Its body (run on a multi-threaded tokio runtime of its own).
    pub run: FaultFn,
}

/// Runs `tests` with libtest-mimic's command line and returns the exit code.
pub fn run(tests: Vec<FaultTest>) -> ExitCode {
    let args = Arguments::from_args();
    // Faults make the library warn on every retry; `RUST_LOG=warn` (or
    // `registry_etcd=debug`, …) shows what happened during one.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .with_ansi(false)
        .with_test_writer()
        .try_init();
    let trials = tests
        .into_iter()
        .map(|test| {
            let missing = test.needs.iter().find_map(|need| need.check().err().map(|e| e.to_string()));
            let body = test.run;
            match missing {
                Some(reason) if !required() => {
                    eprintln!("SKIPPING {}: {reason} (REGISTRY_TEST_REQUIRE=1 turns this into a failure)", test.name);
                    Trial::test(test.name, || Ok(()))
                        .with_ignored_flag(true)
                        .with_kind(format!("unavailable: {reason}"))
                }
                Some(reason) => Trial::test(test.name, move || Err(Failed::from(reason))),
                None => Trial::test(test.name, move || {
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
                    runtime.block_on(body()).map_err(|e| Failed::from(format!("{e:#}")))
                }),
            }
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
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
