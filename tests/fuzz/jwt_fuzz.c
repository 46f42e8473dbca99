/* libFuzzer target: mt_jwt_verify (controlplane/jwt.h) on arbitrary tokens.
 *
 * The first input byte picks how the rest becomes a token:
 *   0  the rest is the compact token itself ("header.payload.signature");
 *   1  the rest is the claims JSON, under {"alg":"ES256"}, signed here;
 *   2  the next byte N is a length, the following N bytes (fewer if the
 *      input ends) are the header JSON, the rest the claims JSON, signed here.
 * Modes 1 and 2 sign with an ES256 key of the key set, so the signature
 * check passes and every input reaches the JSON of the header and the claims
 * (in mode 0 the signature almost never verifies, so the claims are rarely
 * reached). The key set also holds an RSA key, so RS256 headers and kids
 * naming the other key type take their paths.
 *
 * Oracles, besides "never crashes" (ASan/UBSan, LeakSanitizer):
 *  - the result is a known mt_jwt_err with a name, err->code equals it, and
 *    verifying again (without out and err) gives the same result;
 *  - a refusal has a non-empty message of printable ASCII only (token bytes
 *    must not reach logs raw) and leaves the claims zeroed;
 *  - an accepted token has a non-empty sub, the expected iss, an exp not in
 *    the past, and every copied claim NUL-terminated within its limit;
 *  - a token signed here is never refused for its signature when jansson,
 *    read on its own here, sees alg "ES256" in its header; under the fixed
 *    header of mode 1 it is not refused for its alg or key either, and an
 *    accepted token's sub is, byte for byte, the "sub" jansson reads. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/bytestring.h>
#include <openssl/ec_key.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "controlplane/jwt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                            \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      fprintf(stderr, "jwt_fuzz: invariant failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                                                 \
    }                                                                                          \
  } while (0)

enum {
  MODE_RAW = 0,
  MODE_CLAIMS = 1,
  MODE_HEADER_AND_CLAIMS = 2,
  MODES = 3,
  ES256_HALF = 32, /* r and s, each */
  RSA_BITS = 2048,
};

static const char kIssuer[] = "https://kubernetes.default.svc.cluster.local";
static const char kAudience[] = "istio-ca";
static const int64_t kNow = 1700000000;
static const char kEs256Header[] = "{\"alg\":\"ES256\"}";

static EVP_PKEY *g_signer;  /* ES256 private key; its public half is in g_keys */
static mt_jwt_keys *g_keys; /* that EC key and an RSA key */

static void setup(void) {
  if (g_keys != NULL) return;
  EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
  CHECK(ec != NULL && EC_KEY_generate_key(ec));
  g_signer = EVP_PKEY_new();
  CHECK(g_signer != NULL && EVP_PKEY_assign_EC_KEY(g_signer, ec));

  RSA *rsa = RSA_new();
  BIGNUM *e = BN_new();
  CHECK(rsa != NULL && e != NULL && BN_set_word(e, RSA_F4));
  CHECK(RSA_generate_key_ex(rsa, RSA_BITS, e, NULL));
  BN_free(e);
  EVP_PKEY *rsa_key = EVP_PKEY_new();
  CHECK(rsa_key != NULL && EVP_PKEY_assign_RSA(rsa_key, rsa));

  BIO *bio = BIO_new(BIO_s_mem());
  CHECK(bio != NULL);
  CHECK(PEM_write_bio_PUBKEY(bio, g_signer) && PEM_write_bio_PUBKEY(bio, rsa_key));
  const uint8_t *pem;
  size_t pem_len;
  CHECK(BIO_mem_contents(bio, &pem, &pem_len));
  char err[256];
  g_keys = mt_jwt_keys_load_pem((const char *)pem, pem_len, err, sizeof(err));
  CHECK(g_keys != NULL && mt_jwt_keys_count(g_keys) == 2);
  BIO_free(bio);
  EVP_PKEY_free(rsa_key);
}

/* Unpadded base64url of |in| appended to |out|. */
static int b64url(CBB *out, const uint8_t *in, size_t len) {
  static const char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < len; i++) {
    acc = (acc << 8) | in[i];
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      if (!CBB_add_u8(out, (uint8_t)kAlphabet[(acc >> bits) & 0x3f])) return 0;
    }
  }
  return bits == 0 || CBB_add_u8(out, (uint8_t)kAlphabet[(acc << (6 - bits)) & 0x3f]);
}

/* header.payload.signature, signed ES256 (r || s) with g_signer. Returns a
 * buffer to OPENSSL_free, or NULL when out of memory. */
static uint8_t *sign_token(const uint8_t *header, size_t header_len, const uint8_t *payload,
                           size_t payload_len, size_t *token_len) {
  CBB cbb;
  uint8_t *token = NULL, *der = NULL;
  size_t der_len = 0;
  uint8_t raw[2 * ES256_HALF];
  ECDSA_SIG *sig = NULL;
  EVP_MD_CTX ctx;
  EVP_MD_CTX_init(&ctx);
  int ok = CBB_init(&cbb, 4 * (header_len + payload_len) / 3 + 128) &&
           b64url(&cbb, header, header_len) && CBB_add_u8(&cbb, '.') &&
           b64url(&cbb, payload, payload_len);
  size_t input_len = ok ? CBB_len(&cbb) : 0;
  ok = ok && EVP_DigestSignInit(&ctx, NULL, EVP_sha256(), NULL, g_signer) &&
       EVP_DigestSign(&ctx, NULL, &der_len, CBB_data(&cbb), input_len) &&
       (der = OPENSSL_malloc(der_len)) != NULL &&
       EVP_DigestSign(&ctx, der, &der_len, CBB_data(&cbb), input_len) &&
       (sig = ECDSA_SIG_from_bytes(der, der_len)) != NULL &&
       BN_bn2bin_padded(raw, ES256_HALF, ECDSA_SIG_get0_r(sig)) &&
       BN_bn2bin_padded(raw + ES256_HALF, ES256_HALF, ECDSA_SIG_get0_s(sig)) &&
       CBB_add_u8(&cbb, '.') && b64url(&cbb, raw, sizeof(raw)) &&
       CBB_finish(&cbb, &token, token_len);
  if (!ok) CBB_cleanup(&cbb);
  ECDSA_SIG_free(sig);
  OPENSSL_free(der);
  EVP_MD_CTX_cleanup(&ctx);
  return token;
}

