"""mtls-ca with the `kubernetes:` source: a node agent gets a certificate
for a workload only while the Kubernetes API (the stand-in of tests/k8s,
over verified HTTPS with a bearer token) says a Running pod of that
identity is scheduled on the agent's node."""

import copy
import datetime
import queue
import re
import signal
import sys
import time
from pathlib import Path

import grpc
import pytest

from conftest import COUNTERS_END, TRUST_DOMAIN, WAIT, mint_token, wait_until
from test_mtls_ca import (IMPERSONATE, NODE_AGENT_ID, Watcher, create, leaf_of, node_agent_token,
                          refused, run_ca, uri_sans)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "k8s"))
import fixtures as fx  # noqa: E402
from standin import StandIn  # noqa: E402

WEB = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/web"
WEB_POD = fx.pod("demo", "web-7d9f8b6c5d-aaaaa", "web", "node-1", ["10.244.1.5", "fd00:10:244:1::5"])


@pytest.fixture
def api(tmp_path):
    s = StandIn(tmp_path / "apiserver").start()
    s.apply("add", "namespaces", fx.namespace("demo"))
    yield s
    s.stop()


def kubernetes_config(api, tmp_path, watch_timeout_s=5):
    token = tmp_path / "k8s-token"
    token.write_text(api.token)
    return (f"node_agents: [{NODE_AGENT_ID}]\n"
            "kubernetes:\n"
            f"  server: {api.server}\n"
            f"  token_file: {token}\n"
            f"  ca_file: {api.ca_file}\n"
            f"  watch_timeout_s: {watch_timeout_s}\n")


@pytest.fixture
def k8s_ca(start_ca, api, tmp_path):
    ca = start_ca(extra_config=kubernetes_config(api, tmp_path))
    wait_until(lambda: "kubernetes: cluster state synced" in ca.stderr(), "the first sync")
    return ca


def test_a_node_agent_gets_a_pod_on_its_node_only_while_the_api_says_it_runs_there(k8s_ca, api, msgs, pki):
    code, details = refused(k8s_ca, msgs, token=node_agent_token(pki), metadata={IMPERSONATE: WEB})
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details == f"identity {WEB} has no workload on node node-1"

    api.apply("add", "pods", WEB_POD)

    def signed():
        try:
            return create(k8s_ca, msgs, token=node_agent_token(pki), metadata={IMPERSONATE: WEB})
        except grpc.RpcError:
            return None
    assert uri_sans(leaf_of(wait_until(signed, "the pod to be known"))) == [WEB]
    # Not for the agent of another node.
    code, _ = refused(k8s_ca, msgs, token=node_agent_token(pki, node="node-2"), metadata={IMPERSONATE: WEB})
    assert code == grpc.StatusCode.PERMISSION_DENIED

    api.apply("modify", "pods", fx.terminating(WEB_POD))  # a terminating pod leaves at once

    def refused_again():
        try:
            create(k8s_ca, msgs, token=node_agent_token(pki), metadata={IMPERSONATE: WEB})
            return False
        except grpc.RpcError as e:
            return e.code() == grpc.StatusCode.PERMISSION_DENIED
    wait_until(refused_again, "the terminating pod to leave")


def test_before_the_first_listing_a_node_agent_is_told_to_retry_not_refused(start_ca, api, msgs,
                                                                           pki, tmp_path):
    # mtls-ca restarted while the API refuses it (or is down): it has listed
    # nothing, so it cannot tell a pod that is not there from one it has not
    # heard of yet. A renewal is asked to retry, not told "no workload".
    api.admin("/admin/tokens", {"tokens": []})
    api.apply("add", "pods", WEB_POD)
    ca = start_ca(extra_config=kubernetes_config(api, tmp_path))
    wait_until(lambda: "kubernetes: problem pods" in ca.stderr(), "the API to refuse mtls-ca")
    code, details = refused(ca, msgs, token=node_agent_token(pki), metadata={IMPERSONATE: WEB})
    assert code == grpc.StatusCode.UNAVAILABLE, details
    assert details == (f"the Kubernetes API has not been listed yet, so whether {WEB} runs on "
                       "node node-1 is not known; retry")
    # Refusals that need no cluster state stay what they are.
    code, _ = refused(ca, msgs, token=node_agent_token(pki), metadata={IMPERSONATE: "nonsense"})
    assert code == grpc.StatusCode.INVALID_ARGUMENT

    api.admin("/admin/tokens", {"tokens": [api.token]})
    wait_until(lambda: "kubernetes: cluster state synced" in ca.stderr(), "the first sync")
    resp = create(ca, msgs, token=node_agent_token(pki), metadata={IMPERSONATE: WEB})
    assert uri_sans(leaf_of(resp)) == [WEB]


