// The intermediate cache (agent/chain_cache.h): a remembered intermediate
// lets a leaf through only with every per-leaf check; any doubt is a miss.
#include "agent/chain_cache.h"

#include <gtest/gtest.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <ctime>
#include <string>

namespace {

bssl::UniquePtr<EVP_PKEY> NewKey() {
  bssl::UniquePtr<EC_KEY> ec(EC_KEY_new_by_curve_name(NID_X9_62_prime256v1));
  EXPECT_TRUE(EC_KEY_generate_key(ec.get()));
  bssl::UniquePtr<EVP_PKEY> key(EVP_PKEY_new());
  EXPECT_TRUE(EVP_PKEY_assign_EC_KEY(key.get(), ec.release()));
  return key;
}

struct Cert {
  bssl::UniquePtr<X509> x509;
  bssl::UniquePtr<EVP_PKEY> key;
};

void AddExt(X509 *x, X509 *issuer, int nid, const char *value) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer, x, nullptr, nullptr, 0);
  bssl::UniquePtr<X509_EXTENSION> ext(X509V3_EXT_nconf_nid(nullptr, &ctx, nid, value));
  ASSERT_TRUE(ext != nullptr) << value;
  ASSERT_TRUE(X509_add_ext(x, ext.get(), -1));
}

// A certificate named |cn| signed by |issuer| (nullptr: self-signed), valid
// from |from| to |to| seconds relative to now.
Cert Make(const std::string &cn, const Cert *issuer, bool ca, long from = -60, long to = 3600,
          const char *name_constraints = nullptr, EVP_PKEY *sign_with = nullptr) {
  Cert c{bssl::UniquePtr<X509>(X509_new()), NewKey()};
  X509 *x = c.x509.get();
  EXPECT_TRUE(X509_set_version(x, X509_VERSION_3));
  static long serial = 1;
  EXPECT_TRUE(ASN1_INTEGER_set(X509_get_serialNumber(x), serial++));
  EXPECT_TRUE(X509_gmtime_adj(X509_getm_notBefore(x), from));
  EXPECT_TRUE(X509_gmtime_adj(X509_getm_notAfter(x), to));
  X509_NAME *name = X509_get_subject_name(x);
  EXPECT_TRUE(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                         reinterpret_cast<const uint8_t *>(cn.c_str()), -1, -1, 0));
  EXPECT_TRUE(X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer->x509.get()) : name));
  EXPECT_TRUE(X509_set_pubkey(x, c.key.get()));
  X509 *iss = issuer ? issuer->x509.get() : x;
  AddExt(x, iss, NID_subject_key_identifier, "hash");
  AddExt(x, iss, NID_authority_key_identifier, "keyid:always");
  if (ca) {
    AddExt(x, iss, NID_basic_constraints, "critical,CA:TRUE");
    AddExt(x, iss, NID_key_usage, "critical,keyCertSign,cRLSign");
    if (name_constraints) AddExt(x, iss, NID_name_constraints, name_constraints);
  } else {
    AddExt(x, iss, NID_basic_constraints, "critical,CA:FALSE");
    AddExt(x, iss, NID_key_usage, "critical,digitalSignature");
    AddExt(x, iss, NID_ext_key_usage, "clientAuth,serverAuth");
    AddExt(x, iss, NID_subject_alt_name, "URI:spiffe://example.org/leaf");
  }
  EVP_PKEY *signer = sign_with ? sign_with : (issuer ? issuer->key.get() : c.key.get());
  EXPECT_TRUE(X509_sign(x, signer, EVP_sha256()));
  return c;
}

class ChainCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    cache_ = mt_chain_cache_new(4, 600);
    root_ = Make("root", nullptr, true);
    inter_ = Make("intermediate", &root_, true);
    store_.reset(X509_STORE_new());
    X509_STORE_add_cert(store_.get(), root_.x509.get());
    uint8_t fp[32] = {1};
    mt_chain_cache_trust_key(fp, "example.org", 11, X509_PURPOSE_SSL_CLIENT, key_);
    now_ = time(nullptr);
  }
  void TearDown() override { mt_chain_cache_free(cache_); }

  bssl::UniquePtr<STACK_OF(X509)> Untrusted(X509 *inter) {
    bssl::UniquePtr<STACK_OF(X509)> sk(sk_X509_new_null());
    X509_up_ref(inter);
    sk_X509_push(sk.get(), inter);
    return sk;
  }

  // A full verification, remembered as the agent does after one.
  bool VerifyInFull(X509 *leaf, X509 *inter) {
    auto untrusted = Untrusted(inter);
    bssl::UniquePtr<X509_STORE_CTX> ctx(X509_STORE_CTX_new());
    EXPECT_TRUE(X509_STORE_CTX_init(ctx.get(), store_.get(), leaf, untrusted.get()));
    X509_STORE_CTX_set_default(ctx.get(), "ssl_client");
    bool ok = X509_verify_cert(ctx.get()) == 1;
    if (ok) mt_chain_cache_remember(cache_, key_, X509_STORE_CTX_get0_chain(ctx.get()), now_);
    return ok;
  }

  int Fast(X509 *leaf, X509 *inter, const uint8_t *key = nullptr, time_t at = 0) {
    auto untrusted = Untrusted(inter);
    int64_t not_after = 0;
    return mt_chain_cache_verify(cache_, key ? key : key_, leaf, untrusted.get(),
                                 X509_PURPOSE_SSL_CLIENT, at ? at : now_, &not_after);
  }

  mt_chain_cache *cache_;
  Cert root_, inter_;
  bssl::UniquePtr<X509_STORE> store_;
  uint8_t key_[32];
  time_t now_;
};

TEST_F(ChainCacheTest, UnknownIntermediateIsAMissThenRememberedOnce) {
  Cert leaf = Make("leaf1", &inter_, false);
  EXPECT_EQ(0, Fast(leaf.x509.get(), inter_.x509.get()));
  ASSERT_TRUE(VerifyInFull(leaf.x509.get(), inter_.x509.get()));
  EXPECT_EQ(1u, mt_chain_cache_count(cache_));
  // Another leaf of the same intermediate: only its own checks.
  Cert leaf2 = Make("leaf2", &inter_, false);
  EXPECT_EQ(1, Fast(leaf2.x509.get(), inter_.x509.get()));
  int64_t not_after = 0;
  auto untrusted = Untrusted(inter_.x509.get());
  ASSERT_EQ(1, mt_chain_cache_verify(cache_, key_, leaf2.x509.get(), untrusted.get(),
                                     X509_PURPOSE_SSL_CLIENT, now_, &not_after));
  EXPECT_GT(not_after, static_cast<int64_t>(now_));
  EXPECT_LE(not_after, static_cast<int64_t>(now_) + 3600);
  // The same intermediate again is not stored twice.
  ASSERT_TRUE(VerifyInFull(leaf2.x509.get(), inter_.x509.get()));
  EXPECT_EQ(1u, mt_chain_cache_count(cache_));
}

TEST_F(ChainCacheTest, AnotherTrustKeyIsAMiss) {
  Cert leaf = Make("leaf", &inter_, false);
  ASSERT_TRUE(VerifyInFull(leaf.x509.get(), inter_.x509.get()));
  uint8_t other_bundle[32] = {2}, other[32];
  mt_chain_cache_trust_key(other_bundle, "example.org", 11, X509_PURPOSE_SSL_CLIENT, other);
  EXPECT_EQ(0, Fast(leaf.x509.get(), inter_.x509.get(), other));
  uint8_t fp[32] = {1}, other_domain[32], other_role[32];
  mt_chain_cache_trust_key(fp, "example.com", 11, X509_PURPOSE_SSL_CLIENT, other_domain);
  EXPECT_EQ(0, Fast(leaf.x509.get(), inter_.x509.get(), other_domain));
  mt_chain_cache_trust_key(fp, "example.org", 11, X509_PURPOSE_SSL_SERVER, other_role);
  EXPECT_EQ(0, Fast(leaf.x509.get(), inter_.x509.get(), other_role));
}

TEST_F(ChainCacheTest, ForgedLeafWithTheIssuersNameIsAMiss) {
  Cert leaf = Make("leaf", &inter_, false);
  ASSERT_TRUE(VerifyInFull(leaf.x509.get(), inter_.x509.get()));
  bssl::UniquePtr<EVP_PKEY> mallory = NewKey();
  Cert forged = Make("forged", &inter_, false, -60, 3600, nullptr, mallory.get());
  EXPECT_EQ(0, Fast(forged.x509.get(), inter_.x509.get()));
}

