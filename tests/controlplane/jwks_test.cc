// JWKS documents as kube-apiserver publishes them at /openid/v1/jwks, and
// the ones mtls-ca must refuse or partly skip.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include <openssl/base64.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/nid.h>
#include <openssl/rsa.h>

#include "controlplane/jwks.h"

namespace {

std::string B64Url(const std::vector<uint8_t> &in) {
  size_t len = 0;
  EVP_EncodedLength(&len, in.size());
  std::string out(len, '\0');
  size_t n = EVP_EncodeBlock(reinterpret_cast<uint8_t *>(&out[0]), in.data(), in.size());
  out.resize(n);
  for (char &c : out) c = c == '+' ? '-' : c == '/' ? '_' : c;
  while (!out.empty() && out.back() == '=') out.pop_back();
  return out;
}

std::vector<uint8_t> Bytes(const BIGNUM *bn, size_t pad = 0) {
  size_t len = pad ? pad : BN_num_bytes(bn);
  std::vector<uint8_t> out(len);
  BN_bn2bin_padded(out.data(), len, bn);
  return out;
}

std::string EcJwk(const char *use = "sig", const char *extra = "") {
  bssl::UniquePtr<EC_KEY> key(EC_KEY_new_by_curve_name(NID_X9_62_prime256v1));
  EC_KEY_generate_key(key.get());
  bssl::UniquePtr<BIGNUM> x(BN_new()), y(BN_new());
  EC_POINT_get_affine_coordinates_GFp(EC_KEY_get0_group(key.get()),
                                      EC_KEY_get0_public_key(key.get()), x.get(), y.get(), nullptr);
  return std::string("{\"use\":\"") + use + "\",\"kty\":\"EC\",\"kid\":\"k1\",\"crv\":\"P-256\"," +
         extra + "\"x\":\"" + B64Url(Bytes(x.get(), 32)) + "\",\"y\":\"" +
         B64Url(Bytes(y.get(), 32)) + "\"}";
}

std::string RsaJwk(unsigned bits) {
  bssl::UniquePtr<RSA> rsa(RSA_new());
  bssl::UniquePtr<BIGNUM> e(BN_new());
  BN_set_word(e.get(), RSA_F4);
  RSA_generate_key_ex(rsa.get(), bits, e.get(), nullptr);
  return "{\"use\":\"sig\",\"kty\":\"RSA\",\"alg\":\"RS256\",\"kid\":\"r1\",\"n\":\"" +
         B64Url(Bytes(RSA_get0_n(rsa.get()))) + "\",\"e\":\"" +
         B64Url(Bytes(RSA_get0_e(rsa.get()))) + "\"}";
}

struct Parsed {
  mt_jwt_keys *keys = nullptr;
  size_t skipped = 0;
  std::string error;
  ~Parsed() { mt_jwt_keys_free(keys); }
};

void Parse(const std::string &doc, Parsed *out) {
  char err[512] = "";
  out->keys = mt_jwks_parse(doc.data(), doc.size(), &out->skipped, err, sizeof(err));
  out->error = err;
}

TEST(Jwks, RsaAndP256SigningKeysAreLoaded) {
  Parsed p;
  Parse("{\"keys\":[" + EcJwk() + "," + RsaJwk(2048) + "]}", &p);
  ASSERT_NE(p.keys, nullptr) << p.error;
  EXPECT_EQ(mt_jwt_keys_count(p.keys), 2u);
  EXPECT_EQ(p.skipped, 0u);
}

TEST(Jwks, KeysWeDoNotVerifyWithAreSkippedNotFatal) {
  Parsed p;
  Parse("{\"keys\":[" + EcJwk() +
            ",{\"kty\":\"EC\",\"crv\":\"P-384\",\"x\":\"AA\",\"y\":\"AA\"}"
            ",{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AA\"}"
            ",{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}," +
            EcJwk("enc") + "," + EcJwk("sig", "\"alg\":\"ES384\",") + "]}",
        &p);
  ASSERT_NE(p.keys, nullptr) << p.error;
  EXPECT_EQ(mt_jwt_keys_count(p.keys), 1u);
  EXPECT_EQ(p.skipped, 5u);
}

TEST(Jwks, BrokenDocumentsAreRefusedWithAReason) {
  std::string good = EcJwk();
  std::string off_curve = good;
  size_t y = off_curve.find("\"y\":\"") + 5;
  off_curve[y] = off_curve[y] == 'A' ? 'B' : 'A';
  struct {
    std::string doc;
    const char *reason;
  } cases[] = {
      {"not json", "JWKS is not JSON"},
      {"{\"keys\":{}}", "JWKS has no \"keys\" array"},
      {"{\"keys\":[]}", "JWKS has no RS256 or ES256 (P-256) signing key (0 skipped)"},
      {"{\"keys\":[" + good + "],\"keys\":[]}", "JWKS is not JSON"},  // duplicate member
      {"{\"keys\":[42]}", "keys[0] is not an object"},
      {"{\"keys\":[{\"crv\":\"P-256\"}]}", "keys[0] has no \"kty\""},
      {"{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\"}]}",
       "keys[0]: RSA key needs base64url \"n\" and \"e\""},
      {"{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"a+b/\",\"y\":\"AA\"}]}",
       "EC P-256 key needs 32-byte base64url"},
      {"{\"keys\":[" + off_curve + "]}", "is not a point of P-256"},
      {"{\"keys\":[" + RsaJwk(1024) + "]}", "JWKS key refused"},
  };
  for (const auto &c : cases) {
    Parsed p;
    Parse(c.doc, &p);
    EXPECT_EQ(p.keys, nullptr) << c.doc;
    EXPECT_NE(p.error.find(c.reason), std::string::npos) << p.error << "\n  for " << c.doc;
  }
}

TEST(Jwks, OversizedDocumentsAreRefusedBeforeParsing) {
  Parsed p;
  Parse(std::string(MT_JWKS_MAX_BYTES + 1, ' '), &p);
  EXPECT_EQ(p.keys, nullptr);
  EXPECT_NE(p.error.find("JWKS larger than"), std::string::npos) << p.error;
}

// SPIFFE bundles mark JWT authorities "use":"jwt-svid" (SPIFFE Trust
// Domain and Bundle, 4.2.2); they are signing keys like "sig".
TEST(Jwks, SpiffeJwtSvidAuthoritiesAreLoaded) {
  Parsed p;
  Parse("{\"keys\":[" + EcJwk("jwt-svid", "\"alg\":\"ES256\",") + "]}", &p);
  ASSERT_NE(p.keys, nullptr) << p.error;
  EXPECT_EQ(mt_jwt_keys_count(p.keys), 1u);
  EXPECT_EQ(p.skipped, 0u);
}

TEST(Jwks, X509SvidAuthoritiesAreSkipped) {
  Parsed p;
  Parse("{\"keys\":[" + EcJwk("x509-svid") + "," + EcJwk("jwt-svid") + "]}", &p);
  ASSERT_NE(p.keys, nullptr) << p.error;
  EXPECT_EQ(mt_jwt_keys_count(p.keys), 1u);
  EXPECT_EQ(p.skipped, 1u);
}

}  // namespace
