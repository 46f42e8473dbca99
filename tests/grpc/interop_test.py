"""Interop of mtlsd's gRPC client and server (grpc/) with a real gRPC stack.

Python grpcio (Debian's python3-grpcio) plays the other side, over TLS with a
test PKI made by the openssl CLI: a root, and a leaf for localhost /
127.0.0.1 (the server's, also used as a client certificate for mTLS).

    our client (grpc_probe client)  ->  grpcio server
    grpcio client                   ->  our server (grpc_probe server)

Run after `bazel build //tests/grpc:grpc_probe`:

    GRPC_PROBE=bazel-bin/tests/grpc/grpc_probe /usr/bin/python3 -m pytest tests/grpc/interop_test.py -q

GRPC_PROBE names the probe binary (default: bazel-bin/tests/grpc/grpc_probe
relative to the repository root).
"""

import concurrent.futures
import os
import socket
import subprocess
import threading
import time

import grpc
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBE = os.environ.get("GRPC_PROBE", os.path.join(ROOT, "bazel-bin/tests/grpc/grpc_probe"))
if not os.path.isabs(PROBE):
    PROBE = os.path.join(ROOT, PROBE)

PROBE_TIMEOUT_S = 20
SERVICE = "test.Echo"
# grpcio would otherwise honour http_proxy from the environment.
CHANNEL_OPTIONS = [("grpc.ssl_target_name_override", "localhost"), ("grpc.enable_http_proxy", 0)]

pytestmark = pytest.mark.skipif(
    not os.access(PROBE, os.X_OK), reason=f"build //tests/grpc:grpc_probe first ({PROBE})"
)


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    (d / "leaf.cnf").write_text(
        "[leaf]\n"
        "subjectAltName = DNS:localhost, IP:127.0.0.1\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth, clientAuth\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "root.key", "-out", "root.pem", "-days", "2",
            "-subj", "/CN=interop-root", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost", cwd=d)
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "root.pem", "-CAkey", "root.key",
            "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.cnf",
            "-extensions", "leaf", cwd=d)
    # A second, unrelated root: a client trusting it must refuse our server.
    openssl("req", "-x509", *ec, "-keyout", "other.key", "-out", "other.pem", "-days", "2",
            "-subj", "/CN=other-root", cwd=d)
    return {
        "dir": d,
        "root": str(d / "root.pem"),
        "other_root": str(d / "other.pem"),
        "cert": str(d / "leaf.pem"),
        "key": str(d / "leaf.key"),
        "root_pem": (d / "root.pem").read_bytes(),
        "cert_pem": (d / "leaf.pem").read_bytes(),
        "key_pem": (d / "leaf.key").read_bytes(),
    }


# ---------------------------------------------------------------------------
# our client -> grpcio server


class Recorder:
    """What the grpcio handlers saw, for assertions."""

    def __init__(self):
        self.lock = threading.Lock()
        self.metadata = {}
        self.time_remaining = None


def grpcio_handlers(rec):
    def unary(request, context):
        with rec.lock:
            rec.metadata = dict(context.invocation_metadata())
        return request

    def stream(request, context):
        for i in range(3):
            yield request + b"#%d" % i

    def status(request, context):
        code_text, _, message = request.decode().partition(":")
        code = next(c for c in grpc.StatusCode if c.value[0] == int(code_text))
        context.abort(code, message)

    def deadline(request, context):
        with rec.lock:
            rec.time_remaining = context.time_remaining()
        return b"ok"

    def sleep(request, context):
        time.sleep(2)
        return b"late"

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Status": grpc.unary_unary_rpc_method_handler(status),
            "Deadline": grpc.unary_unary_rpc_method_handler(deadline),
            "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
        },
    )


@pytest.fixture(scope="module")
def grpcio_server(pki):
    rec = Recorder()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpcio_handlers(rec),))
    creds = grpc.ssl_server_credentials([(pki["key_pem"], pki["cert_pem"])])
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    yield port, rec
    server.stop(grace=None)


