"""A simulated Kubernetes node (issue 4 test bed): pods are network
namespaces on a Linux bridge (see podbed.py), each with an unmodified plain
application, an mtlsd agent running as UID 1337 with certificates from
mtls-ca (running in its own "ca" pod), and the redirection the agent
installs itself with `mtlsd init-iptables --apply`.

The bed is built once for the module (needs root, `ip netns add` and
iptables; skipped with the reason otherwise) and torn down by PID and
`ip netns delete`. The tests run in file order: the last two remove the
rules and stop the agents.
"""
import uuid

import pytest

import podbed
from podbed import APP_PORT, pod_ip, sa_id

BACKEND = pod_ip("backend")
BACKEND_URL = f"http://{BACKEND}:{APP_PORT}/"


@pytest.fixture(scope="module")
def mtls_ca_bin():
    return podbed.require_mtls_ca_bin()


@pytest.fixture(scope="module")
def bed(request, module_procs):
    why = podbed.unavailable()  # first: without root, skip rather than look for binaries
    if why:
        pytest.skip(why)
    node = podbed.PodBed(module_procs, request.getfixturevalue("mtlsd_bin"),
                         request.getfixturevalue("mtls_ca_bin"))
    try:
        node.start()
        yield node
    finally:
        node.close()


def test_frontend_reaches_backend_through_both_agents(bed):
    res = bed.curl("frontend", BACKEND_URL)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello from the backend pod\n"

    inbound = bed.wait_log("backend", direction="inbound", peer_id=sa_id("frontend"))
    assert (inbound["decision"], inbound["reason"]) == ("allow", "ok"), inbound
    assert inbound["rule"] == "frontend-may-call-backend", inbound
    assert inbound["destination"].endswith(f":{APP_PORT}"), inbound
    assert inbound["source"].startswith(pod_ip("frontend") + ":"), inbound
    assert inbound["local_id"] == sa_id("backend"), inbound

    outbound = bed.wait_log("frontend", direction="outbound", peer_id=sa_id("backend"))
    assert (outbound["decision"], outbound["reason"]) == ("allow", "ok"), outbound
    assert outbound["destination"] == f"{BACKEND}:{APP_PORT}", outbound
    assert outbound["local_id"] == sa_id("frontend"), outbound


def test_other_is_denied_by_backend_policy(bed):
    res = bed.curl("other", BACKEND_URL)
    assert res.returncode != 0, f"the call went through: {res.stdout!r}"
    assert "hello from the backend pod" not in res.stdout

    denied = bed.wait_log("backend", direction="inbound", peer_id=sa_id("other"))
    assert (denied["decision"], denied["reason"]) == ("deny", "policy_denied"), denied
    assert denied["rule"] == "no-allow-rule-matched", denied
    assert denied["source"].startswith(pod_ip("other") + ":"), denied
    # the caller's agent learns why (TLS access_denied alert); only the reason
    # is asserted, as in test_outbound.py (its "decision" field is the
    # caller's own verdict on the server, which was fine)
    caller = bed.wait_log("other", direction="outbound", destination=f"{BACKEND}:{APP_PORT}")
    assert caller["reason"] == "peer_denied", caller
    assert caller["peer_id"] == sa_id("backend"), caller


def test_bytes_between_pods_are_tls_while_the_app_sees_plaintext(bed):
    marker = f"PLAINTEXT-MARKER-{uuid.uuid4()}"
    wire = bed.capture("node", bed.veth("backend"))   # the backend pod's cable
    local = bed.capture("backend", "lo")               # agent -> app hop (the control)
    try:
        res = bed.curl("frontend", BACKEND_URL, "-H", f"X-Marker: {marker}")
    finally:
        wire_frames = bed.stop_capture(wire)
        local_frames = bed.stop_capture(local)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello from the backend pod\n"

    # control: the capture sees the plaintext where it does exist
    assert any(marker.encode() in f for f in local_frames), \
        f"control failed: marker not seen on the backend pod's lo ({len(local_frames)} frames)"

    podbed.assert_tls_only(wire_frames, BACKEND, APP_PORT, marker, "on the wire")


def test_plaintext_from_outside_the_mesh_is_refused_on_a_strict_port(bed):
    marker = f"PLAINTEXT-MARKER-{uuid.uuid4()}"
    res = bed.curl("node", BACKEND_URL, "-H", f"X-Marker: {marker}")
    assert res.returncode != 0, f"plaintext reached the app: {res.stdout!r}"

    refused = bed.wait_log("backend", direction="inbound", reason="plaintext_on_strict_port")
    assert refused["decision"] == "deny", refused
    assert refused["source"].startswith(podbed.NODE_IP + ":"), refused
    assert refused["destination"].endswith(f":{APP_PORT}"), refused  # the original port
    assert marker not in bed.app_log.read_text(errors="replace")


def test_init_iptables_remove_leaves_no_mtlsd_chain(bed):
    for pod in podbed.AGENT_PODS:
        before, after = bed.remove_rules(pod)
        assert ":MTLSD_OUTPUT" in before and ":MTLSD_INBOUND" in before, before
        assert "MTLSD" not in after, f"{pod}:\n{after}"


def test_agents_stop_cleanly(bed):
    bed.assert_agents_stopped_cleanly()
