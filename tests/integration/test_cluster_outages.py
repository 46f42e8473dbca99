"""The Kubernetes-fed mesh through outages of what feeds it (issue 10): the
API server restarts or answers 410, or mtls-ca itself is killed, and no
agent loses state; what changed meanwhile arrives afterwards, and nothing
else moves.

Bed: clusterbed.py (two routed nodes in network namespaces, node agents
that learn everything from mtls-ca's Watch, mtls-ca fed by the API server
stand-in; needs root). What each test looks at is what an operator sees:
the agents' /ready, /certs (every workload with its serial), /policy,
/metrics counters and logs, mtls-ca's log, and real calls between the pods
with their access-log lines. Every wait is bounded and waits on one of
those; nothing sleeps.

The tests run in order on one bed and the pod set moves on from one to
the next (bed.api_pods says what the API holds); each states what it
starts from.
"""
import json
import re
import uuid
from dataclasses import dataclass

import pytest

import clusterbed
import nodebed
import podbed
from clusterbed import API_PODS, ca_lines, wait_ca
from nodebed import NODES

PAGE = "hello from the {} pod\n"


@pytest.fixture(scope="module")
def mtls_ca_bin():
    return podbed.require_mtls_ca_bin()


@pytest.fixture(scope="module")
def bed(request, module_procs):
    yield from nodebed.module_bed(clusterbed.ClusterBed, request, module_procs)


# ---- what an operator sees of an agent

@dataclass(frozen=True)
class View:
    ready: tuple        # (HTTP status of /ready, its body)
    workloads: tuple    # sorted (address, spiffe_id, serial) from /certs
    policies: tuple     # sorted JSON of each workload's /policy entry, without its version
    versions: tuple     # the mesh versions the served workloads carry
    issued: float       # mtlsd_certificate_rotations_total
    mesh_updates: float  # mtlsd_mesh_config_updates_total
    rejected: float     # mtlsd_mesh_config_rejected_total

    def without_versions(self):
        """What must stay equal when the same content comes under a new version."""
        return (self.ready[0], self.workloads, self.policies, self.issued, self.rejected)


def metrics(bed, node):
    status, text = bed.admin(node, "/metrics")
    assert status == 200, text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def stream_state(bed, node):
    states = [k for k, v in metrics(bed, node).items()
              if k.startswith("mtlsd_control_plane_stream_state{") and v == 1]
    assert len(states) == 1, states
    return re.search(r'state="(\w+)"', states[0]).group(1)


def observe(bed, node):
    status, ready = bed.admin(node, "/ready")
    code, certs = bed.admin(node, "/certs")
    assert code == 200, certs
    code, policy = bed.admin(node, "/policy")
    assert code == 200, policy
    m = metrics(bed, node)
    workloads = json.loads(certs)["workloads"]
    policies = json.loads(policy)["workloads"]
    return View(
        ready=(status, ready.strip()),
        workloads=tuple(sorted((w["address"], w["spiffe_id"], w["serial"]) for w in workloads)),
        policies=tuple(sorted(json.dumps({k: v for k, v in p.items() if k != "version"},
                                         sort_keys=True) for p in policies)),
        # A workload whose certificate has not come yet has no version.
        versions=tuple(sorted({p.get("version") or "" for p in policies})),
        issued=m['mtlsd_certificate_rotations_total{source="control-plane"}'],
        mesh_updates=m["mtlsd_mesh_config_updates_total"],
        rejected=m["mtlsd_mesh_config_rejected_total"])


def observe_all(bed):
    return {node: observe(bed, node) for node in NODES}


def serial_of(view, spiffe_id):
    serials = [s for _, sid, s in view.workloads if sid == spiffe_id]
    assert len(serials) == 1, f"{spiffe_id} listed {len(serials)} times: {view.workloads}"
    return serials[0]