TEST_F(ChainCacheTest, ExpiredOrNotYetValidLeafIsAMiss) {
  Cert leaf = Make("leaf", &inter_, false);
  ASSERT_TRUE(VerifyInFull(leaf.x509.get(), inter_.x509.get()));
  Cert expired = Make("expired", &inter_, false, -7200, -60);
  EXPECT_EQ(0, Fast(expired.x509.get(), inter_.x509.get()));
  Cert future = Make("future", &inter_, false, 600, 3600);
  EXPECT_EQ(0, Fast(future.x509.get(), inter_.x509.get()));
}

TEST_F(ChainCacheTest, EntryNeverOutlivesItsMaxAgeOrTheIntermediate) {
  Cert leaf = Make("leaf", &inter_, false, -60, 100000);
  ASSERT_TRUE(VerifyInFull(leaf.x509.get(), inter_.x509.get()));
  EXPECT_EQ(1, Fast(leaf.x509.get(), inter_.x509.get(), nullptr, now_ + 599));
  EXPECT_EQ(0, Fast(leaf.x509.get(), inter_.x509.get(), nullptr, now_ + 600));  // max age
  EXPECT_EQ(0u, mt_chain_cache_count(cache_));                                  // and it is gone

  // An intermediate that expires before the max age bounds its entry.
  Cert short_inter = Make("short", &root_, true, -60, 300);
  Cert leaf2 = Make("leaf2", &short_inter, false, -60, 250);
  ASSERT_TRUE(VerifyInFull(leaf2.x509.get(), short_inter.x509.get()));
  EXPECT_EQ(1, Fast(leaf2.x509.get(), short_inter.x509.get(), nullptr, now_ + 200));
  EXPECT_EQ(0, Fast(leaf2.x509.get(), short_inter.x509.get(), nullptr, now_ + 301));
}

TEST_F(ChainCacheTest, NameConstrainedIntermediateIsNeverRemembered) {
  Cert nc = Make("constrained", &root_, true, -60, 3600, "permitted;URI:example.org");
  Cert leaf = Make("leaf", &nc, false);
  ASSERT_TRUE(VerifyInFull(leaf.x509.get(), nc.x509.get()));
  EXPECT_EQ(0u, mt_chain_cache_count(cache_));
  EXPECT_EQ(0, Fast(leaf.x509.get(), nc.x509.get()));
}

TEST_F(ChainCacheTest, OnlyASingleIntermediateTakesTheFastPath) {
  Cert leaf = Make("leaf", &inter_, false);
  ASSERT_TRUE(VerifyInFull(leaf.x509.get(), inter_.x509.get()));
  auto two = Untrusted(inter_.x509.get());
  X509_up_ref(root_.x509.get());
  sk_X509_push(two.get(), root_.x509.get());
  int64_t na = 0;
  EXPECT_EQ(0, mt_chain_cache_verify(cache_, key_, leaf.x509.get(), two.get(),
                                     X509_PURPOSE_SSL_CLIENT, now_, &na));
  // The leaf itself in the list (as BoringSSL passes a peer's chain) is fine.
  auto with_leaf = Untrusted(leaf.x509.get());
  X509_up_ref(inter_.x509.get());
  sk_X509_push(with_leaf.get(), inter_.x509.get());
  EXPECT_EQ(1, mt_chain_cache_verify(cache_, key_, leaf.x509.get(), with_leaf.get(),
                                     X509_PURPOSE_SSL_CLIENT, now_, &na));
  EXPECT_EQ(0, mt_chain_cache_verify(cache_, key_, leaf.x509.get(), nullptr,
                                     X509_PURPOSE_SSL_CLIENT, now_, &na));
}

TEST_F(ChainCacheTest, CapacityIsBounded) {
  for (int i = 0; i < 10; i++) {
    Cert inter = Make("inter" + std::to_string(i), &root_, true);
    Cert leaf = Make("leaf", &inter, false);
    ASSERT_TRUE(VerifyInFull(leaf.x509.get(), inter.x509.get()));
  }
  EXPECT_EQ(4u, mt_chain_cache_count(cache_));
}

TEST_F(ChainCacheTest, ACaAsLeafIsAMiss) {
  Cert leaf = Make("leaf", &inter_, false);
  ASSERT_TRUE(VerifyInFull(leaf.x509.get(), inter_.x509.get()));
  Cert sub_ca = Make("sub-ca", &inter_, true);
  // Purpose ssl_client on a CA certificate without clientAuth EKU fails.
  EXPECT_EQ(0, Fast(sub_ca.x509.get(), inter_.x509.get()));
}

}  // namespace
