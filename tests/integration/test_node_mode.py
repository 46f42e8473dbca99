"""Node mode on two simulated nodes (nodebed.py): one mtlsd per node serves
every pod of its node with that pod's own certificate, asked for from
mtls-ca on the pod's behalf, which the CA grants only for pods registered on
the caller's node.

The bed is built once for the module (needs root, `ip netns add`, iptables
and IP forwarding in a namespace; skipped with the reason otherwise) and
torn down by PID and `ip netns delete`. The tests run in file order: the
last two remove the rules and stop the agents.
"""
import json
import os
import re
import signal
import threading
import uuid

import pytest

import nodebed
import podbed
from nodebed import (APP_PORT, CACHE_PORT, NODE_AGENT_ID, NODE_LINK_IFACE, NODES, PODS, from_pod,
                     probe_path)

FRONTEND, OTHER, CACHE = PODS["frontend"], PODS["other"], PODS["cache"]
BACKEND, IMPOSTOR = PODS["backend"], PODS["impostor"]
PAGE = "hello from the {} pod\n"


@pytest.fixture(scope="module")
def mtls_ca_bin():
    return podbed.require_mtls_ca_bin()


@pytest.fixture(scope="module")
def bed(request, module_procs):
    yield from nodebed.module_bed(nodebed.NodeBed, request, module_procs)


# ---- across nodes: policy of the destination pod


def test_frontend_on_node_1_reaches_backend_on_node_2(bed):
    res = bed.call("frontend", "backend")
    assert res.returncode == 0, res.stderr
    assert res.stdout == PAGE.format("backend")

    inbound = bed.wait_log("node-2", direction="inbound", peer_id=FRONTEND.spiffe_id)
    assert (inbound["decision"], inbound["reason"]) == ("allow", "ok"), inbound
    assert inbound["rule"] == "frontend-may-call-backend", inbound
    assert inbound["destination"] == f"{BACKEND.ip}:{APP_PORT}", inbound

    outbound = bed.wait_log("node-1", direction="outbound", source=from_pod(FRONTEND),
                            destination=f"{BACKEND.ip}:{APP_PORT}")
    assert (outbound["decision"], outbound["reason"]) == ("allow", "ok"), outbound


def test_other_on_node_1_is_denied_by_backend_policy(bed):
    path = probe_path()
    res = bed.call("other", "backend", path=path)
    assert res.returncode != 0, f"the call went through: {res.stdout!r}"
    assert PAGE.format("backend") not in res.stdout

    denied = bed.wait_log("node-2", direction="inbound", peer_id=OTHER.spiffe_id)
    assert (denied["decision"], denied["reason"]) == ("deny", "policy_denied"), denied
    assert denied["rule"] == "no-allow-rule-matched", denied
    assert denied["local_id"] == BACKEND.spiffe_id, denied

    caller = bed.wait_log("node-1", direction="outbound", source=from_pod(OTHER),
                          destination=f"{BACKEND.ip}:{APP_PORT}")
    assert caller["reason"] == "peer_denied", caller
    assert caller["local_id"] == OTHER.spiffe_id, caller
    assert path not in bed.app_log("backend")


def test_each_pod_speaks_with_its_own_certificate(bed):
    res = bed.call("frontend", "backend")
    assert res.returncode == 0, res.stderr

    inbound = bed.wait_log("node-2", direction="inbound", peer_id=FRONTEND.spiffe_id)
    assert inbound["local_id"] == BACKEND.spiffe_id, inbound
    outbound = bed.wait_log("node-1", direction="outbound", source=from_pod(FRONTEND),
                            destination=f"{BACKEND.ip}:{APP_PORT}")
    assert outbound["local_id"] == FRONTEND.spiffe_id, outbound
    assert outbound["peer_id"] == BACKEND.spiffe_id, outbound
    # not the node agent's own identity, on either side
    assert NODE_AGENT_ID not in (inbound["local_id"], inbound["peer_id"],
                                 outbound["local_id"], outbound["peer_id"])


