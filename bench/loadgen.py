#!/usr/bin/python3
"""Load helpers for bench/run.sh (stdlib only, loopback only).

  echo-server --port P [--lifetime S]    asyncio echo server; exits by itself after S seconds
  check --port P [--bytes N]             one connection, N random bytes must come back unchanged
  connrate --port P --conns N --seconds S --threads T [--pid ROLE=PID]...
                                         connect -> 1 byte -> 1 byte echo -> close, bounded by
                                         N connections and S seconds (whichever first); samples
                                         VmRSS of each PID; prints one JSON object
  tls-probe --port P --cafile F [--cert C --key K]
                                         TLS 1.3 client straight to a backend proxy: prints
                                         "echo ..." if one byte came back, else "refused: ..."
  iperf-summary FILE                     prints "bytes gbps" from an `iperf3 -J` result
  paced-http --port P --path /1k --rate R --seconds S --conns C
                                         HTTP/1.1 GETs over C keep-alive connections, request i
                                         sent at start + i/R (never earlier), R*S requests at
                                         most, stops at S + 10 s whatever happened; prints JSON
  tls-resume --port P --cafile F --cert C --key K
                                         two TLS 1.3 connections to a backend proxy, the second
                                         offering the first's session; prints "reused" or "new"

Every load here stops by itself: the counts and deadlines are checked in the loops,
and every socket has a timeout.
"""
import argparse
import asyncio
import json
import os
import socket
import ssl
import sys
import threading
import time

HOST = "127.0.0.1"


def echo_server(args):
    async def handle(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, HOST, args.port, backlog=1024,
                                            reuse_address=True)
        async with server:
            # Safety net: the server stops even if run.sh was killed without its trap.
            await asyncio.sleep(args.lifetime)

    asyncio.run(main())


def check(args):
    payload = os.urandom(args.bytes)
    with socket.create_connection((HOST, args.port), timeout=10) as s:
        def send_all():
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)  # half-close: the proxies must pass the FIN on

        # Send from a thread while reading here: a payload larger than the socket
        # buffers along the path would otherwise deadlock against the echo.
        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        got = bytearray()
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        sender.join(10)
    if bytes(got) != payload:
        print(f"echo mismatch on port {args.port}: sent {len(payload)} bytes, "
              f"got {len(got)} back", file=sys.stderr)
        return 1
    return 0


def tls_probe(args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # SPIFFE leaves carry a URI SAN only; the chain is still verified
    ctx.load_verify_locations(args.cafile)
    if args.cert:
        ctx.load_cert_chain(args.cert, args.key)
    try:
        with socket.create_connection((HOST, args.port), timeout=5) as raw:
            with ctx.wrap_socket(raw) as s:
                # TLS 1.3: the server judges our (absent) certificate after the client
                # finished, so a refusal shows up on the first read, not in the handshake.
                s.sendall(b"x")
                got = s.recv(1)
                if got == b"x":
                    print("echo", s.version(), s.cipher()[0])
                else:
                    print("refused: connection closed without echo")
    except (ssl.SSLError, OSError) as e:
        print(f"refused: {e}")
    return 0


def read_rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100.0 * (len(sorted_values) - 1))))
    return sorted_values[k]


def connrate(args):
    lock = threading.Lock()
    state = {"started": 0, "errors": 0, "first_error": ""}
    latencies = []
    deadline = time.monotonic() + args.seconds
    stop_sampling = threading.Event()
    pids = dict(item.split("=", 1) for item in args.pid)  # role -> pid
    rss_max = {role: read_rss_kb(pid) for role, pid in pids.items()}

    def sampler():
        while not stop_sampling.is_set():
            for role, pid in pids.items():
                rss_max[role] = max(rss_max[role], read_rss_kb(pid))
            stop_sampling.wait(0.02)

    def worker():
        mine = []
        while time.monotonic() < deadline:
            with lock:
                if state["started"] >= args.conns:
                    break
                state["started"] += 1
            t0 = time.perf_counter()
            try:
                with socket.create_connection((HOST, args.port), timeout=5) as s:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    s.sendall(b"x")
                    if s.recv(1) != b"x":
                        raise OSError("no echo")
                mine.append(time.perf_counter() - t0)
            except OSError as e:
                with lock:
                    state["errors"] += 1
                    state["first_error"] = state["first_error"] or repr(e)
        with lock:
            latencies.extend(mine)

    sample_thread = threading.Thread(target=sampler, daemon=True)
    sample_thread.start()
    t_start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t_start
    stop_sampling.set()
    sample_thread.join()

    latencies.sort()
    print(json.dumps({
        "ok": len(latencies),
        "errors": state["errors"],
        "first_error": state["first_error"],
        "elapsed_s": round(elapsed, 3),
        "conn_per_s": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0,
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "rss_max_kb": rss_max,
    }))
    return 0


