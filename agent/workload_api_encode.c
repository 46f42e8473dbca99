/* workload_api_encode.c: X509SVIDResponse and X509BundlesResponse, encoded. */
#include "agent/workload_api_encode.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bytestring.h>
#include <openssl/mem.h>
#include <openssl/x509.h>

#include "agent/svid.h"
#include "proto/spiffe/workload.pb-c.h"

enum { TD_ID_MAX = sizeof("spiffe://") + MT_TRUST_DOMAIN_MAX_LEN };

/* DER certificates concatenated into |cbb|. */
static int add_der(CBB *cbb, X509 *cert) {
  uint8_t *der = NULL;
  int len = i2d_X509(cert, &der);
  int ok = len > 0 && CBB_add_bytes(cbb, der, (size_t)len);
  OPENSSL_free(der);
  return ok;
}

static int roots_der(const STACK_OF(X509) * roots, ProtobufCBinaryData *out) {
  CBB cbb;
  if (!CBB_init(&cbb, 0)) return 0;
  for (size_t i = 0; i < sk_X509_num(roots); i++)
    if (!add_der(&cbb, sk_X509_value(roots, i))) {
      CBB_cleanup(&cbb);
      return 0;
    }
  return CBB_finish(&cbb, &out->data, &out->len);
}

/* One map entry per trust domain except |skip| (NULL: none). The entries
 * and their data are allocated here; free_entries releases them. */
typedef struct {
  ProtobufCMessage base; /* the generated entry types share this layout */
  char *key;
  ProtobufCBinaryData value;
} bundle_entry;

static void free_entries(bundle_entry **entries, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(entries[i]->key);
    OPENSSL_free(entries[i]->value.data);
    free(entries[i]);
  }
  free(entries);
}

static int make_entries(const mt_trust *trust, const char *skip, void (*init)(bundle_entry *entry),
                        bundle_entry ***out, size_t *n) {
  size_t count = mt_trust_num_domains(trust);
  *n = 0;
  *out = calloc(count + 1, sizeof(**out));
  if (*out == NULL) return 0;
  for (size_t i = 0; i < count; i++) {
    const char *td = mt_trust_domain_at(trust, i);
    if (skip != NULL && strcmp(td, skip) == 0) continue;
    bundle_entry *e = calloc(1, sizeof(*e));
    if (e == NULL) return 0;
    init(e);
    (*out)[(*n)++] = e;
    char key[TD_ID_MAX];
    snprintf(key, sizeof(key), "spiffe://%s", td);
    e->key = strdup(key);
    if (e->key == NULL || !roots_der(mt_trust_roots_at(trust, i), &e->value)) return 0;
  }
  return 1;
}

static void init_federated(bundle_entry *e) {
  x509_svidresponse__federated_bundles_entry__init(
      (X509SVIDResponse__FederatedBundlesEntry *)(void *)e);
}

static void init_bundle(bundle_entry *e) {
  x509_bundles_response__bundles_entry__init((X509BundlesResponse__BundlesEntry *)(void *)e);
}

/* Packs |msg| into a fresh buffer. */
static int pack(const ProtobufCMessage *msg, uint8_t **out, size_t *out_len) {
  *out_len = protobuf_c_message_get_packed_size(msg);
  *out = malloc(*out_len ? *out_len : 1);
  if (*out == NULL) return 0;
  protobuf_c_message_pack(msg, *out);
  return 1;
}

