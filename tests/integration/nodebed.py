"""Two simulated Kubernetes nodes for test_node_mode.py: node mode, one mtlsd
per node serving every pod of that node.

Pods are routed through their node, never bridged (a Linux bridge would
switch pod-to-pod frames past the node's PREROUTING chain unless
br_netfilter is on): like Calico, each pod has a /30 veth link whose other
end, in the node's namespace, is its gateway. The nodes are joined by one
veth pair and route each other's pod CIDR; mtls-ca has its own namespace
behind node-1, outside every pod CIDR, so no rule ever captures its traffic.
Every address is a 10.77.x.x test address that exists only inside the
namespaces created here; no namespace is linked to the host's.

    node-1    to-node-2 10.77.0.1/30, veth-ca 10.77.0.5/30, veth-<pod> 10.77.1.<4k+1>/30
              mtlsd (UID 1337) for 10.77.1.0/24, admin on 127.0.0.1:15000
    node-2    to-node-1 10.77.0.2/30, veth-backend 10.77.2.1/30
              mtlsd (UID 1337) for 10.77.2.0/24, admin on 127.0.0.1:15000
    ca        eth0 10.77.0.6/30      mtls-ca on :15012 (node_agents + workloads_file)
    frontend  eth0 10.77.1.2/30      node-1: curl
    other     eth0 10.77.1.6/30      node-1: curl
    cache     eth0 10.77.1.10/30     node-1: http.server 8081, its own policy: frontend only
    impostor  eth0 10.77.1.14/30     node-1: http.server 8080; node-1's config claims
                                     backend's identity for it, which the CA registers
                                     on node-2 only
    backend   eth0 10.77.2.2/30      node-2: http.server 8080

The apps are unmodified (curl, python3 -m http.server) and run as APP_UID.
Each node agent runs in its node's namespace with a token minted with
`--node <node>` for system:serviceaccount:mtls-system:mtlsd-node; its
redirection comes from `mtlsd init-iptables --apply` (interception.
node_pod_cidrs) run in the node's namespace. Every process is stopped by
PID, every namespace deleted by name, every wait bounded.
"""
import json
import re
import subprocess
from dataclasses import dataclass
from typing import Optional

import podbed
from podbed import (CA_ID, CA_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_UID, PY, TRUST_DOMAIN,
                    NetnsBed, as_uid, wait_until)

NODES = ("node-1", "node-2")
APP_UID = 1000  # an ordinary user: nothing about the apps is special
APP_PORT = 8080
CACHE_PORT = 8081
ADMIN_PORT = 15000
CA_IP = "10.77.0.6"
CA_GATEWAY = "10.77.0.5"
NODE_LINK_IP = {"node-1": "10.77.0.1", "node-2": "10.77.0.2"}
NODE_LINK_IFACE = {"node-1": "to-node-2", "node-2": "to-node-1"}
NODE_AGENT_SA = ("mtls-system", "mtlsd-node")
NODE_AGENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/{NODE_AGENT_SA[0]}/sa/{NODE_AGENT_SA[1]}"
WORKLOAD_NAMESPACE = "demo"


def workload_id(sa):
    return f"spiffe://{TRUST_DOMAIN}/ns/{WORKLOAD_NAMESPACE}/sa/{sa}"


def pod_cidr(node):
    return f"10.77.{NODES.index(node) + 1}.0/24"


def allow_only(rule, port, caller):
    return {"default": "allow",
            "rules": [{"name": rule, "action": "allow", "ports": [port],
                       "from": [{"id": workload_id(caller)}]}]}


# The top-level policy of both agents (a pod without its own `policy:`):
# port 8080 only for frontend.
NODE_POLICY = allow_only("frontend-may-call-backend", APP_PORT, "frontend")


@dataclass(frozen=True)
class Pod:
    name: str
    node: str
    slot: int                       # its /30 inside the node's /24
    sa: str                         # the identity the node agent asks for, in WORKLOAD_NAMESPACE
    app_port: Optional[int] = None  # http.server listening here; None = a client only
    policy: Optional[dict] = None   # its own inbound policy in the agent's config
    registered: bool = True         # listed on its node in the CA's workloads file

    @property
    def ip(self):
        return f"10.77.{NODES.index(self.node) + 1}.{4 * self.slot + 2}"

    @property
    def gateway(self):
        return f"10.77.{NODES.index(self.node) + 1}.{4 * self.slot + 1}"

    @property
    def spiffe_id(self):
        return workload_id(self.sa)


