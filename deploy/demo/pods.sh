# shellcheck shell=bash
# The namespace demo (sourced by deploy/demo.sh): a simulated Kubernetes
# node, like tests/integration/podbed.py. Every pod is a network namespace
# with one veth on a bridge that lives in a "node" namespace; the /24 exists
# only inside these namespaces (no default route: no packet leaves them).
#
#   node      br0  10.77.0.1/24
#   ca        eth0 10.77.0.10   mtls-ca :15012
#   frontend  eth0 10.77.0.11   curl (UID 65534)              + mtlsd (UID 1337)
#   backend   eth0 10.77.0.12   python3 -m http.server 8080  + mtlsd (UID 1337)
#   other     eth0 10.77.0.13   curl (UID 65534)              + mtlsd (UID 1337)
#
# Each pod's agent gets its rules from `mtlsd init-iptables --apply` run in
# the pod (like the mtlsd-init container), its certificate and the policy
# from mtls-ca. The apps are plain: they dial and serve plain HTTP.

SUBNET=10.77.0
NODE_IP=$SUBNET.1
declare -A POD_IP=([ca]=$SUBNET.10 [frontend]=$SUBNET.11 [backend]=$SUBNET.12 [other]=$SUBNET.13)
AGENT_PODS=(backend frontend other)
PROXY_UID=1337   # the agent's UID: the one the rules exempt
APP_UID=65534    # the apps' UID (nobody): anything but 1337
ADMIN=127.0.0.1:15000
TELEMETRY_PORT=15021
NETNS=()         # created, in order
RULES=()         # pods whose rules were applied

ns() { printf 'mtlsd-demo-%s-%s' "$DEMO_TAG" "$1"; }
in_pod() { # pod cmd...
  local pod=$1
  shift
  ip netns exec "$(ns "$pod")" "$@"
}
AS_APP=(setpriv "--reuid=$APP_UID" "--regid=$APP_UID" --clear-groups)
AS_AGENT=(setpriv "--reuid=$PROXY_UID" "--regid=$PROXY_UID" --clear-groups)
listening_in() { in_pod "$1" ss -Hltn "sport = :$2" | grep -q LISTEN; }

# Creates the node namespace and its bridge; 1 (after undoing it) when this
# machine does not allow it, so demo.sh can fall back to loopback.
pods_available() {
  local why
  why=$(ip netns add "$(ns node)" 2>&1) || {
    POD_UNAVAILABLE="\`ip netns add\` failed: $why"
    return 1
  }
  NETNS+=("$(ns node)")
  if ! why=$(in_pod node iptables -t nat -S 2>&1 >/dev/null); then
    POD_UNAVAILABLE="iptables (nat) does not work in a namespace: $why"
  elif ! why=$(ip -n "$(ns node)" link add br0 type bridge 2>&1); then
    POD_UNAVAILABLE="cannot create a bridge: $why"
  else
    return 0
  fi
  pods_teardown >/dev/null
  return 1
}

build_node() {
  local node pod
  node=$(ns node)
  ip -n "$node" link set lo up
  ip -n "$node" addr add "$NODE_IP/24" dev br0
  ip -n "$node" link set br0 up
  for pod in ca "${AGENT_PODS[@]}"; do
    ip netns add "$(ns "$pod")"
    NETNS+=("$(ns "$pod")")
    ip -n "$(ns "$pod")" link set lo up
    ip -n "$node" link add "veth-$pod" type veth peer name eth0 netns "$(ns "$pod")"
    ip -n "$node" link set "veth-$pod" master br0 up
    ip -n "$(ns "$pod")" addr add "${POD_IP[$pod]}/24" dev eth0
    ip -n "$(ns "$pod")" link set eth0 up
  done
}

# Like deploy/k8s/sidecar-example.yaml's agent config, with the demo's CA.
write_pod_agent_config() { # pod
  local pod=$1 dir=$WORK/pods/$1
  mkdir -p "$dir"
  chown "$PROXY_UID:$PROXY_UID" "$dir" "$WORK/$pod.token" # the agent writes its log here
  {
    agent_config_head "$pod" "${POD_IP[ca]}:$CA_PORT" "$dir/access.log" \
      "{address: \"$ADMIN\", telemetry_address: \"0.0.0.0:$TELEMETRY_PORT\"}"
    cat <<YAML
inbound:
  listeners:
    - address: 0.0.0.0:15006     # PREROUTING REDIRECT; app port from SO_ORIGINAL_DST
  app_address: 127.0.0.1
  source_address: 127.0.0.6
outbound:
  listeners:
    - address: 127.0.0.1:15001   # OUTPUT REDIRECT; destination from SO_ORIGINAL_DST
  unknown_destination: deny
interception:
  proxy_uid: $PROXY_UID
  exclude_inbound_ports: [$TELEMETRY_PORT]   # health + metrics, scraped from the node
YAML
  } >"$dir/mtlsd.yaml"
  "$MTLSD" --check-config "$dir/mtlsd.yaml" >/dev/null || fail "agent config of $pod refused"
}

