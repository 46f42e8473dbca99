// mesh_view: what each Watch caller is sent, from the mesh file plus the
// cluster state (or the workload registry): scoping, derived destinations,
// the operator's override, deterministic digests, the size limit.
#include "controlplane/mesh_view.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "proto/mtlsd/mesh.pb-c.h"
#include "tests/controlplane/k8s_fixture.h"
#include "tests/controlplane/test_files.h"

namespace {

const char kWeb[] = "spiffe://example.org/ns/demo/sa/web";
const char kApi[] = "spiffe://example.org/ns/demo/sa/api";
const char kCache[] = "spiffe://example.org/ns/demo/sa/cache";
const char kNodeAgent[] = "spiffe://example.org/ns/mtls-system/sa/mtlsd-node";

std::string Quoted(const std::vector<std::string> &items) {
  std::string out;
  for (const auto &i : items) out += (out.empty() ? "\"" : ",\"") + i + "\"";
  return out;
}

std::string NamespaceJson(const std::string &name) {
  return "{\"metadata\":{\"name\":\"" + name + "\",\"labels\":{\"mtlsd.io/mesh\":\"enabled\"}}}";
}

std::string PodJson(const std::string &ns, const std::string &name, const std::string &sa,
                    const std::string &node, const std::vector<std::string> &ips,
                    const std::string &extra_label = "") {
  std::string pod_ips;
  for (const auto &ip : ips) pod_ips += (pod_ips.empty() ? "" : ",") + ("{\"ip\":\"" + ip + "\"}");
  std::string labels = extra_label.empty() ? "{}" : "{\"" + extra_label + "\":\"x\"}";
  return "{\"metadata\":{\"name\":\"" + name + "\",\"namespace\":\"" + ns +
         "\",\"labels\":" + labels + "},\"spec\":{\"nodeName\":\"" + node +
         "\",\"serviceAccountName\":\"" + sa +
         "\"},\"status\":{\"phase\":\"Running\",\"podIPs\":[" + pod_ips + "]}}";
}

std::string ServiceJson(const std::string &ns, const std::string &name,
                        const std::vector<std::string> &cluster_ips,
                        const std::vector<int> &ports) {
  std::string p;
  for (int port : ports) p += (p.empty() ? "" : ",") + ("{\"port\":" + std::to_string(port) + "}");
  return "{\"metadata\":{\"name\":\"" + name + "\",\"namespace\":\"" + ns +
         "\"},\"spec\":{\"clusterIPs\":[" + Quoted(cluster_ips) + "],\"ports\":[" + p + "]}}";
}

// |endpoints|: (pod name, address, ready).
std::string SliceJson(const std::string &ns, const std::string &service, const std::string &name,
                      const std::vector<std::tuple<std::string, std::string, bool>> &endpoints) {
  std::string e;
  for (const auto &[pod, address, ready] : endpoints)
    e += (e.empty() ? "" : ",") + ("{\"addresses\":[\"" + address +
                                   "\"],\"conditions\":{\"ready\":" + (ready ? "true" : "false") +
                                   "},\"targetRef\":{\"kind\":\"Pod\",\"name\":\"" + pod + "\"}}");
  return "{\"addressType\":\"IPv4\",\"metadata\":{\"name\":\"" + name + "\",\"namespace\":\"" + ns +
         "\",\"labels\":{\"kubernetes.io/service-name\":\"" + service + "\"}},\"endpoints\":[" + e +
         "],\"ports\":[{\"port\":8080}]}";
}

const char kBundle[] =
    "trust_bundles:\n"
    "  - trust_domain: example.org\n"
    "    roots_files: [root.pem]\n";

// Workload policies for web and cache (api has none).
const char kPolicies[] =
    "workload_policies:\n"
    "  - spiffe_id: spiffe://example.org/ns/demo/sa/web\n"
    "    policy: {default: deny}\n"
    "  - spiffe_id: spiffe://example.org/ns/demo/sa/cache\n"
    "    policy: {default: allow}\n";

// A decoded snapshot and its digest.
struct Snapshot {
  Mtlsd__Mesh__V1__MeshSnapshot *msg = nullptr;
  std::string digest;
  std::string bytes;  // encoded with version "v"
  ~Snapshot() {
    if (msg) mtlsd__mesh__v1__mesh_snapshot__free_unpacked(msg, nullptr);
  }
};

class MeshView : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_.Write("root.pem", mt_test::SelfSignedPem("root", true));
    state_ = mt_cluster_state_new("example.org");
    Apply(NamespaceJson("demo"));
  }
  void TearDown() override {
    mt_mesh_view_free(view_);
    mt_mesh_file_free(mesh_);
    mt_workloads_free(workloads_);
    mt_cluster_state_free(state_);
  }

  void LoadMesh(const std::string &extra = kPolicies) {
    std::string path = dir_.Write("mesh.yaml", std::string(kBundle) + extra);
    char err[512] = "";
    mt_mesh_file_free(mesh_);
    mesh_ = mt_mesh_file_load(path.c_str(), "example.org", err, sizeof(err));
    ASSERT_NE(mesh_, nullptr) << err;
  }

  void ApplyTo(mt_cluster_state *state, const std::string &json, mt_k8s_kind kind,
               mt_cluster_change change = MT_CLUSTER_UPSERT) {
    mt_test::Json obj(mt_test::ParseJson(json));
    char err[256] = "";
    ASSERT_TRUE(mt_cluster_state_apply(state, kind, change, obj, err, sizeof(err))) << err;
  }
  void Apply(const std::string &json, mt_cluster_change change = MT_CLUSTER_UPSERT) {
    mt_k8s_kind kind = json.find("\"addressType\"") != std::string::npos ? MT_K8S_KIND_ENDPOINTSLICE
                       : json.find("\"clusterIPs\"") != std::string::npos ? MT_K8S_KIND_SERVICE
                       : json.find("\"podIPs\"") != std::string::npos     ? MT_K8S_KIND_POD
                                                                          : MT_K8S_KIND_NAMESPACE;
    ApplyTo(state_, json, kind, change);
  }

  // web on node-1 (two IPs), api on node-1 and node-2, cache on node-2;
  // Service web: two ready endpoints of two identities and one unready.
  void LoadCluster() {
    Apply(PodJson("demo", "web-a", "web", "node-1", {"10.244.1.5", "fd00:10:244:1::5"}));
    Apply(PodJson("demo", "api-a", "api", "node-1", {"10.244.1.6"}));
    Apply(PodJson("demo", "api-b", "api", "node-2", {"10.244.2.6"}));
    Apply(PodJson("demo", "cache-a", "cache", "node-2", {"10.244.2.7"}));
    Apply(ServiceJson("demo", "web", {"10.96.0.20", "fd00:96::20"}, {80}));
    Apply(SliceJson("demo", "web", "web-1",
                    {{"web-a", "10.244.1.5", true},
                     {"api-b", "10.244.2.6", true},
                     {"cache-a", "10.244.2.7", false}}));
  }

  void Build(size_t max_bytes = 0, bool with_cluster = true) {
    mt_mesh_view_inputs in = {mesh_, with_cluster ? state_ : nullptr, workloads_, max_bytes,
                              istio_};
    char err[MT_MESH_VIEW_ERR_MAX] = "";
    mt_mesh_view_free(view_);
    view_ = mt_mesh_view_new(&in, err, sizeof(err));
    error_ = err;
  }

  // The snapshot for |caller|; false (with error_) when refused.
  // |wanted|: destinations on demand, those addresses asked for.
  bool For(const char *id, bool node_agent, const char *node, Snapshot *out,
           const std::vector<std::string> *wanted = nullptr) {
    std::vector<const char *> asked;
    if (wanted != nullptr)
      for (const auto &w : *wanted) asked.push_back(w.c_str());
    mt_mesh_caller caller = {id,           node_agent ? 1 : 0, node, wanted != nullptr ? 1 : 0,
                             asked.data(), asked.size()};
    char err[MT_MESH_VIEW_ERR_MAX] = "";
    mt_mesh_view_snapshot *s = mt_mesh_view_for(view_, &caller, err, sizeof(err));
    error_ = err;
    if (s == nullptr) return false;
    out->digest.assign((const char *)mt_mesh_view_snapshot_digest(s), MT_MESH_DIGEST_LEN);
    size_t len = 0;
    uint8_t *bytes = mt_mesh_view_snapshot_encode(s, "v", &len);
    EXPECT_NE(bytes, nullptr);
    out->bytes.assign((const char *)bytes, len);
    out->msg = mtlsd__mesh__v1__mesh_snapshot__unpack(nullptr, len, bytes);
    EXPECT_NE(out->msg, nullptr);
    EXPECT_EQ(len, mt_mesh_view_snapshot_len(s) + 3);  // + the version field "v"
    free(bytes);
    mt_mesh_view_snapshot_free(s);
    return out->msg != nullptr;
  }

  static std::vector<std::string> PolicyIds(const Snapshot &s) {
    std::vector<std::string> ids;
    for (size_t i = 0; i < s.msg->n_workload_policies; i++)
      ids.push_back(s.msg->workload_policies[i]->spiffe_id);
    return ids;
  }

  // "pod spiffe_id ip,ip" per node workload.
  static std::vector<std::string> NodeWorkloads(const Snapshot &s) {
    std::vector<std::string> out;
    for (size_t i = 0; i < s.msg->node_workloads->n_workloads; i++) {
      const Mtlsd__Mesh__V1__Workload *w = s.msg->node_workloads->workloads[i];
      std::string line = std::string(w->namespace_) + "/" + w->pod + " " + w->spiffe_id + " ";
      for (size_t j = 0; j < w->n_ips; j++) line += (j ? "," : "") + std::string(w->ips[j]);
      out.push_back(line);
    }
    return out;
  }

  // address -> "spiffe_id|id,id" for every destination, in order.
  static std::vector<std::pair<std::string, std::string>> Destinations(const Snapshot &s) {
    std::vector<std::pair<std::string, std::string>> out;
    for (size_t i = 0; i < s.msg->n_destinations; i++) {
      const Mtlsd__Mesh__V1__Destination *d = s.msg->destinations[i];
      std::string ids = std::string(d->spiffe_id) + "|";
      for (size_t j = 0; j < d->n_spiffe_ids; j++)
        ids += (j ? "," : "") + std::string(d->spiffe_ids[j]);
      out.emplace_back(d->address, ids);
    }
    return out;
  }

  // address -> "ip:port=id ip:port=id" for every destination with endpoints.
  static std::map<std::string, std::string> EndpointsOf(const Snapshot &s) {
    std::map<std::string, std::string> out;
    for (size_t i = 0; i < s.msg->n_destinations; i++) {
      const Mtlsd__Mesh__V1__Destination *d = s.msg->destinations[i];
      if (d->n_endpoints == 0) continue;
      std::string line;
      for (size_t j = 0; j < d->n_endpoints; j++)
        line += (j ? " " : "") + std::string(d->endpoints[j]->address) + "=" +
                d->endpoints[j]->spiffe_id;
      out[d->address] = line;
    }
    return out;
  }

  mt_test::ScratchDir dir_;
  mt_cluster_state *state_ = nullptr;
  mt_mesh_file *mesh_ = nullptr;
  mt_workloads *workloads_ = nullptr;
  mt_mesh_view *view_ = nullptr;
  mt_istio_policies *istio_ = nullptr;  // owned by the Istio tests' fixture
  std::string error_;
};

