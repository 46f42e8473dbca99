"""Exhaustion: one source cannot take every handshake, running out of file
descriptors never spins the loop, and thousands of connections come and go
without the agent keeping their memory or descriptors.

Each test watches what an operator can: the access log's reason, the
counters on /metrics, /proc/PID/fd and /proc/PID/status."""

import json
import os
import socket
import time

import pytest

from conftest import (
    WAIT,
    addr,
    base_config,
    connect,
    free_port,
    frontend_only_policy,
    inbound_section,
    tls_client_context,
    wait_until,
)
from test_admin import moved, scrape, wait_metrics


def connect_from(source_ip, port):
    """A TCP connection to 127.0.0.1:port from |source_ip| (another loopback
    address: the same host, another source as far as the agent can tell)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    sock.bind((source_ip, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def tls_echo(ctx, sock, payload=b"fair share\n"):
    with ctx.wrap_socket(sock) as tls:
        tls.sendall(payload)
        got = b""
        while not got.endswith(b"\n"):
            chunk = tls.recv(4096)
            assert chunk, "closed before the echo"
            got += chunk
    return got


def test_one_source_gets_its_share_of_handshakes_and_no_more(pki, agents, apps):
    """A source holding its share of handshakes (here: TCP connections that
    never send a ClientHello) is refused at once beyond it, counted as
    source_limit; another source is served meanwhile; once the stalled
    connections are gone the first source is served again."""
    app = apps("echo")
    port_in = free_port()
    share = 4
    agent = agents("backend", base_config(
        pki, inbound=inbound_section(port_in, app.port), policy=frontend_only_policy(app.port),
        workers=1, handshakes_per_source=share))
    ctx = tls_client_context(pki, pki.workload("frontend"))
    before = scrape(agent)

    stalled = [connect_from("127.0.0.2", port_in) for _ in range(share)]
    try:
        # Wait until the agent has accepted all of them (its connections gauge).
        wait_metrics(agent, lambda m: m.one("mtlsd_connections_active", direction="inbound")
                     == share, f"{share} stalled connections to be accepted")
        refused = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        refused.settimeout(WAIT)
        refused.bind(("127.0.0.2", 0))
        local = addr(refused)
        try:  # the reset may come before connect() returns
            refused.connect(("127.0.0.1", port_in))
            assert refused.recv(1) == b"", "the connection beyond the share was not closed"
        except ConnectionResetError:
            pass
        refused.close()
        line = agent.wait_log(direction="inbound", source=local)
        assert (line["decision"], line["reason"]) == ("deny", "source_limit"), json.dumps(line)

        # Another source is not affected.
        assert tls_echo(ctx, connect_from("127.0.0.3", port_in)) == b"fair share\n"
    finally:
        for s in stalled:
            s.close()

    wait_metrics(agent, lambda m: m.one("mtlsd_connections_active", direction="inbound") == 0,
                 "the stalled connections to end")
    assert tls_echo(ctx, connect_from("127.0.0.2", port_in)) == b"fair share\n"
    after = scrape(agent)
    assert moved(before, after, "mtlsd_connections_closed_total", direction="inbound",
                 reason="source_limit") == 1
