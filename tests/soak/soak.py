#!/usr/bin/python3
"""Long-running soak of an agent pair fed by a real mtls-ca (issue 12).

    client threads -> outbound agent (frontend) -> inbound agent (backend) -> echo app
                                     hostile threads -^

Certificates live 120 s, so each agent renews about every minute (at half
the remaining lifetime, +-10%). For --duration seconds, bounded loops run:

  good (through the outbound agent, every byte checked):
    short     new connection, random payload (1 B .. 256 KiB), half-close, echo to EOF
    long      a few connections opened at the start that carry an echo every
              second across every rotation, half-closed at the end
  hostile (straight at the inbound agent's port, unless said otherwise):
    garbage          random bytes, sometimes behind a TLS record header
    untrusted_ca     client certificate from another root (mkpki --bad unknown-root)
    wrong_id         valid certificate for a workload the policy refuses (other)
    bad_spiffe_id    certificate whose URI SAN is not a valid SPIFFE ID
    no_cert          TLS without a client certificate
    half_open        connects and sends nothing (the handshake deadline ends it)
    reset_handshake  part of a ClientHello, then an RST
    reset_stream     through the outbound agent: echoes some data, then an RST

A hostile connection must be closed by the agent without one byte of
application data and within its handshake deadline (plus slack); a good one
must echo exactly. At the end: connection counts, rotations (metrics and log),
hostile refusals by reason (mtlsd_connections_closed_total deltas), RSS and
fd count of each agent at start / peak / end, sanitizer or valgrind errors.
Exits 0 only when nothing is off. See tests/soak/README.md.

Run as root with /usr/bin/python3; not part of CI.
"""
import argparse
import json
import os
import random
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INTEGRATION = REPO / "tests" / "integration"
CP_ID = "spiffe://example.org/ns/mtls-system/sa/mtls-ca"
CERT_TTL_S = 120  # renewal at about half: one rotation a minute per agent


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mtlsd", required=True, help="agent binary")
    p.add_argument("--mtls-ca", required=True, help="control-plane binary")
    p.add_argument("--duration", type=float, default=1800, help="seconds of traffic (default 1800)")
    p.add_argument("--mode", choices=("opt", "asan", "valgrind"), default="opt",
                   help="asan: binaries built with --config=asan (their stderr is checked); "
                        "valgrind: agents run under valgrind (memcheck)")
    p.add_argument("--workdir", help="directory for configs, logs and the summary "
                                     "(default /tmp/soak-runs/<mode>-<time>)")
    p.add_argument("--json", help="summary JSON path (default <workdir>/summary.json)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: time)")
    args = p.parse_args(argv)
    if args.duration < 90:
        p.error("--duration must be at least 90 s: the first rotation comes after about 60 s")
    return args


ARGS = parse_args(sys.argv[1:])
VALGRIND = ARGS.mode == "valgrind"
# conftest reads these at import: valgrind makes start-up and exit (leak
# check) much slower.
os.environ.setdefault("MTLSD_TEST_WAIT", "180" if VALGRIND else "60")
os.environ.setdefault("MTLSD_TEST_STOP_WAIT", "300" if VALGRIND else "30")
sys.path.insert(0, str(INTEGRATION))
import conftest  # noqa: E402
from conftest import (MKPKI, SANITIZER_MARKERS, TRUST_DOMAIN, Agent, App, Processes,  # noqa: E402
                      free_port, spiffe_id, wait_until)
from mtls_ca import MtlsCa, mint_token  # noqa: E402

WAIT = conftest.WAIT
HANDSHAKE_MS = 20000 if VALGRIND else 5000
# A refused or half-open connection must be closed within this.
REFUSAL_BOUND_S = HANDSHAKE_MS / 1000 + (60 if VALGRIND else 15)
IO_TIMEOUT_S = 120 if VALGRIND else 30


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------
# bookkeeping


