#!/usr/bin/python3
"""Issue 11's figures for mtlsd, nginx stream, HAProxy and stunnel, in one run.

Route for every proxy, one worker/thread each, all on 127.0.0.1:

  client -> proxy A (plain) -> mutual TLS 1.3 -> proxy B -> backend
            backend = nginx HTTP (100 B and 1 KB files), iperf3 -s, or an echo server

Each pair is started, checked (data integrity, no-certificate client refused,
mutual TLS in its own logs) and measured in turn; the peers alternate, the
order rotating each repetition. Medians of --reps runs, the ratio mtlsd / best
peer for each figure, a text and a markdown table, JSON, and gnuplot charts
(the table and the burst memory curve) in bench/out/compare/.

  sudo bench/compare.py                  # full run, about 20 minutes on 2 cores
  sudo bench/compare.py --quick          # 1 repetition, short loads: smoke, ~2 minutes
  sudo bench/compare.py --mtlsd PATH     # measure a given binary (or MTLSD_BIN=PATH)

Root is needed only to install missing Debian packages. Every load is bounded
in count and time, and only the processes this script started are stopped, by
PID. See bench/README.md, "Against nginx, HAProxy and stunnel".
"""
import argparse
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import loadgen  # noqa: E402
import memory  # noqa: E402  (open_held: bounded open-and-hold of many connections)

PY = "/usr/bin/python3"
HOST = "127.0.0.1"
HZ = os.sysconf("SC_CLK_TCK")
PEERS = ["mtlsd", "nginx", "haproxy", "stunnel"]
LABELS = {"mtlsd": "mtlsd", "nginx": "nginx stream", "haproxy": "HAProxy", "stunnel": "stunnel"}
FRONT_ID = "spiffe://example.org/ns/default/sa/frontend"
BACK_ID = "spiffe://example.org/ns/default/sa/backend"
NOFILE = 20000                  # the machine's hard limit per process
# Connection limits are sized per phase, because nginx and HAProxy allocate
# their connection tables up front (a limit sized for the burst would add ~8 MB
# to their idle RSS): the held connections plus headroom while measuring, the
# burst plus headroom for the burst. Each proxy gets the same limit.
LIMIT_HEADROOM = 512
CIPHERSUITE = "TLS_AES_128_GCM_SHA256"  # what BoringSSL (mtlsd) picks on AES-NI hardware
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
DEBIAN_PACKAGES = {  # command or file -> package
    "nginx": "nginx", NGINX_STREAM_MODULE: "libnginx-mod-stream", "haproxy": "haproxy",
    "stunnel": "stunnel4", "iperf3": "iperf3", "wrk": "wrk", "gnuplot": "gnuplot-nox",
    "openssl": "openssl", "ss": "iproute2"}
ISTIO = {"Envoy sidecar (Istio 1.24)": (0.20, 60), "ztunnel (Istio 1.24)": (0.06, 12)}
NO_RESUMPTION_KEY = "n/a (binary has no tls.session_resumption)"


class Fail(Exception):
    pass


def log(msg):
    print(f"== {msg}", file=sys.stderr, flush=True)


# --- processes ------------------------------------------------------------------------

class Procs:
    """Every process this script started; stop() and stop_all() touch only those."""

    def __init__(self, out):
        self.out = out
        self.live = []

    def start(self, name, argv, cwd=None):
        with open(os.path.join(self.out, name + ".log"), "w") as logf:
            p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, cwd=cwd,
                                 start_new_session=True)
        p.name = name
        self.live.append(p)
        return p

    def stop(self, *procs):
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p in self.live:
                self.live.remove(p)

    def stop_all(self):
        self.stop(*reversed(self.live))


