#!/usr/bin/python3
"""A SPIFFE Workload API client written with Python grpcio against the
message classes protoc compiles from proto/spiffe/workload.proto
(workload_api_pb.py): an independent peer for mtlsd's server, sharing no
code with it.

As a program (so that tests can run it as another UID with `setpriv` and
inside a network namespace with `ip netns exec`):

    workload_api_client.py [--socket PATH] [--timeout S] [--no-header] COMMAND ...
      fetch-x509 [--count N]        X509SVIDResponse messages, one JSON line each
      fetch-bundles [--count N]     X509BundlesResponse messages
      fetch-jwt --audience A [--audience B] [--spiffe-id ID]
      fetch-jwt-bundles [--count N] JWTBundlesResponse messages (JWKS as JSON)
      validate --audience A --token T
      hold --connections N --streams M [--method M]
                                    N connections x M streams over raw HTTP/2
                                    that never read; prints {"held": N*M} once
                                    sent, and holds them until stdin closes

The socket defaults to $SPIFFE_ENDPOINT_SOCKET (unix:///path or a path).
Each response is printed as one JSON line as soon as it arrives (so a
caller can read a stream's pushes as they come). On a gRPC error the last
line is {"error": {"code": "PERMISSION_DENIED", "details": "..."}} and the
exit status is 2 (DEADLINE_EXCEEDED included: --timeout bounds the whole
call); a usage error exits 1.

As a module, the same calls return the dicts the program prints, raise
WorkloadApiError on a gRPC error, and Stream reads a stream on a thread so
that a test can wait (bounded) for its next message.
"""
import argparse
import json
import os
import queue
import socket
import sys
import threading

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workload_api_pb as pb  # noqa: E402  (the path above makes it importable)

DEFAULT_TIMEOUT = 30.0


class WorkloadApiError(Exception):
    """A call ended with a gRPC status other than OK."""

    def __init__(self, code, details):
        super().__init__(f"{code}: {details}")
        self.code = code          # the status name, e.g. "PERMISSION_DENIED"
        self.details = details

    def as_dict(self):
        return {"error": {"code": self.code, "details": self.details}}


def _error(rpc_error):
    code = rpc_error.code()
    return WorkloadApiError(code.name if code is not None else "UNKNOWN", rpc_error.details())


# --------------------------------------------------------------------------
# decoding what the server sends


def split_der(blob):
    """DER certificates concatenated (the Workload API's x509_svid and bundle
    fields) -> a list of DER certificates, in order. Raises ValueError on a
    truncated or malformed concatenation."""
    out, pos = [], 0
    while pos < len(blob):
        if blob[pos] != 0x30 or pos + 2 > len(blob):
            raise ValueError(f"no DER SEQUENCE at byte {pos}")
        first = blob[pos + 1]
        if first < 0x80:
            header, length = 2, first
        else:
            n = first & 0x7F
            if n == 0 or n > 4 or pos + 2 + n > len(blob):
                raise ValueError(f"bad DER length at byte {pos}")
            header, length = 2 + n, int.from_bytes(blob[pos + 2:pos + 2 + n], "big")
        end = pos + header + length
        if end > len(blob):
            raise ValueError(f"DER certificate at byte {pos} runs past the end")
        out.append(blob[pos:end])
        pos = end
    return out


def der_certs_to_pem(blob):
    """Concatenated DER certificates -> PEM strings (each parsed, so a broken
    certificate fails here and not later in a test)."""
    return [x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()
            for der in split_der(blob)]


def split_pem(text):
    """A PEM file's certificates, each as its own PEM string."""
    marker = "-----END CERTIFICATE-----"
    return [part.strip() + "\n" + marker + "\n" for part in text.split(marker) if part.strip()]


