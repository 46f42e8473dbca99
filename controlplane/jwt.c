/* jwt: bearer-token verification for mtls-ca. See jwt.h.
 *
 * The file has four parts:
 *   1. errors and small text helpers
 *   2. base64url (strict: no padding, canonical trailing bits)
 *   3. JSON documents: jansson, strict where tokens need it (duplicate
 *      member names, data after the object, "\u0000", nesting), and its
 *      errors in this module's words
 *   4. the key set, the header, the signature check and the claim checks. */
#include "controlplane/jwt.h"

#include "agent/errmsg.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/bytestring.h>
#include <openssl/digest.h>
#include <openssl/ec_key.h>
#include <openssl/ecdsa.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "agent/svid.h"

enum {
  MT_JWT_MIN_RSA_BITS = 2048,
  MT_JWT_MAX_RSA_BITS = 8192,          /* bounds the cost of one verification */
  MT_JWT_MAX_KEYS_PEM_LEN = 1 << 20,   /* a key file is config, but still bounded */
  MT_JWT_ES256_SIG_LEN = 64,           /* r || s, 32 bytes each */
  MT_JWT_KID_LEN = MT_JWT_KID_MAX_LEN, /* base64url(SHA-256) without padding */
  MT_JWT_SHOWN_MAX = 64,               /* untrusted text quoted in a message */
  MT_JWT_JSON_MAX_DEPTH = 16,          /* nesting of objects and arrays, the top one included */
  MT_JWT_MSG_MAX = 160,                /* one reason, before the part it concerns is added */
};

/* ==== 1. Errors and text helpers ========================================= */

static mt_jwt_err mt_jwt_fail(mt_jwt_error *err, mt_jwt_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static mt_jwt_err mt_jwt_fail(mt_jwt_error *err, mt_jwt_err code, const char *fmt, ...) {
  if (err != NULL) {
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
  }
  return code;
}

/* Token text ends up in logs: quote at most MT_JWT_SHOWN_MAX bytes and turn
 * anything but printable ASCII (and '"', '\\') into '?', so a token cannot
 * forge log lines. |out| must hold MT_JWT_SHOWN_MAX + 4 bytes. */
static const char *mt_jwt_shown(const uint8_t *s, size_t len, char *out) {
  size_t n = len < MT_JWT_SHOWN_MAX ? len : MT_JWT_SHOWN_MAX;
  for (size_t i = 0; i < n; i++) {
    out[i] = (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"' && s[i] != '\\') ? (char)s[i] : '?';
  }
  memcpy(out + n, len > n ? "..." : "", len > n ? 4 : 1);
  return out;
}

static int mt_cbs_is(CBS s, const char *lit) {
  return CBS_mem_equal(&s, (const uint8_t *)lit, strlen(lit));
}

const char *mt_jwt_err_name(mt_jwt_err code) {
  switch (code) {
    case MT_JWT_OK: return "ok";
    case MT_JWT_INVALID_ARGUMENT: return "invalid_argument";
    case MT_JWT_TOO_LARGE: return "too_large";
    case MT_JWT_MALFORMED: return "malformed";
    case MT_JWT_UNSUPPORTED_ALG: return "unsupported_alg";
    case MT_JWT_UNKNOWN_KEY: return "unknown_key";
    case MT_JWT_BAD_SIGNATURE: return "bad_signature";
    case MT_JWT_MISSING_CLAIM: return "missing_claim";
    case MT_JWT_WRONG_ISSUER: return "wrong_issuer";
    case MT_JWT_WRONG_AUDIENCE: return "wrong_audience";
    case MT_JWT_EXPIRED: return "expired";
    case MT_JWT_NOT_YET_VALID: return "not_yet_valid";
    case MT_JWT_INTERNAL: return "internal";
  }
  return "unknown";
}

/* ==== 2. base64url ========================================================== */

static const char kMtB64urlAlphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int mt_b64url_value(uint8_t c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1; /* '=', '+', '/', whitespace and everything else */
}

/* Decodes |in| into |out| (room for CBS_len(in) * 3 / 4 bytes). JWS forbids
 * padding, and a final group whose unused low bits are not zero has a second
 * spelling of the same bytes, so both are refused: every token has exactly
 * one valid encoding. */
static int mt_b64url_decode(CBS in, uint8_t *out, size_t *out_len) {
  size_t n = 0, chars = 0;
  uint32_t acc = 0;
  uint8_t c;
  if (CBS_len(&in) % 4 == 1) {
    return 0; /* 6 bits cannot make a byte */
  }
  while (CBS_get_u8(&in, &c)) {
    int v = mt_b64url_value(c);
    if (v < 0) {
      return 0;
    }
    acc = (acc << 6) | (uint32_t)v;
    if (++chars == 4) {
      out[n++] = (uint8_t)(acc >> 16);
      out[n++] = (uint8_t)(acc >> 8);
      out[n++] = (uint8_t)acc;
      acc = 0;
      chars = 0;
    }
  }
  if (chars == 2) {
    if (acc & 0xf) return 0;
    out[n++] = (uint8_t)(acc >> 4);
  } else if (chars == 3) {
    if (acc & 0x3) return 0;
    out[n++] = (uint8_t)(acc >> 10);
    out[n++] = (uint8_t)(acc >> 2);
  }
  *out_len = n;
  return 1;
}

/* Unpadded base64url of |len| bytes into |out| (room for 4 * ceil(len / 3)
 * + 1), NUL-terminated. */
void mt_jwt_b64url_encode(const uint8_t *in, size_t len, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < len; i += 3) {
    uint32_t acc = (uint32_t)in[i] << 16;
    size_t take = len - i < 3 ? len - i : 3;
    if (take > 1) acc |= (uint32_t)in[i + 1] << 8;
    if (take > 2) acc |= in[i + 2];
    for (size_t k = 0; k <= take; k++) {
      out[o++] = kMtB64urlAlphabet[(acc >> (18 - 6 * k)) & 0x3f];
    }
  }
  out[o] = '\0';
}

/* ==== 3. JSON documents (jansson) ========================================= */

/* Claims become int64_t through json_integer_value. */
_Static_assert(sizeof(json_int_t) == sizeof(int64_t), "json_int_t is not 64 bits");

/* Is |v| nested deeper than MT_JWT_JSON_MAX_DEPTH, counting the containers
 * around it (|depth|) and itself? Stops at the limit, so the walk never
 * recurses deeper than that; jansson's own limit is far higher (2048). */
static int mt_jwt_json_too_deep(json_t *v, int depth) {
  if (!json_is_object(v) && !json_is_array(v)) {
    return 0;
  }
  if (depth + 1 > MT_JWT_JSON_MAX_DEPTH) {
    return 1;
  }
  size_t i;
  json_t *child;
  const char *name;
  if (json_is_array(v)) {
    json_array_foreach(v, i, child) {
      if (mt_jwt_json_too_deep(child, depth + 1)) return 1;
    }
    return 0;
  }
  json_object_foreach(v, name, child) {
    if (mt_jwt_json_too_deep(child, depth + 1)) return 1;
  }
  return 0;
}

/* jansson's |text| reads "<reason> near '<token text>'" (token text at most
 * 20 bytes), "<reason> near end of file" or "<reason>". The reason is the
 * library's; the token text is the token's, so it is only ever shown through
 * mt_jwt_shown. Splits |text| in place; |*quoted| is NULL without one. */
static void mt_jwt_json_split(char *text, const char **quoted, size_t *quoted_len) {
  static const char kNear[] = " near '";
  char *near = strstr(text, kNear);
  *quoted = NULL;
  *quoted_len = 0;
  if (near != NULL) {
    *near = '\0';
    *quoted = near + sizeof(kNear) - 1;
    *quoted_len = strlen(*quoted);
    if (*quoted_len > 0 && (*quoted)[*quoted_len - 1] == '\'') {
      (*quoted_len)--;
    }
  }
  for (char *c = text; *c != '\0'; c++) {
    if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f) *c = '?';
  }
}

