//! The separate discoverer of `registryctl bench`: cold starts over the whole
//! fleet, then a hold window in which it counts what it sees (visible
//! instances, `Down` events) and what it costs (CPU, memory, bytes read).
//!
//! It runs in a process of its own (`registryctl bench --observe`, spawned by
//! the bench) so that its CPU and RSS are its own and not the fleet's; for the
//! embedded `memory` backend, which lives in the bench's process, it runs on a
//! thread of its own and its CPU is that thread's.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use procfs::process::Process;
use procfs::{Current, LoadAverage};
use registry::{Discovery, DiscoveryEvent, Registry, ServiceConf};

/// Which CPU clock and I/O counters to read.
#[derive(Clone, Copy, Debug)]
pub enum Scope {
    /// The whole process (`/proc/self`).
    Process,
    /// The calling thread (`/proc/thread-self`).
    Thread,
}

impl Scope {
    fn process(self) -> Option<Process> {
        match self {
            Scope::Process => Process::myself().ok(),
            // `thread-self` links to `<pid>/task/<tid>`; procfs wants the path with the tid last.
            Scope::Thread => {
                let task = std::fs::read_link("/proc/thread-self").ok()?;
                Process::new_with_root(Path::new("/proc").join(task)).ok()
            }
        }
    }
}

/// CPU seconds (user + system) of `scope`, from its `stat`.
pub fn cpu_seconds(scope: Scope) -> Option<f64> {
    let stat = scope.process()?.stat().ok()?;
    Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// Bytes this process received on its TCP connections, summed over the
/// open sockets (`ss -tinp`'s `bytes_received`, the kernel's `tcp_info`);
/// `None` without `ss`. A connection closed in between takes its bytes with it.
pub fn tcp_bytes_received() -> Option<u64> {
    let out = std::process::Command::new("ss").args(["-tinpH"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let own = format!("pid={},", std::process::id());
    let mut mine = false;
    let mut total = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if !line.starts_with(char::is_whitespace) {
            mine = line.contains(&own);
            continue;
        }
        if mine {
            total += line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("bytes_received:"))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Some(total)
}

/// `VmRSS` and `VmHWM` of this process, in KiB (0 when unknown).
pub fn rss_kib() -> (u64, u64) {
    let status = Process::myself().and_then(|me| me.status()).ok();
    let status = status.as_ref();
    (status.and_then(|s| s.vmrss).unwrap_or(0), status.and_then(|s| s.vmhwm).unwrap_or(0))
}

/// The 1-minute load average (NaN when unknown).
pub fn load1() -> f64 {
    LoadAverage::current().map_or(f64::NAN, |load| f64::from(load.one))
}

/// What the separate discoverer measured.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Time to connect its client, ms.
    pub connect_ms: f64,
    /// Each cold start (new discoverer → ready, the whole fleet indexed), ms.
    pub cold_start_ms: Vec<f64>,
    /// Instances visible at the end of the last cold start.
    pub visible_at_start: usize,
    /// Fewest instances visible during the hold.
    pub min_visible: usize,
    /// `Down` events during the hold (an instance lost while its keepalive ran).
    pub downs: u64,
    /// Discovery events during the hold (`Up`, `Down`, `Reset`).
    pub events: u64,
    /// Length of the hold, s.
    pub hold_s: f64,
    /// CPU used during the hold, s.
    pub cpu_s: f64,
    /// Bytes received on TCP during the hold (process scope only).
    pub read_bytes: u64,
    /// Length of the bench's probe phase, s.
    pub probe_s: f64,
    /// Bytes received on TCP during the probe phase (process scope only).
    pub probe_bytes: u64,
    /// RSS at the end of the hold, KiB (process scope only).
    pub rss_kib: u64,
    /// Peak RSS, KiB (process scope only).
    pub hwm_kib: u64,
}

impl Observed {
    /// Median cold start, ms.
    pub fn cold_start_median_ms(&self) -> f64 {
        median(&self.cold_start_ms)
    }

    /// As one JSON object (the child's report to the bench).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "connect_ms": self.connect_ms,
            "cold_start_ms": self.cold_start_ms,
            "visible_at_start": self.visible_at_start,
            "min_visible": self.min_visible,
            "downs": self.downs,
            "events": self.events,
            "hold_s": self.hold_s,
            "cpu_s": self.cpu_s,
            "read_bytes": self.read_bytes,
            "probe_s": self.probe_s,
            "probe_bytes": self.probe_bytes,
            "rss_kib": self.rss_kib,
            "hwm_kib": self.hwm_kib,
        })
    }

    /// Parses [`Self::to_json`]'s output.
    pub fn from_json(v: &serde_json::Value) -> anyhow::Result<Self> {
        let f = |k: &str| v.get(k).and_then(serde_json::Value::as_f64).with_context(|| format!("field {k}"));
        let u = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).with_context(|| format!("field {k}"));
        let cold = v.get("cold_start_ms").and_then(|c| c.as_array()).context("field cold_start_ms")?;
        Ok(Self {
            connect_ms: f("connect_ms")?,
            cold_start_ms: cold.iter().filter_map(serde_json::Value::as_f64).collect(),
            visible_at_start: usize::try_from(u("visible_at_start")?)?,
            min_visible: usize::try_from(u("min_visible")?)?,
            downs: u("downs")?,
            events: u("events")?,
            hold_s: f("hold_s")?,
            cpu_s: f("cpu_s")?,
            read_bytes: u("read_bytes")?,
            probe_s: f("probe_s")?,
            probe_bytes: u("probe_bytes")?,
            rss_kib: u("rss_kib")?,
            hwm_kib: u("hwm_kib")?,
        })
    }
}

