// Specification of controlplane/signer: what mtls-ca issues for a CSR. The
// PKI (root -> issuing CA) and every key are made in the test; CSRs come from
// agent/csr, as the agent will send them, or are built by hand when a test
// needs a broken one.
#include "controlplane/signer.h"

#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/bytestring.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "agent/csr.h"
#include "agent/svid.h"

#include "tests/unit/test_keys.h"

namespace {

using mt_test::NewEcKey;
using mt_test::NewRsaKey;

const time_t kNow = 1700000000;
const int64_t kDay = 86400;
const char kId[] = "spiffe://example.org/ns/default/sa/frontend";
const char kAdminId[] = "spiffe://example.org/ns/admin/sa/root";

using Key = bssl::UniquePtr<EVP_PKEY>;
using Cert = bssl::UniquePtr<X509>;

Key Ref(EVP_PKEY *key) {
  EVP_PKEY_up_ref(key);
  return Key(key);
}

Cert Ref(X509 *cert) {
  X509_up_ref(cert);
  return Cert(cert);
}

// ---- A test PKI -------------------------------------------------------------

void AddExt(X509 *cert, X509 *issuer, int nid, const char *value) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  bssl::UniquePtr<X509_EXTENSION> ext(X509V3_EXT_nconf_nid(nullptr, &ctx, nid, value));
  ASSERT_TRUE(ext != nullptr) << value;
  ASSERT_TRUE(X509_add_ext(cert, ext.get(), -1));
}

struct CertSpec {
  const char *cn;
  const char *basic_constraints = "critical,CA:TRUE";
  const char *key_usage = "critical,keyCertSign,cRLSign";
  time_t not_before = kNow - kDay;
  time_t not_after = kNow + 365 * kDay;
};

// A certificate for |key|, signed by |issuer|/|issuer_key| (self-signed when
// |issuer| is null).
Cert MakeCert(const CertSpec &spec, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key) {
  Cert cert(X509_new());
  X509 *x = cert.get();
  EXPECT_TRUE(X509_set_version(x, X509_VERSION_3));
  EXPECT_TRUE(ASN1_INTEGER_set(X509_get_serialNumber(x), 7));
  EXPECT_TRUE(ASN1_TIME_set(X509_getm_notBefore(x), spec.not_before));
  EXPECT_TRUE(ASN1_TIME_set(X509_getm_notAfter(x), spec.not_after));
  X509_NAME *name = X509_get_subject_name(x);
  EXPECT_TRUE(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                         reinterpret_cast<const uint8_t *>(spec.cn), -1, -1, 0));
  EXPECT_TRUE(X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name));
  EXPECT_TRUE(X509_set_pubkey(x, key));
  AddExt(x, issuer ? issuer : x, NID_basic_constraints, spec.basic_constraints);
  AddExt(x, issuer ? issuer : x, NID_key_usage, spec.key_usage);
  AddExt(x, issuer ? issuer : x, NID_subject_key_identifier, "hash");
  EXPECT_TRUE(X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()));
  return cert;
}

// root -> issuer, both EC P-256; the issuer signs the leaves.
struct Pki {
  Key root_key = NewEcKey();
  Cert root = MakeCert(CertSpec{"test root"}, root_key.get(), nullptr, nullptr);
  Key issuer_key = NewEcKey();
  Cert issuer = MakeCert(CertSpec{"test issuing CA"}, issuer_key.get(), root.get(), root_key.get());
};

const Pki &ThePki() {
  static Pki pki;
  return pki;
}

struct SignerDeleter {
  void operator()(mt_signer *s) const { mt_signer_free(s); }
};
using SignerPtr = std::unique_ptr<mt_signer, SignerDeleter>;

// mt_signer_new takes ownership, so the test hands it references of its own.
SignerPtr NewSigner(X509 *issuer, EVP_PKEY *key, std::vector<X509 *> chain = {},
                    std::string *err = nullptr) {
  STACK_OF(X509) *stack = sk_X509_new_null();
  for (X509 *c : chain) sk_X509_push(stack, Ref(c).release());
  char buf[256] = "";
  SignerPtr s(mt_signer_new(Ref(issuer).release(), Ref(key).release(), stack, buf, sizeof(buf)));
  if (err != nullptr) *err = buf;
  return s;
}

SignerPtr DefaultSigner() { return NewSigner(ThePki().issuer.get(), ThePki().issuer_key.get()); }

// ---- CSRs -------------------------------------------------------------------

struct FreeDeleter {
  void operator()(char *p) const { free(p); }
};
using CString = std::unique_ptr<char, FreeDeleter>;

std::string AgentCsr(EVP_PKEY *key, const char *id = kId) {
  char err[256] = "";
  CString pem(mt_csr_create_pem(key, id, err, sizeof(err)));
  EXPECT_TRUE(pem != nullptr) << err;
  return pem ? std::string(pem.get()) : std::string();
}

