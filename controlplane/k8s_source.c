#include "controlplane/k8s_source.h"

#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { LOG_LINE_MAX = 1024, ERR_MAX = 512 };

/* What is watched, in the order listed: namespaces first, so that pods
 * arriving in the first list already know whether they are in the mesh
 * (the state would correct itself anyway, this only saves churn). */
static const struct {
  mt_k8s_kind kind;
  const char *name;
  const char *path;
} kResources[] = {
    {MT_K8S_KIND_NAMESPACE, "namespaces", "/api/v1/namespaces"},
    {MT_K8S_KIND_POD, "pods", "/api/v1/pods"},
    {MT_K8S_KIND_SERVICE, "services", "/api/v1/services"},
    {MT_K8S_KIND_ENDPOINTSLICE, "endpointslices", "/apis/discovery.k8s.io/v1/endpointslices"},
};
enum { NUM_RESOURCES = sizeof(kResources) / sizeof(kResources[0]) };

typedef struct {
  mt_k8s_source *source;
  size_t index; /* into kResources */
  mt_k8s_watch *watch;
  int synced;
  int failing;                /* the API failed it and has not answered since */
  char last_problem[ERR_MAX]; /* why it failed last */
} resource;

struct mt_k8s_source {
  struct ev_loop *loop;
  mt_k8s_client *client;
  mt_cluster_state *state;
  resource resources[NUM_RESOURCES];
  mt_istio_source *istio; /* NULL without istio_policies */
  mt_k8s_source_callbacks cb;
  void *ctx;
  int all_synced;
  size_t num_failing; /* resources whose watch the API is failing */
  ev_tstamp lost_at;  /* when the first of them failed */
};

