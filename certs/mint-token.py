#!/usr/bin/python3
"""Development stand-in for Kubernetes' TokenRequest API: mints a projected
service-account token (a JWT signed with ES256) that mtls-ca accepts.

  certs/mint-token.py --key DIR/tokens/signer.key --namespace default \\
      --service-account frontend [--audience istio-ca] [--ttl 3600] > token

The issuer defaults to https://kubernetes.default.svc, as in a cluster."""
import argparse
import sys
import time

import jwt


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--key", required=True, help="PEM private key (EC P-256 for ES256)")
    p.add_argument("--namespace", required=True)
    p.add_argument("--service-account", required=True)
    p.add_argument("--audience", default="istio-ca")
    p.add_argument("--issuer", default="https://kubernetes.default.svc")
    p.add_argument("--ttl", type=int, default=3600, help="seconds")
    p.add_argument("--algorithm", default="ES256", choices=["ES256", "RS256"])
    args = p.parse_args()
    now = int(time.time())
    claims = {
        "iss": args.issuer,
        "aud": [args.audience],
        "sub": "system:serviceaccount:%s:%s" % (args.namespace, args.service_account),
        "iat": now,
        "nbf": now - 5,
        "exp": now + args.ttl,
    }
    with open(args.key, "rb") as f:
        key = f.read()
    sys.stdout.write(jwt.encode(claims, key, algorithm=args.algorithm) + "\n")


if __name__ == "__main__":
    main()
