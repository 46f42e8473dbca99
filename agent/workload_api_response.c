/* workload_api_response.c: X509SVIDResponse / X509BundlesResponse decoding. */
#include "agent/workload_api_response.h"

#include <openssl/bytestring.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/spiffe/workload.pb-c.h"

enum { SHOWN_MAX = 120 }; /* of an untrusted string quoted in an error */

static const char SPIFFE_SCHEME[] = "spiffe://";

const char *mt_wlapi_refusal_str(mt_wlapi_refusal refusal) {
  switch (refusal) {
    case MT_WLAPI_REFUSAL_UNAVAILABLE: return "unavailable";
    case MT_WLAPI_REFUSAL_TOO_LARGE: return "too_large";
    case MT_WLAPI_REFUSAL_ERROR_STATUS: return "error_status";
    case MT_WLAPI_REFUSAL_MALFORMED: return "malformed";
    case MT_WLAPI_REFUSAL_NO_SVID: return "no_svid";
    case MT_WLAPI_REFUSAL_KEY_MISMATCH: return "key_mismatch";
    case MT_WLAPI_REFUSAL_INVALID_CERTIFICATE: return "invalid_certificate";
    case MT_WLAPI_REFUSAL_ROOT_REMOVED: return "root_removed";
    case MT_WLAPI_NUM_REFUSALS: break;
  }
  return "unknown";
}

/* ---- bundle lists ---- */

void mt_wlapi_bundles_clear(mt_wlapi_bundles *b) {
  for (size_t i = 0; i < b->count; i++) {
    free(b->items[i].trust_domain);
    sk_X509_pop_free(b->items[i].roots, X509_free);
  }
  free(b->items);
  b->items = NULL;
  b->count = 0;
}

static mt_wlapi_bundle *find_bundle(const mt_wlapi_bundles *b, const char *td) {
  for (size_t i = 0; i < b->count; i++)
    if (strcmp(b->items[i].trust_domain, td) == 0) return &b->items[i];
  return NULL;
}

int mt_wlapi_bundles_set(mt_wlapi_bundles *b, const char *td, const STACK_OF(X509) * roots) {
  STACK_OF(X509) *copy = X509_chain_up_ref((STACK_OF(X509) *)roots);
  if (copy == NULL) return 0;
  mt_wlapi_bundle *e = find_bundle(b, td);
  if (e != NULL) {
    sk_X509_pop_free(e->roots, X509_free);
    e->roots = copy;
    return 1;
  }
  mt_wlapi_bundle *grown = realloc(b->items, (b->count + 1) * sizeof(*grown));
  char *name = strdup(td);
  if (grown != NULL) b->items = grown;
  if (grown == NULL || name == NULL) {
    free(name);
    sk_X509_pop_free(copy, X509_free);
    return 0;
  }
  b->items[b->count++] = (mt_wlapi_bundle){name, copy};
  return 1;
}

const STACK_OF(X509) * mt_wlapi_bundles_get(const mt_wlapi_bundles *b, const char *td) {
  const mt_wlapi_bundle *e = find_bundle(b, td);
  return e != NULL ? e->roots : NULL;
}

static int same_certs(const STACK_OF(X509) * a, const STACK_OF(X509) * b) {
  if (sk_X509_num(a) != sk_X509_num(b)) return 0;
  for (size_t i = 0; i < sk_X509_num(a); i++) {
    int found = 0;
    for (size_t j = 0; !found && j < sk_X509_num(b); j++)
      found = X509_cmp(sk_X509_value(a, i), sk_X509_value(b, j)) == 0;
    if (!found) return 0;
  }
  return 1;
}

int mt_wlapi_bundles_equal(const mt_wlapi_bundles *a, const mt_wlapi_bundles *b) {
  if (a->count != b->count) return 0;
  for (size_t i = 0; i < a->count; i++) {
    const mt_wlapi_bundle *other = find_bundle(b, a->items[i].trust_domain);
    if (other == NULL || !same_certs(a->items[i].roots, other->roots)) return 0;
  }
  return 1;
}

int mt_wlapi_bundles_copy(const mt_wlapi_bundles *from, mt_wlapi_bundles *to) {
  memset(to, 0, sizeof(*to));
  for (size_t i = 0; i < from->count; i++) {
    if (!mt_wlapi_bundles_set(to, from->items[i].trust_domain, from->items[i].roots)) {
      mt_wlapi_bundles_clear(to);
      return 0;
    }
  }
  return 1;
}