/* Why jansson refused a text, in this module's words; returns the code:
 * MT_JWT_INTERNAL when the library ran out of memory, else MALFORMED. */
static mt_jwt_err mt_jwt_json_why(const json_error_t *je, char *out, size_t out_len) {
  char text[JSON_ERROR_TEXT_LENGTH], shown[MT_JWT_SHOWN_MAX + 4];
  const char *quoted;
  size_t quoted_len;
  snprintf(text, sizeof(text), "%s", je->text);
  mt_jwt_json_split(text, &quoted, &quoted_len);
  switch (json_error_code(je)) {
    case json_error_out_of_memory:
      mt_errmsg_set(out, out_len, "out of memory");
      return MT_JWT_INTERNAL;
    case json_error_duplicate_key:
      /* The token text is the second member's name, with its quotes. */
      if (quoted_len >= 2 && quoted[0] == '"' && quoted[quoted_len - 1] == '"') {
        mt_errmsg_set(out, out_len, "duplicate member \"%s\" at byte %d",
                      mt_jwt_shown((const uint8_t *)quoted + 1, quoted_len - 2, shown),
                      je->position);
      } else {
        mt_errmsg_set(out, out_len, "duplicate member at byte %d", je->position);
      }
      return MT_JWT_MALFORMED;
    case json_error_stack_overflow:
      mt_errmsg_set(out, out_len, "nested deeper than %d at byte %d", MT_JWT_JSON_MAX_DEPTH,
                    je->position);
      return MT_JWT_MALFORMED;
    case json_error_end_of_input_expected:
      /* jansson says "near end of file" when the first byte after is a NUL. */
      mt_errmsg_set(out, out_len, "data after the JSON object at byte %d", je->position);
      return MT_JWT_MALFORMED;
    case json_error_null_character:
    case json_error_null_byte_in_key:
      mt_errmsg_set(out, out_len, "\\u0000 in a string at byte %d", je->position);
      return MT_JWT_MALFORMED;
    default: break;
  }
  if (quoted != NULL) {
    mt_errmsg_set(out, out_len, "%s near '%s' at byte %d", text,
                  mt_jwt_shown((const uint8_t *)quoted, quoted_len, shown), je->position);
  } else {
    mt_errmsg_set(out, out_len, "%s at byte %d", text, je->position);
  }
  return MT_JWT_MALFORMED;
}

/* Parses the decoded header or payload (|part| names it in messages): one
 * JSON object and nothing after it (JSON_DISABLE_EOF_CHECK is not set),
 * member names unique at every level (JSON_REJECT_DUPLICATES: RFC 7519 lets
 * a parser take the last of two "sub", another in the path could take the
 * first, so such a token must pass nowhere), no "\u0000" (JSON_ALLOW_NUL is
 * not set: claims become C strings, a NUL would cut them), at most
 * MT_JWT_JSON_MAX_DEPTH levels. jansson also refuses invalid UTF-8, unpaired
 * surrogates, control characters in strings and numbers that neither
 * json_int_t nor double can hold. On MT_JWT_OK |*out| is the document
 * (json_decref it). */
