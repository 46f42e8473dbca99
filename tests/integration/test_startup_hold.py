"""Connections that arrive before the agent has a certificate for them.

An application often starts before its agent has its first certificate
(no native sidecars, a node reboot, a node-mode pod that is new). Such a
connection is held, not reset: it waits for the certificate up to the
handshake deadline, then proceeds; only when the deadline passes is it
refused with `no_identity`. These tests start the agents while the control
plane is not there yet, open connections, see them held (the agent's own
metrics say so), then start the control plane and watch the same
connections go through."""
import re
import ssl
import threading

import pytest

from conftest import (
    WAIT,
    addr,
    connect,
    free_port,
    recv_exactly,
    recv_until_eof,
    send_all_then_shut,
    spiffe_id,
    wait_until,
)
from mtls_ca import MTLS_CA_BIN, MtlsCa, mint_token
from test_control_plane import CA_KINDS, PyCa, cp_config, cp_pki, mca_pki, mesh_spec  # noqa: F401

# Long enough that starting a control plane under ASan on a busy machine
# fits in it: the hold must end because the certificate came.
HOLD_DEADLINE_MS = 25000


def late_ca_config(ca_kind, pki, ca_port, tmp_path, workload, **sections):
    """An agent config pointing at a control plane that is not running yet."""
    cfg = cp_config(pki, ca_port, workload, **sections)
    cfg["timeouts"] = {"drain_ms": 1000, "handshake_ms": HOLD_DEADLINE_MS}
    if ca_kind == "mtls-ca":
        cfg["control_plane"]["token_file"] = str(
            mint_token(pki, tmp_path / f"{workload}.token", workload))
    return cfg


def start_ca_on(ca_kind, procs, pki, tmp_path, port, mesh):
    if ca_kind == "grpcio":
        return PyCa(procs, pki, tmp_path, port=port, mesh=mesh)
    return MtlsCa(procs, MTLS_CA_BIN, pki, tmp_path / "mtls-ca", mesh=mesh, port=port)


def metric(agent, series):
    """The value of one exact series on the agent's /metrics."""
    status, text = agent.admin("/metrics")
    assert status == 200, text
    found = re.search(r"^" + re.escape(series) + r" (\S+)$", text, re.M)
    assert found, f"{series} missing from /metrics"
    return float(found.group(1))


def awaiting(agent, direction):
    return metric(agent, f'mtlsd_connections_awaiting_identity{{direction="{direction}"}}')


@pytest.mark.parametrize("ca_kind", CA_KINDS)
def test_calls_made_before_the_first_certificates_wait_for_them(request, ca_kind, procs, agents,
                                                                apps, tmp_path):
    pki = request.getfixturevalue("cp_pki" if ca_kind == "grpcio" else "mca_pki")
    app = apps("echo")
    ca_port, port_in, port_out = free_port(), free_port(), free_port()
    backend = agents("backend", late_ca_config(ca_kind, pki, ca_port, tmp_path, "backend", inbound={
        "listeners": [{"address": f"127.0.0.1:{port_in}", "app_port": app.port}]}))
    frontend = agents("frontend", late_ca_config(
        ca_kind, pki, ca_port, tmp_path, "frontend", outbound={
            "listeners": [{"address": f"127.0.0.1:{port_out}",
                           "destination": f"127.0.0.1:{port_in}"}],
            "unknown_destination": "deny"}))
    assert frontend.admin("/ready")[0] == 503  # no certificate yet: the app would race us

    with connect(port_out) as sock:
        local = addr(sock)
        sender, errors = send_all_then_shut(sock, b"sent before any certificate existed")
        wait_until(lambda: awaiting(frontend, "outbound") == 1,
                   "the frontend agent to hold the early call")
        ca = start_ca_on(ca_kind, procs, pki, tmp_path, ca_port,
                         mesh_spec(pki, backend_addr=f"127.0.0.1:{port_in}"))
        received = recv_until_eof(sock)
        sender.join(timeout=WAIT)
    assert not errors, errors
    assert received == b"sent before any certificate existed"

    out = frontend.wait_log(direction="outbound", source=local)
    assert (out["decision"], out["reason"]) == ("allow", "ok"), out
    assert out["held_ms"] > 0, out
    assert metric(frontend, 'mtlsd_connections_held_total{direction="outbound"}') == 1
    assert metric(frontend, 'mtlsd_connection_holds_ended_total{direction="outbound",'
                            'result="resumed"}') == 1
    assert awaiting(frontend, "outbound") == 0
    inbound = backend.wait_log(direction="inbound", peer_id=spiffe_id("frontend"))
    assert (inbound["decision"], inbound["reason"]) == ("allow", "ok"), inbound
    if isinstance(ca, MtlsCa):
        ca.stop()
        ca.check()


