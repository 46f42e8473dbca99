#!/usr/bin/env bash
# Coverage-guided fuzzing of the agent's input parsers (and mtls-ca's token
# verification) with libFuzzer.
#
#   tests/fuzz/run.sh [SECONDS_PER_TARGET [TARGET...]]     (default 20, all)
#
# Builds every target in tests/fuzz/*_fuzz.c (or only the TARGETs named,
# e.g. "jwt") with clang
# (-fsanitize=fuzzer,address,undefined; UBSan findings abort), replays the
# known crashers in tests/fuzz/crashers/<target>/ (reproducers of bugs found
# earlier: each must now run clean), then fuzzes each target for the given
# time, starting from tests/fuzz/seeds/<target>/ (new inputs go to
# tests/out/fuzz/corpus-<target>/, kept between runs; a target whose seeds
# would hold private keys makes them there at each run with
# tests/fuzz/make_<target>_seeds.py instead).
#
# Prints one line per target, "fuzz <target>: PASS" or
# "fuzz <target>: FAIL (<reason>)", then "N passed, N failed"; exits 0 iff
# every target passed. Everything else goes to tests/out/fuzz/: build and
# fuzz logs (<target>.build.log, <target>.fuzz.log), new crash inputs
# (artifacts-<target>/) and exec/s figures (stats.txt).
#
# Installs missing Debian packages (clang, its libFuzzer runtime, libyaml,
# jansson, BoringSSL) with apt-get when run as root. Agent code links against
# BoringSSL from /usr/lib/x86_64-linux-gnu/android, never OpenSSL.
set -uo pipefail

SECONDS_PER_TARGET=${1:-20}
if ! [[ $SECONDS_PER_TARGET =~ ^[0-9]+$ ]] || [ "$SECONDS_PER_TARGET" -lt 1 ]; then
  echo "usage: $0 [SECONDS_PER_TARGET [TARGET...]]" >&2
  exit 2
fi
shift $(($# > 0 ? 1 : 0))

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
FUZZ="$ROOT/tests/fuzz"
OUT="$ROOT/tests/out/fuzz"
BSSL_INC=/usr/include/android
BSSL_LIB=/usr/lib/x86_64-linux-gnu/android
TARGETS=(spiffe_id svid policy config client_hello mesh_snapshot mesh_delta jwt http_request
  istio_policy policy_proto workload_api_request proc_net workload_api_response)
if [ $# -gt 0 ]; then
  for t in "$@"; do
    if ! [[ " ${TARGETS[*]} " == *" $t "* ]]; then
      echo "unknown target $t (known: ${TARGETS[*]})" >&2
      exit 2
    fi
  done
  TARGETS=("$@")
fi
GEN="$OUT/gen" # protoc-c output for targets that decode protobuf

# Agent sources each target links.
# The agent's policy library (//agent:policy): rules, their matching, CIDRs,
# PeerAuthentication.
POLICY_SRCS="agent/svid.c agent/policy.c agent/policy_match.c agent/cidr.c agent/peer_auth.c"
target_sources() {
  case $1 in
    spiffe_id | svid) echo "agent/svid.c" ;;
    policy) echo "$POLICY_SRCS" ;;
    config) echo "$POLICY_SRCS agent/mesh.c agent/config.c grpc/target.c" ;;
    client_hello) echo "agent/client_hello.c" ;;
    http_request) echo "agent/http_request.c" ;;
    mesh_delta) echo "agent/mesh_delta.c" ;;
    proc_net) echo "agent/proc_net.c agent/errmsg.c" ;;
    mesh_snapshot)
      echo "$POLICY_SRCS agent/policy_proto.c agent/mesh.c agent/config.c agent/pem.c grpc/target.c"
      echo "agent/mesh_snapshot.c agent/mesh_delta.c $GEN/proto/mtlsd/mesh.pb-c.c"
      ;;
    jwt) echo "controlplane/jwt.c agent/svid.c agent/errmsg.c" ;;
    policy_proto) echo "$POLICY_SRCS agent/policy_proto.c $GEN/proto/mtlsd/mesh.pb-c.c" ;;
    workload_api_request)
      echo "agent/svid.c agent/workload_api_request.c $GEN/proto/spiffe/workload.pb-c.c"
      echo "$GEN/google/protobuf/struct.pb-c.c"
      ;;
    workload_api_response)
      echo "agent/svid.c agent/workload_api_response.c"
      echo "$GEN/proto/spiffe/workload.pb-c.c $GEN/google/protobuf/struct.pb-c.c"
      ;;
    istio_policy)
      echo "$POLICY_SRCS agent/policy_proto.c $GEN/proto/mtlsd/mesh.pb-c.c"
      echo "controlplane/istio_policy.c controlplane/istio_rules.c controlplane/istio_json.c"
      echo "controlplane/k8s_objects.c"
      ;;
  esac
}

# ---- dependencies ---------------------------------------------------------

