"""Node mode without a pod CIDR in the config: `mtlsd init-iptables --apply`
with `interception.node_pod_cidrs: from_control_plane` asks mtls-ca
(NodeInfo/Get), which reads the node's spec.podCIDRs from the Kubernetes
API (the stand-in of tests/k8s), and installs the node layout with the
answer. Everything runs in a network namespace the test creates (the
stand-in, mtls-ca and the rules), so the host's tables are never touched.

Fail closed: when mtls-ca does not answer with CIDRs (down past the wait,
a node without podCIDRs), nothing is installed or changed and the exit
status is 1 with the reason."""
import json
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from conftest import (REPO, TRUST_DOMAIN, WAIT, assert_no_sanitizer_report, free_port,
                      spiffe_id, wait_until)
from mtls_ca import MTLS_CA_BIN, MtlsCa, make_pki, mint_token

sys.path.insert(0, str(REPO / "tests" / "k8s"))
import fixtures as fx  # noqa: E402
from standin import StandIn  # noqa: E402

NODE_AGENT_NS, NODE_AGENT_SA = "mtlsd-node", "mtlsd-node"
NODE_AGENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/{NODE_AGENT_NS}/sa/{NODE_AGENT_SA}"
CA_ID = f"spiffe://{TRUST_DOMAIN}/ns/mtls-system/sa/mtls-ca"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("node-cidrs-pki"))


def in_ns(ns, *args, check=True):
    res = subprocess.run(["ip", "netns", "exec", ns] + [str(a) for a in args], capture_output=True,
                         text=True, timeout=WAIT)
    if check:
        assert res.returncode == 0, f"{args}: {res.stderr}"
    return res


def nat_rules(ns, tool="iptables-save"):
    return [l for l in in_ns(ns, tool, "-t", "nat").stdout.splitlines()
            if l and not l.startswith("#")]


def ours(lines):
    return [l for l in lines if "MTLSD" in l]


class Cluster:
    """In namespace |ns|: the API stand-in holding the nodes of fixtures.py,
    and (start_ca) mtls-ca with `kubernetes:` reading it."""

    def __init__(self, procs, ns, pki, workdir):
        self.procs, self.ns, self.pki, self.dir = procs, ns, pki, workdir
        self.ca_port = free_port()
        self.ca = None
        objects = workdir / "objects.json"
        objects.write_text(json.dumps({"nodes": [fx.NODE_1, fx.NODE_2, fx.NODE_3]}))
        self.api = StandIn(workdir / "apiserver", port=free_port(), admin_port=free_port(),
                           argv_prefix=["ip", "netns", "exec", ns], keep_state=False,
                           objects_file=objects).start()

    def start_ca(self):
        token = self.dir / "k8s-token"
        token.write_text(self.api.token)
        self.ca = MtlsCa(self.procs, MTLS_CA_BIN, self.pki, self.dir / "mtls-ca", port=self.ca_port,
                         argv_prefix=["ip", "netns", "exec", self.ns],
                         extra={"node_agents": [NODE_AGENT_ID],
                                "kubernetes": {"server": self.api.server, "token_file": str(token),
                                               "ca_file": str(self.api.ca_file)}})
        wait_until(lambda: "kubernetes: cluster state synced" in self.ca.stderr(),
                   "mtls-ca's first listing of the API")
        return self.ca

    def agent_config(self, node, wait_s=None):
        """The node agent's config as the DaemonSet's: no CIDR in it."""
        token = mint_token(self.pki, self.dir / f"token-{node}", NODE_AGENT_SA,
                           namespace=NODE_AGENT_NS, node=node)
        interception = {"proxy_uid": 1337, "node_pod_cidrs": "from_control_plane",
                        "exclude_outbound_ports": [53]}
        if wait_s is not None:
            interception["node_pod_cidrs_wait_s"] = wait_s
        cfg = {
            "trust_domain": TRUST_DOMAIN,
            "identity": {"spiffe_id": NODE_AGENT_ID},
            "control_plane": {"address": f"127.0.0.1:{self.ca_port}",
                              "root_file": str(self.pki / "root.pem"), "spiffe_id": CA_ID,
                              "token_file": str(token), "retry_initial_ms": 100,
                              "retry_max_ms": 400},
            "node": {"name": node},
            "inbound": {"listeners": [{"address": "0.0.0.0:15006"}]},
            "outbound": {"listeners": [{"address": "0.0.0.0:15001"}]},
            "interception": interception,
        }
        path = self.dir / f"mtlsd-{node}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def init_iptables(self, mtlsd_bin, config, action="--apply", timeout=WAIT):
        res = subprocess.run(["ip", "netns", "exec", self.ns, mtlsd_bin, "init-iptables",
                              "--config", str(config), action],
                             capture_output=True, text=True, timeout=timeout)
        assert_no_sanitizer_report(res.stderr, f"init-iptables {action}")
        return res

    def close(self):
        if self.ca is not None:
            self.ca.stop()
            self.ca.check()
        self.api.stop()


@pytest.fixture
def cluster(procs, netns, pki, tmp_path):
    in_ns(netns, "ip", "link", "set", "lo", "up")
    c = Cluster(procs, netns, pki, tmp_path)
    try:
        yield c
    finally:
        c.close()


