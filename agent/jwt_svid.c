/* jwt_svid.c: JWT-SVID fetches, their cache and the bundle stream. See jwt_svid.h. */
#include "agent/jwt_svid.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/ca_client.h"
#include "agent/jwt_svid_cache.h"
#include "agent/log.h"
#include "proto/mtlsd/jwt.pb-c.h"

enum {
  MS_PER_SECOND = 1000,
  MAX_METADATA = 3, /* authorization, clusterid, impersonatedidentity */
  ERR_MAX = 320,
};

typedef struct sign_call sign_call;

struct mt_jwt_svid_fetch {
  mt_jwt_svid_source *src;
  sign_call *call;                /* the call it waits for; NULL once its answer is ready */
  mt_jwt_svid_fetch *prev, *next; /* in call->waiters, or in src->ready */
  mt_jwt_svid_done_fn done;
  void *arg;
  /* The answer, once ready (owned copies). */
  mt_grpc_status status;
  char message[MT_JWT_SVID_MESSAGE_MAX];
  char *token, *spiffe_id;
  int64_t expires_at;
  int from_cache;
};

/* One SignJwtSvid call, shared by every fetch of its key (none: a
 * background refresh). */
struct sign_call {
  mt_jwt_svid_source *src;
  sign_call *prev, *next;
  mt_jwt_svid_key key;
  char *spiffe_id; /* as asked ("" : whatever mtls-ca decides) */
  int impersonate;
  mt_grpc_call *call;
  mt_jwt_svid_fetch *waiters;
  uint8_t *response; /* the last response message */
  size_t response_len;
};

struct mt_jwt_svid_source {
  struct ev_loop *loop;
  mt_grpc_client *grpc;
  char *token_file, *cluster_id;
  int64_t request_timeout_ms, retry_initial_ms, retry_max_ms;
  mt_jwt_svid_sink sink;
  mt_jwt_svid_cache *cache;
  sign_call *calls;
  mt_jwt_svid_fetch *ready; /* answers waiting for |deliver| */
  ev_timer deliver, sweep;
  /* The bundle stream. */
  mt_jwt_bundles *bundles;
  mt_grpc_call *watch;
  ev_timer watch_timer;
  int64_t backoff_ms;
  int watch_delivered; /* the current stream has delivered a set */
  mt_jwt_svid_stats stats;
};

static int64_t now_s(void) { return (int64_t)time(NULL); }

static void start_timer(mt_jwt_svid_source *src, ev_timer *t, double after_s) {
  ev_timer_stop(src->loop, t);
  ev_timer_set(t, after_s, 0.);
  ev_timer_start(src->loop, t);
}

/* ---- metadata ------------------------------------------------------------- */

/* authorization, clusterid and (when |impersonated| is set) the workload.
 * Returns the count, or -1 with the reason in |err|. */
static int call_metadata(const mt_jwt_svid_source *src, const char *impersonated,
                         char auth[MT_CA_AUTH_HEADER_MAX], mt_grpc_metadata md[MAX_METADATA],
                         char *err, size_t err_len) {
  int n = 0;
  if (src->token_file != NULL) {
    if (!mt_ca_read_bearer(src->token_file, auth, MT_CA_AUTH_HEADER_MAX, err, err_len)) return -1;
    md[n++] = (mt_grpc_metadata){"authorization", auth};
  }
  if (src->cluster_id != NULL) md[n++] = (mt_grpc_metadata){"clusterid", src->cluster_id};
  if (impersonated != NULL)
    md[n++] = (mt_grpc_metadata){MT_JWT_SVID_IMPERSONATION_HEADER, impersonated};
  return n;
}

/* ---- answers -------------------------------------------------------------- */

static void fetch_free(mt_jwt_svid_fetch *f) {
  free(f->token);
  free(f->spiffe_id);
  free(f);
}

static void list_unlink(mt_jwt_svid_fetch **head, mt_jwt_svid_fetch *f) {
  if (f->prev != NULL)
    f->prev->next = f->next;
  else
    *head = f->next;
  if (f->next != NULL) f->next->prev = f->prev;
  f->prev = f->next = NULL;
}

static void list_push(mt_jwt_svid_fetch **head, mt_jwt_svid_fetch *f) {
  f->prev = NULL;
  f->next = *head;
  if (*head != NULL) (*head)->prev = f;
  *head = f;
}

