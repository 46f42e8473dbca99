"""Thousands of concurrent connections from one test process: an echo
server in a child process and a client that opens connections in waves,
checks every echo byte for byte, holds them all open at once, then closes
them. Single-threaded (selectors), bounded in count and time.

Used by test_exhaustion.py; runnable alone for a manual look:
    /usr/bin/python3 tests/integration/conn_burst.py serve   (prints "listening PORT")
"""

import os
import resource
import selectors
import socket
import subprocess
import sys
import time


def raise_fd_limit():
    """Soft RLIMIT_NOFILE up to the hard limit (this process and children)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def serve():
    """Echo server: every byte back; on EOF, shut the write side and close."""
    raise_fd_limit()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    print(f"listening {listener.getsockname()[1]}", flush=True)
    pending = {}  # sock -> bytes not yet written back
    while True:
        for key, events in sel.select(timeout=1.0):
            sock = key.fileobj
            if sock is listener:
                for _ in range(256):
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    pending[conn] = b""
                    sel.register(conn, selectors.EVENT_READ, None)
                continue
            if events & selectors.EVENT_READ:
                try:
                    data = sock.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    data = None if sock not in pending else b""
                if not data:
                    sel.unregister(sock)
                    pending.pop(sock, None)
                    sock.close()
                    continue
                pending[sock] += data
            if pending.get(sock):
                try:
                    sent = sock.send(pending[sock])
                    pending[sock] = pending[sock][sent:]
                except BlockingIOError:
                    pass
                except OSError:
                    sel.unregister(sock)
                    pending.pop(sock, None)
                    sock.close()
                    continue
                want = selectors.EVENT_READ | (selectors.EVENT_WRITE if pending[sock] else 0)
                sel.modify(sock, want, None)


class EchoServer:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, __file__, "serve"],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("listening "), f"echo server said {line!r}"
        self.port = int(line.split()[1])

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def payload_for(i, size):
    head = b"conn %08d " % i
    return (head * (size // len(head) + 1))[:size]


def open_wave(port, first, count, size, deadline, out):
    """Opens |count| connections, sends each its payload and reads the whole
    echo; appends the open sockets to |out|. Returns the failures (index,
    what went wrong)."""
    sel = selectors.DefaultSelector()
    state = {}
    failures = []
    for i in range(first, first + count):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        except OSError as e:
            failures.append((i, f"connect: {e}"))
            s.close()
            continue
        state[s] = {"i": i, "out": payload_for(i, size), "got": b""}
        sel.register(s, selectors.EVENT_WRITE | selectors.EVENT_READ, None)
    while state and time.monotonic() < deadline:
        for key, events in sel.select(timeout=0.5):
            s = key.fileobj
            st = state.get(s)
            if st is None:
                continue
            try:
                if events & selectors.EVENT_WRITE and st["out"]:
                    n = s.send(st["out"])
                    st["out"] = st["out"][n:]
                    if not st["out"]:
                        sel.modify(s, selectors.EVENT_READ, None)
                if events & selectors.EVENT_READ:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise ConnectionError("EOF before the whole echo")
                    st["got"] += chunk
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                failures.append((st["i"], repr(e)))
                sel.unregister(s)
                del state[s]
                s.close()
                continue
            if len(st["got"]) >= size:
                sel.unregister(s)
                del state[s]
                if st["got"] != payload_for(st["i"], size):
                    failures.append((st["i"], "echo differs from what was sent"))
                    s.close()
                else:
                    out.append(s)
    for s, st in state.items():
        failures.append((st["i"], "no complete echo before the deadline"))
        s.close()
    sel.close()
    return failures


def burst(port, total, size=1024, wave=100, timeout=300):
    """Opens |total| connections through |port| in waves of |wave| (each
    wave's echoes complete before the next starts), so all of them are open
    at the end. Returns (open sockets, failures)."""
    raise_fd_limit()
    deadline = time.monotonic() + timeout
    opened, failures = [], []
    for first in range(0, total, wave):
        failures += open_wave(port, first, min(wave, total - first), size, deadline, opened)
        if time.monotonic() >= deadline:
            break
    return opened, failures


def close_all(socks):
    for s in socks:
        s.close()


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    serve()
