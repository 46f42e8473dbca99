"""Destinations on demand (issue 10): node agents hold only the
destinations their pods dial, so what each receives follows its own pods,
not the cluster.

The bed and the first tests are test_node_mode_service.py's, run again
with `control_plane.destinations: on_demand`: every call there must work
the same when the agent starts with no destination at all and asks
mtls-ca (MeshConfig/Want) for each address as a pod first dials it. The
tests after them look at what on demand changes: what each agent holds,
an address mtls-ca does not know, an asked-for Service whose endpoints
change (pushed to the agent that asked, and to no other), and what the
agents were sent.

Needs what test_node_mode_service.py needs; skipped the same way.
"""
import os
import re
import signal

import pytest

import nodebed
import test_node_mode_service as svc
from nodebed import NODES, from_pod, probe_path
from test_node_mode_service import (  # noqa: F401  the same calls, on demand
    test_a_caller_the_endpoint_pods_policy_denies_is_refused,
    test_a_service_whose_only_endpoint_is_on_the_callers_node_is_reached,
    test_endpoints_on_both_nodes_are_both_used_each_with_its_own_identity,
)

fx = svc.fx
FRONTEND, WEB_1, WEB_2 = svc.FRONTEND, svc.WEB_1, svc.WEB_2
OUTSIDE = "10.96.7.7"  # in the Service range, no Service: mtls-ca has no entry


class OnDemandBed(svc.ServiceNodeBed):
    destinations = "on_demand"


@pytest.fixture(scope="module")
def mtls_ca_bin():
    return svc.podbed.require_mtls_ca_bin()


@pytest.fixture(scope="module")
def bed(request, module_procs):
    yield from nodebed.module_bed(OnDemandBed, request, module_procs)


def mesh_lines(bed, node):
    """The agent's complete "mesh config version ..." lines, in order (a
    line still being written is left for the next look)."""
    text = bed.agent_stderr(node)
    complete = text[:text.rfind("\n") + 1]
    return [l for l in complete.splitlines() if "mesh config version" in l]


def wanted(bed, node):
    """The agent's mtlsd_mesh_destinations_wanted_total."""
    status, body = bed.admin(node, "/metrics")
    assert status == 200, body
    m = re.search(r"^mtlsd_mesh_destinations_wanted_total (\d+)$", body, re.M)
    assert m, body
    return int(m.group(1))


def counts(line):
    """(destinations, Service endpoints) of a "mesh config version" line."""
    m = re.search(r"(\d+) destinations \((\d+) Service endpoints\)", line)
    assert m, line
    return int(m.group(1)), int(m.group(2))


def test_the_agents_started_with_no_destination_and_hold_only_what_their_pods_dialled(bed):
    for node in NODES:
        first = mesh_lines(bed, node)[0]
        assert counts(first) == (0, 0), first
    # node-1's pods dialled cache and web (the earlier tests): two Service
    # addresses with 1 + 2 endpoints, and nothing else of the cluster (its
    # five pod IPs stay out). node-2's pod dialled nothing.
    assert counts(mesh_lines(bed, "node-1")[-1]) == (2, 3), mesh_lines(bed, "node-1")
    assert counts(mesh_lines(bed, "node-2")[-1]) == (0, 0), mesh_lines(bed, "node-2")
    # Each address was asked for once, however many calls went to it.
    assert (wanted(bed, "node-1"), wanted(bed, "node-2")) == (2, 0)
    ca = bed.ca_stderr.read_text(errors="replace")
    assert "destinations on demand" in ca, ca[-2000:]


def test_an_address_the_control_plane_does_not_know_gets_the_unknown_destination_setting(bed):
    before = len(mesh_lines(bed, "node-1"))
    res = bed.curl("frontend", f"http://{OUTSIDE}:{svc.SVC_PORT}{probe_path()}",
                   uid=nodebed.APP_UID)
    assert res.returncode != 0, res.stdout
    line = bed.wait_log("node-1", direction="outbound", source=from_pod(FRONTEND),
                        destination=f"{OUTSIDE}:{svc.SVC_PORT}")
    # Asked, answered "unresolved", then refused by unknown_destination: deny
    # (not left to time out as destination_unresolved).
    assert (line["decision"], line["reason"]) == ("deny", "unknown_destination"), line
    assert line["rule"] == "unknown-destination", line
    assert len(mesh_lines(bed, "node-1")) > before
    assert wanted(bed, "node-1") == 3


