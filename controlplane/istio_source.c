#include "controlplane/istio_source.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controlplane/k8s_watch.h"

enum {
  LOG_LINE_MAX = 1024,
  ERR_MAX = 512,
  PATH_MAX_LEN = 128,
  PROBE_TIMEOUT_MS = 30000,
  DEFAULT_BACKOFF_INITIAL_MS = 1000,
  DEFAULT_BACKOFF_MAX_MS = 60000,
  HTTP_OK = 200,
  HTTP_NOT_FOUND = 404,
  NUM_KINDS = 2,
};

#define GROUP "security.istio.io"

/* Newest first: v1beta1 is tried only when v1 is not served. */
static const char *const kVersions[] = {"v1", "v1beta1"};
enum { NUM_VERSIONS = sizeof(kVersions) / sizeof(kVersions[0]) };

static const struct {
  mt_istio_kind kind;
  const char *plural; /* the resource's name in API paths */
  const char *kind_name;
  const char *words;
} kKinds[NUM_KINDS] = {
    {MT_ISTIO_AUTHORIZATION_POLICY, "authorizationpolicies", "AuthorizationPolicy",
     "authorization policy"},
    {MT_ISTIO_PEER_AUTHENTICATION, "peerauthentications", "PeerAuthentication",
     "peer authentication"},
};

/* What was last reported of one object, to report only changes. */
typedef struct {
  char *ns, *name;
  mt_istio_status status;
  char *detail;
} known_object;

typedef struct {
  mt_istio_source *source;
  size_t index;          /* into kKinds */
  size_t version;        /* into kVersions: the one probed or followed */
  int found;             /* a version answered: |watch| follows it */
  mt_k8s_request *probe; /* in flight, or NULL */
  ev_timer retry;
  int64_t backoff_ms;
  mt_k8s_watch *watch;
  int synced;
  known_object *known;
  size_t num_known, cap_known;
} kind_state;

struct mt_istio_source {
  struct ev_loop *loop;
  mt_k8s_client *client;
  mt_istio_source_config config;
  mt_istio_policies *policies;
  mt_istio_source_callbacks cb;
  void *ctx;
  kind_state kinds[NUM_KINDS];
  int all_synced;
};

