// Specification of agent/csr: the workload key and the CSR sent to the CA.
#include "agent/csr.h"

#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "tests/unit/test_keys.h"

namespace {

using mt_test::NewEcKey;
using mt_test::NewRsaKey;

const char kId[] = "spiffe://example.org/ns/default/sa/frontend";

struct FreeDeleter {
  void operator()(char *p) const { free(p); }
};
using CString = std::unique_ptr<char, FreeDeleter>;

struct CsrResult {
  CString pem;
  std::string err;
};

CsrResult Create(EVP_PKEY *key, const char *id) {
  char err[256] = "";
  CsrResult r;
  r.pem.reset(mt_csr_create_pem(key, id, err, sizeof(err)));
  r.err = err;
  return r;
}

bssl::UniquePtr<X509_REQ> ParseCsr(const char *pem) {
  bssl::UniquePtr<BIO> bio(BIO_new_mem_buf(pem, -1));
  return bssl::UniquePtr<X509_REQ>(PEM_read_bio_X509_REQ(bio.get(), nullptr, nullptr, nullptr));
}

// The URI names of the subjectAltName the CSR requests, in order.
std::vector<std::string> RequestedUris(X509_REQ *req, int *num_names) {
  std::vector<std::string> uris;
  bssl::UniquePtr<STACK_OF(X509_EXTENSION)> exts(X509_REQ_get_extensions(req));
  *num_names = 0;
  if (exts == nullptr) return uris;
  int crit = -1;
  bssl::UniquePtr<GENERAL_NAMES> names(static_cast<GENERAL_NAMES *>(
      X509V3_get_d2i(exts.get(), NID_subject_alt_name, &crit, nullptr)));
  if (names == nullptr) return uris;
  *num_names = static_cast<int>(sk_GENERAL_NAME_num(names.get()));
  for (size_t i = 0; i < sk_GENERAL_NAME_num(names.get()); i++) {
    const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names.get(), i);
    if (gn->type == GEN_URI) {
      const ASN1_IA5STRING *s = gn->d.uniformResourceIdentifier;
      uris.emplace_back(reinterpret_cast<const char *>(ASN1_STRING_get0_data(s)),
                        ASN1_STRING_length(s));
    }
  }
  return uris;
}

TEST(CsrGenerateKey, MakesAFreshP256Key) {
  bssl::UniquePtr<EVP_PKEY> a(mt_csr_generate_key());
  bssl::UniquePtr<EVP_PKEY> b(mt_csr_generate_key());
  ASSERT_TRUE(a != nullptr && b != nullptr);
  ASSERT_EQ(EVP_PKEY_EC, EVP_PKEY_id(a.get()));
  const EC_KEY *ec = EVP_PKEY_get0_EC_KEY(a.get());
  EXPECT_EQ(NID_X9_62_prime256v1, EC_GROUP_get_curve_name(EC_KEY_get0_group(ec)));
  EXPECT_TRUE(EC_KEY_get0_private_key(ec) != nullptr);
  EXPECT_NE(1, EVP_PKEY_cmp(a.get(), b.get()));
}

TEST(CsrCreate, IsAPemCertificateRequest) {
  bssl::UniquePtr<EVP_PKEY> key(mt_csr_generate_key());
  CsrResult r = Create(key.get(), kId);
  ASSERT_TRUE(r.pem != nullptr) << r.err;
  EXPECT_EQ(0, strncmp(r.pem.get(), "-----BEGIN CERTIFICATE REQUEST-----\n", 36));
  EXPECT_TRUE(ParseCsr(r.pem.get()) != nullptr);
}

TEST(CsrCreate, IsSignedWithSha256ByTheKey) {
  bssl::UniquePtr<EVP_PKEY> key(mt_csr_generate_key());
  CsrResult r = Create(key.get(), kId);
  bssl::UniquePtr<X509_REQ> req = ParseCsr(r.pem.get());
  ASSERT_TRUE(req != nullptr);
  EXPECT_EQ(NID_ecdsa_with_SHA256, X509_REQ_get_signature_nid(req.get()));
  EXPECT_EQ(1, X509_REQ_verify(req.get(), key.get()));
  bssl::UniquePtr<EVP_PKEY> pub(X509_REQ_get_pubkey(req.get()));
  EXPECT_EQ(1, EVP_PKEY_cmp(pub.get(), key.get()));
}

