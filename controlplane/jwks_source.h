/* jwks_source: the API server's service-account signing keys, kept current
 * for mtls-ca, so that no key file has to be converted and mounted by hand.
 *
 * GETs /openid/v1/jwks through the Kubernetes API client (k8s_client.h;
 * the caller needs the system:service-account-issuer-discovery role) at
 * start, every |refresh_ms|, and soon after a token was refused for an
 * unknown key or a bad signature (mt_jwks_source_refresh_soon: the API
 * server may have rotated its key), at most once per |min_interval_ms| so a
 * flood of forged tokens cannot turn into a flood of API requests. A set
 * that parses (jwks.h) is handed over (on_keys); a failed fetch keeps the
 * set in force, is reported (on_log) and retried with exponential backoff.
 * One loop, no threads. */
#ifndef MT_CP_JWKS_SOURCE_H
#define MT_CP_JWKS_SOURCE_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include "controlplane/jwt.h"
#include "controlplane/k8s_client.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MT_JWKS_PATH "/openid/v1/jwks"

typedef struct {
  /* A new key set (ownership passes); |skipped| keys were not usable. */
  void (*on_keys)(void *ctx, mt_jwt_keys *keys, size_t skipped);
  /* One line per failed fetch or refused document. */
  void (*on_error)(void *ctx, const char *line);
} mt_jwks_source_callbacks;

typedef struct mt_jwks_source mt_jwks_source;

/* Borrows |client| (it must outlive the source). Starts the first fetch on
 * the next loop iteration. Returns NULL when out of memory. */
mt_jwks_source *mt_jwks_source_new(struct ev_loop *loop, mt_k8s_client *client,
                                   int64_t refresh_ms, int64_t min_interval_ms,
                                   const mt_jwks_source_callbacks *callbacks, void *ctx);
void mt_jwks_source_free(mt_jwks_source *source); /* accepts NULL */

/* Asks for a fetch as soon as the rate limit allows (no-op while one is in
 * flight or already scheduled sooner). */
void mt_jwks_source_refresh_soon(mt_jwks_source *source);

/* Counters for logs and tests. */
typedef struct {
  uint64_t fetches;  /* GETs started */
  uint64_t loaded;   /* sets handed over */
  uint64_t failures; /* fetches that failed or were refused */
} mt_jwks_source_stats;

void mt_jwks_source_get_stats(const mt_jwks_source *source, mt_jwks_source_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_JWKS_SOURCE_H */
