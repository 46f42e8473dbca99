/* mesh_service.c: Watch streams and the mesh file they carry. */
#include "controlplane/mesh_service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "controlplane/file_stamp.h"
#include "controlplane/mesh_file.h"
#include "proto/mtlsd/mesh.pb-c.h"

enum {
  VERSION_MAX = 48,
  VERSION_HASH_BYTES = 6, /* 12 hex digits of the content digest */
  ERR_MAX = 1024,
  PEER_MAX = 64,
  NODE_ID_SHOWN_MAX = 128,
  MESSAGE_MAX = 512,
  MS_PER_SECOND = 1000,
  NS_PER_MS = 1000000,
};

static const char kShutdownMessage[] = "server shutting down";

typedef struct mt_watcher {
  mt_mesh_service *svc;
  mt_grpc_stream *stream;
  char peer[PEER_MAX];
  char identity[MT_SPIFFE_ID_MAX_LEN + 1];
  uint64_t sent_serial; /* the snapshot last queued; 0 = none yet */
  char sent_version[VERSION_MAX];
  int64_t opened_ms;
  struct mt_watcher *prev, *next;
} mt_watcher;

struct mt_mesh_service {
  struct ev_loop *loop;
  char *mesh_path;
  char *trust_domain;
  const mt_ca_auth *auth;
  mt_ca_log *log;
  ev_timer poll;
  /* The snapshot in force. */
  mt_mesh_file *current;
  uint64_t serial;
  char version[VERSION_MAX];
  uint8_t *encoded;
  size_t encoded_len;
  /* Change detection. */
  char **watched;
  mt_file_stamp *stamps;
  size_t num_watched;
  /* Open streams. */
  mt_watcher *watchers;
  size_t num_watchers;
};

static int64_t monotonic_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * MS_PER_SECOND + ts.tv_nsec / NS_PER_MS;
}

/* ---- change detection -------------------------------------------------- */

static void clear_watched(mt_mesh_service *svc) {
  for (size_t i = 0; i < svc->num_watched; i++) free(svc->watched[i]);
  free(svc->watched);
  free(svc->stamps);
  svc->watched = NULL;
  svc->stamps = NULL;
  svc->num_watched = 0;
}

/* Watches the sources of |mesh| from now on. Out of memory leaves nothing
 * watched, which makes the next poll reload (and so try again). */
static void watch_sources(mt_mesh_service *svc, const mt_mesh_file *mesh) {
  const char *const *paths;
  size_t n = mt_mesh_file_sources(mesh, &paths);
  clear_watched(svc);
  char **watched = calloc(n, sizeof(*watched));
  mt_file_stamp *stamps = calloc(n, sizeof(*stamps));
  int ok = watched != NULL && stamps != NULL;
  for (size_t i = 0; ok && i < n; i++) {
    ok = (watched[i] = strdup(paths[i])) != NULL;
    if (ok) mt_file_stamp_read(paths[i], &stamps[i]);
  }
  if (!ok) {
    for (size_t i = 0; watched != NULL && i < n; i++) free(watched[i]);
    free(watched);
    free(stamps);
    return;
  }
  svc->watched = watched;
  svc->stamps = stamps;
  svc->num_watched = n;
}

static int sources_changed(const mt_mesh_service *svc) {
  if (svc->num_watched == 0) return 1;
  for (size_t i = 0; i < svc->num_watched; i++) {
    mt_file_stamp now;
    mt_file_stamp_read(svc->watched[i], &now);
    if (!mt_file_stamp_equal(&now, &svc->stamps[i])) return 1;
  }
  return 0;
}

/* ---- streams ----------------------------------------------------------- */

static void unlink_watcher(mt_watcher *w) {
  mt_mesh_service *svc = w->svc;
  if (w->prev) w->prev->next = w->next;
  if (w->next) w->next->prev = w->prev;
  if (svc->watchers == w) svc->watchers = w->next;
  svc->num_watchers--;
}