/* Sets |f|'s answer and queues it for delivery from the loop. */
static void answer(mt_jwt_svid_fetch *f, mt_grpc_status status, const char *message,
                   const mt_jwt_svid_entry *entry, int from_cache) {
  mt_jwt_svid_source *src = f->src;
  f->status = status;
  snprintf(f->message, sizeof(f->message), "%s", message);
  if (entry != NULL) {
    f->token = strdup(entry->token);
    f->spiffe_id = strdup(entry->spiffe_id);
    f->expires_at = entry->expires_at_s;
    f->from_cache = from_cache;
    if (f->token == NULL || f->spiffe_id == NULL) {
      f->status = MT_GRPC_RESOURCE_EXHAUSTED;
      snprintf(f->message, sizeof(f->message), "out of memory");
    }
  }
  f->call = NULL;
  list_push(&src->ready, f);
  start_timer(src, &src->deliver, 0.);
}

static void on_deliver(struct ev_loop *loop, ev_timer *t, int revents) {
  (void)loop;
  (void)revents;
  mt_jwt_svid_source *src = t->data;
  while (src->ready != NULL) { /* a callback may cancel other ready fetches */
    mt_jwt_svid_fetch *f = src->ready;
    list_unlink(&src->ready, f);
    int ok = f->status == MT_GRPC_OK;
    mt_jwt_svid_result r = {f->status,
                            f->message,
                            ok ? f->token : NULL,
                            ok ? f->spiffe_id : NULL,
                            ok ? f->expires_at : 0,
                            f->from_cache};
    f->done(f->arg, &r);
    fetch_free(f);
  }
}

/* ---- SignJwtSvid ------------------------------------------------------------ */

static void call_free(sign_call *c) {
  mt_jwt_svid_source *src = c->src;
  if (c->prev != NULL)
    c->prev->next = c->next;
  else
    src->calls = c->next;
  if (c->next != NULL) c->next->prev = c->prev;
  mt_jwt_svid_key_dispose(&c->key);
  free(c->spiffe_id);
  free(c->response);
  free(c);
}

/* Every waiter of |c| gets the outcome; then |c| goes. A failure answers
 * with a cached token that has not expired, when there is one. */
static void conclude(sign_call *c, mt_grpc_status status, const char *message) {
  mt_jwt_svid_source *src = c->src;
  if (status != MT_GRPC_OK) src->stats.call_failures++;
  const mt_jwt_svid_entry *entry = mt_jwt_svid_cache_unexpired(src->cache, &c->key, now_s());
  if (status != MT_GRPC_OK && c->waiters != NULL)
    MT_LOG_W("JWT-SVID for %s: %s: %s%s", c->spiffe_id[0] ? c->spiffe_id : "this agent",
             mt_grpc_status_name((int)status), message,
             entry != NULL ? " (answering with the cached token, not yet expired)" : "");
  while (c->waiters != NULL) {
    mt_jwt_svid_fetch *f = c->waiters;
    list_unlink(&c->waiters, f);
    if (entry != NULL)
      answer(f, MT_GRPC_OK, "", entry, status != MT_GRPC_OK);
    else
      answer(f, status == MT_GRPC_OK ? MT_GRPC_INTERNAL : status,
             status == MT_GRPC_OK ? "the token could not be cached" : message, NULL, 0);
  }
  call_free(c);
}

/* The response of an OK call into the cache; returns the status the call
 * ends with (a token for another identity than asked is refused). */
static mt_grpc_status take_response(sign_call *c, char *why, size_t why_len) {
  Mtlsd__Jwt__V1__SignJwtSvidResponse *r =
      c->response != NULL
          ? mtlsd__jwt__v1__sign_jwt_svid_response__unpack(NULL, c->response_len, c->response)
          : NULL;
  mt_grpc_status status = MT_GRPC_INTERNAL;
  if (r == NULL || r->token == NULL || r->token[0] == '\0' || r->spiffe_id == NULL ||
      r->spiffe_id[0] == '\0') {
    snprintf(why, why_len, "mtls-ca sent no SignJwtSvidResponse with a token");
  } else if (c->spiffe_id[0] != '\0' && strcmp(c->spiffe_id, r->spiffe_id) != 0) {
    status = MT_GRPC_PERMISSION_DENIED;
    snprintf(why, why_len, "mtls-ca signed the token for %.200s, not the identity asked for",
             r->spiffe_id);
  } else if (r->expires_at <= now_s()) {
    snprintf(why, why_len, "mtls-ca sent a token that has already expired");
  } else if (!mt_jwt_svid_cache_put(c->src->cache, &c->key, r->token, r->spiffe_id, r->expires_at,
                                    now_s())) {
    status = MT_GRPC_RESOURCE_EXHAUSTED;
    snprintf(why, why_len, "out of memory");
  } else {
    status = MT_GRPC_OK;
  }
  if (r != NULL) mtlsd__jwt__v1__sign_jwt_svid_response__free_unpacked(r, NULL);
  return status;
}

