// Specification of agent/policy: ALLOW/DENY rules over peer SPIFFE IDs and
// destination ports, evaluated DENY first, then ALLOW, then the default.
#include "agent/policy.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

const char kWeb[] = "spiffe://example.org/ns/prod/sa/web";
const char kDb[] = "spiffe://example.org/ns/prod/sa/db";
const char kDev[] = "spiffe://example.org/ns/dev/sa/web";
const char kOther[] = "spiffe://other.org/ns/prod/sa/web";

mt_matcher Any() { return mt_matcher{MT_MATCH_ANY, nullptr}; }
mt_matcher Exact(const char *v) { return mt_matcher{MT_MATCH_EXACT, v}; }
mt_matcher Prefix(const char *v) { return mt_matcher{MT_MATCH_PREFIX, v}; }
mt_matcher Namespace(const char *v) { return mt_matcher{MT_MATCH_NAMESPACE, v}; }
mt_matcher TrustDomain(const char *v) { return mt_matcher{MT_MATCH_TRUST_DOMAIN, v}; }

class PolicyTest : public ::testing::Test {
 protected:
  void TearDown() override { mt_policy_free(policy_); }

  void NewPolicy(mt_action default_action) {
    mt_policy_free(policy_);
    policy_ = mt_policy_new(default_action);
    ASSERT_NE(nullptr, policy_);
  }

  // Adds a rule and returns 1/0; on failure the message is in err_.
  int Add(const char *name, mt_action action, const std::vector<uint16_t> &ports,
          const std::vector<mt_matcher> &matchers) {
    err_[0] = '\0';
    return mt_policy_add_rule(policy_, name, action, ports.data(), ports.size(), matchers.data(),
                              matchers.size(), err_, sizeof(err_));
  }

  void MustAdd(const char *name, mt_action action, const std::vector<uint16_t> &ports,
               const std::vector<mt_matcher> &matchers) {
    ASSERT_EQ(1, Add(name, action, ports, matchers)) << err_;
  }

  mt_decision Decide(const char *peer, uint16_t port) {
    return mt_policy_decide(policy_, peer, port);
  }

  bool Allowed(const char *peer, uint16_t port) {
    return Decide(peer, port).action == MT_ACTION_ALLOW;
  }

  mt_policy *policy_ = nullptr;
  char err_[256];
};

// ---- matchers ----------------------------------------------------------

TEST_F(PolicyTest, ExactMatcherMatchesOnlyTheSameId) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("web", MT_ACTION_ALLOW, {}, {Exact(kWeb)});
  EXPECT_TRUE(Allowed(kWeb, 8080));
  EXPECT_FALSE(Allowed(kDb, 8080));
  EXPECT_FALSE(Allowed("spiffe://example.org/ns/prod/sa/web2", 8080));
}

TEST_F(PolicyTest, PrefixMatcherMatchesIdsUnderThePrefix) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("prod", MT_ACTION_ALLOW, {}, {Prefix("spiffe://example.org/ns/prod/")});
  EXPECT_TRUE(Allowed(kWeb, 8080));
  EXPECT_TRUE(Allowed(kDb, 8080));
  EXPECT_FALSE(Allowed(kDev, 8080));
}

TEST_F(PolicyTest, PrefixWithTrailingSlashDoesNotMatchLongerSegment) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("prod", MT_ACTION_ALLOW, {}, {Prefix("spiffe://example.org/ns/prod/")});
  EXPECT_FALSE(Allowed("spiffe://example.org/ns/production/x", 8080));
}

TEST_F(PolicyTest, NamespaceMatcherMatchesTheNsSegment) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("prod", MT_ACTION_ALLOW, {}, {Namespace("prod")});
  EXPECT_TRUE(Allowed(kWeb, 8080));
  EXPECT_TRUE(Allowed(kOther, 8080));
  EXPECT_FALSE(Allowed(kDev, 8080));
}

