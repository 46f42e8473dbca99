// Test helpers: JWS tokens (ES256) and JWKS documents built here with
// BoringSSL, for the tests of the agent's JWT-SVID modules.
#ifndef MT_TESTS_UNIT_JWT_TEST_TOKENS_H
#define MT_TESTS_UNIT_JWT_TEST_TOKENS_H

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/sha.h>

#include <cstring>
#include <string>

#include "controlplane/jwt.h"
#include "tests/unit/test_keys.h"

namespace mt_test {

inline std::string B64Url(const std::string &in) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
  mt_jwt_b64url_encode(reinterpret_cast<const uint8_t *>(in.data()), in.size(), &out[0]);
  out.resize(strlen(out.c_str()));
  return out;
}

// header.payload.signature, ES256 (raw r || s) over the given JSON texts.
inline std::string Es256Token(EVP_PKEY *key, const std::string &header_json,
                              const std::string &payload_json) {
  std::string input = B64Url(header_json) + "." + B64Url(payload_json);
  uint8_t digest[SHA256_DIGEST_LENGTH], raw[64];
  SHA256(reinterpret_cast<const uint8_t *>(input.data()), input.size(), digest);
  ECDSA_SIG *sig = ECDSA_do_sign(digest, sizeof(digest), EVP_PKEY_get0_EC_KEY(key));
  const BIGNUM *r, *s;
  ECDSA_SIG_get0(sig, &r, &s);
  BN_bn2bin_padded(raw, 32, r);
  BN_bn2bin_padded(raw + 32, 32, s);
  ECDSA_SIG_free(sig);
  return input + "." + B64Url(std::string(reinterpret_cast<char *>(raw), sizeof(raw)));
}

// {"keys":[{...}]} with |key|'s public part, "use" as given.
inline std::string Jwks(EVP_PKEY *key, const std::string &use = "jwt-svid") {
  const EC_KEY *ec = EVP_PKEY_get0_EC_KEY(key);
  bssl::UniquePtr<BIGNUM> x(BN_new()), y(BN_new());
  EC_POINT_get_affine_coordinates_GFp(EC_KEY_get0_group(ec), EC_KEY_get0_public_key(ec), x.get(),
                                      y.get(), nullptr);
  uint8_t xb[32], yb[32];
  BN_bn2bin_padded(xb, 32, x.get());
  BN_bn2bin_padded(yb, 32, y.get());
  char kid[MT_JWT_KID_MAX_LEN + 1];
  mt_jwt_key_id_of(key, kid);
  return std::string("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"") +
         B64Url(std::string(reinterpret_cast<char *>(xb), 32)) + "\",\"y\":\"" +
         B64Url(std::string(reinterpret_cast<char *>(yb), 32)) + "\",\"kid\":\"" + kid +
         "\",\"use\":\"" + use + "\",\"alg\":\"ES256\"}]}";
}

}  // namespace mt_test

#endif  // MT_TESTS_UNIT_JWT_TEST_TOKENS_H
