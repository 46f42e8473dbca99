// istio_policy: Istio's AuthorizationPolicy and PeerAuthentication objects
// held from watch events and compiled per workload (controlplane/
// istio_policy.h): decoding and refusals, scope, rule naming and order,
// the L4 reduction, PeerAuthentication resolution, the object lifecycle.
// What the compiled rules decide is the conformance table's job
// (istio_conformance_test.cc).
#include "controlplane/istio_policy.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/controlplane/istio_fixture.h"

using mt_test::AuthorizationPolicy;
using mt_test::IstioObject;
using mt_test::PeerAuthentication;
using mt_test::Workload;
using mt_test::WorkloadView;

namespace {

const Workload kBackend = {"shop", {{"app", "backend"}, {"version", "v1"}}, {"backend"}};
const Workload kFrontend = {"shop", {{"app", "frontend"}}, {"frontend"}};
const Workload kElsewhere = {"web", {{"app", "backend"}}, {"backend"}};

constexpr auto STRICT = MTLSD__MESH__V1__MTLS_MODE__STRICT;
constexpr auto PERMISSIVE = MTLSD__MESH__V1__MTLS_MODE__PERMISSIVE;
constexpr auto DISABLE = MTLSD__MESH__V1__MTLS_MODE__DISABLE;
constexpr auto ALLOW = MTLSD__MESH__V1__ACTION__ALLOW;
constexpr auto DENY = MTLSD__MESH__V1__ACTION__DENY;

const char kAllowFrontendSpec[] = R"({
  "action": "ALLOW",
  "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}]}]
})";

struct Seen {
  mt_istio_kind kind;
  std::string name;
  mt_istio_status status;
  std::string detail;
};

class IstioPolicy : public ::testing::Test {
 protected:
  void SetUp() override { Make(nullptr); }
  void TearDown() override {
    mt_istio_compiled_free(compiled_);
    mt_istio_policies_free(policies_);
  }

  void Make(const mt_istio_options *options) {
    mt_istio_policies_free(policies_);
    policies_ = mt_istio_policies_new(options);
    ASSERT_NE(policies_, nullptr);
  }

  // Applies an object the test expects to be held as written (or reduced).
  void Upsert(const IstioObject &object) {
    std::string err;
    ASSERT_EQ(mt_test::ApplyObject(policies_, object, MT_CLUSTER_UPSERT, &err), 1) << err;
  }
  void Remove(const IstioObject &object) {
    std::string err;
    ASSERT_EQ(mt_test::ApplyObject(policies_, object, MT_CLUSTER_REMOVE, &err), 1) << err;
  }
  // Applies an object the test expects to be refused; returns the message.
  std::string Refused(const IstioObject &object) {
    std::string err;
    EXPECT_EQ(mt_test::ApplyObject(policies_, object, MT_CLUSTER_UPSERT, &err), 0) << object.json;
    return err;
  }

  const Mtlsd__Mesh__V1__Policy *Compile(const Workload &w) {
    mt_istio_compiled_free(compiled_);
    WorkloadView view(w);
    compiled_ = mt_istio_compile(policies_, view.get());
    EXPECT_NE(compiled_, nullptr);
    return mt_istio_compiled_policy(compiled_);
  }
  const Mtlsd__Mesh__V1__PeerAuthentication *Peer(const Workload &w) {
    Compile(w);
    return mt_istio_compiled_peer_authentication(compiled_);
  }

  std::vector<std::string> RuleNames(const Workload &w) {
    const Mtlsd__Mesh__V1__Policy *p = Compile(w);
    std::vector<std::string> names;
    for (size_t i = 0; i < p->n_rules; i++) names.push_back(p->rules[i]->name);
    return names;
  }

  std::vector<Seen> Objects() {
    std::vector<Seen> seen;
    mt_istio_policies_foreach(
        policies_,
        [](void *ctx, mt_istio_kind kind, const char *ns, const char *name, mt_istio_status status,
           const char *detail) {
          static_cast<std::vector<Seen> *>(ctx)->push_back(
              {kind, std::string(ns) + "/" + name, status, detail});
        },
        &seen);
    return seen;
  }

  mt_istio_policies *policies_ = nullptr;
  mt_istio_compiled *compiled_ = nullptr;
};

// ---- decoding ----

TEST_F(IstioPolicy, NoObjectsAllowsEverythingAndIsPermissive) {
  const Mtlsd__Mesh__V1__Policy *p = Compile(kBackend);
  EXPECT_EQ(p->default_action, ALLOW);
  EXPECT_EQ(p->n_rules, 0u);
  EXPECT_EQ(p->n_allow_policies, 0u);
  const Mtlsd__Mesh__V1__PeerAuthentication *pa = mt_istio_compiled_peer_authentication(compiled_);
  EXPECT_EQ(pa->mode, PERMISSIVE);
  EXPECT_STREQ(pa->source, "default");
  EXPECT_EQ(pa->n_ports, 0u);
}

TEST_F(IstioPolicy, AllowPolicyCompilesToIstioFormRule) {
  Upsert(AuthorizationPolicy("shop", "allow-frontend", kAllowFrontendSpec));
  const Mtlsd__Mesh__V1__Policy *p = Compile(kBackend);
  EXPECT_EQ(p->default_action, DENY);
  ASSERT_EQ(p->n_allow_policies, 1u);
  EXPECT_STREQ(p->allow_policies[0], "shop/allow-frontend");
  ASSERT_EQ(p->n_rules, 1u);
  const Mtlsd__Mesh__V1__Rule *r = p->rules[0];
  EXPECT_STREQ(r->name, "shop/allow-frontend[0]");
  EXPECT_EQ(r->action, ALLOW);
  EXPECT_TRUE(r->istio);
  EXPECT_FALSE(r->never_matches);
  EXPECT_STREQ(r->reduced, "");
  EXPECT_EQ(r->n_ports, 0u);
  EXPECT_EQ(r->n_from, 0u);
  ASSERT_EQ(r->n_sources, 1u);
  ASSERT_EQ(r->sources[0]->n_principals, 1u);
  EXPECT_STREQ(r->sources[0]->principals[0], "cluster.local/ns/shop/sa/frontend");
  EXPECT_EQ(mt_istio_policies_count(policies_, MT_ISTIO_AUTHORIZATION_POLICY), 1u);
}

