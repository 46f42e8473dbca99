// cluster_state: workloads and service identities derived from API events.
#include "controlplane/cluster_state.h"

#include <stdlib.h>

#include <algorithm>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/controlplane/k8s_fixture.h"

using mt_test::Json;
using mt_test::LoadK8sFixture;
using mt_test::SetPath;

namespace {

const char kWeb[] = "spiffe://example.org/ns/demo/sa/web";

class ClusterState : public ::testing::Test {
 protected:
  void SetUp() override { state_ = mt_cluster_state_new("example.org"); }
  void TearDown() override { mt_cluster_state_free(state_); }

  void Apply(mt_k8s_kind kind, mt_cluster_change change, json_t *obj) {
    char err[256] = "";
    ASSERT_TRUE(mt_cluster_state_apply(state_, kind, change, obj, err, sizeof(err))) << err;
  }
  void Upsert(mt_k8s_kind kind, json_t *obj) { Apply(kind, MT_CLUSTER_UPSERT, obj); }
  void Remove(mt_k8s_kind kind, json_t *obj) { Apply(kind, MT_CLUSTER_REMOVE, obj); }

  // The mesh namespace "demo", the pod web on node-1, Service web, its slice.
  void LoadDemo() {
    Json ns(LoadK8sFixture("namespace.json"));
    Json pod(LoadK8sFixture("pod.json"));
    Json svc(LoadK8sFixture("service.json"));
    Json slice(LoadK8sFixture("endpointslice.json"));
    Upsert(MT_K8S_KIND_NAMESPACE, ns);
    Upsert(MT_K8S_KIND_POD, pod);
    Upsert(MT_K8S_KIND_SERVICE, svc);
    Upsert(MT_K8S_KIND_ENDPOINTSLICE, slice);
  }

  std::string Dump() {
    char *text = mt_cluster_state_dump(state_);
    std::string s = text ? text : "(null)";
    free(text);
    return s;
  }

  // "clusterip:port -> ip:port=sa ip:port=sa" for every service address
  // (the service account stands for the identity), sorted.
  std::vector<std::string> Endpoints() {
    std::vector<std::string> seen;
    EXPECT_TRUE(mt_cluster_state_foreach_service_address(
        state_,
        [](void *ctx, const char *ip, uint16_t port, const char *const *, size_t,
           const mt_cluster_endpoint *eps, size_t n) {
          std::string line = std::string(ip) + ":" + std::to_string(port) + " ->";
          for (size_t i = 0; i < n; i++) {
            std::string id = eps[i].spiffe_id;
            line += " " + std::string(eps[i].ip) + ":" + std::to_string(eps[i].port) + "=" +
                    id.substr(id.rfind('/') + 1);
          }
          static_cast<std::vector<std::string> *>(ctx)->push_back(line);
        },
        &seen));
    std::sort(seen.begin(), seen.end());
    return seen;
  }

  // A second pod of Service web: |name| with |sa|, at |ips| (IPv4 first).
  void AddPod(const char *name, const char *sa, json_t *ips) {
    Json pod(LoadK8sFixture("pod.json"));
    SetPath(pod, "metadata.name", json_string(name));
    SetPath(pod, "spec.serviceAccountName", json_string(sa));
    SetPath(pod, "status.podIPs", ips);
    Upsert(MT_K8S_KIND_POD, pod);
  }

  std::string ServiceIds(const char *ip, uint16_t port) {
    const char *ids[8];
    size_t n = mt_cluster_state_service_ids(state_, ip, port, ids, 8);
    std::string s;
    for (size_t i = 0; i < n && i < 8; i++) s += (i ? "," : "") + std::string(ids[i]);
    return s;
  }

