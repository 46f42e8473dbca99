"""mtls-ca's Kubernetes source (controlplane/k8s_source.h, run alone as
k8s_watch_driver) against the API server stand-in, over verified HTTPS with
a bearer token: list -> watch -> modify -> delete -> 410 -> relist give
exactly the right state, each change reported once, and a restart of the
API server is survived.

Build first: bazel build //tests/controlplane:k8s_watch_driver
(K8S_WATCH_DRIVER_BIN picks another build)."""

import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest

import fixtures as fx
from standin import WAIT, StandIn, wait_until

REPO = Path(__file__).resolve().parents[2]
DRIVER = os.environ.get("K8S_WATCH_DRIVER_BIN") or str(REPO / "bazel-bin" / "tests" / "controlplane" / "k8s_watch_driver")
TD = "example.org"
WATCH_TIMEOUT_S = 2
IDLE_GRACE_MS = 500
BACKOFF_MAX_MS = 300

WEB_A = fx.pod("demo", "web-7d9f8b6c5d-aaaaa", "web", "node-1", ["10.244.1.5", "fd00:10:244:1::5"])
WEB_B = fx.pod("demo", "web-7d9f8b6c5d-bbbbb", "web", "node-2", ["10.244.2.7", "fd00:10:244:2::7"])
DB = fx.pod("demo", "db-5c4b3a2918-ccccc", "db", "node-1", ["10.244.1.9", "fd00:10:244:1::9"])
OUTSIDE = fx.pod("other", "job-6f5e4d3c2b-ddddd", "runner", "node-1", ["10.244.1.20"])
SVC = fx.service("demo", "web", ["10.96.0.20", "fd00:96::20"], [("http", 80, 8080)])


def slice_for(*pods_ready):
    return fx.endpointslice(
        "demo", "web", "x1", "IPv4",
        [(p["metadata"]["name"], p["status"]["podIP"], p["spec"]["nodeName"], ready) for p, ready in pods_ready],
        [("http", 8080)],
    )


def workload_line(p):
    m = p["metadata"]
    return "workload %s/%s spiffe://%s/ns/%s/sa/%s node=%s ips=%s" % (
        m["namespace"], m["name"], TD, m["namespace"], p["spec"]["serviceAccountName"],
        p["spec"]["nodeName"], ",".join(i["ip"] for i in p["status"]["podIPs"]))


def service_lines(ids):
    joined = ",".join(sorted(ids)) or "-"
    return ["service demo/web 10.96.0.20:80 " + joined, "service demo/web [fd00:96::20]:80 " + joined]


def expected(pods, ids):
    return sorted([workload_line(p) for p in pods] + service_lines(ids))


