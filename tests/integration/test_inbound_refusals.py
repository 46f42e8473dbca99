"""Inbound refusals: clients the backend's inbound must not let through.

One backend agent (policy: only the frontend may reach the app port) serves
the whole module. Each test connects as a different kind of bad client and
checks what the client observes (closed, no data), the access-log reason and
that not one connection reached the application."""

import json
import subprocess
import time

import pytest

from conftest import (
    BAD_CERT_CASES,
    WAIT,
    WEAK_CERT_DETAILS,
    Agent,
    App,
    addr,
    base_config,
    cert_serial,
    connect,
    echo_once,
    expect_refused_tls,
    free_port,
    frontend_only_policy,
    inbound_section,
    spiffe_id,
    tls_client_context,
    wait_until,
)


@pytest.fixture(scope="module")
def strict_backend(pki, module_procs, mtlsd_bin, tmp_path_factory):
    app = App("echo")
    port_in = free_port()
    agent = Agent(module_procs, mtlsd_bin, tmp_path_factory.mktemp("strict-backend"),
                  base_config(pki, inbound=inbound_section(port_in, app.port),
                              policy=frontend_only_policy(app.port)))
    try:
        agent.start()
        yield agent, app, port_in
        agent.check_stopped_cleanly()
    finally:
        if agent.proc is not None:
            module_procs.stop(agent.proc)
        app.close()
    agent.check_sanitizers()


@pytest.fixture
def backend(strict_backend):
    """The shared backend, checked for sanitizer reports after every test."""
    agent, app, port_in = strict_backend
    yield strict_backend
    agent.check_sanitizers()
    assert agent.proc.poll() is None, f"agent died:\n{agent.stderr()[-3000:]}"


# (certificate directory under the PKI, expected reason)
CASES = {"id-not-allowed": ("workloads/other", "policy_denied"), **BAD_CERT_CASES}



@pytest.mark.parametrize("case", list(CASES))
def test_client_certificate_refused(pki, backend, case):
    agent, app, port_in = backend
    cert_dir, reason = CASES[case]
    cert_dir = pki.root / cert_dir
    before = app.connection_count

    local, observed = expect_refused_tls(tls_client_context(pki, cert_dir), port_in)

    line = agent.wait_log(direction="inbound", source=local)
    assert line["decision"] == "deny", json.dumps(line)
    assert line["reason"] == reason, json.dumps(line)
    assert line["bytes_to_upstream"] == 0 and line["bytes_to_downstream"] == 0
    if case == "bad-key-usage":
        # BoringSSL refuses a leaf whose keyUsage cannot sign before it hands
        # the certificate to the agent's verifier, and drops it: no serial.
        assert line["detail"] == "KEY_USAGE_BIT_INCORRECT", json.dumps(line)
    else:
        assert int(line["peer_serial"], 16) == cert_serial(cert_dir / "cert.pem")
    if reason == "policy_denied":
        assert "ACCESS_DENIED" in observed, f"expected a TLS access_denied alert: {observed}"
        assert line["rule"] == "no-allow-rule-matched"
        assert line["peer_id"] == spiffe_id("other")
    if reason == "unknown_trust_domain":
        assert line["peer_id"] == "spiffe://other.org/ns/default/sa/intruder"
    if case in WEAK_CERT_DETAILS:
        assert line["detail"] == WEAK_CERT_DETAILS[case], json.dumps(line)
    assert app.connection_count == before, "a refused client reached the application"


@pytest.mark.parametrize("case", ["rsa2048", "p384"])
def test_strong_keys_other_than_p256_are_accepted(pki, backend, case):
    """RSA-2048 and P-384 client certificates (frontend's ID) are served."""
    agent, app, port_in = backend
    ctx = tls_client_context(pki, pki.root / "strong" / case)
    raw = connect(port_in)
    local = addr(raw)
    with ctx.wrap_socket(raw) as tls:
        echo_once(tls, b"strong enough\n")
    line = agent.wait_log(direction="inbound", source=local)
    assert (line["decision"], line["reason"]) == ("allow", "ok"), json.dumps(line)
    assert line["peer_id"] == spiffe_id("frontend")


def test_no_client_certificate_refused(pki, backend):
    agent, app, port_in = backend
    before = app.connection_count

    local, observed = expect_refused_tls(tls_client_context(pki, None), port_in)

    line = agent.wait_log(direction="inbound", source=local)
    assert (line["decision"], line["reason"]) == ("deny", "no_client_cert"), json.dumps(line)
    assert line["peer_id"] == ""
    assert app.connection_count == before


def test_plaintext_client_refused(backend):
    agent, app, port_in = backend
    before = app.connection_count
    with connect(port_in) as sock:
        local = addr(sock)
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            data = b""
    assert data == b"", "a plaintext client got a response"

    line = agent.wait_log(direction="inbound", source=local)
    assert line["decision"] == "deny", json.dumps(line)
    assert line["reason"] == "plaintext_on_strict_port", json.dumps(line)
    assert line["tls_version"] == ""
    assert app.connection_count == before


def test_openssl_client_with_disallowed_id_refused(pki, backend, procs):
    """OpenSSL's s_client presenting a valid SVID the policy does not allow
    is refused after the handshake and never reaches the app."""
    agent, app, port_in = backend
    before = app.connection_count
    already = len(agent.log_lines())
    other = pki.workload("other")
    client = procs.spawn(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port_in}",
         "-cert", other / "cert.pem", "-cert_chain", pki.intermediate, "-key", other / "key.pem",
         "-CAfile", pki.bundle, "-verify_return_error", "-alpn", "mtlsd", "-tls1_3",
         "-quiet", "-nocommands"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:  # s_client exits when the agent closes (and may do so before reading stdin)
        out, err = client.communicate(input=b"let me in\n", timeout=WAIT)
    except subprocess.TimeoutExpired:
        pytest.fail("the agent did not close the refused s_client connection")
    assert out == b""
    assert b"access denied" in err, f"no access_denied alert reported by s_client: {err!r}"

    def new_lines():
        lines = agent.log_lines()[already:]
        return lines or None

    line = wait_until(new_lines, "the s_client access-log line")[0]
    assert line["direction"] == "inbound"
    assert (line["decision"], line["reason"]) == ("deny", "policy_denied"), json.dumps(line)
    assert line["rule"] == "no-allow-rule-matched"
    assert line["peer_id"] == spiffe_id("other")
    assert line["tls_version"] == "TLSv1.3"
    assert app.connection_count == before


def test_handshake_timeout(pki, agents, apps):
    app = apps("echo")
    port_in = free_port()
    agent = agents("backend", base_config(
        pki, inbound=inbound_section(port_in, app.port), policy=frontend_only_policy(app.port),
        timeouts={"handshake_ms": 500}))
    with connect(port_in) as sock:
        local = addr(sock)
        started = time.monotonic()
        sock.sendall(b"\x16")  # the first byte of a TLS record, then silence
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            data = b""
        elapsed = time.monotonic() - started
    assert data == b""
    assert elapsed >= 0.4, f"closed after {elapsed:.3f}s, before the 500 ms handshake timeout"

    line = agent.wait_log(direction="inbound", source=local)
    assert (line["decision"], line["reason"]) == ("deny", "handshake_timeout"), json.dumps(line)
    assert app.connection_count == 0
