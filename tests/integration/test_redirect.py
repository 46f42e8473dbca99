"""Transparent redirection: SO_ORIGINAL_DST on both listeners, with real
iptables REDIRECT rules inside a private network namespace (needs root;
skipped with a reason otherwise)."""
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import TRUST_DOMAIN, spiffe_id

AGENT_UID = 65534
SCENARIO = Path(__file__).with_name("redirect_scenario.py")


@pytest.fixture
def agent_dir():
    """A directory the unprivileged agents can read and write (pytest's own
    temporary directories are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="mtlsd-redirect-"))
    os.chmod(path, 0o755)
    os.chown(path, AGENT_UID, AGENT_UID)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def agent_readable_copy(src_dir, dst_dir, files=("chain.pem", "key.pem")):
    """The agents run as an unprivileged UID, like a sidecar would."""
    dst_dir.mkdir(parents=True)
    for f in files:
        shutil.copy(src_dir / f, dst_dir / f)
        os.chown(dst_dir / f, AGENT_UID, AGENT_UID)
    return dst_dir


def write_config(path, bundle, identity_dir, section, body, policy=None):
    cfg = {
        "trust_domain": TRUST_DOMAIN,
        "workers": 2,
        "access_log": str(path.with_suffix(".access.log")),
        "identity": {"cert_file": str(identity_dir / "chain.pem"),
                     "key_file": str(identity_dir / "key.pem")},
        "trust_bundles": [{"trust_domain": TRUST_DOMAIN, "file": str(bundle)}],
        section: body,
        "admin": {"address": "127.0.0.1:0"},  # two agents share this namespace
    }
    if policy:
        cfg["policy"] = policy
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def test_redirected_traffic_reaches_the_app_through_both_agents(pki, mtlsd_bin, netns,
                                                               agent_dir):
    work = agent_dir
    front = agent_readable_copy(pki.workload("frontend"), work / "frontend-id")
    back = agent_readable_copy(pki.workload("backend"), work / "backend-id")
    bundle = agent_readable_copy(pki.bundle.parent, work / "bundle", ("bundle.pem",)) / "bundle.pem"
    write_config(work / "frontend.yaml", bundle, front, "outbound", {
        "listeners": [{"address": "127.0.0.1:15001"}],
        "destinations": [{"address": "127.0.0.3:7000", "spiffe_id": spiffe_id("backend")}],
        "unknown_destination": "deny",
    })
    write_config(work / "backend.yaml", bundle, back, "inbound", {
        "listeners": [{"address": "127.0.0.1:15006"}],
        "app_address": "127.0.0.2",
    }, policy={"rules": [{"name": "frontend-on-7000", "action": "allow", "ports": [7000],
                          "from": [{"id": spiffe_id("frontend")}]}]})

    res = subprocess.run(["ip", "netns", "exec", netns, "/usr/bin/python3", str(SCENARIO),
                          mtlsd_bin, str(work)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])

    assert out["echo_ok"], out
    assert out["exit_codes"] == [0, 0], out
    (front_line,) = out["frontend_log"]
    (back_line,) = out["backend_log"]
    assert front_line["destination"] == "127.0.0.3:7000"
    assert (front_line["decision"], front_line["reason"]) == ("allow", "ok")
    assert front_line["peer_id"] == spiffe_id("backend")
    assert back_line["destination"] == "127.0.0.2:7000"
    assert (back_line["decision"], back_line["rule"]) == ("allow", "frontend-on-7000")
    assert back_line["bytes_to_upstream"] == 100000