class Tally:
    """Thread-safe counters and a bounded list of problems."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.problems = []
        self.problem_count = 0

    def add(self, key, n=1):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + n

    def problem(self, what):
        with self.lock:
            self.problem_count += 1
            n = self.problem_count
            if len(self.problems) < 200:
                self.problems.append(f"{time.strftime('%H:%M:%S')} {what}")
        if n <= 100 or n % 1000 == 0:  # a failure storm must not flood the log
            log(f"PROBLEM #{n}: {what}")
        if n >= MAX_PROBLEMS:
            STOP.set()

    def get(self, key):
        with self.lock:
            return self.counts.get(key, 0)


TALLY = Tally()
# Set to end every traffic loop early: an agent died, or too many problems.
STOP = threading.Event()
MAX_PROBLEMS = 1000


def parse_metrics(text):
    """{(name, frozenset(labels.items())): value} of a Prometheus text page."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        try:
            out[(m.group(1), labels)] = float(m.group(3))
        except ValueError:
            pass
    return out


def metric_series(metrics, name):
    return {dict(labels).get("reason") or dict(labels).get("source") or "": v
            for (n, labels), v in metrics.items() if n == name}


def closed_by_reason(metrics, direction):
    return {dict(labels)["reason"]: int(v) for (n, labels), v in metrics.items()
            if n == "mtlsd_connections_closed_total" and dict(labels).get("direction") == direction}


def active(metrics):
    return sum(v for (n, _), v in metrics.items() if n == "mtlsd_connections_active")


def fetch_metrics(agent):
    url = agent.admin_url() + "/metrics"
    with urllib.request.urlopen(url, timeout=IO_TIMEOUT_S) as resp:
        return parse_metrics(resp.read().decode())


class Resources:
    """Samples VmRSS and the open fd count of some processes."""

    def __init__(self, procs):
        self.procs = procs  # name -> pid
        self.samples = {name: [] for name in procs}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def sample(pid):
        try:
            rss_kb = 0
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss_kb = int(line.split()[1])
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            return rss_kb, fds
        except (FileNotFoundError, ProcessLookupError):
            return None

    def take(self):
        for name, pid in self.procs.items():
            s = self.sample(pid)
            if s is not None:
                self.samples[name].append((time.monotonic(), *s))

    def _run(self):
        while not self.stop.wait(5):
            self.take()

    def summary(self, name, start, end):
        """start: the sample taken before traffic; end: after traffic ended."""
        rows = self.samples[name]
        # The curve: one (seconds, RSS KiB, fds) sample a minute.
        t0 = rows[0][0]
        curve, next_t = [], t0
        for t, rss, fds in rows:
            if t >= next_t:
                curve.append((round(t - t0), rss, fds))
                next_t += 60
        return {"rss_kb": {"start": start[0], "peak": max(r[1] for r in rows), "end": end[0]},
                "fds": {"start": start[1], "peak": max(r[2] for r in rows), "end": end[1]},
                "per_minute": curve}


# --------------------------------------------------------------------------
# clients


def tcp_connect(port, timeout=IO_TIMEOUT_S):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


