/* jwks.c: JWK members -> BoringSSL public keys -> PEM -> mt_jwt_keys, so
 * the key ids and strength checks are exactly jwt.c's. */
#include "controlplane/jwks.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

enum { MEMBER_MAX_BYTES = 1024 }; /* an RSA-8192 modulus is 1024 bytes */

/* Decodes an unpadded base64url member into |out|; returns its length, or
 * 0 when it is absent, empty, too long or not base64url. */
static size_t b64url_member(const json_t *key, const char *name, uint8_t *out, size_t cap) {
  const char *text = json_string_value(json_object_get(key, name));
  if (text == NULL) return 0;
  size_t len = strlen(text);
  if (len == 0 || len > (cap * 4 + 2) / 3) return 0;
  char *std = malloc(len + 4);
  if (std == NULL) return 0;
  for (size_t i = 0; i < len; i++) {
    char c = text[i];
    if (c == '-')
      c = '+';
    else if (c == '_')
      c = '/';
    else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) {
      free(std);
      return 0;
    }
    std[i] = c;
  }
  size_t padded = len;
  while (padded % 4 != 0) std[padded++] = '=';
  size_t room = 0, n = 0;
  /* EVP_DecodeBase64 wants room for the padded length's worst case. */
  uint8_t *tmp = EVP_DecodedLength(&room, padded) ? malloc(room) : NULL;
  int ok = tmp != NULL && EVP_DecodeBase64(tmp, &n, room, (const uint8_t *)std, padded) && n <= cap;
  if (ok) memcpy(out, tmp, n);
  free(tmp);
  free(std);
  return ok ? n : 0;
}

static EVP_PKEY *rsa_key(const json_t *key, char *why, size_t why_len) {
  uint8_t n[MEMBER_MAX_BYTES], e[16];
  size_t n_len = b64url_member(key, "n", n, sizeof(n));
  size_t e_len = b64url_member(key, "e", e, sizeof(e));
  if (n_len == 0 || e_len == 0) {
    snprintf(why, why_len, "RSA key needs base64url \"n\" and \"e\"");
    return NULL;
  }
  RSA *rsa = RSA_new();
  BIGNUM *bn_n = BN_bin2bn(n, n_len, NULL), *bn_e = BN_bin2bn(e, e_len, NULL);
  EVP_PKEY *pkey = NULL;
  if (rsa != NULL && bn_n != NULL && bn_e != NULL && RSA_set0_key(rsa, bn_n, bn_e, NULL)) {
    bn_n = bn_e = NULL; /* owned by |rsa| now */
    pkey = EVP_PKEY_new();
    if (pkey == NULL || !EVP_PKEY_assign_RSA(pkey, rsa)) {
      EVP_PKEY_free(pkey);
      pkey = NULL;
    } else {
      rsa = NULL;
    }
  }
  if (pkey == NULL) snprintf(why, why_len, "RSA key: cannot build it from \"n\" and \"e\"");
  RSA_free(rsa);
  BN_free(bn_n);
  BN_free(bn_e);
  return pkey;
}

static EVP_PKEY *ec_key(const json_t *key, char *why, size_t why_len) {
  uint8_t point[1 + 2 * 32];
  size_t x_len = b64url_member(key, "x", point + 1, 32);
  size_t y_len = b64url_member(key, "y", point + 1 + 32, 32);
  if (x_len != 32 || y_len != 32) {
    snprintf(why, why_len, "EC P-256 key needs 32-byte base64url \"x\" and \"y\"");
    return NULL;
  }
  point[0] = POINT_CONVERSION_UNCOMPRESSED;
  EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
  EC_POINT *p = ec ? EC_POINT_new(EC_KEY_get0_group(ec)) : NULL;
  EVP_PKEY *pkey = NULL;
  if (p != NULL && EC_POINT_oct2point(EC_KEY_get0_group(ec), p, point, sizeof(point), NULL) &&
      EC_KEY_set_public_key(ec, p) && EC_KEY_check_key(ec)) {
    pkey = EVP_PKEY_new();
    if (pkey == NULL || !EVP_PKEY_assign_EC_KEY(pkey, ec)) {
      EVP_PKEY_free(pkey);
      pkey = NULL;
    } else {
      ec = NULL;
    }
  }
  if (pkey == NULL) snprintf(why, why_len, "EC key: (x, y) is not a point of P-256");
  EC_POINT_free(p);
  EC_KEY_free(ec);
  return pkey;
}

