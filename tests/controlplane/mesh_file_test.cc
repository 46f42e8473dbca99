// The mesh file mtls-ca streams to agents: the MeshSnapshot it encodes, and
// the "file:line: what is wrong" it gives for everything it refuses.
#include "controlplane/mesh_file.h"

#include <string.h>

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "proto/mtlsd/mesh.pb-c.h"
#include "tests/controlplane/test_files.h"

namespace {

// Roots files every test can name: root.pem, root2.pem (two roots in one
// file), leaf.pem (not a CA) and key.pem (a private key).
class MeshFile : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = mt_test::SelfSignedPem("root one", true);
    root2a_ = mt_test::SelfSignedPem("root two a", true);
    root2b_ = mt_test::SelfSignedPem("root two b", true);
    dir_.Write("root.pem", root_);
    dir_.Write("root2.pem", root2a_ + "some commentary between blocks\n" + root2b_);
    dir_.Write("leaf.pem", mt_test::SelfSignedPem("leaf", false));
    dir_.Write("key.pem", root_ + mt_test::PrivateKeyPem());
  }
  void TearDown() override {
    mt_mesh_file_free(mesh_);
    if (snap_ != nullptr) mtlsd__mesh__v1__mesh_snapshot__free_unpacked(snap_, nullptr);
  }

  // Loads |yaml| as mesh.yaml; on success decodes the content into snap_.
  bool Load(const std::string &yaml, const char *own_td = "example.org") {
    path_ = dir_.Write("mesh.yaml", yaml);
    char err[1024] = "";
    mt_mesh_file_free(mesh_);
    mesh_ = mt_mesh_file_load(path_.c_str(), own_td, err, sizeof(err));
    error_ = err;
    if (mesh_ == nullptr) return false;
    size_t len;
    const uint8_t *content = mt_mesh_file_content(mesh_, &len);
    if (snap_ != nullptr) mtlsd__mesh__v1__mesh_snapshot__free_unpacked(snap_, nullptr);
    snap_ = mtlsd__mesh__v1__mesh_snapshot__unpack(nullptr, len, content);
    return snap_ != nullptr;
  }

  mt_test::ScratchDir dir_;
  std::string root_, root2a_, root2b_, path_, error_;
  mt_mesh_file *mesh_ = nullptr;
  Mtlsd__Mesh__V1__MeshSnapshot *snap_ = nullptr;
};

const char kBundle[] =
    "trust_bundles:\n"
    "  - trust_domain: example.org\n"
    "    roots_files: [root.pem]\n";

// The example of the reference documentation, line for line.
const char kExample[] =
    "trust_bundles:\n"
    "  - trust_domain: example.org\n"
    "    roots_files: [root.pem, root2.pem]\n"
    "policy:\n"
    "  default: allow\n"
    "  rules:\n"
    "    - name: frontend-only\n"
    "      action: allow\n"
    "      ports: [8080]\n"
    "      from: [{id: spiffe://example.org/ns/default/sa/frontend},"
    " {prefix: \"spiffe://example.org/ns/prod/*\"}, {namespace: prod},"
    " {trust_domain: example.org}, {any: true}]\n"
    "destinations:\n"
    "  - address: 127.0.0.1:15006\n"
    "    spiffe_id: spiffe://example.org/ns/default/sa/backend\n"
    "workload_policies:\n"
    "  - spiffe_id: spiffe://example.org/ns/demo/sa/cache\n"
    "    policy:\n"
    "      default: deny\n"
    "      rules:\n"
    "        - name: frontend-only\n"
    "          action: allow\n"
    "          ports: [6379]\n"
    "          from: [{id: spiffe://example.org/ns/demo/sa/frontend}]\n";

std::string Trim(const std::string &s) {
  size_t end = s.find_last_not_of("\n");
  return s.substr(0, end + 1);
}

