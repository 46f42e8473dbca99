"""Certificates and mesh config from a control plane: the agent's gRPC client
against a CA written with another gRPC stack (Python grpcio, py_ca.py).
No workload certificate or key ever touches the disk."""
import json
import os
import subprocess
import threading
import time

import pytest

from conftest import (
    MKPKI,
    REPO,
    TRUST_DOMAIN,
    WAIT,
    addr,
    client_socket,
    free_port,
    read_until,
    roundtrip,
    spiffe_id,
    wait_until,
)

PY_CA = REPO / "tests" / "integration" / "py_ca.py"
CP_ID = "spiffe://example.org/ns/mtls-system/sa/mtls-ca"


@pytest.fixture(scope="module")
def cp_pki(tmp_path_factory):
    out = tmp_path_factory.mktemp("cp-pki")
    res = subprocess.run(["bash", str(MKPKI), "--out", str(out), "frontend",
                          "mtls-ca:mtls-system:mtls-ca"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return out


class PyCa:
    def __init__(self, procs, pki, workdir, port=0, ttl=3600, mesh=None, extra=()):
        self.procs, self.pki, self.dir = procs, pki, workdir
        self.mesh_path = workdir / "mesh.json"
        if mesh is not None:
            self.write_mesh(mesh)
        self.args = ["/usr/bin/python3", PY_CA, "--listen", f"127.0.0.1:{port}",
                     "--tls-cert", pki / "workloads/mtls-ca/chain.pem",
                     "--tls-key", pki / "workloads/mtls-ca/key.pem",
                     "--signer-cert", pki / "intermediate.pem",
                     "--signer-key", pki / "intermediate.key",
                     "--root", pki / "root.pem", "--ttl", str(ttl), *extra]
        if mesh is not None:
            self.args += ["--mesh-json", self.mesh_path]
        self.start()

    def write_mesh(self, mesh):
        tmp = self.mesh_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(mesh))
        os.replace(tmp, self.mesh_path)

    def start(self):
        self.proc = self.procs.spawn(self.args, stdout=subprocess.PIPE,
                                     stderr=open(self.dir / "py_ca.err", "ab"))
        line = read_until(self.proc.stdout, lambda l: l.startswith(b"listening "))
        self.port = int(line.split()[1])

    def stop(self):
        self.procs.stop(self.proc)


def mesh_spec(pki, version=1, allow="frontend", backend_addr=None):
    spec = {
        "version": version,
        "trust_bundles": {TRUST_DOMAIN: [str(pki / "root.pem")]},
        "policy": {"default": "allow", "rules": [
            {"name": "allow-" + allow, "action": "allow", "from": [{"id": spiffe_id(allow)}]}]},
    }
    if backend_addr:
        spec["destinations"] = [{"address": backend_addr, "spiffe_id": spiffe_id("backend")}]
    return spec


def cp_config(pki, ca_port, workload, ttl=3600, **sections):
    cfg = {
        "trust_domain": TRUST_DOMAIN,
        "workers": 2,
        "log_level": "debug",
        "identity": {"spiffe_id": spiffe_id(workload)},
        "control_plane": {"address": f"127.0.0.1:{ca_port}", "root_file": str(pki / "root.pem"),
                          "spiffe_id": CP_ID, "cert_ttl_s": ttl, "retry_initial_ms": 200,
                          "retry_max_ms": 1000, "request_timeout_ms": 3000},
        "timeouts": {"drain_ms": 1000},
    }
    cfg.update(sections)
    return cfg


def refused_connection(port, payload=b""):
    """Connects and expects the mesh to close without a byte (the reset may
    even beat connect() back). Returns the client's "ip:port"."""
    sock = client_socket()
    local = addr(sock)
    try:
        sock.connect(("127.0.0.1", port))
        if payload:
            sock.sendall(payload)
        assert sock.recv(16) == b""
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        sock.close()
    return local


def wait_serving(port_out, payload=b"ready?"):
    """Workers take a new snapshot asynchronously, just after the agent logs
    it: wait (bounded) until a call goes through."""
    def served():
        try:
            return roundtrip(port_out, payload)[0] == payload
        except (OSError, AssertionError):
            return False
    wait_until(served, "the mesh to serve calls")


def wait_ready(agent, count=1):
    wait_until(lambda: agent.stderr().count("identity ready:") >= count,
               f"{agent.dir.name} to get {count} certificate(s) from the control plane")


def mesh_pair(procs, agents, apps, cp_pki, tmp_path, ttl=3600, ca_extra=()):
    app = apps("echo")
    port_in, port_out = free_port(), free_port()
    ca = PyCa(procs, cp_pki, tmp_path, ttl=ttl,
              mesh=mesh_spec(cp_pki, backend_addr=f"127.0.0.1:{port_in}"), extra=ca_extra)
    backend = agents("backend", cp_config(cp_pki, ca.port, "backend", ttl=ttl, inbound={
        "listeners": [{"address": f"127.0.0.1:{port_in}", "app_port": app.port}]}))
    frontend = agents("frontend", cp_config(cp_pki, ca.port, "frontend", ttl=ttl, outbound={
        "listeners": [{"address": f"127.0.0.1:{port_out}",
                       "destination": f"127.0.0.1:{port_in}"}],
        "unknown_destination": "deny"}))
    wait_ready(backend)
    wait_ready(frontend)
    wait_serving(port_out)
    return ca, frontend, backend, port_out


def test_agents_serve_with_certificates_issued_by_a_grpcio_ca(procs, agents, apps, cp_pki,
                                                              tmp_path):
    ca, frontend, backend, port_out = mesh_pair(procs, agents, apps, cp_pki, tmp_path)
    received, local = roundtrip(port_out, b"x" * 100000)
    assert received == b"x" * 100000
    out = frontend.wait_log(direction="outbound", source=local)
    assert (out["decision"], out["reason"], out["rule"]) == ("allow", "ok", "expected-id")
    assert out["peer_id"] == spiffe_id("backend")
    inbound = backend.wait_log(direction="inbound", peer_id=spiffe_id("frontend"))
    assert (inbound["decision"], inbound["rule"]) == ("allow", "allow-frontend")
    assert "mesh config version 1" in backend.stderr()
    for agent in (frontend, backend):
        assert not list(agent.dir.glob("*.pem")), "a certificate was written to disk"


def test_policy_and_destinations_follow_the_watch_stream(procs, agents, apps, cp_pki, tmp_path):
    ca, frontend, backend, port_out = mesh_pair(procs, agents, apps, cp_pki, tmp_path)
    port_in = backend.listener_ports()[0]
    ca.write_mesh(mesh_spec(cp_pki, version=2, allow="other", backend_addr=f"127.0.0.1:{port_in}"))
    wait_until(lambda: "mesh config version 2" in backend.stderr(), "backend to apply version 2")
    locals_tried = []

    def refused():
        try:
            locals_tried.append(refused_connection(port_out, b"hello"))
        except AssertionError:  # still admitted: the old snapshot served it
            return None
        return backend.find_log(direction="inbound", peer_id=spiffe_id("frontend"),
                                decision="deny")
    line = wait_until(refused, "the new policy to refuse frontend")
    local = locals_tried[-1]
    assert line["rule"] == "no-allow-rule-matched"
    assert frontend.wait_log(direction="outbound", source=local)["reason"] == "peer_denied"


def test_invalid_mesh_snapshot_is_rejected_and_the_last_good_one_kept(procs, agents, apps, cp_pki,
                                                                     tmp_path):
    ca, frontend, backend, port_out = mesh_pair(procs, agents, apps, cp_pki, tmp_path)
    bad = mesh_spec(cp_pki, version=3)
    bad["policy"]["rules"][0]["from"] = [{"prefix": "spiffe://example.org/ns/prod"}]
    ca.write_mesh(bad)
    wait_until(lambda: "mesh config rejected" in backend.stderr(), "the bad snapshot's rejection")
    assert "malformed" in backend.stderr()
    received, _ = roundtrip(port_out, b"still works")
    assert received == b"still works"


def test_rotation_under_steady_traffic_drops_no_connection(procs, agents, apps, cp_pki, tmp_path):
    ttl = 4
    ca, frontend, backend, port_out = mesh_pair(procs, agents, apps, cp_pki, tmp_path, ttl=ttl)
    failures, done = [], 0
    deadline = time.monotonic() + 3.5 * ttl
    while time.monotonic() < deadline and done < 2000:
        try:
            received, _ = roundtrip(port_out, b"ping")
            if received != b"ping":
                failures.append(received)
        except OSError as e:
            failures.append(repr(e))
        done += 1
        time.sleep(0.02)
    assert not failures, f"{len(failures)} of {done} connections failed: {failures[:3]}"
    serials = {l["peer_serial"] for l in backend.log_lines() if l["direction"] == "inbound"}
    assert len(serials) >= 3, f"expected at least 3 frontend certificates, saw {serials}"
    assert backend.stderr().count("identity ready:") >= 3


def test_ca_outage_fails_closed_at_expiry_and_recovers(procs, agents, apps, cp_pki, tmp_path):
    ttl = 4
    ca, frontend, backend, port_out = mesh_pair(procs, agents, apps, cp_pki, tmp_path, ttl=ttl)
    ca.stop()
    stopped = time.monotonic()
    received, _ = roundtrip(port_out, b"before expiry")
    assert received == b"before expiry"
    wait_until(lambda: "expired without renewal" in frontend.stderr(), "the frontend cert to expire",
               timeout=ttl + WAIT)
    assert time.monotonic() - stopped <= ttl + 10
    local = refused_connection(port_out)
    assert frontend.wait_log(direction="outbound", source=local)["reason"] == "no_identity"
    ca.args[ca.args.index("--listen") + 1] = f"127.0.0.1:{ca.port}"
    ca.start()
    wait_ready(frontend, count=2)
    wait_ready(backend, count=2)
    wait_serving(port_out, b"after recovery")


def test_ca_errors_are_retried_with_backoff(procs, agents, apps, cp_pki, tmp_path):
    ca = PyCa(procs, cp_pki, tmp_path, extra=("--fail-first", "3"))
    agent = agents("backend", cp_config(cp_pki, ca.port, "backend", inbound={
        "listeners": [{"address": f"127.0.0.1:{free_port()}", "app_port": 9}]}))
    wait_ready(agent)
    err = agent.stderr()
    assert err.count("certificate request failed") == 3
    assert "induced failure" in err


def test_garbage_from_the_ca_is_refused_without_crashing(procs, agents, cp_pki, tmp_path):
    ca = PyCa(procs, cp_pki, tmp_path, extra=("--garbage",))
    agent = agents("backend", cp_config(cp_pki, ca.port, "backend", inbound={
        "listeners": [{"address": f"127.0.0.1:{free_port()}", "app_port": 9}]}))
    wait_until(lambda: agent.stderr().count("certificate request failed") >= 2,
               "two refused responses")
    assert "identity ready" not in agent.stderr()


def test_bearer_token_is_sent_from_the_token_file(procs, agents, cp_pki, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    ca = PyCa(procs, cp_pki, tmp_path, extra=("--require-token", "s3cret-token"))
    cfg = cp_config(cp_pki, ca.port, "backend", inbound={
        "listeners": [{"address": f"127.0.0.1:{free_port()}", "app_port": 9}]})
    cfg["control_plane"]["token_file"] = str(token)
    agent = agents("backend", cfg)
    wait_ready(agent)


def test_control_plane_with_an_unexpected_identity_gets_no_token(procs, agents, cp_pki, tmp_path):
    ca = PyCa(procs, cp_pki, tmp_path)
    cfg = cp_config(cp_pki, ca.port, "backend", inbound={
        "listeners": [{"address": f"127.0.0.1:{free_port()}", "app_port": 9}]})
    cfg["control_plane"]["spiffe_id"] = "spiffe://example.org/ns/mtls-system/sa/other-ca"
    agent = agents("backend", cfg)
    wait_until(lambda: "control plane presented" in agent.stderr(), "the refusal")
    assert "expected spiffe://example.org/ns/mtls-system/sa/other-ca" in agent.stderr()
    assert "identity ready" not in agent.stderr()


def test_root_rotation_with_overlapping_trust_drops_no_connection(procs, agents, apps, cp_pki,
                                                                  tmp_path_factory, tmp_path):
    """Add a second root, move issuance to it, retire the first: the order an
    operator follows. Traffic flows the whole time."""
    new_pki = tmp_path_factory.mktemp("new-root")
    res = subprocess.run(["bash", str(MKPKI), "--out", str(new_pki), "unused"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    ttl = 3
    ca, frontend, backend, port_out = mesh_pair(procs, agents, apps, cp_pki, tmp_path, ttl=ttl)
    port_in = backend.listener_ports()[0]
    old_root, new_root = str(cp_pki / "root.pem"), str(new_pki / "root.pem")

    failures, done = [], [0]
    stop = threading.Event()

    def traffic():
        while not stop.is_set() and done[0] < 5000:
            try:
                received, _ = roundtrip(port_out, b"ping")
                if received != b"ping":
                    failures.append(received)
            except (OSError, AssertionError) as e:
                failures.append(repr(e))
            done[0] += 1
            time.sleep(0.02)

    def set_roots(version, roots):
        spec = mesh_spec(cp_pki, version=version, backend_addr=f"127.0.0.1:{port_in}")
        spec["trust_bundles"] = {TRUST_DOMAIN: roots}
        ca.write_mesh(spec)
        for agent in (frontend, backend):
            wait_until(lambda: f"mesh config version {version}:" in agent.stderr(),
                       f"{agent.dir.name} to apply version {version}")

    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        set_roots(2, [old_root, new_root])                 # 1. trust both
        ca.stop()                                          # 2. issue from the new root
        ca.args[ca.args.index("--signer-cert") + 1] = new_pki / "intermediate.pem"
        ca.args[ca.args.index("--signer-key") + 1] = new_pki / "intermediate.key"
        ca.args[ca.args.index("--root") + 1] = new_pki / "root.pem"
        ca.args[ca.args.index("--listen") + 1] = f"127.0.0.1:{ca.port}"
        ca.start()
        time.sleep(2 * ttl)                                # every certificate renewed
        set_roots(3, [new_root])                           # 3. retire the old root
        time.sleep(ttl)
    finally:
        stop.set()
        t.join(timeout=WAIT)
    assert done[0] > 50
    assert not failures, f"{len(failures)} of {done[0]} connections failed: {failures[:3]}"
    last = backend.log_lines()[-1]
    assert last["decision"] == "allow"
