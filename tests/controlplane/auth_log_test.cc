// Small pieces of mtls-ca that every call goes through: reading the bearer
// token out of the metadata, and the JSON access-log line.
#include <string>

#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/pem.h>

#include "controlplane/auth.h"
#include "controlplane/ca_log.h"

namespace {

std::string Bearer(const char *value) {
  const char *token = nullptr;
  size_t len = 0;
  if (!mt_ca_auth_bearer(value, &token, &len)) return "<refused>";
  return std::string(token, len);
}

TEST(Bearer, TakesTheTokenAfterTheScheme) {
  EXPECT_EQ(Bearer("Bearer abc.def.ghi"), "abc.def.ghi");
  EXPECT_EQ(Bearer("bearer abc"), "abc");  // the scheme is case-insensitive
  EXPECT_EQ(Bearer("BEARER   abc  "), "abc");
}

TEST(Bearer, RefusesOtherForms) {
  EXPECT_EQ(Bearer("Basic dXNlcjpwYXNz"), "<refused>");
  EXPECT_EQ(Bearer("Bearer"), "<refused>");
  EXPECT_EQ(Bearer("Bearer    "), "<refused>");
  EXPECT_EQ(Bearer("Bearerabc"), "<refused>");
  EXPECT_EQ(Bearer("abc.def.ghi"), "<refused>");
  EXPECT_EQ(Bearer(nullptr), "<refused>");
}

class AuthWithoutKeys : public ::testing::Test {
 protected:
  void SetUp() override {
    auth_ =
        mt_ca_auth_new("example.org", "https://kubernetes.default.svc", "istio-ca", 60, nullptr);
    ASSERT_NE(auth_, nullptr);
  }
  void TearDown() override { mt_ca_auth_free(auth_); }
  mt_ca_auth_result Check(std::vector<mt_grpc_metadata> md) {
    mt_grpc_request req = {};
    req.metadata = md.data();
    req.metadata_count = md.size();
    mt_ca_auth_result out;
    mt_ca_auth_check(auth_, &req, 1700000000, &out);
    return out;
  }
  mt_ca_auth *auth_ = nullptr;
};

TEST_F(AuthWithoutKeys, NoAuthorizationIsUnauthenticated) {
  mt_ca_auth_result r = Check({{"x-other", "1"}});
  EXPECT_EQ(r.status, MT_GRPC_UNAUTHENTICATED);
  EXPECT_STREQ(r.reason, "no_token");
  EXPECT_NE(std::string(r.message).find("missing bearer token"), std::string::npos);
  EXPECT_STREQ(r.spiffe_id, "");
}

TEST_F(AuthWithoutKeys, NonBearerAuthorizationIsUnauthenticated) {
  mt_ca_auth_result r = Check({{"authorization", "Basic dXNlcjpwYXNz"}});
  EXPECT_EQ(r.status, MT_GRPC_UNAUTHENTICATED);
  EXPECT_STREQ(r.reason, "malformed_authorization");
}

std::string FreshP256PublicKeyPem() {
  bssl::UniquePtr<EC_KEY> ec(EC_KEY_new_by_curve_name(NID_X9_62_prime256v1));
  EC_KEY_generate_key(ec.get());
  bssl::UniquePtr<EVP_PKEY> pkey(EVP_PKEY_new());
  EVP_PKEY_set1_EC_KEY(pkey.get(), ec.get());
  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PUBKEY(bio.get(), pkey.get());
  const uint8_t *data;
  size_t len;
  BIO_mem_contents(bio.get(), &data, &len);
  return std::string(reinterpret_cast<const char *>(data), len);
}

// The issuer comes from the API server later (issuer_source.h): until then
// a token is never judged, and the caller is told to retry.
class AuthWithoutIssuer : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pem = FreshP256PublicKeyPem();
    char why[256];
    mt_jwt_keys *keys = mt_jwt_keys_load_pem(pem.data(), pem.size(), why, sizeof(why));
    ASSERT_NE(keys, nullptr) << why;
    auth_ = mt_ca_auth_new("example.org", nullptr, "istio-ca", 60, keys);
    ASSERT_NE(auth_, nullptr);
    mt_ca_auth_on_issuer_miss(
        auth_, [](void *arg) { ++*static_cast<int *>(arg); }, &misses_);
  }
  void TearDown() override { mt_ca_auth_free(auth_); }
  mt_ca_auth_result Check(const char *authorization) {
    mt_grpc_metadata md[] = {{"authorization", authorization}};
    mt_grpc_request req = {};
    req.metadata = md;
    req.metadata_count = 1;
    mt_ca_auth_result out;
    mt_ca_auth_check(auth_, &req, 1700000000, &out);
    return out;
  }
  mt_ca_auth *auth_ = nullptr;
  int misses_ = 0;
};

TEST_F(AuthWithoutIssuer, ATokenIsRefusedAsRetryableUntilTheIssuerIsKnown) {
  EXPECT_EQ(mt_ca_auth_issuer(auth_), nullptr);
  mt_ca_auth_result r = Check("Bearer a.b.c");
  EXPECT_EQ(r.status, MT_GRPC_UNAVAILABLE);
  EXPECT_STREQ(r.reason, "no_issuer");
  EXPECT_NE(std::string(r.message).find("token issuer not known yet"), std::string::npos)
      << r.message;
  EXPECT_STREQ(r.spiffe_id, "");
  EXPECT_EQ(misses_, 1);  // the owner is asked to discover it
}

