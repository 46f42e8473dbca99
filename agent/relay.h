/* relay: moves bytes between a connection's two endpoints.
 *
 * Buffers borrowed from the worker's pool (agent/buffer_pool.h) only while a
 * direction has bytes in flight, so an idle connection holds none; a
 * connection that cannot get one is closed with "out_of_memory".
 * Backpressure both ways (a full buffer stops reading its source),
 * half-close propagated (a FIN or TLS
 * close_notify on one side becomes close_notify or FIN on the other once the
 * buffer is drained), idle timeout. The connection is closed when both
 * directions have finished or either side fails. */
#ifndef MT_RELAY_H
#define MT_RELAY_H

#include <stddef.h>

#include "agent/buffer_pool.h"
#include "agent/conn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The buffer pool a worker with at most |max_conns| connections needs. */
mt_buffer_pool *mt_relay_buffer_pool_new(size_t max_conns);

/* Gives back whatever buffers |conn| still holds (called when it closes). */
void mt_relay_release(mt_conn *conn);

/* Enters the relay phase (state MT_CONN_RELAYING) and moves what is ready. */
void mt_relay_start(mt_conn *conn);

/* Handles readiness on |ep| during the relay phase. */
void mt_relay_on_event(mt_conn *conn, mt_endpoint *ep, int revents);

#ifdef __cplusplus
}
#endif

#endif /* MT_RELAY_H */