def assert_serves_exactly_the_api_pods(bed, view, node):
    """The workload table is the API's pods of |node|, each once, each with a
    certificate; /ready is 200."""
    expected = sorted((p.ip, p.spiffe_id) for p in bed.pods_in_api(node))
    assert sorted((a, sid) for a, sid, _ in view.workloads) == expected, view.workloads
    assert all(serial for _, _, serial in view.workloads), view.workloads
    assert view.ready[0] == 200 and view.ready[1].startswith("ready: "), view.ready


def wait_serving(bed, node):
    """|node|'s agent serves exactly the API's pods of its node (bounded)."""
    expected = sorted((p.ip, p.spiffe_id) for p in bed.pods_in_api(node))

    def done():
        v = observe(bed, node)
        return v if (sorted((a, sid) for a, sid, _ in v.workloads) == expected
                     and all(s for _, _, s in v.workloads) and v.ready[0] == 200) else None
    try:
        return podbed.wait_until(done, f"{node} to serve exactly {expected}", bed.wait)
    except AssertionError as e:
        raise AssertionError(f"{e}\nnow: {observe(bed, node)}\nits log:\n"
                             f"{bed.agent_stderr(node)[-3000:]}") from None


# ---- traffic

def wait_new_log(bed, node, since, **match):
    """The first access-log line of |node| after the first |since| lines
    whose fields equal |match|."""
    def find():
        for line in bed.log_lines(node)[since:]:
            if all(line.get(k) == v for k, v in match.items()):
                return line
        return None
    try:
        return podbed.wait_until(find, f"an access-log line on {node} with {match}", bed.wait)
    except AssertionError as e:
        raise AssertionError(f"{e}\nlines: {bed.log_lines(node)[since:]}") from None


def assert_traffic_flows(bed, denied=None):
    """frontend -> backend (across the nodes) is allowed over mutual TLS 1.3
    with both pods' own identities; |denied|, a served pod of node-1 other
    than frontend (by default other or cache, whichever the API has), is
    refused by backend's policy (pushed by mtls-ca)."""
    frontend, backend = API_PODS["frontend"], API_PODS["backend"]
    since = len(bed.log_lines("node-2"))
    probe = uuid.uuid4().hex
    res = bed.call_pod("frontend", "backend", path=f"/?probe={probe}")
    assert res.returncode == 0, f"frontend -> backend: {res.stderr}"
    assert res.stdout == PAGE.format("backend")
    line = wait_new_log(bed, "node-2", since, direction="inbound", peer_id=frontend.spiffe_id)
    assert (line["decision"], line["reason"], line["tls_version"], line["local_id"]) == \
        ("allow", "ok", "TLSv1.3", backend.spiffe_id), line
    assert probe in bed.app_log("backend")

    denied = denied or next(p for p in ("other", "cache") if p in bed.api_pods)
    caller = API_PODS[denied]
    since = len(bed.log_lines("node-2"))
    probe = uuid.uuid4().hex
    res = bed.call_pod(caller.netns, "backend", path=f"/?probe={probe}")
    assert res.returncode != 0, f"{denied} -> backend went through: {res.stdout}"
    line = wait_new_log(bed, "node-2", since, direction="inbound", peer_id=caller.spiffe_id)
    assert (line["decision"], line["reason"]) == ("deny", "policy_denied"), line
    assert probe not in bed.app_log("backend")


def restart_api_and_wait(bed, mark):
    bed.api.start()  # same ports, the objects and resourceVersion from its state file
    return wait_ca(bed, mark, r"kubernetes: regained the API server after \d+\.\d s: "
                              r"every watch answers again$")


# ---- the tests

def test_the_bed_serves_the_api_pods_with_the_pushed_policies(bed):
    for node in NODES:
        assert_serves_exactly_the_api_pods(bed, observe(bed, node), node)
        assert stream_state(bed, node) == "streaming"
    assert_traffic_flows(bed)


