/* mesh_watch.c: the streaming call that delivers MeshSnapshot messages
 * (deltas applied by mesh_delta.c, then decoded and validated by
 * mesh_snapshot.c). */
#include "agent/mesh_watch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/mesh_delta.h"
#include "proto/mtlsd/mesh.pb-c.h"

enum { ERR_MAX = 512 };

struct mt_mesh_watch {
  mt_grpc_call *call;
  mt_mesh_watch_handlers handlers;
  void *arg;
  /* The last complete content received, whether or not it was valid; NULL
   * before the first, or when it could not be split (a delta then asks
   * for a resync). */
  mt_mesh_entries *held;
  /* The general mesh of the last snapshot that was valid, whose
   * destinations a delta changes rather than rebuilds (only while it is
   * the one |held| describes). */
  mt_mesh *held_mesh;
};

static void free_watch(mt_mesh_watch *w) {
  mt_mesh_entries_free(w->held);
  mt_mesh_unref(w->held_mesh);
  free(w);
}

/* Hands on a decoded snapshot (or says why it was not valid). */
static void deliver(mt_mesh_watch *w, int decoded, mt_mesh_update *update, const char *err,
                    int from_delta) {
  if (!decoded) {
    w->handlers.on_rejected(w->arg, err);
    return;
  }
  mt_mesh_unref(w->held_mesh);
  w->held_mesh = mt_mesh_ref(update->mesh);
  w->handlers.on_update(w->arg, update, from_delta);
  mt_mesh_update_clear(update);
}

/* Decodes a complete snapshot and hands it on. */
static void deliver_complete(mt_mesh_watch *w, const uint8_t *msg, size_t len, int from_delta) {
  mt_mesh_update update;
  char err[ERR_MAX];
  int ok = mt_mesh_decode_snapshot(msg, len, &update, err, sizeof(err));
  deliver(w, ok, &update, err, from_delta);
}

/* Decodes the snapshot |delta| made of |base| (now held as |next|): when
 * the held mesh is |base|'s, only the delta's destinations are decoded and
 * the others kept; otherwise the whole snapshot. 0 when out of memory. */
static int deliver_delta(mt_mesh_watch *w, const mt_mesh_entries *base, const mt_mesh_entries *next,
                         const uint8_t *delta, size_t delta_len) {
  size_t len = 0;
  if (w->held_mesh == NULL ||
      strcmp(mt_mesh_version(w->held_mesh), mt_mesh_entries_version(base)) != 0) {
    uint8_t *full = mt_mesh_entries_encode(next, &len);
    if (full == NULL) return 0;
    deliver_complete(w, full, len, 1);
    free(full);
    return 1;
  }
  uint8_t *rest = mt_mesh_entries_encode_except(next, MT_MESH_FIELD_DESTINATIONS, &len);
  if (rest == NULL) return 0;
  mt_mesh_update update;
  char err[ERR_MAX];
  int ok = mt_mesh_decode_patched(rest, len, delta, delta_len, w->held_mesh, base, &update, err,
                                  sizeof(err));
  free(rest);
  deliver(w, ok, &update, err, 1);
  return 1;
}

/* Whether a message that could not be split at least reads as a delta. */
static int says_delta(const uint8_t *msg, size_t len) {
  Mtlsd__Mesh__V1__MeshSnapshot *m = mtlsd__mesh__v1__mesh_snapshot__unpack(NULL, len, msg);
  int delta = m != NULL && m->delta;
  if (m != NULL) mtlsd__mesh__v1__mesh_snapshot__free_unpacked(m, NULL);
  return delta;
}

/* Ends the stream to get a complete snapshot on a new one. */
static void resync(mt_mesh_watch *w, const char *why) {
  char message[ERR_MAX + 64];
  snprintf(message, sizeof(message), "cannot apply a delta (%s); asking for a complete snapshot",
           why);
  mt_grpc_call_cancel(w->call);
  w->handlers.on_end(w->arg, MT_MESH_WATCH_RESYNC, message);
  free_watch(w);
}

static void on_message(void *arg, const uint8_t *msg, size_t len) {
  mt_mesh_watch *w = arg;
  char err[ERR_MAX];
  mt_mesh_entries *received = mt_mesh_entries_parse(msg, len, err, sizeof(err));
  if (received == NULL) {
    /* Nothing can build on it: a delta on top of it would be a guess. */
    mt_mesh_entries_free(w->held);
    w->held = NULL;
    if (says_delta(msg, len))
      w->handlers.on_rejected(w->arg, err);
    else
      deliver_complete(w, msg, len, 0); /* decoding names what is wrong with it */
    return;
  }
  if (!mt_mesh_entries_is_delta(received)) {
    mt_mesh_entries_free(w->held);
    w->held = received;
    deliver_complete(w, msg, len, 0);
    return;
  }
  mt_mesh_entries *next = NULL;
  if (w->held == NULL)
    snprintf(err, sizeof(err), "the delta to %.64s came with no complete snapshot held",
             mt_mesh_entries_version(received));
  else
    next = mt_mesh_entries_apply(w->held, received, err, sizeof(err));
  mt_mesh_entries_free(received);
  if (next == NULL) {
    resync(w, err);
    return;
  }
  mt_mesh_entries *base = w->held;
  w->held = next; /* the server's next delta builds on it, valid or not */
  int ok = deliver_delta(w, base, next, msg, len);
  mt_mesh_entries_free(base);
  if (!ok) resync(w, "out of memory");
}

static void on_close(void *arg, mt_grpc_status status, const char *message) {
  mt_mesh_watch *w = arg;
  w->handlers.on_end(w->arg, status, message);
  free_watch(w);
}

mt_mesh_watch *mt_mesh_watch_start(mt_grpc_client *grpc, const char *node_id, const char *spiffe_id,
                                   const char *last_version, const mt_grpc_metadata *metadata,
                                   size_t num_metadata, const mt_mesh_watch_handlers *handlers,
                                   void *arg) {
  Mtlsd__Mesh__V1__WatchRequest req = MTLSD__MESH__V1__WATCH_REQUEST__INIT;
  req.node_id = (char *)(node_id ? node_id : "");
  req.spiffe_id = (char *)(spiffe_id ? spiffe_id : "");
  req.last_applied_version = (char *)(last_version ? last_version : "");
  req.accept_deltas = 1;
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
  free_watch(w);
}
