"""deploy/demo.sh, run for real: what a user sees, and that nothing is left
behind.

  * pods mode (root, network namespaces): the allowed call prints the page,
    the denied call is refused by the backend's policy (policy_denied in the
    access log), the backend agent's metrics and /certs show mTLS happened,
    exit status 0, and afterwards no namespace, process, iptables chain or
    work directory of the run remains;
  * a run that fails half-way (an agent binary that refuses every config)
    exits 1 and still removes everything it created;
  * the loopback fallback, as a user without root (setpriv to nobody when
    the suite runs as root) and as root where `ip netns add` is refused
    (a stand-in `ip` on PATH), with the same proof.

The demo runs against MTLSD_BIN / MTLS_CA_BIN (default: bazel-bin), which
also makes it skip its dependency check and bazel build.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "deploy" / "demo.sh"
MTLSD_BIN = Path(os.environ.get("MTLSD_BIN") or REPO / "bazel-bin" / "agent" / "mtlsd")
MTLS_CA_BIN = Path(os.environ.get("MTLS_CA_BIN") or REPO / "bazel-bin" / "controlplane" / "mtls-ca")
NOBODY = 65534
DEMO_LIMIT_S = 60        # the demo promises to finish within this
DEMO_TIMEOUT_S = 120     # then we stop waiting and fail
LOOPBACK_PORTS = (15012, 18080, 15006, 15001, 15011, 15000, 15100, 15200)  # demo/loopback.sh
FRONTEND = "spiffe://example.org/ns/default/sa/frontend"
BACKEND = "spiffe://example.org/ns/default/sa/backend"
OTHER = "spiffe://example.org/ns/default/sa/other"


class Run:
    def __init__(self, proc, out, elapsed):
        self.pid, self.rc, self.out, self.elapsed = proc.pid, proc.returncode, out, elapsed
        found = re.search(r"work dir (/tmp/mtlsd-demo\.\w+)", out)
        self.work = found.group(1) if found else None

    def access_lines(self, label, direction):
        """The trimmed access-log JSON objects the demo printed for |label|."""
        out = []
        for line in self.out.splitlines():
            m = re.match(rf"\s+{label}\s+{direction}\s+(\{{.*\}})$", line)
            if m:
                out.append(json.loads(m.group(1)))
        return out

    def metric(self, name, **labels):
        """The value of one metric line the demo printed, or None."""
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in self.out.splitlines():
            text = line.strip()
            series, _, value = text.rpartition(" ")
            if series == (f"{name}{{{want}}}" if want else name):
                return float(value)
        return None


def need_binaries():
    for b in (MTLSD_BIN, MTLS_CA_BIN):
        if not (b.is_file() and os.access(b, os.X_OK)):
            pytest.skip(f"{b} not built (bazel build //agent:mtlsd //controlplane:mtls-ca)")


def run_demo(env_extra=None, user=None, mtlsd=MTLSD_BIN, mtls_ca=MTLS_CA_BIN):
    env = dict(os.environ, MTLSD_BIN=str(mtlsd), MTLS_CA_BIN=str(mtls_ca))
    env.update(env_extra or {})
    argv = ["bash", str(DEMO)]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] + argv
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd="/")
    try:
        out, _ = proc.communicate(timeout=DEMO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the demo's trap tears down on SIGTERM
        out, _ = proc.communicate(timeout=30)
        pytest.fail(f"demo still running after {DEMO_TIMEOUT_S}s:\n{out}")
    return Run(proc, out, time.monotonic() - start)


def pods_unavailable():
    if os.geteuid() != 0:
        return "pods mode needs root (network namespaces, iptables); the demo falls back to loopback"
    for tool in ("ip", "iptables", "iptables-save", "setpriv", "ss", "curl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = f"mtlsd-demo-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return f"`ip netns add` is not allowed here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True, timeout=30)
    return None


def host_nat_rules():
    if shutil.which("iptables-save") is None or os.geteuid() != 0:
        return None
    r = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, timeout=30)
    return sorted(l for l in r.stdout.splitlines() if "MTLSD" in l)


def namespaces_of(run):
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    return [l.split()[0] for l in r.stdout.splitlines() if l.startswith(f"mtlsd-demo-{run.pid}-")]


def processes_using(path):
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if path in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def assert_nothing_left(run, nat_before):
    assert run.work, f"the demo did not say its work dir:\n{run.out}"
    assert not Path(run.work).exists(), f"{run.work} left behind"
    assert not processes_using(run.work), processes_using(run.work)
    if os.geteuid() == 0:
        assert not namespaces_of(run), namespaces_of(run)
        assert host_nat_rules() == nat_before, "the host's nat table changed"


def assert_the_mesh_worked(run, page):
    assert f"\n   {page}\n" in run.out, run.out
    # allowed: the backend's agent admitted frontend by the mesh policy's rule
    (allowed,) = [l for l in run.access_lines("backend", "inbound") if l["peer_id"] == FRONTEND]
    assert (allowed["decision"], allowed["rule"], allowed["reason"]) == \
        ("allow", "frontend-may-call-backend", "ok"), allowed
    assert allowed["tls_version"] == "TLSv1.3"
    # denied: curl failed, the backend's policy refused other, other's agent learnt why
    assert "(unexpected: the call went through)" not in run.out
    (denied,) = [l for l in run.access_lines("backend", "inbound") if l["peer_id"] == OTHER]
    assert (denied["decision"], denied["rule"], denied["reason"]) == \
        ("deny", "no-allow-rule-matched", "policy_denied"), denied
    (caller,) = run.access_lines("other", "outbound")
    assert caller["reason"] == "peer_denied" and caller["peer_id"] == BACKEND, caller
    # the backend agent's metrics
    assert run.metric("mtlsd_handshakes_total", direction="inbound", result="success") == 2
    assert re.search(r'mtlsd_tls_handshakes_total\{direction="inbound",version="TLSv1\.3",'
                     r'cipher="TLS_[A-Z0-9_]+"\} 2\n', run.out), run.out
    assert run.metric("mtlsd_authz_decisions_total", direction="inbound", decision="allow",
                      rule="frontend-may-call-backend") == 1
    assert run.metric("mtlsd_authz_decisions_total", direction="inbound", decision="deny",
                      rule="no-allow-rule-matched") == 1
    assert 0 < run.metric("mtlsd_certificate_expiry_seconds") <= 600
    # /certs: the identity mtls-ca issued to the backend
    assert f"spiffe_id: {BACKEND}  (source: control-plane)" in run.out
    assert "allowed call: OK" in run.out and "denied call: OK" in run.out
    assert "workload keys or certificates on disk: 0" in run.out


@pytest.fixture(scope="module")
def pods_run():
    why = pods_unavailable()  # first: without root, skip rather than look for binaries
    if why:
        pytest.skip(why)
    need_binaries()
    nat_before = host_nat_rules()
    run = run_demo({"MTLSD_DEMO_MODE": "pods"})
    return run, nat_before


def test_pods_demo_exits_0_within_the_time_limit(pods_run):
    run, _ = pods_run
    assert run.rc == 0, run.out
    assert run.elapsed < DEMO_LIMIT_S, f"took {run.elapsed:.1f}s"
    assert run.out.startswith("mtlsd demo: pods in network namespaces"), run.out


def test_pods_demo_shows_allowed_and_denied_calls_and_metrics(pods_run):
    run, _ = pods_run
    assert "[frontend]$ curl -sS http://10.77.0.12:8080/" in run.out
    assert_the_mesh_worked(run, "hello from the backend pod")
    # scraped from the node namespace, on the telemetry port (as Prometheus would)
    assert "GET http://10.77.0.12:15021/metrics from the node" in run.out


def test_pods_demo_leaves_nothing_behind(pods_run):
    run, nat_before = pods_run
    assert "rules removed in 3 pods, 5 namespaces deleted" in run.out, run.out
    assert_nothing_left(run, nat_before)


def test_a_failing_pods_demo_exits_1_and_still_cleans_up(tmp_path):
    """An agent binary that refuses every config: the demo stops at step 3,
    after it created the namespaces and started mtls-ca and the app."""
    why = pods_unavailable()
    if why:
        pytest.skip(why)
    need_binaries()
    broken = tmp_path / "mtlsd"
    broken.write_text("#!/bin/sh\necho 'mtlsd: broken on purpose' >&2\nexit 1\n")
    broken.chmod(0o755)
    nat_before = host_nat_rules()
    run = run_demo({"MTLSD_DEMO_MODE": "pods"}, mtlsd=broken)
    assert run.rc == 1, run.out
    assert "demo: agent config of backend refused" in run.out, run.out
    assert re.search(r"teardown: 2 processes stopped by PID, .*namespaces deleted", run.out), run.out
    assert_nothing_left(run, nat_before)


@pytest.fixture
def world_readable_dir():
    """A directory any user can read (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="mtlsd-demo-test-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def need_loopback_ports():
    busy = [p for p in LOOPBACK_PORTS if subprocess.run(
        ["ss", "-Hltn", f"sport = :{p}"], capture_output=True, text=True).stdout.strip()]
    if busy:
        pytest.skip(f"ports {busy} on 127.0.0.1 are in use; the loopback demo needs them")


def test_loopback_fallback_without_root(world_readable_dir):
    need_binaries()
    need_loopback_ports()
    user = None
    mtlsd, mtls_ca = MTLSD_BIN, MTLS_CA_BIN
    if os.geteuid() == 0:
        # Run it as a user without root, as the fallback is meant for; the
        # binaries go where that user can reach them.
        user = NOBODY
        mtlsd, mtls_ca = world_readable_dir / "mtlsd", world_readable_dir / "mtls-ca"
        shutil.copy(MTLSD_BIN, mtlsd)
        shutil.copy(MTLS_CA_BIN, mtls_ca)
    nat_before = host_nat_rules()
    run = run_demo({"MTLSD_DEMO_MODE": "auto"}, user=user, mtlsd=mtlsd, mtls_ca=mtls_ca)
    assert run.rc == 0, run.out
    assert run.elapsed < DEMO_LIMIT_S
    assert run.out.startswith("mtlsd demo on loopback (not root"), run.out
    assert "$ curl -sS http://127.0.0.1:15001/" in run.out
    assert_the_mesh_worked(run, "hello from backend")
    assert_nothing_left(run, nat_before)


def test_loopback_fallback_when_namespaces_are_refused(tmp_path):
    """Root, but `ip netns add` fails (as in a container without the
    privilege): the demo says why and runs on loopback."""
    if os.geteuid() != 0:
        pytest.skip("only meaningful as root (without root the demo never tries namespaces)")
    need_binaries()
    need_loopback_ports()
    fake = tmp_path / "ip"
    real_ip = shutil.which("ip")
    if real_ip is None:
        pytest.skip("ip is not installed")
    fake.write_text('#!/bin/sh\nif [ "$1 $2" = "netns add" ]; then\n'
                    '  echo "mount --make-shared /run/netns failed: Operation not permitted" >&2\n'
                    f'  exit 1\nfi\nexec {real_ip} "$@"\n')
    fake.chmod(0o755)
    nat_before = host_nat_rules()
    run = run_demo({"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert run.rc == 0, run.out
    assert run.out.startswith("mtlsd demo on loopback (`ip netns add` failed: mount --make-shared"), run.out
    assert_the_mesh_worked(run, "hello from backend")
    assert_nothing_left(run, nat_before)
