// Specification of `mtlsd explain` below the command line: policy.h's trace
// (what each rule saw) and agent/explain's rendering. The explanation's
// decision is always the data path's own.
#include "agent/explain.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "agent/policy.h"

namespace {

const char kWeb[] = "spiffe://example.org/ns/prod/sa/web";
const char kDb[] = "spiffe://example.org/ns/prod/sa/db";
const char kDev[] = "spiffe://example.org/ns/dev/sa/web";
const char kOther[] = "spiffe://other.org/ns/prod/sa/web";
const char kInvalid[] = "spiffe://Example.org/ns/prod/sa/web";  // uppercase trust domain

mt_matcher Any() { return mt_matcher{MT_MATCH_ANY, nullptr}; }
mt_matcher Exact(const char *v) { return mt_matcher{MT_MATCH_EXACT, v}; }
mt_matcher Prefix(const char *v) { return mt_matcher{MT_MATCH_PREFIX, v}; }
mt_matcher Namespace(const char *v) { return mt_matcher{MT_MATCH_NAMESPACE, v}; }
mt_matcher TrustDomain(const char *v) { return mt_matcher{MT_MATCH_TRUST_DOMAIN, v}; }

bool Contains(const std::string &text, const std::string &part) {
  return text.find(part) != std::string::npos;
}

class ExplainTest : public ::testing::Test {
 protected:
  void TearDown() override {
    mt_policy_trace_dispose(&trace_);
    mt_policy_free(policy_);
  }

  void NewPolicy(mt_action default_action) {
    mt_policy_free(policy_);
    policy_ = mt_policy_new(default_action);
    ASSERT_NE(nullptr, policy_);
  }

  void MustAdd(const char *name, mt_action action, const std::vector<uint16_t> &ports,
               const std::vector<mt_matcher> &matchers) {
    char err[256] = "";
    ASSERT_EQ(1, mt_policy_add_rule(policy_, name, action, ports.data(), ports.size(),
                                    matchers.data(), matchers.size(), err, sizeof(err)))
        << err;
  }

  // Traces |peer| (nullptr: unauthenticated) on |port| into trace_.
  void Trace(const char *peer, uint16_t port) {
    mt_policy_trace_dispose(&trace_);
    ASSERT_EQ(1, mt_policy_trace_init(&trace_, policy_, peer, port));
  }

  const mt_rule_trace &Rule(size_t i) const { return trace_.rules[i]; }

  static mt_explain_query Query(const char *peer, uint16_t port, int permissive) {
    mt_explain_query q = {};
    q.source = "mtlsd.yaml";
    q.version = "static";
    q.peer_id = peer;
    q.port = port;
    q.permissive = permissive;
    return q;
  }

  std::string Render(const mt_explain_query &q, int json) {
    int n = mt_explain_render(policy_, &q, json, nullptr, 0);
    EXPECT_GE(n, 0);
    if (n < 0) return "";
    std::string text(static_cast<size_t>(n) + 1, '\0');
    EXPECT_EQ(n, mt_explain_render(policy_, &q, json, &text[0], text.size()));
    text.resize(static_cast<size_t>(n));
    return text;
  }

  std::string Text(const char *peer, uint16_t port, int permissive = 0) {
    return Render(Query(peer, port, permissive), 0);
  }

  std::string Json(const char *peer, uint16_t port, int permissive = 0) {
    return Render(Query(peer, port, permissive), 1);
  }

  mt_policy *policy_ = nullptr;
  mt_policy_trace trace_ = {};
};

// ---- each matcher kind: the rule, the matcher, the decision ---------------

TEST_F(ExplainTest, ExactMatcherDecidesAndSaysWhichMatcherMatched) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("web", MT_ACTION_ALLOW, {8080}, {Exact(kDb), Exact(kWeb)});
  Trace(kWeb, 8080);
  EXPECT_EQ(MT_ACTION_ALLOW, trace_.decision.action);
  EXPECT_STREQ("web", trace_.decision.rule);
  ASSERT_EQ(1u, trace_.num_rules);
  EXPECT_TRUE(Rule(0).covers_port);
  EXPECT_TRUE(Rule(0).matches_peer);
  EXPECT_TRUE(Rule(0).decided);
  ASSERT_EQ(2u, Rule(0).num_matchers);
  EXPECT_FALSE(Rule(0).matchers[0].matches);
  EXPECT_TRUE(Rule(0).matchers[1].matches);
  EXPECT_STREQ(kWeb, Rule(0).matchers[1].value);

