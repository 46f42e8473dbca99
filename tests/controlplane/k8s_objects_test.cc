// k8s_objects: Kubernetes API JSON -> the fields mtls-ca uses, refusing
// anything malformed with a reason.
#include "controlplane/k8s_objects.h"

#include <string.h>

#include <string>

#include <gtest/gtest.h>

#include "tests/controlplane/k8s_fixture.h"

using mt_test::Json;
using mt_test::LoadK8sFixture;
using mt_test::ParseJson;
using mt_test::SetPath;

namespace {

TEST(K8sObjects, APodDecodesItsIdentityNodePhaseReadinessAndDualStackIps) {
  Json j(LoadK8sFixture("pod.json"));
  mt_k8s_pod pod;
  char err[256] = "";
  ASSERT_TRUE(mt_k8s_pod_decode(j, &pod, err, sizeof(err))) << err;
  EXPECT_STREQ(pod.meta.ns, "demo");
  EXPECT_STREQ(pod.meta.name, "web-7d9f8b6c5d-x2v9q");
  EXPECT_STREQ(pod.meta.resource_version, "1201");
  EXPECT_STREQ(mt_k8s_meta_label(&pod.meta, "app"), "web");
  EXPECT_STREQ(pod.service_account, "web");
  EXPECT_STREQ(pod.node, "node-1");
  EXPECT_STREQ(pod.phase, "Running");
  EXPECT_TRUE(pod.ready);
  EXPECT_FALSE(pod.meta.deleting);
  EXPECT_FALSE(pod.host_network);
  ASSERT_EQ(pod.num_ips, 2u);
  EXPECT_STREQ(pod.ips[0], "10.244.1.5");
  EXPECT_STREQ(pod.ips[1], "fd00:10:244:1::5");
  mt_k8s_pod_clear(&pod);
}

TEST(K8sObjects, ATerminatingPodIsMarkedDeleting) {
  Json j(LoadK8sFixture("pod-terminating.json"));
  mt_k8s_pod pod;
  char err[256] = "";
  ASSERT_TRUE(mt_k8s_pod_decode(j, &pod, err, sizeof(err))) << err;
  EXPECT_TRUE(pod.meta.deleting);
  mt_k8s_pod_clear(&pod);
}

TEST(K8sObjects, AnUnscheduledPendingPodHasNoNodeAndNoIp) {
  Json j(LoadK8sFixture("pod-pending.json"));
  mt_k8s_pod pod;
  char err[256] = "";
  ASSERT_TRUE(mt_k8s_pod_decode(j, &pod, err, sizeof(err))) << err;
  EXPECT_STREQ(pod.node, "");
  EXPECT_STREQ(pod.phase, "Pending");
  EXPECT_EQ(pod.num_ips, 0u);
  EXPECT_FALSE(pod.ready);
  mt_k8s_pod_clear(&pod);
}

TEST(K8sObjects, IpsAreKeptInCanonicalForm) {
  Json j(LoadK8sFixture("pod.json"));
  json_t *ips = json_pack("[{s:s}]", "ip", "FD00:10:244:0001:0:0:0:5");
  SetPath(j, "status.podIPs", ips);
  mt_k8s_pod pod;
  char err[256] = "";
  ASSERT_TRUE(mt_k8s_pod_decode(j, &pod, err, sizeof(err))) << err;
  ASSERT_EQ(pod.num_ips, 1u);
  EXPECT_STREQ(pod.ips[0], "fd00:10:244:1::5");
  mt_k8s_pod_clear(&pod);
}

TEST(K8sObjects, APodWithoutServiceAccountNameGetsDefaultAsTheApiDefaultsIt) {
  Json j(LoadK8sFixture("pod.json"));
  json_object_del(json_object_get(j, "spec"), "serviceAccountName");
  mt_k8s_pod pod;
  char err[256] = "";
  ASSERT_TRUE(mt_k8s_pod_decode(j, &pod, err, sizeof(err))) << err;
  EXPECT_STREQ(pod.service_account, "default");
  mt_k8s_pod_clear(&pod);
}

struct Refusal {
  const char *path;
  const char *json_value;
  const char *reason;
};

class PodRefusal : public ::testing::TestWithParam<Refusal> {};

TEST_P(PodRefusal, IsRefusedNamingTheField) {
  Json j(LoadK8sFixture("pod.json"));
  json_error_t error;
  SetPath(j, GetParam().path, json_loads(GetParam().json_value, JSON_DECODE_ANY, &error));
  mt_k8s_pod pod;
  char err[256] = "";
  EXPECT_FALSE(mt_k8s_pod_decode(j, &pod, err, sizeof(err)));
  EXPECT_NE(strstr(err, GetParam().reason), nullptr) << err;
  EXPECT_EQ(pod.meta.name, nullptr);  // nothing half-decoded is left
}

INSTANTIATE_TEST_SUITE_P(
    K8sObjects, PodRefusal,
    ::testing::Values(Refusal{"metadata.name", "7", "name: not a string"},
                      Refusal{"metadata.name", "\"UPPER\"", "metadata.name: not a DNS name"},
                      Refusal{"metadata.namespace", "\"a/b\"", "not a DNS name"},
                      Refusal{"spec.serviceAccountName", "\"../../x\"", "not a DNS name"},
                      Refusal{"spec.nodeName", "\"node 1\"", "spec.nodeName"},
                      Refusal{"status.podIPs", "[{\"ip\": \"10.0.0.300\"}]", "not an IP"},
                      Refusal{"status.podIPs",
                              "[{\"ip\":\"10.0.0.1\"},{\"ip\":\"10.0.0.2\"},"
                              "{\"ip\":\"10.0.0.3\"},{\"ip\":\"10.0.0.4\"},"
                              "{\"ip\":\"10.0.0.5\"}]",
                              "too many"},
                      Refusal{"status.podIPs", "{}", "not an array"},
                      Refusal{"metadata.labels", "{\"app\": 1}", "bad label value"},
                      Refusal{"metadata.resourceVersion",
                              "\"1111111111111111111111111111111111111111111111111111111111111111"
                              "1\"",
                              "too long"},
                      Refusal{"spec", "[]", "spec"}));

TEST(K8sObjects, DuplicateKeysAreRefusedByTheParserItself) {
  json_error_t error;
  json_t *j = json_loads("{\"metadata\": {\"name\": \"a\", \"name\": \"b\"}}",
                         JSON_REJECT_DUPLICATES, &error);
  EXPECT_EQ(j, nullptr);
  json_decref(j);
}

TEST(K8sObjects, AServiceDecodesItsClusterIpsAndPorts) {
  Json j(LoadK8sFixture("service.json"));
  mt_k8s_service svc;
  char err[256] = "";
  ASSERT_TRUE(mt_k8s_service_decode(j, &svc, err, sizeof(err))) << err;
  ASSERT_EQ(svc.num_cluster_ips, 2u);
  EXPECT_STREQ(svc.cluster_ips[0], "10.96.0.20");
  EXPECT_STREQ(svc.cluster_ips[1], "fd00:96::20");
  ASSERT_EQ(svc.num_ports, 2u);
  EXPECT_EQ(svc.ports[0].port, 80);
  EXPECT_STREQ(svc.ports[0].name, "http");
  EXPECT_STREQ(svc.ports[0].protocol, "TCP");
  EXPECT_EQ(svc.ports[1].port, 9090);
  mt_k8s_service_clear(&svc);
}

TEST(K8sObjects, AServiceSelectsThePodsWhoseLabelsHoldItsWholeSelector) {
  Json j(LoadK8sFixture("service.json"));
  SetPath(j, "spec.selector", ParseJson("{\"app\": \"web\", \"tier\": \"front\"}"));
  mt_k8s_service svc;
  char err[256] = "";
  ASSERT_TRUE(mt_k8s_service_decode(j, &svc, err, sizeof(err))) << err;
  ASSERT_EQ(svc.num_selector, 2u);
  mt_k8s_label both[] = {{(char *)"tier", (char *)"front"},
                         {(char *)"x", (char *)"y"},
                         {(char *)"app", (char *)"web"}};
  mt_k8s_label one[] = {{(char *)"app", (char *)"web"}};
  mt_k8s_label other[] = {{(char *)"app", (char *)"web"}, {(char *)"tier", (char *)"back"}};
  EXPECT_TRUE(mt_k8s_service_selects(&svc, both, 3));
  EXPECT_FALSE(mt_k8s_service_selects(&svc, one, 1));
  EXPECT_FALSE(mt_k8s_service_selects(&svc, other, 2));
  EXPECT_FALSE(mt_k8s_service_selects(&svc, nullptr, 0));
  mt_k8s_service_clear(&svc);
}

TEST(K8sObjects, AServiceWithoutASelectorSelectsNoPod) {
  Json j(LoadK8sFixture("service.json"));
  json_object_del(json_object_get(j, "spec"), "selector");
  mt_k8s_service svc;
  char err[256] = "";
  ASSERT_TRUE(mt_k8s_service_decode(j, &svc, err, sizeof(err))) << err;
  EXPECT_EQ(svc.num_selector, 0u);
  mt_k8s_label labels[] = {{(char *)"app", (char *)"web"}};
  EXPECT_FALSE(mt_k8s_service_selects(&svc, labels, 1));
  mt_k8s_service_clear(&svc);
}

TEST(K8sObjects, AServiceSelectorThatIsNotAMapIsRefused) {
  Json j(LoadK8sFixture("service.json"));
  SetPath(j, "spec.selector", ParseJson("[\"app=web\"]"));
  mt_k8s_service svc;
  char err[256] = "";
  EXPECT_FALSE(mt_k8s_service_decode(j, &svc, err, sizeof(err)));
  EXPECT_NE(strstr(err, "spec.selector: not an object"), nullptr) << err;
}

TEST(K8sObjects, AHeadlessServiceHasNoClusterIp) {
  Json j(LoadK8sFixture("service.json"));
  json_object_del(json_object_get(j, "spec"), "clusterIPs");
  SetPath(j, "spec.clusterIP", json_string("None"));
  mt_k8s_service svc;
  char err[256] = "";
  ASSERT_TRUE(mt_k8s_service_decode(j, &svc, err, sizeof(err))) << err;
  EXPECT_EQ(svc.num_cluster_ips, 0u);
  mt_k8s_service_clear(&svc);
}

TEST(K8sObjects, AServicePortOutOfRangeIsRefused) {
  Json j(LoadK8sFixture("service.json"));
  SetPath(j, "spec.ports", ParseJson("[{\"port\": 65536}]"));
  mt_k8s_service svc;
  char err[256] = "";
  EXPECT_FALSE(mt_k8s_service_decode(j, &svc, err, sizeof(err)));
  EXPECT_NE(strstr(err, "1..65535"), nullptr) << err;
}

TEST(K8sObjects, AnEndpointSliceDecodesItsServiceEndpointsAndReadiness) {
  Json j(LoadK8sFixture("endpointslice.json"));
  mt_k8s_endpointslice s;
  char err[256] = "";
  ASSERT_TRUE(mt_k8s_endpointslice_decode(j, &s, err, sizeof(err))) << err;
  EXPECT_STREQ(s.service_name, "web");
  EXPECT_STREQ(s.address_type, "IPv4");
  ASSERT_EQ(s.num_endpoints, 2u);
  EXPECT_STREQ(s.endpoints[0].pod_name, "web-7d9f8b6c5d-x2v9q");
  EXPECT_STREQ(s.endpoints[0].node, "node-1");
  ASSERT_EQ(s.endpoints[0].num_addresses, 1u);
  EXPECT_STREQ(s.endpoints[0].addresses[0], "10.244.1.5");
  EXPECT_TRUE(s.endpoints[0].ready);
  EXPECT_FALSE(s.endpoints[1].ready);
  ASSERT_EQ(s.num_ports, 2u);
  EXPECT_EQ(s.ports[0].port, 8080);
  mt_k8s_endpointslice_clear(&s);
}

TEST(K8sObjects, AnEndpointWithoutReadyConditionCountsAsReady) {
  Json j(LoadK8sFixture("endpointslice.json"));
  json_object_del(json_array_get(json_object_get(j, "endpoints"), 1), "conditions");
  mt_k8s_endpointslice s;
  char err[256] = "";
  ASSERT_TRUE(mt_k8s_endpointslice_decode(j, &s, err, sizeof(err))) << err;
  EXPECT_TRUE(s.endpoints[1].ready);
  mt_k8s_endpointslice_clear(&s);
}

TEST(K8sObjects, AnEndpointSliceWithABadAddressIsRefused) {
  Json j(LoadK8sFixture("endpointslice.json"));
  json_t *ep = json_array_get(json_object_get(j, "endpoints"), 0);
  json_object_set_new(ep, "addresses", ParseJson("[\"not-an-ip\"]"));
  mt_k8s_endpointslice s;
  char err[256] = "";
  EXPECT_FALSE(mt_k8s_endpointslice_decode(j, &s, err, sizeof(err)));
  EXPECT_NE(strstr(err, "not an IP"), nullptr) << err;
}

TEST(K8sObjects, ANamespaceIsClusterScopedAndKeepsItsLabels) {
  Json j(LoadK8sFixture("namespace.json"));
  mt_k8s_namespace ns;
  char err[256] = "";
  ASSERT_TRUE(mt_k8s_namespace_decode(j, &ns, err, sizeof(err))) << err;
  EXPECT_STREQ(ns.meta.name, "demo");
  EXPECT_STREQ(ns.meta.ns, "");
  EXPECT_STREQ(mt_k8s_meta_label(&ns.meta, "mtlsd.io/mesh"), "enabled");
  mt_k8s_namespace_clear(&ns);
}

}  // namespace
