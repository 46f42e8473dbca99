"""Permissive inbound ports: mesh peers still get mTLS (told apart by the
mesh ALPN token in their ClientHello), plaintext and non-mesh TLS clients
are admitted as unauthenticated peers where no policy rule asks for an
identity; strict ports keep refusing plaintext."""
import ssl

from conftest import (
    addr,
    base_config,
    connect,
    free_port,
    roundtrip,
    spiffe_id,
    tls_client_context,
)


def backend_with(pki, agents, app, policy=None):
    port_in = free_port()
    inbound = {"listeners": [{"address": f"127.0.0.1:{port_in}", "app_port": app.port}],
               "permissive_ports": [app.port]}
    agent = agents("backend", base_config(pki, workload="backend", inbound=inbound,
                                          policy=policy or {"default": "allow"}))
    return agent, port_in


def test_plaintext_client_reaches_the_app_on_a_permissive_port(pki, agents, apps):
    app = apps("echo")
    backend, port_in = backend_with(pki, agents, app)
    received, local = roundtrip(port_in, b"plain bytes")
    assert received == b"plain bytes"
    line = backend.wait_log(direction="inbound", source=local)
    assert (line["decision"], line["reason"], line["rule"]) == ("allow", "ok", "default")
    assert line["peer_id"] == "" and line["tls_version"] == ""
    assert "unauthenticated" in line["detail"]


def test_mesh_client_still_gets_mtls_on_a_permissive_port(pki, agents, apps):
    app = apps("echo")
    backend, port_in = backend_with(pki, agents, app)
    ctx = tls_client_context(pki, pki.workload("frontend"))
    with connect(port_in) as raw:
        local = addr(raw)
        with ctx.wrap_socket(raw) as tls:
            assert tls.selected_alpn_protocol() == "mtlsd"
            tls.sendall(b"over mtls")
            assert tls.recv(64) == b"over mtls"
    line = backend.wait_log(direction="inbound", source=local)
    assert line["peer_id"] == spiffe_id("frontend")
    assert line["tls_version"] == "TLSv1.3"


def test_non_mesh_tls_passes_through_untouched(pki, agents, apps):
    """A TLS client without the mesh ALPN is not terminated: its bytes reach
    the app as they are (the app would do its own TLS)."""
    app = apps("count")
    backend, port_in = backend_with(pki, agents, app)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    with connect(port_in, timeout=2) as raw:
        local = addr(raw)
        try:
            ctx.wrap_socket(raw)  # the count app never answers: the handshake times out
        except (OSError, ssl.SSLError):
            pass
    line = backend.wait_log(direction="inbound", source=local)
    assert line["peer_id"] == "" and line["decision"] == "allow"
    assert app.connections and app.connections[0]["received"] > 0


def test_plaintext_is_denied_where_a_rule_needs_an_identity(pki, agents, apps):
    app = apps("echo")
    policy = {"rules": [{"name": "frontend-only", "action": "allow", "ports": [app.port],
                         "from": [{"id": spiffe_id("frontend")}]}]}
    backend, port_in = backend_with(pki, agents, app, policy=policy)
    with connect(port_in) as sock:
        local = addr(sock)
        try:
            sock.sendall(b"plain")
            assert sock.recv(16) == b""
        except ConnectionResetError:
            pass
    line = backend.wait_log(direction="inbound", source=local)
    assert (line["decision"], line["reason"], line["rule"]) == ("deny", "policy_denied",
                                                                "frontend-only")
    assert app.connection_count == 0


def test_ports_not_listed_stay_strict(pki, agents, apps):
    app, other_app = apps("echo"), apps("echo")
    port_in = free_port()
    inbound = {"listeners": [{"address": f"127.0.0.1:{port_in}", "app_port": other_app.port}],
               "permissive_ports": [app.port]}
    backend = agents("backend", base_config(pki, workload="backend", inbound=inbound))
    with connect(port_in) as sock:
        local = addr(sock)
        try:
            sock.sendall(b"plain")
            assert sock.recv(16) == b""
        except ConnectionResetError:
            pass
    assert backend.wait_log(direction="inbound", source=local)["reason"] == \
        "plaintext_on_strict_port"