def probe_client(pki, port, path, data=b"", expect_status=None, ca=None, extra=()):
    args = [PROBE, "client", "--target", f"127.0.0.1:{port}", "--ca", ca or pki["root"],
            "--authority", "localhost", "--path", path, "--data", data.hex(), *extra]
    if expect_status is not None:
        args += ["--expect-status", str(expect_status)]
    p = subprocess.run(args, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    messages = [bytes.fromhex(line.split(" ", 1)[1]) for line in p.stdout.splitlines()
                if line.startswith("message ")]
    status = next(int(line.split()[1]) for line in p.stdout.splitlines()
                  if line.startswith("status "))
    text = next(line[len("status-message "):] for line in p.stdout.splitlines()
                if line.startswith("status-message"))
    return p.returncode, messages, status, text


def test_our_client_unary_call_to_grpcio(pki, grpcio_server):
    port, _ = grpcio_server
    rc, messages, status, _ = probe_client(pki, port, "/test.Echo/Unary", b"hello grpcio", 0)
    assert (rc, status, messages) == (0, 0, [b"hello grpcio"])


def test_our_client_receives_a_grpcio_server_stream(pki, grpcio_server):
    port, _ = grpcio_server
    rc, messages, status, _ = probe_client(pki, port, "/test.Echo/Stream", b"s", 0)
    assert (rc, status) == (0, 0)
    assert messages == [b"s#0", b"s#1", b"s#2"]


def test_grpcio_status_and_message_reach_our_client(pki, grpcio_server):
    port, _ = grpcio_server
    rc, messages, status, text = probe_client(
        pki, port, "/test.Echo/Status", "7:denied: 100% sure, caf\u00e9".encode(), 7)
    assert (rc, status, messages) == (0, 7, [])
    assert text == "denied: 100% sure, caf\u00e9"


def test_our_metadata_reaches_grpcio(pki, grpcio_server):
    port, rec = grpcio_server
    rc, _, status, _ = probe_client(
        pki, port, "/test.Echo/Unary", b"m", 0,
        extra=["--metadata", "authorization=Bearer abc.def", "--metadata", "x-trace=42"])
    assert (rc, status) == (0, 0)
    assert rec.metadata["authorization"] == "Bearer abc.def"
    assert rec.metadata["x-trace"] == "42"
    assert rec.metadata["user-agent"].startswith("mtlsd/0.1")


def test_our_deadline_propagates_to_grpcio(pki, grpcio_server):
    port, rec = grpcio_server
    rc, _, status, _ = probe_client(pki, port, "/test.Echo/Deadline", b"", 0,
                                    extra=["--deadline-ms", "5000"])
    assert (rc, status) == (0, 0)
    assert rec.time_remaining is not None and 0 < rec.time_remaining <= 5.0


def test_our_deadline_is_enforced_against_a_slow_grpcio_handler(pki, grpcio_server):
    port, _ = grpcio_server
    started = time.monotonic()
    rc, _, status, text = probe_client(pki, port, "/test.Echo/Sleep", b"", 4,
                                       extra=["--deadline-ms", "300"])
    assert (rc, status) == (0, 4), text
    assert time.monotonic() - started < 1.9


def test_grpcio_unknown_method_is_unimplemented_for_our_client(pki, grpcio_server):
    port, _ = grpcio_server
    rc, _, status, _ = probe_client(pki, port, "/test.Echo/Missing", b"", 12)
    assert (rc, status) == (0, 12)


def test_our_client_refuses_a_grpcio_server_it_cannot_verify(pki, grpcio_server):
    port, _ = grpcio_server
    rc, _, status, text = probe_client(pki, port, "/test.Echo/Unary", b"", 14,
                                       ca=pki["other_root"])
    assert (rc, status) == (0, 14)
    assert "certificate verification failed" in text


# ---------------------------------------------------------------------------
# grpcio client -> our server


@pytest.fixture(scope="module")
def our_server(pki):
    log = open(pki["dir"] / "server.err", "w+")
    p = subprocess.Popen(
        [PROBE, "server", "--listen", "127.0.0.1:0", "--cert", pki["cert"], "--key", pki["key"],
         "--ca", pki["root"], "--max-message", "65536"],
        stdout=subprocess.PIPE, stderr=log, text=True)
    line = p.stdout.readline()
    assert line.startswith("listening "), line + (pki["dir"] / "server.err").read_text()
    yield int(line.split()[1]), p
    p.terminate()
    p.wait(timeout=PROBE_TIMEOUT_S)
    log.close()
    assert p.returncode == 0


def channel(pki, port, client_cert=False):
    if client_cert:
        creds = grpc.ssl_channel_credentials(pki["root_pem"], pki["key_pem"], pki["cert_pem"])
    else:
        creds = grpc.ssl_channel_credentials(pki["root_pem"])
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=CHANNEL_OPTIONS)