def recv_exactly(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 16))
        if not chunk:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def rst_close(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def good_short(port, rng):
    """One connection: random payload, half-close, echo until EOF."""
    size = rng.choice((1, 100, 1400, 16384, 65536, 262144))
    payload = rng.randbytes(size)
    with tcp_connect(port) as sock:
        errors = []

        def send():
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
            except OSError as e:
                errors.append(e)

        t = threading.Thread(target=send, daemon=True)
        t.start()
        got = bytearray()
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            got += chunk
            if len(got) > size:
                break
        t.join(IO_TIMEOUT_S)
        if errors:
            raise errors[0]
        if bytes(got) != payload:
            raise AssertionError(f"echo mismatch: sent {size} bytes, got {len(got)}"
                                 f"{' (same length, different bytes)' if len(got) == size else ''}")
    return size


class LongLived:
    """A connection that echoes a chunk every second for the whole run."""

    def __init__(self, port, index, rotations):
        self.port, self.index, self.rotations = port, index, rotations
        self.sock = tcp_connect(port)
        self.rotations_at_open = rotations()
        self.messages = 0
        self.bytes = 0

    def exchange(self, rng):
        payload = rng.randbytes(rng.randint(1, 16384))
        self.sock.sendall(payload)
        if recv_exactly(self.sock, len(payload)) != payload:
            raise AssertionError("echo mismatch")
        self.messages += 1
        self.bytes += len(payload)

    def finish(self):
        """Half-close; the echo app answers with EOF."""
        self.sock.shutdown(socket.SHUT_WR)
        rest = self.sock.recv(1)
        self.sock.close()
        if rest:
            raise AssertionError(f"data after half-close: {rest!r}")
        return self.rotations() - self.rotations_at_open


def tls_context(cert_dir=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # hostile: we only care what the agent does
    if cert_dir is not None:
        ctx.load_cert_chain(str(Path(cert_dir) / "chain.pem"), str(Path(cert_dir) / "key.pem"))
    ctx.set_alpn_protocols(["mtlsd"])
    return ctx


def expect_closed(sock, what, allow_tls_records=False):
    """Reads until the agent closes; the agent must close within the bound
    and (plain TCP) send nothing that is not a TLS record. Returns the
    seconds it took."""
    started = time.monotonic()
    sock.settimeout(REFUSAL_BOUND_S)
    got = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
            if len(got) > 1 << 20:
                raise AssertionError(f"{what}: the agent sent over 1 MiB")
    except (ConnectionResetError, BrokenPipeError):
        pass
    except (socket.timeout, TimeoutError):
        raise AssertionError(f"{what}: not closed within {REFUSAL_BOUND_S:.0f}s") from None
    if got and not (allow_tls_records and got[0] in (0x15, 0x16)):
        raise AssertionError(f"{what}: the agent sent non-TLS bytes {got[:40]!r}")
    return time.monotonic() - started


def hostile_garbage(port, rng):
    n = rng.randint(1, 4096)
    data = rng.randbytes(n)
    if rng.random() < 0.5:  # looks like a TLS handshake record, then nonsense
        data = bytes([0x16, 0x03, 0x01]) + struct.pack(">H", rng.randint(0, 0x4800)) + data
    with tcp_connect(port) as sock:
        try:
            sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            return
        expect_closed(sock, "garbage", allow_tls_records=True)


def hostile_tls(port, ctx, what):
    """A TLS client the agent must refuse: no application data, a close."""
    raw = tcp_connect(port)
    try:
        try:
            tls = ctx.wrap_socket(raw)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return  # refused during the handshake
        except (socket.timeout, TimeoutError):
            raise AssertionError(f"{what}: handshake neither finished nor refused") from None
        tls.settimeout(REFUSAL_BOUND_S)
        try:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: soak\r\n\r\n")
            data = tls.recv(4096)
            if data:
                raise AssertionError(f"{what}: the agent relayed data to a refused client: "
                                     f"{data[:40]!r}")
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            pass
        except (socket.timeout, TimeoutError):
            raise AssertionError(f"{what}: not closed within {REFUSAL_BOUND_S:.0f}s") from None
        finally:
            tls.close()
    finally:
        raw.close()


def hostile_half_open(port, _rng):
    with tcp_connect(port) as sock:
        took = expect_closed(sock, "half_open", allow_tls_records=True)
    if took < HANDSHAKE_MS / 1000 * 0.5:
        raise AssertionError(f"half_open: closed after {took:.1f}s, before the "
                             f"{HANDSHAKE_MS} ms handshake deadline")


# The start of a real TLS 1.3 ClientHello (record + handshake headers,
# version, random); cut anywhere before its end.
CLIENT_HELLO_HEAD = bytes([0x16, 0x03, 0x01, 0x00, 0xf0, 0x01, 0x00, 0x00, 0xec, 0x03, 0x03])


def hostile_reset_handshake(port, rng):
    sock = tcp_connect(port)
    try:
        head = CLIENT_HELLO_HEAD + rng.randbytes(32)
        sock.sendall(head[:rng.randint(1, len(head))])
    except (ConnectionResetError, BrokenPipeError):
        pass
    rst_close(sock)


def reset_stream(port_out, rng):
    """Through the outbound agent: some echoed data, then an RST."""
    sock = tcp_connect(port_out)
    try:
        payload = rng.randbytes(rng.randint(1, 65536))
        sock.sendall(payload)
        if recv_exactly(sock, len(payload) // 2 or 1) != payload[:len(payload) // 2 or 1]:
            raise AssertionError("reset_stream: echo mismatch before the reset")
        sock.sendall(rng.randbytes(rng.randint(1, 65536)))  # in flight when the RST goes
    finally:
        rst_close(sock)


# --------------------------------------------------------------------------
# loops


def run_loop(name, deadline, max_count, body, pause, rng, ok_key, fail_key, kind="hostile"):
    """Runs |body(rng)| until |deadline| or |max_count| attempts."""
    for _ in range(max_count):
        if time.monotonic() >= deadline or STOP.is_set():
            return
        TALLY.add(f"{kind}.{name}.attempted")
        try:
            result = body(rng)
            TALLY.add(ok_key)
            if isinstance(result, int):
                TALLY.add(f"{kind}.{name}.bytes", result)
        except Exception as e:  # noqa: BLE001 - every failure is recorded
            TALLY.add(fail_key)
            TALLY.problem(f"{kind} {name}: {type(e).__name__}: {e}")
        time.sleep(pause * rng.uniform(0.5, 1.5))


def long_lived_loop(conns, port, deadline, rng, rotations):
    while time.monotonic() < deadline and not STOP.is_set():
        for i, conn in enumerate(conns):
            try:
                conn.exchange(rng)
                TALLY.add("good.long.messages")
            except Exception as e:  # noqa: BLE001
                TALLY.add("good.long.failed")
                TALLY.problem(f"good long #{conn.index}: {type(e).__name__}: {e} "
                              f"(after {conn.messages} messages)")
                try:
                    conn.sock.close()
                except OSError:
                    pass
                TALLY.add("good.long.attempted")
                try:
                    conns[i] = LongLived(port, conn.index, rotations)
                except OSError as e2:
                    TALLY.problem(f"good long #{conn.index}: reopening: {e2}")
                    TALLY.add("good.long.failed")
        time.sleep(1)


# --------------------------------------------------------------------------
# setup


def make_pki(out):
    res = subprocess.run(["bash", str(MKPKI), "--out", str(out), "--control-plane", "--bad",
                          "frontend", "backend", "other"],
                         capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        sys.exit(f"mkpki.sh failed:\n{res.stdout}\n{res.stderr}")
    return Path(out)


def agent_config(ca, pki, workdir, workload, **sections):
    token = mint_token(pki, workdir / f"{workload}.token", workload, ttl_s=4 * 3600)
    cfg = {
        "trust_domain": TRUST_DOMAIN,
        "workers": 1 if VALGRIND else 2,
        "log_level": "info",
        "identity": {"spiffe_id": spiffe_id(workload)},
        "control_plane": {"address": f"127.0.0.1:{ca.port}", "root_file": str(pki / "root.pem"),
                          "spiffe_id": CP_ID, "token_file": str(token),
                          "cert_ttl_s": CERT_TTL_S, "retry_initial_ms": 200,
                          "retry_max_ms": 2000,
                          "request_timeout_ms": 30000 if VALGRIND else 5000},
        "timeouts": {"handshake_ms": HANDSHAKE_MS, "connect_ms": 10000, "idle_ms": 300000,
                     "drain_ms": 1000},
    }
    if VALGRIND:
        # valgrind runs the agent's code on its own JIT and cannot follow
        # a seccomp filter the guest installs (README "Least privilege").
        cfg["security"] = {"seccomp": False}
    cfg.update(sections)
    return cfg


def agent_binary(workdir):
    """The agent, or (valgrind) a wrapper that exec()s valgrind on it, so the
    PID the harness stops and samples is the agent's."""
    if not VALGRIND:
        return ARGS.mtlsd
    wrapper = workdir / "mtlsd-valgrind.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite "
        f"--num-callers=40 --log-file=\"$(dirname \"$0\")/$MTLSD_NAME.valgrind.log\" "
        f"{ARGS.mtlsd} \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper)


def valgrind_report(path):
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return {"log": str(path), "errors": None, "definitely_lost_bytes": None,
                "note": "no valgrind log"}
    errors = re.findall(r"ERROR SUMMARY: ([\d,]+) errors", text)
    lost = re.findall(r"definitely lost: ([\d,]+) bytes", text)
    return {"log": str(path),
            "errors": int(errors[-1].replace(",", "")) if errors else None,
            "definitely_lost_bytes": int(lost[-1].replace(",", "")) if lost else 0}


def sanitizer_report(text):
    found = {m: text.count(m) for m in SANITIZER_MARKERS if m in text}
    return found


# --------------------------------------------------------------------------


def main():
    seed = ARGS.seed if ARGS.seed is not None else int(time.time())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = Path(ARGS.workdir or f"/tmp/soak-runs/{ARGS.mode}-{stamp}").resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    summary_path = Path(ARGS.json) if ARGS.json else workdir / "summary.json"
    if VALGRIND and shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install -y valgrind)")
    log(f"soak {ARGS.mode}, {ARGS.duration:.0f}s, seed {seed}, workdir {workdir}")

    pki = make_pki(workdir / "pki")
    procs = Processes()
    app = App("echo")
    port_in, port_out = free_port(), free_port()
    mesh = {
        "trust_bundles": {TRUST_DOMAIN: [str(pki / "root.pem")]},
        "policy": {"default": "deny", "rules": [
            {"name": "allow-frontend", "action": "allow", "from": [{"id": spiffe_id("frontend")}]}]},
        "destinations": [{"address": f"127.0.0.1:{port_in}", "spiffe_id": spiffe_id("backend")}],
    }
    ca = agents = None
    problems = []
    result = {"mode": ARGS.mode, "duration_s": ARGS.duration, "seed": seed,
              "workdir": str(workdir), "mtlsd": ARGS.mtlsd, "mtls_ca": ARGS.mtls_ca,
              "cert_ttl_s": CERT_TTL_S, "handshake_ms": HANDSHAKE_MS}
    try:
        ca = MtlsCa(procs, ARGS.mtls_ca, pki, workdir / "mtls-ca", mesh=mesh)
        binary = agent_binary(workdir)
        backend = Agent(procs, binary, workdir / "backend", agent_config(
            ca, pki, workdir, "backend",
            inbound={"listeners": [{"address": f"127.0.0.1:{port_in}", "app_port": app.port}]}))
        frontend = Agent(procs, binary, workdir / "frontend", agent_config(
            ca, pki, workdir, "frontend",
            outbound={"listeners": [{"address": f"127.0.0.1:{port_out}",
                                     "destination": f"127.0.0.1:{port_in}"}],
                      "unknown_destination": "deny"}))
        agents = {"backend": backend, "frontend": frontend}
        for name, agent in agents.items():
            env = dict(os.environ, MTLSD_NAME=name)
            if ARGS.mode == "asan":
                env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
            agent.start(env=env)
        for name, agent in agents.items():
            wait_until(lambda a=agent: "identity ready:" in a.stderr(),
                       f"{name} to get its first certificate")
        # One echo end to end before anything is measured.
        wait_until(lambda: _try(lambda: good_short(port_out, random.Random(0))),
                   "the first echo through both agents")

        pids = {name: a.proc.pid for name, a in agents.items()}
        pids["mtls-ca"] = ca.proc.pid
        res = Resources(pids)
        start_res = {name: Resources.sample(pid) for name, pid in pids.items()}
        res.take()
        res.thread.start()
        metrics0 = {name: fetch_metrics(a) for name, a in agents.items()}

        def rotations():
            return sum(a.stderr().count("identity ready:") for a in agents.values())

        rotations0 = {name: a.stderr().count("identity ready:") for name, a in agents.items()}
        rng = random.Random(seed)
        t0 = time.monotonic()
        deadline = t0 + ARGS.duration
        max_n = int(ARGS.duration * 50) + 10
        long_conns = []
        for i in range(4):
            TALLY.add("good.long.attempted")
            long_conns.append(LongLived(port_out, i, rotations))
        ctx = {"untrusted_ca": tls_context(pki / "bad" / "unknown-root"),
               "wrong_id": tls_context(pki / "workloads" / "other"),
               "bad_spiffe_id": tls_context(pki / "bad" / "bad-spiffe-id"),
               "no_cert": tls_context(None)}
        pause = 0.5 if VALGRIND else 0.3
        loops = [("short", lambda r: good_short(port_out, r), 0.1, "good")] * 3
        loops += [("garbage", lambda r: hostile_garbage(port_in, r), pause, "hostile"),
                  ("reset_handshake", lambda r: hostile_reset_handshake(port_in, r), pause,
                   "hostile"),
                  ("reset_stream", lambda r: reset_stream(port_out, r), pause, "hostile")]
        for name, c in ctx.items():
            loops.append((name, lambda r, c=c, n=name: hostile_tls(port_in, c, n), pause,
                          "hostile"))
        loops += [("half_open", lambda r: hostile_half_open(port_in, r), 0.1, "hostile")] * 4
        threads = []
        for name, body, p, kind in loops:
            ok = f"{kind}.{name}.{'ok' if kind == 'good' else 'refused'}"
            t = threading.Thread(target=run_loop, daemon=True,
                                 args=(name, deadline, max_n, body, p,
                                       random.Random(rng.random()), ok,
                                       f"{kind}.{name}.{'failed' if kind == 'good' else 'anomaly'}",
                                       kind))
            threads.append(t)
        threads.append(threading.Thread(target=long_lived_loop, daemon=True,
                                        args=(long_conns, port_out, deadline,
                                              random.Random(rng.random()), rotations)))
        for t in threads:
            t.start()
        next_report = t0 + 60
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=1)
            for name, a in agents.items():
                if a.proc.poll() is not None and not STOP.is_set():
                    problems.append(f"{name} exited with {a.proc.returncode} during the run")
                    log(f"PROBLEM: {name} exited with {a.proc.returncode}; stopping the traffic")
                    STOP.set()
            if time.monotonic() >= next_report:
                next_report += 60
                log(f"{time.monotonic() - t0:.0f}s: good short {TALLY.get('good.short.ok')} ok "
                    f"{TALLY.get('good.short.failed')} failed, long messages "
                    f"{TALLY.get('good.long.messages')}, hostile "
                    f"{sum(v for k, v in TALLY.counts.items() if k.endswith('.refused'))}, "
                    f"rotations {rotations() - sum(rotations0.values())}, problems "
                    f"{TALLY.problem_count}")
            if time.monotonic() > deadline + REFUSAL_BOUND_S + IO_TIMEOUT_S * 2:
                problems.append("traffic threads did not finish after the deadline")
                break
        elapsed = time.monotonic() - t0
        result["stopped_early"] = STOP.is_set()
        spans = []
        for conn in long_conns:
            try:
                spans.append(conn.finish())
                TALLY.add("good.long.ok")
            except Exception as e:  # noqa: BLE001
                TALLY.add("good.long.failed")
                TALLY.problem(f"good long #{conn.index}: finishing: {type(e).__name__}: {e}")

        # Quiesce: every connection closed in both agents.
        def idle():
            ms = {name: fetch_metrics(a) for name, a in agents.items()}
            return ms if all(active(m) == 0 for m in ms.values()) else None
        try:
            metrics1 = wait_until(idle, "both agents to have no connection open",
                                  timeout=REFUSAL_BOUND_S + 30, interval=0.5)
        except AssertionError as e:
            problems.append(str(e))
            metrics1 = {name: fetch_metrics(a) for name, a in agents.items()}
        time.sleep(1)  # let freed memory and fds settle before the end sample
        end_res = {name: Resources.sample(pid) for name, pid in pids.items()}
        res.take()
        res.stop.set()

        # ---- figures
        counts = dict(TALLY.counts)
        good = {k: {"attempted": counts.get(f"good.{k}.attempted", 0),
                    "ok": counts.get(f"good.{k}.ok", 0),
                    "failed": counts.get(f"good.{k}.failed", 0)} for k in ("short", "long")}
        good["short"]["bytes"] = counts.get("good.short.bytes", 0)
        good["long"]["messages"] = counts.get("good.long.messages", 0)
        good["long"]["rotations_spanned"] = spans
        hostile = {}
        for key, v in counts.items():
            kind, name, what = key.split(".", 2)
            if kind == "hostile":
                hostile.setdefault(name, {})[what] = v
        rot = {}
        for name, a in agents.items():
            m0 = metric_series(metrics0[name], "mtlsd_certificate_rotations_total")
            m1 = metric_series(metrics1[name], "mtlsd_certificate_rotations_total")
            f1 = metric_series(metrics1[name], "mtlsd_certificate_rotation_failures_total")
            rot[name] = {"metric_delta": int(sum(m1.values()) - sum(m0.values())),
                         "log_delta": a.stderr().count("identity ready:") - rotations0[name],
                         "failures_total": int(sum(f1.values()))}
        closed = {}
        for name, direction in (("backend", "inbound"), ("frontend", "outbound")):
            before = closed_by_reason(metrics0[name], direction)
            after = closed_by_reason(metrics1[name], direction)
            closed[f"{name}.{direction}"] = {r: after[r] - before.get(r, 0) for r in after
                                             if after[r] - before.get(r, 0)}
        resources = {name: res.summary(name, start_res[name], end_res[name]) for name in pids}
        result["certificates_issued_by_mtls_ca"] = sum(1 for l in ca.access_lines()
                                                       if l.get("serial"))
        result.update({"elapsed_s": round(elapsed, 1), "good": good, "hostile": hostile,
                       "rotations": rot, "closed_by_reason": closed, "resources": resources})

        # ---- judgement
        for k, g in good.items():
            if g["failed"]:
                problems.append(f"{g['failed']} good {k} connection(s) failed")
        if good["short"]["ok"] == 0:
            problems.append("no good connection succeeded")
        for name, h in hostile.items():
            if h.get("anomaly"):
                problems.append(f"{h['anomaly']} hostile {name} connection(s) not refused cleanly")
        expect = max(1, int(elapsed // 66) - 1)
        for name, r in rot.items():
            if r["metric_delta"] < expect or r["log_delta"] < expect:
                problems.append(f"{name}: {r['metric_delta']} rotations by metrics, "
                                f"{r['log_delta']} by log in {elapsed:.0f}s (expected >= {expect})")
        inbound = closed["backend.inbound"]
        # The inbound agent: hostile connections end with a refusal reason,
        # good ones "ok" (a reset_stream may end either way, or downstream_error).
        unexpected_in = {r: n for r, n in inbound.items()
                         if r in ("internal", "out_of_memory", "no_identity",
                                  "connection_limit", "shutdown", "upstream_error")}
        if unexpected_in:
            problems.append(f"backend inbound closed with unexpected reasons {unexpected_in}")
        refused = sum(n for r, n in inbound.items() if r not in ("ok", "downstream_error"))
        hostile_direct = sum(h.get("refused", 0) for n, h in hostile.items() if n != "reset_stream")
        result["hostile_refused_inbound_total"] = refused
        result["hostile_direct_total"] = hostile_direct
        if refused < hostile_direct * 0.95:
            problems.append(f"backend counted {refused} refusals for {hostile_direct} hostile "
                            f"connections")
        outbound = closed["frontend.outbound"]
        bad_out = {r: n for r, n in outbound.items() if r not in ("ok", "downstream_error")}
        if bad_out:
            problems.append(f"frontend outbound closed with failure reasons {bad_out}")
        for name, r in resources.items():
            if name == "mtls-ca":
                continue
            if r["fds"]["end"] > r["fds"]["start"] + 2:
                problems.append(f"{name}: {r['fds']['start']} fds at start, {r['fds']['end']} "
                                f"at the end (leak?)")
    except Exception as e:  # noqa: BLE001 - the harness itself failed: report it
        import traceback
        traceback.print_exc()
        problems.append(f"harness: {type(e).__name__}: {e}")
    finally:
        errors = {}
        for name, a in (agents or {}).items():
            if a.proc is None:
                continue
            status, killed = a.stop()
            entry = {"exit_status": status, "killed": killed,
                     "sanitizer": sanitizer_report(a.stderr())}
            if VALGRIND:
                entry["valgrind"] = valgrind_report(a.dir.parent / f"{name}.valgrind.log")
                v = entry["valgrind"]
                if status == 99 or v["errors"] or v["definitely_lost_bytes"]:
                    problems.append(f"{name}: valgrind reports {v['errors']} error(s), "
                                    f"{v['definitely_lost_bytes']} bytes definitely lost "
                                    f"(exit {status}; {v['log']})")
            if killed or (status != 0 and not (VALGRIND and status == 99)):
                problems.append(f"{name}: {'killed after SIGTERM' if killed else f'exit {status}'}")
            if entry["sanitizer"]:
                problems.append(f"{name}: sanitizer report {entry['sanitizer']} in {a.stderr_path}")
            errors[name] = entry
        if ca is not None:
            ca.stop()
            status, killed, _ = ca.stops[-1] if ca.stops else (None, False, None)
            errors["mtls-ca"] = {"exit_status": status, "killed": killed,
                                 "sanitizer": sanitizer_report(ca.stderr())}
            if killed or status != 0:
                problems.append(f"mtls-ca: {'killed' if killed else f'exit {status}'}")
            if errors["mtls-ca"]["sanitizer"]:
                problems.append(f"mtls-ca: sanitizer report in {ca.stderr_path}")
        procs.stop_all()
        app.close()
        result["errors"] = errors
        result["problems"] = problems + TALLY.problems[:50]
        result["problem_count"] = len(problems) + TALLY.problem_count
        result["pass"] = result["problem_count"] == 0
        summary_path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
        print_summary(result, summary_path)
    return 0 if result["pass"] else 1


def _try(fn):
    try:
        fn()
        return True
    except Exception:  # noqa: BLE001 - polled until it works
        return False


def print_summary(r, path):
    print("\n==== soak summary ====")
    print(f"mode {r['mode']}, {r.get('elapsed_s', 0)}s of traffic (asked {r['duration_s']:.0f}s), "
          f"seed {r['seed']}")
    for k, g in r.get("good", {}).items():
        extra = (f", {g['bytes']} bytes" if "bytes" in g else
                 f", {g['messages']} echoes, rotations spanned {g['rotations_spanned']}")
        print(f"good {k}: {g['attempted']} attempted, {g['ok']} ok, {g['failed']} failed{extra}")
    if "certificates_issued_by_mtls_ca" in r:
        print(f"certificates issued by mtls-ca: {r['certificates_issued_by_mtls_ca']}")
    for k, h in sorted(r.get("hostile", {}).items()):
        print(f"hostile {k}: {h.get('attempted', 0)} attempted, {h.get('refused', 0)} ended as "
              f"expected, {h.get('anomaly', 0)} anomalies")
    for k, v in r.get("rotations", {}).items():
        print(f"rotations {k}: {v['metric_delta']} (metrics), {v['log_delta']} (log), "
              f"{v['failures_total']} failures")
    for k, v in r.get("closed_by_reason", {}).items():
        print(f"closed {k}: {json.dumps(v, sort_keys=True)}")
    if "hostile_direct_total" in r:
        print(f"hostile connections at the inbound port {r['hostile_direct_total']}, refusals "
              f"counted by the backend {r['hostile_refused_inbound_total']}")
    for k, v in r.get("resources", {}).items():
        print(f"{k}: RSS KiB {v['rss_kb']['start']} / {v['rss_kb']['peak']} / {v['rss_kb']['end']}"
              f", fds {v['fds']['start']} / {v['fds']['peak']} / {v['fds']['end']} "
              f"(start / peak / end)")
    for k, v in r.get("errors", {}).items():
        print(f"{k}: exit {v['exit_status']}{' (killed)' if v['killed'] else ''}, sanitizer "
              f"{v['sanitizer'] or 'clean'}"
              + (f", valgrind {v['valgrind']['errors']} errors, "
                 f"{v['valgrind']['definitely_lost_bytes']} B definitely lost"
                 if 'valgrind' in v else ""))
    for p in r["problems"]:
        print(f"PROBLEM: {p}")
    print(f"{'PASS' if r['pass'] else 'FAIL'} ({r['problem_count']} problem(s)); summary {path}")


if __name__ == "__main__":
    sys.exit(main())