TEST(CsrCreate, RequestsExactlyOneNameTheUriSan) {
  bssl::UniquePtr<EVP_PKEY> key(mt_csr_generate_key());
  CsrResult r = Create(key.get(), kId);
  bssl::UniquePtr<X509_REQ> req = ParseCsr(r.pem.get());
  ASSERT_TRUE(req != nullptr);
  int num_names = 0;
  std::vector<std::string> uris = RequestedUris(req.get(), &num_names);
  EXPECT_EQ(1, num_names);
  ASSERT_EQ(1u, uris.size());
  EXPECT_EQ(kId, uris[0]);
}

TEST(CsrCreate, SubjectIsOrganizationMtlsd) {
  bssl::UniquePtr<EVP_PKEY> key(mt_csr_generate_key());
  CsrResult r = Create(key.get(), kId);
  bssl::UniquePtr<X509_REQ> req = ParseCsr(r.pem.get());
  ASSERT_TRUE(req != nullptr);
  char buf[64];
  X509_NAME *subject = X509_REQ_get_subject_name(req.get());
  ASSERT_GT(X509_NAME_get_text_by_NID(subject, NID_organizationName, buf, sizeof(buf)), 0);
  EXPECT_STREQ("mtlsd", buf);
  EXPECT_EQ(1, X509_NAME_entry_count(subject));
}

TEST(CsrCreate, AcceptsRsa2048Key) {
  bssl::UniquePtr<EVP_PKEY> key = NewRsaKey(2048);
  CsrResult r = Create(key.get(), kId);
  ASSERT_TRUE(r.pem != nullptr) << r.err;
  bssl::UniquePtr<X509_REQ> req = ParseCsr(r.pem.get());
  ASSERT_TRUE(req != nullptr);
  EXPECT_EQ(NID_sha256WithRSAEncryption, X509_REQ_get_signature_nid(req.get()));
}

TEST(CsrCreate, RejectsWeakOrOtherKeys) {
  bssl::UniquePtr<EVP_PKEY> rsa = NewRsaKey(1024);
  CsrResult r = Create(rsa.get(), kId);
  EXPECT_TRUE(r.pem == nullptr);
  EXPECT_NE(std::string::npos, r.err.find("1024")) << r.err;

  bssl::UniquePtr<EC_KEY> ec(EC_KEY_new_by_curve_name(NID_secp384r1));
  ASSERT_TRUE(EC_KEY_generate_key(ec.get()));
  bssl::UniquePtr<EVP_PKEY> p384(EVP_PKEY_new());
  ASSERT_TRUE(EVP_PKEY_assign_EC_KEY(p384.get(), ec.release()));
  r = Create(p384.get(), kId);
  EXPECT_TRUE(r.pem == nullptr);
  EXPECT_NE(std::string::npos, r.err.find("P-256")) << r.err;
}

TEST(CsrCreate, RejectsInvalidSpiffeIds) {
  bssl::UniquePtr<EVP_PKEY> key(mt_csr_generate_key());
  for (const char *id : {"", "https://example.org/x", "spiffe://Example.org/x",
                         "spiffe://example.org/ns/../x", "spiffe://example.org/a/", "spiffe://"}) {
    CsrResult r = Create(key.get(), id);
    EXPECT_TRUE(r.pem == nullptr) << id;
    EXPECT_NE(std::string::npos, r.err.find("SPIFFE ID")) << r.err;
  }
}

TEST(CsrCreate, RejectsTrustDomainIdWithoutPath) {
  bssl::UniquePtr<EVP_PKEY> key(mt_csr_generate_key());
  CsrResult r = Create(key.get(), "spiffe://example.org");
  EXPECT_TRUE(r.pem == nullptr);
  EXPECT_NE(std::string::npos, r.err.find("no path")) << r.err;
}

TEST(CsrCreate, RejectsMissingArguments) {
  bssl::UniquePtr<EVP_PKEY> key(mt_csr_generate_key());
  EXPECT_TRUE(Create(nullptr, kId).pem == nullptr);
  EXPECT_TRUE(Create(key.get(), nullptr).pem == nullptr);
  EXPECT_TRUE(mt_csr_create_pem(key.get(), "bad", nullptr, 0) == nullptr);
}

}  // namespace
