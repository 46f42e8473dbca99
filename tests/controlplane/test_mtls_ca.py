"""mtls-ca against a real gRPC client (Python grpcio) over verified TLS.

Run after `bazel build //controlplane:mtls-ca`:

    /usr/bin/python3 -m pytest tests/controlplane -q

MTLS_CA_BIN names the binary (default bazel-bin/controlplane/mtls-ca), e.g.
an ASan build: MTLS_CA_BIN=$(bazel info --config=asan bazel-bin)/controlplane/mtls-ca
"""

import datetime
import os
import queue
import signal
import socket
import ssl
import statistics
import subprocess
import threading
import time

import grpc
import jwt
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from conftest import (AUDIENCE, COUNTERS_END, CREATE, DEFAULT_TTL_S, ISSUER, MAX_TTL_S,
                      MTLS_CA_BIN, REPO, RPC_TIMEOUT, TRUST_DOMAIN, WAIT, WATCH,
                      assert_clean_stderr, make_csr, mint_token, openssl, wait_until,
                      write_atomically, write_mesh, write_workloads)

pytestmark = pytest.mark.skipif(not os.access(MTLS_CA_BIN, os.X_OK),
                                reason=f"build //controlplane:mtls-ca first ({MTLS_CA_BIN})")

FRONTEND_SUB = "system:serviceaccount:default:frontend"
FRONTEND_ID = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/frontend"
# Lets certificates' notBefore (backdated by the signer) and clocks differ.
SKEW_S = 120


# --------------------------------------------------------------------------
# helpers


def create(ca, msgs, token=None, csr=None, validity=0, channel=None, raw=None, metadata=None):
    """One CreateCertificate call; returns the response message. |metadata|
    (a dict) fills the request's metadata Struct: str values as string_value,
    numbers as number_value."""
    own = channel is None
    ch = channel or ca.channel()
    try:
        if raw is not None:
            call = ch.unary_unary(CREATE)
            request = raw
        else:
            call = ch.unary_unary(CREATE, request_serializer=msgs.CertRequest.SerializeToString,
                                  response_deserializer=msgs.CertResponse.FromString)
            if csr is None:
                csr, _ = make_csr()
            request = msgs.CertRequest(csr=csr, validity_duration=validity)
            for key, value in (metadata or {}).items():
                if isinstance(value, str):
                    request.metadata.fields[key].string_value = value
                else:
                    request.metadata.fields[key].number_value = value
        metadata = [("authorization", f"Bearer {token}")] if token is not None else []
        return call(request, timeout=RPC_TIMEOUT, metadata=metadata)
    finally:
        if own:
            ch.close()


def refused(ca, msgs, **kwargs):
    with pytest.raises(grpc.RpcError) as e:
        create(ca, msgs, **kwargs)
    return e.value.code(), e.value.details()


def leaf_of(resp):
    return x509.load_pem_x509_certificate(resp.cert_chain[0].encode())


def uri_sans(cert):
    san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def ttl_of(cert):
    not_after = cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return (not_after - datetime.datetime.now(datetime.timezone.utc)).total_seconds()


def verify_chain(tmp_path, resp):
    """openssl verify: leaf -> intermediates from cert_chain -> roots from root_cert."""
    (tmp_path / "leaf.pem").write_text(resp.cert_chain[0])
    (tmp_path / "untrusted.pem").write_text("".join(resp.cert_chain[1:]))
    (tmp_path / "roots.pem").write_text("".join(resp.root_cert.ca_cert))
    return subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "roots.pem"),
                           "-untrusted", str(tmp_path / "untrusted.pem"),
                           str(tmp_path / "leaf.pem")], capture_output=True, text=True,
                          timeout=WAIT)


class Watcher:
    """A Watch stream read by a thread into a queue (so waits are bounded)."""

    def __init__(self, ca, msgs, token, spiffe_id="", last_version="", accept_deltas=False,
                 watch_id="", wanted=None):
        """|watch_id| set: destinations on demand, starting with |wanted|."""
        self.channel = ca.channel()
        call = self.channel.unary_stream(WATCH,
                                         request_serializer=msgs.WatchRequest.SerializeToString,
                                         response_deserializer=msgs.MeshSnapshot.FromString)
        metadata = [("authorization", f"Bearer {token}")] if token is not None else []
        self.call = call(msgs.WatchRequest(node_id="test-node", spiffe_id=spiffe_id,
                                           last_applied_version=last_version,
                                           accept_deltas=accept_deltas,
                                           on_demand_destinations=bool(watch_id),
                                           watch_id=watch_id,
                                           wanted_destinations=wanted or []),
                         metadata=metadata)
        self.snapshots = queue.Queue()
        self.error = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for snap in self.call:
                self.snapshots.put(snap)
        except grpc.RpcError as e:
            self.error = e
        self.snapshots.put(None)

    def next(self, timeout=WAIT):
        try:
            snap = self.snapshots.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no snapshot within {timeout}s")
        assert snap is not None, f"stream ended: {self.error}"
        return snap

    def nothing_within(self, seconds):
        try:
            snap = self.snapshots.get(timeout=seconds)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected message: {snap}")

    def close(self):
        self.call.cancel()
        self.thread.join(timeout=WAIT)
        self.channel.close()


def new_intermediate(pki, directory):
    """A second intermediate under the same root (for signer rotation)."""
    d = directory
    (d / "int2.ext").write_text(
        "[ext]\nbasicConstraints = critical, CA:TRUE, pathlen:0\n"
        "keyUsage = critical, keyCertSign, cRLSign\n"
        f"subjectAltName = URI:spiffe://{TRUST_DOMAIN}\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n")
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-out", d / "int2.key")
    openssl("req", "-new", "-key", d / "int2.key", "-subj", "/CN=rotated intermediate",
            "-out", d / "int2.csr")
    openssl("x509", "-req", "-in", d / "int2.csr", "-CA", pki["root"], "-CAkey", pki["root_key"],
            "-CAcreateserial", "-days", "30", "-extfile", d / "int2.ext", "-extensions", "ext",
            "-out", d / "int2.pem")
    return d / "int2.pem", d / "int2.key"


# --------------------------------------------------------------------------
# CreateCertificate: issuance