static mt_jwt_err mt_jwt_json_load(const uint8_t *json, size_t len, const char *part, json_t **out,
                                   mt_jwt_error *err) {
  json_error_t je;
  json_t *doc = json_loadb((const char *)json, len, JSON_REJECT_DUPLICATES, &je);
  *out = NULL;
  if (doc == NULL) {
    char why[MT_JWT_MSG_MAX];
    mt_jwt_err code = mt_jwt_json_why(&je, why, sizeof(why));
    return mt_jwt_fail(err, code, "%s: %s", part, why);
  }
  mt_jwt_err rc = MT_JWT_OK;
  if (!json_is_object(doc)) {
    rc = mt_jwt_fail(err, MT_JWT_MALFORMED, "%s: not a JSON object", part);
  } else if (mt_jwt_json_too_deep(doc, 0)) {
    rc = mt_jwt_fail(err, MT_JWT_MALFORMED, "%s: nested deeper than %d", part,
                     MT_JWT_JSON_MAX_DEPTH);
  }
  if (rc != MT_JWT_OK) {
    json_decref(doc);
    return rc;
  }
  *out = doc;
  return MT_JWT_OK;
}

/* ==== 4a. Key set ========================================================== */

typedef enum { MT_JWT_ALG_ES256, MT_JWT_ALG_RS256 } mt_jwt_alg;

static const char *mt_jwt_alg_name(mt_jwt_alg alg) {
  return alg == MT_JWT_ALG_ES256 ? "ES256" : "RS256";
}

typedef struct {
  EVP_PKEY *pkey;
  mt_jwt_alg alg; /* the only alg this key may verify */
  char kid[MT_JWT_KID_LEN + 1];
} mt_jwt_key;

struct mt_jwt_keys {
  mt_jwt_key *keys;
  size_t count;
};

void mt_jwt_keys_free(mt_jwt_keys *keys) {
  if (keys == NULL) {
    return;
  }
  for (size_t i = 0; i < keys->count; i++) {
    EVP_PKEY_free(keys->keys[i].pkey);
  }
  free(keys->keys);
  free(keys);
}

size_t mt_jwt_keys_count(const mt_jwt_keys *keys) { return keys != NULL ? keys->count : 0; }

/* Binds the key to its one algorithm; weak keys and other types are refused
 * at load, so the verifier never has to judge a key. */
static int mt_jwt_key_classify(const EVP_PKEY *pkey, mt_jwt_alg *alg, char *err, size_t err_len) {
  int bits = EVP_PKEY_bits(pkey);
  if (EVP_PKEY_id(pkey) == EVP_PKEY_EC) {
    const EC_GROUP *group = EC_KEY_get0_group(EVP_PKEY_get0_EC_KEY(pkey));
    if (group == NULL || EC_GROUP_get_curve_name(group) != NID_X9_62_prime256v1) {
      mt_errmsg_set(err, err_len, "EC key is not on curve P-256 (ES256 needs P-256)");
      return 0;
    }
    *alg = MT_JWT_ALG_ES256;
    return 1;
  }
  if (EVP_PKEY_id(pkey) == EVP_PKEY_RSA) {
    if (bits < MT_JWT_MIN_RSA_BITS || bits > MT_JWT_MAX_RSA_BITS) {
      mt_errmsg_set(err, err_len, "RSA key has %d bits; %d to %d are accepted", bits,
                    MT_JWT_MIN_RSA_BITS, MT_JWT_MAX_RSA_BITS);
      return 0;
    }
    *alg = MT_JWT_ALG_RS256;
    return 1;
  }
  mt_errmsg_set(err, err_len, "key is neither EC P-256 nor RSA");
  return 0;
}

/* Kubernetes' key id: base64url(SHA-256(DER SubjectPublicKeyInfo)), over
 * the canonical re-encoding so PEM quirks cannot change it. */
static int mt_jwt_key_id(const EVP_PKEY *pkey, char *kid) {
  CBB cbb;
  uint8_t *der = NULL;
  size_t der_len;
  uint8_t digest[SHA256_DIGEST_LENGTH];
  if (!CBB_init(&cbb, 128) || !EVP_marshal_public_key(&cbb, pkey) ||
      !CBB_finish(&cbb, &der, &der_len)) {
    CBB_cleanup(&cbb);
    return 0;
  }
  SHA256(der, der_len, digest);
  OPENSSL_free(der);
  mt_jwt_b64url_encode(digest, sizeof(digest), kid);
  return 1;
}

int mt_jwt_key_id_of(const EVP_PKEY *pkey, char *kid) { return mt_jwt_key_id(pkey, kid); }

/* One PEM block: a DER SubjectPublicKeyInfo with nothing after it. */
static int mt_jwt_key_parse(const char *name, const uint8_t *der, long der_len, mt_jwt_key *key,
                            char *err, size_t err_len) {
  if (strcmp(name, "PUBLIC KEY") != 0) {
    mt_errmsg_set(err, err_len, "PEM block \"%.40s\" is not a \"PUBLIC KEY\"", name);
    return 0;
  }
  CBS cbs;
  CBS_init(&cbs, der, (size_t)der_len);
  key->pkey = EVP_parse_public_key(&cbs);
  if (key->pkey == NULL || CBS_len(&cbs) != 0) {
    mt_errmsg_set(err, err_len, "PUBLIC KEY block is not a valid SubjectPublicKeyInfo");
    return 0;
  }
  if (!mt_jwt_key_classify(key->pkey, &key->alg, err, err_len)) {
    return 0;
  }
  if (!mt_jwt_key_id(key->pkey, key->kid)) {
    mt_errmsg_set(err, err_len, "out of memory");
    return 0;
  }
  return 1;
}

static int mt_jwt_keys_grow(mt_jwt_keys *keys) {
  mt_jwt_key *grown = realloc(keys->keys, (keys->count + 1) * sizeof(*grown));
  if (grown == NULL) {
    return 0;
  }
  keys->keys = grown;
  memset(&keys->keys[keys->count], 0, sizeof(*grown));
  return 1;
}