TEST_F(MeshFile, EncodesTheReferenceExample) {
  ASSERT_TRUE(Load(kExample)) << error_;
  EXPECT_STREQ(snap_->version, "");
  ASSERT_EQ(snap_->n_trust_bundles, 1u);
  const Mtlsd__Mesh__V1__TrustBundle *b = snap_->trust_bundles[0];
  EXPECT_STREQ(b->trust_domain, "example.org");
  // One entry per root, in file order, commentary between blocks dropped.
  ASSERT_EQ(b->n_roots_pem, 3u);
  EXPECT_EQ(Trim(b->roots_pem[0]), Trim(root_));
  EXPECT_EQ(Trim(b->roots_pem[1]), Trim(root2a_));
  EXPECT_EQ(Trim(b->roots_pem[2]), Trim(root2b_));

  ASSERT_NE(snap_->policy, nullptr);
  EXPECT_EQ(snap_->policy->default_action, MTLSD__MESH__V1__ACTION__ALLOW);
  ASSERT_EQ(snap_->policy->n_rules, 1u);
  const Mtlsd__Mesh__V1__Rule *r = snap_->policy->rules[0];
  EXPECT_STREQ(r->name, "frontend-only");
  EXPECT_EQ(r->action, MTLSD__MESH__V1__ACTION__ALLOW);
  ASSERT_EQ(r->n_ports, 1u);
  EXPECT_EQ(r->ports[0], 8080u);
  ASSERT_EQ(r->n_from, 5u);
  EXPECT_EQ(r->from[0]->kind_case, MTLSD__MESH__V1__MATCHER__KIND_ID);
  EXPECT_STREQ(r->from[0]->id, "spiffe://example.org/ns/default/sa/frontend");
  EXPECT_EQ(r->from[1]->kind_case, MTLSD__MESH__V1__MATCHER__KIND_PREFIX);
  EXPECT_STREQ(r->from[1]->prefix, "spiffe://example.org/ns/prod/*");  // the agent drops the '*'
  EXPECT_EQ(r->from[2]->kind_case, MTLSD__MESH__V1__MATCHER__KIND_NAMESPACE);
  EXPECT_STREQ(r->from[2]->namespace_, "prod");
  EXPECT_EQ(r->from[3]->kind_case, MTLSD__MESH__V1__MATCHER__KIND_TRUST_DOMAIN);
  EXPECT_STREQ(r->from[3]->trust_domain, "example.org");
  EXPECT_EQ(r->from[4]->kind_case, MTLSD__MESH__V1__MATCHER__KIND_ANY);
  EXPECT_TRUE(r->from[4]->any);

  ASSERT_EQ(snap_->n_destinations, 1u);
  EXPECT_STREQ(snap_->destinations[0]->address, "127.0.0.1:15006");
  EXPECT_STREQ(snap_->destinations[0]->spiffe_id, "spiffe://example.org/ns/default/sa/backend");

  // A rule name need only be unique within its own policy.
  ASSERT_EQ(snap_->n_workload_policies, 1u);
  const Mtlsd__Mesh__V1__WorkloadPolicy *wp = snap_->workload_policies[0];
  EXPECT_STREQ(wp->spiffe_id, "spiffe://example.org/ns/demo/sa/cache");
  ASSERT_NE(wp->policy, nullptr);
  EXPECT_EQ(wp->policy->default_action, MTLSD__MESH__V1__ACTION__DENY);
  ASSERT_EQ(wp->policy->n_rules, 1u);
  const Mtlsd__Mesh__V1__Rule *w = wp->policy->rules[0];
  EXPECT_STREQ(w->name, "frontend-only");
  EXPECT_EQ(w->action, MTLSD__MESH__V1__ACTION__ALLOW);
  ASSERT_EQ(w->n_ports, 1u);
  EXPECT_EQ(w->ports[0], 6379u);
  ASSERT_EQ(w->n_from, 1u);
  EXPECT_EQ(w->from[0]->kind_case, MTLSD__MESH__V1__MATCHER__KIND_ID);
  EXPECT_STREQ(w->from[0]->id, "spiffe://example.org/ns/demo/sa/frontend");
}