TEST_F(AuthWithoutIssuer, OnceSetTheIssuerIsUsedForTheVerdict) {
  ASSERT_EQ(mt_ca_auth_set_issuer(auth_, "https://oidc.example/id/1"), 1);
  EXPECT_STREQ(mt_ca_auth_issuer(auth_), "https://oidc.example/id/1");
  // A token is judged now (this one is malformed), not refused as retryable.
  mt_ca_auth_result r = Check("Bearer a.b.c");
  EXPECT_EQ(r.status, MT_GRPC_UNAUTHENTICATED);
  EXPECT_STREQ(r.reason, "malformed");
  EXPECT_EQ(misses_, 0);
}

TEST(AccessLog, OneJsonObjectWithEveryField) {
  mt_ca_access_entry e = {};
  e.method = MT_CA_METHOD_CREATE_CERTIFICATE;
  e.peer = "127.0.0.1:5000";
  e.caller = "spiffe://example.org/ns/a/sa/b";
  e.identity = "spiffe://example.org/ns/a/sa/b";
  e.status = MT_GRPC_OK;
  e.reason = "ok";
  e.serial = "0a1b";
  e.ttl_s = 3600;
  e.duration_ms = 2;
  char line[2048];
  size_t n = mt_ca_log_format_access(&e, 1795627999005LL, line, sizeof(line));
  EXPECT_EQ(std::string(line, n),
            "{\"time\":\"2026-11-25T17:33:19.005Z\","
            "\"method\":\"/istio.v1.auth.IstioCertificateService/CreateCertificate\","
            "\"peer\":\"127.0.0.1:5000\",\"caller\":\"spiffe://example.org/ns/a/sa/b\","
            "\"identity\":\"spiffe://example.org/ns/a/sa/b\",\"impersonated\":\"\",\"node\":\"\","
            "\"status\":\"OK\",\"code\":0,\"reason\":\"ok\",\"message\":\"\",\"serial\":\"0a1b\","
            "\"ttl\":3600,\"version\":\"\",\"duration_ms\":2}");
}

TEST(AccessLog, ANodeAgentsCallShowsCallerIdentityAndNode) {
  mt_ca_access_entry e = {};
  e.method = MT_CA_METHOD_CREATE_CERTIFICATE;
  e.caller = "spiffe://example.org/ns/mtls-system/sa/mtlsd-node";
  e.identity = "spiffe://example.org/ns/demo/sa/frontend";
  e.impersonated = "spiffe://example.org/ns/demo/sa/frontend";
  e.node = "node-1";
  e.status = MT_GRPC_OK;
  char line[2048];
  mt_ca_log_format_access(&e, 0, line, sizeof(line));
  EXPECT_NE(
      std::string(line).find(
          "\"caller\":\"spiffe://example.org/ns/mtls-system/sa/mtlsd-node\","
          "\"identity\":\"spiffe://example.org/ns/demo/sa/frontend\","
          "\"impersonated\":\"spiffe://example.org/ns/demo/sa/frontend\",\"node\":\"node-1\""),
      std::string::npos)
      << line;
}

TEST(AccessLog, EscapesWhatTheCallerControls) {
  mt_ca_access_entry e = {};
  e.method = MT_CA_METHOD_WATCH;
  e.status = MT_GRPC_UNAUTHENTICATED;
  e.message = "bad \"token\"\n\\ \x01";
  char line[2048];
  mt_ca_log_format_access(&e, 0, line, sizeof(line));
  EXPECT_NE(std::string(line).find("\"message\":\"bad \\\"token\\\"\\u000a\\\\ \\u0001\""),
            std::string::npos)
      << line;
  EXPECT_NE(std::string(line).find("\"status\":\"UNAUTHENTICATED\",\"code\":16"),
            std::string::npos);
}

TEST(AccessLog, TruncatesInsteadOfOverflowing) {
  mt_ca_access_entry e = {};
  std::string long_id(5000, 'a');
  e.identity = long_id.c_str();
  char line[100];
  size_t n = mt_ca_log_format_access(&e, 0, line, sizeof(line));
  EXPECT_EQ(n, sizeof(line) - 1);
  EXPECT_EQ(line[n], '\0');
}

TEST(Counters, CountCallsAndRefusalsByReason) {
  mt_ca_log *log = mt_ca_log_new("/dev/null");
  ASSERT_NE(log, nullptr);
  mt_ca_access_entry e = {};
  e.method = MT_CA_METHOD_CREATE_CERTIFICATE;
  e.status = MT_GRPC_UNAUTHENTICATED;
  e.reason = "expired";
  e.refused = 1;
  mt_ca_log_access(log, &e);
  mt_ca_log_access(log, &e);
  e.status = MT_GRPC_OK;
  e.refused = 0;
  mt_ca_log_access(log, &e);
  mt_ca_log_count(log, MT_CA_EV_CERTS_ISSUED);
  EXPECT_EQ(mt_ca_log_calls(log, MT_CA_METHOD_CREATE_CERTIFICATE, MT_GRPC_UNAUTHENTICATED), 2u);
  EXPECT_EQ(mt_ca_log_calls(log, MT_CA_METHOD_CREATE_CERTIFICATE, MT_GRPC_OK), 1u);
  EXPECT_EQ(mt_ca_log_counter(log, MT_CA_EV_CERTS_ISSUED), 1u);
  char *text = nullptr;
  size_t len = 0;
  FILE *out = open_memstream(&text, &len);
  mt_ca_log_dump_counters(log, out);
  fclose(out);
  EXPECT_NE(std::string(text).find("mtls_ca_refusals_total{reason=\"expired\"} 2"),
            std::string::npos)
      << text;
  free(text);
  mt_ca_log_free(log);
}

}  // namespace
