"""The stand-in behaves like kube-apiserver on the wire: checked with real
peers (curl over HTTP/2 and HTTP/1.1, Python's http.client over verified
TLS, which offers no ALPN and so gets HTTP/1.1)."""

import json
import subprocess
import time
from urllib.parse import quote

import pytest

import fixtures as fx
from standin import StandIn, wait_until


@pytest.fixture
def api(tmp_path):
    s = StandIn(tmp_path).start()
    yield s
    s.stop()


def read_events(resp, count):
    events = []
    for _ in range(count):
        line = resp.readline()
        assert line.endswith(b"\n"), line
        events.append(json.loads(line))
    return events


def test_a_request_without_a_known_bearer_token_is_401_unauthorized(api):
    out = subprocess.run(
        ["curl", "-sS", "--http1.1", "--max-time", "10", "--cacert", str(api.ca_file),
         "-w", "\n%{http_code} %{http_version}", api.server + "/api/v1/pods"],
        capture_output=True, text=True, check=True,
    )
    body, code = out.stdout.rsplit("\n", 1)
    assert code == "401 1.1"
    assert json.loads(body)["kind"] == "Status" and json.loads(body)["code"] == 401
    conn, resp = api.get("/api/v1/pods", token="wrong")
    assert resp.status == 401
    conn.close()


def test_curl_lists_pods_as_a_podlist_with_a_resource_version(api):
    api.apply("add", "pods", fx.pod("demo", "web-7d9f8b6c5d-abcde", "web", "node-1", ["10.244.1.5", "fd00:10:244:1::5"]))
    out = subprocess.run(
        ["curl", "-sS", "--http2", "--fail", "--max-time", "10", "--cacert", str(api.ca_file),
         "-H", "Authorization: Bearer " + api.token, "-w", "\n%{http_version}", api.server + "/api/v1/pods"],
        capture_output=True, text=True, check=True,
    )
    text, version = out.stdout.rsplit("\n", 1)
    assert version == "2"  # ALPN chose h2, as kube-apiserver does for client-go
    body = json.loads(text)
    assert body["kind"] == "PodList" and body["apiVersion"] == "v1"
    assert body["metadata"]["resourceVersion"] == str(api.stats()["resourceVersion"])
    [item] = body["items"]
    assert item["status"]["podIPs"] == [{"ip": "10.244.1.5"}, {"ip": "fd00:10:244:1::5"}]
    assert item["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    assert "kind" not in item  # the API leaves it to the list


@pytest.mark.parametrize(
    "path,kind",
    [("/api/v1/services", "ServiceList"), ("/api/v1/namespaces", "NamespaceList"),
     ("/apis/discovery.k8s.io/v1/endpointslices", "EndpointSliceList")],
)
def test_every_resource_lists_with_its_list_kind(api, path, kind):
    conn, resp = api.get(path)
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 200 and body["kind"] == kind and body["items"] == []


def test_a_watch_from_the_list_version_streams_added_modified_deleted_in_order(api):
    conn, resp = api.get("/api/v1/services")
    rv = json.loads(resp.read())["metadata"]["resourceVersion"]
    conn.close()
    conn, resp = api.get("/api/v1/services?watch=1&resourceVersion=%s&allowWatchBookmarks=true&timeoutSeconds=30" % rv)
    assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
    svc = fx.service("demo", "web", ["10.96.0.20", "fd00:96::20"], [("http", 80, 8080)])
    api.apply("add", "services", svc)
    svc["spec"]["ports"].append({"name": "grpc", "port": 9090, "protocol": "TCP", "targetPort": 9090})
    api.apply("modify", "services", svc)
    api.apply("delete", "services", svc)
    events = read_events(resp, 3)
    conn.close()
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert all(e["object"]["kind"] == "Service" for e in events)
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)


def test_a_bookmark_carries_only_a_newer_resource_version(api):
    conn, resp = api.get("/api/v1/pods?watch=1&resourceVersion=1&allowWatchBookmarks=true&timeoutSeconds=30")
    api.apply("add", "namespaces", fx.namespace("demo"))  # another resource moves the version on
    api.admin("/admin/bookmark")
    [event] = read_events(resp, 1)
    conn.close()
    assert event["type"] == "BOOKMARK"
    assert event["object"]["kind"] == "Pod"
    assert event["object"]["metadata"] == {"resourceVersion": str(api.stats()["resourceVersion"])}


