// Which identity a CreateCertificate caller gets a certificate for: its own,
// or, for a node agent, a workload the registry lists on the agent's node.
#include "controlplane/node_auth.h"

#include <string>

#include <gtest/gtest.h>

#include "tests/controlplane/test_files.h"

namespace {

const char kNodeAgent[] = "spiffe://example.org/ns/mtls-system/sa/mtlsd-node";
const char kFrontend[] = "spiffe://example.org/ns/demo/sa/frontend";
const char kBackend[] = "spiffe://example.org/ns/demo/sa/backend";

class NodeAuth : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string path = dir_.Write("workloads.yaml",
                                  "workloads:\n"
                                  "  - {node: node-1, spiffe_id: 'spiffe://example.org/ns/demo/sa/"
                                  "frontend'}\n"
                                  "  - {node: node-2, spiffe_id: 'spiffe://example.org/ns/demo/sa/"
                                  "backend'}\n");
    char err[1024] = "";
    workloads_ = mt_workloads_load(path.c_str(), "example.org", err, sizeof(err));
    ASSERT_NE(workloads_, nullptr) << err;
    policy_.trust_domain = "example.org";
    policy_.node_agents = agents_;
    policy_.num_node_agents = 1;
    policy_.workloads = workloads_;
  }
  void TearDown() override { mt_workloads_free(workloads_); }

  mt_node_auth_decision Decide(const char *caller, const char *node, const char *impersonated) {
    mt_node_auth_request request = {caller, node, impersonated};
    mt_node_auth_decision d;
    mt_node_auth_decide(&policy_, &request, &d);
    return d;
  }

  mt_test::ScratchDir dir_;
  mt_workloads *workloads_ = nullptr;
  const char *agents_[1] = {kNodeAgent};
  mt_node_auth_policy policy_ = {};
};

TEST_F(NodeAuth, WithoutImpersonationEveryCallerGetsItsOwnIdentity) {
  for (const char *node : {"node-1", "", static_cast<const char *>(nullptr)}) {
    mt_node_auth_decision d = Decide(kFrontend, node, nullptr);
    EXPECT_EQ(d.status, MT_GRPC_OK);
    EXPECT_STREQ(d.reason, "ok");
    EXPECT_STREQ(d.identity, kFrontend);
    EXPECT_STREQ(d.message, "");
  }
  mt_node_auth_decision d = Decide(kNodeAgent, "node-1", nullptr);
  EXPECT_EQ(d.status, MT_GRPC_OK);
  EXPECT_STREQ(d.identity, kNodeAgent);
}

TEST_F(NodeAuth, NodeAgentGetsAWorkloadOnItsNode) {
  mt_node_auth_decision d = Decide(kNodeAgent, "node-1", kFrontend);
  EXPECT_EQ(d.status, MT_GRPC_OK);
  EXPECT_STREQ(d.reason, "ok");
  EXPECT_STREQ(d.identity, kFrontend);
  d = Decide(kNodeAgent, "node-2", kBackend);
  EXPECT_EQ(d.status, MT_GRPC_OK);
  EXPECT_STREQ(d.identity, kBackend);
}

TEST_F(NodeAuth, NodeAgentIsRefusedAWorkloadOnAnotherNode) {
  mt_node_auth_decision d = Decide(kNodeAgent, "node-2", kFrontend);
  EXPECT_EQ(d.status, MT_GRPC_PERMISSION_DENIED);
  EXPECT_STREQ(d.reason, "not_on_node");
  EXPECT_STREQ(d.message,
               "identity spiffe://example.org/ns/demo/sa/frontend has no workload on "
               "node node-2");
  EXPECT_EQ(d.identity, nullptr);
  d = Decide(kNodeAgent, "node-3", kFrontend);
  EXPECT_STREQ(d.reason, "not_on_node");
  d = Decide(kNodeAgent, "node-1", "spiffe://example.org/ns/demo/sa/unlisted");
  EXPECT_STREQ(d.reason, "not_on_node");
}

