"""TLS 1.3 session resumption between agents (agent/tls_resume.h): a second
connection resumes, and a resumed session is judged like a full one: refused
when policy or trust changed, dropped when our SVID rotates, never offered
across processes; with resumption off every handshake is full."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import (
    MKPKI,
    WAIT,
    addr,
    base_config,
    cert_serial,
    client_socket,
    free_port,
    frontend_only_policy,
    inbound_section,
    issue_new_leaf,
    outbound_section,
    recv_exactly,
    recv_until_eof,
    spiffe_id,
    wait_until,
)


def metric(agent, name, **labels):
    """The value of one series in the agent's /metrics (0 when absent)."""
    with urllib.request.urlopen(agent.admin_url() + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\d+)$"
    m = re.search(pattern, text, re.M)
    return int(m.group(1)) if m else 0


def identity_dir(tmp_path, name, source):
    """A private copy of |source|'s chain and key that a test may replace."""
    d = tmp_path / f"{name}-identity"
    d.mkdir(parents=True, exist_ok=True)
    for f in ("chain.pem", "key.pem"):
        shutil.copy(source / f, d / f)
    return d


def identity_of(d):
    return {"cert_file": str(d / "chain.pem"), "key_file": str(d / "key.pem"),
            "reload_interval_ms": 100}