static void on_sign_message(void *arg, const uint8_t *msg, size_t len) {
  sign_call *c = arg;
  uint8_t *copy = malloc(len ? len : 1);
  if (copy == NULL) return;
  memcpy(copy, msg, len);
  free(c->response);
  c->response = copy;
  c->response_len = len;
}

static void on_sign_close(void *arg, mt_grpc_status status, const char *message) {
  sign_call *c = arg;
  c->call = NULL;
  char why[ERR_MAX] = "";
  if (status == MT_GRPC_OK) {
    status = take_response(c, why, sizeof(why));
    message = why;
  }
  conclude(c, status, message);
}

/* Starts the call of |c|; 0 with the reason in |err|. */
static int sign_call_start(sign_call *c, const char *const *audiences, size_t n, char *err,
                           size_t err_len) {
  mt_jwt_svid_source *src = c->src;
  char auth[MT_CA_AUTH_HEADER_MAX];
  mt_grpc_metadata md[MAX_METADATA];
  int num_md = call_metadata(src, c->impersonate ? c->spiffe_id : NULL, auth, md, err, err_len);
  if (num_md < 0) return 0;
  Mtlsd__Jwt__V1__SignJwtSvidRequest req = MTLSD__JWT__V1__SIGN_JWT_SVID_REQUEST__INIT;
  req.audience = (char **)audiences;
  req.n_audience = n;
  size_t len = mtlsd__jwt__v1__sign_jwt_svid_request__get_packed_size(&req);
  uint8_t *buf = malloc(len ? len : 1);
  static const mt_grpc_call_handlers handlers = {on_sign_message, on_sign_close};
  if (buf != NULL) {
    mtlsd__jwt__v1__sign_jwt_svid_request__pack(&req, buf);
    c->call = mt_grpc_client_start_call(src->grpc, MT_JWT_SVID_SIGN_METHOD, md, (size_t)num_md, buf,
                                        len, src->request_timeout_ms, &handlers, c);
  }
  free(buf);
  if (c->call == NULL) {
    snprintf(err, err_len, "cannot start the SignJwtSvid call (out of memory)");
    return 0;
  }
  src->stats.calls++;
  return 1;
}

/* The call in flight for |key|, or a new one (started). NULL with |err|
 * set when it cannot start. */
static sign_call *call_for(mt_jwt_svid_source *src, const mt_jwt_svid_key *key,
                           const char *spiffe_id, int impersonate, const char *const *audiences,
                           size_t n, char *err, size_t err_len) {
  for (sign_call *c = src->calls; c != NULL; c = c->next)
    if (mt_jwt_svid_key_equal(&c->key, key)) return c;
  sign_call *c = calloc(1, sizeof(*c));
  if (c == NULL || (c->spiffe_id = strdup(spiffe_id)) == NULL ||
      (c->key.bytes = malloc(key->len)) == NULL) {
    if (c != NULL) free(c->spiffe_id);
    free(c);
    snprintf(err, err_len, "out of memory");
    return NULL;
  }
  memcpy(c->key.bytes, key->bytes, key->len);
  c->key.len = key->len;
  c->impersonate = impersonate;
  c->src = src;
  c->next = src->calls;
  if (c->next != NULL) c->next->prev = c;
  src->calls = c;
  if (!sign_call_start(c, audiences, n, err, err_len)) {
    src->stats.call_failures++;
    call_free(c);
    return NULL;
  }
  return c;
}

mt_jwt_svid_fetch *mt_jwt_svid_fetch_start(mt_jwt_svid_source *src, const char *spiffe_id,
                                           int impersonate, const char *const *audiences,
                                           size_t num_audiences, mt_jwt_svid_done_fn done,
                                           void *arg, char *err, size_t err_len) {
  mt_jwt_svid_key key;
  if (spiffe_id == NULL || done == NULL || (impersonate && spiffe_id[0] == '\0') ||
      !mt_jwt_svid_key_make(spiffe_id, impersonate, audiences, num_audiences, &key)) {
    snprintf(err, err_len,
             "a fetch needs 1 to %d non-empty audiences (and, to impersonate, a "
             "SPIFFE ID)",
             MT_JWT_SVID_MAX_AUDIENCES);
    return NULL;
  }
  mt_jwt_svid_fetch *f = calloc(1, sizeof(*f));
  if (f == NULL) {
    mt_jwt_svid_key_dispose(&key);
    snprintf(err, err_len, "out of memory");
    return NULL;
  }
  f->src = src;
  f->done = done;
  f->arg = arg;
  src->stats.fetches++;
  int due = 0;
  const mt_jwt_svid_entry *entry = mt_jwt_svid_cache_fresh(src->cache, &key, now_s(), &due);
  char why[ERR_MAX] = "";
  if (entry != NULL) {
    src->stats.cache_hits++;
    answer(f, MT_GRPC_OK, "", entry, 1);
    if (due) /* in the background: its failure is seen by the next asker */
      call_for(src, &key, spiffe_id, impersonate, audiences, num_audiences, why, sizeof(why));
  } else {
    sign_call *c =
        call_for(src, &key, spiffe_id, impersonate, audiences, num_audiences, why, sizeof(why));
    if (c != NULL) {
      f->call = c;
      list_push(&c->waiters, f);
    } else {
      const mt_jwt_svid_entry *stale = mt_jwt_svid_cache_unexpired(src->cache, &key, now_s());
      answer(f, stale != NULL ? MT_GRPC_OK : MT_GRPC_UNAVAILABLE, stale != NULL ? "" : why, stale,
             1);
    }
  }
  mt_jwt_svid_key_dispose(&key);
  return f;
}

