#!/usr/bin/env bash
# Local mesh demo on loopback: one backend app behind an mtlsd inbound
# listener, two client workloads (frontend, other) each with an mtlsd
# outbound listener. frontend is allowed by policy, other is denied. Shows the
# calls, the access-log lines of every agent, then tears everything down.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
deploy/install_deps.sh
bazel build -c opt //agent:mtlsd >/dev/null 2>&1 || bazel build //agent:mtlsd
MTLSD="$ROOT/bazel-bin/agent/mtlsd"

WORK=$(mktemp -d /tmp/mtlsd-demo.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

APP_PORT=18080      # the backend application (plain HTTP)
BACKEND_IN=15006    # backend's mtlsd inbound (mTLS)
FRONTEND_OUT=15001  # frontend's mtlsd outbound (plain, from the frontend app)
OTHER_OUT=15011     # other's mtlsd outbound

echo "== 1. development PKI: root -> intermediate -> SPIFFE leaves (valid 60 min)"
certs/mkpki.sh --out "$WORK/pki" frontend backend other | tail -1

write_config() { # name, listeners-yaml, policy-yaml
  cat >"$WORK/$1.yaml" <<YAML
trust_domain: example.org
workers: 1
access_log: $WORK/$1.access.log
identity:
  cert_file: $WORK/pki/workloads/$1/chain.pem
  key_file: $WORK/pki/workloads/$1/key.pem
trust_bundles:
  - trust_domain: example.org
    file: $WORK/pki/bundle.pem
$2
$3
YAML
}

write_config backend "inbound:
  listeners:
    - address: 127.0.0.1:$BACKEND_IN
      app_port: $APP_PORT" "policy:
  rules:
    - name: frontend-may-call-backend
      action: allow
      ports: [$APP_PORT]
      from:
        - id: spiffe://example.org/ns/default/sa/frontend"

for client in frontend other; do
  port=$FRONTEND_OUT
  [ "$client" = other ] && port=$OTHER_OUT
  write_config "$client" "outbound:
  listeners:
    - address: 127.0.0.1:$port
      destination: 127.0.0.1:$BACKEND_IN
  destinations:
    - address: 127.0.0.1:$BACKEND_IN
      spiffe_id: spiffe://example.org/ns/default/sa/backend" ""
done

echo "== 2. starting the backend app (python http.server on :$APP_PORT) and three agents"
mkdir -p "$WORK/www" && echo "hello from backend" >"$WORK/www/index.html"
/usr/bin/python3 -m http.server "$APP_PORT" --bind 127.0.0.1 --directory "$WORK/www" \
  >"$WORK/app.log" 2>&1 &
PIDS+=($!)
for name in backend frontend other; do
  "$MTLSD" --check-config "$WORK/$name.yaml"
  "$MTLSD" --config "$WORK/$name.yaml" 2>"$WORK/$name.err" &
  PIDS+=($!)
done
for port in $APP_PORT $BACKEND_IN $FRONTEND_OUT $OTHER_OUT; do
  for _ in $(seq 50); do
    ss -Hltn "sport = :$port" | grep -q LISTEN && break
    sleep 0.1
  done
done

echo
echo "== 3. allowed call: frontend app -> frontend agent -> mTLS -> backend agent -> app"
echo "\$ curl -s http://127.0.0.1:$FRONTEND_OUT/"
curl -s --max-time 5 "http://127.0.0.1:$FRONTEND_OUT/" || echo "(call failed)"

echo
echo "== 4. denied call: other app -> other agent -> mTLS -> backend agent (policy says no)"
echo "\$ curl -s http://127.0.0.1:$OTHER_OUT/"
if curl -s --max-time 5 "http://127.0.0.1:$OTHER_OUT/"; then
  echo "(unexpected: the call went through)"
else
  echo "(connection closed by the mesh: curl exit $?)"
fi

sleep 0.3
echo
for name in frontend other backend; do
  echo "== access log of $name's agent"
  cat "$WORK/$name.access.log" 2>/dev/null || true
done
echo
echo "== done; everything is stopped and $WORK removed"
