// Specification of agent/svid: SPIFFE ID syntax (SPIFFE-ID.md) and the
// X509-SVID leaf rules (X509-SVID.md), checked on real certificates.
#include "agent/svid.h"

#include <gtest/gtest.h>
#include <openssl/bytestring.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <string>
#include <vector>

namespace {

mt_spiffe_err Parse(const std::string &id) {
  return mt_spiffe_id_parse(id.data(), id.size(), nullptr);
}

// "spiffe://example.org" followed by "/aaa..." so that the whole ID is
// exactly |total| bytes long.
std::string IdOfLength(size_t total) {
  std::string id = "spiffe://example.org/";
  id.append(total - id.size(), 'a');
  return id;
}

// ---- SPIFFE ID: valid forms --------------------------------------------

TEST(SpiffeIdParse, AcceptsTrustDomainWithoutPath) {
  EXPECT_EQ(MT_SPIFFE_OK, Parse("spiffe://example.org"));
}

TEST(SpiffeIdParse, AcceptsKubernetesStylePath) {
  EXPECT_EQ(MT_SPIFFE_OK, Parse("spiffe://example.org/ns/default/sa/x"));
}

TEST(SpiffeIdParse, AcceptsTrustDomainWithDotsDashesUnderscoresAndDigits) {
  EXPECT_EQ(MT_SPIFFE_OK, Parse("spiffe://my-cluster_01.prod.example2.org"));
}

TEST(SpiffeIdParse, AcceptsUppercaseAndPunctuationInPath) {
  EXPECT_EQ(MT_SPIFFE_OK, Parse("spiffe://example.org/Ns/Default_1/SA-x.y"));
}

TEST(SpiffeIdParse, AcceptsDotsInsideASegment) {
  EXPECT_EQ(MT_SPIFFE_OK, Parse("spiffe://example.org/a.b"));
  EXPECT_EQ(MT_SPIFFE_OK, Parse("spiffe://example.org/.hidden"));
  EXPECT_EQ(MT_SPIFFE_OK, Parse("spiffe://example.org/..."));
}

TEST(SpiffeIdParse, Accepts2048ByteId) {
  std::string id = IdOfLength(MT_SPIFFE_ID_MAX_LEN);
  ASSERT_EQ(2048u, id.size());
  EXPECT_EQ(MT_SPIFFE_OK, Parse(id));
}

TEST(SpiffeIdParse, Accepts255ByteTrustDomain) {
  EXPECT_EQ(MT_SPIFFE_OK, Parse("spiffe://" + std::string(255, 'a') + "/x"));
}

TEST(SpiffeIdParse, FillsViewWithTrustDomainAndPath) {
  const std::string id = "spiffe://example.org/ns/default/sa/x";
  mt_spiffe_id_view view;
  ASSERT_EQ(MT_SPIFFE_OK, mt_spiffe_id_parse(id.data(), id.size(), &view));
  EXPECT_EQ("example.org", std::string(view.trust_domain, view.trust_domain_len));
  EXPECT_EQ("/ns/default/sa/x", std::string(view.path, view.path_len));
}

TEST(SpiffeIdParse, ViewOfIdWithoutPathHasEmptyPath) {
  const std::string id = "spiffe://example.org";
  mt_spiffe_id_view view;
  ASSERT_EQ(MT_SPIFFE_OK, mt_spiffe_id_parse(id.data(), id.size(), &view));
  EXPECT_EQ("example.org", std::string(view.trust_domain, view.trust_domain_len));
  EXPECT_EQ(0u, view.path_len);
  EXPECT_STREQ("", view.path);
}

TEST(SpiffeIdParse, ReadsOnlyLenBytesOfUnterminatedInput) {
  const char buf[] = "spiffe://example.org/a/b/../c";
  // The first 24 bytes are "spiffe://example.org/a/b"; the rest is ignored.
  EXPECT_EQ(MT_SPIFFE_OK, mt_spiffe_id_parse(buf, 24, nullptr));
}

// ---- SPIFFE ID: scheme ---------------------------------------------------

TEST(SpiffeIdParse, RejectsUppercaseScheme) {
  EXPECT_EQ(MT_SPIFFE_BAD_SCHEME, Parse("SPIFFE://example.org/x"));
}

TEST(SpiffeIdParse, RejectsHttpScheme) {
  EXPECT_EQ(MT_SPIFFE_BAD_SCHEME, Parse("http://example.org/x"));
}

TEST(SpiffeIdParse, RejectsSchemeWithoutDoubleSlash) {
  EXPECT_EQ(MT_SPIFFE_BAD_SCHEME, Parse("spiffe:example.org/x"));
  EXPECT_EQ(MT_SPIFFE_BAD_SCHEME, Parse("spiffe:/example.org/x"));
}

TEST(SpiffeIdParse, RejectsSchemeCutShort) { EXPECT_EQ(MT_SPIFFE_BAD_SCHEME, Parse("spiffe:/")); }

// ---- SPIFFE ID: trust domain ----------------------------------------------

TEST(SpiffeIdParse, RejectsEmptyTrustDomain) {
  EXPECT_EQ(MT_SPIFFE_EMPTY_TRUST_DOMAIN, Parse("spiffe://"));
  EXPECT_EQ(MT_SPIFFE_EMPTY_TRUST_DOMAIN, Parse("spiffe:///ns/x"));
}

TEST(SpiffeIdParse, RejectsUppercaseTrustDomain) {
  EXPECT_EQ(MT_SPIFFE_BAD_TRUST_DOMAIN_CHAR, Parse("spiffe://Example.org/x"));
}

TEST(SpiffeIdParse, RejectsPortInTrustDomain) {
  EXPECT_EQ(MT_SPIFFE_BAD_TRUST_DOMAIN_CHAR, Parse("spiffe://example.org:8080/x"));
}

TEST(SpiffeIdParse, RejectsUserinfoInTrustDomain) {
  EXPECT_EQ(MT_SPIFFE_BAD_TRUST_DOMAIN_CHAR, Parse("spiffe://user@example.org/x"));
}

TEST(SpiffeIdParse, RejectsPercentEncodingInTrustDomain) {
  EXPECT_EQ(MT_SPIFFE_BAD_TRUST_DOMAIN_CHAR, Parse("spiffe://exa%6Dple.org/x"));
}

TEST(SpiffeIdParse, Rejects256ByteTrustDomain) {
  EXPECT_EQ(MT_SPIFFE_TRUST_DOMAIN_TOO_LONG, Parse("spiffe://" + std::string(256, 'a') + "/x"));
}

// ---- SPIFFE ID: path -------------------------------------------------------

TEST(SpiffeIdParse, RejectsPercentEncodingInPath) {
  EXPECT_EQ(MT_SPIFFE_BAD_PATH_CHAR, Parse("spiffe://example.org/ns/%64efault"));
}

TEST(SpiffeIdParse, RejectsEmptySegment) {
  EXPECT_EQ(MT_SPIFFE_EMPTY_SEGMENT, Parse("spiffe://example.org/ns//x"));
}

TEST(SpiffeIdParse, RejectsTrailingSlash) {
  EXPECT_EQ(MT_SPIFFE_EMPTY_SEGMENT, Parse("spiffe://example.org/ns/x/"));
}

TEST(SpiffeIdParse, RejectsSlashAsWholePath) {
  EXPECT_EQ(MT_SPIFFE_EMPTY_SEGMENT, Parse("spiffe://example.org/"));
}

TEST(SpiffeIdParse, RejectsDotSegment) {
  EXPECT_EQ(MT_SPIFFE_DOT_SEGMENT, Parse("spiffe://example.org/ns/./x"));
  EXPECT_EQ(MT_SPIFFE_DOT_SEGMENT, Parse("spiffe://example.org/."));
}

TEST(SpiffeIdParse, RejectsDotDotSegment) {
  EXPECT_EQ(MT_SPIFFE_DOT_SEGMENT, Parse("spiffe://example.org/ns/../x"));
  EXPECT_EQ(MT_SPIFFE_DOT_SEGMENT, Parse("spiffe://example.org/.."));
}

TEST(SpiffeIdParse, RejectsQuery) {
  EXPECT_EQ(MT_SPIFFE_BAD_PATH_CHAR, Parse("spiffe://example.org/x?a=b"));
}

TEST(SpiffeIdParse, RejectsFragment) {
  EXPECT_EQ(MT_SPIFFE_BAD_PATH_CHAR, Parse("spiffe://example.org/x#frag"));
}

TEST(SpiffeIdParse, RejectsOtherPunctuationInPath) {
  EXPECT_EQ(MT_SPIFFE_BAD_PATH_CHAR, Parse("spiffe://example.org/a:b"));
  EXPECT_EQ(MT_SPIFFE_BAD_PATH_CHAR, Parse("spiffe://example.org/a b"));
}

// ---- SPIFFE ID: length and bytes ------------------------------------------

TEST(SpiffeIdParse, Rejects2049ByteId) {
  EXPECT_EQ(MT_SPIFFE_TOO_LONG, Parse(IdOfLength(MT_SPIFFE_ID_MAX_LEN + 1)));
}

TEST(SpiffeIdParse, RejectsEmptyString) {
  EXPECT_EQ(MT_SPIFFE_EMPTY, Parse(""));
  EXPECT_EQ(MT_SPIFFE_EMPTY, mt_spiffe_id_parse(nullptr, 0, nullptr));
}

TEST(SpiffeIdParse, RejectsEmbeddedNulInPath) {
  EXPECT_EQ(MT_SPIFFE_BAD_PATH_CHAR, Parse(std::string("spiffe://example.org/a\0b", 24)));
}

TEST(SpiffeIdParse, RejectsEmbeddedNulInTrustDomain) {
  EXPECT_EQ(MT_SPIFFE_BAD_TRUST_DOMAIN_CHAR,
            Parse(std::string("spiffe://example.org\0.evil/x", 28)));
}

TEST(SpiffeIdParse, RejectsNonAsciiBytes) {
  EXPECT_EQ(MT_SPIFFE_BAD_PATH_CHAR, Parse("spiffe://example.org/caf\xc3\xa9"));
}

// ---- Trust domain ---------------------------------------------------------

TEST(TrustDomainValidate, AcceptsBareName) {
  EXPECT_EQ(MT_SPIFFE_OK, mt_trust_domain_validate("example.org", 11));
}

TEST(TrustDomainValidate, RejectsEmpty) {
  EXPECT_EQ(MT_SPIFFE_EMPTY_TRUST_DOMAIN, mt_trust_domain_validate("", 0));
}

TEST(TrustDomainValidate, RejectsFullSpiffeId) {
  EXPECT_EQ(MT_SPIFFE_BAD_TRUST_DOMAIN_CHAR, mt_trust_domain_validate("spiffe://example.org", 20));
}

TEST(TrustDomainValidate, Rejects256Bytes) {
  std::string td(256, 'a');
  EXPECT_EQ(MT_SPIFFE_TRUST_DOMAIN_TOO_LONG, mt_trust_domain_validate(td.data(), td.size()));
}

TEST(SpiffeErrStr, EveryErrorHasText) {
  for (int e = MT_SPIFFE_OK; e <= MT_SPIFFE_BAD_PATH_CHAR; e++) {
    EXPECT_STRNE("unknown SPIFFE ID error", mt_spiffe_err_str(static_cast<mt_spiffe_err>(e)));
  }
  for (int e = MT_SVID_OK; e <= MT_SVID_UNPARSABLE; e++) {
    EXPECT_STRNE("unknown X509-SVID error", mt_svid_err_str(static_cast<mt_svid_err>(e)));
  }
}

// ---- X509-SVID leaf checks -------------------------------------------------

// Builds a self-signed certificate with a fresh P-256 key and the given
// extensions, then round-trips it through DER so the checks see exactly what
// a peer would send.
class LeafBuilder {
 public:
  LeafBuilder() : x509_(X509_new()), names_(sk_GENERAL_NAME_new_null()) {}

