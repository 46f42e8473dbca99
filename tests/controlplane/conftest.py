"""Fixtures for the mtls-ca interop suite (test_mtls_ca.py).

Everything is real: the mtls-ca binary (MTLS_CA_BIN) as a process on
127.0.0.1, a development PKI from certs/mkpki.sh --control-plane, Python
grpcio as the gRPC client over TLS, service-account tokens minted with
PyJWT and CSRs made with cryptography. Message classes come from the
project's own .proto files, compiled into a descriptor set by protoc-c.

Rules every helper follows:
  * the server listens on port 0 and the test reads the bound port from its
    log, so no port is ever guessed;
  * every wait is bounded (WAIT seconds unless a test says otherwise);
  * every process is stopped by PID at teardown (SIGTERM, bounded wait,
    SIGKILL), and must have exited 0;
  * a sanitizer report in the server's stderr fails the test.
"""

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import descriptor_pb2, message_factory

REPO = Path(__file__).resolve().parents[2]
MTLS_CA_BIN = os.environ.get("MTLS_CA_BIN") or str(REPO / "bazel-bin" / "controlplane" / "mtls-ca")
MKPKI = REPO / "certs" / "mkpki.sh"
PROTOC_C = "/usr/bin/protoc-c"

TRUST_DOMAIN = "example.org"
ISSUER = "https://kubernetes.default.svc"
AUDIENCE = "istio-ca"
MAX_TTL_S = 3600
DEFAULT_TTL_S = 1800
MESH_POLL_MS = 100
CP_NAME = "mtls-ca"  # DNS SAN of the server certificate
CREATE = "/istio.v1.auth.IstioCertificateService/CreateCertificate"
WATCH = "/mtlsd.mesh.v1.MeshConfig/Watch"

WAIT = float(os.environ.get("MTLS_CA_TEST_WAIT", "30"))
# The line that ends mtls-ca's counter dump (SIGUSR1): lines before it may
# still be on their way while it is missing.
COUNTERS_END = "# end of mtls-ca counters"
STOP_WAIT = float(os.environ.get("MTLS_CA_TEST_STOP_WAIT", "15"))
RPC_TIMEOUT = float(os.environ.get("MTLS_CA_TEST_RPC_TIMEOUT", "20"))

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")