TEST_F(MeshFile, ASnapshotTooLargeForAgentsIsRefused) {
  // Five roots files just under their own 1 MiB limit: over 4 MiB together.
  std::string many;
  while (many.size() + root_.size() < 1000 * 1000) many += root_;
  std::string files;
  for (int i = 0; i < 5; i++) {
    std::string name = "many" + std::to_string(i) + ".pem";
    dir_.Write(name, many);
    files += (i ? ", " : "") + name;
  }
  EXPECT_FALSE(Load("trust_bundles:\n"
                    "  - trust_domain: example.org\n"
                    "    roots_files: [" + files + "]\n"));
  EXPECT_NE(error_.find(path_ + ":1: the snapshot would be "), std::string::npos) << error_;
  EXPECT_NE(error_.find("agents accept at most 4190208"), std::string::npos) << error_;
}

TEST_F(MeshFile, EncodeSetsTheVersionAndNothingElse) {
  ASSERT_TRUE(Load(kExample)) << error_;
  size_t len;
  uint8_t *bytes = mt_mesh_file_encode(mesh_, "7-abc", &len);
  ASSERT_NE(bytes, nullptr);
  Mtlsd__Mesh__V1__MeshSnapshot *s = mtlsd__mesh__v1__mesh_snapshot__unpack(nullptr, len, bytes);
  ASSERT_NE(s, nullptr);
  EXPECT_STREQ(s->version, "7-abc");
  EXPECT_EQ(s->n_trust_bundles, 1u);
  EXPECT_EQ(s->policy->n_rules, 1u);
  EXPECT_EQ(s->n_destinations, 1u);
  EXPECT_EQ(s->n_workload_policies, 1u);
  mtlsd__mesh__v1__mesh_snapshot__free_unpacked(s, nullptr);
  free(bytes);
}

TEST_F(MeshFile, ListsTheFilesItWasBuiltFrom) {
  ASSERT_TRUE(Load(kExample)) << error_;
  const char *const *paths;
  size_t n = mt_mesh_file_sources(mesh_, &paths);
  ASSERT_EQ(n, 3u);
  EXPECT_EQ(std::string(paths[0]), path_);
  EXPECT_EQ(std::string(paths[1]), dir_.path() + "/root.pem");
  EXPECT_EQ(std::string(paths[2]), dir_.path() + "/root2.pem");
}

TEST_F(MeshFile, SameContentSameDigestDifferentContentDifferentDigest) {
  ASSERT_TRUE(Load(kExample)) << error_;
  std::vector<uint8_t> first(mt_mesh_file_digest(mesh_),
                             mt_mesh_file_digest(mesh_) + MT_MESH_DIGEST_LEN);
  ASSERT_TRUE(Load(std::string("# a comment changes nothing an agent sees\n") + kExample));
  EXPECT_EQ(0, memcmp(first.data(), mt_mesh_file_digest(mesh_), MT_MESH_DIGEST_LEN));
  std::string changed = kExample;
  changed.replace(changed.find("[8080]"), 6, "[8081]");
  ASSERT_TRUE(Load(changed)) << error_;
  EXPECT_NE(0, memcmp(first.data(), mt_mesh_file_digest(mesh_), MT_MESH_DIGEST_LEN));
}

TEST_F(MeshFile, EditingAWorkloadPolicyChangesTheDigest) {
  ASSERT_TRUE(Load(kExample)) << error_;
  std::vector<uint8_t> first(mt_mesh_file_digest(mesh_),
                             mt_mesh_file_digest(mesh_) + MT_MESH_DIGEST_LEN);
  std::string changed = kExample;
  changed.replace(changed.find("[6379]"), 6, "[6380]");
  ASSERT_TRUE(Load(changed)) << error_;
  EXPECT_NE(0, memcmp(first.data(), mt_mesh_file_digest(mesh_), MT_MESH_DIGEST_LEN));
}

TEST_F(MeshFile, BundlesAloneMeanAllowByDefault) {
  ASSERT_TRUE(Load(kBundle)) << error_;
  ASSERT_NE(snap_->policy, nullptr);
  EXPECT_EQ(snap_->policy->default_action, MTLSD__MESH__V1__ACTION__ALLOW);
  EXPECT_EQ(snap_->policy->n_rules, 0u);
  EXPECT_EQ(snap_->n_destinations, 0u);
  EXPECT_EQ(snap_->n_workload_policies, 0u);
}