  LeafBuilder &Uri(const std::string &uri) { return Name(GEN_URI, uri); }
  LeafBuilder &Dns(const std::string &dns) { return Name(GEN_DNS, dns); }

  // |value| uses OpenSSL's config syntax, e.g. "critical,CA:TRUE".
  LeafBuilder &Ext(int nid, const char *value) {
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, x509_.get(), x509_.get(), nullptr, nullptr, 0);
    bssl::UniquePtr<X509_EXTENSION> ext(X509V3_EXT_nconf_nid(nullptr, &ctx, nid, value));
    EXPECT_TRUE(ext != nullptr) << value;
    if (ext != nullptr) {
      EXPECT_TRUE(X509_add_ext(x509_.get(), ext.get(), -1));
    }
    return *this;
  }

  // Adds extension |nid| with |der| as its raw value, however malformed.
  LeafBuilder &RawExt(int nid, const std::string &der) {
    bssl::UniquePtr<ASN1_OCTET_STRING> value(ASN1_OCTET_STRING_new());
    EXPECT_TRUE(ASN1_OCTET_STRING_set(value.get(), reinterpret_cast<const uint8_t *>(der.data()),
                                      static_cast<int>(der.size())));
    bssl::UniquePtr<X509_EXTENSION> ext(
        X509_EXTENSION_create_by_NID(nullptr, nid, /*crit=*/0, value.get()));
    EXPECT_TRUE(ext != nullptr);
    EXPECT_TRUE(X509_add_ext(x509_.get(), ext.get(), -1));
    return *this;
  }