def run(argv, timeout, **kw):
    """A bounded client: its output, or Fail with its stderr."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise Fail(f"{argv[0]} did not finish in {timeout} s")
    if r.returncode != 0:
        raise Fail(f"{' '.join(argv[:3])}... exited {r.returncode}: {r.stderr.strip()[-400:]}")
    return r.stdout


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as every listener here does
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def wait_listen(port, proc, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Fail(f"{proc.name} exited with {proc.returncode} during start-up; "
                       f"see {proc.name}.log in the output directory")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise Fail(f"{proc.name} does not listen on {port} after {timeout} s")


def cpu_ticks(pid):
    """utime + stime of the whole thread group (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def wait_grep(path, needle, timeout=3.0):
    """The first line of PATH containing NEEDLE, waiting a little for it to be written."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path, errors="replace") as f:
                for line in f:
                    if needle(line):
                        return line.strip()
        except OSError:
            pass
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


# --- the bed: PKI, backends, ports ---------------------------------------------------------

class Bed:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.out)
        os.makedirs(self.out, exist_ok=True)
        self.procs = Procs(self.out)
        self.pki = os.path.join(self.out, "pki")
        b = args.port_base
        self.iperf_port, self.echo_port, self.http_port = b + 1, b + 2, b + 3

    def ports(self, peer):
        """Proxy ports of one peer: A's plain listeners, B's TLS listeners."""
        b = self.args.port_base + 10 * (1 + PEERS.index(peer))
        return {"a_http": b, "a_iperf": b + 1, "a_echo": b + 2,
                "b_http": b + 3, "b_iperf": b + 4, "b_echo": b + 5}

    def check_ports(self):
        busy = [p for p in range(self.args.port_base, self.args.port_base + 60) if not port_free(p)]
        if busy:
            raise Fail(f"ports {busy} are in use; pick another --port-base")

    def make_pki(self):
        log("development PKI (certs/mkpki.sh: ECDSA P-256 leaves under an intermediate)")
        run([os.path.join(ROOT, "certs", "mkpki.sh"), "--out", self.pki, "--validity-minutes",
             "600", "frontend", "backend"], timeout=120)
        for w in ("frontend", "backend"):  # haproxy wants chain and key in one file
            path = os.path.join(self.out, f"{w}.haproxy.pem")
            with open(path, "w") as f:
                for part in ("chain.pem", "key.pem"):
                    with open(self.wl(w, part)) as src:
                        f.write(src.read())
            os.chmod(path, 0o600)

    def wl(self, workload, name):
        return os.path.join(self.pki, "workloads", workload, name)

    def start_backends(self):
        www = os.path.join(self.out, "www")
        os.makedirs(www, exist_ok=True)
        for name, size in (("100b", 100), ("1k", 1024)):
            with open(os.path.join(www, name), "wb") as f:
                f.write(b"x" * (size - 1) + b"\n")
        tmp = os.path.join(self.out, "nginx-tmp")
        os.makedirs(tmp, exist_ok=True)
        conf = os.path.join(self.out, "backend-http.conf")
        with open(conf, "w") as f:
            f.write(f"""worker_processes 1;
master_process off;
daemon off;
pid {self.out}/backend-http.pid;
error_log {self.out}/backend-http.err warn;
worker_rlimit_nofile {NOFILE};
events {{ worker_connections {NOFILE - 100}; }}
http {{
  access_log off;
  default_type application/octet-stream;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
  uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {{ listen {HOST}:{self.http_port} backlog=4096; root {www}; }}
}}
""")
        p = self.procs.start("backend-http", ["nginx", "-e", f"{self.out}/backend-http.err",
                                              "-c", conf, "-p", self.out])
        wait_listen(self.http_port, p)
        p = self.procs.start("backend-iperf3", ["iperf3", "-s", "-B", HOST, "-p", str(self.iperf_port)])
        wait_listen(self.iperf_port, p)
        p = self.procs.start("backend-echo", [PY, os.path.join(HERE, "loadgen.py"), "echo-server",
                                              "--port", str(self.echo_port), "--lifetime", "3600"])
        wait_listen(self.echo_port, p)


# --- the proxy pairs -----------------------------------------------------------------------
# Each writes A's and B's configuration for resumption on or off, starts B then A,
# and returns (A, B) Popen objects. Logs go to bench/out/compare/<peer>-<a|b>.*

def mtlsd_yaml(bed, role, ports, resumption, limit):
    common = f"""trust_domain: example.org
workers: 1
max_connections: {limit}
log_level: warn
access_log: {bed.out}/mtlsd-{role}.access.log
admin: {{address: "127.0.0.1:0"}}
identity:
  cert_file: {bed.wl('frontend' if role == 'a' else 'backend', 'chain.pem')}
  key_file: {bed.wl('frontend' if role == 'a' else 'backend', 'key.pem')}
trust_bundles:
  - trust_domain: example.org
    file: {bed.pki}/bundle.pem
"""
    if resumption is not None:
        common += f"tls:\n  session_resumption: {'true' if resumption else 'false'}\n"
    if role == "b":
        apps = (bed.http_port, bed.iperf_port, bed.echo_port)
        listeners = "".join(f"    - address: {HOST}:{ports[k]}\n      app_port: {a}\n"
                            for k, a in zip(("b_http", "b_iperf", "b_echo"), apps))
        return common + f"""inbound:
  listeners:
{listeners}  app_address: {HOST}
policy:
  default: deny
  rules:
    - name: frontend-may-call-backend
      action: allow
      ports: [{', '.join(map(str, apps))}]
      from:
        - id: {FRONT_ID}
"""
    listeners = "".join(f"    - address: {HOST}:{ports['a_' + k]}\n      destination: {HOST}:{ports['b_' + k]}\n"
                        for k in ("http", "iperf", "echo"))
    dests = "".join(f"    - address: {HOST}:{ports['b_' + k]}\n      spiffe_id: {BACK_ID}\n"
                    for k in ("http", "iperf", "echo"))
    return common + f"""outbound:
  listeners:
{listeners}  destinations:
{dests}  unknown_destination: deny
"""


def mtlsd_supports_resumption(bed):
    """--check-config on a configuration with tls.session_resumption: False when the
    binary refuses the key (main before the resumption work), else True."""
    conf = os.path.join(bed.out, "mtlsd-probe.yaml")
    with open(conf, "w") as f:
        f.write(mtlsd_yaml(bed, "b", bed.ports("mtlsd"), True, 1000))
    r = subprocess.run([bed.mtlsd, "--check-config", conf], capture_output=True, text=True,
                       timeout=30)
    if r.returncode == 0:
        return True
    if "session_resumption" in r.stdout + r.stderr:
        return False
    raise Fail(f"mtlsd --check-config failed: {(r.stdout + r.stderr).strip()[-300:]}")


def remove(*paths):
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def start_mtlsd(bed, ports, resumption, limit):
    key = resumption if bed.mtlsd_resumption_key else None
    procs = {}
    for role in ("b", "a"):
        conf = os.path.join(bed.out, f"mtlsd-{role}.yaml")
        remove(f"{bed.out}/mtlsd-{role}.access.log")
        with open(conf, "w") as f:
            f.write(mtlsd_yaml(bed, role, ports, key, limit))
        run([bed.mtlsd, "--check-config", conf], timeout=30)
        procs[role] = bed.procs.start(f"mtlsd-{role}", [bed.mtlsd, "--config", conf])
    return procs["a"], procs["b"]


def start_nginx(bed, ports, resumption, limit):
    """Two single-process nginx instances (master_process off, so the PID measured is
    the one doing the work; the same as worker_processes 1 without the idle master)."""
    onoff = "on" if resumption else "off"
    head = lambda role: f"""load_module {NGINX_STREAM_MODULE};
worker_processes 1;
master_process off;
daemon off;
pid {bed.out}/nginx-{role}.pid;
error_log {bed.out}/nginx-{role}.err notice;
worker_rlimit_nofile {NOFILE};
events {{ worker_connections {2 * limit + 64}; }}
"""
    b = head("b") + f"""stream {{
  log_format mtls '$remote_addr:$remote_port $server_port $status $session_time '
                  'peer="$ssl_client_s_dn" verify=$ssl_client_verify reused=$ssl_session_reused '
                  '$ssl_protocol $ssl_cipher';
  access_log {bed.out}/nginx-b.access.log mtls;
  ssl_certificate {bed.wl('backend', 'chain.pem')};
  ssl_certificate_key {bed.wl('backend', 'key.pem')};
  ssl_protocols TLSv1.3;
  ssl_conf_command Ciphersuites {CIPHERSUITE};
  ssl_client_certificate {bed.pki}/bundle.pem;
  ssl_verify_client on;
  ssl_verify_depth 3;
  ssl_session_tickets {onoff};
  ssl_session_cache off;
  proxy_half_close on;
  server {{ listen {HOST}:{ports['b_http']} ssl backlog=4096; proxy_pass {HOST}:{bed.http_port}; }}
  server {{ listen {HOST}:{ports['b_iperf']} ssl; proxy_pass {HOST}:{bed.iperf_port}; }}
  server {{ listen {HOST}:{ports['b_echo']} ssl backlog=4096; proxy_pass {HOST}:{bed.echo_port}; }}
}}
"""
    a = head("a") + f"""stream {{
  log_format out '$remote_addr:$remote_port $server_port status=$status $session_time upstream=$upstream_addr';
  access_log {bed.out}/nginx-a.access.log out;
  proxy_ssl on;
  proxy_ssl_protocols TLSv1.3;
  proxy_ssl_conf_command Ciphersuites {CIPHERSUITE};
  proxy_ssl_certificate {bed.wl('frontend', 'chain.pem')};
  proxy_ssl_certificate_key {bed.wl('frontend', 'key.pem')};
  proxy_ssl_trusted_certificate {bed.pki}/bundle.pem;
  proxy_ssl_verify on;
  proxy_ssl_verify_depth 3;
  proxy_ssl_name backend;
  proxy_ssl_session_reuse {onoff};
  proxy_half_close on;
  server {{ listen {HOST}:{ports['a_http']} backlog=4096; proxy_pass {HOST}:{ports['b_http']}; }}
  server {{ listen {HOST}:{ports['a_iperf']}; proxy_pass {HOST}:{ports['b_iperf']}; }}
  server {{ listen {HOST}:{ports['a_echo']} backlog=4096; proxy_pass {HOST}:{ports['b_echo']}; }}
}}
"""
    procs = {}
    for role, text in (("b", b), ("a", a)):
        conf = os.path.join(bed.out, f"nginx-{role}.conf")
        with open(conf, "w") as f:
            f.write(text)
        err = f"{bed.out}/nginx-{role}.err"
        remove(f"{bed.out}/nginx-{role}.access.log")
        run(["nginx", "-t", "-q", "-e", err, "-c", conf, "-p", bed.out], timeout=30)
        procs[role] = bed.procs.start(f"nginx-{role}", ["nginx", "-e", err, "-c", conf, "-p", bed.out])
    return procs["a"], procs["b"]


def start_haproxy(bed, ports, resumption, limit):
    """nbthread 1. Off: no tickets, no session cache on B, no reuse on A's server lines.
    On: HAProxy's defaults (tickets, and A reuses the last session per server)."""
    opts = "ssl-min-ver TLSv1.3" + ("" if resumption else " no-tls-tickets")
    common = f"""global
  nbthread 1
  maxconn {limit}
  {'' if resumption else 'tune.ssl.cachesize 0'}
  ssl-default-bind-ciphersuites {CIPHERSUITE}
  ssl-default-server-ciphersuites {CIPHERSUITE}
  ssl-default-bind-options {opts}
  ssl-default-server-options {opts}
  log stdout format raw local0 info
defaults
  mode tcp
  log global
  timeout connect 5s
  timeout client 300s
  timeout server 300s
"""
    bind = f"ssl crt {bed.out}/backend.haproxy.pem ca-file {bed.pki}/bundle.pem verify required"
    b = common + """  log-format "%ci:%cp %ft %b %Tt %B peer_cn=%[ssl_c_s_dn(cn)] verify=%[ssl_c_verify] resumed=%[ssl_fc_is_resumed] %sslv %sslc"
"""
    srv = (f"ssl crt {bed.out}/frontend.haproxy.pem ca-file {bed.pki}/bundle.pem verify required"
           + ("" if resumption else " no-ssl-reuse"))
    a = common + """  log-format "%ci:%cp %ft %b/%s %Tt %B termination=%ts"
"""
    for k, app in (("http", bed.http_port), ("iperf", bed.iperf_port), ("echo", bed.echo_port)):
        b += (f"frontend in_{k}\n  bind {HOST}:{ports['b_' + k]} {bind}\n  default_backend app_{k}\n"
              f"backend app_{k}\n  server app {HOST}:{app}\n")
        a += (f"frontend out_{k}\n  bind {HOST}:{ports['a_' + k]}\n  default_backend mesh_{k}\n"
              f"backend mesh_{k}\n  server backend {HOST}:{ports['b_' + k]} {srv}\n")
    procs = {}
    for role, text in (("b", b), ("a", a)):
        conf = os.path.join(bed.out, f"haproxy-{role}.cfg")
        with open(conf, "w") as f:
            f.write(text)
        run(["haproxy", "-c", "-q", "-f", conf], timeout=30)
        procs[role] = bed.procs.start(f"haproxy-{role}", ["haproxy", "-db", "-f", conf])
    return procs["a"], procs["b"]


def start_stunnel(bed, ports, resumption, limit, debug=None):
    """stunnel has no connection limit (a thread per connection). It is measured at
    debug = notice (its default: five short lines per connection); only at info
    does it say whether a session was reused, so stunnel_proof() runs it at info."""
    def service(role, name, accept, connect):
        w = "frontend" if role == "a" else "backend"
        text = f"""
[{name}]
client = {'yes' if role == 'a' else 'no'}
accept = {HOST}:{accept}
connect = {HOST}:{connect}
cert = {bed.wl(w, 'chain.pem')}
key = {bed.wl(w, 'key.pem')}
CAfile = {bed.pki}/bundle.pem
verifyChain = yes
requireCert = yes
sslVersionMin = TLSv1.3
ciphersuites = {CIPHERSUITE}
"""
        return text + ("sessionResume = yes\n" if resumption
                       else "sessionResume = no\noptions = NO_TICKET\n")

    procs = {}
    for role in ("b", "a"):
        conf = os.path.join(bed.out, f"stunnel-{role}.conf")
        text = (f"foreground = yes\npid =\nsyslog = no\ndebug = {debug or bed.args.stunnel_debug}\n"
                f"output = {bed.out}/stunnel-{role}.out\n")
        for k, app in (("http", bed.http_port), ("iperf", bed.iperf_port), ("echo", bed.echo_port)):
            if role == "b":
                text += service("b", k, ports["b_" + k], app)
            else:
                text += service("a", k, ports["a_" + k], ports["b_" + k])
        with open(conf, "w") as f:
            f.write(text)
        remove(f"{bed.out}/stunnel-{role}.out")
        procs[role] = bed.procs.start(f"stunnel-{role}", ["stunnel", conf])
    return procs["a"], procs["b"]


STARTERS = {"mtlsd": start_mtlsd, "nginx": start_nginx, "haproxy": start_haproxy,
            "stunnel": start_stunnel}

# Log evidence, per peer: (B's log, line shows a verified client certificate),
# (A's log, line shows a connection through a verified server), and B's
# per-connection verdict on resumption (True, False, or None: not in this line).


def logs(bed, peer):
    o = bed.out
    return {"mtlsd": (f"{o}/mtlsd-b.access.log", f"{o}/mtlsd-a.access.log"),
            "nginx": (f"{o}/nginx-b.access.log", f"{o}/nginx-a.access.log"),
            "haproxy": (f"{o}/haproxy-b.log", f"{o}/haproxy-a.log"),
            "stunnel": (f"{o}/stunnel-b.out", f"{o}/stunnel-a.out")}[peer]


def mutual_needles(peer):
    return {
        "mtlsd": (lambda l: f'"peer_id":"{FRONT_ID}"' in l and '"reason":"ok"' in l,
                  lambda l: f'"peer_id":"{BACK_ID}"' in l and '"reason":"ok"' in l),
        # B: the client certificate verified (verify=SUCCESS); A: status 200 means the
        # upstream handshake, with proxy_ssl_verify on, succeeded.
        "nginx": (lambda l: "CN=frontend" in l and "verify=SUCCESS" in l,
                  lambda l: "status=200" in l),
        # "--": no error at any stage, so B's chain passed "verify required".
        "haproxy": (lambda l: "peer_cn=frontend verify=0" in l,
                    lambda l: "mesh_echo/backend" in l and "termination=--" in l),
        "stunnel": (lambda l: "Certificate accepted at depth=0" in l and "CN=frontend" in l,
                    lambda l: "Certificate accepted at depth=0" in l and "CN=backend" in l),
    }[peer]


def resumed_verdict(peer, line):
    if peer == "mtlsd":
        try:
            e = json.loads(line)
        except ValueError:
            return None
        if e.get("tls_session") in ("full", "resumed"):  # the access log's field
            return e["tls_session"] == "resumed"
        return None
    if peer == "nginx":
        if "reused=r" in line:
            return True
        return False if "reused=." in line else None
    if peer == "haproxy":
        if "resumed=1" in line:
            return True
        return False if "resumed=0" in line else None
    if peer == "stunnel":
        if "previous session reused" in line:
            return True
        return False if "new session negotiated" in line else None
    return None


def resumption_counts(bed, peer):
    """(resumed, full) handshakes B's log reports, or (None, None) if it does not say."""
    path = logs(bed, peer)[0]
    r = f = 0
    try:
        with open(path, errors="replace") as fh:
            for line in fh:
                v = resumed_verdict(peer, line)
                if v is True:
                    r += 1
                elif v is False:
                    f += 1
    except OSError:
        pass
    return (r, f) if r + f else (None, None)


# --- measurements --------------------------------------------------------------------------

WRK_LUA = """done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,' ..
    '"p50_us":%d,"p99_us":%d,"mean_us":%.1f}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50),
    latency:percentile(99), latency.mean))
end
"""


def wrk(bed, port, path, seconds, close=False, conns=16):
    script = os.path.join(bed.out, "wrk-json.lua")
    with open(script, "w") as f:
        f.write(WRK_LUA)
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", script]
    if close:
        argv += ["-H", "Connection: close"]
    out = run(argv + [f"http://{HOST}:{port}{path}"], timeout=seconds + 30)
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    r = json.loads(line)
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def iperf(bed, port, streams, seconds):
    out = run(["iperf3", "-c", HOST, "-p", str(port), "-t", str(seconds), "-P", str(streams), "-J"],
              timeout=seconds + 30)
    res = json.loads(out)
    if "error" in res:
        raise Fail(f"iperf3: {res['error']}")
    return res["end"]["sum_received"]["bytes"] / res["end"]["sum_received"]["seconds"] / 1e6


def rss_kb(pid):
    return loadgen.read_rss_kb(pid)


def check_pair(bed, peer, ports, a, b):
    """Stops the run unless the pair carries bytes intact, B refuses a client with no
    certificate, and both sides' logs show the mutual authentication."""
    run([PY, os.path.join(HERE, "loadgen.py"), "check", "--port", str(ports["a_echo"])], timeout=30)
    lg = os.path.join(HERE, "loadgen.py")
    probe = run([PY, lg, "tls-probe", "--port", str(ports["b_echo"]), "--cafile",
                 f"{bed.pki}/bundle.pem"], timeout=30)
    if not probe.startswith("refused"):
        raise Fail(f"{peer}: B accepted a TLS client without a certificate ({probe.strip()})")
    probe = run([PY, lg, "tls-probe", "--port", str(ports["b_echo"]), "--cafile",
                 f"{bed.pki}/bundle.pem", "--cert", bed.wl("frontend", "chain.pem"),
                 "--key", bed.wl("frontend", "key.pem")], timeout=30)
    if not probe.startswith("echo"):
        raise Fail(f"{peer}: B refused the frontend certificate ({probe.strip()})")
    b_log, a_log = logs(bed, peer)
    nb, na = mutual_needles(peer)
    seen_b, seen_a = wait_grep(b_log, nb), wait_grep(a_log, na)
    if not seen_b or not seen_a:
        raise Fail(f"{peer}: the logs do not show a mutually authenticated connection "
                   f"(B: {seen_b}, A: {seen_a})")
    return [short(seen_b), short(seen_a)]


def short(line):
    """The parts of a log line that show the mutual authentication."""
    try:
        e = json.loads(line)  # an mtlsd access-log line
        return (f"{e.get('direction')} peer_id={e.get('peer_id')} {e.get('tls_version')} "
                f"{e.get('cipher')} reason={e.get('reason')}")
    except ValueError:
        return line if len(line) <= 160 else "..." + line[-157:]


def resume_probe(bed, ports):
    out = run([PY, os.path.join(HERE, "loadgen.py"), "tls-resume", "--port", str(ports["b_echo"]),
               "--cafile", f"{bed.pki}/bundle.pem", "--cert", bed.wl("frontend", "chain.pem"),
               "--key", bed.wl("frontend", "key.pem")], timeout=30)
    return out.strip()


def conn_test(bed, peer, ports, b):
    """New mTLS connections/s (wrk, Connection: close) and B's CPU per handshake."""
    t0 = cpu_ticks(b.pid)
    r = wrk(bed, ports["a_http"], "/100b", bed.args.conn_seconds, close=True)
    ticks = cpu_ticks(b.pid) - t0
    done = r["requests"]
    return {"conn_per_s": r["rps"], "errors": r["errors"] + r["non2xx"], "connections": done,
            "b_cpu_ms_per_conn": ticks / HZ * 1000 / done if done else float("nan")}


def paced(bed, ports, a, b):
    """CPU and RSS at a fixed rate of 1 KB HTTP requests (--paced-rate for --paced-seconds)."""
    ta, tb, t = cpu_ticks(a.pid), cpu_ticks(b.pid), time.monotonic()
    out = run([PY, os.path.join(HERE, "loadgen.py"), "paced-http", "--port", str(ports["a_http"]),
               "--path", "/1k", "--rate", str(bed.args.paced_rate), "--seconds",
               str(bed.args.paced_seconds), "--conns", "16"], timeout=bed.args.paced_seconds + 30)
    wall = time.monotonic() - t
    r = json.loads(out)
    if r["errors"] or r["ok"] < 0.98 * r["wanted"]:
        raise Fail(f"paced run incomplete: {r}")
    scale = 1000.0 / r["req_per_s"]
    va = (cpu_ticks(a.pid) - ta) / HZ / wall * scale
    vb = (cpu_ticks(b.pid) - tb) / HZ / wall * scale
    return {"req_per_s": r["req_per_s"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
            "vcpu_a": va, "vcpu_b": vb, "vcpu_pair": va + vb,
            "rss_a_mb": rss_kb(a.pid) / 1024, "rss_b_mb": rss_kb(b.pid) / 1024}


def held_idle(bed, ports, a, b):
    """RSS per idle proxied connection: --held connections through the echo route."""
    time.sleep(0.5)
    ra, rb = rss_kb(a.pid), rss_kb(b.pid)
    held, failed = memory.open_held(ports["a_echo"], bed.args.held, lambda: None)
    try:
        if failed:
            raise Fail(f"{failed} of {bed.args.held} held connections failed")
        time.sleep(1.0)
        return {"a_kb": (rss_kb(a.pid) - ra) / len(held), "b_kb": (rss_kb(b.pid) - rb) / len(held)}
    finally:
        for s in held:
            s.close()


def verify_resumption(peer, on, evidence):
    """Fails unless B's log (where it says) and the probe agree with the setting.
    evidence: {"b_log": (resumed, full) or (None, None), "probe": ..., "connections": n}."""
    resumed, full = evidence["b_log"]
    probe = evidence["probe"]
    if on:
        if resumed is None and peer != "mtlsd":
            raise Fail(f"{peer}: B's log does not say whether sessions were resumed")
        if resumed is not None and resumed < 0.5 * evidence["connections"]:
            raise Fail(f"{peer}: resumption on, but B's log shows {resumed} resumed handshakes "
                       f"for {evidence['connections']} connections")
        if probe != "reused":
            raise Fail(f"{peer}: resumption on, but B did not resume the probe's session ({probe})")
    else:
        if resumed:
            raise Fail(f"{peer}: resumption off, but B's log shows {resumed} resumed handshakes")
        if probe != "new":
            raise Fail(f"{peer}: resumption off, but B resumed the probe's session ({probe})")


def stunnel_proof(bed, ports, on):
    """stunnel says whether a session was reused only at debug = info: a short separate
    run at info (wrk, 1 s, Connection: close) gives the log evidence."""
    a, b = start_stunnel(bed, ports, on, bed.args.held + LIMIT_HEADROOM, debug="info")
    try:
        wait_listen(ports["b_echo"], b)
        wait_listen(ports["a_echo"], a)
        r = wrk(bed, ports["a_http"], "/100b", 1, close=True, conns=4)
        probe = resume_probe(bed, ports)
        time.sleep(0.3)
        return {"b_log": resumption_counts(bed, "stunnel"), "probe": probe,
                "connections": r["requests"], "note": "separate 1 s run at debug = info"}
    finally:
        bed.procs.stop(a, b)


def evidence_for(bed, peer, ports, on, connections):
    if peer == "stunnel" and bed.args.stunnel_debug != "info":
        return stunnel_proof(bed, ports, on)
    time.sleep(0.3)  # the last log lines
    return {"b_log": resumption_counts(bed, peer), "probe": resume_probe(bed, ports),
            "connections": connections}


def measure_off(bed, peer, rep):
    """The pair without resumption: every figure except the resumed handshakes."""
    ports = bed.ports(peer)
    a, b = STARTERS[peer](bed, ports, False, bed.args.held + LIMIT_HEADROOM)
    try:
        wait_listen(ports["b_echo"], b)
        wait_listen(ports["a_echo"], a)
        time.sleep(1.0)  # start-up allocations settle before the idle reading
        r = {"idle_rss_a_mb": rss_kb(a.pid) / 1024, "idle_rss_b_mb": rss_kb(b.pid) / 1024}
        r["mutual"] = check_pair(bed, peer, ports, a, b)
        k = wrk(bed, ports["a_http"], "/100b", bed.args.ka_seconds)
        if k["errors"] or k["non2xx"]:
            raise Fail(f"{peer}: keep-alive wrk had errors: {k}")
        r.update(ka_rps=k["rps"], ka_p50_ms=k["p50_us"] / 1000, ka_p99_ms=k["p99_us"] / 1000)
        r["bulk1_mbps"] = iperf(bed, ports["a_iperf"], 1, bed.args.bulk_seconds)
        r["bulk4_mbps"] = iperf(bed, ports["a_iperf"], 4, bed.args.bulk_seconds)
        c = conn_test(bed, peer, ports, b)
        r.update(conn_full_per_s=c["conn_per_s"], cpu_full_ms=c["b_cpu_ms_per_conn"],
                 conn_full_errors=c["errors"])
        r["paced"] = paced(bed, ports, a, b)
        h = held_idle(bed, ports, a, b)
        r.update(held_a_kb=h["a_kb"], held_b_kb=h["b_kb"])
        if peer != "stunnel" or bed.args.stunnel_debug == "info":
            r["resumption_off"] = evidence_for(bed, peer, ports, False, c["connections"])
    finally:
        bed.procs.stop(a, b)
    if "resumption_off" not in r:
        r["resumption_off"] = evidence_for(bed, peer, ports, False, c["connections"])
    verify_resumption(peer, False, r["resumption_off"])
    return r


def measure_on(bed, peer, rep):
    """The pair with resumption: new connections/s and B's CPU per resumed handshake."""
    if peer == "mtlsd" and not bed.mtlsd_resumption_key:
        return {"conn_resumed_per_s": NO_RESUMPTION_KEY, "cpu_resumed_ms": NO_RESUMPTION_KEY}
    ports = bed.ports(peer)
    a, b = STARTERS[peer](bed, ports, True, bed.args.held + LIMIT_HEADROOM)
    ev = None
    try:
        wait_listen(ports["b_echo"], b)
        wait_listen(ports["a_echo"], a)
        c = conn_test(bed, peer, ports, b)
        if peer != "stunnel" or bed.args.stunnel_debug == "info":
            ev = evidence_for(bed, peer, ports, True, c["connections"])
    finally:
        bed.procs.stop(a, b)
    if ev is None:
        ev = evidence_for(bed, peer, ports, True, c["connections"])
    verify_resumption(peer, True, ev)
    return {"conn_resumed_per_s": c["conn_per_s"], "cpu_resumed_ms": c["b_cpu_ms_per_conn"],
            "conn_resumed_errors": c["errors"], "resumption_on": ev}


def burst(bed, peer):
    """--bursts times: --burst connections through the pair's echo route, all held, then
    all closed; RSS of A and B sampled every 0.1 s throughout and --settle s after."""
    ports = bed.ports(peer)
    a, b = STARTERS[peer](bed, ports, False, bed.args.burst + LIMIT_HEADROOM)
    try:
        wait_listen(ports["b_echo"], b)
        wait_listen(ports["a_echo"], a)
        time.sleep(1.0)
        t0 = time.monotonic()
        curve, events = [], []
        base_fds = {"a": fd_count(a.pid), "b": fd_count(b.pid)}
        last = [0.0]

        def sample(force=False):
            now = time.monotonic()
            if force or now - last[0] >= 0.1:
                last[0] = now
                curve.append((round(now - t0, 2), rss_kb(a.pid) / 1024, rss_kb(b.pid) / 1024))

        sample(True)
        start = curve[-1]
        bursts = []
        for i in range(bed.args.bursts):
            events.append((round(time.monotonic() - t0, 2), f"burst {i + 1} opens"))
            held, failed = memory.open_held(ports["a_echo"], bed.args.burst, sample)
            sample(True)
            for s in held:
                s.close()
            events.append((round(time.monotonic() - t0, 2), f"burst {i + 1} closed"))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                sample()
                if fd_count(a.pid) <= base_fds["a"] and fd_count(b.pid) <= base_fds["b"]:
                    break
                time.sleep(0.05)
            closed = curve[-1]
            end = time.monotonic() + bed.args.settle
            while time.monotonic() < end:
                sample()
                time.sleep(0.05)
            sample(True)
            after = curve[-1]
            bursts.append({"held": len(held), "failed": failed,
                           "peak_a_mb": max(c[1] for c in curve), "peak_b_mb": max(c[2] for c in curve),
                           "closed_a_mb": closed[1], "closed_b_mb": closed[2],
                           "after_a_mb": after[1], "after_b_mb": after[2]})
        end_a, end_b = curve[-1][1], curve[-1][2]
        back = all(x["after_a_mb"] <= 1.1 * start[1] and x["after_b_mb"] <= 1.1 * start[2]
                   for x in bursts)
        return {"start_a_mb": start[1], "start_b_mb": start[2], "bursts": bursts,
                "end_a_mb": end_a, "end_b_mb": end_b, "back_within_10pct": back,
                "curve": curve, "events": events}
    finally:
        bed.procs.stop(a, b)


# --- the table -------------------------------------------------------------------------------
# (key, label, better, format). Values per peer are medians over repetitions.

FIGURES = [
    ("ka_rps", "keep-alive HTTP req/s, 16 conns, 100 B", "h", "{:,.0f}"),
    ("ka_p50_ms", "  latency p50 at that load (ms)", "l", "{:.2f}"),
    ("ka_p99_ms", "  latency p99 at that load (ms)", "l", "{:.2f}"),
    ("bulk1_mbps", "bulk, 1 stream (MB/s)", "h", "{:,.0f}"),
    ("bulk4_mbps", "bulk, 4 streams (MB/s)", "h", "{:,.0f}"),
    ("conn_full_per_s", "new mTLS conns/s, no resumption", "h", "{:,.0f}"),
    ("conn_resumed_per_s", "new mTLS conns/s, with resumption", "h", "{:,.0f}"),
    ("cpu_full_ms", "B CPU per full handshake (ms)", "l", "{:.3f}"),
    ("cpu_resumed_ms", "B CPU per resumed handshake (ms)", "l", "{:.3f}"),
    ("idle_rss_a_mb", "idle RSS, A (MB)", "l", "{:.1f}"),
    ("idle_rss_b_mb", "idle RSS, B (MB)", "l", "{:.1f}"),
    ("held_a_kb", "RSS per idle proxied conn, A (KB)", "l", "{:.1f}"),
    ("held_b_kb", "RSS per idle proxied conn, B (KB)", "l", "{:.1f}"),
    ("burst_start_mb", "burst: A+B before the first burst (MB)", "l", "{:.1f}"),
    ("burst_peak_mb", "burst: peak RSS, A+B (MB)", "l", "{:.0f}"),
    ("burst_after_mb", "burst: A+B after last burst +settle (MB)", "l", "{:.1f}"),
    ("burst_back", "burst: back within 10% of start", "h", "{}"),
    ("paced_vcpu_pair", "vCPU per 1,000 req/s 1 KB, A+B", "l", "{:.3f}"),
    ("paced_vcpu_a", "  vCPU per 1,000 req/s, A", "l", "{:.3f}"),
    ("paced_vcpu_b", "  vCPU per 1,000 req/s, B", "l", "{:.3f}"),
    ("paced_rss_mb", "  RSS at 1,000 req/s, A+B (MB)", "l", "{:.1f}"),
]


def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def aggregate(results, bursts):
    """medians[peer][key], spread[peer][key] = (min, max) over repetitions."""
    med, spread = {}, {}
    for peer, reps in results.items():
        med[peer], spread[peer] = {}, {}
        flat = []
        for r in reps:
            f = dict(r)
            p = r.get("paced") or {}
            f.update(paced_vcpu_pair=p.get("vcpu_pair"), paced_vcpu_a=p.get("vcpu_a"),
                     paced_vcpu_b=p.get("vcpu_b"),
                     paced_rss_mb=(p["rss_a_mb"] + p["rss_b_mb"]) if p else None)
            flat.append(f)
        for key, *_ in FIGURES:
            vals = [f.get(key) for f in flat if key in f]
            nums = [v for v in vals if is_num(v)]
            if nums:
                med[peer][key] = statistics.median(nums)
                spread[peer][key] = (min(nums), max(nums))
            elif vals:
                med[peer][key] = vals[0]  # a string such as "n/a (...)"
        bu = bursts.get(peer)
        if bu:
            med[peer]["burst_start_mb"] = bu["start_a_mb"] + bu["start_b_mb"]
            med[peer]["burst_peak_mb"] = max(x["peak_a_mb"] + x["peak_b_mb"] for x in bu["bursts"])
            med[peer]["burst_after_mb"] = bu["end_a_mb"] + bu["end_b_mb"]
            med[peer]["burst_back"] = "yes" if bu["back_within_10pct"] else "no"
    return med, spread


def cell(v, spec):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    return spec.format(v)


def ratio_cell(med, key, better, peers):
    m = med.get("mtlsd", {}).get(key)
    others = [med[p][key] for p in peers if p != "mtlsd" and is_num(med.get(p, {}).get(key))]
    if not is_num(m) or not others:
        return "-"
    best = max(others) if better == "h" else min(others)
    return "-" if best == 0 else f"{m / best:.2f}"


def rows(med, peers):
    out = []
    for key, label, better, spec in FIGURES:
        if all(med.get(p, {}).get(key) is None for p in peers):
            continue
        out.append([f"{label} ({better})"] + [cell(med.get(p, {}).get(key), spec) for p in peers]
                   + [ratio_cell(med, key, better, peers)])
    return out


def text_table(header, body):
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = []
    for n, r in enumerate([header] + body):
        lines.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                               for i, c in enumerate(r)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(header, body):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def spread_text(spread, peers):
    lines = []
    for key, label, _, spec in FIGURES:
        parts = [f"{p} {cell(spread[p][key][0], spec)}-{cell(spread[p][key][1], spec)}"
                 for p in peers if key in spread.get(p, {})]
        if parts:
            lines.append(f"  {label.strip()}: " + "; ".join(parts))
    return "\n".join(lines)


def istio_text(med, peers):
    lines = ["CPU and memory per 1,000 req/s (1 KB HTTP, paced, 16 keep-alive connections):",
             f"  {'':28}{'vCPU per proxy':>16}{'vCPU A+B':>10}{'RSS per proxy MB':>18}"]
    for p in peers:
        m = med.get(p, {})
        if is_num(m.get("paced_vcpu_a")):
            lines.append(f"  {LABELS[p]:28}{m['paced_vcpu_a']:>7.3f} / {m['paced_vcpu_b']:<6.3f}"
                         f"{m['paced_vcpu_pair']:>10.3f}{m['paced_rss_mb'] / 2:>18.1f}")
    for name, (cpu, mem) in ISTIO.items():
        lines.append(f"  {name:28}{cpu:>16.2f}{'':>10}{mem:>18}")
    lines.append("  (Istio's figures are per proxy; ours: A / B, and RSS the mean of A and B)")
    return "\n".join(lines)


# --- charts (gnuplot) --------------------------------------------------------------------------

def charts(bed, med, peers, bursts):
    out = bed.out
    # The table: each peer's figure relative to the best peer's (lower-is-better
    # figures inverted), so 1 is the best peer and above 1 is better than it.
    data = os.path.join(out, "chart-table.dat")
    with open(data, "w") as f:
        f.write("figure " + " ".join(peers) + "\n")
        for key, label, better, _ in FIGURES:
            vals = [med.get(p, {}).get(key) for p in peers]
            others = [v for p, v in zip(peers, vals) if p != "mtlsd" and is_num(v)]
            if not others:
                continue
            best = max(others) if better == "h" else min(others)
            rel = []
            for v in vals:
                if not is_num(v) or v <= 0 or best <= 0:
                    rel.append("NaN")
                else:
                    rel.append(f"{(v / best) if better == 'h' else (best / v):.3f}")
            name = label.strip().replace('"', "'")
            f.write(f'"{name}" ' + " ".join(rel) + "\n")
    color = {p: c for p, c in zip(PEERS, ("#8e24aa", "#2e7d32", "#1e88e5", "#f9a825"))}
    plot = ", ".join(f"'{data}' using {i + 2}:xtic(1) title '{LABELS[p]}' lc rgb '{color[p]}'"
                     for i, p in enumerate(peers))
    script = f"""set terminal svg size 1200,640 dynamic font 'sans,11' background rgb 'white'
set output '{out}/chart-table.svg'
set title "Each proxy's figure against the best peer's (nginx, HAProxy, stunnel): 1 = best peer, above 1 = better\\n(lower-is-better figures inverted: best / value; log scale)"
set style data histograms
set logscale y 2
set yrange [0.0625:32]
set ytics ('1/16' 0.0625, '1/8' 0.125, '1/4' 0.25, '1/2' 0.5, '1' 1, '2' 2, '4' 4, '8' 8, '16' 16, '32' 32)
set rmargin 20
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set grid ytics
set xtics rotate by -35 left font ',9'
set bmargin 10
set key top left
set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lc rgb 'black'
plot {plot}
"""
    if bursts:
        curves = []
        for p, bu in bursts.items():
            path = os.path.join(out, f"chart-burst-{p}.dat")
            with open(path, "w") as f:
                for t, ra, rb in bu["curve"]:
                    f.write(f"{t} {ra:.2f} {rb:.2f}\n")
            curves.append(f"'{path}' using 1:2 with lines lw 2 lc rgb '{color[p]}' title '{LABELS[p]} A'")
            curves.append(f"'{path}' using 1:3 with lines lw 1 dt 2 lc rgb '{color[p]}' title '{LABELS[p]} B'")
        script += f"""
reset
set terminal svg size 1000,500 dynamic font 'sans,11' background rgb 'white'
set output '{out}/chart-burst.svg'
set title 'RSS over {bed.args.bursts} bursts of {bed.args.burst:,} connections (all held, then all closed)'
set xlabel 'seconds'
set ylabel 'RSS (MB)'
set grid
set key top right
plot {', '.join(curves)}
"""
    with open(os.path.join(out, "charts.gp"), "w") as f:
        f.write(script)
    run(["gnuplot", os.path.join(out, "charts.gp")], timeout=60)


# --- setup and main -------------------------------------------------------------------------

def install_deps():
    missing = sorted({pkg for what, pkg in DEBIAN_PACKAGES.items()
                      if not (os.path.exists(what) if what.startswith("/") else shutil.which(what))})
    if not missing:
        return
    if os.geteuid() != 0:
        raise Fail(f"missing Debian packages: {' '.join(missing)} (run as root, or apt-get install them)")
    log(f"installing from Debian: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing,
                   check=True, env=env, timeout=1200, stdout=subprocess.DEVNULL)


def get_mtlsd(bed):
    dest = os.path.join(bed.out, "mtlsd")
    src = bed.args.mtlsd or os.environ.get("MTLSD_BIN")
    if src:
        origin = os.path.abspath(src)
    else:
        log("building //agent:mtlsd (-c opt, see .bazelrc)")
        cache = ["--disk_cache=/work/.bazel-disk-cache"] if os.path.isdir("/work/.bazel-disk-cache") else []
        subprocess.run(["bazel", "build"] + cache + ["//agent:mtlsd"], cwd=ROOT, check=True,
                       timeout=1800, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bin_dir = run(["bazel", "info", "bazel-bin"], timeout=300, cwd=ROOT).strip()
        origin = os.path.join(bin_dir, "agent", "mtlsd")
        try:
            origin += " @ " + run(["git", "describe", "--always", "--dirty"], timeout=30, cwd=ROOT).strip()
        except Fail:
            pass
        src = os.path.join(bin_dir, "agent", "mtlsd")
    if not os.path.isfile(src):
        raise Fail(f"mtlsd binary {src} does not exist")
    if not (os.path.exists(dest) and os.path.samefile(src, dest)):
        remove(dest)  # a copy, so a rebuild during the run cannot swap the binary
        shutil.copy(src, dest)
    with open(dest, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    return dest, origin, digest


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release()}


def versions():
    def first(argv, pick=lambda s: s.splitlines()[0]):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            return pick(r.stdout + r.stderr).strip()
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    return {"nginx": first(["nginx", "-v"]), "haproxy": first(["haproxy", "-v"]),
            "stunnel": first(["stunnel", "-version"],
                             lambda s: next(l for l in s.splitlines() if l.startswith("stunnel "))),
            "wrk": first(["wrk", "-v"]), "iperf3": first(["iperf3", "--version"])}


def replot(args):
    bed = Bed(args)
    with open(os.path.join(bed.out, "results.json")) as f:
        saved = json.load(f)
    for k in ("burst", "bursts"):
        setattr(args, k, saved["meta"]["args"][k])
    charts(bed, saved["medians"], saved["meta"]["args"]["peers"], saved["bursts"])
    return 0


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mtlsd", help="agent binary to measure (default: $MTLSD_BIN, else bazel build)")
    ap.add_argument("--quick", action="store_true", help="1 repetition, short loads (smoke)")
    ap.add_argument("--out", default=os.path.join(HERE, "out", "compare"),
                    help="where configurations, logs, results and charts go")
    # Full / --quick defaults; an option given explicitly wins over both.
    sizes = [("reps", int, 3, 1), ("ka-seconds", int, 8, 2), ("bulk-seconds", int, 5, 2),
             ("conn-seconds", int, 5, 2), ("paced-rate", float, 1000, 1000),
             ("paced-seconds", float, 10, 3), ("held", int, 1000, 200), ("burst", int, 8000, 1000),
             ("bursts", int, 3, 1), ("settle", float, 5.0, 2.0)]
    for name, kind, full, quick in sizes:
        ap.add_argument("--" + name, type=kind, default=None,
                        help=f"default {full:g}, with --quick {quick:g}")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of " + ",".join(PEERS))
    ap.add_argument("--port-base", type=int, default=int(os.environ.get("BENCH_PORT_BASE", 24300)),
                    help="uses BASE .. BASE+59 (checked free)")
    ap.add_argument("--burst-peers", default="mtlsd,nginx,haproxy",
                    help="peers given the burst (stunnel: a thread per connection, 8,000 of them)")
    ap.add_argument("--stunnel-debug", default="notice",
                    help="stunnel log level while measuring (resumption is proven in a separate "
                         "short run at info)")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install missing packages")
    ap.add_argument("--replot", action="store_true",
                    help="only redraw the charts from bench/out/compare/results.json")
    args = ap.parse_args(argv)
    for name, kind, full, quick in sizes:
        attr = name.replace("-", "_")
        if getattr(args, attr) is None:
            setattr(args, attr, quick if args.quick else full)
    args.peers = [p for p in args.peers.split(",") if p]
    args.burst_peers = [p for p in args.burst_peers.split(",") if p in args.peers]
    bad = [p for p in args.peers if p not in PEERS]
    if bad or "mtlsd" not in args.peers:
        ap.error(f"--peers: must include mtlsd, known: {', '.join(PEERS)}")
    if args.burst + 500 > NOFILE:
        ap.error(f"--burst {args.burst}: more than the open-file limit allows")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        return replot(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE if hard == resource.RLIM_INFINITY else min(hard, NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))  # inherited by every child
    if not args.no_install:
        install_deps()
    bed = Bed(args)
    started = time.time()
    load_start = open("/proc/loadavg").read().split()[:3]
    try:
        bed.check_ports()
        bed.mtlsd, mtlsd_origin, mtlsd_sha = get_mtlsd(bed)
        bed.make_pki()
        bed.mtlsd_resumption_key = mtlsd_supports_resumption(bed)
        if not bed.mtlsd_resumption_key:
            log("this mtlsd has no tls.session_resumption: its rows with resumption are n/a")
        bed.start_backends()
        results = {p: [] for p in args.peers}
        for rep in range(args.reps):
            order = args.peers[rep % len(args.peers):] + args.peers[:rep % len(args.peers)]
            for peer in order:
                log(f"rep {rep + 1}/{args.reps}: {peer}, resumption off")
                r = measure_off(bed, peer, rep)
                log(f"  {peer}: {r['ka_rps']:.0f} req/s p50 {r['ka_p50_ms']:.2f} p99 {r['ka_p99_ms']:.2f} ms, "
                    f"bulk {r['bulk1_mbps']:.0f}/{r['bulk4_mbps']:.0f} MB/s, "
                    f"{r['conn_full_per_s']:.0f} conn/s, {r['cpu_full_ms']:.3f} ms/handshake")
                log(f"rep {rep + 1}/{args.reps}: {peer}, resumption on")
                r.update(measure_on(bed, peer, rep))
                if is_num(r["conn_resumed_per_s"]):
                    log(f"  {peer}: {r['conn_resumed_per_s']:.0f} resumed conn/s, "
                        f"{r['cpu_resumed_ms']:.3f} ms/handshake, {r['resumption_on']}")
                results[peer].append(r)
        bursts = {}
        for peer in args.burst_peers:
            log(f"burst: {peer}, {args.bursts} x {args.burst} connections")
            bursts[peer] = burst(bed, peer)
            log(f"  {peer}: start {bursts[peer]['start_a_mb']:.1f}/{bursts[peer]['start_b_mb']:.1f} MB, "
                f"end {bursts[peer]['end_a_mb']:.1f}/{bursts[peer]['end_b_mb']:.1f} MB")
    finally:
        bed.procs.stop_all()

    med, spread = aggregate(results, bursts)
    peers = args.peers
    header = ["figure (h/l: higher/lower is better)"] + [LABELS[p] for p in peers] + ["mtlsd / best peer"]
    body = rows(med, peers)
    mach = machine()
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "minutes": round((time.time() - started) / 60, 1), "machine": mach,
            "load_start": load_start, "load_end": open("/proc/loadavg").read().split()[:3],
            "mtlsd": {"from": mtlsd_origin, "sha256_16": mtlsd_sha,
                      "session_resumption_key": bed.mtlsd_resumption_key},
            "versions": versions(), "args": vars(args)}
    head = (f"mtlsd {mtlsd_origin} (sha256 {mtlsd_sha}) | {meta['versions']['nginx']} | "
            f"{meta['versions']['haproxy']} | {meta['versions']['stunnel']}\n"
            f"{mach['nproc']} CPUs ({mach['cpu']}), kernel {mach['kernel']}; "
            f"load average {' '.join(load_start)} at start, {' '.join(meta['load_end'])} at end; "
            f"{args.reps} repetition(s), medians; {meta['minutes']} min")
    if max(float(x) for x in load_start + meta["load_end"]) > mach["nproc"]:
        head += ("\nThe machine was busy (load average above its CPU count): throughput and "
                 "latency figures are noisy; see the spread.")
    burst_note = (f"burst rows: one run of {args.bursts} x {args.burst:,} connections "
                  f"({', '.join(args.burst_peers)}); '-' = not run")
    bursts_text = []
    for p, bu in bursts.items():
        for i, x in enumerate(bu["bursts"], 1):
            bursts_text.append(f"  {LABELS[p]} burst {i}: {x['held']} held ({x['failed']} failed); "
                               f"A/B MB start {bu['start_a_mb']:.1f}/{bu['start_b_mb']:.1f}, "
                               f"peak {x['peak_a_mb']:.1f}/{x['peak_b_mb']:.1f}, "
                               f"all closed {x['closed_a_mb']:.1f}/{x['closed_b_mb']:.1f}, "
                               f"+{args.settle:g} s {x['after_a_mb']:.1f}/{x['after_b_mb']:.1f}")
    evidence = []
    for p in peers:
        r0 = results[p][0]
        evidence.append(f"  {p} mutual TLS: B {r0['mutual'][0]}")
        evidence.append(f"  {p} mutual TLS: A {r0['mutual'][1]}")
        for r in results[p]:
            evidence.append(f"  {p} wrk errors in the connection tests: {r.get('conn_full_errors')} "
                            f"without resumption, {r.get('conn_resumed_errors', '-')} with")
            evidence.append(f"  {p} resumption off: B log (resumed, full) = {r['resumption_off']['b_log']}, "
                            f"probe: {r['resumption_off']['probe']}"
                            + (f"; on: B log {r['resumption_on']['b_log']} over "
                               f"{r['resumption_on']['connections']} connections, probe: "
                               f"{r['resumption_on']['probe']}" if "resumption_on" in r else "; on: n/a"))
    text = "\n".join([head, "", text_table(header, body), "", burst_note, "",
                      istio_text(med, peers), "", "Spread (min-max over repetitions):",
                      spread_text(spread, peers), "", "Bursts:"] + bursts_text
                     + ["", "Evidence (B = server side of the mTLS hop):"] + evidence)
    md = md_table(header, body)
    with open(os.path.join(bed.out, "results.txt"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(bed.out, "results.md"), "w") as f:
        f.write(head.replace("\n", "  \n") + "\n\n" + md + "\n")
    with open(os.path.join(bed.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "medians": med, "spread": spread, "runs": results,
                   "bursts": bursts}, f, indent=1, default=str)
    charts(bed, med, peers, bursts)
    print(text)
    print()
    print(md)
    print()
    print(f"written: {bed.out}/results.{{txt,md,json}}, chart-table.svg"
          + (", chart-burst.svg" if bursts else ""))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Fail as e:
        sys.exit(f"compare: error: {e}")