def test_grpcio_unary_call_to_our_server(pki, our_server):
    port, _ = our_server
    with channel(pki, port) as ch:
        assert ch.unary_unary("/test.Echo/Unary")(b"hi there", timeout=10) == b"hi there"


def test_grpcio_receives_our_server_stream(pki, our_server):
    port, _ = our_server
    with channel(pki, port) as ch:
        assert list(ch.unary_stream("/test.Echo/Stream")(b"x", timeout=10)) == [b"x"] * 3


def test_our_status_and_message_reach_grpcio(pki, our_server):
    port, _ = our_server
    with channel(pki, port) as ch:
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/test.Echo/Status")("9:not now: 100% \u00e9".encode(), timeout=10)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.details() == "not now: 100% \u00e9"


def test_grpcio_metadata_reaches_our_server(pki, our_server):
    port, _ = our_server
    with channel(pki, port) as ch:
        reply = ch.unary_unary("/test.Echo/Metadata")(
            b"", timeout=10, metadata=(("authorization", "Bearer t0k.en"),))
    assert reply == b"Bearer t0k.en"


def test_grpcio_deadline_propagates_to_our_server(pki, our_server):
    port, _ = our_server
    with channel(pki, port) as ch:
        remaining_ms = int(ch.unary_unary("/test.Echo/Timeout")(b"", timeout=3))
        no_deadline = int(ch.unary_unary("/test.Echo/Timeout")(b""))
    assert 0 < remaining_ms <= 3000
    assert no_deadline == -1


def test_grpcio_deadline_exceeded_against_our_server(pki, our_server):
    port, p = our_server
    with channel(pki, port) as ch:
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/test.Echo/Sleep")(b"", timeout=0.3)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Our server's handler learns that the call ended.
    assert p.stdout.readline().startswith("closed ")


def test_unknown_method_on_our_server_is_unimplemented_for_grpcio(pki, our_server):
    port, _ = our_server
    with channel(pki, port) as ch:
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/test.Echo/Missing")(b"", timeout=10)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "/test.Echo/Missing" in e.value.details()


def test_oversized_grpcio_request_is_resource_exhausted(pki, our_server):
    port, _ = our_server
    with channel(pki, port) as ch:
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/test.Echo/Unary")(b"x" * 70000, timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The connection is still usable afterwards.
        assert ch.unary_unary("/test.Echo/Unary")(b"small", timeout=10) == b"small"


def test_our_server_sees_the_grpcio_client_certificate(pki, our_server):
    port, _ = our_server
    with channel(pki, port, client_cert=True) as ch:
        assert ch.unary_unary("/test.Echo/Peer")(b"", timeout=10) == b"localhost"
    with channel(pki, port) as ch:
        assert ch.unary_unary("/test.Echo/Peer")(b"", timeout=10) == b"none"


def test_grpcio_concurrent_calls_on_one_connection(pki, our_server):
    port, _ = our_server
    with channel(pki, port) as ch:
        call = ch.unary_unary("/test.Echo/Unary")
        futures = [call.future(b"c%d" % i, timeout=10) for i in range(50)]
        assert [f.result() for f in futures] == [b"c%d" % i for i in range(50)]


def curl(pki, port, *args):
    """An HTTP/2 request from curl (not a gRPC client): returns status and headers."""
    p = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", pki["root"], "--noproxy", "*",
         "--resolve", f"localhost:{port}:127.0.0.1", "-o", "/dev/null", "-D", "-",
         *args, f"https://localhost:{port}/test.Echo/Unary"],
        capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), lines[0], headers


def test_non_post_request_gets_405_from_our_server(pki, our_server):
    port, _ = our_server
    status, first_line, headers = curl(pki, port)
    assert first_line.startswith("HTTP/2 "), first_line
    assert status == 405
    assert headers.get("grpc-status") == "13"


