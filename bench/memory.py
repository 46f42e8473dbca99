#!/usr/bin/python3
"""Memory of an mtlsd pair on 127.0.0.1: does it come back after a burst?

  client -> mtlsd A outbound (fixed destination) -> mTLS -> mtlsd B inbound
         -> echo server (loadgen.py echo-server)

Measures, for each agent (VmRSS from /proc/PID/status):
  idle        RSS 1 s after both agents listen, before any traffic
  per conn    (RSS with --held connections open and idle - RSS before) / --held
  bursts      --bursts times: --burst connections opened (one 1-byte exchange
              each, all held open at once), then all closed; RSS at the peak,
              once the agent has closed them all, and --settle seconds later

Usage:  bench/memory.py [--workers 2] [--held 1000] [--burst 8000] [--bursts 3]
        bench/memory.py --idle-only     (idle VmRSS, Pss and the split by mapping)
Writes configs and logs to bench/out/memory/ (git-ignored). Unless --mtlsd names
a binary, builds //agent:mtlsd like run.sh (optimised, see .bazelrc) and copies
it, so a rebuild during the run cannot swap it. Makes its PKI with certs/mkpki.sh.

Every loop is bounded in count and time, all traffic is to 127.0.0.1, and only
the processes this script started are stopped, by PID.
"""
import argparse
import os
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import loadgen  # noqa: E402  (echo server and RSS reader are shared with run.sh)

HOST = loadgen.HOST
OPEN_FILES_WANTED = 20000     # the machine's hard limit per process
AGENT_FD_HEADROOM = 200       # listeners, logs, admin, libev: not connections
CONNECTS_IN_FLIGHT = 200      # below the agents' listen backlog (1024)
PHASE_TIMEOUT_S = 120         # upper bound of opening or closing one burst
LISTEN_TIMEOUT_S = 15
SAMPLE_PERIOD_S = 0.1
BUILD_TIMEOUT_S = 1200
SPLIT_MIN_KB = 64             # mappings smaller than this are left out of the split
SPLIT_FIELDS = ("Rss:", "Pss:", "Private_Dirty:")  # smaps fields, per mapping
FRONT_ID = "spiffe://example.org/ns/default/sa/frontend"
BACK_ID = "spiffe://example.org/ns/default/sa/backend"


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    return max(soft, want)


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_listen(port, proc, name):
    deadline = time.monotonic() + LISTEN_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{name} exited with {proc.returncode}; see its log in bench/out/memory/")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{name} does not listen on {port}")


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def rss_by_mapping(pid):
    """VmRSS split by what is mapped: each shared library (code + data), the
    main heap, anonymous memory (thread arenas, stacks). Per mapping name:
    [Rss KB, Pss KB, Private_Dirty KB]; a library's Rss is mostly pages shared
    with every other process that maps it (Pss divides each page by the
    number of processes mapping it), its Private_Dirty is this process's own
    (relocations, data, what its constructors allocated)."""
    split = {}
    name = None
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                fields = line.split()
                if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                    path = fields[5] if len(fields) > 5 else "[anon]"
                    name = os.path.basename(path) if path.startswith("/") else path
                    split.setdefault(name, [0, 0, 0])
                elif fields[0] in SPLIT_FIELDS:
                    split[name][SPLIT_FIELDS.index(fields[0])] += int(fields[1])
    except OSError:
        pass
    return split


def pss_kb(pid):
    """Pss of the whole process (smaps_rollup): shared pages divided among
    the processes that map them."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def print_split(title, before, after):
    print(title)
    cols = 3 if after else 0  # no "end" columns when there is no end split
    print(f"  {'mapping':28}{'idle Rss':>10}{'idle Pss':>10}{'idle own':>10}" +
          f"{'end Rss':>10}{'end Pss':>10}{'end own':>10}"[:10 * cols])
    zero = [0, 0, 0]
    names = sorted(set(before) | set(after),
                   key=lambda n: -max(before.get(n, zero)[0], after.get(n, zero)[0]))
    for n in names + ["(total KB)"]:
        if n == "(total KB)":
            b, a = ([sum(v[i] for v in d.values()) for i in range(3)] for d in (before, after))
        else:
            b, a = before.get(n, zero), after.get(n, zero)
            if max(b[0], a[0]) < SPLIT_MIN_KB:
                continue
        print(f"  {n[:28]:28}" + "".join(f"{v:>10}" for v in b + a[:cols]))
    print("  own = Private_Dirty: pages no other process shares")


def agent_yaml(role, pki, out, workers, max_conns, ports):
    common = f"""trust_domain: example.org
