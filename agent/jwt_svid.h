/* jwt_svid: the agent's JWT-SVIDs, for the SPIFFE Workload API's
 * FetchJWTSVID, FetchJWTBundles and ValidateJWTSVID (PROTOCOL.md 4).
 *
 * Owns three things, all on the main libev loop (nothing blocks, nothing
 * runs on another thread):
 *   - fetching: SignJwtSvid calls to mtls-ca (proto/mtlsd/jwt.proto) on the
 *     cert_manager's gRPC client (borrowed, mt_cert_manager_grpc), with the
 *     bearer token read afresh for each call (mt_ca_read_bearer) and, for a
 *     workload of this node, its SPIFFE ID in "impersonatedidentity";
 *   - a cache of signed tokens (jwt_svid_cache.h): answers while more than
 *     half of a token's life is left, refreshes in the background before
 *     that, drops idle entries, holds at most max_cache_entries; concurrent
 *     fetches of one key share one call; when mtls-ca fails, a cached token
 *     that has not expired is still better than nothing and is answered;
 *   - the JWT bundles: a WatchJwtBundles stream kept open (reconnected with
 *     exponential backoff), the set in force (jwt_bundles.h) and the sink
 *     told whenever it changes; and validation against it.
 *
 * Callbacks always run from the loop, never from inside the call that
 * started them. No callback may free the source. */
#ifndef MT_JWT_SVID_H
#define MT_JWT_SVID_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/jwt_bundles.h"
#include "grpc/client.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MT_JWT_SVID_SIGN_METHOD "/mtlsd.jwt.v1.JwtSvidService/SignJwtSvid"
#define MT_JWT_SVID_WATCH_METHOD "/mtlsd.jwt.v1.JwtSvidService/WatchJwtBundles"
#define MT_JWT_SVID_IMPERSONATION_HEADER "impersonatedidentity"

enum {
  MT_JWT_SVID_DEFAULT_TIMEOUT_MS = 10000,
  MT_JWT_SVID_DEFAULT_RETRY_INITIAL_MS = 1000,
  MT_JWT_SVID_DEFAULT_RETRY_MAX_MS = 30000,
  MT_JWT_SVID_DEFAULT_MAX_ENTRIES = 1024,
  MT_JWT_SVID_DEFAULT_IDLE_S = 600,
  MT_JWT_SVID_SWEEP_INTERVAL_S = 30,
  MT_JWT_SVID_MESSAGE_MAX = 256,
};

typedef struct {
  const char *token_file;     /* bearer token for mtls-ca; NULL: no authorization (copied) */
  const char *cluster_id;     /* "clusterid" metadata; NULL: none (copied) */
  int64_t request_timeout_ms; /* per SignJwtSvid call; 0: default */
  int64_t retry_initial_ms;   /* bundle stream reconnect backoff; 0: default */
  int64_t retry_max_ms;       /* 0: default */
  size_t max_cache_entries;   /* 0: default */
  int64_t cache_idle_s;       /* an entry not asked for this long is dropped; 0: default */
} mt_jwt_svid_options;

typedef struct {
  /* The bundle set in force changed (borrowed; valid until the next call
   * of on_bundles or the source's free; mt_jwt_svid_bundles returns it
   * too). Optional. */
  void (*on_bundles)(void *arg, const mt_jwt_bundles *bundles);
  void *arg;
} mt_jwt_svid_sink;

typedef struct mt_jwt_svid_source mt_jwt_svid_source;

/* Borrows |grpc| (it must outlive the source). Starts the bundle stream on
 * the next loop iteration. Returns NULL with the reason in |err|. */
mt_jwt_svid_source *mt_jwt_svid_source_new(struct ev_loop *loop, mt_grpc_client *grpc,
                                           const mt_jwt_svid_options *options,
                                           const mt_jwt_svid_sink *sink, char *err, size_t err_len);

/* Cancels every fetch (no callback runs) and the bundle stream. Accepts NULL. */
void mt_jwt_svid_source_free(mt_jwt_svid_source *source);

/* ---- fetching -------------------------------------------------------------- */

/* What a fetch ends with. Strings are valid during the callback only. */
typedef struct {
  mt_grpc_status status; /* OK, or mtls-ca's refusal, or a transport failure */
  const char *message;   /* why, when status is not OK ("" on OK) */
  const char *token;     /* the JWT-SVID (compact form) on OK */
  const char *spiffe_id; /* its "sub" */
  int64_t expires_at;    /* its "exp", Unix seconds */
  int from_cache;
} mt_jwt_svid_result;

typedef void (*mt_jwt_svid_done_fn)(void *arg, const mt_jwt_svid_result *result);

typedef struct mt_jwt_svid_fetch mt_jwt_svid_fetch;

/* Asks for a JWT-SVID of |spiffe_id| for |audiences| (1..32, non-empty;
 * copied). |impersonate| 1: for a workload of this node (node mode; the
 * agent's token is the node agent's own); 0: for the agent's own identity,
 * and a token mtls-ca signs for another identity than |spiffe_id| is
 * refused (PERMISSION_DENIED), never handed on. |done| runs exactly once,
 * from the loop, unless the fetch is cancelled first. Returns NULL (and
 * |done| never runs) for bad arguments or no memory, the reason in |err|. */
mt_jwt_svid_fetch *mt_jwt_svid_fetch_start(mt_jwt_svid_source *source, const char *spiffe_id,
                                           int impersonate, const char *const *audiences,
                                           size_t num_audiences, mt_jwt_svid_done_fn done,
                                           void *arg, char *err, size_t err_len);

/* Abandons a fetch whose |done| has not run; it never will. NULL is fine. */
void mt_jwt_svid_fetch_cancel(mt_jwt_svid_fetch *fetch);

/* ---- bundles and validation ------------------------------------------------ */

/* The bundle set in force (borrowed; NULL until the first one arrived). */
const mt_jwt_bundles *mt_jwt_svid_bundles(const mt_jwt_svid_source *source);

/* Validates |token| for |audience| now against the bundles in force
 * (mt_jwt_bundles_validate). Returns 1 with |out| filled (dispose it), or 0
 * with the reason in |err| (also when no bundle has arrived yet). */
int mt_jwt_svid_validate(const mt_jwt_svid_source *source, const char *token, size_t len,
                         const char *audience, mt_jwt_svid_valid *out, char *err, size_t err_len);

/* ---- state, for the admin endpoint ------------------------------------------ */

typedef struct {
  uint64_t fetches;        /* fetches started */
  uint64_t cache_hits;     /* of those, answered from the cache */
  uint64_t calls;          /* SignJwtSvid calls made (shared ones count once) */
  uint64_t call_failures;  /* of those, failed or refused */
  uint64_t bundle_updates; /* bundle sets that came into force */
  uint64_t bundle_refused; /* bundle messages refused (the set in force stayed) */
  int bundles_streaming;   /* the bundle stream is open and has delivered */
  size_t cached;           /* entries in the cache now */
} mt_jwt_svid_stats;

void mt_jwt_svid_get_stats(const mt_jwt_svid_source *source, mt_jwt_svid_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* MT_JWT_SVID_H */
