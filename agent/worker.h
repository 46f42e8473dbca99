/* worker: the threads of the data plane.
 *
 * Each worker is one thread running one libev loop with its own copy of every
 * listener (SO_REUSEPORT lets the kernel spread new connections over them).
 * A worker owns the connections it accepted and never shares them. The main
 * thread talks to workers only through mt_workers_* calls, which hand over
 * immutable snapshots (identity) and stop requests via ev_async; nothing on
 * the data path takes a lock. */
#ifndef MT_WORKER_H
#define MT_WORKER_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/config.h"
#include "agent/conn.h"
#include "agent/destination_demand.h"
#include "agent/identity.h"
#include "agent/metrics.h"
#include "agent/workloads.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_workers mt_workers;

/* Binds every listener once per worker and starts the threads. The pool
 * takes its own references to |config| (whose listeners it keeps for its
 * whole life) and |identity|; |demand| (NULL: none) is borrowed and must
 * outlive the pool. Returns NULL with a reason in |err|. */
mt_workers *mt_workers_start(mt_config *config, mt_identity *identity, mt_demand *demand,
                             char *err, size_t err_len);

/* Hands a reloaded config to every worker (its listener settings are
 * ignored: listeners live as long as the pool). New connections and the
 * next phase of live ones read it; the pool takes its own references. */
void mt_workers_publish_config(mt_workers *pool, mt_config *config);

/* Hands a new identity snapshot (or NULL: no usable identity, fail closed) to
 * every worker; new connections use it, live ones keep theirs. */
void mt_workers_publish_identity(mt_workers *pool, mt_identity *identity);

/* Node mode: hands a new workload table (NULL = none usable) to every
 * worker, like mt_workers_publish_identity. */
void mt_workers_publish_workloads(mt_workers *pool, mt_workloads *table);

/* Stops accepting and lets live connections run for up to |drain_ms| (then
 * closes the rest), without waiting: the caller's loop keeps running (the
 * admin endpoint answers "draining") and polls mt_workers_drained. A second
 * call keeps the first deadline. Accepts NULL. */
void mt_workers_begin_stop(mt_workers *pool, int drain_ms);
/* 1 once every worker has finished (no connection left). */
int mt_workers_drained(const mt_workers *pool);

/* mt_workers_begin_stop if not yet begun, then joins the threads and frees
 * the pool. Accepts NULL. */
void mt_workers_stop(mt_workers *pool, int drain_ms);

/* The workers' counters, for scraping from any thread (|*count| entries;
 * valid until mt_workers_stop). */
mt_worker_metrics *const *mt_workers_metrics(const mt_workers *pool, size_t *count);

/* ---- for the data path, on the worker's own thread only ---- */
struct ev_loop *mt_worker_loop(mt_worker *worker);
const mt_config *mt_worker_config(const mt_worker *worker); /* the current one */
mt_identity *mt_worker_identity(mt_worker *worker);         /* borrowed; NULL = none usable */
/* Node mode: 1 when |workload| is a pod of this node (whether or not it
 * has a valid certificate now). */
int mt_worker_lists_workload(mt_worker *worker, const struct sockaddr *workload);

/* The identity that speaks for |workload| (port ignored): in node mode the
 * pod at that address, in sidecar mode our one identity. Borrowed; NULL =
 * none usable (unknown pod, no certificate, or expired). */
mt_identity *mt_worker_identity_for(mt_worker *worker, const struct sockaddr *workload);
mt_worker_metrics *mt_worker_metrics_of(mt_worker *worker);
/* Where destinations on demand are asked for (NULL: not on demand). */
mt_demand *mt_worker_demand(mt_worker *worker);
/* A uniformly distributed 64-bit number from the worker's own generator
 * (seeded from getrandom at start; not for secrets): node mode's choice of
 * a Service endpoint. */
uint64_t mt_worker_random(mt_worker *worker);
struct mt_buffer_pool *mt_worker_buffers(mt_worker *worker); /* the relay buffers */
struct mt_mem_trim *mt_worker_mem_trim(mt_worker *worker);
/* A slot among the inbound handshakes |source| may have in progress on this
 * worker (its share of handshakes_per_source): 1 taken (give it back once
 * with mt_worker_give_source_slot), 0 refused. */
int mt_worker_take_source_slot(mt_worker *worker, const struct sockaddr *source);
void mt_worker_give_source_slot(mt_worker *worker, const struct sockaddr *source);
void mt_worker_link(mt_worker *worker, mt_conn *conn);
void mt_worker_unlink(mt_worker *worker, mt_conn *conn);
/* The held list (see mt_conn_hold): every connection on it has its resume
 * function called after the worker takes a new identity, workload table or
 * config from its mailbox. Both calls are idempotent. */
void mt_worker_hold(mt_worker *worker, mt_conn *conn);
void mt_worker_unhold(mt_worker *worker, mt_conn *conn);

#ifdef __cplusplus
}
#endif

#endif /* MT_WORKER_H */