int mt_wlapi_bundles_merge(const mt_wlapi_bundles *older, const mt_wlapi_bundles *newer,
                           mt_wlapi_bundles *out) {
  if (!mt_wlapi_bundles_copy(older, out)) return 0;
  for (size_t i = 0; i < newer->count; i++) {
    if (!mt_wlapi_bundles_set(out, newer->items[i].trust_domain, newer->items[i].roots)) {
      mt_wlapi_bundles_clear(out);
      return 0;
    }
  }
  return 1;
}

void mt_wlapi_svid_update_clear(mt_wlapi_svid_update *u) {
  EVP_PKEY_free(u->key);
  X509_free(u->leaf);
  sk_X509_pop_free(u->intermediates, X509_free);
  sk_X509_pop_free(u->bundle, X509_free);
  mt_wlapi_bundles_clear(&u->federated);
  memset(u, 0, sizeof(*u));
}

/* ---- field decoders ---- */

static const char *ssl_reason(void) {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  const char *s = e ? ERR_reason_error_string(e) : NULL;
  return s ? s : "malformed";
}

/* Concatenated DER certificates (at least one, at most MT_WLAPI_MAX_CERTS)
 * as a stack; NULL with "|what|: reason" in |err|. */
static STACK_OF(X509) *
    parse_der_certs(const ProtobufCBinaryData *der, const char *what, char *err, size_t err_len) {
  if (der->len == 0) {
    snprintf(err, err_len, "%s: no certificate", what);
    return NULL;
  }
  STACK_OF(X509) *certs = sk_X509_new_null();
  if (certs == NULL) {
    snprintf(err, err_len, "%s: out of memory", what);
    return NULL;
  }
  CBS cbs;
  CBS_init(&cbs, der->data, der->len);
  while (CBS_len(&cbs) > 0) {
    CBS one;
    X509 *x = NULL;
    if (sk_X509_num(certs) == MT_WLAPI_MAX_CERTS) {
      snprintf(err, err_len, "%s: more than %d certificates", what, MT_WLAPI_MAX_CERTS);
    } else if (!CBS_get_asn1_element(&cbs, &one, CBS_ASN1_SEQUENCE)) {
      snprintf(err, err_len, "%s: certificate %zu is not DER", what, sk_X509_num(certs) + 1);
    } else {
      const uint8_t *p = CBS_data(&one);
      x = d2i_X509(NULL, &p, (long)CBS_len(&one));
      if (x == NULL || p != CBS_data(&one) + CBS_len(&one)) {
        snprintf(err, err_len, "%s: certificate %zu: %s", what, sk_X509_num(certs) + 1,
                 ssl_reason());
        X509_free(x);
        x = NULL;
      }
    }
    if (x == NULL || !sk_X509_push(certs, x)) {
      if (x != NULL) snprintf(err, err_len, "%s: out of memory", what);
      X509_free(x);
      sk_X509_pop_free(certs, X509_free);
      return NULL;
    }
  }
  return certs;
}

/* An unencrypted PKCS#8 private key, all of |der| and nothing after it. */
static EVP_PKEY *parse_key(const ProtobufCBinaryData *der, char *err, size_t err_len) {
  CBS cbs;
  CBS_init(&cbs, der->data, der->len);
  EVP_PKEY *key = der->len > 0 ? EVP_parse_private_key(&cbs) : NULL;
  if (key == NULL || CBS_len(&cbs) != 0) {
    snprintf(err, err_len, "x509_svid_key is not a PKCS#8 private key: %s",
             der->len == 0 ? "empty"
             : key != NULL ? "trailing data"
                           : ssl_reason());
    EVP_PKEY_free(key);
    return NULL;
  }
  return key;
}

int mt_wlapi_trust_domain_of_key(const char *key, char *out, size_t out_len, char *err,
                                 size_t err_len) {
  size_t len = strlen(key);
  const char *td = key;
  if (len >= sizeof(SPIFFE_SCHEME) - 1 &&
      memcmp(key, SPIFFE_SCHEME, sizeof(SPIFFE_SCHEME) - 1) == 0) {
    mt_spiffe_id_view view;
    mt_spiffe_err e = mt_spiffe_id_parse(key, len, &view);
    if (e != MT_SPIFFE_OK || view.path_len != 0) {
      snprintf(err, err_len, "bundle key '%.*s' is not a trust domain ID: %s", (int)SHOWN_MAX, key,
               e != MT_SPIFFE_OK ? mt_spiffe_err_str(e) : "it has a path");
      return 0;
    }
    td = view.trust_domain;
    len = view.trust_domain_len;
  } else {
    mt_spiffe_err e = mt_trust_domain_validate(key, len);
    if (e != MT_SPIFFE_OK) {
      snprintf(err, err_len, "bundle key '%.*s' is not a trust domain: %s", (int)SHOWN_MAX, key,
               mt_spiffe_err_str(e));
      return 0;
    }
  }
  if (len + 1 > out_len) {
    snprintf(err, err_len, "bundle key '%.*s' is too long", (int)SHOWN_MAX, key);
    return 0;
  }
  memcpy(out, td, len);
  out[len] = '\0';
  return 1;
}