workers: {workers}
max_connections: {max_conns}
log_level: warn
access_log: {out}/{role}.access.log
admin: {{address: "127.0.0.1:0"}}
identity:
  cert_file: {pki}/workloads/{role}/chain.pem
  key_file: {pki}/workloads/{role}/key.pem
trust_bundles:
  - trust_domain: example.org
    file: {pki}/bundle.pem
"""
    if role == "backend":
        return common + f"""inbound:
  listeners:
    - address: 127.0.0.1:{ports['back']}
      app_port: {ports['echo']}
  app_address: 127.0.0.1
policy:
  default: deny
  rules:
    - name: frontend-may-call-backend
      action: allow
      ports: [{ports['echo']}]
      from:
        - id: {FRONT_ID}
"""
    return common + f"""outbound:
  listeners:
    - address: 127.0.0.1:{ports['front']}
      destination: 127.0.0.1:{ports['back']}
  destinations:
    - address: 127.0.0.1:{ports['back']}
      spiffe_id: {BACK_ID}
  unknown_destination: deny
"""


class Bed:
    """The echo server and the two agents; stops exactly what it started."""

    def __init__(self, args):
        self.args = args
        self.out = os.path.join(HERE, "out", "memory")
        self.procs = []

    def start(self, name, argv):
        log = open(os.path.join(self.out, name + ".log"), "w")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def up(self):
        os.makedirs(self.out, exist_ok=True)
        binary = os.path.join(self.out, "mtlsd")
        shutil.copy(self.args.mtlsd, binary)
        pki = os.path.join(self.out, "pki")
        subprocess.run([os.path.join(ROOT, "certs", "mkpki.sh"), "--out", pki, "frontend",
                        "backend"], check=True, stdout=subprocess.DEVNULL, timeout=120)
        ports = {"echo": free_port(), "back": free_port(), "front": free_port()}
        self.front_port = ports["front"]
        echo = self.start("echo", [sys.executable, os.path.join(HERE, "loadgen.py"),
                                   "echo-server", "--port", str(ports["echo"]),
                                   "--lifetime", "1800"])
        wait_listen(ports["echo"], echo, "echo server")
        max_conns = (OPEN_FILES_WANTED - AGENT_FD_HEADROOM) // 2  # two sockets per connection
        self.agents = {}
        for role in ("backend", "frontend"):
            conf = os.path.join(self.out, role + ".yaml")
            with open(conf, "w") as f:
                f.write(agent_yaml(role, pki, self.out, self.args.workers, max_conns, ports))
            self.agents[role] = self.start(role, [binary, "--config", conf])
        wait_listen(ports["back"], self.agents["backend"], "backend agent")
        wait_listen(ports["front"], self.agents["frontend"], "frontend agent")

    def down(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def rss(self):
        return {role: loadgen.read_rss_kb(p.pid) for role, p in self.agents.items()}

    def fds(self):
        return {role: fd_count(p.pid) for role, p in self.agents.items()}


def open_held(port, count, on_tick):
    """Opens |count| connections, one 1-byte exchange each, and returns them
    open. At most CONNECTS_IN_FLIGHT are between connect and echo at once."""
    sel = selectors.DefaultSelector()
    held, failed, started = [], 0, 0
    pending = 0
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while (len(held) + failed < count) and time.monotonic() < deadline:
        while started < count and pending < CONNECTS_IN_FLIGHT:
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((HOST, port))
            sel.register(s, selectors.EVENT_WRITE, "connecting")
            started += 1
            pending += 1
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            try:
                if key.data == "connecting":
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, os.strerror(err))
                    s.send(b"x")
                    sel.modify(s, selectors.EVENT_READ, "echo")
                    continue
                if s.recv(1) != b"x":
                    raise OSError("no echo")
                sel.unregister(s)
                held.append(s)
            except OSError:
                sel.unregister(s)
                s.close()
                failed += 1
            pending -= 1
        on_tick()
    for key in list(sel.get_map().values()):  # deadline passed: give up on these
        key.fileobj.close()
        failed += 1
    sel.close()
    return held, failed


def wait_closed(bed, baseline_fds, on_tick):
    """Waits (bounded) until both agents are back to their idle descriptors."""
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while time.monotonic() < deadline:
        on_tick()
        fds = bed.fds()
        if all(fds[r] <= baseline_fds[r] for r in fds):
            return True
        time.sleep(SAMPLE_PERIOD_S)
    return False


def build_agent():
    """bazel build //agent:mtlsd; its path from `bazel info` (bazel-bin may point
    at another configuration's output after a --config=asan build)."""
    subprocess.run(["bazel", "build", "//agent:mtlsd"], cwd=ROOT, check=True, timeout=BUILD_TIMEOUT_S,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bin_dir = subprocess.run(["bazel", "info", "bazel-bin"], cwd=ROOT, check=True, text=True,
                             capture_output=True, timeout=BUILD_TIMEOUT_S).stdout.strip()
    return os.path.join(bin_dir, "agent", "mtlsd")


def mb(kb):
    return f"{kb / 1024:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mtlsd", help="agent binary (default: bazel build //agent:mtlsd)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--held", type=int, default=1000)
    ap.add_argument("--burst", type=int, default=8000)
    ap.add_argument("--bursts", type=int, default=3)
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--idle-only", action="store_true",
                    help="only the idle figures (VmRSS, Pss, split by mapping), then stop")
    args = ap.parse_args()
    nofile = raise_nofile()
    if args.burst + AGENT_FD_HEADROOM > nofile:
        sys.exit(f"--burst {args.burst} needs more open files than the limit {nofile}")
    if args.mtlsd is None:
        args.mtlsd = build_agent()
    bed = Bed(args)
    rows = []
    try:
        bed.up()
        time.sleep(1.0)
        idle = bed.rss()
        idle_fds = bed.fds()
        idle_split = rss_by_mapping(bed.agents["frontend"].pid)
        if args.idle_only:
            idle_pss = {r: pss_kb(p.pid) for r, p in bed.agents.items()}
            print(f"idle, KB: VmRSS frontend {idle['frontend']} backend {idle['backend']}; "
                  f"Pss frontend {idle_pss['frontend']} backend {idle_pss['backend']}")
            print_split("frontend RSS by mapping, idle", idle_split, {})
            return 0

        held, failed = open_held(bed.front_port, args.held, lambda: None)
        time.sleep(1.0)
        with_held = bed.rss()
        per_conn = {r: (with_held[r] - idle[r]) * 1024 / max(1, len(held)) for r in idle}
        for s in held:
            s.close()
        wait_closed(bed, idle_fds, lambda: None)
        time.sleep(args.settle)
        warm = bed.rss()  # threads' stacks and arenas have now been used once
        print(f"held {len(held)} idle connections ({failed} failed)")

        for i in range(1, args.bursts + 1):
            peak = dict(bed.rss())

            def sample():
                for r, v in bed.rss().items():
                    peak[r] = max(peak[r], v)

            t0 = time.monotonic()
            held, failed = open_held(bed.front_port, args.burst, sample)
            opened_s = time.monotonic() - t0
            for s in held:
                s.close()
            closed_ok = wait_closed(bed, idle_fds, sample)
            after_close = bed.rss()
            time.sleep(args.settle)
            later = bed.rss()
            rows.append((i, len(held), failed, opened_s, closed_ok, peak, after_close, later))
            print(f"burst {i}: {len(held)} connections in {opened_s:.1f} s, {failed} failed")
        end_split = rss_by_mapping(bed.agents["frontend"].pid)
    finally:
        bed.down()

    print()
    print(f"mtlsd pair, workers={args.workers}, RSS in MB (VmRSS)")
    print(f"{'':28}{'frontend (A)':>14}{'backend (B)':>14}")
    print(f"{'idle':28}{mb(idle['frontend']):>14}{mb(idle['backend']):>14}")
    print(f"{f'per idle connection (KB, {args.held} held)':28}"
          f"{per_conn['frontend'] / 1024:>14.1f}{per_conn['backend'] / 1024:>14.1f}")
    print(f"{f'{args.held} held closed, +{args.settle:g} s':28}"
          f"{mb(warm['frontend']):>14}{mb(warm['backend']):>14}")
    for i, n, failed, secs, closed_ok, peak, after, later in rows:
        note = "" if closed_ok else "  (agents had not closed every connection)"
        print(f"{f'burst {i} ({n} conns) peak':28}{mb(peak['frontend']):>14}{mb(peak['backend']):>14}")
        print(f"{'  all closed':28}{mb(after['frontend']):>14}{mb(after['backend']):>14}{note}")
        print(f"{f'  +{args.settle:g} s':28}{mb(later['frontend']):>14}{mb(later['backend']):>14}")
    print()
    print_split("frontend RSS by mapping, idle and after the last burst", idle_split, end_split)
    return 0


if __name__ == "__main__":
    sys.exit(main())
