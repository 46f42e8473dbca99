#!/usr/bin/python3
"""Development stand-in for Kubernetes' TokenRequest API: mints a projected
service-account token (a JWT signed with ES256) that mtls-ca accepts.

  certs/mint-token.py --key DIR/tokens/signer.key --namespace default \\
      --service-account frontend [--audience istio-ca] [--ttl 3600] \\
      [--node NAME] > token

The issuer defaults to https://kubernetes.default.svc, as in a cluster.
--node NAME adds the claims of a token bound to a pod on node NAME
(Kubernetes 1.30+: "kubernetes.io": {"namespace", "serviceaccount": {"name"},
"node": {"name"}}), which a node agent needs to ask mtls-ca for the
certificates of workloads on its node."""
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
    p.add_argument("--node", help="the node the token is bound to (kubernetes.io.node.name)")
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
    if args.node is not None:
        claims["kubernetes.io"] = {
            "namespace": args.namespace,
            "serviceaccount": {"name": args.service_account},
            "node": {"name": args.node},
        }
    with open(args.key, "rb") as f:
        key = f.read()
    sys.stdout.write(jwt.encode(claims, key, algorithm=args.algorithm) + "\n")


if __name__ == "__main__":
    main()