def test_check_config_accepts_a_kubernetes_source(start_ca, api, tmp_path):
    ca = start_ca(extra_config=kubernetes_config(api, tmp_path))
    p = run_ca("--check-config", ca.config)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("change,expected", [
    (("  token_file: ", "  token_file: /nonexistent"), "kubernetes: token file /nonexistent"),
    (("  server: https://", "  server: http://"), "'kubernetes.server' must be an https:// URL"),
    (("  watch_timeout_s: 5", "  watch_timeout_s: 5\n  colour: blue"), "unknown key 'kubernetes.colour'"),
    (("kubernetes:\n", "workloads_file: workloads.yaml\nkubernetes:\n"),
     "'workloads_file' and 'kubernetes' both say which workload runs where; keep one"),
])
def test_check_config_refuses_a_bad_kubernetes_source(start_ca, api, tmp_path, change, expected):
    ca = start_ca(extra_config=kubernetes_config(api, tmp_path))
    ca.config.write_text(ca.config.read_text().replace(*change))
    p = run_ca("--check-config", ca.config)
    assert p.returncode == 1
    assert expected in p.stderr, p.stderr
    assert p.stderr.startswith(str(ca.config) + ":") or "ca.yaml:" in p.stderr, p.stderr


# --------------------------------------------------------------------------
# Watch: snapshots that follow the cluster, scoped per caller

API = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/api"
API_POD = fx.pod("demo", "api-5c6d7e8f9a-bbbbb", "api", "node-2", ["10.244.2.6"])
WEB_SVC = fx.service("demo", "web", ["10.96.0.20"], [("http", 80, 8080)])


def web_slice(*endpoints):
    """The web Service's EndpointSlice; |endpoints| are (pod object, ready)."""
    return fx.endpointslice("demo", "web", "abc12", "IPv4",
                            [(p["metadata"]["name"], p["status"]["podIP"], p["spec"]["nodeName"],
                              ready) for p, ready in endpoints], [("http", 8080)])


def node_workloads(snap):
    """[(pod, spiffe_id, [ips])], or None when the field is absent."""
    if not snap.HasField("node_workloads"):
        return None
    return [(w.pod, w.spiffe_id, list(w.ips)) for w in snap.node_workloads.workloads]


def destinations(snap):
    return {d.address: (d.spiffe_id, list(d.spiffe_ids)) for d in snap.destinations}


def next_matching(w, predicate, what):
    """The first snapshot on |w| for which |predicate| holds (a change may
    arrive over more than one round); bounded by WAIT."""
    deadline = time.monotonic() + WAIT
    seen = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no snapshot with {what}; got {seen}")
        try:
            snap = w.next(timeout=left)
        except AssertionError:
            raise AssertionError(f"no snapshot with {what}; got {seen}")
        if predicate(snap):
            return snap
        seen.append(snap)


def round_lines(ca):
    return [line for line in ca.stderr().splitlines() if "in force (kubernetes changes" in line]


def drain(w, quiet_s=0.3):
    """Every snapshot already on its way to |w| (none for |quiet_s|: done)."""
    got = []
    while True:
        try:
            snap = w.snapshots.get(timeout=quiet_s)
        except queue.Empty:
            return got
        assert snap is not None, f"stream ended: {w.error}"
        got.append(snap)


def sidecar_token(pki, sa="web", node="node-1"):
    return mint_token(pki["token_key"], sub=f"system:serviceaccount:demo:{sa}", node=node)


@pytest.fixture
def watchers():
    opened = []

    def open_(ca, msgs, token):
        w = Watcher(ca, msgs, token)
        opened.append(w)
        return w
    yield open_
    for w in opened:
        w.close()


