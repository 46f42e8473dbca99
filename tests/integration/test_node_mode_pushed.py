"""Node mode with the pod list pushed by the control plane: the node agents'
configs have no node.workloads at all. mtls-ca's workload registry says
which pod runs on which node, and each node agent learns its own pods from
its Watch snapshot (MeshSnapshot.node_workloads, scoped by the node named in
its token): a pod that joins gets its certificate and is served without a
restart or a config change, a pod that leaves loses its certificate at once.

Same two-node bed as test_node_mode.py (nodebed.py; needs root), with the
mesh config coming from mtls-ca's mesh file (trust bundle only: allow by
default), so the calls below test who is served, not policy.
"""
import json

import pytest

import nodebed
import podbed
from nodebed import NODES, PODS, pods_on

FRONTEND, OTHER, BACKEND = PODS["frontend"], PODS["other"], PODS["backend"]
PAGE = "hello from the {} pod\n"


class PushedNodeBed(nodebed.WatchingNodeBed):
    """Agents that watch mtls-ca, fed by its workloads file."""

    def start_control_plane(self):
        self.make_pki()
        for node in NODES:
            self.mint_token(node, *nodebed.NODE_AGENT_SA, node=node)
        self.write_registry(exclude=())
        mesh = self.ca_dir / "mesh.yaml"
        mesh.write_text(json.dumps({"trust_bundles": [
            {"trust_domain": nodebed.TRUST_DOMAIN, "roots_files": [str(self.pki / "root.pem")]}]}))
        self.start_mtls_ca("ca", nodebed.CA_IP, {
            "node_agents": [nodebed.NODE_AGENT_ID],
            "workloads_file": str(self.ca_dir / "workloads.yaml"),
            "mesh_file": str(mesh),
            "mesh_poll_ms": 100})

    def write_registry(self, exclude):
        """The CA's registry: every registered pod except |exclude| (names)."""
        workloads = [{"node": p.node, "spiffe_id": p.spiffe_id, "address": p.ip}
                     for p in PODS.values() if p.registered and p.name not in exclude]
        podbed.write_json(self.ca_dir / "workloads.yaml", {"workloads": workloads})


@pytest.fixture(scope="module")
def mtls_ca_bin():
    return podbed.require_mtls_ca_bin()


@pytest.fixture(scope="module")
def bed(request, module_procs):
    why = podbed.unavailable(bridge=False)
    if why:
        pytest.skip(why)
    nodes = PushedNodeBed(module_procs, request.getfixturevalue("mtlsd_bin"),
                          request.getfixturevalue("mtls_ca_bin"))
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.close()


def serves(bed, node, pod):
    """Whether |node|'s agent serves a certificate for |pod| now (/certs)."""
    status, body = bed.admin(node, "/certs")
    assert status == 200, body
    return pod.spiffe_id in body


def test_each_node_serves_the_pods_the_control_plane_lists_for_it(bed):
    # NodeBed.start waited for every registered pod's certificate on its node.
    for node in NODES:
        for pod in pods_on(node):
            if serves(bed, node, pod) != pod.registered:
                pytest.fail(f"{node} serves {pod.name}: {not pod.registered}; its log:\n"
                            + bed.agent_stderr(node)[-4000:])
    # The impostor claims backend's identity on node-1 in test_node_mode.py;
    # here node-1 never even asks for it: the control plane did not list it.
    assert f"new node workload identity {FRONTEND.spiffe_id}" in bed.agent_stderr("node-1")
    assert f"new node workload identity {BACKEND.spiffe_id}" not in bed.agent_stderr("node-1")
    assert "workloads on this node" in bed.agent_stderr("node-1")
    assert "node workloads now come from the control plane" in bed.agent_stderr("node-1")
    res = bed.call("frontend", "backend")
    assert res.returncode == 0, res.stderr
    assert res.stdout == PAGE.format("backend")
    inbound = bed.wait_log("node-2", direction="inbound", peer_id=FRONTEND.spiffe_id)
    assert (inbound["decision"], inbound["reason"]) == ("allow", "ok"), inbound


def test_a_pod_that_leaves_loses_its_certificate_and_one_that_joins_is_served(bed):
    bed.write_registry(exclude=("other",))
    podbed.wait_until(lambda: not serves(bed, "node-1", OTHER),
                      "node-1 to drop other's certificate", bed.wait)
    assert f"node workload identity {OTHER.spiffe_id} is gone" in bed.agent_stderr("node-1")
    assert serves(bed, "node-1", FRONTEND)
    assert bed.call("frontend", "backend").returncode == 0  # the others keep working

    issued_before = bed.agent_stderr("node-1").count(f"identity ready: {OTHER.spiffe_id} ")
    bed.write_registry(exclude=())
    podbed.wait_until(
        lambda: bed.agent_stderr("node-1").count(f"identity ready: {OTHER.spiffe_id} ")
        > issued_before, "a new certificate for other", bed.wait)
    res = bed.call("other", "backend")
    assert res.returncode == 0, res.stderr
    line = bed.wait_log("node-2", direction="inbound", peer_id=OTHER.spiffe_id)
    assert (line["decision"], line["reason"]) == ("allow", "ok"), line
    # node-2's agent was not told anything about node-1's pods.
    assert not serves(bed, "node-2", OTHER)
    assert f"identity ready: {OTHER.spiffe_id}" not in bed.agent_stderr("node-2")


def test_agents_stop_cleanly(bed):
    assert bed.assert_agents_stopped_cleanly() == set(NODES)