  std::string text = Text(kWeb, 8080);
  EXPECT_TRUE(Contains(text, "decision: allow\n")) << text;
  EXPECT_TRUE(Contains(text, "rule:     web\n")) << text;
  EXPECT_TRUE(Contains(text, "reason:   matched ALLOW rule\n")) << text;
  EXPECT_TRUE(Contains(text, "1. web: allow, port 8080   <- decided\n")) << text;
  EXPECT_TRUE(Contains(text, std::string("- id ") + kDb + ": no match\n")) << text;
  EXPECT_TRUE(Contains(text, std::string("- id ") + kWeb + ": matches\n")) << text;
}

TEST_F(ExplainTest, PrefixMatcherIsShownAsConfiguredWithItsStar) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("prod", MT_ACTION_ALLOW, {}, {Prefix("spiffe://example.org/ns/prod/")});
  Trace(kDev, 8080);
  EXPECT_EQ(MT_ACTION_DENY, trace_.decision.action);
  EXPECT_STREQ(MT_POLICY_RULE_NO_ALLOW_MATCH, trace_.decision.rule);
  EXPECT_TRUE(Rule(0).covers_port);
  EXPECT_FALSE(Rule(0).matches_peer);
  EXPECT_FALSE(Rule(0).decided);

  std::string text = Text(kDev, 8080);
  EXPECT_TRUE(Contains(text, "1. prod: allow, every port\n")) << text;
  EXPECT_TRUE(Contains(text, "- prefix spiffe://example.org/ns/prod/*: no match")) << text;
  EXPECT_TRUE(Contains(text, "no rule above decided: no-allow-rule-matched")) << text;
  EXPECT_TRUE(Contains(Text(kDb, 8080), "- prefix spiffe://example.org/ns/prod/*: matches"));
}

TEST_F(ExplainTest, NamespaceMatcherMatchesTheNsSegment) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("prod-ns", MT_ACTION_ALLOW, {8080}, {Namespace("prod")});
  Trace(kDb, 8080);
  EXPECT_STREQ("prod-ns", trace_.decision.rule);
  EXPECT_TRUE(Rule(0).matchers[0].matches);
  Trace(kDev, 8080);
  EXPECT_STREQ(MT_POLICY_RULE_NO_ALLOW_MATCH, trace_.decision.rule);
  EXPECT_FALSE(Rule(0).matchers[0].matches);
  EXPECT_TRUE(Contains(Text(kDev, 8080), "- namespace prod: no match"));
}

TEST_F(ExplainTest, TrustDomainMatcherComparesTheWholeTrustDomain) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("partner", MT_ACTION_ALLOW, {}, {TrustDomain("other.org")});
  Trace(kOther, 443);
  EXPECT_EQ(MT_ACTION_ALLOW, trace_.decision.action);
  EXPECT_TRUE(Rule(0).matchers[0].matches);
  Trace(kWeb, 443);
  EXPECT_EQ(MT_ACTION_DENY, trace_.decision.action);
  EXPECT_FALSE(Rule(0).matchers[0].matches);
  EXPECT_TRUE(Contains(Text(kWeb, 443), "- trust_domain other.org: no match"));
}

TEST_F(ExplainTest, AnyMatcherMatchesEveryValidPeer) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("everyone", MT_ACTION_ALLOW, {9090}, {Any()});
  Trace(kOther, 9090);
  EXPECT_STREQ("everyone", trace_.decision.rule);
  EXPECT_EQ(nullptr, Rule(0).matchers[0].value);
  EXPECT_TRUE(Rule(0).matchers[0].matches);
  EXPECT_TRUE(Contains(Text(kOther, 9090), "- any: matches\n"));
}

