# shellcheck shell=bash
# Helpers shared by both demo modes (sourced by deploy/demo.sh; not run on
# its own). They expect ROOT, WORK, PY, MTLSD, MTLS_CA, TD and DEMO_DEADLINE
# from demo.sh.
#
# Every wait here is bounded by DEMO_DEADLINE (seconds since the script
# started, bash's $SECONDS), so a broken build or a hung process ends the
# demo with a message instead of hanging it.

APP_PORT=8080 # the backend application's port (what the frontend dials)
CA_PORT=15012 # mtls-ca (Istio's istiod port)
CA_ID=spiffe://$TD/ns/mtls-system/sa/mtls-ca

PIDS=() # everything started in the background, stopped by PID in stop_pids

say() { printf '%s\n' "$*"; }
step() { printf '\n== %s\n' "$*"; }
fail() {
  printf 'demo: %s\n' "$*" >&2
  exit 1
}
sa_id() { printf 'spiffe://%s/ns/default/sa/%s' "$TD" "$1"; }

# wait_for WHAT CMD...: runs CMD until it succeeds or the demo's deadline.
wait_for() {
  local what=$1
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$DEMO_DEADLINE" ] || fail "timed out waiting for $what"
    sleep 0.1
  done
}

# poll_until SECONDS CMD...: like wait_for, but returns 1 on timeout.
poll_until() {
  local end=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.1
  done
}

# Starts CMD... in the background with stderr to FILE and remembers its PID.
# `ip netns exec` and setpriv exec() the program, so the PID is the program's.
start_bg() { # stderr-file cmd...
  local err=$1
  shift
  "$@" >/dev/null 2>"$err" &
  PIDS+=($!)
}