static void log_stream_end(mt_watcher *w, mt_grpc_status status, const char *reason,
                           const char *message) {
  mt_ca_access_entry e = {
      .method = MT_CA_METHOD_WATCH,
      .peer = w->peer,
      .caller = w->identity,
      .identity = w->identity,
      .status = status,
      .reason = reason,
      .message = message,
      .version = w->sent_version,
      .duration_ms = monotonic_ms() - w->opened_ms,
  };
  mt_ca_log_access(w->svc->log, &e);
  mt_ca_log_count(w->svc->log, MT_CA_EV_WATCH_STREAMS_ENDED);
}

/* The grpc server tells us the stream ended without our finishing it. */
static void on_watcher_closed(void *arg, mt_grpc_status why) {
  mt_watcher *w = arg;
  const char *reason = why == MT_GRPC_CANCELLED           ? "client_cancelled"
                       : why == MT_GRPC_DEADLINE_EXCEEDED ? "deadline_exceeded"
                                                          : "connection_closed";
  mt_ca_log_info(w->svc->log, "watch stream of %s from %s ended: %s (last version %s)", w->identity,
                 w->peer, mt_grpc_status_name((int)why),
                 w->sent_version[0] ? w->sent_version : "none");
  log_stream_end(w, why, reason, "");
  unlink_watcher(w);
  free(w);
}

/* Ends a stream from our side and forgets it. */
static void finish_watcher(mt_watcher *w, mt_grpc_status status, const char *reason,
                           const char *message) {
  mt_grpc_stream_finish(w->stream, status, message);
  log_stream_end(w, status, reason, message);
  unlink_watcher(w);
  free(w);
}

/* Queues the current snapshot on |w| unless it already has it. Returns 0
 * when the stream had to be ended (it is then freed). */
static int push_one(mt_watcher *w) {
  mt_mesh_service *svc = w->svc;
  if (w->sent_serial == svc->serial) return 1;
  switch (mt_grpc_stream_send(w->stream, svc->encoded, svc->encoded_len)) {
    case MT_GRPC_SEND_OK:
      w->sent_serial = svc->serial;
      snprintf(w->sent_version, sizeof(w->sent_version), "%s", svc->version);
      mt_ca_log_count(svc->log, MT_CA_EV_SNAPSHOTS_SENT);
      return 1;
    case MT_GRPC_SEND_QUEUE_FULL: return 1; /* a slow reader: retried on the next poll */
    case MT_GRPC_SEND_NO_MEMORY:
    case MT_GRPC_SEND_TOO_LARGE:
    case MT_GRPC_SEND_FINISHED: break;
  }
  mt_ca_log_error(svc->log, "watch stream of %s from %s: cannot queue snapshot %s; ending it",
                  w->identity, w->peer, svc->version);
  finish_watcher(w, MT_GRPC_RESOURCE_EXHAUSTED, "send_failed", "cannot queue the snapshot");
  return 0;
}

static void push_all(mt_mesh_service *svc) {
  mt_watcher *w = svc->watchers;
  while (w != NULL) {
    mt_watcher *next = w->next; /* push_one may free |w| */
    push_one(w);
    w = next;
  }
}

/* ---- the snapshot in force --------------------------------------------- */

static void format_version(mt_mesh_service *svc, const uint8_t *digest) {
  int n = snprintf(svc->version, sizeof(svc->version), "%llu-", (unsigned long long)svc->serial);
  for (int i = 0; i < VERSION_HASH_BYTES && n > 0 && (size_t)n + 2 < sizeof(svc->version); i++)
    n += snprintf(svc->version + n, sizeof(svc->version) - (size_t)n, "%02x", digest[i]);
}

/* Makes |mesh| the snapshot in force (takes it). Returns 0 when out of
 * memory, leaving the previous one in force and |mesh| freed. */
static int install(mt_mesh_service *svc, mt_mesh_file *mesh) {
  uint64_t serial = svc->serial + 1;
  char version[VERSION_MAX];
  memcpy(version, svc->version, sizeof(version));
  svc->serial = serial;
  format_version(svc, mt_mesh_file_digest(mesh));
  size_t len = 0;
  uint8_t *encoded = mt_mesh_file_encode(mesh, svc->version, &len);
  if (encoded == NULL) {
    svc->serial = serial - 1;
    memcpy(svc->version, version, sizeof(version));
    mt_mesh_file_free(mesh);
    return 0;
  }
  free(svc->encoded);
  mt_mesh_file_free(svc->current);
  svc->encoded = encoded;
  svc->encoded_len = len;
  svc->current = mesh;
  mt_ca_log_count(svc->log, MT_CA_EV_MESH_LOADS);
  return 1;
}