def test_a_watch_from_a_compacted_version_gets_an_error_event_410_expired(api):
    api.apply("add", "namespaces", fx.namespace("demo"))
    api.admin("/admin/compact")
    conn, resp = api.get("/api/v1/namespaces?watch=1&resourceVersion=1&allowWatchBookmarks=true")
    assert resp.status == 200
    [event] = read_events(resp, 1)
    assert resp.read() == b""  # and the stream ends
    conn.close()
    assert event["type"] == "ERROR"
    assert event["object"]["kind"] == "Status"
    assert event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"


def test_a_stale_watch_can_be_answered_with_http_410_gone(tmp_path):
    api = StandIn(tmp_path, extra_args=["--gone-as-http"]).start()
    try:
        api.apply("add", "namespaces", fx.namespace("demo"))
        api.admin("/admin/compact")
        conn, resp = api.get("/api/v1/namespaces?watch=1&resourceVersion=1")
        body = json.loads(resp.read())
        conn.close()
        assert resp.status == 410 and body["code"] == 410 and body["reason"] == "Expired"
    finally:
        api.stop()


def test_a_watch_ends_cleanly_at_its_timeout(api):
    conn, resp = api.get("/api/v1/pods?watch=1&resourceVersion=1&timeoutSeconds=1")
    assert resp.read() == b""  # terminating chunk, no event
    conn.close()


def test_a_watch_without_a_version_starts_with_the_current_objects_as_added(api):
    api.apply("add", "namespaces", fx.namespace("demo"))
    conn, resp = api.get("/api/v1/namespaces?watch=1&timeoutSeconds=30")
    [event] = read_events(resp, 1)
    conn.close()
    assert event["type"] == "ADDED" and event["object"]["metadata"]["name"] == "demo"


def test_objects_and_the_resource_version_survive_a_restart(api):
    api.apply("add", "namespaces", fx.namespace("demo"))
    rv = api.stats()["resourceVersion"]
    api.restart()
    assert api.stats()["resourceVersion"] == rv
    conn, resp = api.get("/api/v1/namespaces")
    body = json.loads(resp.read())
    conn.close()
    assert [i["metadata"]["name"] for i in body["items"]] == ["demo"]


def test_preloaded_objects_are_listed_in_order_and_not_replayed_to_a_watch(tmp_path):
    pods = [fx.pod("demo", "web-7d9f8b6c5d-%05d" % i, "web", "node-%d" % (i % 3), ["10.244.0.%d" % i])
            for i in (3, 1, 2)]
    objects = tmp_path / "objects.json"
    objects.write_text(json.dumps({"namespaces": [fx.namespace("demo")], "pods": pods}))
    api = StandIn(tmp_path / "api", keep_state=False, objects_file=objects).start()
    try:
        conn, resp = api.get("/api/v1/pods")
        text = resp.read()
        conn.close()
        body = json.loads(text)
        # Byte for byte what encoding the whole list at once gives.
        assert text == json.dumps(body).encode() + b"\n"
        assert [i["metadata"]["name"] for i in body["items"]] == [
            "web-7d9f8b6c5d-00001", "web-7d9f8b6c5d-00002", "web-7d9f8b6c5d-00003"]
        assert all(i["metadata"]["uid"] and "kind" not in i for i in body["items"])
        assert body["metadata"]["resourceVersion"] == str(api.stats()["resourceVersion"])
        # They were there before the history: a watch from the start is 410.
        conn, resp = api.get("/api/v1/pods?watch=1&resourceVersion=1")
        [event] = read_events(resp, 1)
        conn.close()
        assert event["type"] == "ERROR" and event["object"]["code"] == 410
        assert not (tmp_path / "api" / "state.json").exists()
    finally:
        api.stop()


def test_the_time_a_watch_first_wrote_each_event_is_kept(api):
    conn, resp = api.get("/api/v1/pods")
    rv = json.loads(resp.read())["metadata"]["resourceVersion"]
    conn.close()
    conn, resp = api.get("/api/v1/pods?watch=1&resourceVersion=%s&timeoutSeconds=30" % rv)
    before = time.monotonic()
    added = api.apply("add", "pods", fx.pod("demo", "web-7d9f8b6c5d-aaaaa", "web", "node-1", ["10.244.1.5"]))
    [event] = read_events(resp, 1)
    after = time.monotonic()
    conn.close()
    event_rv = int(event["object"]["metadata"]["resourceVersion"])
    assert event_rv == int(added["metadata"]["resourceVersion"])
    emitted = api.emitted()
    assert before <= emitted[event_rv] <= after  # the same clock as this process's
    api.apply("add", "namespaces", fx.namespace("demo"))  # nobody watches namespaces
    assert set(api.emitted()) == {event_rv}


