/* jwt: bearer-token verification for mtls-ca. See jwt.h.
 *
 * The file has four parts, each only as general as tokens need:
 *   1. errors and small text helpers
 *   2. base64url (strict: no padding, canonical trailing bits)
 *   3. a strict JSON reader (objects, arrays, strings, integers; the rest
 *      skipped; duplicate member names refused)
 *   4. the key set, the signature check and the claim checks. */
#include "controlplane/jwt.h"

#include "agent/errmsg.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
  MT_JWT_MAX_RSA_BITS = 8192,        /* bounds the cost of one verification */
  MT_JWT_MAX_KEYS_PEM_LEN = 1 << 20, /* a key file is config, but still bounded */
  MT_JWT_ES256_SIG_LEN = 64,         /* r || s, 32 bytes each */
  MT_JWT_KID_LEN = 43,               /* base64url(SHA-256) without padding */
  MT_JWT_SHOWN_MAX = 64,             /* untrusted text quoted in a message */
  MT_JSON_MAX_DEPTH = 16,            /* nesting of objects and arrays */
  MT_JSON_MSG_MAX = 160,
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
static void mt_b64url_encode(const uint8_t *in, size_t len, char *out) {
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

/* ==== 3. Strict JSON reader =============================================== */

/* A cursor over one JSON text plus the first error found in it. */
typedef struct {
  CBS in;
  size_t total;
  char msg[MT_JSON_MSG_MAX];
} mt_json;

static int mt_json_fail(mt_json *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int mt_json_fail(mt_json *j, const char *fmt, ...) {
  if (j->msg[0] == '\0') {
    char what[MT_JSON_MSG_MAX - 32];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    snprintf(j->msg, sizeof(j->msg), "%s at byte %zu", what, j->total - CBS_len(&j->in));
  }
  return 0;
}

static void mt_json_init(mt_json *j, const uint8_t *data, size_t len) {
  CBS_init(&j->in, data, len);
  j->total = len;
  j->msg[0] = '\0';
}

/* The next byte without consuming it, or -1 at the end. */
static int mt_json_peek(const mt_json *j) { return CBS_len(&j->in) > 0 ? CBS_data(&j->in)[0] : -1; }

static void mt_json_ws(mt_json *j) {
  int c;
  while ((c = mt_json_peek(j)) == ' ' || c == '\t' || c == '\n' || c == '\r') {
    CBS_skip(&j->in, 1);
  }
}

/* Skips whitespace, then consumes |want| if it is next. */
static int mt_json_accept(mt_json *j, uint8_t want) {
  mt_json_ws(j);
  if (mt_json_peek(j) != want) {
    return 0;
  }
  CBS_skip(&j->in, 1);
  return 1;
}

static int mt_json_expect(mt_json *j, uint8_t want) {
  return mt_json_accept(j, want) || mt_json_fail(j, "expected '%c'", want);
}

/* Appends |cp| as UTF-8; |out| NULL means "validate only". */
static int mt_json_put_utf8(mt_json *j, CBB *out, uint32_t cp) {
  if (out == NULL) {
    return 1;
  }
  int ok;
  if (cp < 0x80) {
    ok = CBB_add_u8(out, (uint8_t)cp);
  } else if (cp < 0x800) {
    ok = CBB_add_u8(out, (uint8_t)(0xc0 | (cp >> 6))) && CBB_add_u8(out, 0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    ok = CBB_add_u8(out, (uint8_t)(0xe0 | (cp >> 12))) &&
         CBB_add_u8(out, 0x80 | ((cp >> 6) & 0x3f)) && CBB_add_u8(out, 0x80 | (cp & 0x3f));
  } else {
    ok = CBB_add_u8(out, (uint8_t)(0xf0 | (cp >> 18))) &&
         CBB_add_u8(out, 0x80 | ((cp >> 12) & 0x3f)) &&
         CBB_add_u8(out, 0x80 | ((cp >> 6) & 0x3f)) && CBB_add_u8(out, 0x80 | (cp & 0x3f));
  }
  return ok || mt_json_fail(j, "out of memory");
}

/* One multi-byte UTF-8 sequence whose lead byte was read. Overlong forms,
 * surrogates and code points past U+10FFFF are refused (RFC 3629), so two
 * different byte strings never decode to the same claim. */
static int mt_json_utf8(mt_json *j, uint8_t lead, CBB *out) {
  size_t extra;
  uint32_t cp, min;
  if (lead >= 0xc2 && lead <= 0xdf) {
    extra = 1, cp = lead & 0x1f, min = 0x80;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    extra = 2, cp = lead & 0x0f, min = 0x800;
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    extra = 3, cp = lead & 0x07, min = 0x10000;
  } else {
    return mt_json_fail(j, "invalid UTF-8");
  }
  for (size_t i = 0; i < extra; i++) {
    uint8_t c;
    if (!CBS_get_u8(&j->in, &c) || (c & 0xc0) != 0x80) {
      return mt_json_fail(j, "invalid UTF-8");
    }
    cp = (cp << 6) | (c & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
    return mt_json_fail(j, "invalid UTF-8");
  }
  return mt_json_put_utf8(j, out, cp);
}

static int mt_json_hex4(mt_json *j, uint32_t *out) {
  *out = 0;
  for (int i = 0; i < 4; i++) {
    uint8_t c;
    int v = -1;
    if (CBS_get_u8(&j->in, &c)) {
      if (c >= '0' && c <= '9') v = c - '0';
      if (c >= 'a' && c <= 'f') v = c - 'a' + 10;
      if (c >= 'A' && c <= 'F') v = c - 'A' + 10;
    }
    if (v < 0) {
      return mt_json_fail(j, "bad \\u escape");
    }
    *out = (*out << 4) | (uint32_t)v;
  }
  return 1;
}

/* "\uXXXX", after the "\u". A UTF-16 surrogate must come as a proper pair.
 * U+0000 is refused: claims become C strings, and a NUL would cut them. */
static int mt_json_unicode_escape(mt_json *j, CBB *out) {
  uint32_t cp, lo;
  if (!mt_json_hex4(j, &cp)) {
    return 0;
  }
  if (cp >= 0xdc00 && cp <= 0xdfff) {
    return mt_json_fail(j, "unpaired surrogate in \\u escape");
  }
  if (cp >= 0xd800 && cp <= 0xdbff) {
    uint8_t bs, u;
    if (!CBS_get_u8(&j->in, &bs) || bs != '\\' || !CBS_get_u8(&j->in, &u) || u != 'u' ||
        !mt_json_hex4(j, &lo) || lo < 0xdc00 || lo > 0xdfff) {
      return mt_json_fail(j, "unpaired surrogate in \\u escape");
    }
    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
  }
  if (cp == 0) {
    return mt_json_fail(j, "\\u0000 in a string");
  }
  return mt_json_put_utf8(j, out, cp);
}

static int mt_json_escape(mt_json *j, CBB *out) {
  uint8_t c;
  if (!CBS_get_u8(&j->in, &c)) {
    return mt_json_fail(j, "unterminated string");
  }
  switch (c) {
    case '"':
    case '\\':
    case '/': return mt_json_put_utf8(j, out, c);
    case 'b': return mt_json_put_utf8(j, out, '\b');
    case 'f': return mt_json_put_utf8(j, out, '\f');
    case 'n': return mt_json_put_utf8(j, out, '\n');
    case 'r': return mt_json_put_utf8(j, out, '\r');
    case 't': return mt_json_put_utf8(j, out, '\t');
    case 'u': return mt_json_unicode_escape(j, out);
    default: return mt_json_fail(j, "bad escape '\\%c'", c >= 0x20 && c < 0x7f ? c : '?');
  }
}

/* A string value, decoded into |out| (NULL: validated and skipped). */
static int mt_json_string(mt_json *j, CBB *out) {
  uint8_t c;
  if (!mt_json_accept(j, '"')) {
    return mt_json_fail(j, "expected a string");
  }
  for (;;) {
    if (!CBS_get_u8(&j->in, &c)) {
      return mt_json_fail(j, "unterminated string");
    }
    if (c == '"') {
      return 1;
    }
    int ok = c == '\\'  ? mt_json_escape(j, out)
             : c < 0x20 ? mt_json_fail(j, "control character in a string")
             : c < 0x80 ? mt_json_put_utf8(j, out, c)
                        : mt_json_utf8(j, c, out);
    if (!ok) {
      return 0;
    }
  }
}

/* Decodes the string at the cursor into a new buffer the caller releases
 * with OPENSSL_free. |what| names the value in the error. */
static int mt_json_string_dup(mt_json *j, const char *what, uint8_t **out, size_t *out_len) {
  CBB cbb;
  mt_json_ws(j);
  if (mt_json_peek(j) != '"') {
    return mt_json_fail(j, "%s is not a string", what);
  }
  if (!CBB_init(&cbb, 64)) {
    return mt_json_fail(j, "out of memory");
  }
  if (!mt_json_string(j, &cbb) || !CBB_finish(&cbb, out, out_len)) {
    CBB_cleanup(&cbb);
    return mt_json_fail(j, "out of memory");
  }
  return 1;
}

static int mt_json_digits(mt_json *j) {
  int c, n = 0;
  while ((c = mt_json_peek(j)) >= '0' && c <= '9') {
    CBS_skip(&j->in, 1);
    n++;
  }
  return n > 0 || mt_json_fail(j, "expected a digit");
}

/* The integer part, -?(0|[1-9][0-9]*), shared by both number readers. */
static int mt_json_int_part(mt_json *j, int *negative) {
  *negative = mt_json_accept(j, '-');
  int c = mt_json_peek(j);
  if (c == '0') {
    CBS_skip(&j->in, 1);
    return 1;
  }
  if (c < '1' || c > '9') {
    return mt_json_fail(j, "expected a number");
  }
  return mt_json_digits(j);
}

/* Any RFC 8259 number, skipped. */
static int mt_json_skip_number(mt_json *j) {
  int negative;
  if (!mt_json_int_part(j, &negative)) {
    return 0;
  }
  if (mt_json_peek(j) == '.') {
    CBS_skip(&j->in, 1);
    if (!mt_json_digits(j)) return 0;
  }
  int c = mt_json_peek(j);
  if (c == 'e' || c == 'E') {
    CBS_skip(&j->in, 1);
    c = mt_json_peek(j);
    if (c == '+' || c == '-') CBS_skip(&j->in, 1);
    if (!mt_json_digits(j)) return 0;
  }
  return 1;
}

/* An integer that fits int64_t. NumericDate may have a fraction in general;
 * no issuer we accept writes one, so a fraction or exponent is refused
 * rather than rounded. */
static int mt_json_int64(mt_json *j, const char *what, int64_t *out) {
  mt_json_ws(j);
  CBS start = j->in;
  int negative, c = mt_json_peek(j);
  if (c != '-' && (c < '0' || c > '9')) {
    return mt_json_fail(j, "%s is not an integer", what);
  }
  if (!mt_json_int_part(j, &negative)) {
    return 0;
  }
  c = mt_json_peek(j);
  if (c == '.' || c == 'e' || c == 'E') {
    return mt_json_fail(j, "%s is not an integer", what);
  }
  CBS digits;
  CBS_get_bytes(&start, &digits, CBS_len(&start) - CBS_len(&j->in));
  CBS_skip(&digits, negative ? 1 : 0);
  uint64_t v = 0, limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
  uint8_t d;
  while (CBS_get_u8(&digits, &d)) {
    if (v > (limit - (uint64_t)(d - '0')) / 10) {
      return mt_json_fail(j, "%s does not fit in 64 bits", what);
    }
    v = v * 10 + (uint64_t)(d - '0');
  }
  *out = negative ? (int64_t)(0 - v) : (int64_t)v;
  return 1;
}

static int mt_json_literal(mt_json *j) {
  static const char *const kLiterals[] = {"true", "false", "null"};
  for (size_t i = 0; i < sizeof(kLiterals) / sizeof(kLiterals[0]); i++) {
    size_t n = strlen(kLiterals[i]);
    CBS head;
    if (CBS_len(&j->in) >= n) {
      CBS_init(&head, CBS_data(&j->in), n);
      if (CBS_mem_equal(&head, (const uint8_t *)kLiterals[i], n)) {
        return CBS_skip(&j->in, n);
      }
    }
  }
  return mt_json_fail(j, "expected a value");
}

/* Called for each member of an object, with the cursor before its value;
 * it must consume exactly that value. |depth| counts enclosing containers. */
typedef int (*mt_json_on_member)(mt_json *j, void *ctx, CBS name, int depth);
typedef int (*mt_json_on_element)(mt_json *j, void *ctx, int depth);

static int mt_json_skip_value(mt_json *j, int depth);

static int mt_json_skip_member(mt_json *j, void *ctx, CBS name, int depth) {
  (void)ctx, (void)name;
  return mt_json_skip_value(j, depth);
}

static int mt_json_skip_element(mt_json *j, void *ctx, int depth) {
  (void)ctx;
  return mt_json_skip_value(j, depth);
}

/* Was a member called |name| already seen? |seen| holds the object's names
 * so far, each with a 16-bit length prefix (a name cannot exceed a token). */
static int mt_json_name_seen(const uint8_t *seen, size_t seen_len, CBS name) {
  CBS list, prev;
  CBS_init(&list, seen, seen_len);
  while (CBS_get_u16_length_prefixed(&list, &prev)) {
    if (CBS_len(&prev) == CBS_len(&name) &&
        memcmp(CBS_data(&prev), CBS_data(&name), CBS_len(&name)) == 0) {
      return 1;
    }
  }
  return 0;
}

/* Reads one member name into |seen| and refuses a duplicate: RFC 7519 lets a
 * parser take the last of two "sub" members, and a second parser in the path
 * could take the first, so a token with one must not pass anywhere. */
static int mt_json_member_name(mt_json *j, CBB *seen, CBS *name) {
  CBB child;
  size_t before = CBB_len(seen);
  if (!CBB_add_u16_length_prefixed(seen, &child) || !mt_json_string(j, &child) ||
      !CBB_flush(seen)) {
    return mt_json_fail(j, "expected a member name");
  }
  const uint8_t *all = CBB_data(seen);
  CBS_init(name, all + before + 2, CBB_len(seen) - before - 2);
  if (mt_json_name_seen(all, before, *name)) {
    char shown[MT_JWT_SHOWN_MAX + 4];
    return mt_json_fail(j, "duplicate member \"%s\"",
                        mt_jwt_shown(CBS_data(name), CBS_len(name), shown));
  }
  return 1;
}

static int mt_json_object_members(mt_json *j, CBB *seen, mt_json_on_member on_member, void *ctx,
                                  int depth) {
  if (mt_json_accept(j, '}')) {
    return 1;
  }
  do {
    CBS name;
    if (!mt_json_member_name(j, seen, &name) || !mt_json_expect(j, ':') ||
        !on_member(j, ctx, name, depth)) {
      return 0;
    }
  } while (mt_json_accept(j, ','));
  return mt_json_expect(j, '}');
}

/* An object whose members go to |on_member|; its values sit at depth + 1. */
static int mt_json_object(mt_json *j, mt_json_on_member on_member, void *ctx, int depth) {
  if (depth + 1 > MT_JSON_MAX_DEPTH) {
    return mt_json_fail(j, "nested deeper than %d", MT_JSON_MAX_DEPTH);
  }
  if (!mt_json_expect(j, '{')) {
    return 0;
  }
  CBB seen;
  if (!CBB_init(&seen, 64)) {
    return mt_json_fail(j, "out of memory");
  }
  int ok = mt_json_object_members(j, &seen, on_member, ctx, depth + 1);
  CBB_cleanup(&seen);
  return ok;
}

static int mt_json_array(mt_json *j, mt_json_on_element on_element, void *ctx, int depth) {
  if (depth + 1 > MT_JSON_MAX_DEPTH) {
    return mt_json_fail(j, "nested deeper than %d", MT_JSON_MAX_DEPTH);
  }
  if (!mt_json_expect(j, '[')) {
    return 0;
  }
  if (mt_json_accept(j, ']')) {
    return 1;
  }
  do {
    if (!on_element(j, ctx, depth + 1)) {
      return 0;
    }
  } while (mt_json_accept(j, ','));
  return mt_json_expect(j, ']');
}

static int mt_json_skip_value(mt_json *j, int depth) {
  mt_json_ws(j);
  switch (mt_json_peek(j)) {
    case '"': return mt_json_string(j, NULL);
    case '{': return mt_json_object(j, mt_json_skip_member, NULL, depth);
    case '[': return mt_json_array(j, mt_json_skip_element, NULL, depth);
    case 't':
    case 'f':
    case 'n': return mt_json_literal(j);
    case -1: return mt_json_fail(j, "expected a value");
    default: return mt_json_skip_number(j);
  }
}

/* A whole JSON text that must be one object, with nothing after it. */
static int mt_json_document(mt_json *j, mt_json_on_member on_member, void *ctx) {
  mt_json_ws(j);
  if (mt_json_peek(j) != '{') {
    return mt_json_fail(j, "not a JSON object");
  }
  if (!mt_json_object(j, on_member, ctx, 0)) {
    return 0;
  }
  mt_json_ws(j);
  return CBS_len(&j->in) == 0 || mt_json_fail(j, "data after the JSON object");
}

static int mt_cbs_is(CBS s, const char *lit) {
  return CBS_mem_equal(&s, (const uint8_t *)lit, strlen(lit));
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
  mt_b64url_encode(digest, sizeof(digest), kid);
  return 1;
}

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
    char why[MT_JSON_MSG_MAX];
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
  int have_alg, alg_supported, have_crit;
  mt_jwt_alg alg;
  char alg_shown[MT_JWT_SHOWN_MAX + 4];
  uint8_t *kid; /* decoded, OPENSSL_free'd by the verifier; NULL when absent */
  size_t kid_len;
} mt_jwt_header;

static int mt_jwt_on_header_alg(mt_json *j, mt_jwt_header *h) {
  uint8_t *alg;
  size_t alg_len;
  if (!mt_json_string_dup(j, "header \"alg\"", &alg, &alg_len)) {
    return 0;
  }
  CBS s;
  CBS_init(&s, alg, alg_len);
  h->have_alg = 1;
  h->alg_supported = mt_cbs_is(s, "ES256") || mt_cbs_is(s, "RS256");
  h->alg = mt_cbs_is(s, "ES256") ? MT_JWT_ALG_ES256 : MT_JWT_ALG_RS256;
  mt_jwt_shown(alg, alg_len, h->alg_shown);
  OPENSSL_free(alg);
  return 1;
}

static int mt_jwt_on_header_member(mt_json *j, void *ctx, CBS name, int depth) {
  mt_jwt_header *h = ctx;
  if (mt_cbs_is(name, "alg")) {
    return mt_jwt_on_header_alg(j, h);
  }
  if (mt_cbs_is(name, "kid")) {
    return mt_json_string_dup(j, "header \"kid\"", &h->kid, &h->kid_len);
  }
  if (mt_cbs_is(name, "crit")) {
    h->have_crit = 1;
  }
  /* typ, cty, x5t, ...: informational; jku/x5u/jwk are never followed, the
   * key always comes from our own key set. */
  return mt_json_skip_value(j, depth);
}

static mt_jwt_err mt_jwt_parse_header(const uint8_t *json, size_t len, mt_jwt_header *h,
                                      mt_jwt_error *err) {
  mt_json j;
  mt_json_init(&j, json, len);
  if (!mt_json_document(&j, mt_jwt_on_header_member, h)) {
    return mt_jwt_fail(err, MT_JWT_MALFORMED, "header: %s", j.msg);
  }
  if (!h->have_alg) {
    return mt_jwt_fail(err, MT_JWT_MALFORMED, "header has no \"alg\"");
  }
  if (!h->alg_supported) {
    return mt_jwt_fail(err, MT_JWT_UNSUPPORTED_ALG, "alg \"%s\" is not accepted (ES256, RS256 are)",
                       h->alg_shown);
  }
  if (h->have_crit) {
    return mt_jwt_fail(err, MT_JWT_UNSUPPORTED_ALG, "header has \"crit\" extensions");
  }
  return MT_JWT_OK;
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
  for (size_t i = 0; h->kid != NULL && i < keys->count; i++) {
    if (h->kid_len == MT_JWT_KID_LEN && memcmp(keys->keys[i].kid, h->kid, h->kid_len) == 0) {
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
  int have_sub, have_iss, have_aud, have_exp, have_nbf, aud_matched;
  int64_t exp, nbf;
  char sub[MT_JWT_CLAIM_MAX_LEN + 1];
  char iss[MT_JWT_CLAIM_MAX_LEN + 1];
  char node_name[MT_JWT_CLAIM_MAX_LEN + 1];
  char aud_shown[MT_JWT_SHOWN_MAX + 4]; /* the first audience, for the message */
} mt_jwt_claim_state;

/* A string claim copied into |buf| (MT_JWT_CLAIM_MAX_LEN + 1 bytes). */
static int mt_jwt_claim_string(mt_json *j, const char *what, char *buf) {
  uint8_t *s;
  size_t len;
  if (!mt_json_string_dup(j, what, &s, &len)) {
    return 0;
  }
  int ok = len <= MT_JWT_CLAIM_MAX_LEN;
  if (ok) {
    memcpy(buf, s, len);
    buf[len] = '\0';
  }
  OPENSSL_free(s);
  return ok || mt_json_fail(j, "%s is longer than %d bytes", what, MT_JWT_CLAIM_MAX_LEN);
}

/* One audience, from the string form or from an array element. */
static int mt_jwt_on_audience(mt_json *j, void *ctx, int depth) {
  mt_jwt_claim_state *st = ctx;
  uint8_t *aud;
  size_t len;
  (void)depth;
  if (!mt_json_string_dup(j, "claim \"aud\" (or one of its elements)", &aud, &len)) {
    return 0;
  }
  const char *want = st->expect->audience;
  if (len == strlen(want) && memcmp(aud, want, len) == 0) {
    st->aud_matched = 1;
  }
  if (st->aud_shown[0] == '\0') {
    mt_jwt_shown(aud, len, st->aud_shown);
  }
  OPENSSL_free(aud);
  return 1;
}

static int mt_jwt_on_aud(mt_json *j, mt_jwt_claim_state *st, int depth) {
  st->have_aud = 1;
  mt_json_ws(j);
  if (mt_json_peek(j) == '[') {
    return mt_json_array(j, mt_jwt_on_audience, st, depth);
  }
  return mt_jwt_on_audience(j, st, depth);
}

/* An object value whose members go to |on_member|; any other type is
 * refused, so a claim we read has exactly one meaning. */
static int mt_jwt_claim_object(mt_json *j, const char *what, mt_json_on_member on_member, void *ctx,
                               int depth) {
  mt_json_ws(j);
  if (mt_json_peek(j) != '{') {
    return mt_json_fail(j, "%s is not an object", what);
  }
  return mt_json_object(j, on_member, ctx, depth);
}

static int mt_jwt_on_k8s_node_member(mt_json *j, void *ctx, CBS name, int depth) {
  mt_jwt_claim_state *st = ctx;
  if (mt_cbs_is(name, "name")) {
    return mt_jwt_claim_string(j, "claim \"kubernetes.io\".node.name", st->node_name);
  }
  return mt_json_skip_value(j, depth);
}

/* "kubernetes.io" of a projected token: only node.name is read. */
static int mt_jwt_on_k8s_member(mt_json *j, void *ctx, CBS name, int depth) {
  if (mt_cbs_is(name, "node")) {
    return mt_jwt_claim_object(j, "claim \"kubernetes.io\".node", mt_jwt_on_k8s_node_member, ctx,
                               depth);
  }
  return mt_json_skip_value(j, depth);
}

static int mt_jwt_on_claim(mt_json *j, void *ctx, CBS name, int depth) {
  mt_jwt_claim_state *st = ctx;
  if (mt_cbs_is(name, "sub")) {
    st->have_sub = 1;
    return mt_jwt_claim_string(j, "claim \"sub\"", st->sub);
  }
  if (mt_cbs_is(name, "iss")) {
    st->have_iss = 1;
    return mt_jwt_claim_string(j, "claim \"iss\"", st->iss);
  }
  if (mt_cbs_is(name, "aud")) {
    return mt_jwt_on_aud(j, st, depth);
  }
  if (mt_cbs_is(name, "exp")) {
    st->have_exp = 1;
    return mt_json_int64(j, "claim \"exp\"", &st->exp);
  }
  if (mt_cbs_is(name, "nbf")) {
    st->have_nbf = 1;
    return mt_json_int64(j, "claim \"nbf\"", &st->nbf);
  }
  if (mt_cbs_is(name, "kubernetes.io")) {
    return mt_jwt_claim_object(j, "claim \"kubernetes.io\"", mt_jwt_on_k8s_member, st, depth);
  }
  return mt_json_skip_value(j, depth);
}

static mt_jwt_err mt_jwt_check_presence(const mt_jwt_claim_state *st, mt_jwt_error *err) {
  const char *missing = !st->have_sub || st->sub[0] == '\0' ? "sub"
                        : !st->have_iss                     ? "iss"
                        : !st->have_aud                     ? "aud"
                        : !st->have_exp                     ? "exp"
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
  if (strcmp(st->iss, e->issuer) != 0) {
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
  mt_json j;
  mt_json_init(&j, json, len);
  if (!mt_json_document(&j, mt_jwt_on_claim, st)) {
    return mt_jwt_fail(err, MT_JWT_MALFORMED, "payload: %s", j.msg);
  }
  mt_jwt_err rc = mt_jwt_check_presence(st, err);
  return rc != MT_JWT_OK ? rc : mt_jwt_check_values(st, err);
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
  if (keys == NULL || token == NULL || e == NULL || e->issuer == NULL || e->audience == NULL) {
    return mt_jwt_fail(err, MT_JWT_INVALID_ARGUMENT, "keys, token, issuer or audience is NULL");
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

static void mt_jwt_copy_out(const mt_jwt_claim_state *st, mt_jwt_claims *out) {
  memcpy(out->sub, st->sub, sizeof(out->sub));
  memcpy(out->iss, st->iss, sizeof(out->iss));
  memcpy(out->node_name, st->node_name, sizeof(out->node_name));
  out->exp = st->exp;
}

mt_jwt_err mt_jwt_verify(const mt_jwt_keys *keys, const char *token, size_t len,
                         const mt_jwt_expect *expect, mt_jwt_claims *out, mt_jwt_error *err) {
  if (err != NULL) {
    err->code = MT_JWT_OK;
    err->message[0] = '\0';
  }
  if (out != NULL) {
    memset(out, 0, sizeof(*out));
  }
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
  if (rc == MT_JWT_OK && out != NULL) {
    mt_jwt_copy_out(&w->claims, out);
  }
  OPENSSL_free(w->header.kid);
  free(w->buf);
  free(w);
  return rc;
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