def test_valid_token_gets_a_chain_for_its_service_account(ca, msgs, pki, tmp_path):
    token = mint_token(pki["token_key"], sub="system:serviceaccount:shop:cart-sa")
    resp = create(ca, msgs, token=token)
    leaf = leaf_of(resp)
    assert uri_sans(leaf) == [f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/cart-sa"]
    # One PEM certificate per entry, leaf first, then the intermediate.
    assert len(resp.cert_chain) == 2
    assert all(e.count("BEGIN CERTIFICATE") == 1 for e in resp.cert_chain)
    assert resp.cert_chain[1].strip() == pki["intermediate"].read_text().strip()
    assert [r.strip() for r in resp.root_cert.ca_cert] == [pki["root"].read_text().strip()]
    v = verify_chain(tmp_path, resp)
    assert v.returncode == 0, v.stdout + v.stderr
    assert 0 < ttl_of(leaf) <= DEFAULT_TTL_S + SKEW_S
    assert ttl_of(leaf) <= MAX_TTL_S


def test_issued_leaf_is_an_x509_svid(ca, msgs, pki):
    leaf = leaf_of(create(ca, msgs, token=mint_token(pki["token_key"])))
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign and not ku.crl_sign
    assert len(uri_sans(leaf)) == 1


def test_requested_ttl_is_honoured_below_the_maximum(ca, msgs, pki):
    leaf = leaf_of(create(ca, msgs, token=mint_token(pki["token_key"]), validity=600))
    assert 600 - SKEW_S <= ttl_of(leaf) <= 600


def test_requested_ttl_is_capped_at_the_maximum(ca, msgs, pki):
    leaf = leaf_of(create(ca, msgs, token=mint_token(pki["token_key"]), validity=10 * MAX_TTL_S))
    assert MAX_TTL_S - SKEW_S <= ttl_of(leaf) <= MAX_TTL_S


def test_csr_asking_for_another_identity_gets_the_tokens_identity(ca, msgs, pki):
    csr, _ = make_csr(uri=f"spiffe://{TRUST_DOMAIN}/ns/kube-system/sa/admin", cn="admin")
    leaf = leaf_of(create(ca, msgs, token=mint_token(pki["token_key"]), csr=csr))
    assert uri_sans(leaf) == [FRONTEND_ID]
    assert leaf.subject.rfc4514_string() == ""


def test_issued_key_is_the_csrs_key(ca, msgs, pki):
    csr, key = make_csr()
    leaf = leaf_of(create(ca, msgs, token=mint_token(pki["token_key"]), csr=csr))
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()


def test_every_issuance_is_access_logged_as_json(ca, msgs, pki):
    leaf = leaf_of(create(ca, msgs, token=mint_token(pki["token_key"])))
    lines = wait_until(lambda: [l for l in ca.access_lines() if l["method"] == CREATE],
                       "the access-log line")
    line = lines[-1]
    assert line["status"] == "OK" and line["code"] == 0
    assert line["identity"] == FRONTEND_ID
    assert line["peer"].startswith("127.0.0.1:")
    assert int(line["serial"], 16) == leaf.serial_number
    assert 0 < line["ttl"] <= DEFAULT_TTL_S
    assert {"time", "message", "reason", "duration_ms"} <= set(line)


# --------------------------------------------------------------------------
# CreateCertificate: refusals


@pytest.mark.parametrize("case, expected", [
    ("forged signature", "bad signature"),
    ("expired", "token expired"),
    ("wrong audience", "wrong audience"),
    ("wrong issuer", "wrong issuer"),
    ("no token", "missing bearer token"),
    ("not bearer", "not \"Bearer <JWT>\""),
    ("garbage token", "malformed token"),
])
def test_bad_tokens_are_unauthenticated_with_a_reason(ca, msgs, pki, case, expected):
    key = pki["token_key"]
    tokens = {
        "forged signature": lambda: mint_token(pki["forged_key"]),
        "expired": lambda: mint_token(key, exp_in=-10),
        "wrong audience": lambda: mint_token(key, aud="someone-else"),
        "wrong issuer": lambda: mint_token(key, iss="https://evil.example"),
        "no token": lambda: None,
        "garbage token": lambda: "not.a.jwt",
    }
    if case == "not bearer":
        ch = ca.channel()
        call = ch.unary_unary(CREATE, request_serializer=msgs.CertRequest.SerializeToString,
                              response_deserializer=msgs.CertResponse.FromString)
        with pytest.raises(grpc.RpcError) as e:
            call(msgs.CertRequest(csr=make_csr()[0]), timeout=RPC_TIMEOUT,
                 metadata=[("authorization", "Basic dXNlcjpwYXNz")])
        ch.close()
        code, details = e.value.code(), e.value.details()
    else:
        code, details = refused(ca, msgs, token=tokens[case]())
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert expected in details
    logged = wait_until(lambda: [l for l in ca.access_lines() if l["status"] == "UNAUTHENTICATED"],
                        "the refusal in the access log")
    assert logged[-1]["identity"] == "" and logged[-1]["message"] == details
    assert "refused: UNAUTHENTICATED" in ca.stderr()


def signed_claims_text(key_pem, claims_json):
    """A token whose claims are exactly |claims_json| (text PyJWT would never
    write, such as a duplicate member), properly signed ES256."""
    return jwt.api_jws.encode(claims_json.encode(), key_pem, algorithm="ES256")


@pytest.mark.parametrize("case, named", [
    ("duplicate sub", 'duplicate member "sub"'),
    ("NUL in sub", "\\u0000 in a string"),
    ("exp as a string", 'claim "exp" is not an integer'),
    ("data after the claims", "data after the JSON object"),
])
def test_strict_json_refusals_are_malformed_and_named_end_to_end(ca, msgs, pki, case, named):
    now = int(time.time())
    good = (f'"iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{now + 600},'
            '"sub":"system:serviceaccount:default:frontend"')
    claims = {
        "duplicate sub": "{" + good + ',"sub":"system:serviceaccount:kube-system:admin"}',
        "NUL in sub": "{" + good.replace("frontend", "frontend\\u0000admin") + "}",
        "exp as a string": "{" + good.replace(f'"exp":{now + 600}', f'"exp":"{now + 600}"') + "}",
        "data after the claims": "{" + good + "} {}",
    }[case]
    code, details = refused(ca, msgs, token=signed_claims_text(pki["token_key"], claims))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert details.startswith("malformed token: payload: ") and named in details, details
    logged = wait_until(lambda: [l for l in ca.access_lines() if l["status"] == "UNAUTHENTICATED"],
                        "the refusal in the access log")
    assert logged[-1]["reason"] == "malformed" and logged[-1]["message"] == details
    assert logged[-1]["identity"] == ""


def test_subject_that_is_not_a_service_account_is_permission_denied(ca, msgs, pki):
    code, details = refused(ca, msgs, token=mint_token(pki["token_key"], sub="system:node:node-1"))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "not a Kubernetes service account" in details


def test_malformed_csr_is_invalid_argument(ca, msgs, pki):
    code, details = refused(ca, msgs, token=mint_token(pki["token_key"]),
                            csr="-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"
                                "-----END CERTIFICATE REQUEST-----\n")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "bad CSR" in details


WEAK_CSRS = {
    # name: (openssl req arguments for the key and digest, what the refusal names)
    "rsa-1024": (["-newkey", "rsa:1024", "-sha256"], "RSA key of 1024 bits, fewer than 2048"),
    "p-521": (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521", "-sha256"],
              "EC key on secp521r1, not P-256 or P-384"),
    "sha1-signed": (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-sha1"],
                    "signed with ecdsa-with-SHA1: SHA-256 or stronger is required"),
}


@pytest.mark.parametrize("case", list(WEAK_CSRS))
def test_weak_csr_is_invalid_argument_with_a_message(ca, msgs, pki, tmp_path, case):
    args, named = WEAK_CSRS[case]
    openssl("req", "-new", *args, "-nodes", "-subj", "/CN=weak", "-keyout", tmp_path / "k.pem",
            "-out", tmp_path / "csr.pem")
    code, details = refused(ca, msgs, token=mint_token(pki["token_key"]),
                            csr=(tmp_path / "csr.pem").read_text())
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == f"bad CSR: CSR refused: {named}", details
    logged = wait_until(lambda: [l for l in ca.access_lines()
                                 if l["status"] == "INVALID_ARGUMENT" and l["message"] == details],
                        "the refusal in the access log")
    assert logged[-1]["reason"] == "bad_csr"


def test_p384_csr_is_signed(ca, msgs, pki, tmp_path):
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes",
            "-subj", "/CN=p384", "-keyout", tmp_path / "k.pem", "-out", tmp_path / "csr.pem")
    resp = create(ca, msgs, token=mint_token(pki["token_key"]),
                  csr=(tmp_path / "csr.pem").read_text())
    assert leaf_of(resp).public_key().curve.name == "secp384r1"


