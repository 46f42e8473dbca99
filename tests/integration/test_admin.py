"""The admin endpoint, its Prometheus metrics and config reload, against real
agents and real peers.

Every /metrics body is parsed with prometheus_client's text parser (which
refuses a malformed exposition) and checked further by Metrics: each family
appears once, with its own HELP and TYPE, and no series appears twice.
Counter tests scrape before and after one event and assert the exact move;
every wait is bounded (wait_until), and the scrape that satisfies a wait is
the one the assertions read.
"""

import calendar
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from prometheus_client.parser import text_string_to_metric_families

from conftest import (
    BAD_CERT_CASES,
    TRUST_DOMAIN,
    WAIT,
    addr,
    base_config,
    client_socket,
    connect,
    echo_once,
    expect_refused_tls,
    free_port,
    frontend_only_policy,
    inbound_section,
    is_listening,
    issue_new_leaf,
    outbound_section,
    recv_exactly,
    recv_until_eof,
    spiffe_id,
    tls_client_context,
    wait_until,
)
from mtls_ca import MTLS_CA_BIN, MtlsCa, make_pki, mint_token

CP_ID = "spiffe://example.org/ns/mtls-system/sa/mtls-ca"
EXPOSITION = "text/plain; version=0.0.4"
# Long enough that the file poll never races a test's SIGHUP or POST /reload.
NO_POLL_MS = 600000


# --------------------------------------------------------------------------
# HTTP and metrics


def http(agent, path, method="GET", telemetry=False):
    """(status, headers, body text) of one request to the agent's admin (or
    telemetry) listener."""
    req = urllib.request.Request(agent.admin_url(telemetry) + path, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def get_json(agent, path):
    status, headers, body = http(agent, path)
    assert status == 200, f"GET {path}: {status} {body}"
    assert headers["Content-Type"] == "application/json"
    return json.loads(body)


class Metrics:
    """One /metrics body, parsed and checked for well-formedness."""

    def __init__(self, text):
        assert text.endswith("\n"), "the exposition must end with a newline"
        self.text = text
        self.families = {}
        self.samples = []
        seen = set()
        for family in text_string_to_metric_families(text):
            assert family.name not in self.families, (
                f"metric family {family.name} appears twice: its samples are not next to "
                f"its own HELP/TYPE lines")
            assert family.type != "unknown", f"{family.name} has samples but no TYPE of its own"
            assert family.documentation, f"{family.name} has no HELP text"
            self.families[family.name] = family
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                assert key not in seen, f"series {key} appears twice"
                seen.add(key)
                self.samples.append(s)

    def series(self, name, **labels):
        return [s for s in self.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name, **labels):
        """Sum over the series of |name| whose labels include |labels|; 0 if none."""
        return sum(s.value for s in self.series(name, **labels))

    def one(self, name, **labels):
        found = self.series(name, **labels)
        assert len(found) == 1, f"expected one series {name}{labels}, found {found}"
        return found[0].value

    def dump(self, prefix):
        return "\n".join(l for l in self.text.splitlines() if l.startswith(prefix))


def scrape(agent, telemetry=False, tool="urllib"):
    url = agent.admin_url(telemetry) + "/metrics"
    if tool == "curl":
        res = subprocess.run(["curl", "-sS", "--max-time", "10", "-w",
                              "\n%{http_code} %{content_type}", url],
                             capture_output=True, text=True, timeout=WAIT)
        assert res.returncode == 0, f"curl failed: {res.stderr}"
        body, _, trailer = res.stdout.rpartition("\n")
        status, content_type = trailer.split(" ", 1)
        body += "\n"
        status = int(status)
    else:
        status, headers, body = http(agent, "/metrics", telemetry=telemetry)
        content_type = headers["Content-Type"]
    assert status == 200, f"GET {url}: {status} {body}"
    assert content_type.startswith(EXPOSITION), content_type
    return Metrics(body)


def wait_metrics(agent, predicate, what, timeout=WAIT):
    """Scrapes until predicate(Metrics) holds; returns that scrape."""
    last = []

    def check():
        last[:] = [scrape(agent)]
        return predicate(last[0])

    try:
        wait_until(check, what, timeout=timeout, interval=0.05)
    except AssertionError as e:
        raise AssertionError(f"{e}\nlast scrape of {agent.dir.name}:\n{last[0].text}\n"
                             f"stderr tail:\n{agent.stderr()[-2000:]}") from None
    return last[0]


def moved(before, after, name, **labels):
    return after.value(name, **labels) - before.value(name, **labels)


def check_histogram(m, name, **labels):
    """Buckets cumulative in le order, +Inf equal to _count. Returns _count."""
    buckets = sorted((float(s.labels["le"]), s.value)
                     for s in m.series(name + "_bucket", **labels))
    assert buckets and buckets[-1][0] == float("inf"), buckets
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), f"{name} buckets are not cumulative: {buckets}"
    count = m.one(name + "_count", **labels)
    assert buckets[-1][1] == count, f"+Inf bucket {buckets[-1][1]} != _count {count}"
    assert m.one(name + "_sum", **labels) >= 0
    return count


# --------------------------------------------------------------------------
# agents, calls, certificates


def backend_identity(pki, reload_interval_ms=200):
    wl = pki.workload("backend")
    return {"cert_file": str(wl / "chain.pem"), "key_file": str(wl / "key.pem"),
            "reload_interval_ms": reload_interval_ms}


def start_pair(pki, agents, app, policy=None, backend_timeouts=None, reload_interval_ms=200):
    """Backend (inbound -> |app|, |policy|, default frontend-only) and a
    frontend whose outbound reaches it. Returns (frontend, backend, port_out,
    port_in)."""
    port_in, port_out = free_port(), free_port()
    backend = agents("backend", base_config(
        pki, identity=backend_identity(pki, reload_interval_ms), timeouts=backend_timeouts,
        inbound=inbound_section(port_in, app.port),
        policy=policy or frontend_only_policy(app.port)))
    frontend = agents("frontend", base_config(
        pki, workload="frontend",
        outbound=outbound_section(port_out, port_in, expected_id=spiffe_id("backend"))))
    return frontend, backend, port_out, port_in