def test_a_node_agent_gets_the_pods_of_its_node_as_they_come_and_go(k8s_ca, api, msgs, pki,
                                                                    watchers):
    w = watchers(k8s_ca, msgs, node_agent_token(pki, node="node-1"))
    first = w.next()
    assert node_workloads(first) == []  # present and empty: nobody runs on node-1 yet
    assert first.node_workloads.node_name == "node-1"

    api.apply("add", "pods", WEB_POD)
    added = next_matching(w, lambda s: node_workloads(s), "the new pod")
    assert node_workloads(added) == [(WEB_POD["metadata"]["name"], WEB,
                                      ["10.244.1.5", "fd00:10:244:1::5"])]
    assert added.node_workloads.workloads[0].namespace == "demo"
    # Its IPs, alone, are destinations with its identity.
    assert destinations(added)["10.244.1.5"] == ("", [WEB])
    assert destinations(added)["fd00:10:244:1::5"] == ("", [WEB])

    api.apply("delete", "pods", WEB_POD)
    removed = next_matching(w, lambda s: node_workloads(s) == [], "the pod gone")
    assert "10.244.1.5" not in destinations(removed)
    assert removed.version != added.version


def test_an_endpointslice_change_changes_the_service_identities(k8s_ca, api, msgs, pki, watchers):
    api.apply("add", "pods", WEB_POD)
    api.apply("add", "pods", API_POD)
    api.apply("add", "services", WEB_SVC)
    api.apply("add", "endpointslices", web_slice((WEB_POD, True), (API_POD, False)))
    w = watchers(k8s_ca, msgs, sidecar_token(pki))
    snap = next_matching(w, lambda s: destinations(s).get("10.96.0.20:80") == ("", [WEB]),
                         "10.96.0.20:80 -> web only (api's endpoint is not ready)")

    api.apply("modify", "endpointslices", web_slice((WEB_POD, True), (API_POD, True)))
    snap = next_matching(w, lambda s: "10.96.0.20:80" in destinations(s) and
                         destinations(s)["10.96.0.20:80"][1] != [WEB], "api's endpoint ready")
    assert destinations(snap)["10.96.0.20:80"] == ("", [API, WEB])  # sorted

    # No ready endpoint: the address leaves (the agent's unknown-destination
    # setting applies to it).
    api.apply("modify", "endpointslices", web_slice((WEB_POD, False), (API_POD, False)))
    next_matching(w, lambda s: "10.96.0.20:80" not in destinations(s), "the address to leave")


def test_a_pod_event_on_another_node_sends_nothing_to_this_nodes_agent(k8s_ca, api, msgs, pki,
                                                                       watchers):
    api.apply("add", "pods", WEB_POD)
    api.apply("add", "pods", API_POD)
    node1 = watchers(k8s_ca, msgs, node_agent_token(pki, node="node-1"))
    node2 = watchers(k8s_ca, msgs, node_agent_token(pki, node="node-2"))
    web_name, api_name = WEB_POD["metadata"]["name"], API_POD["metadata"]["name"]
    next_matching(node1, lambda s: [p for p, _, _ in node_workloads(s)] == [web_name], "web")
    next_matching(node2, lambda s: [p for p, _, _ in node_workloads(s)] == [api_name], "api")

    # A change to node-2's pod that no snapshot shows (a label): a round
    # runs, and sends nothing to anyone.
    before = len(round_lines(k8s_ca))
    relabelled = copy.deepcopy(API_POD)
    relabelled["metadata"]["labels"]["colour"] = "blue"
    api.apply("modify", "pods", relabelled)
    wait_until(lambda: len(round_lines(k8s_ca)) > before, "the round for the event")
    last = round_lines(k8s_ca)[-1]
    assert "sent to 0 of 2 streams (0 as deltas, 0 bytes)" in last, last
    label_round = int(re.search(r"version (\d+)-", last).group(1))
    for w in (node1, node2):  # whatever is still on the wire is older
        assert all(int(s.version.split("-")[0]) < label_round for s in drain(w))

    # A pod that leaves node-2 changes node-2's workloads; node-1's agent
    # hears of it too (the pod's IP leaves every caller's destinations),
    # with its own workloads unchanged.
    api.apply("delete", "pods", API_POD)
    next_matching(node2, lambda s: node_workloads(s) == [], "api gone from node-2")
    snap = next_matching(node1, lambda s: "10.244.2.6" not in destinations(s), "api's IP gone")
    assert [p for p, _, _ in node_workloads(snap)] == [web_name]