def test_bytes_between_nodes_are_tls_while_the_pod_veth_sees_plaintext(bed):
    marker = f"PLAINTEXT-MARKER-{uuid.uuid4()}"
    wire = bed.capture("node-1", NODE_LINK_IFACE["node-1"])  # the cable between the nodes
    pod_cable = bed.capture("node-1", bed.veth("frontend"))  # frontend -> node-1 (the control)
    try:
        res = bed.call("frontend", "backend", "-H", f"X-Marker: {marker}")
    finally:
        wire_frames = bed.stop_capture(wire)
        pod_frames = bed.stop_capture(pod_cable)
    assert res.returncode == 0, res.stderr
    assert res.stdout == PAGE.format("backend")

    assert any(marker.encode() in f for f in pod_frames), \
        f"control failed: marker not seen on frontend's veth ({len(pod_frames)} frames)"

    podbed.assert_tls_only(wire_frames, BACKEND.ip, APP_PORT, marker, "between the nodes")


# ---- same node: the destination's policy, in-process


def test_same_node_call_is_allowed_by_the_destination_pod_policy(bed):
    res = bed.call("frontend", "cache")
    assert res.returncode == 0, res.stderr
    assert res.stdout == PAGE.format("cache")

    line = bed.wait_log("node-1", direction="outbound", source=from_pod(FRONTEND),
                        destination=f"{CACHE.ip}:{CACHE_PORT}")
    assert (line["decision"], line["reason"]) == ("allow", "ok"), line
    assert line["rule"] == "frontend-may-call-cache", line
    assert line["detail"] == f"node-local delivery from {FRONTEND.spiffe_id}", line
    assert line["peer_id"] == CACHE.spiffe_id, line


def test_same_node_call_is_denied_by_the_destination_pod_policy(bed):
    path = probe_path()
    res = bed.call("other", "cache", path=path)
    assert res.returncode != 0, f"the call went through: {res.stdout!r}"

    line = bed.wait_log("node-1", direction="outbound", source=from_pod(OTHER),
                        destination=f"{CACHE.ip}:{CACHE_PORT}")
    assert (line["decision"], line["reason"]) == ("deny", "policy_denied"), line
    assert line["rule"] == "no-allow-rule-matched", line
    assert line["detail"] == "no ALLOW rule matched for this port", line
    assert path not in bed.app_log("cache")


# ---- the CA scopes a node agent to its own node's workloads


def test_ca_refuses_node_1_an_identity_registered_on_node_2(bed):
    def refusal():
        return next((l for l in bed.ca_access_lines()
                     if l.get("caller") == NODE_AGENT_ID and l.get("node") == "node-1"
                     and l.get("impersonated") == BACKEND.spiffe_id), None)
    line = podbed.wait_until(refusal, "mtls-ca's line for node-1 asking for backend", bed.wait)
    assert (line["status"], line["reason"]) == ("PERMISSION_DENIED", "not_on_node"), line
    assert line["identity"] == "", line

    issued_to_node_1 = {l["identity"] for l in bed.ca_access_lines()
                        if l.get("node") == "node-1" and l.get("status") == "OK"}
    assert BACKEND.spiffe_id not in issued_to_node_1, issued_to_node_1
    assert {p.spiffe_id for p in nodebed.pods_on("node-1") if p.registered} <= issued_to_node_1
    assert f"identity ready: {BACKEND.spiffe_id}" not in bed.agent_stderr("node-1")


def test_node_without_every_certificate_is_not_ready_and_says_why(bed):
    status, body = bed.admin("node-1", "/ready")
    assert status == 503, body
    logged = any("certificate request failed: PERMISSION_DENIED" in line
                 and BACKEND.spiffe_id in line
                 for line in bed.agent_stderr("node-1").splitlines())
    assert BACKEND.spiffe_id in body or logged, \
        f"neither /ready ({body!r}) nor the log names {BACKEND.spiffe_id}"
    _, metrics = bed.admin("node-1", "/metrics")
    assert "\nmtlsd_ready 0\n" in "\n" + metrics, metrics