def call(port, payload=b"ping"):
    """One short call: ("ok", local) when echoed, ("refused", local) when
    closed or reset without a byte."""
    sock = client_socket()
    local = addr(sock)
    try:
        sock.connect(("127.0.0.1", port))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = recv_until_eof(sock)
    except (ConnectionResetError, BrokenPipeError):
        data = b""
    finally:
        sock.close()
    if data == payload:
        return "ok", local
    return ("refused" if data == b"" else f"unexpected reply {data!r}"), local


def pem_certs(path):
    text = Path(path).read_text()
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
    return [x509.load_pem_x509_certificate(b.encode()) for b in blocks]


def unix_time(dt):
    return calendar.timegm(dt.utctimetuple())


def iso(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_hex(cert):
    return cert.fingerprint(hashes.SHA256()).hex()


def write_config(agent, config=None, text=None):
    """Rewrites the agent's config file atomically (as a ConfigMap update
    does); returns the text written."""
    if text is None:
        text = yaml.safe_dump(config, sort_keys=False)
    tmp = agent.config_path.with_name(agent.config_path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, agent.config_path)
    return text


def sighup(agent):
    os.kill(agent.proc.pid, signal.SIGHUP)


def deny_frontend_policy(app_port, name="deny-frontend-after-reload"):
    return {"default": "allow", "rules": [
        {"name": name, "action": "deny", "from": [{"id": spiffe_id("frontend")}]},
        {"name": "frontend-only", "action": "allow", "ports": [app_port],
         "from": [{"id": spiffe_id("frontend")}]}]}


class Traffic:
    """A bounded loop of short calls through the mesh, in a thread."""

    def __init__(self, port, limit=2000, pause=0.01):
        self.port, self.limit, self.pause = port, limit, pause
        self.outcomes = []  # "ok" / "refused" / anything else is a failure
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop_event.is_set() and len(self.outcomes) < self.limit:
            try:
                outcome, _ = call(self.port)
            except OSError as e:
                outcome = repr(e)
            self.outcomes.append(outcome)
            time.sleep(self.pause)

    def __enter__(self):
        self.thread.start()
        wait_until(lambda: self.outcomes, "the first call of the traffic loop")
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(timeout=WAIT)
        assert not self.thread.is_alive(), "the traffic thread did not stop"

    def count(self, outcome):
        return self.outcomes.count(outcome)


# --------------------------------------------------------------------------
# counters that follow connections


def test_allowed_call_moves_every_connection_counter_on_both_agents(pki, agents, apps):
    app = apps("echo")
    frontend, backend, port_out, _ = start_pair(pki, agents, app)
    fe0, be0 = scrape(frontend, tool="curl"), scrape(backend)
    payload = os.urandom(64 * 1024)

    with connect(port_out) as sock:
        local = addr(sock)
        sock.sendall(payload)
        assert recv_exactly(sock, len(payload)) == payload
        # Mid-connection: one active on each side.
        fe_mid = wait_metrics(frontend, lambda m: m.one("mtlsd_connections_active",
                                                        direction="outbound") == 1,
                              "the frontend to count one active outbound connection")
        be_mid = wait_metrics(backend, lambda m: m.one("mtlsd_connections_active",
                                                       direction="inbound") == 1,
                              "the backend to count one active inbound connection")
        assert fe_mid.one("mtlsd_connections_active", direction="inbound") == 0
        assert be_mid.one("mtlsd_connections_active", direction="outbound") == 0
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b""

    out = frontend.wait_log(direction="outbound", source=local)
    inb = backend.wait_log(direction="inbound", reason="ok")
    fe1 = wait_metrics(frontend, lambda m: moved(fe0, m, "mtlsd_connections_closed_total",
                                                 direction="outbound", reason="ok") == 1,
                       "the frontend to count the closed connection")
    be1 = wait_metrics(backend, lambda m: moved(be0, m, "mtlsd_connections_closed_total",
                                                direction="inbound", reason="ok") == 1,
                       "the backend to count the closed connection")

    for agent_before, agent_after, direction, rule, line in (
            (fe0, fe1, "outbound", "expected-id", out),
            (be0, be1, "inbound", "frontend-only", inb)):
        def delta(name, **labels):
            return moved(agent_before, agent_after, name, direction=direction, **labels)

        assert delta("mtlsd_connections_total") == 1
        assert agent_after.one("mtlsd_connections_active", direction=direction) == 0
        assert delta("mtlsd_connections_closed_total") == 1  # every reason together
        assert delta("mtlsd_handshakes_total", result="success") == 1
        assert delta("mtlsd_handshakes_total", result="failure") == 0
        assert delta("mtlsd_authz_decisions_total", decision="allow", rule=rule) == 1
        assert delta("mtlsd_authz_decisions_total", decision="deny") == 0
        up = delta("mtlsd_bytes_total", flow="upstream")
        down = delta("mtlsd_bytes_total", flow="downstream")
        assert up >= len(payload) and down >= len(payload)
        assert (up, down) == (line["bytes_to_upstream"], line["bytes_to_downstream"])
        # Negotiated parameters: the access log's, under their own labels.
        tls = agent_after.series("mtlsd_tls_handshakes_total", direction=direction)
        assert [s.labels for s in tls] == [
            {"direction": direction, "version": "TLSv1.3", "cipher": line["cipher"]}], tls
        assert line["cipher"].startswith("TLS_")
        assert delta("mtlsd_tls_handshakes_total", version="TLSv1.3", cipher=line["cipher"]) == 1
        hist = "mtlsd_handshake_duration_seconds"
        assert (check_histogram(agent_after, hist, direction=direction) -
                check_histogram(agent_before, hist, direction=direction)) == 1
        assert agent_after.one(hist + "_sum", direction=direction) > 0


def test_policy_denial_counts_the_rule_and_reason_on_both_sides(pki, agents, apps):
    app = apps("echo")
    frontend, backend, port_out, _ = start_pair(
        pki, agents, app, policy=deny_frontend_policy(app.port, name="no-frontend"))
    fe0, be0 = scrape(frontend), scrape(backend)

    outcome, local = call(port_out)
    assert outcome == "refused"

    assert frontend.wait_log(direction="outbound", source=local)["reason"] == "peer_denied"
    line = backend.wait_log(direction="inbound", reason="policy_denied")
    assert line["rule"] == "no-frontend"
    be1 = wait_metrics(backend, lambda m: moved(be0, m, "mtlsd_connections_closed_total",
                                                direction="inbound",
                                                reason="policy_denied") == 1,
                       "the backend to count the policy denial")
    fe1 = wait_metrics(frontend, lambda m: moved(fe0, m, "mtlsd_connections_closed_total",
                                                 direction="outbound", reason="peer_denied") == 1,
                       "the frontend to count peer_denied")

    assert moved(be0, be1, "mtlsd_authz_decisions_total", direction="inbound", decision="deny",
                 rule="no-frontend") == 1
    assert moved(be0, be1, "mtlsd_authz_decisions_total", direction="inbound",
                 decision="allow") == 0
    # The handshake itself succeeded: policy runs on a verified peer.
    assert moved(be0, be1, "mtlsd_handshakes_total", direction="inbound", result="success") == 1
    assert moved(be0, be1, "mtlsd_connections_closed_total", direction="inbound") == 1
    assert be1.one("mtlsd_connections_active", direction="inbound") == 0
    # The frontend was willing (its own check passed); the peer refused.
    assert moved(fe0, fe1, "mtlsd_authz_decisions_total", direction="outbound", decision="allow",
                 rule="expected-id") == 1
    assert moved(fe0, fe1, "mtlsd_connections_closed_total", direction="outbound") == 1
    assert fe1.one("mtlsd_connections_active", direction="outbound") == 0
    assert app.connection_count == 0


def test_refused_certificates_count_failed_handshakes_by_reason(pki, agents, apps):
    """Every certificate of the broken-certificate table, and no certificate
    at all, against one backend: a failed handshake, the reason's closed
    counter, no authorization decision."""
    app = apps("echo")
    port_in = free_port()
    backend = agents("backend", base_config(
        pki, inbound=inbound_section(port_in, app.port), policy=frontend_only_policy(app.port)))
    cases = [(name, pki.root / cert_dir, reason)
             for name, (cert_dir, reason) in BAD_CERT_CASES.items()]
    cases.append(("no-certificate", None, "no_client_cert"))
    for name, cert_dir, reason in cases:
        before = scrape(backend)
        local, _ = expect_refused_tls(tls_client_context(pki, cert_dir), port_in)
        assert backend.wait_log(direction="inbound", source=local)["reason"] == reason, name
        after = wait_metrics(backend, lambda m: moved(before, m, "mtlsd_connections_closed_total",
                                                      direction="inbound", reason=reason) == 1,
                             f"{name}: closed_total{{reason={reason}}} to move")

        def delta(metric, **labels):
            return moved(before, after, metric, direction="inbound", **labels)

        assert delta("mtlsd_handshakes_total", result="failure") == 1, name
        assert delta("mtlsd_handshakes_total", result="success") == 0, name
        assert delta("mtlsd_connections_total") == 1, name
        assert delta("mtlsd_connections_closed_total") == 1, name
        assert delta("mtlsd_authz_decisions_total") == 0, name
        assert delta("mtlsd_handshake_duration_seconds_count") == 0, name
        assert after.one("mtlsd_connections_active", direction="inbound") == 0, name
    assert app.connection_count == 0


def test_active_connections_return_to_zero_when_connections_end(pki, agents, apps):
    app = apps("echo")
    frontend, backend, port_out, _ = start_pair(pki, agents, app)
    socks = [connect(port_out) for _ in range(3)]
    try:
        for s in socks:
            echo_once(s, b"hold\n")
        wait_metrics(backend, lambda m: m.one("mtlsd_connections_active", direction="inbound") == 3,
                     "three active inbound connections")
        wait_metrics(frontend,
                     lambda m: m.one("mtlsd_connections_active", direction="outbound") == 3,
                     "three active outbound connections")
        socks.pop().close()  # an abrupt close counts as well as a clean one
        wait_metrics(backend, lambda m: m.one("mtlsd_connections_active", direction="inbound") == 2,
                     "two active inbound connections")
    finally:
        for s in socks:
            s.close()
    for agent, direction in ((backend, "inbound"), (frontend, "outbound")):
        m = wait_metrics(agent, lambda m: m.one("mtlsd_connections_active",
                                                direction=direction) == 0,
                         f"{agent.dir.name}: no active connection")
        assert m.one("mtlsd_connections_total", direction=direction) == 3
        assert m.value("mtlsd_connections_closed_total", direction=direction) == 3


# --------------------------------------------------------------------------
# certificates


def test_certificate_gauges_describe_the_served_certificate(pki, agents, apps):
    app = apps("echo")
    port_in = free_port()
    backend = agents("backend", base_config(
        pki, inbound=inbound_section(port_in, app.port), policy=frontend_only_policy(app.port)))
    leaf = pem_certs(pki.workload("backend") / "chain.pem")[0]
    not_after = unix_time(leaf.not_valid_after)

    m = scrape(backend)
    now = time.time()
    (gauge,) = m.series("mtlsd_certificate_not_after_seconds")
    assert gauge.labels["spiffe_id"] == spiffe_id("backend")
    assert int(gauge.labels["serial"], 16) == leaf.serial_number
    assert gauge.value == not_after
    (start,) = m.series("mtlsd_certificate_not_before_seconds")
    assert start.labels == gauge.labels
    assert start.value == unix_time(leaf.not_valid_before)
    expiry = m.one("mtlsd_certificate_expiry_seconds")
    assert 0 < expiry and abs(expiry - (not_after - now)) <= 5
    assert m.one("mtlsd_trust_bundle_roots", trust_domain=TRUST_DOMAIN) == 1
    assert m.one("mtlsd_certificate_rotations_total", source="files") == 1
    assert m.one("mtlsd_certificate_rotation_failures_total", source="files") == 0
    assert m.one("mtlsd_ready") == 1
    assert m.one("mtlsd_info", source="files") == 1
    assert abs(m.one("mtlsd_start_time_seconds") - now) < WAIT
    assert m.one("mtlsd_config_reloads_total", result="success") == 0
    assert m.one("mtlsd_config_reloads_total", result="failure") == 0
    assert not m.series("mtlsd_control_plane_stream_state")  # files: no control plane

    status, _, body = http(backend, "/ready")
    assert status == 200 and body.startswith("ready: serving as " + spiffe_id("backend"))


def test_certs_page_matches_the_certificate_files_and_holds_no_key(pki, agents, apps):
    app = apps("echo")
    port_in = free_port()
    backend = agents("backend", base_config(
        pki, inbound=inbound_section(port_in, app.port), policy=frontend_only_policy(app.port)))
    chain = pem_certs(pki.workload("backend") / "chain.pem")
    roots = pem_certs(pki.bundle)

    status, headers, body = http(backend, "/certs")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert "PRIVATE KEY" not in body
    key_lines = [l for l in (pki.workload("backend") / "key.pem").read_text().splitlines()
                 if l and not l.startswith("-----")]
    assert not any(l in body for l in key_lines), "key material in /certs"
    certs = json.loads(body)

    assert certs["source"] == "files"
    assert certs["spiffe_id"] == spiffe_id("backend")
    assert int(certs["serial"], 16) == chain[0].serial_number
    assert certs["not_after"] == iso(chain[0].not_valid_after)
    assert certs["not_before"] == iso(chain[0].not_valid_before)
    assert 0 < certs["seconds_to_expiry"] <= 3600
    assert [c["subject"] for c in certs["chain"]] == [c.subject.rfc4514_string() for c in chain]
    assert [c["issuer"] for c in certs["chain"]] == [c.issuer.rfc4514_string() for c in chain]
    assert [c["sha256"] for c in certs["chain"]] == [sha256_hex(c) for c in chain]
    assert [(b["trust_domain"], [r["sha256"] for r in b["roots"]])
            for b in certs["trust_bundles"]] == [(TRUST_DOMAIN, [sha256_hex(r) for r in roots])]
    assert certs["trust_bundles"][0]["roots"][0]["subject"] == roots[0].subject.rfc4514_string()
    assert certs["mesh_version"] == "static"


def test_rotation_counter_moves_when_the_certificate_files_change(pki, agents, apps, tmp_path):
    """Kubernetes-style swap (a `current` symlink to a versioned directory),
    so the agent never sees a half-written pair: one rotation, no failure."""
    new_leaf = issue_new_leaf(pki, tmp_path / "ca-copy", "backend")
    ident = tmp_path / "identity"
    for version, source in (("v1", pki.workload("backend")), ("v2", new_leaf)):
        (ident / version).mkdir(parents=True)
        for f in ("chain.pem", "key.pem"):
            (ident / version / f).write_bytes((source / f).read_bytes())
    os.symlink("v1", ident / "current")
    app = apps("echo")
    port_in = free_port()
    backend = agents("backend", base_config(
        pki, identity={"cert_file": str(ident / "current" / "chain.pem"),
                       "key_file": str(ident / "current" / "key.pem"), "reload_interval_ms": 100},
        inbound=inbound_section(port_in, app.port), policy=frontend_only_policy(app.port)))
    before = scrape(backend)
    assert before.one("mtlsd_certificate_rotations_total", source="files") == 1

    os.symlink("v2", ident / "current.new")
    os.replace(ident / "current.new", ident / "current")

    new_serial = pem_certs(new_leaf / "cert.pem")[0].serial_number

    def served_serial(m):
        (gauge,) = m.series("mtlsd_certificate_not_after_seconds")
        return int(gauge.labels["serial"], 16)

    after = wait_metrics(backend, lambda m: m.one("mtlsd_certificate_rotations_total",
                                                  source="files") == 2,
                         "the rotation counter to move")
    assert after.one("mtlsd_certificate_rotation_failures_total", source="files") == 0
    assert served_serial(after) == new_serial
    assert int(get_json(backend, "/certs")["serial"], 16) == new_serial

    # A broken replacement: the failure counter moves, the good one stays.
    (ident / "v3").mkdir()
    for f in ("chain.pem", "key.pem"):
        (ident / "v3" / f).write_bytes((pki.bad("expired") / f).read_bytes())
    os.symlink("v3", ident / "current.new")
    os.replace(ident / "current.new", ident / "current")
    failed = wait_metrics(backend, lambda m: m.one("mtlsd_certificate_rotation_failures_total",
                                                   source="files") == 1,
                          "the rotation failure counter to move")
    assert failed.one("mtlsd_certificate_rotations_total", source="files") == 2
    assert served_serial(failed) == new_serial
    assert failed.one("mtlsd_ready") == 1


# --------------------------------------------------------------------------
# readiness and the control plane


@pytest.fixture(scope="module")
def ca_pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("admin-ca-pki"))


