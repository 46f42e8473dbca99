"""Istio's AuthorizationPolicy and PeerAuthentication objects, end to end
(issue 13): written to the Kubernetes API (the stand-in), followed by
mtls-ca (`kubernetes: {istio_policies: true}`), compiled per workload and
pushed to real node agents, which decide every new connection by them.

Bed: clusterbed.py (two routed nodes in network namespaces, node agents
that learn everything from mtls-ca's Watch, mtls-ca fed by the API server
stand-in; needs root), with a mesh file that has no workload policy: what
the agents enforce comes from the Istio objects alone.

    node-1: frontend 10.77.1.2 (sa frontend), other 10.77.1.6 (sa other)
    node-2: backend 10.77.2.2 (sa backend, label app=backend): http.server
            on 8080 and a line echo server on ECHO_PORT
    ca:     mtls-ca and the stand-in; also the plaintext client (no agent
            captures its traffic on the way out, backend's agent sees it
            arrive without TLS)

What each test looks at is what an operator sees: the agents' access log
(decision and the deciding rule, "ns/name[index]"), /policy, mtls-ca's
log, and real calls. Every wait is bounded and waits on one of those.
The tests run in file order on one bed; each says what it leaves behind.
"""
import json
import subprocess
import time
import uuid

import pytest

import clusterbed
import nodebed
import podbed
from clusterbed import API_PODS, ca_lines, wait_ca

PAGE = "hello from the {} pod\n"
NS = nodebed.WORKLOAD_NAMESPACE
TD = nodebed.TRUST_DOMAIN
ECHO_PORT = 9090
DECISION_BUDGET_S = 1.0  # the "within a second", apply -> first new decision

FRONTEND, OTHER, BACKEND = API_PODS["frontend"], API_PODS["other"], API_PODS["backend"]


def principal(sa):
    return f"{TD}/ns/{NS}/sa/{sa}"  # Istio writes principals without spiffe://


def allow_from(*sas):
    return {"selector": {"matchLabels": {"app": "backend"}}, "action": "ALLOW",
            "rules": [{"from": [{"source": {"principals": [principal(s) for s in sas]}}]}]}


ECHO_SERVER = r"""
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(16)
def serve(c):
    with c:
        while True:
            data = c.recv(4096)
            if not data:
                return
            c.sendall(data)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

ECHO_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
for line in sys.stdin:
    s.sendall(line.encode())
    got = b""
    while not got.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            print("closed", flush=True)
            sys.exit(1)
        got += chunk
    print(got.decode().strip(), flush=True)
"""


class IstioBed(clusterbed.ClusterBed):
    """ClusterBed whose mtls-ca follows Istio's objects and whose mesh file
    has no workload policy; backend also runs a line echo server."""

    mesh_policies = []  # what the agents enforce comes from the Istio objects alone
    kubernetes_extra = {"istio_policies": True}

    def start_control_plane(self):
        super().start_control_plane()
        wait_ca(self, 0, r"kubernetes: Istio policies synced")

    def start_apps(self):
        super().start_apps()
        self.others.append(self.spawn(BACKEND.netns, podbed.as_uid(nodebed.APP_UID, [
            podbed.PY, "-c", ECHO_SERVER, str(ECHO_PORT)]), stdout=subprocess.DEVNULL))
        podbed.wait_until(lambda: self.listening(BACKEND.netns, ECHO_PORT), "the echo server",
                          self.wait)


@pytest.fixture(scope="module")
def mtls_ca_bin():
    return podbed.require_mtls_ca_bin()


@pytest.fixture(scope="module")
def bed(request, module_procs):
    yield from nodebed.module_bed(IstioBed, request, module_procs)


# ---- what is observed

def backend_policy(bed):
    """backend's entry of node-2's /policy."""
    status, body = bed.admin("node-2", "/policy")
    assert status == 200, body
    [entry] = [w for w in json.loads(body)["workloads"] if w["spiffe_id"] == BACKEND.spiffe_id]
    return entry


def rule_names(entry):
    return [r["name"] for r in entry.get("rules", [])]


