/* mesh_watch.c: the streaming call that delivers MeshSnapshot messages
 * (decoded and validated by mesh_snapshot.c). */
#include "agent/mesh_watch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/mtlsd/mesh.pb-c.h"

struct mt_mesh_watch {
  mt_grpc_call *call;
  mt_mesh_watch_handlers handlers;
  void *arg;
};

static void on_message(void *arg, const uint8_t *msg, size_t len) {
  mt_mesh_watch *w = arg;
  mt_mesh_update update;
  char err[256];
  if (!mt_mesh_decode_snapshot(msg, len, &update, err, sizeof(err))) {
    w->handlers.on_rejected(w->arg, err);
    return;
  }
  w->handlers.on_update(w->arg, &update);
  mt_mesh_update_clear(&update);
}

static void on_close(void *arg, mt_grpc_status status, const char *message) {
  mt_mesh_watch *w = arg;
  w->handlers.on_end(w->arg, status, message);
  free(w);
}

mt_mesh_watch *mt_mesh_watch_start(mt_grpc_client *grpc, const char *node_id, const char *spiffe_id,
                                   const char *last_version, const mt_grpc_metadata *metadata,
                                   size_t num_metadata, const mt_mesh_watch_handlers *handlers,
                                   void *arg) {
  Mtlsd__Mesh__V1__WatchRequest req = MTLSD__MESH__V1__WATCH_REQUEST__INIT;
  req.node_id = (char *)(node_id ? node_id : "");
  req.spiffe_id = (char *)(spiffe_id ? spiffe_id : "");
  req.last_applied_version = (char *)(last_version ? last_version : "");
  size_t len = mtlsd__mesh__v1__watch_request__get_packed_size(&req);
  uint8_t *body = malloc(len ? len : 1);
  mt_mesh_watch *w = calloc(1, sizeof(*w));
  if (body == NULL || w == NULL) {
    free(body);
    free(w);
    return NULL;
  }
  mtlsd__mesh__v1__watch_request__pack(&req, body);
  w->handlers = *handlers;
  w->arg = arg;
  static const mt_grpc_call_handlers call_handlers = {on_message, on_close};
  w->call = mt_grpc_client_start_call(grpc, MT_MESH_WATCH_METHOD, metadata, num_metadata, body, len,
                                      0, &call_handlers, w);
  free(body);
  if (w->call == NULL) {
    free(w);
    return NULL;
  }
  return w;
}

void mt_mesh_watch_cancel(mt_mesh_watch *w) {
  if (w == NULL) return;
  mt_grpc_call_cancel(w->call);
  free(w);
}
