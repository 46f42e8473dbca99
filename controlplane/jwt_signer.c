/* jwt_signer.c: ES256 keys, their JWKS and JWT-SVID signing. See jwt_signer.h. */
#include "controlplane/jwt_signer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "controlplane/file_stamp.h"
#include "controlplane/jwt.h"

enum {
  P256_COORD_LEN = 32,
  ES256_SIG_LEN = 2 * P256_COORD_LEN,
  B64_COORD_MAX = 4 * ((P256_COORD_LEN + 2) / 3) + 1,
  B64_SIG_MAX = 4 * ((ES256_SIG_LEN + 2) / 3) + 1,
  MAX_KEY_FILE_BYTES = 64 * 1024, /* one PEM private key is well under 1 KiB */
};

typedef struct {
  EVP_PKEY *pkey;
  char kid[MT_JWT_KID_MAX_LEN + 1];
  int64_t drop_at_s; /* retired keys: when no token it signed can be valid */
} signing_key;

struct mt_jwt_signer {
  int64_t max_ttl_s;
  signing_key current; /* pkey NULL: none yet */
  signing_key retired[MT_JWT_SIGNER_MAX_RETIRED];
  size_t num_retired; /* oldest first */
  uint64_t generation;
  char *jwks; /* cached document; NULL: to be built */
  size_t jwks_len;
  mt_file_stamp file_stamp; /* of the key file last read */
};

mt_jwt_signer *mt_jwt_signer_new(int64_t max_ttl_s) {
  mt_jwt_signer *s = calloc(1, sizeof(*s));
  if (s != NULL) s->max_ttl_s = max_ttl_s;
  return s;
}

void mt_jwt_signer_free(mt_jwt_signer *s) {
  if (s == NULL) return;
  EVP_PKEY_free(s->current.pkey);
  for (size_t i = 0; i < s->num_retired; i++) EVP_PKEY_free(s->retired[i].pkey);
  free(s->jwks);
  free(s);
}

static void key_set_changed(mt_jwt_signer *s) {
  s->generation++;
  free(s->jwks);
  s->jwks = NULL;
}

/* Takes |pkey| (a P-256 key) as the current key; the previous one is
 * retired until its tokens have expired. */
static int install(mt_jwt_signer *s, EVP_PKEY *pkey, int64_t now_s, int *rotated, char *err,
                   size_t err_len) {
  signing_key next = {pkey, "", 0};
  if (!mt_jwt_key_id_of(pkey, next.kid)) {
    EVP_PKEY_free(pkey);
    snprintf(err, err_len, "out of memory computing the key id");
    return 0;
  }
  if (rotated != NULL) *rotated = 0;
  if (s->current.pkey != NULL && strcmp(s->current.kid, next.kid) == 0) {
    EVP_PKEY_free(pkey);
    return 1;
  }
  if (s->current.pkey != NULL) {
    if (s->num_retired == MT_JWT_SIGNER_MAX_RETIRED) {
      EVP_PKEY_free(s->retired[0].pkey);
      memmove(&s->retired[0], &s->retired[1], (s->num_retired - 1) * sizeof(s->retired[0]));
      s->num_retired--;
    }
    s->current.drop_at_s = now_s + s->max_ttl_s + MT_JWT_DEFAULT_LEEWAY_S;
    s->retired[s->num_retired++] = s->current;
  }
  s->current = next;
  key_set_changed(s);
  if (rotated != NULL) *rotated = 1;
  return 1;
}

int mt_jwt_signer_generate(mt_jwt_signer *s, int64_t now_s, char *err, size_t err_len) {
  EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
  EVP_PKEY *pkey = EVP_PKEY_new();
  if (ec == NULL || pkey == NULL || !EC_KEY_generate_key(ec) || !EVP_PKEY_assign_EC_KEY(pkey, ec)) {
    EC_KEY_free(ec);
    EVP_PKEY_free(pkey);
    ERR_clear_error();
    snprintf(err, err_len, "cannot generate a P-256 key");
    return 0;
  }
  return install(s, pkey, now_s, NULL, err, err_len);
}

static int is_p256(const EVP_PKEY *pkey) {
  const EC_KEY *ec = EVP_PKEY_get0_EC_KEY(pkey);
  const EC_GROUP *g = ec != NULL ? EC_KEY_get0_group(ec) : NULL;
  return g != NULL && EC_GROUP_get_curve_name(g) == NID_X9_62_prime256v1 &&
         EC_KEY_get0_private_key(ec) != NULL;
}

