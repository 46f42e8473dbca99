#!/usr/bin/python3
"""Writes seeds for workload_api_response_fuzz.c into DIR (run.sh passes the
target's corpus under tests/out/fuzz/): X509SVIDResponse and
X509BundlesResponse messages as a SPIRE agent sends them, made by the
fake SPIRE agent's own code (tests/integration/fake_spire_agent.py). The
messages carry freshly made private keys, so they are written at each run
and never committed."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import fake_spire_agent as fake  # noqa: E402
import workload_api_pb as pb  # noqa: E402


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    own = fake.Authority("example.org")
    other = fake.Authority("other.org")
    _, inter = own.generations[0]
    web = fake.make_leaf("spiffe://example.org/ns/default/sa/web", inter, 3600)
    api = fake.make_leaf("spiffe://example.org/ns/default/sa/api", inter, 3600)
    root_der = fake.der(own.generations[0][0][0])
    other_der = fake.der(other.generations[0][0][0])

    def svid(msg, spiffe_id, leaf_key, key=None):
        s = msg.svids.add()
        s.spiffe_id = spiffe_id
        s.x509_svid = fake.der(leaf_key[0]) + fake.der(inter[0])
        s.x509_svid_key = fake.pkcs8(key or leaf_key[1])
        s.bundle = root_der

    seeds = {}
    m = pb.X509SVIDResponse()
    svid(m, "spiffe://example.org/ns/default/sa/web", web)
    seeds["svid.bin"] = m.SerializeToString()
    m.federated_bundles["spiffe://other.org"] = other_der
    seeds["svid_federated.bin"] = m.SerializeToString()
    m = pb.X509SVIDResponse()
    svid(m, "spiffe://example.org/ns/default/sa/api", api)
    svid(m, "spiffe://example.org/ns/default/sa/web", web)
    m.federated_bundles["other.org"] = other_der
    seeds["svid_two.bin"] = m.SerializeToString()
    m = pb.X509SVIDResponse()
    svid(m, "spiffe://example.org/ns/default/sa/web", web, key=api[1])
    seeds["svid_key_mismatch.bin"] = m.SerializeToString()
    b = pb.X509BundlesResponse()
    b.bundles["spiffe://example.org"] = root_der
    b.bundles["other.org"] = other_der + root_der
    seeds["bundles.bin"] = b.SerializeToString()
    for name, data in seeds.items():
        with open(os.path.join(out, "seed-" + name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
