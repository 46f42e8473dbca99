"""mtls-ca's NodeInfo/Get against the Kubernetes API stand-in (tests/k8s):
a node agent learns its own node's pod CIDRs, the node being the one its
token names; a workload is refused; a node whose CNI allocates no per-node
CIDR is answered FAILED_PRECONDITION, and the operator is told what to do."""

import sys
from pathlib import Path

import grpc
import pytest

from conftest import RPC_TIMEOUT, TRUST_DOMAIN, mint_token, wait_until
from test_mtls_ca import NODE_AGENT_ID, NODE_AGENT_SUB, node_agent_token
from test_mtls_ca_kubernetes import api, kubernetes_config  # noqa: F401 (fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "k8s"))
import fixtures as fx  # noqa: E402

GET = "/mtlsd.node.v1.NodeInfo/Get"


@pytest.fixture
def node_ca(start_ca, api, tmp_path):  # noqa: F811
    for node in (fx.NODE_1, fx.NODE_2, fx.NODE_3, fx.NODE_OLD):
        api.apply("add", "nodes", node)
    ca = start_ca(extra_config=kubernetes_config(api, tmp_path))
    wait_until(lambda: "kubernetes: cluster state synced" in ca.stderr(), "the first sync")
    return ca


def node_info(ca, msgs, token, raw=None):
    """One NodeInfo/Get; returns the response message or raises grpc.RpcError."""
    with ca.channel() as ch:
        if raw is not None:
            return ch.unary_unary(GET)(raw, timeout=RPC_TIMEOUT,
                                       metadata=[("authorization", f"Bearer {token}")])
        call = ch.unary_unary(GET, request_serializer=msgs.NodeInfoRequest.SerializeToString,
                              response_deserializer=msgs.NodeInfoResponse.FromString)
        metadata = [("authorization", f"Bearer {token}")] if token is not None else []
        return call(msgs.NodeInfoRequest(), timeout=RPC_TIMEOUT, metadata=metadata)


def refused(ca, msgs, token, **kwargs):
    with pytest.raises(grpc.RpcError) as e:
        node_info(ca, msgs, token, **kwargs)
    return e.value.code(), e.value.details()


def node_info_lines(ca):
    return [l for l in ca.access_lines() if l["method"] == GET]


def test_a_node_agent_gets_its_own_nodes_pod_cidrs(node_ca, msgs, pki):
    resp = node_info(node_ca, msgs, node_agent_token(pki, node="node-1"))
    assert resp.node_name == "node-1"
    assert list(resp.pod_cidrs) == ["10.244.1.0/24"]
    line = wait_until(lambda: node_info_lines(node_ca), "the access-log line")[-1]
    assert (line["status"], line["node"], line["caller"]) == ("OK", "node-1", NODE_AGENT_ID)
    assert "NodeInfo: node node-1 has pod CIDRs 10.244.1.0/24" in node_ca.stderr()


def test_another_nodes_token_gets_its_own_dual_stack_cidrs(node_ca, msgs, pki):
    resp = node_info(node_ca, msgs, node_agent_token(pki, node="node-2"))
    assert resp.node_name == "node-2"
    assert list(resp.pod_cidrs) == ["10.244.2.0/24", "fd00:10:244:2::/64"]
    # An object written before spec.podCIDRs existed: spec.podCIDR.
    resp = node_info(node_ca, msgs, node_agent_token(pki, node="node-old"))
    assert list(resp.pod_cidrs) == ["10.244.9.0/24"]


def test_the_request_cannot_name_another_node(node_ca, msgs, pki):
    # The request has no field for it; extra bytes naming one (an unknown
    # field 1 = "node-2") change nothing: the token decides.
    raw = b"\x0a\x06node-2"
    resp = msgs.NodeInfoResponse.FromString(
        node_info(node_ca, msgs, node_agent_token(pki, node="node-1"), raw=raw))
    assert resp.node_name == "node-1"


def test_a_workload_token_is_refused(node_ca, msgs, pki):
    token = mint_token(pki["token_key"], sub="system:serviceaccount:demo:web", node="node-1")
    code, details = refused(node_ca, msgs, token)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details == (f"caller spiffe://{TRUST_DOMAIN}/ns/demo/sa/web is not a node agent "
                       "(node_agents), so it may not ask for a node's pod CIDRs")
    line = wait_until(lambda: node_info_lines(node_ca), "the access-log line")[-1]
    assert (line["status"], line["reason"]) == ("PERMISSION_DENIED", "not_node_agent")


def test_a_node_agent_token_without_a_node_is_refused(node_ca, msgs, pki):
    token = mint_token(pki["token_key"], sub=NODE_AGENT_SUB)
    code, details = refused(node_ca, msgs, token)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "NodeInfo needs a token bound to a pod on a node" in details


def test_no_token_is_unauthenticated(node_ca, msgs):
    code, _ = refused(node_ca, msgs, None)
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_a_node_without_pod_cidrs_is_a_failed_precondition(node_ca, msgs, pki):
    code, details = refused(node_ca, msgs, node_agent_token(pki, node="node-3"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith("node node-3 has no spec.podCIDRs: the cluster's CNI does not "
                              "allocate per-node pod CIDRs")
    assert "must set interception.node_pod_cidrs by hand" in details


def test_a_node_the_api_does_not_know_is_not_found(node_ca, msgs, pki):
    code, details = refused(node_ca, msgs, node_agent_token(pki, node="node-9"))
    assert code == grpc.StatusCode.NOT_FOUND
    assert details == "the Kubernetes API has no node node-9"


def test_without_get_on_nodes_the_agent_is_told_to_retry_and_why(node_ca, msgs, pki, api):  # noqa: F811
    api.admin("/admin/forbid", {"resources": ["nodes"]})
    code, details = refused(node_ca, msgs, node_agent_token(pki, node="node-2"))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert details == ("cannot read node node-2 from the Kubernetes API: GET /api/v1/nodes/node-2: "
                       "HTTP 403 (mtls-ca's ClusterRole needs \"get\" on nodes); retry")
    api.admin("/admin/forbid", {"resources": []})
    assert list(node_info(node_ca, msgs, node_agent_token(pki, node="node-2")).pod_cidrs)[0] == \
        "10.244.2.0/24"


def test_answers_are_reused_for_a_while(node_ca, msgs, pki, api):  # noqa: F811
    token = node_agent_token(pki, node="node-1")
    node_info(node_ca, msgs, token)
    api.admin("/admin/forbid", {"resources": ["nodes"]})  # the API would refuse now
    assert list(node_info(node_ca, msgs, token).pod_cidrs) == ["10.244.1.0/24"]
    assert "(told " in node_ca.stderr() and ", cached)" in node_ca.stderr()


def test_without_kubernetes_the_method_is_unimplemented(ca, msgs, pki):
    code, _ = refused(ca, msgs, node_agent_token(pki, node="node-1"))
    assert code == grpc.StatusCode.UNIMPLEMENTED