// ---- scoping ---------------------------------------------------------------

TEST_F(MeshView, ASidecarGetsOnlyItsOwnWorkloadPolicyAndNoNodeWorkloads) {
  LoadMesh();
  LoadCluster();
  Build();
  ASSERT_NE(view_, nullptr) << error_;
  Snapshot web, api;
  ASSERT_TRUE(For(kWeb, false, "node-1", &web)) << error_;  // a node claim changes nothing
  EXPECT_EQ(PolicyIds(web), std::vector<std::string>{kWeb});
  EXPECT_EQ(web.msg->node_workloads, nullptr);
  ASSERT_NE(web.msg->policy, nullptr);
  EXPECT_EQ(web.msg->n_trust_bundles, 1u);
  ASSERT_TRUE(For(kApi, false, nullptr, &api)) << error_;
  EXPECT_TRUE(PolicyIds(api).empty());
  EXPECT_EQ(api.msg->node_workloads, nullptr);
}

TEST_F(MeshView, ANodeAgentGetsTheWorkloadsAndPoliciesOfItsOwnNodeOnly) {
  LoadMesh();
  LoadCluster();
  Build();
  ASSERT_NE(view_, nullptr) << error_;
  Snapshot n1, n2;
  ASSERT_TRUE(For(kNodeAgent, true, "node-1", &n1)) << error_;
  ASSERT_NE(n1.msg->node_workloads, nullptr);
  EXPECT_STREQ(n1.msg->node_workloads->node_name, "node-1");
  EXPECT_EQ(NodeWorkloads(n1),
            (std::vector<std::string>{
                "demo/api-a " + std::string(kApi) + " 10.244.1.6",
                "demo/web-a " + std::string(kWeb) + " 10.244.1.5,fd00:10:244:1::5"}));
  EXPECT_EQ(PolicyIds(n1), std::vector<std::string>{kWeb});  // api has no entry
  ASSERT_TRUE(For(kNodeAgent, true, "node-2", &n2)) << error_;
  EXPECT_EQ(NodeWorkloads(n2),
            (std::vector<std::string>{"demo/api-b " + std::string(kApi) + " 10.244.2.6",
                                      "demo/cache-a " + std::string(kCache) + " 10.244.2.7"}));
  EXPECT_EQ(PolicyIds(n2), std::vector<std::string>{kCache});
}

