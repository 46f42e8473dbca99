#!/usr/bin/python3
"""Runs inside a fresh network namespace (started by test_redirect.py):
two agents in redirected mode behind iptables REDIRECT rules, an echo app
and a client that dials the app's "service address" directly.

  client -> 127.0.0.3:7000 --(nat OUTPUT REDIRECT, not the agents' UID)--> frontend :15001
  frontend (SO_ORIGINAL_DST = 127.0.0.3:7000) -> 127.0.0.3:7000
           --(nat OUTPUT REDIRECT, the agents' UID)--> backend :15006
  backend (SO_ORIGINAL_DST port 7000) -> app at 127.0.0.2:7000

The second rule stands in for the remote pod's PREROUTING capture. Prints
one JSON object with what the client saw and both access logs."""
import json
import os
import socket
import subprocess
import sys
import threading
import time

AGENT_UID = 65534
SERVICE = ("127.0.0.3", 7000)
APP = ("127.0.0.2", 7000)
DEADLINE_S = 20


def sh(*args):
    subprocess.run(args, check=True, capture_output=True, timeout=DEADLINE_S)


def install_rules():
    sh("ip", "link", "set", "lo", "up")
    rules = """*nat
:OUTPUT ACCEPT [0:0]
-A OUTPUT -p tcp -d 127.0.0.3 --dport 7000 -m owner ! --uid-owner %d -j REDIRECT --to-ports 15001
-A OUTPUT -p tcp -d 127.0.0.3 --dport 7000 -m owner --uid-owner %d -j REDIRECT --to-ports 15006
COMMIT
""" % (AGENT_UID, AGENT_UID)
    subprocess.run(["iptables-restore"], input=rules.encode(), check=True, timeout=DEADLINE_S)


def echo_app():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(APP)
    srv.listen(8)
    srv.settimeout(DEADLINE_S)

    def serve():
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(DEADLINE_S)
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
    threading.Thread(target=serve, daemon=True).start()
    return srv


def start_agent(binary, config):
    return subprocess.Popen(
        ["setpriv", "--reuid=%d" % AGENT_UID, "--regid=%d" % AGENT_UID, "--clear-groups",
         binary, "--config", config],
        stdout=subprocess.DEVNULL, stderr=open(config + ".stderr", "wb"))


def wait_listening(port):
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        out = subprocess.run(["ss", "-Hltn", "sport = :%d" % port], capture_output=True,
                             text=True, timeout=DEADLINE_S).stdout
        if "LISTEN" in out:
            return
        time.sleep(0.05)
    raise SystemExit("port %d never listened" % port)


def read_log(path):
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        if os.path.exists(path) and open(path).read().strip():
            return [json.loads(l) for l in open(path).read().splitlines() if l.strip()]
        time.sleep(0.05)
    return []


def main(binary, workdir):
    install_rules()
    app = echo_app()
    agents = [start_agent(binary, os.path.join(workdir, n + ".yaml"))
              for n in ("backend", "frontend")]
    result = {}
    try:
        wait_listening(15001)
        wait_listening(15006)
        payload = os.urandom(100000)
        with socket.create_connection(SERVICE, timeout=DEADLINE_S) as c:
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                data = c.recv(65536)
                if not data:
                    break
                got += data
        result["echo_ok"] = got == payload
        result["frontend_log"] = read_log(os.path.join(workdir, "frontend.access.log"))
        result["backend_log"] = read_log(os.path.join(workdir, "backend.access.log"))
    finally:
        for a in agents:
            a.terminate()
        for a in agents:
            result.setdefault("exit_codes", []).append(a.wait(timeout=DEADLINE_S))
        app.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
