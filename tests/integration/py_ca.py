#!/usr/bin/python3
"""A control plane written against the same .proto files with a different
gRPC stack (Python grpcio), so the agent's client is tested against a peer
it shares no code with.

Serves IstioCertificateService/CreateCertificate (signs the CSR's key for
the identity the CSR names; the real mtls-ca takes it from the token
instead) and MeshConfig/Watch (the snapshot in --mesh-json, re-sent when the
file changes; as a delta to an agent that accepts them, computed here in
Python from mesh.proto's rules, independently of agent/mesh_delta.c). Flags
let tests make it misbehave. Prints "listening PORT".
"""
import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from google.protobuf import descriptor_pb2, message_factory

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_messages():
    with tempfile.NamedTemporaryFile(suffix=".desc") as out:
        subprocess.run(["protoc-c", "-I" + REPO, "-I/usr/include", "--include_imports",
                        "--descriptor_set_out=" + out.name, "proto/istio/ca.proto",
                        "proto/mtlsd/mesh.proto"], check=True, cwd=REPO)
        fds = descriptor_pb2.FileDescriptorSet.FromString(open(out.name, "rb").read())
    return message_factory.GetMessages(fds.file)


MSGS = load_messages()
Request = MSGS["istio.v1.auth.IstioCertificateRequest"]
Response = MSGS["istio.v1.auth.IstioCertificateResponse"]
WatchRequest = MSGS["mtlsd.mesh.v1.WatchRequest"]
Snapshot = MSGS["mtlsd.mesh.v1.MeshSnapshot"]


def fill_policy(msg, pol):
    """A Policy message from the YAML-shaped dict the tests write."""
    msg.default_action = 1 if pol.get("default", "allow") == "allow" else 2
    for r in pol.get("rules", []):
        rule = msg.rules.add()
        rule.name = r["name"]
        rule.action = 1 if r["action"] == "allow" else 2
        rule.ports.extend(r.get("ports", []))
        for m in r["from"]:
            matcher = getattr(rule, "from").add()
            (kind, value), = m.items()
            setattr(matcher, "namespace" if kind == "namespace" else kind, value)



def sign_leaf(csr, issuer, issuer_key, ttl, uri=None):
    """An X509-SVID for |csr|'s key, signed by |issuer|, valid |ttl| s, for
    |uri| (default: the CSR's URI SAN). Returns (leaf PEM, issuer PEM)."""
    if uri is None:
        uris = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        (uri,) = uris.get_values_for_type(x509.UniformResourceIdentifier)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([]))
               .issuer_name(issuer.subject)
               .public_key(csr.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(seconds=5))
               .not_valid_after(now + datetime.timedelta(seconds=ttl))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
               .add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                            False, False), True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                     ExtendedKeyUsageOID.CLIENT_AUTH]), False)
               .add_extension(x509.SubjectAlternativeName(
                   [x509.UniformResourceIdentifier(uri)]), True))
    leaf = builder.sign(issuer_key, hashes.SHA256())
    return (leaf.public_bytes(serialization.Encoding.PEM).decode(),
            issuer.public_bytes(serialization.Encoding.PEM).decode())

class Ca:
    def __init__(self, args):
        self.args = args
        self.calls = 0
        self.sent_bad = set()  # callers sent a bad delta (--bad-delta-base)
        self.lock = threading.Lock()
        self.load_issuer()

    def load_issuer(self):
        """(Re)reads the signer and root files; on SIGHUP too, so a test can
        rotate the issuer without a restart (an outage would let short-lived
        certificates expire)."""
        issuer = x509.load_pem_x509_certificate(open(self.args.signer_cert, "rb").read())
        key = serialization.load_pem_private_key(open(self.args.signer_key, "rb").read(), None)
        root_pem = open(self.args.root, "rb").read().decode()
        with self.lock:
            self.issuer, self.issuer_key, self.root_pem = issuer, key, root_pem

    def sign(self, csr, ttl):
        with self.lock:
            issuer, issuer_key = self.issuer, self.issuer_key
        return sign_leaf(csr, issuer, issuer_key, ttl)

    def create_certificate(self, raw, context):
        with self.lock:
            self.calls += 1
            n = self.calls
        md = dict(context.invocation_metadata())
        if self.args.require_token and md.get("authorization") != "Bearer " + self.args.require_token:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad or missing bearer token")
        if self.args.fail_first > 0 and n <= self.args.fail_first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "induced failure %d" % n)
        req = Request.FromString(raw)
        if self.args.garbage:
            return b"\xff\x00garbage"
        csr = x509.load_pem_x509_csr(req.csr.encode())
        ttl = self.args.ttl if req.validity_duration <= 0 else min(req.validity_duration,
                                                                    self.args.ttl)
        leaf_pem, issuer_pem = self.sign(csr, ttl)
        resp = Response()
        resp.cert_chain.append(leaf_pem)
        resp.cert_chain.append(issuer_pem)
        with self.lock:
            resp.root_cert.ca_cert.append(self.root_pem)
        print("issued %s ttl %d" % (req.csr[:0] or "cert", ttl), flush=True)
        return resp.SerializeToString()

    def snapshot(self):
        """The complete MeshSnapshot message --mesh-json describes."""
        spec = json.load(open(self.args.mesh_json))
        snap = Snapshot()
        snap.version = str(spec["version"])
        for td, files in spec.get("trust_bundles", {}).items():
            b = snap.trust_bundles.add()
            b.trust_domain = td
            for f in files:
                b.roots_pem.append(open(f).read())
        fill_policy(snap.policy, spec.get("policy", {}))
        for w in spec.get("workload_policies", []):
            entry = snap.workload_policies.add()
            entry.spiffe_id = w["spiffe_id"]
            fill_policy(entry.policy, w["policy"])
        for d in spec.get("destinations", []):
            dst = snap.destinations.add()
            dst.address = d["address"]
            dst.spiffe_id = d.get("spiffe_id", "")
            dst.spiffe_ids.extend(d.get("spiffe_ids", []))
            for e in d.get("endpoints", []):
                ep = dst.endpoints.add()
                ep.address = e["address"]
                ep.spiffe_id = e["spiffe_id"]
        if "node_workloads" in spec:
            snap.node_workloads.node_name = spec["node_workloads"].get("node", "")
            for w in spec["node_workloads"]["workloads"]:
                entry = snap.node_workloads.workloads.add()
                entry.spiffe_id = w["spiffe_id"]
                entry.ips.extend(w["ips"])
                entry.namespace = w.get("namespace", "")
                entry.pod = w.get("pod", "")
        return snap

    def watch(self, raw, context):
        request = WatchRequest.FromString(raw)
        last, sent = None, None
        deadline = time.monotonic() + self.args.watch_seconds
        while context.is_active() and time.monotonic() < deadline:
            stamp = os.stat(self.args.mesh_json).st_mtime_ns if self.args.mesh_json else None
            if self.args.mesh_json and stamp != last:
                last = stamp
                snap = self.snapshot()
                if sent is not None and request.accept_deltas and not has_twice(snap):
                    with self.lock:
                        bad = self.args.bad_delta_base and request.spiffe_id not in self.sent_bad
                        self.sent_bad.add(request.spiffe_id)
                    yield delta(sent, snap, "no-such-version" if bad else sent.version)
                else:
                    yield snap.SerializeToString()
                sent = snap
            time.sleep(0.05)


