#!/usr/bin/env bash
# Runs scripts/install-test-servers.sh N times in a row (default 30) on a warm
# machine and prints how many runs failed: the installer's idempotence and its
# freedom from races (a `cmd | grep -q` under pipefail once failed one run in three).
#
#   scripts/repeat-installer.sh [N]
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs="${1:-30}"
fails=0
start=$(date +%s)
for i in $(seq "$runs"); do
  if ! scripts/install-test-servers.sh >"${TMPDIR:-/tmp}/repeat-installer.log" 2>&1; then
    fails=$((fails + 1))
    echo "run $i failed:" >&2
    cat "${TMPDIR:-/tmp}/repeat-installer.log" >&2
  fi
done
echo "installer: $runs runs, $fails failures, $(( $(date +%s) - start )) s"
[ "$fails" -eq 0 ]
