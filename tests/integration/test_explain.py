"""`mtlsd explain`: the policy decision for a peer on a port, explained.

Exit status 0 allowed, 1 denied, 2 usage or config error (file:line); --json
prints one JSON object. The last test checks the explanation against what a
running agent writes to its access log for the same peer and port."""

import json
import re
import subprocess

import pytest

from conftest import (
    WAIT,
    assert_no_sanitizer_report,
    base_config,
    expect_refused_tls,
    free_port,
    inbound_section,
    spiffe_id,
    tls_client_context,
)

APP_PORT = 8080
PERMISSIVE_PORT = 9090

# Certificate files are named but never read: explain only needs the policy.
CONFIG = """\
trust_domain: example.org
identity:
  cert_file: /nonexistent/chain.pem
  key_file: /nonexistent/key.pem
trust_bundles:
  - trust_domain: example.org
    file: /nonexistent/bundle.pem
inbound:
  listeners:
    - address: 127.0.0.1:15006
  permissive_ports: [9090]
policy:
  default: allow
  rules:
    - name: no-dev
      action: deny
      ports: [8080]
      from:
        - namespace: dev
    - name: frontend-only
      action: allow
      ports: [8080]
      from:
        - id: spiffe://example.org/ns/default/sa/frontend
        - prefix: spiffe://example.org/ns/prod/*
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "mtlsd.yaml"
    path.write_text(CONFIG)
    return path


def explain(mtlsd_bin, *args):
    cmd = [str(mtlsd_bin), "explain", *[str(a) for a in args]]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=WAIT,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{cmd} did not exit within {WAIT}s")
    assert_no_sanitizer_report(res.stderr, " ".join(cmd))
    return res


def test_allowed_peer_exits_0_and_names_the_rule(mtlsd_bin, config):
    res = explain(mtlsd_bin, "--config", config, "--peer", spiffe_id("frontend"),
                  "--port", APP_PORT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith(f"policy from {config} (static)\n"), res.stdout
    assert "decision: allow\n" in res.stdout
    assert "rule:     frontend-only\n" in res.stdout
    assert "reason:   matched ALLOW rule\n" in res.stdout
    assert re.search(r"frontend-only: allow, port 8080 +<- decided", res.stdout), res.stdout


@pytest.mark.parametrize("peer,rule,reason", [
    ("spiffe://example.org/ns/dev/sa/web", "no-dev", "matched DENY rule"),
    (spiffe_id("other"), "no-allow-rule-matched", "no ALLOW rule matched for this port"),
    ("spiffe://Example.org/ns/default/sa/frontend", "invalid-peer-id",
     "peer ID is not a valid SPIFFE ID"),
])
def test_denied_peer_exits_1_and_names_the_rule(mtlsd_bin, config, peer, rule, reason):
    res = explain(mtlsd_bin, "--config", config, "--peer", peer, "--port", APP_PORT)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "decision: deny\n" in res.stdout
    assert f"rule:     {rule}\n" in res.stdout, res.stdout
    assert f"reason:   {reason}\n" in res.stdout, res.stdout


def test_invalid_peer_id_is_called_out(mtlsd_bin, config):
    res = explain(mtlsd_bin, "--config", config, "--peer", "not-a-spiffe-id",
                  "--port", APP_PORT)
    assert res.returncode == 1
    assert "NOT a valid SPIFFE ID" in res.stdout
    assert "invalid-peer-id denial" in res.stdout


def test_port_no_allow_rule_covers_gets_the_default(mtlsd_bin, config):
    res = explain(mtlsd_bin, "--config", config, "--peer", spiffe_id("other"), "--port", 7000)
    assert res.returncode == 0, res.stdout
    assert "rule:     default\n" in res.stdout


@pytest.mark.parametrize("port,code,rule", [
    (PERMISSIVE_PORT, 0, "default"),  # permissive, no rule covers it
    (APP_PORT, 1, "(none)"),          # strict: refused before policy
])
def test_plaintext(mtlsd_bin, config, port, code, rule):
    res = explain(mtlsd_bin, "--config", config, "--plaintext", "--port", port)
    assert res.returncode == code, res.stdout + res.stderr
    assert "peer:     unauthenticated" in res.stdout
    assert f"rule:     {rule}\n" in res.stdout, res.stdout


def test_peer_explanation_says_what_plaintext_gets(mtlsd_bin, config):
    res = explain(mtlsd_bin, "--config", config, "--peer", spiffe_id("frontend"),
                  "--port", PERMISSIVE_PORT)
    assert "port:     9090 (permissive" in res.stdout, res.stdout
    assert "plaintext on port 9090 (permissive): allow by rule 'default'" in res.stdout


def test_json_is_one_object_with_decision_rule_reason_and_rules(mtlsd_bin, config):
    res = explain(mtlsd_bin, "--config", config, "--peer", "spiffe://example.org/ns/prod/sa/db",
                  "--port", APP_PORT, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert (doc["decision"], doc["rule"], doc["reason"]) == (
        "allow", "frontend-only", "matched ALLOW rule")
    assert (doc["source"], doc["version"], doc["port"]) == (str(config), "static", APP_PORT)
    assert [r["name"] for r in doc["rules"]] == ["no-dev", "frontend-only"]
    allow = doc["rules"][1]
    assert allow["decided"] and allow["covers_port"] and allow["matches_peer"]
    assert [(m["kind"], m["value"], m["matches"]) for m in allow["matchers"]] == [
        ("id", spiffe_id("frontend"), False),
        ("prefix", "spiffe://example.org/ns/prod/*", True),
    ]
    assert doc["plaintext"]["decision"] == "deny"  # 8080 is strict


def test_json_exit_status_follows_the_decision(mtlsd_bin, config):
    res = explain(mtlsd_bin, "--config", config, "--plaintext", "--port", APP_PORT, "--json")
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert doc["decision"] == "deny" and doc["peer"] is None and not doc["policy_consulted"]


def test_bad_config_exits_2_with_file_and_line(mtlsd_bin, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(CONFIG.replace("      action: deny", "      action: permit"))
    line = CONFIG.split("\n").index("      action: deny") + 1
    res = explain(mtlsd_bin, "--config", path, "--peer", spiffe_id("frontend"),
                  "--port", APP_PORT)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stdout == ""
    assert res.stderr.startswith(f"{path}:{line}: "), res.stderr
    assert "action must be allow or deny, got 'permit'" in res.stderr


def test_missing_config_exits_2(mtlsd_bin, tmp_path):
    path = tmp_path / "absent.yaml"
    res = explain(mtlsd_bin, "--config", path, "--plaintext", "--port", APP_PORT)
    assert res.returncode == 2
    assert res.stderr.startswith(f"{path}:1: cannot open"), res.stderr


@pytest.mark.parametrize("args", [
    ["--peer", spiffe_id("frontend")],                                   # no --port
    ["--port", "8080"],                                                  # no peer
    ["--peer", spiffe_id("frontend"), "--plaintext", "--port", "8080"],  # both
    ["--plaintext", "--port", "0"],
    ["--plaintext", "--port", "65536"],
    ["--plaintext", "--port", "80x"],
    ["--plaintext", "--port", "8080", "extra"],
])
def test_usage_errors_exit_2(mtlsd_bin, config, args):
    res = explain(mtlsd_bin, "--config", config, *args)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "usage: mtlsd explain" in res.stderr
    assert res.stdout == ""


def test_explanation_matches_the_running_agents_access_log(pki, agents, apps):
    """The same config, peer and port: what explain says is what the agent
    logs (rule, and reason = the access log's detail)."""
    app = apps("echo")
    port_in = free_port()
    policy = {"default": "allow", "rules": [
        {"name": "no-other", "action": "deny", "ports": [app.port],
         "from": [{"id": spiffe_id("other")}]},
        {"name": "frontend-only", "action": "allow", "ports": [app.port],
         "from": [{"id": spiffe_id("frontend")}]},
    ]}
    agent = agents("backend", base_config(pki, inbound=inbound_section(port_in, app.port),
                                          policy=policy))

    local, _ = expect_refused_tls(tls_client_context(pki, pki.workload("other")), port_in)
    line = agent.wait_log(direction="inbound", source=local)

    res = explain(agent.binary, "--config", agent.config_path, "--peer", spiffe_id("other"),
                  "--port", app.port, "--json")
    assert res.returncode == 1, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert (doc["decision"], doc["rule"], doc["reason"]) == (
        line["decision"], line["rule"], line["detail"]), json.dumps(line)
    assert doc["rule"] == "no-other"