# Steps 1-3: the node, mtls-ca, the pods; returns once every agent is ready.
pods_start() {
  step "1. a node: bridge $NODE_IP/24; pods ca ${POD_IP[ca]}, frontend ${POD_IP[frontend]}, backend ${POD_IP[backend]}, other ${POD_IP[other]}"
  build_node
  # The agents run as UID 1337: give them a copy of the binary they can reach.
  mkdir -p "$WORK/bin" && install -m 755 "$MTLSD" "$WORK/bin/mtlsd" && MTLSD=$WORK/bin/mtlsd
  say "   namespaces $(ns '*'), one veth each on br0; nothing is routed out"

  step "2. mtls-ca in pod ca (${POD_IP[ca]}:$CA_PORT): dev PKI, one token per service account,"
  say "   mesh policy: only $(sa_id frontend) may call port $APP_PORT"
  make_pki_and_tokens
  write_ca_config "${POD_IP[ca]}:$CA_PORT" "${POD_IP[backend]}:$APP_PORT"
  start_bg "$WORK/ca.err" ip netns exec "$(ns ca)" "$MTLS_CA" --config "$WORK/ca.yaml"
  wait_for "mtls-ca to listen" listening_in ca "$CA_PORT"

  step "3. pods: plain app + mtlsd as UID $PROXY_UID, rules from \`mtlsd init-iptables --apply\`"
  local pod app
  mkdir -p "$WORK/www" && echo "hello from the backend pod" >"$WORK/www/index.html"
  start_bg "$WORK/app.err" ip netns exec "$(ns backend)" "${AS_APP[@]}" \
    "$PY" -m http.server "$APP_PORT" --bind 0.0.0.0 --directory "$WORK/www"
  for pod in "${AGENT_PODS[@]}"; do
    write_pod_agent_config "$pod"
    in_pod "$pod" "$MTLSD" init-iptables --config "$WORK/pods/$pod/mtlsd.yaml" --apply >/dev/null ||
      fail "init-iptables --apply in $pod failed"
    RULES+=("$pod")
    start_bg "$WORK/pods/$pod/stderr" ip netns exec "$(ns "$pod")" "${AS_AGENT[@]}" \
      "$MTLSD" --config "$WORK/pods/$pod/mtlsd.yaml"
  done
  wait_for "the backend app" listening_in backend "$APP_PORT"
  for pod in "${AGENT_PODS[@]}"; do
    # /ready: a certificate from mtls-ca and the first mesh config are in.
    wait_for "the agent in $pod to be ready" in_pod "$pod" curl -sf --max-time 2 "http://$ADMIN/ready"
    app="curl"
    [ "$pod" != backend ] || app="python3 -m http.server"
    printf '   %-9s %-11s app: %-23s agent: %s, ready\n' "$pod" "${POD_IP[$pod]}" "$app" "$(sa_id "$pod")"
  done
}

# Steps 4-8: the calls, then what proves them.
pods_run() {
  pods_start
  local url=http://${POD_IP[backend]}:$APP_PORT/ pod
  step "4. allowed call: frontend's curl -> its agent -> mTLS -> backend's agent -> http.server"
  allowed_call "[frontend]\$ curl -sS $url" "hello from the backend pod" \
    in_pod frontend "${AS_APP[@]}" curl -sS --max-time 5 "$url"

  step "5. denied call: other's curl -> its agent -> mTLS -> backend's agent (policy says no)"
  denied_call "[other]\$ curl -sS $url" "$WORK/pods/backend/access.log" \
    in_pod other "${AS_APP[@]}" curl -sS --max-time 5 "$url"

  step "6. access logs (one JSON line per connection, trimmed)"
  poll_until 5 test -s "$WORK/pods/frontend/access.log" || true
  for pod in frontend other backend; do show_access_log "$pod" "$WORK/pods/$pod/access.log"; done

  local metrics=http://${POD_IP[backend]}:$TELEMETRY_PORT/metrics
  step "7. backend agent's metrics: GET $metrics from the node (as Prometheus would)"
  in_pod node curl -sS --max-time 5 "$metrics" >"$WORK/metrics.txt" || fail "GET $metrics failed"
  show_metrics "$WORK/metrics.txt"

  step "8. backend agent's identity: GET http://$ADMIN/certs in its pod (the admin API is loopback-only)"
  in_pod backend curl -sS --max-time 5 "http://$ADMIN/certs" >"$WORK/certs.json" || fail "GET /certs failed"
  show_certs "$WORK/certs.json"

  verdict
}

# Undoes everything pods_run did, whatever point it reached (idempotent).
pods_teardown() {
  local pod name
  stop_pids
  for pod in "${RULES[@]}"; do
    in_pod "$pod" "$MTLSD" init-iptables --config "$WORK/pods/$pod/mtlsd.yaml" --remove >/dev/null 2>&1 ||
      say "   (init-iptables --remove in $pod failed)"
  done
  RULES=()
  for ((i = ${#NETNS[@]} - 1; i >= 0; i--)); do
    name=${NETNS[$i]}
    ip netns delete "$name" 2>/dev/null || say "   (could not delete namespace $name)"
  done
  NETNS=()
}
