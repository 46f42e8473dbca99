"""Allowed traffic: app -> frontend agent (outbound) -> backend agent (inbound) -> app."""

import os
import socket
import subprocess

import pytest

from conftest import (
    WAIT,
    addr,
    base_config,
    cert_serial,
    connect,
    free_port,
    frontend_only_policy,
    inbound_section,
    outbound_section,
    read_until,
    recv_until_eof,
    roundtrip,
    spiffe_id,
)

MIB = 1024 * 1024


def start_mesh(pki, agents, app, frontend_identity=None, backend_identity=None, bundle=None):
    """Starts backend (inbound -> |app|) and frontend (outbound -> backend).
    Returns (frontend, backend, outbound port, inbound port)."""
    port_in, port_out = free_port(), free_port()
    backend = agents("backend", base_config(
        pki, workload="backend", identity=backend_identity, bundle=bundle,
        inbound=inbound_section(port_in, app.port), policy=frontend_only_policy(app.port)))
    frontend = agents("frontend", base_config(
        pki, workload="frontend", identity=frontend_identity, bundle=bundle,
        outbound=outbound_section(port_out, port_in, expected_id=spiffe_id("backend"))))
    return frontend, backend, port_out, port_in


def test_echo_1mib_byte_exact(pki, agents, apps):
    app = apps("echo")
    frontend, backend, port_out, port_in = start_mesh(pki, agents, app)
    payload = os.urandom(MIB)

    received, local = roundtrip(port_out, payload)

    assert len(received) == len(payload)
    assert received == payload, "echoed bytes differ from the bytes sent"

    out = frontend.wait_log(direction="outbound", source=local)
    assert out["decision"] == "allow"
    assert out["reason"] == "ok"
    assert out["rule"] == "expected-id"
    assert out["destination"] == f"127.0.0.1:{port_in}"
    assert out["peer_id"] == spiffe_id("backend")
    assert out["local_id"] == spiffe_id("frontend")
    assert out["tls_version"] == "TLSv1.3"
    assert out["cipher"].startswith("TLS_")
    assert int(out["peer_serial"], 16) == cert_serial(pki.workload("backend") / "cert.pem")
    assert out["bytes_to_upstream"] == MIB
    assert out["bytes_to_downstream"] == MIB

    inb = backend.wait_log(direction="inbound", reason="ok")
    assert inb["decision"] == "allow"
    assert inb["rule"] == "frontend-only"
    assert inb["destination"] == f"127.0.0.1:{app.port}"
    assert inb["source"].startswith("127.0.0.1:")
    assert inb["peer_id"] == spiffe_id("frontend")
    assert inb["local_id"] == spiffe_id("backend")
    assert inb["tls_version"] == "TLSv1.3"
    assert inb["cipher"] == out["cipher"]
    assert int(inb["peer_serial"], 16) == cert_serial(pki.workload("frontend") / "cert.pem")
    assert inb["bytes_to_upstream"] == MIB
    assert inb["bytes_to_downstream"] == MIB
    for line in (out, inb):
        assert line["peer_serial"] == line["peer_serial"].lower()
        assert isinstance(line["duration_ms"], int)

    assert app.connection_count == 1
    assert app.connections[0]["received"] == MIB


def test_half_close_propagates(pki, agents, apps):
    app = apps("reply_after_eof")
    frontend, backend, port_out, _ = start_mesh(pki, agents, app)
    request = b"request that ends with a half-close\n" * 1000

    with connect(port_out) as sock:
        local = addr(sock)
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        # The app only answers once it has seen EOF, so getting the reply
        # proves our FIN crossed both agents; then its FIN must come back.
        reply = recv_until_eof(sock)

    expected = b"reply after EOF: %d bytes" % len(request)
    assert reply == expected
    assert app.connection_count == 1
    assert app.connections[0]["eof"] is True
    assert app.connections[0]["received"] == len(request)

    out = frontend.wait_log(direction="outbound", source=local)
    assert (out["reason"], out["decision"]) == ("ok", "allow")
    assert out["bytes_to_upstream"] == len(request)
    assert out["bytes_to_downstream"] == len(expected)
    inb = backend.wait_log(direction="inbound", reason="ok")
    assert inb["bytes_to_upstream"] == len(request)
    assert inb["bytes_to_downstream"] == len(expected)


