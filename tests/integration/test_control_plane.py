"""Certificates and mesh config from a control plane: the agent's gRPC client
against a CA written with another gRPC stack (Python grpcio, py_ca.py) and,
in the tests parametrized over `ca_kind` ("grpcio", "mtls-ca"), against the
project's own control plane too (mtls-ca, driven by mtls_ca.py: bearer
tokens from certs/mint-token.py, a YAML mesh file, issuer rotation by
SIGHUP). No workload certificate or key ever touches the disk.

The rotation tests print what they observed (run with -s to see it):
connections made, failures, distinct certificate serials."""
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (
    MKPKI,
    REPO,
    TRUST_DOMAIN,
    WAIT,
    SteadyTraffic,
    addr,
    client_socket,
    free_port,
    read_until,
    roundtrip,
    spiffe_id,
    wait_until,
)
from mtls_ca import MTLS_CA_BIN, MtlsCa, make_pki, mint_token, write_atomically

PY_CA = REPO / "tests" / "integration" / "py_ca.py"
CP_ID = "spiffe://example.org/ns/mtls-system/sa/mtls-ca"
# The control planes the agent-side tests run against.
CA_KINDS = ["grpcio", "mtls-ca"]


@pytest.fixture(scope="module")
def cp_pki(tmp_path_factory):
    out = tmp_path_factory.mktemp("cp-pki")
    res = subprocess.run(["bash", str(MKPKI), "--out", str(out), "frontend",
                          "mtls-ca:mtls-system:mtls-ca"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="session")
def mtls_ca_bin():
    if not (os.path.isfile(MTLS_CA_BIN) and os.access(MTLS_CA_BIN, os.X_OK)):
        pytest.fail(f"control-plane binary not found: {MTLS_CA_BIN} (build it with "
                    f"`bazel build //controlplane:mtls-ca` or set MTLS_CA_BIN)")
    return MTLS_CA_BIN


@pytest.fixture(scope="module")
def mca_pki(tmp_path_factory):
    """mtls-ca's PKI: root, intermediate, the server SVID, the token signer."""
    return make_pki(tmp_path_factory.mktemp("mtls-ca-pki"))


@pytest.fixture
def ca_pki(request, ca_kind):
    return request.getfixturevalue("cp_pki" if ca_kind == "grpcio" else "mca_pki")


@pytest.fixture
def start_ca(request, procs, tmp_path, ca_kind, ca_pki):
    """Factory: start_ca(ttl, mesh, extra) -> a started PyCa or MtlsCa (as
    ca_kind says). Every mtls-ca is stopped by PID at teardown and must have
    exited 0 on every SIGTERM, without a sanitizer report."""
    binary = request.getfixturevalue("mtls_ca_bin") if ca_kind == "mtls-ca" else None
    started = []

    def start(ttl=3600, mesh=None, extra=()):
        if ca_kind == "grpcio":
            return PyCa(procs, ca_pki, tmp_path, ttl=ttl, mesh=mesh, extra=extra)
        assert not extra, "py_ca.py's misbehaviour flags have no mtls-ca equivalent"
        ca = MtlsCa(procs, binary, ca_pki, tmp_path / f"mtls-ca{len(started) or ''}", mesh=mesh)
        started.append(ca)
        return ca

    yield start
    problems = []
    for ca in started:
        ca.stop()
        try:
            ca.check()
        except AssertionError as e:
            problems.append(str(e))
    if problems:
        raise AssertionError("\n\n".join(problems))


class PyCa:
    def __init__(self, procs, pki, workdir, port=0, ttl=3600, mesh=None, extra=()):
        self.procs, self.pki, self.dir = procs, pki, workdir
        self.mesh_path = workdir / "mesh.json"
        if mesh is not None:
            self.write_mesh(mesh)
        # Its own copies of the issuer, so rotate_issuer never touches the
        # module's PKI.
        self.signer_cert, self.signer_key = workdir / "py_ca.signer.pem", workdir / "py_ca.signer.key"
        self.roots = workdir / "py_ca.roots.pem"
        for src, dst in ((pki / "intermediate.pem", self.signer_cert),
                         (pki / "intermediate.key", self.signer_key),
                         (pki / "root.pem", self.roots)):
            write_atomically(dst, src.read_bytes())
        self.args = ["/usr/bin/python3", PY_CA, "--listen", f"127.0.0.1:{port}",
                     "--tls-cert", pki / "workloads/mtls-ca/chain.pem",
                     "--tls-key", pki / "workloads/mtls-ca/key.pem",
                     "--signer-cert", self.signer_cert, "--signer-key", self.signer_key,
                     "--root", self.roots, "--ttl", str(ttl), *extra]
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

    def rotate_issuer(self, cert_file, key_file, roots_file):
        """Rewrites signer + root and sends SIGHUP, without a restart;
        returns once py_ca says the new issuer is in force."""
        write_atomically(self.roots, Path(roots_file).read_bytes())
        write_atomically(self.signer_cert, Path(cert_file).read_bytes())
        write_atomically(self.signer_key, Path(key_file).read_bytes())
        os.kill(self.proc.pid, signal.SIGHUP)
        out = read_until(self.proc.stdout, lambda buf: b"issuer reload" in buf)
        assert b"issuer reloaded" in out, out


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


def agent_config(ca, pki, tmp_path, workload, ttl=3600, token_for=None, **sections):
    """cp_config, plus (for mtls-ca) a bearer token for service account
    |token_for| (default: the workload's own) in control_plane.token_file."""
    cfg = cp_config(pki, ca.port, workload, ttl=ttl, **sections)
    if isinstance(ca, MtlsCa):
        token = mint_token(pki, tmp_path / f"{workload}.token", token_for or workload)
        cfg["control_plane"]["token_file"] = str(token)
    return cfg


def mesh_version_applied(ca, agent, n):
    """Whether |agent| applied the n-th mesh snapshot: py_ca sends the spec's
    version ("2"), mtls-ca its own "<n>-<hash>"."""
    if isinstance(ca, MtlsCa):
        return ca.version_logged(agent, n)
    return f"mesh config version {n}:" in agent.stderr()


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


def mesh_pair(start_ca, agents, apps, pki, tmp_path, ttl=3600, ca_extra=()):
    app = apps("echo")
    port_in, port_out = free_port(), free_port()
    ca = start_ca(ttl=ttl, mesh=mesh_spec(pki, backend_addr=f"127.0.0.1:{port_in}"),
                  extra=ca_extra)
    backend = agents("backend", agent_config(ca, pki, tmp_path, "backend", ttl=ttl, inbound={
        "listeners": [{"address": f"127.0.0.1:{port_in}", "app_port": app.port}]}))
    frontend = agents("frontend", agent_config(ca, pki, tmp_path, "frontend", ttl=ttl, outbound={
        "listeners": [{"address": f"127.0.0.1:{port_out}",
                       "destination": f"127.0.0.1:{port_in}"}],
        "unknown_destination": "deny"}))
    wait_ready(backend)
    wait_ready(frontend)
    wait_serving(port_out)
    return ca, frontend, backend, port_out


@pytest.mark.parametrize("ca_kind", CA_KINDS)
def test_agents_serve_with_certificates_issued_by_the_ca(start_ca, agents, apps, ca_pki,
                                                         tmp_path):
    ca, frontend, backend, port_out = mesh_pair(start_ca, agents, apps, ca_pki, tmp_path)
    received, local = roundtrip(port_out, b"x" * 100000)
    assert received == b"x" * 100000
    out = frontend.wait_log(direction="outbound", source=local)
    assert (out["decision"], out["reason"], out["rule"]) == ("allow", "ok", "expected-id")
    assert out["peer_id"] == spiffe_id("backend")
    inbound = backend.wait_log(direction="inbound", peer_id=spiffe_id("frontend"))
    assert (inbound["decision"], inbound["rule"]) == ("allow", "allow-frontend")
    assert mesh_version_applied(ca, backend, 1)
    for agent in (frontend, backend):
        assert not list(agent.dir.glob("*.pem")), "a certificate was written to disk"


@pytest.mark.parametrize("ca_kind", CA_KINDS)
def test_policy_and_destinations_follow_the_watch_stream(start_ca, agents, apps, ca_pki, tmp_path):
    ca, frontend, backend, port_out = mesh_pair(start_ca, agents, apps, ca_pki, tmp_path)
    port_in = backend.listener_ports()[0]
    ca.write_mesh(mesh_spec(ca_pki, version=2, allow="other", backend_addr=f"127.0.0.1:{port_in}"))
    wait_until(lambda: mesh_version_applied(ca, backend, 2), "backend to apply version 2")
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


@pytest.mark.parametrize("ca_kind", CA_KINDS)
def test_the_control_plane_is_found_by_name(start_ca, agents, apps, ca_pki, tmp_path):
    """control_plane.address may name the CA (a Service name in a cluster):
    the agent looks it up off its loop and reaches it. "localhost" comes
    from /etc/hosts, so no DNS server is involved."""
    app = apps("echo")
    port_in = free_port()
    ca = start_ca(mesh=mesh_spec(ca_pki, backend_addr=f"127.0.0.1:{port_in}"))
    cfg = agent_config(ca, ca_pki, tmp_path, "backend", inbound={
        "listeners": [{"address": f"127.0.0.1:{port_in}", "app_port": app.port}]})
    cfg["control_plane"]["address"] = f"localhost:{ca.port}"
    backend = agents("backend", cfg)
    wait_ready(backend)
    assert "serving as " + spiffe_id("backend") in backend.stderr() or \
        "identity ready: " + spiffe_id("backend") in backend.stderr()


@pytest.mark.parametrize("ca_kind", CA_KINDS)
def test_a_destination_accepts_any_of_its_allowed_ids(start_ca, agents, apps, ca_pki, tmp_path):
    """Istio's secure naming: a Service address accepts the identity of any
    of its endpoints. A destination listing backend among several IDs admits
    it; one listing only others refuses it and says how many it expected; an
    IP alone covers every port of that address."""
    ca, frontend, backend, port_out = mesh_pair(start_ca, agents, apps, ca_pki, tmp_path)
    port_in = backend.listener_ports()[0]
    steps = [
        (2, {"address": f"127.0.0.1:{port_in}",
             "spiffe_ids": [spiffe_id("other"), spiffe_id("backend")]}, "allow"),
        (3, {"address": f"127.0.0.1:{port_in}",
             "spiffe_ids": [spiffe_id("other"), spiffe_id("cache")]}, "deny"),
        (4, {"address": "127.0.0.1", "spiffe_ids": [spiffe_id("backend")]}, "allow"),
        (5, {"address": "127.0.0.1", "spiffe_id": spiffe_id("cache")}, "deny"),
    ]
    for version, destination, decision in steps:
        spec = mesh_spec(ca_pki, version=version)
        spec["destinations"] = [destination]
        ca.write_mesh(spec)
        wait_until(lambda: mesh_version_applied(ca, frontend, version),
                   f"frontend to apply version {version}")
        if decision == "allow":
            line = wait_outbound_decision(frontend, port_out, "allow", f"version {version}")
            assert line["rule"] == "expected-id", line
        else:
            line = wait_outbound_decision(frontend, port_out, "deny", f"version {version}")
            assert line["reason"] == "unexpected_server_id", line
            if "spiffe_ids" in destination:
                assert "expected one of 2 IDs" in line["detail"], line
            else:
                assert line["detail"] == "expected " + spiffe_id("cache"), line
    # Both control planes send each change as a delta (only the destination
    # changed), and the agent applied what it rebuilt from them.
    assert frontend.stderr().count("(from a delta)") >= len(steps), frontend.stderr()


def wait_outbound_decision(frontend, port_out, decision, what):
    """Workers take a new snapshot just after the agent logs it: waits
    (bounded) until a call through |port_out| is judged |decision| ("allow"
    or "deny") and returns its access-log line."""
    def judged():
        try:
            if decision == "allow":
                received, local = roundtrip(port_out, b"ping")
                if received != b"ping":
                    return None
            else:
                local = refused_connection(port_out, b"ping")
        except (OSError, AssertionError):  # still judged by the previous snapshot
            return None
        line = frontend.wait_log(direction="outbound", source=local)
        return line if line["decision"] == decision else None
    return wait_until(judged, f"{what} to {'admit' if decision == 'allow' else 'refuse'} backend")


@pytest.mark.parametrize("ca_kind", ["grpcio"])
def test_a_delta_that_does_not_apply_makes_the_agent_resync(start_ca, agents, apps, ca_pki,
                                                           tmp_path):
    """A delta whose base is not the snapshot the agent holds is never
    guessed at: the agent ends the stream, opens a new one at once, and
    applies the complete snapshot it starts with; later deltas apply."""
    ca, frontend, backend, port_out = mesh_pair(start_ca, agents, apps, ca_pki, tmp_path,
                                                ca_extra=("--bad-delta-base",))
    port_in = backend.listener_ports()[0]
    spec = mesh_spec(ca_pki, version=2)
    spec["destinations"] = [{"address": f"127.0.0.1:{port_in}", "spiffe_id": spiffe_id("cache")}]
    ca.write_mesh(spec)
    wait_until(lambda: "mesh config version 2:" in frontend.stderr(), "version 2 after a resync")
    err = frontend.stderr()
    assert ("cannot apply a delta (the delta to 2 applies to no-such-version, not to the 1 "
            "held); asking for a complete snapshot") in err, err
    v2 = next(l for l in err.splitlines() if "mesh config version 2:" in l)
    assert "(from a delta)" not in v2, v2
    assert "mesh config rejected" not in err, err
    line = wait_outbound_decision(frontend, port_out, "deny", "version 2")
    assert line["detail"] == "expected " + spiffe_id("cache"), line
    spec = mesh_spec(ca_pki, version=3, backend_addr=f"127.0.0.1:{port_in}")
    ca.write_mesh(spec)
    wait_until(lambda: "mesh config version 3:" in frontend.stderr(), "version 3")
    v3 = next(l for l in frontend.stderr().splitlines() if "mesh config version 3:" in l)
    assert v3.endswith("(from a delta)"), v3
    wait_outbound_decision(frontend, port_out, "allow", "version 3")


@pytest.mark.parametrize("ca_kind", ["grpcio"])  # mtls-ca derives endpoints from Kubernetes only
def test_a_sidecar_ignores_a_service_addresss_endpoints(start_ca, agents, apps, ca_pki, tmp_path):
    """Endpoints are for node agents, which route Service addresses
    themselves. A sidecar's connection to the address is DNATed after it
    leaves the pod, so it dials the address as before and accepts any of its
    IDs: here the only endpoint names a port nobody listens on and another
    identity, and the call still reaches backend."""
    ca, frontend, backend, port_out = mesh_pair(start_ca, agents, apps, ca_pki, tmp_path)
    port_in = backend.listener_ports()[0]
    spec = mesh_spec(ca_pki, version=2)
    spec["destinations"] = [{
        "address": f"127.0.0.1:{port_in}",
        "spiffe_ids": [spiffe_id("other"), spiffe_id("backend")],
        "endpoints": [{"address": "127.0.0.1:1", "spiffe_id": spiffe_id("other")}]}]
    ca.write_mesh(spec)
    wait_until(lambda: mesh_version_applied(ca, frontend, 2), "frontend to apply version 2")

    # Workers take the snapshot just after the agent logs it: until then a
    # call is judged by the first one (no destination: trust-domain-fallback).
    def judged_by_the_destination():
        received, local = roundtrip(port_out, b"ping")
        assert received == b"ping"
        line = frontend.wait_log(direction="outbound", source=local)
        assert line["decision"] == "allow", line
        return line if line["rule"] == "expected-id" else None
    line = wait_until(judged_by_the_destination, "a call judged by the pushed destination")
    assert (line["endpoint"], line["peer_id"]) == ("", spiffe_id("backend")), line
    assert line["destination"] == f"127.0.0.1:{port_in}", line


@pytest.mark.parametrize("ca_kind", CA_KINDS)
def test_a_workload_policy_replaces_the_general_one_for_that_workload(start_ca, agents, apps,
                                                                     ca_pki, tmp_path):
    """The snapshot's general policy admits frontend; backend's own entry in
    workload_policies admits only other, so the backend refuses frontend by
    that entry's rule. A snapshot naming a workload twice (which only py_ca
    sends) is refused whole."""
    ca, frontend, backend, port_out = mesh_pair(start_ca, agents, apps, ca_pki, tmp_path)
    port_in = backend.listener_ports()[0]
    spec = mesh_spec(ca_pki, version=2, backend_addr=f"127.0.0.1:{port_in}")
    spec["workload_policies"] = [{"spiffe_id": spiffe_id("backend"), "policy": {
        "default": "deny",
        "rules": [{"name": "backend-own-rule", "action": "allow",
                   "from": [{"id": spiffe_id("other")}]}]}}]
    ca.write_mesh(spec)
    wait_until(lambda: mesh_version_applied(ca, backend, 2), "backend to apply version 2")

    def refused():
        try:
            refused_connection(port_out, b"hello")
        except AssertionError:  # still admitted by the general policy
            return None
        return backend.find_log(direction="inbound", peer_id=spiffe_id("frontend"),
                                decision="deny")
    line = wait_until(refused, "backend's own policy to refuse frontend")
    assert line["rule"] == "no-allow-rule-matched", line
    if isinstance(ca, MtlsCa):  # it refuses such a file itself (tests/controlplane)
        return
    spec["version"] = 3
    spec["workload_policies"].append(dict(spec["workload_policies"][0]))
    ca.write_mesh(spec)
    wait_until(lambda: "mesh config rejected" in backend.stderr(), "the duplicate's rejection")
    assert "listed twice" in backend.stderr()


@pytest.mark.parametrize("ca_kind", CA_KINDS)
def test_invalid_mesh_snapshot_is_rejected_and_the_last_good_one_kept(start_ca, agents, apps,
                                                                     ca_pki, tmp_path):
    """py_ca sends the bad snapshot and the agent refuses it; mtls-ca
    validates with the agent's own policy module and never sends it."""
    ca, frontend, backend, port_out = mesh_pair(start_ca, agents, apps, ca_pki, tmp_path)
    bad = mesh_spec(ca_pki, version=3)
    bad["policy"]["rules"][0]["from"] = [{"prefix": "spiffe://example.org/ns/prod"}]
    ca.write_mesh(bad)
    if isinstance(ca, MtlsCa):
        wait_until(lambda: "mesh file refused" in ca.stderr(), "mtls-ca to refuse the mesh file")
        assert re.search(r"mesh\.yaml:\d+: ", ca.stderr()), ca.stderr()[-2000:]
        assert "mesh config rejected" not in backend.stderr()
        assert not mesh_version_applied(ca, backend, 2)
    else:
        wait_until(lambda: "mesh config rejected" in backend.stderr(),
                   "the bad snapshot's rejection")
        assert "malformed" in backend.stderr()
    received, _ = roundtrip(port_out, b"still works")
    assert received == b"still works"
    if isinstance(ca, MtlsCa):  # the stream still works; the refusal used no version
        port_in = backend.listener_ports()[0]
        good = mesh_spec(ca_pki, version=2, backend_addr=f"127.0.0.1:{port_in}")
        good["policy"]["rules"].append({"name": "allow-other", "action": "allow",
                                        "from": [{"id": spiffe_id("other")}]})
        ca.write_mesh(good)
        wait_until(lambda: mesh_version_applied(ca, backend, 2), "backend to apply version 2")
        wait_serving(port_out, b"after the good edit")


@pytest.mark.parametrize("ca_kind", CA_KINDS)
def test_rotation_under_steady_traffic_drops_no_connection(start_ca, agents, apps, ca_pki, tmp_path,
                                                           ca_kind):
    """4 s certificates (mtls-ca honours any request below max_cert_ttl_s;
    its 60 s minimum applies to the configured TTLs, not to requests)."""
    ttl = 4
    ca, frontend, backend, port_out = mesh_pair(start_ca, agents, apps, ca_pki, tmp_path, ttl=ttl)
    failures, done = [], 0
    started = time.monotonic()
    deadline = started + 3.5 * ttl
    while time.monotonic() < deadline and done < 2000:
        try:
            received, _ = roundtrip(port_out, b"ping")
            if received != b"ping":
                failures.append(received)
        except OSError as e:
            failures.append(repr(e))
        done += 1
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    serials = {l["peer_serial"] for l in backend.log_lines() if l["direction"] == "inbound"}
    issued = ""
    if isinstance(ca, MtlsCa):
        issued = (f", certificates issued by mtls-ca "
                  f"{sum(1 for l in ca.access_lines() if l['serial'])}")
    print(f"\n[rotation under traffic, {ca_kind}, ttl {ttl}s] {done} connections in "
          f"{elapsed:.1f}s, {len(failures)} failed, {len(serials)} distinct frontend serials "
          f"seen by backend{issued}")
    assert not failures, f"{len(failures)} of {done} connections failed: {failures[:3]}"
    assert len(serials) >= 3, f"expected at least 3 frontend certificates, saw {serials}"
    assert backend.stderr().count("identity ready:") >= 3


@pytest.mark.parametrize("ca_kind", CA_KINDS)
def test_ca_outage_fails_closed_at_expiry_and_recovers(start_ca, agents, apps, ca_pki, tmp_path):
    ttl = 4
    ca, frontend, backend, port_out = mesh_pair(start_ca, agents, apps, ca_pki, tmp_path, ttl=ttl)
    ca.stop()  # by PID
    stopped = time.monotonic()
    received, _ = roundtrip(port_out, b"before expiry")
    assert received == b"before expiry"
    wait_until(lambda: "expired without renewal" in frontend.stderr(), "the frontend cert to expire",
               timeout=ttl + WAIT)
    assert time.monotonic() - stopped <= ttl + 10
    local = refused_connection(port_out)
    assert frontend.wait_log(direction="outbound", source=local)["reason"] == "no_identity"
    if isinstance(ca, PyCa):
        ca.args[ca.args.index("--listen") + 1] = f"127.0.0.1:{ca.port}"
    ca.start()  # mtls-ca: the same ca.yaml, which names the same port
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


@pytest.mark.parametrize("ca_kind", CA_KINDS)
def test_bearer_token_is_sent_from_the_token_file(start_ca, agents, ca_pki, tmp_path, ca_kind):
    """py_ca: a fixed secret. mtls-ca: a minted service-account JWT, which
    alone decides the identity the certificate is for."""
    inbound = {"listeners": [{"address": f"127.0.0.1:{free_port()}", "app_port": 9}]}
    if ca_kind == "grpcio":
        token = tmp_path / "token"
        token.write_text("s3cret-token\n")
        ca = start_ca(extra=("--require-token", "s3cret-token"))
        cfg = cp_config(ca_pki, ca.port, "backend", inbound=inbound)
        cfg["control_plane"]["token_file"] = str(token)
    else:
        ca = start_ca()
        cfg = agent_config(ca, ca_pki, tmp_path, "backend", inbound=inbound)
    agent = agents("backend", cfg)
    wait_ready(agent)
    assert f"identity ready: {spiffe_id('backend')} " in agent.stderr()
    if isinstance(ca, MtlsCa):
        issued = [l for l in ca.access_lines() if l["method"].endswith("/CreateCertificate")]
        assert issued and all(l["status"] == "OK" for l in issued), issued
        assert {l["identity"] for l in issued} == {spiffe_id("backend")}


def test_control_plane_with_an_unexpected_identity_gets_no_token(procs, agents, cp_pki, tmp_path):
    ca = PyCa(procs, cp_pki, tmp_path)
    cfg = cp_config(cp_pki, ca.port, "backend", inbound={
        "listeners": [{"address": f"127.0.0.1:{free_port()}", "app_port": 9}]})
    cfg["control_plane"]["spiffe_id"] = "spiffe://example.org/ns/mtls-system/sa/other-ca"
    agent = agents("backend", cfg)
    wait_until(lambda: "control plane presented" in agent.stderr(), "the refusal")
    assert "expected spiffe://example.org/ns/mtls-system/sa/other-ca" in agent.stderr()
    assert "identity ready" not in agent.stderr()


@pytest.mark.parametrize("ca_kind", CA_KINDS)
def test_root_rotation_with_overlapping_trust_drops_no_connection(start_ca, agents, apps, ca_pki,
                                                                  tmp_path_factory, tmp_path,
                                                                  ca_kind):
    """Add a second root, move issuance to it, retire the first: the order an
    operator follows. Traffic flows the whole time. Both CAs get their signer
    and roots files rewritten and a SIGHUP (mtls-ca as its README describes)
    and keep running: a restart would be an outage, and whether 3-second
    certificates survive an outage depends on how fast the CA starts."""
    new_pki = tmp_path_factory.mktemp("new-root")
    res = subprocess.run(["bash", str(MKPKI), "--out", str(new_pki), "unused"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    ttl = 3
    ca, frontend, backend, port_out = mesh_pair(start_ca, agents, apps, ca_pki, tmp_path, ttl=ttl)
    port_in = backend.listener_ports()[0]
    old_root, new_root = str(ca_pki / "root.pem"), str(new_pki / "root.pem")

    def set_roots(version, roots):
        spec = mesh_spec(ca_pki, version=version, backend_addr=f"127.0.0.1:{port_in}")
        spec["trust_bundles"] = {TRUST_DOMAIN: roots}
        ca.write_mesh(spec)
        for agent in (frontend, backend):
            wait_until(lambda: mesh_version_applied(ca, agent, version),
                       f"{agent.dir.name} to apply version {version}")

    def serials(agent):
        return re.findall(r"identity ready: \S+ serial (\S+),", agent.stderr())

    def renewed_after(mark, count):
        """Each agent has served |count| certificates it did not have at
        |mark| (taken just after the rotation): the second was asked for
        after it, so it comes from the new issuer (the first may have been
        in flight)."""
        for agent in (frontend, backend):
            wait_until(lambda: len(set(serials(agent)) - mark[agent.dir.name]) >= count,
                       f"{agent.dir.name} to be issued {count} new certificates")

    started = time.monotonic()
    traffic = SteadyTraffic(port_out, limit=5000, interval=0.02)
    try:
        set_roots(2, [old_root, new_root])                 # 1. trust both
        ca.rotate_issuer(new_pki / "intermediate.pem", new_pki / "intermediate.key",
                         new_pki / "root.pem")                # 2. issue from the new root
        if isinstance(ca, MtlsCa):
            rotated_at = len(ca.stderr())
        rotation_mark = {a.dir.name: set(serials(a)) for a in (frontend, backend)}
        renewed_after(rotation_mark, 2)                    # every certificate renewed
        set_roots(3, [new_root])                           # 3. retire the old root
        traffic.wait_more(20, "calls under the new root alone")
    finally:
        traffic.stop()
    done, failures = traffic.done, traffic.failures
    elapsed = time.monotonic() - started
    serials = {l["peer_serial"] for l in backend.log_lines() if l["direction"] == "inbound"}
    after = ""
    if isinstance(ca, MtlsCa):
        tail = ca.stderr()[rotated_at:]
        after = {name: len(re.findall(rf"issued serial \S+ to {re.escape(spiffe_id(name))} ",
                                      tail))
                 for name in ("frontend", "backend")}
    print(f"\n[root rotation under traffic, {ca_kind}, ttl {ttl}s] {done} connections in "
          f"{elapsed:.1f}s, {len(failures)} failed, {len(serials)} distinct frontend serials "
          f"seen by backend" + (f", issued from the new intermediate: {after}" if after else ""))
    assert done > 50
    assert not failures, f"{len(failures)} of {done} connections failed: {failures[:3]}"
    last = backend.log_lines()[-1]
    assert last["decision"] == "allow"
    if after:
        assert all(after.values()), after


# --------------------------------------------------------------------------
# mtls-ca only: the token, not the request, decides the identity


@pytest.mark.parametrize("ca_kind", ["mtls-ca"])
def test_mtls_ca_signs_the_tokens_identity_not_the_requested_one(start_ca, agents, apps, ca_pki,
                                                                 tmp_path):
    """The agent asks for .../sa/admin (identity.spiffe_id, the CSR's SAN)
    with a token for service account frontend: it is issued, and serves as,
    .../sa/frontend, and its peer sees that ID."""
    app = apps("echo")
    port_in, port_out = free_port(), free_port()
    ca = start_ca(mesh=mesh_spec(ca_pki, backend_addr=f"127.0.0.1:{port_in}"))
    backend = agents("backend", agent_config(ca, ca_pki, tmp_path, "backend", inbound={
        "listeners": [{"address": f"127.0.0.1:{port_in}", "app_port": app.port}]}))
    # Static destinations: this agent's Watch names .../sa/admin, which is not
    # its token's identity, so the mesh config may never reach it.
    client = agents("frontend", agent_config(ca, ca_pki, tmp_path, "admin", token_for="frontend",
                                             outbound={
        "listeners": [{"address": f"127.0.0.1:{port_out}",
                       "destination": f"127.0.0.1:{port_in}"}],
        "destinations": [{"address": f"127.0.0.1:{port_in}", "spiffe_id": spiffe_id("backend")}],
        "unknown_destination": "deny"}))
    wait_ready(backend)
    wait_ready(client)
    ready = re.findall(r"identity ready: (\S+) ", client.stderr())
    assert ready and set(ready) == {spiffe_id("frontend")}, ready
    wait_serving(port_out)
    received, local = roundtrip(port_out, b"who am i")
    assert received == b"who am i"
    out = client.wait_log(direction="outbound", source=local)
    assert (out["decision"], out["peer_id"]) == ("allow", spiffe_id("backend"))
    inbound = backend.wait_log(direction="inbound", peer_id=spiffe_id("frontend"))
    assert (inbound["decision"], inbound["rule"]) == ("allow", "allow-frontend")
    assert not backend.find_log(peer_id=spiffe_id("admin"))
    issued = [l for l in ca.access_lines() if l["method"].endswith("/CreateCertificate")]
    assert {l["identity"] for l in issued} == {spiffe_id("frontend"), spiffe_id("backend")}
    watches = [l for l in ca.access_lines() if l["method"].endswith("/Watch")
               and l["identity"] == spiffe_id("frontend")]
    print(f"\n[token identity] agent asked for {spiffe_id('admin')}, serves as {ready[-1]}; "
          f"its Watch calls so far: {[(l['status'], l['reason']) for l in watches]}; "
          f"mesh config applied: {'mesh config version' in client.stderr()}")


@pytest.mark.parametrize("ca_kind", ["mtls-ca"])
def test_expired_token_never_gets_a_certificate(start_ca, agents, ca_pki, tmp_path):
    ca = start_ca()
    cfg = agent_config(ca, ca_pki, tmp_path, "backend", inbound={
        "listeners": [{"address": f"127.0.0.1:{free_port()}", "app_port": 9}]})
    mint_token(ca_pki, cfg["control_plane"]["token_file"], "backend", ttl_s=-3600)
    agent = agents("backend", cfg)
    refusal = "certificate request failed: UNAUTHENTICATED: token expired"
    wait_until(lambda: agent.stderr().count(refusal) >= 3, "three refused certificate requests")
    assert "identity ready" not in agent.stderr()
    refused = [l for l in ca.access_lines() if l["method"].endswith("/CreateCertificate")]
    assert refused and {(l["status"], l["reason"]) for l in refused} == {
        ("UNAUTHENTICATED", "expired")}, refused
    assert not any(l["serial"] for l in refused)
