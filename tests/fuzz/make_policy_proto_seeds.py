#!/usr/bin/python3
"""Writes tests/fuzz/seeds/policy_proto/: mesh.proto Policy messages in the
shapes mtls-ca compiles from Istio objects (and native rules), each behind
the 3-byte request header policy_proto_fuzz.c reads. A hand-written
protobuf encoder: Debian's protoc is not needed."""
import os

ALLOW, DENY = 1, 2


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def key(field, wire):
    return varint(field << 3 | wire)


def num(field, n):
    return key(field, 0) + varint(n)


def text(field, s):
    b = s.encode() if isinstance(s, str) else s
    return key(field, 2) + varint(len(b)) + b


def packed(field, values):
    body = b"".join(varint(v) for v in values)
    return key(field, 2) + varint(len(body)) + body


def source(principals=(), not_principals=(), namespaces=(), not_namespaces=(), ip_blocks=(),
           not_ip_blocks=()):
    out = b""
    for field, values in enumerate(
            (principals, not_principals, namespaces, not_namespaces, ip_blocks, not_ip_blocks), 1):
        out += b"".join(text(field, v) for v in values)
    return out


def operation(ports=(), not_ports=()):
    return (packed(1, ports) if ports else b"") + (packed(2, not_ports) if not_ports else b"")


def condition(k, values=(), not_values=()):
    return text(1, k) + b"".join(text(2, v) for v in values) + b"".join(
        text(3, v) for v in not_values)


def istio_rule(name, action, sources=(), operations=(), conditions=(), reduced="", never=False):
    out = text(1, name) + num(2, action) + num(5, 1)
    out += b"".join(text(6, s) for s in sources)
    out += b"".join(text(7, o) for o in operations)
    out += b"".join(text(8, c) for c in conditions)
    if reduced:
        out += text(9, reduced)
    if never:
        out += num(10, 1)
    return out


def native_rule(name, action, ports=(), matchers=()):
    out = text(1, name) + num(2, action)
    if ports:
        out += packed(3, ports)
    return out + b"".join(text(4, m) for m in matchers)


def policy(default, rules=(), allow_policies=()):
    return num(1, default) + b"".join(text(2, r) for r in rules) + b"".join(
        text(3, p) for p in allow_policies)


def header(peer, peer_addr, dest_addr, port):
    return bytes([peer | peer_addr << 3 | dest_addr << 6, port >> 8, port & 0xFF])


SEEDS = {
    "istio_allow": (header(1, 1, 1, 8080), policy(DENY, [
        istio_rule("shop/backend-allow[0]", ALLOW,
                   sources=[source(principals=["cluster.local/ns/shop/sa/frontend"],
                                   namespaces=["shop"])],
                   operations=[operation(ports=[8080, 9090], not_ports=[15000])]),
    ], ["shop/backend-allow"])),
    "istio_deny_ipblocks": (header(4, 5, 2, 8080), policy(ALLOW, [
        istio_rule("shop/deny-nets[0]", DENY,
                   sources=[source(ip_blocks=["10.0.0.0/8", "192.168.1.7", "fd00::/8"],
                                   not_ip_blocks=["10.1.0.0/16", "::1"])]),
        istio_rule("shop/deny-nets[1]", DENY, sources=[source(not_principals=["*"])]),
    ])),
    "istio_conditions": (header(1, 1, 2, 9090), policy(DENY, [
        istio_rule("shop/when[0]", ALLOW, conditions=[
            condition("source.ip", ["10.0.0.0/24"], ["10.0.0.7"]),
            condition("source.namespace", ["shop", "web*"]),
            condition("source.principal", not_values=["cluster.local/ns/shop/sa/evil"]),
            condition("destination.ip", ["10.1.2.3", "::1"]),
            condition("destination.port", ["9090"]),
        ]),
    ], ["shop/when"])),
    "istio_reduced": (header(0, 3, 1, 8080), policy(DENY, [
        istio_rule("shop/http-deny[0]", DENY, sources=[source(namespaces=["*suffix", "pre*"])],
                   reduced="rules[0]: to[0].operation.methods needs HTTP"),
        istio_rule("shop/http-allow[0]", ALLOW, never=True,
                   reduced="rules[0]: from[0].source.requestPrincipals needs HTTP"),
        istio_rule("istio-system/ext-authz", DENY, reduced="CUSTOM is not supported"),
    ], ["shop/http-allow", "shop/allow-nothing"])),
    "native": (header(2, 0, 0, 443), policy(DENY, [
        native_rule("deny-web", DENY, [443], [text(3, "web")]),
        native_rule("allow-shop", ALLOW, [443, 8443], [text(2, "spiffe://cluster.local/ns/shop/*"),
                                                      text(1, "spiffe://example.org/workload")]),
        native_rule("allow-td", ALLOW, [], [text(4, "example.org"), num(5, 1)]),
    ])),
}

if __name__ == "__main__":
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "policy_proto")
    os.makedirs(out_dir, exist_ok=True)
    for name, (head, body) in SEEDS.items():
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(head + body)
