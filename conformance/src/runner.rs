//! [`Runner`]: turns backends × scenarios, and a crate's own tests that need
//! a server, into one libtest-mimic run with one skip rule.
//!
//! One tokio runtime serves the whole run (clients keep connections on the
//! runtime that made them), the shared server of each backend is started once
//! and stopped at the end, and each scenario that stops the server gets a
//! server of its own.

use std::future::Future;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use tokio::runtime::Runtime;
use tokio::sync::OnceCell;

use crate::scenarios::{self, Needs};
use crate::{Backend, ServerUse};
use crate::{Unavailable, required};

/// Default parallelism: scenarios mostly wait on timers and servers.
const DEFAULT_THREADS: usize = 8;

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime for the suite")
    })
}

type Cleanup = Box<dyn FnOnce() + Send>;
/// The after-suite check of one suite: `Ok(line)` when its scenario
/// namespaces are empty (or it cannot tell, said so), `Err(line)` otherwise.
type LeftoverCheck = Box<dyn FnOnce() -> Result<String, String> + Send>;

/// How long the after-suite check waits for a namespace to empty: removals
/// that a store applies late (a Consul session invalidated after its check
/// went) and records of crashed instances expiring (TTL 2 s).
const LEFTOVER_WAIT: Duration = Duration::from_secs(10);

/// Collects suites and tests and runs them.
#[derive(Default)]
pub struct Runner {
    trials: Vec<Trial>,
    cleanups: Vec<Cleanup>,
    leftover_checks: Vec<LeftoverCheck>,
    has_suite: bool,
}

impl Runner {
    /// An empty run.
    ///
    /// Logs go to stderr only when `RUST_LOG` asks for them (libtest-mimic
    /// does not capture output, and faults make clients log on every retry).
    pub fn new() -> Self {
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_test_writer().try_init();
        }
        Self::default()
    }

    /// Adds one of a crate's own tests (not a shared scenario). `body` runs on
    /// a tokio runtime of its own; an `Err` or a panic fails the test.
    ///
    /// `available` is the answer of the cheap check for what the test needs,
    /// e.g. `registry_testenv::etcd::available()` (`Ok(())` for a test that
    /// needs nothing). When it is an error, the test is reported as ignored
    /// with the reason — or, under `REGISTRY_TEST_REQUIRE=1`, fails with it.
    pub fn test<F, Fut>(mut self, name: impl Into<String>, available: Result<(), Unavailable>, body: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + 'static,
    {
        let name = name.into();
        let trial = match available.err().map(|e| e.to_string()) {
            Some(reason) if required() => Trial::test(name, move || {
                Err(Failed::from(format!("server unavailable and REGISTRY_TEST_REQUIRE=1: {reason}")))
            }),
            Some(reason) => {
                eprintln!("SKIPPING {name}: {reason} (REGISTRY_TEST_REQUIRE=1 turns this into a failure)");
                Trial::test(name, || Ok(())).with_ignored_flag(true).with_kind(format!("no server: {reason}"))
            }
            None => Trial::test(name, move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
                runtime.block_on(body()).map_err(|e| Failed::from(format!("{e:#}")))
            }),
        };
        self.trials.push(trial);
        self
    }

    /// Like [`test`](Runner::test), but ignored unless the command line asks
    /// for ignored tests (`-- --ignored`): for slow tests (scale) that
    /// `scripts/test.sh` runs on request. `why` is shown next to the name.
    pub fn test_ignored<F, Fut>(
        self,
        name: impl Into<String>,
        why: &str,
        available: Result<(), Unavailable>,
        body: F,
    ) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + 'static,
    {
        let mut runner = self.test(name, available, body);
        if let Some(trial) = runner.trials.pop() {
            let ignored = if trial.has_ignored_flag() { trial } else { trial.with_ignored_flag(true).with_kind(why) };
            runner.trials.push(ignored);
        }
        runner
    }

    /// Adds every scenario for backend `B`, named `<name>::<scenario>`.
    pub fn suite<B: Backend>(mut self, name: &'static str) -> Self {
        self.has_suite = true;
        let shared: Arc<OnceCell<Result<Arc<B>, String>>> = Arc::new(OnceCell::new());
        // Without REGISTRY_TEST_REQUIRE=1 a backend with no server is reported
        // as ignored, with the reason, and announced on stderr.
        let skip = match B::available() {
            // Not a missing server: the backend cannot run here, whatever REGISTRY_TEST_REQUIRE says.
            Err(Unavailable::NotApplicable(reason)) => {
                eprintln!("NOT APPLICABLE {name}: {reason}");
                Some(format!("n/a: {reason}"))
            }
            Err(e) if !required() => {
                eprintln!("SKIPPING {name}: {e} (REGISTRY_TEST_REQUIRE=1 turns this into a failure)");
                Some(e.to_string())
            }
            _ => None,
        };
        let dedicated_skip = match B::dedicated_available() {
            // Not a missing server: the scenario cannot apply here, whatever REGISTRY_TEST_REQUIRE says.
            Err(Unavailable::NotApplicable(reason)) => Some(reason),
            Err(e) if !required() => {
                eprintln!("SKIPPING {name} scenarios that stop the server: {e}");
                Some(e.to_string())
            }
            _ => None,
        };
        for scenario in scenarios::all::<B>() {
            let shared = Arc::clone(&shared);
            let test_name = format!("{name}::{}", scenario.name);
            let run = scenario.run;
            let needs = scenario.needs;
            let requires = scenario.requires;
            let trial = Trial::test(test_name.clone(), move || {
                runtime().block_on(async move {
                    let started = Instant::now();
                    let result = match needs {
                        Needs::SharedServer => {
                            let backend = shared
                                .get_or_init(|| async { B::start(ServerUse::Shared).await.map(Arc::new).map_err(describe) })
                                .await;
                            match backend {
                                Ok(b) => run(b).await.map_err(|e| format!("{e:#}")),
                                Err(e) => return unavailable(name, e),
                            }
                        }
                        Needs::DedicatedServer => match B::start(ServerUse::Dedicated).await {
                            Ok(b) => run(&b).await.map_err(|e| format!("{e:#}")),
                            Err(e) => return unavailable(name, &describe(e)),
                        },
                    };
                    tracing::info!(test = %test_name, elapsed_ms = started.elapsed().as_millis() as u64, "scenario done");
                    result.map_err(Failed::from)
                })
            });
            let not_applicable = requires.iter().find_map(|c| B::capability(*c).err().map(|r| format!("{c:?}: {r}")));
            let no_server = match needs {
                Needs::DedicatedServer if skip.is_none() => &dedicated_skip,
                _ => &skip,
            };
            let no_server = no_server.as_ref().map(|r| (r, needs == Needs::DedicatedServer));
            self.trials.push(match (no_server, not_applicable) {
                (Some((reason, true)), _) => {
                    trial.with_ignored_flag(true).with_kind(format!("needs a server it can stop: {reason}"))
                }
                (Some((reason, false)), _) if reason.starts_with("n/a: ") => {
                    trial.with_ignored_flag(true).with_kind(reason.clone())
                }
                (Some((reason, false)), _) => trial.with_ignored_flag(true).with_kind(format!("no server: {reason}")),
                (None, Some(reason)) => trial.with_ignored_flag(true).with_kind(format!("n/a: {reason}")),
                (None, None) => trial,
            });
        }
        let checked = Arc::clone(&shared);
        self.leftover_checks.push(Box::new(move || {
            let Some(Ok(backend)) = checked.get().cloned() else {
                return Ok(format!("leftover check {name}: no scenario used the shared server"));
            };
            runtime().block_on(check_leftovers(name, backend))
        }));
        let keep = Arc::clone(&shared);
        // Drop the shared backend (and so stop its server) before the process exits.
        self.cleanups.push(Box::new(move || {
            runtime().block_on(async move { drop(keep) });
        }));
        self
    }

    /// Runs what the command line selects and returns the exit code.
    pub fn run(self) -> ExitCode {
        self.run_with(Arguments::from_args())
    }

    /// Runs with explicit libtest arguments (for tools that parse their own
    /// command line, like `registryctl conformance`).
    pub fn run_with(self, mut args: Arguments) -> ExitCode {
        // A crate's own tests keep libtest's default (one per core): many of
        // them stop servers or measure failover times.
        if args.test_threads.is_none() && self.has_suite {
            args.test_threads = Some(DEFAULT_THREADS);
        }
        let listing = args.list;
        let conclusion = libtest_mimic::run(&args, self.trials);
        let mut leftovers_found = false;
        if !listing {
            for check in self.leftover_checks {
                match check() {
                    Ok(line) => println!("{line}"),
                    Err(line) => {
                        leftovers_found = true;
                        println!("{line}");
                    }
                }
            }
        }
        for cleanup in self.cleanups {
            cleanup();
        }
        if leftovers_found { ExitCode::FAILURE } else { conclusion.exit_code() }
    }
}