def test_empty_csr_is_invalid_argument(ca, msgs, pki):
    code, details = refused(ca, msgs, token=mint_token(pki["token_key"]), csr="")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "csr is empty" in details


def test_request_that_is_not_protobuf_is_invalid_argument(ca, msgs, pki):
    code, _ = refused(ca, msgs, token=mint_token(pki["token_key"]), raw=b"\xff\xff\xff\xff")
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_token_is_checked_before_the_request_is_read(ca, msgs, pki):
    code, _ = refused(ca, msgs, token=None, raw=b"\xff\xff\xff\xff")
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_oversized_message_is_resource_exhausted_and_the_channel_survives(ca, msgs, pki):
    token = mint_token(pki["token_key"])
    with ca.channel() as ch:
        with pytest.raises(grpc.RpcError) as e:
            create(ca, msgs, token=token, raw=b"\0" * (4 * 1024 * 1024 + 1), channel=ch)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert uri_sans(leaf_of(create(ca, msgs, token=token, channel=ch))) == [FRONTEND_ID]


def test_refusals_are_counted(ca, msgs, pki):
    refused(ca, msgs, token=mint_token(pki["token_key"], exp_in=-10))
    create(ca, msgs, token=mint_token(pki["token_key"]))
    ca.signal(signal.SIGUSR1)
    text = wait_until(lambda: COUNTERS_END in ca.stderr() and ca.stderr(),
                      "the counters on SIGUSR1")
    assert 'mtls_ca_refusals_total{reason="expired"} 1' in text
    assert 'mtls_ca_calls_total{method="CreateCertificate",status="OK"} 1' in text
    assert "mtls_ca_certs_issued_total 1" in text


# --------------------------------------------------------------------------
# CreateCertificate: node agents asking on behalf of workloads on their node


NODE_AGENT_SUB = "system:serviceaccount:mtls-system:mtlsd-node"
NODE_AGENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/mtls-system/sa/mtlsd-node"
DEMO_FRONTEND = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/frontend"
DEMO_BACKEND = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/backend"
IMPERSONATE = "ImpersonatedIdentity"
NODE_AGENT_CONFIG = f"node_agents: [{NODE_AGENT_ID}]\nworkloads_file: workloads.yaml\n"
WORKLOADS = [("node-1", DEMO_FRONTEND), ("node-2", DEMO_BACKEND)]
# mesh_poll_ms also paces the workloads file: an hour means only SIGHUP reloads it.
NO_POLLING = ("mesh_poll_ms: 100\n", "mesh_poll_ms: 3600000\n")


@pytest.fixture
def node_ca(start_ca):
    """A CA with one node agent and frontend on node-1, backend on node-2."""
    return start_ca(extra_config=NODE_AGENT_CONFIG, workloads=WORKLOADS)


def node_agent_token(pki, node="node-1"):
    return mint_token(pki["token_key"], sub=NODE_AGENT_SUB, node=node)


def last_create_line(ca):
    return wait_until(lambda: [l for l in ca.access_lines() if l["method"] == CREATE],
                      "the CreateCertificate access-log line")[-1]


def registry_loads(ca):
    return ca.stderr().count("workload registry (re)loaded")


def test_node_agent_gets_a_certificate_for_a_workload_on_its_node(node_ca, msgs, pki, tmp_path):
    # The CSR asks for another identity: only the impersonated one is signed.
    csr, key = make_csr(uri=f"spiffe://{TRUST_DOMAIN}/ns/kube-system/sa/admin", cn="admin")
    resp = create(node_ca, msgs, token=node_agent_token(pki), csr=csr,
                  metadata={IMPERSONATE: DEMO_FRONTEND, "WorkloadIP": "10.77.1.2"})
    leaf = leaf_of(resp)
    assert uri_sans(leaf) == [DEMO_FRONTEND]
    assert leaf.subject.rfc4514_string() == ""
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
    v = verify_chain(tmp_path, resp)
    assert v.returncode == 0, v.stdout + v.stderr
    line = last_create_line(node_ca)
    assert (line["status"], line["reason"]) == ("OK", "ok")
    assert line["caller"] == NODE_AGENT_ID
    assert line["identity"] == DEMO_FRONTEND
    assert line["impersonated"] == DEMO_FRONTEND
    assert line["node"] == "node-1"
    assert int(line["serial"], 16) == leaf.serial_number
    assert (f"issued serial {line['serial']} to {DEMO_FRONTEND} for node agent {NODE_AGENT_ID} "
            "on node node-1") in node_ca.stderr()


def test_node_agent_without_impersonation_gets_its_own_identity(node_ca, msgs, pki):
    leaf = leaf_of(create(node_ca, msgs, token=node_agent_token(pki)))
    assert uri_sans(leaf) == [NODE_AGENT_ID]
    line = last_create_line(node_ca)
    assert (line["caller"], line["identity"], line["impersonated"], line["node"]) == (
        NODE_AGENT_ID, NODE_AGENT_ID, "", "node-1")


def test_node_agent_is_refused_a_workload_on_another_node(node_ca, msgs, pki):
    code, details = refused(node_ca, msgs, token=node_agent_token(pki),
                            metadata={IMPERSONATE: DEMO_BACKEND})
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details == f"identity {DEMO_BACKEND} has no workload on node node-1"
    line = last_create_line(node_ca)
    assert (line["status"], line["reason"]) == ("PERMISSION_DENIED", "not_on_node")
    assert (line["caller"], line["identity"], line["impersonated"], line["node"]) == (
        NODE_AGENT_ID, "", DEMO_BACKEND, "node-1")
    assert line["serial"] == "" and line["message"] == details
    # The same agent on node-2 may have it.
    resp = create(node_ca, msgs, token=node_agent_token(pki, node="node-2"),
                  metadata={IMPERSONATE: DEMO_BACKEND})
    assert uri_sans(leaf_of(resp)) == [DEMO_BACKEND]


