"""The project's own control plane, mtls-ca (MTLS_CA_BIN), as a process for
the agent's control-plane tests (test_control_plane.py).

It offers the same surface as the grpcio stand-in (PyCa there): `port`,
`start()`, `stop()` and `write_mesh(spec)` with the same mesh dictionary,
plus what only the real server has: bearer tokens (minted with
certs/mint-token.py), a YAML mesh file and issuer rotation by SIGHUP.

Rules (as in conftest.py): loopback only; every wait bounded; the process
is spawned through the test's Processes and stopped by PID (SIGTERM, bounded
wait, SIGKILL); every stop must exit 0 and the stderr must hold no
sanitizer report (check()).
"""
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import yaml

from conftest import (
    MKPKI,
    REPO,
    TRUST_DOMAIN,
    Processes,
    assert_no_sanitizer_report,
    free_port,
    wait_until,
)

MTLS_CA_BIN = os.environ.get("MTLS_CA_BIN") or str(REPO / "bazel-bin" / "controlplane" / "mtls-ca")
MINT_TOKEN = REPO / "certs" / "mint-token.py"
TOKEN_ISSUER = "https://kubernetes.default.svc"
TOKEN_AUDIENCE = "istio-ca"
MESH_POLL_MS = 100
MAX_CERT_TTL_S = 3600  # requests for less (the rotation tests ask for 3-4 s) are honoured