  mt_cluster_state *state_ = nullptr;
};

TEST_F(ClusterState, ARunningPodInAMeshNamespaceIsAWorkloadWithItsServiceAccountIdentity) {
  LoadDemo();
  ASSERT_EQ(mt_cluster_state_num_workloads(state_), 1u);
  mt_cluster_workload w;
  ASSERT_TRUE(mt_cluster_state_workload_by_ip(state_, "10.244.1.5", &w));
  EXPECT_STREQ(w.spiffe_id, kWeb);
  EXPECT_STREQ(w.node, "node-1");
  EXPECT_STREQ(w.pod, "web-7d9f8b6c5d-x2v9q");
  ASSERT_EQ(w.num_ips, 2u);
  EXPECT_TRUE(mt_cluster_state_workload_by_ip(state_, "fd00:10:244:1:0::5", &w));
  EXPECT_TRUE(mt_cluster_state_identity_on_node(state_, kWeb, "node-1"));
  EXPECT_FALSE(mt_cluster_state_identity_on_node(state_, kWeb, "node-2"));
}

TEST_F(ClusterState, APodIsNoWorkloadUntilItsNamespaceOptsIn) {
  Json pod(LoadK8sFixture("pod.json"));
  Upsert(MT_K8S_KIND_POD, pod);
  EXPECT_EQ(mt_cluster_state_num_workloads(state_), 0u);
  Json ns(LoadK8sFixture("namespace.json"));
  Upsert(MT_K8S_KIND_NAMESPACE, ns);
  EXPECT_EQ(mt_cluster_state_num_workloads(state_), 1u);
}

TEST_F(ClusterState, UnlabellingOrDeletingTheNamespaceTakesItsPodsOut) {
  LoadDemo();
  Json ns(LoadK8sFixture("namespace.json"));
  SetPath(ns, "metadata.labels", json_pack("{s:s}", "mtlsd.io/mesh", "disabled"));
  Upsert(MT_K8S_KIND_NAMESPACE, ns);
  EXPECT_EQ(mt_cluster_state_num_workloads(state_), 0u);
  EXPECT_EQ(ServiceIds("10.96.0.20", 80), "");
  Json again(LoadK8sFixture("namespace.json"));
  Upsert(MT_K8S_KIND_NAMESPACE, again);
  EXPECT_EQ(mt_cluster_state_num_workloads(state_), 1u);
  Remove(MT_K8S_KIND_NAMESPACE, again);
  EXPECT_EQ(mt_cluster_state_num_workloads(state_), 0u);
}

TEST_F(ClusterState, ATerminatingPodLeavesAtOnce) {
  LoadDemo();
  Json terminating(LoadK8sFixture("pod-terminating.json"));
  Upsert(MT_K8S_KIND_POD, terminating);
  EXPECT_EQ(mt_cluster_state_num_workloads(state_), 0u);
  EXPECT_FALSE(mt_cluster_state_identity_on_node(state_, kWeb, "node-1"));
  EXPECT_EQ(ServiceIds("10.96.0.20", 80), "");
}

TEST_F(ClusterState, ADeletedPodLeaves) {
  LoadDemo();
  Json pod(LoadK8sFixture("pod.json"));
  Remove(MT_K8S_KIND_POD, pod);
  EXPECT_EQ(mt_cluster_state_num_workloads(state_), 0u);
  mt_cluster_workload w;
  EXPECT_FALSE(mt_cluster_state_workload_by_ip(state_, "10.244.1.5", &w));
}

TEST_F(ClusterState, ARemovalNeedsOnlyTheObjectsName) {
  // What a relist's DELETED carries (k8s_watch holds no more of an object).
  LoadDemo();
  Json pod(json_pack("{s:{s:s, s:s, s:s}}", "metadata", "name", "web-7d9f8b6c5d-x2v9q", "namespace",
                     "demo", "resourceVersion", "99"));
  Json full(LoadK8sFixture("pod.json"));
  ASSERT_STREQ(json_string_value(json_object_get(json_object_get(full, "metadata"), "name")),
               "web-7d9f8b6c5d-x2v9q");
  Remove(MT_K8S_KIND_POD, pod);
  EXPECT_EQ(mt_cluster_state_num_workloads(state_), 0u);
  Json ns(json_pack("{s:{s:s, s:s}}", "metadata", "name", "demo", "resourceVersion", "99"));
  Remove(MT_K8S_KIND_NAMESPACE, ns);
}

TEST_F(ClusterState, APendingPodWithoutIpIsNoWorkload) {
  LoadDemo();
  Json pending(LoadK8sFixture("pod-pending.json"));
  Upsert(MT_K8S_KIND_POD, pending);
  EXPECT_EQ(mt_cluster_state_num_workloads(state_), 1u);
}

TEST_F(ClusterState, FailedAndHostNetworkPodsAreNoWorkloads) {
  LoadDemo();
  Json pod(LoadK8sFixture("pod.json"));
  SetPath(pod, "status.phase", json_string("Failed"));
  Upsert(MT_K8S_KIND_POD, pod);
  EXPECT_EQ(mt_cluster_state_num_workloads(state_), 0u);
  SetPath(pod, "status.phase", json_string("Running"));
  SetPath(pod, "spec.hostNetwork", json_true());
  Upsert(MT_K8S_KIND_POD, pod);
  EXPECT_EQ(mt_cluster_state_num_workloads(state_), 0u);
}

TEST_F(ClusterState, APodMovingNodesIsOnlyOnItsNewNode) {
  LoadDemo();
  Json pod(LoadK8sFixture("pod.json"));
  SetPath(pod, "spec.nodeName", json_string("node-2"));
  Upsert(MT_K8S_KIND_POD, pod);
  EXPECT_EQ(mt_cluster_state_num_workloads(state_), 1u);
  EXPECT_FALSE(mt_cluster_state_identity_on_node(state_, kWeb, "node-1"));
  EXPECT_TRUE(mt_cluster_state_identity_on_node(state_, kWeb, "node-2"));
}

TEST_F(ClusterState, AServiceAddressMapsToTheIdentitiesOfItsReadyEndpoints) {
  LoadDemo();
  // The second endpoint (not ready) is a pod of another service account.
  Json other(LoadK8sFixture("pod.json"));
  SetPath(other, "metadata.name", json_string("web-7d9f8b6c5d-k8j7h"));
  SetPath(other, "spec.serviceAccountName", json_string("web-canary"));
  SetPath(other, "status.podIPs", json_pack("[{s:s}]", "ip", "10.244.2.9"));
  Upsert(MT_K8S_KIND_POD, other);
  EXPECT_EQ(ServiceIds("10.96.0.20", 80), kWeb);
  EXPECT_EQ(ServiceIds("fd00:96::20", 9090), kWeb);
  EXPECT_EQ(ServiceIds("10.96.0.20", 81), "");  // not a port of the service

  Json slice(LoadK8sFixture("endpointslice.json"));
  json_t *ep = json_array_get(json_object_get(slice, "endpoints"), 1);
  json_object_set_new(ep, "conditions", json_pack("{s:b}", "ready", 1));
  Upsert(MT_K8S_KIND_ENDPOINTSLICE, slice);
  EXPECT_EQ(ServiceIds("10.96.0.20", 80),
            "spiffe://example.org/ns/demo/sa/web,spiffe://example.org/ns/demo/sa/web-canary");

  Remove(MT_K8S_KIND_ENDPOINTSLICE, slice);
  EXPECT_EQ(ServiceIds("10.96.0.20", 80), "");
}

TEST_F(ClusterState, EndpointsOfTheSameServiceAccountGiveOneIdentity) {
  LoadDemo();
  Json twin(LoadK8sFixture("pod.json"));
  SetPath(twin, "metadata.name", json_string("web-7d9f8b6c5d-k8j7h"));
  SetPath(twin, "status.podIPs", json_pack("[{s:s}]", "ip", "10.244.2.9"));
  Upsert(MT_K8S_KIND_POD, twin);
  Json slice(LoadK8sFixture("endpointslice.json"));
  json_t *ep = json_array_get(json_object_get(slice, "endpoints"), 1);
  json_object_del(ep, "conditions");
  Upsert(MT_K8S_KIND_ENDPOINTSLICE, slice);
  EXPECT_EQ(ServiceIds("10.96.0.20", 80), kWeb);
}

TEST_F(ClusterState, ARefusedObjectChangesNothing) {
  LoadDemo();
  std::string before = Dump();
  Json bad(LoadK8sFixture("pod.json"));
  SetPath(bad, "status.podIPs", json_pack("[{s:s}]", "ip", "bogus"));
  char err[256] = "";
  EXPECT_FALSE(
      mt_cluster_state_apply(state_, MT_K8S_KIND_POD, MT_CLUSTER_UPSERT, bad, err, sizeof(err)));
  EXPECT_NE(std::string(err).find("not an IP"), std::string::npos) << err;
  EXPECT_EQ(Dump(), before);
}

TEST_F(ClusterState, RemovingAnUnknownObjectIsANoOp) {
  Json pod(LoadK8sFixture("pod.json"));
  Remove(MT_K8S_KIND_POD, pod);
  EXPECT_EQ(mt_cluster_state_num_workloads(state_), 0u);
}

TEST_F(ClusterState, TheDumpListsWorkloadsAndServiceAddressesSorted) {
  LoadDemo();
  EXPECT_EQ(Dump(),
            "service demo/web 10.96.0.20:80 spiffe://example.org/ns/demo/sa/web\n"
            "service demo/web 10.96.0.20:9090 spiffe://example.org/ns/demo/sa/web\n"
            "service demo/web [fd00:96::20]:80 spiffe://example.org/ns/demo/sa/web\n"
            "service demo/web [fd00:96::20]:9090 spiffe://example.org/ns/demo/sa/web\n"
            "workload demo/web-7d9f8b6c5d-x2v9q spiffe://example.org/ns/demo/sa/web node=node-1 "
            "ips=10.244.1.5,fd00:10:244:1::5\n");
}

TEST_F(ClusterState, WorkloadsOnANodeAreListedForItsAgent) {
  LoadDemo();
  size_t seen = 0;
  size_t n = mt_cluster_state_foreach_on_node(
      state_, "node-1",
      [](void *ctx, const mt_cluster_workload *w) {
        EXPECT_STREQ(w->spiffe_id, kWeb);
        ++*static_cast<size_t *>(ctx);
      },
      &seen);
  EXPECT_EQ(n, 1u);
  EXPECT_EQ(seen, 1u);
  EXPECT_EQ(mt_cluster_state_foreach_on_node(
                state_, "node-2", [](void *, const mt_cluster_workload *) { FAIL(); }, nullptr),
            0u);
}

// Every service address at once agrees with the one-address lookup: the
// ready endpoints' identities, sorted, for each ClusterIP x port.
TEST_F(ClusterState, EveryServiceAddressIsListedWithItsReadyIdentities) {
  LoadDemo();
  Json canary(LoadK8sFixture("pod.json"));
  SetPath(canary, "metadata.name", json_string("web-7d9f8b6c5d-k8j7h"));
  SetPath(canary, "spec.serviceAccountName", json_string("web-canary"));
  SetPath(canary, "status.podIPs", json_pack("[{s:s}]", "ip", "10.244.2.9"));
  Upsert(MT_K8S_KIND_POD, canary);
  Json slice(LoadK8sFixture("endpointslice.json"));
  json_t *ep = json_array_get(json_object_get(slice, "endpoints"), 1);
  json_object_set_new(ep, "conditions", json_pack("{s:b}", "ready", 1));
  Upsert(MT_K8S_KIND_ENDPOINTSLICE, slice);
  std::vector<std::string> seen;
  ASSERT_TRUE(mt_cluster_state_foreach_service_address(
      state_,
      [](void *ctx, const char *ip, uint16_t port, const char *const *ids, size_t n,
         const mt_cluster_endpoint *, size_t) {
        std::string line = std::string(ip) + " " + std::to_string(port);
        for (size_t i = 0; i < n; i++) line += " " + std::string(ids[i]);
        static_cast<std::vector<std::string> *>(ctx)->push_back(line);
      },
      &seen));
  std::sort(seen.begin(), seen.end());
  const std::string ids =
      " spiffe://example.org/ns/demo/sa/web spiffe://example.org/ns/demo/sa/web-canary";
  EXPECT_EQ(seen, (std::vector<std::string>{"10.96.0.20 80" + ids, "10.96.0.20 9090" + ids,
                                            "fd00:96::20 80" + ids, "fd00:96::20 9090" + ids}));
  size_t workloads = mt_cluster_state_foreach_workload(
      state_, [](void *, const mt_cluster_workload *) {}, nullptr);
  EXPECT_EQ(workloads, 2u);
}

// ---- endpoints, as kube-proxy picks them -----------------------------------

// The fixture: Service web, ports http 80 -> targetPort 8080 and grpc 9090
// -> targetPort "grpc" (named), ClusterIPs 10.96.0.20 and fd00:96::20; one
// IPv4 slice with ports http 8080 and grpc 9090, web-...x2v9q ready and
// web-...k8j7h not ready.
TEST_F(ClusterState, AServiceAddressListsItsReadyEndpointsWithTheSlicePortOfTheSameName) {
  LoadDemo();
  AddPod("web-7d9f8b6c5d-k8j7h", "web-canary", json_pack("[{s:s}]", "ip", "10.244.2.9"));
  EXPECT_EQ(Endpoints(), (std::vector<std::string>{
                             "10.96.0.20:80 -> 10.244.1.5:8080=web",
                             "10.96.0.20:9090 -> 10.244.1.5:9090=web",
                             "fd00:96::20:80 ->",  // no IPv6 slice: no IPv6 endpoint
                             "fd00:96::20:9090 ->",
                         }));
}

TEST_F(ClusterState, ANamedTargetPortTakesEachSlicesOwnNumber) {
  LoadDemo();
  // The canary's container names its port "grpc" on 9191: the controller
  // puts it in a slice of its own whose "grpc" port is 9191.
  AddPod("web-7d9f8b6c5d-k8j7h", "web-canary", json_pack("[{s:s}]", "ip", "10.244.2.9"));
  Json slice(LoadK8sFixture("endpointslice.json"));
  SetPath(slice, "metadata.name", json_string("web-canary1"));
  json_t *eps = json_object_get(slice, "endpoints");
  json_array_remove(eps, 0);
  json_object_set_new(json_array_get(eps, 0), "conditions", json_pack("{s:b}", "ready", 1));
  SetPath(slice, "ports",
          json_pack("[{s:s,s:i,s:s},{s:s,s:i,s:s}]", "name", "http", "port", 8080, "protocol",
                    "TCP", "name", "grpc", "port", 9191, "protocol", "TCP"));
  Upsert(MT_K8S_KIND_ENDPOINTSLICE, slice);
  EXPECT_EQ(Endpoints(), (std::vector<std::string>{
                             "10.96.0.20:80 -> 10.244.1.5:8080=web 10.244.2.9:8080=web-canary",
                             "10.96.0.20:9090 -> 10.244.1.5:9090=web 10.244.2.9:9191=web-canary",
                             "fd00:96::20:80 ->",
                             "fd00:96::20:9090 ->",
                         }));
}

TEST_F(ClusterState, ASliceWithoutTheServicePortsNameGivesThatPortNothing) {
  LoadDemo();
  AddPod("web-7d9f8b6c5d-k8j7h", "web-canary", json_pack("[{s:s}]", "ip", "10.244.2.9"));
  // A pod without a container port named "grpc": its slice has http only.
  Json slice(LoadK8sFixture("endpointslice.json"));
  SetPath(slice, "metadata.name", json_string("web-canary1"));
  json_t *eps = json_object_get(slice, "endpoints");
  json_array_remove(eps, 0);
  json_object_set_new(json_array_get(eps, 0), "conditions", json_pack("{s:b}", "ready", 1));
  SetPath(slice, "ports", json_pack("[{s:s,s:i}]", "name", "http", "port", 8080));
  Upsert(MT_K8S_KIND_ENDPOINTSLICE, slice);
  std::vector<std::string> got = Endpoints();
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0], "10.96.0.20:80 -> 10.244.1.5:8080=web 10.244.2.9:8080=web-canary");
  EXPECT_EQ(got[1], "10.96.0.20:9090 -> 10.244.1.5:9090=web");
}

