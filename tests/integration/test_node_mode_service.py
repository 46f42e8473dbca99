"""Node mode and Kubernetes Services: the node agent picks a Service's
endpoint itself (issue 10).

A node agent's capture sits at the top of PREROUTING, ahead of kube-proxy's
Service DNAT, so a pod's call to a ClusterIP reaches the agent with the
ClusterIP as its original destination. Dialling the ClusterIP from the
node would let kube-proxy's OUTPUT DNAT pick the backend after us; when
that backend is a pod of the same node the connection never crosses
PREROUTING, nobody terminates the mTLS and the app reads a ClientHello.
Instead mtls-ca sends each Service address's ready endpoints (from the
EndpointSlices) and the agent dials one of them itself: a pod of its own
node in-process (judged by that pod's policy), another node's pod over
mTLS expecting exactly that pod's identity.

The bed is nodebed's two routed nodes, with the cluster coming from the
Kubernetes API server stand-in (tests/k8s/apiserver_standin.py) in mtls-ca's
namespace: mtls-ca runs its `kubernetes:` source against it and pushes the
node agents their pods, the Service destinations and their endpoints. Each
node namespace holds kube-proxy-like rules (a KUBE-SERVICES chain jumped
from nat PREROUTING and OUTPUT, DNAT to the endpoints, `statistic` for a
random pick), installed before the agent's own, as on a real node.

    node-1: frontend 10.77.1.2, other 10.77.1.6 (curl)
            cache 10.77.1.10 (http.server 8081), web-1 10.77.1.14 (8080)
    node-2: web-2 10.77.2.2 (http.server 8080)
    Service cache 10.96.0.10:80 -> targetPort "http" (named) = 8081: cache only
    Service web   10.96.0.20:80 -> targetPort 8080: web-1 and web-2
    policies (mesh file): cache admits frontend only, web admits frontend only

Needs root, `ip netns`, iptables (with the statistic match) and IP
forwarding in a namespace; skipped with the reason otherwise. Tests run in
file order; the last one stops the agents.
"""
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import nodebed
import podbed
from nodebed import NODES, Pod, from_pod, probe_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "k8s"))
import fixtures as fx  # noqa: E402

STANDIN = Path(__file__).resolve().parents[1] / "k8s" / "apiserver_standin.py"
PAGE = "hello from the {} pod\n"
WEB_PORT, CACHE_PORT = 8080, 8081
CACHE_SVC, WEB_SVC, SVC_PORT = "10.96.0.10", "10.96.0.20", 80
SERVICE_CIDR = "10.96.0.0/16"
MAX_CALLS = 40  # calls to web until both endpoints were used (each has 1/2)

PODS = {p.name: p for p in (
    Pod("frontend", "node-1", 0, "frontend"),
    Pod("other", "node-1", 1, "other"),
    Pod("cache", "node-1", 2, "cache", CACHE_PORT),
    Pod("web-1", "node-1", 3, "web", WEB_PORT),
    Pod("web-2", "node-2", 0, "web", WEB_PORT),
)}
FRONTEND, OTHER, CACHE = PODS["frontend"], PODS["other"], PODS["cache"]
WEB_1, WEB_2 = PODS["web-1"], PODS["web-2"]


def only_frontend(name, port):
    return {"default": "deny",
            "rules": [{"name": name, "action": "allow", "ports": [port],
                       "from": [{"id": FRONTEND.spiffe_id}]}]}


def cluster_objects():
    """What the API server holds: the namespace, the pods, two Services and
    their EndpointSlices, as the API serves them."""
    ns = nodebed.WORKLOAD_NAMESPACE
    objects = {"namespaces": [fx.namespace(ns)],
               "pods": [fx.pod(ns, p.name, p.sa, p.node, [p.ip]) for p in PODS.values()],
               "services": [fx.service(ns, "cache", [CACHE_SVC], [("http", SVC_PORT, "http")]),
                            fx.service(ns, "web", [WEB_SVC], [("http", SVC_PORT, WEB_PORT)])],
               "endpointslices": [
                   fx.endpointslice(ns, "cache", "c1", "IPv4",
                                    [(CACHE.name, CACHE.ip, CACHE.node, True)],
                                    [("http", CACHE_PORT)]),
                   fx.endpointslice(ns, "web", "w1", "IPv4",
                                    [(p.name, p.ip, p.node, True) for p in (WEB_1, WEB_2)],
                                    [("http", WEB_PORT)])]}
    state = {}
    for resource, items in objects.items():
        state[resource] = {}
        for i, obj in enumerate(items):
            meta = obj["metadata"]
            meta.update({"uid": str(uuid.uuid4()), "resourceVersion": str(i + 2),
                         "creationTimestamp": "2026-12-05T10:00:00Z"})
            state[resource][f"{meta.get('namespace', '')}/{meta['name']}"] = obj
    return {"resourceVersion": 100, "objects": state}


