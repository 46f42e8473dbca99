// Specification of the generated C code in proto/: the Istio CA messages and
// the mesh config stream encode with the field numbers and wire types that
// PROTOCOL.md and proto/mtlsd/mesh.proto fix, and decode back to what was
// packed. The wire is read here by a small independent reader, not by
// protobuf-c itself.
#include "proto/istio/ca.pb-c.h"
#include "proto/mtlsd/mesh.pb-c.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace {

// ---- an independent reader of the protobuf wire format -------------------

enum WireType : uint8_t { kVarint = 0, kFixed64 = 1, kLen = 2, kFixed32 = 5 };

struct Field {
  uint8_t tag;  // first byte of the key (every field number here is < 16)
  uint32_t number;
  WireType type;
  uint64_t varint;      // kVarint
  std::string payload;  // kLen
  size_t end;           // offset just past the field
};

bool ReadVarint(const std::string &b, size_t *pos, uint64_t *out) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64 && *pos < b.size(); shift += 7) {
    uint8_t c = static_cast<uint8_t>(b[(*pos)++]);
    v |= static_cast<uint64_t>(c & 0x7f) << shift;
    if (!(c & 0x80)) {
      *out = v;
      return true;
    }
  }
  return false;
}

// The top-level fields of one message, in wire order. Fails the test on
// malformed input or a wire type this schema never uses.
std::vector<Field> Fields(const std::string &b) {
  std::vector<Field> out;
  size_t pos = 0;
  while (pos < b.size()) {
    Field f{};
    f.tag = static_cast<uint8_t>(b[pos]);
    uint64_t key;
    if (!ReadVarint(b, &pos, &key)) {
      ADD_FAILURE() << "truncated key at " << pos;
      return out;
    }
    f.number = static_cast<uint32_t>(key >> 3);
    f.type = static_cast<WireType>(key & 7);
    if (f.type == kVarint) {
      if (!ReadVarint(b, &pos, &f.varint)) {
        ADD_FAILURE() << "truncated varint";
        return out;
      }
    } else if (f.type == kLen) {
      uint64_t len;
      if (!ReadVarint(b, &pos, &len) || len > b.size() - pos) {
        ADD_FAILURE() << "bad length";
        return out;
      }
      f.payload = b.substr(pos, len);
      pos += len;
    } else {
      ADD_FAILURE() << "unexpected wire type " << static_cast<int>(f.type);
      return out;
    }
    f.end = pos;
    out.push_back(f);
  }
  return out;
}

std::vector<uint64_t> PackedVarints(const std::string &b) {
  std::vector<uint64_t> out;
  size_t pos = 0;
  uint64_t v;
  while (pos < b.size() && ReadVarint(b, &pos, &v)) out.push_back(v);
  EXPECT_EQ(b.size(), pos) << "packed varints do not end on a boundary";
  return out;
}

// ---- packing helpers -------------------------------------------------------

// protobuf-c string fields are char *; the packers never write through them.
char *S(const char *s) { return const_cast<char *>(s); }

template <typename M>
std::string Pack(const M *msg) {
  const ProtobufCMessage *base = &msg->base;
  std::string out(protobuf_c_message_get_packed_size(base), '\0');
  size_t n = protobuf_c_message_pack(base, reinterpret_cast<uint8_t *>(&out[0]));
  EXPECT_EQ(out.size(), n);
  return out;
}

const uint8_t *U8(const std::string &s) { return reinterpret_cast<const uint8_t *>(s.data()); }

std::string Hex(const std::string &s) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

// ---- Istio CA API ----------------------------------------------------------

const char kCsr[] =
    "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n";

// Holds a request with metadata {"WorkloadName": <value>} without heap use.
struct RequestWithMetadata {
  Istio__V1__Auth__IstioCertificateRequest req;
  Google__Protobuf__Struct md;
  Google__Protobuf__Struct__FieldsEntry entry;
  Google__Protobuf__Struct__FieldsEntry *entries[1];
  Google__Protobuf__Value value;

  RequestWithMetadata(const char *csr, int64_t validity, const char *workload) {
    istio__v1__auth__istio_certificate_request__init(&req);
    google__protobuf__struct__init(&md);
    google__protobuf__struct__fields_entry__init(&entry);
    google__protobuf__value__init(&value);
    value.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
    value.string_value = S(workload);
    entry.key = S("WorkloadName");
    entry.value = &value;
    entries[0] = &entry;
    md.n_fields = 1;
    md.fields = entries;
    req.csr = S(csr);
    req.validity_duration = validity;
    req.metadata = &md;
  }
};

