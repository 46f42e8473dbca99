// Specification of controlplane/jwt: which bearer tokens mtls-ca accepts.
// Every token here is built and signed in the test with BoringSSL, with keys
// generated in the test; nothing is a canned string from elsewhere.
#include "controlplane/jwt.h"

#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/bytestring.h>
#include <openssl/digest.h>
#include <openssl/ec_key.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "tests/unit/test_keys.h"

namespace {

using mt_test::NewEcKey;
using mt_test::NewRsaKey;

const int64_t kNow = 1700000000;
const char kIssuer[] = "https://kubernetes.default.svc.cluster.local";
const char kAudience[] = "istio-ca";
const char kSub[] = "system:serviceaccount:default:frontend";

// ---- Keys ------------------------------------------------------------------

// Generated once per process: RSA key generation is slow under ASan.
EVP_PKEY *EcKey() {
  static bssl::UniquePtr<EVP_PKEY> key = NewEcKey();
  return key.get();
}
EVP_PKEY *OtherEcKey() {
  static bssl::UniquePtr<EVP_PKEY> key = NewEcKey();
  return key.get();
}
EVP_PKEY *RsaKey() {
  static bssl::UniquePtr<EVP_PKEY> key = NewRsaKey(2048);
  return key.get();
}
EVP_PKEY *OtherRsaKey() {
  static bssl::UniquePtr<EVP_PKEY> key = NewRsaKey(2048);
  return key.get();
}

std::string PublicPem(EVP_PKEY *key) {
  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  EXPECT_TRUE(PEM_write_bio_PUBKEY(bio.get(), key));
  const uint8_t *data;
  size_t len;
  EXPECT_TRUE(BIO_mem_contents(bio.get(), &data, &len));
  return std::string(reinterpret_cast<const char *>(data), len);
}

struct KeysDeleter {
  void operator()(mt_jwt_keys *keys) const { mt_jwt_keys_free(keys); }
};
using KeysPtr = std::unique_ptr<mt_jwt_keys, KeysDeleter>;

KeysPtr LoadKeys(const std::string &pem, std::string *err = nullptr) {
  char buf[256] = "";
  KeysPtr keys(mt_jwt_keys_load_pem(pem.data(), pem.size(), buf, sizeof(buf)));
  if (err != nullptr) *err = buf;
  return keys;
}

// ---- Token construction ---------------------------------------------------

std::string B64Url(const std::string &in) {
  static const char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : in) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out += kAlphabet[(acc >> bits) & 0x3f];
    }
  }
  if (bits > 0) out += kAlphabet[(acc << (6 - bits)) & 0x3f];
  return out;
}

// Kubernetes' kid: base64url(SHA-256(DER SubjectPublicKeyInfo)).
std::string KubernetesKid(EVP_PKEY *key) {
  bssl::ScopedCBB cbb;
  EXPECT_TRUE(CBB_init(cbb.get(), 128));
  EXPECT_TRUE(EVP_marshal_public_key(cbb.get(), key));
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(CBB_data(cbb.get()), CBB_len(cbb.get()), digest);
  return B64Url(std::string(reinterpret_cast<char *>(digest), sizeof(digest)));
}

std::string DigestSign(EVP_PKEY *key, const std::string &input) {
  bssl::ScopedEVP_MD_CTX ctx;
  EXPECT_TRUE(EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key));
  size_t len = 0;
  EXPECT_TRUE(EVP_DigestSign(ctx.get(), nullptr, &len,
                             reinterpret_cast<const uint8_t *>(input.data()), input.size()));
  std::vector<uint8_t> sig(len);
  EXPECT_TRUE(EVP_DigestSign(ctx.get(), sig.data(), &len,
                             reinterpret_cast<const uint8_t *>(input.data()), input.size()));
  return std::string(reinterpret_cast<char *>(sig.data()), len);
}

// JWS ES256: the DER ECDSA signature rewritten as r || s, 32 bytes each.
std::string Es256Raw(const std::string &der) {
  bssl::UniquePtr<ECDSA_SIG> sig(
      ECDSA_SIG_from_bytes(reinterpret_cast<const uint8_t *>(der.data()), der.size()));
  EXPECT_TRUE(sig != nullptr);
  uint8_t raw[64];
  EXPECT_TRUE(BN_bn2bin_padded(raw, 32, ECDSA_SIG_get0_r(sig.get())));
  EXPECT_TRUE(BN_bn2bin_padded(raw + 32, 32, ECDSA_SIG_get0_s(sig.get())));
  return std::string(reinterpret_cast<char *>(raw), sizeof(raw));
}

enum class Sig { kEs256Raw, kDer, kRsa, kHs256WithPem };

// header.payload.signature, the signature made by |key| the way |how| says.
std::string Token(const std::string &header, const std::string &payload, EVP_PKEY *key, Sig how) {
  std::string input = B64Url(header) + "." + B64Url(payload);
  std::string sig;
  switch (how) {
    case Sig::kEs256Raw: sig = Es256Raw(DigestSign(key, input)); break;
    case Sig::kDer:
    case Sig::kRsa: sig = DigestSign(key, input); break;
    case Sig::kHs256WithPem: {
      // The classic confusion attack: HMAC keyed with the public key's PEM.
      std::string secret = PublicPem(key);
      uint8_t mac[EVP_MAX_MD_SIZE];
      unsigned mac_len = 0;
      HMAC(EVP_sha256(), secret.data(), secret.size(),
           reinterpret_cast<const uint8_t *>(input.data()), input.size(), mac, &mac_len);
      sig.assign(reinterpret_cast<char *>(mac), mac_len);
      break;
    }
  }
  return input + "." + B64Url(sig);
}

std::string Header(const std::string &alg, const std::string &kid = "") {
  std::string h = "{\"alg\":\"" + alg + "\",\"typ\":\"JWT\"";
  if (!kid.empty()) h += ",\"kid\":\"" + kid + "\"";
  return h + "}";
}

std::string Quote(const std::string &s) { return "\"" + s + "\""; }

// The claims of a Kubernetes projected service-account token; each test
// changes what it is about.
class Claims {
 public:
  Claims() {
    Set("aud", "[\"istio-ca\"]");
    Set("exp", std::to_string(kNow + 3600));
    Set("iat", std::to_string(kNow - 10));
    Set("iss", Quote(kIssuer));
    Set("kubernetes.io",
        "{\"namespace\":\"default\",\"pod\":{\"name\":\"fe-1\",\"uid\":\"u1\"},"
        "\"serviceaccount\":{\"name\":\"frontend\",\"uid\":\"u2\"}}");
    Set("nbf", std::to_string(kNow - 10));
    Set("sub", Quote(kSub));
  }
  Claims &Set(const std::string &name, const std::string &raw_json) {
    members_[name] = raw_json;
    return *this;
  }
  Claims &Drop(const std::string &name) {
    members_.erase(name);
    return *this;
  }
  std::string Json() const {
    std::string out = "{";
    for (const auto &m : members_) {
      if (out.size() > 1) out += ",";
      out += Quote(m.first) + ":" + m.second;
    }
    return out + "}";
  }

 private:
  std::map<std::string, std::string> members_;
};

std::string Es256(const std::string &payload, EVP_PKEY *key = EcKey()) {
  return Token(Header("ES256"), payload, key, Sig::kEs256Raw);
}

