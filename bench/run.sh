#!/usr/bin/env bash
# bench/run.sh - measure mtlsd against real peers in one run, on 127.0.0.1 only.
#
# Paths (each carries the same iperf3 and echo traffic):
#   direct    client -> server                                   (baseline)
#   mtlsd-wN  client -> mtlsd outbound -> mTLS -> mtlsd inbound -> server  (workers: N)
#   stunnel   client -> stunnel client -> mTLS -> stunnel server -> server
#   haproxy   client -> haproxy -> mTLS -> haproxy -> server     (optional)
#
# Metrics: iperf3 bulk throughput (1 and 4 streams), proxy CPU seconds per GB,
# connection rate with p50/p99 latency, proxy RSS idle and at peak during the
# connection test. See bench/README.md. Run by hand; never part of the tests.
#
# Every load is bounded (iperf3 -t, a connection count and a deadline, and
# `timeout` around each client); only the processes started here are stopped,
# by PID, from the EXIT trap.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
OUT=$BENCH/out
RAW=$OUT/raw
PY=/usr/bin/python3
LOADGEN=$BENCH/loadgen.py

# --- knobs (environment) ------------------------------------------------------
BENCH_SECONDS=${BENCH_SECONDS:-5}          # length of every bulk and connection test
BENCH_CONNS=${BENCH_CONNS:-2000}           # connection test: at most this many connections
BENCH_THREADS=${BENCH_THREADS:-4}          # connection test: concurrent client threads
BENCH_WORKERS=${BENCH_WORKERS:-"1 2"}      # mtlsd worker counts to measure
BENCH_HAPROXY=${BENCH_HAPROXY:-1}          # 1: also measure haproxy; 0: skip it
BENCH_PORT_BASE=${BENCH_PORT_BASE:-24100}  # every port used is BASE+1 .. BASE+59
# One TLS 1.3 suite for every peer, so the comparison is not about ciphers.
# BoringSSL (mtlsd) picks AES-128-GCM first on AES-NI hardware; pin the others to it.
BENCH_CIPHERSUITE=${BENCH_CIPHERSUITE:-TLS_AES_128_GCM_SHA256}
BENCH_STUNNEL_DEBUG=${BENCH_STUNNEL_DEBUG:-notice}  # stunnel log level (its default)

IPERF_PORT=$((BENCH_PORT_BASE + 1))
ECHO_PORT=$((BENCH_PORT_BASE + 2))
HZ=$(getconf CLK_TCK)
PKI=$OUT/pki
FRONT_ID=spiffe://example.org/ns/default/sa/frontend
BACK_ID=spiffe://example.org/ns/default/sa/backend

PIDS=()  # every process we started and have not stopped yet

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

