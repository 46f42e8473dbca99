// k8s_client: where the API server, token and CA come from (no request is
// made: creating a client only resolves settings and reads the token).
#include "controlplane/k8s_client.h"

#include <stdlib.h>
#include <string.h>

#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "tests/controlplane/test_files.h"

namespace {

class K8sClient : public ::testing::Test {
 protected:
  void SetUp() override {
    loop_ = ev_loop_new(0);
    token_ = dir_.path() + "/token";
    ca_ = dir_.path() + "/ca.crt";
    Write(token_, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln\n");
    Write(ca_, "-----BEGIN CERTIFICATE-----\n");
    unsetenv("KUBERNETES_SERVICE_HOST");
    unsetenv("KUBERNETES_SERVICE_PORT");
  }
  void TearDown() override {
    mt_k8s_client_free(client_);
    ev_loop_destroy(loop_);
  }
  static void Write(const std::string &path, const std::string &text) {
    std::ofstream(path) << text;
  }
  mt_k8s_client *New(const char *server) {
    mt_k8s_client_config c = {server, token_.c_str(), ca_.c_str(), 0};
    client_ = mt_k8s_client_new(loop_, &c, err_, sizeof(err_));
    return client_;
  }

  mt_test::ScratchDir dir_;
  struct ev_loop *loop_ = nullptr;
  mt_k8s_client *client_ = nullptr;
  std::string token_, ca_;
  char err_[512] = "";
};

TEST_F(K8sClient, AnExplicitServerIsUsedWithoutATrailingSlash) {
  ASSERT_NE(New("https://10.96.0.1:6443/"), nullptr) << err_;
  EXPECT_STREQ(mt_k8s_client_server(client_), "https://10.96.0.1:6443");
}

TEST_F(K8sClient, InAPodTheServerComesFromTheServiceEnvironment) {
  setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1", 1);
  setenv("KUBERNETES_SERVICE_PORT", "443", 1);
  ASSERT_NE(New(nullptr), nullptr) << err_;
  EXPECT_STREQ(mt_k8s_client_server(client_), "https://10.96.0.1:443");
}

TEST_F(K8sClient, AnIpv6ServiceHostIsBracketed) {
  setenv("KUBERNETES_SERVICE_HOST", "fd00:96::1", 1);
  setenv("KUBERNETES_SERVICE_PORT", "443", 1);
  ASSERT_NE(New(""), nullptr) << err_;
  EXPECT_STREQ(mt_k8s_client_server(client_), "https://[fd00:96::1]:443");
}

TEST_F(K8sClient, OutsideAPodWithoutServerItSaysWhy) {
  EXPECT_EQ(New(nullptr), nullptr);
  EXPECT_NE(strstr(err_, "KUBERNETES_SERVICE_HOST"), nullptr) << err_;
}

TEST_F(K8sClient, APlainHttpServerIsRefused) {
  EXPECT_EQ(New("http://10.96.0.1:8080"), nullptr);
  EXPECT_NE(strstr(err_, "https://"), nullptr) << err_;
}

TEST_F(K8sClient, AMissingOrEmptyOrBinaryTokenIsRefused) {
  Write(token_, "");
  EXPECT_EQ(New("https://10.96.0.1"), nullptr);
  EXPECT_NE(strstr(err_, "empty"), nullptr) << err_;
  Write(token_, std::string("abc\x01", 4));
  EXPECT_EQ(New("https://10.96.0.1"), nullptr);
  EXPECT_NE(strstr(err_, "not a bearer token"), nullptr) << err_;
  unlink(token_.c_str());
  EXPECT_EQ(New("https://10.96.0.1"), nullptr);
  EXPECT_NE(strstr(err_, "token file"), nullptr) << err_;
}

TEST_F(K8sClient, AnOversizedTokenIsRefused) {
  Write(token_, std::string(MT_K8S_TOKEN_MAX_BYTES + 1, 'a'));
  EXPECT_EQ(New("https://10.96.0.1"), nullptr);
  EXPECT_NE(strstr(err_, "larger than"), nullptr) << err_;
}

TEST_F(K8sClient, AMissingCaFileIsRefused) {
  unlink(ca_.c_str());
  EXPECT_EQ(New("https://10.96.0.1"), nullptr);
  EXPECT_NE(strstr(err_, "CA file"), nullptr) << err_;
}

}  // namespace