std::string Pem(const char *label, const std::string &der) {
  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  EXPECT_TRUE(PEM_write_bio(bio.get(), label, "", reinterpret_cast<const uint8_t *>(der.data()),
                            static_cast<long>(der.size())));
  const uint8_t *data;
  size_t len;
  EXPECT_TRUE(BIO_mem_contents(bio.get(), &data, &len));
  return std::string(reinterpret_cast<const char *>(data), len);
}

// A CSR carrying |public_key| but signed by |signing_key| (the same key for a
// well-formed CSR), without extensions: the things agent/csr refuses to make.
std::string HandmadeCsrDer(EVP_PKEY *public_key, EVP_PKEY *signing_key,
                           const EVP_MD *md = EVP_sha256()) {
  bssl::UniquePtr<X509_REQ> req(X509_REQ_new());
  EXPECT_TRUE(X509_REQ_set_pubkey(req.get(), public_key));
  EXPECT_TRUE(X509_REQ_sign(req.get(), signing_key, md));
  uint8_t *der = nullptr;
  int len = i2d_X509_REQ(req.get(), &der);
  EXPECT_GT(len, 0);
  std::string out(reinterpret_cast<char *>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

std::string HandmadeCsr(EVP_PKEY *public_key, EVP_PKEY *signing_key,
                        const EVP_MD *md = EVP_sha256()) {
  return Pem("CERTIFICATE REQUEST", HandmadeCsrDer(public_key, signing_key, md));
}

// ---- Signing and checking -----------------------------------------------------

struct Issued {
  int ok = 0;
  std::string err;
  std::string pem;
  std::vector<Cert> chain;
  X509 *leaf() const { return chain.empty() ? nullptr : chain[0].get(); }
};

std::vector<Cert> ParseChain(const std::string &pem) {
  std::vector<Cert> certs;
  bssl::UniquePtr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  while (X509 *c = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    certs.emplace_back(c);
  }
  ERR_clear_error();
  return certs;
}

Issued Sign(const mt_signer *s, const std::string &csr, const char *id = kId,
            int64_t requested_ttl_s = 0, int64_t max_ttl_s = 3600, time_t now = kNow) {
  Issued r;
  char *out = reinterpret_cast<char *>(1);  // must be reset on failure
  char err[256] = "";
  r.ok = mt_signer_sign_csr(s, csr.data(), csr.size(), id, requested_ttl_s, max_ttl_s, now, &out,
                            err, sizeof(err));
  r.err = err;
  if (r.ok) {
    r.pem = out;
    r.chain = ParseChain(r.pem);
    free(out);
  } else {
    EXPECT_EQ(nullptr, out);
    EXPECT_FALSE(r.err.empty());
  }
  return r;
}

// Path validation as a peer does it: |roots| trusted, the rest of |chain|
// untrusted, at time |at|, for a TLS role.
int VerifyAt(const Issued &issued, std::vector<X509 *> roots, time_t at, int purpose) {
  bssl::UniquePtr<X509_STORE> store(X509_STORE_new());
  for (X509 *root : roots) X509_STORE_add_cert(store.get(), root);
  bssl::UniquePtr<STACK_OF(X509)> untrusted(sk_X509_new_null());
  for (size_t i = 1; i < issued.chain.size(); i++) {
    sk_X509_push(untrusted.get(), Ref(issued.chain[i].get()).release());
  }
  bssl::UniquePtr<X509_STORE_CTX> ctx(X509_STORE_CTX_new());
  EXPECT_TRUE(X509_STORE_CTX_init(ctx.get(), store.get(), issued.leaf(), untrusted.get()));
  X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(ctx.get()), at);
  EXPECT_TRUE(X509_STORE_CTX_set_purpose(ctx.get(), purpose));
  X509_verify_cert(ctx.get());
  return X509_STORE_CTX_get_error(ctx.get());
}

int Verify(const Issued &issued) {
  return VerifyAt(issued, {ThePki().root.get()}, kNow + 1, X509_PURPOSE_SSL_CLIENT);
}

int64_t SecondsFrom(time_t from, const ASN1_TIME *to) {
  bssl::UniquePtr<ASN1_TIME> t(ASN1_TIME_set(nullptr, from));
  int days = 0, secs = 0;
  EXPECT_TRUE(ASN1_TIME_diff(&days, &secs, t.get(), to));
  return static_cast<int64_t>(days) * kDay + secs;
}

std::vector<std::string> UriSans(X509 *leaf, size_t *num_names) {
  std::vector<std::string> uris;
  bssl::UniquePtr<GENERAL_NAMES> names(
      static_cast<GENERAL_NAMES *>(X509_get_ext_d2i(leaf, NID_subject_alt_name, nullptr, nullptr)));
  *num_names = names ? sk_GENERAL_NAME_num(names.get()) : 0;
  for (size_t i = 0; i < *num_names; i++) {
    const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names.get(), i);
    if (gn->type == GEN_URI) {
      const ASN1_IA5STRING *s = gn->d.uniformResourceIdentifier;
      uris.emplace_back(reinterpret_cast<const char *>(ASN1_STRING_get0_data(s)),
                        ASN1_STRING_length(s));
    }
  }
  return uris;
}

