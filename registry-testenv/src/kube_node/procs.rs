//! What runs and what is mounted on the host, read from `/proc` (through the
//! `procfs` crate): the node's processes, its mounts and its cgroups.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use procfs::process::Process;

use super::CGROUP_ROOT;

/// Every live process (not a zombie) other than this one.
fn live_processes() -> Vec<Process> {
    let me = std::process::id();
    let Ok(all) = procfs::process::all_processes() else { return Vec::new() };
    all.flatten().filter(|p| u32::try_from(p.pid()).is_ok_and(|pid| pid != me) && is_alive(p)).collect()
}

/// True while the process exists and is not a zombie.
fn is_alive(process: &Process) -> bool {
    process.stat().is_ok_and(|stat| !matches!(stat.state, 'Z' | 'X'))
}

/// True while `pid` exists and is not a zombie.
pub(super) fn alive(pid: u32) -> bool {
    i32::try_from(pid).ok().and_then(|pid| Process::new(pid).ok()).is_some_and(|p| is_alive(&p))
}

/// Processes whose command line names `dir` (the components, containerd's
/// shims: `-address <run>/containerd/containerd.sock`).
pub(super) fn processes_naming(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    live_processes()
        .into_iter()
        .filter(|p| p.cmdline().is_ok_and(|args| args.iter().any(|arg| arg.contains(&needle))))
        .filter_map(|p| u32::try_from(p.pid()).ok())
        .collect()
}

/// Every process in the node's cgroups (any hierarchy).
pub(super) fn cgroup_processes() -> Vec<u32> {
    let mut pids = Vec::new();
    for root in cgroup_mounts().into_iter().map(|m| m.join(CGROUP_ROOT)) {
        for dir in dirs_below(&root) {
            if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
        }
    }
    pids.retain(|&p| p != std::process::id() && alive(p));
    pids.sort_unstable();
    pids.dedup();
    pids
}

pub(super) fn kill_pids(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let mut cmd = Command::new("kill");
    cmd.arg("-KILL").args(pids.iter().map(u32::to_string)).stdout(Stdio::null()).stderr(Stdio::null());
    let _ = cmd.status();
}

/// Waits until none of `pids` is alive (or `timeout`); returns the survivors.
pub(super) fn wait_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() || start.elapsed() > timeout {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `(mount point, fs type)` of every mount, from `/proc/self/mountinfo`.
pub(super) fn mounts() -> Vec<(String, String)> {
    let Ok(infos) = Process::myself().and_then(|me| me.mountinfo()) else { return Vec::new() };
    infos.into_iter().map(|m| (unescape_mount(&m.mount_point.to_string_lossy()), m.fs_type)).collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...), which procfs
/// leaves in its mount points.
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && let Ok(value) = u8::from_str_radix(&String::from_utf8_lossy(digits), 8)
        {
            out.push(value);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir`.
pub(super) fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    mounts()
        .into_iter()
        .map(|(point, _)| point)
        .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
        .collect()
}

/// The cgroup hierarchies: every cgroup v1 mount, and cgroup2 mounts (the
/// unified hierarchy, where runc may also create directories).
pub(super) fn cgroup_mounts() -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mounts()
        .into_iter()
        .filter(|(_, fstype)| fstype == "cgroup" || fstype == "cgroup2")
        .map(|(point, _)| PathBuf::from(point))
        .collect();
    points.sort();
    points.dedup();
    points
}

/// `root` and every directory below it, deepest first.
pub(super) fn dirs_below(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&entry.path(), out);
                }
            }
        }
        out.push(dir.to_owned());
    }
    if root.is_dir() {
        walk(root, &mut out);
    }
    out
}