std::string Rs256(const std::string &payload, EVP_PKEY *key = RsaKey()) {
  return Token(Header("RS256"), payload, key, Sig::kRsa);
}

// ---- Verification ---------------------------------------------------------

struct Result {
  mt_jwt_err code;
  std::string message;
  mt_jwt_claims claims;
};

const mt_jwt_keys *BothKeys() {
  static KeysPtr keys = LoadKeys(PublicPem(EcKey()) + PublicPem(RsaKey()));
  return keys.get();
}

Result Verify(const std::string &token, const mt_jwt_keys *keys = BothKeys(), int64_t now = kNow) {
  mt_jwt_expect expect;
  mt_jwt_expect_init(&expect, kIssuer, kAudience, now);
  Result r;
  mt_jwt_error err;
  memset(&r.claims, 'Z', sizeof(r.claims));
  r.code = mt_jwt_verify(keys, token.data(), token.size(), &expect, &r.claims, &err);
  EXPECT_EQ(r.code, err.code);
  r.message = err.message;
  return r;
}

#define EXPECT_REJECTED(code_, token_)       \
  do {                                       \
    Result r_ = Verify(token_);              \
    EXPECT_EQ(code_, r_.code) << r_.message; \
    EXPECT_FALSE(r_.message.empty());        \
    EXPECT_STREQ("", r_.claims.sub);         \
  } while (0)

// ---- Accepted tokens -------------------------------------------------------

TEST(JwtVerify, AcceptsValidEs256Token) {
  Result r = Verify(Es256(Claims().Json()));
  ASSERT_EQ(MT_JWT_OK, r.code) << r.message;
  EXPECT_STREQ(kSub, r.claims.sub);
  EXPECT_STREQ(kIssuer, r.claims.iss);
  EXPECT_EQ(kNow + 3600, r.claims.exp);
}

TEST(JwtVerify, AcceptsValidRs256Token) {
  Result r = Verify(Rs256(Claims().Json()));
  ASSERT_EQ(MT_JWT_OK, r.code) << r.message;
  EXPECT_STREQ(kSub, r.claims.sub);
}

TEST(JwtVerify, AcceptsKidNamingTheSigningKey) {
  std::string token =
      Token(Header("ES256", KubernetesKid(EcKey())), Claims().Json(), EcKey(), Sig::kEs256Raw);
  EXPECT_EQ(MT_JWT_OK, Verify(token).code);
}

TEST(JwtVerify, AcceptsUnknownKidWhenAKeyOfTheSetVerifies) {
  std::string token =
      Token(Header("ES256", "some-other-kid"), Claims().Json(), EcKey(), Sig::kEs256Raw);
  EXPECT_EQ(MT_JWT_OK, Verify(token).code);
}

TEST(JwtVerify, AcceptsAnyKeyOfAMultiKeySet) {
  KeysPtr keys = LoadKeys(PublicPem(OtherEcKey()) + PublicPem(EcKey()));
  ASSERT_TRUE(keys != nullptr);
  EXPECT_EQ(2u, mt_jwt_keys_count(keys.get()));
  EXPECT_EQ(MT_JWT_OK, Verify(Es256(Claims().Json()), keys.get()).code);
}

TEST(JwtVerify, AcceptsAudienceAsString) {
  EXPECT_EQ(MT_JWT_OK, Verify(Es256(Claims().Set("aud", Quote(kAudience)).Json())).code);
}

TEST(JwtVerify, AcceptsAudienceAmongSeveral) {
  Claims c;
  c.Set("aud", "[\"https://kubernetes.default.svc\",\"istio-ca\"]");
  EXPECT_EQ(MT_JWT_OK, Verify(Es256(c.Json())).code);
}

TEST(JwtVerify, AcceptsExpiryWithinLeeway) {
  EXPECT_EQ(MT_JWT_OK, Verify(Es256(Claims().Set("exp", std::to_string(kNow - 59)).Json())).code);
}

TEST(JwtVerify, AcceptsNbfWithinLeeway) {
  EXPECT_EQ(MT_JWT_OK, Verify(Es256(Claims().Set("nbf", std::to_string(kNow + 60)).Json())).code);
}

TEST(JwtVerify, AcceptsTokenWithoutNbf) {
  EXPECT_EQ(MT_JWT_OK, Verify(Es256(Claims().Drop("nbf").Json())).code);
}

TEST(JwtVerify, AcceptsJsonWhitespaceAndEscapes) {
  std::string payload =
      " { \"sub\" : \"system:serviceaccount:default:fr\\u006fntend\" ,\n"
      "\"iss\":\"" +
      std::string(kIssuer) +
      "\",\t\"aud\":\"istio-ca\","
      "\"exp\":" +
      std::to_string(kNow + 10) +
      ", \"x\": [1.5e3, true, null,"
      " {\"y\": \"\\ud83d\\ude00\"}] } ";
  Result r = Verify(Es256(payload));
  ASSERT_EQ(MT_JWT_OK, r.code) << r.message;
  EXPECT_STREQ(kSub, r.claims.sub);
}

TEST(JwtVerify, AcceptsTokenOfTheMaximumSize) {
  // Size of an ES256 token whose payload is P bytes: unpadded base64url of
  // the header and the payload, two dots, 86 signature characters.
  const size_t header_len = B64Url(Header("ES256")).size();
  auto token_len = [&](size_t payload_len) {
    return header_len + 1 + (4 * payload_len + 2) / 3 + 1 + 86;
  };
  const size_t base = Claims().Set("pad", Quote("")).Json().size();
  size_t pad = 0;
  while (token_len(base + pad + 1) <= MT_JWT_MAX_TOKEN_LEN) pad++;
  std::string token = Es256(Claims().Set("pad", Quote(std::string(pad, 'p'))).Json());
  ASSERT_EQ(token_len(base + pad), token.size());
  ASSERT_GE(token.size(), static_cast<size_t>(MT_JWT_MAX_TOKEN_LEN - 1));
  EXPECT_EQ(MT_JWT_OK, Verify(token).code);
}

TEST(JwtVerify, ReadsOnlyLenBytes) {
  std::string token = Es256(Claims().Json());
  std::string longer = token + ".trailing";
  mt_jwt_expect expect;
  mt_jwt_expect_init(&expect, kIssuer, kAudience, kNow);
  EXPECT_EQ(MT_JWT_OK,
            mt_jwt_verify(BothKeys(), longer.data(), token.size(), &expect, nullptr, nullptr));
}

// ---- Signature and algorithm ----------------------------------------------

TEST(JwtVerify, RejectsFlippedSignatureByte) {
  std::string token = Es256(Claims().Json());
  size_t sig_start = token.rfind('.') + 1;
  token[sig_start + 5] = token[sig_start + 5] == 'A' ? 'B' : 'A';
  EXPECT_REJECTED(MT_JWT_BAD_SIGNATURE, token);
}

TEST(JwtVerify, RejectsFlippedRs256SignatureByte) {
  std::string token = Rs256(Claims().Json());
  size_t sig_start = token.rfind('.') + 1;
  token[sig_start + 10] = token[sig_start + 10] == 'A' ? 'B' : 'A';
  EXPECT_REJECTED(MT_JWT_BAD_SIGNATURE, token);
}

