// key_strength: which keys and signatures are accepted, and what the refusal says.
#include "agent/key_strength.h"

#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/curve25519.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <string>

#include "tests/unit/test_keys.h"

namespace {

using Key = bssl::UniquePtr<EVP_PKEY>;
using Cert = bssl::UniquePtr<X509>;

Key Ed25519Key() {
  uint8_t pub[32], priv[64];
  ED25519_keypair(pub, priv);
  return Key(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, priv, 32));
}

// A certificate for |key| signed by |signer| with |md| (self-signed when
// |signer| is |key|). Only what the strength rules look at is filled in.
Cert MakeCert(EVP_PKEY *key, EVP_PKEY *signer, const EVP_MD *md) {
  Cert cert(X509_new());
  EXPECT_TRUE(X509_set_version(cert.get(), X509_VERSION_3));
  EXPECT_TRUE(ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1));
  EXPECT_TRUE(ASN1_TIME_set(X509_getm_notBefore(cert.get()), 0));
  EXPECT_TRUE(ASN1_TIME_set(X509_getm_notAfter(cert.get()), 86400));
  EXPECT_TRUE(X509_set_pubkey(cert.get(), key));
  EXPECT_TRUE(X509_sign(cert.get(), signer, md));
  return cert;
}

mt_strength KeyVerdict(EVP_PKEY *key, std::string *why) {
  char buf[200] = "";
  mt_strength s = mt_key_strength(key, buf, sizeof(buf));
  *why = buf;
  return s;
}

TEST(KeyStrength, AcceptsRsa2048AndAbove) {
  std::string why;
  EXPECT_EQ(MT_STRENGTH_OK, KeyVerdict(mt_test::NewRsaKey(2048).get(), &why));
  EXPECT_EQ(MT_STRENGTH_OK, KeyVerdict(mt_test::NewRsaKey(3072).get(), &why));
}

TEST(KeyStrength, RefusesRsaUnder2048Bits) {
  std::string why;
  EXPECT_EQ(MT_STRENGTH_WEAK_KEY, KeyVerdict(mt_test::NewRsaKey(1024).get(), &why));
  EXPECT_EQ("RSA key of 1024 bits, fewer than 2048", why);
  EXPECT_EQ(MT_STRENGTH_WEAK_KEY, KeyVerdict(mt_test::NewRsaKey(2040).get(), &why));
}

TEST(KeyStrength, AcceptsP256P384AndEd25519Only) {
  std::string why;
  EXPECT_EQ(MT_STRENGTH_OK, KeyVerdict(mt_test::NewEcKey(NID_X9_62_prime256v1).get(), &why));
  EXPECT_EQ(MT_STRENGTH_OK, KeyVerdict(mt_test::NewEcKey(NID_secp384r1).get(), &why));
  EXPECT_EQ(MT_STRENGTH_OK, KeyVerdict(Ed25519Key().get(), &why));
  EXPECT_EQ(MT_STRENGTH_WEAK_KEY, KeyVerdict(mt_test::NewEcKey(NID_secp521r1).get(), &why));
  EXPECT_EQ("EC key on secp521r1, not P-256 or P-384", why);
  EXPECT_EQ(MT_STRENGTH_WEAK_KEY, KeyVerdict(mt_test::NewEcKey(NID_secp224r1).get(), &why));
  EXPECT_EQ("EC key on secp224r1, not P-256 or P-384", why);
}

TEST(KeyStrength, RefusesNoKey) {
  std::string why;
  EXPECT_EQ(MT_STRENGTH_WEAK_KEY, KeyVerdict(nullptr, &why));
  EXPECT_EQ("no public key", why);
}

TEST(SignatureStrength, AcceptsSha2PssAndEd25519) {
  char why[200];
  for (int nid : {NID_sha256WithRSAEncryption, NID_sha384WithRSAEncryption,
                  NID_sha512WithRSAEncryption, NID_ecdsa_with_SHA256, NID_ecdsa_with_SHA384,
                  NID_ecdsa_with_SHA512, NID_rsassaPss, NID_ED25519})
    EXPECT_EQ(MT_STRENGTH_OK, mt_signature_strength(nid, why, sizeof(why))) << OBJ_nid2sn(nid);
}

TEST(SignatureStrength, RefusesSha1Md5AndUnknown) {
  char why[200];
  EXPECT_EQ(MT_STRENGTH_WEAK_SIGNATURE,
            mt_signature_strength(NID_sha1WithRSAEncryption, why, sizeof(why)));
  EXPECT_STREQ("signed with sha1WithRSAEncryption: SHA-256 or stronger is required", why);
  EXPECT_EQ(MT_STRENGTH_WEAK_SIGNATURE, mt_signature_strength(NID_ecdsa_with_SHA1, why, sizeof(why)));
  EXPECT_EQ(MT_STRENGTH_WEAK_SIGNATURE,
            mt_signature_strength(NID_md5WithRSAEncryption, why, sizeof(why)));
  EXPECT_EQ(MT_STRENGTH_WEAK_SIGNATURE, mt_signature_strength(NID_undef, why, sizeof(why)));
  EXPECT_STREQ("signed with an unknown algorithm: SHA-256 or stronger is required", why);
  // SHA-224 is not on the list either.
  EXPECT_EQ(MT_STRENGTH_WEAK_SIGNATURE,
            mt_signature_strength(NID_sha224WithRSAEncryption, why, sizeof(why)));
}

