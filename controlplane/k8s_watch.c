#include "controlplane/k8s_watch.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controlplane/k8s_objects.h"

enum {
  DEFAULT_WATCH_TIMEOUT_S = 300,
  DEFAULT_IDLE_GRACE_MS = 10000,
  DEFAULT_LIST_TIMEOUT_MS = 60000,
  DEFAULT_BACKOFF_INITIAL_MS = 200,
  DEFAULT_BACKOFF_MAX_MS = 30000,
  MS_PER_S = 1000,
  HTTP_OK = 200,
  HTTP_GONE = 410,
  QUERY_MAX = 512,
  CONTINUE_MAX = 4096, /* a continue token longer than this is refused */
  DEFAULT_LIST_PAGE_SIZE = 500, /* kubectl's and client-go's chunk size */
  KEY_MAX = 2 * MT_K8S_NAME_MAX + 2,
  PROBLEM_MAX = 512,
};
#define DEFAULT_MAX_LIST_BYTES ((size_t)256 << 20)
#define DEFAULT_MAX_EVENT_BYTES ((size_t)16 << 20)

/* Why the current WATCH transfer is being ended by us, read in on_done. */
typedef enum {
  END_NONE,
  END_GONE,      /* an ERROR event with code 410 */
  END_BAD_EVENT, /* a line that is not a well-formed event */
  END_ERROR,     /* another ERROR event */
} watch_end;

struct mt_k8s_watch {
  struct ev_loop *loop;
  mt_k8s_client *client;
  mt_k8s_watch_config config;
  char *path;
  mt_k8s_watch_callbacks cb;
  void *ctx;

  mt_k8s_watch_state state;
  mt_k8s_request *request;
  char rv[MT_K8S_RV_MAX + 1];
  json_t *held; /* "ns/name" -> object, the API's state as we know it */
  json_t *pages;       /* LISTING: the items of the pages so far */
  char *list_continue; /* LISTING: the token of the next page; NULL: the first */

  char *buf; /* LIST body, or the partial line of a WATCH */
  size_t buf_len, buf_cap;
  watch_end end;
  char end_reason[PROBLEM_MAX];

  ev_timer retry; /* BACKOFF, and a deferred restart */
  ev_timer idle;  /* WATCHING: silence detector */
  ev_tstamp watch_started;
  int watch_got_data;
  unsigned attempt;
  int failing; /* failed since the API last answered (on_health told) */
  mt_k8s_watch_stats stats;
};

static void start_list(mt_k8s_watch *w);
static void start_watch(mt_k8s_watch *w);

