#!/usr/bin/python3
"""A SPIRE agent stand-in: a grpcio server of the SPIFFE Workload API
(FetchX509SVID, FetchX509Bundles) on Unix sockets, for tests of mtlsd's
Workload API identity source. It shares no code with the C side: messages
come from workload_api_pb.py (protoc over proto/spiffe/workload.proto),
certificates from `cryptography`.

Each --socket PATH=SPIFFE_ID is one "workload": a caller of that socket
gets that identity (a real SPIRE agent attests the caller instead). SVIDs
are ECDSA P-256, signed by an intermediate under a root of the trust
domain, valid --ttl seconds, re-issued every --rotate-every seconds (0:
only on command) and pushed on every open stream. A call without the
security header "workload.spiffe.io: true" is refused with
INVALID_ARGUMENT, as SPIRE does.

Commands, one per line on stdin; each is answered "ok COMMAND ..." on
stdout once its messages are queued for every open stream:
  rotate                 issue new SVIDs now
  ttl S                  SVIDs issued from now on live S seconds
  add-root               a second root (and intermediate) joins the bundle
  switch-root            SVIDs now come from the newest root (issued at once)
  drop-old-root          the bundle keeps only the newest root
  peer TD                a CA for trust domain TD (not federated yet): its
                         root and a leaf for spiffe://TD/ns/default/sa/peer
                         (chain.pem, key.pem, root.pem) go to WORKDIR/TD/,
                         with this trust domain's roots (trusts.pem) for it
  federate TD [bundles-only]
                         trust domain TD (made as by "peer" if new) joins
                         the federated bundles of both streams (or of the
                         FetchX509Bundles stream only)
  bad-key                every socket's next message: an SVID whose key is
                         not its certificate's (the certificate is valid)
  garbage                every socket's next message: bytes that are not
                         protobuf
  stop                   stop serving (streams end, sockets go)
  start                  serve again on the same sockets, same CAs, with
                         fresh SVIDs (those issued before may have expired)
Prints "fake-spire-agent ready N sockets" once serving.
"""
import argparse
import datetime
import os
import sys
import threading
from concurrent import futures

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workload_api_pb as pb  # noqa: E402

CLOCK_SKEW = datetime.timedelta(seconds=10)
CA_LIFETIME = datetime.timedelta(days=1)


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def der(cert):
    return cert.public_bytes(serialization.Encoding.DER)


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(name, trust_domain, issuer=None):
    """A CA certificate and key: self-signed root, or signed by |issuer|
    (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_cert, signer_key = issuer if issuer else (None, key)
    cert = (x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(signer_cert.subject if signer_cert else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now() - CLOCK_SKEW)
            .not_valid_after(now() + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("spiffe://" + trust_domain)]), False)
            .sign(signer_key, hashes.SHA256()))
    return cert, key


def make_leaf(spiffe_id, issuer, ttl):
    issuer_cert, issuer_key = issuer
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "svid")]))
            .issuer_name(issuer_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now() - CLOCK_SKEW)
            .not_valid_after(now() + datetime.timedelta(seconds=ttl))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                         False), True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(spiffe_id)]), True)
            .sign(issuer_key, hashes.SHA256()))
    return cert, key


def pkcs8(key):
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Authority:
    """One trust domain's roots, each with the intermediate that signs."""

    def __init__(self, trust_domain):
        self.trust_domain = trust_domain
        self.generations = []  # (root, intermediate) pairs, oldest first
        self.add_generation()

    def add_generation(self):
        n = len(self.generations) + 1
        root = make_ca(f"fake spire {self.trust_domain} root {n}", self.trust_domain)
        inter = make_ca(f"fake spire {self.trust_domain} intermediate {n}", self.trust_domain,
                        issuer=root)
        self.generations.append((root, inter))


