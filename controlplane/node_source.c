/* node_source.c: one GET per node in flight, shared by its waiters; answered
 * nodes kept for ttl_ms. See node_source.h. */
#include "controlplane/node_source.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
  FETCH_TIMEOUT_MS = 10000,
  PATH_MAX_BYTES = sizeof("/api/v1/nodes/") + MT_K8S_NAME_MAX,
  HTTP_OK = 200,
  HTTP_UNAUTHORIZED = 401,
  HTTP_FORBIDDEN = 403,
  HTTP_NOT_FOUND = 404,
};

typedef enum { ENTRY_FETCHING, ENTRY_READY } entry_state;

typedef struct node_entry node_entry;

struct mt_node_lookup {
  mt_node_source *source;
  mt_node_lookup **head; /* the list it is on: its entry's waiters, or the source's delivering */
  mt_node_lookup *prev, *next;
  mt_node_answer_fn done;
  void *ctx;
  ev_timer deliver; /* answers known at lookup time still arrive on the loop */
  mt_node_answer answer;
  mt_k8s_node node; /* the copy a cached answer points at */
};

struct node_entry {
  node_entry *next;
  mt_node_source *source;
  char name[MT_K8S_NAME_MAX + 1];
  entry_state state;
  ev_tstamp fetched_at;
  mt_k8s_node node;
  mt_k8s_request *request;
  char *body;
  size_t body_len;
  int too_large;
  mt_node_lookup *waiters;
};

struct mt_node_source {
  struct ev_loop *loop;
  mt_k8s_client *client;
  double ttl_s;
  node_entry *entries;
  size_t num_entries;
  mt_node_lookup *delivering;
  mt_node_source_stats stats;
};

/* ---- lists ------------------------------------------------------------- */

static void lookup_link(mt_node_lookup *l, mt_node_lookup **head) {
  l->head = head;
  l->prev = NULL;
  l->next = *head;
  if (*head != NULL) (*head)->prev = l;
  *head = l;
}

static void lookup_unlink(mt_node_lookup *l) {
  if (l->head == NULL) return;
  if (l->prev != NULL)
    l->prev->next = l->next;
  else
    *l->head = l->next;
  if (l->next != NULL) l->next->prev = l->prev;
  l->head = NULL;
  l->prev = l->next = NULL;
}

static void entry_unlink(mt_node_source *s, node_entry *e) {
  for (node_entry **p = &s->entries; *p != NULL; p = &(*p)->next) {
    if (*p == e) {
      *p = e->next;
      s->num_entries--;
      return;
    }
  }
}

static void entry_free(node_entry *e) {
  mt_k8s_request_cancel(e->request);
  free(e->body);
  free(e);
}

/* ---- answers ----------------------------------------------------------- */

static void on_deliver(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  mt_node_lookup *l = w->data;
  lookup_unlink(l);
  if (l->answer.outcome == MT_NODE_FOUND) l->answer.node = &l->node;
  l->done(l->ctx, &l->answer);
  free(l);
}

/* Answers |l| on the next loop iteration with |answer| (copied). */
static void deliver_soon(mt_node_source *s, mt_node_lookup *l, const mt_node_answer *answer) {
  l->answer = *answer;
  if (answer->outcome == MT_NODE_FOUND) l->node = *answer->node;
  lookup_link(l, &s->delivering);
  ev_timer_init(&l->deliver, on_deliver, 0.0, 0.0);
  l->deliver.data = l;
  ev_timer_start(s->loop, &l->deliver);
}

/* Tells every waiter of |e| (one at a time: a callback may cancel another). */
static void notify_waiters(node_entry *e, const mt_node_answer *answer) {
  while (e->waiters != NULL) {
    mt_node_lookup *l = e->waiters;
    lookup_unlink(l);
    l->done(l->ctx, answer);
    free(l);
  }
}

