"""mtls-ca's JWT-SVIDs (/mtlsd.jwt.v1.JwtSvidService) through grpcio, with
a real service-account token: SignJwtSvid signs for the identity the token
decides (or, for a node agent, the workload it names on its node), and the
token verifies with PyJWT (an implementation independent of ours) against
the JWKS that WatchJwtBundles streams; a rotated signing key stays in the
bundle; refusals are those of CreateCertificate plus the audience rules."""

import json
import signal
import threading

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import COUNTERS_END, RPC_TIMEOUT, TRUST_DOMAIN, assert_clean_stderr, mint_token, \
    wait_until, write_atomically
from test_mtls_ca import DEMO_BACKEND, DEMO_FRONTEND, NODE_AGENT_CONFIG, NODE_AGENT_ID, \
    WORKLOADS, node_agent_token, run_ca

SIGN = "/mtlsd.jwt.v1.JwtSvidService/SignJwtSvid"
WATCH_BUNDLES = "/mtlsd.jwt.v1.JwtSvidService/WatchJwtBundles"
FRONTEND_ID = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/frontend"
BUNDLE_KEY = f"spiffe://{TRUST_DOMAIN}"
JWT_TTL_S = 120
JWT_MAX_TTL_S = 600
JWT_CONFIG = f"jwt_svid: {{ttl_s: {JWT_TTL_S}, max_ttl_s: {JWT_MAX_TTL_S}}}\n"


def p256_pem():
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()).decode()


def sign(ca, msgs, token, audience=("payments",), ttl=0, impersonate=None):
    """One SignJwtSvid; returns the response or raises grpc.RpcError."""
    metadata = [("authorization", f"Bearer {token}")] if token is not None else []
    if impersonate is not None:
        metadata.append(("impersonatedidentity", impersonate))
    with ca.channel() as ch:
        call = ch.unary_unary(SIGN, request_serializer=msgs.SignJwtSvidRequest.SerializeToString,
                              response_deserializer=msgs.SignJwtSvidResponse.FromString)
        return call(msgs.SignJwtSvidRequest(audience=list(audience), ttl_seconds=ttl),
                    timeout=RPC_TIMEOUT, metadata=metadata)


def refused(*args, **kwargs):
    with pytest.raises(grpc.RpcError) as e:
        sign(*args, **kwargs)
    return e.value.code(), e.value.details()


class BundleWatch:
    """A WatchJwtBundles stream read on a thread; messages collect in order."""

    def __init__(self, ca, msgs, token):
        self.channel = ca.channel()
        call = self.channel.unary_stream(
            WATCH_BUNDLES, request_serializer=msgs.WatchJwtBundlesRequest.SerializeToString,
            response_deserializer=msgs.JwtBundles.FromString)
        self.stream = call(msgs.WatchJwtBundlesRequest(),
                           metadata=[("authorization", f"Bearer {token}")])
        self.messages = []
        self.error = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for m in self.stream:
                self.messages.append(m)
        except grpc.RpcError as e:
            self.error = e

    def jwks(self, index):
        m = wait_until(lambda: len(self.messages) > index and self.messages[index],
                       f"bundle message {index}")
        assert list(m.bundles.keys()) == [BUNDLE_KEY]
        return json.loads(m.bundles[BUNDLE_KEY])

    def close(self):
        self.stream.cancel()
        self.thread.join(timeout=RPC_TIMEOUT)
        self.channel.close()


@pytest.fixture
def watch(msgs, pki):
    opened = []

    def open_watch(ca):
        w = BundleWatch(ca, msgs, mint_token(pki["token_key"]))
        opened.append(w)
        return w

    yield open_watch
    for w in opened:
        w.close()


def verify_with(jwks, token, audience):
    """PyJWT's verdict, with the key the token's kid names in |jwks|."""
    kid = jwt.get_unverified_header(token)["kid"]
    [jwk] = [k for k in jwks["keys"] if k["kid"] == kid]
    key = jwt.PyJWK.from_dict(jwk).key
    return jwt.decode(token, key=key, algorithms=["ES256"], audience=audience,
                      options={"require": ["sub", "aud", "exp"]})


def counters(ca):
    ca.signal(signal.SIGUSR1)
    text = wait_until(lambda: COUNTERS_END in ca.stderr() and ca.stderr(), "the counter dump")
    return text


def test_a_signed_token_verifies_with_pyjwt_against_the_streamed_jwks(start_ca, msgs, pki, watch):
    ca = start_ca(extra_config=JWT_CONFIG)
    jwks = watch(ca).jwks(0)
    resp = sign(ca, msgs, mint_token(pki["token_key"]), audience=["payments", "audit"])
    assert resp.spiffe_id == FRONTEND_ID
    header = jwt.get_unverified_header(resp.token)
    assert (header["alg"], header["typ"]) == ("ES256", "JWT")
    claims = verify_with(jwks, resp.token, "audit")
    assert claims["sub"] == FRONTEND_ID
    assert claims["aud"] == ["payments", "audit"]
    assert claims["exp"] == resp.expires_at
    assert claims["exp"] - claims["iat"] == JWT_TTL_S
    assert "iss" not in claims
    with pytest.raises(jwt.InvalidAudienceError):
        verify_with(jwks, resp.token, "someone-else")
    [key] = jwks["keys"]
    assert (key["kty"], key["crv"], key["use"], key["alg"]) == ("EC", "P-256", "jwt-svid", "ES256")
    assert "generated at start" in ca.stderr() and "will not validate after a restart" in ca.stderr()


