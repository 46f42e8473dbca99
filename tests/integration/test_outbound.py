"""Outbound: the agent as a TLS client must only relay to the server identity
it expects. The servers here are OpenSSL's s_server (a different TLS stack)."""

import json
import re
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import (
    BAD_CERT_CASES,
    WEAK_CERT_DETAILS,
    addr,
    base_config,
    cert_serial,
    client_socket,
    connect,
    free_port,
    recv_exactly,
    is_listening,
    frontend_only_policy,
    inbound_section,
    outbound_section,
    recv_until_eof,
    roundtrip,
    spiffe_id,
    wait_until,
)


def start_s_server(procs, pki, tmp_path, workload, port, ca_file=None, cert_dir=None):
    """`openssl s_server` presenting |workload|'s SVID (or the one in
    |cert_dir|), requiring a client certificate from our CA, TLS 1.3, ALPN
    mtlsd, replying to each line with the line reversed (-rev). |ca_file|
    replaces the bundle it verifies client certificates against."""
    wl = Path(cert_dir) if cert_dir else pki.workload(workload)
    # chain.pem is the leaf then its issuers; s_server wants the issuers apart.
    pems = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?",
                      (wl / "chain.pem").read_text(), re.S)
    issuers = tmp_path / f"s_server-{workload}-issuers.pem"
    issuers.write_text("".join(pems[1:]))
    log_path = tmp_path / f"s_server-{workload}.log"
    log = open(log_path, "wb")
    proc = procs.spawn(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}",
         "-cert", wl / "cert.pem", "-cert_chain", issuers, "-key", wl / "key.pem",
         "-CAfile", ca_file or pki.bundle, "-Verify", "1", "-verify_return_error",
         "-tls1_3", "-alpn", "mtlsd", "-rev", "-naccept", "1",
         # present weak certificates too: the agent is the one judging them
         "-cipher", "DEFAULT:@SECLEVEL=0"],
        stdout=log, stderr=subprocess.STDOUT)
    log.close()

    def ready():
        assert proc.poll() is None, f"s_server exited:\n{log_path.read_text()}"
        return is_listening(port)

    wait_until(ready, "openssl s_server to listen")
    return proc


def expect_closed_without_data(port, payload=b"hello\n"):
    """The agent refuses the connection: the application (our client) sees a
    close (documented: a TCP reset) and never any data."""
    with client_socket() as sock:
        local = addr(sock)
        try:
            sock.connect(("127.0.0.1", port))
            if payload:
                sock.sendall(payload)
            data = recv_until_eof(sock)
        except (ConnectionResetError, BrokenPipeError):  # the agent may reset at any point
            data = b""
    assert data == b"", f"client received data: {data!r}"
    return local


def test_server_with_unexpected_id_is_refused(pki, agents, procs, tmp_path):
    server_port, port_out = free_port(), free_port()
    start_s_server(procs, pki, tmp_path, "other", server_port)
    frontend = agents("frontend", base_config(
        pki, workload="frontend",
        outbound=outbound_section(port_out, server_port, expected_id=spiffe_id("backend"))))

    local = expect_closed_without_data(port_out)

    line = frontend.wait_log(direction="outbound", source=local)
    assert (line["decision"], line["reason"]) == ("deny", "unexpected_server_id"), json.dumps(line)
    assert line["rule"] == "expected-id"
    assert line["peer_id"] == spiffe_id("other")
    assert line["destination"] == f"127.0.0.1:{server_port}"
    assert int(line["peer_serial"], 16) == cert_serial(pki.workload("other") / "cert.pem")
    assert line["bytes_to_upstream"] == 0 and line["bytes_to_downstream"] == 0


SERVER_CASES = BAD_CERT_CASES


@pytest.mark.parametrize("case", list(SERVER_CASES))
def test_server_certificate_refused(pki, agents, procs, tmp_path, case):
    """The outbound side verifies the server's SVID as strictly as inbound
    verifies clients: a bad server certificate is refused before any byte
    of the application reaches it."""
    cert_dir, reason = SERVER_CASES[case]
    server_port, port_out = free_port(), free_port()
    start_s_server(procs, pki, tmp_path, case, server_port, cert_dir=pki.root / cert_dir)
    frontend = agents("frontend", base_config(
        pki, workload="frontend",
        outbound=outbound_section(port_out, server_port, expected_id=spiffe_id("backend"))))

    local = expect_closed_without_data(port_out)

    line = frontend.wait_log(direction="outbound", source=local)
    assert (line["decision"], line["reason"]) == ("deny", reason), json.dumps(line)
    assert line["bytes_to_upstream"] == 0 and line["bytes_to_downstream"] == 0
    if case == "bad-key-usage":
        # BoringSSL refuses a leaf whose keyUsage cannot sign before it hands
        # the certificate to the agent's verifier, and drops it: no serial.
        assert line["detail"] == "KEY_USAGE_BIT_INCORRECT", json.dumps(line)
    else:
        assert int(line["peer_serial"], 16) == cert_serial(pki.root / cert_dir / "cert.pem")
    if case in WEAK_CERT_DETAILS:
        assert line["detail"] == WEAK_CERT_DETAILS[case], json.dumps(line)


@pytest.mark.parametrize("case", ["rsa2048", "p384"])
def test_server_with_a_strong_non_default_key_is_accepted(pki, agents, procs, tmp_path, case):
    server_port, port_out = free_port(), free_port()
    start_s_server(procs, pki, tmp_path, case, server_port, cert_dir=pki.root / "strong" / case)
    frontend = agents("frontend", base_config(
        pki, workload="frontend",
        outbound=outbound_section(port_out, server_port, expected_id=spiffe_id("frontend"))))
    with connect(port_out) as sock:
        local = addr(sock)
        sock.sendall(b"hello mesh\n")
        assert recv_exactly(sock, len(b"hsem olleh\n")) == b"hsem olleh\n"
    line = frontend.wait_log(direction="outbound", source=local)
    assert (line["decision"], line["reason"]) == ("allow", "ok"), json.dumps(line)