  bssl::UniquePtr<X509> Build() {
    bssl::UniquePtr<EVP_PKEY> key = NewP256Key();
    X509 *x = x509_.get();
    EXPECT_TRUE(X509_set_version(x, X509_VERSION_3));
    EXPECT_TRUE(ASN1_INTEGER_set(X509_get_serialNumber(x), 1));
    EXPECT_TRUE(X509_gmtime_adj(X509_getm_notBefore(x), 0));
    EXPECT_TRUE(X509_gmtime_adj(X509_getm_notAfter(x), 3600));
    X509_NAME *name = X509_get_subject_name(x);
    EXPECT_TRUE(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                           reinterpret_cast<const uint8_t *>("leaf"), -1, -1, 0));
    EXPECT_TRUE(X509_set_issuer_name(x, name));
    EXPECT_TRUE(X509_set_pubkey(x, key.get()));
    if (sk_GENERAL_NAME_num(names_.get()) > 0) {
      // APPEND, not DEFAULT: a test may already have added a SAN extension.
      EXPECT_EQ(1, X509_add1_ext_i2d(x, NID_subject_alt_name, names_.get(), 0, X509V3_ADD_APPEND));
    }
    EXPECT_TRUE(X509_sign(x, key.get(), EVP_sha256()));
    return RoundTrip(x);
  }

 private:
  LeafBuilder &Name(int type, const std::string &value) {
    bssl::UniquePtr<GENERAL_NAME> gn(GENERAL_NAME_new());
    ASN1_IA5STRING *str = ASN1_IA5STRING_new();
    // The explicit length keeps embedded NUL bytes.
    EXPECT_TRUE(ASN1_STRING_set(str, value.data(), static_cast<int>(value.size())));
    GENERAL_NAME_set0_value(gn.get(), type, str);
    EXPECT_TRUE(bssl::PushToStack(names_.get(), std::move(gn)));
    return *this;
  }

  static bssl::UniquePtr<EVP_PKEY> NewP256Key() {
    bssl::UniquePtr<EC_KEY> ec(EC_KEY_new_by_curve_name(NID_X9_62_prime256v1));
    EXPECT_TRUE(EC_KEY_generate_key(ec.get()));
    bssl::UniquePtr<EVP_PKEY> key(EVP_PKEY_new());
    EXPECT_TRUE(EVP_PKEY_assign_EC_KEY(key.get(), ec.release()));
    return key;
  }

  static bssl::UniquePtr<X509> RoundTrip(X509 *x) {
    uint8_t *der = nullptr;
    int len = i2d_X509(x, &der);
    EXPECT_GT(len, 0);
    const uint8_t *p = der;
    bssl::UniquePtr<X509> parsed(d2i_X509(nullptr, &p, len));
    OPENSSL_free(der);
    EXPECT_TRUE(parsed != nullptr);
    return parsed;
  }

  bssl::UniquePtr<X509> x509_;
  bssl::UniquePtr<STACK_OF(GENERAL_NAME)> names_;
};