TEST(JwtVerify, RejectsChangedPayload) {
  std::string good = Es256(Claims().Json());
  std::string evil =
      B64Url(Claims().Set("sub", "\"system:serviceaccount:kube-system:admin\"").Json());
  size_t p1 = good.find('.') + 1, p2 = good.rfind('.');
  std::string token = good.substr(0, p1) + evil + good.substr(p2);
  EXPECT_REJECTED(MT_JWT_BAD_SIGNATURE, token);
}

TEST(JwtVerify, RejectsTokenSignedByAnotherEcKey) {
  EXPECT_REJECTED(MT_JWT_BAD_SIGNATURE, Es256(Claims().Json(), OtherEcKey()));
}

TEST(JwtVerify, RejectsTokenSignedByAnotherRsaKey) {
  EXPECT_REJECTED(MT_JWT_BAD_SIGNATURE, Rs256(Claims().Json(), OtherRsaKey()));
}

TEST(JwtVerify, RejectsKidOfTrustedKeyOnTokenSignedByAnother) {
  std::string token =
      Token(Header("ES256", KubernetesKid(EcKey())), Claims().Json(), OtherEcKey(), Sig::kEs256Raw);
  EXPECT_REJECTED(MT_JWT_BAD_SIGNATURE, token);
}

TEST(JwtVerify, RejectsAlgNone) {
  std::string unsigned_token = B64Url("{\"alg\":\"none\"}") + "." + B64Url(Claims().Json()) + ".";
  EXPECT_REJECTED(MT_JWT_UNSUPPORTED_ALG, unsigned_token);
}

TEST(JwtVerify, RejectsAlgNoneInOtherSpellings) {
  for (const char *alg : {"None", "NONE", "nOnE"}) {
    std::string token = B64Url(Header(alg)) + "." + B64Url(Claims().Json()) + ".";
    EXPECT_REJECTED(MT_JWT_UNSUPPORTED_ALG, token);
  }
}

TEST(JwtVerify, RejectsAlgNoneEvenWithASignature) {
  EXPECT_REJECTED(MT_JWT_UNSUPPORTED_ALG,
                  Token(Header("none"), Claims().Json(), EcKey(), Sig::kEs256Raw));
}

TEST(JwtVerify, RejectsHs256KeyedWithThePublicKey) {
  EXPECT_REJECTED(MT_JWT_UNSUPPORTED_ALG,
                  Token(Header("HS256"), Claims().Json(), RsaKey(), Sig::kHs256WithPem));
}

TEST(JwtVerify, RejectsOtherAlgorithms) {
  for (const char *alg : {"ES384", "RS512", "PS256", "EdDSA", "es256", "ES256 ", ""}) {
    EXPECT_REJECTED(MT_JWT_UNSUPPORTED_ALG,
                    Token(Header(alg), Claims().Json(), EcKey(), Sig::kDer));
  }
}

TEST(JwtVerify, RejectsRs256HeaderWhenOnlyAnEcKeyIsTrusted) {
  KeysPtr ec_only = LoadKeys(PublicPem(EcKey()));
  std::string token = Token(Header("RS256"), Claims().Json(), EcKey(), Sig::kDer);
  Result r = Verify(token, ec_only.get());
  EXPECT_EQ(MT_JWT_UNKNOWN_KEY, r.code) << r.message;
}

TEST(JwtVerify, RejectsEs256HeaderWhenOnlyAnRsaKeyIsTrusted) {
  KeysPtr rsa_only = LoadKeys(PublicPem(RsaKey()));
  Result r = Verify(Es256(Claims().Json()), rsa_only.get());
  EXPECT_EQ(MT_JWT_UNKNOWN_KEY, r.code) << r.message;
}

TEST(JwtVerify, RejectsRs256HeaderOverEcSignatureInMixedSet) {
  for (Sig how : {Sig::kDer, Sig::kEs256Raw}) {
    EXPECT_REJECTED(MT_JWT_BAD_SIGNATURE, Token(Header("RS256"), Claims().Json(), EcKey(), how));
  }
}

TEST(JwtVerify, RejectsKidOfEcKeyUnderRs256) {
  std::string token =
      Token(Header("RS256", KubernetesKid(EcKey())), Claims().Json(), EcKey(), Sig::kDer);
  EXPECT_REJECTED(MT_JWT_UNKNOWN_KEY, token);
}

TEST(JwtVerify, RejectsDerEncodedEs256Signature) {
  EXPECT_REJECTED(MT_JWT_BAD_SIGNATURE,
                  Token(Header("ES256"), Claims().Json(), EcKey(), Sig::kDer));
}

TEST(JwtVerify, RejectsCritHeader) {
  std::string header = "{\"alg\":\"ES256\",\"crit\":[\"exp\"],\"exp\":1}";
  EXPECT_REJECTED(MT_JWT_UNSUPPORTED_ALG, Token(header, Claims().Json(), EcKey(), Sig::kEs256Raw));
}

TEST(JwtVerify, RejectsHeaderWithoutAlg) {
  EXPECT_REJECTED(MT_JWT_MALFORMED,
                  Token("{\"typ\":\"JWT\"}", Claims().Json(), EcKey(), Sig::kEs256Raw));
}

TEST(JwtVerify, RejectsDuplicateAlg) {
  std::string header = "{\"alg\":\"ES256\",\"alg\":\"none\"}";
  EXPECT_REJECTED(MT_JWT_MALFORMED, Token(header, Claims().Json(), EcKey(), Sig::kEs256Raw));
}

// ---- Time ------------------------------------------------------------------

TEST(JwtVerify, RejectsExpiredToken) {
  EXPECT_REJECTED(MT_JWT_EXPIRED, Es256(Claims().Set("exp", std::to_string(kNow - 60)).Json()));
  EXPECT_REJECTED(MT_JWT_EXPIRED, Es256(Claims().Set("exp", std::to_string(kNow - 86400)).Json()));
}

TEST(JwtVerify, RejectsNbfInTheFuture) {
  EXPECT_REJECTED(MT_JWT_NOT_YET_VALID,
                  Es256(Claims().Set("nbf", std::to_string(kNow + 61)).Json()));
}

TEST(JwtVerify, HonoursConfiguredLeeway) {
  std::string token = Es256(Claims().Set("exp", std::to_string(kNow - 5)).Json());
  mt_jwt_expect expect;
  mt_jwt_expect_init(&expect, kIssuer, kAudience, kNow);
  expect.leeway_s = 0;
  EXPECT_EQ(MT_JWT_EXPIRED,
            mt_jwt_verify(BothKeys(), token.data(), token.size(), &expect, nullptr, nullptr));
  expect.leeway_s = 10;
  EXPECT_EQ(MT_JWT_OK,
            mt_jwt_verify(BothKeys(), token.data(), token.size(), &expect, nullptr, nullptr));
}

TEST(JwtVerify, RejectsFractionalOrStringTimes) {
  EXPECT_REJECTED(MT_JWT_MALFORMED, Es256(Claims().Set("exp", "1700003600.5").Json()));
  EXPECT_REJECTED(MT_JWT_MALFORMED, Es256(Claims().Set("exp", "17e8").Json()));
  EXPECT_REJECTED(MT_JWT_MALFORMED, Es256(Claims().Set("exp", "\"1700003600\"").Json()));
  EXPECT_REJECTED(MT_JWT_MALFORMED, Es256(Claims().Set("nbf", "null").Json()));
}

