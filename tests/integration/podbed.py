"""A simulated Kubernetes node for test_pods.py, and what every namespace
bed shares (NetnsBed; nodebed.py builds the two-node bed on it).

Pods are network namespaces, each joined by a veth pair to a Linux bridge
living in a "node" namespace; every address is in a private /24 that exists
only inside the namespaces created here (nothing is routed anywhere else and
no namespace has a default route, so no packet can leave them):

    node      br0  10.233.77.1/24   (veth-ca, veth-frontend, ... enslaved)
    ca        eth0 10.233.77.10     mtls-ca on :15012
    frontend  eth0 10.233.77.11     mtlsd (UID 1337) + curl as the app
    backend   eth0 10.233.77.12     mtlsd (UID 1337) + python3 -m http.server 8080
    other     eth0 10.233.77.13     mtlsd (UID 1337) + curl as the app

Each agent gets its certificate from mtls-ca (token minted with
certs/mint-token.py) and its redirection from `mtlsd init-iptables --apply`
run inside its pod. Every process is stopped by PID, every namespace is
deleted by name, every wait is bounded.

Run as a script (`podbed.py capture IFACE OUT`) it is a tiny packet capture
(AF_PACKET, no tcpdump needed): it writes every frame seen on IFACE to OUT,
prints "ready" once the socket is bound, and stops on SIGTERM (or after
CAPTURE_MAX_S).
"""
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from conftest import assert_no_sanitizer_report

SUBNET = "10.233.77"
PREFIX = 24
NODE_IP = f"{SUBNET}.1"
POD_HOSTS = {"ca": 10, "frontend": 11, "backend": 12, "other": 13}
AGENT_PODS = ("frontend", "backend", "other")
PROXY_UID = 1337
CA_PORT = 15012
INBOUND_PORT = 15006
OUTBOUND_PORT = 15001
APP_PORT = 8080
TRUST_DOMAIN = "example.org"
CA_ID = f"spiffe://{TRUST_DOMAIN}/ns/mtls-system/sa/mtls-ca"
CAPTURE_MAX_S = 60

REPO = Path(__file__).resolve().parents[2]
MKPKI = REPO / "certs" / "mkpki.sh"
MINT_TOKEN = REPO / "certs" / "mint-token.py"
PY = "/usr/bin/python3"


def pod_ip(pod):
    return f"{SUBNET}.{POD_HOSTS[pod]}"


def sa_id(name):
    return f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{name}"