/* Returns 1 when the key is of a kind we verify with (and appends its PEM
 * to |pem|), 0 when it is to be skipped, -1 when it is broken. */
static int add_key(const json_t *key, size_t i, BIO *pem, char *err, size_t err_len) {
  char why[160] = "";
  if (!json_is_object(key)) return snprintf(err, err_len, "keys[%zu] is not an object", i), -1;
  const char *kty = json_string_value(json_object_get(key, "kty"));
  const char *crv = json_string_value(json_object_get(key, "crv"));
  const char *use = json_string_value(json_object_get(key, "use"));
  const char *alg = json_string_value(json_object_get(key, "alg"));
  if (kty == NULL) return snprintf(err, err_len, "keys[%zu] has no \"kty\"", i), -1;
  /* "sig" (RFC 7517) or "jwt-svid" (a SPIFFE bundle's JWT authorities). */
  if (use != NULL && strcmp(use, "sig") != 0 && strcmp(use, "jwt-svid") != 0) return 0;
  EVP_PKEY *pkey = NULL;
  if (strcmp(kty, "RSA") == 0) {
    if (alg != NULL && strcmp(alg, "RS256") != 0) return 0;
    pkey = rsa_key(key, why, sizeof(why));
  } else if (strcmp(kty, "EC") == 0 && crv != NULL && strcmp(crv, "P-256") == 0) {
    if (alg != NULL && strcmp(alg, "ES256") != 0) return 0;
    pkey = ec_key(key, why, sizeof(why));
  } else {
    return 0; /* another type or curve: not ours to verify with */
  }
  if (pkey == NULL) return snprintf(err, err_len, "keys[%zu]: %s", i, why), -1;
  int ok = PEM_write_bio_PUBKEY(pem, pkey);
  EVP_PKEY_free(pkey);
  if (!ok) return snprintf(err, err_len, "keys[%zu]: cannot encode it", i), -1;
  return 1;
}

mt_jwt_keys *mt_jwks_parse(const char *json, size_t len, size_t *skipped, char *err,
                           size_t err_len) {
  if (skipped) *skipped = 0;
  if (len > MT_JWKS_MAX_BYTES)
    return snprintf(err, err_len, "JWKS larger than %d bytes", MT_JWKS_MAX_BYTES), NULL;
  json_error_t jerr;
  json_t *doc = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
  if (doc == NULL) return snprintf(err, err_len, "JWKS is not JSON: %s", jerr.text), NULL;
  json_t *keys = json_object_get(doc, "keys");
  mt_jwt_keys *set = NULL;
  BIO *pem = BIO_new(BIO_s_mem());
  size_t usable = 0, left_out = 0;
  int ok = pem != NULL;
  if (ok && !json_is_array(keys)) {
    snprintf(err, err_len, "JWKS has no \"keys\" array");
    ok = 0;
  }
  if (ok && json_array_size(keys) > MT_JWKS_MAX_KEYS) {
    snprintf(err, err_len, "JWKS has more than %d keys", MT_JWKS_MAX_KEYS);
    ok = 0;
  }
  for (size_t i = 0; ok && i < json_array_size(keys); i++) {
    int r = add_key(json_array_get(keys, i), i, pem, err, err_len);
    if (r < 0)
      ok = 0;
    else if (r == 0)
      left_out++;
    else
      usable++;
  }
  if (ok && usable == 0) {
    snprintf(err, err_len, "JWKS has no RS256 or ES256 (P-256) signing key (%zu skipped)",
             left_out);
    ok = 0;
  }
  if (ok) {
    const uint8_t *data;
    size_t data_len;
    BIO_mem_contents(pem, &data, &data_len);
    char why[MT_JWT_ERROR_MAX_LEN];
    set = mt_jwt_keys_load_pem((const char *)data, data_len, why, sizeof(why));
    if (set == NULL) snprintf(err, err_len, "JWKS key refused: %s", why);
  }
  if (set != NULL && skipped) *skipped = left_out;
  BIO_free(pem);
  json_decref(doc);
  return set;
}
