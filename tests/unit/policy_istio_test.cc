// Specification of agent/policy's Istio-form rules (agent/policy_match),
// agent/policy_proto (mesh.proto Policy -> mt_policy) and agent/peer_auth.
// The conformance table against Istio's documented semantics, through the
// control plane's compiler, is tests/controlplane/istio_conformance_test.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <string.h>

#include <string>
#include <vector>

#include "agent/cidr.h"
#include "agent/peer_auth.h"
#include "agent/policy.h"
#include "agent/policy_proto.h"

namespace {

const char kFrontend[] = "spiffe://cluster.local/ns/shop/sa/frontend";
const char kBatch[] = "spiffe://cluster.local/ns/jobs/sa/batch";

struct Addr {
  sockaddr_storage ss;
  explicit Addr(const char *ip) {
    memset(&ss, 0, sizeof(ss));
    auto *in = reinterpret_cast<sockaddr_in *>(&ss);
    auto *in6 = reinterpret_cast<sockaddr_in6 *>(&ss);
    if (inet_pton(AF_INET, ip, &in->sin_addr) == 1) {
      in->sin_family = AF_INET;
    } else {
      EXPECT_EQ(1, inet_pton(AF_INET6, ip, &in6->sin6_addr)) << ip;
      in6->sin6_family = AF_INET6;
    }
  }
  const sockaddr *sa() const { return reinterpret_cast<const sockaddr *>(&ss); }
};

typedef std::vector<const char *> Strs;

mt_source_spec Principals(const Strs &values) {
  mt_source_spec s;
  memset(&s, 0, sizeof(s));
  s.principals = values.data();
  s.num_principals = values.size();
  return s;
}

class IstioRuleTest : public ::testing::Test {
 protected:
  void SetUp() override { policy_ = mt_policy_new(MT_ACTION_ALLOW); }
  void TearDown() override { mt_policy_free(policy_); }

  // One ALLOW-or-DENY rule with one source and/or one operation.
  bool Add(const char *name, mt_action action, const mt_source_spec *src,
           const mt_operation_spec *op, const mt_condition_spec *conds = nullptr,
           size_t num_conds = 0, int never = 0) {
    mt_istio_rule_spec spec = {};
    spec.name = name;
    spec.action = action;
    spec.sources = src;
    spec.num_sources = src != nullptr;
    spec.operations = op;
    spec.num_operations = op != nullptr;
    spec.conditions = conds;
    spec.num_conditions = num_conds;
    spec.never_matches = never;
    err_[0] = '\0';
    return mt_policy_add_istio_rule(policy_, &spec, err_, sizeof(err_)) == 1;
  }

  mt_decision Decide(const char *peer, const char *ip, uint16_t port, const char *dest = nullptr) {
    Addr a(ip);
    Addr d(dest != nullptr ? dest : "10.0.0.1");
    mt_policy_request req = {peer, a.sa(), dest != nullptr ? d.sa() : nullptr, port};
    return mt_policy_evaluate(policy_, &req);
  }