def test_non_grpc_content_type_gets_415_from_our_server(pki, our_server):
    port, _ = our_server
    # No body: curl 7.88 reports an error instead of the response when the
    # server answers early and then resets the upload with NO_ERROR (which
    # RFC 9113 8.1 allows, and grpcio handles: see the oversize test).
    status, _, headers = curl(pki, port, "-X", "POST", "-H", "content-type: application/json")
    assert status == 415
    assert headers.get("grpc-status") == "13"


# ---------------------------------------------------------------------------
# what our server logs (grpc_probe's on_connection_error / on_call_refused)


def server_log(pki):
    return (pki["dir"] / "server.err").read_text().splitlines()


def wait_for_log_line(pki, skip, needle):
    """The first server log line after the first |skip| lines that contains |needle|."""
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    while True:
        lines = server_log(pki)[skip:]
        hits = [line for line in lines if needle in line]
        if hits:
            return hits[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no {needle!r} in the server log after line {skip}: {lines}")
        time.sleep(0.05)


def test_plain_http_to_our_server_is_logged_with_the_tls_reason(pki, our_server):
    # No TLS session ever existed: no "certificate verification" in the text.
    port, _ = our_server
    skip = len(server_log(pki))
    for payload, reason in [(b"GET / HTTP/1.1\r\n\r\n", "HTTP_REQUEST"),
                            (b"SSH-2.0-OpenSSH_9.2\r\n", "WRONG_VERSION_NUMBER")]:
        with socket.create_connection(("127.0.0.1", port)) as s:
            peer = "%s:%d" % s.getsockname()
            s.sendall(payload)
            try:
                while s.recv(4096):
                    pass
            except ConnectionResetError:
                pass
        line = wait_for_log_line(pki, skip, f"connection from {peer}:")
        assert line.endswith(f": TLS handshake failed: {reason}"), line


def openssl_client_rejecting_our_server(pki, port, version):
    p = subprocess.run(
        ["openssl", "s_client", f"-{version}", "-connect", f"127.0.0.1:{port}", "-alpn", "h2",
         "-verify_return_error", "-CAfile", pki["other_root"]],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    assert p.returncode != 0
    assert "unable to get local issuer certificate" in p.stdout + p.stderr


def test_tls12_openssl_client_rejecting_our_certificate_is_logged_with_its_alert(pki, our_server):
    port, _ = our_server
    skip = len(server_log(pki))
    openssl_client_rejecting_our_server(pki, port, "tls1_2")
    line = wait_for_log_line(pki, skip, "TLS handshake failed")
    assert line.endswith(": TLS handshake failed: peer sent alert TLSV1_ALERT_UNKNOWN_CA"), line


def test_tls13_openssl_client_rejecting_our_certificate_is_logged_as_a_record_error(
        pki, our_server):
    # OpenSSL sends this alert before it has switched to the handshake keys,
    # i.e. unencrypted, where BoringSSL expects an encrypted record: the
    # server cannot read the alert, only that a 2-byte record did not decrypt.
    # Both errors are reported: the newest (what failed), then the oldest
    # (where it started).
    port, _ = our_server
    skip = len(server_log(pki))
    openssl_client_rejecting_our_server(pki, port, "tls1_3")
    line = wait_for_log_line(pki, skip, "TLS handshake failed")
    assert line.endswith(
        ": TLS handshake failed: DECRYPTION_FAILED_OR_BAD_RECORD_MAC (BAD_PACKET_LENGTH)"), line


def test_calls_refused_by_our_server_are_logged(pki, our_server):
    port, _ = our_server
    skip = len(server_log(pki))
    with channel(pki, port) as ch:
        with pytest.raises(grpc.RpcError):
            ch.unary_unary("/test.Echo/Gone")(b"", timeout=10)
        with pytest.raises(grpc.RpcError):
            ch.unary_unary("/test.Echo/Unary")(b"x" * 70000, timeout=10)
    line = wait_for_log_line(pki, skip, " to /test.Echo/Gone: ")
    assert line.startswith("grpc_probe: refused call from 127.0.0.1:"), line
    assert line.endswith(": UNIMPLEMENTED: unknown method /test.Echo/Gone"), line
    line = wait_for_log_line(pki, skip, " to /test.Echo/Unary: ")
    assert ": RESOURCE_EXHAUSTED: " in line, line
