#!/usr/bin/python3
"""A stand-in for kube-apiserver, for tests (no Debian package ships a real one).

On the wire it behaves as kube-apiserver does for a watcher (PROTOCOL.md 9):
HTTPS with ALPN: HTTP/2 (hyper-h2, Debian's python3-h2) for clients that
offer "h2", as Go's net/http serves client-go, else HTTP/1.1;
`Authorization: Bearer` (401 Status without a known token), LIST of
pods, services, namespaces, discovery.k8s.io/v1 endpointslices and Istio's
security.istio.io authorizationpolicies and peerauthentications with
`metadata.resourceVersion`, and WATCH (`?watch=1&resourceVersion=N
&allowWatchBookmarks=true&timeoutSeconds=S`): a stream of JSON lines
`{"type": ..., "object": ...}` (DATA frames in HTTP/2, chunks in HTTP/1.1). A resourceVersion older than the history it
still keeps gets an ERROR event with a 410 "Expired" Status (as the real
server does for watches), or HTTP 410 when --gone-as-http is set.

LIST pages as the real server does with `limit=N`: `metadata.continue`
(base64 of a small JSON, as kube-apiserver's tokens are) and
`remainingItemCount` while items remain; `continue=TOKEN` serves the next
page from the first page's snapshot (etcd keeps that revision), and a
token whose snapshot is older than the compacted history gets HTTP 410
"Expired", as the real server answers an expired continue token.

GET of one object by name for cluster-scoped resources
(`/api/v1/nodes/NAME`, `/api/v1/namespaces/NAME`): the object with its kind
and apiVersion, or 404 with a NotFound Status (`nodes "x" not found`), as
kube-apiserver answers.

Istio's two kinds are one set of objects served at both versions Istio
serves, /apis/security.istio.io/v1/<plural> and .../v1beta1/<plural> (the
same schema; apiVersion says the version asked for), all namespaces or one
(/apis/security.istio.io/<version>/namespaces/<ns>/<plural>), for LIST and
WATCH alike. /admin/serve can take a group/version away (404, as when the
CRD does not define it or is not installed).

What it is not: no field or label selectors, no writes through
the API. Objects change through the admin port (plain HTTP on 127.0.0.1):

  POST /admin/apply   {"op": "add"|"modify"|"delete", "resource": "pods", "object": {...}}
  POST /admin/compact  forget all history: every older resourceVersion is now 410
  POST /admin/drop     end every open watch stream at once (as an apiserver restart does)
  POST /admin/stall    {"on": true|false} open watches go silent (no events, no end)
  POST /admin/expire_continue  the next LIST with a continue token gets 410 Expired (as
                       when etcd compacts the revision between two pages)
  POST /admin/bookmark send a BOOKMARK now on every watch that asked for them
  POST /admin/gone     {"as_http": true|false} how a too-old watch is refused from now
                       on: HTTP 410 (true) or an ERROR event with code 410 in a 200
                       stream (false; the start-up default unless --gone-as-http)
  POST /admin/tokens   {"tokens": [...]} the bearer tokens accepted from now on
  POST /admin/forbid   {"resources": ["nodes", ...]} every GET, LIST and WATCH of these
                       is answered 403 Forbidden from now on, as when RBAC lacks the verb
  POST /admin/jwks     {"keys": [...]} the JSON Web Key Set served at /openid/v1/jwks
                       (kube-apiserver's service-account issuer keys; {"keys": []} before)
  POST /admin/discovery  what /.well-known/openid-configuration answers from now on:
                       {"issuer": URL} the real document with that issuer (as after
                       --service-account-issuer=URL); {"status": N, "body": TEXT} that
                       status and raw body instead (a bad answer; "status" alone: a
                       Status object); {} the real document again
  POST /admin/serve    {"group_version": "security.istio.io/v1", "served": false|true}
                       every path of that group/version answers 404 NotFound from now
                       on (false), or is served again (true): Istio before 1.22 (no v1),
                       or no Istio CRD at all (neither version)
  GET  /admin/stats    {"resourceVersion": N, "watches": N, "lists": N, "list_pages": N,
                        "watch_requests": N, "jwks_requests": N, "discovery_requests": N}
  GET  /admin/emitted  {"clock": "CLOCK_MONOTONIC", "emitted": {"<rv>": seconds}}: when a
                       watch stream first wrote each event (time.monotonic(), which
                       is the machine's CLOCK_MONOTONIC, so other processes can compare)

--objects FILE starts with a cluster that already holds the objects of FILE
({"pods": [...], "services": [...], ...}), as after an etcd compaction: no
history, so they are listed, not replayed to a watch.

/.well-known/openid-configuration is the service-account issuer's OpenID
provider configuration, shaped as kube-apiserver's: "issuer" (--issuer, by
default kubeadm's https://kubernetes.default.svc.cluster.local), "jwks_uri"
(https://<this server>/openid/v1/jwks), "response_types_supported"
["id_token"], "subject_types_supported" ["public"] and
"id_token_signing_alg_values_supported" (the algorithms of the published
keys; RS256 while there are none).

Start-up prints one line `standin listening https://127.0.0.1:P admin
http://127.0.0.1:A` on stdout. With --state-file the objects and the
resourceVersion survive a restart (etcd does for the real server), and so
does the JWKS (the real server's keys come from its flags); history does
not, so a watch from before the restart gets 410, as it may on a real
cluster. Changes made while it is down (another API server writing to etcd)
go through apply_offline(), which edits the state file as /admin/apply
would.
"""

