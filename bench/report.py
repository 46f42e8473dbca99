#!/usr/bin/python3
"""Turns bench/out/raw/ into the results table and the ratio table (stdlib only).

usage: report.py RAW_DIR PATH...   (PATH: direct, mtlsd-w1, mtlsd-w2, stunnel, haproxy)

Files per path, written by run.sh:
  bulk-P{1,4}.json   iperf3 -J client output        bulk-P{1,4}.cpu  "TICKS HZ" of both proxies
  connrate.json      loadgen.py connrate output     connrate.cpu     "TICKS HZ" of both proxies
  rss-idle           "FRONT_KB BACK_KB"             mutual.txt       log lines showing mutual TLS
"""
import json
import math
import os
import sys

NA = float("nan")


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        return None


def load_words(path):
    try:
        with open(path) as f:
            return f.read().split()
    except OSError:
        return None


def bulk(raw, streams):
    """(Gbit/s received, proxy CPU seconds per GB received)"""
    result = load_json(os.path.join(raw, f"bulk-P{streams}.json"))
    if not result or "error" in result:
        return NA, NA
    received = result["end"]["sum_received"]
    gbps = received["bits_per_second"] / 1e9
    cpu = load_words(os.path.join(raw, f"bulk-P{streams}.cpu"))
    gigabytes = received["bytes"] / 1e9
    if cpu is None or int(cpu[0]) == 0 or gigabytes == 0:
        return gbps, NA  # no proxy on this path
    return gbps, int(cpu[0]) / int(cpu[1]) / gigabytes


def metrics(raw_dir, path):
    raw = os.path.join(raw_dir, path)
    m = {}
    m["bulk1"], m["cpu1"] = bulk(raw, 1)
    m["bulk4"], m["cpu4"] = bulk(raw, 4)
    conn = load_json(os.path.join(raw, "connrate.json")) or {}
    m["rate"] = conn.get("conn_per_s", NA)
    m["p50"] = conn.get("p50_ms", NA)
    m["p99"] = conn.get("p99_ms", NA)
    m["errors"] = conn.get("errors", NA)
    cpu = load_words(os.path.join(raw, "connrate.cpu"))
    ok = conn.get("ok", 0)
    m["cpu_conn"] = (int(cpu[0]) / int(cpu[1]) * 1e3 / ok
                     if cpu and int(cpu[0]) and ok else NA)
    idle = load_words(os.path.join(raw, "rss-idle"))
    m["rss_idle_front"], m["rss_idle_back"] = (int(idle[0]), int(idle[1])) if idle else (NA, NA)
    peak = conn.get("rss_max_kb", {})
    m["rss_peak_front"] = peak.get("front", NA)
    m["rss_peak_back"] = peak.get("back", NA)
    return m


# (key, label, "higher"/"lower" is better, format)
ROWS = [
    ("bulk1", "bulk 1 stream, Gbit/s", "higher", "{:.2f}"),
    ("bulk4", "bulk 4 streams, Gbit/s", "higher", "{:.2f}"),
    ("cpu1", "proxy CPU s/GB, 1 stream", "lower", "{:.3f}"),
    ("cpu4", "proxy CPU s/GB, 4 streams", "lower", "{:.3f}"),
    ("rate", "connections/s", "higher", "{:.0f}"),
    ("p50", "connection p50, ms", "lower", "{:.2f}"),
    ("p99", "connection p99, ms", "lower", "{:.2f}"),
    ("cpu_conn", "proxy CPU ms/connection", "lower", "{:.3f}"),
    ("rss_idle_front", "RSS idle frontend, KiB", "lower", "{:.0f}"),
    ("rss_idle_back", "RSS idle backend, KiB", "lower", "{:.0f}"),
    ("rss_peak_front", "RSS peak (conn test) frontend, KiB", "lower", "{:.0f}"),
    ("rss_peak_back", "RSS peak (conn test) backend, KiB", "lower", "{:.0f}"),
    ("errors", "connection errors", "lower", "{:.0f}"),
]


def fmt(value, spec):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return spec.format(value)


def ratio(a, b):
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (a, b)) or b == 0:
        return "n/a"
    return f"{a / b:.2f}"


def table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = []
    for n, r in enumerate([header] + rows):
        cells = [str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])
                 for i, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def mutual_summary(raw_dir, path):
    try:
        with open(os.path.join(raw_dir, path, "mutual.txt")) as f:
            lines = [l.strip() for l in f if l.strip()]
    except OSError:
        return None
    out = []
    for line in lines:
        try:  # mtlsd access-log line: show the parts that matter
            e = json.loads(line)
            out.append(f"{e['direction']} peer_id={e['peer_id']} {e['tls_version']} "
                       f"{e['cipher']} reason={e['reason']}")
        except (ValueError, KeyError):
            out.append(line if len(line) <= 150 else "..." + line[-147:])
    return out


def main():
    raw_dir, paths = sys.argv[1], sys.argv[2:]
    data = {p: metrics(raw_dir, p) for p in paths}

    print()
    print("Results (proxy rows: the frontend+backend pair; RSS: one process)")
    header = ["metric (better)"] + paths
    rows = [[f"{label} ({better[0]})"] + [fmt(data[p][key], spec) for p in paths]
            for key, label, better, spec in ROWS]
    print(table(header, rows))

    # Ratios: mtlsd variant / peer. Whether >1 is good depends on the metric
    # (h = higher is better, l = lower is better).
    pairs = []
    for m in [p for p in paths if p.startswith("mtlsd")]:
        for peer in ("stunnel", "direct", "haproxy"):
            if peer in paths:
                pairs.append((m, peer))
    print()
    print("Ratios (h: higher is better, so >1 favours mtlsd; l: lower is better, so <1 favours mtlsd)")
    header = ["metric (better)"] + [f"{m}/{peer}" for m, peer in pairs]
    rows = [[f"{label} ({better[0]})"] + [ratio(data[m][key], data[peer][key]) for m, peer in pairs]
            for key, label, better, spec in ROWS if key != "errors"]
    print(table(header, rows))

    print()
    print("Mutual TLS seen in the logs (besides the no-certificate probe that every backend refused):")
    for p in paths:
        lines = mutual_summary(raw_dir, p)
        if lines:
            for line in lines:
                print(f"  {p}: {line}")


if __name__ == "__main__":
    main()
