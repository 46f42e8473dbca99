// The node a caller runs on, as its token says: Kubernetes 1.30+ projected
// tokens bound to a pod carry "kubernetes.io": {"node": {"name": ...}}.
// Tokens are built and ES256-signed here with a key made in the test.
#include "controlplane/jwt.h"

#include <string>

#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/digest.h>
#include <openssl/ecdsa.h>
#include <openssl/sha.h>

#include "tests/controlplane/test_files.h"

namespace {

const int64_t kNow = 1700000000;
const char kIssuer[] = "https://kubernetes.default.svc";
const char kAudience[] = "istio-ca";

std::string B64Url(const std::string &in) {
  static const char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : in) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out += kAlphabet[(acc >> bits) & 0x3f];
    }
  }
  if (bits > 0) out += kAlphabet[(acc << (6 - bits)) & 0x3f];
  return out;
}

class NodeClaim : public ::testing::Test {
 protected:
  void SetUp() override {
    key_ = mt_test::NewP256Key();
    BIO *bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(bio, key_);
    const uint8_t *data;
    size_t len;
    BIO_mem_contents(bio, &data, &len);
    char err[256] = "";
    keys_ = mt_jwt_keys_load_pem(reinterpret_cast<const char *>(data), len, err, sizeof(err));
    BIO_free(bio);
    ASSERT_NE(keys_, nullptr) << err;
  }
  void TearDown() override {
    mt_jwt_keys_free(keys_);
    EVP_PKEY_free(key_);
  }

  // An ES256 token whose payload is the standard claims plus |extra| (JSON
  // members, with a leading comma, or "").
  std::string Token(const std::string &extra) {
    std::string header = "{\"alg\":\"ES256\",\"typ\":\"JWT\"}";
    std::string payload = "{\"iss\":\"" + std::string(kIssuer) + "\",\"aud\":[\"" + kAudience +
                          "\"],\"sub\":\"system:serviceaccount:mtls-system:mtlsd-node\",\"exp\":" +
                          std::to_string(kNow + 600) + extra + "}";
    std::string input = B64Url(header) + "." + B64Url(payload);
    uint8_t digest[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const uint8_t *>(input.data()), input.size(), digest);
    ECDSA_SIG *sig = ECDSA_do_sign(digest, sizeof(digest), EVP_PKEY_get0_EC_KEY(key_));
    uint8_t raw[64];
    BN_bn2bin_padded(raw, 32, ECDSA_SIG_get0_r(sig));
    BN_bn2bin_padded(raw + 32, 32, ECDSA_SIG_get0_s(sig));
    ECDSA_SIG_free(sig);
    return input + "." + B64Url(std::string(reinterpret_cast<char *>(raw), sizeof(raw)));
  }

  mt_jwt_err Verify(const std::string &token, mt_jwt_claims *claims, mt_jwt_error *err) {
    mt_jwt_expect expect;
    mt_jwt_expect_init(&expect, kIssuer, kAudience, kNow);
    return mt_jwt_verify(keys_, token.data(), token.size(), &expect, claims, err);
  }

  EVP_PKEY *key_ = nullptr;
  mt_jwt_keys *keys_ = nullptr;
};

TEST_F(NodeClaim, ReadsTheNodeNameOfAPodBoundToken) {
  mt_jwt_claims claims;
  mt_jwt_error err;
  ASSERT_EQ(Verify(Token(",\"kubernetes.io\":{\"namespace\":\"mtls-system\","
                         "\"node\":{\"name\":\"node-1\",\"uid\":\"6f2a\"},"
                         "\"pod\":{\"name\":\"mtlsd-node-x7\",\"uid\":\"9b1c\"},"
                         "\"serviceaccount\":{\"name\":\"mtlsd-node\",\"uid\":\"1d2e\"}}"),
                   &claims, &err),
            MT_JWT_OK)
      << err.message;
  EXPECT_STREQ(claims.node_name, "node-1");
  EXPECT_STREQ(claims.sub, "system:serviceaccount:mtls-system:mtlsd-node");
}

TEST_F(NodeClaim, IsEmptyWhenTheTokenNamesNoNode) {
  for (const char *extra :
       {"", ",\"kubernetes.io\":{\"namespace\":\"mtls-system\"}",
        ",\"kubernetes.io\":{\"node\":{\"uid\":\"6f2a\"}}", ",\"node\":{\"name\":\"node-1\"}"}) {
    mt_jwt_claims claims;
    mt_jwt_error err;
    ASSERT_EQ(Verify(Token(extra), &claims, &err), MT_JWT_OK) << extra << ": " << err.message;
    EXPECT_STREQ(claims.node_name, "") << extra;
  }
}

TEST_F(NodeClaim, AWrongTypeOnThePathMakesTheTokenMalformed) {
  struct {
    const char *extra, *message;
  } cases[] = {
      {",\"kubernetes.io\":\"node-1\"", "claim \"kubernetes.io\" is not an object"},
      {",\"kubernetes.io\":{\"node\":\"node-1\"}", "claim \"kubernetes.io\".node is not an object"},
      {",\"kubernetes.io\":{\"node\":{\"name\":7}}",
       "claim \"kubernetes.io\".node.name is not a string"},
      {",\"kubernetes.io\":{\"node\":{\"name\":\"a\",\"name\":\"b\"}}", "duplicate member"},
  };
  for (const auto &c : cases) {
    mt_jwt_claims claims;
    mt_jwt_error err;
    EXPECT_EQ(Verify(Token(c.extra), &claims, &err), MT_JWT_MALFORMED) << c.extra;
    EXPECT_NE(std::string(err.message).find(c.message), std::string::npos) << err.message;
    EXPECT_STREQ(claims.node_name, "");
  }
}

}  // namespace