static void log_line(mt_k8s_source *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void log_line(mt_k8s_source *s, const char *fmt, ...) {
  if (s->cb.on_log == NULL) return;
  char line[LOG_LINE_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  s->cb.on_log(s->ctx, line);
}

static void on_watch_event(void *ctx, mt_k8s_event_type type, const json_t *object) {
  resource *r = ctx;
  mt_k8s_source *s = r->source;
  const char *name = kResources[r->index].name;
  char err[ERR_MAX] = "";
  mt_cluster_change change = type == MT_K8S_EVENT_DELETED ? MT_CLUSTER_REMOVE : MT_CLUSTER_UPSERT;
  int ok =
      mt_cluster_state_apply(s->state, kResources[r->index].kind, change, object, err, sizeof(err));
  const char *ns = mt_k8s_meta_string(object, "namespace");
  log_line(s, "%s %s %s %s%s%s rv=%s%s%s", ok ? "event" : "refused", name, mt_k8s_event_type_str(type), ns,
           ns[0] ? "/" : "", mt_k8s_meta_string(object, "name"), mt_k8s_meta_string(object, "resourceVersion"),
           ok ? "" : ": ", ok ? "" : err);
  if (ok && s->cb.on_change) s->cb.on_change(s->ctx);
}

static void check_all_synced(mt_k8s_source *s) {
  if (s->all_synced) return;
  for (size_t i = 0; i < NUM_RESOURCES; i++) {
    if (!s->resources[i].synced) return;
  }
  s->all_synced = 1;
  if (s->cb.on_synced) s->cb.on_synced(s->ctx);
}

static void on_istio_change(void *ctx) {
  mt_k8s_source *s = ctx;
  if (s->cb.on_change) s->cb.on_change(s->ctx);
}

static void on_istio_synced(void *ctx) {
  mt_k8s_source *s = ctx;
  if (s->cb.on_istio_synced) s->cb.on_istio_synced(s->ctx);
}

static void on_istio_log(void *ctx, const char *line) {
  mt_k8s_source *s = ctx;
  if (s->cb.on_log) s->cb.on_log(s->ctx, line);
}

static void on_istio_status(void *ctx, mt_istio_kind kind, const char *ns, const char *name,
                            mt_istio_status status, const char *detail, int removed) {
  mt_k8s_source *s = ctx;
  if (s->cb.on_istio_status) s->cb.on_istio_status(s->ctx, kind, ns, name, status, detail, removed);
}

static void on_watch_synced(void *ctx) {
  resource *r = ctx;
  mt_k8s_source *s = r->source;
  /* A LIST's JSON (tens of MB at 10,000 pods) was just freed; glibc would
   * keep those pages, scattered between live ones, for good. LISTs are
   * rare (start, 410), so the walk over the heap costs nothing that
   * matters. */
  malloc_trim(0);
  r->synced = 1;
  log_line(s, "synced %s rv=%s", kResources[r->index].name,
           mt_k8s_watch_resource_version(r->watch));
  check_all_synced(s);
}

static void on_watch_problem(void *ctx, const char *what) {
  resource *r = ctx;
  snprintf(r->last_problem, sizeof(r->last_problem), "%s", what);
  log_line(r->source, "problem %s: %s", kResources[r->index].name, what);
}

/* One line when the API stops answering (the first watch to fail) and one
 * when every watch has had an answer again: what an operator looks for
 * after an API server restart. The cluster state is kept meanwhile. */
static void on_watch_health(void *ctx, int answering) {
  resource *r = ctx;
  mt_k8s_source *s = r->source;
  if (!answering && !r->failing) {
    r->failing = 1;
    if (s->num_failing++ == 0) {
      s->lost_at = ev_now(s->loop);
      if (s->all_synced)
        log_line(s,
                 "lost the API server (%s: %s); keeping the cluster state as last seen (%zu "
                 "workloads) until it answers",
                 kResources[r->index].name, r->last_problem,
                 mt_cluster_state_num_workloads(s->state));
      else
        log_line(s,
                 "lost the API server (%s: %s) before listing everything; nothing is decided "
                 "from the cluster until it answers",
                 kResources[r->index].name, r->last_problem);
    }
  } else if (answering && r->failing) {
    r->failing = 0;
    if (--s->num_failing == 0)
      log_line(s, "regained the API server after %.1f s: every watch answers again",
               ev_now(s->loop) - s->lost_at);
  }
}

static void on_watch_relist(void *ctx, const char *why) {
  resource *r = ctx;
  log_line(r->source, "relisting %s: %s", kResources[r->index].name, why);
}

static void on_watch_bookmark(void *ctx, const char *resource_version) {
  resource *r = ctx;
  log_line(r->source, "bookmark %s rv=%s", kResources[r->index].name, resource_version);
}

mt_k8s_source *mt_k8s_source_new(struct ev_loop *loop, const mt_k8s_source_config *config,
                                 const mt_k8s_source_callbacks *callbacks, void *ctx, char *err,
                                 size_t err_len) {
  static const mt_k8s_watch_callbacks watch_cb = {on_watch_event,   on_watch_synced,
                                                  on_watch_problem, on_watch_bookmark,
                                                  on_watch_health,  on_watch_relist};
  mt_k8s_source *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    snprintf(err, err_len, "out of memory");
    return NULL;
  }
  s->cb = *callbacks;
  s->ctx = ctx;
  s->loop = loop;
  s->client = mt_k8s_client_new(loop, &config->client, err, err_len);
  if (s->client == NULL) {
    mt_k8s_source_free(s);
    return NULL;
  }
  s->state = mt_cluster_state_new(config->trust_domain);
  if (s->state == NULL) {
    snprintf(err, err_len, "out of memory");
    mt_k8s_source_free(s);
    return NULL;
  }
  for (size_t i = 0; i < NUM_RESOURCES; i++) {
    resource *r = &s->resources[i];
    mt_k8s_watch_config wc = {.path = kResources[i].path,
                              .watch_timeout_s = config->watch_timeout_s,
                              .idle_grace_ms = config->idle_grace_ms,
                              .backoff_initial_ms = config->backoff_initial_ms,
                              .backoff_max_ms = config->backoff_max_ms,
                              .list_page_size = config->list_page_size};
    r->source = s;
    r->index = i;
    r->watch = mt_k8s_watch_new(loop, s->client, &wc, &watch_cb, r);
    if (r->watch == NULL) {
      snprintf(err, err_len, "out of memory");
      mt_k8s_source_free(s);
      return NULL;
    }
  }
  if (config->istio_policies) {
    static const mt_istio_source_callbacks istio_cb = {on_istio_change, on_istio_synced,
                                                       on_istio_log, on_istio_status};
    mt_istio_source_config ic = {.options = config->istio,
                                 .watch_timeout_s = config->watch_timeout_s,
                                 .list_page_size = config->list_page_size};
    s->istio = mt_istio_source_new(loop, s->client, &ic, &istio_cb, s);
    if (s->istio == NULL) {
      snprintf(err, err_len, "out of memory");
      mt_k8s_source_free(s);
      return NULL;
    }
  }
  for (size_t i = 0; i < NUM_RESOURCES; i++) mt_k8s_watch_start(s->resources[i].watch);
  return s;
}

void mt_k8s_source_free(mt_k8s_source *s) {
  if (s == NULL) return;
  for (size_t i = 0; i < NUM_RESOURCES; i++) mt_k8s_watch_free(s->resources[i].watch);
  mt_istio_source_free(s->istio); /* before the client its probes and watches use */
  mt_k8s_client_free(s->client);
  mt_cluster_state_free(s->state);
  free(s);
}

const mt_cluster_state *mt_k8s_source_state(const mt_k8s_source *s) { return s->state; }

int mt_k8s_source_synced(const mt_k8s_source *s) { return s->all_synced; }

int mt_k8s_source_istio_synced(const mt_k8s_source *s) {
  return s->istio == NULL || mt_istio_source_synced(s->istio);
}

const mt_istio_policies *mt_k8s_source_istio(const mt_k8s_source *s) {
  return s->istio != NULL ? mt_istio_source_policies(s->istio) : NULL;
}

void mt_k8s_source_watch_stats(const mt_k8s_source *s, mt_k8s_kind kind, mt_k8s_watch_stats *out) {
  memset(out, 0, sizeof(*out));
  for (size_t i = 0; i < NUM_RESOURCES; i++) {
    if (kResources[i].kind == kind) mt_k8s_watch_get_stats(s->resources[i].watch, out);
  }
}

mt_k8s_client *mt_k8s_source_client(mt_k8s_source *source) { return source->client; }
