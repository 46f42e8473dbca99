"""`mtlsd init-iptables`: the agent installs and removes its own nat rules,
like istio-init. Each test runs in a fresh network namespace (needs root;
skipped with a reason otherwise), so the host's tables are never touched.
Config errors are checked without root, with --print."""
import json
import shutil
import re
import subprocess
import textwrap

import pytest
import yaml

from conftest import TRUST_DOMAIN, WAIT, assert_no_sanitizer_report, spiffe_id

PROXY_UID = 1337
CONTROL_PLANE = ("127.0.0.5", 15012)
JUMPS = ("-A PREROUTING -p tcp -j MTLSD_INBOUND", "-A OUTPUT -p tcp -j MTLSD_OUTPUT")
CHAINS = ("MTLSD_INBOUND", "MTLSD_IN_REDIRECT", "MTLSD_OUTPUT", "MTLSD_REDIRECT")


def write_config(path, interception=None, inbound=None, outbound=None):
    """An agent config with certificates from a control plane (no file is
    read by init-iptables) and an interception section."""
    cfg = {
        "trust_domain": TRUST_DOMAIN,
        "identity": {"spiffe_id": spiffe_id("frontend")},
        "control_plane": {
            "address": "%s:%d" % CONTROL_PLANE,
            "root_file": "/nonexistent/root.pem",
            "spiffe_id": f"spiffe://{TRUST_DOMAIN}/ns/mtls-system/sa/mtls-ca",
        },
        "inbound": inbound or {"listeners": [{"address": "0.0.0.0:15006"}]},
        "outbound": outbound or {"listeners": [{"address": "127.0.0.1:15001"}]},
    }
    if interception is not None:
        cfg["interception"] = interception
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


ISTIO_LIKE = {
    "proxy_uid": PROXY_UID,
    "proxy_gid": PROXY_UID,
    "exclude_inbound_ports": [15008, 15020, 15021, 15090, 22],
    "exclude_outbound_ports": [25],
    "exclude_outbound_cidrs": ["10.96.0.1/32"],
    "app_source_address": "127.0.0.6",
}


def run(mtlsd_bin, config, action, ns=None):
    args = [mtlsd_bin, "init-iptables", "--config", str(config), action]
    if ns is not None:
        args = ["ip", "netns", "exec", ns] + args
    res = subprocess.run(args, capture_output=True, text=True, timeout=WAIT)
    assert_no_sanitizer_report(res.stderr, f"init-iptables {action}")
    return res


def nat_rules(ns, tool="iptables-save"):
    res = subprocess.run(["ip", "netns", "exec", ns, tool, "-t", "nat"], capture_output=True,
                         text=True, timeout=WAIT, check=True)
    return [l for l in res.stdout.splitlines() if l and not l.startswith("#")]


def our_rules(lines):
    return [l for l in lines if l.startswith("-A MTLSD_")]


def test_apply_twice_installs_each_jump_once_with_the_expected_rules(mtlsd_bin, netns,
                                                                     tmp_path):
    config = write_config(tmp_path / "mtlsd.yaml", ISTIO_LIKE)
    for _ in range(2):
        res = run(mtlsd_bin, config, "--apply", netns)
        assert res.returncode == 0, res.stderr
        assert "IPv4: interception rules installed" in res.stdout

    lines = nat_rules(netns)
    for chain in CHAINS:
        assert f":{chain} - [0:0]" in lines
    for jump in JUMPS:
        assert lines.count(jump) == 1, lines
    rules = our_rules(lines)
    expected = [
        f"-A MTLSD_OUTPUT -m owner --uid-owner {PROXY_UID} -j RETURN",
        f"-A MTLSD_OUTPUT -m owner --gid-owner {PROXY_UID} -j RETURN",
        "-A MTLSD_OUTPUT -s 127.0.0.6/32 -j RETURN",
        "-A MTLSD_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A MTLSD_OUTPUT -d %s/32 -p tcp -m tcp --dport %d -j RETURN" % CONTROL_PLANE,
        "-A MTLSD_OUTPUT -d 10.96.0.1/32 -j RETURN",
        "-A MTLSD_OUTPUT -p tcp -m tcp --dport 25 -j RETURN",
        "-A MTLSD_OUTPUT -j MTLSD_REDIRECT",
    ]
    assert [r for r in rules if r.startswith("-A MTLSD_OUTPUT ")] == expected
    inbound = [r for r in rules if r.startswith("-A MTLSD_INBOUND ")]
    assert inbound == [f"-A MTLSD_INBOUND -p tcp -m tcp --dport {p} -j RETURN"
                       for p in (15008, 15020, 15021, 15090, 22, 15006)] + [
                           "-A MTLSD_INBOUND -p tcp -j MTLSD_IN_REDIRECT"]
    assert "-A MTLSD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006" in rules
    assert "-A MTLSD_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in rules

    # --print is exactly what got installed (iptables-save's own spelling).
    printed = run(mtlsd_bin, config, "--print")
    assert printed.returncode == 0, printed.stderr
    assert our_rules(printed.stdout.splitlines()) == rules