  mt_policy *policy_ = nullptr;
  char err_[256];
};

TEST_F(IstioRuleTest, PrincipalWildcardsFollowIstio) {
  Strs exact = {"cluster.local/ns/shop/sa/frontend"};
  Strs prefix = {"cluster.local/ns/jobs/*"};
  Strs suffix = {"*/sa/nobody"};
  mt_source_spec s1 = Principals(exact);
  mt_source_spec s2 = Principals(prefix);
  mt_source_spec s3 = Principals(suffix);
  ASSERT_TRUE(Add("ns/exact[0]", MT_ACTION_ALLOW, &s1, nullptr)) << err_;
  ASSERT_TRUE(Add("ns/prefix[0]", MT_ACTION_ALLOW, &s2, nullptr)) << err_;
  ASSERT_TRUE(Add("ns/suffix[0]", MT_ACTION_DENY, &s3, nullptr)) << err_;
  ASSERT_TRUE(mt_policy_add_allow_policy(policy_, "ns/exact"));
  mt_policy *p = policy_;
  (void)p;
  EXPECT_STREQ("ns/exact[0]", Decide(kFrontend, "10.1.0.1", 80).rule);
  EXPECT_STREQ("ns/prefix[0]", Decide(kBatch, "10.1.0.1", 80).rule);
  mt_decision d = Decide("spiffe://cluster.local/ns/x/sa/nobody", "10.1.0.1", 80);
  EXPECT_EQ(MT_ACTION_DENY, d.action);
  EXPECT_STREQ("ns/suffix[0]", d.rule);
}

TEST_F(IstioRuleTest, AllowPoliciesMakeTheDefaultNameThem) {
  mt_policy_free(policy_);
  policy_ = mt_policy_new(MT_ACTION_DENY);
  ASSERT_TRUE(mt_policy_add_allow_policy(policy_, "shop/empty"));
  mt_decision d = Decide(kFrontend, "10.1.0.1", 80);
  EXPECT_EQ(MT_ACTION_DENY, d.action);
  EXPECT_STREQ(MT_POLICY_RULE_NO_ALLOW_MATCH, d.rule);
  EXPECT_EQ(1u, mt_policy_num_allow_policies(policy_));
  EXPECT_STREQ("shop/empty", mt_policy_allow_policy(policy_, 0));
}

TEST_F(IstioRuleTest, UnauthenticatedPeerHasNoPrincipalNorNamespace) {
  Strs any = {"*"};
  mt_source_spec deny_plain = Principals(Strs());
  deny_plain.not_principals = any.data();
  deny_plain.num_not_principals = any.size();
  ASSERT_TRUE(Add("istio-system/require-mtls[0]", MT_ACTION_DENY, &deny_plain, nullptr)) << err_;
  mt_decision d = Decide(nullptr, "10.1.0.1", 80);
  EXPECT_EQ(MT_ACTION_DENY, d.action);
  EXPECT_STREQ("istio-system/require-mtls[0]", d.rule);
  EXPECT_EQ(MT_ACTION_ALLOW, Decide(kFrontend, "10.1.0.1", 80).action);
}

TEST_F(IstioRuleTest, NamespacesComeFromTheIdPath) {
  Strs ns = {"shop"};
  mt_source_spec s = Principals(Strs());
  s.not_namespaces = ns.data();
  s.num_not_namespaces = ns.size();
  ASSERT_TRUE(Add("shop/others[0]", MT_ACTION_DENY, &s, nullptr)) << err_;
  EXPECT_EQ(MT_ACTION_ALLOW, Decide(kFrontend, "10.1.0.1", 80).action);
  EXPECT_EQ(MT_ACTION_DENY, Decide(kBatch, "10.1.0.1", 80).action);
  // An ID without a /ns/ segment has no namespace: notNamespaces holds.
  EXPECT_EQ(MT_ACTION_DENY, Decide("spiffe://cluster.local/batch", "10.1.0.1", 80).action);
}

TEST_F(IstioRuleTest, IpBlocksMatchThePeerAddressV4AndV6) {
  Strs blocks = {"10.1.0.0/16", "fd00::/8", "192.0.2.7"};
  mt_source_spec s = Principals(Strs());
  s.ip_blocks = blocks.data();
  s.num_ip_blocks = blocks.size();
  ASSERT_TRUE(Add("shop/lan[0]", MT_ACTION_DENY, &s, nullptr)) << err_;
  EXPECT_EQ(MT_ACTION_DENY, Decide(kFrontend, "10.1.200.3", 80).action);
  EXPECT_EQ(MT_ACTION_DENY, Decide(kFrontend, "fd00::1", 80).action);
  EXPECT_EQ(MT_ACTION_DENY, Decide(kFrontend, "192.0.2.7", 80).action);
  EXPECT_EQ(MT_ACTION_DENY, Decide(kFrontend, "::ffff:10.1.0.9", 80).action);  // dual stack
  EXPECT_EQ(MT_ACTION_ALLOW, Decide(kFrontend, "192.0.2.8", 80).action);
  EXPECT_EQ(MT_ACTION_ALLOW, Decide(kFrontend, "10.2.0.1", 80).action);
  EXPECT_EQ(MT_ACTION_ALLOW, Decide(kFrontend, "fe80::1", 80).action);
  // Plaintext peers have an address: ipBlocks apply to them too.
  EXPECT_EQ(MT_ACTION_DENY, Decide(nullptr, "10.1.0.1", 80).action);
}

TEST_F(IstioRuleTest, UnknownPeerAddressMatchesNoBlockAndEveryNotBlock) {
  Strs blocks = {"0.0.0.0/0"};
  mt_source_spec s = Principals(Strs());
  s.not_ip_blocks = blocks.data();
  s.num_not_ip_blocks = blocks.size();
  ASSERT_TRUE(Add("x/y[0]", MT_ACTION_DENY, &s, nullptr)) << err_;
  mt_policy_request req = {kFrontend, nullptr, nullptr, 80};
  EXPECT_EQ(MT_ACTION_DENY, mt_policy_evaluate(policy_, &req).action);
}

TEST_F(IstioRuleTest, PortsAndNotPorts) {
  std::vector<uint16_t> ports = {8080, 9090};
  std::vector<uint16_t> not_ports = {9090};
  mt_operation_spec op = {ports.data(), ports.size(), not_ports.data(), not_ports.size()};
  ASSERT_TRUE(Add("x/ports[0]", MT_ACTION_DENY, nullptr, &op)) << err_;
  EXPECT_EQ(MT_ACTION_DENY, Decide(kFrontend, "10.0.0.2", 8080).action);
  EXPECT_EQ(MT_ACTION_ALLOW, Decide(kFrontend, "10.0.0.2", 9090).action);
  EXPECT_EQ(MT_ACTION_ALLOW, Decide(kFrontend, "10.0.0.2", 80).action);
}

TEST_F(IstioRuleTest, ConditionsAllMustHold) {
  Strs ips = {"10.0.0.0/8"};
  Strs dports = {"8080"};
  Strs dest = {"10.9.9.9"};
  mt_condition_spec conds[3] = {};
  conds[0] = {MT_CONDITION_SOURCE_IP, ips.data(), ips.size(), nullptr, 0};
  conds[1] = {MT_CONDITION_DESTINATION_PORT, nullptr, 0, dports.data(), dports.size()};
  conds[2] = {MT_CONDITION_DESTINATION_IP, dest.data(), dest.size(), nullptr, 0};
  ASSERT_TRUE(Add("x/when[0]", MT_ACTION_DENY, nullptr, nullptr, conds, 3)) << err_;
  EXPECT_EQ(MT_ACTION_DENY, Decide(kFrontend, "10.1.1.1", 80, "10.9.9.9").action);
  EXPECT_EQ(MT_ACTION_ALLOW, Decide(kFrontend, "10.1.1.1", 8080, "10.9.9.9").action);
  EXPECT_EQ(MT_ACTION_ALLOW, Decide(kFrontend, "11.1.1.1", 80, "10.9.9.9").action);
  EXPECT_EQ(MT_ACTION_ALLOW, Decide(kFrontend, "10.1.1.1", 80, "10.9.9.8").action);
}

TEST_F(IstioRuleTest, NeverMatchingRuleGrantsNothing) {
  mt_policy_free(policy_);
  policy_ = mt_policy_new(MT_ACTION_DENY);
  ASSERT_TRUE(mt_policy_add_allow_policy(policy_, "shop/get-only"));
  ASSERT_TRUE(Add("shop/get-only[0]", MT_ACTION_ALLOW, nullptr, nullptr, nullptr, 0, 1)) << err_;
  mt_decision d = Decide(kFrontend, "10.0.0.2", 80);
  EXPECT_EQ(MT_ACTION_DENY, d.action);
  EXPECT_STREQ(MT_POLICY_RULE_NO_ALLOW_MATCH, d.rule);
}

// A spec refused midway (a bad first clause of several) frees the clauses
// it had not built yet: run under ASan, LeakSanitizer checks that (found
// by tests/fuzz/istio_policy_fuzz.c).
TEST_F(IstioRuleTest, ARefusalMidwayLeavesNothingAllocated) {
  Strs bad_cidr = {"10.0.0.1/8"};
  Strs shop = {"shop"};
  mt_source_spec sources[3] = {Principals(Strs()), Principals(shop), Principals(shop)};
  sources[0].ip_blocks = bad_cidr.data();
  sources[0].num_ip_blocks = 1;
  mt_istio_rule_spec spec = {};
  spec.name = "x/sources[0]";
  spec.action = MT_ACTION_DENY;
  spec.sources = sources;
  spec.num_sources = 3;
  EXPECT_EQ(0, mt_policy_add_istio_rule(policy_, &spec, err_, sizeof(err_)));
  EXPECT_NE(nullptr, strstr(err_, "from[0].source.ipBlocks[0]")) << err_;

  mt_condition_spec conds[2] = {{"request.headers[x]", shop.data(), 1, nullptr, 0},
                                {MT_CONDITION_SOURCE_NAMESPACE, shop.data(), 1, nullptr, 0}};
  spec = {};
  spec.name = "x/conditions[0]";
  spec.action = MT_ACTION_ALLOW;
  spec.conditions = conds;
  spec.num_conditions = 2;
  EXPECT_EQ(0, mt_policy_add_istio_rule(policy_, &spec, err_, sizeof(err_)));
  EXPECT_NE(nullptr, strstr(err_, "when[0]")) << err_;
  EXPECT_EQ(0u, mt_policy_rule_count(policy_));
}

TEST_F(IstioRuleTest, BadSpecsAreRefusedWithTheClauseNamed) {
  Strs scheme = {"spiffe://cluster.local/ns/a/sa/b"};
  mt_source_spec s = Principals(scheme);
  EXPECT_FALSE(Add("x/a[0]", MT_ACTION_ALLOW, &s, nullptr));
  EXPECT_NE(nullptr, strstr(err_, "from[0].source.principals[0]")) << err_;
  Strs bad_cidr = {"10.0.0.1/8"};
  mt_source_spec c = Principals(Strs());
  c.ip_blocks = bad_cidr.data();
  c.num_ip_blocks = 1;
  EXPECT_FALSE(Add("x/b[0]", MT_ACTION_ALLOW, &c, nullptr));
  EXPECT_NE(nullptr, strstr(err_, "ipBlocks[0]")) << err_;
  Strs empty = {""};
  mt_source_spec e = Principals(empty);
  EXPECT_FALSE(Add("x/c[0]", MT_ACTION_ALLOW, &e, nullptr));
  std::vector<uint16_t> zero = {0};
  mt_operation_spec op = {zero.data(), 1, nullptr, 0};
  EXPECT_FALSE(Add("x/d[0]", MT_ACTION_ALLOW, nullptr, &op));
  EXPECT_NE(nullptr, strstr(err_, "to[0].operation.ports[0]")) << err_;
  mt_condition_spec unknown = {"request.headers[x]", scheme.data(), 1, nullptr, 0};
  EXPECT_FALSE(Add("x/e[0]", MT_ACTION_ALLOW, nullptr, nullptr, &unknown, 1));
  EXPECT_NE(nullptr, strstr(err_, "cannot be checked at L4")) << err_;
  mt_condition_spec novalues = {MT_CONDITION_SOURCE_IP, nullptr, 0, nullptr, 0};
  EXPECT_FALSE(Add("x/f[0]", MT_ACTION_ALLOW, nullptr, nullptr, &novalues, 1));
  EXPECT_TRUE(Add("x/g[0]", MT_ACTION_ALLOW, nullptr, nullptr));
  EXPECT_FALSE(Add("x/g[0]", MT_ACTION_ALLOW, nullptr, nullptr));
  EXPECT_NE(nullptr, strstr(err_, "duplicate")) << err_;
  EXPECT_EQ(1u, mt_policy_rule_count(policy_));
}

TEST_F(IstioRuleTest, TraceShowsEveryClauseAndField) {
  Strs principals = {"cluster.local/ns/shop/*"};
  Strs blocks = {"10.0.0.0/8"};
  mt_source_spec s = Principals(principals);
  s.not_ip_blocks = blocks.data();
  s.num_not_ip_blocks = 1;
  std::vector<uint16_t> ports = {8080};
  mt_operation_spec op = {ports.data(), 1, nullptr, 0};
  ASSERT_TRUE(Add("shop/a[0]", MT_ACTION_ALLOW, &s, &op)) << err_;
  Addr peer("10.1.1.1");
  mt_policy_request req = {kFrontend, peer.sa(), nullptr, 8080};
  mt_policy_trace t;
  ASSERT_TRUE(mt_policy_trace_request(&t, policy_, &req));
  ASSERT_EQ(1u, t.num_rules);
  const mt_rule_trace &r = t.rules[0];
  EXPECT_TRUE(r.istio);
  EXPECT_FALSE(r.matches_peer);  // notIpBlocks excludes 10/8
  ASSERT_EQ(2u, r.num_clauses);
  EXPECT_STREQ("from", r.clauses[0].kind);
  ASSERT_EQ(2u, r.clauses[0].num_fields);
  EXPECT_STREQ("principals", r.clauses[0].fields[0].field);
  EXPECT_TRUE(r.clauses[0].fields[0].matches);
  EXPECT_STREQ("notIpBlocks", r.clauses[0].fields[1].field);
  EXPECT_FALSE(r.clauses[0].fields[1].matches);
  EXPECT_STREQ("to", r.clauses[1].kind);
  EXPECT_STREQ("8080", r.clauses[1].fields[0].values[0]);
  EXPECT_TRUE(r.clauses[1].matches);
  mt_policy_trace_dispose(&t);
}

TEST(CidrTest, ParsesAndContains) {
  mt_cidr c;
  char why[128];
  ASSERT_TRUE(mt_cidr_parse("fd00:1::/32", &c, why, sizeof(why))) << why;
  Addr in("fd00:1:ffff::1"), out("fd00:2::1"), v4("10.0.0.1");
  EXPECT_TRUE(mt_cidr_contains(&c, in.sa()));
  EXPECT_FALSE(mt_cidr_contains(&c, out.sa()));
  EXPECT_FALSE(mt_cidr_contains(&c, v4.sa()));
  EXPECT_FALSE(mt_cidr_contains(&c, nullptr));
  ASSERT_TRUE(mt_cidr_parse("10.0.0.0/9", &c, why, sizeof(why)));
  Addr a("10.127.0.1"), b("10.128.0.1");
  EXPECT_TRUE(mt_cidr_contains(&c, a.sa()));
  EXPECT_FALSE(mt_cidr_contains(&c, b.sa()));
  EXPECT_FALSE(mt_cidr_parse("10.0.0.0/33", &c, why, sizeof(why)));
  EXPECT_FALSE(mt_cidr_parse("garbage", &c, why, sizeof(why)));
}

TEST(PeerAuthTest, PortsOverrideTheWorkloadMode) {
  mt_peer_auth *pa = mt_peer_auth_new(MT_MTLS_STRICT, "shop/strict");
  ASSERT_NE(nullptr, pa);
  char err[128];
  ASSERT_TRUE(
      mt_peer_auth_add_port(pa, 9000, MT_MTLS_PERMISSIVE, "shop/legacy-port", err, sizeof(err)));
  EXPECT_FALSE(mt_peer_auth_add_port(pa, 9000, MT_MTLS_DISABLE, "x", err, sizeof(err)));
  EXPECT_FALSE(mt_peer_auth_add_port(pa, 0, MT_MTLS_DISABLE, "x", err, sizeof(err)));
  const char *source = nullptr;
  EXPECT_EQ(MT_MTLS_STRICT, mt_peer_auth_mode(pa, 80, &source));
  EXPECT_STREQ("shop/strict", source);
  EXPECT_EQ(MT_MTLS_PERMISSIVE, mt_peer_auth_mode(pa, 9000, &source));
  EXPECT_STREQ("shop/legacy-port", source);
  EXPECT_FALSE(mt_peer_auth_admits_plaintext(pa, 80));
  EXPECT_TRUE(mt_peer_auth_admits_plaintext(pa, 9000));
  mt_peer_auth_free(pa);
}

// mesh.proto -> mt_policy: the Istio form decodes into the same decisions,
// and malformed messages are refused with the rule named.
class PolicyProtoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    mtlsd__mesh__v1__policy__init(&policy_);
    mtlsd__mesh__v1__rule__init(&rule_);
    mtlsd__mesh__v1__source__init(&source_);
    rules_[0] = &rule_;
    sources_[0] = &source_;
    policy_.default_action = MTLSD__MESH__V1__ACTION__DENY;
    policy_.n_rules = 1;
    policy_.rules = rules_;
    rule_.name = const_cast<char *>("shop/allow-frontend[0]");
    rule_.action = MTLSD__MESH__V1__ACTION__ALLOW;
    rule_.istio = 1;
    rule_.n_sources = 1;
    rule_.sources = sources_;
    source_.n_principals = 1;
    source_.principals = principals_;
    allow_[0] = const_cast<char *>("shop/allow-frontend");
    policy_.n_allow_policies = 1;
    policy_.allow_policies = allow_;
  }

  Mtlsd__Mesh__V1__Policy policy_;
  Mtlsd__Mesh__V1__Rule rule_;
  Mtlsd__Mesh__V1__Rule *rules_[1];
  Mtlsd__Mesh__V1__Source source_;
  Mtlsd__Mesh__V1__Source *sources_[1];
  char *principals_[1] = {const_cast<char *>("cluster.local/ns/shop/sa/frontend")};
  char *allow_[1];
  char err_[256] = "";
};