/* Reads the files and, when they parse to different content, installs and
 * pushes a new version. */
static void reload(mt_mesh_service *svc) {
  char err[ERR_MAX];
  mt_mesh_file *mesh = mt_mesh_file_load(svc->mesh_path, svc->trust_domain, err, sizeof(err));
  if (mesh == NULL) {
    mt_ca_log_count(svc->log, MT_CA_EV_MESH_LOAD_FAILURES);
    mt_ca_log_error(svc->log, "mesh file refused, version %s stays in force: %s", svc->version,
                    err);
    if (svc->current != NULL) watch_sources(svc, svc->current);
    return;
  }
  watch_sources(svc, mesh);
  if (svc->current != NULL && memcmp(mt_mesh_file_digest(mesh), mt_mesh_file_digest(svc->current),
                                     MT_MESH_DIGEST_LEN) == 0) {
    mt_mesh_file_free(mesh); /* touched, not changed */
    return;
  }
  if (!install(svc, mesh)) {
    mt_ca_log_error(svc->log, "out of memory encoding the mesh snapshot; version %s stays",
                    svc->version);
    return;
  }
  mt_ca_log_info(svc->log, "mesh snapshot version %s in force (%s); pushing to %zu stream%s",
                 svc->version, svc->mesh_path, svc->num_watchers,
                 svc->num_watchers == 1 ? "" : "s");
  push_all(svc);
}

static void on_poll(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  mt_mesh_service *svc = w->data;
  if (sources_changed(svc))
    reload(svc);
  else
    push_all(svc); /* streams that were full last time */
}

/* ---- the Watch method -------------------------------------------------- */

/* Refuses a Watch call before it became a stream. */
static void refuse(mt_mesh_service *svc, mt_grpc_stream *stream, const mt_grpc_request *req,
                   mt_grpc_status status, const char *reason, const char *identity,
                   const char *message, int64_t started_ms) {
  mt_grpc_stream_finish(stream, status, message);
  mt_ca_log_warn(svc->log, "Watch from %s refused: %s (%s): %s", req->peer_address,
                 mt_grpc_status_name((int)status), reason, message);
  mt_ca_access_entry e = {
      .method = MT_CA_METHOD_WATCH,
      .peer = req->peer_address,
      .caller = identity,
      .identity = identity,
      .status = status,
      .reason = reason,
      .message = message,
      .duration_ms = monotonic_ms() - started_ms,
      .refused = 1,
  };
  mt_ca_log_access(svc->log, &e);
}

/* The request names who is asking; it must be who the token says. */
static int check_request(mt_mesh_service *svc, mt_grpc_stream *stream, const mt_grpc_request *req,
                         const mt_ca_auth_result *auth, int64_t started_ms) {
  char message[MESSAGE_MAX];
  Mtlsd__Mesh__V1__WatchRequest *wr =
      mtlsd__mesh__v1__watch_request__unpack(NULL, req->message_len, req->message);
  if (wr == NULL) {
    refuse(svc, stream, req, MT_GRPC_INVALID_ARGUMENT, "bad_request", auth->spiffe_id,
           "the request is not a WatchRequest message", started_ms);
    return 0;
  }
  int ok = wr->spiffe_id[0] == '\0' || strcmp(wr->spiffe_id, auth->spiffe_id) == 0;
  if (!ok) {
    snprintf(message, sizeof(message), "spiffe_id \"%.200s\" is not the caller's identity %.200s",
             wr->spiffe_id, auth->spiffe_id);
    refuse(svc, stream, req, MT_GRPC_PERMISSION_DENIED, "identity_mismatch", auth->spiffe_id,
           message, started_ms);
  } else {
    mt_ca_log_info(svc->log, "watch opened by %s from %s (node \"%.*s\", last version \"%.*s\")",
                   auth->spiffe_id, req->peer_address, NODE_ID_SHOWN_MAX, wr->node_id, VERSION_MAX,
                   wr->last_applied_version);
  }
  mtlsd__mesh__v1__watch_request__free_unpacked(wr, NULL);
  return ok;
}

