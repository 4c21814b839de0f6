#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo-fuzz, libFuzzer, nightly toolchain)
# for a bounded time each, starting from the committed seeds (fuzz/seeds/,
# records of the Go framework and of our own writers) and the corpus grown by
# earlier runs (fuzz/corpus/, not committed). A crash fails the run and
# leaves its input in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh              20 s per target (what scripts/test.sh runs)
#   FUZZ_SECONDS=3600 scripts/fuzz.sh   a long run
#   scripts/fuzz.sh node_json    one target
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-20}"
export PATH="$HOME/.cargo/bin:$PATH"
# Its own target dir: the instrumented nightly build shares nothing with the workspace's.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/registry-fuzz-target}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --quiet
fi
cd "$ROOT/fuzz"
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  echo "==> fuzz $target for ${SECONDS_PER_TARGET}s"
  if ! cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $target failed (input in fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  # Executions, coverage and corpus at the end of the run.
  grep -E 'DONE|stat::peak_rss_mb' "$log" | tail -n 2
done
