// Kubernetes API objects for the mtls-ca tests: the JSON fixtures of
// tests/k8s/testdata (made by tests/k8s/make_testdata.py from the same
// shapes the API server stand-in serves), loaded strictly with jansson.
#ifndef MT_TESTS_CONTROLPLANE_K8S_FIXTURE_H
#define MT_TESTS_CONTROLPLANE_K8S_FIXTURE_H

#include <jansson.h>

#include <string>

#include <gtest/gtest.h>

namespace mt_test {

// Owns one JSON document.
class Json {
 public:
  explicit Json(json_t *j) : j_(j) {}
  Json(const Json &) = delete;
  Json &operator=(const Json &) = delete;
  ~Json() { json_decref(j_); }
  json_t *get() const { return j_; }
  operator json_t *() const { return j_; }

 private:
  json_t *j_;
};

// A fixture by file name ("pod.json"); fails the test when it does not load.
inline json_t *LoadK8sFixture(const std::string &name) {
  std::string path = "tests/k8s/testdata/" + name;
  json_error_t error;
  json_t *j = json_load_file(path.c_str(), JSON_REJECT_DUPLICATES, &error);
  EXPECT_NE(j, nullptr) << path << ":" << error.line << ": " << error.text;
  return j;
}

inline json_t *ParseJson(const std::string &text) {
  json_error_t error;
  json_t *j = json_loads(text.c_str(), JSON_REJECT_DUPLICATES, &error);
  EXPECT_NE(j, nullptr) << error.text << " in " << text;
  return j;
}

// Sets |path| (dot-separated object keys) in |root| to |value| (stolen).
inline void SetPath(json_t *root, const std::string &path, json_t *value) {
  json_t *obj = root;
  size_t start = 0;
  for (;;) {
    size_t dot = path.find('.', start);
    std::string key =
        path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (dot == std::string::npos) {
      json_object_set_new(obj, key.c_str(), value);
      return;
    }
    json_t *next = json_object_get(obj, key.c_str());
    if (next == nullptr) {
      next = json_object();
      json_object_set_new(obj, key.c_str(), next);
    }
    obj = next;
    start = dot + 1;
  }
}

}  // namespace mt_test

#endif  // MT_TESTS_CONTROLPLANE_K8S_FIXTURE_H