def test_apply_leaves_one_jump_when_duplicates_were_added(mtlsd_bin, netns, tmp_path):
    config = write_config(tmp_path / "mtlsd.yaml", ISTIO_LIKE)
    assert run(mtlsd_bin, config, "--apply", netns).returncode == 0
    for jump in JUMPS:
        subprocess.run(["ip", "netns", "exec", netns, "iptables", "-t", "nat"] + jump.split(),
                       check=True, capture_output=True, timeout=WAIT)
    assert [nat_rules(netns).count(j) for j in JUMPS] == [2, 2]
    res = run(mtlsd_bin, config, "--apply", netns)
    assert res.returncode == 0, res.stderr
    assert [nat_rules(netns).count(j) for j in JUMPS] == [1, 1]


def test_a_changed_config_replaces_the_rules(mtlsd_bin, netns, tmp_path):
    config = write_config(tmp_path / "mtlsd.yaml", ISTIO_LIKE)
    assert run(mtlsd_bin, config, "--apply", netns).returncode == 0
    write_config(config, {**ISTIO_LIKE, "exclude_outbound_ports": [587], "outbound_port": 15101})
    assert run(mtlsd_bin, config, "--apply", netns).returncode == 0
    rules = our_rules(nat_rules(netns))
    assert "-A MTLSD_OUTPUT -p tcp -m tcp --dport 587 -j RETURN" in rules
    assert "-A MTLSD_OUTPUT -p tcp -m tcp --dport 25 -j RETURN" not in rules
    assert "-A MTLSD_REDIRECT -p tcp -j REDIRECT --to-ports 15101" in rules
    assert len([r for r in rules if r.startswith("-A MTLSD_REDIRECT ")]) == 1


def test_remove_deletes_every_chain_and_jump(mtlsd_bin, netns, tmp_path):
    config = write_config(tmp_path / "mtlsd.yaml", ISTIO_LIKE)
    assert run(mtlsd_bin, config, "--apply", netns).returncode == 0
    res = run(mtlsd_bin, config, "--remove", netns)
    assert res.returncode == 0, res.stderr
    assert "IPv4: interception rules removed" in res.stdout
    assert not [l for l in nat_rules(netns) if "MTLSD" in l]
    # Nothing installed is not an error.
    res = run(mtlsd_bin, config, "--remove", netns)
    assert res.returncode == 0, res.stderr
    assert "IPv4: no interception rules installed" in res.stdout


