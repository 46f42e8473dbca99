"""The two-node bed of nodebed.py fed from a Kubernetes API, as in a
cluster: mtls-ca runs with `kubernetes:` against the API server stand-in
(tests/k8s/apiserver_standin.py), and the node agents learn their pods,
the policies and the destinations only from mtls-ca's Watch.

    ca namespace   mtls-ca on 10.77.0.6:15012 (node_agents, mesh_file, kubernetes:)
                   the stand-in on https://127.0.0.1:P (HTTP/2, its own CA, a
                   bearer token; objects kept in a state file, as etcd keeps
                   them across an API server restart), admin on 127.0.0.1:A

Both stand-in ports live in the ca namespace only: the test drives the
admin port with curl through `ip netns exec`. The network, the apps and
the agents are nodebed's (routed pods, UID 1337 agents behind `mtlsd
init-iptables`, curl and http.server as the apps).

The API holds namespace `demo` (labelled mtlsd.io/mesh=enabled) and the
pods in API_PODS that a test put there (`bed.api_pods`); a pod object's IP
is one of the bed's pod namespaces, so what the agent serves for it can be
called. mtls-ca's mesh file gives backend and cache a policy each
(frontend only) and everything else the default (allow).
"""
import json
import os
import re
import signal
import sys
from dataclasses import dataclass

import nodebed
import podbed
from nodebed import APP_PORT, CACHE_PORT, NODES, PODS, workload_id
from podbed import REPO, wait_until

sys.path.insert(0, str(REPO / "tests" / "k8s"))
import fixtures as fx  # noqa: E402
from standin import StandIn  # noqa: E402

NAMESPACE = nodebed.WORKLOAD_NAMESPACE
WATCH_TIMEOUT_S = 60
CERT_TTL_S = 3600  # no renewal while the module runs: every new serial is a re-issue


@dataclass(frozen=True)
class ApiPod:
    """A Pod object of the API, placed in one of the bed's pod namespaces."""
    name: str  # the app: the object is <name>-7d9f8b6c5d-<suffix>
    sa: str
    netns: str  # the nodebed pod whose node, IP and app it has
    port: int = APP_PORT
    suffix: str = "x1a2b"

    @property
    def node(self):
        return PODS[self.netns].node

    @property
    def ip(self):
        return PODS[self.netns].ip

    @property
    def spiffe_id(self):
        return workload_id(self.sa)

    def obj(self):
        return fx.pod(NAMESPACE, f"{self.name}-7d9f8b6c5d-{self.suffix}", self.sa, self.node,
                      [self.ip], app=self.name)


API_PODS = {p.name: p for p in (
    ApiPod("frontend", "frontend", "frontend"),
    ApiPod("other", "other", "other"),
    ApiPod("cache", "cache", "cache", CACHE_PORT),
    # A pod of its own service account, in the impostor's namespace (whose
    # app listens on 8080): nothing of nodebed's impostor role applies here.
    ApiPod("late", "late", "impostor"),
    ApiPod("backend", "backend", "backend"),
)}
INITIAL_PODS = ("frontend", "other", "backend")

MESH_POLICIES = [
    {"spiffe_id": workload_id("backend"),
     "policy": nodebed.allow_only("frontend-may-call-backend", APP_PORT, "frontend")},
    {"spiffe_id": workload_id("cache"),
     "policy": nodebed.allow_only("frontend-may-call-cache", CACHE_PORT, "frontend")},
]


class NetnsStandIn(StandIn):
    """The stand-in inside a namespace of the bed; its admin port is reached
    with curl run in that namespace."""

    def __init__(self, bed, netns, workdir):
        super().__init__(workdir, argv_prefix=["ip", "netns", "exec", bed.ns(netns)])
        self.bed, self.netns = bed, netns

    def admin(self, path, body=None):
        args = ["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}"]
        if not (body is None and path.endswith("stats")):
            args += ["-X", "POST", "-H", "Content-Type: application/json",
                     "--data-binary", json.dumps(body or {})]
        res = self.bed.run(self.netns, *args, f"http://127.0.0.1:{self.admin_port}{path}")
        text, _, code = res.stdout.rpartition("\n")
        return int(code), json.loads(text or "{}")


