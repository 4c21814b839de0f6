//! The host undone after the components are dead: leftover processes,
//! mounts, cgroups, the bridge, log links, host dirs the node created, the run dir.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::containerd::{sandbox_ids, shim_sockets};
use super::host::{Created, Removal};
use super::procs::{cgroup_mounts, cgroup_processes, dirs_below, kill_pids, mounts_under, processes_naming, wait_gone};
use super::*;

/// Everything after the components are dead: leftover processes, mounts,
/// cgroups, the bridge, log links, host dirs the node created, the run dir.
pub(super) fn undo_host(run_dir: Option<&Path>, created: &Created, socket: Option<&Path>) -> Vec<String> {
    let mut problems = Vec::new();
    let sockets = run_dir.map(shim_sockets).unwrap_or_default();
    let sandboxes = run_dir.map(sandbox_ids).unwrap_or_default();
    // Shims (which exit by themselves once their last task is deleted), then
    // anything still in the node's cgroups or naming the run dir.
    if let Some(dir) = run_dir {
        let shims = processes_naming(dir);
        let _ = wait_gone(&shims, if socket.is_some() { Duration::from_secs(3) } else { Duration::ZERO });
    }
    for _ in 0..5 {
        let mut pids = cgroup_processes();
        if let Some(dir) = run_dir {
            pids.extend(processes_naming(dir));
        }
        if pids.is_empty() {
            break;
        }
        kill_pids(&pids);
        let left = wait_gone(&pids, Duration::from_secs(5));
        if !left.is_empty() {
            problems.push(format!("processes {left:?} survived SIGKILL"));
        }
    }
    // A shim that was killed (not shut down by containerd) leaves its socket behind.
    for socket in sockets {
        if fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket())
            && let Err(e) = fs::remove_file(&socket)
        {
            problems.push(format!("{}: {e}", socket.display()));
        }
    }
    // Mounts under the run dir, deepest first (overlay rootfs, shm, netns, volumes).
    if let Some(dir) = run_dir {
        for _ in 0..5 {
            let mut points = mounts_under(dir);
            if points.is_empty() {
                break;
            }
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for point in points {
                if run_quiet(Command::new("umount").arg(&point)).is_err() {
                    let _ = run_quiet(Command::new("umount").arg("-l").arg(&point));
                }
            }
        }
        let left = mounts_under(dir);
        if !left.is_empty() {
            problems.push(format!("mounts {left:?}"));
        }
    }
    // Cgroups below the cgroup root, deepest first (a dying process may hold one for a moment).
    for root in cgroup_mounts().into_iter().map(|m| m.join(CGROUP_ROOT)) {
        let mut left = Vec::new();
        for _ in 0..50 {
            left = dirs_below(&root).into_iter().filter(|d| fs::remove_dir(d).is_err() && d.exists()).collect();
            if left.is_empty() {
                break;
            }
            kill_pids(&cgroup_processes());
            std::thread::sleep(Duration::from_millis(100));
        }
        if !left.is_empty() {
            problems.push(format!("cgroups {left:?}"));
        }
    }
    // Veths left on the bridge (their Pod netns is gone with its mount and processes), then the bridge.
    let bridge = Path::new("/sys/class/net").join(BRIDGE);
    if let Ok(ports) = fs::read_dir(bridge.join("brif")) {
        for port in ports.flatten() {
            let _ = run_quiet(Command::new("ip").args(["link", "del"]).arg(port.file_name()));
        }
    }
    if bridge.exists()
        && let Err(e) = run_quiet(Command::new("ip").args(["link", "del", BRIDGE]))
    {
        problems.push(format!("bridge {BRIDGE}: {e}"));
    }
    // Container log links into the run dir (the kubelet hard-codes /var/log/containers).
    if let Some(dir) = run_dir
        && let Ok(entries) = fs::read_dir(CONTAINER_LOG_LINKS)
    {
        for entry in entries.flatten() {
            let path = entry.path();
            if fs::read_link(&path).is_ok_and(|target| target.starts_with(dir))
                && let Err(e) = fs::remove_file(&path)
            {
                problems.push(format!("{}: {e}", path.display()));
            }
        }
    }
    // libcni's result cache (/var/lib/cni/results/<network>-<sandbox>-<ifname>):
    // a sandbox that got no CNI DEL (killed, not stopped through the CRI) keeps its entries.
    for entry in fs::read_dir(CNI_CACHE).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = [CNI_NETWORK, "cni-loopback"].iter().any(|net| name.starts_with(&format!("{net}-")));
        if ours && sandboxes.iter().any(|id| name.contains(&format!("-{id}-"))) {
            let _ = fs::remove_file(entry.path());
        }
    }
    for &(path, removal) in &created.paths {
        let path = Path::new(path);
        if !path.exists() {
            continue;
        }
        let _ = match removal {
            Removal::IfEmpty => fs::remove_dir(path),
            Removal::EmptyTree => {
                dirs_below(path).into_iter().for_each(|dir| {
                    // A shim killed with its sandbox (not stopped through the
                    // CRI) leaves its socket; the shims are gone by now.
                    for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                        if entry.file_type().is_ok_and(|t| std::os::unix::fs::FileTypeExt::is_socket(&t)) {
                            let _ = fs::remove_file(entry.path());
                        }
                    }
                    let _ = fs::remove_dir(dir);
                });
                Ok(())
            }
            Removal::Tree => fs::remove_dir_all(path),
        };
        if path.exists() {
            problems.push(format!("{} (created by the node) not empty", path.display()));
        }
    }
    // The run dir, unless something is still mounted in it (never delete through a mount).
    if let Some(dir) = run_dir
        && dir.exists()
    {
        if mounts_under(dir).is_empty() {
            if let Err(e) = fs::remove_dir_all(dir) {
                problems.push(format!("{}: {e}", dir.display()));
            }
        } else {
            problems.push(format!("{} kept: mounts remain", dir.display()));
        }
    }
    problems
}