TEST(IstioCaProto, RequestUsesIstioFieldNumbersAndWireTypes) {
  RequestWithMetadata r(kCsr, 3600, "x");
  std::string wire = Pack(&r.req);

  ASSERT_FALSE(wire.empty());
  EXPECT_EQ(0x0a, static_cast<uint8_t>(wire[0])) << "csr: field 1, length-delimited";

  std::vector<Field> f = Fields(wire);
  ASSERT_EQ(3u, f.size()) << Hex(wire);
  EXPECT_EQ(0x0a, f[0].tag);
  EXPECT_EQ(kCsr, f[0].payload);
  EXPECT_EQ(0x18, f[1].tag) << "validity_duration: field 3, varint";
  EXPECT_EQ(3600u, f[1].varint);
  EXPECT_EQ(0x22, f[2].tag) << "metadata: field 4, length-delimited";

  // google.protobuf.Struct: map<string, Value> fields = 1, i.e. repeated
  // entries {1: key, 2: Value}; Value.string_value is field 3.
  std::vector<Field> md = Fields(f[2].payload);
  ASSERT_EQ(1u, md.size());
  EXPECT_EQ(0x0a, md[0].tag);
  std::vector<Field> entry = Fields(md[0].payload);
  ASSERT_EQ(2u, entry.size());
  EXPECT_EQ(0x0a, entry[0].tag);
  EXPECT_EQ("WorkloadName", entry[0].payload);
  EXPECT_EQ(0x12, entry[1].tag);
  std::vector<Field> value = Fields(entry[1].payload);
  ASSERT_EQ(1u, value.size());
  EXPECT_EQ(0x1a, value[0].tag);
  EXPECT_EQ("x", value[0].payload);
}

TEST(IstioCaProto, RequestMatchesHandEncodedBytes) {
  RequestWithMetadata r("C", 3600, "x");
  // Derived by hand from the protobuf encoding rules; Debian's python3-protobuf
  // encodes the same message to the same bytes.
  const std::string expected(
      "\x0a\x01"
      "C"
      "\x18\x90\x1c"  // 3600 as a varint
      "\x22\x15"      // metadata, 21 bytes
      "\x0a\x13"      //   fields entry, 19 bytes
      "\x0a\x0c"
      "WorkloadName"  //     key
      "\x12\x03\x1a\x01"
      "x",  //     value { string_value: "x" }
      29);
  EXPECT_EQ(Hex(expected), Hex(Pack(&r.req)));
}

TEST(IstioCaProto, Proto3DefaultsAreNotOnTheWire) {
  Istio__V1__Auth__IstioCertificateRequest req;
  istio__v1__auth__istio_certificate_request__init(&req);
  req.csr = S("C");  // validity_duration 0, no metadata: both absent
  EXPECT_EQ(Hex(std::string("\x0a\x01"
                            "C",
                            3)),
            Hex(Pack(&req)));
}

TEST(IstioCaProto, RequestRoundTrips) {
  RequestWithMetadata r(kCsr, 86400, "x");
  std::string wire = Pack(&r.req);

  Istio__V1__Auth__IstioCertificateRequest *got =
      istio__v1__auth__istio_certificate_request__unpack(nullptr, wire.size(), U8(wire));
  ASSERT_NE(nullptr, got);
  EXPECT_STREQ(kCsr, got->csr);
  EXPECT_EQ(86400, got->validity_duration);
  ASSERT_NE(nullptr, got->metadata);
  ASSERT_EQ(1u, got->metadata->n_fields);
  EXPECT_STREQ("WorkloadName", got->metadata->fields[0]->key);
  ASSERT_NE(nullptr, got->metadata->fields[0]->value);
  EXPECT_EQ(GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE, got->metadata->fields[0]->value->kind_case);
  EXPECT_STREQ("x", got->metadata->fields[0]->value->string_value);
  istio__v1__auth__istio_certificate_request__free_unpacked(got, nullptr);
}

