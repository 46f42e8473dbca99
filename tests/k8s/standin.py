"""Test-side handle on apiserver_standin.py: start it as a process, wait for
its listening line, drive its admin port, stop it by PID.

Every wait is bounded (WAIT seconds) and waits on something observable.
"""

import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STANDIN = HERE / "apiserver_standin.py"
PYTHON = "/usr/bin/python3"
WAIT = float(os.environ.get("MTLS_K8S_TEST_WAIT", "20"))


class StandIn:
    """|argv_prefix| runs the stand-in through another program (e.g. `ip
    netns exec NS`, which exec()s, so the PID is still the stand-in's).
    |keep_state| False: no --state-file (a restart forgets the objects, and
    a change costs no rewrite of the whole state, which matters with
    thousands of objects). |objects_file|: --objects."""

    def __init__(self, workdir, token="standin-token-1", extra_args=(), port=0, admin_port=0,
                 argv_prefix=(), keep_state=True, objects_file=None):
        self.workdir = Path(workdir)
        self.token = token
        self.extra_args = list(extra_args)
        self.pki_dir = self.workdir / "pki"
        self.state_file = self.workdir / "state.json" if keep_state else None
        self.objects_file = objects_file
        self.ca_file = self.pki_dir / "ca.crt"
        self.port = port
        self.admin_port = admin_port
        self.argv_prefix = [str(a) for a in argv_prefix]
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            self.argv_prefix + [
                PYTHON,
                str(STANDIN),
                "--port", str(self.port),
                "--admin-port", str(self.admin_port),
                "--pki-dir", str(self.pki_dir),
                "--token", self.token,
            ]
            + (["--state-file", str(self.state_file)] if self.state_file else [])
            + (["--objects", str(self.objects_file)] if self.objects_file else [])
            + self.extra_args,
            stdout=subprocess.PIPE,
            stderr=sys.stderr,
            text=True,
        )
        # The first line is printed once both ports are bound; readline is
        # bounded because the process either prints it or exits.
        line = self.proc.stdout.readline()
        if not line.startswith("standin listening"):
            self.stop()
            raise RuntimeError("stand-in did not start: %r" % line)
        parts = line.split()
        self.port = int(parts[2].rsplit(":", 1)[1])
        self.admin_port = int(parts[4].rsplit(":", 1)[1])
        self.server = "https://127.0.0.1:%d" % self.port
        return self

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)
        self.proc.stdout.close()
        self.proc = None

    def kill(self):
        """SIGKILL, as a crash or an OOM kill: no stream is ended cleanly."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)
        self.proc.stdout.close()
        self.proc = None

    def apply_offline(self, op, resource, obj):
        """A change while the stand-in is down (another API server wrote it to
        etcd): the state file moves on; the next start serves it."""
        assert self.proc is None, "the stand-in is running: use apply()"
        sys.path.insert(0, str(HERE))
        import apiserver_standin
        code, data = apiserver_standin.apply_offline(str(self.state_file), op, resource, obj)
        assert code == 200, (code, data)
        return data

    def restart(self):
        """Stop and start on the same ports; objects and resourceVersion survive."""
        self.stop()
        return self.start()

    # --- admin port ---
    def admin(self, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=WAIT)
        try:
            if body is None and path.endswith(("stats", "emitted")):
                conn.request("GET", path)
            else:
                conn.request("POST", path, body=json.dumps(body or {}), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = json.loads(resp.read() or b"{}")
            return resp.status, data
        finally:
            conn.close()

    def apply(self, op, resource, obj):
        code, data = self.admin("/admin/apply", {"op": op, "resource": resource, "object": obj})
        assert code == 200, (code, data)
        return data

    def discovery(self, **body):
        """/admin/discovery: issuer=URL serves the real document with that
        issuer; status=N and/or body=TEXT a bad answer; nothing: the real
        document again."""
        code, data = self.admin("/admin/discovery", body)
        assert code == 200, (code, data)
        return data

    def serve(self, group_version, served):
        """/admin/serve: take |group_version| ("security.istio.io/v1") away
        (404 from now on) or serve it again."""
        code, data = self.admin("/admin/serve", {"group_version": group_version, "served": served})
        assert code == 200, (code, data)
        return data

    def stats(self):
        return self.admin("/admin/stats")[1]

    def emitted(self):
        """{resourceVersion: time.monotonic() when a watch first wrote its event}."""
        return {int(rv): t for rv, t in self.admin("/admin/emitted")[1]["emitted"].items()}

    # --- API port, as a client ---
    def ssl_context(self):
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        return ctx

    def connect(self):
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ssl_context(), timeout=WAIT)

    def get(self, path, token=None):
        conn = self.connect()
        headers = {}
        if token is not False:
            headers["Authorization"] = "Bearer " + (token or self.token)
        conn.request("GET", path, headers=headers)
        return conn, conn.getresponse()


def wait_until(predicate, what, timeout=WAIT, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0fs waiting for %s" % (timeout, what))
        time.sleep(interval)