def test_an_inbound_handshake_before_the_first_certificate_waits_for_it(procs, agents, apps,
                                                                        cp_pki, tmp_path):
    app = apps("echo")
    ca_port, port_in = free_port(), free_port()
    backend = agents("backend", late_ca_config("grpcio", cp_pki, ca_port, tmp_path, "backend",
                                               inbound={"listeners": [{
                                                   "address": f"127.0.0.1:{port_in}",
                                                   "app_port": app.port}]}))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # SVIDs carry a URI SAN only
    ctx.load_verify_locations(str(cp_pki / "root.pem"))
    frontend_dir = cp_pki / "workloads" / "frontend"
    ctx.load_cert_chain(str(frontend_dir / "chain.pem"), str(frontend_dir / "key.pem"))
    ctx.set_alpn_protocols(["mtlsd"])

    outcome = {}

    def client():  # the handshake blocks until the agent has a certificate
        try:
            raw = connect(port_in)
            outcome["local"] = addr(raw)
            with ctx.wrap_socket(raw) as tls:  # takes over |raw|
                message = b"hello from a peer that came early"
                tls.sendall(message)  # no half-close: Python's TLS would drop to raw TCP
                outcome["received"] = recv_exactly(tls, len(message))
        except (OSError, ssl.SSLError) as e:
            outcome["error"] = e

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    wait_until(lambda: awaiting(backend, "inbound") == 1 or "error" in outcome,
               "the backend agent to hold the early handshake")
    assert "error" not in outcome, outcome
    PyCa(procs, cp_pki, tmp_path, port=ca_port, mesh=mesh_spec(cp_pki))
    thread.join(timeout=WAIT + HOLD_DEADLINE_MS / 1000)
    assert not thread.is_alive(), "the early client never finished"
    assert outcome.get("received") == b"hello from a peer that came early", outcome
    line = backend.wait_log(direction="inbound", peer_id=spiffe_id("frontend"))
    assert (line["decision"], line["reason"]) == ("allow", "ok"), line
    assert line["held_ms"] > 0, line
    assert metric(backend, 'mtlsd_connection_holds_ended_total{direction="inbound",'
                           'result="resumed"}') == 1


def test_a_connection_held_past_the_handshake_deadline_is_refused_with_no_identity(
        agents, cp_pki, tmp_path):
    port_out = free_port()
    cfg = late_ca_config("grpcio", cp_pki, free_port(), tmp_path, "frontend", outbound={
        "listeners": [{"address": f"127.0.0.1:{port_out}", "destination": "127.0.0.1:9"}]})
    cfg["timeouts"]["handshake_ms"] = 300  # and no control plane will ever answer
    frontend = agents("frontend", cfg)
    with connect(port_out) as sock:
        local = addr(sock)
        try:
            sock.sendall(b"anyone?")
            assert sock.recv(16) == b""
        except (ConnectionResetError, BrokenPipeError):
            pass  # the refusal is a reset
    line = frontend.wait_log(direction="outbound", source=local)
    assert (line["decision"], line["reason"]) == ("deny", "no_identity"), line
    assert "handshake deadline" in line["detail"], line
    assert line["held_ms"] >= 250, line  # it really waited, it was not reset at once
    assert metric(frontend, 'mtlsd_connection_holds_ended_total{direction="outbound",'
                            'result="refused"}') == 1
    assert awaiting(frontend, "outbound") == 0
