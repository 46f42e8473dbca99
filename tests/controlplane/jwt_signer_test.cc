// Specification of controlplane/jwt_signer: the JWT-SVIDs mtls-ca signs
// verify with the JWKS it publishes (read back through jwks.h and checked
// through jwt.h, the same code validators use), and a rotation never
// leaves a valid token without its key.
#include "controlplane/jwt_signer.h"

#include <gtest/gtest.h>
#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "controlplane/jwks.h"
#include "controlplane/jwt.h"

namespace {

const int64_t kNow = 1700000000;
const int64_t kMaxTtl = 3600;
const char kSub[] = "spiffe://example.org/ns/default/sa/frontend";

struct SignerDeleter {
  void operator()(mt_jwt_signer *s) const { mt_jwt_signer_free(s); }
};
using SignerPtr = std::unique_ptr<mt_jwt_signer, SignerDeleter>;

SignerPtr GeneratedSigner() {
  SignerPtr s(mt_jwt_signer_new(kMaxTtl));
  char err[256] = "";
  EXPECT_TRUE(mt_jwt_signer_generate(s.get(), kNow, err, sizeof(err))) << err;
  return s;
}

std::string EcPrivatePem() {
  bssl::UniquePtr<EC_KEY> ec(EC_KEY_new_by_curve_name(NID_X9_62_prime256v1));
  EXPECT_TRUE(EC_KEY_generate_key(ec.get()));
  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  EXPECT_TRUE(
      PEM_write_bio_ECPrivateKey(bio.get(), ec.get(), nullptr, nullptr, 0, nullptr, nullptr));
  const uint8_t *data;
  size_t len;
  BIO_mem_contents(bio.get(), &data, &len);
  return std::string(reinterpret_cast<const char *>(data), len);
}

std::string Sign(const mt_jwt_signer *s, std::vector<const char *> aud, int64_t iat = kNow,
                 int64_t exp = kNow + 300, std::string *error = nullptr) {
  mt_jwt_svid_claims c = {kSub, aud.data(), aud.size(), iat, exp};
  char err[256] = "";
  char *token = mt_jwt_signer_sign(s, &c, err, sizeof(err));
  if (error != nullptr) *error = err;
  std::string out = token != nullptr ? token : "";
  free(token);
  return out;
}

// Verifies |token| for |audience| with the keys |s| publishes now.
mt_jwt_err VerifyWithJwks(mt_jwt_signer *s, const std::string &token, const char *audience,
                          int64_t now = kNow, std::string *message = nullptr) {
  size_t len = 0;
  const char *jwks = mt_jwt_signer_jwks(s, &len);
  EXPECT_NE(jwks, nullptr);
  char err[256] = "";
  mt_jwt_keys *keys = mt_jwks_parse(jwks, len, nullptr, err, sizeof(err));
  EXPECT_NE(keys, nullptr) << err;
  mt_jwt_expect expect;
  mt_jwt_expect_init(&expect, nullptr, audience, now);
  mt_jwt_claims claims;
  mt_jwt_error jerr;
  mt_jwt_err rc = mt_jwt_verify(keys, token.data(), token.size(), &expect, &claims, &jerr);
  if (rc == MT_JWT_OK) {
    EXPECT_STREQ(kSub, claims.sub);
  }
  if (message != nullptr) *message = jerr.message;
  mt_jwt_keys_free(keys);
  return rc;
}

json_t *Part(const std::string &token, int index) {
  size_t start = 0;
  for (int i = 0; i < index; i++) start = token.find('.', start) + 1;
  std::string b64 = token.substr(start, token.find('.', start) - start);
  for (char &ch : b64) ch = ch == '-' ? '+' : ch == '_' ? '/' : ch;
  while (b64.size() % 4) b64 += '=';
  std::vector<uint8_t> raw(b64.size());
  size_t n = 0;
  EXPECT_TRUE(EVP_DecodeBase64(raw.data(), &n, raw.size(),
                               reinterpret_cast<const uint8_t *>(b64.data()), b64.size()));
  return json_loadb(reinterpret_cast<const char *>(raw.data()), n, 0, nullptr);
}

size_t JwksKeyCount(mt_jwt_signer *s) {
  const char *jwks = mt_jwt_signer_jwks(s, nullptr);
  json_t *doc = json_loads(jwks, 0, nullptr);
  size_t n = json_array_size(json_object_get(doc, "keys"));
  json_decref(doc);
  return n;
}

TEST(JwtSigner, TokenVerifiesWithThePublishedJwks) {
  SignerPtr s = GeneratedSigner();
  std::string token = Sign(s.get(), {"payments"});
  ASSERT_FALSE(token.empty());
  std::string why;
  EXPECT_EQ(MT_JWT_OK, VerifyWithJwks(s.get(), token, "payments", kNow, &why)) << why;
  EXPECT_EQ(MT_JWT_WRONG_AUDIENCE, VerifyWithJwks(s.get(), token, "other"));
}

TEST(JwtSigner, HeaderAndClaimsAreTheJwtSvidOnes) {
  SignerPtr s = GeneratedSigner();
  std::string token = Sign(s.get(), {"a"}, kNow, kNow + 120);
  json_t *header = Part(token, 0), *claims = Part(token, 1);
  EXPECT_STREQ("ES256", json_string_value(json_object_get(header, "alg")));
  EXPECT_STREQ("JWT", json_string_value(json_object_get(header, "typ")));
  EXPECT_STREQ(mt_jwt_signer_kid(s.get()), json_string_value(json_object_get(header, "kid")));
  EXPECT_EQ(43u, strlen(mt_jwt_signer_kid(s.get())));
  EXPECT_STREQ(kSub, json_string_value(json_object_get(claims, "sub")));
  EXPECT_STREQ("a", json_string_value(json_object_get(claims, "aud")));  // one: a string
  EXPECT_EQ(kNow, json_integer_value(json_object_get(claims, "iat")));
  EXPECT_EQ(kNow + 120, json_integer_value(json_object_get(claims, "exp")));
  EXPECT_EQ(nullptr, json_object_get(claims, "iss"));
  json_decref(header);
  json_decref(claims);
}

TEST(JwtSigner, SeveralAudiencesAreAnArrayAndEachVerifies) {
  SignerPtr s = GeneratedSigner();
  std::string token = Sign(s.get(), {"a", "b"});
  json_t *claims = Part(token, 1);
  EXPECT_EQ(2u, json_array_size(json_object_get(claims, "aud")));
  json_decref(claims);
  EXPECT_EQ(MT_JWT_OK, VerifyWithJwks(s.get(), token, "a"));
  EXPECT_EQ(MT_JWT_OK, VerifyWithJwks(s.get(), token, "b"));
}

TEST(JwtSigner, JwksPublishesTheKeyAsASpiffeJwtAuthority) {
  SignerPtr s = GeneratedSigner();
  json_t *doc = json_loads(mt_jwt_signer_jwks(s.get(), nullptr), 0, nullptr);
  json_t *key = json_array_get(json_object_get(doc, "keys"), 0);
  EXPECT_STREQ("EC", json_string_value(json_object_get(key, "kty")));
  EXPECT_STREQ("P-256", json_string_value(json_object_get(key, "crv")));
  EXPECT_STREQ("jwt-svid", json_string_value(json_object_get(key, "use")));
  EXPECT_STREQ("ES256", json_string_value(json_object_get(key, "alg")));
  EXPECT_STREQ(mt_jwt_signer_kid(s.get()), json_string_value(json_object_get(key, "kid")));
  EXPECT_EQ(nullptr, json_object_get(key, "d"));  // never the private part
  json_decref(doc);
}

TEST(JwtSigner, ExpiredTokenIsRefusedByValidators) {
  SignerPtr s = GeneratedSigner();
  std::string token = Sign(s.get(), {"a"}, kNow, kNow + 60);
  EXPECT_EQ(MT_JWT_EXPIRED,
            VerifyWithJwks(s.get(), token, "a", kNow + 60 + MT_JWT_DEFAULT_LEEWAY_S + 1));
}

TEST(JwtSigner, RotationKeepsThePreviousKeyUntilItsTokensHaveExpired) {
  SignerPtr s = GeneratedSigner();
  std::string old_kid = mt_jwt_signer_kid(s.get());
  std::string old_token = Sign(s.get(), {"a"}, kNow, kNow + kMaxTtl);
  uint64_t generation = mt_jwt_signer_generation(s.get());

  const int64_t rotated_at = kNow + 10;
  std::string pem = EcPrivatePem();
  int rotated = 0;
  char err[256] = "";
  ASSERT_TRUE(mt_jwt_signer_use_pem(s.get(), pem.data(), pem.size(), rotated_at, &rotated, err,
                                    sizeof(err)))
      << err;
  EXPECT_EQ(1, rotated);
  EXPECT_NE(generation, mt_jwt_signer_generation(s.get()));
  EXPECT_NE(old_kid, mt_jwt_signer_kid(s.get()));
  EXPECT_EQ(2u, JwksKeyCount(s.get()));
  std::string new_token = Sign(s.get(), {"a"}, rotated_at, rotated_at + 60);
  EXPECT_EQ(MT_JWT_OK, VerifyWithJwks(s.get(), old_token, "a", rotated_at));
  EXPECT_EQ(MT_JWT_OK, VerifyWithJwks(s.get(), new_token, "a", rotated_at));

  // Up to the last moment a token of the old key can be valid, it stays.
  const int64_t last_valid = rotated_at + kMaxTtl + MT_JWT_DEFAULT_LEEWAY_S;
  EXPECT_EQ(last_valid, mt_jwt_signer_next_expiry(s.get()));
  EXPECT_EQ(0, mt_jwt_signer_expire(s.get(), last_valid - 1));
  EXPECT_EQ(2u, JwksKeyCount(s.get()));
  EXPECT_EQ(1, mt_jwt_signer_expire(s.get(), last_valid));
  EXPECT_EQ(1u, JwksKeyCount(s.get()));
  EXPECT_EQ(0, mt_jwt_signer_next_expiry(s.get()));
}

TEST(JwtSigner, TheSameKeyAgainIsNoRotation) {
  SignerPtr s(mt_jwt_signer_new(kMaxTtl));
  std::string pem = EcPrivatePem();
  int rotated = 0;
  char err[256] = "";
  ASSERT_TRUE(
      mt_jwt_signer_use_pem(s.get(), pem.data(), pem.size(), kNow, &rotated, err, sizeof(err)));
  EXPECT_EQ(1, rotated);
  uint64_t generation = mt_jwt_signer_generation(s.get());
  ASSERT_TRUE(
      mt_jwt_signer_use_pem(s.get(), pem.data(), pem.size(), kNow + 5, &rotated, err, sizeof(err)));
  EXPECT_EQ(0, rotated);
  EXPECT_EQ(generation, mt_jwt_signer_generation(s.get()));
  EXPECT_EQ(1u, JwksKeyCount(s.get()));
}

TEST(JwtSigner, KeysThatCannotSignEs256AreRefusedAndTheCurrentOneStays) {
  SignerPtr s = GeneratedSigner();
  std::string kid = mt_jwt_signer_kid(s.get());
  bssl::UniquePtr<EC_KEY> p384(EC_KEY_new_by_curve_name(NID_secp384r1));
  EC_KEY_generate_key(p384.get());
  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_ECPrivateKey(bio.get(), p384.get(), nullptr, nullptr, 0, nullptr, nullptr);
  const uint8_t *data;
  size_t len;
  BIO_mem_contents(bio.get(), &data, &len);
  std::string p384_pem(reinterpret_cast<const char *>(data), len);
  std::string two = EcPrivatePem() + EcPrivatePem();
  struct {
    std::string pem;
    const char *reason;
  } cases[] = {
      {"not a key", "no PEM private key"},
      {p384_pem, "not an EC P-256 private key"},
      {two, "more than one private key"},
  };
  for (const auto &c : cases) {
    char err[256] = "";
    EXPECT_FALSE(mt_jwt_signer_use_pem(s.get(), c.pem.data(), c.pem.size(), kNow, nullptr, err,
                                       sizeof(err)));
    EXPECT_NE(std::string(err).find(c.reason), std::string::npos) << err;
    EXPECT_EQ(kid, mt_jwt_signer_kid(s.get()));
  }
}

TEST(JwtSigner, ReloadFileRotatesOnlyWhenTheFileChanges) {
  char path[] = "/tmp/jwt_signer_test_XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  std::string first = EcPrivatePem();
  ASSERT_EQ((ssize_t)first.size(), write(fd, first.data(), first.size()));
  close(fd);
  SignerPtr s(mt_jwt_signer_new(kMaxTtl));
  char err[256] = "";
  EXPECT_EQ(1, mt_jwt_signer_reload_file(s.get(), path, kNow, err, sizeof(err))) << err;
  EXPECT_EQ(0, mt_jwt_signer_reload_file(s.get(), path, kNow + 1, err, sizeof(err)));
  std::string kid = mt_jwt_signer_kid(s.get());

  std::string next_path = std::string(path) + ".next";
  FILE *f = fopen(next_path.c_str(), "w");
  std::string second = EcPrivatePem();
  fwrite(second.data(), 1, second.size(), f);
  fclose(f);
  ASSERT_EQ(0, rename(next_path.c_str(), path));  // how a mounted Secret changes
  EXPECT_EQ(1, mt_jwt_signer_reload_file(s.get(), path, kNow + 2, err, sizeof(err))) << err;
  EXPECT_NE(kid, mt_jwt_signer_kid(s.get()));

  f = fopen(next_path.c_str(), "w");
  fputs("garbage", f);
  fclose(f);
  ASSERT_EQ(0, rename(next_path.c_str(), path));
  std::string current = mt_jwt_signer_kid(s.get());
  EXPECT_EQ(-1, mt_jwt_signer_reload_file(s.get(), path, kNow + 3, err, sizeof(err)));
  EXPECT_NE(std::string(err).find(path), std::string::npos) << err;
  EXPECT_EQ(current, mt_jwt_signer_kid(s.get()));
  unlink(path);
}

TEST(JwtSigner, RefusesToSignWithoutKeyOrWithBadClaims) {
  SignerPtr empty(mt_jwt_signer_new(kMaxTtl));
  std::string why;
  EXPECT_EQ("", Sign(empty.get(), {"a"}, kNow, kNow + 60, &why));
  EXPECT_EQ("no signing key yet", why);
  SignerPtr s = GeneratedSigner();
  EXPECT_EQ("", Sign(s.get(), {}, kNow, kNow + 60, &why));
  EXPECT_EQ("", Sign(s.get(), {""}, kNow, kNow + 60, &why));
  EXPECT_EQ("an audience is empty", why);
  EXPECT_EQ("", Sign(s.get(), {"a"}, kNow, kNow, &why));
  EXPECT_EQ(nullptr, mt_jwt_signer_jwks(empty.get(), nullptr));
}

}  // namespace