def test_node_with_every_certificate_is_ready(bed):
    status, body = bed.admin("node-2", "/ready")
    assert status == 200, body
    _, metrics = bed.admin("node-2", "/metrics")
    assert "\nmtlsd_ready 1\n" in "\n" + metrics, metrics


def test_pod_without_a_certificate_cannot_call_out(bed):
    path = probe_path()
    res = bed.call("impostor", "backend", path=path)
    assert res.returncode != 0, f"the call went through: {res.stdout!r}"
    line = bed.wait_log("node-1", direction="outbound", source=from_pod(IMPOSTOR))
    assert (line["decision"], line["reason"]) == ("deny", "no_identity"), line
    assert path not in bed.app_log("backend")


def test_pod_without_a_certificate_cannot_be_called_from_its_node(bed):
    path = probe_path()
    res = bed.call("frontend", "impostor", path=path)
    assert res.returncode != 0, f"the call went through: {res.stdout!r}"
    line = bed.wait_log("node-1", direction="outbound", source=from_pod(FRONTEND),
                        destination=f"{IMPOSTOR.ip}:{APP_PORT}")
    assert (line["decision"], line["reason"]) == ("deny", "no_identity"), line
    assert path not in bed.app_log("impostor")


def test_pod_without_a_certificate_cannot_be_called_from_another_node(bed):
    path = probe_path()
    res = bed.call("backend", "impostor", path=path)
    assert res.returncode != 0, f"the call went through: {res.stdout!r}"
    line = bed.wait_log("node-1", direction="inbound", reason="no_identity")
    assert line["decision"] == "deny", line
    assert line["destination"] == f"{IMPOSTOR.ip}:{APP_PORT}", line
    assert line["source"].startswith(nodebed.NODE_LINK_IP["node-2"] + ":"), line
    assert path not in bed.app_log("impostor")


# ---- interception and teardown


def test_policy_endpoint_explains_per_pod(bed):
    status, body = bed.admin("node-1", "/policy")
    assert status == 200, body
    listing = json.loads(body)
    by_ip = {w["address"]: w for w in listing["workloads"]}
    assert listing["node"] == "node-1"
    assert by_ip[CACHE.ip]["spiffe_id"] == CACHE.spiffe_id
    assert [r["name"] for r in by_ip[CACHE.ip]["rules"]] == ["frontend-may-call-cache"]
    query = f"/policy?workload={CACHE.ip}&port={CACHE_PORT}&peer="
    status, body = bed.admin("node-1", query + OTHER.spiffe_id)
    assert status == 200, body
    assert json.loads(body)["decision"] == "deny", body
    status, body = bed.admin("node-1", query + FRONTEND.spiffe_id)
    verdict = json.loads(body)
    assert (verdict["decision"], verdict["rule"]) == ("allow", "frontend-may-call-cache"), body
    status, body = bed.admin("node-1", f"/policy?port={CACHE_PORT}&peer={FRONTEND.spiffe_id}")
    assert "workload=IP" in json.loads(body)["reason"], body


# ---- pods come and go: node.workloads reloads without a restart


def test_reloaded_workload_list_drops_and_adds_pods(bed):
    # The impostor (never granted) and other leave the node's list.
    bed.write_agent_config("node-1", without=("impostor", "other"))
    status, body = bed.reload("node-1")
    assert status == 200, body
    podbed.wait_until(lambda: bed.admin("node-1", "/ready")[0] == 200,
                      "node-1 ready once every listed pod has a certificate", bed.wait)
    res = bed.call("other", "backend")
    assert res.returncode != 0, f"a pod no longer listed still got out: {res.stdout!r}"
    gone = bed.wait_log("node-1", direction="outbound", source=from_pod(OTHER),
                        reason="no_identity")  # other had no such line before
    assert "not a workload of this node" in gone["detail"], gone
    assert bed.call("frontend", "backend").returncode == 0  # the others keep working

    # other comes back: a fresh certificate is requested for it.
    issued_before = bed.agent_stderr("node-1").count(f"identity ready: {OTHER.spiffe_id} ")
    bed.write_agent_config("node-1", without=("impostor",))
    status, body = bed.reload("node-1")
    assert status == 200, body
    podbed.wait_until(
        lambda: bed.agent_stderr("node-1").count(f"identity ready: {OTHER.spiffe_id} ")
        > issued_before, "a new certificate for other", bed.wait)
    def denials():
        return [l for l in bed.log_lines("node-1")
                if l["direction"] == "outbound" and from_pod(OTHER)(l["source"])
                and l["reason"] == "policy_denied" and l["peer_id"] == CACHE.spiffe_id]
    before = len(denials())
    res = bed.call("other", "cache")  # other is known again: judged by cache's policy
    assert res.returncode != 0
    podbed.wait_until(lambda: len(denials()) > before, "other denied by cache's policy again",
                      bed.wait)

    bed.write_agent_config("node-1")  # as the bed started
    assert bed.reload("node-1")[0] == 200