@pytest.fixture
def mtls_ca_bin():
    if not (os.path.isfile(MTLS_CA_BIN) and os.access(MTLS_CA_BIN, os.X_OK)):
        pytest.fail(f"control-plane binary not found: {MTLS_CA_BIN} (build it with "
                    f"`bazel build //controlplane:mtls-ca` or set MTLS_CA_BIN)")
    return MTLS_CA_BIN


def test_ready_waits_for_the_first_certificate_from_the_control_plane(
        ca_pki, mtls_ca_bin, procs, agents, tmp_path):
    """The agent starts first, against a control-plane port where nothing
    listens yet: not ready (503, mtlsd_ready 0, no certificate gauges) until
    mtls-ca comes up there and issues; then ready, with the stream
    streaming."""
    ca_port, port_in = free_port(), free_port()
    token = mint_token(ca_pki, tmp_path / "backend.token", "backend")
    agent = agents("backend", {
        "trust_domain": TRUST_DOMAIN,
        "workers": 2,
        "log_level": "debug",
        "identity": {"spiffe_id": spiffe_id("backend")},
        "control_plane": {"address": f"127.0.0.1:{ca_port}", "root_file": str(ca_pki / "root.pem"),
                          "spiffe_id": CP_ID, "token_file": str(token), "retry_initial_ms": 100,
                          "retry_max_ms": 400, "request_timeout_ms": 3000},
        "timeouts": {"drain_ms": 1000},
        "inbound": {"listeners": [{"address": f"127.0.0.1:{port_in}", "app_port": 9}]},
    })

    m = wait_metrics(agent, lambda m: m.one("mtlsd_certificate_rotation_failures_total",
                                            source="control-plane") >= 1,
                     "a failed certificate request while no control plane listens")
    assert m.one("mtlsd_ready") == 0
    assert m.one("mtlsd_certificate_rotations_total", source="control-plane") == 0
    assert not m.series("mtlsd_certificate_not_after_seconds")
    assert not m.series("mtlsd_certificate_expiry_seconds")
    states = {s.labels["state"]: s.value for s in m.series("mtlsd_control_plane_stream_state")}
    assert sum(states.values()) == 1 and states["streaming"] == 0, states
    status, _, body = http(agent, "/ready")
    assert status == 503 and body.startswith("not ready: no valid workload certificate"), body
    assert http(agent, "/ready", telemetry=False)[0] == 503
    assert http(agent, "/healthz")[0] == 200  # alive, just not ready
    certs = get_json(agent, "/certs")
    assert certs["spiffe_id"] is None and certs["source"] == "control-plane"
    assert "error" in get_json(agent, "/policy")

    mesh = {"trust_bundles": {TRUST_DOMAIN: [str(ca_pki / "root.pem")]},
            "policy": {"default": "allow", "rules": [
                {"name": "allow-frontend", "action": "allow",
                 "from": [{"id": spiffe_id("frontend")}]}]}}
    ca = MtlsCa(procs, mtls_ca_bin, ca_pki, tmp_path / "mtls-ca", mesh=mesh, port=ca_port)
    try:
        wait_until(lambda: http(agent, "/ready")[0] == 200, "/ready to answer 200")
        m = wait_metrics(agent, lambda m: m.one("mtlsd_control_plane_stream_state",
                                                state="streaming") == 1,
                         "the mesh config stream to be streaming")
        assert m.one("mtlsd_ready") == 1
        assert m.one("mtlsd_certificate_rotations_total", source="control-plane") >= 1
        assert m.one("mtlsd_mesh_config_updates_total") >= 1
        assert m.one("mtlsd_mesh_config_rejected_total") == 0
        assert m.one("mtlsd_info", source="control-plane") == 1
        assert m.one("mtlsd_certificate_expiry_seconds") > 0
        certs = get_json(agent, "/certs")
        assert certs["spiffe_id"] == spiffe_id("backend")
        assert m.series("mtlsd_certificate_not_after_seconds", spiffe_id=spiffe_id("backend"),
                        serial=certs["serial"])
        assert certs["mesh_version"] != "static"
        policy = get_json(agent, "/policy")
        assert [r["name"] for r in policy["rules"]] == ["allow-frontend"]
        explained = get_json(agent, "/policy?" + urllib.parse.urlencode(
            {"peer": spiffe_id("frontend"), "port": 9}))
        assert (explained["decision"], explained["rule"]) == ("allow", "allow-frontend")
        assert explained["may_be_replaced"] is True
        # /config names the token file, never its contents.
        status, _, body = http(agent, "/config")
        config = json.loads(body)
        assert config["control_plane"]["token_file"] == str(token)
        assert token.read_text().strip() not in body
    finally:
        ca.stop()
    ca.check()