TEST_F(MeshView, ANodeAgentOfAnEmptyNodeGetsAnEmptyNodeWorkloadsNotNone) {
  LoadMesh();
  LoadCluster();
  Build();
  Snapshot s;
  ASSERT_TRUE(For(kNodeAgent, true, "node-9", &s)) << error_;
  ASSERT_NE(s.msg->node_workloads, nullptr);  // present: "nobody runs here"
  EXPECT_STREQ(s.msg->node_workloads->node_name, "node-9");
  EXPECT_EQ(s.msg->node_workloads->n_workloads, 0u);
  EXPECT_TRUE(PolicyIds(s).empty());
}

TEST_F(MeshView, ANodeAgentWithoutANodeClaimIsServedAsASidecar) {
  LoadMesh();
  LoadCluster();
  Build();
  Snapshot s;
  ASSERT_TRUE(For(kNodeAgent, true, "", &s)) << error_;
  EXPECT_EQ(s.msg->node_workloads, nullptr);
  EXPECT_TRUE(PolicyIds(s).empty());
}

TEST_F(MeshView, WithoutAnySourceANodeAgentGetsNoNodeWorkloads) {
  LoadMesh();
  Build(0, false);
  Snapshot s;
  ASSERT_TRUE(For(kNodeAgent, true, "node-1", &s)) << error_;
  EXPECT_EQ(s.msg->node_workloads, nullptr);  // the agent keeps its static list
  EXPECT_EQ(s.msg->n_destinations, 0u);
}

TEST_F(MeshView, TheRegistryFeedsNodeWorkloadsWhenThereIsNoCluster) {
  LoadMesh();
  std::string path =
      dir_.Write("workloads.yaml",
                 "workloads:\n"
                 "  - {node: node-1, spiffe_id: 'spiffe://example.org/ns/demo/sa/web',"
                 " address: 10.77.1.2}\n"
                 "  - {node: node-1, spiffe_id: 'spiffe://example.org/ns/demo/sa/cache'}\n"
                 "  - {node: node-2, spiffe_id: 'spiffe://example.org/ns/demo/sa/api',"
                 " address: 10.77.2.2}\n");
  char err[512] = "";
  workloads_ = mt_workloads_load(path.c_str(), "example.org", err, sizeof(err));
  ASSERT_NE(workloads_, nullptr) << err;
  Build(0, false);
  ASSERT_NE(view_, nullptr) << error_;
  Snapshot s;
  ASSERT_TRUE(For(kNodeAgent, true, "node-1", &s)) << error_;
  // cache has no address: not a Workload, but its policy still comes along.
  EXPECT_EQ(NodeWorkloads(s), std::vector<std::string>{"/ " + std::string(kWeb) + " 10.77.1.2"});
  EXPECT_EQ(PolicyIds(s), (std::vector<std::string>{kCache, kWeb}));
  EXPECT_EQ(mt_mesh_view_num_derived_destinations(view_), 0u);  // the registry derives none
}

// ---- derived destinations --------------------------------------------------

TEST_F(MeshView, AServiceAddressAcceptsEveryReadyEndpointsIdentity) {
  LoadMesh("");
  LoadCluster();
  Build();
  Snapshot s;
  ASSERT_TRUE(For(kWeb, false, nullptr, &s)) << error_;
  std::map<std::string, std::string> d;
  for (const auto &[address, ids] : Destinations(s)) d[address] = ids;
  // Sorted identities; cache-a's endpoint is not ready.
  std::string both = "|" + std::string(kApi) + "," + kWeb;
  EXPECT_EQ(d["10.96.0.20:80"], both);
  EXPECT_EQ(d["[fd00:96::20]:80"], both);
  EXPECT_EQ(d["10.244.1.5"], "|" + std::string(kWeb));
  EXPECT_EQ(d["fd00:10:244:1::5"], "|" + std::string(kWeb));
  EXPECT_EQ(d["10.244.2.7"], "|" + std::string(kCache));
  EXPECT_EQ(d.size(), 7u);  // 2 service addresses + 5 pod IPs
  // In address order.
  auto list = Destinations(s);
  for (size_t i = 1; i < list.size(); i++) EXPECT_LT(list[i - 1].first, list[i].first);
}

TEST_F(MeshView, AServiceAddressCarriesItsReadyEndpointsWithTheirTargetPortAndIdentity) {
  LoadMesh("");
  LoadCluster();
  Build();
  Snapshot s;
  ASSERT_TRUE(For(kNodeAgent, true, "node-1", &s)) << error_;
  // Only the IPv4 ClusterIP: the slice is IPv4. Pod IPs never carry any.
  EXPECT_EQ(
      EndpointsOf(s),
      (std::map<std::string, std::string>{
          {"10.96.0.20:80", "10.244.1.5:8080=" + std::string(kWeb) + " 10.244.2.6:8080=" + kApi},
      }));
}

TEST_F(MeshView, AnIpv6ClusterIpGetsItsIpv6EndpointsInBrackets) {
  LoadMesh("");
  LoadCluster();
  std::string v6 = SliceJson("demo", "web", "web-v6", {{"web-a", "fd00:10:244:1::5", true}});
  v6.replace(v6.find("\"IPv4\""), 6, "\"IPv6\"");
  Apply(v6);
  Build();
  Snapshot s;
  ASSERT_TRUE(For(kWeb, false, nullptr, &s)) << error_;
  EXPECT_EQ(EndpointsOf(s)["[fd00:96::20]:80"], "[fd00:10:244:1::5]:8080=" + std::string(kWeb));
}

TEST_F(MeshView, AnOverriddenServiceAddressHasNoEndpoints) {
  LoadMesh(
      "destinations:\n"
      "  - address: 10.96.0.20:80\n"
      "    spiffe_id: spiffe://example.org/ns/demo/sa/operator-says\n");
  LoadCluster();
  Build();
  Snapshot s;
  ASSERT_TRUE(For(kWeb, false, nullptr, &s)) << error_;
  EXPECT_TRUE(EndpointsOf(s).empty());
}