TEST(IstioCaProto, RequestFieldTwoIsSkippedAsUnknown) {
  // An old client that still sends field 2 must not break decoding.
  const std::string wire(
      "\x0a\x01"
      "C"
      "\x12\x03"
      "old"
      "\x18\x05",
      10);
  Istio__V1__Auth__IstioCertificateRequest *got =
      istio__v1__auth__istio_certificate_request__unpack(nullptr, wire.size(), U8(wire));
  ASSERT_NE(nullptr, got);
  EXPECT_STREQ("C", got->csr);
  EXPECT_EQ(5, got->validity_duration);
  EXPECT_EQ(nullptr, got->metadata);
  istio__v1__auth__istio_certificate_request__free_unpacked(got, nullptr);
}

TEST(IstioCaProto, ResponseCarriesChainAndSeparateRoots) {
  const char *chain[] = {"LEAF", "INTERMEDIATE"};
  const char *roots[] = {"ROOT-A", "ROOT-B"};
  Istio__V1__Auth__Roots rc;
  istio__v1__auth__roots__init(&rc);
  rc.n_ca_cert = 2;
  rc.ca_cert = const_cast<char **>(roots);
  Istio__V1__Auth__IstioCertificateResponse resp;
  istio__v1__auth__istio_certificate_response__init(&resp);
  resp.n_cert_chain = 2;
  resp.cert_chain = const_cast<char **>(chain);
  resp.root_cert = &rc;

  std::string wire = Pack(&resp);
  std::vector<Field> f = Fields(wire);
  ASSERT_EQ(3u, f.size()) << Hex(wire);
  EXPECT_EQ(0x0a, f[0].tag) << "cert_chain: field 1, repeated string";
  EXPECT_EQ("LEAF", f[0].payload);
  EXPECT_EQ(0x0a, f[1].tag);
  EXPECT_EQ("INTERMEDIATE", f[1].payload);
  EXPECT_EQ(0x12, f[2].tag) << "root_cert: field 2, message";
  std::vector<Field> r = Fields(f[2].payload);
  ASSERT_EQ(2u, r.size());
  EXPECT_EQ(0x0a, r[0].tag) << "Roots.ca_cert: field 1, repeated string";
  EXPECT_EQ("ROOT-A", r[0].payload);
  EXPECT_EQ("ROOT-B", r[1].payload);

  Istio__V1__Auth__IstioCertificateResponse *got =
      istio__v1__auth__istio_certificate_response__unpack(nullptr, wire.size(), U8(wire));
  ASSERT_NE(nullptr, got);
  ASSERT_EQ(2u, got->n_cert_chain);
  EXPECT_STREQ("LEAF", got->cert_chain[0]);
  EXPECT_STREQ("INTERMEDIATE", got->cert_chain[1]);
  ASSERT_NE(nullptr, got->root_cert);
  ASSERT_EQ(2u, got->root_cert->n_ca_cert);
  EXPECT_STREQ("ROOT-A", got->root_cert->ca_cert[0]);
  EXPECT_STREQ("ROOT-B", got->root_cert->ca_cert[1]);
  istio__v1__auth__istio_certificate_response__free_unpacked(got, nullptr);
}

TEST(IstioCaProto, ResponseWithoutRootsHasNoRootCert) {
  const std::string wire(
      "\x0a\x04"
      "LEAF"
      "\x0a\x04"
      "ROOT",
      12);
  Istio__V1__Auth__IstioCertificateResponse *got =
      istio__v1__auth__istio_certificate_response__unpack(nullptr, wire.size(), U8(wire));
  ASSERT_NE(nullptr, got);
  ASSERT_EQ(2u, got->n_cert_chain);
  EXPECT_STREQ("ROOT", got->cert_chain[1]);
  EXPECT_EQ(nullptr, got->root_cert);
  istio__v1__auth__istio_certificate_response__free_unpacked(got, nullptr);
}

TEST(IstioCaProto, TruncatedInputIsRefused) {
  RequestWithMetadata r(kCsr, 3600, "x");
  std::string wire = Pack(&r.req);
  // Prefixes that end on a top-level field boundary are valid messages;
  // every other prefix cuts a field and must be refused.
  std::vector<size_t> boundaries = {0};
  for (const Field &f : Fields(wire)) boundaries.push_back(f.end);
  ASSERT_EQ(wire.size(), boundaries.back());
  for (size_t n = 0; n < wire.size(); n++) {
    Istio__V1__Auth__IstioCertificateRequest *got =
        istio__v1__auth__istio_certificate_request__unpack(nullptr, n, U8(wire));
    bool boundary = std::find(boundaries.begin(), boundaries.end(), n) != boundaries.end();
    EXPECT_EQ(boundary, got != nullptr) << "prefix of " << n << " bytes";
    if (got) istio__v1__auth__istio_certificate_request__free_unpacked(got, nullptr);
  }
  const std::string bad(
      "\x0a\x7f"
      "short",
      7);  // length beyond the end
  EXPECT_EQ(nullptr,
            istio__v1__auth__istio_certificate_request__unpack(nullptr, bad.size(), U8(bad)));
}

