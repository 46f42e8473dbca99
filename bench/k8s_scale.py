#!/usr/bin/python3
"""The control plane at cluster scale (issue 10): mtls-ca's Kubernetes
source and Watch fan-out, measured.

    bench/k8s_scale.py                       # 10,000 pods, 100 nodes, 1,000 services, 50 pod events/s for 60 s
    bench/k8s_scale.py --pods 200 --nodes 4 --services 20 --seconds 5     # smoke size

What runs, all on 127.0.0.1:
  * the API server stand-in (tests/k8s/apiserver_standin.py), started with
    the whole cluster already in it (--objects): namespaces, Deployments'
    pods spread at random over the nodes, Services with one EndpointSlice
    per 100 endpoints, every object shaped by tests/k8s/fixtures.py;
  * the optimised mtls-ca (bazel-bin, `-c opt` from .bazelrc, copied to the
    work directory first) with `kubernetes:` pointing at it and the node
    agents' service account in `node_agents` (started by the test suite's
    own helper, tests/controlplane/conftest.py CA);
  * one simulated node agent per node (bench/k8s_agents.py): a real gRPC
    Watch stream with that node's token (the agents' one service account,
    a node claim each), in a few worker processes.

Then churn: pod events at --rate per second for --seconds (creations of
Running, ready pods behind an existing Service, deletions, readiness
flips), each followed by the EndpointSlice change the EndpointSlice
controller would make. Measured: mtls-ca's CPU and memory from /proc,
what each agent receives (first state, each change, per second), and the
latency from the stand-in writing a pod's watch event to the agent of the
pod's node holding a snapshot that reflects it.

Prints a report, writes JSON (--json), and exits 0 when every stage
completed (1 otherwise, with the reason). Every wait is bounded; every
process it starts is stopped by PID.
"""

import argparse
import http.client
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests" / "k8s"))
sys.path.insert(0, str(REPO / "tests" / "controlplane"))

import k8s_agents  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
ENDPOINTS_PER_SLICE = 100  # the EndpointSlice controller's default maximum
MESH_POLL_MS = 2000  # deploy/k8s/mtls-ca.yaml
ROUND_LINE = re.compile(r"mesh snapshot version (\d+)-[0-9a-f]+ in force \(kubernetes changes; "
                        r"(\d+) bytes shared, (\d+) destinations from the cluster\): "
                        r"sent to (\d+) of (\d+) streams")


def log(msg):
    sys.stderr.write("k8s_scale: %s\n" % msg)
    sys.stderr.flush()


def pct(values, p):
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def summary(values, scale=1.0):
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {"n": len(values), "p50": pct(values, 50) * scale, "p99": pct(values, 99) * scale,
            "max": max(values) * scale}


# ---- the cluster --------------------------------------------------------------


