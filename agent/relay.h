/* relay: moves bytes between a connection's two endpoints.
 *
 * Fixed buffers (no allocation per byte), backpressure both ways (a full
 * buffer stops reading its source), half-close propagated (a FIN or TLS
 * close_notify on one side becomes close_notify or FIN on the other once the
 * buffer is drained), idle timeout. The connection is closed when both
 * directions have finished or either side fails. */
#ifndef MT_RELAY_H
#define MT_RELAY_H

#include "agent/conn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Enters the relay phase (state MT_CONN_RELAYING) and moves what is ready. */
void mt_relay_start(mt_conn *conn);

/* Handles readiness on |ep| during the relay phase. */
void mt_relay_on_event(mt_conn *conn, mt_endpoint *ep, int revents);

#ifdef __cplusplus
}
#endif

#endif /* MT_RELAY_H */
