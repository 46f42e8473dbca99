// Istio security objects for the istio_policy tests: whole API objects
// (apiVersion, kind, metadata with namespace, name, uid, resourceVersion,
// creationTimestamp, and the spec) as the API server sends them in watch
// events, built around a spec written by the test; and the workload facts
// the compiler is given.
#ifndef MT_TESTS_CONTROLPLANE_ISTIO_FIXTURE_H
#define MT_TESTS_CONTROLPLANE_ISTIO_FIXTURE_H

#include <jansson.h>
#include <stdio.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "controlplane/istio_policy.h"

namespace mt_test {

constexpr char kCreated[] = "2024-05-01T10:00:00Z";

// One Istio object: its kind and its JSON text.
struct IstioObject {
  mt_istio_kind kind;
  std::string json;
};

// A made-up but well-formed metadata.uid, stable per object.
inline std::string FakeUid(const std::string &ns, const std::string &name) {
  char uid[40];
  size_t h = std::hash<std::string>()(ns + "/" + name);
  snprintf(uid, sizeof(uid), "%08x-%04x-4%03x-8%03x-%012llx", (unsigned)(h & 0xffffffffu),
           (unsigned)((h >> 32) & 0xffffu), (unsigned)((h >> 48) & 0xfffu),
           (unsigned)((h >> 20) & 0xfffu), (unsigned long long)(h & 0xffffffffffffull));
  return uid;
}

inline std::string ApiObject(const char *kind, const std::string &ns, const std::string &name,
                             const std::string &spec, const std::string &version,
                             const std::string &created) {
  return std::string("{\"apiVersion\": \"security.istio.io/") + version + "\", \"kind\": \"" +
         kind + "\", \"metadata\": {\"namespace\": \"" + ns + "\", \"name\": \"" + name +
         "\", \"uid\": \"" + FakeUid(ns, name) +
         "\", \"resourceVersion\": \"4242\", \"generation\": 1, \"creationTimestamp\": \"" +
         created + "\"}, \"spec\": " + spec + "}";
}

inline IstioObject AuthorizationPolicy(const std::string &ns, const std::string &name,
                                       const std::string &spec, const std::string &version = "v1",
                                       const std::string &created = kCreated) {
  return {MT_ISTIO_AUTHORIZATION_POLICY,
          ApiObject("AuthorizationPolicy", ns, name, spec, version, created)};
}

inline IstioObject PeerAuthentication(const std::string &ns, const std::string &name,
                                      const std::string &spec, const std::string &version = "v1",
                                      const std::string &created = kCreated) {
  return {MT_ISTIO_PEER_AUTHENTICATION,
          ApiObject("PeerAuthentication", ns, name, spec, version, created)};
}

// The destination workload: its namespace, pod labels and the Services
// that select it.
struct Workload {
  std::string ns;
  std::vector<std::pair<std::string, std::string>> labels;
  std::vector<std::string> services;
};

// Borrows |w| for an mt_istio_workload.
class WorkloadView {
 public:
  explicit WorkloadView(const Workload &w) {
    for (const auto &l : w.labels) {
      labels_.push_back(
          {const_cast<char *>(l.first.c_str()), const_cast<char *>(l.second.c_str())});
    }
    for (const auto &s : w.services) services_.push_back(s.c_str());
    view_.ns = w.ns.c_str();
    view_.labels = labels_.data();
    view_.num_labels = labels_.size();
    view_.services = services_.data();
    view_.num_services = services_.size();
  }
  const mt_istio_workload *get() const { return &view_; }

 private:
  std::vector<mt_k8s_label> labels_;
  std::vector<const char *> services_;
  mt_istio_workload view_{};
};

// Applies |object| (parsed strictly); returns mt_istio_policies_apply's
// result and its message in |err|.
inline int ApplyObject(mt_istio_policies *policies, const IstioObject &object,
                       mt_cluster_change change, std::string *err) {
  json_error_t error;
  json_t *j = json_loads(object.json.c_str(), JSON_REJECT_DUPLICATES, &error);
  if (j == nullptr) {
    *err = std::string("fixture is not JSON: ") + error.text + " in " + object.json;
    return -1;
  }
  char buf[512] = "";
  int ok = mt_istio_policies_apply(policies, object.kind, change, j, buf, sizeof(buf));
  json_decref(j);
  *err = buf;
  return ok;
}

}  // namespace mt_test

#endif  // MT_TESTS_CONTROLPLANE_ISTIO_FIXTURE_H