# --- process management ---------------------------------------------------------

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD... : runs CMD in the background, stdout+stderr to $OUT/NAME.log;
# the PID goes to PIDS and to the global LAST_PID.
start() {
  local name=$1; shift
  "$@" >"$OUT/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# forget PID... : drops PIDs (already exited or stopped) from PIDS.
forget() {
  local keep=() p
  for p in "${PIDS[@]}"; do
    [[ " $* " == *" $p "* ]] || keep+=("$p")
  done
  PIDS=("${keep[@]}")
}

# stop PID... : stops processes we started, and forgets them.
stop() {
  local pid
  for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
  forget "$@"
}

# run_load OUTFILE CMD... : runs a (self-bounded) load client with stdout to
# OUTFILE and returns its exit status. It runs in the background with its PID
# in PIDS, so a TERM/INT to this script is handled at once (bash runs traps
# during `wait`, not while a foreground child runs) and cleanup stops it too.
run_load() {
  local out=$1 pid rc=0; shift
  "$@" >"$out" &
  pid=$!
  PIDS+=("$pid")
  wait "$pid" || rc=$?
  forget "$pid"
  return "$rc"
}

# wait_listen PORT PID NAME : until PORT listens; fails early if PID died.
wait_listen() {
  local port=$1 pid=$2 name=$3 _
  for _ in $(seq 100); do
    ss -Hltn "sport = :$port" | grep -q LISTEN && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$OUT/$name.log" >&2; die "$name exited during start-up"; }
    sleep 0.1
  done
  die "$name is not listening on port $port after 10 s"
}

port_free() { ! ss -Hltn "sport = :$1" | grep -q LISTEN; }

# --- /proc readings ---------------------------------------------------------------

# cpu_ticks PID... : user+sys clock ticks summed over the PIDs. /proc/PID/stat
# counts the whole thread group, including threads that have already exited.
cpu_ticks() {
  local pid stat total=0 fields
  for pid in "$@"; do
    stat=$(<"/proc/$pid/stat")
    read -r -a fields <<<"${stat##*) }"  # fields after "(comm) ": index 0 is field 3
    total=$((total + fields[11] + fields[12]))  # utime (14) + stime (15)
  done
  echo "$total"
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# --- setup --------------------------------------------------------------------------

install_deps() {
  local pkgs=(iperf3 stunnel4 iproute2 openssl python3) missing=() p
  [[ $BENCH_HAPROXY == 1 ]] && pkgs+=(haproxy)
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  [[ $(id -u) == 0 ]] || die "missing Debian packages: ${missing[*]} (run as root or apt-get install them)"
  log "installing from Debian: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Builds the agent and copies the binary, so a concurrent rebuild cannot swap it mid-run.
build_agent() {
  log "building //agent:mtlsd (optimised by default, see .bazelrc)"
  (cd "$ROOT" && bazel build //agent:mtlsd >"$OUT/bazel.log" 2>&1) || { cat "$OUT/bazel.log" >&2; die "bazel build failed"; }
  rm -f "$OUT/mtlsd"
  cp "$ROOT/bazel-bin/agent/mtlsd" "$OUT/mtlsd"
}

make_pki() {
  log "development PKI in bench/out/pki"
  "$ROOT/certs/mkpki.sh" --out "$PKI" frontend backend >"$OUT/mkpki.log" 2>&1 || { cat "$OUT/mkpki.log" >&2; die "mkpki failed"; }
  # haproxy wants the chain and the key in one file.
  local w
  for w in frontend backend; do
    cat "$PKI/workloads/$w/chain.pem" "$PKI/workloads/$w/key.pem" >"$OUT/$w.haproxy.pem"
    chmod 600 "$OUT/$w.haproxy.pem"
  done
}

start_servers() {
  local p
  for p in $(seq $((BENCH_PORT_BASE + 1)) $((BENCH_PORT_BASE + 59))); do
    port_free "$p" || die "port $p is in use; pick another BENCH_PORT_BASE"
  done
  start iperf3-server iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT"
  wait_listen "$IPERF_PORT" "$LAST_PID" iperf3-server
  start echo-server "$PY" "$LOADGEN" echo-server --port "$ECHO_PORT"
  wait_listen "$ECHO_PORT" "$LAST_PID" echo-server
}

# --- the proxy pairs ----------------------------------------------------------------
# Each start_* sets FRONT_PID, BACK_PID (the two proxy processes), and
# FRONT_IPERF / FRONT_ECHO (the plain ports a client uses) and BACK_ECHO (the
# backend's mTLS port for the echo app, used by the mutual-TLS probe).
# Path number n uses ports BASE + 10n + 1..4.

set_ports() {
  local b=$((BENCH_PORT_BASE + 10 * $1))
  BACK_IPERF=$((b + 1)) BACK_ECHO=$((b + 2)) FRONT_IPERF=$((b + 3)) FRONT_ECHO=$((b + 4))
}

start_mtlsd() { # WORKERS
  local w=$1 name
  [[ $w =~ ^[1-3]$ ]] || die "BENCH_WORKERS: each entry must be 1, 2 or 3"
  set_ports "$w"  # path numbers 1-3 are the mtlsd worker counts
  name=mtlsd-w$w
  cat >"$OUT/$name-backend.yaml" <<YAML
trust_domain: example.org
workers: $w
log_level: warn
access_log: $OUT/$name-backend.access.log
admin: {address: "127.0.0.1:0"}
tls: {session_resumption: false}  # like the peers here (see bench/README.md)
identity:
  cert_file: $PKI/workloads/backend/chain.pem
  key_file: $PKI/workloads/backend/key.pem
trust_bundles:
  - trust_domain: example.org
    file: $PKI/bundle.pem
inbound:
  listeners:
    - address: 127.0.0.1:$BACK_IPERF
      app_port: $IPERF_PORT
    - address: 127.0.0.1:$BACK_ECHO
      app_port: $ECHO_PORT
  app_address: 127.0.0.1
policy:
  default: deny
  rules:
    - name: frontend-may-call-backend
      action: allow
      ports: [$IPERF_PORT, $ECHO_PORT]
      from:
        - id: $FRONT_ID
YAML
  cat >"$OUT/$name-frontend.yaml" <<YAML
trust_domain: example.org
workers: $w
log_level: warn
access_log: $OUT/$name-frontend.access.log
admin: {address: "127.0.0.1:0"}
tls: {session_resumption: false}  # like the peers here (see bench/README.md)
identity:
  cert_file: $PKI/workloads/frontend/chain.pem
  key_file: $PKI/workloads/frontend/key.pem
trust_bundles:
  - trust_domain: example.org
    file: $PKI/bundle.pem
outbound:
  listeners:
    - address: 127.0.0.1:$FRONT_IPERF
      destination: 127.0.0.1:$BACK_IPERF
    - address: 127.0.0.1:$FRONT_ECHO
      destination: 127.0.0.1:$BACK_ECHO
  destinations:
    - address: 127.0.0.1:$BACK_IPERF
      spiffe_id: $BACK_ID
    - address: 127.0.0.1:$BACK_ECHO
      spiffe_id: $BACK_ID
  unknown_destination: deny
YAML
  rm -f "$OUT/$name"-*.access.log
  local role
  for role in backend frontend; do
    "$OUT/mtlsd" --check-config "$OUT/$name-$role.yaml" >/dev/null
    start "$name-$role" "$OUT/mtlsd" --config "$OUT/$name-$role.yaml"
    if [[ $role == backend ]]; then BACK_PID=$LAST_PID; else FRONT_PID=$LAST_PID; fi
  done
  wait_listen "$BACK_ECHO" "$BACK_PID" "$name-backend"
  wait_listen "$FRONT_ECHO" "$FRONT_PID" "$name-frontend"
}

# stunnel_service ROLE SERVICE ACCEPT CONNECT : one service section; the same mutual
# TLS as mtlsd: our chain + key, peer chain verified against the root, TLS 1.3,
# no session resumption (mtlsd does a full handshake every time).
stunnel_service() {
  local role=$1 service=$2 accept=$3 connect=$4 client=no
  [[ $role == frontend ]] && client=yes
  cat <<CONF

[$service]
client = $client
accept = 127.0.0.1:$accept
connect = 127.0.0.1:$connect
cert = $PKI/workloads/$role/chain.pem
key = $PKI/workloads/$role/key.pem
CAfile = $PKI/bundle.pem
verifyChain = yes
requireCert = yes
sslVersionMin = TLSv1.3
ciphersuites = $BENCH_CIPHERSUITE
sessionResume = no
options = NO_TICKET
CONF
}

start_stunnel() {
  set_ports 4
  local role conf
  for role in backend frontend; do
    conf=$OUT/stunnel-$role.conf
    # foreground: stunnel stays our child, so its PID is the one we measure.
    # debug = notice (stunnel's default) logs five short lines per connection,
    # among them "Certificate accepted at depth=0: CN=<peer>": the same facts as
    # mtlsd's one access-log line. A quieter level would hide that evidence.
    {
      printf 'foreground = yes\npid =\nsyslog = no\ndebug = %s\noutput = %s\n' \
        "$BENCH_STUNNEL_DEBUG" "$OUT/stunnel-$role.out"
      if [[ $role == backend ]]; then
        stunnel_service backend iperf "$BACK_IPERF" "$IPERF_PORT"
        stunnel_service backend echo "$BACK_ECHO" "$ECHO_PORT"
      else
        stunnel_service frontend iperf "$FRONT_IPERF" "$BACK_IPERF"
        stunnel_service frontend echo "$FRONT_ECHO" "$BACK_ECHO"
      fi
    } >"$conf"
    rm -f "$OUT/stunnel-$role.out"
    start "stunnel-$role" stunnel "$conf"
    if [[ $role == backend ]]; then BACK_PID=$LAST_PID; else FRONT_PID=$LAST_PID; fi
  done
  wait_listen "$BACK_ECHO" "$BACK_PID" stunnel-backend
  wait_listen "$FRONT_ECHO" "$FRONT_PID" stunnel-frontend
}

start_haproxy() {
  set_ports 5
  # One thread each, like mtlsd workers: 1. Client certificate required on the
  # inbound side, server chain verified on the outbound side, no tickets, no reuse.
  local common
  common="global
  nbthread 1
  maxconn 4000
  ssl-default-bind-ciphersuites $BENCH_CIPHERSUITE
  ssl-default-server-ciphersuites $BENCH_CIPHERSUITE
  ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets
  ssl-default-server-options ssl-min-ver TLSv1.3 no-tls-tickets
  log stdout format raw local0 info
defaults
  mode tcp
  log global
  timeout connect 5s
  timeout client 300s
  timeout server 300s"
  cat >"$OUT/haproxy-backend.cfg" <<CFG
$common
  log-format "%ci:%cp %ft %b %Tt %B peer_cn=%[ssl_c_s_dn(cn)] verify=%[ssl_c_verify] resumed=%[ssl_fc_is_resumed] %sslv %sslc"
frontend in_iperf
  bind 127.0.0.1:$BACK_IPERF ssl crt $OUT/backend.haproxy.pem ca-file $PKI/bundle.pem verify required
  default_backend app_iperf
frontend in_echo
  bind 127.0.0.1:$BACK_ECHO ssl crt $OUT/backend.haproxy.pem ca-file $PKI/bundle.pem verify required
  default_backend app_echo
backend app_iperf
  server app 127.0.0.1:$IPERF_PORT
backend app_echo
  server app 127.0.0.1:$ECHO_PORT
CFG
  cat >"$OUT/haproxy-frontend.cfg" <<CFG
$common
  log-format "%ci:%cp %ft %b/%s %Tt %B termination=%ts"
frontend out_iperf
  bind 127.0.0.1:$FRONT_IPERF
  default_backend mesh_iperf
frontend out_echo
  bind 127.0.0.1:$FRONT_ECHO
  default_backend mesh_echo
backend mesh_iperf
  server backend 127.0.0.1:$BACK_IPERF ssl crt $OUT/frontend.haproxy.pem ca-file $PKI/bundle.pem verify required no-ssl-reuse
backend mesh_echo
  server backend 127.0.0.1:$BACK_ECHO ssl crt $OUT/frontend.haproxy.pem ca-file $PKI/bundle.pem verify required no-ssl-reuse
CFG
  local role
  for role in backend frontend; do
    haproxy -c -q -f "$OUT/haproxy-$role.cfg" || die "haproxy-$role.cfg is invalid"
    start "haproxy-$role" haproxy -db -f "$OUT/haproxy-$role.cfg"
    if [[ $role == backend ]]; then BACK_PID=$LAST_PID; else FRONT_PID=$LAST_PID; fi
  done
  wait_listen "$BACK_ECHO" "$BACK_PID" haproxy-backend
  wait_listen "$FRONT_ECHO" "$FRONT_PID" haproxy-frontend
}

# --- checks before measuring ------------------------------------------------------

# check_echo PATH PORT : 1 MiB of random bytes through the path must come back unchanged.
check_echo() {
  timeout 30 "$PY" "$LOADGEN" check --port "$2" || die "$1: echo round trip failed"
}

# check_mutual PATH : the backend proxy must refuse a TLS client without a
# certificate and accept one with the frontend certificate; then the path's own
# logs must show each side saw the other's certificate.
check_mutual() {
  local path=$1 probe
  probe=$(timeout 30 "$PY" "$LOADGEN" tls-probe --port "$BACK_ECHO" --cafile "$PKI/bundle.pem")
  [[ $probe == refused* ]] || die "$path: backend accepted a TLS client without a certificate ($probe)"
  probe=$(timeout 30 "$PY" "$LOADGEN" tls-probe --port "$BACK_ECHO" --cafile "$PKI/bundle.pem" \
    --cert "$PKI/workloads/frontend/chain.pem" --key "$PKI/workloads/frontend/key.pem")
  [[ $probe == echo* ]] || die "$path: backend refused the frontend certificate ($probe)"
  local front_seen back_seen
  case $path in
    mtlsd-*)
      # One JSON line per closed connection; allow a moment for the write.
      back_seen=$(wait_grep "$OUT/$path-backend.access.log" "\"peer_id\":\"$FRONT_ID\".*\"reason\":\"ok\"")
      front_seen=$(wait_grep "$OUT/$path-frontend.access.log" "\"peer_id\":\"$BACK_ID\".*\"reason\":\"ok\"")
      ;;
    stunnel)
      back_seen=$(wait_grep "$OUT/stunnel-backend.out" "Certificate accepted at depth=0: .*CN=frontend")
      front_seen=$(wait_grep "$OUT/stunnel-frontend.out" "Certificate accepted at depth=0: .*CN=backend")
      ;;
    haproxy)
      back_seen=$(wait_grep "$OUT/haproxy-backend.log" "peer_cn=frontend verify=0")
      # "--": no error at any stage, so the backend's chain passed "verify required".
      # (ssl_bc_* fetches are empty by log time, so the server side shows no cert name.)
      front_seen=$(wait_grep "$OUT/haproxy-frontend.log" "mesh_echo/backend .* termination=--")
      ;;
  esac
  [[ -n $back_seen && -n $front_seen ]] || die "$path: logs do not show a mutually authenticated connection"
  printf '%s\n%s\n' "$back_seen" "$front_seen" >"$RAW/$path/mutual.txt"
}

# wait_grep FILE REGEX : first matching line, waiting up to 3 s for it to appear.
wait_grep() {
  local _ line
  for _ in $(seq 30); do
    line=$(grep -m1 -E "$2" "$1" 2>/dev/null || true)
    [[ -n $line ]] && { echo "$line"; return 0; }
    sleep 0.1
  done
  return 0
}

# --- measurements -----------------------------------------------------------------

# bulk PATH PORT STREAMS PROXY_PID... : iperf3 for BENCH_SECONDS; CPU ticks of the
# proxies across the run go next to the iperf3 JSON.
bulk() {
  local path=$1 port=$2 streams=$3; shift 3
  local before=0 after=0 f=$RAW/$path/bulk-P$streams
  (($# > 0)) && before=$(cpu_ticks "$@")
  run_load "$f.json" timeout $((BENCH_SECONDS + 30)) iperf3 -c 127.0.0.1 -p "$port" \
    -t "$BENCH_SECONDS" -P "$streams" -J || die "$path: iperf3 -P $streams failed (see $f.json)"
  (($# > 0)) && after=$(cpu_ticks "$@")
  echo "$((after - before)) $HZ" >"$f.cpu"
  log "$path: iperf3 -P $streams: $("$PY" "$LOADGEN" iperf-summary "$f.json" | awk '{print $2 " Gbit/s"}')"
}

# connrate PATH PORT PROXY_PID... : bounded connect/echo/close loop; RSS of the
# proxies sampled during it, CPU ticks across it.
connrate() {
  local path=$1 port=$2; shift 2
  local before=0 after=0 f=$RAW/$path/connrate pidargs=() role=front pid
  for pid in "$@"; do pidargs+=(--pid "$role=$pid"); role=back; done
  (($# > 0)) && before=$(cpu_ticks "$@")
  run_load "$f.json" timeout $((BENCH_SECONDS + 60)) "$PY" "$LOADGEN" connrate \
    --port "$port" --conns "$BENCH_CONNS" --seconds "$BENCH_SECONDS" \
    --threads "$BENCH_THREADS" "${pidargs[@]}" || die "$path: connection test failed"
  (($# > 0)) && after=$(cpu_ticks "$@")
  echo "$((after - before)) $HZ" >"$f.cpu"
  log "$path: connections: $(cat "$f.json")"
}

# measure_proxy PATH : the full set for the pair started just before.
measure_proxy() {
  local path=$1
  mkdir -p "$RAW/$path"
  sleep 0.5  # let start-up allocations settle before the idle reading
  echo "$(rss_kb "$FRONT_PID") $(rss_kb "$BACK_PID")" >"$RAW/$path/rss-idle"
  check_echo "$path" "$FRONT_ECHO"
  check_mutual "$path"
  bulk "$path" "$FRONT_IPERF" 1 "$FRONT_PID" "$BACK_PID"
  bulk "$path" "$FRONT_IPERF" 4 "$FRONT_PID" "$BACK_PID"
  connrate "$path" "$FRONT_ECHO" "$FRONT_PID" "$BACK_PID"
  # Resumption would make the connection test cheaper than mtlsd's full handshakes.
  # haproxy's backend log records it per connection; stunnel logs it only at info
  # (sessionResume = no is set), and mtlsd never resumes.
  if [[ $path == haproxy ]] && grep -q "resumed=1" "$OUT/haproxy-backend.log"; then
    die "haproxy resumed TLS sessions; the connection test is not comparable"
  fi
  stop "$FRONT_PID" "$BACK_PID"
}

measure_direct() {
  mkdir -p "$RAW/direct"
  check_echo direct "$ECHO_PORT"
  bulk direct "$IPERF_PORT" 1
  bulk direct "$IPERF_PORT" 4
  connrate direct "$ECHO_PORT"
}

# --- main -----------------------------------------------------------------------------

main() {
  [[ $BENCH_SECONDS =~ ^[1-9][0-9]*$ ]] || die "BENCH_SECONDS must be a positive integer"
  mkdir -p "$OUT"
  rm -rf "$RAW"
  mkdir -p "$RAW"
  # Other work on the machine skews every number; the report shows how busy it was.
  local load_start
  load_start=$(cut -d' ' -f1-3 /proc/loadavg)
  install_deps
  build_agent
  make_pki
  start_servers

  local paths=(direct) w
  log "path direct"
  measure_direct
  for w in $BENCH_WORKERS; do
    log "path mtlsd-w$w"
    start_mtlsd "$w"
    measure_proxy "mtlsd-w$w"
    paths+=("mtlsd-w$w")
  done
  log "path stunnel"
  start_stunnel
  measure_proxy stunnel
  paths+=(stunnel)
  if [[ $BENCH_HAPROXY == 1 ]]; then
    log "path haproxy"
    start_haproxy
    measure_proxy haproxy
    paths+=(haproxy)
  fi

  {
    echo "mtlsd benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo))"
    echo "BENCH_SECONDS=$BENCH_SECONDS BENCH_CONNS=$BENCH_CONNS BENCH_THREADS=$BENCH_THREADS suite=$BENCH_CIPHERSUITE"
    echo "load average (1/5/15 min) at start: $load_start, at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "mtlsd $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo '?') | $(stunnel -version 2>&1 | grep -m1 '^stunnel ') | $(iperf3 --version | head -1)$([[ $BENCH_HAPROXY == 1 ]] && echo " | $(haproxy -v | head -1 | cut -d' ' -f1-3)")"
    "$PY" "$BENCH/report.py" "$RAW" "${paths[@]}"
  } | tee "$OUT/results.txt"
  log "results in bench/out/results.txt; raw data in bench/out/raw/"
}

main "$@"