def test_an_api_server_restart_with_the_same_objects_changes_nothing_for_the_agents(bed):
    before = observe_all(bed)
    mark = len(bed.ca_log())
    bed.api.kill()
    lost = wait_ca(bed, mark, r"kubernetes: lost the API server \(")
    assert "keeping the cluster state as last seen (3 workloads)" in lost, lost

    # While the API is down: traffic, certificates, policy and /ready as before.
    assert_traffic_flows(bed)
    assert observe_all(bed) == before

    restart_api_and_wait(bed, mark)
    assert_traffic_flows(bed)
    # The watches resumed from their versions: nothing was relisted, no
    # event came, no snapshot was rebuilt, and the agents saw nothing at all.
    assert not ca_lines(bed, mark, r"relisting |in force \(kubernetes changes"), \
        bed.ca_log()[mark:]
    assert observe_all(bed) == before
    assert len(ca_lines(bed, mark, "kubernetes: lost the API server")) == 1
    assert len(ca_lines(bed, mark, "kubernetes: regained the API server")) == 1


def test_pods_that_changed_while_the_api_server_was_down_arrive_and_nothing_else_moves(bed):
    # From: frontend and other on node-1, backend on node-2.
    before = observe_all(bed)
    frontend_serial = serial_of(before["node-1"], API_PODS["frontend"].spiffe_id)
    backend_serial = serial_of(before["node-2"], API_PODS["backend"].spiffe_id)
    mark = len(bed.ca_log())
    agent_mark = len(bed.agent_stderr("node-1"))
    bed.api.kill()
    wait_ca(bed, mark, r"kubernetes: lost the API server \(")
    # Another API server (etcd) takes the changes: other is deleted, cache
    # is scheduled on node-1.
    bed.delete_pod("other", offline=True)
    bed.add_pod("cache", offline=True)
    assert_traffic_flows(bed, denied="other")  # still served: nobody could know
    assert observe_all(bed) == before

    restart_api_and_wait(bed, mark)
    # The new server's history starts after the changes: the old watch
    # versions are too old, so mtls-ca lists again and diffs.
    wait_ca(bed, mark, r"kubernetes: relisting pods: ERROR event 410: too old resource version")
    after1, after2 = wait_serving(bed, "node-1"), wait_serving(bed, "node-2")
    assert_serves_exactly_the_api_pods(bed, after1, "node-1")
    assert_serves_exactly_the_api_pods(bed, after2, "node-2")

    # Nothing else moved: frontend and backend keep their certificates, the
    # only certificate issued is cache's, and each agent got one snapshot.
    assert serial_of(after1, API_PODS["frontend"].spiffe_id) == frontend_serial
    assert serial_of(after2, API_PODS["backend"].spiffe_id) == backend_serial
    assert after1.issued == before["node-1"].issued + 1, (before["node-1"], after1)
    assert after2.issued == before["node-2"].issued
    for node, after in (("node-1", after1), ("node-2", after2)):
        assert after.mesh_updates == before[node].mesh_updates + 1, (before[node], after)
        assert after.rejected == before[node].rejected
    log = bed.agent_stderr("node-1")[agent_mark:]
    assert log.count(f"node workload identity {API_PODS['other'].spiffe_id} is gone") == 1, log
    assert log.count(f"new node workload identity {API_PODS['cache'].spiffe_id}") == 1, log
    assert "is gone" not in log.replace(
        f"node workload identity {API_PODS['other'].spiffe_id} is gone", ""), log

    # cache is served with its own pushed policy (frontend only), in-process.
    since = len(bed.log_lines("node-1"))
    res = bed.call_pod("frontend", "cache")
    assert res.returncode == 0 and res.stdout == PAGE.format("cache"), res.stderr
    line = wait_new_log(bed, "node-1", since, direction="outbound",
                        peer_id=API_PODS["cache"].spiffe_id)
    assert (line["decision"], line["reason"]) == ("allow", "ok"), line
    assert_traffic_flows(bed)  # cache is now the one backend refuses


def toggle_other(bed, offline=False):
    """Deletes the other pod if the API has it, else adds it; returns
    whether it is there now."""
    if "other" in bed.api_pods:
        bed.delete_pod("other", offline=offline)
        return False
    bed.add_pod("other", offline=offline)
    return True