// ---- evaluation order --------------------------------------------------

TEST_F(ExplainTest, DenyRulesAreListedFirstAndWinOverAMatchingAllow) {
  NewPolicy(MT_ACTION_ALLOW);
  MustAdd("allow-prod", MT_ACTION_ALLOW, {8080}, {Namespace("prod")});
  MustAdd("deny-web", MT_ACTION_DENY, {8080}, {Exact(kWeb)});
  Trace(kWeb, 8080);
  EXPECT_EQ(MT_ACTION_DENY, trace_.decision.action);
  EXPECT_STREQ("deny-web", trace_.decision.rule);
  ASSERT_EQ(2u, trace_.num_rules);
  EXPECT_STREQ("deny-web", Rule(0).name);
  EXPECT_EQ(1u, Rule(0).position);
  EXPECT_TRUE(Rule(0).decided);
  EXPECT_STREQ("allow-prod", Rule(1).name);
  EXPECT_EQ(0u, Rule(1).position);
  EXPECT_TRUE(Rule(1).matches_peer);  // it matches too, but DENY came first
  EXPECT_FALSE(Rule(1).decided);

  std::string text = Text(kWeb, 8080);
  EXPECT_TRUE(Contains(text, "every DENY rule, then every ALLOW rule")) << text;
  EXPECT_LT(text.find("1. deny-web"), text.find("2. allow-prod")) << text;
  EXPECT_TRUE(Contains(text, "reason:   matched DENY rule\n")) << text;
}

TEST_F(ExplainTest, DenyRuleThatDoesNotCoverThePortDoesNotDecide) {
  NewPolicy(MT_ACTION_ALLOW);
  MustAdd("deny-web-admin", MT_ACTION_DENY, {9000}, {Exact(kWeb)});
  Trace(kWeb, 8080);
  EXPECT_EQ(MT_ACTION_ALLOW, trace_.decision.action);
  EXPECT_FALSE(Rule(0).covers_port);
  EXPECT_TRUE(Rule(0).matches_peer);
  EXPECT_FALSE(Rule(0).decided);
  EXPECT_TRUE(Contains(Text(kWeb, 8080), "covers the port: no; peer matches: yes"));
}

TEST_F(ExplainTest, NoAllowMatchNamesNoConfiguredRule) {
  NewPolicy(MT_ACTION_ALLOW);
  MustAdd("web-only", MT_ACTION_ALLOW, {8080}, {Exact(kWeb)});
  Trace(kDb, 8080);
  EXPECT_EQ(MT_ACTION_DENY, trace_.decision.action);
  EXPECT_STREQ(MT_POLICY_RULE_NO_ALLOW_MATCH, trace_.decision.rule);
  EXPECT_TRUE(Rule(0).covers_port);
  EXPECT_FALSE(Rule(0).decided);
  std::string text = Text(kDb, 8080);
  EXPECT_TRUE(Contains(text, "rule:     no-allow-rule-matched\n")) << text;
  EXPECT_TRUE(Contains(text, "reason:   no ALLOW rule matched for this port\n")) << text;
  EXPECT_FALSE(Contains(text, "<- decided")) << text;
}

TEST_F(ExplainTest, PortNoAllowRuleCoversGetsTheDefault) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("web-only", MT_ACTION_ALLOW, {8080}, {Exact(kWeb)});
  Trace(kWeb, 9090);
  EXPECT_EQ(MT_ACTION_DENY, trace_.decision.action);
  EXPECT_STREQ(MT_POLICY_RULE_DEFAULT, trace_.decision.rule);
  EXPECT_EQ(MT_ACTION_DENY, trace_.default_action);
  EXPECT_FALSE(Rule(0).covers_port);
  EXPECT_TRUE(Rule(0).matches_peer);
  std::string text = Text(kWeb, 9090);
  EXPECT_TRUE(Contains(text, "rule:     default\n")) << text;
  EXPECT_TRUE(Contains(text, "default (ports no ALLOW rule covers): deny\n")) << text;
}