def pkcs8_der_to_pem(der):
    key = serialization.load_der_private_key(der, password=None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def x509_svid_response(msg):
    """X509SVIDResponse -> dict. "spiffe_id" is the first SVID's."""
    svids = [{"spiffe_id": s.spiffe_id,
              "chain_pem": der_certs_to_pem(s.x509_svid),
              "key_pem": pkcs8_der_to_pem(s.x509_svid_key),
              "bundle_pem": der_certs_to_pem(s.bundle),
              "hint": s.hint} for s in msg.svids]
    return {"spiffe_id": svids[0]["spiffe_id"] if svids else None,
            "svids": svids,
            "federated": {td: der_certs_to_pem(roots)
                          for td, roots in sorted(msg.federated_bundles.items())},
            "crl_count": len(msg.crl)}


def x509_bundles_response(msg):
    return {"bundles": {td: der_certs_to_pem(roots) for td, roots in sorted(msg.bundles.items())},
            "crl_count": len(msg.crl)}


def jwt_svid_response(msg):
    return {"svids": [{"spiffe_id": s.spiffe_id, "svid": s.svid, "hint": s.hint}
                      for s in msg.svids]}


def jwt_bundles_response(msg):
    """JWKS bytes -> parsed JSON (a JWKS that is not JSON fails here)."""
    return {"bundles": {td: json.loads(jwks) for td, jwks in sorted(msg.bundles.items())}}


def validate_response(msg):
    from google.protobuf import json_format
    return {"spiffe_id": msg.spiffe_id,
            "claims": json_format.MessageToDict(msg.claims) if msg.HasField("claims") else None}


DECODERS = {
    "FetchX509SVID": x509_svid_response,
    "FetchX509Bundles": x509_bundles_response,
    "FetchJWTSVID": jwt_svid_response,
    "FetchJWTBundles": jwt_bundles_response,
    "ValidateJWTSVID": validate_response,
}


# --------------------------------------------------------------------------
# calls


def target(socket_path):
    """A grpcio target for a Unix socket path or a unix:// address."""
    if socket_path.startswith("unix:"):
        return socket_path
    return "unix:" + os.path.abspath(socket_path)


def open_channel(socket_path):
    return grpc.insecure_channel(target(socket_path))


def metadata(header=True):
    return [pb.SECURITY_HEADER] if header else []


def unary(socket_path, method, request, header=True, timeout=DEFAULT_TIMEOUT):
    """One unary call; the decoded response, or WorkloadApiError."""
    with open_channel(socket_path) as channel:
        try:
            msg = pb.stub(channel, method)(request, metadata=metadata(header), timeout=timeout)
        except grpc.RpcError as e:
            raise _error(e) from None
    return DECODERS[method](msg)


def stream_messages(socket_path, method, count, header=True, timeout=DEFAULT_TIMEOUT):
    """Yields the first |count| decoded messages of a server stream, then
    cancels it; WorkloadApiError when the stream ends with an error (or
    |timeout| passes) first. An end with OK before |count| yields less."""
    request = pb.METHODS[method][1]()
    with open_channel(socket_path) as channel:
        call = pb.stub(channel, method)(request, metadata=metadata(header), timeout=timeout)
        got = 0
        try:
            for msg in call:
                yield DECODERS[method](msg)
                got += 1
                if got >= count:
                    break
        except grpc.RpcError as e:
            raise _error(e) from None
        finally:
            call.cancel()


def fetch_x509(socket_path, count=1, **kw):
    return list(stream_messages(socket_path, "FetchX509SVID", count, **kw))


def fetch_bundles(socket_path, count=1, **kw):
    return list(stream_messages(socket_path, "FetchX509Bundles", count, **kw))


def fetch_jwt_bundles(socket_path, count=1, **kw):
    return list(stream_messages(socket_path, "FetchJWTBundles", count, **kw))


def fetch_jwt(socket_path, audience, spiffe_id="", **kw):
    return unary(socket_path, "FetchJWTSVID",
                 pb.JWTSVIDRequest(audience=list(audience), spiffe_id=spiffe_id), **kw)


def validate(socket_path, audience, token, **kw):
    return unary(socket_path, "ValidateJWTSVID",
                 pb.ValidateJWTSVIDRequest(audience=audience, svid=token), **kw)


class Stream:
    """A server stream read on a thread into a queue, so that a test can wait
    (bounded) for the next message while the stream stays open:

        with Stream(sock, "FetchX509SVID") as s:
            first = s.next(timeout=30)
            ... make something happen ...
            pushed = s.next(timeout=30)

    next() raises WorkloadApiError once the stream ended with an error, and
    AssertionError when nothing came within |timeout|. close() cancels the
    call and closes the channel (the agent sees the stream go away)."""

    _END = object()

    def __init__(self, socket_path, method, header=True):
        self.method = method
        self._channel = open_channel(socket_path)
        request = pb.METHODS[method][1]()
        self._call = pb.stub(self._channel, method)(request, metadata=metadata(header))
        self._queue = queue.Queue()
        self.received = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        try:
            for msg in self._call:
                self._queue.put(DECODERS[self.method](msg))
        except grpc.RpcError as e:
            self._queue.put(_error(e))
            return
        except Exception as e:  # a message that does not decode: the test must see it
            self._queue.put(e)
            return
        self._queue.put(self._END)

    def next(self, timeout=DEFAULT_TIMEOUT):
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {self.method} message within {timeout:.1f}s "
                                 f"(after {self.received})") from None
        if item is self._END:
            self._queue.put(item)
            raise AssertionError(f"the {self.method} stream ended with OK after "
                                 f"{self.received} messages")
        if isinstance(item, Exception):
            self._queue.put(item)
            raise item
        self.received += 1
        return item

    def pending(self):
        """Messages (or the end) already received and not taken by next()."""
        return self._queue.qsize()

    def close(self):
        self._call.cancel()
        self._thread.join(timeout=DEFAULT_TIMEOUT)
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class NonReader:
    """Streams opened over HTTP/2 by hand (python3-h2) on one connection:
    the client grants the server every flow-control window there is and then
    never reads a byte, so the server's writes pile up in the socket until
    its buffer is full, and then in the server."""

    def __init__(self, socket_path, streams, method="FetchX509SVID", timeout=DEFAULT_TIMEOUT):
        import h2.config
        import h2.connection
        import h2.settings
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(socket_path[len("unix://"):] if socket_path.startswith("unix://")
                          else socket_path)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2 ** 31 - 1})
        conn.increment_flow_control_window(2 ** 31 - 1 - 65535)
        path = pb.METHODS[method][0]
        for _ in range(streams):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", path),
                                    (":authority", "localhost"),
                                    ("content-type", "application/grpc"), ("te", "trailers"),
                                    pb.SECURITY_HEADER])
            conn.send_data(sid, b"\x00\x00\x00\x00\x00", end_stream=True)  # the empty request
        try:
            self.sock.sendall(conn.data_to_send())
            self.refused = False
        except OSError:  # the server closed it at once (its per-caller connection limit)
            self.refused = True

    def close(self):
        self.sock.close()