static void problem(mt_k8s_watch *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void problem(mt_k8s_watch *w, const char *fmt, ...) {
  char what[PROBLEM_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof(what), fmt, ap);
  va_end(ap);
  if (w->cb.on_problem) w->cb.on_problem(w->ctx, what);
}

/* Full jitter: a delay drawn from [d/2, d], d doubling per attempt up to
 * the maximum, so many mtls-ca replicas do not reconnect in step. */
static double backoff_delay_s(mt_k8s_watch *w) {
  int64_t d = w->config.backoff_initial_ms;
  for (unsigned i = 0; i < w->attempt && d < w->config.backoff_max_ms; i++) d *= 2;
  if (d > w->config.backoff_max_ms) d = w->config.backoff_max_ms;
  int64_t half = d / 2;
  int64_t jittered = half + (int64_t)arc4random_uniform((uint32_t)(d - half + 1));
  return (double)jittered / MS_PER_S;
}

/* The API answered (a LIST completed, a WATCH got 200): tells the owner
 * once after failures. */
static void api_answered(mt_k8s_watch *w) {
  if (!w->failing) return;
  w->failing = 0;
  if (w->cb.on_health) w->cb.on_health(w->ctx, 1);
}

static void enter_backoff(mt_k8s_watch *w) {
  w->state = MT_K8S_WATCH_BACKOFF;
  w->stats.failures++;
  if (!w->failing) {
    w->failing = 1;
    if (w->cb.on_health) w->cb.on_health(w->ctx, 0);
  }
  ev_timer_stop(w->loop, &w->idle);
  ev_timer_set(&w->retry, backoff_delay_s(w), 0.);
  ev_timer_start(w->loop, &w->retry);
  if (w->attempt < UINT32_MAX) w->attempt++;
}

static void on_retry(struct ev_loop *loop, ev_timer *t, int revents) {
  (void)loop;
  (void)revents;
  mt_k8s_watch *w = t->data;
  if (w->rv[0] != '\0')
    start_watch(w);
  else
    start_list(w);
}

static int buf_append(mt_k8s_watch *w, const char *data, size_t len, size_t max) {
  if (w->buf_len + len > max) return 0;
  if (w->buf_len + len + 1 > w->buf_cap) {
    size_t cap = w->buf_cap ? w->buf_cap : 4096;
    while (cap < w->buf_len + len + 1) cap *= 2;
    char *p = realloc(w->buf, cap);
    if (p == NULL) return 0;
    w->buf = p;
    w->buf_cap = cap;
  }
  memcpy(w->buf + w->buf_len, data, len);
  w->buf_len += len;
  w->buf[w->buf_len] = '\0';
  return 1;
}

static const char *rv_of(const json_t *obj) {
  const json_t *rv = json_object_get(json_object_get(obj, "metadata"), "resourceVersion");
  return json_is_string(rv) && json_string_length(rv) <= MT_K8S_RV_MAX ? json_string_value(rv)
                                                                       : NULL;
}

/* "namespace/name" of an API object; 0 when it has none. */
static int key_of(const json_t *obj, char *out, size_t out_len) {
  const json_t *meta = json_object_get(obj, "metadata");
  const json_t *name = json_object_get(meta, "name");
  const json_t *ns = json_object_get(meta, "namespace");
  if (!json_is_string(name) || json_string_length(name) == 0) return 0;
  if (ns != NULL && !json_is_string(ns)) return 0;
  return (size_t)snprintf(out, out_len, "%s/%s", ns ? json_string_value(ns) : "",
                          json_string_value(name)) < out_len;
}

/* What is held of an object: its name, namespace and resourceVersion, all
 * a later LIST or event is compared with (holding whole objects cost ~20 KB
 * per pod: 200 MB at 10,000 pods). NULL when out of memory. */
static json_t *held_copy(const json_t *obj) {
  const json_t *meta = json_object_get(obj, "metadata");
  json_t *slim = json_object(), *slim_meta = json_object();
  int ok = slim != NULL && slim_meta != NULL;
  static const char *const kKept[] = {"name", "namespace", "resourceVersion"};
  for (size_t i = 0; ok && i < sizeof(kKept) / sizeof(kKept[0]); i++) {
    json_t *v = json_object_get(meta, kKept[i]);
    if (v != NULL) ok = json_object_set(slim_meta, kKept[i], v) == 0;
  }
  if (ok) ok = json_object_set_new(slim, "metadata", slim_meta) == 0;
  else json_decref(slim_meta);
  if (!ok) {
    json_decref(slim);
    return NULL;
  }
  return slim;
}

/* Holds |obj| under |key|; 0 when out of memory (then nothing is held for
 * it, and the next LIST adds it again). */
static int hold(mt_k8s_watch *w, const char *key, const json_t *obj) {
  json_t *copy = held_copy(obj);
  if (copy == NULL || json_object_set_new(w->held, key, copy) != 0) {
    json_object_del(w->held, key);
    problem(w, "%s: out of memory holding %s", w->path, key);
    return 0;
  }
  return 1;
}

static void emit(mt_k8s_watch *w, mt_k8s_event_type type, const json_t *obj) {
  w->stats.events++;
  if (w->cb.on_event) w->cb.on_event(w->ctx, type, obj);
}

/* --- LISTING --- */

static int on_list_data(void *ctx, const char *data, size_t len) {
  mt_k8s_watch *w = ctx;
  return buf_append(w, data, len, w->config.max_list_bytes);
}

/* Makes the held state equal to |items|, emitting exactly the differences. */
static int reconcile(mt_k8s_watch *w, const json_t *items) {
  json_t *seen = json_object();
  if (seen == NULL) return 0;
  size_t i;
  const json_t *item;
  char key[KEY_MAX];
  json_array_foreach(items, i, item) {
    if (!json_is_object(item) || !key_of(item, key, sizeof(key)) || rv_of(item) == NULL) {
      problem(w, "LIST %s: an item without metadata.name or resourceVersion was skipped", w->path);
      continue;
    }
    json_object_set_new(seen, key, json_true());
    const json_t *old = json_object_get(w->held, key);
    if (old != NULL && strcmp(rv_of(old), rv_of(item)) == 0) continue;
    int is_new = old == NULL; /* |old| is freed by hold() */
    if (!hold(w, key, item)) continue;
    emit(w, is_new ? MT_K8S_EVENT_ADDED : MT_K8S_EVENT_MODIFIED, item);
  }
  const char *k;
  json_t *v;
  void *tmp;
  json_object_foreach_safe(w->held, tmp, k, v) {
    if (json_object_get(seen, k) != NULL) continue;
    json_incref(v);
    json_object_del(w->held, k);
    emit(w, MT_K8S_EVENT_DELETED, v);
    json_decref(v);
  }
  json_decref(seen);
  return 1;
}

static void forget_pages(mt_k8s_watch *w) {
  json_array_clear(w->pages);
  free(w->list_continue);
  w->list_continue = NULL;
}

/* The token of the page after |list|: NULL for the last page, "" when it
 * is malformed. */
static const char *continue_of(const json_t *list) {
  const json_t *c = json_object_get(json_object_get(list, "metadata"), "continue");
  if (c == NULL || (json_is_string(c) && json_string_length(c) == 0)) return NULL;
  if (!json_is_string(c) || json_string_length(c) > CONTINUE_MAX) return "";
  return json_string_value(c);
}

static void start_list_page(mt_k8s_watch *w);

static void on_list_done(void *ctx, long status, const char *error) {
  mt_k8s_watch *w = ctx;
  w->request = NULL;
  if (error[0] == '\0' && status == HTTP_GONE && w->list_continue != NULL) {
    /* The snapshot the pages came from was compacted away meanwhile. */
    problem(w, "LIST %s: continue token expired (HTTP 410); listing again from the first page",
            w->path);
    forget_pages(w);
    enter_backoff(w);
    return;
  }
  if (error[0] != '\0' || status != HTTP_OK) {
    problem(w, "LIST %s: %s (HTTP %ld)", w->path, error[0] ? error : "refused", status);
    forget_pages(w);
    enter_backoff(w);
    return;
  }
  json_error_t jerr;
  json_t *list = json_loadb(w->buf ? w->buf : "", w->buf_len, JSON_REJECT_DUPLICATES, &jerr);
  json_t *items = json_object_get(list, "items");
  const char *rv = rv_of(list);
  const char *next = list != NULL ? continue_of(list) : NULL;
  if (list == NULL || !json_is_array(items) || rv == NULL || rv[0] == '\0' ||
      (next != NULL && next[0] == '\0')) {
    problem(w, "LIST %s: not a Kubernetes list with items, metadata.resourceVersion and a valid "
            "metadata.continue", w->path);
    json_decref(list);
    forget_pages(w);
    enter_backoff(w);
    return;
  }
  w->stats.list_pages++;
  json_array_extend(w->pages, items);
  if (next != NULL) {
    free(w->list_continue);
    w->list_continue = strdup(next);
    json_decref(list);
    if (w->list_continue == NULL) {
      problem(w, "LIST %s: out of memory", w->path);
      forget_pages(w);
      enter_backoff(w);
      return;
    }
    start_list_page(w);
    return;
  }
  reconcile(w, w->pages);
  snprintf(w->rv, sizeof(w->rv), "%s", rv);
  json_decref(list);
  forget_pages(w);
  w->stats.lists++;
  w->attempt = 0;
  api_answered(w);
  if (w->cb.on_synced) w->cb.on_synced(w->ctx);
  start_watch(w);
}

/* Appends |value| to |out| percent-encoded as a query value (a continue
 * token is base64: '+', '/' and '=' must not reach the query raw). */
static int append_query_value(char *out, size_t out_len, const char *value) {
  static const char kHex[] = "0123456789ABCDEF";
  size_t n = strlen(out);
  for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
    int plain = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
                *p == '-' || *p == '_' || *p == '.' || *p == '~';
    if (n + (plain ? 1 : 3) >= out_len) return 0;
    if (plain) {
      out[n++] = (char)*p;
    } else {
      out[n++] = '%';
      out[n++] = kHex[*p >> 4];
      out[n++] = kHex[*p & 15];
    }
  }
  out[n] = '\0';
  return 1;
}