TEST(JwtVerify, RejectsTimesBeyond64Bits) {
  EXPECT_REJECTED(MT_JWT_MALFORMED, Es256(Claims().Set("exp", "9223372036854775808").Json()));
  EXPECT_REJECTED(MT_JWT_EXPIRED, Es256(Claims().Set("exp", "-9223372036854775808").Json()));
  EXPECT_EQ(MT_JWT_OK, Verify(Es256(Claims().Set("exp", "9223372036854775807").Json())).code);
}

// ---- Issuer, audience, required claims -------------------------------------

TEST(JwtVerify, RejectsWrongIssuer) {
  EXPECT_REJECTED(MT_JWT_WRONG_ISSUER,
                  Es256(Claims().Set("iss", "\"https://evil.example\"").Json()));
  EXPECT_REJECTED(MT_JWT_WRONG_ISSUER,
                  Es256(Claims().Set("iss", Quote(std::string(kIssuer) + "/")).Json()));
}

TEST(JwtVerify, RejectsAudienceMismatchAsString) {
  EXPECT_REJECTED(MT_JWT_WRONG_AUDIENCE, Es256(Claims().Set("aud", "\"istio-ca-other\"").Json()));
  EXPECT_REJECTED(MT_JWT_WRONG_AUDIENCE, Es256(Claims().Set("aud", "\"istio-c\"").Json()));
}

TEST(JwtVerify, RejectsAudienceMismatchAsArray) {
  EXPECT_REJECTED(MT_JWT_WRONG_AUDIENCE,
                  Es256(Claims().Set("aud", "[\"https://kubernetes.default.svc\"]").Json()));
  EXPECT_REJECTED(MT_JWT_WRONG_AUDIENCE, Es256(Claims().Set("aud", "[]").Json()));
}

TEST(JwtVerify, RejectsNonStringAudience) {
  EXPECT_REJECTED(MT_JWT_MALFORMED, Es256(Claims().Set("aud", "[\"istio-ca\", 1]").Json()));
  EXPECT_REJECTED(MT_JWT_MALFORMED, Es256(Claims().Set("aud", "{\"istio-ca\":1}").Json()));
}

TEST(JwtVerify, RejectsMissingSub) {
  EXPECT_REJECTED(MT_JWT_MISSING_CLAIM, Es256(Claims().Drop("sub").Json()));
  EXPECT_REJECTED(MT_JWT_MISSING_CLAIM, Es256(Claims().Set("sub", "\"\"").Json()));
}

TEST(JwtVerify, RejectsMissingExp) {
  EXPECT_REJECTED(MT_JWT_MISSING_CLAIM, Es256(Claims().Drop("exp").Json()));
}

TEST(JwtVerify, RejectsMissingIssOrAud) {
  EXPECT_REJECTED(MT_JWT_MISSING_CLAIM, Es256(Claims().Drop("iss").Json()));
  EXPECT_REJECTED(MT_JWT_MISSING_CLAIM, Es256(Claims().Drop("aud").Json()));
}

TEST(JwtVerify, RejectsNonStringSub) {
  EXPECT_REJECTED(MT_JWT_MALFORMED, Es256(Claims().Set("sub", "42").Json()));
}

// ---- base64url ------------------------------------------------------------

std::string WithPart(const std::string &token, int part, const std::string &text) {
  size_t p1 = token.find('.'), p2 = token.rfind('.');
  std::string parts[3] = {token.substr(0, p1), token.substr(p1 + 1, p2 - p1 - 1),
                          token.substr(p2 + 1)};
  parts[part] = text;
  return parts[0] + "." + parts[1] + "." + parts[2];
}

std::string Part(const std::string &token, int part) {
  size_t p1 = token.find('.'), p2 = token.rfind('.');
  return part == 0   ? token.substr(0, p1)
         : part == 1 ? token.substr(p1 + 1, p2 - p1 - 1)
                     : token.substr(p2 + 1);
}

TEST(JwtVerify, RejectsPaddedBase64url) {
  std::string token = Es256(Claims().Json());
  // 64 signature bytes are 86 characters; standard base64 would pad with "==".
  ASSERT_EQ(86u, Part(token, 2).size());
  EXPECT_REJECTED(MT_JWT_MALFORMED, WithPart(token, 2, Part(token, 2) + "=="));
  EXPECT_REJECTED(MT_JWT_MALFORMED, WithPart(token, 1, Part(token, 1) + "="));
}

TEST(JwtVerify, RejectsStandardBase64Characters) {
  std::string token = Es256(Claims().Json());
  std::string sig = Part(token, 2);
  EXPECT_REJECTED(MT_JWT_MALFORMED, WithPart(token, 2, "+" + sig.substr(1)));
  EXPECT_REJECTED(MT_JWT_MALFORMED, WithPart(token, 2, "/" + sig.substr(1)));
}

TEST(JwtVerify, RejectsWhitespaceAndOtherCharacters) {
  std::string token = Es256(Claims().Json());
  std::string payload = Part(token, 1);
  EXPECT_REJECTED(MT_JWT_MALFORMED,
                  WithPart(token, 1, payload.substr(0, 4) + " " + payload.substr(5)));
  EXPECT_REJECTED(MT_JWT_MALFORMED,
                  WithPart(token, 1, payload.substr(0, 4) + "*" + payload.substr(5)));
  EXPECT_REJECTED(MT_JWT_MALFORMED, WithPart(token, 1, std::string("\0", 1) + payload.substr(1)));
}

TEST(JwtVerify, RejectsImpossibleBase64urlLength) {
  std::string token = Es256(Claims().Json());
  // 86 + 3 = 89 characters: the last one would carry 6 bits, not a byte.
  std::string sig = Part(token, 2);
  EXPECT_REJECTED(MT_JWT_MALFORMED, WithPart(token, 2, sig + "AAA"));
}

TEST(JwtVerify, RejectsNonCanonicalTrailingBits) {
  // A second spelling of the same bytes: set a bit that decoding drops.
  std::string token = Es256(Claims().Json());
  std::string sig = Part(token, 2);
  char last = sig.back();
  // The last of 86 characters carries 2 meaningful bits and 4 zero bits.
  std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  char stray = alphabet[alphabet.find(last) | 1];
  EXPECT_REJECTED(MT_JWT_MALFORMED, WithPart(token, 2, sig.substr(0, 85) + stray));
}

TEST(JwtVerify, RejectsWrongNumberOfParts) {
  std::string token = Es256(Claims().Json());
  EXPECT_REJECTED(MT_JWT_MALFORMED, token.substr(0, token.rfind('.')));
  EXPECT_REJECTED(MT_JWT_MALFORMED, token + ".x");
  EXPECT_REJECTED(MT_JWT_MALFORMED, std::string(""));
  EXPECT_REJECTED(MT_JWT_MALFORMED, std::string(".."));
}

// ---- JSON ------------------------------------------------------------------

TEST(JwtVerify, RejectsTrailingGarbageAfterJson) {
  EXPECT_REJECTED(MT_JWT_MALFORMED, Es256(Claims().Json() + "x"));
  EXPECT_REJECTED(MT_JWT_MALFORMED, Es256(Claims().Json() + "{}"));
}

TEST(JwtVerify, RejectsUnterminatedString) {
  std::string json = Claims().Json();
  EXPECT_REJECTED(MT_JWT_MALFORMED, Es256("{\"sub\":\"system:serviceaccount:a:b"));
  EXPECT_REJECTED(MT_JWT_MALFORMED, Es256(json.substr(0, json.size() - 1)));
}