def test_a_failing_iptables_restore_is_reported_and_changes_nothing(mtlsd_bin, netns, tmp_path):
    config = write_config(tmp_path / "mtlsd.yaml", ISTIO_LIKE)
    assert run(mtlsd_bin, config, "--apply", netns).returncode == 0
    # Someone else's chain jumps to ours: our chain cannot be deleted.
    for args in (["-N", "OTHER"], ["-A", "OTHER", "-j", "MTLSD_OUTPUT"]):
        subprocess.run(["ip", "netns", "exec", netns, "iptables", "-t", "nat"] + args,
                       check=True, capture_output=True, timeout=WAIT)
    before = nat_rules(netns)
    res = run(mtlsd_bin, config, "--remove", netns)
    assert res.returncode == 1
    assert "`iptables-restore --noflush` failed" in res.stderr, res.stderr
    assert "MTLSD_OUTPUT" in res.stderr, res.stderr
    assert nat_rules(netns) == before  # one transaction: all or nothing


def test_ipv6_rules_when_the_config_names_ipv6(mtlsd_bin, netns, tmp_path):
    if shutil.which("ip6tables-restore") is None:
        pytest.skip("ip6tables-restore is not installed")
    config = write_config(tmp_path / "mtlsd.yaml",
                          {**ISTIO_LIKE, "exclude_outbound_cidrs": ["10.96.0.1/32", "fd00:96::/64"]},
                          inbound={"listeners": [{"address": "[::]:15006"}]})
    res = run(mtlsd_bin, config, "--apply", netns)
    if res.returncode != 0 and "IPv6" not in res.stdout and "ip6tables" in res.stderr:
        pytest.skip(f"no IPv6 nat table here: {res.stderr.strip()}")
    assert res.returncode == 0, res.stderr
    assert "IPv6: interception rules installed" in res.stdout
    lines6 = nat_rules(netns, "ip6tables-save")
    for jump in JUMPS:
        assert lines6.count(jump) == 1, lines6
    rules6 = our_rules(lines6)
    assert "-A MTLSD_OUTPUT -d ::1/128 -j RETURN" in rules6
    assert "-A MTLSD_OUTPUT -d fd00:96::/64 -j RETURN" in rules6
    assert "-A MTLSD_OUTPUT -d 10.96.0.1/32 -j RETURN" not in rules6
    assert "-A MTLSD_OUTPUT -d 10.96.0.1/32 -j RETURN" in our_rules(nat_rules(netns))

    res = run(mtlsd_bin, config, "--remove", netns)
    assert res.returncode == 0, res.stderr
    assert not [l for l in nat_rules(netns, "ip6tables-save") if "MTLSD" in l]
    assert not [l for l in nat_rules(netns) if "MTLSD" in l]


# A client and three servers inside the namespace: the "agent" on 15001
# (reads SO_ORIGINAL_DST), the app at 127.0.0.3:7000, the control plane and
# an SMTP server on excluded destinations. Prints where each connection
# landed: {"as_root": ..., "as_proxy": ..., "to_cp": ..., "to_smtp": ...}.
CAPTURE_PROBE = textwrap.dedent("""\
    import json, socket, struct, subprocess, sys
    SO_ORIGINAL_DST = 80
    def listen(host, port):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(8)
        s.settimeout(5)
        return s
    agent = listen("0.0.0.0", 15001)
    servers = {"agent": agent, "app": listen("127.0.0.3", 7000),
               "cp": listen(sys.argv[1], int(sys.argv[2])), "smtp": listen("127.0.0.3", 25)}
    def landed(connect):
        connect()
        for name, srv in servers.items():
            srv.settimeout(0.2)
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                continue
            with conn:
                if name != "agent":
                    return name
                raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
                port, ip = struct.unpack_from("!H4s", raw, 2)
                return "agent:%s:%d" % (socket.inet_ntoa(ip), port)
        return None
    def as_root(host, port):
        return lambda: socket.create_connection((host, port), timeout=5).close()
    def as_uid(uid, host, port):
        code = "import socket; socket.create_connection((%r, %d), timeout=5).close()" % (host, port)
        return lambda: subprocess.run(["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid,
                                       "--clear-groups", sys.executable, "-c", code],
                                      check=True, timeout=10)
    print(json.dumps({
        "as_root": landed(as_root("127.0.0.3", 7000)),
        "as_proxy": landed(as_uid(int(sys.argv[3]), "127.0.0.3", 7000)),
        "to_cp": landed(as_root(sys.argv[1], int(sys.argv[2]))),
        "to_smtp": landed(as_root("127.0.0.3", 25)),
    }))
""")