TEST_F(IstioPolicy, EveryL4FieldReachesTheRule) {
  Upsert(AuthorizationPolicy("shop", "all-fields", R"({
    "action": "DENY",
    "rules": [{
      "from": [{"source": {"principals": ["a/*"], "notPrincipals": ["*b"],
                           "namespaces": ["x"], "notNamespaces": ["y"],
                           "ipBlocks": ["10.1.2.3/16", "192.0.2.1"],
                           "notIpBlocks": ["2001:DB8::1/32"]}}],
      "to": [{"operation": {"ports": ["80", "8080"], "notPorts": ["9090"]}}],
      "when": [{"key": "source.ip", "values": ["10.9.9.9/8"]},
               {"key": "destination.port", "notValues": ["22"]},
               {"key": "source.principal", "values": ["*"]},
               {"key": "source.namespace", "values": ["shop"]},
               {"key": "destination.ip", "values": ["fd00::1"]}]
    }]
  })"));
  const Mtlsd__Mesh__V1__Rule *r = Compile(kBackend)->rules[0];
  const Mtlsd__Mesh__V1__Source *s = r->sources[0];
  EXPECT_STREQ(s->principals[0], "a/*");
  EXPECT_STREQ(s->not_principals[0], "*b");
  EXPECT_STREQ(s->namespaces[0], "x");
  EXPECT_STREQ(s->not_namespaces[0], "y");
  // Host bits cleared, as Istio reads a CIDR; canonical IPv6 text.
  EXPECT_STREQ(s->ip_blocks[0], "10.1.0.0/16");
  EXPECT_STREQ(s->ip_blocks[1], "192.0.2.1");
  EXPECT_STREQ(s->not_ip_blocks[0], "2001:db8::/32");
  ASSERT_EQ(r->n_operations, 1u);
  ASSERT_EQ(r->operations[0]->n_ports, 2u);
  EXPECT_EQ(r->operations[0]->ports[1], 8080u);
  EXPECT_EQ(r->operations[0]->not_ports[0], 9090u);
  ASSERT_EQ(r->n_conditions, 5u);
  EXPECT_STREQ(r->conditions[0]->key, "source.ip");
  EXPECT_STREQ(r->conditions[0]->values[0], "10.0.0.0/8");
  EXPECT_STREQ(r->conditions[1]->not_values[0], "22");
  EXPECT_STREQ(r->conditions[4]->values[0], "fd00::1");
}

TEST_F(IstioPolicy, ServiceAccountsBecomePrincipalsInAnyTrustDomain) {
  Upsert(AuthorizationPolicy("shop", "by-sa", R"({
    "rules": [{"from": [{"source": {"serviceAccounts": ["frontend", "web/gateway"],
                                    "notServiceAccounts": ["shop/batch"]}}]}]
  })"));
  const Mtlsd__Mesh__V1__Source *s = Compile(kBackend)->rules[0]->sources[0];
  ASSERT_EQ(s->n_principals, 2u);
  EXPECT_STREQ(s->principals[0], "*/ns/shop/sa/frontend");
  EXPECT_STREQ(s->principals[1], "*/ns/web/sa/gateway");
  ASSERT_EQ(s->n_not_principals, 1u);
  EXPECT_STREQ(s->not_principals[0], "*/ns/shop/sa/batch");
}

TEST_F(IstioPolicy, UnknownFieldsAreIgnored) {
  Upsert(AuthorizationPolicy("shop", "newer-api", R"({
    "action": "ALLOW", "futureKnob": {"x": 1},
    "rules": [{"futureRuleField": true,
               "from": [{"source": {"principals": ["*"], "futureSourceField": ["v"]}}]}]
  })"));
  EXPECT_EQ(Compile(kBackend)->n_rules, 1u);
  EXPECT_EQ(Objects()[0].status, MT_ISTIO_APPLIED);
}

TEST_F(IstioPolicy, V1beta1IsTheSameSchema) {
  Upsert(AuthorizationPolicy("shop", "old-api", kAllowFrontendSpec, "v1beta1"));
  Upsert(PeerAuthentication("shop", "strict", R"({"mtls": {"mode": "STRICT"}})", "v1beta1"));
  EXPECT_EQ(RuleNames(kBackend), std::vector<std::string>{"shop/old-api[0]"});
  EXPECT_EQ(Peer(kBackend)->mode, STRICT);
}

TEST_F(IstioPolicy, AbsentSpecIsAnAllowPolicyWithoutRules) {
  Upsert({MT_ISTIO_AUTHORIZATION_POLICY, R"({
    "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
    "metadata": {"namespace": "shop", "name": "no-spec", "uid": "0b1c", "resourceVersion": "7",
                 "creationTimestamp": "2024-05-01T10:00:00Z"}})"});
  const Mtlsd__Mesh__V1__Policy *p = Compile(kBackend);
  EXPECT_EQ(p->default_action, DENY);
  EXPECT_EQ(p->n_rules, 0u);
  ASSERT_EQ(p->n_allow_policies, 1u);
}

// Each refused object: the message names the object and the field, the
// object is held as refused and fails closed as one DENY-everything rule.
struct Refusal {
  const char *name;
  const char *spec;
  const char *field; /* expected in the message */
};

class IstioPolicyRefusal : public IstioPolicy, public ::testing::WithParamInterface<Refusal> {};

TEST_P(IstioPolicyRefusal, FailsClosedAsOneDenyEverythingRule) {
  const Refusal &c = GetParam();
  std::string err = Refused(AuthorizationPolicy("shop", "broken", c.spec));
  EXPECT_NE(err.find("object refused: shop/broken: "), std::string::npos) << err;
  EXPECT_NE(err.find(c.field), std::string::npos) << err;
  const Mtlsd__Mesh__V1__Policy *p = Compile(kBackend);
  ASSERT_EQ(p->n_rules, 1u);
  const Mtlsd__Mesh__V1__Rule *r = p->rules[0];
  EXPECT_STREQ(r->name, "shop/broken");
  EXPECT_EQ(r->action, DENY);
  EXPECT_TRUE(r->istio);
  EXPECT_EQ(r->n_sources + r->n_operations + r->n_conditions, 0u);
  EXPECT_NE(std::string(r->reduced).find(c.field), std::string::npos) << r->reduced;
  EXPECT_EQ(p->default_action, ALLOW);
  std::vector<Seen> seen = Objects();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].status, MT_ISTIO_REFUSED);
  EXPECT_NE(seen[0].detail.find(c.field), std::string::npos) << seen[0].detail;
}