# Deltas (mesh.proto, MeshSnapshot.delta): entries keyed by their field 1.
KEYED = {"trust_bundles": (2, "trust_domain"), "destinations": (4, "address"),
         "workload_policies": (5, "spiffe_id")}
SINGLE = {"policy": 3, "node_workloads": 6}


def has_twice(snap):
    """Whether a key appears twice: a delta cannot say that (tests send
    such snapshots to see them refused), so they go complete."""
    for name, (_, key) in KEYED.items():
        keys = [getattr(e, key) for e in getattr(snap, name)]
        if len(keys) != len(set(keys)):
            return True
    return False


def delta(prev, cur, base_version):
    """The delta message that turns |prev| into |cur|."""
    d = Snapshot(version=cur.version, delta=True, base_version=base_version)
    for name, (number, key) in KEYED.items():
        old = {getattr(e, key): e.SerializeToString() for e in getattr(prev, name)}
        new = {getattr(e, key): e for e in getattr(cur, name)}
        for k, entry in new.items():
            if old.get(k) != entry.SerializeToString():
                getattr(d, name).add().CopyFrom(entry)
        for k in old.keys() - new.keys():
            d.removed.add(field=number, key=k)
    for name, number in SINGLE.items():
        had, has = prev.HasField(name), cur.HasField(name)
        if has and (not had or getattr(prev, name).SerializeToString()
                    != getattr(cur, name).SerializeToString()):
            getattr(d, name).CopyFrom(getattr(cur, name))
        elif had and not has:
            d.removed.add(field=number)
    return d.SerializeToString()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--tls-cert", required=True)
    p.add_argument("--tls-key", required=True)
    p.add_argument("--signer-cert", required=True)
    p.add_argument("--signer-key", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--ttl", type=int, default=3600)
    p.add_argument("--mesh-json")
    p.add_argument("--require-token")
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--garbage", action="store_true")
    p.add_argument("--watch-seconds", type=float, default=120)
    p.add_argument("--bad-delta-base", action="store_true",
                   help="the first delta to each caller names a base version it never had")
    args = p.parse_args()
    ca = Ca(args)
    handlers = {
        "CreateCertificate": grpc.unary_unary_rpc_method_handler(ca.create_certificate),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("istio.v1.auth.IstioCertificateService", handlers),
        grpc.method_handlers_generic_handler("mtlsd.mesh.v1.MeshConfig", {
            "Watch": grpc.unary_stream_rpc_method_handler(ca.watch)}),
    ))
    creds = grpc.ssl_server_credentials(
        [(open(args.tls_key, "rb").read(), open(args.tls_cert, "rb").read())])
    port = server.add_secure_port(args.listen, creds)

    def on_sighup(signum, frame):
        try:
            ca.load_issuer()
            print("issuer reloaded", flush=True)
        except (OSError, ValueError) as e:
            print("issuer reload refused: %s" % e, flush=True)

    signal.signal(signal.SIGHUP, on_sighup)
    server.start()
    print("listening %d" % port, flush=True)
    try:
        server.wait_for_termination(timeout=600)
    except KeyboardInterrupt:
        pass
    server.stop(0)


if __name__ == "__main__":
    sys.exit(main())