static void start_list_page(mt_k8s_watch *w) {
  static const mt_k8s_request_callbacks cb = {on_list_data, on_list_done, NULL};
  char path[MT_K8S_URL_MAX + 3 * CONTINUE_MAX + QUERY_MAX], err[MT_K8S_ERROR_MAX];
  snprintf(path, sizeof(path), "%s?limit=%zu%s", w->path, w->config.list_page_size,
           w->list_continue ? "&continue=" : "");
  if (w->list_continue != NULL && !append_query_value(path, sizeof(path), w->list_continue)) {
    problem(w, "LIST %s: continue token too long", w->path);
    forget_pages(w);
    enter_backoff(w);
    return;
  }
  w->buf_len = 0;
  w->state = MT_K8S_WATCH_LISTING;
  ev_timer_stop(w->loop, &w->idle);
  w->request =
      mt_k8s_client_get(w->client, path, w->config.list_timeout_ms, &cb, w, err, sizeof(err));
  if (w->request == NULL) {
    problem(w, "LIST: %s", err);
    forget_pages(w);
    enter_backoff(w);
  }
}

static void start_list(mt_k8s_watch *w) {
  forget_pages(w);
  start_list_page(w);
}

/* --- WATCHING --- */

/* Applies one watch event; returns 0 (and sets w->end) to end the stream. */
static int handle_event(mt_k8s_watch *w, const json_t *event) {
  const json_t *type = json_object_get(event, "type");
  const json_t *obj = json_object_get(event, "object");
  if (!json_is_string(type) || !json_is_object(obj)) {
    w->end = END_BAD_EVENT;
    return 0;
  }
  const char *t = json_string_value(type);
  if (strcmp(t, "ERROR") == 0) {
    const json_t *code = json_object_get(obj, "code");
    w->end = json_is_integer(code) && json_integer_value(code) == HTTP_GONE ? END_GONE : END_ERROR;
    const json_t *msg = json_object_get(obj, "message");
    snprintf(w->end_reason, sizeof(w->end_reason), "%s",
             json_is_string(msg) ? json_string_value(msg) : "ERROR event");
    return 0;
  }
  const char *rv = rv_of(obj);
  if (rv == NULL || rv[0] == '\0') {
    w->end = END_BAD_EVENT;
    return 0;
  }
  if (strcmp(t, "BOOKMARK") == 0) {
    w->stats.bookmarks++;
    snprintf(w->rv, sizeof(w->rv), "%s", rv);
    if (w->cb.on_bookmark) w->cb.on_bookmark(w->ctx, w->rv);
    return 1;
  }
  char key[KEY_MAX];
  if (!key_of(obj, key, sizeof(key))) {
    w->end = END_BAD_EVENT;
    return 0;
  }
  const json_t *old = json_object_get(w->held, key);
  if (strcmp(t, "ADDED") == 0 || strcmp(t, "MODIFIED") == 0) {
    int is_new = old == NULL;
    /* A replayed event (same version as held) is not passed on twice. */
    if ((is_new || strcmp(rv_of(old), rv) != 0) && hold(w, key, obj))
      emit(w, is_new ? MT_K8S_EVENT_ADDED : MT_K8S_EVENT_MODIFIED, obj);
  } else if (strcmp(t, "DELETED") == 0) {
    if (old != NULL) {
      json_object_del(w->held, key);
      emit(w, MT_K8S_EVENT_DELETED, obj);
    }
  } else {
    w->end = END_BAD_EVENT;
    return 0;
  }
  snprintf(w->rv, sizeof(w->rv), "%s", rv);
  return 1;
}

