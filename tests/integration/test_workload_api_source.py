"""Identities from the SPIFFE Workload API (issue 14): agents whose SVIDs,
keys and trust bundles come from a SPIRE agent's socket, played by
fake_spire_agent.py (grpcio, its own CA; no code shared with the agent).

A backend agent (inbound, in front of an echo app) and a frontend agent
(outbound, expecting the backend's ID) each take their identity from their
own socket of one fake SPIRE agent, so both chain to the same CA. Tests wait
on what an operator sees (log lines, /ready, /metrics, /certs, the access
log), never on sleeps. Run with -s to see what the load test observed."""
import json
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
import yaml

from conftest import (
    REPO,
    TRUST_DOMAIN,
    WAIT,
    SteadyTraffic,
    addr,
    connect,
    echo_once,
    expect_refused_tls,
    free_port,
    inbound_section,
    outbound_section,
    roundtrip,
    spiffe_id,
    wait_until,
)

FAKE_SPIRE = REPO / "tests" / "integration" / "fake_spire_agent.py"
FEDERATED_TD = "other.org"
FEDERATED_PEER = f"spiffe://{FEDERATED_TD}/ns/default/sa/peer"


class FakeSpire:
    """One fake_spire_agent.py process: a socket per workload name."""

    def __init__(self, procs, workdir, names, ttl=3600, rotate_every=0, stopped=False):
        # Unix socket paths must fit 108 bytes: pytest's tmp_path may not.
        self.sockdir = Path(tempfile.mkdtemp(prefix="mtlsd-spire-"))
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sockets = {name: self.sockdir / f"{name}.sock" for name in names}
        args = ["/usr/bin/python3", FAKE_SPIRE, "--workdir", self.workdir, "--ttl", ttl,
                "--rotate-every", rotate_every]
        for name, path in self.sockets.items():
            args += ["--socket", f"{path}={spiffe_id(name)}"]
        if stopped:
            args.append("--stopped")
        self.stderr = open(self.workdir / "fake-spire.err", "wb")
        self.proc = procs.spawn(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=self.stderr, text=True, bufsize=1)
        self.lines = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        wait_until(lambda: self._seen("fake-spire-agent ready"), "the fake SPIRE agent to start")

    def _read(self):
        for line in self.proc.stdout:
            with self.lock:
                self.lines.append(line.strip())

    def _seen(self, prefix):
        if self.proc.poll() is not None:
            raise AssertionError(f"fake SPIRE agent exited with {self.proc.returncode}: "
                                 f"{(self.workdir / 'fake-spire.err').read_text()[-2000:]}")
        with self.lock:
            return next((l for l in self.lines if l.startswith(prefix)), None)

    def address(self, name):
        return "unix://" + str(self.sockets[name])

    def command(self, cmd):
        """Sends |cmd| and waits for its "ok" (its messages are then queued
        for every open stream). Returns the reply."""
        with self.lock:
            mark = len(self.lines)
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

        def replied():
            self._seen("")
            with self.lock:
                return next((l for l in self.lines[mark:] if l.startswith("ok " + cmd.split()[0])),
                            None)
        return wait_until(replied, f"the fake SPIRE agent to do '{cmd}'")

    def close(self):
        self.stderr.close()
        shutil.rmtree(self.sockdir, ignore_errors=True)


@pytest.fixture
def spire(procs, tmp_path):
    """Factory: spire(names, **options) -> a started FakeSpire."""
    made = []

    def make(names, **options):
        fake = FakeSpire(procs, tmp_path / "spire", names, **options)
        made.append(fake)
        return fake

    yield make
    for fake in made:
        fake.close()