def test_a_sidecar_gets_only_its_own_workload_policy_and_no_node_workloads(k8s_ca, api, msgs, pki,
                                                                          watchers):
    from conftest import write_mesh
    write_mesh(k8s_ca.mesh, pki, workload_policies=(
        f"  - spiffe_id: {WEB}\n    policy: {{default: deny}}\n"
        f"  - spiffe_id: {API}\n    policy: {{default: allow}}\n"))
    wait_until(lambda: "mesh.yaml; " in k8s_ca.stderr(), "the mesh edit in force")
    api.apply("add", "pods", WEB_POD)
    api.apply("add", "pods", API_POD)
    sidecar = watchers(k8s_ca, msgs, sidecar_token(pki))  # its token names node-1 too
    snap = next_matching(sidecar, lambda s: "10.244.2.6" in destinations(s), "both pods known")
    assert [p.spiffe_id for p in snap.workload_policies] == [WEB]
    assert node_workloads(snap) is None
    # The node agent of node-2 gets api's policy (its pod), not web's.
    agent = watchers(k8s_ca, msgs, node_agent_token(pki, node="node-2"))
    snap = next_matching(agent, lambda s: node_workloads(s), "node-2's pod")
    assert [p.spiffe_id for p in snap.workload_policies] == [API]


def test_nothing_is_sent_before_the_kubernetes_source_has_synced(start_ca, api, msgs, pki,
                                                                  tmp_path, watchers):
    api.apply("add", "pods", WEB_POD)
    api.admin("/admin/tokens", {"tokens": ["not-the-one-mtls-ca-has"]})  # every LIST: 401
    ca = start_ca(extra_config=kubernetes_config(api, tmp_path))
    w = watchers(ca, msgs, node_agent_token(pki, node="node-1"))
    wait_until(lambda: "watch opened by" in ca.stderr(), "the stream to open")
    wait_until(lambda: "kubernetes: problem" in ca.stderr(), "a failed LIST")
    assert "cluster state synced" not in ca.stderr()
    w.nothing_within(0.5)

    api.admin("/admin/tokens", {"tokens": [api.token]})
    snap = w.next()  # after the sync, with the whole state
    assert "cluster state synced" in ca.stderr()
    assert node_workloads(snap) == [(WEB_POD["metadata"]["name"], WEB,
                                     ["10.244.1.5", "fd00:10:244:1::5"])]
    assert "in force (kubernetes source synced" in ca.stderr()


# Deltas (mesh.proto, MeshSnapshot.delta), applied here from the proto's
# rules, independently of agent/mesh_delta.c.
KEYED = {"trust_bundles": (2, "trust_domain"), "destinations": (4, "address"),
         "workload_policies": (5, "spiffe_id"), "unresolved": (11, "address")}
SINGLE = {"policy": 3, "node_workloads": 6}


def apply_delta(msgs, held, d):
    """The complete snapshot delta |d| makes of |held|."""
    assert d.delta and d.base_version == held.version, (d.version, d.base_version, held.version)
    out = msgs.MeshSnapshot()
    out.CopyFrom(held)
    out.version = d.version
    removed = {(r.field, r.key) for r in d.removed}
    for name, (number, key) in KEYED.items():
        entries = {getattr(e, key): e for e in getattr(held, name)}
        for k in [k for k in entries if (number, k) in removed]:
            del entries[k]
        entries.update({getattr(e, key): e for e in getattr(d, name)})
        del getattr(out, name)[:]
        for k in sorted(entries):
            getattr(out, name).add().CopyFrom(entries[k])
    for name, number in SINGLE.items():
        if (number, "") in removed:
            out.ClearField(name)
        if d.HasField(name):
            getattr(out, name).CopyFrom(getattr(d, name))
    return out


def canonical(msgs, snap):
    """|snap| with its keyed entries in key order (order carries no meaning)."""
    out = msgs.MeshSnapshot()
    out.CopyFrom(snap)
    for name, (_, key) in KEYED.items():
        entries = sorted(getattr(snap, name), key=lambda e: getattr(e, key))
        del getattr(out, name)[:]
        for e in entries:
            getattr(out, name).add().CopyFrom(e)
    return out.SerializeToString(deterministic=True)