const Refusal kRefusals[] = {
    {"CustomAction", R"({"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [{}]})",
     "spec.action: CUSTOM"},
    {"UnknownAction", R"({"action": "REJECT"})", "spec.action"},
    {"ActionNotAString", R"({"action": 1})", "spec.action"},
    {"SpecNotAnObject", R"([])", "spec"},
    {"RulesNotAList", R"({"rules": {}})", "spec.rules"},
    {"RuleNotAnObject", R"({"rules": ["x"]})", "spec.rules[0]"},
    {"PrincipalsNotAList", R"({"rules": [{"from": [{"source": {"principals": "a"}}]}]})",
     "spec.rules[0].from[0].source.principals"},
    {"PrincipalNotAString", R"({"rules": [{"from": [{"source": {"principals": [7]}}]}]})",
     "spec.rules[0].from[0].source.principals[0]"},
    {"PrincipalWithScheme",
     R"({"rules": [{"from": [{"source": {"principals": ["spiffe://cluster.local/ns/a/sa/b"]}}]}]})",
     "principals[0]: an Istio principal is written without"},
    {"NotPrincipalWithScheme",
     R"({"action": "DENY", "rules": [{"from": [{"source": {"notPrincipals": ["SPIFFE://x/y"]}}]}]})",
     "notPrincipals[0]"},
    {"EmptyValue", R"({"rules": [{"from": [{"source": {"namespaces": [""]}}]}]})",
     "namespaces[0]: empty"},
    {"ControlCharacter", R"({"rules": [{"from": [{"source": {"namespaces": ["a\nb"]}}]}]})",
     "control character"},
    {"IpBlockNotACidr", R"({"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}]}]})",
     "ipBlocks[0]: not an IP address or CIDR"},
    {"IpBlockWord", R"({"rules": [{"from": [{"source": {"ipBlocks": ["localhost"]}}]}]})",
     "ipBlocks[0]"},
    {"NotIpBlockV6TooLong",
     R"({"rules": [{"from": [{"source": {"notIpBlocks": ["fd00::/129"]}}]}]})", "notIpBlocks[0]"},
    {"PortZero", R"({"rules": [{"to": [{"operation": {"ports": ["0"]}}]}]})",
     "spec.rules[0].to[0].operation.ports[0]: not a port in 1..65535"},
    {"PortTooLarge", R"({"rules": [{"to": [{"operation": {"notPorts": ["65536"]}}]}]})",
     "notPorts[0]"},
    {"PortAsNumber", R"({"rules": [{"to": [{"operation": {"ports": [8080]}}]}]})",
     "ports[0]: not a string"},
    {"PortRange", R"({"rules": [{"to": [{"operation": {"ports": ["80-90"]}}]}]})", "ports[0]"},
    {"EmptyFromList", R"({"rules": [{"from": []}]})", "spec.rules[0].from: empty list"},
    {"EmptySource", R"({"rules": [{"from": [{"source": {}}]}]})", "from[0].source: empty"},
    {"MissingSource", R"({"rules": [{"from": [{}]}]})", "from[0].source: missing"},
    {"EmptyOperation", R"({"rules": [{"to": [{"operation": {}}]}]})", "to[0].operation: empty"},
    {"UnknownWhenKey", R"({"rules": [{"when": [{"key": "source.color", "values": ["red"]}]}]})",
     "when[0].key: unknown key"},
    {"WhenWithoutValues", R"({"rules": [{"when": [{"key": "source.ip"}]}]})",
     "when[0]: neither values nor notValues"},
    {"WhenBadIp", R"({"rules": [{"when": [{"key": "destination.ip", "values": ["x"]}]}]})",
     "when[0].values[0]"},
    {"WhenBadPort", R"({"rules": [{"when": [{"key": "destination.port", "values": ["http"]}]}]})",
     "when[0].values[0]"},
    {"ServiceAccountsWithPrincipals",
     R"({"rules": [{"from": [{"source": {"serviceAccounts": ["a"], "principals": ["b"]}}]}]})",
     "serviceAccounts cannot be set with principals"},
    {"BadServiceAccount", R"({"rules": [{"from": [{"source": {"serviceAccounts": ["a/b/c"]}}]}]})",
     "serviceAccounts[0]"},
    {"SelectorWithTargetRefs",
     R"({"selector": {"matchLabels": {"app": "backend"}},
         "targetRefs": [{"kind": "Service", "group": "", "name": "backend"}]})",
     "spec.targetRefs: cannot be set with spec.selector"},
    {"TargetRefAndTargetRefs",
     R"({"targetRef": {"kind": "Service", "name": "a"},
         "targetRefs": [{"kind": "Service", "name": "b"}]})",
     "spec.targetRef"},
    {"TargetRefOtherNamespace",
     R"({"targetRefs": [{"kind": "Service", "name": "a", "namespace": "web"}]})",
     "spec.targetRefs[0].namespace"},
    {"MatchLabelsNotStrings", R"({"selector": {"matchLabels": {"app": 3}}})",
     "spec.selector.matchLabels"},
};

INSTANTIATE_TEST_SUITE_P(Objects, IstioPolicyRefusal, ::testing::ValuesIn(kRefusals),
                         [](const ::testing::TestParamInfo<Refusal> &info) {
                           return std::string(info.param.name);
                         });

TEST_F(IstioPolicy, TooManyRulesAreRefused) {
  std::string spec = "{\"rules\": [";
  for (int i = 0; i < 257; i++) spec += i ? ",{}" : "{}";
  spec += "]}";
  EXPECT_NE(Refused(AuthorizationPolicy("shop", "huge", spec)).find("spec.rules: too many"),
            std::string::npos);
}

