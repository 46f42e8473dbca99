"""The agent's SPIFFE Workload API server (issue 14), against an independent
client: Python grpcio with protoc-compiled messages (workload_api_client.py,
in this process or as a program run as another UID with `setpriv`, or in
another network namespace with `ip netns exec`).

Sidecar mode: one mtls-ca (the real control plane: it signs the JWT-SVIDs
too) and one agent per test, its socket in a directory every UID may
enter; callers are admitted by UID (0, 1000) or primary GID (2000).
Node mode: the two-node bed of test_node_mode.py (nodebed.py) with the
Workload API on node-1; a caller is run inside a pod's namespace and must
get that pod's identity, and nothing anywhere else.

Every wait is on something observable (a stream message, a log line, a
metric), bounded by WAIT. Agents stop with SIGTERM -> exit 0 and leave no
sanitizer report (the `agents` fixture, the bed's teardown).
"""
import base64
import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import nodebed
import podbed
import workload_api_client as wl
from conftest import (TRUST_DOMAIN, WAIT, Processes, free_port, read_until, spiffe_id,
                      wait_until)
from mtls_ca import MTLS_CA_BIN, MtlsCa, make_pki, mint_token

PY = "/usr/bin/python3"
CLIENT = Path(__file__).resolve().parent / "workload_api_client.py"
CP_ID = f"spiffe://{TRUST_DOMAIN}/ns/mtls-system/sa/mtls-ca"
TD_ID = f"spiffe://{TRUST_DOMAIN}"
FEDERATED_TD = "other.org"
FEDERATED_TD_ID = f"spiffe://{FEDERATED_TD}"
APP_UID = 1000          # admitted by UID
ADMITTED_GID = 2000     # admitted by primary GID
STRANGER = 1001         # neither
WORKLOAD = "backend"    # the sidecar's (and so its application's) service account
METHODS = ("FetchX509SVID", "FetchX509Bundles", "FetchJWTSVID", "FetchJWTBundles",
           "ValidateJWTSVID")
STREAMS_GAUGE = "mtlsd_workload_api_streams"
# A sanitizer build (bazel-out/k8-optasan, k8-optubsan): ASan keeps freed
# memory in quarantine on purpose, so RSS says nothing about a bound there.
SANITIZED = "san/" in os.environ.get("MTLSD_BIN", "")
CALLS_COUNTER = "mtlsd_workload_api_calls_total"


# --------------------------------------------------------------------------
# helpers


def run_client(*args, uid=None, gid=None, netns=None, timeout=WAIT, check_json=True):
    """workload_api_client.py as a program: as |uid|:|gid| (no supplementary
    groups) and/or in network namespace |netns|. Returns (exit status, the
    JSON lines it printed)."""
    argv = [PY, str(CLIENT), "--timeout", str(timeout), *map(str, args)]
    if uid is not None:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={gid if gid is not None else uid}",
                "--clear-groups"] + argv
    if netns is not None:
        argv = ["ip", "netns", "exec", netns] + argv
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30,
                         stdin=subprocess.DEVNULL)
    lines = [json.loads(l) for l in res.stdout.splitlines() if l.strip()]
    if check_json:
        assert res.returncode in (0, 2) and lines, \
            f"client {args} -> {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    return res.returncode, lines


def grpc_code(lines):
    return lines[-1].get("error", {}).get("code") if lines else None


def leaf_of(doc):
    return x509.load_pem_x509_certificate(doc["svids"][0]["chain_pem"][0].encode())


def public_der(key_or_cert):
    pub = key_or_cert.public_key()
    return pub.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def uri_sans(cert):
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def assert_valid_x509_svid(doc, expected_id, roots_pem, workdir):
    """One SVID for |expected_id|: its chain verifies (openssl verify, leaf
    first, intermediates untrusted) to the roots, the leaf has exactly that
    one URI SAN and is no CA, and the key is the leaf's (P-256)."""
    assert doc["spiffe_id"] == expected_id
    assert len(doc["svids"]) == 1, doc["svids"]
    svid = doc["svids"][0]
    leaf = leaf_of(doc)
    assert uri_sans(leaf) == [expected_id]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    key = serialization.load_pem_private_key(svid["key_pem"].encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert public_der(key) == public_der(leaf), "x509_svid_key is not the leaf's key"
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "leaf.pem").write_text(svid["chain_pem"][0])
    (workdir / "untrusted.pem").write_text("".join(svid["chain_pem"][1:]))
    (workdir / "roots.pem").write_text("".join(roots_pem))
    argv = ["openssl", "verify", "-CAfile", str(workdir / "roots.pem")]
    if len(svid["chain_pem"]) > 1:
        argv += ["-untrusted", str(workdir / "untrusted.pem")]
    res = subprocess.run(argv + [str(workdir / "leaf.pem")], capture_output=True, text=True,
                         timeout=WAIT)
    assert res.returncode == 0, f"the SVID does not verify: {res.stdout}{res.stderr}"
    return leaf


def metrics_text(agent):
    status, text = agent.admin("/metrics")
    assert status == 200, text
    return text