const char kId[] = "spiffe://example.org/ns/default/sa/web";

struct LeafResult {
  mt_svid_err err;
  mt_spiffe_err id_err;
  std::string id;
};

LeafResult Check(X509 *leaf, mt_svid_role role = MT_SVID_ROLE_CLIENT) {
  std::vector<char> buf(MT_SPIFFE_ID_MAX_LEN + 1, 'Z');
  LeafResult r;
  r.id_err = static_cast<mt_spiffe_err>(-1);
  r.err = mt_svid_check_leaf(leaf, role, buf.data(), buf.size(), &r.id_err);
  r.id = buf.data();
  return r;
}

TEST(SvidCheckLeaf, AcceptsOneUriSanAndCopiesTheId) {
  auto leaf = LeafBuilder().Uri(kId).Build();
  LeafResult r = Check(leaf.get());
  EXPECT_EQ(MT_SVID_OK, r.err);
  EXPECT_EQ(MT_SPIFFE_OK, r.id_err);
  EXPECT_EQ(kId, r.id);
}

TEST(SvidCheckLeaf, AcceptsTypicalWorkloadLeaf) {
  auto leaf = LeafBuilder()
                  .Uri(kId)
                  .Ext(NID_basic_constraints, "critical,CA:FALSE")
                  .Ext(NID_key_usage, "critical,digitalSignature,keyEncipherment")
                  .Ext(NID_ext_key_usage, "serverAuth,clientAuth")
                  .Build();
  EXPECT_EQ(MT_SVID_OK, Check(leaf.get(), MT_SVID_ROLE_CLIENT).err);
  EXPECT_EQ(MT_SVID_OK, Check(leaf.get(), MT_SVID_ROLE_SERVER).err);
}