/* Reads the next PEM block into a new key. Returns 1 for a key, 0 at the
 * end of the input, -1 on an error. */
static int mt_jwt_keys_next(BIO *bio, mt_jwt_keys *keys, char *err, size_t err_len) {
  char *name = NULL, *header = NULL;
  uint8_t *der = NULL;
  long der_len = 0;
  if (!PEM_read_bio(bio, &name, &header, &der, &der_len)) {
    uint32_t e = ERR_peek_last_error();
    if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
      return 0;
    }
    mt_errmsg_set(err, err_len, "key %zu: PEM block cannot be decoded", keys->count + 1);
    return -1;
  }
  int rc = -1;
  if (!mt_jwt_keys_grow(keys)) {
    mt_errmsg_set(err, err_len, "out of memory");
  } else {
    char why[MT_JWT_MSG_MAX];
    mt_jwt_key *key = &keys->keys[keys->count++];
    if (mt_jwt_key_parse(name, der, der_len, key, why, sizeof(why))) {
      rc = 1;
    } else {
      mt_errmsg_set(err, err_len, "key %zu: %s", keys->count, why);
    }
  }
  OPENSSL_free(name);
  OPENSSL_free(header);
  OPENSSL_free(der);
  return rc;
}

mt_jwt_keys *mt_jwt_keys_load_pem(const char *pem, size_t len, char *err, size_t err_len) {
  if (pem == NULL || len == 0 || len > MT_JWT_MAX_KEYS_PEM_LEN) {
    mt_errmsg_set(err, err_len, "key PEM is empty or larger than %d bytes",
                  MT_JWT_MAX_KEYS_PEM_LEN);
    return NULL;
  }
  mt_jwt_keys *keys = calloc(1, sizeof(*keys));
  BIO *bio = BIO_new_mem_buf(pem, (int)len);
  int rc = -1;
  if (keys == NULL || bio == NULL) {
    mt_errmsg_set(err, err_len, "out of memory");
  } else {
    while ((rc = mt_jwt_keys_next(bio, keys, err, err_len)) == 1) {
    }
    if (rc == 0 && keys->count == 0) {
      mt_errmsg_set(err, err_len, "no \"PUBLIC KEY\" PEM block found");
      rc = -1;
    }
  }
  BIO_free(bio);
  ERR_clear_error();
  if (rc != 0) {
    mt_jwt_keys_free(keys);
    return NULL;
  }
  return keys;
}

/* ==== 4b. Header =========================================================== */

typedef struct {
  mt_jwt_alg alg;
  char kid[MT_JWT_KID_LEN + 1];     /* "" unless "kid" has the length of our key ids */
  char typ[MT_JWT_TYP_MAX_LEN + 1]; /* "" when absent, "~" when too long */
} mt_jwt_header;

/* alg decides the key type; kid may narrow the keys tried; "crit" names
 * extensions we would have to understand, so it is refused. typ, cty, x5t,
 * ... are informational; jku/x5u/jwk are never followed, the key always
 * comes from our own key set. */
static mt_jwt_err mt_jwt_header_read(const json_t *doc, mt_jwt_header *h, mt_jwt_error *err) {
  const json_t *alg = json_object_get(doc, "alg"), *kid = json_object_get(doc, "kid");
  const json_t *typ = json_object_get(doc, "typ");
  if (typ != NULL && !json_is_string(typ)) {
    return mt_jwt_fail(err, MT_JWT_MALFORMED, "header: \"typ\" is not a string");
  }
  if (typ != NULL) {
    snprintf(h->typ, sizeof(h->typ), "%s",
             json_string_length(typ) <= MT_JWT_TYP_MAX_LEN ? json_string_value(typ) : "~");
  }
  if (alg != NULL && !json_is_string(alg)) {
    return mt_jwt_fail(err, MT_JWT_MALFORMED, "header: \"alg\" is not a string");
  }
  if (kid != NULL && !json_is_string(kid)) {
    return mt_jwt_fail(err, MT_JWT_MALFORMED, "header: \"kid\" is not a string");
  }
  if (alg == NULL) {
    return mt_jwt_fail(err, MT_JWT_MALFORMED, "header has no \"alg\"");
  }
  const char *name = json_string_value(alg);
  if (strcmp(name, "ES256") == 0) {
    h->alg = MT_JWT_ALG_ES256;
  } else if (strcmp(name, "RS256") == 0) {
    h->alg = MT_JWT_ALG_RS256;
  } else {
    char shown[MT_JWT_SHOWN_MAX + 4];
    return mt_jwt_fail(err, MT_JWT_UNSUPPORTED_ALG, "alg \"%s\" is not accepted (ES256, RS256 are)",
                       mt_jwt_shown((const uint8_t *)name, json_string_length(alg), shown));
  }
  if (json_object_get(doc, "crit") != NULL) {
    return mt_jwt_fail(err, MT_JWT_UNSUPPORTED_ALG, "header has \"crit\" extensions");
  }
  if (kid != NULL && json_string_length(kid) == MT_JWT_KID_LEN) {
    memcpy(h->kid, json_string_value(kid), MT_JWT_KID_LEN + 1);
  }
  return MT_JWT_OK;
}

static mt_jwt_err mt_jwt_parse_header(const uint8_t *json, size_t len, mt_jwt_header *h,
                                      mt_jwt_error *err) {
  json_t *doc;
  mt_jwt_err rc = mt_jwt_json_load(json, len, "header", &doc, err);
  if (rc != MT_JWT_OK) {
    return rc;
  }
  rc = mt_jwt_header_read(doc, h, err);
  json_decref(doc);
  return rc;
}

/* ==== 4c. Signature ======================================================== */