TEST_F(MeshFile, WorkloadPoliciesKeepFileOrderAndDefaultToAllow) {
  ASSERT_TRUE(Load(std::string(kBundle) + "workload_policies:\n"
                                          "  - spiffe_id: spiffe://example.org/ns/demo/sa/db\n"
                                          "    policy: {}\n"
                                          "  - spiffe_id: spiffe://example.org/ns/demo/sa/cache\n"
                                          "    policy: {default: deny}\n"))
      << error_;
  // The top-level policy is unaffected by the workloads' ones.
  EXPECT_EQ(snap_->policy->default_action, MTLSD__MESH__V1__ACTION__ALLOW);
  ASSERT_EQ(snap_->n_workload_policies, 2u);
  EXPECT_STREQ(snap_->workload_policies[0]->spiffe_id, "spiffe://example.org/ns/demo/sa/db");
  EXPECT_EQ(snap_->workload_policies[0]->policy->default_action, MTLSD__MESH__V1__ACTION__ALLOW);
  EXPECT_EQ(snap_->workload_policies[0]->policy->n_rules, 0u);
  EXPECT_STREQ(snap_->workload_policies[1]->spiffe_id, "spiffe://example.org/ns/demo/sa/cache");
  EXPECT_EQ(snap_->workload_policies[1]->policy->default_action, MTLSD__MESH__V1__ACTION__DENY);
}

TEST_F(MeshFile, EmptyWorkloadPoliciesListIsFine) {
  ASSERT_TRUE(Load(std::string(kBundle) + "workload_policies: []\n")) << error_;
  EXPECT_EQ(snap_->n_workload_policies, 0u);
}

// Without the control plane's trust domain any workload ID is accepted, as
// long as it is one: a valid SPIFFE ID with a path.
TEST_F(MeshFile, WithoutAnOwnTrustDomainWorkloadIdsNeedOnlyAPath) {
  ASSERT_TRUE(
      Load("workload_policies:\n"
           "  - {spiffe_id: spiffe://partner.org/ns/a/sa/b, policy: {}}\n",
           nullptr))
      << error_;
  ASSERT_EQ(snap_->n_workload_policies, 1u);
  EXPECT_STREQ(snap_->workload_policies[0]->spiffe_id, "spiffe://partner.org/ns/a/sa/b");
  EXPECT_FALSE(
      Load("workload_policies:\n"
           "  - {spiffe_id: spiffe://partner.org, policy: {}}\n",
           nullptr));
  EXPECT_NE(error_.find("mesh.yaml:2: SPIFFE ID 'spiffe://partner.org' has no path"),
            std::string::npos)
      << error_;
}

TEST_F(MeshFile, DefaultDenyAndDenyRulesAndEveryPort) {
  ASSERT_TRUE(Load(std::string(kBundle) + "policy:\n"
                                          "  rules:\n"
                                          "    - name: no-legacy\n"
                                          "      action: DENY\n"
                                          "      from: [{namespace: legacy}]\n"
                                          "  default: deny\n"))
      << error_;
  EXPECT_EQ(snap_->policy->default_action, MTLSD__MESH__V1__ACTION__DENY);
  ASSERT_EQ(snap_->policy->n_rules, 1u);
  EXPECT_EQ(snap_->policy->rules[0]->action, MTLSD__MESH__V1__ACTION__DENY);
  EXPECT_EQ(snap_->policy->rules[0]->n_ports, 0u);
}

TEST_F(MeshFile, OtherTrustDomainsAndIpv6Destinations) {
  ASSERT_TRUE(Load(std::string(kBundle) + "  - trust_domain: partner.org\n"
                                          "    roots_files: [root2.pem]\n"
                                          "destinations:\n"
                                          "  - address: \"[fd00::7]:15006\"\n"
                                          "    spiffe_id: spiffe://partner.org/ns/x/sa/y\n"))
      << error_;
  ASSERT_EQ(snap_->n_trust_bundles, 2u);
  EXPECT_STREQ(snap_->trust_bundles[1]->trust_domain, "partner.org");
  EXPECT_EQ(snap_->trust_bundles[1]->n_roots_pem, 2u);
  EXPECT_STREQ(snap_->destinations[0]->address, "[fd00::7]:15006");
}

