"""Certificate hot reload: new connections get the new certificate, live ones
keep working."""

import json
import os
import re
import shutil
import socket

import pytest

from conftest import (
    addr,
    base_config,
    cert_serial,
    connect,
    echo_once,
    free_port,
    frontend_only_policy,
    inbound_section,
    issue_new_leaf,
    outbound_section,
    recv_exactly,
    recv_until_eof,
    roundtrip,
    spiffe_id,
    wait_until,
)


@pytest.mark.parametrize("swap", ["replace-files", "swap-directory-symlink"])
def test_certificate_hot_reload(pki, agents, apps, tmp_path, swap):
    """swap=replace-files: key.pem then chain.pem are each atomically renamed
    over (the agent may briefly see a mismatched pair and must keep serving).
    swap=swap-directory-symlink: both change at once, the way Kubernetes
    updates a mounted Secret (a `current` symlink to a versioned directory)."""
    new_leaf = issue_new_leaf(pki, tmp_path / "ca-copy", "backend")
    old_serial = cert_serial(pki.workload("backend") / "cert.pem")
    new_serial = cert_serial(new_leaf / "cert.pem")
    assert old_serial != new_serial

    ident = tmp_path / "backend-identity"
    for version, source in (("v1", pki.workload("backend")), ("v2", new_leaf)):
        (ident / version).mkdir(parents=True)
        for f in ("chain.pem", "key.pem"):
            shutil.copy(source / f, ident / version / f)
    if swap == "swap-directory-symlink":
        os.symlink("v1", ident / "current")
        live = ident / "current"
    else:
        live = ident / "live"
        live.mkdir()
        for f in ("chain.pem", "key.pem"):
            shutil.copy(ident / "v1" / f, live / f)

    app = apps("echo")
    port_in, port_out = free_port(), free_port()
    backend = agents("backend", base_config(
        pki, identity={"cert_file": str(live / "chain.pem"), "key_file": str(live / "key.pem"),
                       "reload_interval_ms": 200},
        inbound=inbound_section(port_in, app.port), policy=frontend_only_policy(app.port)))
    frontend = agents("frontend", base_config(
        pki, workload="frontend",
        outbound=outbound_section(port_out, port_in, expected_id=spiffe_id("backend"))))

    with connect(port_out) as before:
        before_local = addr(before)
        echo_once(before, b"opened before the swap\n")

        if swap == "swap-directory-symlink":
            os.symlink("v2", ident / "current.new")
            os.replace(ident / "current.new", ident / "current")
        else:
            for f in ("key.pem", "chain.pem"):
                shutil.copy(ident / "v2" / f, live / (f + ".new"))
                os.replace(live / (f + ".new"), live / f)

        def reloaded():
            for m in re.finditer(r"identity loaded: \S+ serial ([0-9a-f]+)", backend.stderr()):
                if int(m.group(1), 16) == new_serial:
                    return True
            return False

        wait_until(reloaded, "the backend to log that it loaded the new certificate")

        # New connections present the new certificate. The hand-over to the
        # workers is asynchronous, so allow a few (bounded) attempts.
        def new_connection_serial():
            received, local = roundtrip(port_out, b"opened after the swap\n")
            assert received == b"opened after the swap\n"
            line = frontend.wait_log(direction="outbound", source=local)
            assert (line["decision"], line["reason"]) == ("allow", "ok"), json.dumps(line)
            return int(line["peer_serial"], 16) == new_serial

        wait_until(new_connection_serial, "a new connection to show the new serial",
                   interval=0.1)

        # The connection opened before the swap still relays, both ways.
        echo_once(before, b"still alive after the swap\n")
        before.shutdown(socket.SHUT_WR)
        assert recv_until_eof(before) == b""

    line = frontend.wait_log(direction="outbound", source=before_local)
    assert (line["decision"], line["reason"]) == ("allow", "ok"), json.dumps(line)
    assert int(line["peer_serial"], 16) == old_serial
    sent = len(b"opened before the swap\n") + len(b"still alive after the swap\n")
    assert line["bytes_to_upstream"] == sent
    assert line["bytes_to_downstream"] == sent
    assert backend.proc.poll() is None


def test_bad_certificate_reload_keeps_current_identity(pki, agents, apps, tmp_path):
    """Swapping in an unusable certificate (expired) is logged and ignored:
    the agent keeps serving its last good certificate."""
    ident = tmp_path / "backend-identity"
    for version, source in (("good", pki.workload("backend")), ("bad", pki.bad("expired"))):
        (ident / version).mkdir(parents=True)
        for f in ("chain.pem", "key.pem"):
            shutil.copy(source / f, ident / version / f)
    os.symlink("good", ident / "current")
    live = ident / "current"
    good_serial = cert_serial(pki.workload("backend") / "cert.pem")

    app = apps("echo")
    port_in, port_out = free_port(), free_port()
    backend = agents("backend", base_config(
        pki, identity={"cert_file": str(live / "chain.pem"), "key_file": str(live / "key.pem"),
                       "reload_interval_ms": 200},
        inbound=inbound_section(port_in, app.port), policy=frontend_only_policy(app.port)))
    frontend = agents("frontend", base_config(
        pki, workload="frontend",
        outbound=outbound_section(port_out, port_in, expected_id=spiffe_id("backend"))))

    os.symlink("bad", ident / "current.new")
    os.replace(ident / "current.new", ident / "current")
    wait_until(lambda: "certificate reload failed" in backend.stderr(),
               "the backend to report the failed reload")

    received, local = roundtrip(port_out, b"still served\n")
    assert received == b"still served\n"
    line = frontend.wait_log(direction="outbound", source=local)
    assert (line["decision"], line["reason"]) == ("allow", "ok"), json.dumps(line)
    assert int(line["peer_serial"], 16) == good_serial
