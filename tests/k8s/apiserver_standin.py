#!/usr/bin/python3
"""A stand-in for kube-apiserver, for tests (no Debian package ships a real one).

On the wire it behaves as kube-apiserver does for a watcher (PROTOCOL.md 9):
HTTPS, `Authorization: Bearer` (401 Status without a known token), LIST of
pods, services, namespaces and discovery.k8s.io/v1 endpointslices with
`metadata.resourceVersion`, and WATCH (`?watch=1&resourceVersion=N
&allowWatchBookmarks=true&timeoutSeconds=S`): a chunked stream of JSON lines
`{"type": ..., "object": ...}`. A resourceVersion older than the history it
still keeps gets an ERROR event with a 410 "Expired" Status (as the real
server does for watches), or HTTP 410 when --gone-as-http is set.

What it is not: no field or label selectors, no paging, no writes through
the API. Objects change through the admin port (plain HTTP on 127.0.0.1):

  POST /admin/apply   {"op": "add"|"modify"|"delete", "resource": "pods", "object": {...}}
  POST /admin/compact  forget all history: every older resourceVersion is now 410
  POST /admin/drop     end every open watch stream at once (as an apiserver restart does)
  POST /admin/stall    {"on": true|false} open watches go silent (no events, no end)
  POST /admin/bookmark send a BOOKMARK now on every watch that asked for them
  POST /admin/tokens   {"tokens": [...]} the bearer tokens accepted from now on
  GET  /admin/stats    {"resourceVersion": N, "watches": N, "lists": N, "watch_requests": N}

Start-up prints one line `standin listening https://127.0.0.1:P admin
http://127.0.0.1:A` on stdout. With --state-file the objects and the
resourceVersion survive a restart (etcd does for the real server); history
does not, so a watch from before the restart gets 410, as it may on a real
cluster.
"""

import argparse
import datetime
import json
import os
import ssl
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# path -> (kind of the items, list kind, apiVersion)
RESOURCES = {
    "/api/v1/pods": ("pods", "Pod", "PodList", "v1"),
    "/api/v1/services": ("services", "Service", "ServiceList", "v1"),
    "/api/v1/namespaces": ("namespaces", "Namespace", "NamespaceList", "v1"),
    "/apis/discovery.k8s.io/v1/endpointslices": (
        "endpointslices",
        "EndpointSlice",
        "EndpointSliceList",
        "discovery.k8s.io/v1",
    ),
}
BY_NAME = {v[0]: (path,) + v for path, v in RESOURCES.items()}

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


def key_of(obj):
    meta = obj.get("metadata", {})
    return (meta.get("namespace", ""), meta["name"])