pkg_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# The libFuzzer runtime of whatever clang is installed, e.g.
# /usr/lib/llvm-14/lib/clang/14.0.6/lib/linux/libclang_rt.fuzzer-x86_64.a.
fuzzer_runtime() {
  command -v clang >/dev/null 2>&1 || return 1
  local dir
  dir=$(clang --print-runtime-dir 2>/dev/null) || return 1
  [ -f "$dir/libclang_rt.fuzzer-x86_64.a" ] && [ -f "$dir/libclang_rt.asan-x86_64.a" ]
}

install_deps() {
  local missing=()
  command -v clang >/dev/null 2>&1 || missing+=(clang)
  [ -f /usr/include/yaml.h ] || missing+=(libyaml-dev)
  [ -f /usr/include/jansson.h ] || missing+=(libjansson-dev)
  command -v protoc-c >/dev/null 2>&1 || missing+=(protobuf-c-compiler)
  [ -f /usr/include/protobuf-c/protobuf-c.h ] || missing+=(libprotobuf-c-dev)
  { [ -f "$BSSL_INC/openssl/ssl.h" ] && [ -e "$BSSL_LIB/libcrypto.so" ] &&
    [ -e "$BSSL_LIB/libssl.so" ]; } || missing+=(android-libboringssl-dev)
  if [ "${#missing[@]}" -eq 0 ] && fuzzer_runtime; then
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing: ${missing[*]} (or clang's libFuzzer runtime); run as root" >"$OUT/deps.log"
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  {
    apt-get update -qq &&
      { [ "${#missing[@]}" -eq 0 ] ||
        apt-get install -y -qq --no-install-recommends "${missing[@]}"; } &&
      if ! fuzzer_runtime; then
        # Debian splits compiler-rt out of clang: libclang-rt-<major>-dev
        # carries libFuzzer and the sanitizer runtimes.
        local major
        major=$(clang -dumpversion | cut -d. -f1)
        if apt-cache show "libclang-rt-$major-dev" >/dev/null 2>&1; then
          apt-get install -y -qq --no-install-recommends "libclang-rt-$major-dev"
        else
          apt-get install -y -qq --no-install-recommends libclang-rt-dev
        fi
      fi
  } >"$OUT/deps.log" 2>&1 && fuzzer_runtime
}

# ---- build ----------------------------------------------------------------

CFLAGS=(-g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
  -fno-sanitize-recover=undefined -D_GNU_SOURCE -std=c11 -Wall -Wextra -Werror
  -I"$ROOT" -I"$GEN" -I"$BSSL_INC")
LDLIBS=(-L"$BSSL_LIB" -Wl,-rpath,"$BSSL_LIB" -lssl -lcrypto -lyaml -lprotobuf-c -ljansson)

# The C code of proto/mtlsd/mesh.proto, as Bazel generates it (//proto:mesh_c).
# The Workload API's too (//proto:workload_c), with google.protobuf.Struct
# from Debian's libprotobuf-dev, which it imports.
generate_protos() {
  mkdir -p "$GEN" && (cd "$ROOT" && protoc-c -I. --c_out="$GEN" proto/mtlsd/mesh.proto) &&
    (cd "$ROOT" && protoc-c -I. -I/usr/include --c_out="$GEN" proto/spiffe/workload.proto) &&
    protoc-c -I/usr/include --c_out="$GEN" google/protobuf/struct.proto
}

# build TARGET: writes $OUT/TARGET_fuzz; returns 1 with the log kept on failure.
build() {
  local t=$1 bin="$OUT/$1_fuzz" log="$OUT/$1.build.log"
  local srcs
  read -r -a srcs <<<"$(target_sources "$t" | tr '\n' ' ')"
  rm -f "$bin"
  (cd "$ROOT" && clang "${CFLAGS[@]}" -o "$bin" "tests/fuzz/${t}_fuzz.c" "${srcs[@]}" \
    "${LDLIBS[@]}") >"$log" 2>&1 || return 1
  # Guard against a link that picked up OpenSSL instead of BoringSSL.
  if ldd "$bin" | grep -E 'lib(ssl|crypto)\.so' | grep -qv "$BSSL_LIB"; then
    echo "linked against a libssl/libcrypto outside $BSSL_LIB:" >>"$log"
    ldd "$bin" >>"$log"
    return 1
  fi
}

# ---- running ----------------------------------------------------------------

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# Short text naming what went wrong in libFuzzer's log |$1|.
crash_reason() {
  local log=$1 what
  what=$(grep -m1 -oE 'invariant failed at [^ ]+: .*|policy_fuzz: (peer|rule) .*|config_fuzz: error .*' "$log")
  [ -n "$what" ] || what=$(grep -m1 -oE 'ERROR: (AddressSanitizer|LeakSanitizer): [^0-9(]*' "$log" |
    sed -E 's/^ERROR: //; s/ on (unknown )?address.*$//; s/ +$//')
  [ -n "$what" ] || what=$(grep -m1 -oE '[^ /]+\.c:[0-9]+:[0-9]+: runtime error: .*' "$log" | sed 's/^/UBSan: /')
  [ -n "$what" ] || what=$(grep -m1 -oE 'ERROR: libFuzzer: [a-z -]+' "$log" | sed 's/^ERROR: //')
  [ -n "$what" ] || what="exited with an error, see $log"
  # First frame in agent or control-plane code, when there is one.
  local frame
  frame=$(grep -m1 -oE '#[0-9]+ 0x[0-9a-f]+ in [A-Za-z_0-9]+ [^ ]*(agent|controlplane)/[a-z_]+\.c:[0-9]+' "$log" |
    sed -E "s#^\#[0-9]+ 0x[0-9a-f]+ ##; s#$ROOT/##")
  [ -n "$frame" ] && what="$what, $frame"
  echo "$what" | tr -d '\n' | cut -c1-300
}

# replay TARGET: runs every known crasher once; prints a reason on failure.
replay() {
  local t=$1 dir="$FUZZ/crashers/$1" log="$OUT/$1.replay.log"
  [ -d "$dir" ] || return 0
  local files=()
  for f in "$dir"/*; do [ -f "$f" ] && files+=("$f"); done
  [ "${#files[@]}" -eq 0 ] && return 0
  : >"$log"
  for f in "${files[@]}"; do
    if ! timeout 60 "$OUT/${t}_fuzz" -rss_limit_mb=2048 -timeout=10 "$f" >>"$log" 2>&1; then
      echo "known crasher ${f#"$ROOT"/} still fails: $(crash_reason "$log")"
      return 1
    fi
  done
}

# fuzz TARGET: prints a reason on failure.
fuzz() {
  local t=$1 log="$OUT/$1.fuzz.log" corpus="$OUT/corpus-$1" artifacts="$OUT/artifacts-$1/"
  mkdir -p "$corpus" "$artifacts"
  local args=(-max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -timeout=10
    -print_final_stats=1 -artifact_prefix="$artifacts")
  [ -f "$FUZZ/dicts/$t.dict" ] && args+=(-dict="$FUZZ/dicts/$t.dict")
  local seeds=()
  [ -d "$FUZZ/seeds/$t" ] && seeds=("$FUZZ/seeds/$t")
  # Seeds that hold private keys are made fresh into the corpus, never committed.
  if [ -f "$FUZZ/make_${t}_seeds.py" ] &&
    ! /usr/bin/python3 "$FUZZ/make_${t}_seeds.py" "$corpus" >"$OUT/$t.seeds.log" 2>&1; then
    echo "seed generation failed, see tests/out/fuzz/$t.seeds.log"
    return 1
  fi
  # The hard limit only catches a hung libFuzzer; -max_total_time ends a run.
  TMPDIR="$OUT/tmp" timeout $((SECONDS_PER_TARGET + 300)) \
    "$OUT/${t}_fuzz" "${args[@]}" "$corpus" "${seeds[@]}" >"$log" 2>&1
  local rc=$?
  local execs rate
  execs=$(grep -m1 -oE 'stat::number_of_executed_units:[[:space:]]+[0-9]+' "$log" | grep -oE '[0-9]+$')
  rate=$(grep -m1 -oE 'stat::average_exec_per_sec:[[:space:]]+[0-9]+' "$log" | grep -oE '[0-9]+$')
  echo "$t: ${execs:-?} runs in ${SECONDS_PER_TARGET}s, ${rate:-?} exec/s, corpus $(find "$corpus" -type f | wc -l) files, rc $rc" >>"$OUT/stats.txt"
  [ "$rc" -eq 0 ] && return 0
  local reason input
  reason=$(crash_reason "$log")
  input=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -1 | sed 's/^Test unit written to //')
  [ "$rc" -eq 124 ] && reason="libFuzzer did not stop in time"
  [ -n "$input" ] && reason="$reason; input ${input#"$ROOT"/}"
  echo "$reason"
  return 1
}

mkdir -p "$OUT" "$OUT/tmp"
: >"$OUT/stats.txt"
PASSED=0
FAILED=0
result() { # target status [reason]
  if [ "$2" = PASS ]; then
    echo "fuzz $1: PASS"
    PASSED=$((PASSED + 1))
  else
    echo "fuzz $1: FAIL ($3)"
    FAILED=$((FAILED + 1))
  fi
}

if ! install_deps; then
  for t in "${TARGETS[@]}"; do result "$t" FAIL "missing clang/libFuzzer/libyaml/jansson/BoringSSL, see tests/out/fuzz/deps.log"; done
else
  generate_protos >"$OUT/gen.log" 2>&1 || echo "protoc-c failed, see $OUT/gen.log" >&2
  for t in "${TARGETS[@]}"; do
    if ! build "$t"; then
      result "$t" FAIL "build failed, see tests/out/fuzz/$t.build.log"
      continue
    fi
    if reason=$(replay "$t"); then :; else
      result "$t" FAIL "$reason"
      continue
    fi
    if reason=$(fuzz "$t"); then
      result "$t" PASS
    else
      result "$t" FAIL "$reason"
    fi
  done
fi
rm -rf "$OUT/tmp"

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