# SIGTERM to every PID we started, a bounded wait, then SIGKILL.
stop_pids() {
  local pid
  [ "${#PIDS[@]}" -gt 0 ] || return 0
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" -eq 1 ] || break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}

# certs/mkpki.sh: root -> intermediate (mtls-ca's signer), mtls-ca's own SVID,
# the token signing key; then one service-account token per workload.
make_pki_and_tokens() {
  certs/mkpki.sh --out "$WORK/pki" --control-plane >/dev/null ||
    fail "certs/mkpki.sh failed"
  cp "$WORK/pki/root.pem" "$WORK/root.pem" # the only PKI file agents read
  chmod 644 "$WORK/root.pem"
  local sa
  for sa in frontend backend other; do
    $PY certs/mint-token.py --key "$WORK/pki/tokens/signer.key" --namespace default \
      --service-account "$sa" >"$WORK/$sa.token" || fail "mint-token.py failed"
    chmod 600 "$WORK/$sa.token"
  done
}

# mtls-ca's mesh file (pushed to every agent by Watch) and its own config.
write_ca_config() { # listen-address backend-destination
  cat >"$WORK/mesh.yaml" <<YAML
trust_bundles:
  - trust_domain: $TD
    roots_files: [$WORK/pki/root.pem]
policy:
  rules:
    - name: frontend-may-call-backend
      action: allow
      ports: [$APP_PORT]
      from:
        - id: $(sa_id frontend)
destinations:
  - address: $2
    spiffe_id: $(sa_id backend)
YAML
  cat >"$WORK/ca.yaml" <<YAML
trust_domain: $TD
listen: $1
tls: {cert_file: $WORK/pki/control-plane/chain.pem, key_file: $WORK/pki/control-plane/key.pem}
signer: {cert_file: $WORK/pki/intermediate.pem, key_file: $WORK/pki/intermediate.key}
roots_file: $WORK/pki/root.pem
max_cert_ttl_s: 3600
tokens: {issuer: https://kubernetes.default.svc, audience: istio-ca,
         keys_file: $WORK/pki/tokens/signer.pub.pem}
mesh_file: $WORK/mesh.yaml
access_log: $WORK/ca.access.log
YAML
  "$MTLS_CA" --check-config "$WORK/ca.yaml" >/dev/null || fail "mtls-ca refused $WORK/ca.yaml"
}

# The part of an agent's config both modes share; the caller appends its
# listeners (and interception) to the file.
agent_config_head() { # name ca-address access-log admin-yaml
  cat <<YAML
trust_domain: $TD
workers: 1
access_log: $3
admin: $4
identity:
  spiffe_id: $(sa_id "$1")
control_plane:
  address: $2
  root_file: $WORK/root.pem
  spiffe_id: $CA_ID
  token_file: $WORK/$1.token
  cert_ttl_s: 600
timeouts: {drain_ms: 500}
YAML
}

# The access-log lines of one agent, trimmed to the fields that tell the
# story (the full line has source, serial, bytes, duration...).
show_access_log() { # label file
  $PY - "$1" "$2" <<'PY'
import json, sys
label, path = sys.argv[1], sys.argv[2]
keys = ("peer_id", "decision", "rule", "reason", "tls_version")
try:
    lines = [json.loads(l) for l in open(path) if l.strip()]
except FileNotFoundError:
    lines = []
for l in lines:
    trimmed = {k: l.get(k) for k in keys}
    print(f"   {label:<9} {l.get('direction', '?'):<8} {json.dumps(trimmed, separators=(',', ':'))}")
if not lines:
    print(f"   {label:<9} (no access-log line)")
PY
}

# The lines of a Prometheus scrape that prove mTLS happened: handshakes by
# result, TLS version and cipher, policy decisions by rule, time left on
# the certificate. Zero-valued series are left out.
show_metrics() { # file-with-the-scrape
  local wanted='^mtlsd_(handshakes_total|tls_handshakes_total|authz_decisions_total|certificate_expiry_seconds)[{ ]'
  awk -v re="$wanted" '$0 ~ re && $NF != "0" { print "   " $0; n++ } END { if (!n) print "   (none)" }' "$1"
}

# One line from GET /certs: the SPIFFE ID the agent serves, and until when.
show_certs() { # file-with-the-json
  $PY - "$1" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
issuer = (c.get("chain") or [{}])[0].get("issuer", "?")
print(f"   spiffe_id: {c.get('spiffe_id')}  (source: {c.get('source')})")
print(f"   serial {c.get('serial')}, expires in {c.get('seconds_to_expiry')} s, issuer {issuer}")
PY
}

# The two calls. Each client is a plain curl; what it prints is shown as is.
ALLOWED=0 # 1: the allowed call returned the page
DENIED=0  # 1: the denied call failed and the backend's agent logged policy_denied
allowed_call() { # prompt expected-page cmd...
  local prompt=$1 page=$2 out
  shift 2
  say "   $prompt"
  if out=$("$@" 2>&1) && [ "$out" = "$page" ]; then ALLOWED=1; fi
  say "   $out"
}

denied_call() { # prompt backend-access-log cmd...
  local prompt=$1 log=$2 out
  shift 2
  say "   $prompt"
  if out=$("$@" 2>&1); then
    say "   $out (unexpected: the call went through)"
    return 0
  fi
  say "   $out"
  # Refused by the backend's policy, not by anything else on the way.
  if poll_until 5 grep -q "\"peer_id\":\"$(sa_id other)\".*\"reason\":\"policy_denied\"" "$log"; then
    DENIED=1
  fi
}

# After a failure: the last lines each process wrote to stderr.
show_stderr_tails() {
  local f
  for f in "$WORK"/*.err "$WORK"/pods/*/stderr; do
    [ -s "$f" ] || continue
    step "last lines of ${f#"$WORK"/}"
    grep -v -E '^(#|mtls_ca_)' "$f" | tail -n 5 | sed 's/^/   /' # not mtls-ca's exit metrics
  done
}

# What every run ends with: the verdict, and the exit status it implies.
verdict() {
  step "result"
  local rc=0
  if [ "$ALLOWED" -eq 1 ]; then say "   allowed call: OK (frontend got the page)"; else
    say "   allowed call: FAILED"
    rc=1
  fi
  if [ "$DENIED" -eq 1 ]; then say "   denied call: OK (other was refused: policy_denied)"; else
    say "   denied call: FAILED (not refused by policy)"
    rc=1
  fi
  say "   workload keys or certificates on disk: $(find "$WORK" -path "$WORK/pki" -prune -o \
    -name '*.pem' ! -name root.pem -print | wc -l) (they live in the agents' memory)"
  return $rc
}
