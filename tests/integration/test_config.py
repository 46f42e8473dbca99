"""Configuration errors: `mtlsd --check-config FILE` names file:line and
what is wrong, exits 1; `mtlsd --config` with a broken file exits non-zero
without hanging."""

import re
import subprocess

import pytest

from conftest import WAIT, assert_no_sanitizer_report, free_port, spiffe_id

# A valid configuration. Each case below rewrites exactly one line of it (the
# replacement is marked "# <- error") or deletes one; the expected line number
# is wherever the marker ends up.
TEMPLATE = """\
trust_domain: example.org
workers: 1
log_level: info
access_log: {access_log}
identity:
  cert_file: {cert}
  key_file: {key}
trust_bundles:
  - trust_domain: example.org
    file: {bundle}
timeouts:
  handshake_ms: 10000
  drain_ms: 100
inbound:
  listeners:
    - address: 127.0.0.1:{port_in}
      app_port: {app_port}
outbound:
  listeners:
    - address: 127.0.0.1:{port_out}
      destination: 127.0.0.1:{port_in}
  destinations:
    - address: 127.0.0.1:{port_in}
      spiffe_id: spiffe://example.org/ns/default/sa/backend
policy:
  default: allow
  rules:
    - name: frontend-only
      action: allow
      ports: [{app_port}]
      from:
        - id: spiffe://example.org/ns/default/sa/frontend
        - prefix: spiffe://example.org/ns/prod/*
"""

MARK = "# <- error"

# case id: (line to replace (exact, stripped), replacement or None to delete,
#           expected line number or "marker", regex the message must match)
CASES = {
    "unknown-key": ("log_level: info", "log_levle: info  " + MARK, "marker",
                    r"unknown key 'log_levle'"),
    "unknown-nested-key": ("app_port: {app_port}", "      app_prot: 8080  " + MARK, "marker",
                           r"unknown key 'inbound\.listeners\[\]\.app_prot'"),
    "bad-listener-port": ("- address: 127.0.0.1:{port_out}",
                          "    - address: 127.0.0.1:99999  " + MARK, "marker",
                          r"'address' is not a valid IP:port address: '127\.0\.0\.1:99999'"),
    "bad-app-port": ("app_port: {app_port}", "      app_port: 70000  " + MARK, "marker",
                     r"'app_port' must be between 1 and 65535, got 70000"),
    "bad-destination-spiffe-id": (
        "spiffe_id: spiffe://example.org/ns/default/sa/backend",
        "      spiffe_id: spiffe://example.org/ns//sa/backend  " + MARK, "marker",
        r"invalid SPIFFE ID 'spiffe://example\.org/ns//sa/backend'"),
    "invalid-yaml-mapping": ("workers: 1", "workers: 1: 2  " + MARK, "marker",
                             r"YAML syntax error"),
    "invalid-yaml-indentation": ("key_file: {key}", " key_file: {key}  " + MARK, "marker",
                                 r"YAML syntax error"),
    "missing-trust-domain": ("trust_domain: example.org", None, 1,
                             r"missing required key 'trust_domain'"),
    "bad-policy-action": ("action: allow", "      action: permit  " + MARK, "marker",
                          r"action must be allow or deny, got 'permit'"),
    "prefix-without-star": ("- prefix: spiffe://example.org/ns/prod/*",
                             "        - prefix: spiffe://example.org/ns/prod  " + MARK, "marker",
                             r"prefix must end in '/\*'"),
}


def render(pki, tmp_path, template=TEMPLATE, cert=None):
    be = pki.workload("backend")
    return template.format(
        access_log=tmp_path / "access.log", cert=cert or be / "chain.pem", key=be / "key.pem",
        bundle=pki.bundle, port_in=free_port(), port_out=free_port(), app_port=free_port())


def mutate(template, target, replacement):
    """Replaces (or deletes) the one template line whose stripped text is |target|."""
    lines = template.split("\n")
    hits = [i for i, l in enumerate(lines) if l.strip() == target]
    assert len(hits) == 1, f"template line {target!r} found {len(hits)} times"
    if replacement is None:
        del lines[hits[0]]
    else:
        lines[hits[0]] = replacement
    return "\n".join(lines)


def run_agent(args, timeout=WAIT):
    try:
        res = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args} did not exit within {timeout}s")
    assert_no_sanitizer_report(res.stderr, " ".join(str(a) for a in args))
    return res


def broken_config(pki, tmp_path, case):
    """Writes the case's config; returns (path, expected line, message regex)."""
    target, replacement, line, pattern = CASES[case]
    text = render(pki, tmp_path, template=mutate(TEMPLATE, target, replacement))
    if line == "marker":
        line = next(i + 1 for i, l in enumerate(text.split("\n")) if MARK in l)
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    return path, line, pattern


def test_check_config_accepts_valid_config(pki, mtlsd_bin, tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(render(pki, tmp_path))
    res = run_agent([mtlsd_bin, "--check-config", path])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{path}: OK (identity {spiffe_id('backend')})"


@pytest.mark.parametrize("case", list(CASES))
def test_check_config_reports_file_and_line(pki, mtlsd_bin, tmp_path, case):
    path, line, pattern = broken_config(pki, tmp_path, case)
    res = run_agent([mtlsd_bin, "--check-config", path])
    assert res.returncode == 1, f"exit {res.returncode}; stderr: {res.stderr}"
    first = res.stderr.strip().split("\n")[0]
    m = re.match(rf"^{re.escape(str(path))}:(\d+): (.*)$", first)
    assert m, f"not 'file:line: message': {res.stderr!r}"
    assert int(m.group(1)) == line, f"wrong line: {first!r} (expected line {line})"
    assert re.search(pattern, m.group(2)), f"message {m.group(2)!r} does not match {pattern!r}"
    assert "OK" not in res.stdout


def test_check_config_nonexistent_cert_file(pki, mtlsd_bin, tmp_path):
    missing = tmp_path / "no-such-dir" / "chain.pem"
    path = tmp_path / "missing-cert.yaml"
    path.write_text(render(pki, tmp_path, cert=missing))
    res = run_agent([mtlsd_bin, "--check-config", path])
    assert res.returncode == 1, f"exit {res.returncode}; stderr: {res.stderr}"
    assert str(missing) in res.stderr, f"message does not name {missing}: {res.stderr!r}"
    assert res.stderr.startswith(f"{path}:")
    assert "OK" not in res.stdout


@pytest.mark.parametrize("case", ["unknown-key", "invalid-yaml-mapping", "missing-cert-file"])
def test_run_with_bad_config_exits_nonzero(pki, mtlsd_bin, tmp_path, case):
    if case == "missing-cert-file":
        missing = tmp_path / "no-such-dir" / "chain.pem"
        path = tmp_path / "missing-cert.yaml"
        path.write_text(render(pki, tmp_path, cert=missing))
        expected = str(missing)
    else:
        path, line, _ = broken_config(pki, tmp_path, case)
        expected = f"{path}:{line}:"
    res = run_agent([mtlsd_bin, "--config", path])
    assert res.returncode != 0
    assert expected in res.stderr, res.stderr
