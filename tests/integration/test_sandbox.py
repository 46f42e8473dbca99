"""Least privilege of the running agent (agent/sandbox.h): once it serves,
every thread has no capability, no_new_privs and (by default) the seccomp
allowlist, and traffic still flows. Started as root here when the suite
runs as root, which is the case that matters: the agent gives up what root
would have given it."""
import os
import re
from pathlib import Path

import pytest

from conftest import (base_config, free_port, frontend_only_policy, inbound_section,
                      outbound_section, roundtrip, spiffe_id)

CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapAmb")
SECCOMP_MODE_FILTER = 2


def thread_status(pid):
    """{tid: {field: value}} from /proc/PID/task/*/status."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = {}
        try:
            text = (task / "status").read_text()
        except FileNotFoundError:
            continue  # a thread that just ended
        for line in text.splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        threads[int(task.name)] = fields
    return threads


def start_pair(pki, agents, app, security=None):
    """backend (inbound -> |app|) and frontend (outbound -> backend), both
    with |security| as their `security:` section."""
    port_in, port_out = free_port(), free_port()
    extra = {} if security is None else {"security": security}
    backend = agents("backend", base_config(
        pki, workload="backend", inbound=inbound_section(port_in, app.port),
        policy=frontend_only_policy(app.port), **extra))
    frontend = agents("frontend", base_config(
        pki, workload="frontend",
        outbound=outbound_section(port_out, port_in, expected_id=spiffe_id("backend")), **extra))
    return frontend, backend, port_out


def assert_echo_flows(port_out):
    payload = os.urandom(256 * 1024)
    received, _ = roundtrip(port_out, payload)
    assert received == payload


def assert_no_capability(agent, expect_seccomp):
    threads = thread_status(agent.proc.pid)
    # main, two workers (base_config: workers: 2) at least
    assert len(threads) >= 3, threads.keys()
    for tid, f in threads.items():
        where = f"{agent.dir.name} thread {tid} ({f.get('Name')})"
        for cap in CAP_FIELDS:
            assert int(f[cap], 16) == 0, f"{where}: {cap} {f[cap]}"
        if os.geteuid() == 0:  # only a process holding CAP_SETPCAP can empty it
            assert int(f["CapBnd"], 16) == 0, f"{where}: CapBnd {f['CapBnd']}"
        assert f["NoNewPrivs"] == "1", f"{where}: NoNewPrivs {f['NoNewPrivs']}"
        assert int(f["Seccomp"]) == expect_seccomp, f"{where}: Seccomp {f['Seccomp']}"


def test_serving_agent_has_no_capability_and_the_seccomp_filter(pki, agents, apps):
    app = apps("echo")
    frontend, backend, port_out = start_pair(pki, agents, app)
    assert_echo_flows(port_out)
    for agent in (frontend, backend):
        assert re.search(r"least privilege: capabilities dropped, no_new_privs set, "
                         r"seccomp filter on \(\d+ system calls allowed\)", agent.stderr()), \
            agent.stderr()[-2000:]
        assert_no_capability(agent, SECCOMP_MODE_FILTER)
    # after traffic, still the same (and the workers still move bytes)
    assert_echo_flows(port_out)
    assert "Operation not permitted" not in frontend.stderr() + backend.stderr()


def test_seccomp_false_leaves_the_filter_off_but_drops_capabilities(pki, agents, apps):
    app = apps("echo")
    frontend, backend, port_out = start_pair(pki, agents, app, security={"seccomp": False})
    assert_echo_flows(port_out)
    for agent in (frontend, backend):
        assert "seccomp off (security.seccomp: false)" in agent.stderr()
        assert_no_capability(agent, 0)


def test_seccomp_log_installs_a_filter_that_refuses_nothing(pki, agents, apps):
    app = apps("echo")
    frontend, backend, port_out = start_pair(pki, agents, app, security={"seccomp": "log"})
    assert_echo_flows(port_out)
    for agent in (frontend, backend):
        assert "seccomp filter logging (security.seccomp: log)" in agent.stderr()
        assert_no_capability(agent, SECCOMP_MODE_FILTER)


def test_seccomp_mode_change_is_refused_on_reload(pki, agents, apps):
    app = apps("echo")
    frontend, backend, port_out = start_pair(pki, agents, app)
    import yaml
    cfg = dict(backend.config, security={"seccomp": False})
    backend.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    status, body = backend.admin("/reload", method="POST")
    assert status != 200, body
    assert "security.seccomp changed" in body, body
    assert_no_capability(backend, SECCOMP_MODE_FILTER)
    assert_echo_flows(port_out)