import argparse
import base64
import bisect
import datetime
import json
import os
import select
import socket
import ssl
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# path -> (kind of the items, list kind, apiVersion)
RESOURCES = {
    "/api/v1/pods": ("pods", "Pod", "PodList", "v1"),
    "/api/v1/services": ("services", "Service", "ServiceList", "v1"),
    "/api/v1/namespaces": ("namespaces", "Namespace", "NamespaceList", "v1"),
    "/api/v1/nodes": ("nodes", "Node", "NodeList", "v1"),
    "/apis/discovery.k8s.io/v1/endpointslices": (
        "endpointslices",
        "EndpointSlice",
        "EndpointSliceList",
        "discovery.k8s.io/v1",
    ),
    "/apis/security.istio.io/v1/authorizationpolicies": (
        "authorizationpolicies",
        "AuthorizationPolicy",
        "AuthorizationPolicyList",
        "security.istio.io/v1",
    ),
    "/apis/security.istio.io/v1/peerauthentications": (
        "peerauthentications",
        "PeerAuthentication",
        "PeerAuthenticationList",
        "security.istio.io/v1",
    ),
}
# Groups served at more than one version (the objects are stored once, at
# the first version; the others rewrite apiVersion).
MULTI_VERSION_GROUPS = {"security.istio.io": ("v1", "v1beta1")}
BY_NAME = {v[0]: (path,) + v for path, v in RESOURCES.items()}
# Cluster-scoped collections that also answer GET <collection>/NAME.
BY_PATH_NAMED = {"/api/v1/nodes": True, "/api/v1/namespaces": True}

DEFAULT_WATCH_TIMEOUT_S = 1800  # what kube-apiserver picks between 30 and 60 min
MAX_BODY_BYTES = 4 << 20


def now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(code, reason, message):
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def forbidden(resource, verb, name=None):
    """What kube-apiserver answers when RBAC does not grant |verb|."""
    what = '%s "%s"' % (resource, name) if name else resource
    return status(403, "Forbidden",
                  '%s is forbidden: User "system:serviceaccount:mtls-system:mtls-ca" cannot %s '
                  'resource "%s" in API group "" at the cluster scope' % (what, verb, resource))


EXPIRED_CONTINUE = (
    "The provided continue parameter is too old to display a consistent list result. You can start "
    "a new list without the continue parameter, or use the continue token in this response to "
    "retrieve the remainder of the results. Continuing with the provided token results in an "
    "inconsistent list - objects that were created, modified, or deleted between the time the first "
    "chunk was returned and now may show up in the list."
)

def key_of(obj):
    meta = obj.get("metadata", {})
    return (meta.get("namespace", ""), meta["name"])