TEST_F(ClusterState, EachClusterIpGetsTheEndpointsOfItsOwnFamily) {
  LoadDemo();
  Json v6(LoadK8sFixture("endpointslice.json"));
  SetPath(v6, "metadata.name", json_string("web-v6"));
  SetPath(v6, "addressType", json_string("IPv6"));
  json_t *eps = json_object_get(v6, "endpoints");
  json_array_remove(eps, 1);
  json_object_set_new(json_array_get(eps, 0), "addresses", json_pack("[s]", "fd00:10:244:1::5"));
  Upsert(MT_K8S_KIND_ENDPOINTSLICE, v6);
  EXPECT_EQ(Endpoints(), (std::vector<std::string>{
                             "10.96.0.20:80 -> 10.244.1.5:8080=web",
                             "10.96.0.20:9090 -> 10.244.1.5:9090=web",
                             "fd00:96::20:80 -> fd00:10:244:1::5:8080=web",
                             "fd00:96::20:9090 -> fd00:10:244:1::5:9090=web",
                         }));
}

TEST_F(ClusterState, EndpointsThatAreNoMeshWorkloadOrNotReadyOrNotTcpAreLeftOut) {
  LoadDemo();
  // k8j7h is ready now but no pod of that name runs in the mesh; an
  // endpoint without targetRef (a manual slice) has no identity either.
  Json slice(LoadK8sFixture("endpointslice.json"));
  json_t *eps = json_object_get(slice, "endpoints");
  json_object_set_new(json_array_get(eps, 1), "conditions", json_pack("{s:b}", "ready", 1));
  json_array_append_new(eps, json_pack("{s:[s]}", "addresses", "10.244.3.3"));
  Upsert(MT_K8S_KIND_ENDPOINTSLICE, slice);
  Json svc(LoadK8sFixture("service.json"));
  json_t *grpc = json_array_get(json_object_get(json_object_get(svc, "spec"), "ports"), 1);
  json_object_set_new(grpc, "protocol", json_string("UDP"));
  Upsert(MT_K8S_KIND_SERVICE, svc);
  std::vector<std::string> got = Endpoints();
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0], "10.96.0.20:80 -> 10.244.1.5:8080=web");
  EXPECT_EQ(got[1], "10.96.0.20:9090 ->");  // UDP: never reaches the agent
}