TEST(SvidCheckLeaf, CopiesNothingWhenOutIdIsNull) {
  auto leaf = LeafBuilder().Uri(kId).Build();
  EXPECT_EQ(MT_SVID_OK, mt_svid_check_leaf(leaf.get(), MT_SVID_ROLE_CLIENT, nullptr, 0, nullptr));
}

TEST(SvidCheckLeaf, RefusesOutputBufferSmallerThanMaxId) {
  auto leaf = LeafBuilder().Uri(kId).Build();
  char small[64];
  EXPECT_NE(MT_SVID_OK,
            mt_svid_check_leaf(leaf.get(), MT_SVID_ROLE_CLIENT, small, sizeof(small), nullptr));
  EXPECT_STREQ("", small);
}

TEST(SvidCheckLeaf, RejectsCertificateWithoutSan) {
  auto leaf = LeafBuilder().Build();
  EXPECT_EQ(MT_SVID_NO_URI_SAN, Check(leaf.get()).err);
}

TEST(SvidCheckLeaf, RejectsOnlyDnsSan) {
  auto leaf = LeafBuilder().Dns("web.default.svc").Build();
  EXPECT_EQ(MT_SVID_NO_URI_SAN, Check(leaf.get()).err);
}

TEST(SvidCheckLeaf, RejectsTwoUriSans) {
  auto leaf = LeafBuilder().Uri(kId).Uri("spiffe://example.org/ns/default/sa/db").Build();
  EXPECT_EQ(MT_SVID_MULTIPLE_URI_SANS, Check(leaf.get()).err);
}

TEST(SvidCheckLeaf, AcceptsUriSanAlongsideDnsSan) {
  auto leaf = LeafBuilder().Dns("web.default.svc").Uri(kId).Dns("web").Build();
  LeafResult r = Check(leaf.get());
  EXPECT_EQ(MT_SVID_OK, r.err);
  EXPECT_EQ(kId, r.id);
}

TEST(SvidCheckLeaf, RejectsLeafThatIsACa) {
  auto leaf = LeafBuilder().Uri(kId).Ext(NID_basic_constraints, "critical,CA:TRUE").Build();
  EXPECT_EQ(MT_SVID_LEAF_IS_CA, Check(leaf.get()).err);
}

TEST(SvidCheckLeaf, RejectsKeyUsageWithKeyCertSign) {
  auto leaf =
      LeafBuilder().Uri(kId).Ext(NID_key_usage, "critical,digitalSignature,keyCertSign").Build();
  EXPECT_EQ(MT_SVID_BAD_KEY_USAGE, Check(leaf.get()).err);
}

TEST(SvidCheckLeaf, RejectsKeyUsageWithCrlSign) {
  auto leaf =
      LeafBuilder().Uri(kId).Ext(NID_key_usage, "critical,digitalSignature,cRLSign").Build();
  EXPECT_EQ(MT_SVID_BAD_KEY_USAGE, Check(leaf.get()).err);
}

TEST(SvidCheckLeaf, RejectsKeyUsageWithoutDigitalSignature) {
  auto leaf = LeafBuilder().Uri(kId).Ext(NID_key_usage, "critical,keyEncipherment").Build();
  EXPECT_EQ(MT_SVID_BAD_KEY_USAGE, Check(leaf.get()).err);
}