TEST_F(ExplainTest, RuleNamedDefaultDoesNotTakeTheDefaultsCredit) {
  NewPolicy(MT_ACTION_ALLOW);
  MustAdd("default", MT_ACTION_ALLOW, {8080}, {Exact(kWeb)});
  Trace(kWeb, 9090);
  EXPECT_STREQ(MT_POLICY_RULE_DEFAULT, trace_.decision.rule);
  EXPECT_FALSE(Rule(0).decided);
  Trace(kWeb, 8080);
  EXPECT_TRUE(Rule(0).decided);
}

TEST_F(ExplainTest, EmptyPolicyExplainsTheDefaultAlone) {
  NewPolicy(MT_ACTION_ALLOW);
  Trace(kWeb, 8080);
  EXPECT_EQ(0u, trace_.num_rules);
  EXPECT_STREQ(MT_POLICY_RULE_DEFAULT, trace_.decision.rule);
  EXPECT_TRUE(Contains(Text(kWeb, 8080), "rules: none; every port gets the default action"));
}

// ---- peers that are not what they should be -----------------------------

TEST_F(ExplainTest, InvalidPeerIdIsTheInvalidPeerDenialAndNoMatcherRuns) {
  NewPolicy(MT_ACTION_ALLOW);
  MustAdd("everyone", MT_ACTION_ALLOW, {}, {Any()});
  Trace(kInvalid, 8080);
  EXPECT_EQ(MT_ACTION_DENY, trace_.decision.action);
  EXPECT_STREQ(MT_POLICY_RULE_INVALID_PEER, trace_.decision.rule);
  EXPECT_FALSE(trace_.peer_evaluated);
  EXPECT_FALSE(Rule(0).matches_peer);
  EXPECT_FALSE(Rule(0).matchers[0].matches);
  EXPECT_FALSE(Rule(0).decided);

  std::string text = Text(kInvalid, 8080);
  EXPECT_TRUE(Contains(text, "NOT a valid SPIFFE ID")) << text;
  EXPECT_TRUE(Contains(text, "the decision is the invalid-peer-id denial")) << text;
  EXPECT_TRUE(Contains(text, "rule:     invalid-peer-id\n")) << text;
  EXPECT_TRUE(Contains(text, "- any: not evaluated")) << text;
  EXPECT_TRUE(Contains(Json(kInvalid, 8080), "\"peer_valid\":false")) << Json(kInvalid, 8080);
}

TEST_F(ExplainTest, PlaintextOnPermissivePortIsDeniedByTheFirstCoveringRule) {
  NewPolicy(MT_ACTION_ALLOW);
  MustAdd("web-only", MT_ACTION_ALLOW, {8080}, {Exact(kWeb)});
  MustAdd("no-dev", MT_ACTION_DENY, {8080}, {Namespace("dev")});
  Trace(nullptr, 8080);
  EXPECT_EQ(MT_ACTION_DENY, trace_.decision.action);
  EXPECT_STREQ("web-only", trace_.decision.rule);
  EXPECT_STREQ("web-only", Rule(0).name);  // policy order, not DENY first
  EXPECT_TRUE(Rule(0).decided);
  EXPECT_FALSE(Rule(1).decided);
  EXPECT_FALSE(trace_.peer_evaluated);

  std::string text = Text(nullptr, 8080, 1);
  EXPECT_TRUE(Contains(text, "peer:     unauthenticated")) << text;
  EXPECT_TRUE(Contains(text, "rule:     web-only\n")) << text;
  EXPECT_TRUE(Contains(text, "1. web-only: allow, port 8080   <- decided")) << text;
}

TEST_F(ExplainTest, PlaintextOnPermissivePortNoRuleCoversGetsTheDefault) {
  NewPolicy(MT_ACTION_ALLOW);
  MustAdd("web-only", MT_ACTION_ALLOW, {8080}, {Exact(kWeb)});
  mt_explain_query q = Query(nullptr, 9090, 1);
  mt_decision d = mt_explain_decide(policy_, &q);
  EXPECT_EQ(MT_ACTION_ALLOW, d.action);
  EXPECT_STREQ(MT_POLICY_RULE_DEFAULT, d.rule);
}