def wait_policy(bed, predicate, what):
    try:
        return podbed.wait_until(lambda: predicate(backend_policy(bed)), what, bed.wait)
    except AssertionError as e:
        raise AssertionError(f"{e}\nnow: {json.dumps(backend_policy(bed))}") from None


def call(bed, client, port=nodebed.APP_PORT, uid=nodebed.APP_UID):
    """One HTTP call from nodebed namespace |client| to backend: (curl
    result, the backend agent's access-log line for it)."""
    since = len(bed.log_lines("node-2"))
    probe = uuid.uuid4().hex
    res = bed.curl(client, f"http://{BACKEND.ip}:{port}/?probe={probe}", timeout=5, uid=uid)
    # A mesh client is known by its identity; the plaintext one has none.
    peer_id = API_PODS[client].spiffe_id if client != "ca" else None

    def line():
        for entry in bed.log_lines("node-2")[since:]:
            if entry.get("direction") == "inbound" and (entry.get("peer_id") or None) == peer_id:
                return entry
        return None
    entry = podbed.wait_until(line, f"node-2's access-log line for {client} -> backend", bed.wait)
    return res, entry


def assert_allowed(bed, client, **kw):
    res, line = call(bed, client, **kw)
    assert res.returncode == 0 and res.stdout == PAGE.format("backend"), (res.stderr, line)
    assert line["decision"] == "allow", line
    return line


def assert_denied(bed, client, rule=None, **kw):
    res, line = call(bed, client, **kw)
    assert res.returncode != 0, f"{client} -> backend went through: {res.stdout}"
    assert line["decision"] == "deny", line
    if rule is not None:
        assert line.get("rule") == rule, line
    return line


def first_decided(bed, client, decision, started):
    """Calls |client| -> backend until one is decided |decision|; returns the
    seconds from |started| (time.monotonic() before the apply) to that
    call's start."""
    deadline = started + bed.wait
    while time.monotonic() < deadline:
        at = time.monotonic()
        _, line = call(bed, client)
        if line["decision"] == decision:
            return at - started, line
    raise AssertionError(f"{client} -> backend never decided {decision}")


