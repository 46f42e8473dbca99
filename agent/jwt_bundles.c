/* jwt_bundles.c: JWT bundles and JWT-SVID validation. See jwt_bundles.h. */
#include "agent/jwt_bundles.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controlplane/jwks.h"
#include "controlplane/jwt.h"
#include "proto/mtlsd/jwt.pb-c.h"

static const char kSpiffeScheme[] = "spiffe://";

typedef struct {
  char *trust_domain_id;
  uint8_t *jwks;
  size_t jwks_len;
  mt_jwt_keys *keys;
} bundle;

struct mt_jwt_bundles {
  bundle *items; /* sorted by trust_domain_id */
  size_t count;
};

void mt_jwt_bundles_free(mt_jwt_bundles *b) {
  if (b == NULL) return;
  for (size_t i = 0; i < b->count; i++) {
    free(b->items[i].trust_domain_id);
    free(b->items[i].jwks);
    mt_jwt_keys_free(b->items[i].keys);
  }
  free(b->items);
  free(b);
}

size_t mt_jwt_bundles_count(const mt_jwt_bundles *b) { return b != NULL ? b->count : 0; }

mt_jwt_bundle_view mt_jwt_bundles_at(const mt_jwt_bundles *b, size_t i) {
  mt_jwt_bundle_view v = {b->items[i].trust_domain_id, b->items[i].jwks, b->items[i].jwks_len};
  return v;
}

/* "spiffe://<trust domain>" with nothing after it. */
static int is_trust_domain_id(const char *id) {
  mt_spiffe_id_view view;
  return mt_spiffe_id_parse(id, strlen(id), &view) == MT_SPIFFE_OK && view.path_len == 0;
}

static int by_trust_domain(const void *a, const void *b) {
  return strcmp(((const bundle *)a)->trust_domain_id, ((const bundle *)b)->trust_domain_id);
}

/* One map entry into |out|; 0 with |err| set. */
static int take_entry(const Mtlsd__Jwt__V1__JwtBundles__BundlesEntry *e, bundle *out, char *err,
                      size_t err_len) {
  if (e->key == NULL || !is_trust_domain_id(e->key)) {
    snprintf(err, err_len, "bundle key \"%.80s\" is not a trust domain's SPIFFE ID",
             e->key ? e->key : "");
    return 0;
  }
  char why[MT_JWT_BUNDLES_ERR_MAX];
  out->keys = mt_jwks_parse((const char *)e->value.data, e->value.len, NULL, why, sizeof(why));
  if (out->keys == NULL) {
    snprintf(err, err_len, "bundle of %.80s: %s", e->key, why);
    return 0;
  }
  out->trust_domain_id = strdup(e->key);
  out->jwks = malloc(e->value.len ? e->value.len : 1);
  if (out->trust_domain_id == NULL || out->jwks == NULL) {
    snprintf(err, err_len, "out of memory");
    return 0;
  }
  memcpy(out->jwks, e->value.data, e->value.len);
  out->jwks_len = e->value.len;
  return 1;
}

mt_jwt_bundles *mt_jwt_bundles_decode(const uint8_t *msg, size_t len, char *err, size_t err_len) {
  Mtlsd__Jwt__V1__JwtBundles *m = mtlsd__jwt__v1__jwt_bundles__unpack(NULL, len, msg);
  if (m == NULL) {
    snprintf(err, err_len, "not a JwtBundles message");
    return NULL;
  }
  mt_jwt_bundles *b = calloc(1, sizeof(*b));
  int ok = b != NULL;
  if (!ok) snprintf(err, err_len, "out of memory");
  if (ok && m->n_bundles > MT_JWT_BUNDLES_MAX) {
    snprintf(err, err_len, "%zu bundles; at most %d are accepted", m->n_bundles,
             MT_JWT_BUNDLES_MAX);
    ok = 0;
  }
  if (ok && m->n_bundles > 0) {
    b->items = calloc(m->n_bundles, sizeof(*b->items));
    ok = b->items != NULL;
    if (!ok) snprintf(err, err_len, "out of memory");
  }
  for (size_t i = 0; ok && i < m->n_bundles; i++) {
    ok = take_entry(m->bundles[i], &b->items[b->count], err, err_len);
    b->count++; /* freed with the set even when half-built */
  }
  if (ok && b->count > 1) {
    qsort(b->items, b->count, sizeof(*b->items), by_trust_domain);
    for (size_t i = 1; ok && i < b->count; i++) {
      if (strcmp(b->items[i - 1].trust_domain_id, b->items[i].trust_domain_id) == 0) {
        snprintf(err, err_len, "trust domain %.80s has two bundles", b->items[i].trust_domain_id);
        ok = 0;
      }
    }
  }
  mtlsd__jwt__v1__jwt_bundles__free_unpacked(m, NULL);
  if (!ok) {
    mt_jwt_bundles_free(b);
    return NULL;
  }
  return b;
}

