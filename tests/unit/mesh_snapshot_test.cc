// MeshSnapshot decoding: workload_policies give a workload its own policy;
// a malformed entry rejects the whole snapshot with a reason.
#include <gtest/gtest.h>

#include <stdlib.h>

#include <string>
#include <vector>

#include "agent/mesh_snapshot.h"
#include "proto/mtlsd/mesh.pb-c.h"

namespace {

const char kFrontend[] = "spiffe://example.org/ns/demo/sa/frontend";
const char kOther[] = "spiffe://example.org/ns/demo/sa/other";
const char kCache[] = "spiffe://example.org/ns/demo/sa/cache";

// A snapshot whose general policy admits anyone, plus one workload entry
// per |ids| admitting only |only| (by exact ID).
class SnapshotBuilder {
 public:
  explicit SnapshotBuilder(const char *only) {
    general_.default_action = MTLSD__MESH__V1__ACTION__ALLOW;
    matcher_.kind_case = MTLSD__MESH__V1__MATCHER__KIND_ID;
    matcher_.id = const_cast<char *>(only);
    matchers_[0] = &matcher_;
    rule_.name = const_cast<char *>("only-one");
    rule_.action = MTLSD__MESH__V1__ACTION__ALLOW;
    rule_.n_from = 1;
    rule_.from = matchers_;
    rules_[0] = &rule_;
    own_.default_action = MTLSD__MESH__V1__ACTION__DENY;
    own_.n_rules = 1;
    own_.rules = rules_;
  }

  std::vector<uint8_t> Pack(const std::vector<const char *> &ids, bool with_policy = true) {
    entries_.assign(ids.size(),
                    Mtlsd__Mesh__V1__WorkloadPolicy(MTLSD__MESH__V1__WORKLOAD_POLICY__INIT));
    pointers_.clear();
    for (size_t i = 0; i < ids.size(); i++) {
      entries_[i].spiffe_id = const_cast<char *>(ids[i]);
      entries_[i].policy = with_policy ? &own_ : nullptr;
      pointers_.push_back(&entries_[i]);
    }
    Mtlsd__Mesh__V1__MeshSnapshot s = MTLSD__MESH__V1__MESH_SNAPSHOT__INIT;
    s.version = const_cast<char *>("7");
    s.policy = &general_;
    s.n_workload_policies = pointers_.size();
    s.workload_policies = pointers_.data();
    std::vector<uint8_t> out(mtlsd__mesh__v1__mesh_snapshot__get_packed_size(&s));
    mtlsd__mesh__v1__mesh_snapshot__pack(&s, out.data());
    return out;
  }

 private:
  Mtlsd__Mesh__V1__Policy general_ = MTLSD__MESH__V1__POLICY__INIT;
  Mtlsd__Mesh__V1__Policy own_ = MTLSD__MESH__V1__POLICY__INIT;
  Mtlsd__Mesh__V1__Rule rule_ = MTLSD__MESH__V1__RULE__INIT;
  Mtlsd__Mesh__V1__Rule *rules_[1];
  Mtlsd__Mesh__V1__Matcher matcher_ = MTLSD__MESH__V1__MATCHER__INIT;
  Mtlsd__Mesh__V1__Matcher *matchers_[1];
  std::vector<Mtlsd__Mesh__V1__WorkloadPolicy> entries_;
  std::vector<Mtlsd__Mesh__V1__WorkloadPolicy *> pointers_;
};

mt_action Decide(const mt_mesh *mesh, const char *peer) {
  return mt_policy_decide(mt_mesh_policy(mesh), peer, 8080).action;
}

TEST(MeshSnapshot, AWorkloadEntryReplacesTheGeneralPolicyForThatWorkloadOnly) {
  SnapshotBuilder b(kFrontend);
  std::vector<uint8_t> msg = b.Pack({kCache});
  mt_mesh_update u;
  char err[256] = "";
  ASSERT_TRUE(mt_mesh_decode_snapshot(msg.data(), msg.size(), &u, err, sizeof(err))) << err;
  ASSERT_EQ(u.num_workloads, 1u);
  const mt_mesh *cache = mt_mesh_update_for(&u, kCache);
  ASSERT_NE(cache, u.mesh);
  EXPECT_STREQ(mt_mesh_version(cache), "7");
  EXPECT_EQ(Decide(cache, kFrontend), MT_ACTION_ALLOW);
  EXPECT_EQ(Decide(cache, kOther), MT_ACTION_DENY);
  // Anyone else (and no ID at all) gets the general policy.
  EXPECT_EQ(mt_mesh_update_for(&u, kOther), u.mesh);
  EXPECT_EQ(mt_mesh_update_for(&u, nullptr), u.mesh);
  EXPECT_EQ(Decide(u.mesh, kOther), MT_ACTION_ALLOW);
  mt_mesh_update_clear(&u);
}

TEST(MeshSnapshot, MalformedWorkloadEntriesRejectTheSnapshot) {
  SnapshotBuilder b(kFrontend);
  struct {
    std::vector<const char *> ids;
    bool with_policy;
    const char *reason;
  } cases[] = {
      {{kCache, kCache}, true, "listed twice"},
      {{"spiffe://Example.org/x"}, true, "invalid SPIFFE ID"},
      {{kCache}, false, "no policy"},
  };
  for (const auto &c : cases) {
    std::vector<uint8_t> msg = b.Pack(c.ids, c.with_policy);
    mt_mesh_update u;
    char err[256] = "";
    EXPECT_FALSE(mt_mesh_decode_snapshot(msg.data(), msg.size(), &u, err, sizeof(err)));
    EXPECT_NE(std::string(err).find(c.reason), std::string::npos) << err;
    EXPECT_EQ(u.mesh, nullptr);
    EXPECT_EQ(u.num_workloads, 0u);
  }
}

}  // namespace