int mt_wl_encode_x509_svid(const mt_identity *svid, uint8_t **out, size_t *out_len) {
  *out = NULL;
  *out_len = 0;
  const mt_trust *trust = mt_identity_trust(svid);
  const char *id = mt_identity_spiffe_id(svid);
  mt_spiffe_id_view view;
  if (mt_spiffe_id_parse(id, strlen(id), &view) != MT_SPIFFE_OK) return 0;
  char own_td[MT_TRUST_DOMAIN_MAX_LEN + 1];
  snprintf(own_td, sizeof(own_td), "%.*s", (int)view.trust_domain_len, view.trust_domain);

  X509SVID one = X509_SVID__INIT;
  X509SVID *svids[1] = {&one};
  one.spiffe_id = (char *)id;
  CBB chain;
  int ok = CBB_init(&chain, 0) && add_der(&chain, mt_identity_leaf(svid));
  const STACK_OF(X509) *inter = mt_identity_chain(svid);
  for (size_t i = 0; ok && inter != NULL && i < sk_X509_num(inter); i++)
    ok = add_der(&chain, sk_X509_value(inter, i));
  ok = ok && CBB_finish(&chain, &one.x509_svid.data, &one.x509_svid.len);
  if (!ok) CBB_cleanup(&chain);
  ok = ok && mt_identity_export_key(svid, &one.x509_svid_key.data, &one.x509_svid_key.len);
  for (size_t i = 0; ok && i < mt_trust_num_domains(trust); i++)
    if (strcmp(mt_trust_domain_at(trust, i), own_td) == 0)
      ok = roots_der(mt_trust_roots_at(trust, i), &one.bundle);

  bundle_entry **fed = NULL;
  size_t n_fed = 0;
  ok = ok && make_entries(trust, own_td, init_federated, &fed, &n_fed);
  X509SVIDResponse resp = X509_SVIDRESPONSE__INIT;
  resp.n_svids = 1;
  resp.svids = svids;
  resp.n_federated_bundles = n_fed;
  resp.federated_bundles = (X509SVIDResponse__FederatedBundlesEntry **)(void *)fed;
  ok = ok && pack(&resp.base, out, out_len);

  OPENSSL_free(one.x509_svid.data);
  if (one.x509_svid_key.data != NULL)
    OPENSSL_cleanse(one.x509_svid_key.data, one.x509_svid_key.len);
  OPENSSL_free(one.x509_svid_key.data);
  OPENSSL_free(one.bundle.data);
  if (fed != NULL) free_entries(fed, n_fed);
  if (!ok && *out != NULL) {
    OPENSSL_cleanse(*out, *out_len);
    free(*out);
    *out = NULL;
  }
  return ok;
}

int mt_wl_encode_x509_bundles(const mt_trust *trust, uint8_t **out, size_t *out_len) {
  *out = NULL;
  *out_len = 0;
  bundle_entry **entries = NULL;
  size_t n = 0;
  int ok = make_entries(trust, NULL, init_bundle, &entries, &n);
  X509BundlesResponse resp = X509_BUNDLES_RESPONSE__INIT;
  resp.n_bundles = n;
  resp.bundles = (X509BundlesResponse__BundlesEntry **)(void *)entries;
  ok = ok && pack(&resp.base, out, out_len);
  if (entries != NULL) free_entries(entries, n);
  return ok;
}

int mt_wl_encode_jwt_svid(const char *spiffe_id, const char *token, uint8_t **out,
                          size_t *out_len) {
  JWTSVID one = JWTSVID__INIT;
  JWTSVID *svids[1] = {&one};
  one.spiffe_id = (char *)spiffe_id;
  one.svid = (char *)token;
  JWTSVIDResponse resp = JWTSVIDRESPONSE__INIT;
  resp.n_svids = 1;
  resp.svids = svids;
  return pack(&resp.base, out, out_len);
}

int mt_wl_encode_jwt_bundles(const mt_jwt_bundles *bundles, uint8_t **out, size_t *out_len) {
  *out = NULL;
  size_t n = mt_jwt_bundles_count(bundles);
  JWTBundlesResponse__BundlesEntry *entries = calloc(n + 1, sizeof(*entries));
  JWTBundlesResponse__BundlesEntry **ptrs = calloc(n + 1, sizeof(*ptrs));
  int ok = entries != NULL && ptrs != NULL;
  for (size_t i = 0; ok && i < n; i++) {
    mt_jwt_bundle_view b = mt_jwt_bundles_at(bundles, i);
    jwtbundles_response__bundles_entry__init(&entries[i]);
    entries[i].key = (char *)b.trust_domain_id;
    entries[i].value.data = (uint8_t *)b.jwks;
    entries[i].value.len = b.jwks_len;
    ptrs[i] = &entries[i];
  }
  JWTBundlesResponse resp = JWTBUNDLES_RESPONSE__INIT;
  resp.n_bundles = n;
  resp.bundles = ptrs;
  ok = ok && pack(&resp.base, out, out_len);
  free(entries);
  free(ptrs);
  return ok;
}

int mt_wl_encode_validated(const char *spiffe_id, const Google__Protobuf__Struct *claims,
                           uint8_t **out, size_t *out_len) {
  ValidateJWTSVIDResponse resp = VALIDATE_JWTSVIDRESPONSE__INIT;
  resp.spiffe_id = (char *)spiffe_id;
  resp.claims = (Google__Protobuf__Struct *)claims;
  return pack(&resp.base, out, out_len);
}
