#!/usr/bin/env bash
# Installs what the tests need (real etcd, Consul, kube-apiserver, protoc) and
# runs every check: format, lints, docs, all tests with real servers required,
# the quickstart, and a memory benchmark.
#
#   scripts/test.sh            everything
#   REGISTRY_TEST_SCALE=1 scripts/test.sh   also the Kubernetes scale tests, and the
#                                           scale bench at 10,000 instances (slow)
#
# Builds and downloads are cached under $HOME/.cache (cargo target dir:
# $HOME/.cache/registry-target unless CARGO_TARGET_DIR is set), so a warm run
# only rebuilds what changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export REGISTRY_TEST_REQUIRE=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/registry-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Incremental artifacts only help a developer's edit-compile loop; in the CI
# cache they grow by gigabytes per run (18 GB seen) and are never reused.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export PATH="$HOME/.cargo/bin:$PATH"

START=$SECONDS
step() { printf '\n==> [%dm%02ds] %s\n' $(((SECONDS - START) / 60)) $(((SECONDS - START) % 60)) "$*"; }

# The Go builds of the Kubernetes components are most of a cold run's install
# (about 8 of 10 minutes). They run in the background while the workspace is
# checked and its test binaries are built, sharing the CPU with those builds
# (the tests need both). Two builds needed only late run in the background at
# the lowest priority: the demo service's static binary for the Kubernetes
# node's image, exactly as `registry_testenv::demo_image` builds it, and the
# release registry-bench of the scale bench; they take the time the test suites
# leave idle (they mostly wait on servers and timers). A warm run finds
# everything built. Each job runs in a session (process group) of its own, so
# that an early exit stops it whole; a session is also a scheduler autogroup,
# in which `nice` only ranks processes against each other, so the lowest
# priority is set on the autogroup itself (/proc/self/autogroup).
mkdir -p "$CARGO_TARGET_DIR"
declare -A BACKGROUND_PID=()
trap 'for pid in "${BACKGROUND_PID[@]}"; do kill -- -"$pid" 2>/dev/null || true; done' EXIT
# background NAME COMMAND...: starts COMMAND in the background, its output in
# $CARGO_TARGET_DIR/NAME.log.
background() {
  local name="$1"
  shift
  setsid "$@" >"$CARGO_TARGET_DIR/$name.log" 2>&1 &
  BACKGROUND_PID[$name]=$!
}
# wait_background NAME: waits for it; prints its log and fails if it failed.
wait_background() {
  if ! wait "${BACKGROUND_PID[$1]}"; then
    cat "$CARGO_TARGET_DIR/$1.log"
    echo "background job $1 failed" >&2
    exit 1
  fi
}

step "install test servers (all but the Go builds; those run in the background)"
scripts/install-test-servers.sh --packages
background kube-builds scripts/install-test-servers.sh --kube-builds
background cargo-builds bash -c '
  set -e
  echo 19 >/proc/self/autogroup 2>/dev/null || true
  nice -n 19 env -u RUSTFLAGS CARGO_ENCODED_RUSTFLAGS=-Ctarget-feature=+crt-static \
    cargo build --quiet -p registry-demo --profile demo-image --target x86_64-unknown-linux-gnu
  nice -n 19 cargo build --quiet --release -p registry-bench
'

step "cargo fmt --check"
cargo fmt --all --check

step "no import circles between the modules of a product crate"
python3 scripts/module-cycles.py

step "cargo clippy (all targets, all features, warnings denied)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo doc (warnings denied)"
RUSTDOCFLAGS="-Dwarnings" cargo doc --workspace --all-features --no-deps --quiet

step "cargo package (every published crate packages; metadata complete)"
# registry-bench is a workspace tool (publish = false) whose normal dependency
# on the unpublished test environment has no version, by design.
cargo package --workspace --exclude registry-bench --no-verify --allow-dirty --quiet

step "cargo test --no-run (the test binaries built while the Go builds finish)"
cargo test --workspace --all-features --no-run --quiet

step "wait for the Go builds of the Kubernetes components"
wait_background kube-builds
cat "$CARGO_TARGET_DIR/kube-builds.log"