TEST_F(PolicyProtoTest, IstioRuleDecodesAndDecides) {
  mt_policy *p = mt_policy_from_proto(&policy_, err_, sizeof(err_));
  ASSERT_NE(nullptr, p) << err_;
  EXPECT_STREQ("shop/allow-frontend[0]", mt_policy_decide(p, kFrontend, 80).rule);
  mt_decision d = mt_policy_decide(p, kBatch, 80);
  EXPECT_EQ(MT_ACTION_DENY, d.action);
  EXPECT_STREQ(MT_POLICY_RULE_NO_ALLOW_MATCH, d.rule);
  EXPECT_EQ(MT_ACTION_DENY, mt_policy_decide_unauthenticated(p, 80).action);
  mt_policy_free(p);
}

TEST_F(PolicyProtoTest, ReducedNoteIsKept) {
  rule_.reduced = const_cast<char *>("methods dropped: needs HTTP");
  rule_.never_matches = 1;
  mt_policy *p = mt_policy_from_proto(&policy_, err_, sizeof(err_));
  ASSERT_NE(nullptr, p) << err_;
  const char *name, *note;
  ASSERT_TRUE(mt_policy_rule_note(p, 0, &name, &note));
  EXPECT_STREQ("methods dropped: needs HTTP", note);
  EXPECT_EQ(MT_ACTION_DENY, mt_policy_decide(p, kFrontend, 80).action);
  mt_policy_free(p);
}

TEST_F(PolicyProtoTest, MixedFormsAndBadValuesAreRefused) {
  uint32_t port = 80;
  rule_.n_ports = 1;
  rule_.ports = &port;
  EXPECT_EQ(nullptr, mt_policy_from_proto(&policy_, err_, sizeof(err_)));
  EXPECT_NE(nullptr, strstr(err_, "native ports/from")) << err_;
  rule_.n_ports = 0;
  rule_.istio = 0;
  EXPECT_EQ(nullptr, mt_policy_from_proto(&policy_, err_, sizeof(err_)));
  EXPECT_NE(nullptr, strstr(err_, "without istio = true")) << err_;
  rule_.istio = 1;
  principals_[0] = const_cast<char *>("spiffe://cluster.local/ns/shop/sa/frontend");
  EXPECT_EQ(nullptr, mt_policy_from_proto(&policy_, err_, sizeof(err_)));
  EXPECT_NE(nullptr, strstr(err_, "shop/allow-frontend[0]")) << err_;
}

}  // namespace
