"""A control plane that misbehaves on demand, at the HTTP/2 frame level and
at the message level, for test_hostile_control_plane.py.

It speaks raw HTTP/2 (python3-h2) over TLS (the `ssl` module), so it can do
what no gRPC library lets a server do: stall after the response HEADERS or in
the middle of a message, announce a message larger than any client accepts,
send a length prefix with an invalid flag, GOAWAY every request, reset
streams. While it behaves it serves IstioCertificateService/CreateCertificate
(signs the CSR's key for the SPIFFE ID the CSR names, with the PKI's
intermediate) and MeshConfig/Watch (complete snapshots of a mesh dictionary
shaped as in test_control_plane.py; every open stream gets a new one when
the dictionary or the fault changes).

`fault` is switched at any time (set_fault); every request is recorded with
its time and the fault in force, so a test can bound how often the agent
asked. Runs in the test's process: threads on a loopback socket, all stopped
and joined (bounded) by stop().
"""
import datetime
import socket
import ssl
import struct
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import TRUST_DOMAIN, free_port
from py_ca import Request, Response, Snapshot, fill_policy, sign_leaf

CREATE = "/istio.v1.auth.IstioCertificateService/CreateCertificate"
WATCH = "/mtlsd.mesh.v1.MeshConfig/Watch"
POLL_S = 0.05
SEND_TIMEOUT_S = 5
STOP_JOIN_S = 5
ROGUE_ID = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/intruder"
ANNOUNCED_HUGE = 0x7FFFFFFF  # a length prefix far over any client's limit
HUGE_BYTES_SENT = 1 << 20    # what actually follows it (as flow control allows)

# What each fault does to which call ("cert": CreateCertificate, "watch":
# MeshConfig/Watch, "all": every request).
FAULTS = {
    "stall_headers": "cert",    # response HEADERS, then nothing
    "stall_data": "cert",       # HEADERS and half of the message, then nothing
    "oversized": "cert",        # a prefix announcing 2 GiB, then 1 MiB of it
    "bad_prefix": "cert",       # compressed-flag byte 2
    "bad_protobuf": "cert",     # a well-framed message that is not protobuf
    "goaway": "all",            # GOAWAY refusing the request, connection closed
    "rst": "cert",              # RST_STREAM(REFUSED_STREAM)
    "wrong_identity": "cert",   # a valid chain, for another SPIFFE ID
    "untrusted_chain": "cert",  # signed by a CA no bundle holds
    "watch_oversized": "watch",
    "watch_bad_prefix": "watch",
    "watch_garbage": "watch",   # a message that is no MeshSnapshot
    "drop_root": "watch",       # a snapshot whose bundle lacks the root in use
}


def grpc_frame(message, flag=0):
    return struct.pack(">BI", flag, len(message)) + message


class Issuer:
    """The PKI's intermediate (good) and a rogue CA made here (bad)."""

    def __init__(self, pki):
        self.cert = x509.load_pem_x509_certificate((pki / "intermediate.pem").read_bytes())
        self.key = serialization.load_pem_private_key((pki / "intermediate.key").read_bytes(),
                                                      None)
        self.root_pem = (pki / "root.pem").read_text()
        self.rogue_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rogue root")])
        self.rogue = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                      .public_key(self.rogue_key.public_key())
                      .serial_number(x509.random_serial_number())
                      .not_valid_before(now - datetime.timedelta(minutes=5))
                      .not_valid_after(now + datetime.timedelta(days=1))
                      .add_extension(x509.BasicConstraints(ca=True, path_length=1), True)
                      .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                                   False, False), True)
                      .sign(self.rogue_key, hashes.SHA256()))
        self.rogue_pem = self.rogue.public_bytes(serialization.Encoding.PEM).decode()

    def sign(self, csr, ttl, uri=None, rogue=False):
        issuer, key = (self.rogue, self.rogue_key) if rogue else (self.cert, self.key)
        return sign_leaf(csr, issuer, key, ttl, uri)


