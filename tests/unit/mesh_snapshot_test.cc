// MeshSnapshot decoding: workload_policies give a workload its own policy;
// a malformed entry rejects the whole snapshot with a reason.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>

#include <map>
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

// A snapshot with only destinations and node workloads, built field by field.
struct Extras {
  std::vector<std::pair<const char *, std::vector<const char *>>> destinations;
  bool with_node_workloads = false;
  std::vector<std::pair<const char *, std::vector<const char *>>> workloads;  // id -> IPs
  // destination index -> its endpoints (address, identity)
  std::map<size_t, std::vector<std::pair<const char *, const char *>>> endpoints;
  bool on_demand = false;               // destinations on demand
  std::vector<const char *> unresolved;  // its unresolved addresses
};

std::vector<uint8_t> PackExtras(const Extras &x) {
  Mtlsd__Mesh__V1__Policy general = MTLSD__MESH__V1__POLICY__INIT;
  general.default_action = MTLSD__MESH__V1__ACTION__ALLOW;
  std::vector<Mtlsd__Mesh__V1__Destination> dests(x.destinations.size());
  std::vector<Mtlsd__Mesh__V1__Destination *> dest_ptrs;
  std::vector<std::vector<Mtlsd__Mesh__V1__Endpoint>> eps(dests.size());
  std::vector<std::vector<Mtlsd__Mesh__V1__Endpoint *>> ep_ptrs(dests.size());
  for (size_t i = 0; i < dests.size(); i++) {
    dests[i] = MTLSD__MESH__V1__DESTINATION__INIT;
    dests[i].address = const_cast<char *>(x.destinations[i].first);
    dests[i].n_spiffe_ids = x.destinations[i].second.size();
    dests[i].spiffe_ids = const_cast<char **>(x.destinations[i].second.data());
    auto it = x.endpoints.find(i);
    if (it != x.endpoints.end()) {
      eps[i].assign(it->second.size(), Mtlsd__Mesh__V1__Endpoint(MTLSD__MESH__V1__ENDPOINT__INIT));
      for (size_t j = 0; j < it->second.size(); j++) {
        eps[i][j].address = const_cast<char *>(it->second[j].first);
        eps[i][j].spiffe_id = const_cast<char *>(it->second[j].second);
        ep_ptrs[i].push_back(&eps[i][j]);
      }
      dests[i].n_endpoints = ep_ptrs[i].size();
      dests[i].endpoints = ep_ptrs[i].data();
    }
    dest_ptrs.push_back(&dests[i]);
  }
  std::vector<Mtlsd__Mesh__V1__Workload> wls(x.workloads.size());
  std::vector<Mtlsd__Mesh__V1__Workload *> wl_ptrs;
  for (size_t i = 0; i < wls.size(); i++) {
    wls[i] = MTLSD__MESH__V1__WORKLOAD__INIT;
    wls[i].spiffe_id = const_cast<char *>(x.workloads[i].first);
    wls[i].n_ips = x.workloads[i].second.size();
    wls[i].ips = const_cast<char **>(x.workloads[i].second.data());
    wls[i].namespace_ = const_cast<char *>("demo");
    wls[i].pod = const_cast<char *>("pod-1");
    wl_ptrs.push_back(&wls[i]);
  }
  Mtlsd__Mesh__V1__NodeWorkloads nw = MTLSD__MESH__V1__NODE_WORKLOADS__INIT;
  nw.node_name = const_cast<char *>("node-a");
  nw.n_workloads = wl_ptrs.size();
  nw.workloads = wl_ptrs.data();
  Mtlsd__Mesh__V1__MeshSnapshot s = MTLSD__MESH__V1__MESH_SNAPSHOT__INIT;
  s.version = const_cast<char *>("9");
  s.policy = &general;
  s.n_destinations = dest_ptrs.size();
  s.destinations = dest_ptrs.data();
  if (x.with_node_workloads) s.node_workloads = &nw;
  std::vector<Mtlsd__Mesh__V1__UnresolvedDestination> unresolved(x.unresolved.size());
  std::vector<Mtlsd__Mesh__V1__UnresolvedDestination *> unresolved_ptrs;
  for (size_t i = 0; i < unresolved.size(); i++) {
    unresolved[i] = MTLSD__MESH__V1__UNRESOLVED_DESTINATION__INIT;
    unresolved[i].address = const_cast<char *>(x.unresolved[i]);
    unresolved_ptrs.push_back(&unresolved[i]);
  }
  s.on_demand_destinations = x.on_demand;
  s.n_unresolved = unresolved_ptrs.size();
  s.unresolved = unresolved_ptrs.data();
  std::vector<uint8_t> out(mtlsd__mesh__v1__mesh_snapshot__get_packed_size(&s));
  mtlsd__mesh__v1__mesh_snapshot__pack(&s, out.data());
  return out;
}