int mt_jwt_signer_use_pem(mt_jwt_signer *s, const char *pem, size_t len, int64_t now_s,
                          int *rotated, char *err, size_t err_len) {
  if (rotated != NULL) *rotated = 0;
  BIO *bio = BIO_new_mem_buf(pem, (ssize_t)len);
  EVP_PKEY *pkey = bio != NULL ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
  EVP_PKEY *second = pkey != NULL ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
  BIO_free(bio);
  ERR_clear_error();
  const char *why = pkey == NULL     ? "no PEM private key (\"EC PRIVATE KEY\" or \"PRIVATE KEY\")"
                    : second != NULL ? "more than one private key; the file must hold one"
                    : !is_p256(pkey) ? "the key is not an EC P-256 private key (ES256 needs P-256)"
                                     : NULL;
  EVP_PKEY_free(second);
  if (why != NULL) {
    EVP_PKEY_free(pkey);
    snprintf(err, err_len, "%s", why);
    return 0;
  }
  return install(s, pkey, now_s, rotated, err, err_len);
}

/* The whole file, at most MAX_KEY_FILE_BYTES; NULL with |err| set. */
static char *read_small_file(const char *path, size_t *len, char *err, size_t err_len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    snprintf(err, err_len, "%s: cannot open", path);
    return NULL;
  }
  char *buf = malloc(MAX_KEY_FILE_BYTES + 1);
  size_t n = buf != NULL ? fread(buf, 1, MAX_KEY_FILE_BYTES + 1, f) : 0;
  int failed = ferror(f);
  fclose(f);
  if (buf == NULL || failed || n > MAX_KEY_FILE_BYTES) {
    snprintf(err, err_len, "%s: %s", path,
             buf == NULL ? "out of memory"
             : failed    ? "read error"
                         : "larger than 64 KiB, not a key file");
    free(buf);
    return NULL;
  }
  *len = n;
  return buf;
}

int mt_jwt_signer_reload_file(mt_jwt_signer *s, const char *path, int64_t now_s, char *err,
                              size_t err_len) {
  mt_file_stamp now;
  mt_file_stamp_read(path, &now);
  if (s->current.pkey != NULL && mt_file_stamp_equal(&now, &s->file_stamp)) return 0;
  s->file_stamp = now; /* a refused content is not read again until it changes */
  size_t len = 0;
  char *pem = read_small_file(path, &len, err, err_len);
  if (pem == NULL) return -1;
  char why[MT_JWT_SIGNER_ERR_MAX];
  int rotated = 0;
  int ok = mt_jwt_signer_use_pem(s, pem, len, now_s, &rotated, why, sizeof(why));
  OPENSSL_cleanse(pem, len);
  free(pem);
  if (!ok) {
    snprintf(err, err_len, "%s: %s", path, why);
    return -1;
  }
  return rotated;
}

int mt_jwt_signer_expire(mt_jwt_signer *s, int64_t now_s) {
  size_t kept = 0;
  for (size_t i = 0; i < s->num_retired; i++) {
    if (s->retired[i].drop_at_s <= now_s)
      EVP_PKEY_free(s->retired[i].pkey);
    else
      s->retired[kept++] = s->retired[i];
  }
  int changed = kept != s->num_retired;
  s->num_retired = kept;
  if (changed) key_set_changed(s);
  return changed;
}

int64_t mt_jwt_signer_next_expiry(const mt_jwt_signer *s) {
  int64_t next = 0;
  for (size_t i = 0; i < s->num_retired; i++)
    if (next == 0 || s->retired[i].drop_at_s < next) next = s->retired[i].drop_at_s;
  return next;
}

uint64_t mt_jwt_signer_generation(const mt_jwt_signer *s) { return s->generation; }

const char *mt_jwt_signer_kid(const mt_jwt_signer *s) { return s->current.kid; }

/* ---- the JWKS ------------------------------------------------------------ */

/* One JWK of a P-256 public key. */
static json_t *jwk_of(const signing_key *k) {
  const EC_KEY *ec = EVP_PKEY_get0_EC_KEY(k->pkey);
  BIGNUM *x = BN_new(), *y = BN_new();
  uint8_t xb[P256_COORD_LEN], yb[P256_COORD_LEN];
  char xs[B64_COORD_MAX], ys[B64_COORD_MAX];
  int ok = x != NULL && y != NULL &&
           EC_POINT_get_affine_coordinates_GFp(EC_KEY_get0_group(ec), EC_KEY_get0_public_key(ec), x,
                                               y, NULL) &&
           BN_bn2bin_padded(xb, sizeof(xb), x) && BN_bn2bin_padded(yb, sizeof(yb), y);
  BN_free(x);
  BN_free(y);
  ERR_clear_error();
  if (!ok) return NULL;
  mt_jwt_b64url_encode(xb, sizeof(xb), xs);
  mt_jwt_b64url_encode(yb, sizeof(yb), ys);
  return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "kty", "EC", "crv", "P-256", "x", xs, "y",
                   ys, "kid", k->kid, "use", "jwt-svid", "alg", "ES256");
}

static int append_jwk(json_t *keys, const signing_key *k) {
  json_t *jwk = jwk_of(k);
  return jwk != NULL && json_array_append_new(keys, jwk) == 0;
}

