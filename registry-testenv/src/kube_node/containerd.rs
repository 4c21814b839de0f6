//! The node's private containerd seen from outside: `ctr` commands, and the
//! sandboxes and shim sockets found in its state dirs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::run_quiet;

pub(super) fn ctr_cmd(ctr: &Path, socket: &Path) -> Command {
    let mut cmd = Command::new(ctr);
    cmd.arg("--address").arg(socket).args(["--namespace", "k8s.io", "--connect-timeout", "5s"]);
    cmd
}

/// Kills and deletes every task (`tasks rm --force` sends SIGKILL), then
/// deletes every container (CRI sandboxes included) of the containerd at
/// `socket`: the shims then shut down and remove their sockets.
pub(super) fn remove_containers(ctr: &Path, socket: &Path) {
    let list = |what: &str| -> Vec<String> {
        let mut cmd = ctr_cmd(ctr, socket);
        cmd.args([what, "ls", "-q"]);
        run_quiet(&mut cmd)
            .map(|out| out.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect())
            .unwrap_or_default()
    };
    let tasks = list("tasks");
    if !tasks.is_empty() {
        let _ = run_quiet(ctr_cmd(ctr, socket).args(["tasks", "rm", "--force"]).args(&tasks));
    }
    let containers = list("containers");
    if !containers.is_empty() {
        let _ = run_quiet(ctr_cmd(ctr, socket).args(["containers", "rm"]).args(&containers));
    }
}

/// IDs of the node's CRI sandboxes and containerd tasks (from containerd's root and state dirs).
pub(super) fn sandbox_ids(run_dir: &Path) -> Vec<String> {
    let containerd = run_dir.join("containerd");
    let dirs = [
        containerd.join("root").join("io.containerd.grpc.v1.cri").join("sandboxes"),
        containerd.join("state").join("io.containerd.runtime.v2.task").join("k8s.io"),
    ];
    let mut ids: Vec<String> = dirs
        .iter()
        .flat_map(|dir| fs::read_dir(dir).into_iter().flatten().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The sockets of the node's shims (`/run/containerd/s/<hash>`), from the
/// `address` file containerd keeps in each task bundle under its state dir.
pub(super) fn shim_sockets(run_dir: &Path) -> Vec<PathBuf> {
    let tasks = run_dir.join("containerd").join("state").join("io.containerd.runtime.v2.task");
    let mut sockets = Vec::new();
    for namespace in fs::read_dir(tasks).into_iter().flatten().flatten() {
        for bundle in fs::read_dir(namespace.path()).into_iter().flatten().flatten() {
            if let Ok(address) = fs::read_to_string(bundle.path().join("address"))
                && let Some(path) = address.trim().strip_prefix("unix://")
                && path.starts_with("/run/containerd/s/")
            {
                sockets.push(PathBuf::from(path));
            }
        }
    }
    sockets.sort();
    sockets.dedup();
    sockets
}