static int on_watch_data(void *ctx, const char *data, size_t len) {
  mt_k8s_watch *w = ctx;
  /* An error answer (401, 410, 500...) is a Status document, not events:
   * on_watch_done judges it by its HTTP status. */
  if (w->request != NULL && mt_k8s_request_status(w->request) != HTTP_OK) return 1;
  w->watch_got_data = 1;
  ev_timer_again(w->loop, &w->idle);
  if (!buf_append(w, data, len, w->config.max_event_bytes)) {
    w->end = END_BAD_EVENT;
    snprintf(w->end_reason, sizeof(w->end_reason), "an event larger than %zu bytes",
             w->config.max_event_bytes);
    return 0;
  }
  size_t start = 0;
  char *nl;
  while ((nl = memchr(w->buf + start, '\n', w->buf_len - start)) != NULL) {
    size_t line_len = (size_t)(nl - (w->buf + start));
    json_error_t jerr;
    json_t *event =
        line_len ? json_loadb(w->buf + start, line_len, JSON_REJECT_DUPLICATES, &jerr) : NULL;
    start += line_len + 1;
    if (line_len == 0) continue;
    if (event == NULL) {
      w->end = END_BAD_EVENT;
      snprintf(w->end_reason, sizeof(w->end_reason), "%s", jerr.text);
      return 0;
    }
    int go_on = handle_event(w, event);
    json_decref(event);
    if (!go_on) return 0;
  }
  memmove(w->buf, w->buf + start, w->buf_len - start);
  w->buf_len -= start;
  return 1;
}