TEST_F(ExplainTest, PlaintextOnStrictPortIsRefusedBeforePolicy) {
  NewPolicy(MT_ACTION_ALLOW);
  MustAdd("web-only", MT_ACTION_ALLOW, {8080}, {Exact(kWeb)});
  mt_explain_query q = Query(nullptr, 8080, 0);
  mt_decision d = mt_explain_decide(policy_, &q);
  EXPECT_EQ(MT_ACTION_DENY, d.action);
  EXPECT_STREQ("", d.rule);
  std::string text = Text(nullptr, 8080, 0);
  EXPECT_TRUE(Contains(text, "rule:     (none)\n")) << text;
  EXPECT_TRUE(Contains(text, "plaintext is refused before policy")) << text;
  EXPECT_TRUE(Contains(text, "not consulted")) << text;
  EXPECT_FALSE(Contains(text, "<- decided")) << text;
  EXPECT_TRUE(Contains(Json(nullptr, 8080, 0), "\"policy_consulted\":false"));
}

TEST_F(ExplainTest, PeerExplanationSaysWhatPlaintextWouldGet) {
  NewPolicy(MT_ACTION_ALLOW);
  MustAdd("web-only", MT_ACTION_ALLOW, {8080}, {Exact(kWeb)});
  EXPECT_TRUE(Contains(Text(kWeb, 8080, 1),
                       "plaintext on port 8080 (permissive): deny by rule 'web-only'"));
  EXPECT_TRUE(Contains(Text(kWeb, 9090, 1),
                       "plaintext on port 9090 (permissive): allow by rule 'default'"));
  EXPECT_TRUE(Contains(Text(kWeb, 8080, 0), "plaintext on port 8080: refused before policy"));
  EXPECT_TRUE(Contains(Text(kWeb, 8080, 0), "plaintext_on_strict_port"));
}

// ---- rendering ------------------------------------------------------------

TEST_F(ExplainTest, HeaderNamesThePolicySourceAndVersion) {
  NewPolicy(MT_ACTION_ALLOW);
  std::string text = Text(kWeb, 8080);
  EXPECT_EQ(0u, text.find("policy from mtlsd.yaml (static)\n")) << text;
  EXPECT_FALSE(Contains(text, "Watch")) << text;
  mt_explain_query q = Query(kWeb, 8080, 0);
  q.may_be_replaced = 1;
  EXPECT_TRUE(Contains(Render(q, 0), "control plane's Watch stream"));
}

TEST_F(ExplainTest, JsonCarriesDecisionRuleReasonAndEveryRule) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("no-dev", MT_ACTION_DENY, {8080}, {Namespace("dev")});
  MustAdd("prod", MT_ACTION_ALLOW, {8080, 8443}, {Prefix("spiffe://example.org/ns/prod/")});
  std::string json = Json(kWeb, 8080);
  EXPECT_EQ('{', json.front()) << json;
  EXPECT_EQ("}\n", json.substr(json.size() - 2)) << json;
  EXPECT_TRUE(Contains(json,
                       "\"decision\":\"allow\",\"rule\":\"prod\","
                       "\"reason\":\"matched ALLOW rule\""))
      << json;
  EXPECT_TRUE(Contains(json,
                       "\"rules\":[{\"name\":\"no-dev\",\"position\":0,\"action\":\"deny\","
                       "\"all_ports\":false,\"ports\":[8080],\"covers_port\":true,"
                       "\"matches_peer\":false,\"decided\":false,"))
      << json;
  EXPECT_TRUE(Contains(json, "\"ports\":[8080,8443]")) << json;
  EXPECT_TRUE(Contains(json,
                       "{\"kind\":\"prefix\",\"value\":\"spiffe://example.org/ns/prod/*\","
                       "\"matches\":true}"))
      << json;
}