TEST_F(ClusterState, AnEndpointInTwoSlicesIsListedOnce) {
  LoadDemo();
  Json copy(LoadK8sFixture("endpointslice.json"));
  SetPath(copy, "metadata.name", json_string("web-zzz99"));
  Upsert(MT_K8S_KIND_ENDPOINTSLICE, copy);
  EXPECT_EQ(Endpoints()[0], "10.96.0.20:80 -> 10.244.1.5:8080=web");
}

// The Services in a workload's namespace whose selector holds among its
// labels (what an AuthorizationPolicy's targetRefs name).
std::vector<std::string> ServicesOf(mt_cluster_state *state) {
  std::vector<std::string> out;
  struct Ctx {
    mt_cluster_state *state;
    std::vector<std::string> *out;
  } ctx = {state, &out};
  mt_cluster_state_foreach_workload(
      state,
      [](void *c, const mt_cluster_workload *w) {
        Ctx *x = static_cast<Ctx *>(c);
        const char *names[4];
        size_t n = mt_cluster_state_services_selecting(x->state, w, names, 4);
        for (size_t i = 0; i < n && i < 4; i++) x->out->push_back(names[i]);
      },
      &ctx);
  return out;
}

TEST_F(ClusterState, AWorkloadIsBehindTheServicesOfItsNamespaceThatSelectIt) {
  LoadDemo();  // Service web selects app=web, the pod's label
  Json other(LoadK8sFixture("service.json"));
  SetPath(other, "metadata.name", json_string("all-web"));
  Upsert(MT_K8S_KIND_SERVICE, other);
  Json elsewhere(LoadK8sFixture("service.json"));
  SetPath(elsewhere, "metadata.namespace", json_string("prod"));
  Upsert(MT_K8S_KIND_SERVICE, elsewhere);
  Json narrower(LoadK8sFixture("service.json"));
  SetPath(narrower, "metadata.name", json_string("canary"));
  SetPath(narrower, "spec.selector",
          mt_test::ParseJson("{\"app\": \"web\", \"track\": \"canary\"}"));
  Upsert(MT_K8S_KIND_SERVICE, narrower);
  Json selectorless(LoadK8sFixture("service.json"));
  SetPath(selectorless, "metadata.name", json_string("external"));
  json_object_del(json_object_get(selectorless, "spec"), "selector");
  Upsert(MT_K8S_KIND_SERVICE, selectorless);
  EXPECT_EQ(ServicesOf(state_), (std::vector<std::string>{"all-web", "web"}));
}

}  // namespace