// 1,000 Services of 10 ready endpoints each (10,000 pods): what endpoints
// cost in the shared part, printed for the README.
TEST_F(MeshView, AThousandServicesOfTenEndpointsFitWithRoomToSpare) {
  LoadMesh("");
  for (int svc = 0; svc < 1000; svc++) {
    std::string name = "svc-" + std::to_string(svc);
    std::vector<std::tuple<std::string, std::string, bool>> eps;
    for (int e = 0; e < 10; e++) {
      int i = svc * 10 + e;
      std::string ip = "10.1." + std::to_string(i / 250) + "." + std::to_string(i % 250 + 1);
      std::string pod = name + "-" + std::to_string(e);
      Apply(PodJson("demo", pod, name, "node-" + std::to_string(i % 100), {ip}));
      eps.emplace_back(pod, ip, true);
    }
    Apply(ServiceJson("demo", name,
                      {"10.96." + std::to_string(svc / 250) + "." + std::to_string(svc % 250 + 1)},
                      {80}));
    Apply(SliceJson("demo", name, name + "-1", eps));
  }
  Build();
  ASSERT_NE(view_, nullptr) << error_;
  EXPECT_EQ(mt_mesh_view_num_derived_destinations(view_), 11000u);
  size_t with_endpoints = mt_mesh_view_shared_len(view_);
  Snapshot s;
  ASSERT_TRUE(For(kWeb, false, nullptr, &s)) << error_;
  size_t endpoint_bytes = 0;
  for (size_t i = 0; i < s.msg->n_destinations; i++) {
    const Mtlsd__Mesh__V1__Destination *d = s.msg->destinations[i];
    for (size_t j = 0; j < d->n_endpoints; j++) {
      size_t len = mtlsd__mesh__v1__endpoint__get_packed_size(d->endpoints[j]);
      endpoint_bytes += len + 1 + (len < 128 ? 1 : 2);  // + its tag and length
    }
  }
  std::printf(
      "1000 services x 10 endpoints: shared part %zu bytes, of which endpoints %zu "
      "(%zu per endpoint); the limit is %d\n",
      with_endpoints, endpoint_bytes, endpoint_bytes / 10000, (int)MT_MESH_SNAPSHOT_MAX_BYTES);
  EXPECT_LT(with_endpoints, (size_t)MT_MESH_SNAPSHOT_MAX_BYTES / 2);
}

TEST_F(MeshView, AServiceAddressWithoutAReadyEndpointIsLeftOut) {
  LoadMesh("");
  LoadCluster();
  Apply(SliceJson("demo", "web", "web-1", {{"web-a", "10.244.1.5", false}}));
  Build();
  Snapshot s;
  ASSERT_TRUE(For(kWeb, false, nullptr, &s)) << error_;
  for (const auto &[address, ids] : Destinations(s)) {
    EXPECT_NE(address, "10.96.0.20:80");
    EXPECT_NE(address, "[fd00:96::20]:80");
  }
}

TEST_F(MeshView, AnEndpointSliceChangeChangesTheServiceIdentities) {
  LoadMesh("");
  LoadCluster();
  Build();
  Snapshot before, after;
  ASSERT_TRUE(For(kWeb, false, nullptr, &before));
  Apply(SliceJson("demo", "web", "web-1", {{"cache-a", "10.244.2.7", true}}));
  Build();
  ASSERT_TRUE(For(kWeb, false, nullptr, &after));
  EXPECT_NE(before.digest, after.digest);
  std::map<std::string, std::string> d;
  for (const auto &[address, ids] : Destinations(after)) d[address] = ids;
  EXPECT_EQ(d["10.96.0.20:80"], "|" + std::string(kCache));
}

TEST_F(MeshView, AMeshFileDestinationForTheSameAddressWinsOverTheDerivedOne) {
  // Written in another form than the derived "[fd00:96::20]:80".
  LoadMesh(
      "destinations:\n"
      "  - address: \"[FD00:96:0::20]:80\"\n"
      "    spiffe_id: spiffe://example.org/ns/demo/sa/operator-says\n"
      "  - address: 10.96.0.20:80\n"
      "    spiffe_id: spiffe://example.org/ns/demo/sa/operator-says\n");
  LoadCluster();
  Build();
  Snapshot s;
  ASSERT_TRUE(For(kWeb, false, nullptr, &s)) << error_;
  auto list = Destinations(s);
  ASSERT_GE(list.size(), 2u);
  // The file's entries come first, as written, and no derived entry repeats them.
  EXPECT_EQ(list[0].first, "[FD00:96:0::20]:80");
  EXPECT_EQ(list[1].first, "10.96.0.20:80");
  EXPECT_EQ(list[1].second, "spiffe://example.org/ns/demo/sa/operator-says|");
  for (size_t i = 2; i < list.size(); i++) {
    EXPECT_NE(list[i].first, "10.96.0.20:80");
    EXPECT_NE(list[i].first, "[fd00:96::20]:80");
  }
  EXPECT_EQ(list.size(), 2u + 5u);  // the pod IPs stay
}

// ---- destinations on demand ---------------------------------------------------

static std::vector<std::string> Unresolved(const Snapshot &s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.msg->n_unresolved; i++) out.push_back(s.msg->unresolved[i]->address);
  return out;
}

