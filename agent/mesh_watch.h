/* mesh_watch: the agent's subscription to the control plane's mesh config
 * (mtlsd.mesh.v1.MeshConfig/Watch, server streaming). Each message is
 * decoded and validated by mesh_snapshot.h before a handler sees it; a
 * snapshot with any error goes to on_rejected and the stream goes on.
 *
 * The agent asks for deltas (mesh.proto, WatchRequest.accept_deltas): the
 * watch holds the last complete content it received (mesh_delta.h), turns
 * each delta into the complete snapshot it makes of that content, and
 * hands that on exactly like a complete one, so handlers never see a
 * delta. The content is held even when validation rejected it, because
 * the server's next delta builds on what it sent. A delta that does not
 * apply (another base version, an entry it removes is not held) ends the
 * stream with MT_MESH_WATCH_RESYNC: the caller opens a new one at once,
 * which starts with a complete snapshot.
 *
 * Destinations on demand (destination_demand.h): a stream opened with
 * |scope->on_demand| gets a random watch_id, and mt_mesh_watch_want asks
 * for more addresses on it (MeshConfig/Want); the answer arrives as an
 * update of the stream. Want calls still in flight are cancelled with the
 * stream. */
#ifndef MT_MESH_WATCH_H
#define MT_MESH_WATCH_H

#include <stddef.h>
#include <stdint.h>

#include "agent/mesh_snapshot.h"
#include "grpc/client.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MT_MESH_WATCH_METHOD "/mtlsd.mesh.v1.MeshConfig/Watch"
#define MT_MESH_WANT_METHOD "/mtlsd.mesh.v1.MeshConfig/Want"

/* The status on_end gets when the watch ended the stream itself to ask for
 * a complete snapshot (the message says why). */
#define MT_MESH_WATCH_RESYNC MT_GRPC_ABORTED

typedef struct {
  /* A valid snapshot; the callee may take its parts (set them to NULL).
   * |from_delta|: it was sent as a delta. */
  void (*on_update)(void *arg, mt_mesh_update *update, int from_delta);
  /* A snapshot that failed validation (the stream goes on). */
  void (*on_rejected)(void *arg, const char *why);
  /* The stream ended (server closed, connection lost). Exactly once. */
  void (*on_end)(void *arg, mt_grpc_status status, const char *message);
  /* A Want call failed (NULL: ignored). The stream goes on. */
  void (*on_want_failed)(void *arg, mt_grpc_status status, const char *message);
} mt_mesh_watch_handlers;

/* What the stream carries of the destinations (NULL: all of them). */
typedef struct {
  int on_demand;             /* only those asked for */
  const char *const *wanted; /* asked for already ("ip:port"); copied */
  size_t num_wanted;
} mt_mesh_watch_scope;

typedef struct mt_mesh_watch mt_mesh_watch;

mt_mesh_watch *mt_mesh_watch_start(mt_grpc_client *grpc, const char *node_id, const char *spiffe_id,
                                   const char *last_version, const mt_mesh_watch_scope *scope,
                                   const mt_grpc_metadata *metadata, size_t num_metadata,
                                   const mt_mesh_watch_handlers *handlers, void *arg);

/* Asks for |n| more addresses ("ip:port") on a stream opened on demand.
 * Returns 0 when the call cannot be started (out of memory). */
int mt_mesh_watch_want(mt_mesh_watch *watch, const char *const *addresses, size_t n,
                       const mt_grpc_metadata *metadata, size_t num_metadata);

/* Ends the subscription; no handler runs afterwards. NULL is fine. */
void mt_mesh_watch_cancel(mt_mesh_watch *watch);

#ifdef __cplusplus
}
#endif

#endif /* MT_MESH_WATCH_H */
