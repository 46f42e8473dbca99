/* mesh_service.c: Watch streams and the mesh file they carry. */
#include "controlplane/mesh_service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "controlplane/file_stamp.h"
#include "controlplane/mesh_file.h"
#include "controlplane/mesh_view.h"
#include "controlplane/workloads_file.h"
#include "proto/mtlsd/mesh.pb-c.h"

enum {
  VERSION_MAX = 48,
  VERSION_HASH_BYTES = 6, /* 12 hex digits of the content digest */
  ERR_MAX = 1024,
  PEER_MAX = 64,
  NODE_ID_SHOWN_MAX = 128,
  MESSAGE_MAX = 512,
  WATCH_ID_MAX = 64,
  MS_PER_SECOND = 1000,
};

static const char kShutdownMessage[] = "server shutting down";

typedef struct mt_watcher {
  mt_mesh_service *svc;
  mt_grpc_stream *stream;
  char peer[PEER_MAX];
  char identity[MT_SPIFFE_ID_MAX_LEN + 1];
  char node[MT_NODE_NAME_MAX_LEN + 1]; /* from its token, when valid; "" = none */
  int node_agent;                      /* listed in node_agents */
  int has_sent;                        /* sent_digest holds what was last queued */
  int pending;                         /* the last try found the queue full */
  int accepts_deltas;                  /* WatchRequest.accept_deltas */
  int on_demand;                       /* WatchRequest.on_demand_destinations */
  char watch_id[WATCH_ID_MAX + 1];     /* names it to Want */
  /* The addresses it asked for, canonical, sorted, no repeats; and the
   * destination keys they select (each address and its IP alone), sorted. */
  char **wanted;
  size_t num_wanted;
  char **keys;
  size_t num_keys;
  int wanted_dirty; /* asked for more since its content was last built */
  /* Destinations on demand: its own fields' digest when last brought up to
   * date, to tell a round that changed nothing it sees (see unchanged_for). */
  int has_own_digest;
  uint8_t sent_own_digest[MT_MESH_DIGEST_LEN];
  uint8_t sent_digest[MT_MESH_DIGEST_LEN];
  char sent_version[VERSION_MAX];
  /* What it holds, for its next delta: the view in force when it was last
   * brought up to date, and its own part of that content (NULL: unknown,
   * the next message is complete). */
  uint64_t sent_serial;
  mt_mesh_entries *sent_own;
  int sent_has_shared; /* sent_own is the own part (1) or the whole (0) */
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
  ev_timer debounce; /* armed by the first cluster/registry change of a round */
  /* The mesh file and the view in force (the view borrows the file). */
  mt_mesh_file *current;
  mt_mesh_view *view;
  uint64_t serial;
  char version[VERSION_MAX];
  /* The shared part's delta from view serial-1 to this one; NULL: none
   * (the first view, or one that cannot be split), complete snapshots. */
  uint8_t *shared_delta;
  size_t shared_delta_len;
  /* What that delta touches, for streams on demand: the canonical keys of
   * the destinations it changes or removes, sorted; |round_known| is 0
   * when there is no delta or it changes anything but destinations. */
  int round_known;
  char **round_keys;
  size_t num_round_keys;
  /* The cluster part. */
  mt_mesh_sources sources;
  int held;           /* the Kubernetes source has not synced yet: send nothing */
  char *logged_notes; /* the policy notes of the view in force, as logged */
  /* Change detection. */
  char **watched;
  mt_file_stamp *stamps;
  size_t num_watched;
  /* Open streams. */
  mt_watcher *watchers;
  size_t num_watchers;
};