# --------------------------------------------------------------------------
# the program


def _print(doc):
    sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
    sys.stdout.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", default=os.environ.get("SPIFFE_ENDPOINT_SOCKET"),
                        help="the Workload API socket (default: $SPIFFE_ENDPOINT_SOCKET)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="deadline of the whole call, seconds")
    parser.add_argument("--no-header", action="store_true",
                        help="omit the workload.spiffe.io security header")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("fetch-x509", "fetch-bundles", "fetch-jwt-bundles"):
        p = sub.add_parser(name)
        p.add_argument("--count", type=int, default=1, help="stream messages to read")
    p = sub.add_parser("fetch-jwt")
    p.add_argument("--audience", action="append", default=[])
    p.add_argument("--spiffe-id", default="")
    p = sub.add_parser("validate")
    p.add_argument("--audience", required=True)
    p.add_argument("--token", required=True)
    p = sub.add_parser("hold")
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--streams", type=int, default=1, help="per connection")
    p.add_argument("--method", default="FetchX509SVID", choices=sorted(pb.METHODS))
    args = parser.parse_args(argv)
    if not args.socket:
        parser.error("no --socket and no SPIFFE_ENDPOINT_SOCKET")
    kw = {"header": not args.no_header, "timeout": args.timeout}
    streams = {"fetch-x509": "FetchX509SVID", "fetch-bundles": "FetchX509Bundles",
               "fetch-jwt-bundles": "FetchJWTBundles"}
    if args.command == "hold":
        held = [NonReader(args.socket, args.streams, args.method, args.timeout)
                for _ in range(args.connections)]
        _print({"held": args.connections * args.streams,
                "refused_connections": sum(h.refused for h in held)})
        sys.stdin.read()  # until the caller closes our stdin (or we are killed)
        for h in held:
            h.close()
        return 0
    try:
        if args.command in streams:
            for doc in stream_messages(args.socket, streams[args.command], args.count, **kw):
                _print(doc)
        elif args.command == "fetch-jwt":
            _print(fetch_jwt(args.socket, args.audience, args.spiffe_id, **kw))
        else:
            _print(validate(args.socket, args.audience, args.token, **kw))
    except WorkloadApiError as e:
        _print(e.as_dict())
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