def test_the_jwks_survives_a_restart(api):
    keys = {"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig", "alg": "ES256",
                      "x": "AA", "y": "AA"}]}
    api.admin("/admin/jwks", keys)
    api.restart()
    conn, resp = api.get("/openid/v1/jwks")
    assert json.loads(resp.read()) == keys
    conn.close()


def curl_discovery(api, token=None):
    out = subprocess.run(
        ["curl", "-sS", "--http2", "--max-time", "10", "--cacert", str(api.ca_file),
         "-H", "Authorization: Bearer " + (token or api.token), "-w", "\n%{http_code} %{http_version}",
         api.server + "/.well-known/openid-configuration"],
        capture_output=True, text=True, check=True,
    )
    body, code = out.stdout.rsplit("\n", 1)
    return code, body


def test_the_openid_configuration_has_kube_apiservers_shape(api):
    code, body = curl_discovery(api)
    assert code == "200 2"
    assert body.endswith("\n")  # the real server's JSON encoder ends with one
    assert json.loads(body) == {
        "issuer": "https://kubernetes.default.svc.cluster.local",  # kubeadm's default
        "jwks_uri": api.server + "/openid/v1/jwks",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }
    # The algorithms follow the published keys; the issuer is the server's flag.
    api.admin("/admin/jwks", {"keys": [{"kty": "EC", "alg": "ES256"}, {"kty": "RSA", "alg": "RS256"}]})
    api.discovery(issuer="https://oidc.eks.eu-west-1.amazonaws.com/id/ABC")
    doc = json.loads(curl_discovery(api)[1])
    assert doc["issuer"] == "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC"
    assert doc["id_token_signing_alg_values_supported"] == ["ES256", "RS256"]
    assert curl_discovery(api, token="wrong")[0] == "401 2"
    assert api.stats()["discovery_requests"] == 2  # the refused one is not served


def test_the_issuer_can_be_set_at_start(tmp_path):
    s = StandIn(tmp_path, extra_args=["--issuer", "https://container.googleapis.com/v1/x"]).start()
    try:
        assert json.loads(curl_discovery(s)[1])["issuer"] == "https://container.googleapis.com/v1/x"
    finally:
        s.stop()


def test_the_discovery_document_answers_badly_on_request_and_well_again(api):
    api.discovery(status=200, body="<html>not json</html>")
    assert curl_discovery(api) == ("200 2", "<html>not json</html>")
    api.discovery(status=503)
    code, body = curl_discovery(api)
    assert code == "503 2" and json.loads(body)["kind"] == "Status"
    api.discovery()
    code, body = curl_discovery(api)
    assert code == "200 2" and json.loads(body)["issuer"] == "https://kubernetes.default.svc.cluster.local"


def test_changes_made_while_it_is_down_are_served_after_the_restart_and_410_older_watches(api):
    api.apply("add", "namespaces", fx.namespace("demo"))
    rv = api.stats()["resourceVersion"]
    api.stop()
    api.apply_offline("add", "namespaces", fx.namespace("later"))
    api.start()
    assert api.stats()["resourceVersion"] == rv + 1
    conn, resp = api.get("/api/v1/namespaces")
    assert [i["metadata"]["name"] for i in json.loads(resp.read())["items"]] == ["demo", "later"]
    conn.close()
    # Its history starts after the change: a watch from before it is too old.
    conn, resp = api.get("/api/v1/namespaces?watch=1&resourceVersion=%d" % rv)
    [event] = read_events(resp, 1)
    conn.close()
    assert event["type"] == "ERROR" and event["object"]["code"] == 410


def test_410_can_be_switched_between_an_error_event_and_http_410(api):
    api.apply("add", "namespaces", fx.namespace("demo"))
    api.admin("/admin/compact")
    assert api.admin("/admin/gone", {"as_http": True}) == (200, {"as_http": True})
    conn, resp = api.get("/api/v1/namespaces?watch=1&resourceVersion=1")
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 410 and body["code"] == 410 and body["reason"] == "Expired"
    assert api.admin("/admin/gone", {"as_http": False}) == (200, {"as_http": False})
    conn, resp = api.get("/api/v1/namespaces?watch=1&resourceVersion=1")
    assert resp.status == 200
    [event] = read_events(resp, 1)
    conn.close()
    assert event["type"] == "ERROR" and event["object"]["code"] == 410