class Store:
    """Objects by resource, one global resourceVersion counter (etcd's
    revision), and the event history watches are served from.

    Built to stay fast at cluster scale (tens of thousands of objects, a
    steady stream of events): each object's list-item JSON is encoded once
    when it is written, each event's watch line once when it happens, and
    the history is kept per resource in resourceVersion order, so a watch
    finds what it has not sent yet by bisection."""

    def __init__(self, state_file=None):
        self.cond = threading.Condition()
        self.objects = {name: {} for name in BY_NAME}
        self.encoded = {name: {} for name in BY_NAME}  # key -> list-item JSON (no kind, apiVersion)
        self.rv = 1
        self.history = {name: [] for name in BY_NAME}  # per resource: (rv, type, watch line)
        self.history_rvs = {name: [] for name in BY_NAME}  # the same rvs, for bisect
        self.emitted = {}  # rv -> time.monotonic() when a watch first wrote its event
        self.oldest_kept_rv = 1  # a watch from an rv below this is 410
        self.epoch = 0  # bumped by drop(): open watches end
        self.bookmark_epoch = 0
        self.stalled = False  # watches send nothing, not even their end, until unstalled
        self.state_file = state_file
        if state_file and os.path.exists(state_file):
            with open(state_file) as f:
                saved = json.load(f)
            self.rv = saved["resourceVersion"]
            for name, objs in saved["objects"].items():
                for k, o in objs.items():
                    self._put(name, tuple(k.split("/", 1)), o)
            self.oldest_kept_rv = self.rv

    def _put(self, resource, k, obj):
        self.objects[resource][k] = obj
        item = dict(obj)  # the API omits kind and apiVersion on list items (kubectl adds them back)
        item.pop("kind", None)
        item.pop("apiVersion", None)
        self.encoded[resource][k] = json.dumps(item).encode()

    def _save(self):
        if not self.state_file:
            return
        data = {
            "resourceVersion": self.rv,
            "objects": {name: {"%s/%s" % k: o for k, o in objs.items()} for name, objs in self.objects.items()},
        }
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.state_file)

    def apply(self, op, resource, obj, record=True):
        """Returns (http code, body) for the admin call. |record| False
        stores the change without a watch event (objects that were there
        before the history the server still keeps)."""
        if resource not in BY_NAME:
            return 404, {"error": "unknown resource %r" % resource}
        _, _, kind, _, api_version = BY_NAME[resource]
        with self.cond:
            table = self.objects[resource]
            k = key_of(obj)
            if op == "delete":
                if k not in table:
                    return 404, {"error": "no such object"}
                old = table.pop(k)
                del self.encoded[resource][k]
                self.rv += 1
                gone = json.loads(json.dumps(old))
                gone["metadata"]["resourceVersion"] = str(self.rv)
                self._record(resource, "DELETED", gone, record)
                return 200, gone
            if op not in ("add", "modify"):
                return 400, {"error": "op must be add, modify or delete"}
            if (op == "add") == (k in table):
                return 409, {"error": "exists" if op == "add" else "no such object"}
            self.rv += 1
            # A copy, except for preloaded objects (fresh from json.load, nobody else holds them).
            new = json.loads(json.dumps(obj)) if record else dict(obj)
            new["kind"], new["apiVersion"] = kind, api_version
            meta = new.setdefault("metadata", {})
            if op == "add":
                meta["uid"] = str(uuid.uuid4())
                meta["creationTimestamp"] = now_rfc3339()
                if resource == "pods":
                    meta.setdefault("generation", 1)
            else:
                meta["uid"] = table[k]["metadata"]["uid"]
                meta["creationTimestamp"] = table[k]["metadata"]["creationTimestamp"]
            meta["resourceVersion"] = str(self.rv)
            self._put(resource, k, new)
            self._record(resource, "ADDED" if op == "add" else "MODIFIED", new, record)
            return 200, new

    def preload(self, objects):
        """Adds |objects| ({resource: [object, ...]}) as a cluster that
        already holds them: no history, so a watch from before now is 410."""
        for resource, items in objects.items():
            for obj in items:
                code, body = self.apply("add", resource, obj, record=False)
                if code != 200:
                    raise ValueError("cannot preload %s %s: %s" % (resource, key_of(obj), body))
        with self.cond:
            self.oldest_kept_rv = self.rv
        self._save()

    def _record(self, resource, etype, obj, record=True):
        if record:
            line = json.dumps({"type": etype, "object": obj}).encode() + b"\n"
            self.history[resource].append((self.rv, etype, line, obj.get("metadata", {}).get("namespace", "")))
            self.history_rvs[resource].append(self.rv)
            self._save()
        self.cond.notify_all()

    def pending(self, resource, last_rv):
        """The history of |resource| after |last_rv| (call under |cond|)."""
        return self.history[resource][bisect.bisect_right(self.history_rvs[resource], last_rv):]

    def note_emitted(self, rv):
        self.emitted.setdefault(rv, time.monotonic())

    def compact(self):
        with self.cond:
            self.history = {name: [] for name in BY_NAME}
            self.history_rvs = {name: [] for name in BY_NAME}
            self.oldest_kept_rv = self.rv
            self.cond.notify_all()

    def drop(self):
        with self.cond:
            self.epoch += 1
            self.cond.notify_all()

    def stall(self, on):
        with self.cond:
            self.stalled = on
            self.cond.notify_all()

    def bookmark(self):
        with self.cond:
            self.bookmark_epoch += 1
            self.cond.notify_all()

    def get(self, resource, name):
        """One cluster-scoped object as GET returns it (kind and apiVersion
        included), or None."""
        with self.cond:
            obj = self.objects[resource].get(("", name))
            return json.loads(json.dumps(obj)) if obj is not None else None

    def list(self, resource, ns=None):
        """(resourceVersion, [list-item JSON, ...] in namespace/name order),
        of namespace |ns| alone when given."""
        with self.cond:
            encoded = self.encoded[resource]
            return self.rv, [encoded[k] for k in sorted(encoded) if ns is None or k[0] == ns]


def apply_offline(state_file, op, resource, obj):
    """A change made while no stand-in runs on |state_file| (as another
    API server would make it in etcd): the objects and resourceVersion move
    on exactly as /admin/apply would move them. Returns (code, body)."""
    return Store(state_file).apply(op, resource, obj)


class ClientGone(OSError):
    """The client went away (connection closed, or its HTTP/2 stream reset)."""


class Dropped(Exception):
    """/admin/drop: the connection is cut as a crashing server would."""


