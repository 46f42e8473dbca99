// workload_api_response: what a SPIFFE Workload API server sends, decoded
// and checked for shape before the agent builds an identity from it.
#include "agent/workload_api_response.h"

#include <gtest/gtest.h>
#include <openssl/bytestring.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <string>
#include <utility>
#include <vector>

#include "proto/spiffe/workload.pb-c.h"
#include "tests/unit/test_keys.h"

namespace {

using mt_test::NewEcKey;

struct Cert {
  bssl::UniquePtr<X509> x509;
  bssl::UniquePtr<EVP_PKEY> key;
};

void AddExt(X509 *x, X509 *issuer, int nid, const std::string &value) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer, x, nullptr, nullptr, 0);
  bssl::UniquePtr<X509_EXTENSION> ext(X509V3_EXT_nconf_nid(nullptr, &ctx, nid, value.c_str()));
  ASSERT_TRUE(ext != nullptr) << value;
  ASSERT_TRUE(X509_add_ext(x, ext.get(), -1));
}

// A CA (|uri| its trust domain ID) or an X509-SVID leaf for |uri|, signed
// by |issuer| (nullptr: self-signed).
Cert Make(const std::string &uri, const Cert *issuer, bool ca) {
  Cert c{bssl::UniquePtr<X509>(X509_new()), NewEcKey()};
  X509 *x = c.x509.get();
  static long serial = 1;
  EXPECT_TRUE(X509_set_version(x, X509_VERSION_3));
  EXPECT_TRUE(ASN1_INTEGER_set(X509_get_serialNumber(x), serial++));
  EXPECT_TRUE(X509_gmtime_adj(X509_getm_notBefore(x), -60));
  EXPECT_TRUE(X509_gmtime_adj(X509_getm_notAfter(x), 3600));
  X509_NAME *name = X509_get_subject_name(x);
  std::string cn = (ca ? "ca " : "leaf ") + uri + " " + std::to_string(serial);
  EXPECT_TRUE(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                         reinterpret_cast<const uint8_t *>(cn.c_str()), -1, -1, 0));
  EXPECT_TRUE(X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer->x509.get()) : name));
  EXPECT_TRUE(X509_set_pubkey(x, c.key.get()));
  X509 *iss = issuer ? issuer->x509.get() : x;
  AddExt(x, iss, NID_basic_constraints, ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
  AddExt(x, iss, NID_key_usage, ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
  AddExt(x, iss, NID_subject_alt_name, "URI:" + uri);
  EXPECT_TRUE(X509_sign(x, issuer ? issuer->key.get() : c.key.get(), EVP_sha256()));
  return c;
}

std::string Der(X509 *x) {
  uint8_t *der = nullptr;
  int len = i2d_X509(x, &der);
  EXPECT_GT(len, 0);
  std::string out(reinterpret_cast<char *>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

std::string Pkcs8(EVP_PKEY *key) {
  bssl::ScopedCBB cbb;
  EXPECT_TRUE(CBB_init(cbb.get(), 256));
  EXPECT_TRUE(EVP_marshal_private_key(cbb.get(), key));
  return std::string(reinterpret_cast<const char *>(CBB_data(cbb.get())), CBB_len(cbb.get()));
}

ProtobufCBinaryData Bytes(const std::string &s) {
  return {s.size(), reinterpret_cast<uint8_t *>(const_cast<char *>(s.data()))};
}

std::string Pack(const ProtobufCMessage *m) {
  std::string out(protobuf_c_message_get_packed_size(m), '\0');
  protobuf_c_message_pack(m, reinterpret_cast<uint8_t *>(&out[0]));
  return out;
}

const uint8_t *U8(const std::string &s) { return reinterpret_cast<const uint8_t *>(s.data()); }

// One SVID as the server would send it (strings kept alive here).
struct SvidFields {
  std::string id, chain, key, bundle;
};

// An X509SVIDResponse with |svids| and |federated| (key -> DER roots).
std::string SvidResponse(const std::vector<SvidFields> &svids,
                         const std::vector<std::pair<std::string, std::string>> &federated = {}) {
  std::vector<X509SVID> msgs(svids.size());
  std::vector<X509SVID *> ptrs;
  for (size_t i = 0; i < svids.size(); i++) {
    msgs[i] = X509_SVID__INIT;
    msgs[i].spiffe_id = const_cast<char *>(svids[i].id.c_str());
    msgs[i].x509_svid = Bytes(svids[i].chain);
    msgs[i].x509_svid_key = Bytes(svids[i].key);
    msgs[i].bundle = Bytes(svids[i].bundle);
    ptrs.push_back(&msgs[i]);
  }
  std::vector<X509SVIDResponse__FederatedBundlesEntry> entries(federated.size());
  std::vector<X509SVIDResponse__FederatedBundlesEntry *> entry_ptrs;
  for (size_t i = 0; i < federated.size(); i++) {
    entries[i] = X509_SVIDRESPONSE__FEDERATED_BUNDLES_ENTRY__INIT;
    entries[i].key = const_cast<char *>(federated[i].first.c_str());
    entries[i].value = Bytes(federated[i].second);
    entry_ptrs.push_back(&entries[i]);
  }
  X509SVIDResponse r = X509_SVIDRESPONSE__INIT;
  r.n_svids = ptrs.size();
  r.svids = ptrs.data();
  r.n_federated_bundles = entry_ptrs.size();
  r.federated_bundles = entry_ptrs.data();
  return Pack(&r.base);
}

std::string BundlesResponse(const std::vector<std::pair<std::string, std::string>> &bundles) {
  std::vector<X509BundlesResponse__BundlesEntry> entries(bundles.size());
  std::vector<X509BundlesResponse__BundlesEntry *> ptrs;
  for (size_t i = 0; i < bundles.size(); i++) {
    entries[i] = X509_BUNDLES_RESPONSE__BUNDLES_ENTRY__INIT;
    entries[i].key = const_cast<char *>(bundles[i].first.c_str());
    entries[i].value = Bytes(bundles[i].second);
    ptrs.push_back(&entries[i]);
  }
  X509BundlesResponse r = X509_BUNDLES_RESPONSE__INIT;
  r.n_bundles = ptrs.size();
  r.bundles = ptrs.data();
  return Pack(&r.base);
}

class WorkloadApiResponseTest : public ::testing::Test {
 protected:
  WorkloadApiResponseTest()
      : root_(Make("spiffe://example.org", nullptr, true)),
        inter_(Make("spiffe://example.org", &root_, true)),
        leaf_(Make("spiffe://example.org/ns/default/sa/web", &inter_, false)),
        other_(Make("spiffe://other.org", nullptr, true)) {}

  ~WorkloadApiResponseTest() override { mt_wlapi_svid_update_clear(&update_); }

  SvidFields Web() {
    return {"spiffe://example.org/ns/default/sa/web",
            Der(leaf_.x509.get()) + Der(inter_.x509.get()), Pkcs8(leaf_.key.get()),
            Der(root_.x509.get())};
  }

  int Decode(const std::string &msg, const char *want = nullptr) {
    return mt_wlapi_decode_svid_response(U8(msg), msg.size(), want, &update_, &why_, err_,
                                         sizeof(err_));
  }

  Cert root_, inter_, leaf_, other_;
  mt_wlapi_svid_update update_ = {};
  mt_wlapi_refusal why_ = MT_WLAPI_NUM_REFUSALS;
  char err_[512] = "";
};

TEST_F(WorkloadApiResponseTest, DecodesTheSvidItsChainKeyOwnBundleAndFederatedBundles) {
  std::string other = Der(other_.x509.get());
  ASSERT_TRUE(Decode(SvidResponse({Web()}, {{"spiffe://other.org", other}}))) << err_;
  EXPECT_STREQ(update_.spiffe_id, "spiffe://example.org/ns/default/sa/web");
  EXPECT_STREQ(update_.trust_domain, "example.org");
  EXPECT_EQ(X509_cmp(update_.leaf, leaf_.x509.get()), 0);
  ASSERT_EQ(sk_X509_num(update_.intermediates), 1u);
  EXPECT_EQ(X509_cmp(sk_X509_value(update_.intermediates, 0), inter_.x509.get()), 0);
  EXPECT_EQ(EVP_PKEY_cmp(update_.key, leaf_.key.get()), 1);
  ASSERT_EQ(sk_X509_num(update_.bundle), 1u);
  EXPECT_EQ(X509_cmp(sk_X509_value(update_.bundle, 0), root_.x509.get()), 0);
  ASSERT_EQ(update_.federated.count, 1u);
  EXPECT_STREQ(update_.federated.items[0].trust_domain, "other.org");
}

TEST_F(WorkloadApiResponseTest, TakesTheFirstSvidUnlessOneIsNamed) {
  Cert api = Make("spiffe://example.org/ns/default/sa/api", &inter_, false);
  SvidFields second = {"spiffe://example.org/ns/default/sa/api",
                       Der(api.x509.get()) + Der(inter_.x509.get()), Pkcs8(api.key.get()),
                       Der(root_.x509.get())};
  std::string msg = SvidResponse({Web(), second});
  ASSERT_TRUE(Decode(msg)) << err_;
  EXPECT_STREQ(update_.spiffe_id, "spiffe://example.org/ns/default/sa/web");
  mt_wlapi_svid_update_clear(&update_);
  ASSERT_TRUE(Decode(msg, "spiffe://example.org/ns/default/sa/api")) << err_;
  EXPECT_STREQ(update_.spiffe_id, "spiffe://example.org/ns/default/sa/api");
  EXPECT_EQ(X509_cmp(update_.leaf, api.x509.get()), 0);
}

TEST_F(WorkloadApiResponseTest, RefusesWhenNoSvidIsTheNamedOne) {
  EXPECT_FALSE(Decode(SvidResponse({Web()}), "spiffe://example.org/ns/default/sa/db"));
  EXPECT_EQ(why_, MT_WLAPI_REFUSAL_NO_SVID);
  EXPECT_NE(std::string(err_).find("sa/db"), std::string::npos) << err_;
  EXPECT_EQ(update_.leaf, nullptr);
}

TEST_F(WorkloadApiResponseTest, RefusesAResponseWithoutSvids) {
  EXPECT_FALSE(Decode(SvidResponse({})));
  EXPECT_EQ(why_, MT_WLAPI_REFUSAL_NO_SVID);
}

TEST_F(WorkloadApiResponseTest, RefusesAKeyThatIsNotTheCertificates) {
  SvidFields f = Web();
  f.key = Pkcs8(NewEcKey().get());
  EXPECT_FALSE(Decode(SvidResponse({f})));
  EXPECT_EQ(why_, MT_WLAPI_REFUSAL_KEY_MISMATCH);
  EXPECT_NE(std::string(err_).find("not the key"), std::string::npos) << err_;
  EXPECT_EQ(update_.key, nullptr);
  EXPECT_EQ(update_.leaf, nullptr);
}

TEST_F(WorkloadApiResponseTest, RefusesAKeyThatIsNotPkcs8) {
  SvidFields f = Web();
  f.key = "not a key";
  EXPECT_FALSE(Decode(SvidResponse({f})));
  EXPECT_EQ(why_, MT_WLAPI_REFUSAL_MALFORMED);
  f.key = Pkcs8(leaf_.key.get()) + "x";
  EXPECT_FALSE(Decode(SvidResponse({f})));
  EXPECT_EQ(why_, MT_WLAPI_REFUSAL_MALFORMED);
  EXPECT_NE(std::string(err_).find("trailing data"), std::string::npos) << err_;
}

TEST_F(WorkloadApiResponseTest, RefusesBrokenCertificateBytes) {
  SvidFields f = Web();
  f.chain = f.chain.substr(0, f.chain.size() - 10);
  EXPECT_FALSE(Decode(SvidResponse({f})));
  EXPECT_EQ(why_, MT_WLAPI_REFUSAL_MALFORMED);
  EXPECT_NE(std::string(err_).find("x509_svid: certificate 2"), std::string::npos) << err_;
  f = Web();
  f.chain = "";
  EXPECT_FALSE(Decode(SvidResponse({f})));
  EXPECT_NE(std::string(err_).find("no certificate"), std::string::npos) << err_;
  f = Web();
  f.bundle += "\x30\x03\x02\x01\x01";  // a SEQUENCE that is not a certificate
  EXPECT_FALSE(Decode(SvidResponse({f})));
  EXPECT_NE(std::string(err_).find("bundle: certificate 2"), std::string::npos) << err_;
}

TEST_F(WorkloadApiResponseTest, RefusesMoreCertificatesThanTheLimit) {
  SvidFields f = Web();
  std::string root = Der(root_.x509.get());
  f.bundle.clear();
  for (int i = 0; i <= MT_WLAPI_MAX_CERTS; i++) f.bundle += root;
  EXPECT_FALSE(Decode(SvidResponse({f})));
  EXPECT_EQ(why_, MT_WLAPI_REFUSAL_MALFORMED);
  EXPECT_NE(std::string(err_).find("more than"), std::string::npos) << err_;
}

TEST_F(WorkloadApiResponseTest, RefusesAnIdThatIsNotASpiffeId) {
  SvidFields f = Web();
  f.id = "https://example.org/web";
  EXPECT_FALSE(Decode(SvidResponse({f})));
  EXPECT_EQ(why_, MT_WLAPI_REFUSAL_MALFORMED);
}

TEST_F(WorkloadApiResponseTest, RefusesBytesThatAreNotProtobuf) {
  std::string junk = "\xff\xff\xff\x0fnot protobuf";
  EXPECT_FALSE(Decode(junk));
  EXPECT_EQ(why_, MT_WLAPI_REFUSAL_MALFORMED);
  mt_wlapi_bundles b;
  EXPECT_FALSE(mt_wlapi_decode_bundles_response(U8(junk), junk.size(), &b, err_, sizeof(err_)));
}

TEST_F(WorkloadApiResponseTest, RefusesAMessageOverTheSizeLimit) {
  std::string big(MT_WLAPI_MAX_MESSAGE_BYTES + 1, '\0');
  EXPECT_FALSE(Decode(big));
  EXPECT_EQ(why_, MT_WLAPI_REFUSAL_TOO_LARGE);
}

TEST_F(WorkloadApiResponseTest, RefusesBadFederatedKeysAndTheOwnTrustDomain) {
  std::string other = Der(other_.x509.get());
  for (const char *key : {"spiffe://other.org/path", "Other.org", "", "spiffe://", "a b"}) {
    EXPECT_FALSE(Decode(SvidResponse({Web()}, {{key, other}}))) << key;
    EXPECT_EQ(why_, MT_WLAPI_REFUSAL_MALFORMED) << key;
  }
  EXPECT_FALSE(Decode(SvidResponse({Web()}, {{"example.org", other}})));
  EXPECT_NE(std::string(err_).find("own trust domain"), std::string::npos) << err_;
  EXPECT_FALSE(
      Decode(SvidResponse({Web()}, {{"spiffe://other.org", other}, {"other.org", other}})));
  EXPECT_NE(std::string(err_).find("twice"), std::string::npos) << err_;
  EXPECT_FALSE(Decode(SvidResponse({Web()}, {{"other.org", ""}})));
  EXPECT_NE(std::string(err_).find("no certificate"), std::string::npos) << err_;
}

TEST_F(WorkloadApiResponseTest, BundlesResponseTakesBothKeyForms) {
  std::string msg = BundlesResponse(
      {{"spiffe://example.org", Der(root_.x509.get())}, {"other.org", Der(other_.x509.get())}});
  mt_wlapi_bundles b;
  ASSERT_TRUE(mt_wlapi_decode_bundles_response(U8(msg), msg.size(), &b, err_, sizeof(err_)))
      << err_;
  ASSERT_EQ(b.count, 2u);
  ASSERT_NE(mt_wlapi_bundles_get(&b, "example.org"), nullptr);
  ASSERT_NE(mt_wlapi_bundles_get(&b, "other.org"), nullptr);
  EXPECT_EQ(X509_cmp(sk_X509_value(mt_wlapi_bundles_get(&b, "other.org"), 0), other_.x509.get()),
            0);
  mt_wlapi_bundles_clear(&b);
}

TEST_F(WorkloadApiResponseTest, BundlesResponseRefusesEmptyDuplicateAndBadEntries) {
  mt_wlapi_bundles b;
  std::string root = Der(root_.x509.get());
  for (const std::string &msg :
       {BundlesResponse({}),
        BundlesResponse({{"spiffe://example.org", root}, {"example.org", root}}),
        BundlesResponse({{"example.org", "garbage"}}),
        BundlesResponse({{"spiffe://example.org/x", root}})}) {
    EXPECT_FALSE(mt_wlapi_decode_bundles_response(U8(msg), msg.size(), &b, err_, sizeof(err_)));
    EXPECT_EQ(b.count, 0u);
    EXPECT_NE(err_[0], '\0');
  }
}

TEST(WorkloadApiTrustDomainKey, AcceptsTheIdAndTheBareName) {
  char td[MT_TRUST_DOMAIN_MAX_LEN + 1], err[256];
  ASSERT_TRUE(
      mt_wlapi_trust_domain_of_key("spiffe://example.org", td, sizeof(td), err, sizeof(err)));
  EXPECT_STREQ(td, "example.org");
  ASSERT_TRUE(mt_wlapi_trust_domain_of_key("example.org", td, sizeof(td), err, sizeof(err)));
  EXPECT_STREQ(td, "example.org");
  EXPECT_FALSE(
      mt_wlapi_trust_domain_of_key("spiffe://example.org/", td, sizeof(td), err, sizeof(err)));
  EXPECT_FALSE(
      mt_wlapi_trust_domain_of_key("SPIFFE://example.org", td, sizeof(td), err, sizeof(err)));
  EXPECT_FALSE(mt_wlapi_trust_domain_of_key("example.org:443", td, sizeof(td), err, sizeof(err)));
  EXPECT_NE(std::string(err).find("example.org:443"), std::string::npos) << err;
}

TEST_F(WorkloadApiResponseTest, BundleListsCompareByContentNotOrder) {
  bssl::UniquePtr<STACK_OF(X509)> one(sk_X509_new_null()), two(sk_X509_new_null());
  ASSERT_TRUE(sk_X509_push(one.get(), bssl::UpRef(root_.x509).release()));
  ASSERT_TRUE(sk_X509_push(two.get(), bssl::UpRef(root_.x509).release()));
  ASSERT_TRUE(sk_X509_push(two.get(), bssl::UpRef(other_.x509).release()));
  mt_wlapi_bundles a = {}, b = {};
  ASSERT_TRUE(mt_wlapi_bundles_set(&a, "example.org", one.get()));
  ASSERT_TRUE(mt_wlapi_bundles_set(&a, "other.org", two.get()));
  ASSERT_TRUE(mt_wlapi_bundles_set(&b, "other.org", two.get()));
  ASSERT_TRUE(mt_wlapi_bundles_set(&b, "example.org", one.get()));
  EXPECT_TRUE(mt_wlapi_bundles_equal(&a, &b));
  ASSERT_TRUE(mt_wlapi_bundles_set(&b, "example.org", two.get()));  // replaces
  EXPECT_EQ(b.count, 2u);
  EXPECT_FALSE(mt_wlapi_bundles_equal(&a, &b));
  mt_wlapi_bundles c;
  ASSERT_TRUE(mt_wlapi_bundles_copy(&b, &c));
  EXPECT_TRUE(mt_wlapi_bundles_equal(&b, &c));
  mt_wlapi_bundles_clear(&a);
  mt_wlapi_bundles_clear(&b);
  mt_wlapi_bundles_clear(&c);
}

TEST_F(WorkloadApiResponseTest, MergeKeepsEveryDomainAndTheNewerRootsOfSharedOnes) {
  bssl::UniquePtr<STACK_OF(X509)> root(sk_X509_new_null()), other(sk_X509_new_null());
  ASSERT_TRUE(sk_X509_push(root.get(), bssl::UpRef(root_.x509).release()));
  ASSERT_TRUE(sk_X509_push(other.get(), bssl::UpRef(other_.x509).release()));
  mt_wlapi_bundles older = {}, newer = {}, out = {};
  ASSERT_TRUE(mt_wlapi_bundles_set(&older, "example.org", root.get()));
  ASSERT_TRUE(mt_wlapi_bundles_set(&older, "other.org", other.get()));
  ASSERT_TRUE(mt_wlapi_bundles_set(&newer, "example.org", other.get()));
  ASSERT_TRUE(mt_wlapi_bundles_set(&newer, "third.org", root.get()));
  ASSERT_TRUE(mt_wlapi_bundles_merge(&older, &newer, &out));
  ASSERT_EQ(out.count, 3u);
  EXPECT_EQ(
      X509_cmp(sk_X509_value(mt_wlapi_bundles_get(&out, "example.org"), 0), other_.x509.get()), 0);
  EXPECT_NE(mt_wlapi_bundles_get(&out, "other.org"), nullptr);
  EXPECT_NE(mt_wlapi_bundles_get(&out, "third.org"), nullptr);
  mt_wlapi_bundles_clear(&older);
  mt_wlapi_bundles_clear(&newer);
  mt_wlapi_bundles_clear(&out);
}

}  // namespace