# --------------------------------------------------------------------------
# /policy, /config


def test_policy_page_lists_the_rules_and_explains_real_decisions(pki, agents, apps):
    app = apps("echo")
    policy = frontend_only_policy(app.port)
    policy["rules"].append({"name": "no-intruders", "action": "deny",
                            "from": [{"prefix": f"spiffe://{TRUST_DOMAIN}/ns/intruders/*"}]})
    frontend, backend, port_out, port_in = start_pair(pki, agents, app, policy=policy)

    listed = get_json(backend, "/policy")
    assert listed["version"] == "static" and listed["default"] == "allow"
    by_name = {r["name"]: r for r in listed["rules"]}
    assert set(by_name) == {"frontend-only", "no-intruders"}
    assert by_name["frontend-only"]["action"] == "allow"
    assert by_name["frontend-only"]["ports"] == [app.port]
    # Matchers read like the config (and like the explain output).
    assert by_name["frontend-only"]["from"] == [{"kind": "id", "value": spiffe_id("frontend")}]
    assert by_name["no-intruders"]["action"] == "deny"
    assert by_name["no-intruders"]["ports"] == "*"
    assert by_name["no-intruders"]["from"] == [
        {"kind": "prefix", "value": f"spiffe://{TRUST_DOMAIN}/ns/intruders/*"}]

    # Three real connections: allowed, denied by policy, plaintext.
    assert call(port_out)[0] == "ok"
    allowed = backend.wait_log(direction="inbound", reason="ok")
    local, _ = expect_refused_tls(tls_client_context(pki, pki.workload("other")), port_in)
    denied = backend.wait_log(direction="inbound", source=local)
    with connect(port_in) as sock:
        local = addr(sock)
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        try:
            sock.recv(16)
        except ConnectionResetError:
            pass
    plaintext = backend.wait_log(direction="inbound", source=local)
    assert plaintext["reason"] == "plaintext_on_strict_port"

    for line, query in ((allowed, {"peer": spiffe_id("frontend")}),
                        (denied, {"peer": spiffe_id("other")}),
                        (plaintext, {"plaintext": "1"})):
        port = int(line["destination"].rsplit(":", 1)[1])
        explained = get_json(backend, "/policy?" + urllib.parse.urlencode({**query, "port": port}))
        assert (explained["decision"], explained["rule"]) == (line["decision"], line["rule"]), (
            explained, line)
        if line["decision"] == "deny" and line["rule"]:
            assert explained["reason"] == line["detail"]
    assert denied["rule"] == "no-allow-rule-matched"
    explained = get_json(backend, "/policy?" + urllib.parse.urlencode(
        {"peer": f"spiffe://{TRUST_DOMAIN}/ns/intruders/sa/x", "port": app.port}))
    assert (explained["decision"], explained["rule"]) == ("deny", "no-intruders")
    assert explained["may_be_replaced"] is False

    for bad in ("?port=80", "?peer=x", "?peer=x&port=abc", "?peer=x&port=0", "?peer=x&port=65536",
                "?peer=x&port=", "?plaintext=1&peer=x&port=80", "?port=80x&peer=x"):
        status, _, body = http(backend, "/policy" + bad)
        assert status == 400, (bad, status, body)
        assert "/policy?peer=SPIFFE_ID&port=N" in body