class Cluster:
    """The objects the stand-in holds, and the controllers' part of a change:
    which EndpointSlice a pod is in, and what that slice looks like after."""

    ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes uses for name suffixes

    def __init__(self, fx, pods, nodes, services, namespaces, seed):
        self.fx = fx
        self.rng = random.Random(seed)
        self.nodes = ["node-%03d" % i for i in range(nodes)]
        self.namespaces = ["bench-%d" % i for i in range(namespaces)]
        self.services = []  # (ns, name, ports)
        self.service_index = {}  # (ns, name) -> index in services
        self.ports = {}  # (ns, name) -> ports
        self.pods = {}  # "ns/name" -> {"ns", "name", "svc", "node", "ip", "ready", "slice"}
        self.slices = {}  # (ns, slice name) -> {"svc", "endpoints": [pod key...]}
        self.slices_of = {}  # (ns, svc) -> [slice names]
        self.next_pod = 0
        self.next_ip = 0
        for i in range(services):
            ns = self.namespaces[i % namespaces]
            name = "svc-%04d" % i
            ports = [("http", 80, 8080)] + ([("grpc", 9090, 9090)] if i % 4 == 0 else [])
            self.service_index[(ns, name)] = len(self.services)
            self.services.append((ns, name, ports))
            self.ports[(ns, name)] = ports
            self.slices_of[(ns, name)] = []
        for j in range(pods):
            ns, svc, _ = self.services[j % services]
            self._new_pod(ns, svc, self.rng.choice(self.nodes))

    def _suffix(self, n, width):
        out = ""
        for _ in range(width):
            n, d = divmod(n, len(self.ALPHABET))
            out += self.ALPHABET[d]
        return out

    def _new_pod(self, ns, svc, node):
        n = self.next_pod
        self.next_pod += 1
        a, host = divmod(self.next_ip, 250)
        self.next_ip += 1
        ip = "10.%d.%d.%d" % (128 + a // 256, a % 256, host + 1)
        name = "%s-7d9f8b6c5d-%s" % (svc, self._suffix(n * 7919 + 13, 5))
        pod = {"ns": ns, "name": name, "svc": svc, "node": node, "ip": ip, "ready": True}
        key = "%s/%s" % (ns, name)
        self.pods[key] = pod
        return key, self._place(key)

    def _place(self, key):
        """Puts the pod's endpoint into its Service's first slice with room,
        or a new slice (as the EndpointSlice controller does); True when
        the slice is new."""
        pod = self.pods[key]
        names = self.slices_of[(pod["ns"], pod["svc"])]
        for name in names:
            if len(self.slices[(pod["ns"], name)]["endpoints"]) < ENDPOINTS_PER_SLICE:
                break
        else:
            name = "%s-%s" % (pod["svc"], self._suffix(len(names) * 104729 + sum(map(ord, pod["svc"])), 5))
            names.append(name)
            self.slices[(pod["ns"], name)] = {"svc": pod["svc"], "endpoints": []}
        self.slices[(pod["ns"], name)]["endpoints"].append(key)
        pod["slice"] = name
        return len(self.slices[(pod["ns"], name)]["endpoints"]) == 1

    # objects, as the API shows them

    def pod_object(self, key):
        p = self.pods[key]
        return self.fx.pod(p["ns"], p["name"], p["svc"], p["node"], [p["ip"]], ready=p["ready"],
                           app=p["svc"])

    @staticmethod
    def cluster_ip(i):
        return "10.96.%d.%d" % (i // 250, i % 250 + 1)

    def service_object(self, i):
        ns, name, ports = self.services[i]
        return self.fx.service(ns, name, [self.cluster_ip(i)], ports)

    def calls_of_nodes(self, calls_per_pod, seed):
        """{node: [Service "ClusterIP:port"]}: what the pods of each node dial.
        Each pod calls |calls_per_pod| distinct Services drawn at random
        among all of them, each on one of its ports (drawn too); a node's
        calls are the union over its pods, in a seeded random order. Its own
        random stream, so the churn is the same whatever the mode."""
        rng = random.Random("calls-%d" % seed)
        k = min(calls_per_pod, len(self.services))
        out = {}
        for node in self.nodes:
            calls = set()
            for _ in self.pods_on(node):
                for i in rng.sample(range(len(self.services)), k):
                    calls.add("%s:%d" % (self.cluster_ip(i), rng.choice(self.services[i][2])[1]))
            calls = sorted(calls)
            rng.shuffle(calls)
            out[node] = calls
        return out

    def slice_object(self, ns, name):
        s = self.slices[(ns, name)]
        ports = [(p[0], p[2]) for p in self.ports[(ns, s["svc"])]]
        endpoints = [(self.pods[k]["name"], self.pods[k]["ip"], self.pods[k]["node"], self.pods[k]["ready"])
                     for k in s["endpoints"]]
        obj = self.fx.endpointslice(ns, s["svc"], name[len(s["svc"]) + 1:], "IPv4", endpoints, ports)
        return obj

    def objects(self):
        return {
            "namespaces": [self.fx.namespace(ns) for ns in self.namespaces],
            "services": [self.service_object(i) for i in range(len(self.services))],
            "pods": [self.pod_object(k) for k in self.pods],
            "endpointslices": [self.slice_object(ns, name) for (ns, name) in self.slices],
        }

    def pods_on(self, node):
        return sorted(k for k, p in self.pods.items() if p["node"] == node)

    # churn: each returns [(op, resource, object)] to apply in order, and the op's record

    def create(self):
        ns, svc, _ = self.rng.choice(self.services)
        key, new_slice = self._new_pod(ns, svc, self.rng.choice(self.nodes))
        p = self.pods[key]
        return ([("add", "pods", self.pod_object(key)),
                 ("add" if new_slice else "modify", "endpointslices", self.slice_object(ns, p["slice"]))],
                {"kind": "create", "pod": key, "node": p["node"], "ip": p["ip"], "ns": ns, "svc": svc,
                 "was_ready": False})

    def delete(self):
        if not self.pods:
            return self.create()
        key = self._any_pod()
        obj = self.pod_object(key)
        p = self.pods.pop(key)
        self.slices[(p["ns"], p["slice"])]["endpoints"].remove(key)
        return ([("delete", "pods", obj),
                 ("modify", "endpointslices", self.slice_object(p["ns"], p["slice"]))],
                {"kind": "delete", "pod": key, "node": p["node"], "ip": p["ip"], "ns": p["ns"],
                 "svc": p["svc"], "was_ready": p["ready"]})

    def flip(self):
        if not self.pods:
            return self.create()
        key = self._any_pod()
        p = self.pods[key]
        p["ready"] = not p["ready"]
        return ([("modify", "pods", self.pod_object(key)),
                 ("modify", "endpointslices", self.slice_object(p["ns"], p["slice"]))],
                {"kind": "ready" if p["ready"] else "unready", "pod": key, "node": p["node"], "ip": p["ip"],
                 "ns": p["ns"], "svc": p["svc"], "was_ready": not p["ready"]})

    def _any_pod(self):
        return self.rng.choice(list(self.pods))  # insertion order: the same run for the same seed


# ---- processes ------------------------------------------------------------------


def proc_cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15), whole thread group


def proc_runqueue_wait_s(pid):
    """Seconds the process's (main) thread has spent runnable but waiting for
    a CPU (/proc/PID/schedstat, field 2): how much the busy machine held it back."""
    with open("/proc/%d/schedstat" % pid) as f:
        return int(f.read().split()[1]) / 1e9


def proc_status_kb(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def tcp_bytes_sent(port):
    """Bytes the kernel sent on the established TCP connections from local
    |port| (ss -ti: bytes_sent, or bytes_acked on older kernels): what
    mtls-ca put on the wire to its callers, TLS records and HTTP/2 frames
    included. Connections that closed in between are not counted."""
    out = subprocess.run(["ss", "-tinH", "state", "established", "( sport = :%d )" % port],
                         capture_output=True, text=True, timeout=30).stdout
    sent = re.findall(r"\bbytes_sent:(\d+)", out) or re.findall(r"\bbytes_acked:(\d+)", out)
    return sum(int(n) for n in sent)


class Sampler(threading.Thread):
    """mtls-ca's VmRSS every 0.25 s and CPU ticks every second, until stopped."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.stop_event = threading.Event()
        self.rss_kb = []  # (t, kb)
        self.cpu = []  # (t, ticks)
        self.loadavg = []  # the 1-minute load average, every second

    def run(self):
        n = 0
        while not self.stop_event.is_set():
            try:
                t = time.monotonic()
                self.rss_kb.append((t, proc_status_kb(self.pid, "VmRSS")))
                if n % 4 == 0:
                    self.cpu.append((t, proc_cpu_ticks(self.pid)))
                    with open("/proc/loadavg") as f:
                        self.loadavg.append(float(f.read().split()[0]))
            except (OSError, ValueError, TypeError):
                return  # the process is gone
            n += 1
            self.stop_event.wait(0.25)


class Admin:
    """The stand-in's admin port over one kept-alive HTTP/1.1 connection."""

    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def apply(self, op, resource, obj):
        body = json.dumps({"op": op, "resource": resource, "object": obj})
        self.conn.request("POST", "/admin/apply", body=body, headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        data = json.loads(resp.read())
        if resp.status != 200:
            raise RuntimeError("stand-in refused %s %s: %s %s" % (op, resource, resp.status, data))
        return int(data["metadata"]["resourceVersion"])

    def close(self):
        self.conn.close()


class Workers:
    """The simulated node agents, in |n| spawned processes."""

    def __init__(self, specs, n):
        ctx = multiprocessing.get_context("spawn")  # grpc does not survive fork
        self.procs, self.conns = [], []
        self.first = {}  # agent -> (opened_t, first_t, size)
        self.wants = {}  # agent -> Want calls made (destinations on demand)
        self.errors = []
        # The destination-tracking agents cost the most: dealt out first, so
        # that every worker gets its share of them.
        specs = sorted(specs, key=lambda s: not s["sample"])
        for w in range(n):
            mine = specs[w::n]
            if not mine:
                continue
            parent, child = ctx.Pipe()
            p = ctx.Process(target=k8s_agents.run_worker, args=(child, mine), daemon=True)
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)

    def _handle(self, msg):
        if msg[0] == "first":
            self.first[msg[1]] = msg[2:]
        elif msg[0] == "wants":
            self.wants[msg[1]] = msg[2]
        elif msg[0] == "error":
            self.errors.append("agent %d: %s" % (msg[1], msg[2]))
            log("agent %d: %s" % (msg[1], msg[2]))

    def poll(self, timeout=0.1):
        """Takes in what the workers reported so far."""
        for c in multiprocessing.connection.wait(self.conns, timeout):
            try:
                while c.poll():
                    self._handle(c.recv())
            except EOFError:
                self.conns.remove(c)

    def ask(self, cmd, answer, timeout=60):
        """Sends |cmd| to every worker and returns their |answer| replies."""
        for c in self.conns:
            c.send(cmd)
        replies, deadline = [], time.monotonic() + timeout
        for c in list(self.conns):
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not c.poll(left):
                    raise RuntimeError("a worker did not answer %r within %ds" % (cmd, timeout))
                msg = c.recv()
                if msg[0] == answer:
                    replies.append(msg)
                    break
                self._handle(msg)
        return replies

    def stop(self):
        results = {}
        try:
            for reply in self.ask("stop", "result", timeout=60):
                results.update(reply[1])
        except (RuntimeError, OSError, EOFError) as e:
            log("collecting results: %s" % e)
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()  # by PID: the Process object's own
                p.join(10)
        return results


# ---- the run ----------------------------------------------------------------------


def build_mtls_ca(workdir):
    """The optimised binary (.bazelrc: -c opt), copied so that a rebuild
    during the run cannot swap it."""
    subprocess.run(["bazel", "build", "--disk_cache=/work/.bazel-disk-cache", "//controlplane:mtls-ca"],
                   cwd=REPO, check=True, timeout=1800)
    bin_dir = subprocess.run(["bazel", "info", "bazel-bin"], cwd=REPO, capture_output=True, text=True,
                             check=True, timeout=300).stdout.strip()
    dest = workdir / "mtls-ca"
    shutil.copy(Path(bin_dir) / "controlplane" / "mtls-ca", dest)
    return dest


def wait_for(predicate, what, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def machine():
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model, "loadavg_at_start": [float(x) for x in load]}


def run(args):
    workdir = Path(args.workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    binary = Path(args.mtls_ca).resolve() if args.mtls_ca else build_mtls_ca(workdir)
    os.environ["MTLS_CA_BIN"] = str(binary)  # read by conftest at import
    import conftest
    import fixtures as fx
    from standin import StandIn
    from test_mtls_ca import node_agent_token
    from test_mtls_ca_kubernetes import kubernetes_config

    result = {"params": vars(args).copy(), "machine": machine(), "binary": str(binary), "ok": False}
    stages = result["stages"] = {}
    started = time.monotonic()
    api = ca = workers = sampler = admin = None
    try:
        t = time.monotonic()
        cluster = Cluster(fx, args.pods, args.nodes, args.services, args.namespaces, args.seed)
        objects_file = workdir / "objects.json"
        objects_file.write_text(json.dumps(cluster.objects()))
        stages["generate_s"] = time.monotonic() - t
        log("cluster: %d pods on %d nodes, %d services, %d EndpointSlices, %d namespaces (%.1f MB of JSON)"
            % (len(cluster.pods), len(cluster.nodes), len(cluster.services), len(cluster.slices),
               len(cluster.namespaces), objects_file.stat().st_size / 1e6))

        t = time.monotonic()
        api = StandIn(workdir / "apiserver", keep_state=False, objects_file=objects_file).start()
        stages["standin_start_s"] = time.monotonic() - t

        pki = conftest.make_pki(workdir / "pki")
        (workdir / "ca").mkdir()
        ca = conftest.CA(workdir / "ca", pki, extra_config=kubernetes_config(
            api, workdir, watch_timeout_s=args.watch_timeout_s))
        ca.config.write_text(ca.config.read_text().replace(
            "mesh_poll_ms: %d\n" % conftest.MESH_POLL_MS, "mesh_poll_ms: %d\n" % args.mesh_poll_ms))
        t = time.monotonic()
        ca.start()
        pid = ca.proc.pid
        wait_for(lambda: "kubernetes: cluster state synced" in ca.stderr() or not ca.alive(),
                 "mtls-ca's first Kubernetes sync", args.timeout_sync)
        if not ca.alive():
            raise RuntimeError("mtls-ca exited:\n" + ca.stderr()[-3000:])
        stages["mtls_ca_sync_s"] = time.monotonic() - t
        synced = re.search(r"cluster state synced: (\d+) workloads", ca.stderr())
        result["mtls_ca_synced_workloads"] = int(synced.group(1)) if synced else None
        log("mtls-ca (pid %d) synced in %.1f s: %s workloads" % (pid, stages["mtls_ca_sync_s"],
                                                                result["mtls_ca_synced_workloads"]))
        rss_synced = proc_status_kb(pid, "VmRSS")

        # ---- the node agents and their first state
        root_pem = Path(pki["root"]).read_bytes()
        step = max(1, args.nodes // max(1, args.dest_sample))
        sample = set(list(range(0, args.nodes, step))[:args.dest_sample])  # spread over the nodes
        on_demand = args.destinations == "on_demand"
        calls = cluster.calls_of_nodes(args.calls_per_pod, args.seed)
        specs = [{"index": i, "node": node, "token": node_agent_token(pki, node=node), "root_pem": root_pem,
                  "target": "127.0.0.1:%d" % ca.port, "deltas": args.deltas == "on", "sample": i in sample,
                  "calls": calls[node], "on_demand": on_demand, "watch_id": "bench-%s-%d" % (node, args.seed),
                  # half asked for at open, the other half with Want once the first snapshot is in
                  "initial": calls[node][:len(calls[node]) // 2], "later": calls[node][len(calls[node]) // 2:],
                  "want_batch": args.want_batch}
                 for i, node in enumerate(cluster.nodes)]
        n_calls = [len(c) for c in calls.values()]
        result["calls"] = {"per_pod": args.calls_per_pod, "per_node": summary(n_calls), "per_node_min": min(n_calls),
                           "asked_at_open": sum(len(s["initial"]) for s in specs),
                           "asked_with_want": sum(len(s["later"]) for s in specs)}
        log("calls: %d Service addresses per node median (%d-%d)%s"
            % (pct(n_calls, 50), min(n_calls), max(n_calls),
               "; half asked at open, half with Want" if on_demand else " (followed on the sampled agents)"))
        cpu0 = proc_cpu_ticks(pid)
        t_agents = time.monotonic()
        workers = Workers(specs, min(args.workers, len(specs)))

        def all_first():
            workers.poll()
            if workers.errors:
                raise RuntimeError("node agents failed: %s" % workers.errors[:5])
            return len(workers.first) == len(specs)

        wait_for(all_first, "every node agent's first snapshot", args.timeout_first, interval=0)
        stages["all_first_states_s"] = time.monotonic() - t_agents
        first_cpu_s = (proc_cpu_ticks(pid) - cpu0) / CLK_TCK
        firsts = workers.first
        result["first_state"] = {
            "bytes": summary([f[2] for f in firsts.values()]),
            "open_to_first_s": summary([f[1] - f[0] for f in firsts.values()]),
            "all_agents_s": max(f[1] for f in firsts.values()) - min(f[0] for f in firsts.values()),
            "mtls_ca_cpu_s": first_cpu_s,
        }
        log("first state: every agent served in %.2f s; %s bytes median, %s max"
            % (result["first_state"]["all_agents_s"], result["first_state"]["bytes"]["p50"],
               result["first_state"]["bytes"]["max"]))

        # ---- destinations on demand: the rest of each agent's calls, with Want
        # (each agent makes them as soon as its first snapshot is in: timed from the agents' start)
        if on_demand:
            expecting = {s["index"] for s in specs if s["later"]}

            def all_wants():
                workers.poll()
                if workers.errors:
                    raise RuntimeError("node agents failed: %s" % workers.errors[:5])
                return expecting <= set(workers.wants)

            wait_for(all_wants, "every node agent's Want calls and their entries", args.timeout_wants,
                     interval=0)
            stages["first_states_and_wants_s"] = time.monotonic() - t_agents
            # mtls-ca's own time per Want (its access log: request in -> answer queued, 1 ms steps)
            served = [e.get("duration_ms", 0) for e in ca.access_lines() if e.get("method") == k8s_agents.WANT]
            result["wants_stage"] = {"seconds": stages["first_states_and_wants_s"],
                                     "calls": sum(workers.wants.values()),
                                     "mtls_ca_cpu_s": (proc_cpu_ticks(pid) - cpu0) / CLK_TCK,
                                     "mtls_ca_want_ms": summary(served)}
            log("Want: %d calls by %d agents, all answered with their entries %.2f s after the agents started"
                % (result["wants_stage"]["calls"], len(expecting), stages["first_states_and_wants_s"]))

        # ---- steady state
        time.sleep(args.settle_s)
        workers.poll()
        steady_cpu0, steady_t0 = proc_cpu_ticks(pid), time.monotonic()
        time.sleep(args.settle_s)
        result["steady"] = {
            "rss_kb": proc_status_kb(pid, "VmRSS"), "rss_after_sync_kb": rss_synced,
            "cpu_pct": 100.0 * (proc_cpu_ticks(pid) - steady_cpu0) / CLK_TCK / (time.monotonic() - steady_t0),
        }

        # ---- churn
        ops = []
        n_events = int(args.rate * args.seconds)
        kinds = ["create"] * args.mix[0] + ["delete"] * args.mix[1] + ["flip"] * args.mix[2]
        admin = Admin(api.admin_port)
        sampler = Sampler(pid)
        stderr_mark = len(ca.stderr())
        sampler.start()
        bench_pids = [api.proc.pid] + [p.pid for p in workers.procs]
        tcp0, cpu0, wait0 = tcp_bytes_sent(ca.port), proc_cpu_ticks(pid), proc_runqueue_wait_s(pid)
        bench0 = [proc_cpu_ticks(b) for b in bench_pids]
        t0 = time.monotonic()
        late = 0.0
        log("churn: %d pod events at %g/s" % (n_events, args.rate))
        for i in range(n_events):
            due = t0 + i / args.rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            else:
                late = max(late, now - due)
            if now - t0 > args.seconds + args.max_late_s:
                log("the driver fell %.1f s behind; stopping churn after %d events" % (now - t0 - args.seconds, i))
                break
            kind = cluster.rng.choice(kinds)
            changes, record = getattr(cluster, kind)()
            record["sched_t"] = due
            rvs = [admin.apply(*change) for change in changes]
            record["rv"], record["slice_rv"] = rvs[0], rvs[1]
            record["applied_t"] = time.monotonic()
            ops.append(record)
            if i % 64 == 0:
                workers.poll(0)
        t1 = time.monotonic()
        cpu1, tcp1, wait1 = proc_cpu_ticks(pid), tcp_bytes_sent(ca.port), proc_runqueue_wait_s(pid)
        bench1 = [proc_cpu_ticks(b) for b in bench_pids]
        churn_s = t1 - t0
        # ---- drain: until the agents have been quiet for a while (bounded)
        deadline = t1 + args.drain_s
        last_seen = t1
        while time.monotonic() < deadline:
            replies = workers.ask("progress", "progress")
            lasts = [r[2] for r in replies if r[2] is not None]
            if lasts:
                last_seen = max(last_seen, max(lasts))
            if time.monotonic() - last_seen >= args.quiet_s:
                break
            time.sleep(0.2)
        t2 = time.monotonic()
        cpu2 = proc_cpu_ticks(pid)
        sampler.stop_event.set()
        sampler.join(5)
        stages["drain_s"] = t2 - t1
        result["mtls_ca"] = {
            "pid": pid,
            "cpu_pct_churn": 100.0 * (cpu1 - cpu0) / CLK_TCK / churn_s,
            "runqueue_wait_pct_churn": 100.0 * (wait1 - wait0) / churn_s,
            "cpu_pct_churn_and_drain": 100.0 * (cpu2 - cpu0) / CLK_TCK / (t2 - t0),
            "cpu_pct_per_second": [round(100.0 * (b[1] - a[1]) / CLK_TCK / (b[0] - a[0]), 1)
                                   for a, b in zip(sampler.cpu, sampler.cpu[1:])],
            "rss_steady_kb": result["steady"]["rss_kb"],
            "rss_max_during_churn_kb": max((kb for _, kb in sampler.rss_kb if kb), default=None),
            "vm_hwm_kb": proc_status_kb(pid, "VmHWM"),
            "tcp_bytes_sent_churn": tcp1 - tcp0,
        }
        # What the bench itself took from the same CPUs meanwhile.
        result["bench_cpu_pct_churn"] = {
            "standin": 100.0 * (bench1[0] - bench0[0]) / CLK_TCK / churn_s,
            "agents": 100.0 * sum(b - a for a, b in zip(bench0[1:], bench1[1:])) / CLK_TCK / churn_s,
        }
        result["machine"]["loadavg_during_churn"] = summary(sampler.loadavg)
        with open("/proc/loadavg") as f:
            result["machine"]["loadavg_at_end"] = [float(x) for x in f.read().split()[:3]]
        rounds = [tuple(map(int, m.groups())) for m in ROUND_LINE.finditer(ca.stderr()[stderr_mark:])]
        result["mtls_ca"]["rounds"] = {
            "count": len(rounds),
            "per_second": len(rounds) / churn_s,
            "sent_streams_mean": sum(r[3] for r in rounds) / len(rounds) if rounds else 0,
            "shared_bytes_last": rounds[-1][1] if rounds else None,
            "cluster_destinations_last": rounds[-1][2] if rounds else None,
            # CPU per round and per snapshot queued, over churn and drain (what a faster or
            # idle machine would scale by)
            "cpu_ms_per_round": 1000.0 * (cpu2 - cpu0) / CLK_TCK / len(rounds) if rounds else None,
            "cpu_ms_per_snapshot_sent": (1000.0 * (cpu2 - cpu0) / CLK_TCK / sum(r[3] for r in rounds)
                                         if rounds and sum(r[3] for r in rounds) else None),
        }
        result["churn"] = {"events": len(ops), "planned": n_events, "seconds": churn_s,
                           "rate_achieved": len(ops) / churn_s, "driver_max_late_s": late,
                           "kinds": {k: sum(1 for o in ops if o["kind"] == k)
                                     for k in ("create", "delete", "ready", "unready")}}
        log("churn done: %d events in %.1f s; drained in %.1f s" % (len(ops), churn_s, t2 - t1))

        # ---- results
        emitted = api.emitted()
        logs = workers.stop()
        workers = None
        result["agents"] = analyse(args, cluster, ops, emitted, logs, t0, t2, churn_s, calls)
        if len(logs) != len(specs):
            raise RuntimeError("only %d of %d node agents reported their results" % (len(logs), len(specs)))
        if result["agents"]["on_demand"]["mismatched_agents"]:
            raise RuntimeError("node agents do not hold what they asked for: %s"
                               % result["agents"]["on_demand"]["mismatch_samples"])
        result["stages"]["total_s"] = time.monotonic() - started
        result["ok"] = True
        return result
    finally:
        if sampler is not None:
            sampler.stop_event.set()
        if admin is not None:
            admin.close()
        if workers is not None:
            workers.stop()
        if ca is not None:
            try:
                rc = ca.stop()
                result["mtls_ca_exit"] = rc
            except AssertionError as e:
                result["mtls_ca_exit"] = str(e)
            problems = [line for line in ca.stderr().splitlines()
                        if " error" in line.lower() or "refused" in line][:20]
            result["mtls_ca_log_problems"] = problems
            result["sanitizer_report"] = any(m in ca.stderr() for m in conftest.SANITIZER_MARKERS)
        if api is not None:
            api.stop()


def analyse(args, cluster, ops, emitted, logs, t0, t_end, churn_s, calls):
    out = {"reporting": len(logs), "problems": sum(a["num_problems"] for a in logs.values()),
           "problem_samples": [p for a in logs.values() for p in a["problems"]][:10],
           "wrong_node_snapshots": sum(a["wrong_node"] for a in logs.values())}
    # When each pod came to / left each agent (first time only: names are never reused).
    came, went = {}, {}
    for a in logs.values():
        for t, c, w in a["pod_log"]:
            for p in c:
                came.setdefault((a["node"], p), t)
            for p in w:
                went.setdefault((a["node"], p), t)
    # Every pod shown to the agent of its node only.
    node_of = {o["pod"]: o["node"] for o in ops}
    node_of.update({k: p["node"] for k, p in cluster.pods.items()})
    out["misplaced_pods"] = sum(1 for (node, p) in came if node_of.get(p, node) != node)

    latency = {"create": [], "delete": []}
    missing = {"create": 0, "delete": 0}
    not_emitted = 0
    negative = 0
    for o in ops:
        if o["kind"] not in latency:
            continue
        te = emitted.get(o["rv"])
        if te is None:
            not_emitted += 1
            continue
        seen = (came if o["kind"] == "create" else went).get((o["node"], o["pod"]))
        if seen is None:
            missing[o["kind"]] += 1
        elif seen < te:
            negative += 1
        else:
            latency[o["kind"]].append(seen - te)
    both = latency["create"] + latency["delete"]
    visible = sum(1 for o in ops if o["kind"] in latency)
    out["event_to_agent_ms"] = {"all": summary(both, 1000), "create": summary(latency["create"], 1000),
                                "delete": summary(latency["delete"], 1000)}
    out["events_visible"] = visible
    out["events_seen"] = len(both)
    out["events_seen_fraction"] = len(both) / visible if visible else None
    out["events_not_seen"] = missing
    out["events_not_emitted"] = not_emitted
    out["events_seen_before_emitted"] = negative

    # Destinations, on the sampled agents: the pod's IP alone (every port of the pod).
    sample = [a for a in logs.values() if a["sample"]]
    all_seen, per_agent, pairs, pairs_seen = [], [], 0, 0
    if sample:
        dcame, dwent = [], []
        for a in sample:
            c, w = {}, {}
            for t, cs, ws in a["dest_log"]:
                for d in cs:
                    c.setdefault(d, t)
                for d in ws:
                    w.setdefault(d, t)
            dcame.append(c)
            dwent.append(w)
        for o in ops:
            if o["kind"] not in latency or o["rv"] not in emitted:
                continue
            te = emitted[o["rv"]]
            ts = []
            for c, w in zip(dcame, dwent):
                pairs += 1
                seen = (c if o["kind"] == "create" else w).get(o["ip"])
                if seen is not None and seen >= te:
                    pairs_seen += 1
                    ts.append(seen - te)
                    per_agent.append(seen - te)
            if len(ts) == len(sample):
                all_seen.append(max(ts))
    out["destination_sample_agents"] = len(sample)
    # With destinations on demand no agent asks for pod IPs: nothing to measure.
    out["pod_ip_to_sampled_agents_ms"] = ({"every_sampled_agent": summary(all_seen, 1000),
                                           "each_agent": summary(per_agent, 1000),
                                           "seen_fraction": pairs_seen / pairs if pairs else None}
                                          if args.destinations == "all" else None)
    out["service_endpoints_to_callers_ms"] = endpoint_latency(cluster, ops, emitted, sample, calls)
    out["on_demand"] = on_demand_figures(args, cluster, logs, calls)

    # Bytes: the first snapshot, then everything from the churn's start to the end of the drain.
    first_sizes = [a["messages"][0][1] for a in logs.values() if a["messages"]]
    churn_msgs = [m for a in logs.values() for m in a["messages"] if t0 <= m[0] <= t_end]
    per_agent_bytes = [sum(m[1] for m in a["messages"] if t0 <= m[0] <= t_end) for a in logs.values()]
    per_agent_msgs = [sum(1 for m in a["messages"] if t0 <= m[0] <= t_end) for a in logs.values()]
    own_pods = [len(cluster.pods_on(a["node"])) for a in logs.values()]
    before_churn = [sum(m[1] for m in a["messages"] if m[0] < t0) for a in logs.values()]
    out["bytes"] = {
        "first_state": summary(first_sizes),
        "state_before_churn": summary(before_churn),  # on demand: the first state and what Want brought
        "first_state_per_own_pod_p50": pct([s / max(1, n) for s, n in zip(first_sizes, own_pods)], 50),
        "per_message_during_churn": summary([m[1] for m in churn_msgs]),
        "deltas_during_churn": sum(1 for m in churn_msgs if m[3]),
        "messages_per_agent_per_s": summary([n / churn_s for n in per_agent_msgs]),
        "bytes_per_agent_per_s": summary([b / churn_s for b in per_agent_bytes]),
    }
    return out


SUPERSEDED_S = 1.0  # a change undone this soon may never reach an agent (rounds coalesce it)


def endpoint_latency(cluster, ops, emitted, sample, calls):
    """From the stand-in writing a pod's event whose EndpointSlice change
    (written right after it) adds or removes the pod's endpoint of its
    Service (creation, readiness flip, deletion of a ready pod) to each
    sampled agent whose pods call that Service holding a destination entry
    of the Service address with the endpoint added / removed. The pod event
    is the start: mtls-ca drops a deleted pod's endpoint on the pod event
    already. A change not seen when the same pod changed again within
    SUPERSEDED_S, before or after (created then made unready: a round saw
    both at once, so neither shows), is counted apart, as superseded."""
    # (agent, address, endpoint) -> [(t, came)] in time order
    index = {}
    for a in sample:
        for t, address, came, went in a["ep_log"]:
            for e in came:
                index.setdefault((a["index"], address, e), []).append((t, True))
            for e in went:
                index.setdefault((a["index"], address, e), []).append((t, False))
    callers = {}  # address -> sampled agents that call it
    for a in sample:
        for address in calls[a["node"]]:
            callers.setdefault(address, []).append(a["index"])
    near = set()  # indexes of the ops with another op on the same pod within SUPERSEDED_S
    last_of_pod = {}
    for k, o in enumerate(ops):
        j = last_of_pod.get(o["pod"])
        if j is not None and o["rv"] in emitted and ops[j]["rv"] in emitted \
                and emitted[o["rv"]] - emitted[ops[j]["rv"]] < SUPERSEDED_S:
            near.update((j, k))
        last_of_pod[o["pod"]] = k
    direction = {"create": True, "ready": True, "unready": False, "delete": False}
    every, each, pairs, seen, not_emitted, superseded, missed = [], [], 0, 0, 0, 0, []
    for k, o in enumerate(ops):
        if o["kind"] == "delete" and not o["was_ready"]:
            continue  # an unready endpoint is no Service endpoint: nothing changes
        came = direction[o["kind"]]
        te = emitted.get(o["rv"])
        i = cluster.service_index[(o["ns"], o["svc"])]
        ts = []
        for _, port, target in cluster.services[i][2]:
            address, endpoint = "%s:%d" % (cluster.cluster_ip(i), port), "%s:%d" % (o["ip"], target)
            for agent in callers.get(address, ()):
                pairs += 1
                if te is None:
                    not_emitted += 1
                    continue
                hit = next((t for t, c in index.get((agent, address, endpoint), ()) if c == came and t >= te), None)
                if hit is None:
                    ts.append(None)
                    if k in near:
                        superseded += 1
                    else:
                        missed.append({"kind": o["kind"], "pod": o["pod"], "agent": agent, "address": address,
                                       "endpoint": endpoint, "pod_event_t": te,
                                       "agent_saw": index.get((agent, address, endpoint), [])})
                    continue
                seen += 1
                ts.append(hit - te)
                each.append(hit - te)
        if ts and None not in ts:
            every.append(max(ts))
    return {"every_calling_sampled_agent": summary(every, 1000), "each": summary(each, 1000),
            "pairs": pairs, "seen": seen, "superseded": superseded, "not_emitted": not_emitted,
            "missed": len(missed), "missed_samples": missed[:10],
            "seen_fraction": seen / pairs if pairs else None}


def on_demand_figures(args, cluster, logs, calls):
    """Want latency (Want sent -> the stream message bringing the address's
    entry, or listing it unresolved), its round trip, and whether each agent
    ends holding what it asked for: the entries of its calls whose Service
    has a ready endpoint at the end, the others as unresolved (a Service
    without one has no identity to expect, so no entry), nothing else, and
    the on_demand_destinations flag as asked."""
    on_demand = args.destinations == "on_demand"
    resolvable = set()  # Service addresses with a ready endpoint now
    for p in cluster.pods.values():
        if p["ready"]:
            i = cluster.service_index[(p["ns"], p["svc"])]
            resolvable.update("%s:%d" % (cluster.cluster_ip(i), port) for _, port, _ in cluster.services[i][2])
    to_entry, round_trip, mismatch, unresolved = [], [], [], 0
    for a in logs.values():
        for sent, answered, batch, _ in a["want_log"]:
            round_trip.append(answered - sent)
            to_entry.extend(a["entry_t"][x] - sent for x in batch if x in a["entry_t"])
        if a["on_demand_held"] != on_demand:
            mismatch.append("%s: on_demand_destinations %s" % (a["node"], a["on_demand_held"]))
        if on_demand:
            held, asked, unres = set(a["dests_now"]), set(calls[a["node"]]), set(a["unresolved_now"])
            unresolved += len(unres)
            if held != asked & resolvable or unres != asked - resolvable:
                mismatch.append("%s: %d asked (%d of them without a ready endpoint), holds %d (%d not asked, "
                                "%d missing), %d unresolved (%d wrongly)"
                                % (a["node"], len(asked), len(asked - resolvable), len(held), len(held - asked),
                                   len(asked & resolvable - held), len(unres), len(unres - (asked - resolvable))))
    return {"want_to_entry_ms": summary(to_entry, 1000), "want_round_trip_ms": summary(round_trip, 1000),
            "want_calls": len(round_trip), "unresolved_at_end": unresolved,
            "mismatched_agents": len(mismatch), "mismatch_samples": mismatch[:5]}


# ---- the report ---------------------------------------------------------------------


def fmt_ms(s):
    return "p50 %s, p99 %s, max %s ms (n=%d)" % tuple(
        ["-" if s[k] is None else "%.0f" % s[k] for k in ("p50", "p99", "max")] + [s["n"]])


def human(n):
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return ("%.0f %s" if unit == "B" else "%.1f %s") % (n, unit)
        n /= 1000.0


def report(r):
    p, m, a = r["params"], r.get("mtls_ca", {}), r.get("agents", {})
    mach = r["machine"]
    lines = [
        "== mtls-ca at scale: %d pods, %d nodes, %d services; %g pod events/s for %g s; deltas %s;"
        " destinations %s" % (p["pods"], p["nodes"], p["services"], p["rate"], p["seconds"], p["deltas"],
                              p["destinations"]),
        "machine: %d CPUs (%s), load average at start %s, during churn %.1f median (max %.1f)"
        % (mach["cpus"], mach["cpu_model"], " ".join(map(str, mach["loadavg_at_start"])),
           mach["loadavg_during_churn"]["p50"] or 0, mach["loadavg_during_churn"]["max"] or 0),
        "bench's own CPU during churn: stand-in %.0f%%, node agents %.0f%% of one core"
        % (r["bench_cpu_pct_churn"]["standin"], r["bench_cpu_pct_churn"]["agents"]),
        "stages: stand-in up %.1f s, mtls-ca synced %.1f s, all agents' first state %.2f s, drain %.1f s"
        % (r["stages"]["standin_start_s"], r["stages"]["mtls_ca_sync_s"], r["stages"]["all_first_states_s"],
           r["stages"]["drain_s"]),
        "",
        "mtls-ca",
        "  CPU during churn       %.0f%% of one core (with drain %.0f%%); idle before churn %.1f%%;"
        " runnable but waiting for a CPU %.0f%% of the churn"
        % (m["cpu_pct_churn"], m["cpu_pct_churn_and_drain"], r["steady"]["cpu_pct"], m["runqueue_wait_pct_churn"]),
        "  CPU per round          %.1f ms; per snapshot queued %.2f ms"
        % (m["rounds"]["cpu_ms_per_round"] or 0, m["rounds"]["cpu_ms_per_snapshot_sent"] or 0),
        "  RSS                    %.1f MB steady, %.1f MB max during churn, VmHWM %.1f MB"
        % (m["rss_steady_kb"] / 1e3, (m["rss_max_during_churn_kb"] or 0) / 1e3, m["vm_hwm_kb"] / 1e3),
        "  rounds                 %d (%.1f/s), sent to %.0f streams on average; shared part %s, %s cluster destinations"
        % (m["rounds"]["count"], m["rounds"]["per_second"], m["rounds"]["sent_streams_mean"],
           human(m["rounds"]["shared_bytes_last"]), m["rounds"]["cluster_destinations_last"]),
        "  sent on the wire       %s during churn (TCP, TLS and HTTP/2 included) = %s per agent per second"
        % (human(m["tcp_bytes_sent_churn"]), human(m["tcp_bytes_sent_churn"] / p["nodes"] / r["churn"]["seconds"])),
        "",
        "node agents (%d)" % a["reporting"],
        "  first state            %s median, %s max; open -> first snapshot p50 %.0f ms, max %.0f ms"
        % (human(a["bytes"]["first_state"]["p50"]), human(a["bytes"]["first_state"]["max"]),
           r["first_state"]["open_to_first_s"]["p50"] * 1000, r["first_state"]["open_to_first_s"]["max"] * 1000),
        "  per message in churn   %s median, %s p99 (%d messages, %d of them deltas)"
        % (human(a["bytes"]["per_message_during_churn"]["p50"]), human(a["bytes"]["per_message_during_churn"]["p99"]),
           a["bytes"]["per_message_during_churn"]["n"], a["bytes"]["deltas_during_churn"]),
        "  per agent per second   %s median, %s max; %.1f messages/s median"
        % (human(a["bytes"]["bytes_per_agent_per_s"]["p50"]), human(a["bytes"]["bytes_per_agent_per_s"]["max"]),
           a["bytes"]["messages_per_agent_per_s"]["p50"] or 0),
        "  calls                  %d Service addresses per node median (%d-%d), %d calls per pod"
        % (r["calls"]["per_node"]["p50"], r["calls"]["per_node_min"], r["calls"]["per_node"]["max"],
           r["calls"]["per_pod"]),
    ] + ([
        "  state before churn     %s median, %s max (first state + what Want brought)"
        % (human(a["bytes"]["state_before_churn"]["p50"]), human(a["bytes"]["state_before_churn"]["max"])),
        "  Want                   %d calls (%d addresses at open, %d with Want, %d a call), all done"
        " %.2f s after the agents started; mtls-ca CPU for first states and Want %.2f s"
        % (a["on_demand"]["want_calls"], r["calls"]["asked_at_open"], r["calls"]["asked_with_want"],
           p["want_batch"], r["wants_stage"]["seconds"], r["wants_stage"]["mtls_ca_cpu_s"]),
        "  Want -> entry          " + fmt_ms(a["on_demand"]["want_to_entry_ms"]),
        "  Want round trip        " + fmt_ms(a["on_demand"]["want_round_trip_ms"]),
        "  Want in mtls-ca        " + fmt_ms(r["wants_stage"]["mtls_ca_want_ms"]) + " (its access log)",
    ] if p["destinations"] == "on_demand" else []) + [
        "",
        "churn: %d events in %.1f s (%.1f/s; %s), driver at most %.0f ms late"
        % (r["churn"]["events"], r["churn"]["seconds"], r["churn"]["rate_achieved"],
           ", ".join("%d %s" % (v, k) for k, v in r["churn"]["kinds"].items()), r["churn"]["driver_max_late_s"] * 1000),
        "event -> agent of the pod's node (pod in / out of its node_workloads):",
        "  all                    " + fmt_ms(a["event_to_agent_ms"]["all"]),
        "  creations              " + fmt_ms(a["event_to_agent_ms"]["create"]),
        "  deletions              " + fmt_ms(a["event_to_agent_ms"]["delete"]),
        "  seen                   %d of %d (%.1f%%); not emitted %d; wrong node %d"
        % (a["events_seen"], a["events_visible"], 100.0 * (a["events_seen_fraction"] or 0), a["events_not_emitted"],
           a["misplaced_pods"]),
    ] + ([
        "pod IP destination -> %d sampled agents:" % a["destination_sample_agents"],
        "  all sampled agents     " + fmt_ms(a["pod_ip_to_sampled_agents_ms"]["every_sampled_agent"]),
        "  each agent             " + fmt_ms(a["pod_ip_to_sampled_agents_ms"]["each_agent"]),
    ] if a["pod_ip_to_sampled_agents_ms"] else [
        "pod IP destination: not measured (no agent asks for pod IPs with destinations on demand)",
    ]) + [
        "Service endpoint change (pod event, then its EndpointSlice's) -> the sampled agents whose pods call it:",
        "  all calling agents     " + fmt_ms(a["service_endpoints_to_callers_ms"]["every_calling_sampled_agent"]),
        "  each agent             " + fmt_ms(a["service_endpoints_to_callers_ms"]["each"]),
        "  seen                   %d of %d (agent, address) pairs; %d superseded (the pod changed"
        " within %g s of it), %d missed" % (a["service_endpoints_to_callers_ms"]["seen"],
                                      a["service_endpoints_to_callers_ms"]["pairs"],
                                      a["service_endpoints_to_callers_ms"]["superseded"], SUPERSEDED_S,
                                      a["service_endpoints_to_callers_ms"]["missed"]),
        "problems: %d agent problems, %d wrong-node snapshots, mtls-ca exit %s"
        % (a["problems"], a["wrong_node_snapshots"], r.get("mtls_ca_exit")),
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=10000)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--namespaces", type=int, default=4, help="meshed namespaces the services are spread over")
    ap.add_argument("--rate", type=float, default=50, help="pod events per second during churn")
    ap.add_argument("--seconds", type=float, default=60, help="how long the churn lasts")
    ap.add_argument("--mix", type=lambda s: [int(x) for x in s.split(",")], default=[2, 2, 1],
                    help="weights of creations, deletions, readiness flips (default 2,2,1)")
    ap.add_argument("--deltas", choices=("on", "off"), default="off",
                    help="ask for incremental snapshots (WatchRequest.accept_deltas)")
    ap.add_argument("--destinations", choices=("all", "on_demand"), default="all",
                    help="all: every agent gets every destination of the cluster; on_demand: each asks"
                    " (WatchRequest.on_demand_destinations, Want) for the Services its pods call")
    ap.add_argument("--calls-per-pod", type=int, default=3,
                    help="distinct Services each pod calls (a node's calls are the union over its pods)")
    ap.add_argument("--want-batch", type=int, default=10, help="addresses per Want call")
    ap.add_argument("--timeout-wants", type=float, default=300.0,
                    help="longest wait for every agent's Want calls and their entries")
    ap.add_argument("--workers", type=int, default=4, help="processes the node agents are spread over")
    ap.add_argument("--dest-sample", type=int, default=10,
                    help="agents that also track every destination (the pod-IP latency) and the"
                    " endpoints of the Services their pods call")
    ap.add_argument("--mesh-poll-ms", type=int, default=MESH_POLL_MS,
                    help="mtls-ca's mesh_poll_ms (also how soon a stream with a full queue is retried)")
    ap.add_argument("--watch-timeout-s", type=int, default=300, help="mtls-ca's kubernetes.watch_timeout_s")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--settle-s", type=float, default=2.0, help="pause before the steady-state sample")
    ap.add_argument("--drain-s", type=float, default=60.0, help="longest wait for the agents after the churn")
    ap.add_argument("--quiet-s", type=float, default=3.0, help="the drain ends after this long without a message")
    ap.add_argument("--max-late-s", type=float, default=30.0, help="stop the churn when the driver is this late")
    ap.add_argument("--timeout-sync", type=float, default=600.0)
    ap.add_argument("--timeout-first", type=float, default=300.0)
    ap.add_argument("--mtls-ca", help="this binary instead of building //controlplane:mtls-ca")
    ap.add_argument("--workdir", default=str(REPO / "bench" / "out" / "k8s_scale"))
    ap.add_argument("--json", help="write the results here (default WORKDIR/result.json)")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    json_path = Path(args.json or Path(args.workdir) / "result.json").resolve()
    try:
        result = run(args)
    except Exception as e:  # a clear last line, then the exit status says it
        log("FAILED: %s: %s" % (type(e).__name__, e))
        return 1
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1))
    print(report(result))
    print("json: %s" % json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