def wait_until(predicate, what, timeout=WAIT, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def openssl(*args, cwd=None):
    p = subprocess.run(["openssl", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                       timeout=WAIT)
    assert p.returncode == 0, f"openssl {' '.join(map(str, args))}: {p.stderr}"
    return p.stdout


# --------------------------------------------------------------------------
# PKI, protos, tokens, CSRs


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def make_pki(d):
    """certs/mkpki.sh --control-plane in directory |d|, as the dictionary
    the helpers below take (the `pki` fixture; bench/k8s_scale.py too)."""
    d = Path(d)
    p = subprocess.run(["bash", str(MKPKI), "--out", str(d), "--trust-domain", TRUST_DOMAIN,
                        "--control-plane"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    # A second token signer the server does not trust (forged tokens).
    forged = ec.generate_private_key(ec.SECP256R1())
    return {
        "dir": d,
        "root": d / "root.pem",
        "root_key": d / "root.key",
        "intermediate": d / "intermediate.pem",
        "intermediate_key": d / "intermediate.key",
        "cp_chain": d / "control-plane" / "chain.pem",
        "cp_key": d / "control-plane" / "key.pem",
        "token_key": (d / "tokens" / "signer.key").read_bytes(),
        "token_pub": d / "tokens" / "signer.pub.pem",
        "forged_key": forged.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()),
    }


class Messages:
    """The protobuf message classes of proto/istio/ca.proto, mesh.proto, node.proto and jwt.proto."""

    def __init__(self, descriptor_set):
        fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
        classes = message_factory.GetMessages(fds.file)
        self.CertRequest = classes["istio.v1.auth.IstioCertificateRequest"]
        self.CertResponse = classes["istio.v1.auth.IstioCertificateResponse"]
        self.WatchRequest = classes["mtlsd.mesh.v1.WatchRequest"]
        self.MeshSnapshot = classes["mtlsd.mesh.v1.MeshSnapshot"]
        self.WantRequest = classes["mtlsd.mesh.v1.WantRequest"]
        self.WantResponse = classes["mtlsd.mesh.v1.WantResponse"]
        self.NodeInfoRequest = classes["mtlsd.node.v1.NodeInfoRequest"]
        self.NodeInfoResponse = classes["mtlsd.node.v1.NodeInfoResponse"]
        self.SignJwtSvidRequest = classes["mtlsd.jwt.v1.SignJwtSvidRequest"]
        self.SignJwtSvidResponse = classes["mtlsd.jwt.v1.SignJwtSvidResponse"]
        self.WatchJwtBundlesRequest = classes["mtlsd.jwt.v1.WatchJwtBundlesRequest"]
        self.JwtBundles = classes["mtlsd.jwt.v1.JwtBundles"]


@pytest.fixture(scope="session")
def msgs(tmp_path_factory):
    out = tmp_path_factory.mktemp("proto") / "mtls.desc"
    p = subprocess.run([PROTOC_C, "-I.", "-I/usr/include", "--include_imports",
                        f"--descriptor_set_out={out}", "proto/istio/ca.proto",
                        "proto/mtlsd/mesh.proto", "proto/mtlsd/node.proto",
                        "proto/mtlsd/jwt.proto"], cwd=REPO, capture_output=True, text=True,
                       timeout=WAIT)
    assert p.returncode == 0, p.stderr
    return Messages(out.read_bytes())


def mint_token(key_pem, sub="system:serviceaccount:default:frontend", iss=ISSUER, aud=AUDIENCE,
               exp_in=600, node=None, **extra):
    """A projected service-account token; |node| adds the claims of a token
    bound to a pod on that node (Kubernetes 1.30+: kubernetes.io.node.name)."""
    now = int(time.time())
    claims = {"iss": iss, "aud": aud, "sub": sub, "iat": now, "nbf": now - 5, "exp": now + exp_in}
    if node is not None:
        _, _, namespace, account = sub.split(":", 3)
        claims["kubernetes.io"] = {"namespace": namespace, "node": {"name": node, "uid": "n-1"},
                                   "pod": {"name": f"{account}-x7k2p", "uid": "p-1"},
                                   "serviceaccount": {"name": account, "uid": "s-1"}}
    claims.update(extra)
    return jwt.encode(claims, key_pem, algorithm="ES256")


def make_csr(uri=None, cn="workload"):
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if uri is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


# --------------------------------------------------------------------------
# the server


def write_mesh(path, pki, extra_roots=(), rules=None, destinations=None, workload_policies=None):
    """Writes a mesh file atomically (rename), as a ConfigMap update would.
    |workload_policies|, when given, is the YAML of the list's entries; the
    key then starts at line 14, its first entry at line 15."""
    roots = ", ".join(str(r) for r in [pki["root"], *extra_roots])
    if rules is None:
        rules = ("    - name: frontend-only\n"
                 "      action: allow\n"
                 "      ports: [8080]\n"
                 "      from: [{id: spiffe://example.org/ns/default/sa/frontend},"
                 " {prefix: \"spiffe://example.org/ns/prod/*\"}, {namespace: prod},"
                 " {trust_domain: example.org}, {any: true}]\n")
    if destinations is None:
        destinations = ("  - address: 127.0.0.1:15006\n"
                        "    spiffe_id: spiffe://example.org/ns/default/sa/backend\n")
    text = ("trust_bundles:\n"
            f"  - trust_domain: {TRUST_DOMAIN}\n"
            f"    roots_files: [{roots}]\n"
            "policy:\n"
            "  default: allow\n"
            "  rules:\n" + rules +
            "destinations:\n" + destinations)
    if workload_policies is not None:
        text += "workload_policies:\n" + workload_policies
    write_atomically(path, text)


def write_atomically(path, text):
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_workloads(path, workloads):
    """Writes a workloads file (atomically) from (node, spiffe_id) pairs."""
    text = "workloads:\n" + "".join(f"  - node: {node}\n    spiffe_id: {spiffe_id}\n"
                                    for node, spiffe_id in workloads)
    if not workloads:
        text = "workloads: []\n"
    write_atomically(path, text)


class CA:
    """One mtls-ca process with its own config, mesh file and logs."""

    def __init__(self, workdir, pki, config_text=None, extra_config=""):
        self.dir = Path(workdir)
        self.pki = pki
        self.config = self.dir / "ca.yaml"
        self.mesh = self.dir / "mesh.yaml"
        self.workloads = self.dir / "workloads.yaml"  # written by tests that name it
        self.signer_cert = self.dir / "signer.pem"
        self.signer_key = self.dir / "signer.key"
        self.token_keys = self.dir / "token-keys.pem"
        self.stderr_path = self.dir / "stderr.log"
        self.access_path = self.dir / "access.log"
        # The signer files are copies, so a test can rotate them.
        shutil.copy(pki["intermediate"], self.signer_cert)
        shutil.copy(pki["intermediate_key"], self.signer_key)
        shutil.copy(pki["token_pub"], self.token_keys)
        write_mesh(self.mesh, pki)
        self.config.write_text((config_text or self.default_config()) + extra_config)
        self.proc = None
        self.port = None

    def default_config(self):
        p = self.pki
        return (f"trust_domain: {TRUST_DOMAIN}\n"
                "listen: 127.0.0.1:0\n"
                f"tls: {{cert_file: {p['cp_chain']}, key_file: {p['cp_key']}}}\n"
                "signer: {cert_file: signer.pem, key_file: signer.key}\n"
                f"roots_file: {p['root']}\n"
                f"max_cert_ttl_s: {MAX_TTL_S}\n"
                f"default_cert_ttl_s: {DEFAULT_TTL_S}\n"
                "tokens:\n"
                f"  issuer: {ISSUER}\n"
                f"  audience: {AUDIENCE}\n"
                "  keys_file: token-keys.pem\n"
                "  leeway_s: 0\n"
                "mesh_file: mesh.yaml\n"
                f"mesh_poll_ms: {MESH_POLL_MS}\n"
                f"access_log: {self.access_path}\n")

    def start(self):
        self.stderr_file = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([MTLS_CA_BIN, "--config", str(self.config)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.stderr_file, cwd=self.dir)
        m = wait_until(lambda: self._listening() or self._exited(), "mtls-ca to listen")
        assert m is not True, f"mtls-ca exited early:\n{self.stderr()}"
        self.port = int(m.group(1))
        return self

    def _listening(self):
        return re.search(r"listening on 127\.0\.0\.1:(\d+)", self.stderr())

    def _exited(self):
        return self.proc.poll() is not None

    def stderr(self):
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def access_lines(self):
        import json
        if not self.access_path.exists():
            return []
        return [json.loads(line) for line in self.access_path.read_text().splitlines() if line]

    def signal(self, signum):
        os.kill(self.proc.pid, signum)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM, bounded wait, SIGKILL; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_WAIT)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=STOP_WAIT)
                self.stderr_file.close()
                raise AssertionError(f"mtls-ca ignored SIGTERM:\n{self.stderr()[-4000:]}")
        self.stderr_file.close()
        return self.proc.returncode

    def channel(self, root=None, name=CP_NAME):
        creds = grpc.ssl_channel_credentials(Path(root or self.pki["root"]).read_bytes())
        options = [("grpc.ssl_target_name_override", name), ("grpc.enable_http_proxy", 0),
                   ("grpc.max_send_message_length", -1)]
        return grpc.secure_channel(f"127.0.0.1:{self.port}", creds, options=options)


def assert_clean_stderr(text):
    for marker in SANITIZER_MARKERS:
        assert marker not in text, f"sanitizer report in mtls-ca stderr:\n{text[-6000:]}"


@pytest.fixture
def start_ca(tmp_path, pki):
    """Factory: start_ca() starts a fresh server; all are stopped (and must
    exit 0 with a clean stderr) when the test ends."""
    started = []

    def start(config_text=None, subdir="ca", extra_config="", workloads=None):
        d = tmp_path / subdir
        d.mkdir()
        ca = CA(d, pki, config_text, extra_config)
        if workloads is not None:
            write_workloads(ca.workloads, workloads)
        started.append(ca)
        return ca.start()

    yield start
    problems = []
    for ca in started:
        try:
            rc = ca.stop()
        except AssertionError as e:
            problems.append(str(e))
            continue
        text = ca.stderr()
        for marker in SANITIZER_MARKERS:
            if marker in text:
                problems.append(f"sanitizer report in mtls-ca stderr:\n{text[-6000:]}")
        if rc != 0:
            problems.append(f"mtls-ca exited {rc}:\n{text[-4000:]}")
    assert not problems, "\n".join(problems)


@pytest.fixture
def ca(start_ca):
    return start_ca()