def wl_config(fake, name, *, inbound=None, outbound=None, timeouts=None):
    cfg = {
        "trust_domain": TRUST_DOMAIN,
        "workers": 2,
        "log_level": "debug",
        "identity": {
            "workload_api_socket": fake.address(name),
            "workload_api_retry_initial_ms": 100,
            "workload_api_retry_max_ms": 500,
        },
        "timeouts": {"handshake_ms": 10000, "connect_ms": 5000, "idle_ms": 300000,
                     "drain_ms": 1000, **(timeouts or {})},
    }
    if inbound is not None:
        cfg["inbound"] = inbound
    if outbound is not None:
        cfg["outbound"] = outbound
    return cfg


# ---- what the agent shows


def ready(agent):
    return agent.admin("/ready")


def wait_ready(agent, what="ready"):
    wait_until(lambda: ready(agent)[0] == 200, f"agent {agent.dir.name} to be {what}")


def metrics(agent):
    status, body = agent.admin("/metrics")
    assert status == 200
    values = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values


def metric(agent, key):
    return metrics(agent).get(key, 0.0)


def rotations(agent):
    return metric(agent, 'mtlsd_certificate_rotations_total{source="workload_api"}')


def roots(agent, td=TRUST_DOMAIN):
    return metric(agent, f'mtlsd_trust_bundle_roots{{trust_domain="{td}"}}')


def refusals(agent, reason, stream="x509_svid"):
    return metric(agent,
                  f'mtlsd_workload_api_source_refusals_total{{stream="{stream}",reason="{reason}"}}')


def calls(agent, stream="x509_svid"):
    return metric(agent, f'mtlsd_workload_api_source_calls_total{{stream="{stream}"}}')


def certs(agent):
    status, body = agent.admin("/certs")
    assert status == 200, body
    return json.loads(body)


def start_pair(spire_agent, agents, app, timeouts=None):
    """Backend (inbound to |app|) and frontend (outbound to the backend),
    both ready. Returns (backend, frontend, port_out, port_in)."""
    port_in, port_out = free_port(), free_port()
    backend = agents("backend", wl_config(spire_agent, "backend",
                                          inbound=inbound_section(port_in, app.port),
                                          timeouts=timeouts))
    frontend = agents("frontend", wl_config(
        spire_agent, "frontend", timeouts=timeouts,
        outbound=outbound_section(port_out, port_in, expected_id=spiffe_id("backend"))))
    wait_ready(backend)
    wait_ready(frontend)
    return backend, frontend, port_out, port_in


def refused_through(agent, port):
    """A connection through |port| that the agent refuses: nothing comes
    back. Returns the client's "ip:port" (for the access log)."""
    sock = connect(port)
    local = addr(sock)
    try:
        sock.sendall(b"ping")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(16) == b"", "a refused connection echoed"
    except OSError:
        pass  # a reset is a refusal too
    finally:
        sock.close()
    return local


# ---- tests


def test_serves_mtls_with_svids_and_trust_from_the_workload_api(spire, agents, apps):
    fake = spire(["backend", "frontend"])
    app = apps("echo")
    backend, frontend, port_out, _ = start_pair(fake, agents, app)

    received, local = roundtrip(port_out, b"hello through SPIRE identities")
    assert received == b"hello through SPIRE identities"

    out = frontend.wait_log(direction="outbound", source=local)
    assert (out["decision"], out["peer_id"], out["local_id"]) == (
        "allow", spiffe_id("backend"), spiffe_id("frontend"))
    inb = backend.wait_log(direction="inbound", reason="ok")
    assert (inb["peer_id"], inb["local_id"]) == (spiffe_id("frontend"), spiffe_id("backend"))

    status, body = ready(backend)
    assert status == 200 and f"serving as {spiffe_id('backend')}" in body, body
    bundles_streaming = 'mtlsd_workload_api_source_stream_state{stream="x509_bundles",' \
                        'state="streaming"}'
    wait_until(lambda: metric(backend, bundles_streaming) == 1, "the bundles stream to deliver")
    m = metrics(backend)
    assert m['mtlsd_info{version="0.1.0",source="workload_api"}'] == 1
    assert m['mtlsd_workload_api_source_stream_state{stream="x509_svid",state="streaming"}'] == 1
    assert m['mtlsd_workload_api_source_stream_state{stream="x509_bundles",state="streaming"}'] == 1
    assert m['mtlsd_certificate_rotations_total{source="workload_api"}'] == 1
    assert m['mtlsd_trust_bundle_roots{trust_domain="example.org"}'] == 1
    c = certs(backend)
    assert c["source"] == "workload_api" and c["spiffe_id"] == spiffe_id("backend")
    assert "intermediate 1" in c["chain"][0]["issuer"]
    assert "identity ready: " + spiffe_id("backend") in backend.stderr()
    status, body = backend.admin("/config")
    assert json.loads(body)["identity"]["workload_api_socket"] == fake.address("backend")


