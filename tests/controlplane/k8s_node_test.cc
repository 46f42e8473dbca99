// A Node object -> its pod CIDRs (controlplane/k8s_node.h), against the
// fixtures of tests/k8s/testdata, which are shaped as `kubectl get node -o
// json` prints them, and against objects broken field by field.
#include "controlplane/k8s_node.h"

#include <jansson.h>

#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "tests/controlplane/k8s_fixture.h"

namespace {

std::string ReadFixture(const std::string &name) {
  std::ifstream in("tests/k8s/testdata/" + name);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_FALSE(text.str().empty()) << name;
  return text.str();
}

// Parses |text|; returns "" on success, else the error.
std::string Parse(const std::string &text, mt_k8s_node *out) {
  char err[256] = "";
  if (mt_k8s_node_parse(text.data(), text.size(), out, err, sizeof(err))) return "";
  return err;
}

// The node.json fixture with |path| set to |value| (stolen), as text.
std::string NodeWith(const std::string &path, json_t *value) {
  mt_test::Json doc(mt_test::LoadK8sFixture("node.json"));
  mt_test::SetPath(doc, path, value);
  char *text = json_dumps(doc, 0);
  std::string out(text);
  free(text);
  return out;
}

TEST(K8sNode, AnIpv4NodeHasItsPodCidr) {
  mt_k8s_node node;
  ASSERT_EQ(Parse(ReadFixture("node.json"), &node), "");
  EXPECT_STREQ(node.name, "node-1");
  ASSERT_EQ(node.num_pod_cidrs, 1u);
  EXPECT_STREQ(node.pod_cidrs[0], "10.244.1.0/24");
}

TEST(K8sNode, ADualStackNodeHasBothFamiliesInApiOrder) {
  mt_k8s_node node;
  ASSERT_EQ(Parse(ReadFixture("node-dual-stack.json"), &node), "");
  EXPECT_STREQ(node.name, "node-2");
  ASSERT_EQ(node.num_pod_cidrs, 2u);
  EXPECT_STREQ(node.pod_cidrs[0], "10.244.2.0/24");
  EXPECT_STREQ(node.pod_cidrs[1], "fd00:10:244:2::/64");
}

TEST(K8sNode, ANodeWithoutPodCidrsIsReadWithNone) {
  mt_k8s_node node;
  ASSERT_EQ(Parse(ReadFixture("node-no-cidrs.json"), &node), "");
  EXPECT_STREQ(node.name, "node-3");
  EXPECT_EQ(node.num_pod_cidrs, 0u);
}

TEST(K8sNode, AnOldObjectWithOnlyPodCidrIsRead) {
  mt_k8s_node node;
  ASSERT_EQ(Parse(ReadFixture("node-legacy.json"), &node), "");
  ASSERT_EQ(node.num_pod_cidrs, 1u);
  EXPECT_STREQ(node.pod_cidrs[0], "10.244.9.0/24");
}

TEST(K8sNode, PodCidrsWinOverPodCidr) {
  mt_k8s_node node;
  std::string text = NodeWith("spec.podCIDRs", json_pack("[s]", "10.244.7.0/24"));
  ASSERT_EQ(Parse(text, &node), "");
  ASSERT_EQ(node.num_pod_cidrs, 1u);
  EXPECT_STREQ(node.pod_cidrs[0], "10.244.7.0/24");
}

TEST(K8sNode, CidrsAreKeptInCanonicalText) {
  mt_k8s_node node;
  std::string text = NodeWith("spec.podCIDRs", json_pack("[s]", "FD00:10:244:0002:0::/64"));
  ASSERT_EQ(Parse(text, &node), "");
  EXPECT_STREQ(node.pod_cidrs[0], "fd00:10:244:2::/64");
}

TEST(K8sNode, EmptyFieldsMeanNoCidrs) {
  mt_k8s_node node;
  mt_test::Json doc(mt_test::LoadK8sFixture("node.json"));
  json_object_set_new(json_object_get(doc, "spec"), "podCIDRs", json_array());
  json_object_set_new(json_object_get(doc, "spec"), "podCIDR", json_string(""));
  char *text = json_dumps(doc, 0);
  EXPECT_EQ(Parse(text, &node), "");
  free(text);
  EXPECT_EQ(node.num_pod_cidrs, 0u);
}

struct Refusal {
  const char *path;
  const char *value;  // JSON
  const char *error;
};

class K8sNodeRefuses : public ::testing::TestWithParam<Refusal> {};

TEST_P(K8sNodeRefuses, TheWholeObjectWithTheFieldNamed) {
  const Refusal &r = GetParam();
  json_error_t jerr;
  json_t *value = json_loads(r.value, JSON_DECODE_ANY, &jerr);
  ASSERT_NE(value, nullptr) << r.value;
  mt_k8s_node node;
  EXPECT_EQ(Parse(NodeWith(r.path, value), &node), r.error);
  EXPECT_EQ(node.num_pod_cidrs, 0u);
  EXPECT_STREQ(node.name, "");
}

INSTANTIATE_TEST_SUITE_P(
    Fields, K8sNodeRefuses,
    ::testing::Values(
        Refusal{"kind", "\"Pod\"", "node refused: kind: not Node"},
        Refusal{"metadata.name", "\"Node_1\"",
                "node refused: metadata.name: missing or not a DNS subdomain"},
        Refusal{"metadata.name", "7",
                "node refused: metadata.name: missing or not a DNS subdomain"},
        Refusal{"spec", "[]", "node refused: spec: not an object"},
        Refusal{"spec.podCIDRs", "\"10.244.1.0/24\"", "node refused: spec.podCIDRs: not an array"},
        Refusal{"spec.podCIDRs", "[\"10.244.1.0/24\", \"10.244.1.0/24\"]",
                "node refused: spec.podCIDRs: listed twice"},
        Refusal{"spec.podCIDRs", "[\"a/1\", \"b/1\", \"c/1\", \"d/1\", \"e/1\"]",
                "node refused: spec.podCIDRs: too many entries"},
        Refusal{"spec.podCIDRs", "[\"10.244.1.5/24\"]",
                "node refused: spec.podCIDRs: address bits are set beyond the /24 prefix"},
        Refusal{"spec.podCIDRs", "[\"10.244.1.0\"]",
                "node refused: spec.podCIDRs: not address/prefix"},
        Refusal{"spec.podCIDRs", "[\"10.244.1.0/33\"]",
                "node refused: spec.podCIDRs: the prefix length is not a number from 0 to 32"},
        Refusal{"spec.podCIDRs", "[\"10.244.1.0/+4\"]",
                "node refused: spec.podCIDRs: the prefix length is not a number from 0 to 32"},
        Refusal{"spec.podCIDRs", "[\"node-1/24\"]",
                "node refused: spec.podCIDRs: not an IP address before the '/'"},
        Refusal{"spec.podCIDRs", "[24]", "node refused: spec.podCIDRs: not a CIDR string"}));

TEST(K8sNode, ASpaceInTheLegacyFieldIsRefused) {
  mt_k8s_node node;
  mt_test::Json doc(mt_test::LoadK8sFixture("node-legacy.json"));
  json_object_set_new(json_object_get(doc, "spec"), "podCIDR", json_string("10.244.9.0/2x"));
  char *text = json_dumps(doc, 0);
  EXPECT_EQ(Parse(text, &node),
            "node refused: spec.podCIDR: the prefix length is not a number from 0 to 32");
  free(text);
}

TEST(K8sNode, NotJsonDuplicatesAndSizeAreRefused) {
  mt_k8s_node node;
  EXPECT_NE(Parse("{\"kind\": \"Node\",", &node).find("node refused: not JSON"), std::string::npos);
  std::string dup = "{\"metadata\": {\"name\": \"a\", \"name\": \"b\"}}";
  EXPECT_NE(Parse(dup, &node).find("node refused: not JSON"), std::string::npos);
  std::string huge(MT_K8S_NODE_MAX_BYTES + 1, ' ');
  EXPECT_EQ(Parse(huge, &node), "node refused: object: too large");
  EXPECT_EQ(Parse("[]", &node), "node refused: object: not a JSON object");
}

}  // namespace