bool ExtIsCritical(X509 *cert, int nid) {
  int pos = X509_get_ext_by_NID(cert, nid, -1);
  return pos >= 0 && X509_EXTENSION_get_critical(X509_get_ext(cert, pos));
}

// ---- The round trip -------------------------------------------------------------

TEST(SignerSignCsr, IssuesALeafThatVerifiesAgainstTheRoot) {
  SignerPtr s = DefaultSigner();
  ASSERT_TRUE(s != nullptr);
  Key key(mt_csr_generate_key());
  Issued r = Sign(s.get(), AgentCsr(key.get()));
  ASSERT_TRUE(r.ok) << r.err;
  ASSERT_EQ(2u, r.chain.size());  // leaf + issuing CA; never the root
  EXPECT_EQ(0, X509_cmp(r.chain[1].get(), ThePki().issuer.get()));
  EXPECT_EQ(X509_V_OK, Verify(r));
  EXPECT_EQ(X509_V_OK, VerifyAt(r, {ThePki().root.get()}, kNow + 1, X509_PURPOSE_SSL_SERVER));
}

TEST(SignerSignCsr, LeafCarriesTheCsrKey) {
  SignerPtr s = DefaultSigner();
  Key key(mt_csr_generate_key());
  Issued r = Sign(s.get(), AgentCsr(key.get()));
  ASSERT_TRUE(r.ok) << r.err;
  Key leaf_key(X509_get_pubkey(r.leaf()));
  EXPECT_EQ(1, EVP_PKEY_cmp(leaf_key.get(), key.get()));
  EXPECT_TRUE(X509_check_private_key(r.leaf(), key.get()));
}

TEST(SignerSignCsr, LeafNamesTheEntitledIdNotTheRequestedOne) {
  SignerPtr s = DefaultSigner();
  Key key(mt_csr_generate_key());
  Issued r = Sign(s.get(), AgentCsr(key.get(), kAdminId), kId);
  ASSERT_TRUE(r.ok) << r.err;
  size_t num_names = 0;
  std::vector<std::string> uris = UriSans(r.leaf(), &num_names);
  EXPECT_EQ(1u, num_names);
  ASSERT_EQ(1u, uris.size());
  EXPECT_EQ(kId, uris[0]);
  EXPECT_EQ(std::string::npos, r.pem.find("admin"));
}

TEST(SignerSignCsr, LeafPassesSvidCheckForBothRoles) {
  SignerPtr s = DefaultSigner();
  Key key(mt_csr_generate_key());
  Issued r = Sign(s.get(), AgentCsr(key.get()));
  ASSERT_TRUE(r.ok) << r.err;
  for (mt_svid_role role : {MT_SVID_ROLE_CLIENT, MT_SVID_ROLE_SERVER}) {
    std::vector<char> id(MT_SPIFFE_ID_MAX_LEN + 1);
    mt_spiffe_err id_err;
    EXPECT_EQ(MT_SVID_OK, mt_svid_check_leaf(r.leaf(), role, id.data(), id.size(), &id_err));
    EXPECT_STREQ(kId, id.data());
  }
}

TEST(SignerSignCsr, AcceptsCsrWithoutAnyRequestedName) {
  SignerPtr s = DefaultSigner();
  Key key = NewEcKey();
  Issued r = Sign(s.get(), HandmadeCsr(key.get(), key.get()));
  ASSERT_TRUE(r.ok) << r.err;
  EXPECT_EQ(X509_V_OK, Verify(r));
}

// ---- Validity ----------------------------------------------------------------

TEST(SignerSignCsr, CapsRequestedTtlAtMax) {
  SignerPtr s = DefaultSigner();
  Key key(mt_csr_generate_key());
  Issued r = Sign(s.get(), AgentCsr(key.get()), kId, /*requested=*/kDay, /*max=*/3600);
  ASSERT_TRUE(r.ok) << r.err;
  EXPECT_EQ(3600, SecondsFrom(kNow, X509_get0_notAfter(r.leaf())));
}

TEST(SignerSignCsr, UsesRequestedTtlBelowMax) {
  SignerPtr s = DefaultSigner();
  Key key(mt_csr_generate_key());
  Issued r = Sign(s.get(), AgentCsr(key.get()), kId, /*requested=*/600, /*max=*/3600);
  ASSERT_TRUE(r.ok) << r.err;
  EXPECT_EQ(600, SecondsFrom(kNow, X509_get0_notAfter(r.leaf())));
}