def metric_value(text, name, **labels):
    """The sum of |name|'s series whose labels include |labels| (0 if none)."""
    total, found = 0.0, False
    for m in re.finditer(r"^" + re.escape(name) + r"(\{[^}]*\})? (\S+)$", text, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
            found = True
    return total if found else 0.0


def streams_gauge(agent):
    text = metrics_text(agent)
    assert STREAMS_GAUGE in text, f"{STREAMS_GAUGE} missing from /metrics:\n{text}"
    return metric_value(text, STREAMS_GAUGE)


def self_signed_root(common_name, td_id):
    """A CA certificate for another trust domain (a federated bundle)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                         False), True)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(td_id)]),
                           False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def write_jwt_key(path):
    """A P-256 key for mtls-ca's jwt_svid.signing_key_file, written by
    rename (as a mounted Secret changes). Returns the key."""
    key = ec.generate_private_key(ec.SECP256R1())
    tmp = Path(str(path) + ".tmp")
    tmp.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    os.replace(tmp, path)
    return key


def jwt_kid(key):
    """mtls-ca's kid: base64url (unpadded) SHA-256 of the DER SubjectPublicKeyInfo."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(public_der(key))
    return base64.urlsafe_b64encode(digest.finalize()).rstrip(b"=").decode()


def mint_jwt(key_path, claims, kid=None):
    """A token signed with the control plane's own signing key (read from its
    file): what only mtls-ca could have issued, with claims of our choosing."""
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return jwt.encode(claims, pem, algorithm="ES256",
                      headers={"kid": kid or jwt_kid(key), "typ": "JWT"})


def pem_set(pems):
    return {x509.load_pem_x509_certificate(p.encode()).fingerprint(hashes.SHA256()) for p in pems}


# --------------------------------------------------------------------------
# sidecar mode: fixtures


@pytest.fixture(scope="session")
def mtls_ca_bin():
    if not (os.path.isfile(MTLS_CA_BIN) and os.access(MTLS_CA_BIN, os.X_OK)):
        pytest.fail(f"control-plane binary not found: {MTLS_CA_BIN} (build it with "
                    f"`bazel build //controlplane:mtls-ca` or set MTLS_CA_BIN)")
    return MTLS_CA_BIN


@pytest.fixture(scope="module")
def mca_pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("wl-mtls-ca-pki"))


@pytest.fixture(scope="module")
def federated_root(tmp_path_factory):
    path = tmp_path_factory.mktemp("wl-federated") / "other-root.pem"
    path.write_text(self_signed_root("other.org root", FEDERATED_TD_ID))
    return path