def test_svid_and_root_rotation_under_traffic_fail_no_connection(spire, agents, apps):
    fake = spire(["backend", "frontend"], rotate_every=1.0)
    app = apps("echo")
    backend, frontend, port_out, _ = start_pair(fake, agents, app)
    pair = (backend, frontend)
    long_lived = connect(port_out)
    echo_once(long_lived, b"opened before any rotation")
    traffic = SteadyTraffic(port_out, limit=5000, interval=0.005)
    try:
        before = {a: rotations(a) for a in pair}
        wait_until(lambda: all(rotations(a) >= before[a] + 3 for a in pair),
                   "three SVID rotations on both agents")
        traffic.wait_more(20, "traffic across the SVID rotations")

        # Root rotation as SPIRE does it: publish the new root, sign with
        # it once everyone trusts it, retire the old one once nothing
        # chains to it.
        fake.command("add-root")
        wait_until(lambda: all(roots(a) == 2 for a in pair), "both agents to trust two roots")
        fake.command("switch-root")
        wait_until(lambda: all("intermediate 2" in certs(a)["chain"][0]["issuer"] for a in pair),
                   "both agents to serve SVIDs from the new root")
        traffic.wait_more(20, "traffic after the switch to the new root")
        fake.command("drop-old-root")
        wait_until(lambda: all(roots(a) == 1 for a in pair), "both agents to drop the old root")
        traffic.wait_more(20, "traffic after the old root went")
    finally:
        traffic.stop()
    echo_once(long_lived, b"still open after every rotation")
    long_lived.close()
    served = {a.dir.name: rotations(a) for a in pair}
    print(f"\nrotation under load: {traffic.done} connections, {len(traffic.failures)} failed; "
          f"SVIDs served {served}")
    assert traffic.failures == [], traffic.failures[:5]
    for a in pair:
        assert refusals(a, "root_removed", "x509_bundles") == 0
        assert refusals(a, "invalid_certificate") == 0


def test_accepts_a_peer_of_a_federated_trust_domain(spire, agents, apps):
    fake = spire(["backend"])
    app = apps("echo")
    port_in = free_port()
    backend = agents("backend", wl_config(fake, "backend",
                                          inbound=inbound_section(port_in, app.port)))
    wait_ready(backend)
    peer_dir = Path(fake.command(f"peer {FEDERATED_TD}").split()[-1])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # SVIDs carry a URI SAN, no DNS name
    ctx.load_verify_locations(str(peer_dir / "trusts.pem"))
    ctx.load_cert_chain(str(peer_dir / "chain.pem"), str(peer_dir / "key.pem"))
    ctx.set_alpn_protocols(["mtlsd"])

    local, _ = expect_refused_tls(ctx, port_in)
    line = backend.wait_log(direction="inbound", source=local)
    assert (line["decision"], line["reason"]) == ("deny", "unknown_trust_domain"), line

    def accepted(message):
        with connect(port_in) as raw:
            local = addr(raw)
            with ctx.wrap_socket(raw) as tls:
                echo_once(tls, message)
        line = backend.wait_log(direction="inbound", source=local)
        assert (line["decision"], line["peer_id"]) == ("allow", FEDERATED_PEER), line

    # Named by the bundles stream alone ("other.org", the bare key form):
    # trusted, and still trusted after an SVID rotation that does not name it.
    fake.command(f"federate {FEDERATED_TD} bundles-only")
    wait_until(lambda: roots(backend, FEDERATED_TD) == 1, "the federated bundle to be trusted")
    accepted(b"hello from a federated trust domain")
    serial = certs(backend)["serial"]
    fake.command("rotate")
    wait_until(lambda: certs(backend)["serial"] != serial, "an SVID rotation")
    assert roots(backend, FEDERATED_TD) == 1
    accepted(b"still trusted after the rotation")


