"""The admin endpoint's HTTP server against raw sockets: what a careless or
hostile client gets (agent/http_server.h), seen as a client sees it and in
the agent's log and /metrics. Every read is bounded by a socket timeout."""

import re
import socket
import urllib.request
import weakref

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import (
    WAIT,
    base_config,
    free_port,
    frontend_only_policy,
    inbound_section,
    wait_until,
)

ADMIN_MAX_CONNECTIONS = 32  # agent/admin.c


def start_backend(pki, agents, apps, admin=None):
    app = apps("echo")
    return agents("backend", base_config(
        pki, inbound=inbound_section(free_port(), app.port), policy=frontend_only_policy(app.port),
        **({"admin": admin} if admin else {})))


def host_port(agent, telemetry=False):
    host, port = agent.admin_url(telemetry)[len("http://"):].rsplit(":", 1)
    return host, int(port)


def admin_socket(agent, telemetry=False):
    return socket.create_connection(host_port(agent, telemetry), timeout=WAIT)


# Bytes read past the answer returned (the start of a pipelined next one), per socket.
_LEFTOVER = weakref.WeakKeyDictionary()


def read_answer(sock, head_only=False):
    """(status, headers dict with lower-case names, body bytes) of one answer;
    bytes of the next answer read with it are kept for the next call."""
    data = _LEFTOVER.pop(sock, b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"closed before a complete answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head_only else int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(4096)
        assert chunk, "closed in the middle of a body"
        rest += chunk
    if rest[length:]:
        _LEFTOVER[sock] = rest[length:]
    return status, headers, rest[:length]


def closed_by_agent(sock):
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def refused(agent, status, listener="admin", sock=None):
    """mtlsd_admin_refused_total{listener, status}, scraped on a new
    connection or on |sock| (an open keep-alive connection)."""
    if sock is None:
        with urllib.request.urlopen(agent.admin_url() + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
    else:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        status_code, _, body = read_answer(sock)
        assert status_code == 200
        text = body.decode()
    for family in text_string_to_metric_families(text):
        if family.name == "mtlsd_admin_refused":
            for s in family.samples:
                if s.labels == {"listener": listener, "status": str(status)}:
                    return s.value
    raise AssertionError(f"no mtlsd_admin_refused_total{{listener={listener},status={status}}}")


def test_keep_alive_answers_several_requests_on_one_connection(pki, agents, apps):
    backend = start_backend(pki, agents, apps)
    with admin_socket(backend) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(sock)[::2] == (200, b"ok\n")
        sock.sendall(b"HEAD /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_answer(sock, head_only=True)
        assert status == 200 and int(headers["content-length"]) > 0 and body == b""
        # Pipelined: both answered in order, then the close asked for.
        sock.sendall(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, headers, body = read_answer(sock)
        assert (status, body) == (404, b"no such endpoint: /nope\n")
        assert headers["content-type"] == "text/plain; charset=utf-8"
        assert headers["cache-control"] == "no-store"
        status, headers, body = read_answer(sock)
        assert (status, body, headers["connection"]) == (200, b"ok\n", "close")
        assert closed_by_agent(sock)


def test_malformed_request_is_400_logged_counted_and_closed(pki, agents, apps):
    backend = start_backend(pki, agents, apps)
    before = refused(backend, 400)
    with admin_socket(backend) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
        status, headers, body = read_answer(sock)
        assert status == 400 and headers["connection"] == "close"
        assert body == b"header field is not NAME: VALUE\n"
        assert closed_by_agent(sock)
    assert refused(backend, 400) == before + 1
    wait_until(lambda: re.search(r"admin 127\.0\.0\.1:\d+: 400 Bad Request: header field is not "
                                 r"NAME: VALUE$", backend.stderr(), re.M), "the refusal's log line")
    assert backend.proc.poll() is None


def test_oversized_head_is_431_and_http2_preface_505(pki, agents, apps):
    backend = start_backend(pki, agents, apps)
    with admin_socket(backend) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 9000 + b"\r\n\r\n")
        assert read_answer(sock)[0] == 431
    with admin_socket(backend) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        assert read_answer(sock)[0] == 505
    assert refused(backend, 431) == 1 and refused(backend, 505) == 1


def test_post_with_a_body_is_answered_and_closed(pki, agents, apps):
    backend = start_backend(pki, agents, apps)
    with admin_socket(backend) as sock:
        sock.sendall(b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd")
        status, headers, body = read_answer(sock)
        assert status == 200 and body.endswith(b"reloaded (1 policy rules)\n"), body
        assert headers["connection"] == "close"
        assert closed_by_agent(sock)
    with admin_socket(backend) as sock:
        sock.sendall(b"POST /reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        assert read_answer(sock)[0] == 411


def test_connections_beyond_the_limit_get_503_and_the_endpoint_recovers(pki, agents, apps):
    backend = start_backend(pki, agents, apps)
    held = [admin_socket(backend) for _ in range(ADMIN_MAX_CONNECTIONS)]
    try:
        # Each held connection is accepted before the next check: one request each.
        for sock in held:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_answer(sock)[0] == 200
        with admin_socket(backend) as extra:
            status, _, body = read_answer(extra)
            assert (status, body) == (503, b"too many admin connections open\n")
        # Counted, as a held connection can still see.
        assert refused(backend, 503, sock=held[0]) == 1
        # The telemetry listener (if any) and the data path are not affected;
        # one closed slot is enough for the next client.
        held.pop().close()

        def healthy():
            try:
                with admin_socket(backend) as sock:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    return read_answer(sock)[0] == 200
            except (AssertionError, ConnectionResetError):
                return False
        wait_until(healthy, "a free admin slot after one connection closed")
    finally:
        for sock in held:
            sock.close()


def test_ipv6_loopback_admin_address(pki, agents, apps):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 on this machine")
    backend = start_backend(pki, agents, apps, admin={"address": "[::1]:0"})
    url = backend.admin_url()
    assert url.startswith("http://[::1]:"), url
    with urllib.request.urlopen(url + "/healthz", timeout=10) as resp:
        assert (resp.status, resp.read()) == (200, b"ok\n")