int mt_jwt_bundles_equal(const mt_jwt_bundles *a, const mt_jwt_bundles *b) {
  if (mt_jwt_bundles_count(a) != mt_jwt_bundles_count(b)) return 0;
  for (size_t i = 0; i < mt_jwt_bundles_count(a); i++) {
    const bundle *x = &a->items[i], *y = &b->items[i];
    if (strcmp(x->trust_domain_id, y->trust_domain_id) != 0 || x->jwks_len != y->jwks_len ||
        memcmp(x->jwks, y->jwks, x->jwks_len) != 0)
      return 0;
  }
  return 1;
}

void mt_jwt_svid_valid_dispose(mt_jwt_svid_valid *v) {
  if (v == NULL) return;
  free(v->claims_json);
  v->claims_json = NULL;
  v->claims_json_len = 0;
}

/* Does the verified |sub| belong to the trust domain of |b|? 1 yes, 0 it
 * is no SPIFFE ID at all, -1 it is another trust domain's (|err| set). */
static int sub_in_bundle(const char *sub, const bundle *b, char *err, size_t err_len) {
  mt_spiffe_id_view view;
  mt_spiffe_err e = mt_spiffe_id_parse(sub, strlen(sub), &view);
  if (e != MT_SPIFFE_OK) {
    snprintf(err, err_len, "subject is not a SPIFFE ID: %s", mt_spiffe_err_str(e));
    return 0;
  }
  size_t prefix = strlen(kSpiffeScheme) + view.trust_domain_len;
  if (strlen(b->trust_domain_id) != prefix || strncmp(b->trust_domain_id, sub, prefix) != 0) {
    snprintf(err, err_len, "signed by a key of %.80s, not of the subject's trust domain",
             b->trust_domain_id);
    return -1;
  }
  return 1;
}

static int typ_allowed(const char *typ) {
  return typ[0] == '\0' || strcmp(typ, "JWT") == 0 || strcmp(typ, "JOSE") == 0;
}

/* Tries the bundle |b|: 1 valid, 0 refused for good (|err| set), -1 its
 * keys did not sign the token for its trust domain (try another bundle). */
static int try_bundle(const bundle *b, const char *token, size_t len, const mt_jwt_expect *expect,
                      mt_jwt_svid_valid *out, char *err, size_t err_len) {
  mt_jwt_claims claims;
  mt_jwt_error jerr;
  char *payload = NULL;
  size_t payload_len = 0;
  mt_jwt_err rc =
      mt_jwt_verify_payload(b->keys, token, len, expect, &claims, &payload, &payload_len, &jerr);
  if (rc == MT_JWT_UNKNOWN_KEY || rc == MT_JWT_BAD_SIGNATURE) return -1;
  if (rc != MT_JWT_OK) {
    snprintf(err, err_len, "%s: %s", mt_jwt_err_name(rc), jerr.message);
    return 0;
  }
  int r = 0;
  if (!typ_allowed(claims.typ))
    snprintf(err, err_len, "header \"typ\" is \"%s\", not JWT or JOSE", claims.typ);
  else
    r = sub_in_bundle(claims.sub, b, err, err_len);
  if (r != 1) {
    free(payload);
    return r;
  }
  snprintf(out->spiffe_id, sizeof(out->spiffe_id), "%s", claims.sub);
  out->expires_at = claims.exp;
  out->claims_json = payload;
  out->claims_json_len = payload_len;
  return 1;
}

int mt_jwt_bundles_validate(const mt_jwt_bundles *bundles, const char *token, size_t len,
                            const char *audience, int64_t now_s, mt_jwt_svid_valid *out, char *err,
                            size_t err_len) {
  memset(out, 0, sizeof(*out));
  if (token == NULL || audience == NULL || audience[0] == '\0') {
    snprintf(err, err_len, "token and audience are required");
    return 0;
  }
  mt_jwt_expect expect;
  mt_jwt_expect_init(&expect, NULL, audience, now_s);
  char why[MT_JWT_BUNDLES_ERR_MAX] = "";
  for (size_t i = 0; i < mt_jwt_bundles_count(bundles); i++) {
    int r = try_bundle(&bundles->items[i], token, len, &expect, out, why, sizeof(why));
    if (r == 1) return 1;
    if (r == 0) {
      snprintf(err, err_len, "%s", why);
      return 0;
    }
  }
  snprintf(err, err_len, "%s",
           why[0] ? why : "no key of any trust domain's bundle verifies the token's signature");
  return 0;
}