TEST_F(IstioPolicy, TooManyValuesAreRefused) {
  std::string list;
  for (int i = 0; i < 1025; i++)
    list += std::string(i ? "," : "") + "\"ns" + std::to_string(i) + "\"";
  std::string spec = "{\"rules\": [{\"from\": [{\"source\": {\"namespaces\": [" + list + "]}}]}]}";
  EXPECT_NE(Refused(AuthorizationPolicy("shop", "huge", spec)).find("too many entries"),
            std::string::npos);
}

TEST_F(IstioPolicy, OverlongValueIsRefused) {
  std::string spec = "{\"rules\": [{\"from\": [{\"source\": {\"principals\": [\"" +
                     std::string(1025, 'a') + "\"]}}]}]}";
  EXPECT_NE(Refused(AuthorizationPolicy("shop", "long", spec)).find("principals[0]: too long"),
            std::string::npos);
}

TEST_F(IstioPolicy, WrongApiVersionOrKindIsRefused) {
  IstioObject v2 = AuthorizationPolicy("shop", "future", kAllowFrontendSpec, "v2");
  EXPECT_NE(Refused(v2).find("apiVersion"), std::string::npos);
  IstioObject wrong_kind = PeerAuthentication("shop", "mixed-up", "{}");
  wrong_kind.kind = MT_ISTIO_AUTHORIZATION_POLICY;
  EXPECT_NE(Refused(wrong_kind).find("kind"), std::string::npos);
}

TEST_F(IstioPolicy, ObjectWithoutANameIsIgnored) {
  IstioObject nameless = {MT_ISTIO_AUTHORIZATION_POLICY,
                          R"({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                              "metadata": {"namespace": "shop"}, "spec": {}})"};
  EXPECT_NE(Refused(nameless).find("object refused: name: missing"), std::string::npos);
  EXPECT_EQ(mt_istio_policies_count(policies_, MT_ISTIO_AUTHORIZATION_POLICY), 0u);
  EXPECT_EQ(Compile(kBackend)->n_rules, 0u);
}

TEST_F(IstioPolicy, AuditIsRefusedWithoutEffect) {
  std::string err = Refused(AuthorizationPolicy(
      "shop", "audit-all",
      R"({"action": "AUDIT", "rules": [{"from": [{"source": {"principals": ["*"]}}]}]})"));
  EXPECT_NE(err.find("AUDIT"), std::string::npos) << err;
  const Mtlsd__Mesh__V1__Policy *p = Compile(kBackend);
  EXPECT_EQ(p->n_rules, 0u);
  EXPECT_EQ(p->default_action, ALLOW);
  ASSERT_EQ(Objects().size(), 1u);
  EXPECT_EQ(Objects()[0].status, MT_ISTIO_REFUSED);
}

TEST_F(IstioPolicy, RefusedPolicyFailsClosedOnlyWhereItsSelectorPoints) {
  Refused(AuthorizationPolicy("shop", "broken", R"({
    "selector": {"matchLabels": {"app": "backend"}},
    "rules": [{"to": [{"operation": {"ports": ["0"]}}]}]})"));
  EXPECT_EQ(RuleNames(kBackend), std::vector<std::string>{"shop/broken"});
  EXPECT_TRUE(RuleNames(kFrontend).empty());
  EXPECT_TRUE(RuleNames(kElsewhere).empty());
}

TEST_F(IstioPolicy, RefusedPolicyWithBadSelectorFailsClosedForItsNamespace) {
  Refused(AuthorizationPolicy("shop", "broken", R"({"selector": {"matchLabels": ["app"]}})"));
  EXPECT_EQ(RuleNames(kBackend), std::vector<std::string>{"shop/broken"});
  EXPECT_EQ(RuleNames(kFrontend), std::vector<std::string>{"shop/broken"});
  EXPECT_TRUE(RuleNames(kElsewhere).empty());
}

TEST_F(IstioPolicy, RefusedPolicyInTheRootNamespaceFailsClosedMeshWide) {
  Refused(AuthorizationPolicy("istio-system", "broken", R"({"action": "CUSTOM"})"));
  EXPECT_EQ(RuleNames(kBackend), std::vector<std::string>{"istio-system/broken"});
  EXPECT_EQ(RuleNames(kElsewhere), std::vector<std::string>{"istio-system/broken"});
}

TEST_F(IstioPolicy, FixingARefusedPolicyReplacesItsDenyEverythingRule) {
  Refused(AuthorizationPolicy("shop", "p", R"({"action": "CUSTOM"})"));
  Upsert(AuthorizationPolicy("shop", "p", kAllowFrontendSpec));
  EXPECT_EQ(RuleNames(kBackend), std::vector<std::string>{"shop/p[0]"});
  EXPECT_EQ(Objects()[0].status, MT_ISTIO_APPLIED);
}

// ---- scope ----

TEST_F(IstioPolicy, NamespacePolicyAppliesToItsNamespaceOnly) {
  Upsert(AuthorizationPolicy("shop", "allow-frontend", kAllowFrontendSpec));
  EXPECT_EQ(RuleNames(kFrontend).size(), 1u);
  EXPECT_TRUE(RuleNames(kElsewhere).empty());
  EXPECT_EQ(Compile(kElsewhere)->default_action, ALLOW);
}

TEST_F(IstioPolicy, RootNamespacePolicyAppliesMeshWide) {
  Upsert(AuthorizationPolicy("istio-system", "mesh", kAllowFrontendSpec));
  EXPECT_EQ(RuleNames(kBackend).size(), 1u);
  EXPECT_EQ(RuleNames(kElsewhere).size(), 1u);
}

TEST_F(IstioPolicy, RootNamespaceIsConfigurable) {
  mt_istio_options options = {"mesh-root", MTLSD__MESH__V1__MTLS_MODE__MTLS_MODE_UNSPECIFIED};
  Make(&options);
  Upsert(AuthorizationPolicy("istio-system", "not-root", kAllowFrontendSpec));
  Upsert(AuthorizationPolicy("mesh-root", "root", kAllowFrontendSpec));
  EXPECT_EQ(RuleNames(kBackend), std::vector<std::string>{"mesh-root/root[0]"});
}