@pytest.fixture
def socket_dir():
    """The socket's directory: enterable by every UID (tmp_path is 0700)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to call as other UIDs")
    d = Path(tempfile.mkdtemp(prefix="mtlsd-wl-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def mesh(pki, federated_root=None, extra_roots=()):
    bundles = {TRUST_DOMAIN: [str(Path(pki) / "root.pem"), *map(str, extra_roots)]}
    if federated_root is not None:
        bundles[FEDERATED_TD] = [str(federated_root)]
    return {"trust_bundles": bundles, "policy": {"default": "allow", "rules": []}}


class Sidecar:
    """mtls-ca + one agent serving the Workload API on |socket|."""

    def __init__(self, ca, agent, socket_path, port_in):
        self.ca, self.agent, self.socket, self.port_in = ca, agent, str(socket_path), port_in


@pytest.fixture
def sidecar(procs, agents, apps, mtls_ca_bin, mca_pki, federated_root, socket_dir, tmp_path):
    """Factory: sidecar(ttl=..., uids=..., gids=..., start_ca=True) -> Sidecar.
    With start_ca=False the agent starts before its control plane (the test
    starts it: sidecar.start_ca())."""
    cas = []

    def make(ttl=3600, uids=(0, APP_UID), gids=(ADMITTED_GID,), start_ca=True, name=WORKLOAD,
             federated=None):
        app = apps("echo")
        ca_port, port_in = free_port(), free_port()
        sock = socket_dir / "workload.sock"
        token = mint_token(mca_pki, tmp_path / f"{name}.token", name)
        cfg = {
            "trust_domain": TRUST_DOMAIN,
            "workers": 2,
            "log_level": "debug",
            "identity": {"spiffe_id": spiffe_id(name)},
            "control_plane": {"address": f"127.0.0.1:{ca_port}",
                              "root_file": str(mca_pki / "root.pem"), "spiffe_id": CP_ID,
                              "token_file": str(token), "cert_ttl_s": ttl,
                              "retry_initial_ms": 200, "retry_max_ms": 1000,
                              "request_timeout_ms": 3000},
            "inbound": {"listeners": [{"address": f"127.0.0.1:{port_in}",
                                       "app_port": app.port}]},
            "timeouts": {"drain_ms": 1000},
            "workload_api": {"socket": str(sock), "allowed_uids": list(uids),
                             "allowed_gids": list(gids)},
        }

        jwt_key = tmp_path / "jwt-signing.key"
        if not jwt_key.exists():
            write_jwt_key(jwt_key)

        def launch_ca():
            ca = MtlsCa(procs, mtls_ca_bin, mca_pki, tmp_path / f"mtls-ca{len(cas) or ''}",
                        mesh=mesh(mca_pki, federated or federated_root), port=ca_port,
                        extra={"jwt_svid": {"signing_key_file": str(jwt_key)}})
            cas.append(ca)
            side.ca = ca
            return ca

        side = Sidecar(None, None, sock, port_in)
        side.start_ca = launch_ca
        side.config = cfg
        side.jwt_key = jwt_key
        if start_ca:
            launch_ca()
        side.agent = agents(name, cfg)
        wait_until(lambda: sock.exists(), f"the agent to create {sock}")
        return side

    yield make
    problems = []
    for ca in cas:
        ca.stop()
        try:
            ca.check()
        except AssertionError as e:
            problems.append(str(e))
    if problems:
        raise AssertionError("\n\n".join(problems))


# --------------------------------------------------------------------------
# sidecar mode: X.509


def test_fetch_x509_svid_as_an_admitted_uid(sidecar, mca_pki, federated_root, tmp_path):
    """The application (UID 1000, another process) gets its SVID, key and
    bundle; the chain verifies with OpenSSL; other trust domains come as
    federated bundles."""
    side = sidecar()
    status, lines = run_client("--socket", side.socket, "fetch-x509", uid=APP_UID)
    assert status == 0, lines
    (doc,) = lines
    svid = doc["svids"][0]
    assert pem_set(svid["bundle_pem"]) == pem_set([(mca_pki / "root.pem").read_text()])
    assert_valid_x509_svid(doc, spiffe_id(WORKLOAD), svid["bundle_pem"], tmp_path / "verify")
    assert set(doc["federated"]) == {FEDERATED_TD_ID}, doc["federated"]
    assert pem_set(doc["federated"][FEDERATED_TD_ID]) == pem_set([federated_root.read_text()])


def test_a_caller_admitted_by_its_group_is_served(sidecar):
    side = sidecar()
    status, lines = run_client("--socket", side.socket, "fetch-x509", uid=STRANGER,
                               gid=ADMITTED_GID)
    assert status == 0, lines
    assert lines[0]["spiffe_id"] == spiffe_id(WORKLOAD)


def test_a_caller_whose_uid_and_gid_are_not_allowed_is_refused_everywhere(sidecar):
    side = sidecar()
    calls = [("fetch-x509",), ("fetch-bundles",), ("fetch-jwt", "--audience", "a"),
             ("fetch-jwt-bundles",), ("validate", "--audience", "a", "--token", "x.y.z")]
    for call in calls:
        status, lines = run_client("--socket", side.socket, *call, uid=STRANGER)
        assert status == 2 and grpc_code(lines) == "PERMISSION_DENIED", (call, lines)
    # and the admitted application is still served
    status, lines = run_client("--socket", side.socket, "fetch-x509", uid=APP_UID)
    assert status == 0, lines


def check_config(mtlsd_bin, tmp_path, cfg):
    path = tmp_path / "check.yaml"
    path.write_text(json.dumps(cfg))
    res = subprocess.run([mtlsd_bin, "--check-config", str(path)], capture_output=True,
                         text=True, timeout=WAIT, stdin=subprocess.DEVNULL)
    return res.returncode, res.stdout + res.stderr


CONFIG_ERRORS = {
    # a sidecar whose Workload API would admit nobody
    "no-allowed-ids": ({"allowed_uids": [], "allowed_gids": []}, "allowed_uids"),
    "relative-socket": ({"socket": "workload.sock"}, "absolute path"),
    "uid-not-a-number": ({"allowed_uids": ["app"]}, "allowed_uids"),
    "unknown-key": ({"allowed_users": [1000]}, "allowed_users"),
    # files-based identity: the agent's own key would be the only one to hand out
    "files-identity": (None, "control_plane"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_ERRORS))
def test_workload_api_config_errors(case, mtlsd_bin, mca_pki, pki, tmp_path):
    change, words = CONFIG_ERRORS[case]
    cfg = {
        "trust_domain": TRUST_DOMAIN,
        "identity": {"spiffe_id": spiffe_id(WORKLOAD)},
        "control_plane": {"address": "127.0.0.1:15012", "root_file": str(mca_pki / "root.pem"),
                          "spiffe_id": CP_ID},
        "inbound": {"listeners": [{"address": f"127.0.0.1:{free_port()}", "app_port": 8080}]},
        "workload_api": {"socket": str(tmp_path / "w.sock"), "allowed_uids": [APP_UID]},
    }
    status, out = check_config(mtlsd_bin, tmp_path, cfg)
    assert status == 0, f"the valid base config is refused: {out}"
    if change is None:
        wl_dir = pki.workload(WORKLOAD)
        del cfg["control_plane"]
        cfg["identity"] = {"cert_file": str(wl_dir / "chain.pem"),
                           "key_file": str(wl_dir / "key.pem")}
        cfg["trust_bundles"] = [{"trust_domain": TRUST_DOMAIN, "file": str(pki.bundle)}]
    else:
        cfg["workload_api"].update(change)
    status, out = check_config(mtlsd_bin, tmp_path, cfg)
    assert status != 0, f"{case}: accepted"
    assert "workload_api" in out and words in out, f"{case}: {out}"


def test_every_method_needs_the_security_header(sidecar):
    side = sidecar()
    requests = {
        "FetchX509SVID": ("fetch-x509",), "FetchX509Bundles": ("fetch-bundles",),
        "FetchJWTSVID": ("fetch-jwt", "--audience", "a"), "FetchJWTBundles": ("fetch-jwt-bundles",),
        "ValidateJWTSVID": ("validate", "--audience", "a", "--token", "x.y.z"),
    }
    for method, call in requests.items():
        status, lines = run_client("--socket", side.socket, "--no-header", *call, uid=APP_UID)
        assert status == 2 and grpc_code(lines) == "INVALID_ARGUMENT", (method, lines)
    text = metrics_text(side.agent)
    refused = metric_value(text, CALLS_COUNTER, code="INVALID_ARGUMENT")
    assert refused >= len(requests), f"{CALLS_COUNTER} does not count the refusals:\n{text}"


def test_the_svid_key_is_not_the_agents_own_data_plane_key(sidecar, tmp_path):
    """The agent asks for a separate key and certificate for its application:
    the key it hands out is not the one it proves its own identity with on
    its mTLS port (same SPIFFE ID, different key)."""
    side = sidecar()
    doc = wl.fetch_x509(side.socket)[0]
    svid_leaf = leaf_of(doc)
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    (tmp_path / "bundle.pem").write_text("".join(doc["svids"][0]["bundle_pem"]))
    ctx.load_verify_locations(str(tmp_path / "bundle.pem"))
    ctx.set_alpn_protocols(["mtlsd"])
    # Present the application's SVID: the mesh admits it as the same identity.
    (tmp_path / "chain.pem").write_text("".join(doc["svids"][0]["chain_pem"]))
    (tmp_path / "key.pem").write_text(doc["svids"][0]["key_pem"])
    ctx.load_cert_chain(str(tmp_path / "chain.pem"), str(tmp_path / "key.pem"))
    with socket.create_connection(("127.0.0.1", side.port_in), timeout=WAIT) as raw:
        with ctx.wrap_socket(raw) as tls:
            agent_leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            tls.sendall(b"ping")
            assert tls.recv(4) == b"ping"  # the mesh admitted the application's SVID
    assert uri_sans(agent_leaf) == [spiffe_id(WORKLOAD)]
    assert public_der(agent_leaf) != public_der(svid_leaf), \
        "the Workload API handed out the agent's own data-plane key"
    assert agent_leaf.serial_number != svid_leaf.serial_number


def test_fetch_x509_bundles(sidecar, mca_pki, federated_root):
    side = sidecar()
    status, lines = run_client("--socket", side.socket, "fetch-bundles", uid=APP_UID)
    assert status == 0, lines
    bundles = lines[0]["bundles"]
    assert set(bundles) == {TD_ID, FEDERATED_TD_ID}
    assert pem_set(bundles[TD_ID]) == pem_set([(mca_pki / "root.pem").read_text()])
    assert pem_set(bundles[FEDERATED_TD_ID]) == pem_set([federated_root.read_text()])


def test_a_new_svid_is_pushed_on_every_rotation(sidecar, tmp_path):
    """4 s certificates: the open stream gets a new SVID (new serial, later
    notAfter, still valid) at each renewal, without asking again."""
    side = sidecar(ttl=4)
    docs = []
    with wl.Stream(side.socket, "FetchX509SVID") as stream:
        for i in range(3):
            docs.append(stream.next(WAIT))
            # verified as it arrives: a 4 s certificate is soon history
            assert_valid_x509_svid(docs[-1], spiffe_id(WORKLOAD),
                                   docs[-1]["svids"][0]["bundle_pem"], tmp_path / f"verify{i}")
    leaves = [leaf_of(d) for d in docs]
    serials = [l.serial_number for l in leaves]
    assert len(set(serials)) == len(serials), f"a push repeated a certificate: {serials}"
    after = [l.not_valid_after for l in leaves]
    assert after == sorted(after) and after[0] < after[-1], after
    print(f"\n[workload api rotation] serials {[hex(s)[:10] for s in serials]}")


def test_a_bundle_change_is_pushed_to_both_x509_streams(sidecar, mca_pki, federated_root,
                                                        tmp_path):
    side = sidecar()
    with wl.Stream(side.socket, "FetchX509SVID") as svids, \
            wl.Stream(side.socket, "FetchX509Bundles") as bundles:
        first_svid = svids.next(WAIT)
        assert bundles.next(WAIT)["bundles"][TD_ID]
        assert first_svid["svids"][0]["bundle_pem"]
        # A second root for our trust domain (root rotation's overlap) and a
        # second one for the federated trust domain.
        new_root = tmp_path / "new-root.pem"
        new_root.write_text(self_signed_root("new example.org root", TD_ID))
        fed2 = tmp_path / "other-root-2.pem"
        fed2.write_text(federated_root.read_text() + self_signed_root("other.org 2",
                                                                      FEDERATED_TD_ID))
        spec = mesh(mca_pki, fed2, extra_roots=[new_root])
        side.ca.write_mesh(spec)
        want_own = pem_set([(mca_pki / "root.pem").read_text(), new_root.read_text()])
        want_fed = pem_set(wl.split_pem(fed2.read_text()))

        def until(stream, check):
            while True:
                doc = stream.next(WAIT)
                if check(doc):
                    return doc

        pushed = until(svids, lambda d: pem_set(d["svids"][0]["bundle_pem"]) == want_own)
        assert pem_set(pushed["federated"][FEDERATED_TD_ID]) == want_fed
        assert leaf_of(pushed).serial_number == leaf_of(first_svid).serial_number, \
            "a bundle change re-issued the SVID"
        pushed_b = until(bundles, lambda d: pem_set(d["bundles"].get(TD_ID, [])) == want_own)
        assert pem_set(pushed_b["bundles"][FEDERATED_TD_ID]) == want_fed


def test_the_stream_waits_until_the_identity_is_issued(sidecar):
    """The agent starts before its control plane: FetchX509SVID neither fails
    nor answers with nothing; its first message is the SVID, once issued."""
    side = sidecar(start_ca=False)
    retry = "control plane: retrying the certificate request"
    with wl.Stream(side.socket, "FetchX509SVID") as stream:
        before = side.agent.stderr().count(retry)
        # The agent tried the control plane (and failed) while the stream was open.
        wait_until(lambda: side.agent.stderr().count(retry) > before,
                   "the agent to retry the control plane")
        assert stream.pending() == 0, "the stream answered before any identity was issued"
        side.start_ca()
        doc = stream.next(WAIT)
    assert doc["spiffe_id"] == spiffe_id(WORKLOAD)


def test_a_restarted_agent_replaces_its_stale_socket_and_a_second_one_is_refused(
        sidecar, agents):
    """kill -9 leaves the socket file behind: the next agent replaces it and
    serves; an agent started while one serves there exits with an error
    naming the socket, and the first one keeps serving."""
    side = sidecar()
    side.agent.expect_clean_stop = False
    side.agent.proc.kill()
    side.agent.proc.wait(timeout=WAIT)
    assert Path(side.socket).exists()
    cfg = json.loads(json.dumps(side.config))
    cfg.pop("access_log", None)
    cfg.pop("admin", None)
    cfg["inbound"]["listeners"][0]["address"] = f"127.0.0.1:{free_port()}"
    restarted = agents("restarted", cfg)
    assert wl.fetch_x509(side.socket)[0]["spiffe_id"] == spiffe_id(WORKLOAD)
    cfg = json.loads(json.dumps(cfg))
    cfg.pop("access_log", None)
    cfg.pop("admin", None)
    cfg["inbound"]["listeners"][0]["address"] = f"127.0.0.1:{free_port()}"
    second = agents("second", cfg, start=False)
    second.expect_clean_stop = False  # it must exit by itself, with an error
    with open(second.stderr_path, "wb") as err:
        second.proc = second.procs.spawn([second.binary, "--config", second.config_path],
                                         stdout=subprocess.DEVNULL, stderr=err)
    status = second.proc.wait(timeout=WAIT)
    assert status != 0, "a second agent started on a socket in use"
    assert side.socket in second.stderr(), second.stderr()[-2000:]
    assert restarted.proc.poll() is None
    assert wl.fetch_x509(side.socket)[0]["spiffe_id"] == spiffe_id(WORKLOAD)


# --------------------------------------------------------------------------
# sidecar mode: JWT


def jwks_for(socket_path, td_id=TD_ID):
    bundles = wl.fetch_jwt_bundles(socket_path)[0]["bundles"]
    assert td_id in bundles, bundles
    return bundles[td_id]


def verify_jwt(token, jwks, audience):
    """PyJWT, against the JWKS: ES256 only, the key named by the header's kid."""
    header = jwt.get_unverified_header(token)
    assert header.get("alg") == "ES256", header
    keys = {k.get("kid"): k for k in jwks["keys"]}
    assert header.get("kid") in keys, f"kid {header.get('kid')} not in the JWKS {list(keys)}"
    key = jwt.PyJWK.from_dict(keys[header["kid"]], algorithm="ES256")
    return jwt.decode(token, key.key, algorithms=["ES256"], audience=audience,
                      options={"require": ["sub", "aud", "exp"]})