static void on_watch(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  mt_mesh_service *svc = arg;
  int64_t started_ms = monotonic_ms();
  mt_ca_auth_result auth;
  mt_ca_auth_check(svc->auth, req, (int64_t)time(NULL), &auth);
  if (auth.status != MT_GRPC_OK) {
    refuse(svc, stream, req, auth.status, auth.reason, auth.spiffe_id, auth.message, started_ms);
    return;
  }
  if (!check_request(svc, stream, req, &auth, started_ms)) return;
  mt_watcher *w = calloc(1, sizeof(*w));
  if (w == NULL) {
    refuse(svc, stream, req, MT_GRPC_RESOURCE_EXHAUSTED, "no_memory", auth.spiffe_id,
           "out of memory", started_ms);
    return;
  }
  w->svc = svc;
  w->stream = stream;
  w->opened_ms = started_ms;
  snprintf(w->peer, sizeof(w->peer), "%s", req->peer_address);
  snprintf(w->identity, sizeof(w->identity), "%s", auth.spiffe_id);
  w->next = svc->watchers;
  if (svc->watchers) svc->watchers->prev = w;
  svc->watchers = w;
  svc->num_watchers++;
  mt_grpc_stream_set_on_closed(stream, on_watcher_closed, w);
  mt_ca_log_count(svc->log, MT_CA_EV_WATCH_STREAMS_OPENED);
  push_one(w);
}

/* ---- life cycle -------------------------------------------------------- */

mt_mesh_service *mt_mesh_service_new(struct ev_loop *loop, const char *mesh_path,
                                     const char *trust_domain, int64_t poll_ms,
                                     const mt_ca_auth *auth, mt_ca_log *log, char *err,
                                     size_t err_len) {
  mt_mesh_service *svc = calloc(1, sizeof(*svc));
  if (svc == NULL || (svc->mesh_path = strdup(mesh_path)) == NULL ||
      (svc->trust_domain = strdup(trust_domain)) == NULL) {
    snprintf(err, err_len, "%s:1: out of memory", mesh_path);
    mt_mesh_service_free(svc);
    return NULL;
  }
  svc->loop = loop;
  svc->auth = auth;
  svc->log = log;
  mt_mesh_file *mesh = mt_mesh_file_load(mesh_path, trust_domain, err, err_len);
  if (mesh == NULL) {
    mt_mesh_service_free(svc);
    return NULL;
  }
  watch_sources(svc, mesh);
  if (!install(svc, mesh)) {
    snprintf(err, err_len, "%s:1: out of memory", mesh_path);
    mt_mesh_service_free(svc);
    return NULL;
  }
  double seconds = (double)poll_ms / MS_PER_SECOND;
  ev_timer_init(&svc->poll, on_poll, seconds, seconds);
  svc->poll.data = svc;
  ev_timer_start(loop, &svc->poll);
  return svc;
}

void mt_mesh_service_free(mt_mesh_service *svc) {
  if (svc == NULL) return;
  if (svc->loop != NULL) ev_timer_stop(svc->loop, &svc->poll);
  while (svc->watchers != NULL)
    finish_watcher(svc->watchers, MT_GRPC_UNAVAILABLE, "shutdown", kShutdownMessage);
  clear_watched(svc);
  mt_mesh_file_free(svc->current);
  free(svc->encoded);
  free(svc->mesh_path);
  free(svc->trust_domain);
  free(svc);
}

int mt_mesh_service_register(mt_mesh_service *svc, mt_grpc_server *server) {
  return mt_grpc_server_handle(server, mt_ca_method_path(MT_CA_METHOD_WATCH), on_watch, svc);
}

void mt_mesh_service_reload(mt_mesh_service *svc) { reload(svc); }

const char *mt_mesh_service_version(const mt_mesh_service *svc) { return svc->version; }

size_t mt_mesh_service_stream_count(const mt_mesh_service *svc) { return svc->num_watchers; }