def test_config_page_shows_the_settings_and_no_secret(pki, agents, apps):
    app = apps("echo")
    port_in = free_port()
    wl = pki.workload("backend")
    backend = agents("backend", base_config(
        pki, identity={"pkcs12_file": str(wl / "id.p12"),
                       "pkcs12_password_file": str(wl / "id.p12.pass")},
        inbound=inbound_section(port_in, app.port), policy=frontend_only_policy(app.port),
        admin={"address": "127.0.0.1:0", "telemetry_address": "127.0.0.1:0"}))

    status, headers, body = http(backend, "/config")
    assert status == 200 and headers["Content-Type"] == "application/json"
    config = json.loads(body)
    assert config["path"] == str(backend.config_path)
    assert config["trust_domain"] == TRUST_DOMAIN
    assert config["workers"] == 2
    assert config["log_level"] == "debug"
    assert config["identity"]["pkcs12_file"] == str(wl / "id.p12")
    assert config["trust_bundles"] == [{"trust_domain": TRUST_DOMAIN, "file": str(pki.bundle)}]
    assert config["timeouts"]["drain_ms"] == 1000
    assert config["inbound_listeners"] == [{"address": f"127.0.0.1:{port_in}",
                                            "app_port": app.port}]
    assert config["admin_address"] == "127.0.0.1:0"
    assert config["admin_telemetry_address"] == "127.0.0.1:0"
    assert (config["config_reloads"], config["config_reload_failures"]) == (0, 0)
    assert config["last_reload_error"] == ""
    password = (wl / "id.p12.pass").read_text().strip()
    assert password and password not in body
    assert "PRIVATE KEY" not in body and "password" not in body.lower()