TEST(IstioCaProto, ServiceDescriptorNamesTheIstioMethod) {
  const ProtobufCServiceDescriptor &d = istio__v1__auth__istio_certificate_service__descriptor;
  EXPECT_STREQ("istio.v1.auth.IstioCertificateService", d.name);
  ASSERT_EQ(1u, d.n_methods);
  EXPECT_STREQ("CreateCertificate", d.methods[0].name);
  EXPECT_EQ(&istio__v1__auth__istio_certificate_request__descriptor, d.methods[0].input);
  EXPECT_EQ(&istio__v1__auth__istio_certificate_response__descriptor, d.methods[0].output);
}

// ---- mesh config stream ----------------------------------------------------

// A complete snapshot: two rules whose matchers use every oneof kind.
struct Snapshot {
  Mtlsd__Mesh__V1__MeshSnapshot snap;
  Mtlsd__Mesh__V1__TrustBundle tb;
  Mtlsd__Mesh__V1__TrustBundle *tbs[1];
  const char *roots[2] = {"ROOT-1", "ROOT-2"};
  Mtlsd__Mesh__V1__Policy policy;
  Mtlsd__Mesh__V1__Rule deny, allow;
  Mtlsd__Mesh__V1__Rule *rules[2];
  uint32_t allow_ports[2] = {8080, 9090};
  Mtlsd__Mesh__V1__Matcher m_td, m_id, m_prefix, m_ns, m_any;
  Mtlsd__Mesh__V1__Matcher *deny_from[1];
  Mtlsd__Mesh__V1__Matcher *allow_from[4];
  Mtlsd__Mesh__V1__Destination dest;
  Mtlsd__Mesh__V1__Destination *dests[1];

  Snapshot() {
    mtlsd__mesh__v1__mesh_snapshot__init(&snap);
    mtlsd__mesh__v1__trust_bundle__init(&tb);
    mtlsd__mesh__v1__policy__init(&policy);
    mtlsd__mesh__v1__rule__init(&deny);
    mtlsd__mesh__v1__rule__init(&allow);
    for (Mtlsd__Mesh__V1__Matcher *m : {&m_td, &m_id, &m_prefix, &m_ns, &m_any})
      mtlsd__mesh__v1__matcher__init(m);
    mtlsd__mesh__v1__destination__init(&dest);

    tb.trust_domain = S("example.org");
    tb.n_roots_pem = 2;
    tb.roots_pem = const_cast<char **>(roots);
    tbs[0] = &tb;

    m_td.kind_case = MTLSD__MESH__V1__MATCHER__KIND_TRUST_DOMAIN;
    m_td.trust_domain = S("evil.org");
    deny.name = S("no-evil");
    deny.action = MTLSD__MESH__V1__ACTION__DENY;
    deny.n_from = 1;
    deny.from = deny_from;
    deny_from[0] = &m_td;

    m_id.kind_case = MTLSD__MESH__V1__MATCHER__KIND_ID;
    m_id.id = S("spiffe://example.org/ns/default/sa/frontend");
    m_prefix.kind_case = MTLSD__MESH__V1__MATCHER__KIND_PREFIX;
    m_prefix.prefix = S("spiffe://example.org/ns/prod/*");
    m_ns.kind_case = MTLSD__MESH__V1__MATCHER__KIND_NAMESPACE;
    m_ns.namespace_ = S("prod");
    m_any.kind_case = MTLSD__MESH__V1__MATCHER__KIND_ANY;
    m_any.any = 1;
    allow.name = S("to-backend");
    allow.action = MTLSD__MESH__V1__ACTION__ALLOW;
    allow.n_ports = 2;
    allow.ports = allow_ports;
    allow.n_from = 4;
    allow.from = allow_from;
    allow_from[0] = &m_id;
    allow_from[1] = &m_prefix;
    allow_from[2] = &m_ns;
    allow_from[3] = &m_any;

    rules[0] = &deny;
    rules[1] = &allow;
    policy.default_action = MTLSD__MESH__V1__ACTION__DENY;
    policy.n_rules = 2;
    policy.rules = rules;

    dest.address = S("10.0.0.7:15006");
    dest.spiffe_id = S("spiffe://example.org/ns/default/sa/backend");
    dests[0] = &dest;

    snap.version = S("42");
    snap.n_trust_bundles = 1;
    snap.trust_bundles = tbs;
    snap.policy = &policy;
    snap.n_destinations = 1;
    snap.destinations = dests;
  }
};