/* JWS carries an ES256 signature as r || s (RFC 7518 3.4); BoringSSL
 * verifies the DER ECDSA-Sig-Value of X9.62. */
static int mt_jwt_es256_to_der(const uint8_t *raw, uint8_t **der, size_t *der_len) {
  ECDSA_SIG *sig = ECDSA_SIG_new();
  BIGNUM *r = BN_bin2bn(raw, MT_JWT_ES256_SIG_LEN / 2, NULL);
  BIGNUM *s = BN_bin2bn(raw + MT_JWT_ES256_SIG_LEN / 2, MT_JWT_ES256_SIG_LEN / 2, NULL);
  int ok = sig != NULL && r != NULL && s != NULL && ECDSA_SIG_set0(sig, r, s);
  if (ok) {
    r = s = NULL; /* owned by |sig| */
    ok = ECDSA_SIG_to_bytes(der, der_len, sig);
  }
  BN_free(r);
  BN_free(s);
  ECDSA_SIG_free(sig);
  return ok;
}

static int mt_jwt_verify_with(const mt_jwt_key *key, CBS input, const uint8_t *sig,
                              size_t sig_len) {
  EVP_MD_CTX ctx;
  EVP_MD_CTX_init(&ctx);
  int ok = EVP_DigestVerifyInit(&ctx, NULL, EVP_sha256(), NULL, key->pkey) &&
           EVP_DigestVerify(&ctx, sig, sig_len, CBS_data(&input), CBS_len(&input));
  EVP_MD_CTX_cleanup(&ctx);
  ERR_clear_error();
  return ok;
}

/* The key the header's kid names, or NULL. */
static const mt_jwt_key *mt_jwt_find_kid(const mt_jwt_keys *keys, const mt_jwt_header *h) {
  for (size_t i = 0; h->kid[0] != '\0' && i < keys->count; i++) {
    if (strcmp(keys->keys[i].kid, h->kid) == 0) {
      return &keys->keys[i];
    }
  }
  return NULL;
}

/* Tries the named key, or else every key bound to the header's alg. A key
 * is only ever used with its own alg: that is what stops an RS256 header
 * from being checked with an EC key and the like. */
static mt_jwt_err mt_jwt_check_keys(const mt_jwt_keys *keys, const mt_jwt_header *h, CBS input,
                                    const uint8_t *sig, size_t sig_len, mt_jwt_error *err) {
  const mt_jwt_key *named = mt_jwt_find_kid(keys, h);
  if (named != NULL) {
    if (named->alg != h->alg) {
      return mt_jwt_fail(err, MT_JWT_UNKNOWN_KEY, "kid names an %s key but alg is %s",
                         mt_jwt_alg_name(named->alg), mt_jwt_alg_name(h->alg));
    }
    return mt_jwt_verify_with(named, input, sig, sig_len)
               ? MT_JWT_OK
               : mt_jwt_fail(err, MT_JWT_BAD_SIGNATURE, "signature does not verify with key %s",
                             named->kid);
  }
  size_t tried = 0;
  for (size_t i = 0; i < keys->count; i++) {
    if (keys->keys[i].alg == h->alg) {
      tried++;
      if (mt_jwt_verify_with(&keys->keys[i], input, sig, sig_len)) {
        return MT_JWT_OK;
      }
    }
  }
  if (tried == 0) {
    return mt_jwt_fail(err, MT_JWT_UNKNOWN_KEY, "no %s key in the key set",
                       mt_jwt_alg_name(h->alg));
  }
  return mt_jwt_fail(err, MT_JWT_BAD_SIGNATURE, "signature does not verify with any of %zu %s keys",
                     tried, mt_jwt_alg_name(h->alg));
}

static mt_jwt_err mt_jwt_check_signature(const mt_jwt_keys *keys, const mt_jwt_header *h, CBS input,
                                         const uint8_t *sig, size_t sig_len, mt_jwt_error *err) {
  if (h->alg == MT_JWT_ALG_RS256) {
    return mt_jwt_check_keys(keys, h, input, sig, sig_len, err);
  }
  if (sig_len != MT_JWT_ES256_SIG_LEN) {
    return mt_jwt_fail(err, MT_JWT_BAD_SIGNATURE, "ES256 signature is %zu bytes, not %d", sig_len,
                       MT_JWT_ES256_SIG_LEN);
  }
  uint8_t *der = NULL;
  size_t der_len;
  if (!mt_jwt_es256_to_der(sig, &der, &der_len)) {
    ERR_clear_error();
    return mt_jwt_fail(err, MT_JWT_BAD_SIGNATURE, "ES256 signature cannot be converted");
  }
  mt_jwt_err rc = mt_jwt_check_keys(keys, h, input, der, der_len, err);
  OPENSSL_free(der);
  return rc;
}

/* ==== 4d. Claims =========================================================== */

typedef struct {
  const mt_jwt_expect *expect;
  int have_nbf, aud_matched;
  int64_t exp, nbf;
  char sub[MT_JWT_CLAIM_MAX_LEN + 1];
  char iss[MT_JWT_CLAIM_MAX_LEN + 1];
  char node_name[MT_JWT_CLAIM_MAX_LEN + 1];
  char aud_shown[MT_JWT_SHOWN_MAX + 4]; /* the first audience, for the message */
} mt_jwt_claim_state;

/* A string claim copied into |buf| (MT_JWT_CLAIM_MAX_LEN + 1 bytes); an
 * absent one (|v| NULL) leaves |buf| empty. Any other type is refused, so a
 * claim we read has exactly one meaning. */
