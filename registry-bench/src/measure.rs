//! One fleet size measured: the fleet installed, the separate discoverer's
//! cold starts and hold, the probes, and the row of results.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use registry::Registry;

use crate::fleet::Fleet;
use crate::observer::Observer;
use crate::probe::probe;
use crate::row::Row;
use crate::target::Target;
use crate::{BenchArgs, conf, observe};

/// Measures the fleet of `instances` in a namespace of its own.
pub async fn measure(
    args: &BenchArgs,
    target: &Target,
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
    row.load1_before = observe::load1();
    eprintln!(
        "bench: {instances} instances, ttl {ttl:?} (~{:.0} heartbeats/s), hold {hold:?}, namespace {namespace}",
        instances as f64 / (ttl.as_secs_f64() / 2.0)
    );

    let started = Instant::now();
    let fleet = Fleet::start(args.concurrency, target, fleet_sides, &fleet_conf, instances).await?;
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
    row.load1_after = observe::load1();
    fleet.stop(args.concurrency).await;
    Ok(row)
}