/// Checks that every namespace the scenarios used on the shared `backend`
/// is empty on the server, waiting up to [`LEFTOVER_WAIT`] for late removals.
async fn check_leftovers<B: Backend>(name: &str, backend: Arc<B>) -> Result<String, String> {
    let namespaces = scenarios::namespaces_of(Arc::as_ptr(&backend) as usize);
    let deadline = Instant::now() + LEFTOVER_WAIT;
    let mut left = Vec::new();
    for namespace in &namespaces {
        loop {
            match backend.leftovers(namespace).await {
                Ok(None) => {
                    return Ok(format!(
                        "leftover check {name}: NOT MADE, this backend cannot list what a namespace holds"
                    ));
                }
                Ok(Some(items)) if items.is_empty() => break,
                Ok(Some(items)) if Instant::now() >= deadline => {
                    left.push(format!("{namespace}: {}", items.join(", ")));
                    break;
                }
                Err(e) if Instant::now() >= deadline => {
                    left.push(format!("{namespace}: cannot list: {e:#}"));
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    if left.is_empty() {
        Ok(format!("leftover check {name}: {} scenario namespaces empty on the server", namespaces.len()))
    } else {
        Err(format!(
            "leftover check {name}: FAILED, {} of {} scenario namespaces not empty: {}",
            left.len(),
            namespaces.len(),
            left.join("; ")
        ))
    }
}

fn describe(e: Unavailable) -> String {
    e.to_string()
}

/// A server that should have started and did not: always a failure.
fn unavailable(backend: &str, reason: &str) -> Result<(), Failed> {
    Err(Failed::from(format!("{backend} server unavailable: {reason}")))
}
