/* workload_api_source: the SPIFFE Workload API identity source (a SPIRE
 * agent's socket, as Envoy and Ghostunnel consume it). Sidecar mode only.
 *
 * Owns one gRPC client on the configured Unix socket (plaintext HTTP/2) and
 * two server-streaming calls, each with the metadata
 * "workload.spiffe.io: true":
 *   FetchX509SVID    the SVID to serve (the first, or identity.spiffe_id's),
 *                    its key, its trust domain's roots, federated roots;
 *   FetchX509Bundles every trust domain's roots.
 * Trust is what the two streams said last: per trust domain, the later of
 * the two streams' last messages that names it wins, and a domain goes when
 * neither names it any more (so a domain only the bundles stream carries
 * survives every SVID rotation).
 *
 * Every message is checked as any other source's certificate is
 * (workload_api_response.h for its shape, then mt_identity_new: key matches
 * the leaf, a valid X509-SVID of the agent's trust domain, chains to the
 * trust bundle, currently valid). A message that fails is refused (counted,
 * logged, last error kept for /ready) and the last good identity keeps
 * serving. A message that passes becomes a new snapshot handed to |publish|;
 * live connections keep the snapshot they started with.
 *
 * A call that ends, or never connects, is started again after an
 * exponential backoff with jitter (identity.workload_api_retry_initial_ms
 * doubling up to ..._retry_max_ms); each stream's state changes are logged
 * once and counted, retries only at debug level. When the served SVID's
 * notAfter passes without a replacement, "no identity" is published (fail
 * closed) until a valid one arrives. A server that does not implement
 * FetchX509Bundles is not asked again; the X509-SVID stream then carries
 * all the trust.
 *
 * Runs on the main thread's loop; never blocks it. */
#ifndef MT_WORKLOAD_API_SOURCE_H
#define MT_WORKLOAD_API_SOURCE_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "agent/config.h"
#include "agent/identity.h"
#include "agent/workload_api_response.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_workload_api_source mt_workload_api_source;

/* Where snapshots go: |publish| receives one reference to |identity|, or
 * NULL (no usable identity: fail closed). */
typedef struct {
  void (*publish)(void *arg, mt_identity *identity);
  void *arg;
} mt_workload_api_source_sink;

/* Starts both calls on |loop| (connecting lazily; a missing socket is
 * retried like any other failure). Takes its own reference to |config|,
 * which must name identity.workload_api_socket. Returns NULL with a reason
 * in |err| only when the settings are unusable or memory is short. */
mt_workload_api_source *mt_workload_api_source_start(struct ev_loop *loop, mt_config *config,
                                                     const mt_workload_api_source_sink *sink,
                                                     char *err, size_t err_len);

void mt_workload_api_source_free(mt_workload_api_source *source); /* accepts NULL */

/* A reloaded config (policy, destinations, TLS settings): the served SVID
 * is rebuilt into a new snapshot with it and republished. The socket and
 * the retry settings only change at restart. */
void mt_workload_api_source_set_config(mt_workload_api_source *source, mt_config *config);

typedef enum {
  MT_WLAPI_STREAM_X509_SVID,
  MT_WLAPI_STREAM_X509_BUNDLES,
  MT_WLAPI_NUM_STREAMS
} mt_wlapi_stream;

typedef enum {
  MT_WLAPI_STATE_CONNECTING,  /* first call started, nothing received yet */
  MT_WLAPI_STATE_STREAMING,   /* the current call has delivered a message */
  MT_WLAPI_STATE_RETRYING,    /* a call ended (or never connected); calling again with backoff */
  MT_WLAPI_STATE_UNSUPPORTED, /* the server does not implement the method (bundles only) */
  MT_WLAPI_NUM_STATES
} mt_wlapi_state;

const char *mt_wlapi_stream_str(mt_wlapi_stream stream); /* "x509_svid", "x509_bundles" */
const char *mt_wlapi_state_str(mt_wlapi_state state);    /* "streaming", ... */

enum { MT_WLAPI_LAST_ERROR_MAX = 200 };

/* What the admin endpoint reports; counters only grow. */
typedef struct {
  const char *socket; /* the configured address (borrowed from the config) */
  mt_wlapi_state state[MT_WLAPI_NUM_STREAMS];
  uint64_t state_changes[MT_WLAPI_NUM_STREAMS];
  uint64_t calls_started[MT_WLAPI_NUM_STREAMS]; /* the first and every retry */
  uint64_t svids_served;                        /* SVIDs (new serials) put into service */
  uint64_t updates_taken; /* messages of either stream that passed every check */
  uint64_t refusals[MT_WLAPI_NUM_STREAMS][MT_WLAPI_NUM_REFUSALS];
  uint64_t refusals_total;
  time_t last_served_at; /* the last new SVID put into service (0: none yet) */
  time_t last_error_at;  /* the last refusal of either stream (0: none) */
  char last_error[MT_WLAPI_LAST_ERROR_MAX];
} mt_workload_api_source_stats;

void mt_workload_api_source_get_stats(const mt_workload_api_source *source,
                                      mt_workload_api_source_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* MT_WORKLOAD_API_SOURCE_H */