void mt_jwt_svid_fetch_cancel(mt_jwt_svid_fetch *f) {
  if (f == NULL) return;
  if (f->call != NULL)
    list_unlink(&f->call->waiters, f); /* the call goes on: its token fills the cache */
  else
    list_unlink(&f->src->ready, f);
  fetch_free(f);
}

/* ---- the bundle stream ------------------------------------------------------ */

static void start_watch(mt_jwt_svid_source *src);

static void retry_watch(mt_jwt_svid_source *src) {
  if (src->watch_delivered || src->backoff_ms == 0) src->backoff_ms = src->retry_initial_ms;
  src->watch_delivered = 0;
  start_timer(src, &src->watch_timer, (double)src->backoff_ms / MS_PER_SECOND);
  src->backoff_ms =
      src->backoff_ms * 2 < src->retry_max_ms ? src->backoff_ms * 2 : src->retry_max_ms;
}

static void on_bundles_message(void *arg, const uint8_t *msg, size_t len) {
  mt_jwt_svid_source *src = arg;
  char err[ERR_MAX];
  mt_jwt_bundles *next = mt_jwt_bundles_decode(msg, len, err, sizeof(err));
  if (next == NULL) {
    src->stats.bundle_refused++;
    MT_LOG_W("JWT bundles from the control plane refused, the ones in force stay: %s", err);
    return;
  }
  src->watch_delivered = 1;
  if (src->bundles != NULL && mt_jwt_bundles_equal(src->bundles, next)) {
    mt_jwt_bundles_free(next);
    return;
  }
  mt_jwt_bundles_free(src->bundles);
  src->bundles = next;
  src->stats.bundle_updates++;
  MT_LOG_I("JWT bundles: %zu trust domain%s", mt_jwt_bundles_count(next),
           mt_jwt_bundles_count(next) == 1 ? "" : "s");
  if (src->sink.on_bundles != NULL) src->sink.on_bundles(src->sink.arg, next);
}

static void on_bundles_close(void *arg, mt_grpc_status status, const char *message) {
  mt_jwt_svid_source *src = arg;
  src->watch = NULL;
  MT_LOG_W("JWT bundle stream ended: %s: %s; reconnecting", mt_grpc_status_name((int)status),
           message);
  retry_watch(src);
}

static void start_watch(mt_jwt_svid_source *src) {
  char auth[MT_CA_AUTH_HEADER_MAX], err[ERR_MAX];
  mt_grpc_metadata md[MAX_METADATA];
  int num_md = call_metadata(src, NULL, auth, md, err, sizeof(err));
  static const mt_grpc_call_handlers handlers = {on_bundles_message, on_bundles_close};
  /* WatchJwtBundlesRequest has no fields: its encoding is empty. */
  static const uint8_t kEmpty[1] = {0};
  if (num_md >= 0)
    src->watch = mt_grpc_client_start_call(src->grpc, MT_JWT_SVID_WATCH_METHOD, md, (size_t)num_md,
                                           kEmpty, 0, 0, &handlers, src);
  if (src->watch == NULL) {
    MT_LOG_W("JWT bundle stream: cannot start: %s", num_md < 0 ? err : "out of memory");
    retry_watch(src);
  }
}

static void on_watch_timer(struct ev_loop *loop, ev_timer *t, int revents) {
  (void)loop;
  (void)revents;
  start_watch(t->data);
}

/* ---- lifetime ---------------------------------------------------------------- */