TEST_F(MeshView, OnDemandACallerGetsOnlyTheAddressesItAskedForAndTheRestAsUnresolved) {
  LoadMesh();
  LoadCluster();
  Build();
  Snapshot all, some;
  ASSERT_TRUE(For(kWeb, false, nullptr, &all)) << error_;
  // Canonical, sorted: the Service address, a pod (its IP-alone entry) on two
  // ports, and an address the mesh does not know.
  std::vector<std::string> wanted = {"10.244.2.7:9090", "10.244.2.7:9091", "10.9.9.9:80",
                                     "10.96.0.20:80"};
  ASSERT_TRUE(For(kWeb, false, nullptr, &some, &wanted)) << error_;
  EXPECT_TRUE(some.msg->on_demand_destinations);
  EXPECT_FALSE(all.msg->on_demand_destinations);
  std::vector<std::string> addresses;
  for (const auto &d : Destinations(some)) addresses.push_back(d.first);
  std::sort(addresses.begin(), addresses.end());
  EXPECT_EQ(addresses, (std::vector<std::string>{"10.244.2.7", "10.96.0.20:80"}));
  EXPECT_EQ(Unresolved(some), (std::vector<std::string>{"10.9.9.9:80"}));
  // Byte for byte the entries everyone else gets, endpoints included.
  for (size_t i = 0; i < some.msg->n_destinations; i++) {
    const Mtlsd__Mesh__V1__Destination *d = some.msg->destinations[i];
    bool matched = false;
    for (size_t j = 0; j < all.msg->n_destinations; j++) {
      const Mtlsd__Mesh__V1__Destination *e = all.msg->destinations[j];
      if (strcmp(d->address, e->address) != 0) continue;
      matched = true;
      EXPECT_EQ(d->n_spiffe_ids, e->n_spiffe_ids);
      EXPECT_EQ(d->n_endpoints, e->n_endpoints);
    }
    EXPECT_TRUE(matched) << d->address;
  }
  // Everything but the destinations is what everyone gets.
  EXPECT_EQ(some.msg->n_trust_bundles, all.msg->n_trust_bundles);
  EXPECT_EQ(PolicyIds(some), PolicyIds(all));
  EXPECT_LT(some.bytes.size(), all.bytes.size());
  EXPECT_NE(some.digest, all.digest);
}

TEST_F(MeshView, OnDemandNothingAskedMeansNoDestinationsAndADigestThatFollowsTheAsking) {
  LoadMesh();
  LoadCluster();
  Build();
  std::vector<std::string> none, one = {"10.96.0.20:80"};
  Snapshot a, b, c;
  ASSERT_TRUE(For(kApi, false, nullptr, &a, &none)) << error_;
  ASSERT_TRUE(For(kApi, false, nullptr, &b, &one)) << error_;
  ASSERT_TRUE(For(kApi, false, nullptr, &c, &one)) << error_;
  EXPECT_TRUE(a.msg->on_demand_destinations);
  EXPECT_EQ(a.msg->n_destinations, 0u);
  EXPECT_EQ(a.msg->n_unresolved, 0u);
  EXPECT_NE(a.digest, b.digest);
  EXPECT_EQ(b.digest, c.digest);  // deterministic
}

TEST_F(MeshView, OnDemandAMeshFileAddressWrittenAnotherWayIsFoundByItsCanonicalForm) {
  LoadMesh(
      "destinations:\n"
      "  - address: \"[FD00:96:0::20]:80\"\n"
      "    spiffe_id: spiffe://example.org/ns/demo/sa/operator-says\n"
      "  - address: 10.0.0.9\n"
      "    spiffe_id: spiffe://example.org/ns/demo/sa/db\n");
  LoadCluster();
  Build();
  std::vector<std::string> wanted = {"10.0.0.9:5432", "[fd00:96::20]:80"};
  Snapshot s;
  ASSERT_TRUE(For(kWeb, false, nullptr, &s, &wanted)) << error_;
  std::vector<std::string> addresses;
  for (const auto &d : Destinations(s)) addresses.push_back(d.first);
  std::sort(addresses.begin(), addresses.end());
  EXPECT_EQ(addresses, (std::vector<std::string>{"10.0.0.9", "[FD00:96:0::20]:80"}));
  EXPECT_EQ(s.msg->n_unresolved, 0u);
}

TEST_F(MeshView, OnDemandTheEndpointChangeOfAnAskedServiceChangesTheDigestAndOfAnotherDoesNot) {
  LoadMesh();
  LoadCluster();
  Build();
  std::vector<std::string> wanted = {"10.96.0.20:80"};
  Snapshot before, after, elsewhere;
  ASSERT_TRUE(For(kApi, false, nullptr, &before, &wanted)) << error_;
  // A pod the caller never asked about appears: nothing changes for it.
  Apply(PodJson("demo", "other-a", "api", "node-3", {"10.244.3.9"}));
  Build();
  ASSERT_TRUE(For(kApi, false, nullptr, &elsewhere, &wanted)) << error_;
  EXPECT_EQ(before.digest, elsewhere.digest);
  // The Service it asked for loses an endpoint: it changes.
  Apply(SliceJson("demo", "web", "web-1", {{"web-a", "10.244.1.5", true}}));
  Build();
  ASSERT_TRUE(For(kApi, false, nullptr, &after, &wanted)) << error_;
  EXPECT_NE(before.digest, after.digest);
}

TEST(MeshViewAddress, CanonicalAddressesAreTheKeysTheViewUses) {
  char out[MT_MESH_ADDRESS_MAX];
  ASSERT_TRUE(mt_mesh_view_canonical_address("[FD00:96:0::20]:80", out));
  EXPECT_STREQ(out, "[fd00:96::20]:80");
  ASSERT_TRUE(mt_mesh_view_canonical_address("10.0.0.1:443", out));
  EXPECT_STREQ(out, "10.0.0.1:443");
  EXPECT_FALSE(mt_mesh_view_canonical_address("10.0.0.1", out));
  EXPECT_FALSE(mt_mesh_view_canonical_address("10.0.0.1:0", out));
  EXPECT_FALSE(mt_mesh_view_canonical_address("10.0.0.1:65536", out));
  EXPECT_FALSE(mt_mesh_view_canonical_address("example.org:80", out));
  EXPECT_FALSE(mt_mesh_view_canonical_address("fd00::1:80", out));
}

// ---- digests ---------------------------------------------------------------

TEST_F(MeshView, TheContentAndDigestDoNotDependOnTheOrderEventsArrivedIn) {
  LoadMesh();
  LoadCluster();
  Build();
  Snapshot a;
  ASSERT_TRUE(For(kNodeAgent, true, "node-2", &a));
  // The same objects, applied in reverse order, into a fresh state.
  mt_cluster_state *other = mt_cluster_state_new("example.org");
  ApplyTo(other,
          SliceJson("demo", "web", "web-1",
                    {{"cache-a", "10.244.2.7", false},
                     {"api-b", "10.244.2.6", true},
                     {"web-a", "10.244.1.5", true}}),
          MT_K8S_KIND_ENDPOINTSLICE);
  ApplyTo(other, ServiceJson("demo", "web", {"10.96.0.20", "fd00:96::20"}, {80}),
          MT_K8S_KIND_SERVICE);
  ApplyTo(other, PodJson("demo", "cache-a", "cache", "node-2", {"10.244.2.7"}), MT_K8S_KIND_POD);
  ApplyTo(other, PodJson("demo", "api-b", "api", "node-2", {"10.244.2.6"}), MT_K8S_KIND_POD);
  ApplyTo(other, PodJson("demo", "api-a", "api", "node-1", {"10.244.1.6"}), MT_K8S_KIND_POD);
  ApplyTo(other, PodJson("demo", "web-a", "web", "node-1", {"10.244.1.5", "fd00:10:244:1::5"}),
          MT_K8S_KIND_POD);
  ApplyTo(other, NamespaceJson("demo"), MT_K8S_KIND_NAMESPACE);
  std::swap(other, state_);
  Build();
  std::swap(other, state_);
  mt_cluster_state_free(other);
  Snapshot b;
  ASSERT_TRUE(For(kNodeAgent, true, "node-2", &b));
  EXPECT_EQ(a.digest, b.digest);
  EXPECT_EQ(a.bytes, b.bytes);
}