class State:
    """Everything the streams send, versioned: a stream sends the current
    message whenever the version moves past what it sent."""

    def __init__(self, args):
        self.args = args
        self.cond = threading.Condition()
        self.version = 0
        self.ttl = args.ttl
        self.td = args.trust_domain
        self.authority = Authority(self.td)
        self.signing = 0         # index of the generation that signs SVIDs
        self.bundle_from = 0     # first generation in the bundle
        self.federated = {}      # trust domain -> Authority
        self.bundles_only = set()  # federated domains the SVID stream leaves out
        self.peers = {}          # trust domain -> Authority, federated or not
        self.workloads = {}      # socket path -> SPIFFE ID
        self.svids = {}          # socket path -> (leaf, key)
        self.override = {}       # socket path -> one-off raw message
        for spec in args.socket:
            path, spiffe_id = spec.split("=", 1)
            self.workloads[path] = spiffe_id
        self.issue_all()

    # ---- changes (called with self.cond held)

    def issue_all(self):
        _, inter = self.authority.generations[self.signing]
        for path, spiffe_id in self.workloads.items():
            self.svids[path] = make_leaf(spiffe_id, inter, self.ttl)

    def bump(self):
        self.version += 1
        self.cond.notify_all()

    # ---- messages

    def bundle_der(self, authority, start=0):
        return b"".join(der(root[0]) for root, _ in authority.generations[start:])

    def svid_message(self, path):
        if path in self.override:
            return self.override[path]
        leaf, key = self.svids[path]
        _, inter = self.authority.generations[self.signing]
        msg = pb.X509SVIDResponse()
        svid = msg.svids.add()
        svid.spiffe_id = self.workloads[path]
        svid.x509_svid = der(leaf) + der(inter[0])
        svid.x509_svid_key = pkcs8(key)
        svid.bundle = self.bundle_der(self.authority, self.bundle_from)
        for td, authority in self.federated.items():
            if td not in self.bundles_only:
                msg.federated_bundles["spiffe://" + td] = self.bundle_der(authority)
        return msg.SerializeToString()

    def bundles_message(self):
        msg = pb.X509BundlesResponse()
        msg.bundles["spiffe://" + self.td] = self.bundle_der(self.authority, self.bundle_from)
        for td, authority in self.federated.items():
            # The bare form on this stream: servers differ, the agent takes both.
            msg.bundles[td] = self.bundle_der(authority)
        return msg.SerializeToString()

    def bad_key_message(self, path):
        leaf, _ = self.svids[path]
        _, inter = self.authority.generations[self.signing]
        msg = pb.X509SVIDResponse()
        svid = msg.svids.add()
        svid.spiffe_id = self.workloads[path]
        svid.x509_svid = der(leaf) + der(inter[0])
        svid.x509_svid_key = pkcs8(ec.generate_private_key(ec.SECP256R1()))
        svid.bundle = self.bundle_der(self.authority, self.bundle_from)
        return msg.SerializeToString()

    # ---- commands

    def command(self, words):
        with self.cond:
            cmd = words[0]
            self.override.clear()
            if cmd == "rotate":
                self.issue_all()
            elif cmd == "ttl":
                self.ttl = float(words[1])
            elif cmd == "add-root":
                self.authority.add_generation()
            elif cmd == "switch-root":
                self.signing = len(self.authority.generations) - 1
                self.issue_all()
            elif cmd == "drop-old-root":
                self.bundle_from = self.signing
            elif cmd == "peer":
                return "ok peer %s %s" % (words[1], self.make_peer(words[1]))
            elif cmd == "federate":
                if words[1] not in self.peers:
                    self.make_peer(words[1])
                self.federated[words[1]] = self.peers[words[1]]
                if words[2:] == ["bundles-only"]:
                    self.bundles_only.add(words[1])
            elif cmd == "bad-key":
                self.override = {p: self.bad_key_message(p) for p in self.workloads}
            elif cmd == "garbage":
                self.override = {p: b"\xff\xff\xff\x0fnot protobuf" for p in self.workloads}
            else:
                return "error unknown command " + cmd
            self.bump()
            return "ok " + " ".join(words)

    def make_peer(self, td):
        """A CA for |td| and a workload's files under WORKDIR/|td|/."""
        authority = Authority(td)
        self.peers[td] = authority
        out = os.path.join(self.args.workdir, td)
        os.makedirs(out, exist_ok=True)
        root, inter = authority.generations[0]
        leaf, key = make_leaf(f"spiffe://{td}/ns/default/sa/peer", inter, 3600)
        files = {
            "chain.pem": pem(leaf) + pem(inter[0]),
            "key.pem": key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()),
            "root.pem": pem(root[0]),
            "trusts.pem": b"".join(pem(r[0]) for r, _ in
                                   self.authority.generations[self.bundle_from:]),
        }
        for name, data in files.items():
            with open(os.path.join(out, name), "wb") as f:
                f.write(data)
        return out

    def rotate_forever(self, stop):
        while not stop.wait(self.args.rotate_every):
            with self.cond:
                self.issue_all()
                self.override.clear()
                self.bump()