TEST_F(PolicyTest, NamespaceMatcherMatchesPathThatIsExactlyTheNamespace) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("prod", MT_ACTION_ALLOW, {}, {Namespace("prod")});
  EXPECT_TRUE(Allowed("spiffe://example.org/ns/prod", 8080));
}

TEST_F(PolicyTest, NamespaceMatcherDoesNotMatchLongerNamespace) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("prod", MT_ACTION_ALLOW, {}, {Namespace("prod")});
  EXPECT_FALSE(Allowed("spiffe://example.org/ns/production/sa/web", 8080));
  EXPECT_FALSE(Allowed("spiffe://example.org/ns/production", 8080));
}

TEST_F(PolicyTest, NamespaceMatcherIgnoresNsSegmentOutsideThePathStart) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("prod", MT_ACTION_ALLOW, {}, {Namespace("prod")});
  EXPECT_FALSE(Allowed("spiffe://example.org/x/ns/prod/sa/web", 8080));
  EXPECT_FALSE(Allowed("spiffe://example.org/prod", 8080));
}

TEST_F(PolicyTest, TrustDomainMatcherComparesTheWholeTrustDomain) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("td", MT_ACTION_ALLOW, {}, {TrustDomain("example.org")});
  EXPECT_TRUE(Allowed(kWeb, 8080));
  EXPECT_TRUE(Allowed("spiffe://example.org", 8080));
  EXPECT_FALSE(Allowed(kOther, 8080));
  EXPECT_FALSE(Allowed("spiffe://example.org.evil/ns/prod/sa/web", 8080));
  EXPECT_FALSE(Allowed("spiffe://sub.example.org/ns/prod/sa/web", 8080));
}

TEST_F(PolicyTest, AnyMatcherMatchesEveryPeer) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("all", MT_ACTION_ALLOW, {}, {Any()});
  EXPECT_TRUE(Allowed(kWeb, 8080));
  EXPECT_TRUE(Allowed(kOther, 9090));
}

TEST_F(PolicyTest, RuleMatchesWhenAnyOfItsMatchersMatches) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("web-or-dev", MT_ACTION_ALLOW, {}, {Exact(kWeb), Namespace("dev")});
  EXPECT_TRUE(Allowed(kWeb, 8080));
  EXPECT_TRUE(Allowed(kDev, 8080));
  EXPECT_FALSE(Allowed(kDb, 8080));
}

// ---- evaluation order ----------------------------------------------------

TEST_F(PolicyTest, DenyRuleBeatsAllowRule) {
  NewPolicy(MT_ACTION_ALLOW);
  MustAdd("allow-prod", MT_ACTION_ALLOW, {}, {Namespace("prod")});
  MustAdd("deny-db", MT_ACTION_DENY, {}, {Exact(kDb)});
  mt_decision d = Decide(kDb, 8080);
  EXPECT_EQ(MT_ACTION_DENY, d.action);
  EXPECT_STREQ("deny-db", d.rule);
  EXPECT_STREQ("matched DENY rule", d.reason);
}

TEST_F(PolicyTest, AllowRuleOnPortDeniesEveryoneElseOnThatPort) {
  NewPolicy(MT_ACTION_ALLOW);
  MustAdd("web-only", MT_ACTION_ALLOW, {8080}, {Exact(kWeb)});
  mt_decision d = Decide(kDb, 8080);
  EXPECT_EQ(MT_ACTION_DENY, d.action);
  EXPECT_STREQ(MT_POLICY_RULE_NO_ALLOW_MATCH, d.rule);
  EXPECT_STREQ("no ALLOW rule matched for this port", d.reason);
}