TEST_F(MeshView, APodReplacedOnAnotherNodeLeavesThisNodeAgentsDigestAlone) {
  LoadMesh();
  LoadCluster();
  Build();
  Snapshot n1_before, n2_before;
  ASSERT_TRUE(For(kNodeAgent, true, "node-1", &n1_before));
  ASSERT_TRUE(For(kNodeAgent, true, "node-2", &n2_before));
  // cache-a is replaced by cache-b with the same identity and IP (so no
  // destination changes), and api-b gets a label nobody is sent.
  Apply(PodJson("demo", "cache-a", "cache", "node-2", {"10.244.2.7"}), MT_CLUSTER_REMOVE);
  Apply(PodJson("demo", "cache-b", "cache", "node-2", {"10.244.2.7"}));
  Apply(PodJson("demo", "api-b", "api", "node-2", {"10.244.2.6"}, "colour"));
  Build();
  Snapshot n1_after, n2_after, web_after;
  ASSERT_TRUE(For(kNodeAgent, true, "node-1", &n1_after));
  ASSERT_TRUE(For(kNodeAgent, true, "node-2", &n2_after));
  EXPECT_EQ(n1_before.digest, n1_after.digest);
  EXPECT_NE(n2_before.digest, n2_after.digest);
  EXPECT_EQ(NodeWorkloads(n2_after)[1], "demo/cache-b " + std::string(kCache) + " 10.244.2.7");
}

TEST_F(MeshView, ANewPodChangesTheSharedDestinationsForEveryone) {
  LoadMesh();
  LoadCluster();
  Build();
  Snapshot before;
  ASSERT_TRUE(For(kNodeAgent, true, "node-1", &before));
  Apply(PodJson("demo", "cache-c", "cache", "node-2", {"10.244.2.8"}));
  Build();
  Snapshot after;
  ASSERT_TRUE(For(kNodeAgent, true, "node-1", &after));
  // node-1's pods are the same, but it may now dial 10.244.2.8 by identity.
  EXPECT_EQ(NodeWorkloads(before), NodeWorkloads(after));
  EXPECT_NE(before.digest, after.digest);
}

// ---- size limit ------------------------------------------------------------

TEST_F(MeshView, ASharedPartOverTheLimitIsRefusedWithTheNumbers) {
  LoadMesh();
  LoadCluster();
  Build(200);
  EXPECT_EQ(view_, nullptr);
  EXPECT_NE(error_.find("agents accept at most 200"), std::string::npos) << error_;
  EXPECT_NE(error_.find("derived from the cluster"), std::string::npos) << error_;
}

TEST_F(MeshView, ACallerWhoseOwnFieldsWouldPassTheLimitIsRefusedAndOthersAreNot) {
  LoadMesh();
  LoadCluster();
  Build();
  ASSERT_NE(view_, nullptr);
  size_t shared = mt_mesh_view_shared_len(view_);
  Build(shared + 64);  // room for a sidecar's policy entry, not for a node's pods
  ASSERT_NE(view_, nullptr) << error_;
  Snapshot sidecar, node;
  EXPECT_TRUE(For(kWeb, false, nullptr, &sidecar)) << error_;
  EXPECT_FALSE(For(kNodeAgent, true, "node-1", &node));
  EXPECT_NE(error_.find("the snapshot for " + std::string(kNodeAgent) + " would be"),
            std::string::npos)
      << error_;
}

TEST_F(MeshView, TenThousandPodsFitAndCostOneSharedEncoding) {
  LoadMesh();
  for (int i = 0; i < 10000; i++) {
    std::string ip = "10.1." + std::to_string(i / 250) + "." + std::to_string(i % 250 + 1);
    Apply(PodJson("demo", "p-" + std::to_string(i), "sa" + std::to_string(i % 500),
                  "node-" + std::to_string(i % 100), {ip}));
  }
  Build();
  ASSERT_NE(view_, nullptr) << error_;
  EXPECT_EQ(mt_mesh_view_num_derived_destinations(view_), 10000u);
  EXPECT_LT(mt_mesh_view_shared_len(view_), (size_t)MT_MESH_SNAPSHOT_MAX_BYTES);
  Snapshot s;
  ASSERT_TRUE(For(kNodeAgent, true, "node-7", &s)) << error_;
  EXPECT_EQ(s.msg->node_workloads->n_workloads, 100u);
}

// ---- Istio policies ----------------------------------------------------------

class MeshViewIstio : public MeshView {
 protected:
  void SetUp() override {
    MeshView::SetUp();
    mt_istio_options options = {nullptr, MTLSD__MESH__V1__MTLS_MODE__MTLS_MODE_UNSPECIFIED};
    istio_ = mt_istio_policies_new(&options);
    ASSERT_NE(istio_, nullptr);
  }
  void TearDown() override {
    MeshView::TearDown();
    mt_istio_policies_free(istio_);
  }

  void ApplyIstio(mt_istio_kind kind, const std::string &json) {
    mt_test::Json obj(mt_test::ParseJson(json));
    char err[512] = "";
    ASSERT_TRUE(mt_istio_policies_apply(istio_, kind, MT_CLUSTER_UPSERT, obj, err, sizeof(err)))
        << err;
  }

  // A running pod with labels |labels_json| (an object).
  void AddPod(const std::string &name, const std::string &sa, const std::string &ip,
              const std::string &labels_json) {
    Apply("{\"metadata\":{\"name\":\"" + name + "\",\"namespace\":\"demo\",\"labels\":" +
          labels_json + "},\"spec\":{\"nodeName\":\"node-1\",\"serviceAccountName\":\"" + sa +
          "\"},\"status\":{\"phase\":\"Running\",\"podIPs\":[{\"ip\":\"" + ip + "\"}]}}");
  }