class ClusterBed(nodebed.WatchingNodeBed):
    def __init__(self, procs, mtlsd_bin, mtls_ca_bin, wait=30.0):
        super().__init__(procs, mtlsd_bin, mtls_ca_bin, wait)
        self.api = None
        self.api_pods = {}  # name -> ApiPod: what the API holds now

    # ---- the API

    def start_api(self):
        workdir = self.ca_dir / "apiserver"
        workdir.mkdir()
        self.api = NetnsStandIn(self, "ca", workdir).start()
        self.api.apply("add", "namespaces", fx.namespace(NAMESPACE))
        for name in INITIAL_PODS:
            self.add_pod(name)

    def add_pod(self, name, offline=False):
        pod = API_PODS[name]
        (self.api.apply_offline if offline else self.api.apply)("add", "pods", pod.obj())
        self.api_pods[name] = pod

    def delete_pod(self, name, offline=False):
        pod = self.api_pods.pop(name)
        (self.api.apply_offline if offline else self.api.apply)("delete", "pods", pod.obj())

    def pods_in_api(self, node):
        return [p for p in self.api_pods.values() if p.node == node]

    # ---- control plane

    # What subclasses change: the mesh file's workload policies, and keys
    # added to mtls-ca's `kubernetes:` section.
    mesh_policies = MESH_POLICIES
    kubernetes_extra = {}

    def start_control_plane(self):
        self.make_pki()
        for node in NODES:
            self.mint_token(node, *nodebed.NODE_AGENT_SA, node=node)
        self.start_api()
        token = self.ca_dir / "k8s-token"
        token.write_text(self.api.token)
        mesh = self.ca_dir / "mesh.yaml"
        podbed.write_json(mesh, {
            "trust_bundles": [{"trust_domain": nodebed.TRUST_DOMAIN,
                               "roots_files": [str(self.pki / "root.pem")]}],
            "workload_policies": self.mesh_policies})
        self.start_mtls_ca("ca", nodebed.CA_IP, {
            "node_agents": [nodebed.NODE_AGENT_ID],
            "mesh_file": str(mesh),
            "mesh_poll_ms": 100,
            "kubernetes": {"server": self.api.server, "token_file": str(token),
                           "ca_file": str(self.api.ca_file),
                           "watch_timeout_s": WATCH_TIMEOUT_S, **self.kubernetes_extra}})
        self.wait_ca_synced()

    def wait_ca_synced(self, since=0):
        """mtls-ca's Kubernetes source listed everything (in the log after
        offset |since|)."""
        wait_until(lambda: self.ca_alive() and "kubernetes: cluster state synced"
                   in self.ca_log()[since:], "mtls-ca's first complete listing", self.wait)

    def ca_alive(self):
        if self.ca_proc.poll() is not None:
            raise AssertionError(f"mtls-ca exited with {self.ca_proc.returncode}:\n"
                                 f"{self.ca_log()[-3000:]}")
        return True

    def kill_mtls_ca(self):
        """SIGKILL by PID, as a crash or an OOM kill: nothing ends cleanly."""
        os.kill(self.ca_proc.pid, signal.SIGKILL)
        self.ca_proc.wait(self.wait)

    # ---- agents

    def expected_ids(self, node):
        return {p.spiffe_id for p in self.pods_in_api(node)}

    def write_agent_config(self, node, without=()):
        super().write_agent_config(node, without)
        cfg = json.loads(self.config_path(node).read_text())
        cfg["control_plane"]["cert_ttl_s"] = CERT_TTL_S
        self.write_config(node, cfg)

    def call_pod(self, client, name, path="/"):
        """curl (as the app user) from nodebed pod |client| to API pod |name|'s app."""
        pod = API_PODS[name]
        return self.curl(client, f"http://{pod.ip}:{pod.port}{path}", uid=nodebed.APP_UID)

    def close(self):
        try:
            if self.api is not None:
                self.api.kill()  # it holds nothing to keep; by PID, before its namespace goes
        finally:
            super().close()


def ca_lines(bed, since, pattern):
    """mtls-ca log lines after offset |since| matching |pattern|."""
    rx = re.compile(pattern)
    return [line for line in bed.ca_log()[since:].splitlines() if rx.search(line)]


def wait_ca(bed, since, pattern):
    """An mtls-ca log line after offset |since| matching |pattern|."""
    try:
        return wait_until(lambda: ca_lines(bed, since, pattern),
                          f"mtls-ca to log {pattern!r}", bed.wait)[0]
    except AssertionError as e:
        raise AssertionError(f"{e}\nmtls-ca's log since:\n{bed.ca_log()[since:][-4000:]}") \
            from None