sockaddr_storage Addr(const char *text) {
  mt_sockaddr a;
  EXPECT_TRUE(mt_sockaddr_parse(text, &a, 0)) << text;
  return a.addr;
}

std::vector<std::string> Expected(const mt_mesh *mesh, const char *dest) {
  sockaddr_storage a = Addr(dest);
  mt_expected_ids ids;
  std::vector<std::string> out;
  if (!mt_mesh_expected_ids(mesh, (const sockaddr *)&a, &ids)) return out;
  for (size_t i = 0; i < ids.count; i++) out.push_back(ids.ids[i]);
  return out;
}

TEST(MeshSnapshot, ADestinationAcceptsAnyOfItsIdsAndAnIpAloneCoversEveryPort) {
  Extras x;
  x.destinations = {{"10.96.0.10:80", {kFrontend, kCache}},
                    {"10.0.0.7", {kOther}},
                    {"10.0.0.7:9090", {kCache}},
                    {"[fd00::7]:443", {kOther}}};
  std::vector<uint8_t> msg = PackExtras(x);
  mt_mesh_update u;
  char err[256] = "";
  ASSERT_TRUE(mt_mesh_decode_snapshot(msg.data(), msg.size(), &u, err, sizeof(err))) << err;
  EXPECT_EQ(Expected(u.mesh, "10.96.0.10:80"), (std::vector<std::string>{kFrontend, kCache}));
  EXPECT_TRUE(Expected(u.mesh, "10.96.0.10:81").empty());
  EXPECT_EQ(Expected(u.mesh, "10.0.0.7:8080"), (std::vector<std::string>{kOther}));
  EXPECT_EQ(Expected(u.mesh, "10.0.0.7:9090"), (std::vector<std::string>{kCache}))
      << "ip:port wins over the IP alone";
  EXPECT_EQ(Expected(u.mesh, "[fd00::7]:443"), (std::vector<std::string>{kOther}));
  EXPECT_TRUE(Expected(u.mesh, "[fd00::7]:444").empty());
  mt_expected_ids ids;
  sockaddr_storage a = Addr("10.96.0.10:80");
  ASSERT_TRUE(mt_mesh_expected_ids(u.mesh, (const sockaddr *)&a, &ids));
  EXPECT_TRUE(mt_expected_ids_contain(&ids, kCache));
  EXPECT_FALSE(mt_expected_ids_contain(&ids, kOther));
  EXPECT_FALSE(u.has_node_workloads);
  mt_mesh_update_clear(&u);
}

TEST(MeshSnapshot, OnDemandTheMeshKnowsWhichAskedAddressesHaveNoEntry) {
  Extras x;
  x.destinations = {{"10.96.0.10:80", {kCache}}};
  x.on_demand = true;
  x.unresolved = {"10.1.2.3:80", "[fd00::9]:443"};
  x.with_node_workloads = true;
  x.workloads = {{kFrontend, {"10.244.1.2"}}};
  std::vector<uint8_t> msg = PackExtras(x);
  mt_mesh_update u;
  char err[256] = "";
  ASSERT_TRUE(mt_mesh_decode_snapshot(msg.data(), msg.size(), &u, err, sizeof(err))) << err;
  ASSERT_TRUE(mt_mesh_on_demand(u.mesh));
  for (const char *text : {"10.1.2.3:80", "[fd00::9]:443"}) {
    sockaddr_storage a = Addr(text);
    EXPECT_TRUE(mt_mesh_unresolved(u.mesh, (const sockaddr *)&a)) << text;
  }
  // Another port of the same IP was not asked: neither known nor unresolved.
  for (const char *text : {"10.1.2.3:81", "10.96.0.10:80", "10.9.9.9:80"}) {
    sockaddr_storage a = Addr(text);
    EXPECT_FALSE(mt_mesh_unresolved(u.mesh, (const sockaddr *)&a)) << text;
  }
  mt_mesh_update_clear(&u);

  Extras plain;  // without the flag: every destination is there, nothing to ask
  msg = PackExtras(plain);
  ASSERT_TRUE(mt_mesh_decode_snapshot(msg.data(), msg.size(), &u, err, sizeof(err))) << err;
  EXPECT_FALSE(mt_mesh_on_demand(u.mesh));
  mt_mesh_update_clear(&u);
}