def test_node_agent_without_a_node_claim_is_refused(node_ca, msgs, pki):
    token = mint_token(pki["token_key"], sub=NODE_AGENT_SUB)
    code, details = refused(node_ca, msgs, token=token, metadata={IMPERSONATE: DEMO_FRONTEND})
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert f"the token of node agent {NODE_AGENT_ID} has no node name claim" in details
    line = last_create_line(node_ca)
    assert (line["reason"], line["caller"], line["node"]) == ("no_node_claim", NODE_AGENT_ID, "")


def test_a_caller_that_is_not_a_node_agent_may_not_impersonate(node_ca, msgs, pki):
    # frontend's own pod-bound token, and backend is registered on its node.
    token = mint_token(pki["token_key"], sub="system:serviceaccount:demo:frontend", node="node-2")
    code, details = refused(node_ca, msgs, token=token, metadata={IMPERSONATE: DEMO_BACKEND})
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert f"caller {DEMO_FRONTEND} is not a node agent" in details
    line = last_create_line(node_ca)
    assert (line["reason"], line["caller"], line["identity"]) == ("not_node_agent",
                                                                  DEMO_FRONTEND, "")
    # Without the metadata the same token still gets its own certificate.
    assert uri_sans(leaf_of(create(node_ca, msgs, token=token))) == [DEMO_FRONTEND]


def test_impersonation_is_refused_where_no_node_agents_are_configured(ca, msgs, pki):
    code, details = refused(ca, msgs, token=node_agent_token(pki),
                            metadata={IMPERSONATE: DEMO_FRONTEND})
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "is not a node agent" in details


@pytest.mark.parametrize("requested, expected", [
    (f"spiffe://{TRUST_DOMAIN}/ns//sa/frontend", "is not a valid SPIFFE ID"),
    ("frontend", "is not a valid SPIFFE ID"),
    ("spiffe://other.org/ns/demo/sa/frontend", "is not in this CA's trust domain example.org"),
    (f"spiffe://{TRUST_DOMAIN}", "has no path"),
])
def test_impersonated_identity_must_be_a_workload_id_of_the_trust_domain(node_ca, msgs, pki,
                                                                         requested, expected):
    code, details = refused(node_ca, msgs, token=node_agent_token(pki),
                            metadata={IMPERSONATE: requested})
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in details
    assert last_create_line(node_ca)["reason"] == "bad_impersonated_identity"


def test_impersonated_identity_that_is_not_a_string_is_invalid_argument(node_ca, msgs, pki):
    code, details = refused(node_ca, msgs, token=node_agent_token(pki), metadata={IMPERSONATE: 7})
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == f'metadata "{IMPERSONATE}" must be a string (a SPIFFE ID)'
    assert last_create_line(node_ca)["reason"] == "bad_metadata"


def test_impersonated_identity_given_twice_is_invalid_argument(node_ca, msgs, pki):
    # Two metadata fields on the wire are merged into one map with the key
    # twice; the CA must not pick one of them.
    def one(identity):
        r = msgs.CertRequest(csr=make_csr()[0])
        r.metadata.fields[IMPERSONATE].string_value = identity
        return r.SerializeToString()
    code, details = refused(node_ca, msgs, token=node_agent_token(pki),
                            raw=one(DEMO_FRONTEND) + one(DEMO_BACKEND))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "given more than once" in details


def test_node_agent_refusals_and_issuances_are_counted(node_ca, msgs, pki):
    create(node_ca, msgs, token=node_agent_token(pki), metadata={IMPERSONATE: DEMO_FRONTEND})
    refused(node_ca, msgs, token=node_agent_token(pki), metadata={IMPERSONATE: DEMO_BACKEND})
    node_ca.signal(signal.SIGUSR1)
    text = wait_until(lambda: COUNTERS_END in node_ca.stderr() and node_ca.stderr(),
                      "the counters on SIGUSR1")
    assert 'mtls_ca_refusals_total{reason="not_on_node"} 1' in text
    assert "mtls_ca_impersonated_certs_issued_total 1" in text
    assert "mtls_ca_certs_issued_total 1" in text
    assert "mtls_ca_workloads_loads_total 1" in text


def test_sighup_rereads_the_workloads_file(start_ca, msgs, pki):
    ca = start_ca(extra_config=NODE_AGENT_CONFIG, workloads=WORKLOADS)
    ca.config.write_text(ca.config.read_text().replace(*NO_POLLING))
    assert ca.stop() == 0
    ca.start()  # the same directory, now without polling
    token = node_agent_token(pki)
    code, _ = refused(ca, msgs, token=token, metadata={IMPERSONATE: DEMO_BACKEND})
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # backend moves to node-1, frontend leaves it.
    write_workloads(ca.workloads, [("node-1", DEMO_BACKEND), ("node-2", DEMO_FRONTEND)])
    time.sleep(0.5)  # no poll runs: nothing may change before the signal
    assert uri_sans(leaf_of(create(ca, msgs, token=token,
                                   metadata={IMPERSONATE: DEMO_FRONTEND}))) == [DEMO_FRONTEND]
    loads = registry_loads(ca)
    ca.signal(signal.SIGHUP)
    wait_until(lambda: registry_loads(ca) > loads, "the registry reload")
    assert "workloads file" in ca.stderr()
    assert uri_sans(leaf_of(create(ca, msgs, token=token,
                                   metadata={IMPERSONATE: DEMO_BACKEND}))) == [DEMO_BACKEND]
    code, details = refused(ca, msgs, token=token, metadata={IMPERSONATE: DEMO_FRONTEND})
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details == f"identity {DEMO_FRONTEND} has no workload on node node-1"


def test_editing_the_workloads_file_is_picked_up_without_a_signal(node_ca, msgs, pki):
    token = node_agent_token(pki)
    loads = registry_loads(node_ca)
    write_workloads(node_ca.workloads, WORKLOADS + [("node-1", DEMO_BACKEND)])
    wait_until(lambda: registry_loads(node_ca) > loads, "the registry reload on poll")
    assert "3 workloads on 2 nodes" in node_ca.stderr()
    assert uri_sans(leaf_of(create(node_ca, msgs, token=token,
                                   metadata={IMPERSONATE: DEMO_BACKEND}))) == [DEMO_BACKEND]


def test_a_node_agents_watch_follows_the_workloads_file(node_ca, msgs, pki):
    """The registry feeds node_workloads (entries with an address: a
    Workload needs an IP) and scopes workload_policies; a reload re-pushes."""
    write_mesh(node_ca.mesh, pki, workload_policies=(
        f"  - spiffe_id: {DEMO_FRONTEND}\n    policy: {{default: deny}}\n"
        f"  - spiffe_id: {DEMO_BACKEND}\n    policy: {{default: deny}}\n"))
    wait_until(lambda: "mesh snapshot version 2-" in node_ca.stderr(), "the mesh edit")
    w = Watcher(node_ca, msgs, node_agent_token(pki, node="node-1"))
    try:
        first = w.next()
        assert first.node_workloads.node_name == "node-1"
        assert list(first.node_workloads.workloads) == []  # frontend has no address
        assert [p.spiffe_id for p in first.workload_policies] == [DEMO_FRONTEND]
        write_atomically(node_ca.workloads,
                         "workloads:\n"
                         f"  - {{node: node-1, spiffe_id: '{DEMO_FRONTEND}', address: 10.77.1.2}}\n"
                         f"  - {{node: node-1, spiffe_id: '{DEMO_BACKEND}', address: 10.77.1.3}}\n"
                         f"  - {{node: node-2, spiffe_id: '{DEMO_BACKEND}', address: 10.77.2.3}}\n")
        pushed = w.next()
    finally:
        w.close()
    assert [(x.spiffe_id, list(x.ips)) for x in pushed.node_workloads.workloads] == [
        (DEMO_BACKEND, ["10.77.1.3"]), (DEMO_FRONTEND, ["10.77.1.2"])]
    assert [p.spiffe_id for p in pushed.workload_policies] == [DEMO_BACKEND, DEMO_FRONTEND]
    assert "in force (workloads file;" in node_ca.stderr()