static void on_watch_done(void *ctx, long status, const char *error) {
  mt_k8s_watch *w = ctx;
  w->request = NULL;
  ev_timer_stop(w->loop, &w->idle);
  if (w->end == END_GONE || status == HTTP_GONE) {
    /* Our version is older than the server keeps: list again and diff. */
    w->stats.relists_gone++;
    if (w->cb.on_relist) {
      char why[PROBLEM_MAX + 32];
      if (w->end == END_GONE)
        snprintf(why, sizeof(why), "ERROR event 410: %s", w->end_reason);
      else
        snprintf(why, sizeof(why), "HTTP 410 Gone");
      w->cb.on_relist(w->ctx, why);
    }
    start_list(w);
    return;
  }
  if (w->end == END_BAD_EVENT || w->end == END_ERROR) {
    problem(w, "WATCH %s: %s", w->path, w->end_reason[0] ? w->end_reason : "malformed event");
    enter_backoff(w);
    return;
  }
  if (error[0] != '\0' || status != HTTP_OK) {
    problem(w, "WATCH %s: %s (HTTP %ld)", w->path, error[0] ? error : "refused", status);
    enter_backoff(w);
    return;
  }
  /* An empty watch ended long before its timeout is a server that does not
   * really watch: back off rather than spin on it. */
  if (!w->watch_got_data &&
      ev_now(w->loop) - w->watch_started < (double)w->config.watch_timeout_s / 2) {
    problem(w, "WATCH %s: ended at once with nothing sent", w->path);
    enter_backoff(w);
    return;
  }
  /* The server ended the watch at its timeout: resume from where we are. */
  w->attempt = 0;
  start_watch(w);
}

/* Nothing, not even a bookmark, for longer than the server's own timeout:
 * the connection is dead without either side being told. */
static void on_idle(struct ev_loop *loop, ev_timer *t, int revents) {
  (void)loop;
  (void)revents;
  mt_k8s_watch *w = t->data;
  ev_timer_stop(w->loop, &w->idle);
  mt_k8s_request_cancel(w->request);
  w->request = NULL;
  w->stats.idle_restarts++;
  problem(w, "WATCH %s: silent past its timeout, re-established", w->path);
  start_watch(w);
}

static void on_watch_response(void *ctx, long status) {
  mt_k8s_watch *w = ctx;
  if (status == HTTP_OK) api_answered(w);
}