class Driver:
    """k8s_watch_driver as a process; its stdout lines collected by a thread."""

    def __init__(self, tmp_path, api, token_file, ca_file=None, server=None, extra=()):
        self.dump = tmp_path / "state.txt"
        self.lines = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [DRIVER, "--server", server or api.server, "--token-file", str(token_file), "--ca-file", str(ca_file or api.ca_file),
             "--trust-domain", TD, "--dump", str(self.dump), "--watch-timeout-s", str(WATCH_TIMEOUT_S),
             "--idle-grace-ms", str(IDLE_GRACE_MS), "--backoff-max-ms", str(BACKOFF_MAX_MS),
             *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_line(self, pattern, start=0, timeout=WAIT):
        rx = re.compile(pattern)
        with self.cond:
            ok = self.cond.wait_for(lambda: any(rx.search(l) for l in self.lines[start:]), timeout)
        assert ok, "no line matching %r in:\n%s" % (pattern, "\n".join(self.lines))

    def mark(self):
        with self.cond:
            return len(self.lines)

    def events_since(self, start):
        with self.cond:
            return [l for l in self.lines[start:] if l.startswith(("event ", "refused "))]

    def state(self):
        try:
            text = self.dump.read_text()
        except FileNotFoundError:
            return None, []
        header, *body = text.splitlines()
        return header, body

    def wait_state(self, lines, timeout=WAIT):
        def matches():
            header, body = self.state()
            return header is not None and header.startswith("synced=1") and body == lines
        try:
            wait_until(matches, "the driver's state", timeout)
        except AssertionError:
            raise AssertionError("state is\n%s\nwanted\n%s\nlog:\n%s" % (
                "\n".join(self.state()[1]), "\n".join(lines), "\n".join(self.lines)))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(WAIT)
        self.reader.join(WAIT)
        assert rc == 0, "\n".join(self.lines)
        stats = {}
        for l in self.lines:
            if l.startswith("stats "):
                parts = l.split()
                stats[parts[1]] = {k: int(v) for k, v in (p.split("=") for p in parts[2:])}
        return stats


@pytest.fixture
def bed(tmp_path):
    if not os.access(DRIVER, os.X_OK):
        pytest.fail("%s is missing: bazel build //tests/controlplane:k8s_watch_driver" % DRIVER)
    api = StandIn(tmp_path).start()
    token_file = tmp_path / "token"
    token_file.write_text(api.token + "\n")
    drivers = []

    def start_driver():
        d = Driver(tmp_path, api, token_file)
        drivers.append(d)
        d.wait_line("^all synced$")
        return d

    yield api, token_file, start_driver
    for d in drivers:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(WAIT)
    api.stop()


def seed(api):
    api.apply("add", "namespaces", fx.namespace("demo"))
    api.apply("add", "namespaces", fx.namespace("other", mesh=False))
    for p in (WEB_A, DB, OUTSIDE):
        api.apply("add", "pods", p)
    api.apply("add", "services", SVC)
    api.apply("add", "endpointslices", slice_for((WEB_A, True)))


def test_list_then_watch_then_modify_then_delete_give_exactly_the_api_state(bed):
    api, _, start_driver = bed
    seed(api)  # before the driver: learnt by LIST
    d = start_driver()
    d.wait_state(expected([WEB_A, DB], ["spiffe://example.org/ns/demo/sa/web"]))
    mark = d.mark()

    api.apply("add", "pods", WEB_B)  # by WATCH from here on
    api.apply("modify", "endpointslices", slice_for((WEB_A, True), (WEB_B, True)))
    d.wait_state(expected([WEB_A, WEB_B, DB], ["spiffe://example.org/ns/demo/sa/web"]))

    api.apply("modify", "pods", fx.terminating(WEB_A))  # terminating: leaves at once
    api.apply("modify", "endpointslices", slice_for((WEB_A, False), (WEB_B, True)))
    d.wait_state(expected([WEB_B, DB], ["spiffe://example.org/ns/demo/sa/web"]))

    api.apply("delete", "pods", WEB_A)
    api.apply("delete", "pods", DB)
    api.apply("delete", "endpointslices", slice_for())
    d.wait_state(expected([WEB_B], []))
    # The state file is written after the event's line is printed, but the
    # line may not have been read from the pipe yet: stop first, then every
    # line the driver printed is in.
    stats = d.stop()

    # Order is per watch (one per resource), so it is checked per resource.
    per_resource = {}
    for line in d.events_since(mark):
        per_resource.setdefault(line.split()[1], []).append(" ".join(line.split()[2:4]))
    assert per_resource == {
        "pods": ["ADDED demo/web-7d9f8b6c5d-bbbbb", "MODIFIED demo/web-7d9f8b6c5d-aaaaa",
                 "DELETED demo/web-7d9f8b6c5d-aaaaa", "DELETED demo/db-5c4b3a2918-ccccc"],
        "endpointslices": ["MODIFIED demo/web-x1", "MODIFIED demo/web-x1", "DELETED demo/web-x1"],
    }
    assert all(s["lists"] == 1 and s["failures"] == 0 for s in stats.values()), stats


@pytest.mark.parametrize("gone_as_http", [False, True], ids=["error-event-410", "http-410"])
def test_after_410_a_relist_reports_exactly_what_changed_while_away(tmp_path, gone_as_http):
    api = StandIn(tmp_path, extra_args=["--gone-as-http"] if gone_as_http else []).start()
    token_file = tmp_path / "token"
    token_file.write_text(api.token)
    d = None
    try:
        seed(api)
        d = Driver(tmp_path, api, token_file)
        d.wait_line("^all synced$")
        d.wait_state(expected([WEB_A, DB], ["spiffe://example.org/ns/demo/sa/web"]))
        # Lock the driver out, cut its watches, change things, forget history.
        api.admin("/admin/tokens", {"tokens": []})
        mark = d.mark()
        api.admin("/admin/drop")
        d.wait_line(r"^problem pods: .*HTTP 401", mark)
        api.apply("add", "pods", WEB_B)
        api.apply("modify", "pods", fx.terminating(DB))
        api.apply("delete", "pods", WEB_A)
        api.apply("modify", "endpointslices", slice_for((WEB_B, True)))
        api.admin("/admin/compact")
        mark = d.mark()
        api.admin("/admin/tokens", {"tokens": [api.token]})
        d.wait_state(expected([WEB_B], ["spiffe://example.org/ns/demo/sa/web"]))
        d.wait_line("^relisting pods: " + ("HTTP 410 Gone$" if gone_as_http
                                           else "ERROR event 410: too old resource version"), mark)
        d.wait_line("^synced pods ", mark)
        d.wait_line("^synced endpointslices ", mark)
        stats = d.stop()  # every printed line is read (see the first test)
        pod_events = sorted(" ".join(l.split()[1:4]) for l in d.events_since(mark) if l.split()[1] != "namespaces")
        assert pod_events == sorted([
            "pods ADDED demo/web-7d9f8b6c5d-bbbbb",
            "pods MODIFIED demo/db-5c4b3a2918-ccccc",
            "pods DELETED demo/web-7d9f8b6c5d-aaaaa",
            "endpointslices MODIFIED demo/web-x1",
        ])  # nothing unchanged (OUTSIDE, the Service, namespaces) is reported again
        assert stats["pods"]["relists_gone"] >= 1 and stats["pods"]["lists"] == 2, stats
    finally:
        if d is not None and d.proc.poll() is None:
            d.proc.kill()
        api.stop()


def test_a_restart_of_the_api_server_is_survived(bed):
    api, _, start_driver = bed
    seed(api)
    d = start_driver()
    d.wait_state(expected([WEB_A, DB], ["spiffe://example.org/ns/demo/sa/web"]))
    mark = d.mark()
    api.stop()
    d.wait_line(r"^problem pods: WATCH", mark)
    # Said once, whichever watch noticed first; the state is kept meanwhile.
    d.wait_line(r"^lost the API server \(\w+: .*\); keeping the cluster state as last seen "
                r"\(2 workloads\) until it answers$", mark)
    api.start()  # same ports, same objects and resourceVersion
    # Every watch resumes from its version (nothing changed: no relist) and
    # its 200 says the API answers again, before any event.
    d.wait_line(r"^regained the API server after \d+\.\d s: every watch answers again$", mark)
    api.apply("add", "pods", WEB_B)
    d.wait_state(expected([WEB_A, WEB_B, DB], ["spiffe://example.org/ns/demo/sa/web"]))
    rv = api.stats()["resourceVersion"]
    d.stop()  # every printed line is read (see the first test)
    assert [l for l in d.events_since(mark) if "pods" in l] == [
        "event pods ADDED demo/web-7d9f8b6c5d-bbbbb rv=%s" % rv]
    lines = d.lines[mark:]
    assert sum(l.startswith("lost the API server") for l in lines) == 1, lines
    assert sum(l.startswith("regained the API server") for l in lines) == 1, lines
    assert not any(l.startswith("relisting ") for l in lines), lines


def test_a_rotated_token_is_read_again_from_its_file(bed):
    api, token_file, start_driver = bed
    seed(api)
    d = start_driver()
    mark = d.mark()
    rotated = token_file.with_name(token_file.name + ".new")
    rotated.write_text("rotated-token\n")
    os.replace(rotated, token_file)  # as the kubelet swaps a projected token: never half-written
    api.admin("/admin/tokens", {"tokens": ["rotated-token"]})
    api.admin("/admin/drop")
    api.apply("add", "pods", WEB_B)
    # Only the new token is accepted now: the state can only follow if the
    # driver read it (a request already in flight with the old one may be
    # refused once and retried).
    d.wait_state(expected([WEB_A, WEB_B, DB], ["spiffe://example.org/ns/demo/sa/web"]))
    d.stop()  # every printed line is read (see the first test)
    assert d.lines[mark:].count("event pods ADDED demo/web-7d9f8b6c5d-bbbbb rv=9") == 1


def test_a_bookmark_spares_a_relist_after_history_is_compacted(bed):
    api, _, start_driver = bed
    d = start_driver()
    api.apply("add", "namespaces", fx.namespace("demo"))  # moves the global version past the pods'
    rv = api.stats()["resourceVersion"]
    d.wait_line("^event namespaces ADDED demo rv=%d$" % rv)
    api.admin("/admin/bookmark")
    d.wait_line("^bookmark pods rv=%d$" % rv)
    mark = d.mark()
    api.admin("/admin/compact")  # everything before rv is gone
    api.admin("/admin/drop")
    api.apply("add", "pods", WEB_B)
    d.wait_line("^event pods ADDED demo/web-7d9f8b6c5d-bbbbb ", mark)
    stats = d.stop()
    # The pods watch resumed from the bookmark's version: no 410, one LIST.
    assert stats["pods"]["relists_gone"] == 0 and stats["pods"]["lists"] == 1, stats


def test_a_silent_watch_is_re_established(bed):
    api, _, start_driver = bed
    seed(api)
    d = start_driver()
    mark = d.mark()
    api.admin("/admin/stall", {"on": True})
    d.wait_line(r"^problem pods: WATCH .*silent past its timeout", mark)
    api.admin("/admin/stall", {"on": False})
    api.apply("add", "pods", WEB_B)
    d.wait_state(expected([WEB_A, WEB_B, DB], ["spiffe://example.org/ns/demo/sa/web"]))
    stats = d.stop()
    assert stats["pods"]["idle_restarts"] >= 1, stats


def test_a_server_certificate_from_another_ca_is_refused(bed, tmp_path):
    api, token_file, _ = bed
    other = StandIn(tmp_path / "other").start()  # its own, different CA
    other.stop()
    d = Driver(tmp_path, api, token_file, ca_file=other.ca_file)
    d.wait_line(r"^problem namespaces: LIST .*\(HTTP 0\)")
    assert not any(l == "all synced" for l in d.lines)
    d.stop()


def test_a_server_named_by_host_name_is_checked_against_its_dns_san(bed, tmp_path):
    api, token_file, _ = bed
    seed(api)
    d = Driver(tmp_path, api, token_file, server="https://localhost:%d" % api.port)
    d.wait_line("^all synced$")
    d.stop()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_server_certificate_that_does_not_name_the_host_is_refused(tmp_path, host):
    api = StandIn(tmp_path / "api", extra_args=["--san", "DNS:kubernetes.default.svc"]).start()
    try:
        token_file = tmp_path / "token"
        token_file.write_text(api.token + "\n")
        d = Driver(tmp_path, api, token_file, server="https://%s:%d" % (host, api.port))
        d.wait_line(r"^problem namespaces: LIST .*certificate verification failed: .*mismatch.*\(HTTP 0\)")
        assert not any(l == "all synced" for l in d.lines)
        d.stop()
    finally:
        api.stop()


def test_a_paged_list_gives_the_same_state_and_an_expired_token_lists_again(tmp_path):
    """LIST in pages (limit/continue, as client-go does at 500): the state
    is the same as one big LIST; a continue token that expired between two
    pages (etcd compacted that revision) starts the LIST over, and nothing
    is reported twice."""
    api = StandIn(tmp_path / "api").start()
    try:
        api.apply("add", "namespaces", fx.namespace("demo"))
        pods = [fx.pod("demo", "web-7d9f8b6c5d-%05d" % i, "web", "node-%d" % (i % 3),
                       ["10.244.%d.%d" % (i % 3, i + 10)]) for i in range(7)]
        for p in pods:
            api.apply("add", "pods", p)
        token_file = tmp_path / "token"
        token_file.write_text(api.token)
        api.admin("/admin/expire_continue")  # the first LIST's second page
        d = Driver(tmp_path, api, token_file, extra=("--list-page-size", "3"))
        d.wait_state(sorted(workload_line(p) for p in pods))  # no Service: no service line
        d.wait_line(r"continue token expired \(HTTP 410\); listing again from the first page")
        stats = d.stop()
        added = [l for l in d.events_since(0) if l.split()[1:3] == ["pods", "ADDED"]]
        assert len(added) == 7, d.lines  # once each, though the first LIST was cut short
        assert stats["pods"]["lists"] == 1, stats
        assert stats["pods"]["list_pages"] >= 4, stats  # 1 expired + 3 of 3, 3, 1
    finally:
        api.stop()