@pytest.mark.parametrize("bad_text, expected", [
    pytest.param("workloads:\n  - node: node-1\n    spiffe_id: " + DEMO_BACKEND + "\n"
                 "    namespace: demo\n",
                 "workloads.yaml:4: unknown key 'workloads[].namespace'", id="unknown-key"),
    pytest.param("workloads:\n  - node: node-1\n"
                 "    spiffe_id: spiffe://other.org/ns/demo/sa/backend\n",
                 "workloads.yaml:3: SPIFFE ID 'spiffe://other.org/ns/demo/sa/backend' is not in "
                 "the trust domain 'example.org'", id="other-trust-domain"),
    pytest.param("workloads:\n  - node: node-1\n    spiffe_id: " + DEMO_BACKEND + "\n"
                 "  - node: node-1\n    spiffe_id: " + DEMO_BACKEND + "\n",
                 "workloads.yaml:4: workload '" + DEMO_BACKEND + "' on node 'node-1' is listed "
                 "twice", id="listed-twice"),
])
def test_a_bad_workloads_edit_is_refused_and_the_last_good_registry_stays(node_ca, msgs, pki,
                                                                          bad_text, expected):
    token = node_agent_token(pki)
    write_atomically(node_ca.workloads, bad_text)
    wait_until(lambda: "workloads file refused" in node_ca.stderr(), "the refusal in the log")
    assert expected in node_ca.stderr()
    # A SIGHUP does not change that either.
    node_ca.signal(signal.SIGHUP)
    wait_until(lambda: node_ca.stderr().count("workloads file refused") >= 2, "the second refusal")
    assert uri_sans(leaf_of(create(node_ca, msgs, token=token,
                                   metadata={IMPERSONATE: DEMO_FRONTEND}))) == [DEMO_FRONTEND]
    code, _ = refused(node_ca, msgs, token=token, metadata={IMPERSONATE: DEMO_BACKEND})
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # Fixing the file brings the new registry in.
    loads = registry_loads(node_ca)
    write_workloads(node_ca.workloads, [("node-1", DEMO_BACKEND)])
    wait_until(lambda: registry_loads(node_ca) > loads, "the fixed registry")
    assert uri_sans(leaf_of(create(node_ca, msgs, token=token,
                                   metadata={IMPERSONATE: DEMO_BACKEND}))) == [DEMO_BACKEND]


def test_a_bad_workloads_file_stops_the_start(start_ca):
    ca = start_ca(extra_config=NODE_AGENT_CONFIG, workloads=WORKLOADS)
    write_atomically(ca.workloads, "workloads:\n  - node: Node_1\n    spiffe_id: " +
                     DEMO_FRONTEND + "\n")
    p = run_ca("--config", ca.config)
    assert p.returncode == 1
    assert "workloads.yaml:2: 'node' must be a Kubernetes node name" in p.stderr, p.stderr
    assert_clean_stderr(p.stderr)


def test_mint_token_script_mints_a_node_bound_token(node_ca, msgs, pki):
    p = subprocess.run(["/usr/bin/python3", str(REPO / "certs" / "mint-token.py"),
                        "--key", str(pki["dir"] / "tokens" / "signer.key"),
                        "--namespace", "mtls-system", "--service-account", "mtlsd-node",
                        "--node", "node-1"], capture_output=True, text=True, timeout=WAIT)
    assert p.returncode == 0, p.stderr
    token = p.stdout.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["kubernetes.io"]["node"] == {"name": "node-1"}
    resp = create(node_ca, msgs, token=token, metadata={IMPERSONATE: DEMO_FRONTEND})
    assert uri_sans(leaf_of(resp)) == [DEMO_FRONTEND]


# --------------------------------------------------------------------------
# TLS and robustness


def test_client_verifies_the_servers_certificate(ca, msgs, pki, tmp_path):
    # The happy path above used root.pem and the name "mtls-ca"; a client
    # that trusts another root, or expects another name, must refuse.
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", tmp_path / "other.key", "-out", tmp_path / "other.pem", "-days", "1",
            "-subj", "/CN=other root")
    token = mint_token(pki["token_key"])
    for ch in (ca.channel(root=tmp_path / "other.pem"), ca.channel(name="not-mtls-ca")):
        with ch, pytest.raises(grpc.RpcError) as e:
            create(ca, msgs, token=token, channel=ch)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    # The server's certificate is its SPIFFE identity with the DNS name.
    der = ssl.get_server_certificate(("127.0.0.1", ca.port))
    cert = x509.load_pem_x509_certificate(der.encode())
    assert uri_sans(cert) == [f"spiffe://{TRUST_DOMAIN}/ns/mtls-system/sa/mtls-ca"]


@pytest.mark.parametrize("junk", [
    b"\x00" * 64,
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x00\x05hello",                # a truncated TLS record
    os.urandom(4096),
])
def test_garbage_on_the_socket_does_not_hurt_the_server(ca, msgs, pki, junk):
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", ca.port), timeout=WAIT) as s:
            s.sendall(junk)
            s.settimeout(WAIT)
            try:
                while s.recv(4096):
                    pass
            except (ConnectionResetError, socket.timeout):
                pass
    assert ca.alive()
    assert uri_sans(leaf_of(create(ca, msgs, token=mint_token(pki["token_key"])))) == [FRONTEND_ID]


def test_garbage_after_the_tls_handshake_does_not_hurt_the_server(ca, msgs, pki):
    ctx = ssl.create_default_context(cafile=str(pki["root"]))
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", ca.port), timeout=WAIT) as raw:
        with ctx.wrap_socket(raw, server_hostname="mtls-ca") as s:
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(2048))
            try:
                while s.recv(4096):
                    pass
            except (ConnectionResetError, ssl.SSLError, socket.timeout):
                pass
    assert ca.alive()
    assert uri_sans(leaf_of(create(ca, msgs, token=mint_token(pki["token_key"])))) == [FRONTEND_ID]


