/* issuer_source: the service-account token issuer, discovered from the API
 * server, so that the operator does not have to find and type it (managed
 * clusters such as EKS, GKE and AKS each use their own URL).
 *
 * GETs /.well-known/openid-configuration through the Kubernetes API client
 * (k8s_client.h; the caller needs the system:service-account-issuer-discovery
 * role) at start, every |refresh_ms| (an issuer changes when the cluster is
 * reconfigured), and soon after mt_issuer_source_refresh_soon, at most once
 * per |min_interval_ms|. The document is read by oidc_discovery.h. An
 * accepted issuer is handed over (on_issuer); a failed fetch or a refused
 * document keeps the issuer discovered before (none at first), is reported
 * (on_error, one line naming what was wrong) and retried with exponential
 * backoff (k8s_document.h). One loop, no threads; nothing here logs. */
#ifndef MT_CP_ISSUER_SOURCE_H
#define MT_CP_ISSUER_SOURCE_H

#include <ev.h>
#include <stdint.h>

#include "controlplane/k8s_client.h"
#include "controlplane/oidc_discovery.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  /* Each accepted document's issuer (borrowed for the call); |changed| is 1
   * the first time and whenever it differs from the previous one. */
  void (*on_issuer)(void *ctx, const char *issuer, int changed);
  /* One line per failed fetch or refused document. */
  void (*on_error)(void *ctx, const char *line);
} mt_issuer_source_callbacks;

typedef struct mt_issuer_source mt_issuer_source;

/* Borrows |client| (it must outlive the source). Starts the first fetch on
 * the next loop iteration. Returns NULL when out of memory. */
mt_issuer_source *mt_issuer_source_new(struct ev_loop *loop, mt_k8s_client *client,
                                       int64_t refresh_ms, int64_t min_interval_ms,
                                       const mt_issuer_source_callbacks *callbacks, void *ctx);
void mt_issuer_source_free(mt_issuer_source *source); /* accepts NULL */

/* Asks for a fetch as soon as the rate limit allows. Accepts NULL. */
void mt_issuer_source_refresh_soon(mt_issuer_source *source);

/* The last issuer discovered (borrowed, valid until the next fetch), or
 * NULL before the first. */
const char *mt_issuer_source_issuer(const mt_issuer_source *source);

typedef struct {
  uint64_t fetches;  /* GETs started */
  uint64_t loaded;   /* documents accepted */
  uint64_t failures; /* fetches that failed or documents refused */
} mt_issuer_source_stats;

void mt_issuer_source_get_stats(const mt_issuer_source *source, mt_issuer_source_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_ISSUER_SOURCE_H */