TEST_F(MeshFile, DestinationsTakeSeveralIdsAndAnIpAlone) {
  ASSERT_TRUE(Load(std::string(kBundle) + "destinations:\n"
                                          "  - address: 10.96.0.10:80\n"
                                          "    spiffe_ids:\n"
                                          "      - spiffe://example.org/ns/a/sa/x\n"
                                          "      - spiffe://example.org/ns/a/sa/y\n"
                                          "  - address: fd00::7\n"
                                          "    spiffe_id: spiffe://example.org/ns/a/sa/p\n"))
      << error_;
  ASSERT_EQ(snap_->n_destinations, 2u);
  ASSERT_EQ(snap_->destinations[0]->n_spiffe_ids, 2u);
  EXPECT_STREQ(snap_->destinations[0]->spiffe_ids[1], "spiffe://example.org/ns/a/sa/y");
  EXPECT_STREQ(snap_->destinations[1]->address, "fd00::7");
  EXPECT_FALSE(Load(std::string(kBundle) + "destinations:\n"
                                           "  - address: 10.96.0.10:80\n"
                                           "    spiffe_ids: []\n"));
  EXPECT_NE(error_.find("destination needs 'spiffe_id' or a non-empty 'spiffe_ids'"),
            std::string::npos)
      << error_;
  EXPECT_FALSE(Load(std::string(kBundle) + "destinations:\n"
                                           "  - address: backend.svc\n"
                                           "    spiffe_id: spiffe://example.org/ns/a/sa/x\n"));
  EXPECT_NE(error_.find("'address' must be IP:port or an IP alone, got 'backend.svc'"),
            std::string::npos)
      << error_;
}

TEST_F(MeshFile, WithoutAnOwnTrustDomainNoBundleIsRequired) {
  ASSERT_TRUE(Load("destinations: []\n", nullptr)) << error_;
  EXPECT_EQ(snap_->n_trust_bundles, 0u);
}

TEST_F(MeshFile, RootsFilesMustHoldOnlyCaCertificates) {
  const std::string head = "trust_bundles:\n  - trust_domain: example.org\n    roots_files: ";
  EXPECT_FALSE(Load(head + "[leaf.pem]\n"));
  EXPECT_NE(error_.find("leaf.pem: certificate 1 is not a CA (basicConstraints CA:TRUE)"),
            std::string::npos)
      << error_;
  EXPECT_FALSE(Load(head + "[key.pem]\n"));
  EXPECT_NE(error_.find("key.pem: PEM block 2 is \"PRIVATE KEY\", not a CERTIFICATE"),
            std::string::npos)
      << error_;
  EXPECT_FALSE(Load(head + "[mesh.yaml]\n"));
  EXPECT_NE(error_.find("mesh.yaml: no PEM certificate found"), std::string::npos) << error_;
}

struct BadMesh {
  const char *name;
  std::string yaml;
  const char *expected;  // substring of the error, after "<dir>/mesh.yaml"
};

void PrintTo(const BadMesh &b, std::ostream *os) { *os << b.name; }

class MeshFileRefuses : public MeshFile, public ::testing::WithParamInterface<BadMesh> {};

TEST_P(MeshFileRefuses, WithFileAndLine) {
  EXPECT_FALSE(Load(GetParam().yaml));
  EXPECT_EQ(mesh_, nullptr);
  std::string want = dir_.path() + "/mesh.yaml" + GetParam().expected;
  EXPECT_NE(error_.find(want), std::string::npos) << "got: " << error_ << "\nwant: " << want;
}

// A rule at line 6 of a file whose first 3 lines are kBundle.
std::string Rule(const std::string &body) {
  return std::string(kBundle) + "policy:\n  rules:\n    - name: r\n" + body;
}

const std::string B = kBundle;

// workload_policies at line 4 of a file whose first 3 lines are kBundle;
// the first entry at line 5.
std::string Workloads(const std::string &entries) { return B + "workload_policies:\n" + entries; }

