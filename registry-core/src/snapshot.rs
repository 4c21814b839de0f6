//! Last-known-good snapshot of a discoverer's view, on disk
//! ([`DiscoveryOptions::snapshot`](crate::conf::DiscoveryOptions::snapshot)).
//!
//! A gateway that restarts while its backend is unreachable has nothing to
//! serve: its discoverer never completes a listing. With a snapshot path the
//! discoverer loads the view it last saved and serves it, marked stale
//! ([`SourceHealth::from_snapshot`](crate::SourceHealth::from_snapshot)),
//! until the backend answers; then the backend's listing replaces it (under
//! empty-set protection like any listing).
//!
//! The file is JSON: a format marker, a version, the source, namespace and
//! env it belongs to, when it was saved, and the records (store key and
//! node). A file that is not that — corrupted, truncated, another program's,
//! another version's, another scope's or another backend's — is a
//! [`SnapshotError`] and is ignored: the discoverer starts without it and
//! overwrites it with its first healthy view. Writes go to a temporary file
//! in the same directory, are flushed to disk, and renamed over the old file,
//! so a crash leaves either the old snapshot or the new one, never half.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ServiceNode;
use crate::store::Scope;

/// The `format` marker of a snapshot file.
pub const FORMAT: &str = "registry-discovery-snapshot";
/// The version of the file layout this crate writes and reads.
pub const VERSION: u32 = 1;
/// Least time between two saves of one discoverer's snapshot.
pub const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Largest snapshot file loaded (a larger one is refused as foreign).
pub const MAX_SIZE: u64 = 256 * 1024 * 1024;

/// Why a snapshot file could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// No file at the path (normal on a first start).
    #[error("no snapshot at {path}")]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// Reading or writing failed.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a snapshot this crate can read (not JSON, truncated,
    /// wrong shape).
    #[error("snapshot {path} is corrupted: {reason}")]
    Corrupted {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file is a snapshot, but not of this discoverer: another format
    /// marker, version, backend, namespace or env.
    #[error("snapshot {path} is foreign: {reason}")]
    Foreign {
        /// The path.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
}

/// One record of a snapshot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The store's key of the record.
    pub key: String,
    /// The node.
    pub node: ServiceNode,
}

/// A snapshot as it is on disk.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`] when written by this crate.
    pub version: u32,
    /// The source (backend name) the view came from.
    pub source: String,
    /// Namespace of the view.
    pub namespace: String,
    /// Env of the view.
    pub env: String,
    /// When it was saved (Unix milliseconds).
    pub saved_at_ms: i64,
    /// The records.
    pub records: Vec<SnapshotRecord>,
}

impl Snapshot {
    /// A snapshot of `records` for `source` and `scope`, saved now.
    pub fn new(source: &str, scope: &Scope, records: Vec<SnapshotRecord>) -> Self {
        Self {
            format: FORMAT.to_owned(),
            version: VERSION,
            source: source.to_owned(),
            namespace: scope.namespace.clone(),
            env: scope.env.clone(),
            saved_at_ms: chrono::Utc::now().timestamp_millis(),
            records,
        }
    }
}

/// Loads the snapshot at `path` and checks that it belongs to `source` and
/// `scope`.
pub fn load(path: &Path, source: &str, scope: &Scope) -> Result<Snapshot, SnapshotError> {
    let io = |source| SnapshotError::Io { path: path.to_owned(), source };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SnapshotError::Missing { path: path.to_owned() });
        }
        Err(e) => return Err(io(e)),
    };
    let size = file.metadata().map_err(io)?.len();
    if size > MAX_SIZE {
        return Err(SnapshotError::Foreign {
            path: path.to_owned(),
            reason: format!("{size} bytes, more than the {MAX_SIZE} a snapshot may have"),
        });
    }
    let corrupted = |reason: String| SnapshotError::Corrupted { path: path.to_owned(), reason };
    let foreign = |reason: String| SnapshotError::Foreign { path: path.to_owned(), reason };
    let value: serde_json::Value =
        serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| corrupted(e.to_string()))?;
    // The marker first: a JSON file of another program is foreign, not corrupted.
    match value.get("format").and_then(|f| f.as_str()) {
        Some(FORMAT) => {}
        Some(other) => return Err(foreign(format!("format `{other}`, not `{FORMAT}`"))),
        None => return Err(foreign(format!("no `format` field (`{FORMAT}` expected)"))),
    }
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(VERSION) => {}
        other => return Err(foreign(format!("version {other:?}, this build reads {VERSION}"))),
    }
    let snapshot: Snapshot = serde_json::from_value(value).map_err(|e| corrupted(e.to_string()))?;
    if snapshot.source != source {
        return Err(foreign(format!("saved from `{}`, this discoverer reads `{source}`", snapshot.source)));
    }
    if snapshot.namespace != scope.namespace || snapshot.env != scope.env {
        return Err(foreign(format!(
            "of namespace `{}` env `{}`, this discoverer follows `{}` `{}`",
            snapshot.namespace, snapshot.env, scope.namespace, scope.env
        )));
    }
    Ok(snapshot)
}