TEST_F(IstioPolicy, SelectorNeedsEveryLabel) {
  Upsert(AuthorizationPolicy("shop", "v1-only", R"({
    "selector": {"matchLabels": {"app": "backend", "version": "v1"}}, "rules": [{}]})"));
  Upsert(AuthorizationPolicy("shop", "v2-only", R"({
    "selector": {"matchLabels": {"app": "backend", "version": "v2"}}, "rules": [{}]})"));
  EXPECT_EQ(RuleNames(kBackend), std::vector<std::string>{"shop/v1-only[0]"});
  EXPECT_TRUE(RuleNames(kFrontend).empty());
}

TEST_F(IstioPolicy, EmptySelectorMeansTheNamespace) {
  Upsert(AuthorizationPolicy("shop", "all", R"({"selector": {"matchLabels": {}}, "rules": [{}]})"));
  EXPECT_EQ(RuleNames(kFrontend).size(), 1u);
}

TEST_F(IstioPolicy, RootNamespaceSelectorAppliesInEveryNamespace) {
  Upsert(AuthorizationPolicy("istio-system", "backends", R"({
    "selector": {"matchLabels": {"app": "backend"}}, "rules": [{}]})"));
  EXPECT_EQ(RuleNames(kBackend).size(), 1u);
  EXPECT_EQ(RuleNames(kElsewhere).size(), 1u);
  EXPECT_TRUE(RuleNames(kFrontend).empty());
}

TEST_F(IstioPolicy, TargetRefsSelectThePodsBehindAService) {
  Upsert(AuthorizationPolicy("shop", "to-backend", R"({
    "targetRefs": [{"group": "", "kind": "Service", "name": "backend"}], "rules": [{}]})"));
  Upsert(AuthorizationPolicy("shop", "to-frontend", R"({
    "targetRef": {"group": "core", "kind": "Service", "name": "frontend"}, "rules": [{}]})"));
  EXPECT_EQ(RuleNames(kBackend), std::vector<std::string>{"shop/to-backend[0]"});
  EXPECT_EQ(RuleNames(kFrontend), std::vector<std::string>{"shop/to-frontend[0]"});
  // A Service of the same name in another namespace is another Service.
  EXPECT_TRUE(RuleNames(kElsewhere).empty());
}

TEST_F(IstioPolicy, TargetRefsToOtherKindsSelectNothing) {
  Upsert(AuthorizationPolicy("shop", "gateway", R"({
    "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "backend"}],
    "rules": [{}]})"));
  Upsert(AuthorizationPolicy("shop", "other-group", R"({
    "targetRefs": [{"group": "networking.istio.io", "kind": "Service", "name": "backend"}]})"));
  const Mtlsd__Mesh__V1__Policy *p = Compile(kBackend);
  EXPECT_EQ(p->n_rules, 0u);
  EXPECT_EQ(p->n_allow_policies, 0u);
  EXPECT_EQ(p->default_action, ALLOW);
}

TEST_F(IstioPolicy, RootNamespaceTargetRefNamesARootNamespaceService) {
  Upsert(AuthorizationPolicy("istio-system", "svc", R"({
    "targetRefs": [{"kind": "Service", "name": "backend"}], "rules": [{}]})"));
  EXPECT_TRUE(RuleNames(kBackend).empty());
}

// ---- rule naming and order ----

TEST_F(IstioPolicy, DenyRulesComeFirstThenAllowRulesEachByNamespaceThenName) {
  const char two_rules[] = R"({"action": "%s", "rules": [{"to": [{"operation": {"ports": ["1"]}}]},
                                                          {"to": [{"operation": {"ports": ["2"]}}]}]})";
  auto spec = [&](const char *action) {
    char buf[512];
    snprintf(buf, sizeof(buf), two_rules, action);
    return std::string(buf);
  };
  Upsert(AuthorizationPolicy("shop", "b-allow", spec("ALLOW")));
  Upsert(AuthorizationPolicy("shop", "a-allow", spec("ALLOW")));
  Upsert(AuthorizationPolicy("shop", "z-deny", spec("DENY")));
  Upsert(AuthorizationPolicy("istio-system", "mesh-allow", spec("ALLOW")));
  Upsert(AuthorizationPolicy("istio-system", "mesh-deny", spec("DENY")));
  Upsert(AuthorizationPolicy("shop", "nothing", R"({"action": "ALLOW"})"));
  Refused(AuthorizationPolicy("shop", "m-custom", R"({"action": "CUSTOM"})"));
  std::vector<std::string> want = {
      "istio-system/mesh-deny[0]",
      "istio-system/mesh-deny[1]",
      "shop/m-custom",
      "shop/z-deny[0]",
      "shop/z-deny[1]",
      "istio-system/mesh-allow[0]",
      "istio-system/mesh-allow[1]",
      "shop/a-allow[0]",
      "shop/a-allow[1]",
      "shop/b-allow[0]",
      "shop/b-allow[1]",
  };
  EXPECT_EQ(RuleNames(kBackend), want);
  const Mtlsd__Mesh__V1__Policy *p = compiled_ ? mt_istio_compiled_policy(compiled_) : nullptr;
  ASSERT_NE(p, nullptr);
  std::vector<std::string> allow(p->allow_policies, p->allow_policies + p->n_allow_policies);
  EXPECT_EQ(allow, (std::vector<std::string>{"istio-system/mesh-allow", "shop/a-allow",
                                             "shop/b-allow", "shop/nothing"}));
  EXPECT_EQ(p->default_action, DENY);
}

TEST_F(IstioPolicy, OnlyDenyPoliciesLeaveTheDefaultAllow) {
  Upsert(AuthorizationPolicy("shop", "deny", R"({"action": "DENY", "rules": [{}]})"));
  const Mtlsd__Mesh__V1__Policy *p = Compile(kBackend);
  EXPECT_EQ(p->default_action, ALLOW);
  EXPECT_EQ(p->n_allow_policies, 0u);
  EXPECT_EQ(p->rules[0]->action, DENY);
}

// ---- L7 fields at L4 ----