TEST_F(NodeAuth, ACallerThatIsNotANodeAgentMayNotImpersonate) {
  // Even for an identity registered on the node its token names.
  mt_node_auth_decision d = Decide(kBackend, "node-1", kFrontend);
  EXPECT_EQ(d.status, MT_GRPC_PERMISSION_DENIED);
  EXPECT_STREQ(d.reason, "not_node_agent");
  EXPECT_NE(std::string(d.message).find("caller spiffe://example.org/ns/demo/sa/backend is not a "
                                        "node agent"),
            std::string::npos)
      << d.message;
  EXPECT_EQ(d.identity, nullptr);
  // Nor for itself through the metadata.
  EXPECT_STREQ(Decide(kFrontend, "node-1", kFrontend).reason, "not_node_agent");
}

TEST_F(NodeAuth, ANodeAgentWithoutANodeClaimIsRefused) {
  for (const char *node : {"", static_cast<const char *>(nullptr)}) {
    mt_node_auth_decision d = Decide(kNodeAgent, node, kFrontend);
    EXPECT_EQ(d.status, MT_GRPC_PERMISSION_DENIED);
    EXPECT_STREQ(d.reason, "no_node_claim");
    EXPECT_NE(std::string(d.message).find("has no node name claim (kubernetes.io.node.name)"),
              std::string::npos)
        << d.message;
  }
}

TEST_F(NodeAuth, ANodeClaimThatIsNoNodeNameIsRefusedWithoutEchoingIt) {
  mt_node_auth_decision d = Decide(kNodeAgent, "node-1\nforged log line", kFrontend);
  EXPECT_EQ(d.status, MT_GRPC_PERMISSION_DENIED);
  EXPECT_STREQ(d.reason, "bad_node_claim");
  EXPECT_EQ(std::string(d.message).find('\n'), std::string::npos) << d.message;
  EXPECT_NE(std::string(d.message).find("node-1?forged log line"), std::string::npos) << d.message;
}

TEST_F(NodeAuth, TheRequestedIdentityMustBeAWorkloadIdOfThisTrustDomain) {
  struct {
    const char *id, *expected;
  } cases[] = {
      {"spiffe://example.org/ns//sa/x", "is not a valid SPIFFE ID: path has an empty segment"},
      {"frontend", "is not a valid SPIFFE ID"},
      {"", "is not a valid SPIFFE ID: SPIFFE ID is empty"},
      {"spiffe://other.org/ns/demo/sa/frontend", "is not in this CA's trust domain example.org"},
      {"spiffe://example.org", "has no path (a workload identity needs one)"},
  };
  for (const auto &c : cases) {
    mt_node_auth_decision d = Decide(kNodeAgent, "node-1", c.id);
    EXPECT_EQ(d.status, MT_GRPC_INVALID_ARGUMENT) << c.id;
    EXPECT_STREQ(d.reason, "bad_impersonated_identity") << c.id;
    EXPECT_NE(std::string(d.message).find(c.expected), std::string::npos) << d.message;
    EXPECT_EQ(d.identity, nullptr);
  }
}

TEST_F(NodeAuth, UntrustedTextIsQuotedSafelyAndBounded) {
  std::string id = "spiffe://example.org/a\"b\\c\r\n" + std::string(500, 'x');
  mt_node_auth_decision d = Decide(kNodeAgent, "node-1", id.c_str());
  EXPECT_STREQ(d.reason, "bad_impersonated_identity");
  std::string message = d.message;
  EXPECT_NE(message.find("spiffe://example.org/a?b?c??xxx"), std::string::npos) << message;
  EXPECT_NE(message.find("...\""), std::string::npos) << message;
  EXPECT_LT(message.size(), 400u);
}

TEST_F(NodeAuth, ChecksRunInTheDocumentedOrder) {
  // not a node agent > no node claim > bad identity > not on the node
  EXPECT_STREQ(Decide(kFrontend, nullptr, "garbage").reason, "not_node_agent");
  EXPECT_STREQ(Decide(kNodeAgent, nullptr, "garbage").reason, "no_node_claim");
  EXPECT_STREQ(Decide(kNodeAgent, "Bad_Node", "garbage").reason, "bad_node_claim");
  EXPECT_STREQ(Decide(kNodeAgent, "node-9", "garbage").reason, "bad_impersonated_identity");
  EXPECT_STREQ(Decide(kNodeAgent, "node-9", kFrontend).reason, "not_on_node");
}

