#!/usr/bin/env bash
# Runs every mtlsd test suite from a fresh checkout and ends with one line
# "N passed, N failed" summing all of them:
#   unit (googletest) plain, ASan and UBSan;
#   integration (real agent processes, OpenSSL peers) plain, ASan and UBSan;
#   libFuzzer targets, time-boxed (FUZZ_SECONDS per target, default 15).
# Installs missing Debian packages first (needs root for that).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT="$ROOT/tests/out"
PY=/usr/bin/python3
COUNT="$PY $ROOT/tests/tools/junit_count.py"

deploy/install_deps.sh || { echo "dependency installation failed"; echo "0 passed, 1 failed"; exit 1; }

rm -rf "$OUT"
mkdir -p "$OUT" "$OUT/tmp"
TOTAL_PASSED=0
TOTAL_FAILED=0

record() { # suite passed failed
  echo "== suite $1: $2 passed, $3 failed"
  TOTAL_PASSED=$((TOTAL_PASSED + $2))
  TOTAL_FAILED=$((TOTAL_FAILED + $3))
}

# Bazel test packages (googletest) that exist in this checkout.
unit_targets() {
  local dir
  for dir in tests/unit tests/grpc tests/controlplane; do
    [ -f "$dir/BUILD.bazel" ] && echo "//$dir/..."
  done
}

# Unit tests under one Bazel config ("" = plain). Counts individual test
# cases from the test.xml files Bazel writes.
run_unit() {
  local name=$1; shift
  local log="$OUT/unit-$name.log"
  # shellcheck disable=SC2046
  bazel test "$@" $(unit_targets) >"$log" 2>&1
  local rc=$?
  local logs
  logs=$(bazel info "$@" bazel-testlogs 2>/dev/null)
  local xmls=""
  local target
  for target in $(unit_targets); do
    target=${target#//}
    xmls="$xmls $(find -L "$logs/${target%/...}" -name test.xml 2>/dev/null)"
  done
  local counts="0 1"
  [ -n "${xmls// /}" ] && counts=$($COUNT $xmls)
  set -- $counts
  local passed=$1 failed=$2
  if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
    failed=1 # the build or a test binary broke before reporting
    tail -30 "$log"
  fi
  record "unit-$name" "$passed" "$failed"
}

# One pytest directory against the binaries in $BIN_DIR.
run_pytest() { # suite-name dir
  local name=$1 dir=$2
  local log="$OUT/$name.log"
  MTLSD_BIN="$BIN_DIR/agent/mtlsd" GRPC_PROBE="$BIN_DIR/tests/grpc/grpc_probe" \
    MTLS_CA_BIN="$BIN_DIR/controlplane/mtls-ca" \
    K8S_WATCH_DRIVER_BIN="$BIN_DIR/tests/controlplane/k8s_watch_driver" \
    K8S_GET_DRIVER_BIN="$BIN_DIR/tests/controlplane/k8s_get_driver" \
    $PY -m pytest "$dir" -q -p no:cacheprovider --junitxml="$OUT/$name.xml" \
    --basetemp="$OUT/tmp/$name" >"$log" 2>&1
  local rc=$?
  tail -3 "$log"
  set -- $($COUNT "$OUT/$name.xml")
  local passed=$1 failed=$2
  if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
  record "$name" "$passed" "$failed"
}

# Integration and interop suites (real processes, real peers) against one
# build of the binaries.
run_integration() {
  local name=$1; shift
  local log="$OUT/build-$name.log"
  local targets="//agent:mtlsd"
  [ -f tests/grpc/BUILD.bazel ] && targets="$targets //tests/grpc:grpc_probe"
  [ -f controlplane/main.c ] && targets="$targets //controlplane:mtls-ca"
  [ -d tests/k8s ] && targets="$targets //tests/controlplane:k8s_watch_driver //tests/controlplane:k8s_get_driver"
  # shellcheck disable=SC2086
  if ! bazel build "$@" $targets >"$log" 2>&1; then
    tail -30 "$log"
    record "integration-$name" 0 1
    return
  fi
  BIN_DIR="$(bazel info "$@" bazel-bin 2>/dev/null)"
  run_pytest "integration-$name" tests/integration
  [ -f tests/grpc/interop_test.py ] && run_pytest "grpc-interop-$name" tests/grpc/interop_test.py
  if ls tests/controlplane/test_*.py >/dev/null 2>&1; then
    run_pytest "controlplane-$name" tests/controlplane
  fi
  # The Kubernetes API server stand-in and mtls-ca's Kubernetes source.
  [ -d tests/k8s ] && run_pytest "k8s-$name" tests/k8s
  # The control plane's scale benchmark at smoke size (about 15 s), so it cannot rot.
  [ -f bench/test_k8s_scale_smoke.py ] && run_pytest "k8s-scale-smoke-$name" bench/test_k8s_scale_smoke.py
}

# libFuzzer targets (SPIFFE IDs, certificates, config, policy), time-boxed;
# the recorded crashers are replayed first as regression tests.
run_fuzz() {
  local log="$OUT/fuzz.log"
  tests/fuzz/run.sh "${FUZZ_SECONDS:-15}" >"$log" 2>&1
  local rc=$?
  grep -E '^fuzz ' "$log"
  local line
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1)
  local passed=0 failed=1
  if [ -n "$line" ]; then
    passed=${line%% passed*}
    failed=${line#*passed, }
    failed=${failed%% failed*}
  fi
  if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
  record fuzz "$passed" "$failed"
}

run_unit plain
run_unit asan --config=asan
run_unit ubsan --config=ubsan
run_integration plain
# Kubernetes manifests: yamllint, security properties, embedded configs
# checked by the real binaries (the plain build from the step above).
[ -d tests/deploy ] && run_pytest deploy tests/deploy
run_integration asan --config=asan
run_integration ubsan --config=ubsan
run_fuzz

echo "logs: $OUT"
echo "$TOTAL_PASSED passed, $TOTAL_FAILED failed"
[ "$TOTAL_FAILED" -eq 0 ]
