"""Process lifecycle: stopping on SIGTERM."""

import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import (
    STOP_WAIT,
    WAIT,
    addr,
    base_config,
    connect,
    free_port,
    frontend_only_policy,
    inbound_section,
    is_listening,
    outbound_section,
    recv_until_eof,
    spiffe_id,
)


def test_sigterm_exits_zero(pki, agents, apps):
    app = apps("echo")
    port_in, port_out = free_port(), free_port()
    agent = agents("backend", base_config(
        pki, inbound=inbound_section(port_in, app.port), policy=frontend_only_policy(app.port),
        outbound=outbound_section(port_out, port_in, expected_id=spiffe_id("backend"))))

    started = time.monotonic()
    status, killed = agent.stop()
    elapsed = time.monotonic() - started

    assert not killed, f"agent ignored SIGTERM for {STOP_WAIT}s and had to be killed"
    assert status == 0, f"exit status {status}; stderr:\n{agent.stderr()[-3000:]}"
    assert not is_listening(port_in) and not is_listening(port_out)
    agent.check_sanitizers()
    print(f"stopped in {elapsed:.2f}s")


def test_sigterm_closes_open_connection_after_drain(pki, agents, apps):
    """A relayed connection still open at SIGTERM is closed once drain_ms
    has passed (reason shutdown) and the agent still exits 0."""
    app = apps("echo")
    port_in, port_out = free_port(), free_port()
    backend = agents("backend", base_config(
        pki, inbound=inbound_section(port_in, app.port), policy=frontend_only_policy(app.port)))
    frontend = agents("frontend", base_config(
        pki, workload="frontend", timeouts={"drain_ms": 300},
        outbound=outbound_section(port_out, port_in, expected_id=spiffe_id("backend"))))

    with connect(port_out) as sock:
        local = addr(sock)
        sock.sendall(b"ping\n")
        got = b""
        while len(got) < 5:
            chunk = sock.recv(16)
            assert chunk
            got += chunk
        assert got == b"ping\n"

        status, killed = frontend.stop()
        assert not killed, "agent did not stop within the bound after SIGTERM"
        assert status == 0, f"exit status {status}; stderr:\n{frontend.stderr()[-3000:]}"
        try:
            rest = recv_until_eof(sock)
        except ConnectionResetError:
            rest = b""
        assert rest == b""

    line = frontend.wait_log(direction="outbound", source=local)
    assert line["reason"] == "shutdown", json.dumps(line)
    assert line["decision"] == "allow"
    assert line["bytes_to_upstream"] == 5 and line["bytes_to_downstream"] == 5
    frontend.check_sanitizers()
    assert backend.proc.poll() is None


# Delays the start of every thread the agent creates, as a heavily loaded
# machine sometimes does. Preloaded into the agent.
SLOW_THREAD_START_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
typedef struct { void *(*fn)(void *); void *arg; } start_t;
static void *trampoline(void *p) {
  start_t s = *(start_t *)p;
  free(p);
  usleep(1500 * 1000);
  return s.fn(s.arg);
}
int pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg) {
  static int (*real)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
  if (!real) real = (int (*)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *))
                        dlsym(RTLD_NEXT, "pthread_create");
  start_t *s = malloc(sizeof *s);
  if (!s) return 11; /* EAGAIN */
  s->fn = fn;
  s->arg = arg;
  return real(t, a, trampoline, s);
}
"""


def test_sigterm_before_worker_threads_run_exits_zero(pki, agents, apps, tmp_path):
    """SIGTERM that arrives after the main loop is up but before the worker
    threads got CPU time (forced here by delaying thread start 1.5 s with an
    LD_PRELOAD shim) must still stop the agent with status 0."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the thread-delay shim")
    src, shim = tmp_path / "slow_thread_start.c", tmp_path / "slow_thread_start.so"
    src.write_text(SLOW_THREAD_START_C)
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", shim, src, "-ldl"], check=True,
                   timeout=WAIT, capture_output=True)
    env = dict(os.environ, LD_PRELOAD=str(shim))
    # An ASan runtime refuses to come after another preloaded library unless told.
    env["ASAN_OPTIONS"] = ":".join(
        filter(None, [os.environ.get("ASAN_OPTIONS"), "verify_asan_link_order=0"]))

    app = apps("echo")
    port_in = free_port()
    agent = agents("backend", base_config(
        pki, inbound=inbound_section(port_in, app.port), policy=frontend_only_policy(app.port)),
        env=env)
    agent.expect_clean_stop = False  # judged here, not again at teardown
    # agents() returned on the "started" line: signals are handled from
    # then on, while the worker threads are still asleep in the shim.

    status, killed = agent.stop(timeout=8)

    assert not killed, "the agent hung after SIGTERM and had to be killed"
    assert status == 0, f"exit status {status}; stderr:\n{agent.stderr()[-3000:]}"
    agent.check_sanitizers()