TEST_F(PolicyTest, AllowRuleOnOnePortLeavesOtherPortsToTheDefault) {
  NewPolicy(MT_ACTION_ALLOW);
  MustAdd("web-only", MT_ACTION_ALLOW, {8080}, {Exact(kWeb)});
  mt_decision d = Decide(kDb, 9090);
  EXPECT_EQ(MT_ACTION_ALLOW, d.action);
  EXPECT_STREQ(MT_POLICY_RULE_DEFAULT, d.rule);
  EXPECT_STREQ("no ALLOW rule covers this port; default action", d.reason);
}

TEST_F(PolicyTest, DenyRuleOnOnePortDoesNotCoverOtherPorts) {
  NewPolicy(MT_ACTION_ALLOW);
  MustAdd("no-db-admin", MT_ACTION_DENY, {9000}, {Exact(kDb)});
  EXPECT_FALSE(Allowed(kDb, 9000));
  EXPECT_TRUE(Allowed(kDb, 8080));
}

TEST_F(PolicyTest, DefaultDenyAppliesWhenNoRuleCoversThePort) {
  NewPolicy(MT_ACTION_DENY);
  mt_decision d = Decide(kWeb, 8080);
  EXPECT_EQ(MT_ACTION_DENY, d.action);
  EXPECT_STREQ(MT_POLICY_RULE_DEFAULT, d.rule);
}

TEST_F(PolicyTest, DefaultAllowAppliesWhenNoRuleCoversThePort) {
  NewPolicy(MT_ACTION_ALLOW);
  mt_decision d = Decide(kWeb, 8080);
  EXPECT_EQ(MT_ACTION_ALLOW, d.action);
  EXPECT_STREQ(MT_POLICY_RULE_DEFAULT, d.rule);
}

TEST_F(PolicyTest, RuleWithoutPortsCoversEveryPort) {
  NewPolicy(MT_ACTION_ALLOW);
  MustAdd("web-only", MT_ACTION_ALLOW, {}, {Exact(kWeb)});
  EXPECT_TRUE(Allowed(kWeb, 1));
  EXPECT_TRUE(Allowed(kWeb, 65535));
  EXPECT_STREQ(MT_POLICY_RULE_NO_ALLOW_MATCH, Decide(kDb, 443).rule);
}

TEST_F(PolicyTest, RuleWithSeveralPortsCoversEachOfThem) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("web", MT_ACTION_ALLOW, {80, 443}, {Exact(kWeb)});
  EXPECT_TRUE(Allowed(kWeb, 80));
  EXPECT_TRUE(Allowed(kWeb, 443));
  EXPECT_FALSE(Allowed(kWeb, 8080));
}

TEST_F(PolicyTest, DecisionNamesTheMatchingAllowRule) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("dev", MT_ACTION_ALLOW, {}, {Namespace("dev")});
  MustAdd("prod", MT_ACTION_ALLOW, {}, {Namespace("prod")});
  mt_decision d = Decide(kWeb, 8080);
  EXPECT_EQ(MT_ACTION_ALLOW, d.action);
  EXPECT_STREQ("prod", d.rule);
  EXPECT_STREQ("matched ALLOW rule", d.reason);
}

TEST_F(PolicyTest, DecisionNamesTheFirstMatchingRuleInInsertionOrder) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("first", MT_ACTION_ALLOW, {}, {Namespace("prod")});
  MustAdd("second", MT_ACTION_ALLOW, {}, {Exact(kWeb)});
  EXPECT_STREQ("first", Decide(kWeb, 8080).rule);
}

TEST_F(PolicyTest, DecisionRuleNameOutlivesTheCallersStrings) {
  NewPolicy(MT_ACTION_DENY);
  std::string name = "temp-name";
  std::string id = kWeb;
  MustAdd(name.c_str(), MT_ACTION_ALLOW, {}, {Exact(id.c_str())});
  name.assign(name.size(), 'x');
  id.assign(id.size(), 'x');
  mt_decision d = Decide(kWeb, 8080);
  EXPECT_EQ(MT_ACTION_ALLOW, d.action);
  EXPECT_STREQ("temp-name", d.rule);
}