TEST(JwtVerify, RejectsDuplicateSub) {
  std::string json = Claims().Json();
  std::string dup = json.substr(0, json.size() - 1) + ",\"sub\":\"system:serviceaccount:a:b\"}";
  EXPECT_REJECTED(MT_JWT_MALFORMED, Es256(dup));
}

TEST(JwtVerify, RejectsDuplicateSubSpelledWithAnEscape) {
  std::string json = Claims().Json();
  std::string dup =
      json.substr(0, json.size() - 1) + ",\"s\\u0075b\":\"system:serviceaccount:a:b\"}";
  EXPECT_REJECTED(MT_JWT_MALFORMED, Es256(dup));
}

TEST(JwtVerify, RejectsDuplicateNamesInNestedObjects) {
  EXPECT_REJECTED(MT_JWT_MALFORMED, Es256(Claims().Set("x", "{\"a\":1,\"a\":2}").Json()));
}

TEST(JwtVerify, RejectsMalformedJsonValues) {
  for (const char *bad :
       {"tru", "nul", "01", "1.", "-", "+1", ".5", "1e", "[1,]", "[,1]", "{\"a\"}", "{\"a\":1,}",
        "{a:1}", "'x'", "\"\\x\"", "\"\\u12\"", "[", "{"}) {
    SCOPED_TRACE(bad);
    EXPECT_REJECTED(MT_JWT_MALFORMED, Es256(Claims().Set("x", bad).Json()));
  }
}

TEST(JwtVerify, RejectsControlCharactersAndBadUtf8InStrings) {
  for (const char *bad : {"\"a\tb\"", "\"\xff\"", "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "\"\\ud800\"",
                          "\"\\udc00x\"", "\"\\u0000\""}) {
    SCOPED_TRACE(bad);
    EXPECT_REJECTED(MT_JWT_MALFORMED, Es256(Claims().Set("x", bad).Json()));
  }
}

TEST(JwtVerify, RejectsDeepNesting) {
  std::string deep = std::string(40, '[') + std::string(40, ']');
  EXPECT_REJECTED(MT_JWT_MALFORMED, Es256(Claims().Set("x", deep).Json()));
  std::string ok = std::string(10, '[') + std::string(10, ']');
  EXPECT_EQ(MT_JWT_OK, Verify(Es256(Claims().Set("x", ok).Json())).code);
}

TEST(JwtVerify, RejectsPayloadThatIsNotAnObject) {
  EXPECT_REJECTED(MT_JWT_MALFORMED, Es256("[]"));
  EXPECT_REJECTED(MT_JWT_MALFORMED, Es256("\"sub\""));
  EXPECT_REJECTED(MT_JWT_MALFORMED, Es256(""));
}

TEST(JwtVerify, RejectsOverlongSub) {
  std::string sub = "system:serviceaccount:default:" + std::string(MT_JWT_CLAIM_MAX_LEN, 'a');
  EXPECT_REJECTED(MT_JWT_MALFORMED, Es256(Claims().Set("sub", Quote(sub)).Json()));
}

// ---- JSON: the strictness tokens need (jansson with JSON_REJECT_DUPLICATES) --

// Refused as malformed, with a message that contains |needle|.
#define EXPECT_MALFORMED_SAYING(needle_, token_)                          \
  do {                                                                    \
    Result r_ = Verify(token_);                                           \
    EXPECT_EQ(MT_JWT_MALFORMED, r_.code) << r_.message;                   \
    EXPECT_NE(std::string::npos, r_.message.find(needle_)) << r_.message; \
    EXPECT_STREQ("", r_.claims.sub);                                      \
  } while (0)

std::string SignedWithHeader(const std::string &header, const std::string &payload) {
  return Token(header, payload, EcKey(), Sig::kEs256Raw);
}

TEST(JwtJson, RefusesADuplicateKeyInTheHeader) {
  EXPECT_MALFORMED_SAYING(
      "header: duplicate member \"kid\"",
      SignedWithHeader("{\"alg\":\"ES256\",\"kid\":\"a\",\"kid\":\"b\"}", Claims().Json()));
  EXPECT_MALFORMED_SAYING(
      "duplicate member \"typ\"",
      SignedWithHeader("{\"typ\":\"JWT\",\"alg\":\"ES256\",\"typ\":\"JWT\"}", Claims().Json()));
}

TEST(JwtJson, RefusesADuplicateKeyInTheClaims) {
  std::string json = Claims().Json();
  std::string dup = json.substr(0, json.size() - 1) + ",\"exp\":" + std::to_string(kNow + 7) + "}";
  EXPECT_MALFORMED_SAYING("payload: duplicate member \"exp\"", Es256(dup));
  // Nested, in a claim nobody reads: still refused.
  EXPECT_MALFORMED_SAYING(
      "duplicate member \"uid\"",
      Es256(Claims().Set("kubernetes.io", "{\"pod\":{\"uid\":\"a\",\"uid\":\"b\"}}").Json()));
}

TEST(JwtJson, RefusesNulInsideAString) {
  // Escaped: the claim would be cut short as a C string.
  EXPECT_MALFORMED_SAYING("payload: \\u0000 in a string",
                          Es256(Claims().Set("sub", Quote(std::string(kSub) + "\\u0000x")).Json()));
  // A raw NUL byte inside the string.
  EXPECT_MALFORMED_SAYING(
      "payload: control character 0x0",
      Es256(Claims().Set("sub", Quote(std::string(kSub) + std::string("\0x", 2))).Json()));
  // In a member name, and in the header's kid.
  EXPECT_MALFORMED_SAYING("payload: \\u0000 in a string",
                          Es256(Claims().Set("a\\u0000b", "1").Json()));
  EXPECT_MALFORMED_SAYING(
      "header: \\u0000 in a string",
      SignedWithHeader("{\"alg\":\"ES256\",\"kid\":\"k\\u0000\"}", Claims().Json()));
}

TEST(JwtJson, RefusesTrailingDataAfterTheObject) {
  const char kAfter[] = "data after the JSON object";
  EXPECT_MALFORMED_SAYING(std::string("payload: ") + kAfter, Es256(Claims().Json() + "x"));
  EXPECT_MALFORMED_SAYING(kAfter, Es256(Claims().Json() + std::string("\0", 1)));
  EXPECT_MALFORMED_SAYING(kAfter, Es256(Claims().Json() + " {}"));
  EXPECT_MALFORMED_SAYING(std::string("header: ") + kAfter,
                          SignedWithHeader(Header("ES256") + " x", Claims().Json()));
  EXPECT_MALFORMED_SAYING(kAfter, SignedWithHeader(Header("ES256") + "{}", Claims().Json()));
}

TEST(JwtJson, AcceptsTrailingWhitespace) {
  EXPECT_EQ(MT_JWT_OK,
            Verify(SignedWithHeader(Header("ES256") + "\r\n", Claims().Json() + " \t\n")).code);
}

TEST(JwtJson, RefusesATopLevelThatIsNotAnObject) {
  for (const char *top : {"[]", "[{\"alg\":\"ES256\"}]", "1", "\"x\"", "null", "true", "", " "}) {
    SCOPED_TRACE(top);
    EXPECT_MALFORMED_SAYING("payload", Es256(top));
    EXPECT_MALFORMED_SAYING("header", SignedWithHeader(top, Claims().Json()));
  }
  // A byte-order mark is not JSON whitespace.
  EXPECT_MALFORMED_SAYING("payload: ", Es256("\xef\xbb\xbf" + Claims().Json()));
}