static void start_watch(mt_k8s_watch *w) {
  static const mt_k8s_request_callbacks cb = {on_watch_data, on_watch_done, on_watch_response};
  char path[QUERY_MAX + MT_K8S_URL_MAX], err[MT_K8S_ERROR_MAX];
  snprintf(path, sizeof(path),
           "%s?watch=1&resourceVersion=%s&allowWatchBookmarks=true&timeoutSeconds=%lld", w->path,
           w->rv, (long long)w->config.watch_timeout_s);
  w->buf_len = 0;
  w->watch_got_data = 0;
  w->watch_started = ev_now(w->loop);
  w->end = END_NONE;
  w->end_reason[0] = '\0';
  w->state = MT_K8S_WATCH_WATCHING;
  w->request = mt_k8s_client_get(w->client, path, 0, &cb, w, err, sizeof(err));
  if (w->request == NULL) {
    problem(w, "WATCH: %s", err);
    enter_backoff(w);
    return;
  }
  w->stats.watches++;
  ev_timer_set(&w->idle, 0.,
               (double)w->config.watch_timeout_s + (double)w->config.idle_grace_ms / MS_PER_S);
  ev_timer_again(w->loop, &w->idle);
}

/* --- life cycle --- */

static void apply_defaults(mt_k8s_watch_config *c) {
  if (c->watch_timeout_s <= 0) c->watch_timeout_s = DEFAULT_WATCH_TIMEOUT_S;
  if (c->idle_grace_ms <= 0) c->idle_grace_ms = DEFAULT_IDLE_GRACE_MS;
  if (c->list_timeout_ms <= 0) c->list_timeout_ms = DEFAULT_LIST_TIMEOUT_MS;
  if (c->backoff_initial_ms <= 0) c->backoff_initial_ms = DEFAULT_BACKOFF_INITIAL_MS;
  if (c->backoff_max_ms <= 0) c->backoff_max_ms = DEFAULT_BACKOFF_MAX_MS;
  if (c->backoff_max_ms < c->backoff_initial_ms) c->backoff_max_ms = c->backoff_initial_ms;
  if (c->max_list_bytes == 0) c->max_list_bytes = DEFAULT_MAX_LIST_BYTES;
  if (c->max_event_bytes == 0) c->max_event_bytes = DEFAULT_MAX_EVENT_BYTES;
  if (c->list_page_size == 0) c->list_page_size = DEFAULT_LIST_PAGE_SIZE;
}

mt_k8s_watch *mt_k8s_watch_new(struct ev_loop *loop, mt_k8s_client *client,
                               const mt_k8s_watch_config *config,
                               const mt_k8s_watch_callbacks *callbacks, void *ctx) {
  if (config->path == NULL || config->path[0] != '/') return NULL;
  mt_k8s_watch *w = calloc(1, sizeof(*w));
  if (w == NULL) return NULL;
  w->loop = loop;
  w->client = client;
  w->config = *config;
  apply_defaults(&w->config);
  w->path = strdup(config->path);
  w->config.path = w->path;
  w->cb = *callbacks;
  w->ctx = ctx;
  w->held = json_object();
  w->pages = json_array();
  if (w->path == NULL || w->held == NULL || w->pages == NULL) {
    mt_k8s_watch_free(w);
    return NULL;
  }
  ev_init(&w->retry, on_retry);
  w->retry.data = w;
  ev_init(&w->idle, on_idle);
  w->idle.data = w;
  return w;
}

void mt_k8s_watch_free(mt_k8s_watch *w) {
  if (w == NULL) return;
  mt_k8s_request_cancel(w->request);
  ev_timer_stop(w->loop, &w->retry);
  ev_timer_stop(w->loop, &w->idle);
  json_decref(w->held);
  forget_pages(w);
  json_decref(w->pages);
  free(w->buf);
  free(w->path);
  free(w);
}

void mt_k8s_watch_start(mt_k8s_watch *w) {
  if (w->state == MT_K8S_WATCH_IDLE) start_list(w);
}

mt_k8s_watch_state mt_k8s_watch_get_state(const mt_k8s_watch *w) { return w->state; }

const char *mt_k8s_watch_resource_version(const mt_k8s_watch *w) { return w->rv; }

size_t mt_k8s_watch_num_held(const mt_k8s_watch *w) { return json_object_size(w->held); }

void mt_k8s_watch_get_stats(const mt_k8s_watch *w, mt_k8s_watch_stats *out) { *out = w->stats; }

const char *mt_k8s_event_type_str(mt_k8s_event_type type) {
  switch (type) {
    case MT_K8S_EVENT_ADDED: return "ADDED";
    case MT_K8S_EVENT_MODIFIED: return "MODIFIED";
    case MT_K8S_EVENT_DELETED: return "DELETED";
  }
  return "?";
}