static void set_error(mt_node_answer *a, mt_node_outcome outcome, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_error(mt_node_answer *a, mt_node_outcome outcome, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  a->outcome = outcome;
  vsnprintf(a->error, sizeof(a->error), fmt, ap);
  va_end(ap);
}

/* ---- the GET ----------------------------------------------------------- */

static int on_data(void *ctx, const char *data, size_t len) {
  node_entry *e = ctx;
  if (e->body_len + len > MT_K8S_NODE_MAX_BYTES) {
    e->too_large = 1;
    return 0;
  }
  char *grown = realloc(e->body, e->body_len + len + 1);
  if (grown == NULL) return 0;
  memcpy(grown + e->body_len, data, len);
  e->body = grown;
  e->body_len += len;
  return 1;
}

/* What the API's answer means for the caller. */
static void judge(node_entry *e, long http_status, const char *error, mt_node_answer *a) {
  char why[MT_NODE_SOURCE_ERROR_MAX];
  if (e->too_large) {
    set_error(a, MT_NODE_UNAVAILABLE, "GET /api/v1/nodes/%s: the object is larger than %d bytes",
              e->name, MT_K8S_NODE_MAX_BYTES);
  } else if (error[0] != '\0') {
    set_error(a, MT_NODE_UNAVAILABLE, "GET /api/v1/nodes/%s: %s", e->name, error);
  } else if (http_status == HTTP_NOT_FOUND) {
    set_error(a, MT_NODE_NOT_FOUND, "the Kubernetes API has no node %s", e->name);
  } else if (http_status == HTTP_FORBIDDEN) {
    set_error(a, MT_NODE_UNAVAILABLE,
              "GET /api/v1/nodes/%s: HTTP 403 (mtls-ca's ClusterRole needs \"get\" on nodes)",
              e->name);
  } else if (http_status == HTTP_UNAUTHORIZED) {
    set_error(a, MT_NODE_UNAVAILABLE, "GET /api/v1/nodes/%s: HTTP 401 (mtls-ca's API token)",
              e->name);
  } else if (http_status != HTTP_OK) {
    set_error(a, MT_NODE_UNAVAILABLE, "GET /api/v1/nodes/%s: HTTP status %ld", e->name,
              http_status);
  } else if (!mt_k8s_node_parse(e->body ? e->body : "", e->body_len, &e->node, why, sizeof(why))) {
    set_error(a, MT_NODE_UNAVAILABLE, "GET /api/v1/nodes/%s: %s", e->name, why);
  } else if (strcmp(e->node.name, e->name) != 0) {
    set_error(a, MT_NODE_UNAVAILABLE, "GET /api/v1/nodes/%s: the API answered with node %s",
              e->name, e->node.name);
  } else {
    a->outcome = MT_NODE_FOUND;
    a->node = &e->node;
  }
}

static void on_done(void *ctx, long http_status, const char *error) {
  node_entry *e = ctx;
  mt_node_source *s = e->source;
  e->request = NULL;
  mt_node_answer answer;
  memset(&answer, 0, sizeof(answer));
  judge(e, http_status, error, &answer);
  free(e->body);
  e->body = NULL;
  e->body_len = 0;
  if (answer.outcome == MT_NODE_FOUND) {
    e->state = ENTRY_READY;
    e->fetched_at = ev_now(s->loop);
    notify_waiters(e, &answer);
    return;
  }
  if (answer.outcome == MT_NODE_UNAVAILABLE) s->stats.failures++;
  entry_unlink(s, e); /* not kept: the next lookup asks again */
  notify_waiters(e, &answer);
  entry_free(e);
}

static int start_get(mt_node_source *s, node_entry *e, mt_node_answer *failed) {
  static const mt_k8s_request_callbacks cb = {on_data, on_done, NULL};
  char path[PATH_MAX_BYTES];
  char err[MT_K8S_ERROR_MAX];
  snprintf(path, sizeof(path), "/api/v1/nodes/%s", e->name);
  s->stats.gets++;
  e->request = mt_k8s_client_get(s->client, path, FETCH_TIMEOUT_MS, &cb, e, err, sizeof(err));
  if (e->request != NULL) return 1;
  s->stats.failures++;
  set_error(failed, MT_NODE_UNAVAILABLE, "GET %s: %s", path, err);
  return 0;
}

/* ---- the cache --------------------------------------------------------- */

/* Drops answered entries past their TTL; when still full, the answered one
 * fetched longest ago. Returns 0 when every held entry is a GET in flight. */
static int make_room(mt_node_source *s) {
  ev_tstamp now = ev_now(s->loop);
  node_entry *e = s->entries;
  while (e != NULL) {
    node_entry *next = e->next;
    if (e->state == ENTRY_READY && now - e->fetched_at >= s->ttl_s) {
      entry_unlink(s, e);
      entry_free(e);
    }
    e = next;
  }
  if (s->num_entries < MT_NODE_SOURCE_MAX_ENTRIES) return 1;
  node_entry *oldest = NULL;
  for (e = s->entries; e != NULL; e = e->next)
    if (e->state == ENTRY_READY && (oldest == NULL || e->fetched_at < oldest->fetched_at))
      oldest = e;
  if (oldest == NULL) return 0;
  entry_unlink(s, oldest);
  entry_free(oldest);
  return 1;
}

static node_entry *find_entry(mt_node_source *s, const char *name) {
  for (node_entry *e = s->entries; e != NULL; e = e->next)
    if (strcmp(e->name, name) == 0) return e;
  return NULL;
}

mt_node_lookup *mt_node_source_lookup(mt_node_source *s, const char *name, mt_node_answer_fn done,
                                      void *ctx) {
  mt_node_lookup *l = calloc(1, sizeof(*l));
  if (l == NULL) return NULL;
  l->source = s;
  l->done = done;
  l->ctx = ctx;
  mt_node_answer answer;
  memset(&answer, 0, sizeof(answer));
  node_entry *e = find_entry(s, name);
  if (e != NULL && e->state == ENTRY_READY && ev_now(s->loop) - e->fetched_at < s->ttl_s) {
    s->stats.cache_hits++;
    answer.outcome = MT_NODE_FOUND;
    answer.node = &e->node;
    answer.from_cache = 1;
    deliver_soon(s, l, &answer);
    return l;
  }
  if (e != NULL && e->state == ENTRY_FETCHING) {
    lookup_link(l, &e->waiters);
    return l;
  }
  if (!make_room(s)) {
    set_error(&answer, MT_NODE_UNAVAILABLE, "%d nodes are being looked up at once; retry",
              MT_NODE_SOURCE_MAX_ENTRIES);
    deliver_soon(s, l, &answer);
    return l;
  }
  e = find_entry(s, name); /* an expired entry of this name may just have gone */
  if (e == NULL) {
    e = calloc(1, sizeof(*e));
    if (e == NULL) {
      free(l);
      return NULL;
    }
    e->source = s;
    snprintf(e->name, sizeof(e->name), "%s", name);
    e->next = s->entries;
    s->entries = e;
    s->num_entries++;
  }
  e->state = ENTRY_FETCHING;
  if (!start_get(s, e, &answer)) {
    entry_unlink(s, e);
    entry_free(e);
    deliver_soon(s, l, &answer);
    return l;
  }
  lookup_link(l, &e->waiters);
  return l;
}

void mt_node_lookup_cancel(mt_node_lookup *l) {
  if (l == NULL) return;
  if (ev_is_active(&l->deliver)) ev_timer_stop(l->source->loop, &l->deliver);
  lookup_unlink(l);
  free(l);
}

mt_node_source *mt_node_source_new(struct ev_loop *loop, mt_k8s_client *client, int64_t ttl_ms) {
  mt_node_source *s = calloc(1, sizeof(*s));
  if (s == NULL) return NULL;
  s->loop = loop;
  s->client = client;
  s->ttl_s = (double)ttl_ms / 1000;
  return s;
}

static void drop_lookups(mt_node_source *s, mt_node_lookup **head) {
  while (*head != NULL) {
    mt_node_lookup *l = *head;
    if (ev_is_active(&l->deliver)) ev_timer_stop(s->loop, &l->deliver);
    lookup_unlink(l);
    free(l);
  }
}

void mt_node_source_free(mt_node_source *s) {
  if (s == NULL) return;
  drop_lookups(s, &s->delivering);
  while (s->entries != NULL) {
    node_entry *e = s->entries;
    s->entries = e->next;
    drop_lookups(s, &e->waiters);
    entry_free(e);
  }
  free(s);
}

void mt_node_source_get_stats(const mt_node_source *s, mt_node_source_stats *out) {
  *out = s->stats;
}
