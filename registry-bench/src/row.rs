//! One fleet size's results: a line of the summary (`key=value`), a row of
//! the CSV, and whether the fleet was carried.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

/// One fleet size's results (a line of the CSV).
#[derive(Clone, Debug, Default, Deserialize)]
// A CSV of an older bench lacks newer columns: they stay at their default.
#[serde(default)]
pub struct Row {
    pub backend: String,
    pub instances: usize,
    pub ttl_s: f64,
    /// Time to install the whole fleet, s.
    pub install_s: f64,
    /// Fleet installs that failed and were tried again.
    pub install_retries: u64,
    /// Heartbeat writes per second the fleet made during the hold.
    pub writes_per_s: f64,
    /// Heartbeats that failed (keepalive retries), install to end.
    pub failed_heartbeats: u64,
    /// Fewest instances the separate discoverer saw during the hold.
    pub min_visible: usize,
    /// `Down` events the separate discoverer saw during the hold.
    pub downs: u64,
    /// Median cold start of the separate discoverer, ms.
    pub cold_start_ms: f64,
    pub cold_start_min_ms: f64,
    pub cold_start_max_ms: f64,
    /// Discovery events (`Up`/`Down`/`Reset`: changes of the view, not the
    /// store events behind them) per second the separate discoverer delivered during the hold.
    pub disc_events_per_s: f64,
    /// CPU of the separate discoverer during the hold, % of one core.
    pub disc_cpu_pct: f64,
    /// RSS of the separate discoverer's process at the end of the hold, MiB.
    pub disc_rss_mib: f64,
    pub disc_hwm_mib: f64,
    /// Bytes the separate discoverer received (TCP) per heartbeat write during the hold.
    pub bytes_read_per_write: f64,
    /// Bytes the separate discoverer received (TCP) per probe install or
    /// uninstall, beyond its rate during the hold.
    pub bytes_per_change: f64,
    pub install_p50_ms: f64,
    pub install_p99_ms: f64,
    pub uninstall_p50_ms: f64,
    pub uninstall_p99_ms: f64,
    /// p99 of install→visible and uninstall→gone together.
    pub propagation_p99_ms: f64,
    pub expiry_ms: f64,
    pub lookup_ns: f64,
    /// CPU of the bench process (the fleet and the propagation discoverer) during the hold, % of one core.
    pub fleet_cpu_pct: f64,
    pub load1_before: f64,
    pub load1_after: f64,
}

/// The columns after `backend`, in order: the summary's keys and the CSV's header.
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
    /// Column names, `backend` first.
    pub fn names() -> Vec<&'static str> {
        macro_rules! names_of {
            ($($f:ident),*) => { vec!["backend", $(stringify!($f)),*] };
        }
        row_fields!(names_of)
    }

    /// Column values in the order of [`Self::names`]: integers as such,
    /// reals with 2 decimals, NaN as `NaN`.
    pub fn values(&self) -> Vec<String> {
        macro_rules! values_of {
            ($($f:ident),*) => { vec![self.backend.clone(), $(Value::show(&self.$f)),*] };
        }
        row_fields!(values_of)
    }

    /// The one-line `key=value` summary of this size.
    pub fn summary(&self) -> String {
        let pairs: Vec<String> =
            Self::names().into_iter().zip(self.values()).map(|(name, value)| format!("{name}={value}")).collect();
        pairs.join(" ")
    }

    /// Why this size did not carry its fleet, if it did not.
    pub fn problem(&self) -> Option<String> {
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

/// How a column's value is printed.
trait Value {
    fn show(&self) -> String;
}

impl Value for f64 {
    fn show(&self) -> String {
        if self.is_finite() { format!("{self:.2}") } else { "NaN".into() }
    }
}

impl Value for u64 {
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Value for usize {
    fn show(&self) -> String {
        self.to_string()
    }
}

/// Writes `rows` as a CSV file, header first.
pub fn write_csv(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let write = || -> csv::Result<()> {
        let mut writer = csv::Writer::from_path(path)?;
        writer.write_record(Row::names())?;
        for row in rows {
            writer.write_record(row.values())?;
        }
        writer.flush()?;
        Ok(())
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// Reads the rows of a CSV file written by [`write_csv`] (by column name:
/// an older file's missing columns stay at their default).
pub fn read_csv(path: &Path) -> anyhow::Result<Vec<Row>> {
    let mut reader = csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let rows = reader.deserialize().collect::<csv::Result<Vec<Row>>>();
    rows.with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    // Test code: a failed expectation panics.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_summary_names_every_column() {
        let row = Row { backend: "etcd".into(), instances: 10_000, ttl_s: 50.0, ..Row::default() };
        assert!(row.summary().starts_with("backend=etcd instances=10000 ttl_s=50.00"));
        assert_eq!(row.summary().split(' ').count(), Row::names().len());
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

    #[test]
    fn a_row_survives_its_csv_file() {
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.csv");
        write_csv(&path, &[row.clone(), row.clone()]).unwrap();
        let back = read_csv(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].values(), row.values());
        assert_eq!(back[0].instances, 10_000);
        assert_eq!(back[0].failed_heartbeats, 3);
        assert!(back[0].disc_rss_mib.is_nan());
    }

    #[test]
    fn the_published_csv_files_are_read() {
        let perf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/perf");
        let mut files = 0;
        for entry in std::fs::read_dir(&perf).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "csv") {
                let rows = read_csv(&path).unwrap();
                assert!(rows.iter().all(|r| r.instances > 0 && !r.backend.is_empty()), "{}", path.display());
                files += 1;
            }
        }
        assert!(files > 0, "no CSV in {}", perf.display());
    }
}