TEST(SignerSignCsr, UsesMaxWhenNoTtlRequested) {
  SignerPtr s = DefaultSigner();
  Key key(mt_csr_generate_key());
  for (int64_t requested : {0, -5}) {
    Issued r = Sign(s.get(), AgentCsr(key.get()), kId, requested, 7200);
    ASSERT_TRUE(r.ok) << r.err;
    EXPECT_EQ(7200, SecondsFrom(kNow, X509_get0_notAfter(r.leaf())));
  }
}

TEST(SignerSignCsr, BackdatesNotBeforeForClockSkew) {
  SignerPtr s = DefaultSigner();
  Key key(mt_csr_generate_key());
  Issued r = Sign(s.get(), AgentCsr(key.get()));
  ASSERT_TRUE(r.ok) << r.err;
  EXPECT_EQ(-MT_SIGNER_CLOCK_SKEW_S, SecondsFrom(kNow, X509_get0_notBefore(r.leaf())));
  EXPECT_EQ(X509_V_OK, VerifyAt(r, {ThePki().root.get()}, kNow - 30, X509_PURPOSE_SSL_CLIENT));
  EXPECT_EQ(X509_V_ERR_CERT_HAS_EXPIRED,
            VerifyAt(r, {ThePki().root.get()}, kNow + 3601, X509_PURPOSE_SSL_CLIENT));
}

TEST(SignerSignCsr, NeverOutlivesTheIssuer) {
  SignerPtr s = DefaultSigner();
  Key key(mt_csr_generate_key());
  time_t issuer_end = kNow + 365 * kDay;
  Issued r = Sign(s.get(), AgentCsr(key.get()), kId, 0, 3600, issuer_end - 100);
  ASSERT_TRUE(r.ok) << r.err;
  EXPECT_EQ(0, SecondsFrom(issuer_end, X509_get0_notAfter(r.leaf())));
}

TEST(SignerSignCsr, RefusesWhenTheIssuerHasExpired) {
  SignerPtr s = DefaultSigner();
  Key key(mt_csr_generate_key());
  Issued r = Sign(s.get(), AgentCsr(key.get()), kId, 0, 3600, kNow + 366 * kDay);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(std::string::npos, r.err.find("expired")) << r.err;
}

TEST(SignerSignCsr, RefusesNonPositiveMaxTtl) {
  SignerPtr s = DefaultSigner();
  Key key(mt_csr_generate_key());
  EXPECT_FALSE(Sign(s.get(), AgentCsr(key.get()), kId, 60, 0).ok);
  EXPECT_FALSE(Sign(s.get(), AgentCsr(key.get()), kId, 60, -1).ok);
}

// ---- Extensions and fields ------------------------------------------------------

TEST(SignerSignCsr, LeafIsNotACaAndSaysSoCritically) {
  SignerPtr s = DefaultSigner();
  Key key(mt_csr_generate_key());
  Issued r = Sign(s.get(), AgentCsr(key.get()));
  ASSERT_TRUE(r.ok) << r.err;
  uint32_t flags = X509_get_extension_flags(r.leaf());
  EXPECT_TRUE(flags & EXFLAG_BCONS);
  EXPECT_FALSE(flags & EXFLAG_CA);
  EXPECT_FALSE(flags & EXFLAG_INVALID);
  EXPECT_TRUE(ExtIsCritical(r.leaf(), NID_basic_constraints));
  EXPECT_EQ(0, X509_check_ca(r.leaf()));
}

TEST(SignerSignCsr, EcLeafKeyUsageIsDigitalSignatureOnly) {
  SignerPtr s = DefaultSigner();
  Key key(mt_csr_generate_key());
  Issued r = Sign(s.get(), AgentCsr(key.get()));
  ASSERT_TRUE(r.ok) << r.err;
  EXPECT_EQ(static_cast<uint32_t>(KU_DIGITAL_SIGNATURE), X509_get_key_usage(r.leaf()));
  EXPECT_TRUE(ExtIsCritical(r.leaf(), NID_key_usage));
}

TEST(SignerSignCsr, RsaLeafAlsoGetsKeyEncipherment) {
  SignerPtr s = DefaultSigner();
  Key key = NewRsaKey(2048);
  Issued r = Sign(s.get(), AgentCsr(key.get()));
  ASSERT_TRUE(r.ok) << r.err;
  EXPECT_EQ(static_cast<uint32_t>(KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT),
            X509_get_key_usage(r.leaf()));
  EXPECT_EQ(X509_V_OK, Verify(r));
}

TEST(SignerSignCsr, ExtendedKeyUsageIsServerAndClientAuth) {
  SignerPtr s = DefaultSigner();
  Key key(mt_csr_generate_key());
  Issued r = Sign(s.get(), AgentCsr(key.get()));
  ASSERT_TRUE(r.ok) << r.err;
  EXPECT_EQ(static_cast<uint32_t>(XKU_SSL_SERVER | XKU_SSL_CLIENT),
            X509_get_extended_key_usage(r.leaf()));
  EXPECT_FALSE(ExtIsCritical(r.leaf(), NID_ext_key_usage));
}

