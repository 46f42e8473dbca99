/* metrics: the data plane's counters, one set per worker thread, summed only
 * when scraped.
 *
 * A worker updates its own mt_worker_metrics and nobody else writes to it,
 * so the hot path never takes a lock or a contended atomic: every counter is
 * a C11 atomic that the owner bumps with a relaxed load and a relaxed store
 * (plain moves on x86), and the scraper reads with relaxed loads. Counters
 * keyed by strings that are only known at run time (authorization rule,
 * TLS version and cipher) live in small append-only tables whose entries are
 * published with release/acquire and never removed, so a reader never sees
 * a half-written key. A table that fills up counts further keys under
 * "other" rather than allocating on the data path forever.
 *
 * Rendering writes the Prometheus text exposition format (version 0.0.4)
 * into an mt_text buffer (agent/text.h); the agent-wide gauges (certificate,
 * control plane, reloads) follow in the same buffer, from admin_metrics.c. */
#ifndef MT_METRICS_H
#define MT_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "agent/conn.h"
#include "agent/policy.h"
#include "agent/reason.h"
#include "agent/text.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- per-worker counters ---- */
typedef struct mt_worker_metrics mt_worker_metrics;

mt_worker_metrics *mt_worker_metrics_new(void);
void mt_worker_metrics_free(mt_worker_metrics *m); /* accepts NULL */

/* Owner thread only. */
void mt_metrics_conn_opened(mt_worker_metrics *m, mt_direction dir);
void mt_metrics_conn_closed(mt_worker_metrics *m, mt_direction dir, mt_reason reason,
                            uint64_t bytes_to_upstream, uint64_t bytes_to_downstream);
/* A mesh-side TLS handshake ended: |ok| with its |seconds| from the first
 * handshake step, |version| and |cipher| (ignored when !ok). */
void mt_metrics_handshake(mt_worker_metrics *m, mt_direction dir, int ok, double seconds,
                          const char *version, const char *cipher);
/* A completed mesh-side handshake was a |resumed| session or a full one. */
void mt_metrics_handshake_mode(mt_worker_metrics *m, mt_direction dir, int resumed);
void mt_metrics_decision(mt_worker_metrics *m, mt_direction dir, mt_action action,
                         const char *rule);
/* A connection began waiting for a certificate (mt_conn_hold), and its wait
 * ended after |seconds|: |resumed| with an identity, or not (closed). */
void mt_metrics_hold_began(mt_worker_metrics *m, mt_direction dir);
void mt_metrics_hold_ended(mt_worker_metrics *m, mt_direction dir, int resumed, double seconds);

/* A listener stopped accepting for want of descriptors or memory (an
 * episode began), and accepted again after |seconds| (it ended). */
void mt_metrics_accept_paused(mt_worker_metrics *m);
void mt_metrics_accept_resumed(mt_worker_metrics *m, double seconds);

/* Handshake latency buckets (upper bounds, seconds), shared with tests. */
extern const double mt_handshake_buckets[];
extern const size_t mt_num_handshake_buckets;

/* Any thread: appends the sum over |workers| as Prometheus text. */
void mt_metrics_render(mt_text *out, mt_worker_metrics *const *workers, size_t num_workers);

#ifdef __cplusplus
}
#endif

#endif /* MT_METRICS_H */