# --------------------------------------------------------------------------
# routing, the telemetry listener


def test_unknown_paths_are_404_and_wrong_methods_405(pki, agents, apps):
    app = apps("echo")
    port_in = free_port()
    backend = agents("backend", base_config(
        pki, inbound=inbound_section(port_in, app.port), policy=frontend_only_policy(app.port)))

    for path in ("/", "/nope", "/metrics/", "/certs.json", "/quitquitquit/now"):
        status, _, body = http(backend, path)
        assert status == 404, (path, status)
        assert body.startswith("no such endpoint")
    for path, method, allow in (("/metrics", "POST", "GET, HEAD"),
                                ("/certs", "DELETE", "GET, HEAD"),
                                ("/quitquitquit", "GET", "POST"), ("/reload", "GET", "POST"),
                                ("/reload", "PUT", "POST")):
        status, headers, _ = http(backend, path, method=method)
        assert status == 405, (path, method, status)
        assert headers["Allow"] == allow, (path, method, headers)
    status, _, body = http(backend, "/healthz", method="HEAD")
    assert (status, body) == (200, "")
    status, _, body = http(backend, "/healthz")
    assert (status, body) == (200, "ok\n")
    # A GET to /quitquitquit must not have stopped anything.
    assert backend.proc.poll() is None
    assert "/quitquitquit received" not in backend.stderr()


def test_telemetry_listener_serves_health_and_metrics_only(pki, agents, apps):
    """telemetry_address may bind all interfaces without allow_non_local."""
    app = apps("echo")
    port_in = free_port()
    backend = agents("backend", base_config(
        pki, inbound=inbound_section(port_in, app.port), policy=frontend_only_policy(app.port),
        admin={"address": "127.0.0.1:0", "telemetry_address": "0.0.0.0:0"}))
    url = backend.admin_url(telemetry=True)
    assert url.startswith("http://0.0.0.0:")
    assert backend.admin_url() != url

    assert http(backend, "/healthz", telemetry=True)[0] == 200
    assert http(backend, "/ready", telemetry=True)[0] == 200
    m = scrape(backend, telemetry=True, tool="curl")
    assert m.one("mtlsd_ready") == 1
    assert scrape(backend, telemetry=True).one("mtlsd_connections_total",
                                               direction="inbound") == 0
    for path, method in (("/certs", "GET"), ("/config", "GET"), ("/policy", "GET"),
                         ("/policy?peer=x&port=1", "GET"), ("/quitquitquit", "POST"),
                         ("/reload", "POST")):
        status, _, _ = http(backend, path, method=method, telemetry=True)
        assert status == 404, (path, status)
    assert backend.proc.poll() is None
    assert "admin: reload requested" not in backend.stderr()
    assert http(backend, "/certs")[0] == 200  # the full API is on the other listener


# --------------------------------------------------------------------------
# POST /quitquitquit


def test_quitquitquit_lets_an_inflight_connection_finish_then_exits_0(pki, agents, apps):
    app = apps("echo")
    drain_s = 20
    frontend, backend, port_out, port_in = start_pair(
        pki, agents, app, backend_timeouts={"drain_ms": drain_s * 1000})
    with connect(port_out) as sock:
        local = addr(sock)
        echo_once(sock, b"before the quit\n")

        status, _, body = http(backend, "/quitquitquit", method="POST")
        assert (status, body) == (200, "draining and exiting\n")
        wait_until(lambda: not is_listening(port_in), "the backend to stop accepting")
        assert backend.proc.poll() is None, "exited with a connection still in flight"
        # While draining the admin endpoint still answers: alive, not ready.
        status, _, body = http(backend, "/ready")
        assert (status, body) == (503, "not ready: draining connections before exit\n")
        assert http(backend, "/healthz")[0] == 200
        echo_once(sock, b"still relayed while draining\n")
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b""
        closed = time.monotonic()

    try:
        status = backend.proc.wait(timeout=drain_s / 2)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the backend did not exit within {drain_s / 2}s of its last connection "
                    f"ending:\n{backend.stderr()[-2000:]}")
    assert status == 0, backend.stderr()[-2000:]
    assert time.monotonic() - closed < drain_s / 2
    assert "admin: /quitquitquit received" in backend.stderr()
    assert frontend.wait_log(direction="outbound", source=local)["reason"] == "ok"
    assert backend.wait_log(direction="inbound", reason="ok")["bytes_to_upstream"] == len(
        b"before the quit\nstill relayed while draining\n")


