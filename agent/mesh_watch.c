/* mesh_watch.c: the streaming call that delivers MeshSnapshot messages
 * (deltas applied by mesh_delta.c, then decoded and validated by
 * mesh_snapshot.c). */
#include "agent/mesh_watch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "agent/mesh_delta.h"
#include "proto/mtlsd/mesh.pb-c.h"

enum { ERR_MAX = 512, WATCH_ID_BYTES = 16, WANT_DEADLINE_MS = 10000 };

/* A Want call in flight; cancelled with its stream. */
typedef struct want_call {
  mt_mesh_watch *watch;
  mt_grpc_call *call;
  struct want_call *prev, *next;
} want_call;

struct mt_mesh_watch {
  mt_grpc_call *call;
  mt_grpc_client *grpc;
  mt_mesh_watch_handlers handlers;
  void *arg;
  char watch_id[2 * WATCH_ID_BYTES + 1];
  want_call *wants;
  /* The last complete content received, whether or not it was valid; NULL
   * before the first, or when it could not be split (a delta then asks
   * for a resync). */
  mt_mesh_entries *held;
  /* The general mesh of the last snapshot that was valid, whose
   * destinations a delta changes rather than rebuilds (only while it is
   * the one |held| describes). */
  mt_mesh *held_mesh;
};

static void unlink_want(want_call *c) {
  if (c->prev) c->prev->next = c->next;
  if (c->next) c->next->prev = c->prev;
  if (c->watch->wants == c) c->watch->wants = c->next;
}

static void free_watch(mt_mesh_watch *w) {
  while (w->wants != NULL) {
    want_call *c = w->wants;
    unlink_want(c);
    mt_grpc_call_cancel(c->call);
    free(c);
  }
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

/* A random name for the stream, for its Want calls. */
static void make_watch_id(char out[2 * WATCH_ID_BYTES + 1]) {
  uint8_t bytes[WATCH_ID_BYTES];
  RAND_bytes(bytes, sizeof(bytes));
  for (size_t i = 0; i < sizeof(bytes); i++) snprintf(out + 2 * i, 3, "%02x", bytes[i]);
}

mt_mesh_watch *mt_mesh_watch_start(mt_grpc_client *grpc, const char *node_id, const char *spiffe_id,
                                   const char *last_version, const mt_mesh_watch_scope *scope,
                                   const mt_grpc_metadata *metadata, size_t num_metadata,
                                   const mt_mesh_watch_handlers *handlers, void *arg) {
  mt_mesh_watch *w = calloc(1, sizeof(*w));
  if (w == NULL) return NULL;
  make_watch_id(w->watch_id);
  Mtlsd__Mesh__V1__WatchRequest req = MTLSD__MESH__V1__WATCH_REQUEST__INIT;
  req.node_id = (char *)(node_id ? node_id : "");
  req.spiffe_id = (char *)(spiffe_id ? spiffe_id : "");
  req.last_applied_version = (char *)(last_version ? last_version : "");
  req.accept_deltas = 1;
  if (scope != NULL && scope->on_demand) {
    req.on_demand_destinations = 1;
    req.watch_id = w->watch_id;
    req.wanted_destinations = (char **)scope->wanted;
    req.n_wanted_destinations = scope->num_wanted;
  }
  size_t len = mtlsd__mesh__v1__watch_request__get_packed_size(&req);
  uint8_t *body = malloc(len ? len : 1);
  if (body == NULL) {
    free(w);
    return NULL;
  }
  mtlsd__mesh__v1__watch_request__pack(&req, body);
  w->grpc = grpc;
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

static void on_want_message(void *arg, const uint8_t *msg, size_t len) {
  (void)arg; /* WantResponse: the answer itself comes on the stream */
  (void)msg;
  (void)len;
}

static void on_want_close(void *arg, mt_grpc_status status, const char *message) {
  want_call *c = arg;
  mt_mesh_watch *w = c->watch;
  unlink_want(c);
  free(c);
  if (status != MT_GRPC_OK && w->handlers.on_want_failed != NULL)
    w->handlers.on_want_failed(w->arg, status, message);
}

int mt_mesh_watch_want(mt_mesh_watch *w, const char *const *addresses, size_t n,
                       const mt_grpc_metadata *metadata, size_t num_metadata) {
  Mtlsd__Mesh__V1__WantRequest req = MTLSD__MESH__V1__WANT_REQUEST__INIT;
  req.watch_id = w->watch_id;
  req.addresses = (char **)addresses;
  req.n_addresses = n;
  size_t len = mtlsd__mesh__v1__want_request__get_packed_size(&req);
  uint8_t *body = malloc(len ? len : 1);
  want_call *c = calloc(1, sizeof(*c));
  if (body == NULL || c == NULL) {
    free(body);
    free(c);
    return 0;
  }
  mtlsd__mesh__v1__want_request__pack(&req, body);
  static const mt_grpc_call_handlers call_handlers = {on_want_message, on_want_close};
  c->watch = w;
  c->call = mt_grpc_client_start_call(w->grpc, MT_MESH_WANT_METHOD, metadata, num_metadata, body,
                                      len, WANT_DEADLINE_MS, &call_handlers, c);
  free(body);
  if (c->call == NULL) {
    free(c);
    return 0;
  }
  c->next = w->wants;
  if (w->wants) w->wants->prev = c;
  w->wants = c;
  return 1;
}

void mt_mesh_watch_cancel(mt_mesh_watch *w) {
  if (w == NULL) return;
  mt_grpc_call_cancel(w->call);
  free_watch(w);
}