  const Mtlsd__Mesh__V1__WorkloadPolicy *PolicyOf(const Snapshot &s, const char *id) {
    for (size_t i = 0; i < s.msg->n_workload_policies; i++)
      if (strcmp(s.msg->workload_policies[i]->spiffe_id, id) == 0)
        return s.msg->workload_policies[i];
    return nullptr;
  }
};

const char kAllowFromFrontend[] =
    "{\"apiVersion\":\"security.istio.io/v1\",\"kind\":\"AuthorizationPolicy\","
    "\"metadata\":{\"name\":\"backend-allow\",\"namespace\":\"demo\"},"
    "\"spec\":{\"selector\":{\"matchLabels\":{\"app\":\"backend\"}},\"action\":\"ALLOW\","
    "\"rules\":[{\"from\":[{\"source\":{\"principals\":"
    "[\"example.org/ns/demo/sa/frontend\"]}}]}]}}";

TEST_F(MeshViewIstio, EveryClusterIdentityGetsItsCompiledPolicyAndPeerAuthentication) {
  LoadMesh();
  AddPod("backend-a", "backend", "10.244.1.20", "{\"app\":\"backend\"}");
  AddPod("frontend-a", "frontend", "10.244.1.21", "{\"app\":\"frontend\"}");
  ApplyIstio(MT_ISTIO_AUTHORIZATION_POLICY, kAllowFromFrontend);
  Build();
  ASSERT_NE(view_, nullptr) << error_;
  const char kBackend[] = "spiffe://example.org/ns/demo/sa/backend";
  const char kFrontend[] = "spiffe://example.org/ns/demo/sa/frontend";
  Snapshot backend, frontend;
  ASSERT_TRUE(For(kBackend, false, nullptr, &backend)) << error_;
  ASSERT_TRUE(For(kFrontend, false, nullptr, &frontend)) << error_;
  const Mtlsd__Mesh__V1__WorkloadPolicy *b = PolicyOf(backend, kBackend);
  ASSERT_NE(b, nullptr);
  ASSERT_NE(b->policy, nullptr);
  EXPECT_EQ(b->policy->default_action, MTLSD__MESH__V1__ACTION__DENY);
  ASSERT_EQ(b->policy->n_rules, 1u);
  EXPECT_STREQ(b->policy->rules[0]->name, "demo/backend-allow[0]");
  ASSERT_NE(b->peer_authentication, nullptr);
  EXPECT_EQ(b->peer_authentication->mode, MTLSD__MESH__V1__MTLS_MODE__PERMISSIVE);
  const Mtlsd__Mesh__V1__WorkloadPolicy *f = PolicyOf(frontend, kFrontend);
  ASSERT_NE(f, nullptr);  // selected by nothing: allow, but still an entry
  EXPECT_EQ(f->policy->default_action, MTLSD__MESH__V1__ACTION__ALLOW);
  EXPECT_EQ(f->policy->n_rules, 0u);
  EXPECT_STREQ(mt_mesh_view_policy_notes(view_), "");
}

TEST_F(MeshViewIstio, TheMeshFilesEntryOfACoveredIdentityIsReplacedAndSaidOnce) {
  LoadMesh();     // entries for web (default deny) and cache
  LoadCluster();  // web, api and cache run in the cluster
  Build();
  ASSERT_NE(view_, nullptr) << error_;
  Snapshot web;
  ASSERT_TRUE(For(kWeb, false, nullptr, &web)) << error_;
  ASSERT_EQ(PolicyIds(web), std::vector<std::string>{kWeb});
  EXPECT_EQ(web.msg->workload_policies[0]->policy->default_action,
            MTLSD__MESH__V1__ACTION__ALLOW);  // no Istio policy selects web
  EXPECT_NE(web.msg->workload_policies[0]->peer_authentication, nullptr);
  std::string notes = mt_mesh_view_policy_notes(view_);
  EXPECT_NE(notes.find("workload_policies entry for " + std::string(kWeb) + " is replaced"),
            std::string::npos)
      << notes;
  EXPECT_NE(notes.find("workload_policies entry for " + std::string(kCache) + " is replaced"),
            std::string::npos)
      << notes;
}

TEST_F(MeshViewIstio, AMeshFileEntryForAnIdentityOutsideTheClusterStays) {
  LoadMesh(std::string(kPolicies) +
           "  - spiffe_id: spiffe://example.org/ns/vm/sa/legacy\n"
           "    policy: {default: deny}\n");
  LoadCluster();
  Build();
  ASSERT_NE(view_, nullptr) << error_;
  Snapshot legacy;
  ASSERT_TRUE(For("spiffe://example.org/ns/vm/sa/legacy", false, nullptr, &legacy)) << error_;
  ASSERT_EQ(legacy.msg->n_workload_policies, 1u);
  EXPECT_EQ(legacy.msg->workload_policies[0]->policy->default_action,
            MTLSD__MESH__V1__ACTION__DENY);
  EXPECT_EQ(legacy.msg->workload_policies[0]->peer_authentication, nullptr);
}

TEST_F(MeshViewIstio, PodsOfOneIdentityThatCompileDifferentlyDenyEverythingAndAreNamed) {
  LoadMesh("");
  AddPod("backend-a", "shared", "10.244.1.20", "{\"app\":\"backend\"}");
  AddPod("other-a", "shared", "10.244.1.22", "{\"app\":\"other\"}");
  ApplyIstio(MT_ISTIO_AUTHORIZATION_POLICY, kAllowFromFrontend);
  Build();
  ASSERT_NE(view_, nullptr) << error_;
  const char kShared[] = "spiffe://example.org/ns/demo/sa/shared";
  Snapshot s;
  ASSERT_TRUE(For(kShared, false, nullptr, &s)) << error_;
  const Mtlsd__Mesh__V1__WorkloadPolicy *p = PolicyOf(s, kShared);
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(p->policy->n_rules, 1u);
  const Mtlsd__Mesh__V1__Rule *r = p->policy->rules[0];
  EXPECT_STREQ(r->name, "identity-conflict");
  EXPECT_EQ(r->action, MTLSD__MESH__V1__ACTION__DENY);
  EXPECT_TRUE(r->istio);
  EXPECT_EQ(r->n_sources + r->n_operations + r->n_conditions, 0u);  // matches every peer
  std::string reduced = r->reduced;
  EXPECT_NE(reduced.find("demo/backend-a, demo/other-a"), std::string::npos) << reduced;
  EXPECT_NE(reduced.find("distinct service accounts"), std::string::npos) << reduced;
  std::string notes = mt_mesh_view_policy_notes(view_);
  EXPECT_NE(notes.find(kShared), std::string::npos) << notes;
}