static void log_line(mt_istio_source *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void log_line(mt_istio_source *s, const char *fmt, ...) {
  if (s->cb.on_log == NULL) return;
  char line[LOG_LINE_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  s->cb.on_log(s->ctx, line);
}

const char *mt_istio_kind_words(mt_istio_kind kind) {
  for (size_t i = 0; i < NUM_KINDS; i++)
    if (kKinds[i].kind == kind) return kKinds[i].words;
  return "?";
}

/* ---- status of each object ---------------------------------------------- */

typedef struct {
  mt_istio_kind kind;
  const char *ns, *name;
  int found;
  mt_istio_status status;
  char detail[ERR_MAX];
} status_probe;

static void on_held_object(void *ctx, mt_istio_kind kind, const char *ns, const char *name,
                           mt_istio_status status, const char *detail) {
  status_probe *p = ctx;
  if (p->found || kind != p->kind || strcmp(ns, p->ns) != 0 || strcmp(name, p->name) != 0) return;
  p->found = 1;
  p->status = status;
  snprintf(p->detail, sizeof(p->detail), "%s", detail != NULL ? detail : "");
}

static long find_known(const kind_state *k, const char *ns, const char *name) {
  for (size_t i = 0; i < k->num_known; i++)
    if (strcmp(k->known[i].ns, ns) == 0 && strcmp(k->known[i].name, name) == 0) return (long)i;
  return -1;
}

static void known_clear(known_object *o) {
  free(o->ns);
  free(o->name);
  free(o->detail);
}

static void report(mt_istio_source *s, mt_istio_kind kind, const char *ns, const char *name,
                   mt_istio_status status, const char *detail, int removed) {
  if (s->cb.on_status) s->cb.on_status(s->ctx, kind, ns, name, status, detail, removed);
}

/* After an event about |ns|/|name|: reports its status when it is new or
 * changed, or its removal. Linear in the objects held: policies are few. */
static void track_status(kind_state *k, const char *ns, const char *name) {
  mt_istio_source *s = k->source;
  mt_istio_kind kind = kKinds[k->index].kind;
  status_probe p = {kind, ns, name, 0, MT_ISTIO_APPLIED, ""};
  mt_istio_policies_foreach(s->policies, on_held_object, &p);
  long at = find_known(k, ns, name);
  if (!p.found) {
    if (at < 0) return;
    known_object gone = k->known[at];
    k->known[at] = k->known[--k->num_known];
    report(s, kind, gone.ns, gone.name, gone.status, gone.detail, 1);
    known_clear(&gone);
    return;
  }
  if (at >= 0 && k->known[at].status == p.status && strcmp(k->known[at].detail, p.detail) == 0)
    return;
  char *detail = strdup(p.detail);
  if (detail == NULL) return; /* reported with the next change */
  if (at < 0) {
    char *ns_copy = strdup(ns), *name_copy = strdup(name);
    if (ns_copy == NULL || name_copy == NULL) {
      free(ns_copy);
      free(name_copy);
      free(detail);
      return;
    }
    if (k->num_known == k->cap_known) {
      size_t cap = k->cap_known ? 2 * k->cap_known : 16;
      known_object *grown = realloc(k->known, cap * sizeof(*grown));
      if (grown == NULL) {
        free(ns_copy);
        free(name_copy);
        free(detail);
        return;
      }
      k->known = grown;
      k->cap_known = cap;
    }
    at = (long)k->num_known++;
    k->known[at] = (known_object){ns_copy, name_copy, p.status, NULL};
  } else {
    free(k->known[at].detail);
  }
  k->known[at].status = p.status;
  k->known[at].detail = detail;
  report(s, kind, ns, name, p.status, detail, 0);
}

/* ---- the watch ---------------------------------------------------------- */

static void on_watch_event(void *ctx, mt_k8s_event_type type, const json_t *object) {
  kind_state *k = ctx;
  mt_istio_source *s = k->source;
  char err[ERR_MAX] = "";
  mt_cluster_change change = type == MT_K8S_EVENT_DELETED ? MT_CLUSTER_REMOVE : MT_CLUSTER_UPSERT;
  int ok =
      mt_istio_policies_apply(s->policies, kKinds[k->index].kind, change, object, err, sizeof(err));
  const char *ns = mt_k8s_meta_string(object, "namespace"), *name = mt_k8s_meta_string(object, "name");
  log_line(s, "%s %s %s %s/%s rv=%s%s%s", ok ? "event" : "refused", kKinds[k->index].plural,
           mt_k8s_event_type_str(type), ns, name, mt_k8s_meta_string(object, "resourceVersion"), ok ? "" : ": ",
           ok ? "" : err);
  track_status(k, ns, name);
  /* A refused object is held as refused (it denies): a change too. */
  if (s->cb.on_change) s->cb.on_change(s->ctx);
}

static void on_watch_synced(void *ctx) {
  kind_state *k = ctx;
  mt_istio_source *s = k->source;
  k->synced = 1;
  log_line(s, "synced %s rv=%s (%zu held)", kKinds[k->index].plural,
           mt_k8s_watch_resource_version(k->watch),
           mt_istio_policies_count(s->policies, kKinds[k->index].kind));
  if (s->all_synced) return;
  for (size_t i = 0; i < NUM_KINDS; i++)
    if (!s->kinds[i].synced) return;
  s->all_synced = 1;
  if (s->cb.on_synced) s->cb.on_synced(s->ctx);
}

static void on_watch_problem(void *ctx, const char *what) {
  kind_state *k = ctx;
  log_line(k->source, "problem %s: %s", kKinds[k->index].plural, what);
}

static void on_watch_relist(void *ctx, const char *why) {
  kind_state *k = ctx;
  log_line(k->source, "relisting %s: %s", kKinds[k->index].plural, why);
}

static void start_watch(kind_state *k) {
  static const mt_k8s_watch_callbacks watch_cb = {
      on_watch_event, on_watch_synced, on_watch_problem, NULL, NULL, on_watch_relist};
  mt_istio_source *s = k->source;
  char path[PATH_MAX_LEN];
  snprintf(path, sizeof(path), "/apis/" GROUP "/%s/%s", kVersions[k->version],
           kKinds[k->index].plural);
  mt_k8s_watch_config wc = {.path = path,
                            .watch_timeout_s = s->config.watch_timeout_s,
                            .backoff_initial_ms = s->config.backoff_initial_ms,
                            .backoff_max_ms = s->config.backoff_max_ms,
                            .list_page_size = s->config.list_page_size};
  k->watch = mt_k8s_watch_new(s->loop, s->client, &wc, &watch_cb, k);
  if (k->watch == NULL) {
    log_line(s, "problem %s: out of memory starting the watch; retrying", kKinds[k->index].plural);
    ev_timer_set(&k->retry, (double)k->backoff_ms / 1000.0, 0.0);
    ev_timer_start(s->loop, &k->retry);
    return;
  }
  mt_k8s_watch_start(k->watch);
}

/* ---- finding the version ------------------------------------------------ */

static void start_probe(kind_state *k);

static void retry_later(kind_state *k) {
  mt_istio_source *s = k->source;
  ev_timer_set(&k->retry, (double)k->backoff_ms / 1000.0, 0.0);
  ev_timer_start(s->loop, &k->retry);
  k->backoff_ms *= 2;
  if (k->backoff_ms > s->config.backoff_max_ms) k->backoff_ms = s->config.backoff_max_ms;
}

static void on_retry(struct ev_loop *loop, ev_timer *t, int revents) {
  (void)loop;
  (void)revents;
  kind_state *k = t->data;
  if (k->found)
    start_watch(k);
  else
    start_probe(k);
}

static int on_probe_data(void *ctx, const char *data, size_t len) {
  (void)ctx;
  (void)data;
  (void)len;
  return 1; /* only the status matters; the body is not kept */
}

static void on_probe_done(void *ctx, long status, const char *error) {
  kind_state *k = ctx;
  mt_istio_source *s = k->source;
  const char *plural = kKinds[k->index].plural;
  k->probe = NULL;
  if (error[0] == '\0' && status == HTTP_OK) {
    k->found = 1;
    k->backoff_ms = s->config.backoff_initial_ms;
    log_line(s, "following %s at %s/%s", plural, GROUP, kVersions[k->version]);
    start_watch(k);
    return;
  }
  if (error[0] == '\0' && status == HTTP_NOT_FOUND && k->version + 1 < NUM_VERSIONS) {
    log_line(s, "%s/%s %s is not served (HTTP 404); trying %s", GROUP, kVersions[k->version],
             plural, kVersions[k->version + 1]);
    k->version++;
    start_probe(k);
    return;
  }
  if (error[0] == '\0' && status == HTTP_NOT_FOUND)
    log_line(s,
             "problem %s: %s is not served by the API server (%s v1 and v1beta1 both answer "
             "404): is Istio's CRD installed? Nothing is decided from Istio policies until it "
             "is; retrying in %.1f s",
             plural, kKinds[k->index].kind_name, GROUP, (double)k->backoff_ms / 1000.0);
  else
    log_line(s, "problem %s: LIST %s/%s: %s (HTTP %ld); retrying in %.1f s", plural, GROUP,
             kVersions[k->version], error[0] ? error : "refused", status,
             (double)k->backoff_ms / 1000.0);
  k->version = 0; /* a CRD installed meanwhile is found at its newest version */
  retry_later(k);
}

static void start_probe(kind_state *k) {
  static const mt_k8s_request_callbacks probe_cb = {on_probe_data, on_probe_done, NULL};
  mt_istio_source *s = k->source;
  char path[PATH_MAX_LEN], err[ERR_MAX] = "";
  snprintf(path, sizeof(path), "/apis/" GROUP "/%s/%s?limit=1", kVersions[k->version],
           kKinds[k->index].plural);
  k->probe = mt_k8s_client_get(s->client, path, PROBE_TIMEOUT_MS, &probe_cb, k, err, sizeof(err));
  if (k->probe == NULL) {
    log_line(s, "problem %s: GET %s: %s; retrying in %.1f s", kKinds[k->index].plural, path, err,
             (double)k->backoff_ms / 1000.0);
    retry_later(k);
  }
}

/* ---- lifecycle ---------------------------------------------------------- */

mt_istio_source *mt_istio_source_new(struct ev_loop *loop, mt_k8s_client *client,
                                     const mt_istio_source_config *config,
                                     const mt_istio_source_callbacks *callbacks, void *ctx) {
  mt_istio_source *s = calloc(1, sizeof(*s));
  if (s == NULL) return NULL;
  s->loop = loop;
  s->client = client;
  s->config = *config;
  if (s->config.backoff_initial_ms <= 0) s->config.backoff_initial_ms = DEFAULT_BACKOFF_INITIAL_MS;
  if (s->config.backoff_max_ms <= 0) s->config.backoff_max_ms = DEFAULT_BACKOFF_MAX_MS;
  if (s->config.backoff_max_ms < s->config.backoff_initial_ms)
    s->config.backoff_max_ms = s->config.backoff_initial_ms;
  s->cb = *callbacks;
  s->ctx = ctx;
  s->policies = mt_istio_policies_new(&config->options);
  if (s->policies == NULL) {
    free(s);
    return NULL;
  }
  for (size_t i = 0; i < NUM_KINDS; i++) {
    kind_state *k = &s->kinds[i];
    k->source = s;
    k->index = i;
    k->backoff_ms = s->config.backoff_initial_ms;
    ev_timer_init(&k->retry, on_retry, 0.0, 0.0);
    k->retry.data = k;
  }
  for (size_t i = 0; i < NUM_KINDS; i++) start_probe(&s->kinds[i]);
  return s;
}

void mt_istio_source_free(mt_istio_source *s) {
  if (s == NULL) return;
  for (size_t i = 0; i < NUM_KINDS; i++) {
    kind_state *k = &s->kinds[i];
    ev_timer_stop(s->loop, &k->retry);
    mt_k8s_request_cancel(k->probe);
    mt_k8s_watch_free(k->watch);
    for (size_t j = 0; j < k->num_known; j++) known_clear(&k->known[j]);
    free(k->known);
  }
  mt_istio_policies_free(s->policies);
  free(s);
}

const mt_istio_policies *mt_istio_source_policies(const mt_istio_source *s) { return s->policies; }

int mt_istio_source_synced(const mt_istio_source *s) { return s->all_synced; }

const char *mt_istio_source_version(const mt_istio_source *s, mt_istio_kind kind) {
  for (size_t i = 0; i < NUM_KINDS; i++)
    if (kKinds[i].kind == kind) return s->kinds[i].found ? kVersions[s->kinds[i].version] : "";
  return "";
}
