/* jwks_source.c: one GET at a time; a timer decides when the next runs. */
#include "controlplane/jwks_source.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controlplane/jwks.h"

enum {
  FETCH_TIMEOUT_MS = 10000,
  BACKOFF_INITIAL_MS = 1000,
  BACKOFF_MAX_MS = 60000,
  LINE_MAX_BYTES = 512,
};

struct mt_jwks_source {
  struct ev_loop *loop;
  mt_k8s_client *client;
  int64_t refresh_ms, min_interval_ms;
  mt_jwks_source_callbacks cb;
  void *ctx;
  ev_timer next;            /* the next fetch */
  mt_k8s_request *request;  /* in flight; NULL when idle */
  char *body;               /* what has arrived of it */
  size_t body_len;
  int too_large;
  ev_tstamp last_start;     /* loop time the last fetch started; 0 = never */
  int64_t backoff_ms;
  mt_jwks_source_stats stats;
};

static void schedule(mt_jwks_source *s, double seconds) {
  ev_timer_stop(s->loop, &s->next);
  ev_timer_set(&s->next, seconds < 0 ? 0 : seconds, 0.0);
  ev_timer_start(s->loop, &s->next);
}

static void fail(mt_jwks_source *s, const char *why) {
  char line[LINE_MAX_BYTES];
  s->stats.failures++;
  snprintf(line, sizeof(line), "token keys: GET %s failed, the keys in force stay: %s; retrying in %.1f s",
           MT_JWKS_PATH, why, (double)s->backoff_ms / 1000);
  if (s->cb.on_error) s->cb.on_error(s->ctx, line);
  schedule(s, (double)s->backoff_ms / 1000);
  s->backoff_ms *= 2;
  if (s->backoff_ms > BACKOFF_MAX_MS) s->backoff_ms = BACKOFF_MAX_MS;
}

static int on_data(void *ctx, const char *data, size_t len) {
  mt_jwks_source *s = ctx;
  if (s->body_len + len > MT_JWKS_MAX_BYTES) {
    s->too_large = 1;
    return 0;
  }
  char *grown = realloc(s->body, s->body_len + len + 1);
  if (grown == NULL) return 0;
  memcpy(grown + s->body_len, data, len);
  s->body = grown;
  s->body_len += len;
  return 1;
}

static void on_done(void *ctx, long http_status, const char *error) {
  mt_jwks_source *s = ctx;
  s->request = NULL;
  char why[LINE_MAX_BYTES];
  if (s->too_large) {
    snprintf(why, sizeof(why), "the document is larger than %d bytes", MT_JWKS_MAX_BYTES);
  } else if (error[0] != '\0') {
    snprintf(why, sizeof(why), "%s", error);
  } else if (http_status != 200) {
    snprintf(why, sizeof(why), "HTTP status %ld%s", http_status,
             http_status == 403 ? " (mtls-ca needs the system:service-account-issuer-discovery "
                                  "ClusterRole)"
                                : "");
  } else {
    size_t skipped = 0;
    mt_jwt_keys *keys = mt_jwks_parse(s->body ? s->body : "", s->body_len, &skipped, why,
                                      sizeof(why));
    if (keys != NULL) {
      free(s->body);
      s->body = NULL;
      s->body_len = 0;
      s->stats.loaded++;
      s->backoff_ms = BACKOFF_INITIAL_MS;
      schedule(s, (double)s->refresh_ms / 1000);
      s->cb.on_keys(s->ctx, keys, skipped);
      return;
    }
  }
  free(s->body);
  s->body = NULL;
  s->body_len = 0;
  fail(s, why);
}

static void start_fetch(mt_jwks_source *s) {
  static const mt_k8s_request_callbacks cb = {on_data, on_done, NULL};
  char err[MT_K8S_ERROR_MAX];
  s->too_large = 0;
  s->last_start = ev_now(s->loop);
  s->stats.fetches++;
  s->request = mt_k8s_client_get(s->client, MT_JWKS_PATH, FETCH_TIMEOUT_MS, &cb, s, err,
                                 sizeof(err));
  if (s->request == NULL) fail(s, err);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  mt_jwks_source *s = w->data;
  if (s->request == NULL) start_fetch(s);
}

mt_jwks_source *mt_jwks_source_new(struct ev_loop *loop, mt_k8s_client *client,
                                   int64_t refresh_ms, int64_t min_interval_ms,
                                   const mt_jwks_source_callbacks *callbacks, void *ctx) {
  mt_jwks_source *s = calloc(1, sizeof(*s));
  if (s == NULL) return NULL;
  s->loop = loop;
  s->client = client;
  s->refresh_ms = refresh_ms;
  s->min_interval_ms = min_interval_ms;
  s->cb = *callbacks;
  s->ctx = ctx;
  s->backoff_ms = BACKOFF_INITIAL_MS;
  ev_init(&s->next, on_timer);
  s->next.data = s;
  schedule(s, 0);
  return s;
}

void mt_jwks_source_free(mt_jwks_source *s) {
  if (s == NULL) return;
  ev_timer_stop(s->loop, &s->next);
  mt_k8s_request_cancel(s->request);
  free(s->body);
  free(s);
}

void mt_jwks_source_refresh_soon(mt_jwks_source *s) {
  if (s == NULL || s->request != NULL) return;
  double earliest = s->last_start + (double)s->min_interval_ms / 1000 - ev_now(s->loop);
  if (earliest < 0) earliest = 0;
  double remaining = ev_timer_remaining(s->loop, &s->next);
  if (ev_is_active(&s->next) && remaining <= earliest) return;
  schedule(s, earliest);
}

void mt_jwks_source_get_stats(const mt_jwks_source *s, mt_jwks_source_stats *out) {
  *out = s->stats;
}