TEST(MeshProto, SnapshotUsesItsFieldNumbersAndWireTypes) {
  Snapshot s;
  std::string wire = Pack(&s.snap);

  std::vector<Field> f = Fields(wire);
  ASSERT_EQ(4u, f.size()) << Hex(wire);
  EXPECT_EQ(0x0a, f[0].tag) << "version: field 1, string";
  EXPECT_EQ("42", f[0].payload);
  EXPECT_EQ(0x12, f[1].tag) << "trust_bundles: field 2, message";
  EXPECT_EQ(0x1a, f[2].tag) << "policy: field 3, message";
  EXPECT_EQ(0x22, f[3].tag) << "destinations: field 4, message";

  std::vector<Field> tb = Fields(f[1].payload);
  ASSERT_EQ(3u, tb.size());
  EXPECT_EQ(0x0a, tb[0].tag);
  EXPECT_EQ("example.org", tb[0].payload);
  EXPECT_EQ(0x12, tb[1].tag);
  EXPECT_EQ("ROOT-1", tb[1].payload);
  EXPECT_EQ(0x12, tb[2].tag);
  EXPECT_EQ("ROOT-2", tb[2].payload);

  std::vector<Field> pol = Fields(f[2].payload);
  ASSERT_EQ(3u, pol.size());
  EXPECT_EQ(0x08, pol[0].tag) << "default_action: field 1, varint";
  EXPECT_EQ(2u, pol[0].varint) << "DENY = 2";
  EXPECT_EQ(0x12, pol[1].tag) << "rules: field 2, message";
  EXPECT_EQ(0x12, pol[2].tag);

  std::vector<Field> deny = Fields(pol[1].payload);
  ASSERT_EQ(3u, deny.size());
  EXPECT_EQ(0x0a, deny[0].tag) << "name: field 1";
  EXPECT_EQ("no-evil", deny[0].payload);
  EXPECT_EQ(0x10, deny[1].tag) << "action: field 2, varint";
  EXPECT_EQ(2u, deny[1].varint);
  EXPECT_EQ(0x22, deny[2].tag) << "from: field 4 (no ports: field 3 absent)";
  std::vector<Field> td = Fields(deny[2].payload);
  ASSERT_EQ(1u, td.size());
  EXPECT_EQ(0x22, td[0].tag) << "trust_domain: field 4";
  EXPECT_EQ("evil.org", td[0].payload);

  std::vector<Field> allow = Fields(pol[2].payload);
  ASSERT_EQ(7u, allow.size());
  EXPECT_EQ("to-backend", allow[0].payload);
  EXPECT_EQ(0x10, allow[1].tag);
  EXPECT_EQ(1u, allow[1].varint) << "ALLOW = 1";
  EXPECT_EQ(0x1a, allow[2].tag) << "ports: field 3, packed (proto3 default)";
  EXPECT_EQ((std::vector<uint64_t>{8080, 9090}), PackedVarints(allow[2].payload));
  const uint8_t matcher_tags[] = {0x0a, 0x12, 0x1a, 0x28};  // id, prefix, namespace, any
  for (int i = 0; i < 4; i++) {
    EXPECT_EQ(0x22, allow[3 + i].tag);
    std::vector<Field> m = Fields(allow[3 + i].payload);
    ASSERT_EQ(1u, m.size()) << "exactly one oneof member on the wire";
    EXPECT_EQ(matcher_tags[i], m[0].tag) << "matcher " << i;
  }
  EXPECT_EQ("\x28\x01", allow[6].payload) << "any: field 5, varint true";

  std::vector<Field> dest = Fields(f[3].payload);
  ASSERT_EQ(2u, dest.size());
  EXPECT_EQ(0x0a, dest[0].tag);
  EXPECT_EQ("10.0.0.7:15006", dest[0].payload);
  EXPECT_EQ(0x12, dest[1].tag);
  EXPECT_EQ("spiffe://example.org/ns/default/sa/backend", dest[1].payload);
}