TEST(JwtJson, RefusesADepthBombWithoutCrashing) {
  // As deep as a 16 KiB token allows, far past the library's own limit.
  const size_t n = 5000;
  std::string open = std::string(n, '[');
  EXPECT_MALFORMED_SAYING("nested deeper than 16",
                          Es256(Claims().Set("x", open + std::string(n, ']')).Json()));
  EXPECT_MALFORMED_SAYING("payload: ", Es256(Claims().Set("x", open).Json()));
  std::string objects;
  for (int i = 0; i < 1500; i++) objects += "{\"a\":";
  EXPECT_MALFORMED_SAYING("nested deeper than 16",
                          Es256(Claims().Set("x", objects + "1" + std::string(1500, '}')).Json()));
  EXPECT_MALFORMED_SAYING(
      "header: nested deeper than 16",
      SignedWithHeader("{\"alg\":\"ES256\",\"x\":" + open + std::string(n, ']') + "}",
                       Claims().Json()));
}

TEST(JwtJson, NestingLimitCountsTheTopObject) {
  // The claims object and 15 arrays: 16 levels, the most accepted.
  EXPECT_EQ(
      MT_JWT_OK,
      Verify(Es256(Claims().Set("x", std::string(15, '[') + std::string(15, ']')).Json())).code);
  EXPECT_MALFORMED_SAYING(
      "nested deeper than 16",
      Es256(Claims().Set("x", std::string(16, '[') + std::string(16, ']')).Json()));
}

TEST(JwtJson, RefusesEachClaimOfTheWrongTypeNamingIt) {
  struct {
    const char *claim, *json, *message;
  } cases[] = {
      {"sub", "42", "claim \"sub\" is not a string"},
      {"sub", "null", "claim \"sub\" is not a string"},
      {"sub", "[\"system:serviceaccount:default:frontend\"]", "claim \"sub\" is not a string"},
      {"iss", "{}", "claim \"iss\" is not a string"},
      {"iss", "true", "claim \"iss\" is not a string"},
      {"aud", "7", "claim \"aud\""},
      {"aud", "null", "claim \"aud\""},
      {"aud", "{\"istio-ca\":1}", "claim \"aud\""},
      {"aud", "[\"istio-ca\",1]", "claim \"aud\"[1] is not a string"},
      {"aud", "[[\"istio-ca\"]]", "claim \"aud\"[0] is not a string"},
      {"exp", "\"1700003600\"", "claim \"exp\" is not an integer"},
      {"exp", "1700003600.0", "claim \"exp\" is not an integer"},
      {"exp", "1.7e9", "claim \"exp\" is not an integer"},
      {"exp", "true", "claim \"exp\" is not an integer"},
      {"exp", "null", "claim \"exp\" is not an integer"},
      {"nbf", "\"1699999990\"", "claim \"nbf\" is not an integer"},
      {"nbf", "[1699999990]", "claim \"nbf\" is not an integer"},
      {"kubernetes.io", "[]", "claim \"kubernetes.io\" is not an object"},
  };
  for (const auto &c : cases) {
    SCOPED_TRACE(std::string(c.claim) + ": " + c.json);
    EXPECT_MALFORMED_SAYING(c.message, Es256(Claims().Set(c.claim, c.json).Json()));
  }
}

TEST(JwtJson, RefusesHeaderMembersOfTheWrongTypeNamingThem) {
  EXPECT_MALFORMED_SAYING("\"alg\" is not a string",
                          SignedWithHeader("{\"alg\":256}", Claims().Json()));
  EXPECT_MALFORMED_SAYING("\"alg\" is not a string",
                          SignedWithHeader("{\"alg\":[\"ES256\"]}", Claims().Json()));
  EXPECT_MALFORMED_SAYING("\"kid\" is not a string",
                          SignedWithHeader("{\"alg\":\"ES256\",\"kid\":7}", Claims().Json()));
}

TEST(JwtJson, ReadsTimesAsIntegersOnly) {
  // -0 is the integer 0; an exponent or a fraction is a real, never rounded.
  EXPECT_REJECTED(MT_JWT_EXPIRED, Es256(Claims().Set("exp", "-0").Json()));
  EXPECT_MALFORMED_SAYING("claim \"exp\" is not an integer",
                          Es256(Claims().Set("exp", "17000036e2").Json()));
  EXPECT_MALFORMED_SAYING("claim \"nbf\" is not an integer",
                          Es256(Claims().Set("nbf", "1699999990.0").Json()));
}

TEST(JwtJson, IatIsNotRead) {
  // Only exp and nbf decide; iat, like any claim not read, may be anything.
  EXPECT_EQ(MT_JWT_OK, Verify(Es256(Claims().Set("iat", "\"yesterday\"").Json())).code);
  EXPECT_EQ(MT_JWT_OK, Verify(Es256(Claims().Set("iat", "1.5").Json())).code);
}

TEST(JwtJson, RefusesNumbersNoIntegerOrDoubleCanHoldAnywhere) {
  // A number the parser cannot represent has no agreed value: the token is
  // refused wherever it sits, not only in exp and nbf.
  EXPECT_MALFORMED_SAYING("payload: ", Es256(Claims().Set("x", "9223372036854775808").Json()));
  EXPECT_MALFORMED_SAYING("payload: ", Es256(Claims().Set("x", "-9223372036854775809").Json()));
  EXPECT_MALFORMED_SAYING("payload: ", Es256(Claims().Set("x", "1e400").Json()));
  EXPECT_MALFORMED_SAYING("header: ",
                          SignedWithHeader("{\"alg\":\"ES256\",\"x\":1e400}", Claims().Json()));
  // In range: skipped as before.
  EXPECT_EQ(MT_JWT_OK, Verify(Es256(Claims().Set("x", "[1e300, -1e-400, 0.5]").Json())).code);
}

TEST(JwtJson, AcceptsClaimStringsUpToTheLimit) {
  std::string iss(MT_JWT_CLAIM_MAX_LEN, 'i');
  mt_jwt_expect expect;
  mt_jwt_expect_init(&expect, iss.c_str(), kAudience, kNow);
  std::string token = Es256(Claims().Set("iss", Quote(iss)).Json());
  mt_jwt_claims claims;
  mt_jwt_error err;
  ASSERT_EQ(MT_JWT_OK,
            mt_jwt_verify(BothKeys(), token.data(), token.size(), &expect, &claims, &err))
      << err.message;
  EXPECT_EQ(iss, claims.iss);
  EXPECT_MALFORMED_SAYING("claim \"iss\" is longer than 1024 bytes",
                          Es256(Claims().Set("iss", Quote(iss + "i")).Json()));
}