TEST_F(PolicyTest, MalformedPeerIdIsDenied) {
  NewPolicy(MT_ACTION_ALLOW);
  mt_decision d = Decide("spiffe://Example.org/x", 8080);
  EXPECT_EQ(MT_ACTION_DENY, d.action);
  EXPECT_NE(nullptr, d.rule);
  EXPECT_NE(nullptr, d.reason);
}

TEST_F(PolicyTest, NullPeerIdIsDenied) {
  NewPolicy(MT_ACTION_ALLOW);
  EXPECT_EQ(MT_ACTION_DENY, Decide(nullptr, 8080).action);
}

// ---- building: validation ------------------------------------------------

TEST_F(PolicyTest, RejectsExactValueThatIsNotASpiffeId) {
  NewPolicy(MT_ACTION_DENY);
  EXPECT_EQ(0, Add("bad", MT_ACTION_ALLOW, {}, {Exact("spiffe://example.org/ns/")}));
  EXPECT_NE(std::string::npos, std::string(err_).find("not a valid SPIFFE ID")) << err_;
  EXPECT_NE(std::string::npos, std::string(err_).find("\"bad\"")) << err_;
}

TEST_F(PolicyTest, RejectsPrefixWithoutSpiffeScheme) {
  NewPolicy(MT_ACTION_DENY);
  EXPECT_EQ(0, Add("bad", MT_ACTION_ALLOW, {}, {Prefix("example.org/ns/prod/")}));
  EXPECT_NE(std::string::npos, std::string(err_).find("spiffe://")) << err_;
}

TEST_F(PolicyTest, RejectsInvalidTrustDomain) {
  NewPolicy(MT_ACTION_DENY);
  EXPECT_EQ(0, Add("bad", MT_ACTION_ALLOW, {}, {TrustDomain("Example.org")}));
  EXPECT_NE(std::string::npos, std::string(err_).find("trust domain")) << err_;
}

TEST_F(PolicyTest, RejectsEmptyNamespace) {
  NewPolicy(MT_ACTION_DENY);
  EXPECT_EQ(0, Add("bad", MT_ACTION_ALLOW, {}, {Namespace("")}));
  EXPECT_STRNE("", err_);
}

TEST_F(PolicyTest, RejectsNamespaceWithSlash) {
  NewPolicy(MT_ACTION_DENY);
  EXPECT_EQ(0, Add("bad", MT_ACTION_ALLOW, {}, {Namespace("prod/sa")}));
  EXPECT_NE(std::string::npos, std::string(err_).find("'/'")) << err_;
}

TEST_F(PolicyTest, RejectsMatcherWithoutValue) {
  NewPolicy(MT_ACTION_DENY);
  EXPECT_EQ(0, Add("bad", MT_ACTION_ALLOW, {}, {Exact(nullptr)}));
  EXPECT_STRNE("", err_);
}

TEST_F(PolicyTest, RejectsAnyMatcherWithValue) {
  NewPolicy(MT_ACTION_DENY);
  EXPECT_EQ(0, Add("bad", MT_ACTION_ALLOW, {}, {mt_matcher{MT_MATCH_ANY, "*"}}));
  EXPECT_STRNE("", err_);
}

TEST_F(PolicyTest, RejectsDuplicateRuleName) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("web", MT_ACTION_ALLOW, {}, {Exact(kWeb)});
  EXPECT_EQ(0, Add("web", MT_ACTION_DENY, {}, {Exact(kDb)}));
  EXPECT_NE(std::string::npos, std::string(err_).find("duplicate")) << err_;
  EXPECT_EQ(1u, mt_policy_rule_count(policy_));
}

TEST_F(PolicyTest, RejectsEmptyRuleName) {
  NewPolicy(MT_ACTION_DENY);
  EXPECT_EQ(0, Add("", MT_ACTION_ALLOW, {}, {Any()}));
  EXPECT_STRNE("", err_);
  EXPECT_EQ(0, Add(nullptr, MT_ACTION_ALLOW, {}, {Any()}));
}