static mt_jwt_err mt_jwt_claim_string(const json_t *v, const char *what, char *buf,
                                      mt_jwt_error *err) {
  if (v == NULL) {
    return MT_JWT_OK;
  }
  if (!json_is_string(v)) {
    return mt_jwt_fail(err, MT_JWT_MALFORMED, "payload: %s is not a string", what);
  }
  size_t len = json_string_length(v);
  if (len > MT_JWT_CLAIM_MAX_LEN) {
    return mt_jwt_fail(err, MT_JWT_MALFORMED, "payload: %s is longer than %d bytes", what,
                       MT_JWT_CLAIM_MAX_LEN);
  }
  memcpy(buf, json_string_value(v), len + 1);
  return MT_JWT_OK;
}

/* A NumericDate. RFC 7519 allows a fraction; no issuer we accept writes
 * one, so a real (fraction or exponent, as jansson reads it) is refused
 * rather than rounded. */
static mt_jwt_err mt_jwt_claim_time(const json_t *v, const char *what, int64_t *out,
                                    mt_jwt_error *err) {
  if (!json_is_integer(v)) {
    return mt_jwt_fail(err, MT_JWT_MALFORMED, "payload: %s is not an integer", what);
  }
  *out = json_integer_value(v);
  return MT_JWT_OK;
}

/* One audience, from the string form or from an array element. */
static void mt_jwt_on_audience(mt_jwt_claim_state *st, const json_t *aud) {
  const char *want = st->expect->audience;
  if (json_string_length(aud) == strlen(want) && strcmp(json_string_value(aud), want) == 0) {
    st->aud_matched = 1;
  }
  if (st->aud_shown[0] == '\0') {
    mt_jwt_shown((const uint8_t *)json_string_value(aud), json_string_length(aud), st->aud_shown);
  }
}

/* "aud": a string, or an array of strings (possibly empty). */
static mt_jwt_err mt_jwt_claim_aud(const json_t *aud, mt_jwt_claim_state *st, mt_jwt_error *err) {
  if (json_is_string(aud)) {
    mt_jwt_on_audience(st, aud);
    return MT_JWT_OK;
  }
  if (!json_is_array(aud)) {
    return mt_jwt_fail(err, MT_JWT_MALFORMED,
                       "payload: claim \"aud\" is not a string or an array of strings");
  }
  for (size_t i = 0; i < json_array_size(aud); i++) {
    const json_t *one = json_array_get(aud, i);
    if (!json_is_string(one)) {
      return mt_jwt_fail(err, MT_JWT_MALFORMED, "payload: claim \"aud\"[%zu] is not a string", i);
    }
    mt_jwt_on_audience(st, one);
  }
  return MT_JWT_OK;
}

/* "kubernetes.io" of a projected token: only node.name is read, and every
 * level on the way must be an object when present. */
static mt_jwt_err mt_jwt_claim_k8s(const json_t *k8s, mt_jwt_claim_state *st, mt_jwt_error *err) {
  if (!json_is_object(k8s)) {
    return mt_jwt_fail(err, MT_JWT_MALFORMED, "payload: claim \"kubernetes.io\" is not an object");
  }
  const json_t *node = json_object_get(k8s, "node");
  if (node == NULL) {
    return MT_JWT_OK;
  }
  if (!json_is_object(node)) {
    return mt_jwt_fail(err, MT_JWT_MALFORMED,
                       "payload: claim \"kubernetes.io\".node is not an object");
  }
  return mt_jwt_claim_string(json_object_get(node, "name"), "claim \"kubernetes.io\".node.name",
                             st->node_name, err);
}

/* The claims we use, each checked for its type when present; every other
 * claim (iat, jti, ...) is not looked at. */
static mt_jwt_err mt_jwt_read_claims(const json_t *doc, mt_jwt_claim_state *st, mt_jwt_error *err) {
  const json_t *aud = json_object_get(doc, "aud"), *exp = json_object_get(doc, "exp");
  const json_t *nbf = json_object_get(doc, "nbf"), *k8s = json_object_get(doc, "kubernetes.io");
  mt_jwt_err rc = mt_jwt_claim_string(json_object_get(doc, "sub"), "claim \"sub\"", st->sub, err);
  if (rc == MT_JWT_OK) {
    rc = mt_jwt_claim_string(json_object_get(doc, "iss"), "claim \"iss\"", st->iss, err);
  }
  if (rc == MT_JWT_OK && aud != NULL) rc = mt_jwt_claim_aud(aud, st, err);
  if (rc == MT_JWT_OK && exp != NULL) rc = mt_jwt_claim_time(exp, "claim \"exp\"", &st->exp, err);
  if (rc == MT_JWT_OK && nbf != NULL) rc = mt_jwt_claim_time(nbf, "claim \"nbf\"", &st->nbf, err);
  if (rc == MT_JWT_OK && k8s != NULL) rc = mt_jwt_claim_k8s(k8s, st, err);
  st->have_nbf = nbf != NULL;
  return rc;
}

static mt_jwt_err mt_jwt_check_presence(const json_t *doc, const mt_jwt_claim_state *st,
                                        mt_jwt_error *err) {
  int need_iss = st->expect->issuer != NULL;
  const char *missing = st->sub[0] == '\0'                                ? "sub"
                        : need_iss && json_object_get(doc, "iss") == NULL ? "iss"
                        : json_object_get(doc, "aud") == NULL             ? "aud"
                        : json_object_get(doc, "exp") == NULL             ? "exp"
                                                                          : NULL;
  if (missing != NULL) {
    return mt_jwt_fail(err, MT_JWT_MISSING_CLAIM, "claim \"%s\" is missing", missing);
  }
  return MT_JWT_OK;
}