step "install test servers again (idempotent: every step already done, nothing fails)"
scripts/install-test-servers.sh

step "cargo test (all features, real servers required)"
# Sequential: running the Kubernetes node's tests beside the others (tried
# once) made timing-bound scenarios fail under the combined load.
cargo test --workspace --all-features --no-fail-fast

# The etcd versions users run: the suites above ran on etcd 3.5 (Debian);
# the etcd conformance suite, the cluster fault scenarios and the auth tests run again on the
# 3.6 build (Kubernetes 1.34 ships 3.6).
step "etcd 3.6: conformance suite and cluster fault scenarios (3.5 ran above)"
REGISTRY_ETCD_SERVER=etcd-3.6 cargo test --all-features -p registry-etcd --test conformance --test cluster --test least_privilege

step "unit tests that need a server (ignored by a plain cargo test)"
# The whole workspace's selection and features, as above, so nothing is built
# again (the only ignored unit tests are registry-kubernetes's).
cargo test --workspace --all-features --lib -- --ignored

if [ "${REGISTRY_TEST_SCALE:-0}" = "1" ]; then
  step "scale tests (ignored by default)"
  # Release build: a debug build cannot drive 2,000 heartbeating instances on 2 cores.
  cargo test --release --all-features -p registry-kubernetes --test scale -- --ignored --nocapture --test-threads=1
fi

# Coverage-guided fuzzing of the decoders (cargo-fuzz, nightly): 20 s per
# target from the committed seeds; the instrumented build is cached in its
# own target dir. A long run: FUZZ_SECONDS=3600 scripts/fuzz.sh
step "fuzz the decoders (bounded)"
scripts/fuzz.sh

step "quickstart"
cargo run --quiet -p grpc-registry --example quickstart

step "grpc_balance example (tonic load balancing over discovery)"
cargo run --quiet -p grpc-registry --features tonic --example grpc_balance

step "graceful example (drain, grace period, uninstall, stop)"
cargo run --quiet -p grpc-registry --features tonic-server --example graceful -- --once

step "metrics example (Prometheus endpoint of a service, scraped)"
cargo run --quiet -p grpc-registry --example metrics

step "wait for the background builds (demo image binary, release registry-bench)"
wait_background cargo-builds

step "registry-bench --backend memory (release, built in the background)"
cargo run --release --quiet -p registry-bench -- --backend memory --instances 100 --samples 200

# Scale (issue 14): a fleet of the library's registrars heartbeating at the
# write rate the TTL is chosen for, a separate discoverer that must see every
# instance over 3xTTL with no heartbeat lost (the bench fails otherwise), cold
# starts, CPU, memory, propagation. Release build: a debug build cannot drive
# thousands of instances on 2 cores. 1,000 instances here (20-30 s per
# backend once built); REGISTRY_TEST_SCALE=1 runs the full 10,000.
SCALE_INSTANCES=1000
[ "${REGISTRY_TEST_SCALE:-0}" = "1" ] && SCALE_INSTANCES=10000
for backend in memory etcd consul-agents-per-app kubernetes-lease; do
  instances=$SCALE_INSTANCES
  # Consul's per-app layout, the fleet spread over 7 client agents of one
  # server: 5,000 is the largest measured here (10,000 saturated these 2 cores).
  [ "$backend" = consul-agents-per-app ] && [ "$instances" -gt 5000 ] && instances=5000
  # Kubernetes at 200 writes/s (TTL 10 s at 1,000): kube-apiserver on these
  # shared 2 cores tops out near 300 renewals/s (docs/performance.md), and at
  # that saturation a renewal slower than TTL/2 now and then loses its Lease
  # (2 of 1,000 went down once, TTL 5 s). The 400/s runs are in the docs.
  rate=400
  [ "$backend" = kubernetes-lease ] && rate=200
  step "registry-bench --backend $backend --instances $instances --max-write-rate $rate (release)"
  cargo run --release --quiet -p registry-bench -- --backend "$backend" --instances "$instances" \
    --max-write-rate "$rate" --samples 50 --cold-starts 3 --concurrency 16
done

step "all checks passed"