def test_fails_closed_at_expiry_without_the_stream_and_recovers(spire, agents, apps):
    fake = spire(["backend", "frontend"], ttl=8)
    app = apps("echo")
    backend, frontend, port_out, _ = start_pair(fake, agents, app, timeouts={"handshake_ms": 1500})
    pair = (backend, frontend)
    # Fresh SVIDs, so that however long the start took, they outlive the
    # round trip below and expire only after the stop.
    serials = {a: certs(a)["serial"] for a in pair}
    fake.command("rotate")
    for a in pair:
        wait_until(lambda: certs(a)["serial"] != serials[a], f"{a.dir.name} to take a fresh SVID")
    assert roundtrip(port_out, b"before the outage")[0] == b"before the outage"
    calls_before = calls(frontend)

    fake.command("stop")
    for a in pair:
        wait_until(lambda: ready(a)[0] == 503, f"{a.dir.name} to fail closed at expiry")
        body = ready(a)[1]
        assert "the SVID expired without a replacement" in body, body
        assert "X509-SVID stream retrying" in body and "UNAVAILABLE" in body, body
        wait_until(lambda: "expired without a replacement (X509-SVID stream retrying" in a.stderr(),
                   f"{a.dir.name} to log the expiry")
    local = refused_through(frontend, port_out)
    line = frontend.wait_log(direction="outbound", source=local)
    assert (line["decision"], line["reason"]) == ("deny", "no_identity"), line
    # Reconnects go on with backoff; the stream's end is logged once.
    wait_until(lambda: calls(frontend) >= calls_before + 4, "reconnect attempts")
    assert frontend.stderr().count("X509-SVID stream ended") == 1
    assert refusals(frontend, "unavailable") >= 4

    fake.command("start")
    for a in pair:
        wait_ready(a, "ready again once the SPIRE agent is back")
    assert roundtrip(port_out, b"after the outage")[0] == b"after the outage"
    assert frontend.stderr().count("X509-SVID stream restored") == 1
    assert frontend.stderr().count("X509-SVID stream ended") == 1


def test_refuses_a_bad_svid_and_keeps_serving_the_last_good_one(spire, agents, apps):
    fake = spire(["backend", "frontend"])
    app = apps("echo")
    backend, frontend, port_out, _ = start_pair(fake, agents, app)
    pair = (backend, frontend)
    serials = {a: certs(a)["serial"] for a in pair}

    fake.command("bad-key")
    for a in pair:
        wait_until(lambda: refusals(a, "key_mismatch") == 1, f"{a.dir.name} to refuse the SVID")
        assert "refused a message on the X509-SVID stream (key_mismatch): x509_svid_key is not " \
               "the key of the SVID's certificate" in a.stderr()
    fake.command("garbage")
    for a in pair:
        wait_until(lambda: refusals(a, "malformed") == 1, f"{a.dir.name} to refuse garbage")
        assert ready(a)[0] == 200
        assert certs(a)["serial"] == serials[a]
        assert metric(a, 'mtlsd_certificate_rotation_failures_total{source="workload_api"}') >= 2
    status, body = ready(backend)
    assert "last error" not in body  # ready: the last good SVID serves
    assert roundtrip(port_out, b"the old SVIDs still serve")[0] == b"the old SVIDs still serve"

    fake.command("rotate")
    for a in pair:
        wait_until(lambda: certs(a)["serial"] != serials[a], f"{a.dir.name} to take a good SVID")
    assert roundtrip(port_out, b"and new ones too")[0] == b"and new ones too"