class EchoConnection:
    """A connection from |client| to backend's echo server, opened once and
    kept: a live connection across policy changes."""

    def __init__(self, bed, client):
        self.proc = bed.spawn(client, podbed.as_uid(nodebed.APP_UID, [
            podbed.PY, "-c", ECHO_CLIENT, BACKEND.ip, str(ECHO_PORT)]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def echo(self, text):
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()  # bounded: the client times out at 10 s

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(10)


# ---- the tests

def test_without_istio_policies_every_identity_is_allowed_and_permissive(bed):
    entry = backend_policy(bed)
    assert rule_names(entry) == [] and entry["default"] == "allow", entry
    assert entry["peer_authentication"]["mode"] == "PERMISSIVE", entry
    assert entry["peer_authentication"]["source"] == "default", entry
    assert_allowed(bed, "frontend")
    assert_allowed(bed, "other")
    assert_allowed(bed, "ca", uid=None)  # plaintext: PERMISSIVE, Istio's default


def test_apply_change_and_delete_an_allow_policy_live(bed):
    """(a) ALLOW naming frontend only: other is refused by "demo/backend-allow[0]";
    (b) changed to name other only; (c) deleted. Each decision changes
    within a second for new connections, with no agent restart, and a
    connection opened before it all keeps echoing."""
    pids = {node: bed.agents[node].pid for node in nodebed.NODES}
    live = EchoConnection(bed, OTHER.netns)
    try:
        assert live.echo("before") == "before"
        mark = len(bed.ca_log())

        started = time.monotonic()
        bed.api.apply("add", "authorizationpolicies",
                      clusterbed.fx.authorization_policy(NS, "backend-allow", allow_from("frontend")))
        took, line = first_decided(bed, "other", "deny", started)
        print(f"decided the new way {took * 1000:.0f} ms after the API write")
        assert took <= DECISION_BUDGET_S, f"took {took:.2f} s"
        assert line["rule"] == "no-allow-rule-matched", line  # the ALLOW policy selects backend
        assert_denied(bed, "other")
        assert_allowed(bed, "frontend")
        entry = backend_policy(bed)
        assert rule_names(entry) == ["demo/backend-allow[0]"], entry
        assert entry["allow_policies"] == ["demo/backend-allow"], entry
        wait_ca(bed, mark, r"authorization policy demo/backend-allow: applied")
        assert live.echo("after apply") == "after apply"

        started = time.monotonic()
        bed.api.apply("modify", "authorizationpolicies",
                      clusterbed.fx.authorization_policy(NS, "backend-allow", allow_from("other")))
        took, line = first_decided(bed, "other", "allow", started)
        print(f"decided the new way {took * 1000:.0f} ms after the API write")
        assert took <= DECISION_BUDGET_S, f"took {took:.2f} s"
        assert line["rule"] == "demo/backend-allow[0]", line
        assert_denied(bed, "frontend")
        assert live.echo("after change") == "after change"

        started = time.monotonic()
        bed.api.apply("delete", "authorizationpolicies",
                      clusterbed.fx.authorization_policy(NS, "backend-allow", allow_from("other")))
        took, _ = first_decided(bed, "frontend", "allow", started)
        print(f"decided the new way {took * 1000:.0f} ms after the API write")
        assert took <= DECISION_BUDGET_S, f"took {took:.2f} s"
        assert_allowed(bed, "other")
        wait_policy(bed, lambda e: rule_names(e) == [], "backend's rules to be gone")
        wait_ca(bed, mark, r"authorization policy demo/backend-allow: removed")
        assert live.echo("after delete") == "after delete"
    finally:
        live.close()
    assert {node: bed.agents[node].pid for node in nodebed.NODES} == pids
    for node in nodebed.NODES:
        bed.check_agent_alive(node)


def test_a_deny_policy_wins_over_an_allow_policy(bed):
    """(d) Leaves no policy behind."""
    allow = clusterbed.fx.authorization_policy(NS, "backend-allow", allow_from("frontend", "other"))
    deny = clusterbed.fx.authorization_policy(NS, "deny-frontend", {
        "selector": {"matchLabels": {"app": "backend"}}, "action": "DENY",
        "rules": [{"from": [{"source": {"principals": [principal("frontend")]}}]}]})
    bed.api.apply("add", "authorizationpolicies", allow)
    bed.api.apply("add", "authorizationpolicies", deny)
    wait_policy(bed, lambda e: rule_names(e) == ["demo/deny-frontend[0]", "demo/backend-allow[0]"],
                "backend's DENY then ALLOW rules")
    assert_denied(bed, "frontend", rule="demo/deny-frontend[0]")
    assert_allowed(bed, "other")
    bed.api.apply("delete", "authorizationpolicies", deny)
    bed.api.apply("delete", "authorizationpolicies", allow)
    wait_policy(bed, lambda e: rule_names(e) == [], "backend's rules to be gone")


def test_peer_authentication_strict_refuses_plaintext_and_a_permissive_port_readmits_it(bed):
    """(e) STRICT for the namespace refuses a plaintext client on the app
    port (PERMISSIVE before, Istio's default); a workload PeerAuthentication
    with portLevelMtls PERMISSIVE for that port re-admits it. Leaves no
    PeerAuthentication behind."""
    strict = clusterbed.fx.peer_authentication(NS, "strict", {"mtls": {"mode": "STRICT"}})
    bed.api.apply("add", "peerauthentications", strict)
    wait_policy(bed, lambda e: e["peer_authentication"]["mode"] == "STRICT",
                "backend's mode to be STRICT")
    assert backend_policy(bed)["peer_authentication"]["source"] == "demo/strict"
    res, line = call(bed, "ca", uid=None)
    assert res.returncode != 0 and line["decision"] == "deny", (res.stdout, line)
    assert_allowed(bed, "frontend")  # mesh TLS is still fine

    port_level = clusterbed.fx.peer_authentication(NS, "backend-app-port", {
        "selector": {"matchLabels": {"app": "backend"}},
        "mtls": {"mode": "STRICT"},
        "portLevelMtls": {str(nodebed.APP_PORT): {"mode": "PERMISSIVE"}}})
    bed.api.apply("add", "peerauthentications", port_level)
    wait_policy(bed, lambda e: [p["port"] for p in e["peer_authentication"]["ports"]]
                == [nodebed.APP_PORT], "backend's port-level mode")
    assert_allowed(bed, "ca", uid=None)
    bed.api.apply("delete", "peerauthentications", port_level)
    bed.api.apply("delete", "peerauthentications", strict)
    wait_policy(bed, lambda e: e["peer_authentication"]["mode"] == "PERMISSIVE"
                and e["peer_authentication"]["source"] == "default", "the default mode again")


def test_an_l7_allow_policy_grants_nothing_at_l4_and_says_why(bed):
    """(f) ALLOW with methods: ["GET"] cannot be checked at L4: fail closed.
    Leaves no policy behind."""
    mark = len(bed.ca_log())
    l7 = clusterbed.fx.authorization_policy(NS, "get-only", {
        "selector": {"matchLabels": {"app": "backend"}}, "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": [principal("frontend")]}}],
                   "to": [{"operation": {"methods": ["GET"]}}]}]})
    bed.api.apply("add", "authorizationpolicies", l7)
    entry = wait_policy(bed, lambda e: e if rule_names(e) == ["demo/get-only[0]"] else None,
                        "the reduced rule")
    rule = entry["rules"][0]
    assert rule["never_matches"] is True and "methods" in rule["reduced"], rule
    assert_denied(bed, "frontend")
    wait_ca(bed, mark, r"authorization policy demo/get-only: reduced: .*methods")
    # The agent says it too: a log line naming the rule, and a gauge.
    podbed.wait_until(lambda: "rule demo/get-only[0] reduced for L4" in bed.agent_stderr("node-2"),
                      "node-2's agent to log the reduced rule", bed.wait)
    status, metrics = bed.admin("node-2", "/metrics")
    assert status == 200 and "\nmtlsd_policy_rules_reduced 1\n" in metrics, metrics[-2000:]
    bed.api.apply("delete", "authorizationpolicies", l7)
    wait_policy(bed, lambda e: rule_names(e) == [], "backend's rules to be gone")