TEST_F(IstioPolicy, AllowRuleWithHttpFieldsGrantsNothing) {
  Upsert(AuthorizationPolicy("shop", "get-only", R"({
    "rules": [{"from": [{"source": {"principals": ["*"], "requestPrincipals": ["*"]}}],
               "to": [{"operation": {"methods": ["GET"], "paths": ["/api/*"], "ports": ["8080"]}}],
               "when": [{"key": "request.headers[x-team]", "values": ["a"]},
                        {"key": "source.namespace", "values": ["shop"]}]},
              {"from": [{"source": {"namespaces": ["shop"]}}]}]})"));
  const Mtlsd__Mesh__V1__Policy *p = Compile(kBackend);
  ASSERT_EQ(p->n_rules, 2u);
  const Mtlsd__Mesh__V1__Rule *r = p->rules[0];
  EXPECT_TRUE(r->never_matches);
  EXPECT_STREQ(r->reduced,
               "from[0].source.requestPrincipals, to[0].operation.methods, "
               "to[0].operation.paths, when[0] (request.headers[x-team]) need HTTP, which mtlsd "
               "does not see: this ALLOW rule grants nothing (as ztunnel does)");
  // Its L4 parts are kept, for /policy and explain; the HTTP condition is not.
  EXPECT_EQ(r->sources[0]->n_principals, 1u);
  EXPECT_EQ(r->operations[0]->n_ports, 1u);
  ASSERT_EQ(r->n_conditions, 1u);
  EXPECT_STREQ(r->conditions[0]->key, "source.namespace");
  EXPECT_FALSE(p->rules[1]->never_matches);
  std::vector<Seen> seen = Objects();
  EXPECT_EQ(seen[0].status, MT_ISTIO_REDUCED);
  EXPECT_EQ(seen[0].detail, std::string("rules[0]: ") + r->reduced);
}

TEST_F(IstioPolicy, DenyRuleWithHttpFieldsLosesThem) {
  Upsert(AuthorizationPolicy("shop", "no-admin", R"({
    "action": "DENY",
    "rules": [{"to": [{"operation": {"paths": ["/admin"], "ports": ["8080"]}},
                      {"operation": {"methods": ["DELETE"]}}]},
              {"from": [{"source": {"remoteIpBlocks": ["10.0.0.0/8"]}}],
               "when": [{"key": "request.auth.claims[groups]", "values": ["x"]}]}]})"));
  const Mtlsd__Mesh__V1__Policy *p = Compile(kBackend);
  ASSERT_EQ(p->n_rules, 2u);
  const Mtlsd__Mesh__V1__Rule *paths = p->rules[0];
  EXPECT_FALSE(paths->never_matches);
  EXPECT_STREQ(paths->reduced,
               "to[0].operation.paths, to[1].operation.methods need HTTP, which mtlsd does not "
               "see: left out, so this DENY rule denies every connection the rest of it matches "
               "(as ztunnel does)");
  // The operation with only HTTP fields is kept empty: it matches every port.
  ASSERT_EQ(paths->n_operations, 2u);
  EXPECT_EQ(paths->operations[0]->n_ports, 1u);
  EXPECT_EQ(paths->operations[1]->n_ports + paths->operations[1]->n_not_ports, 0u);
  const Mtlsd__Mesh__V1__Rule *remote = p->rules[1];
  EXPECT_STREQ(remote->reduced,
               "from[0].source.remoteIpBlocks, when[0] (request.auth.claims[groups]) need HTTP, "
               "which mtlsd does not see: left out, so this DENY rule denies every connection "
               "the rest of it matches (as ztunnel does)");
  ASSERT_EQ(remote->n_sources, 1u);
  EXPECT_EQ(remote->n_conditions, 0u);
  EXPECT_NE(Objects()[0].detail.find("rules[1]: from[0].source.remoteIpBlocks, when[0]"),
            std::string::npos);
}

TEST_F(IstioPolicy, SingleHttpFieldReadsInTheSingular) {
  Upsert(AuthorizationPolicy("shop", "hosts", R"({
    "rules": [{"to": [{"operation": {"hosts": ["backend.shop"]}}]}]})"));
  EXPECT_STREQ(Compile(kBackend)->rules[0]->reduced,
               "to[0].operation.hosts needs HTTP, which mtlsd does not see: this ALLOW rule "
               "grants nothing (as ztunnel does)");
}

// ---- PeerAuthentication ----

TEST_F(IstioPolicy, DefaultModeComesFromTheOptions) {
  mt_istio_options options = {nullptr, STRICT};
  Make(&options);
  EXPECT_EQ(Peer(kBackend)->mode, STRICT);
  EXPECT_STREQ(Peer(kBackend)->source, "default");
}

TEST_F(IstioPolicy, MostSpecificPeerAuthenticationWins) {
  Upsert(PeerAuthentication("istio-system", "mesh", R"({"mtls": {"mode": "STRICT"}})"));
  EXPECT_EQ(Peer(kBackend)->mode, STRICT);
  EXPECT_STREQ(Peer(kBackend)->source, "istio-system/mesh");
  Upsert(PeerAuthentication("shop", "ns", R"({"mtls": {"mode": "PERMISSIVE"}})"));
  EXPECT_EQ(Peer(kBackend)->mode, PERMISSIVE);
  EXPECT_STREQ(Peer(kBackend)->source, "shop/ns");
  EXPECT_EQ(Peer(kElsewhere)->mode, STRICT);
  Upsert(PeerAuthentication("shop", "backend", R"({
    "selector": {"matchLabels": {"app": "backend"}}, "mtls": {"mode": "DISABLE"}})"));
  EXPECT_EQ(Peer(kBackend)->mode, DISABLE);
  EXPECT_STREQ(Peer(kBackend)->source, "shop/backend");
  EXPECT_EQ(Peer(kFrontend)->mode, PERMISSIVE);
}

TEST_F(IstioPolicy, UnsetInheritsFromTheNextLevel) {
  Upsert(PeerAuthentication("istio-system", "mesh", R"({"mtls": {"mode": "STRICT"}})"));
  Upsert(PeerAuthentication("shop", "ns", R"({"mtls": {"mode": "UNSET"}})"));
  Upsert(PeerAuthentication("shop", "backend", R"({
    "selector": {"matchLabels": {"app": "backend"}}})"));
  EXPECT_EQ(Peer(kBackend)->mode, STRICT);
  EXPECT_STREQ(Peer(kBackend)->source, "istio-system/mesh");
}