TEST(MeshProto, SnapshotRoundTrips) {
  Snapshot s;
  std::string wire = Pack(&s.snap);
  Mtlsd__Mesh__V1__MeshSnapshot *got =
      mtlsd__mesh__v1__mesh_snapshot__unpack(nullptr, wire.size(), U8(wire));
  ASSERT_NE(nullptr, got);

  EXPECT_STREQ("42", got->version);
  ASSERT_EQ(1u, got->n_trust_bundles);
  EXPECT_STREQ("example.org", got->trust_bundles[0]->trust_domain);
  ASSERT_EQ(2u, got->trust_bundles[0]->n_roots_pem);
  EXPECT_STREQ("ROOT-1", got->trust_bundles[0]->roots_pem[0]);
  EXPECT_STREQ("ROOT-2", got->trust_bundles[0]->roots_pem[1]);

  ASSERT_NE(nullptr, got->policy);
  EXPECT_EQ(MTLSD__MESH__V1__ACTION__DENY, got->policy->default_action);
  ASSERT_EQ(2u, got->policy->n_rules);

  const Mtlsd__Mesh__V1__Rule *deny = got->policy->rules[0];
  EXPECT_STREQ("no-evil", deny->name);
  EXPECT_EQ(MTLSD__MESH__V1__ACTION__DENY, deny->action);
  EXPECT_EQ(0u, deny->n_ports);
  ASSERT_EQ(1u, deny->n_from);
  EXPECT_EQ(MTLSD__MESH__V1__MATCHER__KIND_TRUST_DOMAIN, deny->from[0]->kind_case);
  EXPECT_STREQ("evil.org", deny->from[0]->trust_domain);

  const Mtlsd__Mesh__V1__Rule *allow = got->policy->rules[1];
  EXPECT_STREQ("to-backend", allow->name);
  EXPECT_EQ(MTLSD__MESH__V1__ACTION__ALLOW, allow->action);
  ASSERT_EQ(2u, allow->n_ports);
  EXPECT_EQ(8080u, allow->ports[0]);
  EXPECT_EQ(9090u, allow->ports[1]);
  ASSERT_EQ(4u, allow->n_from);
  EXPECT_EQ(MTLSD__MESH__V1__MATCHER__KIND_ID, allow->from[0]->kind_case);
  EXPECT_STREQ("spiffe://example.org/ns/default/sa/frontend", allow->from[0]->id);
  EXPECT_EQ(MTLSD__MESH__V1__MATCHER__KIND_PREFIX, allow->from[1]->kind_case);
  EXPECT_STREQ("spiffe://example.org/ns/prod/*", allow->from[1]->prefix);
  EXPECT_EQ(MTLSD__MESH__V1__MATCHER__KIND_NAMESPACE, allow->from[2]->kind_case);
  EXPECT_STREQ("prod", allow->from[2]->namespace_);
  EXPECT_EQ(MTLSD__MESH__V1__MATCHER__KIND_ANY, allow->from[3]->kind_case);
  EXPECT_TRUE(allow->from[3]->any);

  ASSERT_EQ(1u, got->n_destinations);
  EXPECT_STREQ("10.0.0.7:15006", got->destinations[0]->address);
  EXPECT_STREQ("spiffe://example.org/ns/default/sa/backend", got->destinations[0]->spiffe_id);

  mtlsd__mesh__v1__mesh_snapshot__free_unpacked(got, nullptr);
}

TEST(MeshProto, UnpackedPortsAreAcceptedToo) {
  // Decoders must take repeated scalars both packed and one per field.
  const std::string wire(
      "\x0a\x01"
      "r"
      "\x10\x01"
      "\x18\x90\x3f"
      "\x18\xe6\x46",
      11);
  Mtlsd__Mesh__V1__Rule *got = mtlsd__mesh__v1__rule__unpack(nullptr, wire.size(), U8(wire));
  ASSERT_NE(nullptr, got);
  ASSERT_EQ(2u, got->n_ports);
  EXPECT_EQ(8080u, got->ports[0]);
  EXPECT_EQ(9062u, got->ports[1]);
  mtlsd__mesh__v1__rule__free_unpacked(got, nullptr);
}

