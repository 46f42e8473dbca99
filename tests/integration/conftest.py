"""Shared fixtures and helpers for the mtlsd integration suite.

Everything runs as real processes on 127.0.0.1: the agent binary (MTLSD_BIN),
`openssl s_client` / `openssl s_server` as foreign TLS peers, and small Python
TCP applications running in threads of the test process.

Rules every helper follows:
  * every wait is bounded (WAIT seconds unless a test says otherwise);
  * every spawned process is tracked and stopped by PID at teardown
    (SIGTERM, bounded wait, then SIGKILL);
  * an agent whose stderr shows a sanitizer report fails the test.
"""

import errno
import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MTLSD_BIN = os.environ.get("MTLSD_BIN") or str(REPO / "bazel-bin" / "agent" / "mtlsd")
MKPKI = REPO / "certs" / "mkpki.sh"

TRUST_DOMAIN = "example.org"
# Upper bound for any single wait. Generous so that ASan builds on a loaded
# 2-core machine pass; a healthy run never comes close to it.
WAIT = float(os.environ.get("MTLSD_TEST_WAIT", "30"))
# Upper bound for a process to exit after SIGTERM before we SIGKILL it.
STOP_WAIT = float(os.environ.get("MTLSD_TEST_STOP_WAIT", "15"))

SANITIZER_MARKERS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error:",  # UBSan
)


def assert_no_sanitizer_report(stderr_text, where):
    for marker in SANITIZER_MARKERS:
        if marker in stderr_text:
            raise AssertionError(f"sanitizer report in agent stderr ({where}):\n"
                                 f"{stderr_text[-6000:]}")


def spiffe_id(name):
    return f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{name}"


# --------------------------------------------------------------------------
# waiting, ports