def replace_file(path, text):
    tmp = Path(str(path) + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def start_pair(pki, agents, app, tmp_path, resumption=True, backend_bundle=None,
               frontend_bundle=None, frontend_identity=None, policy=None):
    port_in, port_out = free_port(), free_port()
    tls = {"session_resumption": resumption}
    backend_id = identity_dir(tmp_path, "backend", pki.workload("backend"))
    backend = agents("backend", base_config(
        pki, identity=identity_of(backend_id), bundle=backend_bundle,
        inbound=inbound_section(port_in, app.port),
        policy=policy or frontend_only_policy(app.port), tls=tls))
    frontend = agents("frontend", base_config(
        pki, workload="frontend", identity=frontend_identity, bundle=frontend_bundle,
        outbound=outbound_section(port_out, port_in, expected_id=spiffe_id("backend")), tls=tls))
    return frontend, backend, port_out, port_in, backend_id


def exchange(port_out, payload=b"ping\n"):
    """One request and its reply, then a close; returns (reply, local address).
    The client half-closes only after the reply: a TLS 1.3 client ignores the
    session tickets that arrive after it sent close_notify. A refused call
    may be reset at any point, even during connect() on a busy machine."""
    sock = client_socket()
    local = addr(sock)
    received = b""
    try:
        sock.connect(("127.0.0.1", port_out))
        sock.sendall(payload)
        received = recv_exactly(sock, len(payload))
        sock.shutdown(socket.SHUT_WR)
        recv_until_eof(sock)
    except (OSError, AssertionError):
        pass  # refused: |received| says how far it got
    finally:
        sock.close()
    return received, local


def call(frontend, backend, port_out, payload=b"ping\n"):
    """One call through the pair; returns (reply, outbound access-log line)."""
    received, local = exchange(port_out, payload)
    return received, frontend.wait_log(direction="outbound", source=local)


def inbound_lines(backend):
    return [l for l in backend.log_lines() if l["direction"] == "inbound"]


def wait_inbound(backend, count):
    wait_until(lambda: len(inbound_lines(backend)) >= count,
               f"{count} inbound access-log lines")
    return inbound_lines(backend)[count - 1]


def test_second_connection_resumes_and_is_logged_and_counted(pki, agents, apps, tmp_path):
    app = apps("echo")
    frontend, backend, port_out, _, _ = start_pair(pki, agents, app, tmp_path)

    received, first = call(frontend, backend, port_out)
    assert received == b"ping\n"
    assert first["tls_session"] == "full"
    assert wait_inbound(backend, 1)["tls_session"] == "full"

    received, second = call(frontend, backend, port_out)
    assert received == b"ping\n"
    assert (second["decision"], second["reason"]) == ("allow", "ok")
    assert second["tls_session"] == "resumed"
    assert second["peer_id"] == spiffe_id("backend")
    assert int(second["peer_serial"], 16) == cert_serial(pki.workload("backend") / "cert.pem")
    inb = wait_inbound(backend, 2)
    assert (inb["decision"], inb["reason"], inb["rule"]) == ("allow", "ok", "frontend-only")
    assert inb["tls_session"] == "resumed"
    assert inb["peer_id"] == spiffe_id("frontend")
    assert int(inb["peer_serial"], 16) == cert_serial(pki.workload("frontend") / "cert.pem")

    assert metric(backend, "mtlsd_handshake_mode_total", direction="inbound", mode="full") == 1
    assert metric(backend, "mtlsd_handshake_mode_total", direction="inbound",
                  mode="resumed") == 1
    assert metric(frontend, "mtlsd_handshake_mode_total", direction="outbound",
                  mode="resumed") == 1
    assert metric(backend, "mtlsd_tls_tickets_issued_total") >= 2

    # Sessions are used once each; the tickets a resumed connection gets
    # keep the chain going (more than the 4 a destination keeps).
    for _ in range(6):
        assert call(frontend, backend, port_out)[1]["tls_session"] == "resumed"


def test_resumed_session_is_refused_after_policy_now_denies_the_peer(pki, agents, apps,
                                                                     tmp_path):
    app = apps("echo")
    frontend, backend, port_out, _, _ = start_pair(pki, agents, app, tmp_path)
    call(frontend, backend, port_out)
    assert call(frontend, backend, port_out)[1]["tls_session"] == "resumed"

    config = dict(backend.config)
    config["policy"] = {"default": "allow", "rules": [
        {"name": "deny-frontend-now", "action": "deny", "from": [{"id": spiffe_id("frontend")}]}]}
    replace_file(backend.config_path, yaml.safe_dump(config, sort_keys=False))
    os.kill(backend.proc.pid, signal.SIGHUP)
    wait_until(lambda: "config reloaded from" in backend.stderr(), "the backend's config reload")

    received, _ = exchange(port_out)
    assert received == b""
    inb = backend.wait_log(direction="inbound", decision="deny")
    assert inb["tls_session"] == "resumed", inb
    assert (inb["reason"], inb["rule"]) == ("policy_denied", "deny-frontend-now")
    assert inb["peer_id"] == spiffe_id("frontend")


def test_resumed_session_is_refused_when_the_bundle_drops_the_peers_ca(pki, agents, apps,
                                                                       tmp_path):
    # The frontend's certificate comes from a second root, trusted by the
    # backend at first (its bundle holds both roots), then no longer.
    other = tmp_path / "other-ca"
    res = subprocess.run(["bash", str(MKPKI), "--out", str(other), "frontend"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    bundle = tmp_path / "backend-bundle.pem"
    both = pki.bundle.read_text() + (other / "bundle.pem").read_text()
    bundle.write_text(both)
    frontend_bundle = tmp_path / "frontend-bundle.pem"  # unchanged: its own root too
    frontend_bundle.write_text(both)
    app = apps("echo")
    frontend, backend, port_out, _, _ = start_pair(
        pki, agents, app, tmp_path, backend_bundle=bundle, frontend_bundle=frontend_bundle,
        frontend_identity=identity_of(other / "workloads" / "frontend"))
    call(frontend, backend, port_out)
    assert call(frontend, backend, port_out)[1]["tls_session"] == "resumed"
    refused_before = metric(backend, "mtlsd_tls_tickets_refused_total", reason="trust_changed")

    loads = backend.stderr().count("identity loaded:")
    replace_file(bundle, pki.bundle.read_text())
    wait_until(lambda: backend.stderr().count("identity loaded:") > loads,
               "the backend to reload its trust bundle")

    received, _ = exchange(port_out)
    assert received == b""
    inb = backend.wait_log(direction="inbound", decision="deny")
    assert inb["reason"] == "unknown_ca", inb
    assert inb["tls_session"] == ""  # no handshake completed: it was a full one, refused
    assert metric(backend, "mtlsd_tls_tickets_refused_total",
                  reason="trust_changed") == refused_before + 1
    assert metric(backend, "mtlsd_handshake_mode_total", direction="inbound",
                  mode="resumed") == 1


def test_no_resumption_after_our_svid_rotates(pki, agents, apps, tmp_path):
    app = apps("echo")
    frontend, backend, port_out, _, backend_id = start_pair(pki, agents, app, tmp_path)
    call(frontend, backend, port_out)
    assert call(frontend, backend, port_out)[1]["tls_session"] == "resumed"

    new_leaf = issue_new_leaf(pki, tmp_path / "ca-copy", "backend")
    new_serial = cert_serial(new_leaf / "cert.pem")
    replace_file(backend_id / "key.pem", (new_leaf / "key.pem").read_text())
    replace_file(backend_id / "chain.pem", (new_leaf / "chain.pem").read_text())
    wait_until(lambda: any(int(m, 16) == new_serial for m in re.findall(
        r"identity loaded: \S+ serial ([0-9a-f]+)", backend.stderr())),
        "the backend to load its new certificate")

    received, out = call(frontend, backend, port_out)
    assert received == b"ping\n"
    assert out["tls_session"] == "full"
    assert int(out["peer_serial"], 16) == new_serial
    assert wait_inbound(backend, 3)["tls_session"] == "full"
    assert metric(backend, "mtlsd_tls_tickets_refused_total", reason="own_svid_rotated") == 1
    # ... and the sessions of the new certificate resume again.
    assert call(frontend, backend, port_out)[1]["tls_session"] == "resumed"


def test_resumption_off_every_handshake_is_full(pki, agents, apps, tmp_path):
    app = apps("echo")
    frontend, backend, port_out, _, _ = start_pair(pki, agents, app, tmp_path, resumption=False)
    for _ in range(3):
        assert call(frontend, backend, port_out)[1]["tls_session"] == "full"
    assert [l["tls_session"] for l in inbound_lines(backend)] == ["full"] * 3
    assert metric(backend, "mtlsd_handshake_mode_total", direction="inbound", mode="full") == 3
    assert metric(backend, "mtlsd_handshake_mode_total", direction="inbound", mode="resumed") == 0
    assert metric(backend, "mtlsd_tls_tickets_issued_total") == 0
    status, body = backend.admin("/config")
    assert status == 200
    config = json.loads(body)
    assert (config["tls_session_resumption"], config["tls_session_lifetime_s"]) == (False, 3600)
    # Each full handshake verified the frontend's leaf; its intermediate was
    # verified against the bundle only the first time (agent/chain_cache.h).
    assert metric(backend, "mtlsd_chain_cache_lookups_total", result="hit") >= 2


def s_client(port, cert_dir, pki, sess_flag, sess_file):
    """Runs `openssl s_client` with the frontend's certificate, sends one
    line, waits for its echo (the tickets come before it) and stops.
    Returns s_client's output."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3",
           "-cert", str(cert_dir / "cert.pem"),
           "-cert_chain", str(pki.intermediate), "-key", str(cert_dir / "key.pem"),
           "-CAfile", str(pki.bundle), "-alpn", "mtlsd", sess_flag, str(sess_file)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out = b""
    try:
        proc.stdin.write(b"resume-me\n")
        proc.stdin.flush()
        deadline = time.monotonic() + WAIT
        os.set_blocking(proc.stdout.fileno(), False)
        while b"resume-me\n" not in out.split(b"---", 1)[-1] and time.monotonic() < deadline:
            chunk = proc.stdout.read()
            if chunk:
                out += chunk
            elif proc.poll() is not None:
                break
            else:
                time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait(timeout=WAIT)
    return out.decode(errors="replace")


def test_openssl_s_client_resumes_and_tickets_do_not_cross_processes(pki, agents, apps,
                                                                     tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    app = apps("echo")
    port_a, port_b = free_port(), free_port()
    common = dict(inbound=None, policy=frontend_only_policy(app.port),
                  tls={"session_resumption": True})
    a = agents("backend-a", base_config(pki, **{**common,
                                                "inbound": inbound_section(port_a, app.port)}))
    b = agents("backend-b", base_config(pki, **{**common,
                                                "inbound": inbound_section(port_b, app.port)}))
    sess = tmp_path / "session.pem"
    frontend_dir = pki.workload("frontend")

    first = s_client(port_a, frontend_dir, pki, "-sess_out", sess)
    assert "resume-me" in first and sess.exists(), first
    assert re.search(r"^New, TLSv1.3", first, re.M), first
    again = s_client(port_a, frontend_dir, pki, "-sess_in", sess)
    assert re.search(r"^Reused, TLSv1.3", again, re.M), again
    line = wait_inbound(a, 2)
    assert (line["tls_session"], line["peer_id"], line["reason"]) == (
        "resumed", spiffe_id("frontend"), "ok")

    # The same agent's ticket means nothing to another process.
    other = s_client(port_b, frontend_dir, pki, "-sess_in", sess)
    assert re.search(r"^New, TLSv1.3", other, re.M), other
    assert wait_inbound(b, 1)["tls_session"] == "full"
    assert metric(b, "mtlsd_tls_tickets_refused_total", reason="unreadable") == 1
