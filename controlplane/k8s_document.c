/* k8s_document.c: one GET at a time; a timer decides when the next runs. */
#include "controlplane/k8s_document.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
  FETCH_TIMEOUT_MS = 10000,
  BACKOFF_INITIAL_MS = 1000,
  BACKOFF_MAX_MS = 60000,
};

struct mt_k8s_document {
  struct ev_loop *loop;
  mt_k8s_client *client;
  char *path, *forbidden_hint, *not_found_hint;
  size_t max_bytes;
  int64_t refresh_ms, min_interval_ms;
  mt_k8s_document_callbacks cb;
  void *ctx;
  ev_timer next;           /* the next fetch */
  mt_k8s_request *request; /* in flight; NULL when idle */
  char *body;              /* what has arrived of it */
  size_t body_len;
  int too_large;
  ev_tstamp last_start; /* loop time the last fetch started; 0 = never */
  int64_t backoff_ms;
  mt_k8s_document_stats stats;
};

static void schedule(mt_k8s_document *d, double seconds) {
  ev_timer_stop(d->loop, &d->next);
  ev_timer_set(&d->next, seconds < 0 ? 0 : seconds, 0.0);
  ev_timer_start(d->loop, &d->next);
}

static void drop_body(mt_k8s_document *d) {
  free(d->body);
  d->body = NULL;
  d->body_len = 0;
}

static void fail(mt_k8s_document *d, const char *why) {
  double retry_s = (double)d->backoff_ms / 1000;
  d->stats.failures++;
  schedule(d, retry_s);
  d->backoff_ms *= 2;
  if (d->backoff_ms > BACKOFF_MAX_MS) d->backoff_ms = BACKOFF_MAX_MS;
  if (d->cb.on_error) d->cb.on_error(d->ctx, why, retry_s);
}

static int on_data(void *ctx, const char *data, size_t len) {
  mt_k8s_document *d = ctx;
  if (d->body_len + len > d->max_bytes) {
    d->too_large = 1;
    return 0;
  }
  char *grown = realloc(d->body, d->body_len + len + 1);
  if (grown == NULL) return 0;
  memcpy(grown + d->body_len, data, len);
  grown[d->body_len + len] = '\0';
  d->body = grown;
  d->body_len += len;
  return 1;
}

/* Why a finished transfer is not a body to hand over; "" when it is one. */
static void transfer_problem(const mt_k8s_document *d, long http_status, const char *error,
                             char *why, size_t why_len) {
  const char *hint = http_status == 403   ? d->forbidden_hint
                     : http_status == 404 ? d->not_found_hint
                                          : NULL;
  why[0] = '\0';
  if (d->too_large)
    snprintf(why, why_len, "the document is larger than %zu bytes", d->max_bytes);
  else if (error[0] != '\0')
    snprintf(why, why_len, "%s", error);
  else if (http_status != 200)
    snprintf(why, why_len, "HTTP status %ld%s%s%s", http_status, hint ? " (" : "", hint ? hint : "",
             hint ? ")" : "");
}

static void on_done(void *ctx, long http_status, const char *error) {
  mt_k8s_document *d = ctx;
  char why[MT_K8S_DOCUMENT_WHY_MAX];
  d->request = NULL;
  transfer_problem(d, http_status, error, why, sizeof(why));
  if (why[0] == '\0' &&
      d->cb.on_body(d->ctx, d->body ? d->body : "", d->body_len, why, sizeof(why))) {
    drop_body(d);
    d->stats.accepted++;
    d->backoff_ms = BACKOFF_INITIAL_MS;
    schedule(d, (double)d->refresh_ms / 1000);
    return;
  }
  drop_body(d);
  fail(d, why[0] != '\0' ? why : "refused");
}

static void start_fetch(mt_k8s_document *d) {
  static const mt_k8s_request_callbacks cb = {on_data, on_done, NULL};
  char err[MT_K8S_ERROR_MAX];
  d->too_large = 0;
  d->last_start = ev_now(d->loop);
  d->stats.fetches++;
  d->request = mt_k8s_client_get(d->client, d->path, FETCH_TIMEOUT_MS, &cb, d, err, sizeof(err));
  if (d->request == NULL) fail(d, err);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  mt_k8s_document *d = w->data;
  if (d->request == NULL) start_fetch(d);
}

static char *dup_or_null(const char *s, int *oom) {
  if (s == NULL) return NULL;
  char *copy = strdup(s);
  if (copy == NULL) *oom = 1;
  return copy;
}

mt_k8s_document *mt_k8s_document_new(struct ev_loop *loop, mt_k8s_client *client,
                                     const mt_k8s_document_config *config,
                                     const mt_k8s_document_callbacks *callbacks, void *ctx) {
  mt_k8s_document *d = calloc(1, sizeof(*d));
  if (d == NULL) return NULL;
  int oom = 0;
  d->loop = loop;
  d->client = client;
  d->path = dup_or_null(config->path, &oom);
  d->forbidden_hint = dup_or_null(config->forbidden_hint, &oom);
  d->not_found_hint = dup_or_null(config->not_found_hint, &oom);
  d->max_bytes = config->max_bytes;
  d->refresh_ms = config->refresh_ms;
  d->min_interval_ms = config->min_interval_ms;
  d->cb = *callbacks;
  d->ctx = ctx;
  d->backoff_ms = BACKOFF_INITIAL_MS;
  ev_init(&d->next, on_timer);
  d->next.data = d;
  if (oom || d->path == NULL) {
    mt_k8s_document_free(d);
    return NULL;
  }
  schedule(d, 0);
  return d;
}

void mt_k8s_document_free(mt_k8s_document *d) {
  if (d == NULL) return;
  ev_timer_stop(d->loop, &d->next);
  mt_k8s_request_cancel(d->request);
  free(d->body);
  free(d->path);
  free(d->forbidden_hint);
  free(d->not_found_hint);
  free(d);
}

void mt_k8s_document_refresh_soon(mt_k8s_document *d) {
  if (d == NULL || d->request != NULL) return;
  double earliest = d->last_start + (double)d->min_interval_ms / 1000 - ev_now(d->loop);
  if (earliest < 0) earliest = 0;
  double remaining = ev_timer_remaining(d->loop, &d->next);
  if (ev_is_active(&d->next) && remaining <= earliest) return;
  schedule(d, earliest);
}

void mt_k8s_document_get_stats(const mt_k8s_document *d, mt_k8s_document_stats *out) {
  *out = d->stats;
}
