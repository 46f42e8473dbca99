"""Faults of the agent itself (issue 12): `kill -9` of an agent while its pod
has traffic in flight. On the pod bed (podbed.py: pods are network
namespaces, agents as UID 1337 behind `mtlsd init-iptables --apply`,
certificates from mtls-ca), with a plain echo app in the backend pod:

  - the app's clients see their connections reset or closed at once, never
    a hang (a bounded recv that must not time out), and a new connection
    while the agent is down is refused at once;
  - the interception rules init-iptables installed are unchanged (the agent
    never owned them: they live in the pod's namespace);
  - the agent started again (without init-iptables) serves again; the time
    from its "identity ready" line to the first proxied echo is printed.

The tests run in file order on one bed; the last stops the agents and
requires each to exit cleanly (the restarted ones included). Needs root,
`ip netns` and iptables; skipped with the reason otherwise."""
import ctypes
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

import podbed
from podbed import APP_PORT, PROXY_UID, PY, as_uid, pod_ip

BACKEND = (pod_ip("backend"), APP_PORT)
RESET_WAIT_S = 5.0      # a client must learn of the crash within this
CONNECTIONS = 4         # concurrent connections in flight at the kill
CHUNK = 16 * 1024
ROUNDS_BEFORE_KILL = 8  # echoes each connection completes before the kill
CLONE_NEWNET = 0x40000000
SECCOMP_MODE_FILTER = 2

# The backend pod's app: echoes every connection (thread per connection).
ECHO_APP = r"""
import socket, sys, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen(64)
def serve(c):
    with c:
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d)
        except OSError:
            pass
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


class CrashBed(podbed.PodBed):
    """The pod bed with an echo app in place of the HTTP server."""

    def start_app(self):
        self.app_log = self.dir / "app.log"
        with open(self.app_log, "wb") as log:
            self.app = self.spawn("backend", [PY, "-c", ECHO_APP, str(APP_PORT)], stdout=log,
                                  stderr=subprocess.STDOUT)
        self.others.append(self.app)
        podbed.wait_until(lambda: self.listening("backend", APP_PORT), "the echo app", self.wait)


@pytest.fixture(scope="module")
def bed(request, module_procs):
    why = podbed.unavailable()
    if why:
        pytest.skip(why)
    node = CrashBed(module_procs, request.getfixturevalue("mtlsd_bin"),
                    podbed.require_mtls_ca_bin())
    try:
        node.start()
        yield node
    finally:
        node.close()


def socket_in(ns):
    """A TCP socket created inside network namespace |ns| (from a helper
    thread that enters it: setns moves only the calling thread)."""
    out = {}

    def enter_and_create():
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                out["error"] = os.strerror(ctypes.get_errno())
            else:
                out["sock"] = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            os.close(fd)
    t = threading.Thread(target=enter_and_create)
    t.start()
    t.join()
    assert "sock" in out, f"setns into {ns}: {out.get('error')}"
    return out["sock"]


def app_client(bed, timeout=RESET_WAIT_S):
    """A connection from the frontend pod's "app" (root: intercepted) to the
    backend app's address: through both agents."""
    sock = socket_in(bed.ns("frontend"))
    sock.settimeout(timeout)
    try:
        sock.connect(BACKEND)
    except BaseException:
        sock.close()
        raise
    return sock


def echo(sock, payload):
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        data = sock.recv(len(payload) - len(got))
        assert data, f"connection closed after {len(got)} of {len(payload)} echoed bytes"
        got += data
    assert got == payload


def nat_rules(bed, pod):
    """The pod's nat table without the packet counters."""
    text = bed.run(pod, "iptables-save", "-t", "nat").stdout
    return [re.sub(r"\[\d+:\d+\]", "", l) for l in text.splitlines()
            if l and not l.startswith("#")]


def outcome_after_kill(sock):
    """What the client sees next: 'eof' or 'reset'. A recv that times out
    (the client hangs) fails the test; so does more echoed data."""
    try:
        started = time.monotonic()
        while True:
            data = sock.recv(65536)
            if not data:
                return "eof", time.monotonic() - started
            # bytes echoed before the kill may still arrive; then the end
    except (ConnectionResetError, BrokenPipeError):
        return "reset", time.monotonic() - started
    except socket.timeout:
        raise AssertionError(f"the client hung: nothing within {RESET_WAIT_S}s of the kill")