TEST_F(IstioPolicy, PortLevelMtlsOverridesPerPortAndUnsetPortsInherit) {
  Upsert(PeerAuthentication("shop", "ns", R"({"mtls": {"mode": "STRICT"}})"));
  Upsert(PeerAuthentication("shop", "backend", R"({
    "selector": {"matchLabels": {"app": "backend"}},
    "portLevelMtls": {"9090": {"mode": "UNSET"}, "8080": {"mode": "PERMISSIVE"}}})"));
  const Mtlsd__Mesh__V1__PeerAuthentication *pa = Peer(kBackend);
  EXPECT_EQ(pa->mode, STRICT);
  EXPECT_STREQ(pa->source, "shop/ns");
  ASSERT_EQ(pa->n_ports, 2u);
  EXPECT_EQ(pa->ports[0]->port, 8080u);
  EXPECT_EQ(pa->ports[0]->mode, PERMISSIVE);
  EXPECT_STREQ(pa->ports[0]->source, "shop/backend");
  EXPECT_EQ(pa->ports[1]->port, 9090u);
  EXPECT_EQ(pa->ports[1]->mode, STRICT);
  EXPECT_STREQ(pa->ports[1]->source, "shop/ns");
}

TEST_F(IstioPolicy, PortLevelMtlsWithoutSelectorIsIgnored) {
  Upsert(PeerAuthentication("shop", "ns", R"({
    "mtls": {"mode": "STRICT"}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}})"));
  const Mtlsd__Mesh__V1__PeerAuthentication *pa = Peer(kBackend);
  EXPECT_EQ(pa->mode, STRICT);
  EXPECT_EQ(pa->n_ports, 0u);
}

TEST_F(IstioPolicy, OldestPeerAuthenticationOfALevelWinsThenName) {
  Upsert(PeerAuthentication("shop", "a-newer", R"({"mtls": {"mode": "DISABLE"}})", "v1",
                            "2024-06-01T00:00:00Z"));
  Upsert(PeerAuthentication("shop", "z-older", R"({"mtls": {"mode": "STRICT"}})", "v1",
                            "2024-01-01T00:00:00Z"));
  EXPECT_STREQ(Peer(kBackend)->source, "shop/z-older");
  Upsert(PeerAuthentication("shop", "m-same-age", R"({"mtls": {"mode": "PERMISSIVE"}})", "v1",
                            "2024-01-01T00:00:00Z"));
  EXPECT_STREQ(Peer(kBackend)->source, "shop/m-same-age");
  EXPECT_EQ(Peer(kBackend)->mode, PERMISSIVE);
  Upsert(PeerAuthentication("shop", "sel-new", R"({
    "selector": {"matchLabels": {"app": "backend"}}, "mtls": {"mode": "DISABLE"}})",
                            "v1", "2024-09-01T00:00:00Z"));
  Upsert(PeerAuthentication("shop", "sel-old", R"({
    "selector": {"matchLabels": {"version": "v1"}}, "mtls": {"mode": "STRICT"}})",
                            "v1", "2024-02-01T00:00:00Z"));
  EXPECT_STREQ(Peer(kBackend)->source, "shop/sel-old");
}

TEST_F(IstioPolicy, RootNamespacePeerAuthenticationWithSelectorIsIgnored) {
  // Istio composes a workload's policy from its own namespace's selectors
  // only; a selector in the root namespace selects nothing.
  Upsert(PeerAuthentication("istio-system", "backends", R"({
    "selector": {"matchLabels": {"app": "backend"}}, "mtls": {"mode": "STRICT"}})"));
  EXPECT_EQ(Peer(kBackend)->mode, PERMISSIVE);
}

TEST_F(IstioPolicy, RefusedPeerAuthenticationIsStrictForItsScope) {
  std::string err =
      Refused(PeerAuthentication("shop", "typo", R"({"mtls": {"mode": "STRICTLY"}})"));
  EXPECT_NE(err.find("object refused: shop/typo: spec.mtls.mode"), std::string::npos) << err;
  Upsert(PeerAuthentication("shop", "backend", R"({
    "selector": {"matchLabels": {"app": "backend"}}, "mtls": {"mode": "DISABLE"},
    "portLevelMtls": {"8080": {"mode": "DISABLE"}}})"));
  const Mtlsd__Mesh__V1__PeerAuthentication *pa = Peer(kBackend);
  EXPECT_EQ(pa->mode, STRICT);
  EXPECT_STREQ(pa->source, "shop/typo");
  EXPECT_EQ(pa->n_ports, 0u);
  EXPECT_EQ(Peer(kElsewhere)->mode, PERMISSIVE);
  EXPECT_EQ(Objects()[1].status, MT_ISTIO_REFUSED);
}

TEST_F(IstioPolicy, RefusedPeerAuthenticationWithSelectorIsStrictForItsWorkloadsOnly) {
  Refused(PeerAuthentication("shop", "bad-port", R"({
    "selector": {"matchLabels": {"app": "backend"}},
    "portLevelMtls": {"99999": {"mode": "DISABLE"}}})"));
  EXPECT_EQ(Peer(kBackend)->mode, STRICT);
  EXPECT_EQ(Peer(kFrontend)->mode, PERMISSIVE);
}

TEST_F(IstioPolicy, PeerAuthenticationRefusals) {
  const char *const specs[] = {
      R"({"mtls": "STRICT"})",
      R"({"mtls": {"mode": 1}})",
      R"({"selector": {"matchLabels": {"app": "backend"}}, "portLevelMtls": {"0": {"mode": "STRICT"}}})",
      R"({"selector": {"matchLabels": {"app": "backend"}}, "portLevelMtls": {"080": {"mode": "STRICT"}}})",
      R"({"selector": {"matchLabels": {"app": "backend"}}, "portLevelMtls": {"80": "STRICT"}})",
      R"({"selector": "app=backend"})",
  };
  for (const char *spec : specs) {
    std::string err = Refused(PeerAuthentication("shop", "bad", spec));
    EXPECT_NE(err.find("object refused: shop/bad: spec."), std::string::npos) << err;
  }
}

// ---- lifecycle ----