class HostileCp:
    def __init__(self, pki, mesh, ttl=20):
        self.pki, self.ttl = pki, ttl
        self.issuer = Issuer(pki)
        self.lock = threading.Lock()
        self.mesh, self.generation = mesh, 1
        self.fault = None
        self.requests = []  # (monotonic time, path, fault in force)
        self.issued = 0
        self.stopping = threading.Event()
        self.threads = []
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pki / "workloads/mtls-ca/chain.pem",
                                 pki / "workloads/mtls-ca/key.pem")
        self.ctx.set_alpn_protocols(["h2"])
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.listener.settimeout(POLL_S)
        self._spawn(self._accept_loop)

    # ---- control

    def set_fault(self, fault):
        assert fault is None or fault in FAULTS, fault
        with self.lock:
            self.fault = fault
            self.generation += 1  # open Watch streams get the next message now

    def set_mesh(self, mesh):
        with self.lock:
            self.mesh = mesh
            self.generation += 1

    def count(self, path, since=0.0, fault=None):
        with self.lock:
            return sum(1 for t, p, f in self.requests
                       if p == path and t >= since and (fault is None or f == fault))

    def stop(self):
        self.stopping.set()
        self.listener.close()
        for t in self.threads:
            t.join(timeout=STOP_JOIN_S)
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"stand-in threads still running: {alive}"

    # ---- connections

    def _spawn(self, target, *args):
        t = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(t)
        t.start()

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                raw, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._spawn(self._serve, raw)

    def _serve(self, raw):
        try:
            raw.settimeout(SEND_TIMEOUT_S)
            tls = self.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        try:
            Connection(self, tls).run()
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
            pass
        finally:
            tls.close()

    # ---- answers

    def fault_for(self, path):
        with self.lock:
            fault = self.fault
        if fault is None:
            return None
        target = FAULTS[fault]
        if target == "all" or (target == "cert") == (path == CREATE):
            return fault
        return None

    def certificate_response(self, body, fault):
        req = Request.FromString(body[5:])
        csr = x509.load_pem_x509_csr(req.csr.encode())
        ttl = self.ttl if req.validity_duration <= 0 else min(req.validity_duration, self.ttl)
        leaf, issuer = self.issuer.sign(csr, ttl,
                                        uri=ROGUE_ID if fault == "wrong_identity" else None,
                                        rogue=fault == "untrusted_chain")
        resp = Response()
        resp.cert_chain.append(leaf)
        resp.cert_chain.append(issuer)
        resp.root_cert.ca_cert.append(self.issuer.rogue_pem if fault == "untrusted_chain"
                                      else self.issuer.root_pem)
        if fault is None:
            with self.lock:
                self.issued += 1
        return resp.SerializeToString()

    def snapshot(self, fault):
        """The snapshot message for the current mesh (and fault)."""
        with self.lock:
            spec, generation = self.mesh, self.generation
        snap = Snapshot()
        snap.version = str(generation)
        for td, files in spec.get("trust_bundles", {}).items():
            b = snap.trust_bundles.add()
            b.trust_domain = td
            if fault == "drop_root":
                b.roots_pem.append(self.issuer.rogue_pem)
            else:
                for f in files:
                    b.roots_pem.append(open(f).read())
        policy = spec.get("policy", {})
        if fault == "drop_root":  # were it applied, frontend would be refused
            policy = {"default": "deny", "rules": []}
        fill_policy(snap.policy, policy)
        for d in spec.get("destinations", []):
            dst = snap.destinations.add()
            dst.address = d["address"]
            dst.spiffe_id = d.get("spiffe_id", "")
        return snap.SerializeToString()


