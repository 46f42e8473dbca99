// Specification of agent/jwt_bundles: the bundles an agent holds, and the
// JWT-SVID validation rules (SPIFFE JWT-SVID spec) over them. Tokens come
// from mtls-ca's own signer (controlplane/jwt_signer) and, for the ones it
// would never sign, from tests/unit/jwt_test_tokens.h.
#include "agent/jwt_bundles.h"

#include <gtest/gtest.h>
#include <time.h>

#include <map>
#include <string>
#include <vector>

#include "controlplane/jwt_signer.h"
#include "proto/mtlsd/jwt.pb-c.h"
#include "tests/unit/jwt_test_tokens.h"

namespace {

const int64_t kNow = 1700000000;
const char kTd[] = "spiffe://example.org";
const char kId[] = "spiffe://example.org/ns/default/sa/frontend";

std::string Encode(const std::map<std::string, std::string> &docs) {
  std::vector<Mtlsd__Jwt__V1__JwtBundles__BundlesEntry> entries(docs.size());
  std::vector<Mtlsd__Jwt__V1__JwtBundles__BundlesEntry *> ptrs;
  size_t i = 0;
  for (const auto &d : docs) {
    mtlsd__jwt__v1__jwt_bundles__bundles_entry__init(&entries[i]);
    entries[i].key = const_cast<char *>(d.first.c_str());
    entries[i].value.data = reinterpret_cast<uint8_t *>(const_cast<char *>(d.second.data()));
    entries[i].value.len = d.second.size();
    ptrs.push_back(&entries[i++]);
  }
  Mtlsd__Jwt__V1__JwtBundles msg = MTLSD__JWT__V1__JWT_BUNDLES__INIT;
  msg.n_bundles = ptrs.size();
  msg.bundles = ptrs.data();
  std::string out(mtlsd__jwt__v1__jwt_bundles__get_packed_size(&msg), '\0');
  mtlsd__jwt__v1__jwt_bundles__pack(&msg, reinterpret_cast<uint8_t *>(&out[0]));
  return out;
}

struct BundlesDeleter {
  void operator()(mt_jwt_bundles *b) const { mt_jwt_bundles_free(b); }
};
using BundlesPtr = std::unique_ptr<mt_jwt_bundles, BundlesDeleter>;

BundlesPtr Decode(const std::map<std::string, std::string> &docs, std::string *error = nullptr) {
  std::string msg = Encode(docs);
  char err[MT_JWT_BUNDLES_ERR_MAX] = "";
  BundlesPtr b(mt_jwt_bundles_decode(reinterpret_cast<const uint8_t *>(msg.data()), msg.size(), err,
                                     sizeof(err)));
  if (error != nullptr) *error = err;
  return b;
}

// mtls-ca's signer, with a key generated now.
struct Signer {
  mt_jwt_signer *s = mt_jwt_signer_new(3600);
  Signer() {
    char err[256];
    EXPECT_TRUE(mt_jwt_signer_generate(s, kNow, err, sizeof(err)));
  }
  ~Signer() { mt_jwt_signer_free(s); }
  std::string Jwks() { return mt_jwt_signer_jwks(s, nullptr); }
  std::string Sign(const char *sub, std::vector<const char *> aud, int64_t exp = kNow + 300) {
    mt_jwt_svid_claims c = {sub, aud.data(), aud.size(), kNow, exp};
    char err[256];
    char *t = mt_jwt_signer_sign(s, &c, err, sizeof(err));
    std::string out = t ? t : "";
    free(t);
    return out;
  }
};

struct Outcome {
  bool ok;
  std::string spiffe_id, claims, error;
};

Outcome Validate(const mt_jwt_bundles *b, const std::string &token, const char *aud,
                 int64_t now = kNow) {
  mt_jwt_svid_valid v;
  char err[MT_JWT_BUNDLES_ERR_MAX] = "";
  Outcome o;
  o.ok = mt_jwt_bundles_validate(b, token.data(), token.size(), aud, now, &v, err, sizeof(err));
  o.error = err;
  if (o.ok) {
    o.spiffe_id = v.spiffe_id;
    o.claims.assign(v.claims_json, v.claims_json_len);
  }
  mt_jwt_svid_valid_dispose(&v);
  return o;
}

TEST(JwtBundles, AMtlsCaTokenValidatesWithItsBundle) {
  Signer signer;
  BundlesPtr b = Decode({{kTd, signer.Jwks()}});
  ASSERT_NE(b, nullptr);
  Outcome o = Validate(b.get(), signer.Sign(kId, {"payments", "audit"}), "audit");
  ASSERT_TRUE(o.ok) << o.error;
  EXPECT_EQ(kId, o.spiffe_id);
  EXPECT_NE(o.claims.find("\"aud\":[\"payments\",\"audit\"]"), std::string::npos) << o.claims;
}

TEST(JwtBundles, KeepsEachDocumentAsReceived) {
  Signer a, other;
  BundlesPtr b = Decode({{kTd, a.Jwks()}, {"spiffe://partner.org", other.Jwks()}});
  ASSERT_NE(b, nullptr);
  ASSERT_EQ(2u, mt_jwt_bundles_count(b.get()));
  mt_jwt_bundle_view v = mt_jwt_bundles_at(b.get(), 0);
  EXPECT_STREQ(kTd, v.trust_domain_id);
  EXPECT_EQ(a.Jwks(), std::string(reinterpret_cast<const char *>(v.jwks), v.jwks_len));
  BundlesPtr same = Decode({{"spiffe://partner.org", other.Jwks()}, {kTd, a.Jwks()}});
  EXPECT_TRUE(mt_jwt_bundles_equal(b.get(), same.get()));
  EXPECT_FALSE(mt_jwt_bundles_equal(b.get(), nullptr));
  BundlesPtr empty = Decode({});
  ASSERT_NE(empty, nullptr);
  EXPECT_TRUE(mt_jwt_bundles_equal(empty.get(), nullptr));
}

TEST(JwtBundles, TheKeyMustBelongToTheSubjectsTrustDomain) {
  Signer ours, partner;
  BundlesPtr b = Decode({{kTd, ours.Jwks()}, {"spiffe://partner.org", partner.Jwks()}});
  // partner.org's key signing for an example.org identity: forged.
  Outcome o = Validate(b.get(), partner.Sign(kId, {"a"}), "a");
  EXPECT_FALSE(o.ok);
  EXPECT_NE(o.error.find("not of the subject's trust domain"), std::string::npos) << o.error;
  EXPECT_TRUE(Validate(b.get(), partner.Sign("spiffe://partner.org/x", {"a"}), "a").ok);
}

TEST(JwtBundles, RefusesWhatTheSpecRefuses) {
  Signer signer, stranger;
  BundlesPtr b = Decode({{kTd, signer.Jwks()}});
  EXPECT_FALSE(Validate(b.get(), signer.Sign(kId, {"a"}), "b").ok);  // audience
  Outcome expired = Validate(b.get(), signer.Sign(kId, {"a"}, kNow + 10), "a",
                             kNow + 10 + MT_JWT_DEFAULT_LEEWAY_S + 1);
  EXPECT_FALSE(expired.ok);
  EXPECT_NE(expired.error.find("expired"), std::string::npos) << expired.error;
  EXPECT_FALSE(Validate(b.get(), stranger.Sign(kId, {"a"}), "a").ok);  // unknown key
  Outcome not_spiffe = Validate(b.get(), signer.Sign("frontend", {"a"}), "a");
  EXPECT_FALSE(not_spiffe.ok);
  EXPECT_NE(not_spiffe.error.find("not a SPIFFE ID"), std::string::npos) << not_spiffe.error;
  std::string token = signer.Sign(kId, {"a"});
  token[token.size() - 3] = token[token.size() - 3] == 'A' ? 'B' : 'A';
  EXPECT_FALSE(Validate(b.get(), token, "a").ok);
  EXPECT_FALSE(Validate(nullptr, signer.Sign(kId, {"a"}), "a").ok);
  EXPECT_FALSE(Validate(b.get(), signer.Sign(kId, {"a"}), "").ok);
}

TEST(JwtBundles, TypMayBeAbsentJwtOrJoseOnly) {
  bssl::UniquePtr<EVP_PKEY> key = mt_test::NewEcKey();
  BundlesPtr b = Decode({{kTd, mt_test::Jwks(key.get())}});
  std::string claims = std::string("{\"sub\":\"") + kId +
                       "\",\"aud\":\"a\",\"exp\":" + std::to_string(kNow + 60) + "}";
  for (const char *header : {"{\"alg\":\"ES256\"}", "{\"alg\":\"ES256\",\"typ\":\"JWT\"}",
                             "{\"alg\":\"ES256\",\"typ\":\"JOSE\"}"}) {
    Outcome o = Validate(b.get(), mt_test::Es256Token(key.get(), header, claims), "a");
    EXPECT_TRUE(o.ok) << header << ": " << o.error;
  }
  Outcome o = Validate(
      b.get(), mt_test::Es256Token(key.get(), "{\"alg\":\"ES256\",\"typ\":\"at+jwt\"}", claims),
      "a");
  EXPECT_FALSE(o.ok);
  EXPECT_NE(o.error.find("typ"), std::string::npos) << o.error;
}

TEST(JwtBundles, NoIssuerIsRequiredButAnyIssuerIsAllowed) {
  bssl::UniquePtr<EVP_PKEY> key = mt_test::NewEcKey();
  BundlesPtr b = Decode({{kTd, mt_test::Jwks(key.get())}});
  std::string claims = std::string("{\"iss\":\"https://x\",\"sub\":\"") + kId +
                       "\",\"aud\":\"a\",\"exp\":" + std::to_string(kNow + 60) + "}";
  EXPECT_TRUE(
      Validate(b.get(), mt_test::Es256Token(key.get(), "{\"alg\":\"ES256\"}", claims), "a").ok);
}

TEST(JwtBundles, ABadMessageIsRefusedWhole) {
  Signer signer;
  struct {
    std::map<std::string, std::string> docs;
    const char *reason;
  } cases[] = {
      {{{"example.org", signer.Jwks()}}, "is not a trust domain's SPIFFE ID"},
      {{{"spiffe://example.org/path", signer.Jwks()}}, "is not a trust domain's SPIFFE ID"},
      {{{kTd, signer.Jwks()}, {"spiffe://b.org", "{\"keys\":[]}"}}, "bundle of spiffe://b.org"},
  };
  for (const auto &c : cases) {
    std::string err;
    EXPECT_EQ(nullptr, Decode(c.docs, &err));
    EXPECT_NE(err.find(c.reason), std::string::npos) << err;
  }
  char err[MT_JWT_BUNDLES_ERR_MAX];
  const uint8_t garbage[] = {0xff, 0xff, 0xff};
  EXPECT_EQ(nullptr, mt_jwt_bundles_decode(garbage, sizeof(garbage), err, sizeof(err)));
}

}  // namespace