def test_fetch_jwt_svid_verifies_independently(sidecar):
    side = sidecar()
    status, lines = run_client("--socket", side.socket, "fetch-jwt", "--audience", "payments",
                               "--audience", "ledger", uid=APP_UID)
    assert status == 0, lines
    (svid,) = lines[0]["svids"]
    assert svid["spiffe_id"] == spiffe_id(WORKLOAD)
    jwks = jwks_for(side.socket)
    for key in jwks["keys"]:
        assert key["kty"] == "EC" and key["crv"] == "P-256" and "d" not in key, key
    claims = verify_jwt(svid["svid"], jwks, "payments")
    assert claims["sub"] == spiffe_id(WORKLOAD)
    aud = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    assert set(aud) == {"payments", "ledger"}
    now = datetime.datetime.now(datetime.timezone.utc).timestamp()
    assert now < claims["exp"] <= now + 24 * 3600, claims


def test_fetch_jwt_svid_without_audience_is_invalid(sidecar):
    side = sidecar()
    status, lines = run_client("--socket", side.socket, "fetch-jwt", uid=APP_UID)
    assert status == 2 and grpc_code(lines) == "INVALID_ARGUMENT", lines


def test_validate_jwt_svid(sidecar):
    side = sidecar()
    token = wl.fetch_jwt(side.socket, ["payments"])["svids"][0]["svid"]
    status, lines = run_client("--socket", side.socket, "validate", "--audience", "payments",
                               "--token", token, uid=APP_UID)
    assert status == 0, lines
    doc = lines[0]
    assert doc["spiffe_id"] == spiffe_id(WORKLOAD)
    claims = doc["claims"]
    assert claims["sub"] == spiffe_id(WORKLOAD)
    aud = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    assert "payments" in aud
    assert claims["exp"] == verify_jwt(token, jwks_for(side.socket), "payments")["exp"]