@pytest.mark.parametrize("mode", ["expected-id", "trust-domain-fallback"])
def test_server_with_expected_id_is_accepted(pki, agents, procs, tmp_path, mode):
    """s_server presenting the backend SVID: with a destinations entry naming
    it (rule expected-id), and with no entry but a server in our trust domain
    (unknown_destination: trust_domain, rule trust-domain-fallback)."""
    server_port, port_out = free_port(), free_port()
    start_s_server(procs, pki, tmp_path, "backend", server_port)
    expected = spiffe_id("backend") if mode == "expected-id" else None
    frontend = agents("frontend", base_config(
        pki, workload="frontend",
        outbound=outbound_section(port_out, server_port, expected_id=expected,
                                  unknown="trust_domain")))

    with connect(port_out) as sock:
        local = addr(sock)
        sock.sendall(b"hello mesh\n")
        got = b""
        while not got.endswith(b"\n"):
            chunk = sock.recv(4096)
            assert chunk, f"connection closed early; got {got!r}"
            got += chunk
        assert got == b"hsem olleh\n"
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b""

    line = frontend.wait_log(direction="outbound", source=local)
    assert (line["decision"], line["reason"]) == ("allow", "ok"), json.dumps(line)
    assert line["rule"] == mode
    assert line["peer_id"] == spiffe_id("backend")
    assert line["tls_version"] == "TLSv1.3"
    assert int(line["peer_serial"], 16) == cert_serial(pki.workload("backend") / "cert.pem")
    assert line["bytes_to_upstream"] == len(b"hello mesh\n")
    assert line["bytes_to_downstream"] == len(b"hsem olleh\n")


def test_unknown_destination_deny(pki, agents, apps):
    app = apps("count")  # something listening at the destination
    port_out = free_port()
    frontend = agents("frontend", base_config(
        pki, workload="frontend",
        outbound=outbound_section(port_out, app.port, expected_id=None, unknown="deny")))

    local = expect_closed_without_data(port_out)

    line = frontend.wait_log(direction="outbound", source=local)
    assert (line["decision"], line["reason"]) == ("deny", "unknown_destination"), json.dumps(line)
    assert line["destination"] == f"127.0.0.1:{app.port}"
    assert line["peer_id"] == ""
    assert app.connection_count == 0, "the agent connected to a destination it must refuse"


def test_unknown_destination_passthrough_relays_plaintext(pki, agents, apps):
    """Outside the mesh: a destination with no expected ID is relayed as it
    is (the plain echo app here would choke on a ClientHello), and the log
    says passthrough; a listed destination still gets mesh TLS."""
    app = apps("echo")
    port_out = free_port()
    frontend = agents("frontend", base_config(
        pki, workload="frontend",
        outbound=outbound_section(port_out, app.port, expected_id=None, unknown="passthrough")))

    received, local = roundtrip(port_out, b"plain outside the mesh\n")

    assert received == b"plain outside the mesh\n"
    line = frontend.wait_log(direction="outbound", source=local)
    assert (line["decision"], line["rule"], line["reason"]) == ("allow", "passthrough", "ok"), \
        json.dumps(line)
    assert line["tls_version"] == "" and line["peer_id"] == ""
    assert "outside the mesh" in line["detail"]


def test_denied_client_agent_logs_peer_denied(pki, agents, apps):
    """An agent whose workload the server's policy refuses learns why from
    the access_denied alert (peer_denied), and its application sees the
    connection refused with no data."""
    app = apps("echo")
    port_in, port_out = free_port(), free_port()
    backend = agents("backend", base_config(
        pki, inbound=inbound_section(port_in, app.port), policy=frontend_only_policy(app.port)))
    other = agents("other", base_config(
        pki, workload="other",
        outbound=outbound_section(port_out, port_in, expected_id=spiffe_id("backend"))))

    local = expect_closed_without_data(port_out, payload=b"")

    line = other.wait_log(direction="outbound", source=local)
    assert line["reason"] == "peer_denied", json.dumps(line)
    assert line["peer_id"] == spiffe_id("backend")
    assert line["bytes_to_downstream"] == 0
    inb = backend.wait_log(direction="inbound", peer_id=spiffe_id("other"))
    assert (inb["decision"], inb["reason"]) == ("deny", "policy_denied"), json.dumps(inb)
    assert app.connection_count == 0


def test_server_rejecting_our_certificate_logs_peer_rejected_cert(pki, agents, procs, tmp_path):
    """s_server that trusts a different root refuses the agent's client
    certificate with an alert; the agent logs peer_rejected_cert."""
    server_port, port_out = free_port(), free_port()
    start_s_server(procs, pki, tmp_path, "backend", server_port,
                   ca_file=pki.bad("unknown-root") / "root.pem")
    frontend = agents("frontend", base_config(
        pki, workload="frontend",
        outbound=outbound_section(port_out, server_port, expected_id=spiffe_id("backend"))))

    local = expect_closed_without_data(port_out, payload=b"")

    line = frontend.wait_log(direction="outbound", source=local)
    assert line["reason"] == "peer_rejected_cert", json.dumps(line)
    assert line["peer_id"] == spiffe_id("backend")
    assert line["bytes_to_downstream"] == 0
