/* k8s_document: one small document of the API server (the service-account
 * issuer's JWKS, its OpenID discovery document), kept current for mtls-ca.
 *
 * GETs |path| through the Kubernetes API client (k8s_client.h) at start,
 * every |refresh_ms|, and soon after mt_k8s_document_refresh_soon (at most
 * once per |min_interval_ms|, so a flood of bad tokens cannot become a flood
 * of API requests). One GET at a time. A body larger than |max_bytes|, a
 * transfer error or a status other than 200 is a failure; a complete body
 * goes to on_body, which accepts it or says why not. A failure is reported
 * (on_error, with the reason and the delay) and retried with exponential
 * backoff (1 s doubling up to 60 s); an accepted body resets the backoff
 * and the next fetch is |refresh_ms| away. What the owner did with the
 * last accepted body stays in force: this module keeps nothing of it.
 * One loop, no threads; nothing here logs. */
#ifndef MT_CP_K8S_DOCUMENT_H
#define MT_CP_K8S_DOCUMENT_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include "controlplane/k8s_client.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { MT_K8S_DOCUMENT_WHY_MAX = 512 };

/* The hint for a 403 on the service-account issuer's documents. */
#define MT_K8S_ISSUER_DISCOVERY_ROLE_HINT \
  "mtls-ca needs the system:service-account-issuer-discovery ClusterRole"

typedef struct {
  /* The whole body (NUL-terminated, |len| bytes without the NUL). Returns 1
   * when the owner accepted it, else 0 with the reason in |why|. */
  int (*on_body)(void *ctx, const char *body, size_t len, char *why, size_t why_len);
  /* A failed fetch or a refused body: |why| names what was wrong; the next
   * attempt is |retry_s| away. */
  void (*on_error)(void *ctx, const char *why, double retry_s);
} mt_k8s_document_callbacks;

typedef struct {
  const char *path; /* begins with "/"; copied */
  size_t max_bytes;
  int64_t refresh_ms, min_interval_ms;
  /* Optional (NULL: none; copied): added to the reason of an HTTP 403 or
   * 404 answer, e.g. which role the caller lacks. */
  const char *forbidden_hint, *not_found_hint;
} mt_k8s_document_config;

typedef struct mt_k8s_document mt_k8s_document;

/* Borrows |client| (it must outlive the document). The first fetch starts on
 * the next loop iteration. Returns NULL when out of memory. */
mt_k8s_document *mt_k8s_document_new(struct ev_loop *loop, mt_k8s_client *client,
                                     const mt_k8s_document_config *config,
                                     const mt_k8s_document_callbacks *callbacks, void *ctx);
void mt_k8s_document_free(mt_k8s_document *doc); /* accepts NULL */

/* Asks for a fetch as soon as the rate limit allows (no-op while one is in
 * flight or already scheduled sooner). Accepts NULL. */
void mt_k8s_document_refresh_soon(mt_k8s_document *doc);

typedef struct {
  uint64_t fetches;  /* GETs started */
  uint64_t accepted; /* bodies on_body accepted */
  uint64_t failures; /* fetches that failed or whose body was refused */
} mt_k8s_document_stats;

void mt_k8s_document_get_stats(const mt_k8s_document *doc, mt_k8s_document_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_K8S_DOCUMENT_H */