TEST(CertStrength, JudgesKeyThenSignatureButNotAnAnchorsSelfSignature) {
  char why[200];
  Key p256 = mt_test::NewEcKey(NID_X9_62_prime256v1);
  Cert sha1_self = MakeCert(p256.get(), p256.get(), EVP_sha1());
  EXPECT_EQ(MT_STRENGTH_WEAK_SIGNATURE, mt_cert_strength(sha1_self.get(), 0, why, sizeof(why)));
  EXPECT_EQ(MT_STRENGTH_OK, mt_cert_strength(sha1_self.get(), 1, why, sizeof(why)));
  Key rsa1024 = mt_test::NewRsaKey(1024);
  Cert weak_anchor = MakeCert(rsa1024.get(), rsa1024.get(), EVP_sha256());
  EXPECT_EQ(MT_STRENGTH_WEAK_KEY, mt_cert_strength(weak_anchor.get(), 1, why, sizeof(why)));
}

struct Chain {
  bssl::UniquePtr<STACK_OF(X509)> stack{sk_X509_new_null()};
  void Add(const Cert &c) {
    X509_up_ref(c.get());
    sk_X509_push(stack.get(), c.get());
  }
};

TEST(ChainStrength, NamesTheCertificateThatIsWeak) {
  Key root_key = mt_test::NewEcKey(NID_secp384r1);
  Key int_key = mt_test::NewEcKey(NID_X9_62_prime256v1);
  Key leaf_key = mt_test::NewEcKey(NID_X9_62_prime256v1);
  Cert root = MakeCert(root_key.get(), root_key.get(), EVP_sha1());  // anchor: self-signature ignored
  Cert good_int = MakeCert(int_key.get(), root_key.get(), EVP_sha384());
  Cert sha1_int = MakeCert(int_key.get(), root_key.get(), EVP_sha1());
  Cert leaf = MakeCert(leaf_key.get(), int_key.get(), EVP_sha256());
  char why[200];

  Chain good;
  good.Add(leaf);
  good.Add(good_int);
  good.Add(root);
  EXPECT_EQ(MT_STRENGTH_OK, mt_chain_strength(good.stack.get(), why, sizeof(why)));

  Chain bad;
  bad.Add(leaf);
  bad.Add(sha1_int);
  bad.Add(root);
  EXPECT_EQ(MT_STRENGTH_WEAK_SIGNATURE, mt_chain_strength(bad.stack.get(), why, sizeof(why)));
  EXPECT_EQ(0, strncmp(why, "intermediate 1: signed with ecdsa-with-SHA1", 43)) << why;

  Key rsa1024 = mt_test::NewRsaKey(1024);
  Cert weak_leaf = MakeCert(rsa1024.get(), int_key.get(), EVP_sha256());
  Chain weak;
  weak.Add(weak_leaf);
  weak.Add(good_int);
  weak.Add(root);
  EXPECT_EQ(MT_STRENGTH_WEAK_KEY, mt_chain_strength(weak.stack.get(), why, sizeof(why)));
  EXPECT_STREQ("leaf: RSA key of 1024 bits, fewer than 2048", why);

  Cert weak_root = MakeCert(rsa1024.get(), rsa1024.get(), EVP_sha256());
  Chain weak_anchor;
  weak_anchor.Add(leaf);
  weak_anchor.Add(weak_root);
  EXPECT_EQ(MT_STRENGTH_WEAK_KEY, mt_chain_strength(weak_anchor.stack.get(), why, sizeof(why)));
  EXPECT_STREQ("root: RSA key of 1024 bits, fewer than 2048", why);

  // A lone self-signed certificate is a leaf, and its signature counts.
  Chain alone;
  alone.Add(MakeCert(leaf_key.get(), leaf_key.get(), EVP_sha1()));
  EXPECT_EQ(MT_STRENGTH_WEAK_SIGNATURE, mt_chain_strength(alone.stack.get(), why, sizeof(why)));
}

TEST(CsrStrength, KeyAndSignatureAlgorithm) {
  char why[200];
  Key p256 = mt_test::NewEcKey(NID_X9_62_prime256v1);
  for (auto [md, want] : {std::pair{EVP_sha256(), MT_STRENGTH_OK},
                          std::pair{EVP_sha1(), MT_STRENGTH_WEAK_SIGNATURE}}) {
    bssl::UniquePtr<X509_REQ> req(X509_REQ_new());
    ASSERT_TRUE(X509_REQ_set_pubkey(req.get(), p256.get()));
    ASSERT_TRUE(X509_REQ_sign(req.get(), p256.get(), md));
    EXPECT_EQ(want, mt_csr_strength(req.get(), why, sizeof(why)));
  }
}

}  // namespace