def test_many_sequential_issuances_on_one_channel(ca, msgs, pki):
    """~200 calls on one channel; prints p50/p99 (never asserted: speed is
    bench/'s business)."""
    token = mint_token(pki["token_key"])
    csr, _ = make_csr()
    durations = []
    with ca.channel() as ch:
        create(ca, msgs, token=token, csr=csr, channel=ch)  # connection set-up
        for _ in range(200):
            started = time.perf_counter()
            resp = create(ca, msgs, token=token, csr=csr, channel=ch)
            durations.append(time.perf_counter() - started)
            assert len(resp.cert_chain) == 2
    durations.sort()
    p50 = statistics.median(durations) * 1000
    p99 = durations[int(len(durations) * 0.99) - 1] * 1000
    print(f"\nCreateCertificate over one channel, {len(durations)} calls: "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms")


# --------------------------------------------------------------------------
# Watch


def snapshot_roots(snap):
    return {b.trust_domain: [r.strip() for r in b.roots_pem] for b in snap.trust_bundles}


def test_watch_sends_the_mesh_file_at_once(ca, msgs, pki):
    w = Watcher(ca, msgs, mint_token(pki["token_key"]), spiffe_id=FRONTEND_ID)
    try:
        snap = w.next()
    finally:
        w.close()
    assert snap.version
    assert snapshot_roots(snap) == {TRUST_DOMAIN: [pki["root"].read_text().strip()]}
    assert snap.policy.default_action == 1  # ALLOW
    (rule,) = snap.policy.rules
    assert (rule.name, rule.action, list(rule.ports)) == ("frontend-only", 1, [8080])
    matchers = getattr(rule, "from")  # "from" is a Python keyword
    kinds = [(m.WhichOneof("kind"), getattr(m, m.WhichOneof("kind"))) for m in matchers]
    assert kinds == [("id", FRONTEND_ID), ("prefix", "spiffe://example.org/ns/prod/*"),
                     ("namespace", "prod"), ("trust_domain", "example.org"), ("any", True)]
    assert [(d.address, d.spiffe_id) for d in snap.destinations] == [
        ("127.0.0.1:15006", "spiffe://example.org/ns/default/sa/backend")]


def test_editing_the_mesh_file_pushes_a_new_version(ca, msgs, pki):
    w = Watcher(ca, msgs, mint_token(pki["token_key"]))
    try:
        first = w.next()
        write_mesh(ca.mesh, pki, destinations=(
            "  - address: 127.0.0.1:15006\n"
            "    spiffe_id: spiffe://example.org/ns/default/sa/backend\n"
            "  - address: 10.0.0.7:15006\n"
            "    spiffe_id: spiffe://example.org/ns/shop/sa/cart\n"))
        second = w.next()
        assert second.version != first.version
        assert [d.address for d in second.destinations] == ["127.0.0.1:15006", "10.0.0.7:15006"]
        # Touching the file without changing it pushes nothing.
        os.utime(ca.mesh)
        w.nothing_within(1.0)
    finally:
        w.close()


def test_root_rotation_overlap_sends_both_roots(ca, msgs, pki, tmp_path):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", tmp_path / "root2.key", "-out", tmp_path / "root2.pem", "-days", "1",
            "-subj", "/CN=next root", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    w = Watcher(ca, msgs, mint_token(pki["token_key"]))
    try:
        w.next()
        write_mesh(ca.mesh, pki, extra_roots=[tmp_path / "root2.pem"])
        snap = w.next()
    finally:
        w.close()
    assert snapshot_roots(snap)[TRUST_DOMAIN] == [pki["root"].read_text().strip(),
                                                 (tmp_path / "root2.pem").read_text().strip()]


def test_bad_mesh_edit_keeps_the_last_good_snapshot(ca, msgs, pki):
    w = Watcher(ca, msgs, mint_token(pki["token_key"]))
    try:
        first = w.next()
        text = ca.mesh.read_text()
        write_atomically(ca.mesh, text.replace("action: allow", "action: maybe"))
        wait_until(lambda: "mesh file refused" in ca.stderr(), "the refusal in the log")
        assert "mesh.yaml:8: 'action' must be allow or deny, got 'maybe'" in ca.stderr()
        w.nothing_within(1.0)
        # A late subscriber still gets the last good snapshot.
        late = Watcher(ca, msgs, mint_token(pki["token_key"]))
        try:
            assert late.next().version == first.version
        finally:
            late.close()
        # Fixing the file brings a new version.
        write_mesh(ca.mesh, pki, destinations=(
            "  - address: 10.1.1.1:80\n    spiffe_id: spiffe://example.org/ns/a/sa/b\n"))
        fixed = w.next()
        assert fixed.version != first.version
        assert [d.address for d in fixed.destinations] == ["10.1.1.1:80"]
    finally:
        w.close()


@pytest.mark.parametrize("bad, message", [
    ("      ports: [0]\n", "'ports[]' must be between 1 and 65535"),
    ("      ports: [70000]\n", "'ports[]' must be between 1 and 65535"),
])
def test_bad_ports_are_refused_with_file_and_line(ca, msgs, pki, bad, message):
    text = ca.mesh.read_text().replace("      ports: [8080]\n", bad)
    write_atomically(ca.mesh, text)
    wait_until(lambda: "mesh file refused" in ca.stderr(), "the refusal in the log")
    assert f"mesh.yaml:9: {message}" in ca.stderr()


CACHE_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/cache"
DB_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/db"


def cache_and_db_policies(cache_port=6379):
    """workload_policies entries: cache admits frontend on one port, db nobody."""
    return (f"  - spiffe_id: {CACHE_ID}\n"
            "    policy:\n"
            "      default: deny\n"
            "      rules:\n"
            "        - name: frontend-only\n"
            "          action: allow\n"
            f"          ports: [{cache_port}]\n"
            f"          from: [{{id: {FRONTEND_ID}}}]\n"
            f"  - spiffe_id: {DB_ID}\n"
            "    policy: {default: deny}\n")


def workload_policies_of(snap):
    """{spiffe_id: (default_action, [(name, action, ports, [(kind, value)])])}"""
    def rules(policy):
        return [(r.name, r.action, list(r.ports),
                 [(m.WhichOneof("kind"), getattr(m, m.WhichOneof("kind")))
                  for m in getattr(r, "from")])
                for r in policy.rules]
    return {wp.spiffe_id: (wp.policy.default_action, rules(wp.policy))
            for wp in snap.workload_policies}


def expected_workload_policies(cache_port=6379):
    return {CACHE_ID: (2, [("frontend-only", 1, [cache_port], [("id", FRONTEND_ID)])]),  # DENY
            DB_ID: (2, [])}


CACHE_SUB = "system:serviceaccount:demo:cache"


def test_a_sidecar_gets_only_its_own_workload_policy(ca, msgs, pki):
    w = Watcher(ca, msgs, mint_token(pki["token_key"], sub=CACHE_SUB))
    try:
        assert not w.next().workload_policies
        write_mesh(ca.mesh, pki, workload_policies=cache_and_db_policies())
        pushed = w.next()
    finally:
        w.close()
    # Scoped to the caller: cache gets its own entry, not db's.
    assert workload_policies_of(pushed) == {CACHE_ID: expected_workload_policies()[CACHE_ID]}
    assert not pushed.HasField("node_workloads")  # sidecars never get it
    # The general policy is still there, unchanged, beside it.
    assert [r.name for r in pushed.policy.rules] == ["frontend-only"]
    # A caller without an entry gets none, and its version is its own (the
    # digest part differs, the counter is shared).
    late = Watcher(ca, msgs, mint_token(pki["token_key"], sub=FRONTEND_SUB))
    try:
        snap = late.next()
    finally:
        late.close()
    assert not snap.workload_policies
    assert snap.version.split("-")[0] == pushed.version.split("-")[0]
    assert snap.version != pushed.version


def test_editing_a_workload_policy_pushes_a_new_snapshot_with_the_change(ca, msgs, pki):
    write_mesh(ca.mesh, pki, workload_policies=cache_and_db_policies())
    wait_until(lambda: "mesh snapshot version 2-" in ca.stderr(), "the server to load the edit")
    w = Watcher(ca, msgs, mint_token(pki["token_key"], sub=CACHE_SUB))
    try:
        first = w.next()
        assert workload_policies_of(first) == {CACHE_ID: expected_workload_policies()[CACHE_ID]}
        write_mesh(ca.mesh, pki, workload_policies=cache_and_db_policies(cache_port=6380))
        changed = w.next()
        assert changed.version != first.version
        assert workload_policies_of(changed) == {
            CACHE_ID: expected_workload_policies(cache_port=6380)[CACHE_ID]}
        # An edit of another workload's entry is nothing this caller sees.
        write_mesh(ca.mesh, pki, workload_policies=cache_and_db_policies(cache_port=6380)
                   .split(f"  - spiffe_id: {DB_ID}")[0])
        wait_until(lambda: "mesh snapshot version 4-" in ca.stderr(), "the server to load it")
        w.nothing_within(1.0)
        # Removing its own entry is a change.
        write_mesh(ca.mesh, pki, workload_policies=f"  - spiffe_id: {DB_ID}\n"
                                                   "    policy: {default: deny}\n")
        removed = w.next()
        assert removed.version != changed.version
        assert not removed.workload_policies
        # Touching the file without changing it pushes nothing.
        os.utime(ca.mesh)
        w.nothing_within(1.0)
    finally:
        w.close()


def test_a_bad_workload_policy_edit_keeps_the_last_good_snapshot(ca, msgs, pki):
    w = Watcher(ca, msgs, mint_token(pki["token_key"]))
    try:
        first = w.next()
        write_mesh(ca.mesh, pki, workload_policies=cache_and_db_policies() +
                   f"  - spiffe_id: {CACHE_ID}\n    policy: {{}}\n")
        wait_until(lambda: "mesh file refused" in ca.stderr(), "the refusal in the log")
        assert (f"mesh.yaml:25: workload policy for '{CACHE_ID}' is listed twice "
                "(first at line 15)") in ca.stderr()
        w.nothing_within(1.0)
        late = Watcher(ca, msgs, mint_token(pki["token_key"]))
        try:
            assert late.next().version == first.version
        finally:
            late.close()
    finally:
        w.close()


def test_watch_without_a_token_is_unauthenticated(ca, msgs, pki):
    w = Watcher(ca, msgs, None)
    wait_until(lambda: not w.thread.is_alive(), "the stream to end")
    assert w.error is not None and w.error.code() == grpc.StatusCode.UNAUTHENTICATED
    w.close()


def test_watch_for_someone_elses_identity_is_permission_denied(ca, msgs, pki):
    w = Watcher(ca, msgs, mint_token(pki["token_key"]),
                spiffe_id=f"spiffe://{TRUST_DOMAIN}/ns/default/sa/backend")
    wait_until(lambda: not w.thread.is_alive(), "the stream to end")
    assert w.error is not None and w.error.code() == grpc.StatusCode.PERMISSION_DENIED
    w.close()


def test_cancelled_watch_is_cleaned_up_and_logged(ca, msgs, pki):
    w = Watcher(ca, msgs, mint_token(pki["token_key"]))
    w.next()
    w.close()
    line = wait_until(lambda: [l for l in ca.access_lines() if l["method"] == WATCH],
                      "the Watch access-log line")[-1]
    assert line["status"] == "CANCELLED" and line["identity"] == FRONTEND_ID
    assert line["version"]
    # The server keeps serving watches afterwards.
    w2 = Watcher(ca, msgs, mint_token(pki["token_key"]))
    try:
        assert w2.next().version == line["version"]
    finally:
        w2.close()


def test_watch_deadline_ends_the_stream_on_both_sides(ca, msgs, pki):
    with ca.channel() as ch:
        call = ch.unary_stream(WATCH, request_serializer=msgs.WatchRequest.SerializeToString,
                               response_deserializer=msgs.MeshSnapshot.FromString)
        stream = call(msgs.WatchRequest(), timeout=1.0,
                      metadata=[("authorization", f"Bearer {mint_token(pki['token_key'])}")])
        received = []
        with pytest.raises(grpc.RpcError) as e:
            for snap in stream:
                received.append(snap)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert len(received) == 1
    line = wait_until(lambda: [l for l in ca.access_lines() if l["method"] == WATCH],
                      "the Watch access-log line")[-1]
    assert line["status"] in ("DEADLINE_EXCEEDED", "CANCELLED")


def test_watch_clients_that_disconnect_abruptly_are_cleaned_up(ca, msgs, pki):
    watchers = [Watcher(ca, msgs, mint_token(pki["token_key"])) for _ in range(5)]
    for w in watchers:
        w.next()
        w.channel.close()  # no cancel first: the connection just goes away
    wait_until(lambda: len([l for l in ca.access_lines() if l["method"] == WATCH]) == 5,
               "five Watch streams to end")
    for w in watchers:
        w.thread.join(timeout=WAIT)


def test_open_watch_streams_end_cleanly_on_sigterm(ca, msgs, pki):
    w = Watcher(ca, msgs, mint_token(pki["token_key"]))
    w.next()
    assert ca.stop() == 0
    w.thread.join(timeout=WAIT)
    assert not w.thread.is_alive()
    assert w.error is not None and w.error.code() == grpc.StatusCode.UNAVAILABLE
    w.channel.close()
    assert_clean_stderr(ca.stderr())


# --------------------------------------------------------------------------
# reloads and lifecycle


def test_sighup_rotates_the_signer_without_a_restart(ca, msgs, pki, tmp_path):
    int2, int2_key = new_intermediate(pki, tmp_path)
    before = leaf_of(create(ca, msgs, token=mint_token(pki["token_key"])))
    os.replace(int2, ca.signer_cert)
    os.replace(int2_key, ca.signer_key)
    ca.signal(signal.SIGHUP)
    wait_until(lambda: "CN=rotated intermediate" in ca.stderr(), "the reload")
    resp = create(ca, msgs, token=mint_token(pki["token_key"]))
    after = leaf_of(resp)
    assert before.issuer != after.issuer
    assert "rotated intermediate" in after.issuer.rfc4514_string()
    v = verify_chain(tmp_path, resp)
    assert v.returncode == 0, v.stdout + v.stderr


def test_sighup_with_a_broken_signer_keeps_the_old_one(ca, msgs, pki):
    ca.signer_key.write_text("not a key\n")
    ca.signal(signal.SIGHUP)
    wait_until(lambda: "signer reload refused" in ca.stderr(), "the refusal")
    leaf = leaf_of(create(ca, msgs, token=mint_token(pki["token_key"])))
    assert "intermediate" in leaf.issuer.rfc4514_string()


def test_sighup_rereads_the_mesh_file(ca, msgs, pki):
    w = Watcher(ca, msgs, mint_token(pki["token_key"]))
    try:
        first = w.next()
        ca.signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP" in ca.stderr(), "the reload")
        w.nothing_within(0.5)  # same content: same version, nothing pushed
    finally:
        w.close()
    assert first.version


def test_sighup_rotates_the_token_keys(ca, msgs, pki):
    from cryptography.hazmat.primitives import serialization
    forged = serialization.load_pem_private_key(pki["forged_key"], None)
    ca.token_keys.write_bytes(forged.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    ca.signal(signal.SIGHUP)
    wait_until(lambda: "token keys (re)loaded: 1 key" in ca.stderr(), "the reload")
    code, _ = refused(ca, msgs, token=mint_token(pki["token_key"]))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert uri_sans(leaf_of(create(ca, msgs, token=mint_token(pki["forged_key"])))) == [FRONTEND_ID]


def test_sigterm_exits_zero_and_prints_the_counters(ca, msgs, pki):
    create(ca, msgs, token=mint_token(pki["token_key"]))
    assert ca.stop() == 0
    text = ca.stderr()
    assert "mtls_ca_certs_issued_total 1" in text
    assert_clean_stderr(text)


# --------------------------------------------------------------------------
# command line


def run_ca(*args):
    return subprocess.run([MTLS_CA_BIN, *map(str, args)], capture_output=True, text=True,
                          timeout=WAIT)


@pytest.mark.parametrize("kind", ["plain", "node-agents"])
def test_check_config_accepts_a_good_config(start_ca, kind):
    ca = (start_ca(extra_config=NODE_AGENT_CONFIG, workloads=WORKLOADS) if kind == "node-agents"
          else start_ca())
    p = run_ca("--check-config", ca.config)
    assert p.returncode == 0, p.stderr
    assert_clean_stderr(p.stderr)


@pytest.mark.parametrize("change, expected", [
    (("trust_domain: example.org", "trust_domain: Example.ORG"), "ca.yaml:1: invalid trust domain"),
    (("listen: 127.0.0.1:0", "listen: localhost:15012"), "ca.yaml:2: 'listen' must be IP:port"),
    (("max_cert_ttl_s: 3600", "max_cert_ttl_s: 1h"),
     "ca.yaml:6: 'max_cert_ttl_s' must be an integer"),
    (("  leeway_s: 0", "  leeway_s: 0\n  colour: blue"), "ca.yaml:13: unknown key 'tokens.colour'"),
    (("signer: {cert_file: signer.pem", "signer: {cert_file: missing.pem"),
     "ca.yaml:4: signer: "),
    (("mesh_file: mesh.yaml", "mesh_file: nowhere.yaml"), "nowhere.yaml:1: cannot open"),
    (("workloads_file: workloads.yaml", "workloads_file: nowhere.yaml"),
     "nowhere.yaml:1: cannot open"),
    (("workloads_file: workloads.yaml\n", ""), "ca.yaml:16: 'node_agents' needs 'workloads_file'"),
    (("mtls-system/sa/mtlsd-node", "mtls-system/sa//mtlsd-node"),
     "ca.yaml:16: invalid SPIFFE ID"),
    (("node-2", "node_2"), "workloads.yaml:4: 'node' must be a Kubernetes node name"),
    (("sa/backend", "sa/back end"), "workloads.yaml:5: invalid SPIFFE ID"),
])
def test_check_config_reports_file_and_line(node_ca, change, expected):
    ca = node_ca
    for path in (ca.config, ca.workloads):
        path.write_text(path.read_text().replace(*change))
    p = run_ca("--check-config", ca.config)
    assert p.returncode == 1
    assert expected in p.stderr, p.stderr
    assert_clean_stderr(p.stderr)


def test_check_config_accepts_workload_policies(ca):
    write_mesh(ca.mesh, ca.pki, workload_policies=cache_and_db_policies())
    p = run_ca("--check-config", ca.config)
    assert p.returncode == 0, p.stderr
    assert_clean_stderr(p.stderr)


@pytest.mark.parametrize("entries, expected", [
    ("  - {spiffe_id: spiffe://partner.org/ns/demo/sa/cache, policy: {}}\n",
     "mesh.yaml:15: SPIFFE ID 'spiffe://partner.org/ns/demo/sa/cache' is not in the trust "
     "domain 'example.org'"),
    ("  - {spiffe_id: spiffe://example.org/ns//sa/cache, policy: {}}\n",
     "mesh.yaml:15: invalid SPIFFE ID"),
    (f"  - spiffe_id: {CACHE_ID}\n",
     f"mesh.yaml:15: workload policy for '{CACHE_ID}' needs 'policy'"),
    (f"  - {{spiffe_id: {CACHE_ID}, policy: {{}}}}\n" * 2,
     f"mesh.yaml:16: workload policy for '{CACHE_ID}' is listed twice (first at line 15)"),
    (f"  - {{spiffe_id: {CACHE_ID}, policy: {{}}, ports: [1]}}\n",
     "mesh.yaml:15: unknown key 'workload_policies[].ports'"),
    (f"  - {{spiffe_id: {CACHE_ID}, policy: {{rules: [{{name: r, action: allow}}]}}}}\n",
     "mesh.yaml:15: policy rule 'r' needs 'from'"),
])
def test_check_config_reports_workload_policy_errors_with_file_and_line(ca, entries, expected):
    write_mesh(ca.mesh, ca.pki, workload_policies=entries)
    p = run_ca("--check-config", ca.config)
    assert p.returncode == 1
    assert expected in p.stderr, p.stderr
    assert_clean_stderr(p.stderr)


def test_a_port_in_use_is_reported_and_exits_one(ca):
    taken = ca.config.read_text().replace("listen: 127.0.0.1:0", f"listen: 127.0.0.1:{ca.port}")
    ca.config.write_text(taken)
    p = run_ca("--config", ca.config)
    assert p.returncode == 1
    assert f"cannot listen on 127.0.0.1:{ca.port}: Address already in use" in p.stderr
    assert_clean_stderr(p.stderr)


def test_tls_below_the_minimum_version_is_refused(ca):
    ctx = ssl.create_default_context(cafile=str(ca.pki["root"]))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", ca.port), timeout=WAIT) as raw:
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(raw, server_hostname="mtls-ca")
    assert ca.alive()


def test_a_bad_config_does_not_start(tmp_path):
    (tmp_path / "ca.yaml").write_text("trust_domain: example.org\nbogus: 1\n")
    p = run_ca("--config", tmp_path / "ca.yaml")
    assert p.returncode == 1
    assert "ca.yaml:2: unknown key 'bogus'" in p.stderr
    assert_clean_stderr(p.stderr)