def follow_steps(api, msgs, full, deltas, held, steps):
    """Applies each step to the API; after each, |deltas| (applied to
    |held|) must hold what |full| got last, under the same version. Returns
    the final content and the sizes of the deltas and of the complete
    snapshots."""
    sizes = {"delta": [], "full": []}
    for step in steps:
        for verb, kind, obj in step:
            api.apply(verb, kind, obj)
        latest = next_matching(full, lambda s: s.version != held.version, f"{step}")
        for s in drain(full):
            latest = s
        while held.version != latest.version:
            d = deltas.next()
            assert d.delta, f"{step}: a complete snapshot mid-stream"
            sizes["delta"].append(d.ByteSize())
            held = apply_delta(msgs, held, d)
        sizes["full"].append(latest.ByteSize())
        assert canonical(msgs, held) == canonical(msgs, latest), f"{step}"
    return held, sizes


def test_a_delta_watcher_rebuilds_what_a_complete_watcher_gets(k8s_ca, api, msgs, pki, watchers):
    """Two streams of one node agent, one taking deltas: after every
    cluster change both hold the same content under the same version; the
    deltas carry only what changed and are much smaller."""
    token = node_agent_token(pki, node="node-1")
    full = watchers(k8s_ca, msgs, token)
    deltas = Watcher(k8s_ca, msgs, token, accept_deltas=True)
    try:
        held = deltas.next()
        assert not held.delta  # a stream starts complete
        assert canonical(msgs, held) == canonical(msgs, full.next())
        # Each step changes what node-1's agent sees (a Service without a
        # ready endpoint would not: it goes with its EndpointSlice).
        steps = [[("add", "pods", WEB_POD)], [("add", "pods", API_POD)],
                 [("add", "services", WEB_SVC),
                  ("add", "endpointslices", web_slice((WEB_POD, True), (API_POD, True)))],
                 [("delete", "pods", WEB_POD)]]
        held, sizes = follow_steps(api, msgs, full, deltas, held, steps)
        # The last step removed the pod: its IPs and its node entry go.
        assert "10.244.1.5" not in destinations(held) and node_workloads(held) == []
        assert max(sizes["delta"]) < min(sizes["full"]), sizes
        k8s_ca.signal(signal.SIGUSR1)
        text = wait_until(lambda: COUNTERS_END in k8s_ca.stderr() and k8s_ca.stderr(),
                          "the counters on SIGUSR1")
        sent = int(re.search(r"mtls_ca_snapshot_deltas_sent_total (\d+)", text).group(1))
        assert sent >= len(steps), text
    finally:
        deltas.close()