class Connection:
    """One HTTP/2 connection: requests assembled, answered per the fault."""

    def __init__(self, cp, tls):
        self.cp, self.tls = cp, tls
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.paths, self.bodies = {}, {}
        self.watches = {}  # stream id -> generation last sent
        self.dead = set()  # streams reset or stalled: never written again
        self.closing = False

    def run(self):
        self.h2.initiate_connection()
        self.flush()
        self.tls.settimeout(POLL_S)
        while not self.cp.stopping.is_set() and not self.closing:
            try:
                data = self.tls.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                data = None
            if data == b"":
                return
            if data:
                for event in self.h2.receive_data(data):
                    self.on_event(event)
            self.push_watches()
            self.flush()

    def flush(self):
        out = self.h2.data_to_send()
        if out:
            self.tls.settimeout(SEND_TIMEOUT_S)
            self.tls.sendall(out)
            self.tls.settimeout(POLL_S)

    def on_event(self, event):
        if isinstance(event, h2.events.RequestReceived):
            headers = dict(event.headers)
            self.paths[event.stream_id] = headers.get(":path", "")
            self.bodies[event.stream_id] = b""
        elif isinstance(event, h2.events.DataReceived):
            self.bodies[event.stream_id] = self.bodies.get(event.stream_id, b"") + event.data
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.on_request(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.dead.add(event.stream_id)
            self.watches.pop(event.stream_id, None)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closing = True

    def on_request(self, sid):
        path = self.paths.get(sid, "")
        fault = self.cp.fault_for(path)
        with self.cp.lock:
            self.cp.requests.append((time.monotonic(), path, fault))
        if fault == "goaway":
            self.h2.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR,
                                     additional_data=b"go away", last_stream_id=0)
            self.flush()
            self.closing = True
            return
        if fault == "rst":
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if path == CREATE:
            self.answer_certificate(sid, fault)
        elif path == WATCH:
            self.start_headers(sid)
            self.send_watch_message(sid)
        else:
            self.h2.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc"),
                                       ("grpc-status", "12")], end_stream=True)

    def start_headers(self, sid):
        self.h2.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])

    def finish(self, sid, message):
        self.h2.send_data(sid, grpc_frame(message))
        self.h2.send_headers(sid, [("grpc-status", "0")], end_stream=True)

    def send_capped(self, sid, data):
        """As much of |data| as flow control allows now (a hostile server
        need not finish what it started)."""
        room = min(self.h2.local_flow_control_window(sid), len(data))
        chunk = self.h2.max_outbound_frame_size
        for i in range(0, room, chunk):
            self.h2.send_data(sid, data[i:min(i + chunk, room)])

    def answer_certificate(self, sid, fault):
        self.start_headers(sid)
        if fault == "stall_headers":
            self.dead.add(sid)
            return
        message = self.cp.certificate_response(self.bodies.get(sid, b""), fault)
        if fault == "stall_data":
            self.h2.send_data(sid, grpc_frame(message)[:len(message) // 2])
            self.dead.add(sid)
        elif fault == "oversized":
            self.send_capped(sid, struct.pack(">BI", 0, ANNOUNCED_HUGE)
                             + b"\x00" * HUGE_BYTES_SENT)
            self.dead.add(sid)
        elif fault == "bad_prefix":
            self.h2.send_data(sid, grpc_frame(message, flag=2))
            self.h2.send_headers(sid, [("grpc-status", "0")], end_stream=True)
        elif fault == "bad_protobuf":
            self.finish(sid, b"\xff\x00\x13not a protobuf message")
        else:
            self.finish(sid, message)

    def send_watch_message(self, sid):
        fault = self.cp.fault_for(WATCH)
        with self.cp.lock:
            self.watches[sid] = self.cp.generation
        if fault == "watch_oversized":
            self.send_capped(sid, struct.pack(">BI", 0, ANNOUNCED_HUGE) + b"\x00" * HUGE_BYTES_SENT)
            self.watches.pop(sid)
            self.dead.add(sid)
        elif fault == "watch_bad_prefix":
            self.h2.send_data(sid, grpc_frame(self.cp.snapshot(None), flag=2))
        elif fault == "watch_garbage":
            self.h2.send_data(sid, grpc_frame(b"\xff\x00\x13not a snapshot"))
        else:
            self.h2.send_data(sid, grpc_frame(self.cp.snapshot(fault)))

    def push_watches(self):
        with self.cp.lock:
            generation = self.cp.generation
        for sid, sent in list(self.watches.items()):
            if sent != generation and sid not in self.dead:
                try:
                    self.send_watch_message(sid)
                except h2.exceptions.StreamClosedError:
                    self.watches.pop(sid, None)
