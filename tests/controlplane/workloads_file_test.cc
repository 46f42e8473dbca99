// The workload registry file (which identity runs on which node): what it
// accepts, how it answers, and the "file:line: what is wrong" it gives for
// everything it refuses.
#include "controlplane/workloads_file.h"

#include <string>

#include <gtest/gtest.h>

#include "tests/controlplane/test_files.h"

namespace {

const char kFrontend[] = "spiffe://example.org/ns/demo/sa/frontend";
const char kBackend[] = "spiffe://example.org/ns/demo/sa/backend";

class WorkloadsFile : public ::testing::Test {
 protected:
  void TearDown() override { mt_workloads_free(workloads_); }

  // Loads |yaml| as workloads.yaml in trust domain example.org.
  bool Load(const std::string &yaml) {
    std::string path = dir_.Write("workloads.yaml", yaml);
    char err[1024] = "";
    mt_workloads_free(workloads_);
    workloads_ = mt_workloads_load(path.c_str(), "example.org", err, sizeof(err));
    error_ = err;
    return workloads_ != nullptr;
  }

  // The error of a refused |yaml|, "workloads.yaml:" and all.
  std::string Refusal(const std::string &yaml) {
    if (Load(yaml)) return "<accepted>";
    std::string prefix = dir_.path() + "/";
    return error_.rfind(prefix, 0) == 0 ? error_.substr(prefix.size()) : error_;
  }