def test_tokens_can_be_rotated(api):
    api.admin("/admin/tokens", {"tokens": ["rotated"]})
    conn, resp = api.get("/api/v1/pods")
    assert resp.status == 401
    resp.read()
    conn.close()
    conn, resp = api.get("/api/v1/pods", token="rotated")
    assert resp.status == 200
    conn.close()


def test_curl_over_http2_gets_401_and_watch_events_as_json_lines(api):
    out = subprocess.run(
        ["curl", "-sS", "--http2", "--max-time", "10", "--cacert", str(api.ca_file),
         "-w", "\n%{http_code} %{http_version}", api.server + "/api/v1/pods"],
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.rsplit("\n", 1)[1] == "401 2"
    api.apply("add", "namespaces", fx.namespace("demo"))
    api.apply("add", "namespaces", fx.namespace("other"))
    # A watch that ends at its timeout: curl's whole output is the event lines.
    out = subprocess.run(
        ["curl", "-sS", "--http2", "--fail", "--max-time", "10", "--cacert", str(api.ca_file),
         "-H", "Authorization: Bearer " + api.token, "-w", "%{http_version}",
         api.server + "/api/v1/namespaces?watch=1&resourceVersion=1&timeoutSeconds=1"],
        capture_output=True, text=True, check=True,
    )
    lines = out.stdout.split("\n")
    assert lines[-1] == "2"
    events = [json.loads(line) for line in lines[:-1]]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "demo"), ("ADDED", "other")]


def test_curl_over_http2_sees_410_expired_as_an_error_event(api):
    api.apply("add", "namespaces", fx.namespace("demo"))
    api.admin("/admin/compact")
    out = subprocess.run(
        ["curl", "-sS", "--http2", "--fail", "--max-time", "10", "--cacert", str(api.ca_file),
         "-H", "Authorization: Bearer " + api.token,
         api.server + "/api/v1/namespaces?watch=1&resourceVersion=1&allowWatchBookmarks=true"],
        capture_output=True, text=True, check=True,
    )
    [event] = [json.loads(line) for line in out.stdout.splitlines()]
    assert event["type"] == "ERROR" and event["object"]["code"] == 410


def test_a_drop_cuts_an_http2_watch_mid_stream(api):
    proc = subprocess.Popen(
        ["curl", "-sS", "-N", "--http2", "--max-time", "20", "--cacert", str(api.ca_file),
         "-H", "Authorization: Bearer " + api.token,
         api.server + "/api/v1/namespaces?watch=1&timeoutSeconds=30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_until(lambda: api.stats()["watches"] == 1, "the watch to be open")
        api.admin("/admin/drop")
        _, err = proc.communicate(timeout=15)
        assert proc.returncode != 0, err  # no END_STREAM: the client sees a failure
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def get_json(api, path):
    conn, resp = api.get(path)
    try:
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_a_paged_list_serves_every_page_from_the_first_pages_snapshot(api):
    pods = [fx.pod("demo", "web-7d9f8b6c5d-%05d" % i, "web", "node-1", ["10.244.1.%d" % (i + 1)])
            for i in range(5)]
    for p in pods:
        api.apply("add", "pods", p)
    code, first = get_json(api, "/api/v1/pods?limit=2")
    assert code == 200 and len(first["items"]) == 2
    assert first["metadata"]["remainingItemCount"] == 3
    token = first["metadata"]["continue"]
    # A pod that comes after the first page is not in this list: the pages
    # are one consistent snapshot (the watch from its version will show it).
    api.apply("add", "pods", fx.pod("demo", "web-7d9f8b6c5d-late0", "web", "node-1", ["10.244.1.99"]))
    names = [i["metadata"]["name"] for i in first["items"]]
    while token:
        code, page = get_json(api, "/api/v1/pods?limit=2&continue=" + quote(token, safe=""))
        assert code == 200, page
        assert page["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
        names += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue")
    assert names == sorted(p["metadata"]["name"] for p in pods)


def test_an_expired_continue_token_gets_410_expired(api):
    for i in range(3):
        api.apply("add", "pods", fx.pod("demo", "web-%d" % i, "web", "node-1", ["10.244.1.%d" % (i + 1)]))
    _, first = get_json(api, "/api/v1/pods?limit=1")
    token = quote(first["metadata"]["continue"], safe="")
    api.apply("add", "pods", fx.pod("demo", "web-9", "web", "node-1", ["10.244.1.9"]))
    api.admin("/admin/compact")
    code, body = get_json(api, "/api/v1/pods?limit=1&continue=" + token)
    assert code == 410 and body["reason"] == "Expired", body
    assert body["message"].startswith("The provided continue parameter is too old")
    code, body = get_json(api, "/api/v1/pods?limit=1&continue=bm90LWEtdG9rZW4=")
    assert code == 410, body


ISTIO = "/apis/security.istio.io"
ALLOW_FRONTEND = {
    "selector": {"matchLabels": {"app": "backend"}},
    "action": "ALLOW",
    "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/demo/sa/frontend"]}}]}],
}


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
@pytest.mark.parametrize(
    "plural,kind",
    [("authorizationpolicies", "AuthorizationPolicyList"), ("peerauthentications", "PeerAuthenticationList")],
)
def test_istios_kinds_list_at_both_versions_with_the_version_asked_for(api, version, plural, kind):
    conn, resp = api.get("%s/%s/%s" % (ISTIO, version, plural))
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 200 and body["kind"] == kind
    assert body["apiVersion"] == "security.istio.io/" + version and body["items"] == []


