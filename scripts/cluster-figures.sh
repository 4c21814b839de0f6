#!/usr/bin/env bash
# Runs the cluster fault scenarios N times and prints, per scenario and
# figure, the median and the range of the `FIGURES` lines they print
# (docs/cluster-faults.md is written from this output).
#
#   scripts/cluster-figures.sh                 5 runs of every cluster test binary
#   RUNS=7 scripts/cluster-figures.sh          7 runs
#   scripts/cluster-figures.sh etcd consul     only these (etcd, consul, kubernetes)
#   FILTER=silent scripts/cluster-figures.sh   only tests whose name contains "silent"
#
# Real servers are required (REGISTRY_TEST_REQUIRE=1). Each run's output is
# kept in $OUT (default target dir/cluster-figures/<date>): run-<crate>-<n>.log.
# Also printed: every run's wall time and result, per binary.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export REGISTRY_TEST_REQUIRE=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/registry-target}"
export PATH="$HOME/.cargo/bin:$PATH"
RUNS="${RUNS:-5}"
FILTER="${FILTER:-}"
OUT="${OUT:-$CARGO_TARGET_DIR/cluster-figures/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"

# crate:test-binary of each cluster scenario set.
declare -A BINARIES=(
  [etcd]="registry-etcd:cluster"
  [consul]="registry-consul:cluster"
  [kubernetes]="registry-kubernetes:partition"
)
selected=("$@")
[ ${#selected[@]} -gt 0 ] || selected=(etcd consul kubernetes)

binary_of() {
  local crate="$1" test="$2"
  cargo test -p "$crate" --all-features --test "$test" --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1
}

for name in "${selected[@]}"; do
  spec="${BINARIES[$name]:?unknown set $name (etcd, consul, kubernetes)}"
  crate="${spec%%:*}"
  test="${spec#*:}"
  echo "==> building $crate --test $test" >&2
  cargo test -p "$crate" --all-features --test "$test" --no-run >&2
  bin="$(binary_of "$crate" "$test")"
  [ -x "$bin" ] || { echo "no test binary for $crate --test $test" >&2; exit 1; }
  for run in $(seq 1 "$RUNS"); do
    log="$OUT/run-$name-$run.log"
    started=$(date +%s.%N)
    set +e
    (cd "$ROOT/$crate" && "$bin" ${FILTER:+"$FILTER"}) >"$log" 2>&1
    status=$?
    set -e
    ended=$(date +%s.%N)
    result="$(grep -E '^test result:' "$log" | tail -n 1)"
    printf 'RUN %s %d/%d: %.1f s, exit %d, %s\n' "$name" "$run" "$RUNS" "$(echo "$ended - $started" | bc)" \
      "$status" "${result:-no result line}"
    grep -E '^test .* FAILED|^failures:' "$log" | sed 's/^/    /' || true
  done
done

echo
echo "Figures over $RUNS runs (median [min-max] n=samples); logs in $OUT"
cat "$OUT"/run-*.log | grep -h '^FIGURES ' | awk '
  {
    scenario = $2; sub(/:$/, "", scenario)
    for (i = 3; i <= NF; i++) {
      split($i, kv, "="); key = kv[1]; value = kv[2]
      if (!((scenario, key) in seen)) { seen[scenario, key] = 1; order[++n] = scenario SUBSEP key }
      unit = ""
      if (value ~ /^-?[0-9.]+s$/) { unit = "s"; sub(/s$/, "", value) }
      if (value ~ /^-?[0-9.]+$/) {
        count[scenario, key]++; values[scenario, key, count[scenario, key]] = value + 0; units[scenario, key] = unit
      } else {
        texts[scenario, key] = texts[scenario, key] (texts[scenario, key] == "" ? "" : ",") value
      }
    }
  }
  END {
    last = ""
    for (o = 1; o <= n; o++) {
      split(order[o], sk, SUBSEP); scenario = sk[1]; key = sk[2]
      if (scenario != last) { print scenario; last = scenario }
      c = count[scenario, key]
      if (c > 0) {
        for (i = 1; i <= c; i++) v[i] = values[scenario, key, i]
        for (i = 2; i <= c; i++) { x = v[i]; j = i - 1; while (j > 0 && v[j] > x) { v[j + 1] = v[j]; j-- } v[j + 1] = x }
        median = (c % 2) ? v[(c + 1) / 2] : (v[c / 2] + v[c / 2 + 1]) / 2
        u = units[scenario, key]
        printf "  %-34s %g%s [%g-%g] n=%d\n", key, median, u, v[1], v[c], c
      }
      if (texts[scenario, key] != "") printf "  %-34s %s\n", key, texts[scenario, key]
    }
  }'