def kill_under_traffic(bed, pod):
    """Opens CONNECTIONS echo connections, runs traffic, SIGKILLs |pod|'s
    agent with a chunk in flight on each; returns each client's outcome."""
    clients = [app_client(bed) for _ in range(CONNECTIONS)]
    try:
        for _ in range(ROUNDS_BEFORE_KILL):
            for c in clients:
                echo(c, os.urandom(CHUNK))
        for c in clients:
            c.sendall(os.urandom(CHUNK))  # in flight at the kill
        proc = bed.agents[pod]
        os.kill(proc.pid, signal.SIGKILL)
        outcomes = [outcome_after_kill(c) for c in clients]
        proc.wait(timeout=bed.wait)
        assert proc.returncode == -signal.SIGKILL, proc.returncode
        return outcomes
    finally:
        for c in clients:
            c.close()


def assert_new_connection_refused_or_closed(bed):
    """While the agent is down, a new connection fails at once (refused by
    the capture port nobody listens on, or closed by the surviving agent
    whose upstream is refused), never hangs."""
    sock = socket_in(bed.ns("frontend"))
    sock.settimeout(RESET_WAIT_S)
    try:
        try:
            sock.connect(BACKEND)
            sock.sendall(b"anyone there?")
            assert sock.recv(64) == b"", "a reply came from nowhere"
        except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError):
            pass  # refused by the empty capture port, or reset by the surviving agent
        except socket.timeout:
            raise AssertionError(f"a new connection hung for {RESET_WAIT_S}s while the agent "
                                 f"was down")
    finally:
        sock.close()


def restart_agent(bed, pod):
    """Starts |pod|'s agent again with its config, without init-iptables.
    Returns the monotonic time its "identity ready" line was first seen."""
    old = bed.stderr_path(pod)
    if old.exists():
        old.rename(old.with_name(old.name + f".{int(time.time() * 1000)}"))
    with open(old, "wb") as err:
        bed.agents[pod] = bed.spawn(pod, as_uid(PROXY_UID, [
            bed.mtlsd, "--config", bed.config_path(pod)]), stdout=subprocess.DEVNULL,
            stderr=err)

    def ready():
        bed.check_agent_alive(pod)
        return re.search(r"identity ready: .* mesh version \d", bed.agent_stderr(pod))
    podbed.wait_until(ready, f"the restarted agent in {pod} to have its certificate",
                      bed.wait)
    return time.monotonic()


def first_echo_after(bed, ready_at, record_property, pod):
    """Time from |ready_at| to the first successful echo through the agents."""
    sock = app_client(bed, timeout=bed.wait)
    try:
        echo(sock, b"back in service")
    finally:
        sock.close()
    took = time.monotonic() - ready_at
    record_property(f"{pod}_ready_to_first_echo_s", round(took, 3))
    print(f"\n{pod}: first proxied echo {took * 1000:.0f} ms after 'identity ready' was seen")
    return took


def assert_sandboxed(bed, pod):
    pid = bed.agents[pod].pid
    for task in os.listdir(f"/proc/{pid}/task"):
        text = open(f"/proc/{pid}/task/{task}/status").read()
        fields = dict(l.split(":", 1) for l in text.splitlines() if ":" in l)
        assert int(fields["CapEff"].strip(), 16) == 0, (pod, task, fields["CapEff"])
        assert int(fields["Seccomp"].strip()) == SECCOMP_MODE_FILTER, (pod, task)
        assert int(fields["Uid"].split()[0]) == PROXY_UID, (pod, task, fields["Uid"])


@pytest.mark.parametrize("pod", ["frontend", "backend"])
def test_kill9_under_traffic_resets_clients_keeps_rules_and_restart_serves(bed, pod,
                                                                           record_property):
    rules = {p: nat_rules(bed, p) for p in ("frontend", "backend")}
    assert any(l.startswith("-A MTLSD_") for l in rules[pod]), rules[pod]
    with app_client(bed) as sock:
        echo(sock, b"before")  # the path works end to end

    outcomes = kill_under_traffic(bed, pod)

    for kind, took in outcomes:
        assert kind in ("eof", "reset") and took < RESET_WAIT_S, outcomes
    record_property(f"{pod}_kill_outcomes", str(outcomes))
    print(f"\n{pod} killed: clients saw " +
          ", ".join(f"{kind} after {took * 1000:.0f} ms" for kind, took in outcomes))
    assert_new_connection_refused_or_closed(bed)
    assert {p: nat_rules(bed, p) for p in rules} == rules, "the nat rules changed"

    ready_at = restart_agent(bed, pod)
    first_echo_after(bed, ready_at, record_property, pod)
    assert_sandboxed(bed, pod)
    assert {p: nat_rules(bed, p) for p in rules} == rules


def test_agents_restarted_after_a_crash_stop_cleanly(bed):
    bed.assert_agents_stopped_cleanly()
