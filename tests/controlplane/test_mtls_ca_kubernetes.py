"""mtls-ca with the `kubernetes:` source: a node agent gets a certificate
for a workload only while the Kubernetes API (the stand-in of tests/k8s,
over verified HTTPS with a bearer token) says a Running pod of that
identity is scheduled on the agent's node."""

import sys
from pathlib import Path

import grpc
import pytest

from conftest import TRUST_DOMAIN, wait_until
from test_mtls_ca import (IMPERSONATE, NODE_AGENT_ID, create, leaf_of, node_agent_token, refused,
                          run_ca, uri_sans)

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


def kubernetes_config(api, tmp_path):
    token = tmp_path / "k8s-token"
    token.write_text(api.token)
    return (f"node_agents: [{NODE_AGENT_ID}]\n"
            "kubernetes:\n"
            f"  server: {api.server}\n"
            f"  token_file: {token}\n"
            f"  ca_file: {api.ca_file}\n"
            "  watch_timeout_s: 5\n")


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