def test_quitquitquit_closes_what_is_left_at_the_drain_deadline(pki, agents, apps):
    app = apps("echo")
    frontend, backend, port_out, _ = start_pair(pki, agents, app,
                                                backend_timeouts={"drain_ms": 500})
    with connect(port_out) as sock:
        local = addr(sock)
        echo_once(sock, b"idle after this\n")
        assert http(backend, "/quitquitquit", method="POST")[0] == 200
        asked = time.monotonic()
        try:
            status = backend.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the backend did not exit:\n{backend.stderr()[-2000:]}")
        elapsed = time.monotonic() - asked
        assert status == 0, backend.stderr()[-2000:]
        assert elapsed >= 0.4, f"exited after {elapsed:.2f}s, before the 500 ms drain"
        try:
            assert sock.recv(16) == b""
        except ConnectionResetError:
            pass
    line = backend.wait_log(direction="inbound", reason="shutdown")
    assert line["decision"] == "allow"
    assert frontend.wait_log(direction="outbound", source=local)["reason"] != "ok"


# --------------------------------------------------------------------------
# admin config


def admin_section_lines(text):
    """1-based line numbers of the `admin:` block in a YAML dump."""
    lines = text.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("admin:"))
    end = start + 1
    while end < len(lines) and lines[end].startswith(" "):
        end += 1
    return range(start + 1, end + 1)


def test_non_loopback_admin_address_is_refused_without_allow_non_local(pki, agents, mtlsd_bin):
    port = free_port()
    agent = agents("backend", base_config(pki, inbound=inbound_section(free_port(), 9),
                                          admin={"address": f"0.0.0.0:{port}"}), start=False)
    res = subprocess.run([mtlsd_bin, "--check-config", agent.config_path],
                         capture_output=True, text=True, timeout=WAIT)
    assert res.returncode == 1, res
    found = re.search(rf"^{re.escape(str(agent.config_path))}:(\d+): (.*)$", res.stderr, re.M)
    assert found, res.stderr
    assert int(found.group(1)) in admin_section_lines(agent.config_path.read_text())
    assert f"admin.address 0.0.0.0:{port} is not a loopback address" in found.group(2)
    assert "allow_non_local" in found.group(2)
    # Starting with it fails the same way, before anything listens.
    res = subprocess.run([mtlsd_bin, "--config", agent.config_path],
                         capture_output=True, text=True, timeout=WAIT)
    assert res.returncode == 1 and "loopback" in res.stderr, res
    assert not is_listening(port)


def test_allow_non_local_admin_listens_on_every_address(pki, agents):
    backend = agents("backend", base_config(
        pki, inbound=inbound_section(free_port(), 9),
        admin={"address": "0.0.0.0:0", "allow_non_local": True}))
    found = wait_until(lambda: re.search(r"admin listening on 0\.0\.0\.0:(\d+)$",
                                         backend.stderr(), re.M), "the admin log line")
    url = f"http://127.0.0.1:{found.group(1)}/healthz"
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
    res = subprocess.run([backend.binary, "--check-config", backend.config_path],
                         capture_output=True, text=True, timeout=WAIT)
    assert res.returncode == 0, res


def test_admin_disabled_starts_no_listener(pki, agents, apps):
    app = apps("echo")
    port_in = free_port()
    backend = agents("backend", base_config(
        pki, inbound=inbound_section(port_in, app.port), policy=frontend_only_policy(app.port),
        admin={"enabled": False, "address": "0.0.0.0:0"}))  # not loopback: moot when disabled
    wait_until(lambda: "started (certificates from files)" in backend.stderr(),
               "the agent's start-up line")
    assert "admin listening" not in backend.stderr()


# --------------------------------------------------------------------------
# reload


def test_sighup_reload_applies_policy_to_new_connections_only(pki, agents, apps):
    """Under steady traffic, a policy that now denies the frontend: after
    SIGHUP new calls are refused by the new rule, a connection opened before
    keeps relaying, and nothing fails other than by that policy."""
    app = apps("echo")
    frontend, backend, port_out, _ = start_pair(pki, agents, app, reload_interval_ms=NO_POLL_MS)
    before = scrape(backend)
    live = connect(port_out)
    try:
        live_local = addr(live)
        echo_once(live, b"opened before the reload\n")
        with Traffic(port_out) as traffic:
            wait_until(lambda: traffic.count("ok") >= 5, "a few allowed calls")
            config = dict(backend.config)
            config["policy"] = deny_frontend_policy(app.port)
            write_config(backend, config)
            sighup(backend)
            wait_until(lambda: backend.find_log(direction="inbound", decision="deny"),
                       "a new call refused by the new policy")
            seen = len(traffic.outcomes)
            wait_until(lambda: len(traffic.outcomes) >= seen + 5, "more calls after the reload")
        echo_once(live, b"still relayed after the reload\n")
        live.shutdown(socket.SHUT_WR)
        assert recv_until_eof(live) == b""
    finally:
        live.close()

    failures = [o for o in traffic.outcomes if o not in ("ok", "refused")]
    assert not failures, f"calls failed other than by policy: {failures[:5]}"
    assert traffic.outcomes[0] == "ok"
    assert traffic.outcomes[-5:] == ["refused"] * 5, traffic.outcomes[-20:]
    inbound = [l for l in backend.log_lines() if l["direction"] == "inbound"]
    assert {l["reason"] for l in inbound} <= {"ok", "policy_denied"}
    assert {l["rule"] for l in inbound if l["decision"] == "deny"} == {"deny-frontend-after-reload"}
    line = frontend.wait_log(direction="outbound", source=live_local)
    assert line["reason"] == "ok"
    assert line["bytes_to_upstream"] == len(b"opened before the reload\n"
                                            b"still relayed after the reload\n")
    after = scrape(backend)
    assert moved(before, after, "mtlsd_config_reloads_total", result="success") == 1
    assert moved(before, after, "mtlsd_config_reloads_total", result="failure") == 0
    assert moved(before, after, "mtlsd_authz_decisions_total", decision="deny",
                 rule="deny-frontend-after-reload") == traffic.count("refused")
    assert "config reloaded from" in backend.stderr()
    assert [r["name"] for r in get_json(backend, "/policy")["rules"]] == [
        "deny-frontend-after-reload", "frontend-only"]