TEST(SignerSignCsr, SubjectIsEmptyAndTheSanCritical) {
  SignerPtr s = DefaultSigner();
  Key key(mt_csr_generate_key());
  Issued r = Sign(s.get(), AgentCsr(key.get()));
  ASSERT_TRUE(r.ok) << r.err;
  EXPECT_EQ(0, X509_NAME_entry_count(X509_get_subject_name(r.leaf())));
  EXPECT_TRUE(ExtIsCritical(r.leaf(), NID_subject_alt_name));
  EXPECT_EQ(0, X509_NAME_cmp(X509_get_issuer_name(r.leaf()),
                             X509_get_subject_name(ThePki().issuer.get())));
}

TEST(SignerSignCsr, HasKeyIdentifiers) {
  SignerPtr s = DefaultSigner();
  Key key(mt_csr_generate_key());
  Issued r = Sign(s.get(), AgentCsr(key.get()));
  ASSERT_TRUE(r.ok) << r.err;
  const ASN1_OCTET_STRING *aki = X509_get0_authority_key_id(r.leaf());
  const ASN1_OCTET_STRING *issuer_ski = X509_get0_subject_key_id(ThePki().issuer.get());
  ASSERT_TRUE(aki != nullptr && issuer_ski != nullptr);
  EXPECT_EQ(0, ASN1_OCTET_STRING_cmp(aki, issuer_ski));
  // Subject key id: SHA-1 of the subjectPublicKey bits (RFC 5280 4.2.1.2).
  const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(r.leaf());
  ASSERT_TRUE(ski != nullptr);
  const ASN1_BIT_STRING *spk = X509_get0_pubkey_bitstr(r.leaf());
  uint8_t digest[SHA_DIGEST_LENGTH];
  SHA1(ASN1_STRING_get0_data(spk), ASN1_STRING_length(spk), digest);
  ASSERT_EQ(static_cast<int>(sizeof(digest)), ASN1_STRING_length(ski));
  EXPECT_EQ(0, memcmp(digest, ASN1_STRING_get0_data(ski), sizeof(digest)));
}

TEST(SignerSignCsr, IsAVersion3CertificateSignedWithSha256) {
  SignerPtr s = DefaultSigner();
  Key key(mt_csr_generate_key());
  Issued r = Sign(s.get(), AgentCsr(key.get()));
  ASSERT_TRUE(r.ok) << r.err;
  EXPECT_EQ(X509_VERSION_3, X509_get_version(r.leaf()));
  EXPECT_EQ(NID_ecdsa_with_SHA256, X509_get_signature_nid(r.leaf()));
}

TEST(SignerSignCsr, SerialsAreRandomPositiveAndAtMost128Bits) {
  SignerPtr s = DefaultSigner();
  Key key(mt_csr_generate_key());
  std::string csr = AgentCsr(key.get());
  Issued a = Sign(s.get(), csr), b = Sign(s.get(), csr);
  ASSERT_TRUE(a.ok && b.ok);
  bssl::UniquePtr<BIGNUM> sa(ASN1_INTEGER_to_BN(X509_get0_serialNumber(a.leaf()), nullptr));
  bssl::UniquePtr<BIGNUM> sb(ASN1_INTEGER_to_BN(X509_get0_serialNumber(b.leaf()), nullptr));
  EXPECT_FALSE(BN_is_negative(sa.get()));
  EXPECT_FALSE(BN_is_zero(sa.get()));
  EXPECT_LE(BN_num_bits(sa.get()), 128u);
  EXPECT_GT(BN_num_bits(sa.get()), 64u);  // fails with probability 2^-64
  EXPECT_NE(0, BN_cmp(sa.get(), sb.get()));
}

// ---- Refused CSRs ----------------------------------------------------------------

TEST(SignerSignCsr, RefusesCsrWithBadSelfSignature) {
  SignerPtr s = DefaultSigner();
  Key victim = NewEcKey(), attacker = NewEcKey();
  Issued r = Sign(s.get(), HandmadeCsr(victim.get(), attacker.get()));
  EXPECT_FALSE(r.ok);
  EXPECT_NE(std::string::npos, r.err.find("does not verify")) << r.err;
}

TEST(SignerSignCsr, RefusesCsrWithFlippedSignatureBit) {
  SignerPtr s = DefaultSigner();
  Key key = NewEcKey();
  std::string der = HandmadeCsrDer(key.get(), key.get());
  der[der.size() - 3] ^= 0x01;  // inside the signature's last INTEGER
  Issued r = Sign(s.get(), Pem("CERTIFICATE REQUEST", der));
  EXPECT_FALSE(r.ok);
}