static int compare_strings(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
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

static void free_watcher(mt_watcher *w) {
  unlink_watcher(w);
  mt_mesh_entries_free(w->sent_own);
  for (size_t i = 0; i < w->num_wanted; i++) free(w->wanted[i]);
  free(w->wanted);
  for (size_t i = 0; i < w->num_keys; i++) free(w->keys[i]);
  free(w->keys);
  free(w);
}

static void log_stream_end(mt_watcher *w, mt_grpc_status status, const char *reason,
                           const char *message) {
  mt_ca_access_entry e = {
      .method = MT_CA_METHOD_WATCH,
      .peer = w->peer,
      .caller = w->identity,
      .identity = w->identity,
      .node = w->node, /* the node its snapshot was scoped to, if any */
      .status = status,
      .reason = reason,
      .message = message,
      .version = w->sent_version,
      .duration_ms = mt_ca_log_clock_ms() - w->opened_ms,
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
  free_watcher(w);
}

/* Ends a stream from our side and forgets it. */
static void finish_watcher(mt_watcher *w, mt_grpc_status status, const char *reason,
                           const char *message) {
  mt_grpc_stream_finish(w->stream, status, message);
  log_stream_end(w, status, reason, message);
  free_watcher(w);
}

/* ---- pushing ------------------------------------------------------------- */

typedef enum {
  PUSH_SENT,
  PUSH_UNCHANGED, /* the caller already has this content */
  PUSH_DEFERRED,  /* held, queue full, or refused (logged): nothing sent */
  PUSH_ENDED,     /* the stream had to be ended (and is freed) */
} push_result;

static void format_version(char *out, size_t out_len, uint64_t serial, const uint8_t *digest) {
  int n = snprintf(out, out_len, "%llu-", (unsigned long long)serial);
  for (int i = 0; i < VERSION_HASH_BYTES && n > 0 && (size_t)n + 2 < out_len; i++)
    n += snprintf(out + n, out_len - (size_t)n, "%02x", digest[i]);
}

/* The delta that brings |w| from what it holds to |snap| (own part split
 * into |own|), or NULL when it cannot have one: it did not ask, holds
 * content older than the previous view, or the delta would not be
 * smaller than the complete snapshot. */
static uint8_t *encode_delta(const mt_watcher *w, const mt_mesh_view_snapshot *snap,
                             const mt_mesh_entries *own, const char *version, size_t *len) {
  const mt_mesh_service *svc = w->svc;
  /* Without a shared part, its own part is the whole content: diffed
   * against what it was last sent, whatever view that came from. */
  int has_shared = mt_mesh_view_snapshot_has_shared(snap);
  if (!w->accepts_deltas || !w->has_sent || w->sent_own == NULL || own == NULL ||
      w->sent_has_shared != has_shared ||
      (has_shared && (svc->shared_delta == NULL || w->sent_serial + 1 != svc->serial)))
    return NULL;
  const uint8_t *shared_delta = has_shared ? svc->shared_delta : NULL;
  size_t shared_delta_len = has_shared ? svc->shared_delta_len : 0;
  size_t head_len = 0, own_len = 0, changed = 0, removed = 0;
  uint8_t *head = mt_mesh_delta_header(version, w->sent_version, &head_len);
  uint8_t *own_delta = mt_mesh_entries_diff(w->sent_own, own, &own_len, &changed, &removed);
  uint8_t *out = NULL;
  *len = head_len + shared_delta_len + own_len;
  if (head != NULL && own_delta != NULL && *len < mt_mesh_view_snapshot_len(snap) &&
      (out = malloc(*len)) != NULL) {
    memcpy(out, head, head_len);
    if (shared_delta_len) memcpy(out + head_len, shared_delta, shared_delta_len);
    if (own_len) memcpy(out + head_len + shared_delta_len, own_delta, own_len);
  }
  free(head);
  free(own_delta);
  return out;
}

static push_result queue_snapshot(mt_watcher *w, const mt_mesh_view_snapshot *snap) {
  mt_mesh_service *svc = w->svc;
  char version[VERSION_MAX];
  const uint8_t *digest = mt_mesh_view_snapshot_digest(snap);
  format_version(version, sizeof(version), svc->serial, digest);
  mt_mesh_entries *own = NULL;
  if (w->accepts_deltas) { /* unsplittable: the next message is complete again */
    char err[ERR_MAX];
    size_t own_len = 0;
    const uint8_t *own_bytes = mt_mesh_view_snapshot_own(snap, &own_len);
    own = mt_mesh_entries_parse(own_bytes, own_len, err, sizeof(err));
  }
  size_t len = 0;
  uint8_t *encoded = encode_delta(w, snap, own, version, &len);
  int is_delta = encoded != NULL;
  if (!is_delta) encoded = mt_mesh_view_snapshot_encode(snap, version, &len);
  mt_grpc_send_result r =
      encoded != NULL ? mt_grpc_stream_send(w->stream, encoded, len) : MT_GRPC_SEND_NO_MEMORY;
  free(encoded);
  if (r != MT_GRPC_SEND_OK) mt_mesh_entries_free(own);
  switch (r) {
    case MT_GRPC_SEND_OK:
      w->has_sent = 1;
      w->pending = 0;
      memcpy(w->sent_digest, digest, MT_MESH_DIGEST_LEN);
      snprintf(w->sent_version, sizeof(w->sent_version), "%s", version);
      w->sent_serial = svc->serial;
      mt_mesh_entries_free(w->sent_own);
      w->sent_own = own;
      w->sent_has_shared = mt_mesh_view_snapshot_has_shared(snap);
      mt_ca_log_count(svc->log, MT_CA_EV_SNAPSHOTS_SENT);
      if (is_delta) mt_ca_log_count(svc->log, MT_CA_EV_SNAPSHOT_DELTAS_SENT);
      mt_ca_log_add(svc->log, MT_CA_EV_SNAPSHOT_BYTES_SENT, len);
      return PUSH_SENT;
    case MT_GRPC_SEND_QUEUE_FULL: /* a slow reader: retried on the next poll */
      w->pending = 1;
      return PUSH_DEFERRED;
    case MT_GRPC_SEND_NO_MEMORY:
    case MT_GRPC_SEND_TOO_LARGE:
    case MT_GRPC_SEND_FINISHED: break;
  }
  mt_ca_log_error(svc->log, "watch stream of %s from %s: cannot queue snapshot %s; ending it",
                  w->identity, w->peer, version);
  finish_watcher(w, MT_GRPC_RESOURCE_EXHAUSTED, "send_failed", "cannot queue the snapshot");
  return PUSH_ENDED;
}

/* Queues |w|'s snapshot of the view in force unless it already has that
 * content. May free |w| (PUSH_ENDED). */
/* Destinations on demand: whether the round that put the view in force
 * changed nothing |w| sees, so that its content need not be built again.
 * It must hold the previous view's content built with everything it has
 * asked for, the round must have changed destinations only and none of
 * its keys, and its own fields (|own|, their digest now) must be as they
 * were. Costs the round's changes, not the stream's content. */
static int unchanged_for(const mt_watcher *w, const uint8_t own[MT_MESH_DIGEST_LEN]) {
  const mt_mesh_service *svc = w->svc;
  if (!w->has_sent || w->sent_has_shared || w->wanted_dirty || !w->has_own_digest ||
      !svc->round_known || w->sent_serial + 1 != svc->serial || w->keys == NULL)
    return 0;
  for (size_t i = 0; i < svc->num_round_keys; i++)
    if (bsearch(&svc->round_keys[i], w->keys, w->num_keys, sizeof(char *), compare_strings))
      return 0;
  return memcmp(own, w->sent_own_digest, MT_MESH_DIGEST_LEN) == 0;
}

/* Queues |w|'s snapshot of the view in force unless it already has that
 * content. May free |w| (PUSH_ENDED). */
static push_result push_one(mt_watcher *w) {
  mt_mesh_service *svc = w->svc;
  if (svc->held || svc->view == NULL) return PUSH_DEFERRED;
  mt_mesh_caller caller = {
      w->identity,  w->node_agent, w->node, w->on_demand, (const char *const *)w->wanted,
      w->num_wanted};
  uint8_t own[MT_MESH_DIGEST_LEN];
  int has_own = w->on_demand && mt_mesh_view_own_digest(svc->view, &caller, own);
  if (has_own && unchanged_for(w, own)) {
    mt_ca_log_count(svc->log, MT_CA_EV_ON_DEMAND_ROUNDS_SKIPPED);
    w->pending = 0;
    w->sent_serial = svc->serial; /* as if built: the same content */
    return PUSH_UNCHANGED;
  }
  char err[ERR_MAX];
  mt_mesh_view_snapshot *snap = mt_mesh_view_for(svc->view, &caller, err, sizeof(err));
  if (snap == NULL) {
    mt_ca_log_error(svc->log, "watch stream of %s from %s: snapshot refused, it keeps %s: %s",
                    w->identity, w->peer, w->sent_version[0] ? w->sent_version : "none", err);
    w->pending = 0;
    return PUSH_DEFERRED;
  }
  push_result r = PUSH_UNCHANGED;
  if (!w->has_sent ||
      memcmp(w->sent_digest, mt_mesh_view_snapshot_digest(snap), MT_MESH_DIGEST_LEN) != 0) {
    r = queue_snapshot(w, snap);
  } else {
    w->pending = 0;
    w->sent_serial = svc->serial; /* same content: the next delta starts here */
  }
  mt_mesh_view_snapshot_free(snap);
  if (r == PUSH_SENT || r == PUSH_UNCHANGED) { /* it holds what was built now */
    w->wanted_dirty = 0;
    w->has_own_digest = has_own;
    if (has_own) memcpy(w->sent_own_digest, own, MT_MESH_DIGEST_LEN);
  }
  return r;
}

/* Pushes to every stream (|only_pending|: those whose queue was full) and
 * returns how many were sent a new snapshot. */
static size_t push_all(mt_mesh_service *svc, int only_pending) {
  size_t sent = 0;
  mt_watcher *w = svc->watchers;
  while (w != NULL) {
    mt_watcher *next = w->next; /* push_one may free |w| */
    if (!only_pending || w->pending) sent += push_one(w) == PUSH_SENT;
    w = next;
  }
  return sent;
}

/* ---- the view in force --------------------------------------------------- */

/* A view of |mesh| and the sources as they are now; NULL with the reason
 * in |err| when it cannot be built. */
static mt_mesh_view *build_view(mt_mesh_service *svc, const mt_mesh_file *mesh, char *err,
                                size_t err_len) {
  mt_mesh_view_inputs in = {mesh, svc->sources.cluster, NULL, 0, svc->sources.istio};
  if (in.cluster == NULL && svc->sources.registry != NULL)
    in.workloads = mt_workload_registry_current(svc->sources.registry);
  return mt_mesh_view_new(&in, err, err_len);
}

/* The shared part's delta from the view in force to |next|, kept for the
 * push round of |next|; none when either cannot be split. */
static void forget_round(mt_mesh_service *svc) {
  free(svc->shared_delta);
  svc->shared_delta = NULL;
  svc->shared_delta_len = 0;
  for (size_t i = 0; i < svc->num_round_keys; i++) free(svc->round_keys[i]);
  free(svc->round_keys);
  svc->round_keys = NULL;
  svc->num_round_keys = 0;
  svc->round_known = 0;
}

typedef struct {
  char **keys;
  size_t n;
  int unknown; /* something else changed, or a key did not read */
} round_scan;

static void on_round_key(void *ctx, uint32_t field, const char *key, size_t len) {
  round_scan *r = ctx;
  char canonical[MT_MESH_ADDRESS_MAX];
  if (r->unknown) return;
  if (field != MT_MESH_FIELD_DESTINATIONS || !mt_mesh_view_canonical_key(key, len, canonical) ||
      (r->keys[r->n] = strdup(canonical)) == NULL) {
    r->unknown = 1;
    return;
  }
  r->n++;
}

/* The destination keys the round's shared delta touches (see round_keys). */
static void scan_round(mt_mesh_service *svc) {
  char err[ERR_MAX];
  mt_mesh_entries *d =
      mt_mesh_entries_parse(svc->shared_delta, svc->shared_delta_len, err, sizeof(err));
  if (d == NULL) return;
  size_t most = mt_mesh_entries_count(d) + mt_mesh_entries_num_removed(d);
  round_scan r = {calloc(most + 1, sizeof(char *)), 0, 0};
  if (r.keys != NULL) mt_mesh_entries_foreach_key(d, on_round_key, &r);
  mt_mesh_entries_free(d);
  if (r.keys == NULL || r.unknown) {
    for (size_t i = 0; r.keys != NULL && i < r.n; i++) free(r.keys[i]);
    free(r.keys);
    return;
  }
  if (r.n > 1) qsort(r.keys, r.n, sizeof(*r.keys), compare_strings);
  svc->round_keys = r.keys;
  svc->num_round_keys = r.n;
  svc->round_known = 1;
}

static void diff_shared(mt_mesh_service *svc, const mt_mesh_view *next) {
  forget_round(svc);
  const mt_mesh_entries *from = svc->view ? mt_mesh_view_shared_entries(svc->view) : NULL;
  const mt_mesh_entries *to = mt_mesh_view_shared_entries(next);
  size_t changed = 0, removed = 0;
  if (from != NULL && to != NULL)
    svc->shared_delta = mt_mesh_entries_diff(from, to, &svc->shared_delta_len, &changed, &removed);
  if (svc->shared_delta != NULL) scan_round(svc);
}

/* Logs each line of the new view's policy notes that the previous view
 * did not have: said once, not at every rebuild. */
static void log_policy_notes(mt_mesh_service *svc) {
  const char *notes = mt_mesh_view_policy_notes(svc->view);
  const char *old = svc->logged_notes != NULL ? svc->logged_notes : "";
  if (strcmp(notes, old) == 0) return;
  for (const char *line = notes; *line != '\0';) {
    const char *end = strchr(line, '\n');
    size_t len = end != NULL ? (size_t)(end - line) : strlen(line);
    int seen = 0;
    for (const char *o = old; *o != '\0' && !seen;) {
      const char *oend = strchr(o, '\n');
      size_t olen = oend != NULL ? (size_t)(oend - o) : strlen(o);
      seen = olen == len && memcmp(o, line, len) == 0;
      o += olen + (oend != NULL);
    }
    if (!seen) mt_ca_log_warn(svc->log, "%.*s", (int)len, line);
    line += len + (end != NULL);
  }
  char *copy = strdup(notes);
  if (copy == NULL) return; /* logged again next time: harmless */
  free(svc->logged_notes);
  svc->logged_notes = copy;
}

/* Puts |view| of |mesh| in force (takes both) with the next version; the
 * previous ones are freed. */
static void install(mt_mesh_service *svc, mt_mesh_file *mesh, mt_mesh_view *view) {
  uint8_t digest[MT_MESH_DIGEST_LEN];
  diff_shared(svc, view);
  mt_mesh_view_free(svc->view); /* before the file it borrows */
  if (mesh != svc->current) mt_mesh_file_free(svc->current);
  svc->current = mesh;
  svc->view = view;
  svc->serial++;
  mt_mesh_view_shared_digest(view, digest);
  format_version(svc->version, sizeof(svc->version), svc->serial, digest);
  mt_ca_log_count(svc->log, MT_CA_EV_MESH_LOADS);
  log_policy_notes(svc);
}

/* The push round after a new view came into force, logged as one line. */
static void push_round(mt_mesh_service *svc, const char *why) {
  size_t streams = svc->num_watchers;
  if (svc->held) {
    mt_ca_log_info(svc->log,
                   "mesh snapshot version %s in force (%s); %zu stream%s held until the "
                   "Kubernetes source has synced",
                   svc->version, why, streams, streams == 1 ? "" : "s");
    return;
  }
  uint64_t deltas = mt_ca_log_counter(svc->log, MT_CA_EV_SNAPSHOT_DELTAS_SENT);
  uint64_t bytes = mt_ca_log_counter(svc->log, MT_CA_EV_SNAPSHOT_BYTES_SENT);
  size_t sent = push_all(svc, 0);
  deltas = mt_ca_log_counter(svc->log, MT_CA_EV_SNAPSHOT_DELTAS_SENT) - deltas;
  bytes = mt_ca_log_counter(svc->log, MT_CA_EV_SNAPSHOT_BYTES_SENT) - bytes;
  mt_ca_log_info(svc->log,
                 "mesh snapshot version %s in force (%s; %zu bytes shared, %zu destinations "
                 "from the cluster): sent to %zu of %zu stream%s (%llu as deltas, %llu bytes)",
                 svc->version, why, mt_mesh_view_shared_len(svc->view),
                 mt_mesh_view_num_derived_destinations(svc->view), sent, streams,
                 streams == 1 ? "" : "s", (unsigned long long)deltas, (unsigned long long)bytes);
}

/* Rebuilds the view of the mesh file in force from the sources as they
 * are now, and pushes what changed. */
static void recompute(mt_mesh_service *svc, const char *why) {
  char err[ERR_MAX];
  mt_mesh_view *view = build_view(svc, svc->current, err, sizeof(err));
  if (view == NULL) {
    mt_ca_log_count(svc->log, MT_CA_EV_MESH_LOAD_FAILURES);
    mt_ca_log_error(svc->log, "mesh snapshot not rebuilt (%s), version %s stays in force: %s", why,
                    svc->version, err);
    return;
  }
  install(svc, svc->current, view);
  push_round(svc, why);
}

static void on_debounce(struct ev_loop *loop, ev_timer *t, int revents) {
  (void)loop;
  (void)revents;
  mt_mesh_service *svc = t->data;
  if (svc->held) return; /* the sync recomputes anyway */
  recompute(svc, svc->sources.cluster != NULL ? "kubernetes changes" : "workloads file");
}

/* ---- the mesh file ------------------------------------------------------- */

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
  mt_mesh_view *view = build_view(svc, mesh, err, sizeof(err));
  if (view == NULL) {
    mt_ca_log_count(svc->log, MT_CA_EV_MESH_LOAD_FAILURES);
    mt_ca_log_error(svc->log, "mesh file refused, version %s stays in force: %s: %s", svc->version,
                    svc->mesh_path, err);
    mt_mesh_file_free(mesh);
    return;
  }
  install(svc, mesh, view);
  push_round(svc, svc->mesh_path);
}

static void on_poll(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  mt_mesh_service *svc = w->data;
  if (sources_changed(svc))
    reload(svc);
  else
    push_all(svc, 1); /* streams that were full last time */
}

/* ---- refusals ------------------------------------------------------------ */

/* Refuses a Watch or Want call before it became a stream. */
static void refuse_call(mt_mesh_service *svc, mt_ca_method method, mt_grpc_stream *stream,
                        const mt_grpc_request *req, mt_grpc_status status, const char *reason,
                        const char *identity, const char *message, int64_t started_ms) {
  mt_grpc_stream_finish(stream, status, message);
  mt_ca_log_warn(svc->log, "%s from %s refused: %s (%s): %s",
                 method == MT_CA_METHOD_WANT ? "Want" : "Watch", req->peer_address,
                 mt_grpc_status_name((int)status), reason, message);
  mt_ca_access_entry e = {
      .method = method,
      .peer = req->peer_address,
      .caller = identity,
      .identity = identity,
      .status = status,
      .reason = reason,
      .message = message,
      .duration_ms = mt_ca_log_clock_ms() - started_ms,
      .refused = 1,
  };
  mt_ca_log_access(svc->log, &e);
}

static void refuse(mt_mesh_service *svc, mt_grpc_stream *stream, const mt_grpc_request *req,
                   mt_grpc_status status, const char *reason, const char *identity,
                   const char *message, int64_t started_ms) {
  refuse_call(svc, MT_CA_METHOD_WATCH, stream, req, status, reason, identity, message, started_ms);
}

/* ---- destinations on demand ------------------------------------------- */

/* w->keys from w->wanted: each address and the IP-alone key of its IP.
 * 0 when out of memory (then no key: every round rebuilds it). */
static int index_keys(mt_watcher *w) {
  for (size_t i = 0; i < w->num_keys; i++) free(w->keys[i]);
  free(w->keys);
  w->num_keys = 0;
  w->keys = calloc(2 * w->num_wanted + 1, sizeof(*w->keys));
  if (w->keys == NULL) return 0;
  for (size_t i = 0; i < w->num_wanted; i++) {
    char ip[MT_MESH_ADDRESS_MAX];
    mt_mesh_view_address_ip(w->wanted[i], ip);
    w->keys[w->num_keys++] = strdup(w->wanted[i]);
    w->keys[w->num_keys++] = strdup(ip);
    if (w->keys[w->num_keys - 1] == NULL || w->keys[w->num_keys - 2] == NULL) return 0;
  }
  qsort(w->keys, w->num_keys, sizeof(*w->keys), compare_strings);
  return 1;
}

/* Adds |addresses| (checked already, canonical) to what |w| asks for;
 * returns how many were new, or -1 when out of memory (nothing added). */
static long add_wanted(mt_watcher *w, char **addresses, size_t n) {
  char **merged = calloc(w->num_wanted + n + 1, sizeof(*merged));
  if (merged == NULL) return -1;
  size_t kept = 0;
  for (size_t i = 0; i < w->num_wanted; i++) merged[kept++] = w->wanted[i];
  size_t before = kept;
  for (size_t i = 0; i < n; i++)
    if (w->num_wanted == 0 ||
        !bsearch(&addresses[i], w->wanted, w->num_wanted, sizeof(char *), compare_strings)) {
      merged[kept++] = addresses[i];
      addresses[i] = NULL; /* taken */
    }
  if (kept > 1) qsort(merged, kept, sizeof(*merged), compare_strings);
  size_t unique = 0; /* |addresses| may repeat itself */
  for (size_t i = 0; i < kept; i++) {
    if (unique > 0 && strcmp(merged[unique - 1], merged[i]) == 0) {
      free(merged[i]);
      continue;
    }
    merged[unique++] = merged[i];
  }
  free(w->wanted);
  w->wanted = merged;
  w->num_wanted = unique;
  if (unique > before) {
    w->wanted_dirty = 1;
    if (!index_keys(w)) return -1;
  }
  return (long)(unique - before);
}

/* |n| addresses as canonical copies in |out| (calloc'd array), or 0 with
 * the first bad one named in |message|. */
static int canonical_addresses(char *const *in, size_t n, char ***out, char *message,
                               size_t message_len) {
  *out = calloc(n + 1, sizeof(**out));
  if (*out == NULL) {
    snprintf(message, message_len, "out of memory");
    return 0;
  }
  for (size_t i = 0; i < n; i++) {
    char canonical[MT_MESH_ADDRESS_MAX];
    if (!mt_mesh_view_canonical_address(in[i], canonical)) {
      snprintf(message, message_len, "address \"%.100s\" is not \"ip:port\" (brackets for IPv6)",
               in[i]);
      return 0;
    }
    if (((*out)[i] = strdup(canonical)) == NULL) {
      snprintf(message, message_len, "out of memory");
      return 0;
    }
  }
  return 1;
}

static void free_addresses(char **a, size_t n) {
  for (size_t i = 0; a != NULL && i < n; i++) free(a[i]);
  free(a);
}

/* ---- the Watch method -------------------------------------------------- */

/* What a WatchRequest asks for, beyond who is asking. */
typedef struct {
  int accepts_deltas;
  int on_demand;
  char watch_id[WATCH_ID_MAX + 1];
  char **wanted; /* canonical; n_wanted of them */
  size_t n_wanted;
} watch_options;

/* The request names who is asking; it must be who the token says. Fills
 * |opts| (the caller frees opts->wanted) or refuses the call. */
static int check_request(mt_mesh_service *svc, mt_grpc_stream *stream, const mt_grpc_request *req,
                         const mt_ca_auth_result *auth, int64_t started_ms, watch_options *opts) {
  char message[MESSAGE_MAX];
  Mtlsd__Mesh__V1__WatchRequest *wr =
      mtlsd__mesh__v1__watch_request__unpack(NULL, req->message_len, req->message);
  if (wr == NULL) {
    refuse(svc, stream, req, MT_GRPC_INVALID_ARGUMENT, "bad_request", auth->spiffe_id,
           "the request is not a WatchRequest message", started_ms);
    return 0;
  }
  const char *reason = NULL;
  mt_grpc_status status = MT_GRPC_INVALID_ARGUMENT;
  if (wr->spiffe_id[0] != '\0' && strcmp(wr->spiffe_id, auth->spiffe_id) != 0) {
    snprintf(message, sizeof(message), "spiffe_id \"%.200s\" is not the caller's identity %.200s",
             wr->spiffe_id, auth->spiffe_id);
    reason = "identity_mismatch";
    status = MT_GRPC_PERMISSION_DENIED;
  } else if (strlen(wr->watch_id) > WATCH_ID_MAX) {
    snprintf(message, sizeof(message), "watch_id is longer than %d bytes", WATCH_ID_MAX);
    reason = "bad_request";
  } else if (wr->n_wanted_destinations > MT_MESH_SERVICE_WANTED_MAX) {
    snprintf(message, sizeof(message), "%zu wanted_destinations; at most %d per stream",
             wr->n_wanted_destinations, MT_MESH_SERVICE_WANTED_MAX);
    reason = "too_many_destinations";
    status = MT_GRPC_RESOURCE_EXHAUSTED;
  } else if (!canonical_addresses(wr->wanted_destinations, wr->n_wanted_destinations, &opts->wanted,
                                  message, sizeof(message))) {
    reason = "bad_request";
  }
  opts->n_wanted = wr->n_wanted_destinations;
  if (reason != NULL) {
    refuse(svc, stream, req, status, reason, auth->spiffe_id, message, started_ms);
  } else {
    opts->accepts_deltas = wr->accept_deltas;
    opts->on_demand = wr->on_demand_destinations;
    memcpy(opts->watch_id, wr->watch_id, strlen(wr->watch_id) + 1);
    mt_ca_log_info(
        svc->log, "watch opened by %s from %s (node \"%.*s\", last version \"%.*s\", %s%s)",
        auth->spiffe_id, req->peer_address, NODE_ID_SHOWN_MAX, wr->node_id, VERSION_MAX,
        wr->last_applied_version, wr->accept_deltas ? "takes deltas" : "complete snapshots only",
        wr->on_demand_destinations ? ", destinations on demand" : "");
  }
  mtlsd__mesh__v1__watch_request__free_unpacked(wr, NULL);
  return reason == NULL;
}

static int is_node_agent(const mt_mesh_service *svc, const char *spiffe_id) {
  for (size_t i = 0; i < svc->sources.num_node_agents; i++)
    if (strcmp(svc->sources.node_agents[i], spiffe_id) == 0) return 1;
  return 0;
}

static void on_watch(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  mt_mesh_service *svc = arg;
  int64_t started_ms = mt_ca_log_clock_ms();
  mt_ca_auth_result auth;
  mt_ca_auth_check(svc->auth, req, (int64_t)time(NULL), &auth);
  if (auth.status != MT_GRPC_OK) {
    refuse(svc, stream, req, auth.status, auth.reason, auth.spiffe_id, auth.message, started_ms);
    return;
  }
  watch_options opts;
  memset(&opts, 0, sizeof(opts));
  if (!check_request(svc, stream, req, &auth, started_ms, &opts)) {
    free_addresses(opts.wanted, opts.n_wanted);
    return;
  }
  mt_watcher *w = calloc(1, sizeof(*w));
  if (w == NULL || (opts.n_wanted > 0 && add_wanted(w, opts.wanted, opts.n_wanted) < 0)) {
    free(w == NULL ? NULL : w->wanted);
    free(w);
    free_addresses(opts.wanted, opts.n_wanted);
    refuse(svc, stream, req, MT_GRPC_RESOURCE_EXHAUSTED, "no_memory", auth.spiffe_id,
           "out of memory", started_ms);
    return;
  }
  free_addresses(opts.wanted, opts.n_wanted); /* what add_wanted did not take */
  w->svc = svc;
  w->stream = stream;
  w->opened_ms = started_ms;
  snprintf(w->peer, sizeof(w->peer), "%s", req->peer_address);
  snprintf(w->identity, sizeof(w->identity), "%s", auth.spiffe_id);
  /* The token's node scopes a node agent's snapshot; a claim that is not a
   * node name scopes nothing (the agent is then served as a sidecar). */
  if (mt_node_name_valid(auth.node_name)) /* then at most MT_NODE_NAME_MAX_LEN bytes */
    memcpy(w->node, auth.node_name, strlen(auth.node_name) + 1);
  w->node_agent = is_node_agent(svc, auth.spiffe_id);
  w->accepts_deltas = opts.accepts_deltas;
  w->on_demand = opts.on_demand;
  memcpy(w->watch_id, opts.watch_id, sizeof(w->watch_id));
  w->next = svc->watchers;
  if (svc->watchers) svc->watchers->prev = w;
  svc->watchers = w;
  svc->num_watchers++;
  mt_grpc_stream_set_on_closed(stream, on_watcher_closed, w);
  mt_ca_log_count(svc->log, MT_CA_EV_WATCH_STREAMS_OPENED);
  push_one(w); /* held: the sync sends it */
}

/* ---- the Want method --------------------------------------------------- */

static mt_watcher *find_watcher(mt_mesh_service *svc, const char *identity, const char *watch_id) {
  for (mt_watcher *w = svc->watchers; w != NULL; w = w->next)
    if (w->on_demand && strcmp(w->identity, identity) == 0 && strcmp(w->watch_id, watch_id) == 0)
      return w;
  return NULL;
}

static int send_want_response(mt_grpc_stream *stream, size_t wanted) {
  Mtlsd__Mesh__V1__WantResponse resp = MTLSD__MESH__V1__WANT_RESPONSE__INIT;
  resp.wanted = (uint32_t)wanted;
  uint8_t buf[16];
  size_t len = mtlsd__mesh__v1__want_response__pack(&resp, buf);
  return mt_grpc_stream_send(stream, buf, len) == MT_GRPC_SEND_OK &&
         mt_grpc_stream_finish(stream, MT_GRPC_OK, NULL);
}

/* Adds the request's addresses to the caller's stream and pushes what that
 * changes at once (the caller holds a connection meanwhile). */
static void on_want(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  mt_mesh_service *svc = arg;
  int64_t started_ms = mt_ca_log_clock_ms();
  mt_ca_auth_result auth;
  mt_ca_auth_check(svc->auth, req, (int64_t)time(NULL), &auth);
  if (auth.status != MT_GRPC_OK) {
    refuse_call(svc, MT_CA_METHOD_WANT, stream, req, auth.status, auth.reason, auth.spiffe_id,
                auth.message, started_ms);
    return;
  }
  char message[MESSAGE_MAX];
  const char *reason = NULL;
  mt_grpc_status status = MT_GRPC_INVALID_ARGUMENT;
  char **addresses = NULL;
  mt_watcher *w = NULL;
  Mtlsd__Mesh__V1__WantRequest *wr =
      mtlsd__mesh__v1__want_request__unpack(NULL, req->message_len, req->message);
  if (wr == NULL) {
    snprintf(message, sizeof(message), "the request is not a WantRequest message");
    reason = "bad_request";
  } else if ((w = find_watcher(svc, auth.spiffe_id, wr->watch_id)) == NULL) {
    snprintf(message, sizeof(message),
             "no open Watch stream of %.200s with watch_id \"%.64s\" and destinations on demand",
             auth.spiffe_id, wr->watch_id);
    reason = "no_such_stream";
    status = MT_GRPC_NOT_FOUND;
  } else if (w->num_wanted + wr->n_addresses > MT_MESH_SERVICE_WANTED_MAX) {
    snprintf(message, sizeof(message), "the stream would ask for %zu addresses; at most %d",
             w->num_wanted + wr->n_addresses, MT_MESH_SERVICE_WANTED_MAX);
    reason = "too_many_destinations";
    status = MT_GRPC_RESOURCE_EXHAUSTED;
  } else if (!canonical_addresses(wr->addresses, wr->n_addresses, &addresses, message,
                                  sizeof(message))) {
    reason = "bad_request";
  }
  size_t n = wr != NULL ? wr->n_addresses : 0;
  long added = reason == NULL ? add_wanted(w, addresses, n) : 0;
  if (added < 0) {
    snprintf(message, sizeof(message), "out of memory");
    reason = "no_memory";
    status = MT_GRPC_RESOURCE_EXHAUSTED;
  }
  free_addresses(addresses, n);
  if (wr != NULL) mtlsd__mesh__v1__want_request__free_unpacked(wr, NULL);
  if (reason != NULL) {
    refuse_call(svc, MT_CA_METHOD_WANT, stream, req, status, reason, auth.spiffe_id, message,
                started_ms);
    return;
  }
  mt_ca_log_add(svc->log, MT_CA_EV_DESTINATIONS_WANTED, (uint64_t)added);
  size_t wanted = w->num_wanted;
  if (added > 0) push_one(w); /* may end (and free) the stream */
  send_want_response(stream, wanted);
  mt_ca_access_entry e = {
      .method = MT_CA_METHOD_WANT,
      .peer = req->peer_address,
      .caller = auth.spiffe_id,
      .identity = auth.spiffe_id,
      .status = MT_GRPC_OK,
      .reason = "ok",
      .message = "",
      .duration_ms = mt_ca_log_clock_ms() - started_ms,
  };
  mt_ca_log_access(svc->log, &e);
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
  svc->auth = auth;
  svc->log = log;
  mt_mesh_file *mesh = mt_mesh_file_load(mesh_path, trust_domain, err, err_len);
  if (mesh == NULL) {
    mt_mesh_service_free(svc);
    return NULL;
  }
  watch_sources(svc, mesh);
  char why[ERR_MAX];
  mt_mesh_view *view = build_view(svc, mesh, why, sizeof(why));
  if (view == NULL) {
    snprintf(err, err_len, "%s:1: %s", mesh_path, why);
    mt_mesh_file_free(mesh);
    mt_mesh_service_free(svc);
    return NULL;
  }
  install(svc, mesh, view);
  svc->loop = loop;
  double seconds = (double)poll_ms / MS_PER_SECOND;
  ev_timer_init(&svc->poll, on_poll, seconds, seconds);
  svc->poll.data = svc;
  ev_timer_start(loop, &svc->poll);
  ev_timer_init(&svc->debounce, on_debounce, (double)MT_MESH_SERVICE_DEBOUNCE_MS / MS_PER_SECOND,
                0.);
  svc->debounce.data = svc;
  return svc;
}

void mt_mesh_service_free(mt_mesh_service *svc) {
  if (svc == NULL) return;
  if (svc->loop != NULL) {
    ev_timer_stop(svc->loop, &svc->poll);
    ev_timer_stop(svc->loop, &svc->debounce);
  }
  while (svc->watchers != NULL)
    finish_watcher(svc->watchers, MT_GRPC_UNAVAILABLE, "shutdown", kShutdownMessage);
  clear_watched(svc);
  forget_round(svc);
  mt_mesh_view_free(svc->view); /* before the file it borrows */
  mt_mesh_file_free(svc->current);
  free(svc->logged_notes);
  free(svc->mesh_path);
  free(svc->trust_domain);
  free(svc);
}

int mt_mesh_service_use_sources(mt_mesh_service *svc, const mt_mesh_sources *sources, char *err,
                                size_t err_len) {
  svc->sources = *sources;
  svc->held = sources->cluster != NULL && !sources->cluster_synced;
  if (sources->cluster == NULL && sources->registry == NULL) return 1;
  mt_mesh_view *view = build_view(svc, svc->current, err, err_len);
  if (view == NULL) return 0;
  /* Nothing was sent yet: the first version just gets the sources too. */
  uint8_t digest[MT_MESH_DIGEST_LEN];
  forget_round(svc);
  mt_mesh_view_free(svc->view);
  svc->view = view;
  mt_mesh_view_shared_digest(view, digest);
  format_version(svc->version, sizeof(svc->version), svc->serial, digest);
  log_policy_notes(svc);
  return 1;
}

void mt_mesh_service_sources_changed(mt_mesh_service *svc) {
  if (ev_is_active(&svc->debounce)) return;
  /* Set again each time: once a one-shot timer has fired, libev keeps no
   * delay for it, and a bare restart would fire on the next iteration. */
  ev_timer_set(&svc->debounce, (double)MT_MESH_SERVICE_DEBOUNCE_MS / MS_PER_SECOND, 0.);
  ev_timer_start(svc->loop, &svc->debounce);
}

void mt_mesh_service_cluster_synced(mt_mesh_service *svc) {
  if (!svc->held) return;
  svc->held = 0;
  ev_timer_stop(svc->loop, &svc->debounce); /* this round covers what it waited for */
  recompute(svc, "kubernetes source synced");
}

int mt_mesh_service_register(mt_mesh_service *svc, mt_grpc_server *server) {
  return mt_grpc_server_handle(server, mt_ca_method_path(MT_CA_METHOD_WATCH), on_watch, svc) &&
         mt_grpc_server_handle(server, mt_ca_method_path(MT_CA_METHOD_WANT), on_want, svc);
}

void mt_mesh_service_reload(mt_mesh_service *svc) { reload(svc); }

const char *mt_mesh_service_version(const mt_mesh_service *svc) { return svc->version; }

size_t mt_mesh_service_stream_count(const mt_mesh_service *svc) { return svc->num_watchers; }