TEST_F(NodeAuth, WithoutNodeAgentsOrARegistryNobodyImpersonates) {
  policy_.workloads = nullptr;
  EXPECT_STREQ(Decide(kNodeAgent, "node-1", kFrontend).reason, "not_on_node");
  policy_.workloads = workloads_;
  policy_.num_node_agents = 0;
  EXPECT_STREQ(Decide(kNodeAgent, "node-1", kFrontend).reason, "not_node_agent");
  EXPECT_EQ(Decide(kNodeAgent, "node-1", nullptr).status, MT_GRPC_OK);
}

TEST_F(NodeAuth, BeforeTheClusterIsListedAWorkloadIsAnsweredRetryNotRefused) {
  // mtls-ca started, the Kubernetes API not listed yet: an empty state says
  // nothing about who runs where.
  mt_cluster_state *cluster = mt_cluster_state_new("example.org");
  ASSERT_NE(cluster, nullptr);
  policy_.cluster = cluster;
  policy_.cluster_not_synced = 1;
  mt_node_auth_decision d = Decide(kNodeAgent, "node-1", kFrontend);
  EXPECT_EQ(d.status, MT_GRPC_UNAVAILABLE);
  EXPECT_STREQ(d.reason, "cluster_not_synced");
  EXPECT_STREQ(d.message,
               "the Kubernetes API has not been listed yet, so whether "
               "spiffe://example.org/ns/demo/sa/frontend runs on node node-1 is not known; "
               "retry");
  EXPECT_EQ(d.identity, nullptr);
  // What needs no cluster state is decided as always, before it.
  EXPECT_STREQ(Decide(kFrontend, "node-1", kFrontend).reason, "not_node_agent");
  EXPECT_STREQ(Decide(kNodeAgent, "node-1", "garbage").reason, "bad_impersonated_identity");
  EXPECT_EQ(Decide(kNodeAgent, "node-1", nullptr).status, MT_GRPC_OK);
  // Once listed, an empty state is an answer: nobody runs there.
  policy_.cluster_not_synced = 0;
  EXPECT_STREQ(Decide(kNodeAgent, "node-1", kFrontend).reason, "not_on_node");
  mt_cluster_state_free(cluster);
}

// NodeInfo: the node a caller learns about is its token's, and only a node
// agent may ask.
mt_node_auth_decision NodeOf(const mt_node_auth_policy &policy, const char *caller,
                             const char *node) {
  mt_node_auth_request request = {caller, node, "spiffe://example.org/ns/demo/sa/ignored"};
  mt_node_auth_decision d;
  mt_node_auth_node_of(&policy, &request, &d);
  return d;
}

TEST_F(NodeAuth, NodeInfoAnswersANodeAgentAboutTheNodeItsTokenNames) {
  mt_node_auth_decision d = NodeOf(policy_, kNodeAgent, "node-2");
  EXPECT_EQ(d.status, MT_GRPC_OK);
  EXPECT_STREQ(d.reason, "ok");
  EXPECT_STREQ(d.identity, "node-2");
}

TEST_F(NodeAuth, NodeInfoRefusesAWorkloadEvenWithANodeClaim) {
  mt_node_auth_decision d = NodeOf(policy_, kFrontend, "node-1");
  EXPECT_EQ(d.status, MT_GRPC_PERMISSION_DENIED);
  EXPECT_STREQ(d.reason, "not_node_agent");
  EXPECT_STREQ(d.message,
               "caller spiffe://example.org/ns/demo/sa/frontend is not a node agent "
               "(node_agents), so it may not ask for a node's pod CIDRs");
  EXPECT_EQ(d.identity, nullptr);
}

TEST_F(NodeAuth, NodeInfoRefusesANodeAgentWithoutAUsableNodeClaim) {
  for (const char *node : {"", static_cast<const char *>(nullptr)}) {
    mt_node_auth_decision d = NodeOf(policy_, kNodeAgent, node);
    EXPECT_EQ(d.status, MT_GRPC_PERMISSION_DENIED);
    EXPECT_STREQ(d.reason, "no_node_claim");
    EXPECT_NE(std::string(d.message).find("NodeInfo needs a token bound to a pod on a node"),
              std::string::npos)
        << d.message;
  }
  mt_node_auth_decision d = NodeOf(policy_, kNodeAgent, "../nodes/other");
  EXPECT_EQ(d.status, MT_GRPC_PERMISSION_DENIED);
  EXPECT_STREQ(d.reason, "bad_node_claim");
}

}  // namespace