def test_one_audience_is_a_string_and_ttl_is_capped(start_ca, msgs, pki, watch):
    ca = start_ca(extra_config=JWT_CONFIG)
    jwks = watch(ca).jwks(0)
    resp = sign(ca, msgs, mint_token(pki["token_key"]), audience=["payments"], ttl=10 ** 6)
    claims = verify_with(jwks, resp.token, "payments")
    assert claims["aud"] == "payments"
    assert claims["exp"] - claims["iat"] == JWT_MAX_TTL_S
    resp = sign(ca, msgs, mint_token(pki["token_key"]), ttl=30)
    claims = verify_with(jwks, resp.token, "payments")
    assert claims["exp"] - claims["iat"] == 30


def test_audience_refusals_are_invalid_argument(start_ca, msgs, pki):
    ca = start_ca(extra_config=JWT_CONFIG)
    token = mint_token(pki["token_key"])
    code, details = refused(ca, msgs, token, audience=[])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at least one audience" in details
    code, details = refused(ca, msgs, token, audience=["ok", ""])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "audience 1 is empty" in details
    lines = wait_until(lambda: [l for l in ca.access_lines() if l["method"] == SIGN], "log lines")
    assert [l["reason"] for l in lines] == ["no_audience", "empty_audience"]
    text = counters(ca)
    assert "mtls_ca_jwt_svid_refusals_total 2" in text
    assert 'mtls_ca_refusals_total{reason="no_audience"} 1' in text


def test_authentication_refusals_are_create_certificates(start_ca, msgs, pki):
    ca = start_ca(extra_config=JWT_CONFIG)
    code, _ = refused(ca, msgs, None)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = refused(ca, msgs, mint_token(pki["forged_key"]))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = refused(ca, msgs, mint_token(pki["token_key"], sub="system:node:node-1"))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_a_node_agent_gets_tokens_for_workloads_on_its_node_only(start_ca, msgs, pki, watch):
    ca = start_ca(extra_config=NODE_AGENT_CONFIG + JWT_CONFIG, workloads=WORKLOADS)
    jwks = watch(ca).jwks(0)
    resp = sign(ca, msgs, node_agent_token(pki, node="node-1"), impersonate=DEMO_FRONTEND)
    assert resp.spiffe_id == DEMO_FRONTEND
    assert verify_with(jwks, resp.token, "payments")["sub"] == DEMO_FRONTEND
    code, _ = refused(ca, msgs, node_agent_token(pki, node="node-1"), impersonate=DEMO_BACKEND)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # A workload cannot impersonate anyone.
    code, _ = refused(ca, msgs, mint_token(pki["token_key"]), impersonate=DEMO_FRONTEND)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    line = [l for l in ca.access_lines() if l["method"] == SIGN][0]
    assert (line["status"], line["caller"], line["identity"], line["impersonated"]) == (
        "OK", NODE_AGENT_ID, DEMO_FRONTEND, DEMO_FRONTEND)
    assert "mtls_ca_jwt_svids_signed_total 1" in counters(ca)


def test_a_rotated_key_stays_in_the_bundle_and_old_tokens_still_verify(start_ca, msgs, pki, watch,
                                                                      tmp_path):
    key_file = tmp_path / "jwt-signing.key"
    key_file.write_text(p256_pem())
    config = (f"jwt_svid: {{ttl_s: {JWT_TTL_S}, max_ttl_s: {JWT_MAX_TTL_S}, "
              f"signing_key_file: {key_file}}}\n")
    ca = start_ca(extra_config=config)
    w = watch(ca)
    first = w.jwks(0)
    old = sign(ca, msgs, mint_token(pki["token_key"]))
    write_atomically(key_file, p256_pem())
    second = w.jwks(1)
    assert len(second["keys"]) == 2
    assert first["keys"][0] in second["keys"]
    verify_with(second, old.token, "payments")
    new = sign(ca, msgs, mint_token(pki["token_key"]))
    assert jwt.get_unverified_header(new.token)["kid"] == second["keys"][0]["kid"]
    verify_with(second, new.token, "payments")
    assert "JWT-SVID signing key rotated" in ca.stderr()
    # A broken key file is refused; the key in force stays and signs.
    write_atomically(key_file, "not a key\n")
    wait_until(lambda: "JWT-SVID signing key reload refused" in ca.stderr(), "the refusal")
    verify_with(second, sign(ca, msgs, mint_token(pki["token_key"])).token, "payments")


def test_check_config_refuses_a_bad_signing_key_file_naming_its_line(ca, tmp_path):
    key_file = tmp_path / "bad.key"
    key_file.write_text("nope\n")
    with open(ca.config, "a") as f:
        f.write(f"jwt_svid: {{signing_key_file: {key_file}}}\n")
    p = run_ca("--check-config", ca.config)
    assert p.returncode == 1
    assert "ca.yaml:16: jwt_svid.signing_key_file: " in p.stderr, p.stderr
    assert "no PEM private key" in p.stderr
    assert_clean_stderr(p.stderr)


def test_check_config_refuses_a_default_ttl_above_the_maximum(ca):
    with open(ca.config, "a") as f:
        f.write("jwt_svid: {ttl_s: 900, max_ttl_s: 600}\n")
    p = run_ca("--check-config", ca.config)
    assert p.returncode == 1
    assert "'jwt_svid.ttl_s' (900) exceeds 'jwt_svid.max_ttl_s' (600)" in p.stderr, p.stderr
