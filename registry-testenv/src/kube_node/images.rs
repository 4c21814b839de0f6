//! Images from no registry: a busybox root filesystem packed as
//! docker-archive tars for the node's containerd.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use super::*;

/// Builds a minimal root filesystem in `dir` from the static busybox at
/// `busybox`: `/bin/busybox` with a link per applet, `/tmp` (1777), `/etc/passwd`
/// and `/etc/group` for root and nobody, and empty `/proc`, `/sys`, `/dev`, `/var/run`.
pub fn busybox_rootfs(busybox: &Path, dir: &Path) -> anyhow::Result<()> {
    for sub in ["bin", "tmp", "etc", "proc", "sys", "dev", "var/run"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let target = dir.join("bin").join("busybox");
    fs::copy(busybox, &target)?;
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755))?;
    let list = run_checked(Command::new(busybox).arg("--list"))?;
    for applet in list.lines().map(str::trim).filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/')) {
        let link = dir.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::write(
        dir.join("etc").join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    fs::write(dir.join("etc").join("group"), "root:x:0:\nnobody:x:65534:\n")?;
    Ok(())
}

/// Packs `rootfs` as one layer into a docker-archive tar at `out` (the
/// format `docker save` writes and `ctr images import` reads), tagged `tag`,
/// with the given entrypoint and command (`None`: unset) and `PATH=/bin`.
/// Reproducible: owners 0, sorted names, mtime 0. `work` is a scratch dir
/// (removed afterwards).
pub fn docker_archive(
    rootfs: &Path,
    tag: &str,
    entrypoint: Option<&[&str]>,
    cmd: Option<&[&str]>,
    out: &Path,
    work: &Path,
) -> anyhow::Result<()> {
    let layer_dir = work.join("l");
    fs::create_dir_all(&layer_dir)?;
    let layer = layer_dir.join("layer.tar");
    run_checked(
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "--sort=name", "--mtime=@0", "-C"])
            .arg(rootfs)
            .arg("-cf")
            .arg(&layer)
            .arg("."),
    )?;
    let sum = run_checked(Command::new("sha256sum").arg(&layer))?;
    let digest = sum.split_whitespace().next().ok_or_else(|| anyhow::anyhow!("sha256sum printed nothing"))?.to_owned();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": { "Env": ["PATH=/bin"], "Entrypoint": entrypoint, "Cmd": cmd, "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{digest}")] },
        "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "registry_testenv::kube_node" }],
    });
    fs::write(work.join("config.json"), serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!([{ "Config": "config.json", "RepoTags": [tag], "Layers": ["l/layer.tar"] }]);
    fs::write(work.join("manifest.json"), serde_json::to_vec(&manifest)?)?;
    run_checked(Command::new("tar").arg("-C").arg(work).arg("-cf").arg(out).args([
        "manifest.json",
        "config.json",
        "l/layer.tar",
    ]))?;
    fs::remove_dir_all(work)?;
    Ok(())
}

/// [`BUSYBOX_IMAGE`] and [`PAUSE_IMAGE`] as `busybox.tar` and `pause.tar` in `dir`.
pub(super) fn build_node_images(busybox: &Path, dir: &Path) -> anyhow::Result<()> {
    let rootfs = dir.join("rootfs");
    busybox_rootfs(busybox, &rootfs)?;
    docker_archive(&rootfs, BUSYBOX_IMAGE, None, Some(&["sh"]), &dir.join("busybox.tar"), &dir.join("busybox.work"))?;
    docker_archive(
        &rootfs,
        PAUSE_IMAGE,
        Some(&["/bin/sleep", "2147483647"]),
        None,
        &dir.join("pause.tar"),
        &dir.join("pause.work"),
    )?;
    fs::remove_dir_all(&rootfs)?;
    Ok(())
}