def break_watches_around(bed, change):
    """Runs |change| while every watch is silent, then forgets the history
    (compaction) and cuts the watches: mtls-ca can only learn the change by
    listing again."""
    bed.api.admin("/admin/stall", {"on": True})
    change()
    bed.api.admin("/admin/compact")
    bed.api.admin("/admin/drop")
    bed.api.admin("/admin/stall", {"on": False})


@pytest.mark.parametrize("as_http", [False, True], ids=["error-event-410", "http-410"])
def test_a_410_relists_without_a_spurious_push_and_a_change_in_the_gap_arrives(bed, as_http):
    code, _ = bed.api.admin("/admin/gone", {"as_http": as_http})
    assert code == 200
    relisted = r"kubernetes: relisting pods: " + (
        r"HTTP 410 Gone$" if as_http else r"ERROR event 410: too old resource version")
    before = observe_all(bed)

    # 1. A 410 when nothing an agent sees has changed (a label on backend's
    # pod moved the version on while the watches were broken).
    mark = len(bed.ca_log())
    labelled = API_PODS["backend"].obj()
    labelled["metadata"]["labels"]["rollout"] = uuid.uuid4().hex[:8]
    break_watches_around(bed, lambda: bed.api.apply("modify", "pods", labelled))
    wait_ca(bed, mark, relisted)
    wait_ca(bed, mark, r"kubernetes: synced pods rv=")
    # mtls-ca rebuilt its view from the relist, and sent it to nobody.
    round_line = wait_ca(bed, mark, r"in force \(kubernetes changes;")
    assert round_line.endswith("sent to 0 of 2 streams (0 as deltas, 0 bytes)"), round_line
    assert observe_all(bed) == before
    assert_traffic_flows(bed)

    # 2. A change hidden in the compaction gap: other comes or goes.
    mark = len(bed.ca_log())
    present = None

    def change():
        nonlocal present
        present = toggle_other(bed)
    break_watches_around(bed, change)
    wait_ca(bed, mark, relisted)
    after1, after2 = wait_serving(bed, "node-1"), wait_serving(bed, "node-2")
    other = API_PODS["other"].spiffe_id
    assert any(sid == other for _, sid, _ in after1.workloads) == present
    for node, after in (("node-1", after1), ("node-2", after2)):
        # Exactly one snapshot since |before|: step 1 sent none.
        assert after.mesh_updates == before[node].mesh_updates + 1, (before[node], after)
        for _, sid, serial in before[node].workloads:
            if sid != other:
                assert serial_of(after, sid) == serial, (sid, before[node], after)
    assert after1.issued == before["node-1"].issued + (1 if present else 0)
    assert after2.issued == before["node-2"].issued
    assert_traffic_flows(bed)


