// Fresh key pairs for unit tests (googletest expectations on every step).
#ifndef MT_TESTS_UNIT_TEST_KEYS_H
#define MT_TESTS_UNIT_TEST_KEYS_H

#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

namespace mt_test {

inline bssl::UniquePtr<EVP_PKEY> NewEcKey(int curve = NID_X9_62_prime256v1) {
  bssl::UniquePtr<EC_KEY> ec(EC_KEY_new_by_curve_name(curve));
  EXPECT_TRUE(EC_KEY_generate_key(ec.get()));
  bssl::UniquePtr<EVP_PKEY> key(EVP_PKEY_new());
  EXPECT_TRUE(EVP_PKEY_assign_EC_KEY(key.get(), ec.release()));
  return key;
}

inline bssl::UniquePtr<EVP_PKEY> NewRsaKey(int bits) {
  bssl::UniquePtr<RSA> rsa(RSA_new());
  bssl::UniquePtr<BIGNUM> e(BN_new());
  EXPECT_TRUE(BN_set_word(e.get(), RSA_F4));
  EXPECT_TRUE(RSA_generate_key_ex(rsa.get(), bits, e.get(), nullptr));
  bssl::UniquePtr<EVP_PKEY> key(EVP_PKEY_new());
  EXPECT_TRUE(EVP_PKEY_assign_RSA(key.get(), rsa.release()));
  return key;
}

// A self-signed certificate of |key| named |cn|, valid from an hour ago for
// a day, with the subjectAltName |san| (e.g. "IP:127.0.0.1"): a TLS server
// for in-process tests, and its clients' trust anchor.
inline bssl::UniquePtr<X509> SelfSignedCert(EVP_PKEY *key, const char *cn, const char *san) {
  bssl::UniquePtr<X509> cert(X509_new());
  X509_set_version(cert.get(), X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 86400);
  X509_NAME *name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const uint8_t *>(cn), -1,
                             -1, 0);
  X509_set_issuer_name(cert.get(), name);
  X509_set_pubkey(cert.get(), key);
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, cert.get(), cert.get(), nullptr, nullptr, 0);
  X509_EXTENSION *ext = X509V3_EXT_nconf_nid(nullptr, &ctx, NID_subject_alt_name, san);
  EXPECT_NE(ext, nullptr);
  X509_add_ext(cert.get(), ext, -1);
  X509_EXTENSION_free(ext);
  EXPECT_TRUE(X509_sign(cert.get(), key, EVP_sha256()));
  return cert;
}

}  // namespace mt_test

#endif  // MT_TESTS_UNIT_TEST_KEYS_H
