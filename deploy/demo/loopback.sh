# shellcheck shell=bash
# The loopback demo (sourced by deploy/demo.sh): no root needed. Everything
# on 127.0.0.1 with fixed ports; the agents use fixed mappings instead of
# interception (no iptables), so the clients dial their agent's outbound
# port instead of the backend:
#
#   curl -> 127.0.0.1:15001 (frontend's agent) --mTLS--> 127.0.0.1:15006 (backend's agent) -> :18080 app
#   curl -> 127.0.0.1:15011 (other's agent)    --mTLS--> 127.0.0.1:15006 (denied by policy)

LB_APP_PORT=18080 # the backend app on loopback (8080 is often taken)
BACKEND_IN=15006  # backend's agent, inbound (mTLS)
FRONTEND_OUT=15001
OTHER_OUT=15011
# One admin endpoint per agent, so distinct ports on the shared loopback.
declare -A LB_ADMIN=([backend]=15000 [frontend]=15100 [other]=15200)

listening() { ss -Hltn "sport = :$1" | grep -q LISTEN; }

# Steps 1-2: mtls-ca, the app, the agents; returns once every agent is ready.
loopback_start() {
  local port name
  for port in $CA_PORT $APP_PORT $BACKEND_IN $FRONTEND_OUT $OTHER_OUT "${LB_ADMIN[@]}"; do
    if listening "$port"; then fail "port $port on 127.0.0.1 is in use; the loopback demo needs it"; fi
  done

  step "1. mtls-ca on 127.0.0.1:$CA_PORT: dev PKI, one token per service account,"
  say "   mesh policy: only $(sa_id frontend) may call port $APP_PORT"
  make_pki_and_tokens
  write_ca_config "127.0.0.1:$CA_PORT" "127.0.0.1:$BACKEND_IN"
  start_bg "$WORK/ca.err" "$MTLS_CA" --config "$WORK/ca.yaml"
  wait_for "mtls-ca to listen" listening "$CA_PORT"

  step "2. the backend app (python3 -m http.server :$APP_PORT) and three agents"
  mkdir -p "$WORK/www" && echo "hello from backend" >"$WORK/www/index.html"
  start_bg "$WORK/app.err" "$PY" -m http.server "$APP_PORT" --bind 127.0.0.1 --directory "$WORK/www"
  lb_agent_config backend "inbound:
  listeners:
    - address: 127.0.0.1:$BACKEND_IN
      app_port: $APP_PORT"
  lb_agent_config frontend "$(lb_outbound $FRONTEND_OUT)"
  lb_agent_config other "$(lb_outbound $OTHER_OUT)"
  for name in backend frontend other; do
    start_bg "$WORK/$name.err" "$MTLSD" --config "$WORK/$name.yaml"
  done
  wait_for "the backend app" listening "$APP_PORT"
  for name in backend frontend other; do
    wait_for "the $name agent to be ready" curl -sf --max-time 2 "http://127.0.0.1:${LB_ADMIN[$name]}/ready"
    printf '   %-9s agent: %s, ready (admin 127.0.0.1:%s)\n' "$name" "$(sa_id "$name")" "${LB_ADMIN[$name]}"
  done
}

# Steps 3-7: the calls, then what proves them.
loopback_run() {
  APP_PORT=$LB_APP_PORT # the port the policy speaks about
  loopback_start
  local name admin=http://127.0.0.1:${LB_ADMIN[backend]}
  step "3. allowed call: curl -> frontend's agent -> mTLS -> backend's agent -> http.server"
  allowed_call "\$ curl -sS http://127.0.0.1:$FRONTEND_OUT/" "hello from backend" \
    curl -sS --max-time 5 "http://127.0.0.1:$FRONTEND_OUT/"

  step "4. denied call: curl -> other's agent -> mTLS -> backend's agent (policy says no)"
  denied_call "\$ curl -sS http://127.0.0.1:$OTHER_OUT/" "$WORK/backend.access.log" \
    curl -sS --max-time 5 "http://127.0.0.1:$OTHER_OUT/"

  step "5. access logs (one JSON line per connection, trimmed)"
  poll_until 5 test -s "$WORK/frontend.access.log" || true
  for name in frontend other backend; do show_access_log "$name" "$WORK/$name.access.log"; done

  step "6. backend agent's metrics: GET $admin/metrics"
  curl -sS --max-time 5 "$admin/metrics" >"$WORK/metrics.txt" || fail "GET $admin/metrics failed"
  show_metrics "$WORK/metrics.txt"

  step "7. backend agent's identity: GET $admin/certs"
  curl -sS --max-time 5 "$admin/certs" >"$WORK/certs.json" || fail "GET $admin/certs failed"
  show_certs "$WORK/certs.json"

  verdict
}

lb_outbound() { # port
  cat <<YAML
outbound:
  listeners:
    - address: 127.0.0.1:$1
      destination: 127.0.0.1:$BACKEND_IN
  unknown_destination: deny
YAML
}

lb_agent_config() { # name listeners-yaml
  {
    agent_config_head "$1" "127.0.0.1:$CA_PORT" "$WORK/$1.access.log" \
      "{address: \"127.0.0.1:${LB_ADMIN[$1]}\"}"
    printf '%s\n' "$2"
  } >"$WORK/$1.yaml"
  "$MTLSD" --check-config "$WORK/$1.yaml" >/dev/null || fail "agent config of $1 refused"
}