def explain(bed, *args):
    """`mtlsd explain --admin` run on node-2 against its agent, about backend."""
    return bed.run("node-2", bed.mtlsd, "explain", "--admin", f"127.0.0.1:{nodebed.ADMIN_PORT}",
                   "--workload", BACKEND.ip, *args, check=False)


def test_mtlsd_explain_asks_the_running_agent_about_istio_rules(bed):
    """`mtlsd explain --admin` explains the policy the agent got from the
    Istio objects: the deciding policy and rule index, each clause, and the
    PeerAuthentication mode in force. Leaves no policy behind."""
    allow = clusterbed.fx.authorization_policy(NS, "backend-allow", allow_from("frontend"))
    bed.api.apply("add", "authorizationpolicies", allow)
    wait_policy(bed, lambda e: rule_names(e) == ["demo/backend-allow[0]"], "the ALLOW rule")
    port = str(nodebed.APP_PORT)
    ok = explain(bed, "--peer", FRONTEND.spiffe_id, "--port", port, "--source-ip", FRONTEND.ip)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "decision: allow" in ok.stdout and "rule:     demo/backend-allow[0]" in ok.stdout, \
        ok.stdout
    assert f"principals [{principal('frontend')}]: yes" in ok.stdout, ok.stdout
    assert "PeerAuthentication PERMISSIVE from default" in ok.stdout, ok.stdout
    no = explain(bed, "--peer", OTHER.spiffe_id, "--port", port)
    assert no.returncode == 1, no.stdout + no.stderr
    assert "rule:     no-allow-rule-matched" in no.stdout, no.stdout
    assert "selecting this workload" in no.stdout and "demo/backend-allow" in no.stdout, no.stdout
    as_json = explain(bed, "--plaintext", "--port", port, "--json")
    assert as_json.returncode == 1, as_json.stdout + as_json.stderr
    answer = json.loads(as_json.stdout)
    assert answer["rule"] == "no-allow-rule-matched" and answer["mtls_mode"] == "PERMISSIVE", answer
    # With the namespace STRICT (the README's example), plaintext never reaches policy.
    strict = clusterbed.fx.peer_authentication(NS, "strict", {"mtls": {"mode": "STRICT"}})
    bed.api.apply("add", "peerauthentications", strict)
    wait_policy(bed, lambda e: (e.get("peer_authentication") or {}).get("source") == "demo/strict",
                "the STRICT mode")
    no = explain(bed, "--peer", OTHER.spiffe_id, "--port", port)
    assert no.returncode == 1, no.stdout + no.stderr
    assert "PeerAuthentication STRICT from demo/strict" in no.stdout, no.stdout
    assert "refused before policy (PeerAuthentication STRICT" in no.stdout, no.stdout
    print("\n" + ok.stdout + "\n" + no.stdout)  # the README shows these
    bed.api.apply("delete", "peerauthentications", strict)
    bed.api.apply("delete", "authorizationpolicies", allow)
    wait_policy(bed, lambda e: rule_names(e) == [] and
                (e.get("peer_authentication") or {}).get("source") == "default",
                "backend's rules and mode to be the defaults again")


