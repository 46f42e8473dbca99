#!/usr/bin/env bash
# Flakiness hunt: runs the integration suite N times in a row against the
# ASan and the UBSan builds (the two side by side, each the other's load),
# optionally beside a CPU hog, and prints one summary line per run.
#   tests/tools/repeat_integration.sh [N] [--hog]
# Logs and junit files go to tests/out/repeat/; each pytest session has its
# own --basetemp (pytest prunes old temp directories of other sessions).
# Exit status 1 if any run failed. Every run is bounded (timeout); the hog
# is stopped by PID.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
N=${1:-10}
HOG=${2:-}
OUT="$ROOT/tests/out/repeat"
PY=/usr/bin/python3
RUN_LIMIT_S=1800
mkdir -p "$OUT/tmp"

declare -A BIN
for cfg in asan ubsan; do
  bazel build --config=$cfg //agent:mtlsd //controlplane:mtls-ca //tests/grpc:grpc_probe \
    >"$OUT/build-$cfg.log" 2>&1 || { tail -20 "$OUT/build-$cfg.log"; exit 1; }
  BIN[$cfg]=$(bazel info --config=$cfg bazel-bin 2>/dev/null)
done

hog_pid=""
if [ "$HOG" = "--hog" ]; then
  command -v stress-ng >/dev/null || { echo "stress-ng is not installed"; exit 1; }
  stress-ng --cpu 2 --timeout $((N * RUN_LIMIT_S))s >/dev/null 2>&1 &
  hog_pid=$!
fi
trap '[ -n "$hog_pid" ] && kill "$hog_pid" 2>/dev/null' EXIT

failed_runs=0
for i in $(seq 1 "$N"); do
  pids=()
  for cfg in asan ubsan; do
    b=${BIN[$cfg]}
    ( MTLSD_BIN="$b/agent/mtlsd" MTLS_CA_BIN="$b/controlplane/mtls-ca" \
        GRPC_PROBE="$b/tests/grpc/grpc_probe" \
        timeout "$RUN_LIMIT_S" $PY -m pytest tests/integration -q -p no:cacheprovider \
        --junitxml="$OUT/$cfg-$i.xml" --basetemp="$OUT/tmp/$cfg-$i" >"$OUT/$cfg-$i.log" 2>&1 ) &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  for cfg in asan ubsan; do
    line=$(tail -1 "$OUT/$cfg-$i.log")
    echo "run $i $cfg: $line"
    grep -E '^(FAILED|ERROR) ' "$OUT/$cfg-$i.log" | sed 's/^/    /'
    case "$line" in *failed*|*error*) failed_runs=$((failed_runs + 1)) ;; *passed*) ;; *) failed_runs=$((failed_runs + 1)) ;; esac
  done
done
echo "$failed_runs of $((2 * N)) runs failed"
[ "$failed_runs" -eq 0 ]