class Api:
    """What the API answers to one GET, whatever the HTTP version: |out|
    is an Http1Out or an H2StreamOut with the same five methods."""

    def __init__(self, app):
        self.app = app

    def get(self, target, authorization, out):
        app = self.app
        if not authorization.startswith("Bearer ") or authorization[len("Bearer ") :] not in app.tokens:
            out.send_json(401, status(401, "Unauthorized", "Unauthorized"))
            return
        url = urlsplit(target)
        if url.path == "/openid/v1/jwks":
            with app.lock:
                app.jwks_requests += 1
                body = app.jwks
            out.send_json(200, body)
            return
        if url.path == "/.well-known/openid-configuration":
            self._discovery(out)
            return
        collection, _, name = url.path.rpartition("/")
        if url.path not in RESOURCES and collection in RESOURCES and BY_PATH_NAMED.get(collection):
            self._get_one(RESOURCES[collection][0], name, out)
            return
        route = self._route(url.path)
        if route is None:
            out.send_json(404, status(404, "NotFound", "the server could not find the requested resource"))
            return
        resource, list_kind, api_version, ns = route
        if resource in app.forbidden:
            out.send_json(403, forbidden(resource, "list"))
            return
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if query.get("watch") in ("1", "true"):
            self._watch(resource, list_kind, api_version, query, out, ns)
            return
        try:
            limit = int(query.get("limit", "0") or "0")
            if limit < 0:
                raise ValueError
        except ValueError:
            out.send_json(400, status(400, "BadRequest", "invalid limit"))
            return
        page = self._list_page(resource, limit, query.get("continue", ""), ns)
        if page is None:
            out.send_json(410, status(410, "Expired", EXPIRED_CONTINUE))
            return
        meta, items = page
        # The same bytes as json.dumps of the whole page, without encoding every item again.
        head = json.dumps({"kind": list_kind, "apiVersion": api_version, "metadata": meta})
        out.send_document(200, head[:-1].encode() + b', "items": [' + b", ".join(items) + b"]}\n")

    def _route(self, path):
        """(resource, list kind, apiVersion, namespace or None) of a
        collection path, or None (404): a core or fixed-version path of
        RESOURCES, or a multi-version group's path at any version it serves,
        all namespaces or one; a group/version /admin/serve took away is
        not served."""
        parts = path.strip("/").split("/")
        if len(parts) >= 3 and parts[0] == "apis" and parts[1] in MULTI_VERSION_GROUPS:
            group, version, rest = parts[1], parts[2], parts[3:]
            if version not in MULTI_VERSION_GROUPS[group]:
                return None
            if "%s/%s" % (group, version) in self.app.unserved:
                return None
            ns = None
            if len(rest) == 3 and rest[0] == "namespaces":
                ns, rest = rest[1], rest[2:]
            if len(rest) != 1:
                return None
            stored_path = "/apis/%s/%s/%s" % (group, MULTI_VERSION_GROUPS[group][0], rest[0])
            if stored_path not in RESOURCES:
                return None
            resource, _, list_kind, _ = RESOURCES[stored_path]
            return resource, list_kind, "%s/%s" % (group, version), ns
        if path not in RESOURCES:
            return None
        resource, _, list_kind, api_version = RESOURCES[path]
        return resource, list_kind, api_version, None

    def _discovery(self, out):
        """kube-apiserver's OpenID provider configuration, or the bad answer
        /admin/discovery asked for."""
        app = self.app
        with app.lock:
            app.discovery_requests += 1
            bad = app.discovery_bad
            issuer = app.issuer
            algs = sorted({k.get("alg", "RS256") for k in app.jwks.get("keys", [])}) or ["RS256"]
        if bad is not None:
            code, body = bad
            if body is None:
                out.send_json(code, status(code, "InternalError", "discovery refused by the test"))
            else:
                out.send_document(code, body.encode())
            return
        out.send_json(200, {
            "issuer": issuer,
            "jwks_uri": "https://127.0.0.1:%d/openid/v1/jwks" % app.port,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algs,
        })

    def _get_one(self, resource, name, out):
        """GET of one cluster-scoped object by name."""
        if resource in self.app.forbidden:
            out.send_json(403, forbidden(resource, "get", name))
            return
        obj = self.app.store.get(resource, name)
        if obj is None:
            body = status(404, "NotFound", '%s "%s" not found' % (resource, name))
            body["details"] = {"name": name, "kind": resource}
            out.send_json(404, body)
            return
        out.send_json(200, obj)

    def _list_page(self, resource, limit, token, ns=None):
        """(metadata, items) of one LIST page; None when |token| is expired
        or unknown."""
        app = self.app
        start = 0
        if token:
            try:
                decoded = json.loads(base64.b64decode(token, validate=True))
                snap_id, start = decoded["id"], int(decoded["start"])
            except (ValueError, KeyError, TypeError):
                return None
            with app.lock:
                snap = app.list_snapshots.get(snap_id)
                expire, app.expire_next_continue = app.expire_next_continue, False
            if snap is None or snap[0] < app.store.oldest_kept_rv or expire:
                return None
            rv, items = snap
        else:
            with app.lock:
                app.lists += 1
            rv, items = app.store.list(resource, ns)
            snap_id = uuid.uuid4().hex
        with app.lock:
            app.list_pages += 1
        end = start + limit if limit else len(items)
        meta = {"resourceVersion": str(rv)}
        with app.lock:
            if end < len(items):
                app.list_snapshots[snap_id] = (rv, items)
                token = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "id": snap_id, "start": end})
                meta["continue"] = base64.b64encode(token.encode()).decode()
                meta["remainingItemCount"] = len(items) - end
            else:
                app.list_snapshots.pop(snap_id, None)
        return meta, items[start:end]

    def _watch(self, resource, list_kind, api_version, query, out, ns=None):
        app = self.app
        store = app.store
        with app.lock:
            app.watch_requests += 1
        try:
            timeout_s = int(query.get("timeoutSeconds", DEFAULT_WATCH_TIMEOUT_S))
            since = query.get("resourceVersion", "")
            since_rv = int(since) if since not in ("", "0") else None
        except ValueError:
            out.send_json(400, status(400, "BadRequest", "invalid resourceVersion or timeoutSeconds"))
            return
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true")
        item_kind = list_kind[: -len("List")]
        with store.cond:
            too_old = since_rv is not None and since_rv < store.oldest_kept_rv
            epoch, bookmark_epoch = store.epoch, store.bookmark_epoch
            if since_rv is None:
                # No version: the current state as ADDED events, then changes.
                start_rv = store.rv
                initial = [("ADDED", o) for k, o in store.objects[resource].items() if ns is None or k[0] == ns]
            else:
                start_rv = since_rv
                initial = []
        if too_old and app.gone_as_http:
            out.send_json(410, status(410, "Expired", "too old resource version: %d (%d)" % (since_rv, store.oldest_kept_rv)))
            return
        try:
            out.start_stream(200)
            if too_old:
                msg = "too old resource version: %d (%d)" % (since_rv, store.oldest_kept_rv)
                self._event(out, "ERROR", status(410, "Expired", msg))
                out.end()
                return
        except (ClientGone, ssl.SSLError, OSError):
            out.gone()
            return
        with app.lock:
            app.watches += 1
        try:
            stored_version = BY_NAME[resource][4]
            for etype, obj in initial:
                if api_version != stored_version:
                    obj = dict(obj, apiVersion=api_version)
                self._event(out, etype, obj)
            self._stream(out, resource, item_kind, api_version, start_rv, epoch, bookmark_epoch, bookmarks, timeout_s, ns)
            out.end()
        except Dropped:
            out.abort()
        except (ClientGone, ssl.SSLError, OSError):
            out.gone()
        finally:
            with app.lock:
                app.watches -= 1

    @staticmethod
    def _event(out, etype, obj):
        # One JSON document per line: a chunk in HTTP/1.1, DATA in HTTP/2.
        out.write(json.dumps({"type": etype, "object": obj}).encode() + b"\n")

    def _stream(self, out, resource, item_kind, api_version, last_rv, epoch, bookmark_epoch, bookmarks, timeout_s, ns=None):
        store = self.app.store
        stored_version = BY_NAME[resource][4]
        # Watch lines are encoded once, at the stored version.
        rewrite = None
        if api_version != stored_version:
            rewrite = (b'"apiVersion": "%s"' % stored_version.encode(), b'"apiVersion": "%s"' % api_version.encode())
        deadline = time.monotonic() + timeout_s
        while True:
            with store.cond:
                while True:
                    pending = store.pending(resource, last_rv)
                    left = deadline - time.monotonic()
                    if store.epoch != epoch:
                        break
                    if store.stalled:
                        # A connection that died without either end being told.
                        store.cond.wait()
                        continue
                    if pending or left <= 0 or store.bookmark_epoch != bookmark_epoch:
                        break
                    store.cond.wait(left)
                if store.epoch != epoch:
                    # Dropped: cut the connection without the stream's end, as a crash would.
                    raise Dropped()
                send_bookmark = store.bookmark_epoch != bookmark_epoch and bookmarks
                bookmark_epoch = store.bookmark_epoch
                current_rv = store.rv
            for rv, _, line, line_ns in pending:
                last_rv = rv
                if ns is not None and line_ns != ns:
                    continue
                out.write(line if rewrite is None else line.replace(*rewrite))
                store.note_emitted(rv)
            if send_bookmark:
                self._event(
                    out,
                    "BOOKMARK",
                    {"kind": item_kind, "apiVersion": api_version, "metadata": {"resourceVersion": str(current_rv)}},
                )
                last_rv = max(last_rv, current_rv)
            if time.monotonic() >= deadline and not store.stalled:
                return