static void on_sweep(struct ev_loop *loop, ev_timer *t, int revents) {
  (void)loop;
  (void)revents;
  mt_jwt_svid_source *src = t->data;
  mt_jwt_svid_cache_sweep(src->cache, now_s());
}

static int64_t or_default(int64_t value, int64_t fallback) { return value > 0 ? value : fallback; }

mt_jwt_svid_source *mt_jwt_svid_source_new(struct ev_loop *loop, mt_grpc_client *grpc,
                                           const mt_jwt_svid_options *o,
                                           const mt_jwt_svid_sink *sink, char *err,
                                           size_t err_len) {
  mt_jwt_svid_source *src = calloc(1, sizeof(*src));
  if (src == NULL || grpc == NULL) {
    free(src);
    snprintf(err, err_len, grpc == NULL ? "no gRPC client" : "out of memory");
    return NULL;
  }
  src->loop = loop;
  src->grpc = grpc;
  src->token_file = o->token_file != NULL ? strdup(o->token_file) : NULL;
  src->cluster_id = o->cluster_id != NULL ? strdup(o->cluster_id) : NULL;
  src->request_timeout_ms = or_default(o->request_timeout_ms, MT_JWT_SVID_DEFAULT_TIMEOUT_MS);
  src->retry_initial_ms = or_default(o->retry_initial_ms, MT_JWT_SVID_DEFAULT_RETRY_INITIAL_MS);
  src->retry_max_ms = or_default(o->retry_max_ms, MT_JWT_SVID_DEFAULT_RETRY_MAX_MS);
  src->cache = mt_jwt_svid_cache_new(
      o->max_cache_entries ? o->max_cache_entries : MT_JWT_SVID_DEFAULT_MAX_ENTRIES,
      or_default(o->cache_idle_s, MT_JWT_SVID_DEFAULT_IDLE_S));
  if (sink != NULL) src->sink = *sink;
  if (src->cache == NULL || (o->token_file != NULL && src->token_file == NULL) ||
      (o->cluster_id != NULL && src->cluster_id == NULL)) {
    mt_jwt_svid_cache_free(src->cache);
    free(src->token_file);
    free(src->cluster_id);
    free(src);
    snprintf(err, err_len, "out of memory");
    return NULL;
  }
  ev_timer_init(&src->deliver, on_deliver, 0., 0.);
  src->deliver.data = src;
  ev_timer_init(&src->watch_timer, on_watch_timer, 0., 0.);
  src->watch_timer.data = src;
  ev_timer_start(loop, &src->watch_timer);
  ev_timer_init(&src->sweep, on_sweep, MT_JWT_SVID_SWEEP_INTERVAL_S, MT_JWT_SVID_SWEEP_INTERVAL_S);
  src->sweep.data = src;
  ev_timer_start(loop, &src->sweep);
  return src;
}

void mt_jwt_svid_source_free(mt_jwt_svid_source *src) {
  if (src == NULL) return;
  mt_grpc_call_cancel(src->watch);
  while (src->calls != NULL) {
    sign_call *c = src->calls;
    while (c->waiters != NULL) {
      mt_jwt_svid_fetch *f = c->waiters;
      list_unlink(&c->waiters, f);
      fetch_free(f);
    }
    mt_grpc_call_cancel(c->call);
    call_free(c);
  }
  while (src->ready != NULL) {
    mt_jwt_svid_fetch *f = src->ready;
    list_unlink(&src->ready, f);
    fetch_free(f);
  }
  ev_timer_stop(src->loop, &src->deliver);
  ev_timer_stop(src->loop, &src->watch_timer);
  ev_timer_stop(src->loop, &src->sweep);
  mt_jwt_svid_cache_free(src->cache);
  mt_jwt_bundles_free(src->bundles);
  free(src->token_file);
  free(src->cluster_id);
  free(src);
}

const mt_jwt_bundles *mt_jwt_svid_bundles(const mt_jwt_svid_source *src) { return src->bundles; }

int mt_jwt_svid_validate(const mt_jwt_svid_source *src, const char *token, size_t len,
                         const char *audience, mt_jwt_svid_valid *out, char *err, size_t err_len) {
  if (src->bundles == NULL) {
    memset(out, 0, sizeof(*out));
    snprintf(err, err_len, "no JWT bundle has arrived from the control plane yet");
    return 0;
  }
  return mt_jwt_bundles_validate(src->bundles, token, len, audience, now_s(), out, err, err_len);
}

void mt_jwt_svid_get_stats(const mt_jwt_svid_source *src, mt_jwt_svid_stats *out) {
  *out = src->stats;
  out->bundles_streaming = src->watch != NULL && src->watch_delivered;
  out->cached = mt_jwt_svid_cache_count(src->cache);
}