def test_openssl_client_allowed(pki, agents, apps, procs):
    """A different TLS client (OpenSSL's s_client) presenting the frontend
    SVID is admitted by the backend's inbound and reaches the app."""
    app = apps("echo")
    port_in = free_port()
    backend = agents("backend", base_config(
        pki, inbound=inbound_section(port_in, app.port), policy=frontend_only_policy(app.port)))
    fe = pki.workload("frontend")
    client = procs.spawn(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port_in}",
         "-cert", fe / "cert.pem", "-cert_chain", pki.intermediate, "-key", fe / "key.pem",
         "-CAfile", pki.bundle, "-verify_return_error", "-alpn", "mtlsd", "-tls1_3",
         "-quiet", "-no_ign_eof", "-nocommands"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    message = b"hello from openssl s_client\n"
    client.stdin.write(message)
    client.stdin.flush()
    echoed = read_until(client.stdout, lambda b: len(b) >= len(message))
    assert echoed == message
    client.stdin.close()  # stdin EOF: s_client closes the TLS connection
    try:
        client.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        pytest.fail("openssl s_client did not exit after its stdin closed")

    line = backend.wait_log(direction="inbound", reason="ok")
    assert line["decision"] == "allow"
    assert line["rule"] == "frontend-only"
    assert line["peer_id"] == spiffe_id("frontend")
    assert line["tls_version"] == "TLSv1.3"
    assert line["bytes_to_upstream"] == len(message)
    assert line["bytes_to_downstream"] == len(message)
    assert app.connection_count == 1


@pytest.mark.parametrize("fmt", ["der", "pkcs12"])
def test_identity_file_formats_serve_echo(pki, agents, apps, fmt):
    """Both agents load their identity from DER files or from PKCS#12 and
    still complete an mTLS echo."""

    def identity(name):
        wl = pki.workload(name)
        if fmt == "der":
            return {"cert_file": str(wl / "cert.der"), "key_file": str(wl / "key.der")}
        return {"pkcs12_file": str(wl / "id.p12"), "pkcs12_password_file": str(wl / "id.p12.pass")}

    app = apps("echo")
    # A DER cert file holds the leaf only, so peers cannot learn the
    # intermediate from the handshake: trust root + intermediate.
    bundle = pki.bundle_with_intermediate if fmt == "der" else pki.bundle
    frontend, backend, port_out, _ = start_mesh(
        pki, agents, app, frontend_identity=identity("frontend"),
        backend_identity=identity("backend"), bundle=bundle)
    payload = os.urandom(64 * 1024)

    received, local = roundtrip(port_out, payload)
    assert received == payload

    out = frontend.wait_log(direction="outbound", source=local)
    assert (out["decision"], out["reason"]) == ("allow", "ok")
    assert out["local_id"] == spiffe_id("frontend")
    assert out["peer_id"] == spiffe_id("backend")
    assert int(out["peer_serial"], 16) == cert_serial(pki.workload("backend") / "cert.pem")
    inb = backend.wait_log(direction="inbound", reason="ok")
    assert inb["local_id"] == spiffe_id("backend")
    assert inb["peer_id"] == spiffe_id("frontend")
    assert int(inb["peer_serial"], 16) == cert_serial(pki.workload("frontend") / "cert.pem")


def test_many_small_writes_arrive_whole_and_in_order(pki, agents, apps):
    # Back-to-back small writes become many small TLS records that reach the
    # backend several per recv (its read-ahead): each must be served, in
    # order, and the last ones too, without waiting for more bytes to come.
    app = apps("echo")
    frontend, backend, port_out, port_in = start_mesh(pki, agents, app)
    pieces = [os.urandom(1 + (i * 37) % 300) for i in range(3000)]
    payload = b"".join(pieces)
    with connect(port_out) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            sock.sendall(piece)
        received = b""
        while len(received) < len(payload):
            chunk = sock.recv(1 << 16)
            assert chunk, f"EOF after {len(received)} of {len(payload)} bytes"
            received += chunk
    assert received == payload, "echoed bytes differ from the bytes sent"


def test_a_client_that_stops_reading_then_reads_gets_every_byte(pki, agents, apps):
    # The client fills every buffer on the way (its own, both agents', the
    # echo app's) before it reads a byte, so both agents sit on records they
    # have read ahead while their relay buffers are full; once the client
    # reads, everything must flow again, byte-exact.
    import select
    import time

    app = apps("echo")
    frontend, backend, port_out, port_in = start_mesh(pki, agents, app)
    payload = os.urandom(64 * MIB)  # more than every socket buffer on the way holds
    received = bytearray()
    with connect(port_out) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.setblocking(False)
        sent = 0
        while sent < len(payload):  # until the whole path pushes back
            try:
                sent += sock.send(payload[sent:sent + (1 << 16)])
            except BlockingIOError:
                break
        assert sent < len(payload), "64 MiB went out without any backpressure"
        deadline = time.monotonic() + WAIT
        while len(received) < len(payload):
            assert time.monotonic() < deadline, (
                f"stalled: sent {sent}, received {len(received)} of {len(payload)}")
            want_write = [sock] if sent < len(payload) else []
            readable, writable, _ = select.select([sock], want_write, [], 0.5)
            if readable:
                chunk = sock.recv(1 << 16)
                assert chunk, f"EOF after {len(received)} of {len(payload)} bytes"
                received += chunk
            if writable:
                try:
                    sent += sock.send(payload[sent:sent + (1 << 16)])
                except BlockingIOError:
                    pass
    assert bytes(received) == payload, "echoed bytes differ from the bytes sent"