TEST(MeshProto, OneofPresenceSurvivesDefaultValues) {
  // any = false is still "set": the oneof case goes on the wire even though
  // the value is the proto3 default, so a receiver can tell it from unset.
  Mtlsd__Mesh__V1__Matcher m;
  mtlsd__mesh__v1__matcher__init(&m);
  m.kind_case = MTLSD__MESH__V1__MATCHER__KIND_ANY;
  m.any = 0;
  std::string wire = Pack(&m);
  EXPECT_EQ(Hex(std::string("\x28\x00", 2)), Hex(wire));

  Mtlsd__Mesh__V1__Matcher *got = mtlsd__mesh__v1__matcher__unpack(nullptr, wire.size(), U8(wire));
  ASSERT_NE(nullptr, got);
  EXPECT_EQ(MTLSD__MESH__V1__MATCHER__KIND_ANY, got->kind_case);
  EXPECT_FALSE(got->any);
  mtlsd__mesh__v1__matcher__free_unpacked(got, nullptr);

  Mtlsd__Mesh__V1__Matcher empty;
  mtlsd__mesh__v1__matcher__init(&empty);
  EXPECT_EQ(0u, Pack(&empty).size());
  got = mtlsd__mesh__v1__matcher__unpack(nullptr, 0, nullptr);
  ASSERT_NE(nullptr, got);
  EXPECT_EQ(MTLSD__MESH__V1__MATCHER__KIND__NOT_SET, got->kind_case);
  mtlsd__mesh__v1__matcher__free_unpacked(got, nullptr);
}

TEST(MeshProto, UnknownEnumValueIsKeptNotMapped) {
  // A future Action from a newer server: proto3 keeps the number; the agent
  // must refuse what it does not know rather than read it as ALLOW.
  const std::string wire("\x08\x07", 2);
  Mtlsd__Mesh__V1__Policy *got = mtlsd__mesh__v1__policy__unpack(nullptr, wire.size(), U8(wire));
  ASSERT_NE(nullptr, got);
  EXPECT_EQ(7, static_cast<int>(got->default_action));
  mtlsd__mesh__v1__policy__free_unpacked(got, nullptr);
}

TEST(MeshProto, WatchRequestFields) {
  Mtlsd__Mesh__V1__WatchRequest req;
  mtlsd__mesh__v1__watch_request__init(&req);
  req.node_id = S("node-a");
  req.spiffe_id = S("spiffe://example.org/ns/default/sa/frontend");
  req.last_applied_version = S("41");
  std::string wire = Pack(&req);
  std::vector<Field> f = Fields(wire);
  ASSERT_EQ(3u, f.size());
  EXPECT_EQ(0x0a, f[0].tag);
  EXPECT_EQ("node-a", f[0].payload);
  EXPECT_EQ(0x12, f[1].tag);
  EXPECT_EQ(0x1a, f[2].tag);
  EXPECT_EQ("41", f[2].payload);

  Mtlsd__Mesh__V1__WatchRequest *got =
      mtlsd__mesh__v1__watch_request__unpack(nullptr, wire.size(), U8(wire));
  ASSERT_NE(nullptr, got);
  EXPECT_STREQ("node-a", got->node_id);
  EXPECT_STREQ("spiffe://example.org/ns/default/sa/frontend", got->spiffe_id);
  EXPECT_STREQ("41", got->last_applied_version);
  mtlsd__mesh__v1__watch_request__free_unpacked(got, nullptr);
}

TEST(MeshProto, ServiceDescriptorIsAStreamOfSnapshotsAndWant) {
  const ProtobufCServiceDescriptor &d = mtlsd__mesh__v1__mesh_config__descriptor;
  EXPECT_STREQ("mtlsd.mesh.v1.MeshConfig", d.name);
  ASSERT_EQ(2u, d.n_methods);
  EXPECT_STREQ("Watch", d.methods[0].name);
  EXPECT_EQ(&mtlsd__mesh__v1__watch_request__descriptor, d.methods[0].input);
  EXPECT_EQ(&mtlsd__mesh__v1__mesh_snapshot__descriptor, d.methods[0].output);
  EXPECT_STREQ("Want", d.methods[1].name);
  EXPECT_EQ(&mtlsd__mesh__v1__want_request__descriptor, d.methods[1].input);
  EXPECT_EQ(&mtlsd__mesh__v1__want_response__descriptor, d.methods[1].output);
}

}  // namespace