/// Median of `values` (NaN when empty).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 }
}

/// Instances of the fleet a discovery sees.
fn visible(discovery: &dyn Discovery) -> usize {
    discovery
        .apps()
        .iter()
        .filter(|app| app.starts_with(crate::fleet::FLEET_PREFIX))
        .map(|app| discovery.get_app(app).map(|n| n.len()).unwrap_or(0))
        .sum()
}

/// What to observe.
pub struct Plan {
    /// Env of the fleet.
    pub env: String,
    /// Namespace and TTL of the fleet.
    pub conf: ServiceConf,
    /// Cold starts to time.
    pub cold_starts: usize,
    /// Length of the hold.
    pub hold: Duration,
}

/// How the observer and the bench keep in step.
pub struct Signals<R, H, S> {
    /// Called when the hold starts.
    pub ready: R,
    /// Called when the hold ended (the bench then runs its probes).
    pub held: H,
    /// Completes when the bench's probes are done.
    pub stop: S,
}

/// Connects with `connect`, times `plan.cold_starts` cold starts, calls
/// `ready`, then holds for `plan.hold` counting what the last discoverer
/// sees; calls `held` and keeps counting the bytes it receives until `stop`.
pub async fn observe<C, F>(
    connect: C,
    plan: Plan,
    scope: Scope,
    signals: Signals<impl FnOnce(), impl FnOnce(), impl Future<Output = ()>>,
) -> anyhow::Result<Observed>
where
    C: FnOnce() -> F,
    F: Future<Output = anyhow::Result<Registry>>,
{
    let start = Instant::now();
    let registry = connect().await?;
    let mut observed = Observed { connect_ms: start.elapsed().as_secs_f64() * 1e3, ..Observed::default() };
    let mut last: Option<Arc<dyn Discovery>> = None;
    for _ in 0..plan.cold_starts.max(1) {
        if let Some(previous) = last.take() {
            previous.unwatch();
        }
        let start = Instant::now();
        let discovery = registry.discoverer(&plan.env, plan.conf.clone())?;
        discovery.watcher().await.context("cold start of the separate discoverer")?;
        observed.cold_start_ms.push(start.elapsed().as_secs_f64() * 1e3);
        observed.visible_at_start = visible(&*discovery);
        last = Some(discovery);
    }
    let discovery = last.context("no discoverer")?;
    let downs = Arc::new(AtomicU64::new(0));
    let events = Arc::new(AtomicU64::new(0));
    let counting = tokio::spawn({
        let mut stream = discovery.events();
        let (downs, events) = (Arc::clone(&downs), Arc::clone(&events));
        async move {
            while let Some(event) = stream.next().await {
                events.fetch_add(1, Ordering::Relaxed);
                if matches!(event, DiscoveryEvent::Down { .. }) {
                    downs.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    // The subscription starts with one `Up` per current node: not hold traffic.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (events_before, downs_before) = (events.load(Ordering::Relaxed), downs.load(Ordering::Relaxed));
    (signals.ready)();
    let cpu_before = cpu_seconds(scope).unwrap_or(f64::NAN);
    let process = matches!(scope, Scope::Process);
    let read_before = if process { tcp_bytes_received() } else { None };
    let hold_start = Instant::now();
    let mut min_visible = usize::MAX;
    while hold_start.elapsed() < plan.hold {
        min_visible = min_visible.min(visible(&*discovery));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    min_visible = min_visible.min(visible(&*discovery));
    observed.hold_s = hold_start.elapsed().as_secs_f64();
    observed.cpu_s = cpu_seconds(scope).unwrap_or(f64::NAN) - cpu_before;
    let read_after = if process { tcp_bytes_received() } else { None };
    observed.read_bytes = read_after.zip(read_before).map_or(0, |(after, before)| after.saturating_sub(before));
    observed.min_visible = min_visible;
    observed.events = events.load(Ordering::Relaxed) - events_before;
    observed.downs = downs.load(Ordering::Relaxed) - downs_before;
    if process {
        (observed.rss_kib, observed.hwm_kib) = rss_kib();
    }
    // The bench's probes: what the same discoverer receives while they run.
    let probes_before = if process { tcp_bytes_received() } else { None };
    let probes_start = Instant::now();
    (signals.held)();
    signals.stop.await;
    observed.probe_s = probes_start.elapsed().as_secs_f64();
    let probes_after = if process { tcp_bytes_received() } else { None };
    observed.probe_bytes = probes_after.zip(probes_before).map_or(0, |(after, before)| after.saturating_sub(before));
    counting.abort();
    discovery.unwatch();
    Ok(observed)
}

/// `registryctl bench --observe`: the child process's side. Prints `ready`
/// when the hold starts and `held` when it ends, reads a line on stdin when
/// the bench's probes are done, then prints `done <json>`.
pub async fn child(url: String, plan: Plan) -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let stop = async {
        let mut line = String::new();
        let _ = tokio::io::BufReader::new(tokio::io::stdin()).read_line(&mut line).await;
    };
    let observed = observe(
        || async move { registry::connect(url.as_str()).await.context("connecting the separate discoverer") },
        plan,
        Scope::Process,
        Signals { ready: || println!("ready"), held: || println!("held"), stop },
    )
    .await?;
    println!("done {}", observed.to_json());
    Ok(())
}

#[cfg(test)]
mod tests {
    // Test code: a failed expectation panics.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn the_report_survives_json() {
        let observed = Observed {
            connect_ms: 1.5,
            cold_start_ms: vec![10.0, 12.0],
            visible_at_start: 100,
            min_visible: 99,
            downs: 1,
            events: 7,
            hold_s: 6.0,
            cpu_s: 0.25,
            read_bytes: 1234,
            probe_s: 2.0,
            probe_bytes: 99,
            rss_kib: 2048,
            hwm_kib: 4096,
        };
        let back = Observed::from_json(&observed.to_json()).unwrap();
        assert_eq!(back.to_json(), observed.to_json());
        assert_eq!(back.cold_start_median_ms(), 11.0);
    }

    #[test]
    fn this_process_has_cpu_time_and_rss() {
        assert!(cpu_seconds(Scope::Process).is_some());
        assert!(cpu_seconds(Scope::Thread).is_some());
        let (rss, hwm) = rss_kib();
        assert!(rss > 0 && hwm >= rss, "rss {rss} hwm {hwm}");
    }
}