const char kCache[] = "spiffe://example.org/ns/demo/sa/cache";

// An entry for |id| whose policy is |policy| (lines indented below "policy:").
std::string Entry(const std::string &id, const std::string &policy) {
  return "  - spiffe_id: " + id + "\n    policy:" + policy;
}

// A workload policy with one rule "r" at line 8: the entry at line 5.
std::string WorkloadRule(const std::string &body) {
  return Workloads(Entry(kCache, "\n      rules:\n        - name: r\n" + body));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, MeshFileRefuses,
    ::testing::Values(
        BadMesh{"Empty", "", ":1: the file is empty"},
        BadMesh{"SyntaxError", B + "policy: {default: [\n", ":5: YAML syntax error"},
        BadMesh{"UnknownTopKey", B + "listeners: []\n", ":4: unknown key 'listeners'"},
        BadMesh{"NoOwnBundle", "destinations: []\n",
                ":1: no trust bundle for the control plane's trust domain 'example.org'"},
        BadMesh{"BadTrustDomain", "trust_bundles:\n  - trust_domain: Example.org\n",
                ":2: invalid trust domain 'Example.org'"},
        BadMesh{"BundleWithoutRoots", "trust_bundles:\n  - trust_domain: example.org\n",
                ":2: trust bundle needs 'roots_files'"},
        BadMesh{"EmptyRootsList",
                "trust_bundles:\n  - trust_domain: example.org\n    roots_files: []\n",
                ":3: 'roots_files' must list at least one file"},
        BadMesh{"RootsFileMissing",
                "trust_bundles:\n  - trust_domain: example.org\n    roots_files: [nope.pem]\n",
                ":3: roots file "},
        BadMesh{"RootsFileHoldsALeaf",
                "trust_bundles:\n  - trust_domain: example.org\n    roots_files: [leaf.pem]\n",
                ":3: roots file "},
        BadMesh{"RootsFileHoldsAKey",
                "trust_bundles:\n  - trust_domain: example.org\n    roots_files: [key.pem]\n",
                ":3: roots file "},
        BadMesh{"TwoBundlesForOneDomain",
                B + "  - trust_domain: example.org\n    roots_files: [root2.pem]\n",
                ":4: trust domain 'example.org' has two bundles"},
        BadMesh{"UnknownBundleKey", B + "    file: root.pem\n",
                ":4: unknown key 'trust_bundles[].file'"},
        BadMesh{"BadDefault", B + "policy:\n  default: maybe\n",
                ":5: 'default' must be allow or deny, got 'maybe'"},
        BadMesh{"BadAction", Rule("      action: permit\n      from: [{any: true}]\n"),
                ":7: 'action' must be allow or deny, got 'permit'"},
        BadMesh{"RuleWithoutAction", Rule("      from: [{any: true}]\n"),
                ":6: policy rule 'r' needs 'action'"},
        BadMesh{"RuleWithoutFrom", Rule("      action: allow\n"),
                ":6: policy rule 'r' needs 'from'"},
        BadMesh{"RuleWithoutName", B + "policy:\n  rules:\n    - action: allow\n",
                ":6: policy rule needs 'name'"},
        BadMesh{"DuplicateRuleName",
                Rule("      action: allow\n      from: [{any: true}]\n"
                     "    - name: r\n      action: deny\n      from: [{any: true}]\n"),
                ":9: policy rule 'r': rule \"r\": duplicate rule name"},
        BadMesh{"PortZero",
                Rule("      action: allow\n      ports: [0]\n      from: [{any: true}]\n"),
                ":8: 'ports[]' must be between 1 and 65535, got 0"},
        BadMesh{"PortTooLarge",
                Rule("      action: allow\n      ports: [80, 65536]\n      from: [{any: true}]\n"),
                ":8: 'ports[]' must be between 1 and 65535, got 65536"},
        BadMesh{"PortNotANumber",
                Rule("      action: allow\n      ports: [http]\n      from: [{any: true}]\n"),
                ":8: 'ports[]' must be an integer, got 'http'"},
        BadMesh{"PortTwice",
                Rule("      action: allow\n      ports: [80, 80]\n      from: [{any: true}]\n"),
                ":8: port 80 is listed twice"},
        BadMesh{"PortsNotAList",
                Rule("      action: allow\n      ports: 8080\n      from: [{any: true}]\n"),
                ":8: ports must be a list"},
        BadMesh{"PrefixWithoutStar",
                Rule("      action: allow\n      from: [{prefix: spiffe://example.org/ns/}]\n"),
                ":8: prefix must end in '/*', got 'spiffe://example.org/ns/'"},
        BadMesh{"PrefixNotASpiffeId",
                Rule("      action: allow\n      from: [{prefix: \"https://example.org/*\"}]\n"),
                ":8: prefix 'https://example.org/*' is not a SPIFFE ID followed by '/*'"},
        BadMesh{"BadExactId",
                Rule("      action: allow\n      from: [{id: spiffe://example.org/ns//sa/x}]\n"),
                ":6: policy rule 'r': rule \"r\": id matcher"},
        BadMesh{"BadNamespace", Rule("      action: allow\n      from: [{namespace: a/b}]\n"),
                ":8: namespace 'a/b' is not a valid SPIFFE path segment"},
        BadMesh{"BadMatcherTrustDomain",
                Rule("      action: allow\n      from: [{trust_domain: Example.org}]\n"),
                ":6: policy rule 'r': rule \"r\": trust_domain matcher"},
        BadMesh{"AnyFalse", Rule("      action: allow\n      from: [{any: false}]\n"),
                ":8: 'any' only takes the value true"},
        BadMesh{"UnknownMatcher", Rule("      action: allow\n      from: [{principal: x}]\n"),
                ":8: unknown matcher 'principal'"},
        BadMesh{"TwoKindsInOneEntry",
                Rule("      action: allow\n      from: [{namespace: a, any: true}]\n"),
                ":8: each 'from' entry is one 'kind: value' pair"},
        BadMesh{"UnknownRuleKey",
                Rule("      action: allow\n      from: [{any: true}]\n      to: [x]\n"),
                ":9: unknown key 'policy.rules[].to'"},
        BadMesh{"DestinationHostName",
                B + "destinations:\n  - address: backend:15006\n    spiffe_id: "
                    "spiffe://example.org/a\n",
                ":5: 'address' must be IP:port or an IP alone, got 'backend:15006'"},
        BadMesh{
            "DestinationPortZero",
            B + "destinations:\n  - address: 10.0.0.1:0\n    spiffe_id: spiffe://example.org/a\n",
            ":5: 'address' must be IP:port"},
        BadMesh{
            "DestinationBadId",
            B + "destinations:\n  - address: 10.0.0.1:80\n    spiffe_id: spiffe://example.org/a/\n",
            ":6: invalid SPIFFE ID 'spiffe://example.org/a/'"},
        BadMesh{"DestinationWithoutId", B + "destinations:\n  - address: 10.0.0.1:80\n",
                ":5: destination needs 'spiffe_id'"},
        BadMesh{"DestinationTwice",
                B + "destinations:\n"
                    "  - {address: 10.0.0.1:80, spiffe_id: spiffe://example.org/a}\n"
                    "  - {address: 10.0.0.1:80, spiffe_id: spiffe://example.org/b}\n",
                ":6: destination '10.0.0.1:80' is listed twice"},
        BadMesh{"WorkloadPoliciesNotAList", B + "workload_policies: {a: b}\n",
                ":4: workload_policies must be a list"},
        BadMesh{"WorkloadPolicyBadId", Workloads(Entry("spiffe://example.org/ns//sa/x", " {}\n")),
                ":5: invalid SPIFFE ID 'spiffe://example.org/ns//sa/x'"},
        BadMesh{"WorkloadPolicyNotASpiffeId", Workloads(Entry("https://example.org/x", " {}\n")),
                ":5: invalid SPIFFE ID 'https://example.org/x'"},
        BadMesh{"WorkloadPolicyOtherTrustDomain",
                Workloads(Entry("spiffe://partner.org/ns/a/sa/b", " {}\n")),
                ":5: SPIFFE ID 'spiffe://partner.org/ns/a/sa/b' is not in the trust domain "
                "'example.org'"},
        BadMesh{"WorkloadPolicyIdWithoutPath", Workloads(Entry("spiffe://example.org", " {}\n")),
                ":5: SPIFFE ID 'spiffe://example.org' has no path"},
        BadMesh{"WorkloadPolicyWithoutId", Workloads("  - policy: {}\n"),
                ":5: workload policy needs 'spiffe_id'"},
        BadMesh{"WorkloadPolicyWithoutPolicy",
                Workloads("  - spiffe_id: spiffe://example.org/ns/demo/sa/cache\n"),
                ":5: workload policy for 'spiffe://example.org/ns/demo/sa/cache' needs 'policy'"},
        BadMesh{"WorkloadPolicyNullPolicy", Workloads(Entry(kCache, "\n")),
                ":6: workload_policies[].policy must be a mapping"},
        BadMesh{"WorkloadPolicyPolicyNotAMapping", Workloads(Entry(kCache, " deny\n")),
                ":6: workload_policies[].policy must be a mapping"},
        // db at 5, cache at 7, db again at 9, cache again at 11: the first
        // repeat in the file is reported, with the line of its original.
        BadMesh{"WorkloadPolicyTwice",
                Workloads(Entry("spiffe://example.org/ns/demo/sa/db", " {}\n") +
                          Entry(kCache, " {default: deny}\n") +
                          Entry("spiffe://example.org/ns/demo/sa/db", " {}\n") +
                          Entry(kCache, " {}\n")),
                ":9: workload policy for 'spiffe://example.org/ns/demo/sa/db' is listed twice "
                "(first at line 5)"},
        BadMesh{"WorkloadPolicyGivenTwiceInOneEntry",
                Workloads(Entry(kCache, " {}\n") + "    policy: {default: deny}\n"),
                ":7: duplicate key 'policy'"},
        BadMesh{"UnknownWorkloadPolicyKey", Workloads(Entry(kCache, " {}\n") + "    rules: []\n"),
                ":7: unknown key 'workload_policies[].rules'"},
        BadMesh{"UnknownKeyInAWorkloadsPolicy",
                Workloads(Entry(kCache, "\n      defaults: deny\n")),
                ":7: unknown key 'workload_policies[].policy.defaults'"},
        BadMesh{"WorkloadPolicyBadDefault", Workloads(Entry(kCache, " {default: maybe}\n")),
                ":6: 'default' must be allow or deny, got 'maybe'"},
        BadMesh{"WorkloadPolicyRulesNotAList", Workloads(Entry(kCache, " {rules: {}}\n")),
                ":6: workload_policies[].policy.rules must be a list"},
        BadMesh{"WorkloadPolicyRuleWithoutAction", WorkloadRule("          from: [{any: true}]\n"),
                ":8: policy rule 'r' needs 'action'"},
        BadMesh{"WorkloadPolicyPortZero",
                WorkloadRule("          action: allow\n          ports: [0]\n"
                             "          from: [{any: true}]\n"),
                ":10: 'ports[]' must be between 1 and 65535, got 0"},
        BadMesh{"WorkloadPolicyDuplicateRuleName",
                WorkloadRule("          action: allow\n          from: [{any: true}]\n"
                             "        - name: r\n          action: deny\n"
                             "          from: [{any: true}]\n"),
                ":11: policy rule 'r': rule \"r\": duplicate rule name"},
        BadMesh{"WorkloadPolicyUnknownRuleKey",
                WorkloadRule("          action: allow\n          from: [{any: true}]\n"
                             "          to: [x]\n"),
                ":11: unknown key 'workload_policies[].policy.rules[].to'"},
        BadMesh{"WorkloadPolicyBadMatcher",
                WorkloadRule("          action: allow\n          from: [{namespace: a/b}]\n"),
                ":10: namespace 'a/b' is not a valid SPIFFE path segment"}),
    [](const ::testing::TestParamInfo<BadMesh> &info) { return std::string(info.param.name); });

}  // namespace