def test_installed_rules_capture_apps_but_not_the_agent_or_exclusions(mtlsd_bin, netns,
                                                                      tmp_path):
    config = write_config(tmp_path / "mtlsd.yaml", ISTIO_LIKE)
    subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True,
                   capture_output=True, timeout=WAIT)
    assert run(mtlsd_bin, config, "--apply", netns).returncode == 0
    res = subprocess.run(["ip", "netns", "exec", netns, "/usr/bin/python3", "-c", CAPTURE_PROBE,
                          CONTROL_PLANE[0], str(CONTROL_PLANE[1]), str(PROXY_UID)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    landed = json.loads(res.stdout.strip().splitlines()[-1])
    assert landed == {
        "as_root": "agent:127.0.0.3:7000",  # captured; original destination kept
        "as_proxy": "app",                  # the agent's UID goes straight through
        "to_cp": "cp",                      # the control plane is never captured
        "to_smtp": "smtp",                  # excluded outbound port
    }


# ---- configuration errors (no root needed: --print changes nothing) -------

def test_config_error_exits_1_with_file_and_line(mtlsd_bin, tmp_path):
    config = write_config(tmp_path / "mtlsd.yaml", {**ISTIO_LIKE, "exclude_inbound_port": [22]})
    res = run(mtlsd_bin, config, "--print")
    assert res.returncode == 1
    line = next(i for i, l in enumerate(config.read_text().splitlines(), 1)
                if "exclude_inbound_port:" in l)
    assert re.search(rf"^{re.escape(str(config))}:{line}: unknown key "
                     r"'interception\.exclude_inbound_port'$", res.stderr, re.M), res.stderr
    assert res.stdout == ""


def test_bad_cidr_names_its_line(mtlsd_bin, tmp_path):
    config = write_config(tmp_path / "mtlsd.yaml",
                          {**ISTIO_LIKE, "exclude_outbound_cidrs": ["10.96.0.1/12"]})
    res = run(mtlsd_bin, config, "--print")
    assert res.returncode == 1
    line = next(i for i, l in enumerate(config.read_text().splitlines(), 1) if "10.96.0.1/12" in l)
    assert f"{config}:{line}: 'exclude_outbound_cidrs[]': '10.96.0.1/12' has address bits set " \
           f"beyond the /12 prefix" in res.stderr


def test_a_config_error_changes_no_rule(mtlsd_bin, netns, tmp_path):
    good = write_config(tmp_path / "good.yaml", ISTIO_LIKE)
    assert run(mtlsd_bin, good, "--apply", netns).returncode == 0
    before = nat_rules(netns)
    bad = write_config(tmp_path / "bad.yaml", {**ISTIO_LIKE, "proxy_uid": "nobody"})
    for action in ("--apply", "--remove"):
        res = run(mtlsd_bin, bad, action, netns)
        assert res.returncode == 1
        assert re.search(rf"^{re.escape(str(bad))}:\d+: 'proxy_uid' must be an integer",
                         res.stderr, re.M), res.stderr
    assert nat_rules(netns) == before


def test_without_an_interception_section_nothing_is_installed(mtlsd_bin, tmp_path):
    config = write_config(tmp_path / "mtlsd.yaml")
    res = run(mtlsd_bin, config, "--print")
    assert res.returncode == 1
    assert f"{config}: no 'interception' section" in res.stderr


@pytest.mark.parametrize("args", [[], ["--apply"], ["--config", "x.yaml"],
                                  ["--config", "x.yaml", "--apply", "--remove"]])
def test_usage_errors_exit_2(mtlsd_bin, args):
    res = subprocess.run([mtlsd_bin, "init-iptables"] + args, capture_output=True, text=True,
                         timeout=WAIT)
    assert res.returncode == 2
    assert "usage: mtlsd init-iptables" in res.stderr
