// Fresh key pairs for unit tests (googletest expectations on every step).
#ifndef MT_TESTS_UNIT_TEST_KEYS_H
#define MT_TESTS_UNIT_TEST_KEYS_H

#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/rsa.h>

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

}  // namespace mt_test

#endif  // MT_TESTS_UNIT_TEST_KEYS_H
