//! One node per host: the lock file that serializes nodes and records what
//! the holder changed, so that the next start sweeps what a killed holder left.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::host::{Created, HOST_PATHS};
use super::procs::cgroup_mounts;
use super::undo::undo_host;
use super::*;

/// One node per host: an exclusive lock on a file in the temp dir, which
/// records the holder's run dir (for the next start to sweep if the holder
/// was killed without tearing down).
pub(super) struct HostLock {
    file: Option<File>,
}

impl HostLock {
    pub(super) async fn acquire() -> Result<Self, Unavailable> {
        let path = std::env::temp_dir().join(LOCK_FILE);
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| failed(SERVER, format!("{}: {e}", path.display())))?;
        let start = Instant::now();
        let mut announced = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) => {
                    if !announced {
                        eprintln!("kube_node: another node runs on this host; waiting for {}", path.display());
                        announced = true;
                    }
                    if start.elapsed() > LOCK_TIMEOUT {
                        return Err(failed(
                            SERVER,
                            format!("another node held {} for {LOCK_TIMEOUT:?}", path.display()),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(fs::TryLockError::Error(e)) => return Err(failed(SERVER, format!("lock {}: {e}", path.display()))),
            }
        }
        let mut lock = Self { file: Some(file) };
        // A previous holder that died without tearing down left its run dir here.
        let (stale, created) = lock.recorded();
        sweep_stale(stale.as_deref(), &created);
        Ok(lock)
    }

    /// The run dir and created host paths of the last holder (none after a clean teardown).
    pub(super) fn recorded(&mut self) -> (Option<PathBuf>, Created) {
        let mut text = String::new();
        if let Some(file) = self.file.as_mut()
            && file.seek(SeekFrom::Start(0)).is_ok()
        {
            let _ = file.read_to_string(&mut text);
        }
        let mut lines = text.lines().map(str::trim);
        // Only a run dir this module made (never sweep a path someone else wrote there).
        let dir = lines.next().map(PathBuf::from).filter(|dir| {
            dir.parent() == Some(std::env::temp_dir().as_path())
                && dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(RUN_DIR_PREFIX))
        });
        // Only paths from HOST_PATHS.
        let paths = lines.filter_map(|line| HOST_PATHS.iter().copied().find(|(p, _)| *p == line)).collect();
        (dir, Created { paths })
    }

    /// Records the holder's run dir and the host paths it will create.
    pub(super) fn record(&mut self, run_dir: &Path, created: &Created) -> std::io::Result<()> {
        if let Some(file) = self.file.as_mut() {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            writeln!(file, "{}", run_dir.display())?;
            for (path, _) in &created.paths {
                writeln!(file, "{path}")?;
            }
            file.sync_all()?;
        }
        Ok(())
    }

    pub(super) fn release(&mut self) {
        if let Some(file) = self.file.take() {
            let _ = file.set_len(0);
            let _ = file.unlock();
        }
    }
}

/// Undoes what a node killed without teardown left behind (run dir and
/// created host paths from the lock file).
pub(super) fn sweep_stale(run_dir: Option<&Path>, created: &Created) {
    let dirty = run_dir.is_some_and(Path::exists)
        || Path::new("/sys/class/net").join(BRIDGE).exists()
        || cgroup_mounts().iter().any(|m| m.join(CGROUP_ROOT).exists())
        || created.paths.iter().any(|(p, _)| Path::new(p).exists());
    if !dirty {
        return;
    }
    eprintln!(
        "kube_node: sweeping what an earlier node left behind ({})",
        run_dir.map(|d| d.display().to_string()).unwrap_or_default()
    );
    let problems = undo_host(run_dir, created, None);
    if !problems.is_empty() {
        eprintln!("kube_node: the sweep left: {}", problems.join("; "));
    }
}