/* No overflow: mt_jwt_verify bounds now_s and leeway_s first. */
static mt_jwt_err mt_jwt_check_values(const mt_jwt_claim_state *st, mt_jwt_error *err) {
  const mt_jwt_expect *e = st->expect;
  char shown[MT_JWT_SHOWN_MAX + 4];
  if (e->issuer != NULL && strcmp(st->iss, e->issuer) != 0) {
    return mt_jwt_fail(err, MT_JWT_WRONG_ISSUER, "issuer \"%s\" is not the expected one",
                       mt_jwt_shown((const uint8_t *)st->iss, strlen(st->iss), shown));
  }
  if (!st->aud_matched) {
    return mt_jwt_fail(err, MT_JWT_WRONG_AUDIENCE,
                       "audience does not include \"%s\" (first one: \"%s\")", e->audience,
                       st->aud_shown);
  }
  if (st->exp <= e->now_s - e->leeway_s) {
    return mt_jwt_fail(err, MT_JWT_EXPIRED, "token expired at %lld (now %lld, leeway %llds)",
                       (long long)st->exp, (long long)e->now_s, (long long)e->leeway_s);
  }
  if (st->have_nbf && st->nbf > e->now_s + e->leeway_s) {
    return mt_jwt_fail(err, MT_JWT_NOT_YET_VALID, "token not valid before %lld (now %lld)",
                       (long long)st->nbf, (long long)e->now_s);
  }
  return MT_JWT_OK;
}

static mt_jwt_err mt_jwt_check_claims(const uint8_t *json, size_t len, mt_jwt_claim_state *st,
                                      mt_jwt_error *err) {
  json_t *doc;
  mt_jwt_err rc = mt_jwt_json_load(json, len, "payload", &doc, err);
  if (rc != MT_JWT_OK) {
    return rc;
  }
  rc = mt_jwt_read_claims(doc, st, err);
  if (rc == MT_JWT_OK) rc = mt_jwt_check_presence(doc, st, err);
  if (rc == MT_JWT_OK) rc = mt_jwt_check_values(st, err);
  json_decref(doc);
  return rc;
}

/* ==== 4e. The whole token ================================================== */

void mt_jwt_expect_init(mt_jwt_expect *expect, const char *issuer, const char *audience,
                        int64_t now_s) {
  expect->issuer = issuer;
  expect->audience = audience;
  expect->now_s = now_s;
  expect->leeway_s = MT_JWT_DEFAULT_LEEWAY_S;
}

/* The three parts of the compact form, still encoded. */
typedef struct {
  CBS header, payload, signature;
  CBS signing_input; /* "header.payload", the bytes the signature covers */
} mt_jws_parts;

static mt_jwt_err mt_jws_split(const char *token, size_t len, mt_jws_parts *p, mt_jwt_error *err) {
  CBS in;
  CBS_init(&in, (const uint8_t *)token, len);
  if (!CBS_get_until_first(&in, &p->header, '.') || !CBS_skip(&in, 1) ||
      !CBS_get_until_first(&in, &p->payload, '.') || !CBS_skip(&in, 1)) {
    return mt_jwt_fail(err, MT_JWT_MALFORMED, "token is not three '.'-separated parts");
  }
  p->signature = in;
  CBS rest = in, dot;
  if (CBS_get_until_first(&rest, &dot, '.')) {
    return mt_jwt_fail(err, MT_JWT_MALFORMED, "token has more than three parts");
  }
  CBS_init(&p->signing_input, (const uint8_t *)token,
           CBS_len(&p->header) + 1 + CBS_len(&p->payload));
  return MT_JWT_OK;
}

/* Decodes one part into |buf| (room for the whole token), at least one byte. */
static mt_jwt_err mt_jws_decode(CBS part, const char *what, uint8_t *buf, size_t *out_len,
                                mt_jwt_error *err) {
  if (CBS_len(&part) == 0) {
    return mt_jwt_fail(err, MT_JWT_MALFORMED, "%s is empty", what);
  }
  if (!mt_b64url_decode(part, buf, out_len)) {
    return mt_jwt_fail(err, MT_JWT_MALFORMED,
                       "%s is not unpadded base64url (bad character, '=' or length)", what);
  }
  return MT_JWT_OK;
}

static mt_jwt_err mt_jwt_check_args(const mt_jwt_keys *keys, const char *token,
                                    const mt_jwt_expect *e, mt_jwt_error *err) {
  if (keys == NULL || token == NULL || e == NULL || e->audience == NULL) {
    return mt_jwt_fail(err, MT_JWT_INVALID_ARGUMENT, "keys, token or audience is NULL");
  }
  if (e->now_s < 0 || e->now_s > INT64_MAX / 2 || e->leeway_s < 0 ||
      e->leeway_s > MT_JWT_MAX_LEEWAY_S) {
    return mt_jwt_fail(err, MT_JWT_INVALID_ARGUMENT, "now or leeway (0..%d s) out of range",
                       MT_JWT_MAX_LEEWAY_S);
  }
  return MT_JWT_OK;
}

/* Scratch space for one verification: decoded parts live in |buf|. */
typedef struct {
  uint8_t *buf;
  size_t header_len, payload_len, sig_len;
  mt_jwt_header header;
  mt_jwt_claim_state claims;
} mt_jwt_work;