def test_apply_installs_the_node_layout_with_the_nodes_own_cidrs(cluster, mtlsd_bin):
    cluster.start_ca()
    res = cluster.init_iptables(mtlsd_bin, cluster.agent_config("node-1"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "node pod CIDRs from the control plane (node node-1): 10.244.1.0/24\n" in res.stdout
    assert "IPv4: interception rules installed (outbound -> :15001, inbound -> :15006)" in res.stdout
    rules = nat_rules(cluster.ns)
    assert "-A MTLSD_INBOUND -s 10.244.1.0/24 -j MTLSD_NODE_OUT" in rules
    assert "-A MTLSD_INBOUND -d 10.244.1.0/24 -j MTLSD_IN_REDIRECT" in rules
    assert rules.index("-A PREROUTING -p tcp -j MTLSD_INBOUND") >= 0
    assert not [l for l in rules if l.startswith("-A OUTPUT") and "MTLSD" in l]
    # mtls-ca read node-1 and no other (the node is the token's).
    assert "NodeInfo: node node-1 has pod CIDRs 10.244.1.0/24" in cluster.ca.stderr()


def test_a_dual_stack_node_gets_rules_for_both_families(cluster, mtlsd_bin):
    if shutil.which("ip6tables-restore") is None:
        pytest.skip("ip6tables-restore is not installed")
    cluster.start_ca()
    res = cluster.init_iptables(mtlsd_bin, cluster.agent_config("node-2"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert ("node pod CIDRs from the control plane (node node-2): 10.244.2.0/24, "
            "fd00:10:244:2::/64\n") in res.stdout
    assert "IPv6: interception rules installed" in res.stdout
    v4, v6 = nat_rules(cluster.ns), nat_rules(cluster.ns, "ip6tables-save")
    assert "-A MTLSD_INBOUND -s 10.244.2.0/24 -j MTLSD_NODE_OUT" in v4
    assert not [l for l in ours(v4) if "fd00" in l]
    assert "-A MTLSD_INBOUND -s fd00:10:244:2::/64 -j MTLSD_NODE_OUT" in v6
    assert "-A MTLSD_INBOUND -d fd00:10:244:2::/64 -j MTLSD_IN_REDIRECT" in v6


def test_print_shows_what_apply_would_install_and_changes_nothing(cluster, mtlsd_bin):
    cluster.start_ca()
    res = cluster.init_iptables(mtlsd_bin, cluster.agent_config("node-1"), "--print")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "# node pod CIDRs from the control plane (node node-1): 10.244.1.0/24"
    assert "-A MTLSD_INBOUND -s 10.244.1.0/24 -j MTLSD_NODE_OUT" in lines
    assert "-I PREROUTING 1 -p tcp -j MTLSD_INBOUND" in lines
    assert not ours(nat_rules(cluster.ns))


def test_a_node_without_pod_cidrs_fails_closed_with_the_reason(cluster, mtlsd_bin):
    cluster.start_ca()
    res = cluster.init_iptables(mtlsd_bin, cluster.agent_config("node-3"))
    assert res.returncode == 1, res.stdout
    assert "FAILED_PRECONDITION: node node-3 has no spec.podCIDRs" in res.stderr
    assert "must set interception.node_pod_cidrs by hand" in res.stderr
    assert "no rules installed or changed" in res.stderr
    assert "retrying" not in res.stderr, "a missing CIDR is not cured by asking again"
    assert not ours(nat_rules(cluster.ns))


def test_with_mtls_ca_down_it_retries_then_fails_with_the_reason(cluster, mtlsd_bin):
    started = time.monotonic()
    res = cluster.init_iptables(mtlsd_bin, cluster.agent_config("node-1", wait_s=2))
    took = time.monotonic() - started
    assert res.returncode == 1, res.stdout
    assert res.stderr.count("asking the control plane for this node's pod CIDRs: UNAVAILABLE") >= 2, \
        res.stderr
    assert "retrying in" in res.stderr
    assert (f"cannot learn this node's pod CIDRs from the control plane: no answer from the "
            f"control plane at 127.0.0.1:{cluster.ca_port} after 2 s") in res.stderr
    assert "no rules installed or changed" in res.stderr
    assert took < WAIT
    assert not ours(nat_rules(cluster.ns))


def test_it_keeps_asking_until_mtls_ca_comes_up(cluster, mtlsd_bin, procs):
    config = cluster.agent_config("node-1", wait_s=int(WAIT) * 2)
    log = cluster.dir / "init.log"
    with open(log, "w") as out:
        proc = procs.spawn(["ip", "netns", "exec", cluster.ns, mtlsd_bin, "init-iptables",
                            "--config", config, "--apply"], stdout=out, stderr=subprocess.STDOUT)
    wait_until(lambda: "retrying in" in log.read_text(), "init-iptables to retry")
    assert proc.poll() is None, log.read_text()
    cluster.start_ca()
    proc.wait(timeout=WAIT)
    text = log.read_text()
    assert proc.returncode == 0, text
    assert_no_sanitizer_report(text, "init-iptables")
    assert "node pod CIDRs from the control plane (node node-1): 10.244.1.0/24" in text
    assert "-A MTLSD_INBOUND -s 10.244.1.0/24 -j MTLSD_NODE_OUT" in nat_rules(cluster.ns)


def test_a_failed_ask_leaves_rules_installed_earlier_as_they_were(cluster, mtlsd_bin):
    cluster.start_ca()
    assert cluster.init_iptables(mtlsd_bin, cluster.agent_config("node-1")).returncode == 0
    before = nat_rules(cluster.ns)
    cluster.ca.stop()
    res = cluster.init_iptables(mtlsd_bin, cluster.agent_config("node-1", wait_s=1))
    assert res.returncode == 1
    assert nat_rules(cluster.ns) == before