def kube_proxy_rules():
    """kube-proxy's iptables layout, reduced: Service chains jumped from
    nat PREROUTING and OUTPUT, a random pick among the endpoints."""
    lines = ["*nat", ":KUBE-SERVICES - [0:0]", ":KUBE-SVC-CACHE - [0:0]", ":KUBE-SVC-WEB - [0:0]",
             "-A PREROUTING -m comment --comment kubernetes-service-portals -j KUBE-SERVICES",
             "-A OUTPUT -m comment --comment kubernetes-service-portals -j KUBE-SERVICES",
             f"-A KUBE-SERVICES -d {CACHE_SVC}/32 -p tcp --dport {SVC_PORT} -j KUBE-SVC-CACHE",
             f"-A KUBE-SERVICES -d {WEB_SVC}/32 -p tcp --dport {SVC_PORT} -j KUBE-SVC-WEB",
             f"-A KUBE-SVC-CACHE -p tcp -j DNAT --to-destination {CACHE.ip}:{CACHE_PORT}",
             "-A KUBE-SVC-WEB -p tcp -m statistic --mode random --probability 0.5 "
             f"-j DNAT --to-destination {WEB_1.ip}:{WEB_PORT}",
             f"-A KUBE-SVC-WEB -p tcp -j DNAT --to-destination {WEB_2.ip}:{WEB_PORT}",
             "COMMIT", ""]
    return "\n".join(lines)


