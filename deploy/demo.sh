#!/usr/bin/env bash
# Local mesh demo on loopback, with every workload certificate issued by the
# control plane (mtls-ca): no workload key or certificate is ever written to
# disk. One backend app behind an mtlsd inbound listener; two client
# workloads (frontend, other) each behind an mtlsd outbound listener.
# Policy (pushed by mtls-ca's Watch stream) allows frontend only. Shows the
# calls, the issued identities, the access logs, then tears everything down.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
deploy/install_deps.sh
bazel build //agent:mtlsd //controlplane:mtls-ca >/dev/null 2>&1 ||
  bazel build //agent:mtlsd //controlplane:mtls-ca
BIN=$(bazel info bazel-bin 2>/dev/null)
MTLSD="$BIN/agent/mtlsd"
MTLS_CA="$BIN/controlplane/mtls-ca"
PY=/usr/bin/python3

WORK=$(mktemp -d /tmp/mtlsd-demo.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

CA_PORT=15012       # mtls-ca (Istio's istiod port)
APP_PORT=18080      # the backend application (plain HTTP)
BACKEND_IN=15006    # backend's mtlsd inbound (mTLS)
FRONTEND_OUT=15001  # frontend's mtlsd outbound (plain, from the frontend app)
OTHER_OUT=15011     # other's mtlsd outbound
TD=example.org

wait_listening() {
  for _ in $(seq 100); do
    ss -Hltn "sport = :$1" | grep -q LISTEN && return 0
    sleep 0.1
  done
  echo "port $1 never opened" >&2
  return 1
}

echo "== 1. PKI: root -> intermediate (the CA's signer), mtls-ca's own SVID, a token signing key"
certs/mkpki.sh --out "$WORK/pki" --control-plane | tail -1

echo "== 2. service-account tokens (what kubelet would project into each pod)"
for sa in frontend backend other; do
  $PY certs/mint-token.py --key "$WORK/pki/tokens/signer.key" --namespace default \
    --service-account "$sa" >"$WORK/$sa.token"
  echo "   $sa: system:serviceaccount:default:$sa"
done

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
        - id: spiffe://$TD/ns/default/sa/frontend
destinations:
  - address: 127.0.0.1:$BACKEND_IN
    spiffe_id: spiffe://$TD/ns/default/sa/backend
YAML
cat >"$WORK/ca.yaml" <<YAML
trust_domain: $TD
listen: 127.0.0.1:$CA_PORT
tls: {cert_file: $WORK/pki/control-plane/chain.pem, key_file: $WORK/pki/control-plane/key.pem}
signer: {cert_file: $WORK/pki/intermediate.pem, key_file: $WORK/pki/intermediate.key}
roots_file: $WORK/pki/root.pem
max_cert_ttl_s: 3600
tokens: {issuer: https://kubernetes.default.svc, audience: istio-ca,
         keys_file: $WORK/pki/tokens/signer.pub.pem}
mesh_file: $WORK/mesh.yaml
access_log: $WORK/ca.access.log
YAML

agent_config() { # name, listeners-yaml
  cat >"$WORK/$1.yaml" <<YAML
trust_domain: $TD
workers: 1
access_log: $WORK/$1.access.log
admin: {address: "127.0.0.1:0"}
identity:
  spiffe_id: spiffe://$TD/ns/default/sa/$1
control_plane:
  address: 127.0.0.1:$CA_PORT
  root_file: $WORK/pki/root.pem
  spiffe_id: spiffe://$TD/ns/mtls-system/sa/mtls-ca
  token_file: $WORK/$1.token
  cert_ttl_s: 600
$2
YAML
}
agent_config backend "inbound:
  listeners:
    - address: 127.0.0.1:$BACKEND_IN
      app_port: $APP_PORT"
agent_config frontend "outbound:
  listeners:
    - address: 127.0.0.1:$FRONTEND_OUT
      destination: 127.0.0.1:$BACKEND_IN
  unknown_destination: deny"
agent_config other "outbound:
  listeners:
    - address: 127.0.0.1:$OTHER_OUT
      destination: 127.0.0.1:$BACKEND_IN
  unknown_destination: deny"

echo "== 3. starting mtls-ca, the backend app (python http.server) and three agents"
"$MTLS_CA" --check-config "$WORK/ca.yaml" >/dev/null
"$MTLS_CA" --config "$WORK/ca.yaml" 2>"$WORK/ca.err" &
PIDS+=($!)
wait_listening $CA_PORT
mkdir -p "$WORK/www" && echo "hello from backend" >"$WORK/www/index.html"
$PY -m http.server "$APP_PORT" --bind 127.0.0.1 --directory "$WORK/www" >"$WORK/app.log" 2>&1 &
PIDS+=($!)
for name in backend frontend other; do
  "$MTLSD" --config "$WORK/$name.yaml" 2>"$WORK/$name.err" &
  PIDS+=($!)
done
for name in backend frontend other; do
  for _ in $(seq 100); do
    grep -q "mesh version [0-9]" "$WORK/$name.err" 2>/dev/null && break
    sleep 0.1
  done
  echo "   $name: $(grep -o 'identity ready: [^,]*' "$WORK/$name.err" | tail -1)"
done
wait_listening $APP_PORT
sleep 0.2

echo
echo "== 4. allowed call: frontend app -> frontend agent -> mTLS -> backend agent -> app"
echo "\$ curl -s http://127.0.0.1:$FRONTEND_OUT/"
curl -s --max-time 5 "http://127.0.0.1:$FRONTEND_OUT/" || echo "(call failed)"

echo
echo "== 5. denied call: other app -> other agent -> mTLS -> backend agent (policy says no)"
echo "\$ curl -s http://127.0.0.1:$OTHER_OUT/"
if curl -s --max-time 5 "http://127.0.0.1:$OTHER_OUT/"; then
  echo "(unexpected: the call went through)"
else
  echo "(connection reset by the mesh: curl exit $?)"
fi

sleep 0.3
echo
for name in frontend other backend; do
  echo "== access log of $name's agent"
  cat "$WORK/$name.access.log" 2>/dev/null || true
done
echo
echo "== mtls-ca's access log (one line per issued certificate / Watch)"
cat "$WORK/ca.access.log" 2>/dev/null || true
echo
echo "== workload keys or certificates on disk: $(find "$WORK" -path "$WORK/pki" -prune -o \
  -name '*.pem' -print | wc -l) (everything is in the agents' memory)"
echo "== done; everything is stopped and $WORK removed"