def test_agents_keep_serving_while_mtls_ca_is_down_and_follow_it_when_it_returns(bed):
    before = observe_all(bed)
    marks = {node: len(bed.agent_stderr(node)) for node in NODES}
    ca_mark = len(bed.ca_log())
    bed.kill_mtls_ca()

    # The agents notice and retry (log lines, the stream-state gauge)...
    ended = "control plane: mesh config stream ended"
    for node in NODES:
        podbed.wait_until(lambda: bed.agent_stderr(node)[marks[node]:].count(ended) >= 2,
                          f"{node}'s Watch to fail and fail again on retry", bed.wait)
        podbed.wait_until(lambda: stream_state(bed, node) == "retrying",
                          f"{node}'s stream state to say retrying", bed.wait)
        assert "keeping the last good config" in bed.agent_stderr(node)[marks[node]:]
    # ...and keep serving: same certificates, same policy (denials still
    # deny), still ready (README, "Operating mtlsd": ready while every
    # certificate is valid, whether or not the control plane answers).
    assert_traffic_flows(bed)
    assert observe_all(bed) == before

    bed.spawn_mtls_ca()
    bed.wait_ca_synced(since=ca_mark)
    for node in NODES:
        podbed.wait_until(lambda: stream_state(bed, node) == "streaming",
                          f"{node}'s Watch to be back", bed.wait)
        # It told the new mtls-ca what it had.
        wait_ca(bed, ca_mark, rf'watch opened by \S+ from \S+ \(node "{node}", last version '
                              rf'"{re.escape(before[node].versions[0])}", takes deltas\)')
    after = observe_all(bed)
    for node in NODES:
        # The new server numbers its versions afresh; the content (the
        # digest after the dash) is the same, and so is everything served.
        podbed.wait_until(lambda: observe(bed, node).mesh_updates > before[node].mesh_updates,
                          f"{node} to get the new server's first snapshot", bed.wait)
        after[node] = observe(bed, node)
        assert after[node].without_versions() == before[node].without_versions(), \
            (before[node], after[node])
        assert [v.split("-", 1)[1] for v in after[node].versions] == \
            [v.split("-", 1)[1] for v in before[node].versions]
    assert_traffic_flows(bed)

    # A change made after the return reaches the agents: a new pod on node-1.
    bed.add_pod("late")
    wait_serving(bed, "node-1")
    res = bed.call_pod("frontend", "late")
    assert res.returncode == 0 and res.stdout == PAGE.format("impostor"), res.stderr
    assert serial_of(observe(bed, "node-1"), API_PODS["frontend"].spiffe_id) == \
        serial_of(before["node-1"], API_PODS["frontend"].spiffe_id)


def test_mtls_ca_restarted_while_the_api_server_is_down_holds_back_until_it_has_listed(bed):
    # A control-plane node reboots: the API server and mtls-ca both go, and
    # mtls-ca comes back first. It must not push (or refuse) anything from
    # an empty cluster state; the agents keep everything meanwhile.
    before = observe_all(bed)
    mark = len(bed.ca_log())
    bed.api.kill()
    wait_ca(bed, mark, r"kubernetes: lost the API server \(")
    bed.kill_mtls_ca()
    mark = len(bed.ca_log())
    bed.spawn_mtls_ca()
    wait_ca(bed, mark, r"kubernetes: lost the API server \(.*\) before listing everything; "
                       r"nothing is decided from the cluster until it answers$")
    for node in NODES:
        # The agent is back on the Watch, which says nothing yet.
        wait_ca(bed, mark, rf'watch opened by \S+ from \S+ \(node "{node}", last version '
                           rf'"{re.escape(before[node].versions[0])}", takes deltas\)')
        podbed.wait_until(lambda: stream_state(bed, node) == "connecting",
                          f"{node}'s Watch to be open and waiting", bed.wait)
    assert not ca_lines(bed, mark, r"in force \(|cluster state synced")
    assert_traffic_flows(bed)
    assert observe_all(bed) == before

    bed.api.start()
    bed.wait_ca_synced(since=mark)
    wait_ca(bed, mark, r"kubernetes: regained the API server after")
    for node in NODES:
        podbed.wait_until(lambda: stream_state(bed, node) == "streaming",
                          f"{node}'s Watch to deliver again", bed.wait)
        after = podbed.wait_until(
            lambda: (lambda v: v if v.mesh_updates > before[node].mesh_updates else None)(
                observe(bed, node)), f"{node} to get the new server's first snapshot", bed.wait)
        assert after.without_versions() == before[node].without_versions(), (before[node], after)
        assert [v.split("-", 1)[1] for v in after.versions] == \
            [v.split("-", 1)[1] for v in before[node].versions]
    assert_traffic_flows(bed)


def test_agents_mtls_ca_and_the_api_stop_cleanly(bed):
    assert bed.assert_agents_stopped_cleanly() == set(NODES)
    status, killed = bed.procs.stop(bed.ca_proc)
    assert (status, killed) == (0, False), bed.ca_log()[-3000:]
    podbed.assert_no_sanitizer_report(bed.ca_log(), "mtls-ca")