TEST(MeshSnapshot, OnDemandBadUnresolvedAddressesRejectTheSnapshot) {
  struct {
    bool on_demand;
    std::vector<const char *> unresolved;
    const char *reason;
  } cases[] = {
      {false, {"10.1.2.3:80"}, "unresolved addresses without on_demand_destinations"},
      {true, {"10.1.2.3"}, "unresolved[0]: '10.1.2.3' is not IP:port"},
      {true, {"10.1.2.3:80", "pod-a:80"}, "unresolved[1]: 'pod-a:80' is not IP:port"},
  };
  for (const auto &c : cases) {
    Extras x;
    x.on_demand = c.on_demand;
    x.unresolved = c.unresolved;
    std::vector<uint8_t> msg = PackExtras(x);
    mt_mesh_update u;
    char err[256] = "";
    EXPECT_FALSE(mt_mesh_decode_snapshot(msg.data(), msg.size(), &u, err, sizeof(err)));
    EXPECT_NE(std::string(err).find(c.reason), std::string::npos) << err;
    EXPECT_EQ(u.mesh, nullptr);
  }
}

TEST(MeshSnapshot, BadDestinationsRejectTheSnapshot) {
  using Dests = std::vector<std::pair<const char *, std::vector<const char *>>>;
  struct {
    Dests destinations;
    const char *reason;
  } cases[] = {
      {{{"10.0.0.1:80", {}}}, "destinations[0]: no SPIFFE ID"},
      {{{"10.0.0.1:80", {kFrontend}}, {"10.0.0.1:80", {kCache}}}, "10.0.0.1:80 listed twice"},
      {{{"10.0.0.1", {kFrontend}}, {"10.0.0.1", {kCache}}}, "10.0.0.1:0 listed twice"},
      {{{"pod-a:80", {kFrontend}}}, "is not IP:port or IP"},
      {{{"10.0.0.1:80", {kFrontend, "spiffe://Example.org/x"}}}, "invalid SPIFFE ID"},
  };
  for (const auto &c : cases) {
    Extras x;
    x.destinations = c.destinations;
    std::vector<uint8_t> msg = PackExtras(x);
    mt_mesh_update u;
    char err[256] = "";
    EXPECT_FALSE(mt_mesh_decode_snapshot(msg.data(), msg.size(), &u, err, sizeof(err)));
    EXPECT_NE(std::string(err).find(c.reason), std::string::npos) << err;
    EXPECT_EQ(u.mesh, nullptr);
  }
}

TEST(MeshSnapshot, NodeWorkloadsArePresentEvenWhenEmpty) {
  Extras x;
  x.with_node_workloads = true;
  std::vector<uint8_t> msg = PackExtras(x);
  mt_mesh_update u;
  char err[256] = "";
  ASSERT_TRUE(mt_mesh_decode_snapshot(msg.data(), msg.size(), &u, err, sizeof(err))) << err;
  EXPECT_TRUE(u.has_node_workloads);
  EXPECT_EQ(u.num_node_workloads, 0u);
  mt_mesh_update_clear(&u);

  x.workloads = {{kFrontend, {"10.0.0.5", "fd00::5"}}, {kCache, {"10.0.0.6"}}};
  msg = PackExtras(x);
  ASSERT_TRUE(mt_mesh_decode_snapshot(msg.data(), msg.size(), &u, err, sizeof(err))) << err;
  ASSERT_EQ(u.num_node_workloads, 2u);
  EXPECT_STREQ(u.node_workloads[0].spiffe_id, kFrontend);
  EXPECT_EQ(u.node_workloads[0].num_addresses, 2u);
  EXPECT_EQ(u.node_workloads[0].addresses[1].addr.ss_family, AF_INET6);
  EXPECT_STREQ(u.node_workloads[1].name, "demo/pod-1");
  mt_mesh_update_clear(&u);
}