def stream(state, context, make_message):
    """Sends make_message() now and again after every change, until the
    caller goes away or the server stops."""
    if dict(context.invocation_metadata()).get(pb.SECURITY_HEADER[0]) != pb.SECURITY_HEADER[1]:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")
    sent = -1
    while context.is_active():
        with state.cond:
            if state.version == sent:
                state.cond.wait(timeout=0.2)
                continue
            sent = state.version
            message = make_message()
        yield message


def handlers(state, path):
    def fetch_svid(request, context):
        yield from stream(state, context, lambda: state.svid_message(path))

    def fetch_bundles(request, context):
        yield from stream(state, context, state.bundles_message)

    raw = lambda b: b  # noqa: E731  (messages are serialized by State)
    methods = {
        "FetchX509SVID": grpc.unary_stream_rpc_method_handler(
            fetch_svid, request_deserializer=pb.X509SVIDRequest.FromString,
            response_serializer=raw),
        "FetchX509Bundles": grpc.unary_stream_rpc_method_handler(
            fetch_bundles, request_deserializer=pb.X509BundlesRequest.FromString,
            response_serializer=raw),
    }
    return grpc.method_handlers_generic_handler("SpiffeWorkloadAPI", methods)


def serve(state):
    """One grpcio server per socket (a socket's callers get its identity)."""
    servers = []
    for path in state.workloads:
        if os.path.exists(path):
            os.unlink(path)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        server.add_generic_rpc_handlers((handlers(state, path),))
        server.add_insecure_port("unix:" + path)
        server.start()
        servers.append(server)
    return servers


def stop(servers, state):
    for server in servers:
        server.stop(grace=None).wait()
    for path in state.workloads:
        if os.path.exists(path):
            os.unlink(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--socket", action="append", required=True, metavar="PATH=SPIFFE_ID")
    ap.add_argument("--trust-domain", default="example.org")
    ap.add_argument("--ttl", type=float, default=3600.0, help="SVID lifetime, seconds")
    ap.add_argument("--rotate-every", type=float, default=0.0, help="seconds; 0: on command")
    ap.add_argument("--workdir", default=".", help="where federate writes its files")
    ap.add_argument("--stopped", action="store_true", help="start without serving")
    args = ap.parse_args()
    state = State(args)
    servers = [] if args.stopped else serve(state)
    stop_rotation = threading.Event()
    if args.rotate_every > 0:
        threading.Thread(target=state.rotate_forever, args=(stop_rotation,), daemon=True).start()
    print(f"fake-spire-agent ready {len(state.workloads)} sockets"
          + (" (stopped)" if args.stopped else ""), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "stop":
            stop(servers, state)
            servers = []
            reply = "ok stop"
        elif words[0] == "start":
            state.command(["rotate"])
            servers = servers or serve(state)
            reply = "ok start"
        else:
            reply = state.command(words)
        print(reply, flush=True)
    stop_rotation.set()
    stop(servers, state)


if __name__ == "__main__":
    main()