def json_document(body):
    # The real server's JSON encoder ends every document with a newline.
    return json.dumps(body).encode() + b"\n"


class Http1Out:
    """A response on an HTTP/1.1 connection; a stream is chunked."""

    def __init__(self, handler):
        self.h = handler

    def send_json(self, code, body):
        self.send_document(code, json_document(body))

    def send_document(self, code, data):
        self.h.send_response(code)
        self.h.send_header("Content-Type", "application/json")
        self.h.send_header("Content-Length", str(len(data)))
        self.h.end_headers()
        self.h.wfile.write(data)

    def start_stream(self, code):
        self.h.send_response(code)
        self.h.send_header("Content-Type", "application/json")
        self.h.send_header("Transfer-Encoding", "chunked")
        self.h.end_headers()

    def write(self, data):
        self.h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.h.wfile.flush()

    def end(self):
        self.write(b"")

    def gone(self):
        self.h.close_connection = True

    def abort(self):
        # No terminating chunk: the client sees the connection end mid-stream.
        self.h.close_connection = True


class H2StreamOut:
    """A response on one HTTP/2 stream of an H2Server connection."""

    def __init__(self, server, stream_id):
        self.server = server
        self.stream_id = stream_id

    def _headers(self, code, extra=()):
        self.server.send_headers(self.stream_id, [(":status", str(code)), ("content-type", "application/json")] + list(extra))

    def send_json(self, code, body):
        self.send_document(code, json_document(body))

    def send_document(self, code, data):
        self._headers(code, [("content-length", str(len(data)))])
        self.server.send_data(self.stream_id, data, end=True)

    def start_stream(self, code):
        self._headers(code)

    def write(self, data):
        self.server.send_data(self.stream_id, data)

    def end(self):
        self.server.send_data(self.stream_id, b"", end=True)

    def gone(self):
        self.server.reset(self.stream_id)

    def abort(self):
        self.server.cut()