/// Writes `snapshot` to `path` atomically: a temporary file next to it,
/// flushed to disk, then renamed over `path`.
pub fn save(path: &Path, snapshot: &Snapshot) -> Result<(), SnapshotError> {
    let io = |source| SnapshotError::Io { path: path.to_owned(), source };
    let json = serde_json::to_vec(snapshot)
        .map_err(|e| SnapshotError::Corrupted { path: path.to_owned(), reason: e.to_string() })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    // A temporary file in the same directory (so the rename stays on one
    // file system), removed by `tempfile` if anything fails before it is
    // persisted over `path`.
    let mut temp = tempfile::Builder::new().prefix(".snapshot").suffix(".tmp").tempfile_in(&dir).map_err(io)?;
    temp.write_all(&json).map_err(io)?;
    temp.as_file().sync_all().map_err(io)?;
    temp.persist(path).map_err(|e| io(e.error))?;
    // The rename is durable once the directory is synced (best effort: not
    // every platform can open a directory).
    if let Ok(dir) = std::fs::File::open(&dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// What the discoverer hands its saver: the view to write.
pub(crate) struct Pending {
    pub(crate) records: Vec<(Arc<str>, Arc<ServiceNode>)>,
}

impl Pending {
    pub(crate) fn into_snapshot(self, source: &str, scope: &Scope) -> Snapshot {
        let records = self
            .records
            .into_iter()
            .map(|(key, node)| SnapshotRecord { key: key.to_string(), node: (*node).clone() })
            .collect();
        Snapshot::new(source, scope, records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope {
        Scope::new("ns", "dev")
    }

    fn dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("registry-snapshot-unit-{}", crate::store::next_instance_id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn node(app: &str) -> ServiceNode {
        let mut node = crate::GrpcServices::new().service("t.S", ["M"]).expect("valid").into_node();
        node.meta = crate::Meta::new("dev", app, "v1");
        node.lease_id = 7;
        node
    }

    #[test]
    fn round_trip() {
        let path = dir().join("view.json");
        let snapshot =
            Snapshot::new("etcd", &scope(), vec![SnapshotRecord { key: "ns/dev/a/7".into(), node: node("a") }]);
        save(&path, &snapshot).expect("saved");
        assert_eq!(load(&path, "etcd", &scope()).expect("loaded"), snapshot);
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(path.parent().expect("dir")).expect("list").collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn missing_corrupted_and_foreign_files_are_typed_errors() {
        let dir = dir();
        let path = dir.join("view.json");
        assert!(matches!(load(&path, "etcd", &scope()), Err(SnapshotError::Missing { .. })));
        for garbage in [&b"{\"format\": \"registry-discovery-snap"[..], b"\x00\xff\xfe", b""] {
            std::fs::write(&path, garbage).expect("write");
            assert!(matches!(load(&path, "etcd", &scope()), Err(SnapshotError::Corrupted { .. })), "{garbage:?}");
        }
        // Right marker and version, wrong shape.
        std::fs::write(&path, br#"{"format":"registry-discovery-snapshot","version":1,"records":7}"#).expect("write");
        assert!(matches!(load(&path, "etcd", &scope()), Err(SnapshotError::Corrupted { .. })));
        for foreign in [
            r#"{"name":"some other program's config"}"#.to_owned(),
            r#"{"format":"other","version":1}"#.to_owned(),
            r#"{"format":"registry-discovery-snapshot","version":99}"#.to_owned(),
            r#"[1,2,3]"#.to_owned(),
        ] {
            std::fs::write(&path, &foreign).expect("write");
            assert!(matches!(load(&path, "etcd", &scope()), Err(SnapshotError::Foreign { .. })), "{foreign}");
        }
        let snapshot = Snapshot::new("etcd", &scope(), Vec::new());
        save(&path, &snapshot).expect("saved");
        assert!(matches!(load(&path, "consul", &scope()), Err(SnapshotError::Foreign { .. })));
        assert!(matches!(load(&path, "etcd", &Scope::new("ns", "prod")), Err(SnapshotError::Foreign { .. })));
    }
}