PODS = {p.name: p for p in (
    Pod("frontend", "node-1", 0, "frontend"),
    Pod("other", "node-1", 1, "other"),
    Pod("cache", "node-1", 2, "cache", CACHE_PORT,
        policy=allow_only("frontend-may-call-cache", CACHE_PORT, "frontend")),
    Pod("impostor", "node-1", 3, "backend", APP_PORT, registered=False),
    Pod("backend", "node-2", 0, "backend", APP_PORT),
)}


def pods_on(node):
    return [p for p in PODS.values() if p.node == node]


class NodeBed(NetnsBed):
    """Builds both nodes; `close()` undoes everything (NetnsBed.close).
    A subclass may bring its own pods (name -> Pod)."""

    pods = PODS

    def pods_on(self, node):
        return [p for p in self.pods.values() if p.node == node]

    def __init__(self, procs, mtlsd_bin, mtls_ca_bin, wait=30.0):
        super().__init__(procs, mtlsd_bin, mtls_ca_bin, wait, dir_prefix="mtlsd-nodes-")
        self.app_logs = {}  # pod -> path of its http.server log

    # ---- network

    def build_network(self):
        for name in NODES + ("ca",) + tuple(self.pods):
            self.add_namespace(name)
        for node in NODES:
            self.run(node, *podbed.IP_FORWARD_ON)
        self.add_veth("node-1", NODE_LINK_IFACE["node-1"], "node-2", NODE_LINK_IFACE["node-2"],
                      f"{NODE_LINK_IP['node-1']}/30", f"{NODE_LINK_IP['node-2']}/30")
        self._ip("-n", self.ns("node-1"), "route", "add", pod_cidr("node-2"),
                 "via", NODE_LINK_IP["node-2"])
        self._ip("-n", self.ns("node-2"), "route", "add", pod_cidr("node-1"),
                 "via", NODE_LINK_IP["node-1"])
        # mtls-ca behind node-1; node-2 reaches it through node-1
        self.add_veth("node-1", self.veth("ca"), "ca", "eth0", f"{CA_GATEWAY}/30", f"{CA_IP}/30")
        self._ip("-n", self.ns("ca"), "route", "add", "10.77.0.0/16", "via", CA_GATEWAY)
        self._ip("-n", self.ns("node-2"), "route", "add", f"{CA_IP}/32",
                 "via", NODE_LINK_IP["node-1"])
        for pod in self.pods.values():
            self.add_veth(pod.node, self.veth(pod.name), pod.name, "eth0",
                          f"{pod.gateway}/30", f"{pod.ip}/30")
            self._ip("-n", self.ns(pod.name), "route", "add", "10.77.0.0/16", "via", pod.gateway)

    # ---- control plane

    def start_control_plane(self):
        self.make_pki()
        for node in NODES:
            self.mint_token(node, *NODE_AGENT_SA, node=node)
        workloads = [{"node": p.node, "spiffe_id": p.spiffe_id, "address": p.ip}
                     for p in self.pods.values() if p.registered]
        podbed.write_json(self.ca_dir / "workloads.yaml", {"workloads": workloads})
        self.start_mtls_ca("ca", CA_IP, {"node_agents": [NODE_AGENT_ID],
                                         "workloads_file": str(self.ca_dir / "workloads.yaml")})

    # ---- agents

    def write_agent_config(self, node, without=()):
        """|without|: pod names left out of node.workloads (pods that left)."""
        workloads = []
        for pod in self.pods_on(node):
            if pod.name in without:
                continue
            entry = {"address": pod.ip, "spiffe_id": pod.spiffe_id}
            if pod.policy is not None:
                entry["policy"] = pod.policy
            workloads.append(entry)
        backend = PODS["backend"]
        self.write_config(node, {
            "trust_domain": TRUST_DOMAIN,
            "workers": 1,
            "access_log": str(self.access_log_path(node)),
            "identity": {"spiffe_id": NODE_AGENT_ID},
            "control_plane": {
                "address": f"{CA_IP}:{CA_PORT}",
                "root_file": str(self.dir / "root.pem"),
                "spiffe_id": CA_ID,
                "token_file": str(self.dir / f"{node}.token"),
                "node_id": node,
                "cert_ttl_s": 600,
                "retry_initial_ms": 200,
                "retry_max_ms": 2000,
                # The policies under test are the node config's own (the
                # top-level one and cache's); a Watch snapshot would replace
                # them all (README, "Node mode").
                "watch": False,
            },
            "node": {"name": node, "workloads": workloads},
            "inbound": {"listeners": [{"address": f"0.0.0.0:{INBOUND_PORT}"}]},
            "outbound": {
                "listeners": [{"address": f"0.0.0.0:{OUTBOUND_PORT}"}],
                "destinations": [{"address": f"{backend.ip}:{APP_PORT}",
                                  "spiffe_id": backend.spiffe_id}],
            },
            "policy": NODE_POLICY,
            "admin": {"address": f"127.0.0.1:{ADMIN_PORT}"},
            "interception": {
                "proxy_uid": PROXY_UID,
                "proxy_gid": PROXY_UID,
                "node_pod_cidrs": [pod_cidr(node)],
            },
        })

    def expected_ids(self, node):
        """The identities |node|'s agent must have certificates for once up:
        its pods that the CA registers there."""
        return {p.spiffe_id for p in self.pods_on(node) if p.registered}

    def wait_agent_ready(self, node):
        """Every pod of |node| that the CA registers there has its
        certificate, and the listeners are up. (Not /ready: node-1 lists the
        impostor, which never gets one.)"""
        expected = self.expected_ids(node)

        def ready():
            self.check_agent_alive(node)
            have = set(re.findall(r"identity ready: (\S+) serial", self.agent_stderr(node)))
            return (expected <= have and self.listening(node, INBOUND_PORT)
                    and self.listening(node, OUTBOUND_PORT) and self.listening(node, ADMIN_PORT))
        wait_until(ready, f"the agent of {node} to have certificates for {sorted(expected)} "
                          f"and its listeners", self.wait)

    def reload(self, node):
        """POST /reload on |node|'s admin endpoint: (HTTP status, body)."""
        res = self.run(node, "curl", "-sS", "--max-time", "5", "-X", "POST", "-w", "\n%{http_code}",
                       f"http://127.0.0.1:{ADMIN_PORT}/reload", check=False, timeout=15)
        assert res.returncode == 0, f"reload on {node}: {res.stderr}"
        body, _, status = res.stdout.rpartition("\n")
        return int(status), body

    def admin(self, node, path):
        """(HTTP status, body) of GET |path| on |node|'s admin endpoint."""
        res = self.run(node, "curl", "-sS", "--max-time", "5", "-w", "\n%{http_code}",
                       f"http://127.0.0.1:{ADMIN_PORT}{path}", check=False, timeout=15)
        assert res.returncode == 0, f"admin {path} on {node}: {res.stderr}"
        body, _, status = res.stdout.rpartition("\n")
        return int(status), body

    # ---- apps

    def start_apps(self):
        for pod in self.pods.values():
            if pod.app_port is None:
                continue
            www = self.dir / f"www-{pod.name}"
            www.mkdir()
            (www / "index.html").write_text(f"hello from the {pod.name} pod\n")
            self.app_logs[pod.name] = self.dir / f"{pod.name}.app.log"
            with open(self.app_logs[pod.name], "wb") as log:
                self.others.append(self.spawn(pod.name, as_uid(APP_UID, [
                    PY, "-m", "http.server", str(pod.app_port), "--bind", "0.0.0.0",
                    "--directory", www]), stdout=log, stderr=subprocess.STDOUT))
        for pod in self.pods.values():
            if pod.app_port is not None:
                wait_until(lambda: self.listening(pod.name, pod.app_port),
                           f"the {pod.name} app", self.wait)

    def app_log(self, pod):
        return self.app_logs[pod].read_text(errors="replace")

    def call(self, client, server, *extra, path="/"):
        """curl (as APP_UID) from pod |client| to pod |server|'s app."""
        target = self.pods[server]
        return self.curl(client, f"http://{target.ip}:{target.app_port}{path}", *extra,
                         uid=APP_UID)

    def start(self):
        self.build_network()
        self.start_control_plane()
        self.start_apps()
        for node in NODES:
            self.start_agent(node)
        for node in NODES:
            self.wait_agent_ready(node)
        return self


class WatchingNodeBed(NodeBed):
    """NodeBed whose agents list no workload themselves (no node.workloads)
    and watch mtls-ca: each learns its node's pods, their policies and the
    destinations from its Watch snapshot. Subclasses say where mtls-ca
    learns which pod runs where (start_control_plane)."""

    def write_agent_config(self, node, without=()):
        super().write_agent_config(node, without)
        cfg = json.loads(self.config_path(node).read_text())  # write_json wrote it
        del cfg["node"]["workloads"]
        cfg["control_plane"]["watch"] = True
        self.write_config(node, cfg)