def unavailable(bridge=True):
    """Why a namespace bed cannot be built here (None if it can). |bridge|:
    whether the bed needs a Linux bridge (the pod bed does; the node bed
    routes instead, and needs IP forwarding in a namespace)."""
    if os.geteuid() != 0:
        return "needs root for network namespaces and iptables"
    for tool in ("ip", "iptables", "iptables-save", "iptables-restore", "setpriv", "curl", "ss"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = "mtlsd-probe-" + uuid.uuid4().hex[:8]
    res = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                         timeout=30)
    if res.returncode != 0:
        return f"cannot create a network namespace here (`ip netns add`): {res.stderr.strip()}"
    try:
        res = subprocess.run(["ip", "netns", "exec", probe, "iptables", "-t", "nat", "-S"],
                             capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            return f"iptables (nat table) does not work in a namespace: {res.stderr.strip()}"
        if bridge:
            res = subprocess.run(["ip", "-n", probe, "link", "add", "probe-br", "type", "bridge"],
                                 capture_output=True, text=True, timeout=30)
            if res.returncode != 0:
                return f"cannot create a Linux bridge: {res.stderr.strip()}"
        else:
            res = subprocess.run(["ip", "netns", "exec", probe] + IP_FORWARD_ON,
                                 capture_output=True, text=True, timeout=30)
            if res.returncode != 0:
                return f"cannot enable IP forwarding in a namespace: {res.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "delete", probe], capture_output=True, timeout=30)
    return None


# Run inside a namespace: /proc/sys/net is the namespace's own.
IP_FORWARD_ON = ["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]


def require_mtls_ca_bin():
    """The control plane binary (MTLS_CA_BIN), or the test fails saying how to build it."""
    import pytest  # not at the top: the capture script (below) runs without it
    binary = os.environ.get("MTLS_CA_BIN") or str(REPO / "bazel-bin" / "controlplane" / "mtls-ca")
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        pytest.fail(f"control plane binary not found: {binary} (build it with "
                    f"`bazel build //controlplane:mtls-ca` or set MTLS_CA_BIN)")
    return binary


def wait_until(predicate, what, timeout):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(0.05)


def write_json(path, doc, mode=None):
    """|doc| as JSON, which is YAML, for configs the agent and mtls-ca read."""
    path = Path(path)
    path.write_text(json.dumps(doc, indent=1))
    if mode is not None:
        os.chmod(path, mode)


def _matches(line, match):
    """Access-log field matching: equal values, or a predicate on the field."""
    return all(v(line.get(k)) if callable(v) else line.get(k) == v for k, v in match.items())


class NetnsBed:
    """What every namespace bed shares: named namespaces and veths, a dev PKI
    and mtls-ca, agents as PROXY_UID behind `mtlsd init-iptables`, their logs,
    packet captures. `close()` undoes everything it did (idempotent).

    Subclasses build the network and write each agent's config
    (write_agent_config)."""

    def __init__(self, procs, mtlsd_bin, mtls_ca_bin, wait=30.0, dir_prefix="mtlsd-bed-"):
        self.procs, self.mtlsd, self.mtls_ca, self.wait = procs, mtlsd_bin, mtls_ca_bin, wait
        self.tag = uuid.uuid4().hex[:6]
        self.namespaces = []  # created, in order
        self.agents = {}      # pod (or node) -> Popen
        self.others = []      # mtls-ca, the apps: Popen
        self.stops = {}       # pod -> (exit status, needed SIGKILL)
        self.dir = Path(tempfile.mkdtemp(prefix=dir_prefix))
        os.chmod(self.dir, 0o755)
        os.chown(self.dir, PROXY_UID, PROXY_UID)
        self.ca_dir = self.dir / "ca"  # mtls-ca's config, files and logs: root only
        self.ca_dir.mkdir()
        os.chmod(self.ca_dir, 0o700)

    # ---- names, commands

    def ns(self, pod):
        """Namespace names carry a per-run tag, so two runs never collide."""
        return f"mtlsd-{self.tag}-{pod}"

    def run(self, pod, *args, check=True, timeout=None, **kw):
        res = subprocess.run(["ip", "netns", "exec", self.ns(pod)] + [str(a) for a in args],
                             capture_output=True, text=True, timeout=timeout or self.wait, **kw)
        if check and res.returncode != 0:
            raise AssertionError(f"in {pod}: {' '.join(map(str, args))} -> {res.returncode}\n"
                                 f"{res.stdout}\n{res.stderr}")
        return res

    def spawn(self, pod, args, **kw):
        # `ip netns exec` and setpriv both exec(): the PID is the program's.
        return self.procs.spawn(["ip", "netns", "exec", self.ns(pod)] + list(args), **kw)

    def _ip(self, *args):
        res = subprocess.run(["ip"] + [str(a) for a in args], capture_output=True, text=True,
                             timeout=self.wait)
        if res.returncode != 0:
            raise AssertionError(f"ip {' '.join(map(str, args))}: {res.stderr.strip()}")

    # ---- network

    def add_namespace(self, pod):
        self._ip("netns", "add", self.ns(pod))
        self.namespaces.append(self.ns(pod))
        self._ip("-n", self.ns(pod), "link", "set", "lo", "up")

    def add_veth(self, pod_a, name_a, pod_b, name_b, addr_a=None, addr_b=None):
        """A veth pair between two of our namespaces (created inside them: the
        host's namespace never sees either end), up, with optional addresses
        ("ip/prefix")."""
        self._ip("-n", self.ns(pod_a), "link", "add", name_a, "type", "veth", "peer", "name",
                 name_b, "netns", self.ns(pod_b))
        for pod, name, address in ((pod_a, name_a, addr_a), (pod_b, name_b, addr_b)):
            if address:
                self._ip("-n", self.ns(pod), "addr", "add", address, "dev", name)
            self._ip("-n", self.ns(pod), "link", "set", name, "up")

    @staticmethod
    def veth(pod):
        return f"veth-{pod}"[:15]

    # ---- control plane

    def make_pki(self):
        """certs/mkpki.sh --control-plane; the root goes where the agents (UID
        PROXY_UID) can read it, as the only file of the PKI they may."""
        pki = self.dir / "pki"
        res = subprocess.run(["bash", str(MKPKI), "--out", str(pki), "--control-plane"],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, f"mkpki.sh --control-plane failed:\n{res.stdout}{res.stderr}"
        self.pki = pki
        shutil.copy(pki / "root.pem", self.dir / "root.pem")
        os.chmod(self.dir / "root.pem", 0o644)
        return pki

    def mint_token(self, name, namespace, service_account, node=None):
        """A token for system:serviceaccount:NAMESPACE:SERVICE_ACCOUNT (bound to
        |node| when given), readable by PROXY_UID only, at <dir>/<name>.token."""
        args = [PY, str(MINT_TOKEN), "--key", str(self.pki / "tokens" / "signer.key"),
                "--namespace", namespace, "--service-account", service_account]
        if node is not None:
            args += ["--node", node]
        res = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, f"mint-token.py failed: {res.stderr}"
        token = self.dir / f"{name}.token"
        token.write_text(res.stdout)
        os.chown(token, PROXY_UID, PROXY_UID)
        os.chmod(token, 0o600)
        return token

    def start_mtls_ca(self, pod, ip, extra):
        """mtls-ca in |pod|'s namespace on ip:CA_PORT, with the bed's PKI and
        |extra| keys (mesh_file, node_agents, ...) in its config; files go to
        <dir>/ca (ca_dir)."""
        pki = self.pki
        self.ca_address = f"{ip}:{CA_PORT}"
        config = {
            "trust_domain": TRUST_DOMAIN,
            "listen": self.ca_address,
            "tls": {"cert_file": str(pki / "control-plane" / "chain.pem"),
                    "key_file": str(pki / "control-plane" / "key.pem")},
            "signer": {"cert_file": str(pki / "intermediate.pem"),
                       "key_file": str(pki / "intermediate.key")},
            "roots_file": str(pki / "root.pem"),
            "max_cert_ttl_s": 3600,
            "tokens": {"issuer": "https://kubernetes.default.svc", "audience": "istio-ca",
                       "keys_file": str(pki / "tokens" / "signer.pub.pem")},
            "access_log": str(self.ca_dir / "access.log"),
        }
        config.update(extra)
        write_json(self.ca_dir / "ca.yaml", config)
        self.ca_pod = pod
        self.ca_stderr = self.ca_dir / "stderr.log"
        self.spawn_mtls_ca()

    def spawn_mtls_ca(self):
        """Starts mtls-ca (again, after it was stopped or killed) with the
        config start_mtls_ca wrote; its stderr is appended to ca_stderr, so
        the log of every run is kept. Returns once it listens."""
        listening = f"listening on {self.ca_address}"
        starts = self.ca_log().count(listening)
        with open(self.ca_stderr, "ab") as err:
            proc = self.spawn(self.ca_pod, [self.mtls_ca, "--config", self.ca_dir / "ca.yaml"],
                              stdout=subprocess.DEVNULL, stderr=err)
        self.others.append(proc)
        self.ca_proc = proc

        def up():
            if proc.poll() is not None:
                raise AssertionError(f"mtls-ca exited with {proc.returncode}:\n"
                                     f"{self.ca_log()[-3000:]}")
            return self.ca_log().count(listening) > starts
        wait_until(up, "mtls-ca to listen", self.wait)
        return proc

    def ca_log(self):
        """mtls-ca's stderr, every run of it."""
        try:
            return self.ca_stderr.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def ca_access_lines(self):
        try:
            data = (self.ca_dir / "access.log").read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [json.loads(l) for l in data.split("\n")[:-1] if l.strip()]

    # ---- agents

    def config_path(self, pod):
        return self.dir / f"{pod}.yaml"

    def access_log_path(self, pod):
        return self.dir / f"{pod}.access.log"

    def stderr_path(self, pod):
        return self.dir / f"{pod}.stderr"

    def write_agent_config(self, pod):
        raise NotImplementedError

    def write_config(self, pod, cfg):
        write_json(self.config_path(pod), cfg, 0o644)  # read by the agent (PROXY_UID)

    def init_iptables(self, pod, action):
        return self.run(pod, self.mtlsd, "init-iptables", "--config", self.config_path(pod),
                        action, check=False)

    def start_agent(self, pod):
        self.write_agent_config(pod)
        res = self.init_iptables(pod, "--apply")  # like istio-init: before the agent
        assert res.returncode == 0, f"init-iptables --apply in {pod}: {res.stderr}"
        with open(self.stderr_path(pod), "wb") as err:
            self.agents[pod] = self.spawn(pod, as_uid(PROXY_UID, [
                self.mtlsd, "--config", self.config_path(pod)]),
                stdout=subprocess.DEVNULL, stderr=err)

    def agent_stderr(self, pod):
        try:
            return self.stderr_path(pod).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def check_agent_alive(self, pod):
        proc = self.agents[pod]
        if proc.poll() is not None:
            raise AssertionError(f"agent in {pod} exited with {proc.returncode}:\n"
                                 f"{self.agent_stderr(pod)[-3000:]}")

    def listening(self, pod, port):
        out = self.run(pod, "ss", "-Hltn", f"sport = :{port}", check=False).stdout
        return "LISTEN" in out

    # ---- what the tests look at

    def curl(self, pod, url, *extra, timeout=10, uid=None):
        """curl in |pod| (as |uid| when given, else root); never raises on failure."""
        argv = ["curl", "-sS", "--max-time", str(timeout), *extra, url]
        if uid is not None:
            argv = as_uid(uid, argv)
        return self.run(pod, *argv, check=False, timeout=timeout + 10)

    def log_lines(self, pod):
        try:
            data = self.access_log_path(pod).read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [json.loads(l) for l in data.split("\n")[:-1] if l.strip()]

    def find_log(self, pod, **match):
        for line in self.log_lines(pod):
            if _matches(line, match):
                return line
        return None

    def wait_log(self, pod, **match):
        """The first access-log line (written at close) whose fields equal
        |match| (or satisfy it, for a callable)."""
        try:
            return wait_until(lambda: self.find_log(pod, **match),
                              f"an access-log line in {pod} with {match}", self.wait)
        except AssertionError as e:
            raise AssertionError(f"{e}\nlog lines: {self.log_lines(pod)}") from None

    def capture(self, pod, iface):
        """Starts an AF_PACKET capture of |iface| in |pod|'s namespace; returns
        a handle for stop_capture()."""
        out = self.dir / f"capture-{pod}-{iface}-{uuid.uuid4().hex[:6]}.bin"
        proc = self.spawn(pod, [PY, __file__, "capture", iface, out], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
        line = _readline_bounded(proc.stdout, self.wait)
        if line.strip() != "ready":
            proc.kill()
            proc.wait(timeout=self.wait)
            raise AssertionError(f"capture on {pod}/{iface} did not start: {line!r} "
                                 f"{proc.stderr.read()}")
        return proc, out

    def stop_capture(self, handle):
        proc, out = handle
        self.procs.stop(proc)
        return read_frames(out)

    # ---- teardown

    def stop_agents(self):
        """SIGTERM by PID, bounded wait (then SIGKILL); records the outcome."""
        for pod, proc in self.agents.items():
            if pod not in self.stops:
                self.stops[pod] = self.procs.stop(proc)
        return self.stops

    def assert_agents_stopped_cleanly(self):
        """Stops every agent: each must exit 0 by itself, with no sanitizer
        report. Returns the namespaces whose agents stopped."""
        stops = self.stop_agents()
        for ns, (status, killed) in stops.items():
            assert not killed and status == 0, \
                f"agent in {ns}: {'killed' if killed else f'exit {status}'}\n" \
                f"{self.agent_stderr(ns)[-3000:]}"
            assert_no_sanitizer_report(self.agent_stderr(ns), f"agent in {ns}")
        return set(stops)

    def remove_rules(self, ns):
        """`mtlsd init-iptables --remove` in |ns|, which must succeed without a
        sanitizer report: the nat table (iptables-save) before and after."""
        before = self.run(ns, "iptables-save", "-t", "nat").stdout
        res = self.init_iptables(ns, "--remove")
        assert_no_sanitizer_report(res.stderr, f"init-iptables --remove in {ns}")
        assert res.returncode == 0, f"{ns}: {res.stderr}"
        return before, self.run(ns, "iptables-save", "-t", "nat").stdout

    def close(self):
        try:
            self.stop_agents()
            for proc in reversed(self.others):
                self.procs.stop(proc)
            self.procs.stop_all()
        finally:
            for name in reversed(self.namespaces):
                subprocess.run(["ip", "netns", "delete", name], capture_output=True,
                               timeout=self.wait)
            self.namespaces.clear()
            shutil.rmtree(self.dir, ignore_errors=True)


def as_uid(uid, argv):
    """|argv| run as |uid|:|uid| with no supplementary groups (setpriv exec()s)."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] + list(argv)


class PodBed(NetnsBed):
    """Builds the node; `close()` undoes everything it did (idempotent)."""

    def __init__(self, procs, mtlsd_bin, mtls_ca_bin, wait=30.0):
        super().__init__(procs, mtlsd_bin, mtls_ca_bin, wait, dir_prefix="mtlsd-pods-")

    # ---- network

    def build_network(self):
        for pod in ("node",) + tuple(POD_HOSTS):
            self.add_namespace(pod)
        node = self.ns("node")
        self._ip("-n", node, "link", "add", "br0", "type", "bridge")
        self._ip("-n", node, "addr", "add", f"{NODE_IP}/{PREFIX}", "dev", "br0")
        self._ip("-n", node, "link", "set", "br0", "up")
        for pod in POD_HOSTS:
            self.add_veth("node", self.veth(pod), pod, "eth0", addr_b=f"{pod_ip(pod)}/{PREFIX}")
            self._ip("-n", node, "link", "set", self.veth(pod), "master", "br0")
        # The /24 is on-link everywhere; no default route is needed (or wanted).

    # ---- control plane

    def start_control_plane(self):
        pki = self.make_pki()
        # What the agents read (as UID 1337): the root (control plane's and
        # the mesh's trust anchor) and their own token. Nothing else.
        for sa in AGENT_PODS:
            self.mint_token(sa, "default", sa)
        mesh = {
            "trust_bundles": [{"trust_domain": TRUST_DOMAIN,
                               "roots_files": [str(pki / "root.pem")]}],
            "policy": {"rules": [{"name": "frontend-may-call-backend", "action": "allow",
                                  "ports": [APP_PORT], "from": [{"id": sa_id("frontend")}]}]},
            "destinations": [{"address": f"{pod_ip('backend')}:{APP_PORT}",
                              "spiffe_id": sa_id("backend")}],
        }
        write_json(self.ca_dir / "mesh.yaml", mesh)
        self.start_mtls_ca("ca", pod_ip("ca"), {"mesh_file": str(self.ca_dir / "mesh.yaml")})

    # ---- pods

    def write_agent_config(self, pod):
        self.write_config(pod, {
            "trust_domain": TRUST_DOMAIN,
            "workers": 1,
            "access_log": str(self.access_log_path(pod)),
            "identity": {"spiffe_id": sa_id(pod)},
            "control_plane": {
                "address": f"{pod_ip('ca')}:{CA_PORT}",
                "root_file": str(self.dir / "root.pem"),
                "spiffe_id": CA_ID,
                "token_file": str(self.dir / f"{pod}.token"),
                "cert_ttl_s": 600,
            },
            "inbound": {"listeners": [{"address": f"0.0.0.0:{INBOUND_PORT}"}]},
            "outbound": {"listeners": [{"address": f"0.0.0.0:{OUTBOUND_PORT}"}]},
            "interception": {
                "proxy_uid": PROXY_UID,
                "proxy_gid": PROXY_UID,
                "exclude_outbound_cidrs": [f"{pod_ip('ca')}/32"],
            },
        })

    def wait_agent_ready(self, pod):
        def ready():
            self.check_agent_alive(pod)
            text = self.agent_stderr(pod)
            # published to the workers with the control plane's mesh (policy,
            # destinations), not only the static one
            return (re.search(r"identity ready: .* mesh version \d", text)
                    and self.listening(pod, INBOUND_PORT) and self.listening(pod, OUTBOUND_PORT))
        wait_until(ready, f"the agent in {pod} to have an identity, the mesh config and "
                          f"its listeners", self.wait)

    def start_app(self):
        www = self.dir / "www"
        www.mkdir()
        (www / "index.html").write_text("hello from the backend pod\n")
        self.app_log = self.dir / "app.log"
        with open(self.app_log, "wb") as log:
            self.app = self.spawn("backend", [PY, "-m", "http.server", str(APP_PORT), "--bind",
                                              "0.0.0.0", "--directory", www],
                                  stdout=log, stderr=subprocess.STDOUT)
        self.others.append(self.app)
        wait_until(lambda: self.listening("backend", APP_PORT), "the backend app", self.wait)

    def start(self):
        self.build_network()
        self.start_control_plane()
        for pod in AGENT_PODS:
            self.start_agent(pod)
        self.start_app()
        for pod in AGENT_PODS:
            self.wait_agent_ready(pod)
        return self


def _readline_bounded(stream, timeout):
    import select
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else ""


# ---- frames

def read_frames(path):
    """The frames a capture wrote: a list of bytes."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    frames, i = [], 0
    while i + 4 <= len(data):
        (n,) = struct.unpack_from("!I", data, i)
        frames.append(data[i + 4:i + 4 + n])
        i += 4 + n
    return frames


def assert_tls_only(frames, dst_ip, dst_port, marker, where):
    """The capture |frames| holds segments to dst_ip:dst_port, never the
    plaintext |marker|, and the first payload to that port is a TLS
    handshake record."""
    to_dst = [s for s in tcp_segments(frames) if s[1] == dst_ip and s[3] == dst_port]
    assert to_dst, f"no packet to {dst_ip}:{dst_port} {where} ({len(frames)} frames)"
    assert not any(marker.encode() in f for f in frames), f"plaintext marker {where}"
    first = next(s[4] for s in to_dst if s[4])
    assert first[:1] == b"\x16" and first[1:2] == b"\x03", \
        f"first bytes to port {dst_port} are not a TLS handshake record: {first[:16]!r}"


def tcp_segments(frames):
    """(src ip, dst ip, src port, dst port, payload) of each IPv4/TCP frame
    (Ethernet framing, which is also what AF_PACKET shows on lo)."""
    out = []
    for f in frames:
        if len(f) < 14 + 20 or struct.unpack_from("!H", f, 12)[0] != 0x0800:
            continue
        ip = f[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 6 or len(ip) < ihl + 20:
            continue
        total = struct.unpack_from("!H", ip, 2)[0]
        tcp = ip[ihl:total]
        sport, dport = struct.unpack_from("!HH", tcp, 0)
        doff = (tcp[12] >> 4) * 4
        out.append((socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20]), sport, dport,
                    bytes(tcp[doff:])))
    return out


def _capture_main(iface, out):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
    s.bind((iface, 0))
    s.settimeout(0.1)
    deadline = time.monotonic() + CAPTURE_MAX_S
    with open(out, "wb") as f:
        print("ready", flush=True)
        while not stop and time.monotonic() < deadline:
            try:
                frame = s.recv(65535)
            except socket.timeout:
                continue
            except InterruptedError:
                continue
            f.write(struct.pack("!I", len(frame)) + frame)
            f.flush()
        # drain what is already queued
        s.setblocking(False)
        while True:
            try:
                frame = s.recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            f.write(struct.pack("!I", len(frame)) + frame)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "capture":
        sys.exit(_capture_main(sys.argv[2], sys.argv[3]))
    sys.exit("usage: podbed.py capture IFACE OUTFILE")