/* One bundle map entry into |out|: a new trust domain with its roots. */
static int add_bundle_entry(mt_wlapi_bundles *out, const char *key,
                            const ProtobufCBinaryData *value, const char *field, char *err,
                            size_t err_len) {
  char td[MT_TRUST_DOMAIN_MAX_LEN + 1];
  char what[MT_TRUST_DOMAIN_MAX_LEN + 64];
  if (!mt_wlapi_trust_domain_of_key(key, td, sizeof(td), err, err_len)) return 0;
  if (find_bundle(out, td) != NULL) {
    snprintf(err, err_len, "%s names trust domain '%s' twice", field, td);
    return 0;
  }
  snprintf(what, sizeof(what), "%s['%s']", field, td);
  STACK_OF(X509) *roots = parse_der_certs(value, what, err, err_len);
  int ok = roots != NULL && mt_wlapi_bundles_set(out, td, roots);
  if (roots != NULL && !ok) snprintf(err, err_len, "%s: out of memory", what);
  sk_X509_pop_free(roots, X509_free);
  return ok;
}

/* ---- X509SVIDResponse ---- */

static const X509SVID *pick_svid(const X509SVIDResponse *r, const char *want_id,
                                 mt_wlapi_refusal *why, char *err, size_t err_len) {
  if (r->n_svids == 0) {
    *why = MT_WLAPI_REFUSAL_NO_SVID;
    snprintf(err, err_len, "the response carries no SVID");
    return NULL;
  }
  if (r->n_svids > MT_WLAPI_MAX_SVIDS) {
    *why = MT_WLAPI_REFUSAL_MALFORMED;
    snprintf(err, err_len, "the response carries %zu SVIDs (at most %d)", r->n_svids,
             MT_WLAPI_MAX_SVIDS);
    return NULL;
  }
  if (want_id == NULL) return r->svids[0];
  for (size_t i = 0; i < r->n_svids; i++)
    if (strcmp(r->svids[i]->spiffe_id, want_id) == 0) return r->svids[i];
  *why = MT_WLAPI_REFUSAL_NO_SVID;
  snprintf(err, err_len, "none of the %zu SVIDs is for %.*s (first: %.*s)", r->n_svids,
           (int)SHOWN_MAX, want_id, (int)SHOWN_MAX, r->svids[0]->spiffe_id);
  return NULL;
}

/* The chosen SVID's own fields: ID, chain, key, own bundle. */
static int decode_svid(const X509SVID *s, mt_wlapi_svid_update *u, mt_wlapi_refusal *why, char *err,
                       size_t err_len) {
  *why = MT_WLAPI_REFUSAL_MALFORMED;
  mt_spiffe_id_view view;
  size_t id_len = strlen(s->spiffe_id);
  mt_spiffe_err e = mt_spiffe_id_parse(s->spiffe_id, id_len, &view);
  if (e != MT_SPIFFE_OK) {
    snprintf(err, err_len, "spiffe_id '%.*s' is not a SPIFFE ID: %s", (int)SHOWN_MAX, s->spiffe_id,
             mt_spiffe_err_str(e));
    return 0;
  }
  memcpy(u->spiffe_id, s->spiffe_id, id_len + 1);
  memcpy(u->trust_domain, view.trust_domain, view.trust_domain_len);
  u->trust_domain[view.trust_domain_len] = '\0';
  u->intermediates = parse_der_certs(&s->x509_svid, "x509_svid", err, err_len);
  if (u->intermediates == NULL) return 0;
  u->leaf = sk_X509_shift(u->intermediates);
  u->key = parse_key(&s->x509_svid_key, err, err_len);
  if (u->key == NULL) return 0;
  if (!X509_check_private_key(u->leaf, u->key)) {
    ERR_clear_error();
    *why = MT_WLAPI_REFUSAL_KEY_MISMATCH;
    snprintf(err, err_len, "x509_svid_key is not the key of the SVID's certificate (%.*s)",
             (int)SHOWN_MAX, s->spiffe_id);
    return 0;
  }
  if (s->bundle.len > 0) {
    u->bundle = parse_der_certs(&s->bundle, "bundle", err, err_len);
    if (u->bundle == NULL) return 0;
  }
  return 1;
}