class Store:
    """Objects by resource, one global resourceVersion counter (etcd's
    revision), and the event history watches are served from."""

    def __init__(self, state_file=None):
        self.cond = threading.Condition()
        self.objects = {name: {} for name in BY_NAME}
        self.rv = 1
        self.history = []  # (rv, resource, type, object)
        self.oldest_kept_rv = 1  # a watch from an rv below this is 410
        self.epoch = 0  # bumped by drop(): open watches end
        self.bookmark_epoch = 0
        self.stalled = False  # watches send nothing, not even their end, until unstalled
        self.state_file = state_file
        if state_file and os.path.exists(state_file):
            with open(state_file) as f:
                saved = json.load(f)
            self.rv = saved["resourceVersion"]
            self.objects = {name: {tuple(k.split("/", 1)): o for k, o in objs.items()} for name, objs in saved["objects"].items()}
            self.oldest_kept_rv = self.rv

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

    def apply(self, op, resource, obj):
        """Returns (http code, body) for the admin call."""
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
                self.rv += 1
                gone = json.loads(json.dumps(old))
                gone["metadata"]["resourceVersion"] = str(self.rv)
                self._record(resource, "DELETED", gone)
                return 200, gone
            if op not in ("add", "modify"):
                return 400, {"error": "op must be add, modify or delete"}
            if (op == "add") == (k in table):
                return 409, {"error": "exists" if op == "add" else "no such object"}
            self.rv += 1
            new = json.loads(json.dumps(obj))
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
            table[k] = new
            self._record(resource, "ADDED" if op == "add" else "MODIFIED", new)
            return 200, new

    def _record(self, resource, etype, obj):
        self.history.append((self.rv, resource, etype, obj))
        self._save()
        self.cond.notify_all()

    def compact(self):
        with self.cond:
            self.history = []
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

    def list(self, resource):
        with self.cond:
            items = []
            for obj in self.objects[resource].values():
                item = json.loads(json.dumps(obj))
                # The API omits kind and apiVersion on list items (kubectl adds them back).
                item.pop("kind", None)
                item.pop("apiVersion", None)
                items.append(item)
            items.sort(key=lambda o: key_of(o))
            return self.rv, items


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kube-apiserver-standin"

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("standin: " + (fmt % args) + "\n")

    def _send_json(self, code, body):
        # The real server's JSON encoder ends every document with a newline.
        data = json.dumps(body).encode() + b"\n"
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self):
        app = self.server.app
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[len("Bearer ") :] not in app.tokens:
            self._send_json(401, status(401, "Unauthorized", "Unauthorized"))
            return
        url = urlsplit(self.path)
        if url.path not in RESOURCES:
            self._send_json(404, status(404, "NotFound", "the server could not find the requested resource"))
            return
        resource, _, list_kind, api_version = RESOURCES[url.path]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if query.get("watch") in ("1", "true"):
            self._watch(resource, list_kind, api_version, query)
            return
        with app.lock:
            app.lists += 1
        rv, items = app.store.list(resource)
        self._send_json(
            200,
            {"kind": list_kind, "apiVersion": api_version, "metadata": {"resourceVersion": str(rv)}, "items": items},
        )

    def _watch(self, resource, list_kind, api_version, query):
        app = self.server.app
        store = app.store
        with app.lock:
            app.watch_requests += 1
        try:
            timeout_s = int(query.get("timeoutSeconds", DEFAULT_WATCH_TIMEOUT_S))
            since = query.get("resourceVersion", "")
            since_rv = int(since) if since not in ("", "0") else None
        except ValueError:
            self._send_json(400, status(400, "BadRequest", "invalid resourceVersion or timeoutSeconds"))
            return
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true")
        item_kind = list_kind[: -len("List")]
        with store.cond:
            too_old = since_rv is not None and since_rv < store.oldest_kept_rv
            epoch, bookmark_epoch = store.epoch, store.bookmark_epoch
            if since_rv is None:
                # No version: the current state as ADDED events, then changes.
                start_rv = store.rv
                initial = [("ADDED", o) for o in store.objects[resource].values()]
            else:
                start_rv = since_rv
                initial = []
        if too_old and app.gone_as_http:
            self._send_json(410, status(410, "Expired", "too old resource version: %d (%d)" % (since_rv, store.oldest_kept_rv)))
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if too_old:
            msg = "too old resource version: %d (%d)" % (since_rv, store.oldest_kept_rv)
            self._event("ERROR", status(410, "Expired", msg))
            self._chunk(b"")
            return
        with app.lock:
            app.watches += 1
        try:
            for etype, obj in initial:
                self._event(etype, obj)
            self._stream(resource, item_kind, api_version, start_rv, epoch, bookmark_epoch, bookmarks, timeout_s)
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.close_connection = True
        finally:
            with app.lock:
                app.watches -= 1

    def _event(self, etype, obj):
        self._chunk(json.dumps({"type": etype, "object": obj}).encode() + b"\n")

    def _stream(self, resource, item_kind, api_version, last_rv, epoch, bookmark_epoch, bookmarks, timeout_s):
        store = self.server.app.store
        deadline = time.monotonic() + timeout_s
        while True:
            with store.cond:
                while True:
                    pending = [h for h in store.history if h[0] > last_rv and h[1] == resource]
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
                    # Dropped: cut the connection without the last chunk, as a crash would.
                    raise ConnectionResetError("dropped")
                send_bookmark = store.bookmark_epoch != bookmark_epoch and bookmarks
                bookmark_epoch = store.bookmark_epoch
                current_rv = store.rv
            for rv, _, etype, obj in pending:
                self._event(etype, obj)
                last_rv = rv
            if send_bookmark:
                self._event(
                    "BOOKMARK",
                    {"kind": item_kind, "apiVersion": api_version, "metadata": {"resourceVersion": str(current_rv)}},
                )
                last_rv = max(last_rv, current_rv)
            if time.monotonic() >= deadline and not store.stalled:
                return


class AdminHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

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
        if self.path != "/admin/stats":
            self._reply(404, {"error": "not found"})
            return
        with app.lock:
            stats = {"lists": app.lists, "watches": app.watches, "watch_requests": app.watch_requests}
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
        elif self.path == "/admin/drop":
            app.store.drop()
            self._reply(200, {})
        elif self.path == "/admin/stall":
            app.store.stall(bool(body.get("on", True)))
            self._reply(200, {})
        elif self.path == "/admin/bookmark":
            app.store.bookmark()
            self._reply(200, {})
        elif self.path == "/admin/tokens":
            app.tokens = set(body.get("tokens", []))
            self._reply(200, {})
        else:
            self._reply(404, {"error": "not found"})


def make_pki(pki_dir):
    """A self-made CA and a server certificate for 127.0.0.1, ::1, localhost
    and kubernetes.default.svc; returns (cert chain path, key path)."""
    os.makedirs(pki_dir, exist_ok=True)
    ca_path = os.path.join(pki_dir, "ca.crt")
    cert_path = os.path.join(pki_dir, "apiserver.crt")
    key_path = os.path.join(pki_dir, "apiserver.key")
    if os.path.exists(ca_path) and os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path
    import ipaddress

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
    sans = [
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes.default.svc"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
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


class App:
    def __init__(self, store, tokens, gone_as_http, verbose):
        self.store = store
        self.tokens = set(tokens)
        self.gone_as_http = gone_as_http
        self.verbose = verbose
        self.lock = threading.Lock()
        self.lists = 0
        self.watches = 0
        self.watch_requests = 0


def serve(args):
    cert_path, key_path = make_pki(args.pki_dir)
    tokens = list(args.token)
    if args.token_file:
        with open(args.token_file) as f:
            tokens.append(f.read().strip())
    app = App(Store(args.state_file), tokens, args.gone_as_http, args.verbose)
    api = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    api.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_path, key_path)
    ctx.set_alpn_protocols(["http/1.1"])
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
    parser.add_argument("--gone-as-http", action="store_true", help="answer a too-old watch with HTTP 410")
    parser.add_argument("--verbose", action="store_true")
    serve(parser.parse_args())


if __name__ == "__main__":
    main()