TEST(MeshSnapshot, BadNodeWorkloadsRejectTheSnapshot) {
  struct {
    std::vector<std::pair<const char *, std::vector<const char *>>> workloads;
    const char *reason;
  } cases[] = {
      {{{kFrontend, {}}}, "node_workloads[0] (spiffe://example.org/ns/demo/sa/frontend): no IP"},
      {{{kFrontend, {"10.0.0.5:80"}}}, "'10.0.0.5:80' is not an IP"},
      {{{kFrontend, {"node-a"}}}, "'node-a' is not an IP"},
      {{{"spiffe://Example.org/x", {"10.0.0.5"}}}, "node_workloads[0]: invalid SPIFFE ID"},
      {{{kFrontend, {"10.0.0.5"}}, {kCache, {"10.0.0.9", "10.0.0.5"}}},
       "address 10.0.0.5:0 belongs to"},
  };
  for (const auto &c : cases) {
    Extras x;
    x.with_node_workloads = true;
    x.workloads = c.workloads;
    std::vector<uint8_t> msg = PackExtras(x);
    mt_mesh_update u;
    char err[256] = "";
    EXPECT_FALSE(mt_mesh_decode_snapshot(msg.data(), msg.size(), &u, err, sizeof(err)));
    EXPECT_NE(std::string(err).find(c.reason), std::string::npos) << err;
    EXPECT_EQ(u.mesh, nullptr);
    EXPECT_EQ(u.num_node_workloads, 0u);
  }
}

// ---- Service endpoints (node mode routes Service addresses itself) -------

// "ip:port=id" of every endpoint of |dest|.
std::vector<std::string> EndpointsOf(const mt_mesh *mesh, const char *dest) {
  sockaddr_storage a = Addr(dest);
  const mt_service_endpoint *eps = nullptr;
  size_t n = mt_mesh_service_endpoints(mesh, (const sockaddr *)&a, &eps);
  std::vector<std::string> out;
  for (size_t i = 0; i < n; i++) {
    char text[MT_SOCKADDR_TEXT_MAX];
    mt_sockaddr_format((const sockaddr *)&eps[i].address.addr, text, sizeof(text));
    out.push_back(std::string(text) + "=" + eps[i].spiffe_id);
  }
  return out;
}

TEST(MeshSnapshot, AServiceAddressKeepsItsEndpointsAndEveryWorkloadViewSharesThem) {
  SnapshotBuilder b(kFrontend);
  Extras x;
  x.destinations = {{"10.96.0.10:80", {kCache, kOther}}, {"[fd00:96::10]:80", {kCache}}};
  x.endpoints[0] = {{"10.0.1.5:8081", kCache}, {"10.0.2.6:8081", kOther}};
  x.endpoints[1] = {{"[fd00:1::5]:8081", kCache}};
  std::vector<uint8_t> msg = PackExtras(x);
  std::vector<uint8_t> policies = b.Pack({kCache});
  msg.insert(msg.end(), policies.begin(), policies.end());  // protobuf messages concatenate
  mt_mesh_update u;
  char err[256] = "";
  ASSERT_TRUE(mt_mesh_decode_snapshot(msg.data(), msg.size(), &u, err, sizeof(err))) << err;
  const std::vector<std::string> v4 = {"10.0.1.5:8081=" + std::string(kCache),
                                       "10.0.2.6:8081=" + std::string(kOther)};
  EXPECT_EQ(EndpointsOf(u.mesh, "10.96.0.10:80"), v4);
  EXPECT_EQ(EndpointsOf(u.mesh, "[fd00:96::10]:80"),
            (std::vector<std::string>{"[fd00:1::5]:8081=" + std::string(kCache)}));
  EXPECT_TRUE(EndpointsOf(u.mesh, "10.96.0.10:81").empty());
  EXPECT_TRUE(EndpointsOf(u.mesh, "10.0.1.5:8081").empty());  // an endpoint is no Service
  // cache's own view: its own policy, the same destinations.
  const mt_mesh *cache = mt_mesh_update_for(&u, kCache);
  ASSERT_NE(cache, u.mesh);
  EXPECT_EQ(EndpointsOf(cache, "10.96.0.10:80"), v4);
  EXPECT_STREQ(mt_mesh_version(cache), "7");
  EXPECT_EQ(mt_mesh_num_destinations(cache), 2u);
  EXPECT_EQ(Expected(cache, "10.96.0.10:80"), (std::vector<std::string>{kCache, kOther}));
  mt_mesh_update_clear(&u);
}

