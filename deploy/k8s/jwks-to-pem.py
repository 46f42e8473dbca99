#!/usr/bin/python3
"""Turns a JSON Web Key Set into the PEM file mtls-ca reads (tokens.keys_file).

The kube-apiserver publishes the public keys that verify service-account
tokens as a JWKS:

    kubectl get --raw /openid/v1/jwks | deploy/k8s/jwks-to-pem.py > sa-signer.pub.pem

Not needed by the manifests in this folder: there mtls-ca runs with its
Kubernetes source (`kubernetes: {}`) and fetches the JWKS itself. This is for
an mtls-ca without it (outside the cluster, or with a workloads_file), which
needs the keys as a file.

One "PUBLIC KEY" PEM block is written per key, in the set's order. Only what
mtls-ca can verify is accepted: RSA keys of at least 2048 bits (RS256) and EC
P-256 keys (ES256); any other key is an error naming its "kid", because tokens
signed with it would be refused later with a far less obvious message.

Usage: jwks-to-pem.py [JWKS_FILE]   (standard input without an argument)
Needs python3-cryptography (Debian).
"""

import base64
import json
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def b64url_int(value):
    """A JWK integer: unpadded base64url, big-endian."""
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    return int.from_bytes(raw, "big")


def jwk_to_public_key(jwk):
    kid = jwk.get("kid", "(no kid)")
    kty = jwk.get("kty")
    if kty == "RSA":
        key = rsa.RSAPublicNumbers(b64url_int(jwk["e"]), b64url_int(jwk["n"])).public_key()
        if key.key_size < 2048:
            raise ValueError(f"key {kid}: RSA key of {key.key_size} bits (mtls-ca needs >= 2048)")
        return key
    if kty == "EC":
        if jwk.get("crv") != "P-256":
            raise ValueError(f"key {kid}: EC curve {jwk.get('crv')} (mtls-ca verifies P-256 only)")
        numbers = ec.EllipticCurvePublicNumbers(b64url_int(jwk["x"]), b64url_int(jwk["y"]), ec.SECP256R1())
        return numbers.public_key()
    raise ValueError(f"key {kid}: key type {kty!r} (mtls-ca verifies RSA and EC P-256)")


def jwks_to_pem(text):
    try:
        keys = json.loads(text)["keys"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"not a JWKS (a JSON object with a \"keys\" list): {e}") from e
    if not isinstance(keys, list) or not keys:
        raise ValueError("the JWKS holds no key")
    out = []
    for jwk in keys:
        if not isinstance(jwk, dict):
            raise ValueError("a JWKS entry is not a JSON object")
        if jwk.get("use", "sig") != "sig":
            raise ValueError(f"key {jwk.get('kid', '(no kid)')}: \"use\" is {jwk['use']!r}, not \"sig\"")
        try:
            key = jwk_to_public_key(jwk)
        except KeyError as e:
            raise ValueError(f"key {jwk.get('kid', '(no kid)')}: missing member {e}") from e
        out.append(key.public_bytes(serialization.Encoding.PEM,
                                    serialization.PublicFormat.SubjectPublicKeyInfo).decode())
    return "".join(out)


def main(argv):
    if len(argv) > 2 or (len(argv) == 2 and argv[1] in ("-h", "--help")):
        sys.stderr.write(__doc__)
        return 2
    try:
        if len(argv) == 2:
            with open(argv[1], encoding="utf-8") as f:
                text = f.read()
        else:
            text = sys.stdin.read()
        sys.stdout.write(jwks_to_pem(text))
    except (OSError, ValueError) as e:
        sys.stderr.write(f"jwks-to-pem: {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
