"""bench/k8s_scale.py at smoke size (200 pods, 4 nodes, 20 services, 5 s
of churn at 50 pod events/s), so that the benchmark cannot rot: it must
finish by itself, every pod event must reach the agent of its node, and
the report must hold sane numbers. Twice: every destination to every
agent (--destinations all), then destinations on demand (each agent asks
for the Services its pods call, half at open, half with Want). About
10 s each.

    MTLS_CA_BIN=bazel-bin/controlplane/mtls-ca /usr/bin/python3 -m pytest bench/test_k8s_scale_smoke.py
"""

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import k8s_scale  # noqa: E402

MTLS_CA_BIN = os.environ.get("MTLS_CA_BIN") or str(REPO / "bazel-bin" / "controlplane" / "mtls-ca")
SMOKE = ["--pods", "200", "--nodes", "4", "--services", "20", "--seconds", "5", "--rate", "50",
         "--dest-sample", "2", "--workers", "2", "--settle-s", "0.5", "--quiet-s", "1.5",
         "--drain-s", "20", "--timeout-sync", "60", "--timeout-first", "60"]


def bench(tmp_path_factory, destinations):
    if not Path(MTLS_CA_BIN).exists():
        pytest.fail(f"no mtls-ca binary at {MTLS_CA_BIN} (bazel build //controlplane:mtls-ca)")
    d = tmp_path_factory.mktemp("k8s_scale_" + destinations)
    json_path = d / "result.json"
    rc = k8s_scale.main(SMOKE + ["--mtls-ca", MTLS_CA_BIN, "--workdir", str(d / "work"),
                                 "--json", str(json_path), "--deltas", os.environ.get("BENCH_DELTAS", "off"),
                                 "--destinations", destinations])
    assert rc == 0, "the benchmark failed (see its last line above)"
    return json.loads(json_path.read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return bench(tmp_path_factory, "all")


@pytest.fixture(scope="module")
def on_demand(tmp_path_factory):
    return bench(tmp_path_factory, "on_demand")


def test_it_completes_and_mtls_ca_stops_cleanly(run):
    assert run["ok"]
    assert run["mtls_ca_exit"] == 0
    assert run["sanitizer_report"] is False
    assert run["mtls_ca_synced_workloads"] == 200
    assert run["agents"]["reporting"] == 4
    assert run["agents"]["problems"] == 0, run["agents"]["problem_samples"]
    assert run["agents"]["wrong_node_snapshots"] == 0


def test_every_pod_event_reaches_the_agent_of_its_node_and_no_other(run):
    a = run["agents"]
    churn = run["churn"]
    assert churn["events"] == churn["planned"] == 250
    assert churn["kinds"]["create"] > 0 and churn["kinds"]["delete"] > 0
    assert a["events_visible"] == churn["kinds"]["create"] + churn["kinds"]["delete"]
    assert a["events_not_emitted"] == 0
    assert a["events_seen_before_emitted"] == 0
    assert a["events_seen"] == a["events_visible"], a["events_not_seen"]
    assert a["misplaced_pods"] == 0
    lat = a["event_to_agent_ms"]["all"]
    assert lat["n"] == a["events_seen"]
    assert 0 <= lat["p50"] <= lat["p99"] <= lat["max"] < 20000
    dest = a["pod_ip_to_sampled_agents_ms"]
    assert a["destination_sample_agents"] == 2
    assert dest["seen_fraction"] == 1.0
    assert dest["every_sampled_agent"]["n"] == a["events_seen"]


def test_the_numbers_are_sane(run):
    b = run["agents"]["bytes"]
    # A full snapshot carries every destination: some 220 here, tens of bytes each.
    assert 5000 < b["first_state"]["p50"] <= b["first_state"]["max"] < 200000
    assert b["per_message_during_churn"]["n"] > 0
    assert b["bytes_per_agent_per_s"]["p50"] > 0
    m = run["mtls_ca"]
    assert 0 <= m["cpu_pct_churn"] < 400
    assert 1000 < m["rss_steady_kb"] <= m["vm_hwm_kb"]
    assert m["rounds"]["count"] > 0
    assert m["tcp_bytes_sent_churn"] > 0
    first = run["first_state"]
    assert 0 < first["open_to_first_s"]["max"] < 60


def service_endpoints_reach_their_callers(a):
    """Every endpoint change of a called Service reached each sampled agent
    that calls it, but for changes undone at once (superseded)."""
    s = a["service_endpoints_to_callers_ms"]
    assert s["pairs"] > 100 and s["not_emitted"] == 0
    assert s["missed"] == 0, s["missed_samples"]
    assert s["seen"] + s["superseded"] == s["pairs"]
    assert s["superseded"] <= s["pairs"] // 10
    assert s["each"]["n"] == s["seen"]
    assert 0 <= s["each"]["p50"] <= s["each"]["p99"] <= s["each"]["max"] < 20000


def test_every_endpoint_change_of_a_called_service_reaches_its_sampled_callers(run):
    assert run["calls"]["per_node"]["p50"] == 25  # 20 Services, five of them with two ports: all called
    service_endpoints_reach_their_callers(run["agents"])
    o = run["agents"]["on_demand"]
    assert o["want_calls"] == 0 and o["mismatched_agents"] == 0, o["mismatch_samples"]


def test_on_demand_every_agent_ends_holding_exactly_what_it_asked_for(on_demand):
    a = on_demand["agents"]
    assert on_demand["ok"] and on_demand["mtls_ca_exit"] == 0 and on_demand["sanitizer_report"] is False
    assert a["problems"] == 0, a["problem_samples"]
    o = a["on_demand"]
    assert o["mismatched_agents"] == 0, o["mismatch_samples"]  # its calls, nothing unresolved, the flag set
    calls = on_demand["calls"]
    assert calls["asked_at_open"] == 48 and calls["asked_with_want"] == 52  # 12 + 13 per agent
    assert o["want_calls"] == 8  # 13 addresses in batches of 10: two calls per agent
    assert o["want_to_entry_ms"]["n"] == 52
    assert 0 <= o["want_to_entry_ms"]["p50"] <= o["want_to_entry_ms"]["max"] < 30000
    assert o["want_round_trip_ms"]["n"] == 8


def test_on_demand_pod_events_and_called_services_still_reach_their_agents(on_demand):
    a = on_demand["agents"]
    assert a["events_seen"] == a["events_visible"] > 0 and a["misplaced_pods"] == 0
    assert a["pod_ip_to_sampled_agents_ms"] is None  # nobody asks for pod IPs
    service_endpoints_reach_their_callers(a)


def test_on_demand_carries_less_than_every_destination(run, on_demand):
    # Every agent calls every Service at this size, so only the pod IPs go:
    # 200 of the 225 entries.
    first, first_all = on_demand["agents"]["bytes"]["first_state"], run["agents"]["bytes"]["first_state"]
    assert first["max"] < first_all["p50"]
    assert on_demand["agents"]["bytes"]["state_before_churn"]["p50"] > first["p50"]  # Want brought the rest