def test_missing_socket_at_start_is_logged_once_and_retried(spire, agents, apps):
    fake = spire(["backend"], stopped=True)
    app = apps("echo")
    port_in = free_port()
    backend = agents("backend", wl_config(fake, "backend",
                                          inbound=inbound_section(port_in, app.port)))
    socket_path = str(fake.sockets["backend"])
    wait_until(lambda: "cannot reach the server at " + fake.address("backend")
               + " for the X509-SVID stream" in backend.stderr(), "the 'cannot reach' log line")
    assert f"connect to unix:{socket_path}: No such file or directory" in backend.stderr()
    status, body = ready(backend)
    assert status == 503 and "no SVID from the Workload API yet" in body, body
    assert "No such file or directory" in body, body
    wait_until(lambda: calls(backend) >= 4, "retries")
    assert backend.stderr().count("cannot reach the server") == 2  # one per stream
    assert metric(backend, 'mtlsd_workload_api_source_stream_state{stream="x509_svid",'
                           'state="retrying"}') == 1

    fake.command("start")
    wait_ready(backend, "ready once the socket exists")
    assert "X509-SVID stream restored" in backend.stderr()


def test_config_reload_keeps_the_svid_and_the_socket_needs_a_restart(spire, agents, apps):
    fake = spire(["backend", "frontend"])
    app = apps("echo")
    backend, frontend, port_out, _ = start_pair(fake, agents, app)
    serial = certs(backend)["serial"]
    assert roundtrip(port_out, b"before the reload")[0] == b"before the reload"

    # A new policy applies to new connections; the SVID in service stays.
    backend.config["policy"] = {"default": "deny", "rules": []}
    backend.config_path.write_text(yaml.safe_dump(backend.config, sort_keys=False))
    status, body = backend.admin("/reload", method="POST")
    assert status == 200, body
    assert certs(backend)["serial"] == serial and ready(backend)[0] == 200
    local = refused_through(frontend, port_out)
    line = backend.wait_log(direction="inbound", reason="policy_denied")
    assert line["peer_id"] == spiffe_id("frontend"), (line, local)

    backend.config["identity"]["workload_api_socket"] = "unix:///run/spire/elsewhere.sock"
    backend.config_path.write_text(yaml.safe_dump(backend.config, sort_keys=False))
    status, body = backend.admin("/reload", method="POST")
    assert status == 400 and "identity.workload_api_socket changed" in body, body
    assert ready(backend)[0] == 200


def test_check_config_names_the_source_and_refuses_node_mode(mtlsd_bin, tmp_path):
    cfg = {
        "trust_domain": TRUST_DOMAIN,
        "identity": {"workload_api_socket": "unix:///run/spire/sockets/agent.sock"},
        "inbound": {"listeners": [{"address": "127.0.0.1:15006"}]},
    }
    path = tmp_path / "mtlsd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([mtlsd_bin, "--check-config", path], capture_output=True, text=True,
                         timeout=WAIT)
    assert res.returncode == 0, res.stderr
    assert "from the SPIFFE Workload API at unix:///run/spire/sockets/agent.sock" in res.stdout
    cfg["node"] = {"name": "n1", "workloads": [{"address": "10.0.0.1",
                                                "spiffe_id": spiffe_id("web")}]}
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([mtlsd_bin, "--check-config", path], capture_output=True, text=True,
                         timeout=WAIT)
    assert res.returncode == 1
    assert "node mode cannot take identities from the Workload API" in res.stderr, res.stderr