def iperf_summary(args):
    with open(args.file) as f:
        result = json.load(f)
    if "error" in result:
        print(f"iperf3 error: {result['error']}", file=sys.stderr)
        return 1
    received = result["end"]["sum_received"]
    print(received["bytes"], round(received["bits_per_second"] / 1e9, 3))
    return 0


def tls_resume(args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(args.cafile)
    ctx.load_cert_chain(args.cert, args.key)
    session = None
    try:
        for attempt in range(2):
            with socket.create_connection((HOST, args.port), timeout=5) as raw:
                with ctx.wrap_socket(raw, session=session) as s:
                    # TLS 1.3 tickets come after the handshake: one echoed byte makes
                    # sure the client has read them before it asks for the session.
                    s.sendall(b"x")
                    if s.recv(1) != b"x":
                        print("error: no echo")
                        return 0
                    if attempt == 1:
                        print("reused" if s.session_reused else "new")
                    session = s.session
    except (ssl.SSLError, OSError) as e:
        print(f"error: {e}")
    return 0


def paced_http(args):
    """Open-loop pacing over a fixed pool of keep-alive connections: request i is
    due at t0 + i/rate and goes on connection i % conns as soon as it is due and
    that connection's previous answer is in. Latency runs from the due time, so a
    stalled proxy shows up as latency rather than as a slower schedule."""
    total = int(args.rate * args.seconds)
    request = (f"GET {args.path} HTTP/1.1\r\nHost: bench\r\n\r\n").encode()
    latencies, state = [], {"errors": 0, "first_error": "", "late": 0, "bytes": 0}

    async def one_conn(k, t0):
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(HOST, args.port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for i in range(k, total, args.conns):
                due = t0 + i / args.rate
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -0.01:
                    state["late"] += 1
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = head.split(b" ", 2)[1]
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                if status != b"200":
                    raise OSError(f"HTTP status {status.decode()}")
                state["bytes"] += len(body)
                latencies.append(loop.time() - due)
        finally:
            writer.close()

    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.2  # every connection is open before the first request is due
        tasks = [asyncio.create_task(one_conn(k, t0)) for k in range(args.conns)]
        done, pending = await asyncio.wait(tasks, timeout=args.seconds + 10)
        for t in pending:
            t.cancel()
            state["errors"] += 1
            state["first_error"] = state["first_error"] or "deadline"
        for t in done:
            if t.exception() is not None:
                state["errors"] += 1
                state["first_error"] = state["first_error"] or repr(t.exception())
        return t0, loop.time()

    t0, t1 = asyncio.run(main())
    latencies.sort()
    elapsed = t1 - t0
    print(json.dumps({
        "ok": len(latencies), "wanted": total, "errors": state["errors"],
        "first_error": state["first_error"], "late": state["late"],
        "elapsed_s": round(elapsed, 3),
        "req_per_s": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0,
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "body_bytes": state["bytes"],
    }))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("echo-server")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--lifetime", type=float, default=3600)
    p = sub.add_parser("check")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bytes", type=int, default=1 << 20)
    p = sub.add_parser("connrate")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--conns", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--pid", action="append", default=[], metavar="ROLE=PID")
    p = sub.add_parser("tls-probe")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p = sub.add_parser("iperf-summary")
    p.add_argument("file")
    p = sub.add_parser("paced-http")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/1k")
    p.add_argument("--rate", type=float, default=1000)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--conns", type=int, default=16)
    p = sub.add_parser("tls-resume")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    args = parser.parse_args()
    return {"echo-server": echo_server, "check": check, "connrate": connrate,
            "tls-probe": tls_probe, "iperf-summary": iperf_summary,
            "paced-http": paced_http, "tls-resume": tls_resume}[args.cmd](args) or 0


if __name__ == "__main__":
    sys.exit(main())