@pytest.mark.parametrize("broken", ["yaml-syntax", "unknown-key"])
def test_invalid_config_reload_is_refused_and_the_old_policy_stays(pki, agents, apps, broken):
    app = apps("echo")
    frontend, backend, port_out, _ = start_pair(pki, agents, app, reload_interval_ms=NO_POLL_MS)
    good = backend.config_path.read_text()
    before = scrape(backend)
    config = dict(backend.config)
    config["policy"] = deny_frontend_policy(app.port)
    text = yaml.safe_dump(config, sort_keys=False)
    if broken == "yaml-syntax":
        text += "outbound: [unclosed\n"
        problem = None
    else:
        text += "log_levle: info\n"
        problem = "unknown key 'log_levle'"
    write_config(backend, text=text)
    bad_line = len(text.splitlines())

    sighup(backend)
    refused = wait_until(lambda: re.search(r"config reload refused, the running config stays in "
                                           r"force: (\S+?):(\d+): (.*)$", backend.stderr(), re.M),
                         "the refusal in the log")
    assert refused.group(1) == str(backend.config_path)
    assert abs(int(refused.group(2)) - bad_line) <= 1, (refused.group(0), bad_line)
    if problem:
        assert int(refused.group(2)) == bad_line and problem in refused.group(3)

    assert call(port_out)[0] == "ok", "the old policy no longer admits the frontend"
    assert backend.wait_log(direction="inbound", reason="ok")["rule"] == "frontend-only"
    after = scrape(backend)
    assert moved(before, after, "mtlsd_config_reloads_total", result="failure") == 1
    assert moved(before, after, "mtlsd_config_reloads_total", result="success") == 0
    config_page = get_json(backend, "/config")
    assert config_page["last_reload_error"].startswith(
        f"{backend.config_path}:{refused.group(2)}: ")
    assert config_page["config_reload_failures"] == 1

    # Fixed file, another SIGHUP: applied, and the error is cleared.
    write_config(backend, text=good)
    sighup(backend)
    m = wait_metrics(backend, lambda m: m.one("mtlsd_config_reloads_total", result="success") == 1,
                     "the good reload")
    assert m.one("mtlsd_config_reloads_total", result="failure") == 1
    assert get_json(backend, "/config")["last_reload_error"] == ""


def test_listener_change_is_refused_as_restart_only(pki, agents, apps):
    app = apps("echo")
    frontend, backend, port_out, port_in = start_pair(pki, agents, app,
                                                      reload_interval_ms=NO_POLL_MS)
    before = scrape(backend)
    config = dict(backend.config)
    moved_port = free_port()
    config["inbound"] = inbound_section(moved_port, app.port)
    config["policy"] = deny_frontend_policy(app.port)  # must not sneak in with the refusal
    write_config(backend, config)

    sighup(backend)
    wait_until(lambda: "inbound.listeners changed" in backend.stderr(), "the refusal in the log")
    assert re.search(rf"config reload refused, the running config stays in force: "
                     rf"{re.escape(str(backend.config_path))}: inbound\.listeners changed; "
                     rf"these take effect only at start", backend.stderr())
    after = scrape(backend)
    assert moved(before, after, "mtlsd_config_reloads_total", result="failure") == 1
    assert moved(before, after, "mtlsd_config_reloads_total", result="success") == 0
    assert "inbound.listeners" in get_json(backend, "/config")["last_reload_error"]
    assert is_listening(port_in) and not is_listening(moved_port)
    assert call(port_out)[0] == "ok"


def test_config_file_change_is_picked_up_without_a_signal(pki, agents, apps):
    app = apps("echo")
    frontend, backend, port_out, _ = start_pair(pki, agents, app, reload_interval_ms=200)
    assert call(port_out)[0] == "ok"
    config = dict(backend.config)
    config["policy"] = deny_frontend_policy(app.port)
    write_config(backend, config)
    written = time.monotonic()

    m = wait_metrics(backend, lambda m: m.one("mtlsd_config_reloads_total", result="success") == 1,
                     "the file change to be reloaded", timeout=5)
    assert time.monotonic() - written < 5
    assert m.one("mtlsd_config_reloads_total", result="failure") == 0
    assert "SIGHUP" not in backend.stderr()
    wait_until(lambda: call(port_out)[0] == "refused", "the new policy to refuse the frontend",
               interval=0.05)
    line = backend.wait_log(direction="inbound", decision="deny")
    assert line["rule"] == "deny-frontend-after-reload"


def test_post_reload_reports_refusal_with_file_and_line(pki, agents, apps):
    app = apps("echo")
    frontend, backend, port_out, _ = start_pair(pki, agents, app, reload_interval_ms=NO_POLL_MS)
    good = backend.config_path.read_text()
    text = write_config(backend, text=good + "bogus_key: 1\n")
    line = len(text.splitlines())

    status, _, body = http(backend, "/reload", method="POST")
    assert status == 400, body
    assert body == f"{backend.config_path}:{line}: unknown key 'bogus_key'\n"
    m = scrape(backend)
    assert m.one("mtlsd_config_reloads_total", result="failure") == 1
    assert m.one("mtlsd_config_reloads_total", result="success") == 0
    assert get_json(backend, "/config")["last_reload_error"] == body.strip()
    assert call(port_out)[0] == "ok"

    config = dict(backend.config)
    config["policy"] = deny_frontend_policy(app.port)
    write_config(backend, config)
    status, _, body = http(backend, "/reload", method="POST")
    assert (status, body) == (200, f"{backend.config_path}: reloaded (2 policy rules)\n")
    m = scrape(backend)
    assert m.one("mtlsd_config_reloads_total", result="success") == 1
    assert get_json(backend, "/config")["last_reload_error"] == ""
    wait_until(lambda: call(port_out)[0] == "refused", "the reloaded policy to refuse the frontend",
               interval=0.05)