def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_tokens(token, jwks):
    """Tokens that must not validate: the same claims signed by a key of our
    own under the real kid, 'alg: none', HS256 keyed with the public JWK,
    a flipped signature byte, a payload edited after signing."""
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    own = ec.generate_private_key(ec.SECP256R1())
    own_pem = own.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    out = {"other-key": jwt.encode(claims, own_pem, algorithm="ES256",
                                   headers={"kid": header["kid"]})}
    out["alg-none"] = ".".join([_b64(json.dumps({"alg": "none", "kid": header["kid"]}).encode()),
                                _b64(json.dumps(claims).encode()), ""])
    signing_input = ".".join([_b64(json.dumps({"alg": "HS256", "kid": header["kid"],
                                               "typ": "JWT"}).encode()),
                              _b64(json.dumps(claims).encode())])
    import hmac
    secret = json.dumps(jwks["keys"][0]).encode()
    out["hs256-with-public-key"] = signing_input + "." + _b64(
        hmac.new(secret, signing_input.encode(), "sha256").digest())
    h, p, s = token.split(".")
    sig = bytearray(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
    sig[5] ^= 0x01
    out["flipped-signature"] = ".".join([h, p, _b64(bytes(sig))])
    edited = dict(claims, sub=spiffe_id("admin"))
    out["edited-payload"] = ".".join([h, _b64(json.dumps(edited).encode()), s])
    return out


def test_validate_refuses_wrong_audience_garbage_expired_and_forgeries(sidecar):
    """Every one INVALID_ARGUMENT: the wrong audience, no audience, garbage,
    forgeries (another key under the real kid, alg none, HS256 keyed with
    the public key, a flipped signature bit, a payload edited after
    signing), and tokens signed with the control plane's real key that are
    expired, have no exp, no aud, or a sub that is no SPIFFE ID."""
    side = sidecar()
    token = wl.fetch_jwt(side.socket, ["payments"])["svids"][0]["svid"]
    jwks = jwks_for(side.socket)
    now = int(datetime.datetime.now(datetime.timezone.utc).timestamp())
    good = {"sub": spiffe_id(WORKLOAD), "aud": "payments", "exp": now + 600, "iat": now}
    cases = {"wrong-audience": ("ledger", token), "empty": ("payments", ""),
             "garbage": ("payments", "not a jwt"), "three-dots": ("payments", "a.b.c"),
             "no-audience": ("", token)}
    cases.update({k: ("payments", v) for k, v in forged_tokens(token, jwks).items()})
    real_key_cases = {
        "expired": dict(good, exp=now - 600, iat=now - 1200),
        "no-exp": {k: v for k, v in good.items() if k != "exp"},
        "no-aud": {k: v for k, v in good.items() if k != "aud"},
        "sub-not-a-spiffe-id": dict(good, sub="alice"),
        "sub-of-another-trust-domain": dict(good, sub="spiffe://evil.org/ns/default/sa/x"),
    }
    for name, claims in real_key_cases.items():
        cases[name] = ("payments", mint_jwt(side.jwt_key, claims))
    # the control: the same key and claims, valid -> validates
    assert wl.validate(side.socket, "payments", mint_jwt(side.jwt_key, good))["spiffe_id"] \
        == spiffe_id(WORKLOAD)
    for name, (audience, svid) in cases.items():
        try:
            got = wl.validate(side.socket, audience, svid)
        except wl.WorkloadApiError as e:
            assert e.code == "INVALID_ARGUMENT", (name, e)
            continue
        raise AssertionError(f"{name}: validated: {got}")
    # and the real token still validates: no case poisoned a cache
    assert wl.validate(side.socket, "payments", token)["spiffe_id"] == spiffe_id(WORKLOAD)


def test_validate_a_token_of_another_workload(sidecar):
    """ValidateJWTSVID answers for whoever the token names (the caller is a
    server checking its client's token): a token for another workload,
    signed by the control plane, validates with that workload's ID."""
    side = sidecar()
    now = int(datetime.datetime.now(datetime.timezone.utc).timestamp())
    caller = spiffe_id("frontend")
    token = mint_jwt(side.jwt_key, {"sub": caller, "aud": ["backend-api", "x"],
                                    "exp": now + 300, "iat": now})
    doc = wl.validate(side.socket, "backend-api", token)
    assert doc["spiffe_id"] == caller
    assert doc["claims"]["sub"] == caller and doc["claims"]["exp"] == now + 300


def test_a_jwt_key_rotation_is_pushed_and_old_tokens_still_validate(sidecar):
    side = sidecar()
    old_token = wl.fetch_jwt(side.socket, ["payments"])["svids"][0]["svid"]
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    with wl.Stream(side.socket, "FetchJWTBundles") as stream:
        first = stream.next(WAIT)["bundles"][TD_ID]
        assert [k["kid"] for k in first["keys"]] == [old_kid]
        new_kid = jwt_kid(write_jwt_key(side.jwt_key))
        while True:  # the next JWKS that holds the new key
            jwks = stream.next(WAIT)["bundles"][TD_ID]
            kids = [k["kid"] for k in jwks["keys"]]
            if new_kid in kids:
                break
    assert old_kid in kids, f"the old key left the JWKS at once: {kids}"
    verify_jwt(old_token, jwks, "payments")
    assert wl.validate(side.socket, "payments", old_token)["spiffe_id"] == spiffe_id(WORKLOAD)
    now = int(datetime.datetime.now(datetime.timezone.utc).timestamp())
    fresh = mint_jwt(side.jwt_key, {"sub": spiffe_id(WORKLOAD), "aud": "payments",
                                    "exp": now + 300})
    assert wl.validate(side.socket, "payments", fresh)["spiffe_id"] == spiffe_id(WORKLOAD)


def test_fetch_jwt_bundles_is_a_jwks_per_trust_domain(sidecar):
    side = sidecar()
    status, lines = run_client("--socket", side.socket, "fetch-jwt-bundles", uid=APP_UID)
    assert status == 0, lines
    jwks = lines[0]["bundles"][TD_ID]
    assert jwks["keys"], jwks
    for key in jwks["keys"]:
        jwt.PyJWK.from_dict(key, algorithm="ES256")  # every key is usable
        assert key.get("kid"), key


# --------------------------------------------------------------------------
# sidecar mode: a client that never reads


def agent_rss_kib(agent):
    status = Path(f"/proc/{agent.proc.pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))


def agent_fds(agent):
    return len(os.listdir(f"/proc/{agent.proc.pid}/fd"))


def big_federated_bundle(path, roots):
    """A federated bundle of |roots| CA certificates: every X509SVIDResponse
    then weighs |roots| x ~0.5 KiB."""
    path.write_text("".join(self_signed_root(f"other.org root {i}", FEDERATED_TD_ID)
                            for i in range(roots)))
    return path


def metric_now(agent, name, **labels):
    return metric_value(metrics_text(agent), name, **labels)


def test_clients_that_never_read_are_cut_off_and_stall_no_one(sidecar, tmp_path):
    """4 connections x 16 FetchX509SVID streams that never read, while 3 s
    certificates rotate and each response weighs ~75 KiB (a federated bundle
    of 150 roots): each is cut off (RESOURCE_EXHAUSTED, counted as a slow
    reader) once its unread responses pass the agent's bound; meanwhile a
    reading caller gets every rotation and another one is served at once;
    the open-stream gauge and the agent's descriptors come back."""
    side = sidecar(ttl=3, federated=big_federated_bundle(tmp_path / "big.pem", 150))
    agent = side.agent
    first = wl.fetch_x509(side.socket)[0]  # the SVID exists: the non-readers get it at once
    assert len(first["federated"][FEDERATED_TD_ID]) == 150
    base_streams, base_fds, base_rss = streams_gauge(agent), agent_fds(agent), agent_rss_kib(agent)
    base_cut = metric_now(agent, "mtlsd_workload_api_slow_readers_total")
    conns, per_conn = 3, 16  # within one caller's 64 streams, with room for the reader
    flood = [wl.NonReader(side.socket, per_conn) for _ in range(conns)]
    rss = [base_rss]
    try:
        wait_until(lambda: streams_gauge(agent) == base_streams + conns * per_conn,
                   f"{conns * per_conn} more open streams on {STREAMS_GAUGE}")
        with wl.Stream(side.socket, "FetchX509SVID") as stream:
            serials = [leaf_of(stream.next(WAIT)).serial_number]

            def all_cut_off():
                # the reading caller keeps receiving every rotation meanwhile
                while stream.pending():
                    serials.append(leaf_of(stream.next(WAIT)).serial_number)
                    rss.append(agent_rss_kib(agent))
                return metric_now(agent, "mtlsd_workload_api_slow_readers_total") \
                    >= base_cut + conns * per_conn
            wait_until(all_cut_off, "every non-reading stream to be cut off", timeout=4 * WAIT,
                       interval=0.2)
            assert streams_gauge(agent) == base_streams + 1  # only the reader's is left
            status, lines = run_client("--socket", side.socket, "fetch-bundles", uid=APP_UID)
            assert status == 0, lines
            serials.append(leaf_of(stream.next(WAIT)).serial_number)  # still pushed to
        assert len(serials) >= 3 and len(set(serials)) == len(serials), serials
        text = metrics_text(agent)
        cut = metric_value(text, CALLS_COUNTER, method="FetchX509SVID", code="RESOURCE_EXHAUSTED")
        assert cut == conns * per_conn, text
        print(f"\n[never-reading clients] {conns * per_conn} streams cut off after "
              f"{len(serials)} rotations; agent RSS (KiB) {base_rss} -> peak {max(rss)}")
        # the bound: 128 KiB unread per stream (workload_api.c), plus slack
        assert SANITIZED or max(rss) - base_rss <= conns * per_conn * 1024 + 32 * 1024, rss
    finally:
        for c in flood:
            c.close()
    wait_until(lambda: streams_gauge(agent) == base_streams,
               f"{STREAMS_GAUGE} back to {base_streams}")
    wait_until(lambda: agent_fds(agent) <= base_fds, f"the agent's descriptors back to {base_fds}")
    assert wl.fetch_x509(side.socket)[0]["spiffe_id"] == spiffe_id(WORKLOAD)
    print(f"[never-reading clients] agent RSS once they are gone: {agent_rss_kib(agent)} KiB")


# Before attestation the agent counts connections and streams per caller
# (workload_api.c: 16 connections and 64 streams per uid, or per pod in node
# mode), so one caller cannot use up the agent-wide limits.
PER_CALLER_LIMIT = "per-caller connection limit (16) reached"


def test_a_local_user_who_is_not_the_application_cannot_starve_it(sidecar):
    """The socket is open to every local user (attestation is per call): a
    user who is not admitted holds 256 connections, each with a call the
    agent refused. The application must still be served."""
    side = sidecar()
    holder = subprocess.Popen(
        ["setpriv", f"--reuid={STRANGER}", f"--regid={STRANGER}", "--clear-groups", PY,
         str(CLIENT), "--socket", side.socket, "hold", "--connections", "256", "--streams", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        held = read_until(holder.stdout, lambda b: b"\n" in b)
        assert b'"held"' in held, held
        wait_until(lambda: side.agent.stderr().count("refused (PERMISSION_DENIED)")
                   + side.agent.stderr().count(PER_CALLER_LIMIT) >= 256,
                   "the agent to refuse the stranger's 256 calls or connections")
        assert side.agent.stderr().count("refused (PERMISSION_DENIED)") <= 16
        status, lines = run_client("--socket", side.socket, "fetch-x509", uid=APP_UID)
        assert status == 0, f"the application is starved by a stranger's connections: {lines}"
    finally:
        holder.stdin.close()
        Processes.stop(holder)


def test_open_streams_are_bounded_per_caller_and_released(sidecar):
    """4 connections x 16 streams that never read (small responses, so none
    is cut off) fill one caller's 64 open streams: its next stream is
    refused RESOURCE_EXHAUSTED; once those clients go, the gauge is back and
    the caller is served again."""
    side = sidecar()
    agent = side.agent
    wl.fetch_x509(side.socket)
    base = streams_gauge(agent)
    assert base == 0
    flood = [wl.NonReader(side.socket, 16) for _ in range(4)]
    try:
        wait_until(lambda: streams_gauge(agent) == 64, f"64 open streams on {STREAMS_GAUGE}")
        with pytest.raises(wl.WorkloadApiError) as refused:
            wl.fetch_x509(side.socket, timeout=WAIT)
        assert refused.value.code == "RESOURCE_EXHAUSTED", refused.value
        assert "from this caller" in refused.value.details, refused.value
    finally:
        for c in flood:
            c.close()
    wait_until(lambda: streams_gauge(agent) == base, f"{STREAMS_GAUGE} back to {base}")
    assert wl.fetch_x509(side.socket)[0]["spiffe_id"] == spiffe_id(WORKLOAD)


def test_a_closed_stream_is_released(sidecar):
    side = sidecar()
    base = streams_gauge(side.agent)
    methods = ("FetchX509SVID", "FetchX509Bundles", "FetchJWTBundles")
    streams = [wl.Stream(side.socket, m) for m in methods]
    try:
        for s in streams:
            s.next(WAIT)
        assert streams_gauge(side.agent) == base + len(methods)
    finally:
        for s in streams:
            s.close()
    wait_until(lambda: streams_gauge(side.agent) == base, f"{STREAMS_GAUGE} back to {base}")
    text = metrics_text(side.agent)
    for method in methods:
        assert metric_value(text, CALLS_COUNTER, method=method, code="CANCELLED") >= 1, \
            (method, text)


# --------------------------------------------------------------------------
# node mode


class WorkloadApiNodeBed(nodebed.NodeBed):
    """The two-node bed; node-1's agent also serves the Workload API on a
    socket in the bed's directory (the agent's UID may create it there)."""

    def write_agent_config(self, node, without=()):
        super().write_agent_config(node, without)
        cfg = json.loads(self.config_path(node).read_text())
        cfg["workload_api"] = {"socket": str(self.workload_socket(node))}
        self.write_config(node, cfg)

    def workload_socket(self, node):
        return self.dir / f"{node}.workload.sock"

    def start(self):
        super().start()
        for node in nodebed.NODES:
            wait_until(lambda: self.workload_socket(node).exists(),
                       f"the agent of {node} to create its Workload API socket", self.wait)
        return self

    def call(self, where, *args, timeout=WAIT):
        """The client, as APP_UID, in namespace |where| (a pod or node name, a
        namespace name, or None for the host's)."""
        netns = None
        if where is not None:
            netns = self.ns(where) if where in self.pods or where in nodebed.NODES else where
        return run_client("--socket", self.workload_socket("node-1"), *args, uid=nodebed.APP_UID,
                          netns=netns, timeout=timeout)


@pytest.fixture(scope="module")
def bed(request, module_procs):
    yield from nodebed.module_bed(WorkloadApiNodeBed, request, module_procs)


@pytest.fixture
def stray_netns(bed):
    """A namespace that is no pod: an address inside node-1's pod CIDR that
    no pod has, on a veth to node-1."""
    name = f"mtlsd-{bed.tag}-stray"
    bed._ip("netns", "add", name)
    try:
        bed._ip("-n", name, "link", "set", "lo", "up")
        bed._ip("-n", bed.ns("node-1"), "link", "add", "veth-stray", "type", "veth", "peer",
                "name", "eth0", "netns", name)
        bed._ip("-n", bed.ns("node-1"), "addr", "add", "10.77.1.241/30", "dev", "veth-stray")
        bed._ip("-n", bed.ns("node-1"), "link", "set", "veth-stray", "up")
        bed._ip("-n", name, "addr", "add", "10.77.1.242/30", "dev", "eth0")
        bed._ip("-n", name, "link", "set", "eth0", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=WAIT)


@pytest.mark.parametrize("pod", ["frontend", "other", "cache"])
def test_node_mode_a_caller_in_a_pod_gets_that_pods_identity(bed, pod, tmp_path):
    status, lines = bed.call(pod, "fetch-x509")
    assert status == 0, lines
    expected = bed.pods[pod].spiffe_id
    roots = lines[0]["svids"][0]["bundle_pem"]
    assert pem_set(roots) == pem_set([(bed.dir / "root.pem").read_text()])
    assert_valid_x509_svid(lines[0], expected, roots, tmp_path / "verify")
    status, lines = bed.call(pod, "fetch-jwt", "--audience", "node-test")
    assert status == 0, lines
    assert lines[0]["svids"][0]["spiffe_id"] == expected


@pytest.mark.parametrize("where", ["stray", "host", "node-1", "backend"])
def test_node_mode_a_caller_outside_every_pod_is_refused(bed, where, request):
    """A namespace that is no pod (an unused address in node-1's pod CIDR),
    the host's, the node's own, and a pod of the other node."""
    netns = {"stray": lambda: request.getfixturevalue("stray_netns"), "host": lambda: None,
             "node-1": lambda: "node-1", "backend": lambda: "backend"}[where]()
    for call in (("fetch-x509",), ("fetch-bundles",), ("fetch-jwt", "--audience", "a")):
        status, lines = bed.call(netns, *call)
        assert status == 2 and grpc_code(lines) == "PERMISSION_DENIED", (where, call, lines)


def test_node_mode_a_pod_without_an_issued_identity_waits(bed):
    """The impostor pod is on node-1's list, but the CA registers its
    identity on node-2 only: it never gets a certificate, so its stream
    stays open without a message (the client's deadline ends it), and it is
    not refused as an unknown caller."""
    status, lines = bed.call("impostor", "fetch-x509", timeout=3)
    assert status == 2 and grpc_code(lines) == "DEADLINE_EXCEEDED", lines
    # and the agent still serves the others
    status, lines = bed.call("frontend", "fetch-x509")
    assert status == 0 and lines[0]["spiffe_id"] == bed.pods["frontend"].spiffe_id, lines


def test_node_mode_a_pod_that_leaves_loses_its_stream_and_its_access(bed):
    """Pod other leaves node-1's list (reload) while its application holds a
    FetchX509SVID stream: the caller has no identity any more, so the
    stream ends PERMISSION_DENIED and a new call is refused; once other is
    listed again it is served again."""
    argv = ["ip", "netns", "exec", bed.ns("other"),
            *podbed.as_uid(nodebed.APP_UID, [PY, str(CLIENT), "--socket",
                                             str(bed.workload_socket("node-1")), "--timeout",
                                             "15", "fetch-x509", "--count", "2"])]
    client = bed.procs.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = read_until(client.stdout, lambda b: b"\n" in b)
        assert json.loads(first)["spiffe_id"] == bed.pods["other"].spiffe_id, first
        bed.write_agent_config("node-1", without=("other",))
        assert bed.reload("node-1")[0] == 200
        status, lines = bed.call("other", "fetch-x509")
        assert status == 2 and grpc_code(lines) == "PERMISSION_DENIED", lines
        out = read_until(client.stdout, lambda b: b.count(b"\n") >= 2, timeout=WAIT)
        last = json.loads(out.decode().splitlines()[-1])
        log = [l for l in bed.agent_stderr("node-1").splitlines()
               if "sa/other" in l and " debug " not in l]
        assert last.get("error", {}).get("code") == "PERMISSION_DENIED", \
            f"the stream of a pod that left: {last}\nnode-1 log:\n" + "\n".join(log[-8:])
    finally:
        bed.procs.stop(client)
        bed.write_agent_config("node-1")  # as the bed started
        assert bed.reload("node-1")[0] == 200
    wait_until(lambda: bed.call("other", "fetch-x509")[0] == 0, "other served again")


def node_streams(bed, node="node-1"):
    status, text = bed.admin(node, "/metrics")
    assert status == 200, text
    return metric_value(text, STREAMS_GAUGE)


@pytest.mark.parametrize("connections,streams", [(64, 16), (256, 1)],
                         ids=["1024-streams", "256-connections"])
def test_node_mode_one_pod_holding_streams_does_not_starve_another(bed, connections, streams):
    """Pod 'other' opens |connections| x |streams| FetchX509SVID streams that
    it never reads (the agent's whole budget of streams, or of connections):
    pod frontend's application must still get its SVID."""
    base = node_streams(bed)
    argv = ["ip", "netns", "exec", bed.ns("other"),
            *podbed.as_uid(nodebed.APP_UID, [PY, str(CLIENT), "--socket",
                                             str(bed.workload_socket("node-1")), "hold",
                                             "--connections", str(connections),
                                             "--streams", str(streams)])]
    holder = bed.procs.spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        held = read_until(holder.stdout, lambda b: b"\n" in b)
        assert b'"held"' in held, (held, holder.stderr.read() if holder.poll() is not None else "")
        wait_until(lambda: node_streams(bed) >= base + connections * streams
                   or bed.agent_stderr("node-1").count("too many open streams")
                   or bed.agent_stderr("node-1").count(PER_CALLER_LIMIT),
                   "the agent to hold the streams (or to refuse some)")
        assert node_streams(bed) <= base + 64, "one pod holds more than its share of streams"
        status, lines = bed.call("frontend", "fetch-x509")
        assert status == 0 and lines[0]["spiffe_id"] == bed.pods["frontend"].spiffe_id, \
            f"pod frontend starved by pod other's {connections * streams} streams: {lines}"
    finally:
        holder.stdin.close()
        bed.procs.stop(holder)
    wait_until(lambda: node_streams(bed) == base, f"{STREAMS_GAUGE} back to {base}")


def test_node_mode_agents_stop_cleanly(bed):
    """Last in the module: SIGTERM -> exit 0, no sanitizer report, and the
    sockets are gone with their agents."""
    assert bed.assert_agents_stopped_cleanly() == set(nodebed.NODES)
    for node in nodebed.NODES:
        assert not bed.workload_socket(node).exists(), f"{node}'s socket outlived its agent"
