#!/usr/bin/python3
"""CPU per new connection through an mtlsd pair, with and without TLS 1.3
session resumption.

  client -> mtlsd A outbound -> mTLS -> mtlsd B inbound -> echo server

Each connection: connect, 1 byte, its echo, close (loadgen.py connrate), so
each one costs a mesh handshake on both agents. For each mode, after --warmup
connections (which also fill A's session cache), CPU time (utime + stime from
/proc/PID/stat) of each agent is read before and after --conns connections:
ms per connection. The access log of B says how many were resumed.

Usage:  bench/handshake_cpu.py [--conns 3000] [--threads 4] [--workers 1] [--reps 3]
Writes configs and logs to bench/out/handshake/ (git-ignored). Builds
//agent:mtlsd unless --mtlsd names a binary. Bounded: every load stops after
--conns connections or --seconds, whichever first; only the processes this
script started are stopped, by PID.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import memory  # noqa: E402  (the pair and its PKI, as bench/memory.py makes them)

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


class Bed(memory.Bed):
    def __init__(self, args, resumption):
        super().__init__(args)
        self.out = os.path.join(HERE, "out", "handshake")
        self.resumption = resumption

    def up(self):
        original = memory.agent_yaml

        def with_tls(*a, **kw):
            if self.resumption is None:  # the agent's default (and older agents)
                return original(*a, **kw)
            return original(*a, **kw) + (
                f"tls:\n  session_resumption: {'true' if self.resumption else 'false'}\n")

        memory.agent_yaml = with_tls
        try:
            super().up()
        finally:
            memory.agent_yaml = original


def connrate(port, conns, threads, seconds):
    res = subprocess.run([sys.executable, os.path.join(HERE, "loadgen.py"), "connrate",
                          "--port", str(port), "--conns", str(conns), "--seconds", str(seconds),
                          "--threads", str(threads)],
                         capture_output=True, text=True, timeout=seconds + 60, check=True)
    return json.loads(res.stdout)


def sessions(log_path):
    counts = {}
    with open(log_path) as f:
        for line in f:
            kind = json.loads(line).get("tls_session", "")
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def run_mode(args, resumption):
    bed = Bed(args, resumption)
    try:
        bed.up()
        connrate(bed.front_port, args.warmup, args.threads, args.seconds)
        pids = {r: p.pid for r, p in bed.agents.items()}
        before = {r: cpu_seconds(pid) for r, pid in pids.items()}
        log = os.path.join(bed.out, "backend.access.log")
        seen = sessions(log)
        result = connrate(bed.front_port, args.conns, args.threads, args.seconds)
        after = {r: cpu_seconds(pid) for r, pid in pids.items()}
        time.sleep(0.3)  # the last lines of the access log
        now = sessions(log)
        n = max(1, result["ok"])
        return {
            "conn_per_s": result["conn_per_s"],
            "errors": result["errors"],
            "ms_per_conn_B": (after["backend"] - before["backend"]) * 1000 / n,
            "ms_per_conn_A": (after["frontend"] - before["frontend"]) * 1000 / n,
            "resumed": now.get("resumed", 0) - seen.get("resumed", 0),
            "full": now.get("full", 0) - seen.get("full", 0),
        }
    finally:
        bed.down()


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mtlsd", help="agent binary (default: bazel build //agent:mtlsd)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--conns", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--modes", default="off,on",
                    help="comma list of off / on / default (no tls: section, e.g. an older agent)")
    args = ap.parse_args()
    memory.raise_nofile()
    if args.mtlsd is None:
        args.mtlsd = memory.build_agent()
    runs = {m: [] for m in args.modes.split(",")}
    for _ in range(args.reps):  # alternating modes
        for mode in runs:
            r = run_mode(args, {"on": True, "off": False, "default": None}[mode])
            runs[mode].append(r)
            print(f"resumption {mode}: {json.dumps({k: round(v, 3) for k, v in r.items()})}",
                  flush=True)
    print(f"\nmedians of {args.reps} (workers: {args.workers}, {args.conns} connections, "
          f"{args.threads} client threads)")
    print(f"{'resumption':<11} {'conn/s':>8} {'B ms/conn':>10} {'A ms/conn':>10} "
          f"{'resumed':>8} {'full':>6}")
    for mode, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print(f"{mode:<11} {med['conn_per_s']:>8.0f} {med['ms_per_conn_B']:>10.3f} "
              f"{med['ms_per_conn_A']:>10.3f} {med['resumed']:>8.0f} {med['full']:>6.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