/* Does jansson, read on its own here, see "alg": "ES256" in |header|? */
static int header_says_es256(const uint8_t *header, size_t len) {
  json_t *doc = json_loadb((const char *)header, len, JSON_REJECT_DUPLICATES, NULL);
  const char *alg = json_string_value(json_object_get(doc, "alg"));
  int es256 = alg != NULL && strcmp(alg, "ES256") == 0;
  json_decref(doc);
  return es256;
}

/* The "sub" string jansson reads from |claims| equals |sub|. */
static int claims_sub_is(const uint8_t *claims, size_t len, const char *sub) {
  json_t *doc = json_loadb((const char *)claims, len, JSON_REJECT_DUPLICATES, NULL);
  const json_t *v = json_object_get(doc, "sub");
  int same = json_is_string(v) && json_string_length(v) == strlen(sub) &&
             memcmp(json_string_value(v), sub, strlen(sub)) == 0;
  json_decref(doc);
  return same;
}

static int terminated_within(const char *s, size_t cap) { return memchr(s, '\0', cap) != NULL; }

static void check_outcome(mt_jwt_err rc, const mt_jwt_error *err, const mt_jwt_claims *out,
                          const mt_jwt_expect *expect) {
  CHECK(rc >= MT_JWT_OK && rc <= MT_JWT_INTERNAL);
  CHECK(strcmp(mt_jwt_err_name(rc), "unknown") != 0);
  CHECK(err->code == rc);
  CHECK(terminated_within(err->message, sizeof(err->message)));
  if (rc != MT_JWT_OK) {
    CHECK(err->message[0] != '\0');
    for (const char *c = err->message; *c != '\0'; c++) {
      CHECK((unsigned char)*c >= 0x20 && (unsigned char)*c < 0x7f);
    }
    static const mt_jwt_claims kZero;
    CHECK(memcmp(out, &kZero, sizeof(kZero)) == 0);
    return;
  }
  CHECK(terminated_within(out->sub, sizeof(out->sub)) && out->sub[0] != '\0');
  CHECK(terminated_within(out->iss, sizeof(out->iss)) && strcmp(out->iss, kIssuer) == 0);
  CHECK(terminated_within(out->node_name, sizeof(out->node_name)));
  CHECK(out->exp > expect->now_s - expect->leeway_s);
}

/* Verifies |token|; returns the result after the generic oracles. */
static mt_jwt_err verify(const uint8_t *token, size_t len, mt_jwt_claims *out) {
  mt_jwt_expect expect;
  mt_jwt_expect_init(&expect, kIssuer, kAudience, kNow);
  mt_jwt_error err;
  memset(out, 0xA5, sizeof(*out)); /* garbage, so a field left unset shows */
  memset(&err, 0xA5, sizeof(err));
  mt_jwt_err rc = mt_jwt_verify(g_keys, (const char *)token, len, &expect, out, &err);
  check_outcome(rc, &err, out, &expect);
  CHECK(mt_jwt_verify(g_keys, (const char *)token, len, &expect, NULL, NULL) == rc);
  return rc;
}

static void check_signed(const uint8_t *header, size_t header_len, const uint8_t *claims,
                         size_t claims_len, int fixed_header) {
  size_t token_len;
  uint8_t *token = sign_token(header, header_len, claims, claims_len, &token_len);
  if (token == NULL) return;
  mt_jwt_claims out;
  mt_jwt_err rc = verify(token, token_len, &out);
  if (fixed_header) {
    CHECK(rc != MT_JWT_BAD_SIGNATURE && rc != MT_JWT_UNKNOWN_KEY && rc != MT_JWT_UNSUPPORTED_ALG);
    if (rc == MT_JWT_OK) CHECK(claims_sub_is(claims, claims_len, out.sub));
  } else if (header_says_es256(header, header_len)) {
    /* A kid may name the RSA key (UNKNOWN_KEY) and "crit" is refused, but
     * the signature itself always verifies. */
    CHECK(rc != MT_JWT_BAD_SIGNATURE);
  }
  OPENSSL_free(token);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  setup();
  if (size == 0) return 0;
  const uint8_t *rest = data + 1;
  size_t rest_len = size - 1;
  mt_jwt_claims out;
  switch (data[0] % MODES) {
    case MODE_RAW: verify(rest, rest_len, &out); break;
    case MODE_CLAIMS:
      check_signed((const uint8_t *)kEs256Header, strlen(kEs256Header), rest, rest_len, 1);
      break;
    case MODE_HEADER_AND_CLAIMS: {
      if (rest_len == 0) return 0;
      size_t header_len = rest[0] < rest_len - 1 ? rest[0] : rest_len - 1;
      check_signed(rest + 1, header_len, rest + 1 + header_len, rest_len - 1 - header_len, 0);
      break;
    }
  }
  return 0;
}
