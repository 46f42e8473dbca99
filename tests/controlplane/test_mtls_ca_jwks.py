"""mtls-ca verifies agents' service-account tokens with the API server's own
keys, fetched from /openid/v1/jwks of the API server stand-in (tests/k8s)
over verified HTTPS: no hand-converted key file. A key rotation on the API
server is picked up when a token names a key mtls-ca does not know yet."""

import base64
import hashlib
import sys
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import (AUDIENCE, DEFAULT_TTL_S, ISSUER, MAX_TTL_S, MESH_POLL_MS, TRUST_DOMAIN,
                      mint_token, wait_until)
from test_mtls_ca import create, leaf_of, refused, uri_sans

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "k8s"))
import fixtures as fx  # noqa: E402
from standin import StandIn  # noqa: E402

FRONTEND = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/frontend"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk(public_key):
    """The JWK kube-apiserver publishes for |public_key|, with its kid
    (base64url SHA-256 of the DER SubjectPublicKeyInfo)."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    kid = b64url(hashlib.sha256(der).digest())
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        n = public_key.public_numbers()
        return {"use": "sig", "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256",
                "x": b64url(n.x.to_bytes(32, "big")), "y": b64url(n.y.to_bytes(32, "big"))}
    n = public_key.public_numbers()
    return {"use": "sig", "kty": "RSA", "kid": kid, "alg": "RS256",
            "n": b64url(n.n.to_bytes((n.n.bit_length() + 7) // 8, "big")),
            "e": b64url(n.e.to_bytes((n.e.bit_length() + 7) // 8, "big"))}


def pem_private(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture
def api(tmp_path):
    s = StandIn(tmp_path / "apiserver").start()
    s.apply("add", "namespaces", fx.namespace("default"))
    yield s
    s.stop()


def jwks_config(pki, api, tmp_path, min_interval_ms=200):
    token = tmp_path / "k8s-token"
    token.write_text(api.token)
    return (f"trust_domain: {TRUST_DOMAIN}\n"
            "listen: 127.0.0.1:0\n"
            f"tls: {{cert_file: {pki['cp_chain']}, key_file: {pki['cp_key']}}}\n"
            "signer: {cert_file: signer.pem, key_file: signer.key}\n"
            f"roots_file: {pki['root']}\n"
            f"max_cert_ttl_s: {MAX_TTL_S}\n"
            f"default_cert_ttl_s: {DEFAULT_TTL_S}\n"
            "tokens:\n"
            f"  issuer: {ISSUER}\n"
            f"  audience: {AUDIENCE}\n"
            "  leeway_s: 0\n"
            f"  jwks_min_interval_ms: {min_interval_ms}\n"
            "mesh_file: mesh.yaml\n"
            f"mesh_poll_ms: {MESH_POLL_MS}\n"
            "kubernetes:\n"
            f"  server: {api.server}\n"
            f"  token_file: {token}\n"
            f"  ca_file: {api.ca_file}\n"
            "  watch_timeout_s: 5\n")


def set_jwks(api, *public_keys):
    api.admin("/admin/jwks", {"keys": [jwk(k) for k in public_keys]})


def issued(ca, msgs, token):
    try:
        return create(ca, msgs, token=token)
    except grpc.RpcError:
        return None


def test_tokens_are_verified_with_the_api_servers_published_keys(start_ca, api, msgs, pki,
                                                                tmp_path):
    signer = serialization.load_pem_private_key(pki["token_key"], None)
    # Before the API server publishes a usable key, calls are refused as
    # retryable, and mtls-ca says why it has no key.
    ca = start_ca(config_text=jwks_config(pki, api, tmp_path))
    wait_until(lambda: "token keys: GET /openid/v1/jwks failed" in ca.stderr(),
               "the refused empty key set")
    assert "JWKS has no RS256 or ES256 (P-256) signing key" in ca.stderr()
    code, details = refused(ca, msgs, token=mint_token(pki["token_key"]))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "token signing keys not loaded yet" in details

    set_jwks(api, signer.public_key())
    resp = wait_until(lambda: issued(ca, msgs, mint_token(pki["token_key"])),
                      "a certificate once the keys are published")
    assert uri_sans(leaf_of(resp)) == [FRONTEND]
    assert "token keys (re)loaded from the API server (/openid/v1/jwks): 1 key" in ca.stderr()

    # A forged token (a key the API server never published) stays refused.
    code, details = refused(ca, msgs, token=mint_token(pki["forged_key"]))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "bad signature" in details or "unknown signing key" in details


def test_a_rotated_api_server_key_is_fetched_when_a_token_needs_it(start_ca, api, msgs, pki,
                                                                  tmp_path):
    old = serialization.load_pem_private_key(pki["token_key"], None)
    new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    set_jwks(api, old.public_key())
    ca = start_ca(config_text=jwks_config(pki, api, tmp_path))
    wait_until(lambda: issued(ca, msgs, mint_token(pki["token_key"])), "the first key set")
    fetched_before = api.stats()["jwks_requests"]

    # The API server rotates to an RSA key; tokens signed with it fail until
    # mtls-ca fetches the set again, which the first such failure triggers.
    set_jwks(api, old.public_key(), new.public_key())
    import jwt as pyjwt
    import time
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "system:serviceaccount:default:frontend",
              "iat": now, "nbf": now - 5, "exp": now + 600}
    kid = jwk(new.public_key())["kid"]
    token = pyjwt.encode(claims, pem_private(new), algorithm="RS256", headers={"kid": kid})
    resp = wait_until(lambda: issued(ca, msgs, token), "the rotated key to be fetched")
    assert uri_sans(leaf_of(resp)) == [FRONTEND]
    assert api.stats()["jwks_requests"] > fetched_before
    assert "token keys (re)loaded from the API server (/openid/v1/jwks): 2 keys" in ca.stderr()
    # The old key still works while the API server publishes it.
    assert issued(ca, msgs, mint_token(pki["token_key"])) is not None


def test_a_broken_jwks_keeps_the_keys_in_force(start_ca, api, msgs, pki, tmp_path):
    signer = serialization.load_pem_private_key(pki["token_key"], None)
    set_jwks(api, signer.public_key())
    ca = start_ca(config_text=jwks_config(pki, api, tmp_path))
    wait_until(lambda: issued(ca, msgs, mint_token(pki["token_key"])), "the first key set")
    bad = jwk(signer.public_key())
    bad["x"] = bad["y"]  # not a point of the curve
    api.admin("/admin/jwks", {"keys": [bad]})
    # A forged token triggers a fetch; the broken set is refused and logged.
    refused(ca, msgs, token=mint_token(pki["forged_key"]))
    wait_until(lambda: "keys[0]: EC key: (x, y) is not a point of P-256" in ca.stderr(),
               "the broken set's refusal")
    assert issued(ca, msgs, mint_token(pki["token_key"])) is not None