class H2Server:
    """One TLS connection that chose ALPN "h2", served with hyper-h2.

    Only the thread running serve() touches the socket; each request runs
    in its own thread (a watch blocks for minutes) and hands frames to the
    h2 state machine under |cond|, then wakes the I/O thread through a pipe.
    Senders respect the client's flow-control windows, waiting on |cond|
    for WINDOW_UPDATE."""

    READ_BYTES = 65536

    def __init__(self, sock, api, verbose):
        self.sock = sock
        self.api = api
        self.verbose = verbose
        self.cond = threading.Condition()
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.closed = False
        self.cut_requested = False
        self.reset_streams = set()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.pipe_closed = False

    def _wake(self):
        # Under |cond| so that the pipe is never written after serve()
        # closed it (its descriptor number may belong to a new file by then).
        with self.cond:
            if self.pipe_closed:
                return
            try:
                os.write(self.wake_w, b"x")
            except BlockingIOError:
                pass  # a full pipe already says "wake up"

    def send_headers(self, stream_id, headers):
        with self.cond:
            self._check(stream_id)
            try:
                self.conn.send_headers(stream_id, headers)
            except h2.exceptions.H2Error as e:
                raise ClientGone(str(e))
        self._wake()

    def send_data(self, stream_id, data, end=False):
        # A view: a LIST of a big cluster is tens of MB, sent a frame at a
        # time; slicing bytes would copy the rest of it for every frame.
        data = memoryview(data)
        with self.cond:
            while True:
                self._check(stream_id)
                try:
                    if not data:
                        if end:
                            self.conn.end_stream(stream_id)
                        break
                    room = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
                    if room <= 0:
                        # What is queued must leave for the window to reopen.
                        self._wake()
                        self.cond.wait()
                        continue
                    self.conn.send_data(stream_id, bytes(data[:room]), end_stream=end and len(data) <= room)
                    if len(data) <= room:
                        break
                    data = data[room:]
                except h2.exceptions.H2Error as e:
                    raise ClientGone(str(e))
        self._wake()

    def _check(self, stream_id):
        if self.closed or self.cut_requested:
            raise ClientGone("connection closed")
        if stream_id in self.reset_streams:
            raise ClientGone("stream reset by the client")

    def reset(self, stream_id):
        with self.cond:
            if self.closed or stream_id in self.reset_streams:
                return
            try:
                self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            except h2.exceptions.H2Error:
                return
        self._wake()

    def cut(self):
        with self.cond:
            self.cut_requested = True
        self._wake()

    def _on_request(self, stream_id, headers):
        h = dict(headers)
        out = H2StreamOut(self, stream_id)
        try:
            if h.get(":method") != "GET":
                out.send_json(405, status(405, "MethodNotAllowed", "only GET is served"))
                return
            if self.verbose:
                sys.stderr.write("standin: h2 GET %s\n" % h.get(":path"))
            self.api.get(h.get(":path", "/"), h.get("authorization", ""), out)
        except (ClientGone, OSError):
            pass

    def _handle(self, events):
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                threading.Thread(target=self._on_request, args=(ev.stream_id, ev.headers), daemon=True).start()
            elif isinstance(ev, h2.events.DataReceived):
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                self.reset_streams.add(ev.stream_id)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.closed = True

    def _send_pending(self):
        with self.cond:
            data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def serve(self):
        with self.cond:
            self.conn.initiate_connection()
        try:
            self._send_pending()
            while not self.closed:
                # Decrypted bytes TLS already holds are invisible to select().
                if not self.sock.pending():
                    readable, _, _ = select.select([self.sock, self.wake_r], [], [])
                    if self.wake_r in readable:
                        os.read(self.wake_r, self.READ_BYTES)
                    if self.cut_requested:
                        break
                    if self.sock not in readable:
                        self._send_pending()
                        continue
                data = self.sock.recv(self.READ_BYTES)
                if not data:
                    break
                with self.cond:
                    self._handle(self.conn.receive_data(data))
                    self.cond.notify_all()
                self._send_pending()
        except (OSError, h2.exceptions.H2Error):
            pass
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()
            if self.cut_requested:
                # No GOAWAY, no close_notify: a crash, as /admin/drop promises.
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self.cond:
                self.pipe_closed = True
                os.close(self.wake_r)
                os.close(self.wake_w)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kube-apiserver-standin"
    # TCP_NODELAY, as Go's net/http (kube-apiserver) has on every connection:
    # a watch event is written at once, not held back by Nagle's algorithm
    # until the previous one is acknowledged (up to 40 ms with delayed ACKs).
    disable_nagle_algorithm = True

    def handle(self):
        # ALPN decided the protocol during the handshake.
        if self.connection.selected_alpn_protocol() == "h2":
            H2Server(self.connection, Api(self.server.app), self.server.verbose).serve()
            return
        super().handle()

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("standin: " + (fmt % args) + "\n")

    def do_GET(self):
        Api(self.server.app).get(self.path, self.headers.get("Authorization", ""), Http1Out(self))


class AdminHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # a kept-alive client gets each answer at once

    def log_message(self, fmt, *args):
        pass

    def _reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        app = self.server.app
        if self.path == "/admin/emitted":
            emitted = dict(app.store.emitted)  # a copy: watch threads add to it
            self._reply(200, {"clock": "CLOCK_MONOTONIC", "emitted": {str(rv): t for rv, t in emitted.items()}})
            return
        if self.path != "/admin/stats":
            self._reply(404, {"error": "not found"})
            return
        with app.lock:
            stats = {"lists": app.lists, "list_pages": app.list_pages, "watches": app.watches, "watch_requests": app.watch_requests,
                     "jwks_requests": app.jwks_requests, "discovery_requests": app.discovery_requests}
        stats["resourceVersion"] = app.store.rv
        self._reply(200, stats)

    def do_POST(self):
        app = self.server.app
        length = int(self.headers.get("Content-Length", "0"))
        if length > MAX_BODY_BYTES:
            self._reply(413, {"error": "too large"})
            return
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/admin/apply":
            code, obj = app.store.apply(body.get("op"), body.get("resource"), body.get("object", {}))
            self._reply(code, obj)
        elif self.path == "/admin/compact":
            app.store.compact()
            self._reply(200, {"oldest": app.store.oldest_kept_rv})
        elif self.path == "/admin/expire_continue":
            with app.lock:
                app.expire_next_continue = True
            self._reply(200, {})
        elif self.path == "/admin/drop":
            app.store.drop()
            self._reply(200, {})
        elif self.path == "/admin/stall":
            app.store.stall(bool(body.get("on", True)))
            self._reply(200, {})
        elif self.path == "/admin/gone":
            app.gone_as_http = bool(body.get("as_http", False))
            self._reply(200, {"as_http": app.gone_as_http})
        elif self.path == "/admin/bookmark":
            app.store.bookmark()
            self._reply(200, {})
        elif self.path == "/admin/tokens":
            app.tokens = set(body.get("tokens", []))
            self._reply(200, {})
        elif self.path == "/admin/forbid":
            app.forbidden = set(body.get("resources", []))
            self._reply(200, {"forbidden": sorted(app.forbidden)})
        elif self.path == "/admin/serve":
            group_version = body.get("group_version", "")
            with app.lock:
                if body.get("served", True):
                    app.unserved.discard(group_version)
                else:
                    app.unserved.add(group_version)
                unserved = sorted(app.unserved)
            self._reply(200, {"unserved": unserved})
        elif self.path == "/admin/jwks":
            with app.lock:
                app.jwks = {"keys": list(body.get("keys", []))}
                if app.jwks_file:
                    tmp = app.jwks_file + ".tmp"
                    with open(tmp, "w") as f:
                        json.dump(app.jwks, f)
                    os.replace(tmp, app.jwks_file)
            self._reply(200, {})
        elif self.path == "/admin/discovery":
            with app.lock:
                if "status" in body or "body" in body:
                    app.discovery_bad = (int(body.get("status", 200)), body.get("body"))
                else:
                    app.discovery_bad = None
                    app.issuer = body.get("issuer", app.issuer)
                issuer = app.issuer
            self._reply(200, {"issuer": issuer})
        else:
            self._reply(404, {"error": "not found"})