  mt_test::ScratchDir dir_;
  mt_workloads *workloads_ = nullptr;
  std::string error_;
};

TEST_F(WorkloadsFile, ListsEachIdentityOnItsNodeOnly) {
  ASSERT_TRUE(
      Load("workloads:\n"
           "  - node: node-1\n"
           "    spiffe_id: spiffe://example.org/ns/demo/sa/frontend\n"
           "    address: 10.77.1.2\n"
           "  - node: node-2.example.internal\n"
           "    spiffe_id: spiffe://example.org/ns/demo/sa/backend\n"
           "  - node: node-1\n"
           "    spiffe_id: spiffe://example.org/ns/demo/sa/backend\n"
           "    address: \"fd00::7\"\n"))
      << error_;
  EXPECT_EQ(mt_workloads_count(workloads_), 3u);
  EXPECT_EQ(mt_workloads_node_count(workloads_), 2u);
  EXPECT_TRUE(mt_workloads_on_node(workloads_, "node-1", kFrontend));
  EXPECT_TRUE(mt_workloads_on_node(workloads_, "node-1", kBackend));
  EXPECT_TRUE(mt_workloads_on_node(workloads_, "node-2.example.internal", kBackend));
  EXPECT_FALSE(mt_workloads_on_node(workloads_, "node-2.example.internal", kFrontend));
  EXPECT_FALSE(mt_workloads_on_node(workloads_, "node-3", kFrontend));
}

TEST_F(WorkloadsFile, ComparesNodesAndIdentitiesExactly) {
  ASSERT_TRUE(
      Load("workloads:\n"
           "  - {node: node-1, spiffe_id: 'spiffe://example.org/ns/demo/sa/frontend'}\n"))
      << error_;
  EXPECT_FALSE(mt_workloads_on_node(workloads_, "node-10", kFrontend));
  EXPECT_FALSE(mt_workloads_on_node(workloads_, "node-", kFrontend));
  EXPECT_FALSE(mt_workloads_on_node(workloads_, "NODE-1", kFrontend));
  EXPECT_FALSE(mt_workloads_on_node(workloads_, "node-1", "spiffe://example.org/ns/demo/sa/front"));
  EXPECT_FALSE(
      mt_workloads_on_node(workloads_, "node-1", "spiffe://example.org/ns/demo/sa/frontend/x"));
  EXPECT_FALSE(mt_workloads_on_node(workloads_, "", kFrontend));
}

TEST_F(WorkloadsFile, AnEmptyListIsARegistryWithNobody) {
  ASSERT_TRUE(Load("workloads: []\n")) << error_;
  EXPECT_EQ(mt_workloads_count(workloads_), 0u);
  EXPECT_FALSE(mt_workloads_on_node(workloads_, "node-1", kFrontend));
}

TEST_F(WorkloadsFile, ReplicasOfOneIdentityOnOneNodeAreFine) {
  ASSERT_TRUE(
      Load("workloads:\n"
           "  - {node: node-1, spiffe_id: 'spiffe://example.org/ns/demo/sa/frontend',"
           " address: 10.0.0.1}\n"
           "  - {node: node-1, spiffe_id: 'spiffe://example.org/ns/demo/sa/frontend',"
           " address: 10.0.0.2}\n"))
      << error_;
  EXPECT_TRUE(mt_workloads_on_node(workloads_, "node-1", kFrontend));
}

TEST_F(WorkloadsFile, UnknownKeysAreRefusedAtTheirLine) {
  EXPECT_EQ(Refusal("workloads:\n"
                    "  - node: node-1\n"
                    "    spiffe_id: spiffe://example.org/ns/demo/sa/frontend\n"
                    "    namespace: demo\n"),
            "workloads.yaml:4: unknown key 'workloads[].namespace'");
  EXPECT_EQ(Refusal("workloads: []\nnodes: []\n"), "workloads.yaml:2: unknown key 'nodes'");
}

TEST_F(WorkloadsFile, DuplicateKeysAreRefusedAtTheirLine) {
  EXPECT_EQ(Refusal("workloads:\n"
                    "  - node: node-1\n"
                    "    spiffe_id: spiffe://example.org/ns/demo/sa/frontend\n"
                    "    node: node-2\n"),
            "workloads.yaml:4: duplicate key 'node'");
  EXPECT_EQ(Refusal("workloads: []\nworkloads: []\n"),
            "workloads.yaml:2: duplicate key 'workloads'");
}

TEST_F(WorkloadsFile, AnEntryListedTwiceIsRefusedAtTheRepeat) {
  EXPECT_EQ(Refusal("workloads:\n"
                    "  - node: node-2\n"
                    "    spiffe_id: spiffe://example.org/ns/demo/sa/backend\n"
                    "  - node: node-1\n"
                    "    spiffe_id: spiffe://example.org/ns/demo/sa/frontend\n"
                    "  - node: node-2\n"
                    "    spiffe_id: spiffe://example.org/ns/demo/sa/backend\n"),
            "workloads.yaml:6: workload 'spiffe://example.org/ns/demo/sa/backend' on node "
            "'node-2' is listed twice (first at line 2)");
}

TEST_F(WorkloadsFile, BadSpiffeIdsAreRefusedAtTheirLine) {
  EXPECT_EQ(Refusal("workloads:\n"
                    "  - node: node-1\n"
                    "    spiffe_id: spiffe://example.org/ns//sa/frontend\n"),
            "workloads.yaml:3: invalid SPIFFE ID 'spiffe://example.org/ns//sa/frontend': "
            "path has an empty segment (\"//\" or a trailing \"/\")");
  EXPECT_EQ(Refusal("workloads:\n"
                    "  - node: node-1\n"
                    "    spiffe_id: https://example.org/ns/demo/sa/frontend\n")
                .rfind("workloads.yaml:3: invalid SPIFFE ID 'https://", 0),
            0u);
  EXPECT_EQ(Refusal("workloads:\n"
                    "  - node: node-1\n"
                    "    spiffe_id: spiffe://example.org\n"),
            "workloads.yaml:3: SPIFFE ID 'spiffe://example.org' has no path (a workload "
            "identity needs one)");
}

TEST_F(WorkloadsFile, IdentitiesOfAnotherTrustDomainAreRefused) {
  EXPECT_EQ(Refusal("workloads:\n"
                    "  - node: node-1\n"
                    "    spiffe_id: spiffe://example.org/ns/demo/sa/frontend\n"
                    "  - node: node-1\n"
                    "    spiffe_id: spiffe://other.org/ns/demo/sa/frontend\n"),
            "workloads.yaml:5: SPIFFE ID 'spiffe://other.org/ns/demo/sa/frontend' is not in the "
            "trust domain 'example.org'");
}

TEST_F(WorkloadsFile, BadNodeNamesAndAddressesAreRefused) {
  const char *id_line = "    spiffe_id: spiffe://example.org/ns/demo/sa/frontend\n";
  for (const char *node : {"Node-1", "node_1", "-node", "node-", "node..1", "\"\""}) {
    std::string refusal = Refusal(std::string("workloads:\n  - node: ") + node + "\n" + id_line);
    EXPECT_EQ(refusal.rfind("workloads.yaml:2: ", 0), 0u) << node << ": " << refusal;
  }
  EXPECT_EQ(Refusal(std::string("workloads:\n  - node: node-1\n") + id_line +
                    "    address: 10.0.0.1:8080\n"),
            "workloads.yaml:4: 'address' must be an IPv4 or IPv6 address, got '10.0.0.1:8080'");
}

TEST_F(WorkloadsFile, MissingPiecesAreRefused) {
  EXPECT_EQ(Refusal("workloads:\n  - node: node-1\n"),
            "workloads.yaml:2: workload needs 'spiffe_id'");
  EXPECT_EQ(Refusal("workloads:\n  - spiffe_id: spiffe://example.org/ns/a/sa/b\n"),
            "workloads.yaml:2: workload needs 'node'");
  EXPECT_EQ(Refusal("{}\n"), "workloads.yaml:1: missing required key 'workloads'");
  EXPECT_EQ(Refusal("workloads: node-1\n"), "workloads.yaml:1: workloads must be a list");
  EXPECT_EQ(Refusal(""), "workloads.yaml:1: the file is empty");
  EXPECT_EQ(Refusal("workloads:\n  - [node-1]\n"),
            "workloads.yaml:2: a workload must be a mapping");
}

TEST_F(WorkloadsFile, AMissingFileIsReportedAtLineOne) {
  char err[1024] = "";
  std::string path = dir_.path() + "/nowhere.yaml";
  EXPECT_EQ(mt_workloads_load(path.c_str(), "example.org", err, sizeof(err)), nullptr);
  EXPECT_EQ(std::string(err), path + ":1: cannot open: No such file or directory");
}

TEST(NodeName, FollowsKubernetesDnsSubdomainRules) {
  EXPECT_TRUE(mt_node_name_valid("node-1"));
  EXPECT_TRUE(mt_node_name_valid("ip-10-0-0-7.eu-west-1.compute.internal"));
  EXPECT_TRUE(mt_node_name_valid("a"));
  EXPECT_FALSE(mt_node_name_valid(""));
  EXPECT_FALSE(mt_node_name_valid(nullptr));
  EXPECT_FALSE(mt_node_name_valid("Node-1"));
  EXPECT_FALSE(mt_node_name_valid("node 1"));
  EXPECT_FALSE(mt_node_name_valid("node-1."));
  EXPECT_FALSE(mt_node_name_valid(".node-1"));
  EXPECT_FALSE(mt_node_name_valid("node\n1"));
  EXPECT_FALSE(mt_node_name_valid(std::string(64, 'a').c_str()));  // one label too long
  std::string longest;
  for (int i = 0; i < 4; i++) longest += std::string(i < 3 ? 63 : 61, 'a') + (i < 3 ? "." : "");
  EXPECT_EQ(longest.size(), 253u);
  EXPECT_TRUE(mt_node_name_valid(longest.c_str()));
  EXPECT_FALSE(mt_node_name_valid((longest + "a").c_str()));
}

}  // namespace