TEST(SignerSignCsr, RefusesGarbage) {
  SignerPtr s = DefaultSigner();
  for (const std::string &bad :
       {std::string("hello"), std::string(100, '\0'),
        Pem("CERTIFICATE REQUEST", "\x30\x03\x02\x01\x01"), Pem("CERTIFICATE REQUEST", "junk"),
        std::string("-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"),
        std::string(
            "-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n")}) {
    Issued r = Sign(s.get(), bad);
    EXPECT_FALSE(r.ok) << bad;
  }
}

TEST(SignerSignCsr, RefusesACertificateInsteadOfACsr) {
  SignerPtr s = DefaultSigner();
  uint8_t *der = nullptr;
  int len = i2d_X509(ThePki().issuer.get(), &der);
  std::string cert_der(reinterpret_cast<char *>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  EXPECT_FALSE(Sign(s.get(), Pem("CERTIFICATE", cert_der)).ok);
  EXPECT_FALSE(Sign(s.get(), Pem("CERTIFICATE REQUEST", cert_der)).ok);
}

TEST(SignerSignCsr, RefusesTrailingBytesAfterTheCsrDer) {
  SignerPtr s = DefaultSigner();
  Key key = NewEcKey();
  Issued r = Sign(s.get(), Pem("CERTIFICATE REQUEST", HandmadeCsrDer(key.get(), key.get()) + "xx"));
  EXPECT_FALSE(r.ok);
  EXPECT_NE(std::string::npos, r.err.find("one DER SEQUENCE")) << r.err;
}

TEST(SignerSignCsr, RefusesOversizedCsr) {
  SignerPtr s = DefaultSigner();
  Key key(mt_csr_generate_key());
  std::string csr = AgentCsr(key.get());
  std::string at_limit = csr + std::string(MT_SIGNER_MAX_CSR_LEN - csr.size(), '\n');
  EXPECT_TRUE(Sign(s.get(), at_limit).ok);
  Issued r = Sign(s.get(), at_limit + "\n");
  EXPECT_FALSE(r.ok);
  EXPECT_NE(std::string::npos, r.err.find("65537")) << r.err;
}

TEST(SignerSignCsr, RefusesEmptyCsr) {
  SignerPtr s = DefaultSigner();
  EXPECT_FALSE(Sign(s.get(), "").ok);
}

TEST(SignerSignCsr, RefusesWeakOrOtherCsrKeys) {
  SignerPtr s = DefaultSigner();
  Key rsa1024 = NewRsaKey(1024);
  Issued r = Sign(s.get(), HandmadeCsr(rsa1024.get(), rsa1024.get()));
  EXPECT_FALSE(r.ok);
  EXPECT_NE(std::string::npos, r.err.find("RSA key of 1024 bits")) << r.err;
  Key p521 = NewEcKey(NID_secp521r1);
  r = Sign(s.get(), HandmadeCsr(p521.get(), p521.get()));
  EXPECT_FALSE(r.ok);
  EXPECT_NE(std::string::npos, r.err.find("not P-256 or P-384")) << r.err;
}

TEST(SignerSignCsr, RefusesCsrSignedWithSha1) {
  SignerPtr s = DefaultSigner();
  Key key = NewEcKey();
  Issued r = Sign(s.get(), HandmadeCsr(key.get(), key.get(), EVP_sha1()));
  EXPECT_FALSE(r.ok);
  EXPECT_NE(std::string::npos, r.err.find("SHA-256 or stronger")) << r.err;
}

TEST(SignerSignCsr, SignsP384AndRsa2048Csrs) {
  SignerPtr s = DefaultSigner();
  Key p384 = NewEcKey(NID_secp384r1);
  Issued r = Sign(s.get(), HandmadeCsr(p384.get(), p384.get()));
  EXPECT_TRUE(r.ok) << r.err;
  Key rsa2048 = NewRsaKey(2048);
  r = Sign(s.get(), HandmadeCsr(rsa2048.get(), rsa2048.get()));
  EXPECT_TRUE(r.ok) << r.err;
}

TEST(SignerSignCsr, RefusesInvalidEntitledIds) {
  SignerPtr s = DefaultSigner();
  Key key(mt_csr_generate_key());
  std::string csr = AgentCsr(key.get());
  for (const char *id : {"spiffe://example.org", "spiffe://example.org/a//b", "not-an-id", ""}) {
    EXPECT_FALSE(Sign(s.get(), csr, id).ok) << id;
  }
  EXPECT_FALSE(Sign(s.get(), csr, nullptr).ok);
}

TEST(SignerSignCsr, RefusesMissingArguments) {
  SignerPtr s = DefaultSigner();
  char *out = nullptr;
  char err[128];
  EXPECT_EQ(0, mt_signer_sign_csr(nullptr, "x", 1, kId, 0, 60, kNow, &out, err, sizeof(err)));
  EXPECT_EQ(0, mt_signer_sign_csr(s.get(), nullptr, 1, kId, 0, 60, kNow, &out, err, sizeof(err)));
  EXPECT_EQ(0, mt_signer_sign_csr(s.get(), "x", 1, kId, 0, 60, kNow, nullptr, err, sizeof(err)));
  EXPECT_EQ(nullptr, out);
}

// ---- Chains ----------------------------------------------------------------------

TEST(SignerChain, LeavesTheRootOutOfTheResponse) {
  SignerPtr s = NewSigner(ThePki().issuer.get(), ThePki().issuer_key.get(), {ThePki().root.get()});
  ASSERT_TRUE(s != nullptr);
  Key key(mt_csr_generate_key());
  Issued r = Sign(s.get(), AgentCsr(key.get()));
  ASSERT_TRUE(r.ok) << r.err;
  EXPECT_EQ(2u, r.chain.size());
  EXPECT_EQ(X509_V_OK, Verify(r));
}

TEST(SignerChain, RootAsIssuerSendsTheLeafAlone) {
  SignerPtr s = NewSigner(ThePki().root.get(), ThePki().root_key.get());
  ASSERT_TRUE(s != nullptr);
  Key key(mt_csr_generate_key());
  Issued r = Sign(s.get(), AgentCsr(key.get()));
  ASSERT_TRUE(r.ok) << r.err;
  EXPECT_EQ(1u, r.chain.size());
  EXPECT_EQ(X509_V_OK, Verify(r));
}

TEST(SignerChain, SendsEveryIntermediate) {
  const Pki &pki = ThePki();
  Key ca_key = NewEcKey();
  Cert ca =
      MakeCert(CertSpec{"second-level CA"}, ca_key.get(), pki.issuer.get(), pki.issuer_key.get());
  SignerPtr s = NewSigner(ca.get(), ca_key.get(), {pki.issuer.get(), pki.root.get()});
  ASSERT_TRUE(s != nullptr);
  Key key(mt_csr_generate_key());
  Issued r = Sign(s.get(), AgentCsr(key.get()));
  ASSERT_TRUE(r.ok) << r.err;
  ASSERT_EQ(3u, r.chain.size());
  EXPECT_EQ(0, X509_cmp(r.chain[1].get(), ca.get()));
  EXPECT_EQ(0, X509_cmp(r.chain[2].get(), pki.issuer.get()));
  EXPECT_EQ(X509_V_OK, Verify(r));
}

TEST(SignerChain, RsaIssuerSignsWithSha256) {
  const Pki &pki = ThePki();
  Key ca_key = NewRsaKey(2048);
  Cert ca = MakeCert(CertSpec{"RSA CA"}, ca_key.get(), pki.root.get(), pki.root_key.get());
  SignerPtr s = NewSigner(ca.get(), ca_key.get());
  ASSERT_TRUE(s != nullptr);
  Key key(mt_csr_generate_key());
  Issued r = Sign(s.get(), AgentCsr(key.get()));
  ASSERT_TRUE(r.ok) << r.err;
  EXPECT_EQ(NID_sha256WithRSAEncryption, X509_get_signature_nid(r.leaf()));
  EXPECT_EQ(X509_V_OK, Verify(r));
}

// ---- Construction -------------------------------------------------------------------

TEST(SignerNew, RefusesAWeakIssuer) {
  Key weak = NewRsaKey(1024);
  Cert ca = MakeCert(CertSpec{"weak CA"}, weak.get(), ThePki().root.get(), ThePki().root_key.get());
  std::string err;
  EXPECT_TRUE(NewSigner(ca.get(), weak.get(), {ThePki().root.get()}, &err) == nullptr);
  EXPECT_NE(std::string::npos, err.find("RSA key of 1024 bits")) << err;
}

TEST(SignerNew, RefusesKeyThatDoesNotMatchTheCertificate) {
  Key other = NewEcKey();
  std::string err;
  EXPECT_TRUE(NewSigner(ThePki().issuer.get(), other.get(), {}, &err) == nullptr);
  EXPECT_NE(std::string::npos, err.find("does not match")) << err;
}

TEST(SignerNew, RefusesIssuerThatIsNotACa) {
  Key key = NewEcKey();
  CertSpec spec{"not a CA"};
  spec.basic_constraints = "critical,CA:FALSE";
  spec.key_usage = "critical,digitalSignature";
  Cert cert = MakeCert(spec, key.get(), ThePki().root.get(), ThePki().root_key.get());
  std::string err;
  EXPECT_TRUE(NewSigner(cert.get(), key.get(), {}, &err) == nullptr);
  EXPECT_NE(std::string::npos, err.find("not a CA")) << err;
}

TEST(SignerNew, RefusesCaWithoutKeyCertSign) {
  Key key = NewEcKey();
  CertSpec spec{"CA without keyCertSign"};
  spec.key_usage = "critical,digitalSignature,cRLSign";
  Cert cert = MakeCert(spec, key.get(), ThePki().root.get(), ThePki().root_key.get());
  std::string err;
  EXPECT_TRUE(NewSigner(cert.get(), key.get(), {}, &err) == nullptr);
  EXPECT_NE(std::string::npos, err.find("keyCertSign")) << err;
}

TEST(SignerNew, RefusesAChainThatDoesNotLinkUp) {
  Key other_key = NewEcKey();
  Cert other_root = MakeCert(CertSpec{"other root"}, other_key.get(), nullptr, nullptr);
  std::string err;
  EXPECT_TRUE(NewSigner(ThePki().issuer.get(), ThePki().issuer_key.get(), {other_root.get()},
                        &err) == nullptr);
  EXPECT_NE(std::string::npos, err.find("chain certificate 1")) << err;
}

TEST(SignerNew, RefusesMissingIssuerOrKeyAndFreesWhatItGot) {
  char err[128];
  EXPECT_TRUE(mt_signer_new(nullptr, Ref(ThePki().issuer_key.get()).release(), nullptr, err,
                            sizeof(err)) == nullptr);
  EXPECT_TRUE(mt_signer_new(Ref(ThePki().issuer.get()).release(), nullptr, sk_X509_new_null(), err,
                            sizeof(err)) == nullptr);
  mt_signer_free(nullptr);
}

TEST(SignerNew, AcceptsNullChain) {
  char err[128] = "";
  SignerPtr s(mt_signer_new(Ref(ThePki().issuer.get()).release(),
                            Ref(ThePki().issuer_key.get()).release(), nullptr, err, sizeof(err)));
  EXPECT_TRUE(s != nullptr) << err;
}

// ---- Files --------------------------------------------------------------------------

std::string TempPath(const std::string &name) {
  const char *dir = getenv("TEST_TMPDIR");
  return std::string(dir ? dir : "/tmp") + "/signer_test_" + name;
}

void WriteFile(const std::string &path, const std::string &data) {
  FILE *f = fopen(path.c_str(), "w");
  ASSERT_TRUE(f != nullptr) << path;
  ASSERT_EQ(data.size(), fwrite(data.data(), 1, data.size(), f));
  fclose(f);
}

std::string CertPem(X509 *cert) {
  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  EXPECT_TRUE(PEM_write_bio_X509(bio.get(), cert));
  const uint8_t *data;
  size_t len;
  BIO_mem_contents(bio.get(), &data, &len);
  return std::string(reinterpret_cast<const char *>(data), len);
}

std::string KeyPem(EVP_PKEY *key) {
  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  EXPECT_TRUE(PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr));
  const uint8_t *data;
  size_t len;
  BIO_mem_contents(bio.get(), &data, &len);
  return std::string(reinterpret_cast<const char *>(data), len);
}

