"""bench/compare.py at its smallest (1 repetition, 1-2 s loads, 200 held
connections, one burst of 300), so that the comparison cannot rot: every
pair must pass the run's own checks (bytes intact, a client without a
certificate refused by B, mutual TLS in each proxy's logs, resumption seen
in B's log exactly where it is on), and the report must hold sane numbers.
About 70 s on 2 cores; run by hand, not part of tests/run_all.sh. Needs
nginx + libnginx-mod-stream, haproxy, stunnel4, iperf3, wrk and gnuplot
(`sudo bench/compare.py --quick` installs them).

    MTLSD_BIN=bazel-bin/agent/mtlsd /usr/bin/python3 -m pytest -q bench/test_compare_smoke.py
"""

import json
import math
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import compare  # noqa: E402

MTLSD_BIN = os.environ.get("MTLSD_BIN") or str(REPO / "bazel-bin" / "agent" / "mtlsd")
PEERS = ["mtlsd", "nginx", "haproxy", "stunnel"]


def free_block(size=60):
    for base in range(31000, 60000 - size, 500):
        if all(compare.port_free(p) for p in range(base, base + size)):
            return base
    pytest.fail("no free block of ports")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    if not Path(MTLSD_BIN).exists():
        pytest.fail(f"no mtlsd binary at {MTLSD_BIN} (bazel build //agent:mtlsd)")
    out = tmp_path_factory.mktemp("compare")
    rc = compare.main(["--quick", "--no-install", "--mtlsd", MTLSD_BIN, "--out", str(out),
                       "--port-base", str(free_block()), "--ka-seconds", "1", "--bulk-seconds", "1",
                       "--conn-seconds", "1", "--paced-rate", "300", "--paced-seconds", "2",
                       "--held", "200", "--burst", "300", "--settle", "1"])
    assert rc == 0
    saved = json.loads((out / "results.json").read_text())
    saved["out"] = out
    return saved


def positive(v):
    return isinstance(v, (int, float)) and not math.isnan(v) and v > 0


def test_every_pair_has_every_figure(result):
    for peer in PEERS:
        m = result["medians"][peer]
        for key in ("ka_rps", "ka_p50_ms", "ka_p99_ms", "bulk1_mbps", "bulk4_mbps",
                    "conn_full_per_s", "cpu_full_ms", "idle_rss_a_mb", "idle_rss_b_mb",
                    "held_a_kb", "held_b_kb", "paced_vcpu_pair", "paced_rss_mb"):
            assert positive(m.get(key)), (peer, key, m.get(key))
        assert m["ka_p50_ms"] <= m["ka_p99_ms"]
        if peer != "mtlsd" or result["meta"]["mtlsd"]["session_resumption_key"]:
            assert positive(m.get("conn_resumed_per_s")), (peer, m)
        else:
            assert m["conn_resumed_per_s"] == compare.NO_RESUMPTION_KEY
    for run in result["runs"]["mtlsd"]:
        assert run["conn_full_errors"] == 0


def test_resumption_seen_exactly_where_it_is_on(result):
    for peer in PEERS:
        for run in result["runs"][peer]:
            off = run["resumption_off"]
            assert off["probe"] == "new", (peer, off)
            assert not off["b_log"][0], (peer, off)
            if "resumption_on" in run:
                on = run["resumption_on"]
                assert on["probe"] == "reused", (peer, on)
                if peer != "mtlsd":
                    assert on["b_log"][0] >= 0.5 * on["connections"], (peer, on)


def test_mutual_tls_evidence(result):
    for peer in PEERS:
        b, a = result["runs"][peer][0]["mutual"]
        assert b and a, peer
    b, a = result["runs"]["mtlsd"][0]["mutual"]
    assert f"peer_id={compare.FRONT_ID}" in b and "reason=ok" in b
    assert f"peer_id={compare.BACK_ID}" in a and "reason=ok" in a


def test_burst_curve_and_charts(result):
    for peer in ("mtlsd", "nginx", "haproxy"):
        bu = result["bursts"][peer]
        assert bu["bursts"][0]["held"] == 300 and bu["bursts"][0]["failed"] == 0
        assert len(bu["curve"]) >= 5
        assert bu["bursts"][0]["peak_a_mb"] > bu["start_a_mb"]
    for name in ("chart-table.svg", "chart-burst.svg", "results.md", "results.txt"):
        assert (result["out"] / name).stat().st_size > 500, name