static int decode_federated(const X509SVIDResponse *r, mt_wlapi_svid_update *u, char *err,
                            size_t err_len) {
  if (r->n_federated_bundles > MT_WLAPI_MAX_TRUST_DOMAINS) {
    snprintf(err, err_len, "federated_bundles has %zu trust domains (at most %d)",
             r->n_federated_bundles, MT_WLAPI_MAX_TRUST_DOMAINS);
    return 0;
  }
  for (size_t i = 0; i < r->n_federated_bundles; i++) {
    const X509SVIDResponse__FederatedBundlesEntry *entry = r->federated_bundles[i];
    if (!add_bundle_entry(&u->federated, entry->key, &entry->value, "federated_bundles", err,
                          err_len))
      return 0;
  }
  /* The own trust domain's roots travel in |bundle|; a second set for it
   * here would make "which one is trusted" depend on the order we read. */
  if (find_bundle(&u->federated, u->trust_domain) != NULL) {
    snprintf(err, err_len, "federated_bundles names the SVID's own trust domain '%s'",
             u->trust_domain);
    return 0;
  }
  return 1;
}

/* Key bytes in the unpacked message are ours to wipe before it goes. */
static void wipe_keys(X509SVIDResponse *r) {
  for (size_t i = 0; i < r->n_svids; i++)
    if (r->svids[i]->x509_svid_key.data != NULL)
      OPENSSL_cleanse(r->svids[i]->x509_svid_key.data, r->svids[i]->x509_svid_key.len);
}

int mt_wlapi_decode_svid_response(const uint8_t *msg, size_t len, const char *want_id,
                                  mt_wlapi_svid_update *u, mt_wlapi_refusal *why, char *err,
                                  size_t err_len) {
  memset(u, 0, sizeof(*u));
  *why = MT_WLAPI_REFUSAL_MALFORMED;
  if (len > MT_WLAPI_MAX_MESSAGE_BYTES) {
    *why = MT_WLAPI_REFUSAL_TOO_LARGE;
    snprintf(err, err_len, "X509SVIDResponse of %zu bytes (at most %d)", len,
             MT_WLAPI_MAX_MESSAGE_BYTES);
    return 0;
  }
  X509SVIDResponse *r = x509_svidresponse__unpack(NULL, len, msg);
  if (r == NULL) {
    snprintf(err, err_len, "X509SVIDResponse does not decode as protobuf");
    return 0;
  }
  const X509SVID *s = pick_svid(r, want_id, why, err, err_len);
  int ok = s != NULL && decode_svid(s, u, why, err, err_len);
  if (ok) {
    *why = MT_WLAPI_REFUSAL_MALFORMED;
    ok = decode_federated(r, u, err, err_len);
  }
  wipe_keys(r);
  x509_svidresponse__free_unpacked(r, NULL);
  if (!ok) mt_wlapi_svid_update_clear(u);
  return ok;
}

/* ---- X509BundlesResponse ---- */

int mt_wlapi_decode_bundles_response(const uint8_t *msg, size_t len, mt_wlapi_bundles *out,
                                     char *err, size_t err_len) {
  memset(out, 0, sizeof(*out));
  if (len > MT_WLAPI_MAX_MESSAGE_BYTES) {
    snprintf(err, err_len, "X509BundlesResponse of %zu bytes (at most %d)", len,
             MT_WLAPI_MAX_MESSAGE_BYTES);
    return 0;
  }
  X509BundlesResponse *r = x509_bundles_response__unpack(NULL, len, msg);
  if (r == NULL) {
    snprintf(err, err_len, "X509BundlesResponse does not decode as protobuf");
    return 0;
  }
  int ok = 1;
  if (r->n_bundles == 0) {
    snprintf(err, err_len, "X509BundlesResponse carries no bundle");
    ok = 0;
  } else if (r->n_bundles > MT_WLAPI_MAX_TRUST_DOMAINS) {
    snprintf(err, err_len, "X509BundlesResponse has %zu trust domains (at most %d)", r->n_bundles,
             MT_WLAPI_MAX_TRUST_DOMAINS);
    ok = 0;
  }
  for (size_t i = 0; ok && i < r->n_bundles; i++)
    ok = add_bundle_entry(out, r->bundles[i]->key, &r->bundles[i]->value, "bundles", err, err_len);
  x509_bundles_response__free_unpacked(r, NULL);
  if (!ok) mt_wlapi_bundles_clear(out);
  return ok;
}