TEST(SvidCheckLeaf, RejectsServerAuthOnlyLeafForClientRole) {
  auto leaf = LeafBuilder().Uri(kId).Ext(NID_ext_key_usage, "serverAuth").Build();
  EXPECT_EQ(MT_SVID_BAD_EXT_KEY_USAGE, Check(leaf.get(), MT_SVID_ROLE_CLIENT).err);
}

TEST(SvidCheckLeaf, AcceptsServerAuthOnlyLeafForServerRole) {
  auto leaf = LeafBuilder().Uri(kId).Ext(NID_ext_key_usage, "serverAuth").Build();
  EXPECT_EQ(MT_SVID_OK, Check(leaf.get(), MT_SVID_ROLE_SERVER).err);
}

TEST(SvidCheckLeaf, RejectsClientAuthOnlyLeafForServerRole) {
  auto leaf = LeafBuilder().Uri(kId).Ext(NID_ext_key_usage, "clientAuth").Build();
  EXPECT_EQ(MT_SVID_BAD_EXT_KEY_USAGE, Check(leaf.get(), MT_SVID_ROLE_SERVER).err);
}

TEST(SvidCheckLeaf, AcceptsAnyExtendedKeyUsageForBothRoles) {
  auto leaf = LeafBuilder().Uri(kId).Ext(NID_ext_key_usage, "anyExtendedKeyUsage").Build();
  EXPECT_EQ(MT_SVID_OK, Check(leaf.get(), MT_SVID_ROLE_CLIENT).err);
  EXPECT_EQ(MT_SVID_OK, Check(leaf.get(), MT_SVID_ROLE_SERVER).err);
}

TEST(SvidCheckLeaf, ReportsInvalidSpiffeUriWithTheIdError) {
  auto leaf = LeafBuilder().Uri("spiffe://Example.org/ns/default").Build();
  LeafResult r = Check(leaf.get());
  EXPECT_EQ(MT_SVID_BAD_SPIFFE_ID, r.err);
  EXPECT_EQ(MT_SPIFFE_BAD_TRUST_DOMAIN_CHAR, r.id_err);
  EXPECT_EQ("", r.id);
}

TEST(SvidCheckLeaf, RejectsNonSpiffeUri) {
  auto leaf = LeafBuilder().Uri("https://example.org/web").Build();
  LeafResult r = Check(leaf.get());
  EXPECT_EQ(MT_SVID_BAD_SPIFFE_ID, r.err);
  EXPECT_EQ(MT_SPIFFE_BAD_SCHEME, r.id_err);
}

TEST(SvidCheckLeaf, RejectsUriSanWithEmbeddedNul) {
  // A C-string reader would see only "spiffe://example.org/ns/default".
  const std::string uri("spiffe://example.org/ns/default\0/sa/evil", 40);
  auto leaf = LeafBuilder().Uri(uri).Build();
  LeafResult r = Check(leaf.get());
  EXPECT_EQ(MT_SVID_BAD_SPIFFE_ID, r.err);
  EXPECT_EQ(MT_SPIFFE_BAD_PATH_CHAR, r.id_err);
}

TEST(SvidCheckLeaf, ReportsMalformedSanExtensionAsUnparsable) {
  // An OCTET STRING where the GeneralNames SEQUENCE should be.
  auto leaf = LeafBuilder().RawExt(NID_subject_alt_name, std::string("\x04\x01\x00", 3)).Build();
  EXPECT_EQ(MT_SVID_UNPARSABLE, Check(leaf.get()).err);
}

TEST(SvidCheckLeaf, ReportsMalformedKeyUsageAsUnparsable) {
  auto leaf = LeafBuilder().Uri(kId).RawExt(NID_key_usage, std::string("\x30\x00", 2)).Build();
  EXPECT_EQ(MT_SVID_UNPARSABLE, Check(leaf.get()).err);
}

TEST(SvidCheckLeaf, RejectsTwoSanExtensionsEachWithOneUri) {
  // Counting URIs in only the first extension would accept this certificate.
  auto leaf = LeafBuilder()
                  .Ext(NID_subject_alt_name, "URI:spiffe://example.org/ns/default/sa/db")
                  .Uri(kId)
                  .Build();
  EXPECT_EQ(MT_SVID_UNPARSABLE, Check(leaf.get()).err);
}

TEST(SvidCheckLeaf, RejectsNullLeaf) { EXPECT_EQ(MT_SVID_UNPARSABLE, Check(nullptr).err); }

}  // namespace