class ServiceNodeBed(nodebed.NodeBed):
    """Two nodes fed by mtls-ca's Kubernetes source, with kube-proxy rules."""

    pods = PODS

    def build_network(self):
        super().build_network()
        # Pods reach the service range through their node (a default route
        # in a real pod); nodes route it somewhere, as any node with a
        # default route does (only kube-proxy's DNAT makes it reachable).
        for pod in self.pods.values():
            self._ip("-n", self.ns(pod.name), "route", "add", SERVICE_CIDR, "via", pod.gateway)
        self._ip("-n", self.ns("node-1"), "route", "add", SERVICE_CIDR,
                 "via", nodebed.NODE_LINK_IP["node-2"])
        self._ip("-n", self.ns("node-2"), "route", "add", SERVICE_CIDR,
                 "via", nodebed.NODE_LINK_IP["node-1"])
        for node in NODES:  # before the agents' own rules, as kube-proxy runs first
            self.run(node, "iptables-restore", "--noflush", input=kube_proxy_rules())

    def start_api_server(self):
        """The API server stand-in in mtls-ca's namespace, preloaded."""
        api_dir = self.dir / "apiserver"
        api_dir.mkdir()
        podbed.write_json(api_dir / "state.json", cluster_objects())
        self.api_token = f"standin-{uuid.uuid4().hex}"
        proc = self.spawn("ca", [podbed.PY, STANDIN, "--pki-dir", api_dir / "pki",
                                 "--state-file", api_dir / "state.json", "--token", self.api_token],
                          stdout=subprocess.PIPE, text=True)
        self.others.append(proc)
        line = podbed._readline_bounded(proc.stdout, self.wait)
        assert line.startswith("standin listening"), f"the API server stand-in: {line!r}"
        self.api_server = line.split()[2]
        self.api_admin = line.split()[4]  # http://127.0.0.1:P, in the "ca" namespace
        self.api_ca = api_dir / "pki" / "ca.crt"
        (api_dir / "token").write_text(self.api_token)
        return api_dir / "token"

    def start_control_plane(self):
        self.make_pki()
        for node in NODES:
            self.mint_token(node, *nodebed.NODE_AGENT_SA, node=node)
        token = self.start_api_server()
        mesh = self.ca_dir / "mesh.yaml"
        podbed.write_json(mesh, {
            "trust_bundles": [{"trust_domain": nodebed.TRUST_DOMAIN,
                               "roots_files": [str(self.pki / "root.pem")]}],
            "workload_policies": [
                {"spiffe_id": CACHE.spiffe_id, "policy": only_frontend("frontend-may-call-cache",
                                                                       CACHE_PORT)},
                {"spiffe_id": WEB_1.spiffe_id, "policy": only_frontend("frontend-may-call-web",
                                                                       WEB_PORT)}]})
        self.start_mtls_ca("ca", nodebed.CA_IP, {
            "node_agents": [nodebed.NODE_AGENT_ID],
            "mesh_file": str(mesh),
            "kubernetes": {"server": self.api_server, "token_file": str(token),
                           "ca_file": str(self.api_ca), "watch_timeout_s": 300}})
        podbed.wait_until(lambda: "kubernetes: cluster state synced" in
                          self.ca_stderr.read_text(errors="replace"),
                          "mtls-ca's first listing of the API", self.wait)

    # control_plane.destinations of the agents (test_node_mode_on_demand.py)
    destinations = "all"

    def api_apply(self, op, resource, obj):
        """Changes the API server stand-in's objects (POST /admin/apply)."""
        res = self.run("ca", "curl", "-sS", "--max-time", "10", "-X", "POST",
                       "-H", "Content-Type: application/json", "--data-binary",
                       json.dumps({"op": op, "resource": resource, "object": obj}),
                       f"{self.api_admin}/admin/apply")
        assert res.returncode == 0, res.stderr

    def write_agent_config(self, node, without=()):
        self.write_config(node, {
            "trust_domain": nodebed.TRUST_DOMAIN,
            "workers": 2,
            "access_log": str(self.access_log_path(node)),
            "identity": {"spiffe_id": nodebed.NODE_AGENT_ID},
            "control_plane": {
                "address": f"{nodebed.CA_IP}:{podbed.CA_PORT}",
                "root_file": str(self.dir / "root.pem"),
                "spiffe_id": podbed.CA_ID,
                "token_file": str(self.dir / f"{node}.token"),
                "node_id": node,
                "cert_ttl_s": 600,
                "retry_initial_ms": 200,
                "retry_max_ms": 2000,
                "watch": True,  # pods, policies, destinations: all from mtls-ca
                "destinations": self.destinations,
            },
            "node": {"name": node},
            "inbound": {"listeners": [{"address": f"0.0.0.0:{podbed.INBOUND_PORT}"}]},
            "outbound": {"listeners": [{"address": f"0.0.0.0:{podbed.OUTBOUND_PORT}"}],
                         "unknown_destination": "deny"},
            "admin": {"address": f"127.0.0.1:{nodebed.ADMIN_PORT}"},
            "interception": {"proxy_uid": podbed.PROXY_UID, "proxy_gid": podbed.PROXY_UID,
                             "node_pod_cidrs": [nodebed.pod_cidr(node)]},
        })

    def call_service(self, client, ip, path="/"):
        return self.curl(client, f"http://{ip}:{SVC_PORT}{path}", uid=nodebed.APP_UID)


@pytest.fixture(scope="module")
def mtls_ca_bin():
    return podbed.require_mtls_ca_bin()


@pytest.fixture(scope="module")
def bed(request, module_procs):
    yield from nodebed.module_bed(ServiceNodeBed, request, module_procs)


def service_lines(bed, client, service_ip):
    """node-1's outbound access-log lines of |client|'s calls to |service_ip|."""
    return [l for l in bed.log_lines(client.node)
            if l["direction"] == "outbound" and from_pod(client)(l["source"])
            and l["destination"] == f"{service_ip}:{SVC_PORT}"]