def restart_ca(bed):
    mark = len(bed.ca_log())
    bed.kill_mtls_ca()
    bed.spawn_mtls_ca()
    return mark


def test_an_api_server_without_istio_keeps_the_agents_policy_and_says_why(bed):
    """Neither version served (no CRD): mtls-ca says so, keeps retrying and
    sends nothing, so the agents keep the policy they have."""
    allow = clusterbed.fx.authorization_policy(NS, "backend-allow", allow_from("frontend"))
    bed.api.apply("add", "authorizationpolicies", allow)
    wait_policy(bed, lambda e: rule_names(e) == ["demo/backend-allow[0]"], "the ALLOW rule")
    bed.api.serve("security.istio.io/v1", False)
    bed.api.serve("security.istio.io/v1beta1", False)
    mark = restart_ca(bed)
    wait_ca(bed, mark, r"AuthorizationPolicy is not served by the API server .*"
                       r"is Istio's CRD installed\?")
    assert not ca_lines(bed, mark, r"Istio policies synced")
    assert rule_names(backend_policy(bed)) == ["demo/backend-allow[0]"]
    assert_denied(bed, "other")


def test_a_v1beta1_only_api_server_is_followed_at_v1beta1(bed):
    """(g) Istio before 1.22: v1beta1 only. Continues from the previous
    test: the ALLOW policy for frontend is still in the API."""
    mark = len(bed.ca_log())
    bed.api.serve("security.istio.io/v1beta1", True)
    wait_ca(bed, mark, r"following authorizationpolicies at security.istio.io/v1beta1")
    wait_ca(bed, mark, r"following peerauthentications at security.istio.io/v1beta1")
    wait_ca(bed, mark, r"kubernetes: Istio policies synced")
    started = time.monotonic()
    bed.api.apply("modify", "authorizationpolicies",
                  clusterbed.fx.authorization_policy(NS, "backend-allow", allow_from("other"),
                                                     version="v1beta1"))
    took, line = first_decided(bed, "other", "allow", started)
    print(f"decided the new way {took * 1000:.0f} ms after the API write")
    assert took <= DECISION_BUDGET_S, f"took {took:.2f} s"
    assert line["rule"] == "demo/backend-allow[0]", line
    assert_denied(bed, "frontend")
    bed.api.apply("delete", "authorizationpolicies", clusterbed.fx.authorization_policy(
        NS, "backend-allow", allow_from("other")))
    wait_policy(bed, lambda e: rule_names(e) == [], "backend's rules to be gone")
    bed.api.serve("security.istio.io/v1", True)


def test_the_agents_and_mtls_ca_stop_cleanly(bed):
    """Last: every agent and mtls-ca (all its runs) exit 0 on SIGTERM
    without a sanitizer report -- a leak or UB on the Istio paths shows
    only here, at exit, under --config=asan/ubsan."""
    assert bed.assert_agents_stopped_cleanly() == set(nodebed.NODES)
    status, killed = bed.procs.stop(bed.ca_proc)
    assert (status, killed) == (0, False), bed.ca_log()[-3000:]
    podbed.assert_no_sanitizer_report(bed.ca_log(), "mtls-ca")