SignerPtr LoadFiles(const std::string &chain, const std::string &key, std::string *err) {
  char buf[512] = "";
  SignerPtr s(mt_signer_load_pem_files(chain.c_str(), key.c_str(), buf, sizeof(buf)));
  *err = buf;
  return s;
}

TEST(SignerLoadPemFiles, LoadsIssuerChainAndKey) {
  std::string chain = TempPath("chain.pem"), key = TempPath("key.pem");
  WriteFile(chain, CertPem(ThePki().issuer.get()) + CertPem(ThePki().root.get()));
  WriteFile(key, KeyPem(ThePki().issuer_key.get()));
  std::string err;
  SignerPtr s = LoadFiles(chain, key, &err);
  ASSERT_TRUE(s != nullptr) << err;
  Key leaf_key(mt_csr_generate_key());
  Issued r = Sign(s.get(), AgentCsr(leaf_key.get()));
  ASSERT_TRUE(r.ok) << r.err;
  EXPECT_EQ(2u, r.chain.size());
  EXPECT_EQ(X509_V_OK, Verify(r));
}

TEST(SignerLoadPemFiles, NamesTheFileThatIsWrong) {
  std::string chain = TempPath("chain2.pem"), key = TempPath("key2.pem");
  WriteFile(chain, CertPem(ThePki().issuer.get()));
  Key other = NewEcKey();
  WriteFile(key, KeyPem(other.get()));
  std::string err;
  EXPECT_TRUE(LoadFiles(chain, key, &err) == nullptr);
  EXPECT_NE(std::string::npos, err.find(chain)) << err;
  EXPECT_NE(std::string::npos, err.find("does not match")) << err;

  EXPECT_TRUE(LoadFiles(TempPath("missing.pem"), key, &err) == nullptr);
  EXPECT_NE(std::string::npos, err.find("missing.pem")) << err;

  WriteFile(chain, "no certificate here\n");
  EXPECT_TRUE(LoadFiles(chain, key, &err) == nullptr);
  EXPECT_NE(std::string::npos, err.find(chain)) << err;

  WriteFile(chain, CertPem(ThePki().issuer.get()));
  WriteFile(key, "not a key\n");
  EXPECT_TRUE(LoadFiles(chain, key, &err) == nullptr);
  EXPECT_NE(std::string::npos, err.find(key)) << err;
}

}  // namespace