def make_pki(out):
    """certs/mkpki.sh --control-plane: root, intermediate, the server's SVID
    (control-plane/chain.pem, key.pem) and the token signer (tokens/)."""
    res = subprocess.run(["bash", str(MKPKI), "--out", str(out), "--control-plane", "frontend"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"mkpki.sh --control-plane failed:\n{res.stdout}\n{res.stderr}"
    return Path(out)


def mint_token(pki, path, service_account, namespace="default", ttl_s=3600, node=None):
    """A projected service-account token for system:serviceaccount:NS:SA,
    signed by the PKI's token signer, written (atomically) to |path|;
    |node| binds it to a pod on that node (the kubernetes.io.node.name claim)."""
    res = subprocess.run(["/usr/bin/python3", str(MINT_TOKEN), "--key",
                          str(Path(pki) / "tokens" / "signer.key"), "--namespace", namespace,
                          "--service-account", service_account, f"--ttl={ttl_s}"]
                         + (["--node", node] if node else []),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"mint-token.py failed: {res.stderr}"
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(res.stdout)
    os.replace(tmp, path)
    return path


def policy_yaml(spec_policy):
    policy = {"default": spec_policy.get("default", "allow"), "rules": []}
    for rule in spec_policy.get("rules", []):
        out = {"name": rule["name"], "action": rule["action"]}
        if rule.get("ports"):
            out["ports"] = list(rule["ports"])
        out["from"] = [dict(m) for m in rule["from"]]
        policy["rules"].append(out)
    return policy


def mesh_yaml(spec):
    """The test's mesh dictionary (see mesh_spec in test_control_plane.py) as
    an mtls-ca mesh file. `version` is dropped: mtls-ca numbers snapshots
    itself ("<N>-<hash>", N from 1 at each start)."""
    doc = {"trust_bundles": [{"trust_domain": td, "roots_files": [str(f) for f in files]}
                             for td, files in spec.get("trust_bundles", {}).items()]}
    if "policy" in spec:
        doc["policy"] = policy_yaml(spec["policy"])
    if spec.get("workload_policies"):
        doc["workload_policies"] = [{"spiffe_id": w["spiffe_id"],
                                     "policy": policy_yaml(w["policy"])}
                                    for w in spec["workload_policies"]]
    if spec.get("destinations"):
        doc["destinations"] = [dict(d) for d in spec["destinations"]]
    return yaml.safe_dump(doc, sort_keys=False)


def write_atomically(path, data):
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data)
    os.replace(tmp, path)


class MtlsCa:
    """One mtls-ca with its own directory: ca.yaml, mesh.yaml, copies of the
    signer and roots (so a test can rotate them), stderr.log, access.log.

    The port is picked once (free_port) and written into ca.yaml, so a
    restart uses the very same configuration and port."""

    def __init__(self, procs, binary, pki, workdir, mesh=None, port=None,
                 max_ttl_s=MAX_CERT_TTL_S, extra=None, argv_prefix=()):
        self.procs, self.binary, self.pki = procs, binary, Path(pki)
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "ca.yaml"
        self.mesh_path = self.dir / "mesh.yaml"
        self.signer_cert = self.dir / "signer.pem"
        self.signer_key = self.dir / "signer.key"
        self.roots = self.dir / "roots.pem"
        self.stderr_path = self.dir / "stderr.log"
        self.access_path = self.dir / "access.log"
        shutil.copy(self.pki / "intermediate.pem", self.signer_cert)
        shutil.copy(self.pki / "intermediate.key", self.signer_key)
        shutil.copy(self.pki / "root.pem", self.roots)
        self.port = port or free_port()
        self.proc = None
        self.stops = []  # (exit status, needed SIGKILL) of every stop
        self.has_mesh = mesh is not None
        # |argv_prefix|: e.g. `ip netns exec NS` (which exec()s: the PID stays mtls-ca's).
        self.argv_prefix = [str(a) for a in argv_prefix]
        if mesh is not None:
            self.write_mesh(mesh)
        config = {
            "trust_domain": TRUST_DOMAIN,
            "listen": f"127.0.0.1:{self.port}",
            "tls": {"cert_file": str(self.pki / "control-plane" / "chain.pem"),
                    "key_file": str(self.pki / "control-plane" / "key.pem")},
            "signer": {"cert_file": str(self.signer_cert), "key_file": str(self.signer_key)},
            "roots_file": str(self.roots),
            "max_cert_ttl_s": max_ttl_s,
            "default_cert_ttl_s": min(3600, max_ttl_s),
            "tokens": {"issuer": TOKEN_ISSUER, "audience": TOKEN_AUDIENCE,
                       "keys_file": str(self.pki / "tokens" / "signer.pub.pem")},
            "access_log": str(self.access_path),
        }
        if mesh is not None:
            config["mesh_file"] = str(self.mesh_path)
            config["mesh_poll_ms"] = MESH_POLL_MS
        config.update(extra or {})  # e.g. node_agents, kubernetes
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.start()

    # ---- process

    def start(self):
        listening = f"listening on 127.0.0.1:{self.port} "
        before = self.stderr().count(listening)
        with open(self.stderr_path, "ab") as err:
            self.proc = self.procs.spawn(self.argv_prefix + [self.binary, "--config", self.config_path],
                                         stdout=subprocess.DEVNULL, stderr=err, cwd=self.dir)

        def up():
            if self.stderr().count(listening) > before:
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"mtls-ca exited with {self.proc.returncode} during "
                                     f"start-up; stderr:\n{self.stderr()[-4000:]}")
            return False

        wait_until(up, f"mtls-ca to listen on 127.0.0.1:{self.port}")
        return self

    def stop(self):
        """SIGTERM by PID, bounded wait, SIGKILL; recorded for check()."""
        if self.proc is None:
            return None
        if not any(p is self.proc for _, _, p in self.stops):
            status, killed = Processes.stop(self.proc)
            self.stops.append((status, killed, self.proc))
        return self.proc.returncode

    def sighup(self):
        os.kill(self.proc.pid, signal.SIGHUP)

    def check(self):
        """Teardown: every stop was SIGTERM -> exit 0, no sanitizer report."""
        problems = []
        for status, killed, proc in self.stops:
            if killed or status != 0:
                problems.append(f"mtls-ca pid {proc.pid}: "
                                f"{'killed after SIGTERM' if killed else f'exit status {status}'}")
        try:
            assert_no_sanitizer_report(self.stderr(), str(self.stderr_path))
        except AssertionError as e:
            problems.append(str(e))
        if problems:
            raise AssertionError("\n".join(problems) + f"\nmtls-ca stderr tail:\n"
                                 f"{self.stderr()[-3000:]}")

    # ---- files

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def access_lines(self):
        try:
            data = self.access_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [json.loads(l) for l in data.split("\n")[:-1] if l.strip()]

    def write_mesh(self, spec):
        """Atomically (rename), as a ConfigMap update is."""
        write_atomically(self.mesh_path, mesh_yaml(spec))

    def version_logged(self, agent, n):
        """Whether |agent| logged applying this server's N-th snapshot."""
        return re.search(rf"mesh config version {n}-[0-9a-f]+:", agent.stderr()) is not None

    def rotate_issuer(self, cert_file, key_file, roots_file):
        """Rewrites signer + roots and sends SIGHUP; waits (bounded) until the
        log says the new issuing CA is in force."""
        loaded = "issuing CA (re)loaded"
        before = self.stderr().count(loaded)
        write_atomically(self.roots, Path(roots_file).read_bytes())
        write_atomically(self.signer_cert, Path(cert_file).read_bytes())
        write_atomically(self.signer_key, Path(key_file).read_bytes())
        self.sighup()

        def reloaded():
            text = self.stderr()
            if "signer reload refused" in text:
                raise AssertionError(f"mtls-ca refused the new signer:\n{text[-3000:]}")
            return text.count(loaded) > before

        wait_until(reloaded, "mtls-ca to load the new issuing CA")