TEST_F(PolicyTest, RejectsRuleWithoutMatchers) {
  NewPolicy(MT_ACTION_DENY);
  EXPECT_EQ(0, Add("empty", MT_ACTION_ALLOW, {8080}, {}));
  EXPECT_NE(std::string::npos, std::string(err_).find("no matchers")) << err_;
}

TEST_F(PolicyTest, RejectsPortZero) {
  NewPolicy(MT_ACTION_DENY);
  EXPECT_EQ(0, Add("zero", MT_ACTION_ALLOW, {0}, {Any()}));
  EXPECT_STRNE("", err_);
}

TEST_F(PolicyTest, RejectedRuleLeavesThePolicyUnchanged) {
  NewPolicy(MT_ACTION_ALLOW);
  EXPECT_EQ(0, Add("bad", MT_ACTION_ALLOW, {8080}, {Exact(kWeb), Namespace("a/b")}));
  EXPECT_EQ(0u, mt_policy_rule_count(policy_));
  EXPECT_STREQ(MT_POLICY_RULE_DEFAULT, Decide(kDb, 8080).rule);
}

TEST_F(PolicyTest, AcceptsNullErrorBuffer) {
  NewPolicy(MT_ACTION_DENY);
  mt_matcher m = Namespace("");
  EXPECT_EQ(0, mt_policy_add_rule(policy_, "x", MT_ACTION_ALLOW, nullptr, 0, &m, 1, nullptr, 0));
}

TEST_F(PolicyTest, CountsRules) {
  NewPolicy(MT_ACTION_DENY);
  EXPECT_EQ(0u, mt_policy_rule_count(policy_));
  for (int i = 0; i < 20; i++) {
    std::string name = "rule-" + std::to_string(i);
    MustAdd(name.c_str(), MT_ACTION_ALLOW, {static_cast<uint16_t>(1000 + i)}, {Any()});
  }
  EXPECT_EQ(20u, mt_policy_rule_count(policy_));
  EXPECT_STREQ("rule-19", Decide(kWeb, 1019).rule);
}

// ---- misc ------------------------------------------------------------------

TEST(Policy, FreeAcceptsNull) { mt_policy_free(nullptr); }

TEST(Policy, ActionNames) {
  EXPECT_STREQ("allow", mt_action_str(MT_ACTION_ALLOW));
  EXPECT_STREQ("deny", mt_action_str(MT_ACTION_DENY));
}

}  // namespace

namespace {

TEST(PolicyUnauthenticatedTest, AllowedOnlyWhereNoRuleSpeaks) {
  mt_policy *p = mt_policy_new(MT_ACTION_ALLOW);
  const uint16_t port = 8080;
  const mt_matcher any = {MT_MATCH_ANY, nullptr};
  char err[256];
  ASSERT_TRUE(mt_policy_add_rule(p, "any-peer", MT_ACTION_ALLOW, &port, 1, &any, 1, err,
                                 sizeof(err)));
  mt_decision d = mt_policy_decide_unauthenticated(p, 8080);
  EXPECT_EQ(d.action, MT_ACTION_DENY);
  EXPECT_STREQ(d.rule, "any-peer");
  d = mt_policy_decide_unauthenticated(p, 9090);
  EXPECT_EQ(d.action, MT_ACTION_ALLOW);
  EXPECT_STREQ(d.rule, MT_POLICY_RULE_DEFAULT);
  mt_policy_free(p);
}

TEST(PolicyUnauthenticatedTest, DefaultDenyDeniesPlaintext) {
  mt_policy *p = mt_policy_new(MT_ACTION_DENY);
  EXPECT_EQ(mt_policy_decide_unauthenticated(p, 8080).action, MT_ACTION_DENY);
  mt_policy_free(p);
}

}  // namespace