/* Signature first: no claim of an unauthenticated token is ever looked at. */
static mt_jwt_err mt_jwt_run(const mt_jwt_keys *keys, const mt_jws_parts *p, mt_jwt_work *w,
                             mt_jwt_error *err) {
  uint8_t *header = w->buf, *payload, *sig;
  mt_jwt_err rc = mt_jws_decode(p->header, "header", header, &w->header_len, err);
  if (rc == MT_JWT_OK) rc = mt_jwt_parse_header(header, w->header_len, &w->header, err);
  payload = header + w->header_len;
  if (rc == MT_JWT_OK) rc = mt_jws_decode(p->payload, "payload", payload, &w->payload_len, err);
  sig = payload + w->payload_len;
  if (rc == MT_JWT_OK) rc = mt_jws_decode(p->signature, "signature", sig, &w->sig_len, err);
  if (rc == MT_JWT_OK) {
    rc = mt_jwt_check_signature(keys, &w->header, p->signing_input, sig, w->sig_len, err);
  }
  if (rc == MT_JWT_OK) rc = mt_jwt_check_claims(payload, w->payload_len, &w->claims, err);
  return rc;
}

static void mt_jwt_copy_out(const mt_jwt_work *w, mt_jwt_claims *out) {
  const mt_jwt_claim_state *st = &w->claims;
  memcpy(out->typ, w->header.typ, sizeof(out->typ));
  memcpy(out->sub, st->sub, sizeof(out->sub));
  memcpy(out->iss, st->iss, sizeof(out->iss));
  memcpy(out->node_name, st->node_name, sizeof(out->node_name));
  out->exp = st->exp;
}

/* The decoded payload of a verified token, as text the caller owns. */
static char *mt_jwt_payload_copy(const mt_jwt_work *w) {
  char *text = malloc(w->payload_len + 1);
  if (text != NULL) {
    memcpy(text, w->buf + w->header_len, w->payload_len);
    text[w->payload_len] = '\0';
  }
  return text;
}

mt_jwt_err mt_jwt_verify_payload(const mt_jwt_keys *keys, const char *token, size_t len,
                                 const mt_jwt_expect *expect, mt_jwt_claims *out, char **payload,
                                 size_t *payload_len, mt_jwt_error *err) {
  if (err != NULL) {
    err->code = MT_JWT_OK;
    err->message[0] = '\0';
  }
  if (out != NULL) {
    memset(out, 0, sizeof(*out));
  }
  if (payload != NULL) *payload = NULL;
  mt_jwt_err rc = mt_jwt_check_args(keys, token, expect, err);
  if (rc != MT_JWT_OK) return rc;
  if (len > MT_JWT_MAX_TOKEN_LEN) {
    return mt_jwt_fail(err, MT_JWT_TOO_LARGE, "token is %zu bytes, more than %d", len,
                       MT_JWT_MAX_TOKEN_LEN);
  }
  mt_jws_parts parts;
  rc = mt_jws_split(token, len, &parts, err);
  if (rc != MT_JWT_OK) return rc;
  mt_jwt_work *w = calloc(1, sizeof(*w));
  if (w == NULL || (w->buf = malloc(len)) == NULL) {
    free(w);
    return mt_jwt_fail(err, MT_JWT_INTERNAL, "out of memory");
  }
  w->claims.expect = expect;
  rc = mt_jwt_run(keys, &parts, w, err);
  if (rc == MT_JWT_OK && payload != NULL) {
    *payload = mt_jwt_payload_copy(w);
    if (*payload == NULL)
      rc = mt_jwt_fail(err, MT_JWT_INTERNAL, "out of memory");
    else if (payload_len != NULL)
      *payload_len = w->payload_len;
  }
  if (rc == MT_JWT_OK && out != NULL) {
    mt_jwt_copy_out(w, out);
  }
  free(w->buf);
  free(w);
  return rc;
}

mt_jwt_err mt_jwt_verify(const mt_jwt_keys *keys, const char *token, size_t len,
                         const mt_jwt_expect *expect, mt_jwt_claims *out, mt_jwt_error *err) {
  return mt_jwt_verify_payload(keys, token, len, expect, out, NULL, NULL, err);
}

/* ==== 4f. Service account -> SPIFFE ID ===================================== */

static const char kMtSaPrefix[] = "system:serviceaccount:";

/* A name that can stand as one SPIFFE path segment on its own. */
static int mt_jwt_is_segment(CBS seg) {
  if (CBS_len(&seg) == 0 || mt_cbs_is(seg, ".") || mt_cbs_is(seg, "..")) {
    return 0;
  }
  uint8_t c;
  while (CBS_get_u8(&seg, &c)) {
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '.' || c == '-' || c == '_';
    if (!ok) {
      return 0;
    }
  }
  return 1;
}

int mt_jwt_sub_to_spiffe_id(const char *sub, const char *trust_domain, char *out, size_t out_len) {
  if (out == NULL || out_len == 0) {
    return 0;
  }
  out[0] = '\0';
  if (sub == NULL || trust_domain == NULL ||
      mt_trust_domain_validate(trust_domain, strlen(trust_domain)) != MT_SPIFFE_OK) {
    return 0;
  }
  CBS in, prefix, ns;
  CBS_init(&in, (const uint8_t *)sub, strlen(sub));
  if (!CBS_get_bytes(&in, &prefix, sizeof(kMtSaPrefix) - 1) || !mt_cbs_is(prefix, kMtSaPrefix) ||
      !CBS_get_until_first(&in, &ns, ':') || !CBS_skip(&in, 1)) {
    return 0;
  }
  /* |in| is now the service account; a second ':' fails its segment check. */
  if (!mt_jwt_is_segment(ns) || !mt_jwt_is_segment(in)) {
    return 0;
  }
  int n = snprintf(out, out_len, "spiffe://%s/ns/%.*s/sa/%.*s", trust_domain, (int)CBS_len(&ns),
                   (const char *)CBS_data(&ns), (int)CBS_len(&in), (const char *)CBS_data(&in));
  if (n < 0 || (size_t)n >= out_len || mt_spiffe_id_parse(out, (size_t)n, NULL) != MT_SPIFFE_OK) {
    out[0] = '\0';
    return 0;
  }
  return 1;
}
