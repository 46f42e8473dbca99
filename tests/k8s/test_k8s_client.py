"""mtls-ca's Kubernetes API client (controlplane/k8s_client.h) on its own:
one GET through k8s_get_driver against the stand-in over HTTP/2. Needs
`bazel build //tests/controlplane:k8s_get_driver` (K8S_GET_DRIVER_BIN
picks another build)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

import fixtures as fx
from standin import WAIT, StandIn

REPO = Path(__file__).resolve().parents[2]
DRIVER = os.environ.get("K8S_GET_DRIVER_BIN") or str(REPO / "bazel-bin" / "tests" / "controlplane" / "k8s_get_driver")
# Bigger than the stream window the client grants (1 MiB), so the body
# only arrives whole if WINDOW_UPDATEs flow.
BIG_LIST_BYTES = 3 << 20
ANNOTATION_BYTES = 100 << 10


@pytest.fixture
def api(tmp_path):
    if not os.access(DRIVER, os.X_OK):
        pytest.fail("%s is missing: bazel build //tests/controlplane:k8s_get_driver" % DRIVER)
    s = StandIn(tmp_path / "api").start()
    s.token_file = tmp_path / "token"
    s.token_file.write_text(s.token + "\n")
    yield s
    s.stop()


def get(api, path, *extra, server=None):
    out = subprocess.run(
        [DRIVER, "--server", server or api.server, "--token-file", str(api.token_file),
         "--ca-file", str(api.ca_file), "--path", path] + list(extra),
        capture_output=True, text=True, timeout=WAIT,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_list_larger_than_the_flow_control_window_arrives_whole(api, tmp_path):
    count = BIG_LIST_BYTES // ANNOTATION_BYTES
    for i in range(count):
        pod = fx.pod("demo", "big-%d" % i, "web", "node-1", ["10.244.1.%d" % (i % 250 + 1)])
        pod["metadata"]["annotations"] = {"filler": "x" * ANNOTATION_BYTES}
        api.apply("add", "pods", pod)
    body = tmp_path / "body.json"
    line = get(api, "/api/v1/pods", "--body", str(body))
    assert line.startswith("status=200 ") and line.endswith(" error="), line
    doc = json.loads(body.read_bytes())
    assert len(doc["items"]) == count
    assert doc["metadata"]["resourceVersion"] == str(api.stats()["resourceVersion"])
    assert body.stat().st_size > BIG_LIST_BYTES


def test_an_error_answer_is_a_status_with_its_body(api):
    api.admin("/admin/tokens", {"tokens": ["another"]})
    line = get(api, "/api/v1/pods")
    assert line.startswith("status=401 ") and line.endswith(" error="), line


def test_a_request_past_its_total_timeout_ends_with_the_reason(api):
    api.admin("/admin/stall", {"on": True})
    line = get(api, "/api/v1/pods?watch=1&resourceVersion=1&timeoutSeconds=30", "--timeout-ms", "300")
    api.admin("/admin/stall", {"on": False})
    assert line == "status=200 bytes=0 chunks=0 error=timed out after 300 ms", line


def test_a_receiver_that_stops_reading_resets_the_stream(api):
    api.apply("add", "namespaces", fx.namespace("demo"))
    line = get(api, "/api/v1/namespaces?watch=1&timeoutSeconds=30", "--abort-after-bytes", "1")
    assert line.startswith("status=200 ") and line.endswith("error=the transfer was aborted by its receiver"), line


def test_a_cancelled_watch_calls_back_no_more(api):
    api.apply("add", "namespaces", fx.namespace("demo"))
    line = get(api, "/api/v1/namespaces?watch=1&timeoutSeconds=30", "--cancel-after-bytes", "1")
    assert line.startswith("cancelled bytes="), line


def test_a_server_that_does_not_offer_h2_is_refused(tmp_path):
    api = StandIn(tmp_path / "api", extra_args=["--http1-only"]).start()
    try:
        api.token_file = tmp_path / "token"
        api.token_file.write_text(api.token + "\n")
        line = get(api, "/api/v1/pods")
        assert line.startswith("status=0 bytes=0 chunks=0 error=TLS: peer did not negotiate ALPN \"h2\""), line
    finally:
        api.stop()


def test_a_server_that_is_not_listening_is_a_connect_error(api):
    api.stop()
    line = get(api, "/api/v1/pods")
    assert line.startswith("status=0 bytes=0 chunks=0 error=connect to https://127.0.0.1:"), line