TEST_F(IstioPolicy, RemovingAnObjectTakesItsEffectAway) {
  IstioObject allow = AuthorizationPolicy("shop", "allow-frontend", kAllowFrontendSpec);
  IstioObject strict = PeerAuthentication("shop", "strict", R"({"mtls": {"mode": "STRICT"}})");
  Upsert(allow);
  Upsert(strict);
  Remove(allow);
  EXPECT_EQ(Compile(kBackend)->n_rules, 0u);
  EXPECT_EQ(Compile(kBackend)->default_action, ALLOW);
  EXPECT_EQ(Peer(kBackend)->mode, STRICT);
  Remove(strict);
  EXPECT_EQ(Peer(kBackend)->mode, PERMISSIVE);
  Remove(strict);  // unknown now: a no-op
  EXPECT_EQ(mt_istio_policies_count(policies_, MT_ISTIO_AUTHORIZATION_POLICY), 0u);
  EXPECT_EQ(mt_istio_policies_count(policies_, MT_ISTIO_PEER_AUTHENTICATION), 0u);
}

TEST_F(IstioPolicy, RemovingARefusedObjectTakesItsDenyAway) {
  IstioObject custom = AuthorizationPolicy("shop", "ext", R"({"action": "CUSTOM"})");
  Refused(custom);
  Remove(custom);
  EXPECT_EQ(Compile(kBackend)->n_rules, 0u);
}

TEST_F(IstioPolicy, ModifyingAnObjectReplacesIt) {
  Upsert(AuthorizationPolicy("shop", "p", kAllowFrontendSpec));
  Upsert(AuthorizationPolicy("shop", "p", R"({"action": "DENY", "rules": [{}, {}]})"));
  EXPECT_EQ(RuleNames(kBackend), (std::vector<std::string>{"shop/p[0]", "shop/p[1]"}));
  EXPECT_EQ(Compile(kBackend)->default_action, ALLOW);
  EXPECT_EQ(mt_istio_policies_count(policies_, MT_ISTIO_AUTHORIZATION_POLICY), 1u);
}

TEST_F(IstioPolicy, ClearForgetsOneKind) {
  Upsert(AuthorizationPolicy("shop", "a", kAllowFrontendSpec));
  Upsert(AuthorizationPolicy("web", "b", kAllowFrontendSpec));
  Upsert(PeerAuthentication("shop", "strict", R"({"mtls": {"mode": "STRICT"}})"));
  mt_istio_policies_clear(policies_, MT_ISTIO_AUTHORIZATION_POLICY);
  EXPECT_EQ(mt_istio_policies_count(policies_, MT_ISTIO_AUTHORIZATION_POLICY), 0u);
  EXPECT_EQ(mt_istio_policies_count(policies_, MT_ISTIO_PEER_AUTHENTICATION), 1u);
  EXPECT_EQ(Compile(kBackend)->n_rules, 0u);
  EXPECT_EQ(Peer(kBackend)->mode, STRICT);
  Upsert(AuthorizationPolicy("shop", "a", kAllowFrontendSpec));  // the relist replays it
  EXPECT_EQ(RuleNames(kBackend).size(), 1u);
}

TEST_F(IstioPolicy, ForeachReportsEveryObjectSortedWithItsStatus) {
  Upsert(PeerAuthentication("shop", "strict", R"({"mtls": {"mode": "STRICT"}})"));
  Upsert(AuthorizationPolicy("web", "plain", kAllowFrontendSpec));
  Upsert(AuthorizationPolicy("shop", "reduced",
                             R"({"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]})"));
  Refused(AuthorizationPolicy("shop", "custom", R"({"action": "CUSTOM"})"));
  Refused(AuthorizationPolicy("istio-system", "audit", R"({"action": "AUDIT"})"));
  std::vector<Seen> seen = Objects();
  ASSERT_EQ(seen.size(), 5u);
  EXPECT_EQ(seen[0].name, "istio-system/audit");
  EXPECT_EQ(seen[0].status, MT_ISTIO_REFUSED);
  EXPECT_NE(seen[0].detail.find("AUDIT"), std::string::npos);
  EXPECT_EQ(seen[1].name, "shop/custom");
  EXPECT_EQ(seen[1].status, MT_ISTIO_REFUSED);
  EXPECT_NE(seen[1].detail.find("CUSTOM"), std::string::npos);
  EXPECT_EQ(seen[2].name, "shop/reduced");
  EXPECT_EQ(seen[2].status, MT_ISTIO_REDUCED);
  EXPECT_NE(seen[2].detail.find("rules[0]: to[0].operation.methods needs HTTP"), std::string::npos);
  EXPECT_EQ(seen[3].name, "web/plain");
  EXPECT_EQ(seen[3].status, MT_ISTIO_APPLIED);
  EXPECT_EQ(seen[3].detail, "");
  EXPECT_EQ(seen[4].kind, MT_ISTIO_PEER_AUTHENTICATION);
  EXPECT_EQ(seen[4].name, "shop/strict");
  EXPECT_STREQ(mt_istio_status_str(MT_ISTIO_APPLIED), "applied");
  EXPECT_STREQ(mt_istio_status_str(MT_ISTIO_REDUCED), "reduced");
  EXPECT_STREQ(mt_istio_status_str(MT_ISTIO_REFUSED), "refused");
}

TEST_F(IstioPolicy, CompiledMessagesPackLikeAnyOther) {
  // What mtls-ca sends: the compiled messages must survive the wire.
  Upsert(AuthorizationPolicy("shop", "allow-frontend", kAllowFrontendSpec));
  const Mtlsd__Mesh__V1__Policy *p = Compile(kBackend);
  size_t len = mtlsd__mesh__v1__policy__get_packed_size(p);
  std::vector<uint8_t> buf(len);
  mtlsd__mesh__v1__policy__pack(p, buf.data());
  Mtlsd__Mesh__V1__Policy *back = mtlsd__mesh__v1__policy__unpack(nullptr, len, buf.data());
  ASSERT_NE(back, nullptr);
  EXPECT_STREQ(back->rules[0]->name, "shop/allow-frontend[0]");
  mtlsd__mesh__v1__policy__free_unpacked(back, nullptr);
}

}  // namespace
