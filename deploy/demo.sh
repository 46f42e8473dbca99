#!/usr/bin/env bash
# The mtlsd demo: a small mesh in which mtls-ca issues every certificate and
# pushes the policy (only frontend may call backend). It makes one allowed
# and one denied call with unmodified apps (python3 -m http.server, curl),
# then shows the access-log lines, the backend agent's metrics and the
# identity it serves, and removes everything it created (also on error or
# Ctrl-C). No workload key or certificate is ever written to disk.
#
#   as root, where `ip netns add` works: three pods as network namespaces
#     on a bridge (deploy/demo/pods.sh), each with its app and an mtlsd
#     agent as UID 1337 behind `mtlsd init-iptables --apply`: the apps dial
#     and serve plain HTTP and the agents intercept it, as in Kubernetes;
#   otherwise: the same mesh on 127.0.0.1 with fixed port mappings
#     (deploy/demo/loopback.sh).
#
# Environment:
#   MTLSD_BIN, MTLS_CA_BIN  the binaries to run; when both are set, the
#                           dependency check and the bazel build are skipped
#   MTLSD_DEMO_MODE         auto (default), pods (fail rather than fall
#                           back) or loopback
# Exit status: 0 when the allowed call returned the page and the denied call
# was refused by the backend's policy, 1 otherwise (2: usage).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=/usr/bin/python3
TD=example.org
MODE=${MTLSD_DEMO_MODE:-auto}
case $MODE in
  auto | pods | loopback) ;;
  *)
    echo "demo: MTLSD_DEMO_MODE must be auto, pods or loopback, not '$MODE'" >&2
    exit 2
    ;;
esac

if [ -n "${MTLSD_BIN:-}" ] && [ -n "${MTLS_CA_BIN:-}" ]; then
  MTLSD=$MTLSD_BIN
  MTLS_CA=$MTLS_CA_BIN
else
  deploy/install_deps.sh
  bazel build //agent:mtlsd //controlplane:mtls-ca >/dev/null 2>&1 ||
    bazel build //agent:mtlsd //controlplane:mtls-ca
  BIN=$(bazel info bazel-bin 2>/dev/null)
  MTLSD=${MTLSD_BIN:-$BIN/agent/mtlsd}
  MTLS_CA=${MTLS_CA_BIN:-$BIN/controlplane/mtls-ca}
fi
for b in "$MTLSD" "$MTLS_CA"; do
  [ -x "$b" ] || { echo "demo: $b is not an executable (MTLSD_BIN / MTLS_CA_BIN)" >&2; exit 1; }
done

DEMO_TAG=$$ # in the namespace names: two runs never collide
DEMO_DEADLINE=$((SECONDS + 30))

# shellcheck source=SCRIPTDIR/demo/common.sh
source deploy/demo/common.sh
# shellcheck source=SCRIPTDIR/demo/pods.sh
source deploy/demo/pods.sh
# shellcheck source=SCRIPTDIR/demo/loopback.sh
source deploy/demo/loopback.sh

# Runs on every exit: processes stopped by PID, the pods' rules removed
# (`init-iptables --remove`), the namespaces deleted, the work dir removed.
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  local what="${#PIDS[@]} processes stopped by PID"
  [ "${#RULES[@]}" -eq 0 ] || what+=", rules removed in ${#RULES[@]} pods"
  [ "${#NETNS[@]}" -eq 0 ] || what+=", ${#NETNS[@]} namespaces deleted"
  pods_teardown
  [ "$rc" -eq 0 ] || [ "$rc" -ge 128 ] || show_stderr_tails
  rm -rf "$WORK"
  step "teardown: $what, $WORK removed"
  exit "$rc"
}
WORK=$(mktemp -d /tmp/mtlsd-demo.XXXXXX)
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
chmod 755 "$WORK" # pods mode: the agents (UID 1337) and the apps read files here

# Pods if this machine allows network namespaces, else loopback.
why=""
if [ "$MODE" != loopback ]; then
  if [ "$(id -u)" -ne 0 ]; then
    why="not root (network namespaces and iptables need root)"
  else
    for tool in ip iptables iptables-restore setpriv ss curl; do
      command -v "$tool" >/dev/null || why="$tool is not installed"
    done
    [ -n "$why" ] || pods_available || why=$POD_UNAVAILABLE
  fi
  if [ "$MODE" = pods ] && [ -n "$why" ]; then fail "MTLSD_DEMO_MODE=pods, but: $why"; fi
fi
command -v curl >/dev/null || fail "curl is not installed"

if [ "$MODE" != loopback ] && [ -z "$why" ]; then
  say "mtlsd demo: pods in network namespaces (work dir $WORK)"
  pods_run
else
  say "mtlsd demo on loopback (${why:-MTLSD_DEMO_MODE=loopback}; work dir $WORK)"
  loopback_run
fi