TEST(JwtJson, MessagesQuoteTokenBytesOnlyAsPrintableAscii) {
  std::vector<std::string> tokens = {
      Es256(Claims().Json() + " \xc3\xa9\"\\"),
      Es256(Claims().Set("x", "[1,\x7f]").Json()),
      Es256(Claims().Set("x", "\"\xc3\xa9\\q\"").Json()),
      Es256(Claims().Set("x", "tr\xc3\xa9").Json()),
      SignedWithHeader("{\"alg\":\"ES256\",\"k\xc3\xa9\":1,\"k\xc3\xa9\":2}", Claims().Json()),
      Es256("{\"a\":1, \"\\n\\u001b[31m\":1, \"\\n\\u001b[31m\":2}"),
  };
  for (const std::string &token : tokens) {
    Result r = Verify(token);
    EXPECT_EQ(MT_JWT_MALFORMED, r.code) << r.message;
    for (char c : r.message) {
      EXPECT_TRUE(c >= 0x20 && c < 0x7f) << "byte " << static_cast<int>(c) << " in " << r.message;
    }
  }
}

// ---- Size ------------------------------------------------------------------

TEST(JwtVerify, RejectsTokenOver16KiB) {
  std::string token = Es256(Claims().Set("pad", Quote(std::string(13000, 'p'))).Json());
  ASSERT_GT(token.size(), static_cast<size_t>(MT_JWT_MAX_TOKEN_LEN));
  EXPECT_REJECTED(MT_JWT_TOO_LARGE, token);
  EXPECT_REJECTED(MT_JWT_TOO_LARGE, std::string(MT_JWT_MAX_TOKEN_LEN + 1, 'a'));
}

// ---- Arguments and names ---------------------------------------------------

TEST(JwtVerify, RejectsBadArguments) {
  std::string token = Es256(Claims().Json());
  mt_jwt_expect expect;
  mt_jwt_expect_init(&expect, kIssuer, kAudience, kNow);
  mt_jwt_error err;
  EXPECT_EQ(MT_JWT_INVALID_ARGUMENT,
            mt_jwt_verify(nullptr, token.data(), token.size(), &expect, nullptr, &err));
  EXPECT_EQ(MT_JWT_INVALID_ARGUMENT, mt_jwt_verify(BothKeys(), nullptr, 0, &expect, nullptr, &err));
  EXPECT_EQ(MT_JWT_INVALID_ARGUMENT,
            mt_jwt_verify(BothKeys(), token.data(), token.size(), nullptr, nullptr, &err));
  expect.leeway_s = -1;
  EXPECT_EQ(MT_JWT_INVALID_ARGUMENT,
            mt_jwt_verify(BothKeys(), token.data(), token.size(), &expect, nullptr, &err));
  expect.leeway_s = MT_JWT_MAX_LEEWAY_S + 1;
  EXPECT_EQ(MT_JWT_INVALID_ARGUMENT,
            mt_jwt_verify(BothKeys(), token.data(), token.size(), &expect, nullptr, &err));
}

TEST(JwtVerify, DefaultLeewayIsSixtySeconds) {
  mt_jwt_expect expect;
  mt_jwt_expect_init(&expect, kIssuer, kAudience, kNow);
  EXPECT_EQ(60, expect.leeway_s);
}

TEST(JwtErrName, EveryCodeHasAName) {
  for (int e = MT_JWT_OK; e <= MT_JWT_INTERNAL; e++) {
    EXPECT_STRNE("unknown", mt_jwt_err_name(static_cast<mt_jwt_err>(e)));
  }
}

// ---- Key set ----------------------------------------------------------------

TEST(JwtKeys, LoadsEcAndRsaKeys) {
  std::string err;
  KeysPtr keys = LoadKeys("# signing keys\n" + PublicPem(EcKey()) + PublicPem(RsaKey()), &err);
  ASSERT_TRUE(keys != nullptr) << err;
  EXPECT_EQ(2u, mt_jwt_keys_count(keys.get()));
}

TEST(JwtKeys, RejectsRsaUnder2048Bits) {
  std::string err;
  EXPECT_TRUE(LoadKeys(PublicPem(NewRsaKey(1024).get()), &err) == nullptr);
  EXPECT_NE(std::string::npos, err.find("1024")) << err;
}

TEST(JwtKeys, RejectsEcKeysOffP256) {
  std::string err;
  EXPECT_TRUE(LoadKeys(PublicPem(NewEcKey(NID_secp384r1).get()), &err) == nullptr);
  EXPECT_NE(std::string::npos, err.find("P-256")) << err;
}

TEST(JwtKeys, RejectsOneBadKeyAmongGoodOnes) {
  std::string err;
  std::string pem = PublicPem(EcKey()) + PublicPem(NewEcKey(NID_secp384r1).get());
  EXPECT_TRUE(LoadKeys(pem, &err) == nullptr);
  EXPECT_NE(std::string::npos, err.find("key 2")) << err;
}

TEST(JwtKeys, RejectsOtherPemBlocks) {
  std::string err;
  EXPECT_TRUE(LoadKeys("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", &err) ==
              nullptr);
  EXPECT_FALSE(err.empty());
}

TEST(JwtKeys, RejectsEmptyAndGarbage) {
  std::string err;
  EXPECT_TRUE(LoadKeys("", &err) == nullptr);
  EXPECT_TRUE(LoadKeys("not a key", &err) == nullptr);
  EXPECT_NE(std::string::npos, err.find("no \"PUBLIC KEY\"")) << err;
  EXPECT_TRUE(LoadKeys("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", &err) ==
              nullptr);
}

// ---- Service account -> SPIFFE ID --------------------------------------------

std::string Map(const char *sub, const char *td = "example.org", size_t out_len = 256) {
  std::vector<char> out(out_len, 'Z');
  if (mt_jwt_sub_to_spiffe_id(sub, td, out.data(), out.size())) {
    return std::string(out.data());
  }
  EXPECT_EQ('\0', out[0]) << "a refusal leaves an empty string";
  return "REJECTED";
}

TEST(JwtSubToSpiffeId, MapsServiceAccount) {
  EXPECT_EQ("spiffe://example.org/ns/default/sa/frontend", Map(kSub));
  EXPECT_EQ("spiffe://cluster.local/ns/kube-system/sa/coredns.v1",
            Map("system:serviceaccount:kube-system:coredns.v1", "cluster.local"));
}

// ---- The caller's node ---------------------------------------------------------
// Kubernetes 1.30+ projected tokens bound to a pod carry
// "kubernetes.io": {"node": {"name": ...}}; node agents are scoped by it.

TEST(JwtNodeClaim, ReadsTheNodeNameOfAPodBoundToken) {
  Result r = Verify(Es256(Claims()
                              .Set("sub", Quote("system:serviceaccount:mtls-system:mtlsd-node"))
                              .Set("kubernetes.io",
                                   "{\"namespace\":\"mtls-system\","
                                   "\"node\":{\"name\":\"node-1\",\"uid\":\"6f2a\"},"
                                   "\"pod\":{\"name\":\"mtlsd-node-x7\",\"uid\":\"9b1c\"},"
                                   "\"serviceaccount\":{\"name\":\"mtlsd-node\",\"uid\":\"1d2e\"}}")
                              .Json()));
  ASSERT_EQ(MT_JWT_OK, r.code) << r.message;
  EXPECT_STREQ("node-1", r.claims.node_name);
  EXPECT_STREQ("system:serviceaccount:mtls-system:mtlsd-node", r.claims.sub);
}

