#!/usr/bin/env bash
# What a library user's build costs: a scratch crate that depends on the
# facade with default features (as `registry = { package = "grpc-registry" }`
# would), its distinct dependency count, and its cold build time in a target
# dir of its own.
#
#   scripts/facade-footprint.sh            count and cold build
#   scripts/facade-footprint.sh --count    count only
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

mkdir -p "$WORK/user/src"
cat > "$WORK/user/Cargo.toml" <<TOML
[package]
name = "facade-user"
version = "0.1.0"
edition = "2024"

[dependencies]
registry = { package = "grpc-registry", path = "$ROOT/registry" }

[workspace]
TOML
echo 'fn main() { let _ = registry::backends(); }' > "$WORK/user/src/main.rs"

cd "$WORK/user"
tree="$(cargo tree -e normal --prefix none)"
count="$(sort -u <<<"$tree" | wc -l)"
heavy="$(grep -E '^(kube|k8s-openapi|etcd-client|tonic|hyper|rcgen|libtest-mimic) ' <<<"$tree" | sort -u || true)"
echo "facade with default features: $count distinct crates (the scratch crate included)"
echo "kube, k8s-openapi, etcd-client, tonic, hyper, rcgen, libtest-mimic: ${heavy:-none}"
[ "${1:-}" = "--count" ] && exit 0

start=$(date +%s)
CARGO_TARGET_DIR="$WORK/target" cargo build --quiet
echo "cold build of the scratch crate: $(( $(date +%s) - start )) s (load average $(cut -d' ' -f1 /proc/loadavg))"