const char *mt_jwt_signer_jwks(mt_jwt_signer *s, size_t *len) {
  if (s->current.pkey == NULL) return NULL;
  if (s->jwks == NULL) {
    json_t *keys = json_array();
    int ok = keys != NULL && append_jwk(keys, &s->current);
    for (size_t i = s->num_retired; ok && i > 0; i--) ok = append_jwk(keys, &s->retired[i - 1]);
    json_t *doc = ok ? json_pack("{s:O}", "keys", keys) : NULL;
    s->jwks = doc != NULL ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    s->jwks_len = s->jwks != NULL ? strlen(s->jwks) : 0;
    json_decref(doc);
    json_decref(keys);
  }
  if (len != NULL) *len = s->jwks_len;
  return s->jwks;
}

/* ---- signing ------------------------------------------------------------- */

/* base64url(JSON text of |doc|), malloc'd; takes |doc|. */
static char *encode_part(json_t *doc) {
  char *text = doc != NULL ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(doc);
  if (text == NULL) return NULL;
  size_t n = strlen(text);
  char *out = malloc(4 * ((n + 2) / 3) + 1);
  if (out != NULL) mt_jwt_b64url_encode((const uint8_t *)text, n, out);
  free(text);
  return out;
}

static json_t *claims_json(const mt_jwt_svid_claims *c) {
  json_t *aud = NULL;
  if (c->num_audiences == 1) {
    aud = json_string(c->audiences[0]);
  } else {
    aud = json_array();
    for (size_t i = 0; aud != NULL && i < c->num_audiences; i++) {
      if (json_array_append_new(aud, json_string(c->audiences[i])) != 0) {
        json_decref(aud);
        aud = NULL;
      }
    }
  }
  if (aud == NULL) return NULL;
  return json_pack("{s:s, s:o, s:I, s:I}", "sub", c->subject, "aud", aud, "exp",
                   (json_int_t)c->expires_at_s, "iat", (json_int_t)c->issued_at_s);
}

/* The raw r || s ES256 signature of |input| as base64url into |out|. */
static int es256_sign(EVP_PKEY *pkey, const char *input, size_t len, char out[B64_SIG_MAX]) {
  uint8_t digest[SHA256_DIGEST_LENGTH], raw[ES256_SIG_LEN];
  SHA256((const uint8_t *)input, len, digest);
  ECDSA_SIG *sig = ECDSA_do_sign(digest, sizeof(digest), EVP_PKEY_get0_EC_KEY(pkey));
  const BIGNUM *r = NULL, *s = NULL;
  if (sig != NULL) ECDSA_SIG_get0(sig, &r, &s);
  int ok = sig != NULL && BN_bn2bin_padded(raw, P256_COORD_LEN, r) &&
           BN_bn2bin_padded(raw + P256_COORD_LEN, P256_COORD_LEN, s);
  ECDSA_SIG_free(sig);
  ERR_clear_error();
  if (ok) mt_jwt_b64url_encode(raw, sizeof(raw), out);
  return ok;
}

static const char *bad_claims(const mt_jwt_svid_claims *c) {
  if (c->subject == NULL || c->subject[0] == '\0') return "no subject";
  if (c->num_audiences == 0 || c->num_audiences > MT_JWT_SIGNER_MAX_AUDIENCES)
    return "1 to 32 audiences are needed";
  for (size_t i = 0; i < c->num_audiences; i++)
    if (c->audiences[i] == NULL || c->audiences[i][0] == '\0') return "an audience is empty";
  if (c->expires_at_s <= c->issued_at_s) return "exp is not after iat";
  return NULL;
}

char *mt_jwt_signer_sign(const mt_jwt_signer *s, const mt_jwt_svid_claims *claims, char *err,
                         size_t err_len) {
  const char *why = s->current.pkey == NULL ? "no signing key yet" : bad_claims(claims);
  if (why != NULL) {
    snprintf(err, err_len, "%s", why);
    return NULL;
  }
  char *header = encode_part(
      json_pack("{s:s, s:s, s:s}", "alg", "ES256", "kid", s->current.kid, "typ", "JWT"));
  char *payload = encode_part(claims_json(claims));
  char *token = NULL;
  if (header != NULL && payload != NULL) {
    size_t input_len = strlen(header) + 1 + strlen(payload);
    token = malloc(input_len + 1 + B64_SIG_MAX);
    if (token != NULL) {
      snprintf(token, input_len + 1, "%s.%s", header, payload);
      char sig[B64_SIG_MAX];
      if (es256_sign(s->current.pkey, token, input_len, sig)) {
        snprintf(token + input_len, 1 + B64_SIG_MAX, ".%s", sig);
      } else {
        free(token);
        token = NULL;
      }
    }
  }
  free(header);
  free(payload);
  if (token == NULL) snprintf(err, err_len, "cannot sign: out of memory or signing failed");
  return token;
}