def test_an_authorization_policy_is_listed_and_watched_at_v1beta1_as_at_v1(api):
    conn, resp = api.get(ISTIO + "/v1beta1/authorizationpolicies?watch=1&resourceVersion=1&timeoutSeconds=30")
    policy = fx.authorization_policy("demo", "backend-allow", ALLOW_FRONTEND)
    api.apply("add", "authorizationpolicies", policy)
    policy["spec"]["action"] = "DENY"
    api.apply("modify", "authorizationpolicies", policy)
    events = read_events(resp, 2)
    conn.close()
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED"]
    assert all(e["object"]["apiVersion"] == "security.istio.io/v1beta1" for e in events)
    assert events[1]["object"]["spec"]["action"] == "DENY"
    for version in ("v1", "v1beta1"):
        conn, resp = api.get("%s/%s/authorizationpolicies" % (ISTIO, version))
        [item] = json.loads(resp.read())["items"]
        conn.close()
        assert item["metadata"]["name"] == "backend-allow" and item["spec"]["action"] == "DENY"


def test_a_namespaced_collection_lists_and_watches_that_namespace_alone(api):
    api.apply("add", "peerauthentications", fx.peer_authentication("demo", "strict", {"mtls": {"mode": "STRICT"}}))
    api.apply("add", "peerauthentications", fx.peer_authentication("other", "strict", {"mtls": {"mode": "STRICT"}}))
    conn, resp = api.get(ISTIO + "/v1/namespaces/demo/peerauthentications")
    body = json.loads(resp.read())
    conn.close()
    assert [i["metadata"]["namespace"] for i in body["items"]] == ["demo"]
    conn, resp = api.get(ISTIO + "/v1/namespaces/demo/peerauthentications?watch=1&resourceVersion=%s&timeoutSeconds=30"
                         % body["metadata"]["resourceVersion"])
    api.apply("add", "peerauthentications", fx.peer_authentication("other", "permissive", {"mtls": {"mode": "PERMISSIVE"}}))
    api.apply("add", "peerauthentications", fx.peer_authentication("demo", "permissive", {"mtls": {"mode": "PERMISSIVE"}}))
    [event] = read_events(resp, 1)
    conn.close()
    assert event["object"]["metadata"]["namespace"] == "demo" and event["object"]["metadata"]["name"] == "permissive"


def test_a_group_version_taken_away_answers_404_until_served_again(api):
    api.serve("security.istio.io/v1", False)
    for path in (ISTIO + "/v1/authorizationpolicies", ISTIO + "/v1/namespaces/demo/peerauthentications",
                 ISTIO + "/v1/authorizationpolicies?watch=1&resourceVersion=1"):
        conn, resp = api.get(path)
        body = json.loads(resp.read())
        conn.close()
        assert resp.status == 404 and body["kind"] == "Status" and body["reason"] == "NotFound", path
    conn, resp = api.get(ISTIO + "/v1beta1/authorizationpolicies")
    resp.read()
    conn.close()
    assert resp.status == 200
    api.serve("security.istio.io/v1", True)
    conn, resp = api.get(ISTIO + "/v1/authorizationpolicies")
    resp.read()
    conn.close()
    assert resp.status == 200


def test_an_unknown_istio_version_or_kind_is_404(api):
    for path in (ISTIO + "/v1alpha9/authorizationpolicies", ISTIO + "/v1/requestauthentications"):
        conn, resp = api.get(path)
        resp.read()
        conn.close()
        assert resp.status == 404, path