DEFAULT_SANS = ["DNS:localhost", "DNS:kubernetes.default.svc", "IP:127.0.0.1", "IP:::1"]


def parse_san(text):
    import ipaddress

    kind, _, value = text.partition(":")
    if kind == "DNS" and value:
        return x509.DNSName(value)
    if kind == "IP" and value:
        return x509.IPAddress(ipaddress.ip_address(value))
    raise ValueError("--san wants DNS:name or IP:address, not %r" % text)


def make_pki(pki_dir, sans=None):
    """A self-made CA and a server certificate for |sans| (by default
    127.0.0.1, ::1, localhost and kubernetes.default.svc); returns (cert
    chain path, key path)."""
    os.makedirs(pki_dir, exist_ok=True)
    ca_path = os.path.join(pki_dir, "ca.crt")
    cert_path = os.path.join(pki_dir, "apiserver.crt")
    key_path = os.path.join(pki_dir, "apiserver.key")
    if os.path.exists(ca_path) and os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes-standin-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [parse_san(t) for t in (sans or DEFAULT_SANS)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(ca_path, "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"  # kubeadm's, kind's, k3s's


class App:
    def __init__(self, store, tokens, gone_as_http, verbose, issuer=DEFAULT_ISSUER):
        self.store = store
        self.issuer = issuer
        self.discovery_bad = None  # (status, raw body or None) from /admin/discovery
        self.discovery_requests = 0
        self.port = 0
        self.tokens = set(tokens)
        self.jwks_file = store.state_file + ".jwks" if store.state_file else None
        self.jwks = {"keys": []}
        if self.jwks_file and os.path.exists(self.jwks_file):
            with open(self.jwks_file) as f:
                self.jwks = json.load(f)
        self.jwks_requests = 0
        self.gone_as_http = gone_as_http
        self.verbose = verbose
        self.lock = threading.Lock()
        self.lists = 0
        self.list_pages = 0
        self.list_snapshots = {}  # continue token id -> (rv, items) of its LIST
        self.expire_next_continue = False  # /admin/expire_continue
        self.watches = 0
        self.watch_requests = 0
        self.forbidden = set()  # /admin/forbid: resources RBAC does not grant
        self.unserved = set()  # /admin/serve: "group/version"s answered 404


def serve(args):
    cert_path, key_path = make_pki(args.pki_dir, args.san)
    tokens = list(args.token)
    if args.token_file:
        with open(args.token_file) as f:
            tokens.append(f.read().strip())
    store = Store(args.state_file)
    if args.objects:
        with open(args.objects) as f:
            store.preload(json.load(f))
    app = App(store, tokens, args.gone_as_http, args.verbose, args.issuer)
    api = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    app.port = api.server_address[1]
    api.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_path, key_path)
    ctx.set_alpn_protocols(["http/1.1"] if args.http1_only else ["h2", "http/1.1"])
    api.socket = ctx.wrap_socket(api.socket, server_side=True)
    api.app = app
    api.verbose = args.verbose
    admin = ThreadingHTTPServer(("127.0.0.1", args.admin_port), AdminHandler)
    admin.daemon_threads = True
    admin.app = app
    threading.Thread(target=admin.serve_forever, daemon=True).start()
    print(
        "standin listening https://127.0.0.1:%d admin http://127.0.0.1:%d"
        % (api.server_address[1], admin.server_address[1]),
        flush=True,
    )
    try:
        api.serve_forever()
    except KeyboardInterrupt:
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--admin-port", type=int, default=0)
    parser.add_argument("--pki-dir", required=True, help="ca.crt is written (or reused) here")
    parser.add_argument("--token", action="append", default=[], help="an accepted bearer token")
    parser.add_argument("--token-file", help="a file holding an accepted bearer token")
    parser.add_argument("--state-file", help="keep objects and resourceVersion across restarts")
    parser.add_argument("--objects", help="start with these objects: JSON {resource: [object, ...]}")
    parser.add_argument("--gone-as-http", action="store_true", help="answer a too-old watch with HTTP 410")
    parser.add_argument("--san", action="append", help="DNS:name or IP:address for the server certificate (repeatable; default %s)" % " ".join(DEFAULT_SANS))
    parser.add_argument("--issuer", default=DEFAULT_ISSUER, help="the service-account issuer (kube-apiserver's --service-account-issuer; default %(default)s)")
    parser.add_argument("--http1-only", action="store_true", help="offer no h2 in ALPN (an old or odd server)")
    parser.add_argument("--verbose", action="store_true")
    serve(parser.parse_args())


if __name__ == "__main__":
    main()