def test_a_burst_of_events_is_coalesced_into_rounds_of_100_ms(k8s_ca, api):
    """Events within the debounce window share one round, every time (not
    only the first: a one-shot timer restarted without its delay would fire
    at once, one round per event)."""
    api.apply("add", "pods", WEB_POD)
    wait_until(lambda: round_lines(k8s_ca), "the first round")
    before = len(round_lines(k8s_ca))
    started = time.monotonic()
    events = 40
    for i in range(events):
        relabelled = copy.deepcopy(WEB_POD)
        relabelled["metadata"]["labels"]["rollout"] = str(i)
        api.apply("modify", "pods", relabelled)
    elapsed = time.monotonic() - started
    now = datetime.datetime.now(datetime.timezone.utc)
    last_event = now.replace(microsecond=now.microsecond // 1000 * 1000)  # the log's precision

    def round_after_last_event():
        stamps = [datetime.datetime.strptime(l.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ")
                  .replace(tzinfo=datetime.timezone.utc) for l in round_lines(k8s_ca)]
        return stamps and stamps[-1] >= last_event
    wait_until(round_after_last_event, "the round of the last event")
    rounds = len(round_lines(k8s_ca)) - before
    assert 1 <= rounds <= elapsed / 0.1 + 2, (rounds, elapsed)


# ---- destinations on demand (mesh.proto, Want) ---------------------------------

WANT = "/mtlsd.mesh.v1.MeshConfig/Want"


def want(ca, msgs, token, watch_id, addresses):
    """One Want call: (status code, details, WantResponse or None)."""
    ch = ca.channel()
    try:
        call = ch.unary_unary(WANT, request_serializer=msgs.WantRequest.SerializeToString,
                              response_deserializer=msgs.WantResponse.FromString)
        try:
            resp = call(msgs.WantRequest(watch_id=watch_id, addresses=addresses),
                        metadata=[("authorization", f"Bearer {token}")], timeout=WAIT)
            return grpc.StatusCode.OK, "", resp
        except grpc.RpcError as e:
            return e.code(), e.details(), None
    finally:
        ch.close()


def skipped_rounds(ca, at_least=0):
    """mtls-ca's on_demand_rounds_skipped counter, from SIGUSR1 dumps, once
    it is at least |at_least| (bounded by WAIT)."""
    pattern = re.compile(r"mtls_ca_on_demand_rounds_skipped_total (\d+)")
    deadline = time.monotonic() + WAIT
    value = 0
    while time.monotonic() < deadline:
        seen = len(pattern.findall(ca.stderr()))
        ca.signal(signal.SIGUSR1)
        try:
            wait_until(lambda: len(pattern.findall(ca.stderr())) > seen, "a dump", timeout=0.5)
        except AssertionError:
            pass  # zero counters are not printed
        found = pattern.findall(ca.stderr())
        value = int(found[-1]) if found else 0
        if value >= at_least:
            return value
    raise AssertionError(f"on_demand_rounds_skipped stayed at {value} < {at_least}")


def strip_version(msgs, snap):
    out = msgs.MeshSnapshot()
    out.CopyFrom(snap)
    out.version = ""
    return out


def unresolved(snap):
    return sorted(u.address for u in snap.unresolved)


def test_on_demand_a_stream_carries_only_what_was_asked_and_want_adds_at_once(
        k8s_ca, api, msgs, pki, watchers):
    api.apply("add", "pods", WEB_POD)
    api.apply("add", "pods", API_POD)
    api.apply("add", "services", WEB_SVC)
    api.apply("add", "endpointslices", web_slice((WEB_POD, True), (API_POD, True)))
    token = sidecar_token(pki, sa="api")
    w = Watcher(k8s_ca, msgs, token, watch_id="w-1", wanted=["10.244.1.5:8080"])
    try:
        # The pod it started with (its IP-alone entry), and nothing else of the
        # cluster (once the rounds of the changes above have run).
        first = next_matching(w, lambda s: destinations(s) == {"10.244.1.5": ("", [WEB])},
                              "the pod it asked for")
        assert first.on_demand_destinations
        assert unresolved(first) == []
        assert [p.spiffe_id for p in first.workload_policies] == []  # api has none

        code, details, resp = want(k8s_ca, msgs, token, "w-1",
                                   ["10.96.0.20:80", "10.1.2.3:80", "10.244.1.5:8080"])
        assert code == grpc.StatusCode.OK, details
        assert resp.wanted == 3
        snap = next_matching(w, lambda s: "10.96.0.20:80" in destinations(s), "the Service")
        assert destinations(snap) == {"10.244.1.5": ("", [WEB]),
                                      "10.96.0.20:80": ("", [API, WEB])}
        assert unresolved(snap) == ["10.1.2.3:80"]

        # The asked Service's endpoints change: it follows. A pod nobody
        # asked about comes and goes: nothing is sent.
        api.apply("modify", "endpointslices", web_slice((WEB_POD, True), (API_POD, False)))
        changed = next_matching(w, lambda s: destinations(s).get("10.96.0.20:80") ==
                                ("", [WEB]), "web's endpoints to follow")
        other = fx.pod("demo", "cache-0", "cache", "node-3", ["10.244.3.3"])
        api.apply("add", "pods", other)
        api.apply("delete", "pods", other)
        wait_until(lambda: len(round_lines(k8s_ca)) >= 2, "the rounds of the other pod")
        assert w.nothing_within(0.5)
        # The unknown address gets an entry once a pod takes it.
        api.apply("add", "pods", fx.pod("demo", "db-0", "db", "node-3", ["10.1.2.3"]))
        later = next_matching(w, lambda s: "10.1.2.3" in destinations(s), "10.1.2.3 to resolve")
        assert unresolved(later) == [] and changed.version != later.version
    finally:
        w.close()


@pytest.mark.parametrize("addresses,code,message", [
    (["10.0.0.1"], grpc.StatusCode.INVALID_ARGUMENT, 'address "10.0.0.1" is not "ip:port"'),
    (["fd00::1:80"], grpc.StatusCode.INVALID_ARGUMENT, 'address "fd00::1:80"'),
    (["10.0.0.1:0"], grpc.StatusCode.INVALID_ARGUMENT, 'address "10.0.0.1:0"'),
    ([f"10.0.{i // 250}.{i % 250 + 1}:80" for i in range(4097)],
     grpc.StatusCode.RESOURCE_EXHAUSTED, "at most 4096"),
])
def test_on_demand_a_bad_want_is_refused_with_what_was_wrong(k8s_ca, msgs, pki, addresses, code,
                                                            message):
    token = sidecar_token(pki)
    w = Watcher(k8s_ca, msgs, token, watch_id="w-1")
    try:
        w.next()
        got, details, _ = want(k8s_ca, msgs, token, "w-1", addresses)
        assert (got, message in details) == (code, True), details
        assert w.nothing_within(0.3)  # the stream goes on, unchanged
        got, details, resp = want(k8s_ca, msgs, token, "w-1", ["10.9.9.9:80"])
        assert got == grpc.StatusCode.OK and resp.wanted == 1, details
    finally:
        w.close()


def test_on_demand_want_reaches_only_the_callers_own_on_demand_stream(k8s_ca, msgs, pki,
                                                                     watchers):
    web, api_token = sidecar_token(pki), sidecar_token(pki, sa="api")
    mine = Watcher(k8s_ca, msgs, web, watch_id="w-1")
    plain = watchers(k8s_ca, msgs, api_token)  # not on demand
    try:
        mine.next()
        plain.next()
        # Another identity naming my stream, a stream id nobody has, and a
        # stream that is not on demand: NOT_FOUND, nothing pushed.
        for token, watch_id in ((api_token, "w-1"), (web, "w-2"), (api_token, "")):
            code, details, _ = want(k8s_ca, msgs, token, watch_id, ["10.0.0.1:80"])
            assert code == grpc.StatusCode.NOT_FOUND, (token, watch_id, details)
            assert "no open Watch stream" in details
        assert mine.nothing_within(0.3)
        code, details, _ = want(k8s_ca, msgs, "not-a-token", "w-1", ["10.0.0.1:80"])
        assert code == grpc.StatusCode.UNAUTHENTICATED, details
    finally:
        mine.close()
    refused = [l for l in k8s_ca.access_lines()
               if l.get("method") == WANT and l.get("reason") == "no_such_stream"]
    assert len(refused) == 3, k8s_ca.access_lines()[-5:]


def test_on_demand_deltas_rebuild_what_a_complete_on_demand_stream_gets(k8s_ca, api, msgs, pki):
    token = sidecar_token(pki, sa="api")
    wanted = ["10.96.0.20:80", "10.244.1.5:8080", "10.1.2.3:80"]
    full = Watcher(k8s_ca, msgs, token, watch_id="full", wanted=wanted)
    deltas = Watcher(k8s_ca, msgs, token, accept_deltas=True, watch_id="deltas", wanted=wanted)
    try:
        held = deltas.next()
        assert canonical(msgs, held) == canonical(msgs, full.next())
        # Each step changes what was asked for: a pod takes an asked IP, an
        # unresolved address gets a pod, the Service comes, the first pod goes.
        db = fx.pod("demo", "db-0", "db", "node-3", ["10.1.2.3"])
        steps = [[("add", "pods", WEB_POD)], [("add", "pods", db)],
                 [("add", "pods", API_POD), ("add", "services", WEB_SVC),
                  ("add", "endpointslices", web_slice((WEB_POD, True), (API_POD, True)))],
                 [("delete", "pods", WEB_POD)]]
        held, _ = follow_steps(api, msgs, full, deltas, held, steps)
        assert held.on_demand_destinations
        # Rounds that change nothing these streams asked for are not even
        # built for them; what they hold is still what a new stream gets.
        skipped = skipped_rounds(k8s_ca)
        for i in range(3):
            api.apply("add", "pods", fx.pod("demo", f"other-{i}", "db", "node-3",
                                            [f"10.244.3.{10 + i}"]))
        skipped_rounds(k8s_ca, at_least=skipped + 2)
        assert full.nothing_within(0.3) and deltas.nothing_within(0.1)
        fresh = Watcher(k8s_ca, msgs, token, watch_id="fresh", wanted=wanted)
        try:
            assert canonical(msgs, strip_version(msgs, fresh.next())) == \
                canonical(msgs, strip_version(msgs, held))
        finally:
            fresh.close()
        assert "10.244.1.5:8080" in unresolved(held) and "10.1.2.3" in destinations(held)
        assert destinations(held)["10.96.0.20:80"] == ("", [API])
    finally:
        full.close()
        deltas.close()
