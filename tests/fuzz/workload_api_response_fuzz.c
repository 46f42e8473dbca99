/* libFuzzer target: the SPIFFE Workload API response decoder
 * (agent/workload_api_response.h) on arbitrary bytes, as an
 * X509SVIDResponse (without and with a wanted SPIFFE ID) and as an
 * X509BundlesResponse.
 *
 * Oracles, besides "never crashes, never leaks" (ASan/UBSan):
 *  - a refusal has a known reason, a non-empty text, and leaves nothing
 *    behind (the update is all zero);
 *  - an accepted SVID has a key, a leaf, and the key is the leaf's; its ID
 *    parses as a SPIFFE ID whose trust domain is the update's; the wanted
 *    ID, when given, is the one returned;
 *  - every trust domain in an accepted message is a valid name, appears
 *    once, has at least one root, and the federated ones never name the
 *    SVID's own; no list is longer than the documented limits;
 *  - merging two accepted lists names every domain of both, with the
 *    newer list's roots for a domain both name. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "agent/svid.h"
#include "agent/workload_api_response.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                            \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      fprintf(stderr, "workload_api_response_fuzz: invariant failed at %s:%d: %s\n", __FILE__, \
              __LINE__, #cond);                                                                \
      abort();                                                                                 \
    }                                                                                          \
  } while (0)

static const char WANTED[] = "spiffe://example.org/ns/default/sa/web";

static void check_bundles(const mt_wlapi_bundles *b) {
  CHECK(b->count <= MT_WLAPI_MAX_TRUST_DOMAINS);
  for (size_t i = 0; i < b->count; i++) {
    const char *td = b->items[i].trust_domain;
    CHECK(mt_trust_domain_validate(td, strlen(td)) == MT_SPIFFE_OK);
    CHECK(sk_X509_num(b->items[i].roots) >= 1);
    CHECK(sk_X509_num(b->items[i].roots) <= MT_WLAPI_MAX_CERTS);
    for (size_t j = i + 1; j < b->count; j++) CHECK(strcmp(td, b->items[j].trust_domain) != 0);
  }
}

static int all_zero(const void *p, size_t n) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++)
    if (b[i] != 0) return 0;
  return 1;
}

static void check_svid(const uint8_t *data, size_t size, const char *want,
                       mt_wlapi_bundles *federated_out) {
  mt_wlapi_svid_update u;
  mt_wlapi_refusal why = MT_WLAPI_NUM_REFUSALS;
  char err[512] = "";
  if (!mt_wlapi_decode_svid_response(data, size, want, &u, &why, err, sizeof(err))) {
    CHECK(why < MT_WLAPI_NUM_REFUSALS);
    CHECK(strcmp(mt_wlapi_refusal_str(why), "unknown") != 0);
    CHECK(err[0] != '\0');
    CHECK(all_zero(&u, sizeof(u)));
    return;
  }
  CHECK(u.key != NULL && u.leaf != NULL && u.intermediates != NULL);
  CHECK(X509_check_private_key(u.leaf, u.key) == 1);
  CHECK(sk_X509_num(u.intermediates) < MT_WLAPI_MAX_CERTS);
  mt_spiffe_id_view view;
  CHECK(mt_spiffe_id_parse(u.spiffe_id, strlen(u.spiffe_id), &view) == MT_SPIFFE_OK);
  CHECK(view.trust_domain_len == strlen(u.trust_domain));
  CHECK(memcmp(view.trust_domain, u.trust_domain, view.trust_domain_len) == 0);
  if (want != NULL) CHECK(strcmp(u.spiffe_id, want) == 0);
  CHECK(u.bundle == NULL ||
        (sk_X509_num(u.bundle) >= 1 && sk_X509_num(u.bundle) <= MT_WLAPI_MAX_CERTS));
  check_bundles(&u.federated);
  CHECK(mt_wlapi_bundles_get(&u.federated, u.trust_domain) == NULL);
  if (federated_out != NULL) CHECK(mt_wlapi_bundles_copy(&u.federated, federated_out));
  mt_wlapi_svid_update_clear(&u);
  CHECK(all_zero(&u, sizeof(u)));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mt_wlapi_bundles federated = {0}, bundles = {0}, merged = {0};
  check_svid(data, size, NULL, &federated);
  check_svid(data, size, WANTED, NULL);
  char err[512] = "";
  if (mt_wlapi_decode_bundles_response(data, size, &bundles, err, sizeof(err))) {
    CHECK(bundles.count >= 1);
    check_bundles(&bundles);
  } else {
    CHECK(err[0] != '\0');
    CHECK(bundles.count == 0 && bundles.items == NULL);
  }
  CHECK(mt_wlapi_bundles_merge(&federated, &bundles, &merged));
  for (size_t i = 0; i < federated.count; i++)
    CHECK(mt_wlapi_bundles_get(&merged, federated.items[i].trust_domain) != NULL);
  for (size_t i = 0; i < bundles.count; i++) { /* the newer list's roots win */
    const STACK_OF(X509) *got = mt_wlapi_bundles_get(&merged, bundles.items[i].trust_domain);
    CHECK(got != NULL && sk_X509_num(got) == sk_X509_num(bundles.items[i].roots));
    for (size_t r = 0; r < sk_X509_num(got); r++)
      CHECK(X509_cmp(sk_X509_value(got, r), sk_X509_value(bundles.items[i].roots, r)) == 0);
  }
  CHECK(merged.count <= federated.count + bundles.count);
  mt_wlapi_bundles_clear(&federated);
  mt_wlapi_bundles_clear(&bundles);
  mt_wlapi_bundles_clear(&merged);
  ERR_clear_error();
  return 0;
}
