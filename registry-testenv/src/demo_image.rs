//! The demo service image: the workspace's `registry-demo` binary (crate
//! `demo/`, a tonic server that registers itself through the `registry`
//! facade, configured from its environment) built static and packed with a
//! busybox root filesystem into a docker-archive image, [`DEMO_IMAGE`], that
//! a [`KubeNode`] imports into its containerd.
//!
//! * **Static binary.** `cargo build -p registry-demo --profile demo-image
//!   --target x86_64-unknown-linux-gnu` with `-C target-feature=+crt-static`
//!   (profile `demo-image`: the dev profile without debug info, for a short
//!   first build and a small image): glibc
//!   linked in, a `static-pie` executable that runs on a root filesystem with
//!   no loader and no libraries. The explicit `--target` keeps its artifacts
//!   (and the flag) apart from the host builds in the same target dir, so the
//!   flag never invalidates them. It resolves no host names (Pods use IP
//!   addresses here), which is what a static glibc cannot do through NSS.
//! * **Cache.** Cargo's own fingerprints in the shared target dir: a warm run
//!   is a no-op build (about a second); the first build compiles the
//!   dependency graph for the target once (measured on 2 cores: 1 min 42 s,
//!   with the host's build scripts and proc macros already built by other
//!   builds; a `--release` build took 11 min).
//! * **Image.** [`busybox_rootfs`] (so probes and `sh` work in the Pod) plus
//!   `/bin/registry-demo`, entrypoint `/bin/registry-demo`, packed by
//!   [`KubeNode::build_and_import_image`] (our own `docker_archive`, no
//!   registry, no docker).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::kube_node::{KubeNode, busybox_rootfs};

/// The demo service's image tag (`imagePullPolicy: Never`).
pub const DEMO_IMAGE: &str = "registry-node.local/registry-demo:1";

/// Path of the binary inside the image (its entrypoint).
pub const DEMO_BINARY_IN_IMAGE: &str = "/bin/registry-demo";

/// The cargo profile of the static binary (see the workspace `Cargo.toml`).
pub const DEMO_PROFILE: &str = "demo-image";

/// The target the static binary is built for.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The workspace root (this crate's parent directory).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds (or finds up to date) the static `registry-demo` binary and
/// returns its path. Runs the `cargo` that runs the tests
/// ([`crate::cargo_command`]), in the same target dir.
pub fn build_demo_binary() -> anyhow::Result<PathBuf> {
    let output = crate::cargo_command()
        .current_dir(workspace_root())
        .args(["build", "--quiet", "-p", "registry-demo", "--profile", DEMO_PROFILE, "--target", STATIC_TARGET])
        .args(["--message-format", "json-render-diagnostics"])
        // Wins over RUSTFLAGS; with --target it applies to target artifacts only.
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        .env_remove("RUSTFLAGS")
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "building registry-demo failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // The executable from cargo's own report, wherever the target dir is.
    let executable = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "registry-demo")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| anyhow::anyhow!("cargo reported no registry-demo executable"))?;
    Ok(executable)
}

/// A root filesystem in `dir`: busybox (see [`busybox_rootfs`]) and the
/// demo binary at [`DEMO_BINARY_IN_IMAGE`].
pub fn demo_rootfs(busybox: &Path, demo_binary: &Path, dir: &Path) -> anyhow::Result<()> {
    busybox_rootfs(busybox, dir)?;
    let target = dir.join(DEMO_BINARY_IN_IMAGE.trim_start_matches('/'));
    fs::copy(demo_binary, &target)?;
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Builds the static binary, packs [`DEMO_IMAGE`] and imports it into
/// `node`'s containerd.
pub fn import_demo_image(node: &KubeNode) -> anyhow::Result<()> {
    let binary = build_demo_binary()?;
    let rootfs = node.run_dir().join("images").join("demo-rootfs");
    if rootfs.exists() {
        fs::remove_dir_all(&rootfs)?;
    }
    demo_rootfs(Path::new("/bin/busybox"), &binary, &rootfs)?;
    node.build_and_import_image(&rootfs, DEMO_IMAGE, Some(&[DEMO_BINARY_IN_IMAGE]), Some(&["serve"]))?;
    fs::remove_dir_all(&rootfs)?;
    Ok(())
}