TEST(MeshSnapshot, EveryEndpointIsChosenAndOnlyEndpointsOfTheAddress) {
  Extras x;
  x.destinations = {{"10.96.0.10:80", {kCache, kOther}}, {"10.96.0.11:80", {kCache}}};
  x.endpoints[0] = {
      {"10.0.1.5:8081", kCache}, {"10.0.2.6:8081", kOther}, {"10.0.2.7:8081", kOther}};
  std::vector<uint8_t> msg = PackExtras(x);
  mt_mesh_update u;
  char err[256] = "";
  ASSERT_TRUE(mt_mesh_decode_snapshot(msg.data(), msg.size(), &u, err, sizeof(err))) << err;
  sockaddr_storage svc = Addr("10.96.0.10:80");
  std::map<std::string, int> chosen;
  // The worker's generator is splitmix64; any sequence covering the
  // residues picks each endpoint, in proportion.
  for (uint64_t r = 0; r < 300; r++) {
    const mt_service_endpoint *ep =
        mt_mesh_choose_endpoint(u.mesh, (const sockaddr *)&svc, r * 0x9e3779b97f4a7c15ULL);
    ASSERT_NE(ep, nullptr);
    char text[MT_SOCKADDR_TEXT_MAX];
    mt_sockaddr_format((const sockaddr *)&ep->address.addr, text, sizeof(text));
    chosen[std::string(text) + "=" + ep->spiffe_id]++;
  }
  ASSERT_EQ(chosen.size(), 3u);
  for (const auto &[ep, times] : chosen) EXPECT_GT(times, 60) << ep;
  sockaddr_storage bare = Addr("10.96.0.11:80");  // no endpoints: the address is dialled
  EXPECT_EQ(mt_mesh_choose_endpoint(u.mesh, (const sockaddr *)&bare, 1), nullptr);
  mt_mesh_update_clear(&u);
}

TEST(MeshSnapshot, BadEndpointsRejectTheSnapshotNamingTheEntry) {
  using Eps = std::vector<std::pair<const char *, const char *>>;
  struct {
    const char *address;
    Eps endpoints;
    const char *reason;
  } cases[] = {
      {"10.96.0.10:80",
       {{"10.0.1.5", kCache}},
       "destinations[0] (10.96.0.10:80): endpoints[0]: '10.0.1.5' is not an IP:port"},
      {"10.96.0.10:80",
       {{"10.0.1.5:8081", kCache}, {"pod-a:8081", kCache}},
       "endpoints[1]: 'pod-a:8081' is not an IP:port"},
      {"10.96.0.10:80",
       {{"[fd00::5]:8081", kCache}},
       "'[fd00::5]:8081' is not an IP:port of "
       "the address's family"},
      {"10.96.0.10:80",
       {{"10.0.1.5:8081", "spiffe://Example.org/x"}},
       "endpoints[0] (10.0.1.5:8081): invalid SPIFFE ID"},
      {"10.96.0.10:80",
       {{"10.0.1.5:8081", kFrontend}},
       "spiffe://example.org/ns/demo/sa/frontend is not one of the address's SPIFFE IDs"},
      {"10.96.0.10", {{"10.0.1.5:8081", kCache}}, "endpoints on an address without a port"},
  };
  for (const auto &c : cases) {
    Extras x;
    x.destinations = {{c.address, {kCache}}};
    x.endpoints[0] = c.endpoints;
    std::vector<uint8_t> msg = PackExtras(x);
    mt_mesh_update u;
    char err[256] = "";
    EXPECT_FALSE(mt_mesh_decode_snapshot(msg.data(), msg.size(), &u, err, sizeof(err)));
    EXPECT_NE(std::string(err).find(c.reason), std::string::npos) << err;
    EXPECT_EQ(u.mesh, nullptr);
  }
}

}  // namespace