TEST_F(MeshViewIstio, PodsOfOneIdentityThatCompileAlikeShareTheirPolicy) {
  LoadMesh("");
  AddPod("backend-a", "backend", "10.244.1.20", "{\"app\":\"backend\",\"pod\":\"a\"}");
  AddPod("backend-b", "backend", "10.244.1.23", "{\"app\":\"backend\",\"pod\":\"b\"}");
  ApplyIstio(MT_ISTIO_AUTHORIZATION_POLICY, kAllowFromFrontend);
  Build();
  ASSERT_NE(view_, nullptr) << error_;
  Snapshot s;
  ASSERT_TRUE(For("spiffe://example.org/ns/demo/sa/backend", false, nullptr, &s)) << error_;
  ASSERT_EQ(s.msg->n_workload_policies, 1u);
  ASSERT_EQ(s.msg->workload_policies[0]->policy->n_rules, 1u);
  EXPECT_STREQ(s.msg->workload_policies[0]->policy->rules[0]->name, "demo/backend-allow[0]");
  EXPECT_STREQ(mt_mesh_view_policy_notes(view_), "");
}

TEST_F(MeshViewIstio, ATargetRefToAServiceSelectsThePodsBehindIt) {
  LoadMesh("");
  AddPod("backend-a", "backend", "10.244.1.20", "{\"app\":\"backend\"}");
  AddPod("frontend-a", "frontend", "10.244.1.21", "{\"app\":\"frontend\"}");
  Apply(
      "{\"metadata\":{\"name\":\"backend\",\"namespace\":\"demo\"},\"spec\":{\"clusterIPs\":"
      "[\"10.96.0.30\"],\"ports\":[{\"port\":80}],\"selector\":{\"app\":\"backend\"}}}");
  ApplyIstio(MT_ISTIO_AUTHORIZATION_POLICY,
             "{\"apiVersion\":\"security.istio.io/v1\",\"kind\":\"AuthorizationPolicy\","
             "\"metadata\":{\"name\":\"deny-all\",\"namespace\":\"demo\"},"
             "\"spec\":{\"targetRefs\":[{\"kind\":\"Service\",\"group\":\"\",\"name\":"
             "\"backend\"}],\"action\":\"DENY\",\"rules\":[{}]}}");
  Build();
  ASSERT_NE(view_, nullptr) << error_;
  const char kBackend[] = "spiffe://example.org/ns/demo/sa/backend";
  const char kFrontend[] = "spiffe://example.org/ns/demo/sa/frontend";
  Snapshot backend, frontend;
  ASSERT_TRUE(For(kBackend, false, nullptr, &backend)) << error_;
  ASSERT_TRUE(For(kFrontend, false, nullptr, &frontend)) << error_;
  ASSERT_EQ(PolicyOf(backend, kBackend)->policy->n_rules, 1u);
  EXPECT_STREQ(PolicyOf(backend, kBackend)->policy->rules[0]->name, "demo/deny-all[0]");
  EXPECT_EQ(PolicyOf(frontend, kFrontend)->policy->n_rules, 0u);
}

TEST_F(MeshViewIstio, ADeltaBetweenTwoViewsCarriesTheWholeNewWorkloadPolicy) {
  LoadMesh("");
  AddPod("backend-a", "backend", "10.244.1.20", "{\"app\":\"backend\"}");
  const char kBackend[] = "spiffe://example.org/ns/demo/sa/backend";
  Build();
  ASSERT_NE(view_, nullptr) << error_;
  mt_mesh_caller caller = {kBackend, 0, nullptr, 0, nullptr, 0};
  char err[MT_MESH_VIEW_ERR_MAX] = "";
  mt_mesh_view_snapshot *before = mt_mesh_view_for(view_, &caller, err, sizeof(err));
  ASSERT_NE(before, nullptr) << err;
  size_t before_len = 0;
  const uint8_t *b = mt_mesh_view_snapshot_own(before, &before_len);
  mt_mesh_entries *from = mt_mesh_entries_parse(b, before_len, err, sizeof(err));
  ASSERT_NE(from, nullptr) << err;
  mt_mesh_view_snapshot_free(before);

  ApplyIstio(MT_ISTIO_AUTHORIZATION_POLICY, kAllowFromFrontend);
  ApplyIstio(MT_ISTIO_PEER_AUTHENTICATION,
             "{\"apiVersion\":\"security.istio.io/v1\",\"kind\":\"PeerAuthentication\","
             "\"metadata\":{\"name\":\"strict\",\"namespace\":\"demo\"},"
             "\"spec\":{\"mtls\":{\"mode\":\"STRICT\"}}}");
  Build();
  ASSERT_NE(view_, nullptr) << error_;
  mt_mesh_view_snapshot *after = mt_mesh_view_for(view_, &caller, err, sizeof(err));
  ASSERT_NE(after, nullptr) << err;
  size_t after_len = 0;
  const uint8_t *a = mt_mesh_view_snapshot_own(after, &after_len);
  mt_mesh_entries *to = mt_mesh_entries_parse(a, after_len, err, sizeof(err));
  ASSERT_NE(to, nullptr) << err;
  size_t delta_len = 0, changed = 0, removed = 0;
  uint8_t *delta = mt_mesh_entries_diff(from, to, &delta_len, &changed, &removed);
  ASSERT_NE(delta, nullptr);
  EXPECT_EQ(changed, 1u);
  // The delta's entry is the whole new WorkloadPolicy: decode it as a snapshot.
  Mtlsd__Mesh__V1__MeshSnapshot *d =
      mtlsd__mesh__v1__mesh_snapshot__unpack(nullptr, delta_len, delta);
  ASSERT_NE(d, nullptr);
  ASSERT_EQ(d->n_workload_policies, 1u);
  ASSERT_NE(d->workload_policies[0]->peer_authentication, nullptr);
  EXPECT_EQ(d->workload_policies[0]->peer_authentication->mode, MTLSD__MESH__V1__MTLS_MODE__STRICT);
  EXPECT_STREQ(d->workload_policies[0]->peer_authentication->source, "demo/strict");
  ASSERT_EQ(d->workload_policies[0]->policy->n_allow_policies, 1u);
  EXPECT_STREQ(d->workload_policies[0]->policy->allow_policies[0], "demo/backend-allow");
  mtlsd__mesh__v1__mesh_snapshot__free_unpacked(d, nullptr);
  free(delta);
  mt_mesh_entries_free(from);
  mt_mesh_entries_free(to);
  mt_mesh_view_snapshot_free(after);
}

}  // namespace