def test_a_service_whose_only_endpoint_is_on_the_callers_node_is_reached(bed):
    path = probe_path()
    res = bed.call_service("frontend", CACHE_SVC, path)
    assert res.returncode == 0, f"{res.stderr}\nnode-1 log: {bed.log_lines('node-1')}"
    assert res.stdout == PAGE.format("cache")
    assert path in bed.app_log("cache")

    line = bed.wait_log("node-1", direction="outbound", source=from_pod(FRONTEND),
                        destination=f"{CACHE_SVC}:{SVC_PORT}")
    # The user sees both: the Service address the app dialled and the pod
    # the agent chose (the named targetPort resolved to 8081).
    assert line["endpoint"] == f"{CACHE.ip}:{CACHE_PORT}", line
    assert (line["decision"], line["reason"]) == ("allow", "ok"), line
    # Judged in-process by cache's own policy, with both pods' identities.
    assert line["rule"] == "frontend-may-call-cache", line
    assert line["detail"] == f"node-local delivery from {FRONTEND.spiffe_id}", line
    assert (line["local_id"], line["peer_id"]) == (FRONTEND.spiffe_id, CACHE.spiffe_id), line


def test_a_caller_the_endpoint_pods_policy_denies_is_refused(bed):
    path = probe_path()
    res = bed.call_service("other", CACHE_SVC, path)
    assert res.returncode != 0, f"the call went through: {res.stdout!r}"
    line = bed.wait_log("node-1", direction="outbound", source=from_pod(OTHER),
                        destination=f"{CACHE_SVC}:{SVC_PORT}")
    assert line["endpoint"] == f"{CACHE.ip}:{CACHE_PORT}", line
    assert (line["decision"], line["reason"]) == ("deny", "policy_denied"), line
    assert line["rule"] == "no-allow-rule-matched", line
    assert line["local_id"] == OTHER.spiffe_id, line
    assert path not in bed.app_log("cache")


def test_endpoints_on_both_nodes_are_both_used_each_with_its_own_identity(bed):
    pages = set()
    for _ in range(MAX_CALLS):
        res = bed.call_service("frontend", WEB_SVC)
        assert res.returncode == 0, f"{res.stderr}\nnode-1 log: {bed.log_lines('node-1')}"
        pages.add(res.stdout)
        if len(pages) == 2:
            break
    assert pages == {PAGE.format("web-1"), PAGE.format("web-2")}, pages

    local = bed.wait_log("node-1", direction="outbound", source=from_pod(FRONTEND),
                         destination=f"{WEB_SVC}:{SVC_PORT}", endpoint=f"{WEB_1.ip}:{WEB_PORT}")
    assert (local["decision"], local["reason"], local["rule"]) == \
        ("allow", "ok", "frontend-may-call-web"), local
    assert local["detail"].startswith("node-local delivery from"), local

    remote = bed.wait_log("node-1", direction="outbound", source=from_pod(FRONTEND),
                          destination=f"{WEB_SVC}:{SVC_PORT}", endpoint=f"{WEB_2.ip}:{WEB_PORT}")
    assert (remote["decision"], remote["reason"]) == ("allow", "ok"), remote
    assert remote["rule"] == "expected-id", remote
    assert remote["peer_id"] == WEB_2.spiffe_id and remote["tls_version"] == "TLSv1.3", remote
    # node-2 received mTLS for its own pod, by the pod IP (no ClusterIP there).
    inbound = bed.wait_log("node-2", direction="inbound", peer_id=FRONTEND.spiffe_id)
    assert (inbound["decision"], inbound["rule"]) == ("allow", "frontend-may-call-web"), inbound
    assert inbound["local_id"] == WEB_2.spiffe_id, inbound

    assert len(service_lines(bed, FRONTEND, WEB_SVC)) <= MAX_CALLS


def test_the_agents_got_the_endpoints_from_the_control_plane(bed):
    # Not a guess from the rules above: the agents never read iptables.
    # node-1 and node-2 alike: cache's one endpoint and web's two.
    for node in NODES:
        assert "(3 Service endpoints)" in bed.agent_stderr(node), bed.agent_stderr(node)[-2000:]
    stats = bed.run("node-1", "iptables-save", "-t", "nat", "-c").stdout
    # The agent dials endpoints itself: kube-proxy's Service chains in node-1
    # saw no packet of these calls (the counters of the DNAT rules stay 0).
    for rule in (l for l in stats.splitlines() if "-j DNAT" in l):
        assert rule.startswith("[0:0]"), f"kube-proxy's rule was used: {rule}"


def test_agents_stop_cleanly(bed):
    assert bed.assert_agents_stopped_cleanly() == set(NODES)