def wait_until(predicate, what, timeout=WAIT, interval=0.02):
    """Polls |predicate| until it returns a truthy value (returned) or fails."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


# Ports handed to agents are picked below the kernel's ephemeral range
# (net.ipv4.ip_local_port_range, 32768-60999 by default), so no outgoing
# connect() of this or another process can take one as its source port
# between the pick and the agent's bind. The range is cut into blocks; a
# session owns a block through an flock on a file shared by every test
# session of the machine (one descriptor per block, held until the process
# exits), so two concurrent sessions never hand out the same port.
_PORT_RANGE = (20000, 32000)
_PORT_BLOCK = 250
_PORT_LOCK_DIR = Path("/tmp/mtlsd-test-ports")
_port_blocks = []   # open, flocked lock files of the blocks this session owns
_next_ports = iter(())


def _claim_port_block():
    import fcntl
    import random
    low, high = _PORT_RANGE
    count = (high - low) // _PORT_BLOCK
    _PORT_LOCK_DIR.mkdir(mode=0o1777, exist_ok=True)
    first = random.randrange(count)
    for i in range(count):
        block = (first + i) % count
        f = open(_PORT_LOCK_DIR / f"block-{block}", "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _port_blocks.append(f)
        start = low + block * _PORT_BLOCK
        return iter(range(start, start + _PORT_BLOCK))
    raise RuntimeError("every test port block is owned by another session")


def free_port():
    """A loopback TCP port that is free now, outside the ephemeral range and
    owned by this session (never handed out twice on this machine while the
    session lives)."""
    global _next_ports
    for _ in range(_PORT_RANGE[1] - _PORT_RANGE[0]):
        port = next(_next_ports, None)
        if port is None:
            _next_ports = _claim_port_block()
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("could not find a free port")


def _listening_ports():
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A":  # TCP_LISTEN
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except FileNotFoundError:
            pass
    return ports


def is_listening(port):
    return port in _listening_ports()


def addr(sock):
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


# --------------------------------------------------------------------------
# processes


class Processes:
    """Owns every process a test (or module) spawns; stops them all by PID."""

    def __init__(self):
        self._procs = []

    def spawn(self, args, **kwargs):
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen([str(a) for a in args], **kwargs)
        self._procs.append(proc)
        return proc

    @staticmethod
    def stop(proc, timeout=STOP_WAIT, on_hang=None):
        """SIGTERM, bounded wait, then SIGKILL. Returns the exit status and
        whether SIGKILL was needed. |on_hang(proc)| runs before the SIGKILL."""
        killed = False
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                killed = True
                if on_hang is not None:
                    try:
                        on_hang(proc)
                    except Exception:  # diagnostics only; never skip the kill
                        pass
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=timeout)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        return proc.returncode, killed

    def stop_all(self):
        for proc in reversed(self._procs):
            self.stop(proc)
        self._procs.clear()


@pytest.fixture
def procs():
    p = Processes()
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture(scope="module")
def module_procs():
    p = Processes()
    try:
        yield p
    finally:
        p.stop_all()


def read_until(stream, predicate, timeout=WAIT):
    """Reads a pipe (non-blocking, via select) until predicate(buffer) holds or
    EOF; returns the buffer. Bounded by |timeout|."""
    buf = b""
    fd = stream.fileno()
    deadline = time.monotonic() + timeout
    while not predicate(buf):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout:.1f}s reading a pipe; got {buf!r}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.2))
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
    return buf


# --------------------------------------------------------------------------
# PKI


class Pki:
    def __init__(self, root):
        self.root = Path(root)
        self.bundle = self.root / "bundle.pem"
        self.intermediate = self.root / "intermediate.pem"
        # Root + intermediate: for leaf-only identities (DER), whose peers
        # cannot get the intermediate from the handshake.
        self.bundle_with_intermediate = self.root / "bundle+intermediate.pem"

    def workload(self, name):
        return self.root / "workloads" / name

    def bad(self, case):
        return self.root / "bad" / case

    def id_of(self, directory):
        return Path(directory, "spiffe_id").read_text().strip()


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    out = tmp_path_factory.mktemp("pki")
    res = subprocess.run(
        ["bash", str(MKPKI), "--out", str(out), "--bad", "frontend", "backend", "other"],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, f"mkpki.sh failed:\n{res.stdout}\n{res.stderr}"
    p = Pki(out)
    p.bundle_with_intermediate.write_text(p.bundle.read_text() + p.intermediate.read_text())
    return p


# Every broken certificate certs/mkpki.sh --bad makes, with the reason the
# agent must log for it (certificate directory under the PKI, reason). Used
# for client certificates (inbound) and server certificates (outbound) alike.
BAD_CERT_CASES = {
    "unknown-trust-domain": ("bad/other-td", "unknown_trust_domain"),
    "expired": ("bad/expired", "cert_expired"),
    "not-yet-valid": ("bad/notyetvalid", "cert_not_yet_valid"),
    "two-uri-sans": ("bad/two-uri", "multiple_uri_sans"),
    "no-uri-san": ("bad/no-uri", "no_uri_san"),
    "ca-leaf": ("bad/ca-leaf", "leaf_is_ca"),
    "unknown-root": ("bad/unknown-root", "unknown_ca"),
    "bad-key-usage": ("bad/bad-keyusage", "bad_key_usage"),
    "bad-spiffe-id": ("bad/bad-spiffe-id", "bad_spiffe_id"),
    "rsa-1024": ("bad/weak-rsa", "weak_key"),
    "p-521": ("bad/p521", "weak_key"),
    "sha1-leaf": ("bad/sha1-leaf", "weak_signature"),
    "sha1-intermediate": ("bad/sha1-intermediate", "weak_signature"),
}

# What the access log's detail says for the weak cases: which certificate, and why.
WEAK_CERT_DETAILS = {
    "rsa-1024": "leaf: RSA key of 1024 bits, fewer than 2048",
    "p-521": "leaf: EC key on secp521r1, not P-256 or P-384",
    "sha1-leaf": "leaf: signed with ecdsa-with-SHA1: SHA-256 or stronger is required",
    "sha1-intermediate":
        "intermediate 1: signed with ecdsa-with-SHA1: SHA-256 or stronger is required",
}


def issue_new_leaf(pki, workdir, name):
    """Issues a fresh leaf for |name| from the session's CA (same root and
    intermediate, new key and serial) in a private copy of the CA directory.
    Returns the new workload directory."""
    ca = Path(workdir)
    ca.mkdir(parents=True, exist_ok=True)
    for f in ("root.pem", "root.key", "intermediate.pem", "intermediate.key", "bundle.pem"):
        shutil.copy2(pki.root / f, ca / f)
    res = subprocess.run(["bash", str(MKPKI), "--out", str(ca), name],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"mkpki.sh failed:\n{res.stdout}\n{res.stderr}"
    return ca / "workloads" / name


def cert_serial(cert_pem_path):
    """The serial number of the first certificate in a PEM file, as an int."""
    from cryptography import x509

    data = Path(cert_pem_path).read_bytes()
    return x509.load_pem_x509_certificate(data).serial_number


# --------------------------------------------------------------------------
# the agent


@pytest.fixture(scope="session")
def mtlsd_bin():
    if not (os.path.isfile(MTLSD_BIN) and os.access(MTLSD_BIN, os.X_OK)):
        pytest.fail(f"agent binary not found: {MTLSD_BIN} (build it with "
                    f"`bazel build //agent:mtlsd` or set MTLSD_BIN)")
    return MTLSD_BIN


def base_config(pki, *, workload="backend", identity=None, bundle=None, timeouts=None,
                inbound=None, outbound=None, policy=None, **extra):
    """An agent configuration as a dict (dumped to YAML in key order)."""
    wl = pki.workload(workload)
    cfg = {
        "trust_domain": TRUST_DOMAIN,
        "workers": 2,
        "log_level": "debug",
        "identity": identity or {
            "cert_file": str(wl / "chain.pem"),
            "key_file": str(wl / "key.pem"),
            "reload_interval_ms": 200,
        },
        "trust_bundles": [{"trust_domain": TRUST_DOMAIN, "file": str(bundle or pki.bundle)}],
        "timeouts": {"handshake_ms": 10000, "connect_ms": 5000, "idle_ms": 300000,
                     "drain_ms": 1000, **(timeouts or {})},
    }
    if inbound is not None:
        cfg["inbound"] = inbound
    if outbound is not None:
        cfg["outbound"] = outbound
    if policy is not None:
        cfg["policy"] = policy
    cfg.update(extra)
    return cfg


def inbound_section(port_in, app_port):
    return {"listeners": [{"address": f"127.0.0.1:{port_in}", "app_port": app_port}],
            "app_address": "127.0.0.1"}


def outbound_section(port_out, destination_port, expected_id=None, unknown="trust_domain"):
    section = {
        "listeners": [{"address": f"127.0.0.1:{port_out}",
                       "destination": f"127.0.0.1:{destination_port}"}],
    }
    if expected_id is not None:
        section["destinations"] = [{"address": f"127.0.0.1:{destination_port}",
                                    "spiffe_id": expected_id}]
    section["unknown_destination"] = unknown
    return section


def frontend_only_policy(app_port):
    return {
        "default": "allow",
        "rules": [{
            "name": "frontend-only",
            "action": "allow",
            "ports": [app_port],
            "from": [{"id": spiffe_id("frontend")}],
        }],
    }


class Agent:
    """One mtlsd process with its own directory (config, access log, stderr)."""

    def __init__(self, procs, binary, directory, config):
        self.procs = procs
        self.binary = binary
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.config_path = self.dir / "mtlsd.yaml"
        self.access_log = self.dir / "access.log"
        self.stderr_path = self.dir / "stderr.log"
        self.stdout_path = self.dir / "stdout.log"
        config.setdefault("access_log", str(self.access_log))
        # Many agents share this network namespace: let the kernel pick each
        # admin port (the agent logs it; see admin_url).
        config.setdefault("admin", {"address": "127.0.0.1:0"})
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.proc = None
        self.stop_result = None  # (exit status, needed SIGKILL) once stopped
        self.expect_clean_stop = True  # teardown fails unless SIGTERM -> exit 0

    def listener_ports(self):
        ports = []
        for section in ("inbound", "outbound"):
            for listener in self.config.get(section, {}).get("listeners", []):
                ports.append(int(listener["address"].rsplit(":", 1)[1]))
        return ports

    def start(self, env=None):
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = self.procs.spawn([self.binary, "--config", self.config_path],
                                         stdout=out, stderr=err, env=env)
        ports = self.listener_ports()

        # What a user sees: the "started" line, logged once every listener
        # is bound (and, with certificate files, the identity is loaded).
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode} during "
                                     f"start-up; stderr:\n{self.stderr()}")
            if not re.search(r" mtlsd \S+ started \(", self.stderr()):
                return False
            listening = _listening_ports()
            assert all(p in listening for p in ports), f"started without listeners {ports}"
            return True

        wait_until(ready, f"agent {self.dir.name} to log 'started' (listeners {ports})")
        return self

    def admin_url(self, telemetry=False):
        """http://IP:PORT of the admin listener, from the agent's start-up log."""
        pattern = (r"admin listening on (\S+) \(health and metrics only\)" if telemetry
                   else r"admin listening on (\S+)$")
        found = wait_until(lambda: re.search(pattern, self.stderr(), re.M),
                           "the agent's 'admin listening on' log line")
        return f"http://{found.group(1)}"

    def admin(self, path, method="GET", telemetry=False):
        """(status, body text) of one admin request."""
        req = urllib.request.Request(self.admin_url(telemetry) + path, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def check_sanitizers(self):
        assert_no_sanitizer_report(self.stderr(), str(self.stderr_path))

    def stop(self, timeout=STOP_WAIT):
        """SIGTERM and wait (bounded); returns (exit status, needed SIGKILL).
        If the agent does not exit in time, the stacks of all its threads are
        saved to hang-backtrace.txt (when gdb is installed) before SIGKILL."""
        if self.proc.poll() is None or self.stop_result is None:
            self.stop_result = Processes.stop(self.proc, timeout, on_hang=self._dump_stacks)
        return self.stop_result

    def _dump_stacks(self, proc):
        gdb = shutil.which("gdb")
        if gdb is None:
            return
        res = subprocess.run([gdb, "-p", str(proc.pid), "-batch", "-nx",
                              "-ex", "thread apply all bt"],
                             capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
        (self.dir / "hang-backtrace.txt").write_text(res.stdout + res.stderr)

    def check_stopped_cleanly(self):
        """After stop(): exited by itself with status 0."""
        status, killed = self.stop()
        trace = self.dir / "hang-backtrace.txt"
        if killed:
            raise AssertionError(
                f"agent {self.dir.name} did not exit within {STOP_WAIT}s of SIGTERM and was "
                f"killed; thread stacks: {trace if trace.exists() else '(gdb unavailable)'}\n"
                f"stderr tail:\n{self.stderr()[-3000:]}")
        if status != 0:
            raise AssertionError(f"agent {self.dir.name} exited with status {status} on SIGTERM;"
                                 f" stderr tail:\n{self.stderr()[-3000:]}")

    # ---- access log

    def log_lines(self):
        try:
            data = self.access_log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        lines = []
        for raw in data.split("\n")[:-1]:  # only complete lines
            if raw.strip():
                lines.append(json.loads(raw))
        return lines

    def find_log(self, **match):
        for line in self.log_lines():
            if all((v(line.get(k)) if callable(v) else line.get(k) == v)
                   for k, v in match.items()):
                return line
        return None

    def wait_log(self, timeout=WAIT, **match):
        try:
            return wait_until(lambda: self.find_log(**match),
                              f"an access-log line matching {match}", timeout=timeout)
        except AssertionError as e:
            lines = "\n".join(json.dumps(l) for l in self.log_lines()[-20:])
            raise AssertionError(f"{e}\naccess log of {self.dir.name}:\n{lines}\n"
                                 f"stderr tail:\n{self.stderr()[-3000:]}") from None


@pytest.fixture
def agents(procs, mtlsd_bin, tmp_path):
    """Factory: agents(name, config) -> started Agent. Stopped at teardown,
    and the test fails if any of them printed a sanitizer report."""
    started = []

    def make(name, config, start=True, env=None):
        agent = Agent(procs, mtlsd_bin, tmp_path / name, config)
        started.append(agent)
        return agent.start(env=env) if start else agent

    yield make
    problems = []
    for agent in started:
        if agent.proc is None:
            continue
        if not agent.expect_clean_stop:
            agent.stop()
            continue
        try:
            agent.check_stopped_cleanly()
        except AssertionError as e:
            problems.append(str(e))
    for agent in started:
        try:
            agent.check_sanitizers()
        except AssertionError as e:
            problems.append(str(e))
    if problems:
        raise AssertionError("\n\n".join(problems))


# --------------------------------------------------------------------------
# applications (plain TCP servers in threads)


class App:
    """A plain TCP application on 127.0.0.1.

    mode "echo": echoes everything; on EOF shuts down its write side.
    mode "reply_after_eof": reads until EOF, then sends
        b"reply after EOF: <n> bytes" and closes.
    mode "count": accepts, reads and discards until EOF (a sink).
    Records every connection (bytes received, whether EOF was seen).

    Subclasses change what a connection does by overriding _new_record and
    _serve; the listener and its threads stay this class's."""

    def __init__(self, mode="echo"):
        self.mode = mode
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.connections = []  # dicts: received, eof, error
        self.stopping = threading.Event()
        self.threads = []
        self.acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self.acceptor.start()

    @property
    def connection_count(self):
        with self.lock:
            return len(self.connections)

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            record = self._new_record()
            with self.lock:
                self.connections.append(record)
            t = threading.Thread(target=self._serve, args=(conn, record), daemon=True)
            self.threads.append(t)
            t.start()

    def _new_record(self):
        return {"received": 0, "eof": False, "error": None}

    def _serve(self, conn, record):
        conn.settimeout(WAIT)
        try:
            with conn:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        record["eof"] = True
                        break
                    record["received"] += len(data)
                    if self.mode == "echo":
                        conn.sendall(data)
                if self.mode == "reply_after_eof":
                    conn.sendall(b"reply after EOF: %d bytes" % record["received"])
                conn.shutdown(socket.SHUT_WR)
                # Wait (bounded) for the peer to finish too, so closing never
                # turns into a reset while our last bytes are in flight.
                while conn.recv(65536):
                    pass
        except OSError as e:
            record["error"] = repr(e)

    def close(self):
        self.stopping.set()
        self.sock.close()
        self.acceptor.join(timeout=WAIT)
        for t in self.threads:
            t.join(timeout=WAIT)


@pytest.fixture
def apps():
    made = []

    def make(mode="echo"):
        app = App(mode)
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()


# --------------------------------------------------------------------------
# clients


def client_socket(timeout=WAIT):
    """A TCP socket already bound to its loopback source port, so its address
    is known even if the connection is refused or reset during connect().
    The port is never reused within the session, so a client's address
    identifies its access-log line (the kernel would hand a just-freed port
    out again)."""
    for _ in range(50):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", free_port()))
        except OSError as e:
            sock.close()
            if e.errno == errno.EADDRINUSE:
                continue  # taken since free_port() looked
            raise
        sock.settimeout(timeout)
        return sock
    raise RuntimeError("could not bind a client socket to a fresh port")


def connect(port, timeout=WAIT):
    sock = client_socket(timeout)
    try:
        sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


def recv_until_eof(sock, limit=64 * 1024 * 1024):
    """Reads until EOF (bounded by the socket timeout per recv)."""
    chunks = []
    total = 0
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
        total += len(data)
        assert total <= limit, "peer sent more than expected"


def send_all_then_shut(sock, payload):
    """Sends |payload| and SHUT_WR from a thread, so the caller can read
    concurrently (no deadlock on full buffers). Returns (thread, errors)."""
    errors = []

    def run():
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, errors


def recv_exactly(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, f"connection closed after {len(buf)} of {n} bytes"
        buf += chunk
    return buf


def echo_once(sock, message):
    sock.sendall(message)
    assert recv_exactly(sock, len(message)) == message


def roundtrip(port, payload):
    """Connects, sends |payload|, half-closes, reads until EOF. Returns
    (received bytes, client's local "ip:port")."""
    with connect(port) as sock:
        local = addr(sock)
        t, errors = send_all_then_shut(sock, payload)
        received = recv_until_eof(sock)
        t.join(timeout=WAIT)
        assert not t.is_alive(), "sender thread did not finish"
        assert not errors, f"sending failed: {errors}"
    return received, local


class SteadyTraffic:
    """Round trips of b"ping" through |port| on a thread, one every
    |interval| s and at most |limit|, until stop(): what a client sees while
    something happens to the mesh. Records every failed round trip."""

    def __init__(self, port, limit, interval):
        self.failures, self.done = [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(port, limit, interval),
                                        daemon=True)
        self._thread.start()

    def _run(self, port, limit, interval):
        while not self._stop.is_set() and self.done < limit:
            try:
                received, _ = roundtrip(port, b"ping")
                if received != b"ping":
                    self.failures.append(received)
            except (OSError, AssertionError) as e:
                self.failures.append(repr(e))
            self.done += 1
            time.sleep(interval)

    def wait_more(self, count, what):
        """Waits for |count| more round trips (or a failure)."""
        mark = self.done
        wait_until(lambda: self.done >= mark + count or self.failures, what)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=WAIT)


def tls_client_context(pki, cert_dir=None, chain_file="chain.pem"):
    """A Python (OpenSSL) TLS 1.3 client context that verifies the server
    against the bundle and presents |cert_dir|'s chain (None = no cert)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # SPIFFE SVIDs carry a URI SAN, no DNS name
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(str(pki.bundle))
    # Debian's OpenSSL would refuse to present a weak certificate at all; the
    # agent is the one under test, so the client presents what it is given.
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if cert_dir is not None:
        ctx.load_cert_chain(str(Path(cert_dir) / chain_file), str(Path(cert_dir) / "key.pem"))
    ctx.set_alpn_protocols(["mtlsd"])
    return ctx


def expect_refused_tls(ctx, port, payload=b"hello"):
    """Runs a TLS client that the server is expected to refuse. Returns
    (client's local "ip:port", what the client observed). Fails if the server
    sent any application data or if the close never came."""
    raw = client_socket()
    local = addr(raw)
    observed = None
    received = b""
    try:
        raw.connect(("127.0.0.1", port))
        tls = ctx.wrap_socket(raw)  # TLS 1.3: may "succeed" before the server judges us
        try:
            tls.sendall(payload)
            while True:
                data = tls.recv(4096)
                if not data:
                    observed = "eof"
                    break
                received += data
        finally:
            tls.close()
    except TimeoutError:
        raise AssertionError("the server neither refused nor closed the connection "
                             f"within {WAIT}s") from None
    except (ssl.SSLError, OSError) as e:
        observed = f"{type(e).__name__}: {e}"
    finally:
        raw.close()
    assert received == b"", f"server sent data to a refused client: {received!r}"
    return local, observed


# --------------------------------------------------------------------------
# network namespaces (tests that need root skip with a reason without it)

NETNS_TOOLS = ("ip", "iptables", "iptables-save", "iptables-restore", "setpriv", "ss")


def netns_unavailable():
    """Why namespace tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root for network namespaces and iptables"
    for tool in NETNS_TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@pytest.fixture
def netns():
    """A fresh, private network namespace, deleted afterwards."""
    why = netns_unavailable()
    if why:
        pytest.skip(why)
    import uuid
    name = "mtlsd-test-" + uuid.uuid4().hex[:8]
    res = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {res.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