TEST(JwtNodeClaim, IsEmptyWhenTheTokenNamesNoNode) {
  std::vector<std::string> tokens = {
      Es256(Claims().Json()),  // kubernetes.io without "node"
      Es256(Claims().Drop("kubernetes.io").Json()),
      Es256(Claims().Set("kubernetes.io", "{\"node\":{\"uid\":\"6f2a\"}}").Json()),
      Es256(Claims().Drop("kubernetes.io").Set("node", "{\"name\":\"node-1\"}").Json()),
  };
  for (const std::string &token : tokens) {
    Result r = Verify(token);
    ASSERT_EQ(MT_JWT_OK, r.code) << r.message;
    EXPECT_STREQ("", r.claims.node_name);
  }
}

TEST(JwtNodeClaim, AWrongTypeOnThePathMakesTheTokenMalformed) {
  struct {
    const char *kubernetes_io, *message;
  } cases[] = {
      {"\"node-1\"", "claim \"kubernetes.io\" is not an object"},
      {"{\"node\":\"node-1\"}", "claim \"kubernetes.io\".node is not an object"},
      {"{\"node\":{\"name\":7}}", "claim \"kubernetes.io\".node.name is not a string"},
      {"{\"node\":{\"name\":\"a\",\"name\":\"b\"}}", "duplicate member"},
  };
  for (const auto &c : cases) {
    Result r = Verify(Es256(Claims().Set("kubernetes.io", c.kubernetes_io).Json()));
    EXPECT_EQ(MT_JWT_MALFORMED, r.code) << c.kubernetes_io;
    EXPECT_NE(r.message.find(c.message), std::string::npos) << r.message;
    EXPECT_STREQ("", r.claims.node_name);
  }
}

TEST(JwtSubToSpiffeId, MapsTheSubOfAVerifiedToken) {
  Result r = Verify(Rs256(Claims().Json()));
  ASSERT_EQ(MT_JWT_OK, r.code) << r.message;
  EXPECT_EQ("spiffe://example.org/ns/default/sa/frontend", Map(r.claims.sub));
}

TEST(JwtSubToSpiffeId, RejectsSubjectsThatAreNotServiceAccounts) {
  for (const char *sub : {"alice", "system:node:worker-1", "system:serviceaccounts:default:x",
                          "System:serviceaccount:default:x", "", "system:serviceaccount:"}) {
    EXPECT_EQ("REJECTED", Map(sub)) << sub;
  }
}

TEST(JwtSubToSpiffeId, RejectsMalformedNamespaceOrAccount) {
  for (const char *sub :
       {"system:serviceaccount:default", "system:serviceaccount::frontend",
        "system:serviceaccount:default:", "system:serviceaccount:a/b:c",
        "system:serviceaccount:a:b/c", "system:serviceaccount:default:frontend:extra",
        "system:serviceaccount:..:x", "system:serviceaccount:x:.", "system:serviceaccount:a b:c",
        "system:serviceaccount:a%2f:c"}) {
    EXPECT_EQ("REJECTED", Map(sub)) << sub;
  }
}

TEST(JwtSubToSpiffeId, RejectsBadTrustDomain) {
  EXPECT_EQ("REJECTED", Map(kSub, "Example.org"));
  EXPECT_EQ("REJECTED", Map(kSub, ""));
  EXPECT_EQ("REJECTED", Map(kSub, "example.org/x"));
}

TEST(JwtSubToSpiffeId, RejectsTooSmallBuffer) {
  std::string id = "spiffe://example.org/ns/default/sa/frontend";
  EXPECT_EQ("REJECTED", Map(kSub, "example.org", id.size()));
  EXPECT_EQ(id, Map(kSub, "example.org", id.size() + 1));
  EXPECT_EQ(0, mt_jwt_sub_to_spiffe_id(kSub, "example.org", nullptr, 0));
}

// ---- Without an issuer (JWT-SVIDs) ------------------------------------------

Result VerifyWithoutIssuer(const std::string &token) {
  mt_jwt_expect expect;
  mt_jwt_expect_init(&expect, nullptr, kAudience, kNow);
  Result r;
  mt_jwt_error err;
  r.code = mt_jwt_verify(BothKeys(), token.data(), token.size(), &expect, &r.claims, &err);
  r.message = err.message;
  return r;
}

TEST(JwtVerifyWithoutIssuer, AcceptsATokenWithNoIss) {
  Result r = VerifyWithoutIssuer(Es256(Claims().Drop("iss").Json()));
  ASSERT_EQ(MT_JWT_OK, r.code) << r.message;
  EXPECT_STREQ(kSub, r.claims.sub);
  EXPECT_STREQ("", r.claims.iss);
}

TEST(JwtVerifyWithoutIssuer, AcceptsAnyIssButStillChecksItsType) {
  EXPECT_EQ(MT_JWT_OK,
            VerifyWithoutIssuer(Es256(Claims().Set("iss", "\"https://x.example\"").Json())).code);
  EXPECT_EQ(MT_JWT_MALFORMED, VerifyWithoutIssuer(Es256(Claims().Set("iss", "7").Json())).code);
}

TEST(JwtVerifyWithoutIssuer, StillRequiresAudienceSignatureAndExpiry) {
  EXPECT_EQ(MT_JWT_MISSING_CLAIM,
            VerifyWithoutIssuer(Es256(Claims().Drop("iss").Drop("aud").Json())).code);
  EXPECT_EQ(
      MT_JWT_EXPIRED,
      VerifyWithoutIssuer(Es256(Claims().Set("exp", std::to_string(kNow - 3600)).Json())).code);
  std::string token = Es256(Claims().Json());
  token[token.size() - 2] = token[token.size() - 2] == 'A' ? 'B' : 'A';
  EXPECT_EQ(MT_JWT_BAD_SIGNATURE, VerifyWithoutIssuer(token).code);
}

TEST(JwtVerifyPayload, HandsOverTheVerifiedPayloadAndTyp) {
  std::string payload = Claims().Json();
  std::string token =
      Token("{\"alg\":\"ES256\",\"typ\":\"JWT\"}", payload, EcKey(), Sig::kEs256Raw);
  mt_jwt_expect expect;
  mt_jwt_expect_init(&expect, kIssuer, kAudience, kNow);
  mt_jwt_claims claims;
  char *text = nullptr;
  size_t len = 0;
  ASSERT_EQ(MT_JWT_OK, mt_jwt_verify_payload(BothKeys(), token.data(), token.size(), &expect,
                                             &claims, &text, &len, nullptr));
  ASSERT_NE(text, nullptr);
  EXPECT_EQ(payload, std::string(text, len));
  EXPECT_STREQ("JWT", claims.typ);
  free(text);
}

TEST(JwtVerifyPayload, GivesNoPayloadForARefusedToken) {
  std::string token = Es256(Claims().Set("exp", std::to_string(kNow - 3600)).Json());
  mt_jwt_expect expect;
  mt_jwt_expect_init(&expect, kIssuer, kAudience, kNow);
  char *text = reinterpret_cast<char *>(1);
  EXPECT_EQ(MT_JWT_EXPIRED, mt_jwt_verify_payload(BothKeys(), token.data(), token.size(), &expect,
                                                  nullptr, &text, nullptr, nullptr));
  EXPECT_EQ(text, nullptr);
}

TEST(JwtVerifyPayload, RefusesATypThatIsNotAString) {
  std::string token =
      Token("{\"alg\":\"ES256\",\"typ\":5}", Claims().Json(), EcKey(), Sig::kEs256Raw);
  EXPECT_EQ(MT_JWT_MALFORMED, Verify(token).code);
}

}  // namespace