TEST_F(ExplainTest, JsonEscapesQuotesBackslashesAndControlBytes) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("say \"hi\"\\\t", MT_ACTION_ALLOW, {}, {Any()});
  std::string json = Json(kWeb, 8080);
  EXPECT_TRUE(Contains(json, "\"rule\":\"say \\\"hi\\\"\\\\\\u0009\"")) << json;
  EXPECT_TRUE(Contains(Json("bad\nid", 8080), "\"peer\":\"bad\\u000aid\""));
}

TEST_F(ExplainTest, RenderCutsToTheBufferLikeSnprintf) {
  NewPolicy(MT_ACTION_ALLOW);
  MustAdd("web-only", MT_ACTION_ALLOW, {8080}, {Exact(kWeb)});
  std::string full = Text(kWeb, 8080);
  char small[32];
  mt_explain_query q = Query(kWeb, 8080, 0);
  EXPECT_EQ(static_cast<int>(full.size()), mt_explain_render(policy_, &q, 0, small, sizeof(small)));
  EXPECT_EQ(full.substr(0, sizeof(small) - 1), std::string(small));
}

// ---- the explanation never disagrees with the data path -----------------

TEST_F(ExplainTest, ExplanationDecisionAlwaysEqualsPolicyDecide) {
  NewPolicy(MT_ACTION_DENY);
  MustAdd("deny-dev", MT_ACTION_DENY, {8080, 9090}, {Namespace("dev")});
  MustAdd("web", MT_ACTION_ALLOW, {8080}, {Exact(kWeb)});
  MustAdd("prod", MT_ACTION_ALLOW, {9090}, {Prefix("spiffe://example.org/ns/prod/")});
  MustAdd("partner", MT_ACTION_ALLOW, {}, {TrustDomain("other.org")});
  MustAdd("deny-partner-admin", MT_ACTION_DENY, {9443}, {TrustDomain("other.org")});
  MustAdd("metrics", MT_ACTION_ALLOW, {15090}, {Any()});
  const char *peers[] = {kWeb,       kDb,    kDev, kOther, kInvalid, "spiffe://example.org",
                         "nonsense", nullptr};
  const uint16_t ports[] = {8080, 9090, 9443, 15090, 1};
  for (const char *peer : peers) {
    for (uint16_t port : ports) {
      SCOPED_TRACE(std::string(peer ? peer : "(unauthenticated)") + " port " +
                   std::to_string(port));
      mt_decision want = peer != nullptr ? mt_policy_decide(policy_, peer, port)
                                         : mt_policy_decide_unauthenticated(policy_, port);
      Trace(peer, port);
      EXPECT_EQ(want.action, trace_.decision.action);
      EXPECT_EQ(want.rule, trace_.decision.rule);
      EXPECT_EQ(want.reason, trace_.decision.reason);
      EXPECT_EQ(6u, trace_.num_rules);
      size_t decided = 0;
      for (size_t i = 0; i < trace_.num_rules; i++) {
        decided += Rule(i).decided;
        if (Rule(i).decided) {
          EXPECT_STREQ(want.rule, Rule(i).name);
          EXPECT_TRUE(Rule(i).covers_port);
        }
      }
      EXPECT_LE(decided, 1u);

      mt_explain_query q = Query(peer, port, 1);
      mt_decision shown = mt_explain_decide(policy_, &q);
      EXPECT_EQ(want.action, shown.action);
      EXPECT_EQ(want.rule, shown.rule);
      std::string text = Render(q, 0);
      EXPECT_TRUE(Contains(text, std::string("decision: ") + mt_action_str(want.action) + "\n"))
          << text;
      EXPECT_TRUE(Contains(text, std::string("rule:     ") + want.rule + "\n")) << text;
      EXPECT_TRUE(Contains(Render(q, 1), std::string("\"decision\":\"") +
                                             mt_action_str(want.action) + "\",\"rule\":\"" +
                                             want.rule + "\""));
    }
  }
}

}  // namespace