def test_a_new_pod_calling_before_its_certificate_arrives_is_held_not_reset(bed):
    """A pod that has just joined the node calls out at once, while its
    certificate is still being issued (mtls-ca is paused with SIGSTOP, so
    the order is certain): the call waits and goes through once the
    certificate arrives."""
    bed.write_agent_config("node-1", without=("impostor", "frontend"))
    assert bed.reload("node-1")[0] == 200
    podbed.wait_until(lambda: FRONTEND.spiffe_id not in bed.admin("node-1", "/certs")[1],
                      "node-1 to drop frontend's certificate", bed.wait)

    def awaiting_outbound():
        _, metrics = bed.admin("node-1", "/metrics")
        found = re.search(r'^mtlsd_connections_awaiting_identity\{direction="outbound"\} (\d+)$',
                          metrics, re.M)
        return found and int(found.group(1)) >= 1

    path = probe_path()
    outcome = {}
    os.kill(bed.ca_proc.pid, signal.SIGSTOP)
    try:
        bed.write_agent_config("node-1", without=("impostor",))  # frontend is back, no cert yet
        assert bed.reload("node-1")[0] == 200
        caller = threading.Thread(
            target=lambda: outcome.update(res=bed.call("frontend", "backend", path=path)))
        caller.start()
        podbed.wait_until(awaiting_outbound, "node-1 to hold the new pod's call", bed.wait)
    finally:
        os.kill(bed.ca_proc.pid, signal.SIGCONT)
    caller.join(timeout=bed.wait)
    assert not caller.is_alive(), "the held call never ended"
    assert outcome["res"].returncode == 0, outcome["res"].stderr
    assert outcome["res"].stdout == PAGE.format("backend")
    line = bed.wait_log("node-1", direction="outbound", source=from_pod(FRONTEND),
                        destination=f"{BACKEND.ip}:{APP_PORT}", held_ms=lambda v: v and v > 0)
    assert (line["decision"], line["reason"]) == ("allow", "ok"), line
    assert path in bed.app_log("backend")

    bed.write_agent_config("node-1")  # as the bed started
    assert bed.reload("node-1")[0] == 200
    bed.wait_agent_ready("node-1")


def test_node_rules_capture_pod_traffic_only(bed):
    for node in NODES:
        rules = bed.run(node, "iptables-save", "-t", "nat").stdout
        assert "-A PREROUTING -p tcp -j MTLSD_INBOUND" in rules, f"{node}:\n{rules}"
        assert nodebed.pod_cidr(node) in rules, f"{node}:\n{rules}"
        assert not [l for l in rules.splitlines() if l.startswith("-A OUTPUT")], \
            f"{node}: the node's own traffic is captured:\n{rules}"


def test_init_iptables_remove_leaves_no_mtlsd_chain(bed):
    for node in NODES:
        before, after = bed.remove_rules(node)
        assert ":MTLSD_INBOUND" in before, f"{node}:\n{before}"
        assert "MTLSD" not in after, f"{node}:\n{after}"


def test_agents_stop_cleanly(bed):
    assert bed.assert_agents_stopped_cleanly() == set(NODES)