def test_a_second_call_to_an_unknown_address_is_answered_from_what_the_agent_holds(bed):
    sent_before = len(mesh_lines(bed, "node-1"))
    res = bed.curl("frontend", f"http://{OUTSIDE}:{svc.SVC_PORT}/again", uid=nodebed.APP_UID)
    assert res.returncode != 0, res.stdout
    lines = [l for l in bed.log_lines("node-1") if l["destination"] == f"{OUTSIDE}:{svc.SVC_PORT}"]
    assert len(lines) == 2 and lines[-1]["reason"] == "unknown_destination", lines
    # Not asked again: the agent knows the control plane has no entry.
    assert wanted(bed, "node-1") == 3
    assert len(mesh_lines(bed, "node-1")) == sent_before


def test_an_endpoint_change_of_an_asked_service_reaches_that_agent_only(bed):
    before = {node: len(mesh_lines(bed, node)) for node in NODES}
    ns = nodebed.WORKLOAD_NAMESPACE
    # web loses web-2: its slice now lists web-1 alone.
    bed.api_apply("modify", "endpointslices", fx.endpointslice(
        ns, "web", "w1", "IPv4", [(WEB_1.name, WEB_1.ip, WEB_1.node, True)],
        [("http", svc.WEB_PORT)]))
    svc.podbed.wait_until(lambda: len(mesh_lines(bed, "node-1")) > before["node-1"] and
                          counts(mesh_lines(bed, "node-1")[-1]) == (2, 2),
                          "node-1's agent to hold web with one endpoint", bed.wait)
    # Every call now goes to web-1.
    for _ in range(6):
        res = bed.call_service("frontend", svc.WEB_SVC)
        assert res.returncode == 0, res.stderr
        assert res.stdout == svc.PAGE.format("web-1")
    # node-2's agent never asked for web: it was sent nothing.
    assert len(mesh_lines(bed, "node-2")) == before["node-2"], mesh_lines(bed, "node-2")


def test_after_an_mtls_ca_restart_the_new_stream_starts_with_every_address_asked(bed):
    """The agent reconnects with wanted_destinations: its first snapshot on
    the new stream already holds what it had, without a Want round trip."""
    before = len(mesh_lines(bed, "node-1"))
    opened = bed.ca_log().count("destinations on demand")
    os.kill(bed.ca_proc.pid, signal.SIGKILL)
    bed.ca_proc.wait(bed.wait)
    bed.spawn_mtls_ca()
    svc.podbed.wait_until(lambda: bed.ca_log().count("destinations on demand") >= opened + 2,
                          "both agents to open a new stream on demand", bed.wait)
    svc.podbed.wait_until(lambda: len(mesh_lines(bed, "node-1")) > before,
                          "node-1's first snapshot on the new stream", bed.wait)
    # web (one endpoint left), cache, and 10.96.7.7 still unresolved: asked
    # for in the WatchRequest, not again.
    assert counts(mesh_lines(bed, "node-1")[before]) == (2, 2), mesh_lines(bed, "node-1")
    assert wanted(bed, "node-1") == 3
    res = bed.curl("frontend", f"http://{OUTSIDE}:{svc.SVC_PORT}/after-restart",
                   uid=nodebed.APP_UID)
    assert res.returncode != 0
    def outside_lines():
        return [l for l in bed.log_lines("node-1")
                if l["destination"] == f"{OUTSIDE}:{svc.SVC_PORT}"]
    svc.podbed.wait_until(lambda: len(outside_lines()) == 3, "the third call's log line",
                          bed.wait)
    assert outside_lines()[-1]["reason"] == "unknown_destination", outside_lines()[-1]
    assert wanted(bed, "node-1") == 3
    res = bed.call_service("frontend", svc.WEB_SVC)
    assert res.returncode == 0 and res.stdout == svc.PAGE.format("web-1"), res.stderr


def test_agents_stop_cleanly(bed):
    assert bed.assert_agents_stopped_cleanly() == set(NODES)
