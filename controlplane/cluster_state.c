#include "controlplane/cluster_state.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { SPIFFE_ID_MAX = 2048, INITIAL_CAPACITY = 16, ADDRESS_TEXT_MAX = MT_K8S_IP_MAX + 8 };

typedef struct {
  mt_k8s_pod pod;
  char *spiffe_id;
  int is_workload; /* derived: see the header's definition of a workload */
} pod_entry;

/* A growable array of owned pointers. */
typedef struct {
  void **items;
  size_t len, cap;
} vec;

struct mt_cluster_state {
  char *trust_domain;
  vec pods;       /* pod_entry * */
  vec services;   /* mt_k8s_service * */
  vec slices;     /* mt_k8s_endpointslice * */
  vec namespaces; /* mt_k8s_namespace * */
  size_t num_workloads;
};

static int vec_push(vec *v, void *item) {
  if (v->len == v->cap) {
    size_t cap = v->cap ? v->cap * 2 : INITIAL_CAPACITY;
    void **items = realloc(v->items, cap * sizeof(*items));
    if (items == NULL) return 0;
    v->items = items;
    v->cap = cap;
  }
  v->items[v->len++] = item;
  return 1;
}

/* Order is not kept: the last item takes the removed one's place. */
static void *vec_take(vec *v, size_t i) {
  void *item = v->items[i];
  v->items[i] = v->items[--v->len];
  return item;
}

static const mt_k8s_meta *meta_of(mt_k8s_kind kind, const void *item) {
  switch (kind) {
    case MT_K8S_KIND_POD: return &((const pod_entry *)item)->pod.meta;
    case MT_K8S_KIND_SERVICE: return &((const mt_k8s_service *)item)->meta;
    case MT_K8S_KIND_ENDPOINTSLICE: return &((const mt_k8s_endpointslice *)item)->meta;
    case MT_K8S_KIND_NAMESPACE: return &((const mt_k8s_namespace *)item)->meta;
    case MT_K8S_KIND_COUNT: break;
  }
  return NULL;
}

static vec *table_of(mt_cluster_state *state, mt_k8s_kind kind) {
  switch (kind) {
    case MT_K8S_KIND_POD: return &state->pods;
    case MT_K8S_KIND_SERVICE: return &state->services;
    case MT_K8S_KIND_ENDPOINTSLICE: return &state->slices;
    case MT_K8S_KIND_NAMESPACE: return &state->namespaces;
    case MT_K8S_KIND_COUNT: break;
  }
  return NULL;
}

/* Index of (ns, name) in |v|, or -1. */
static long find(const vec *v, mt_k8s_kind kind, const char *ns, const char *name) {
  for (size_t i = 0; i < v->len; i++) {
    const mt_k8s_meta *m = meta_of(kind, v->items[i]);
    if (strcmp(m->name, name) == 0 && strcmp(m->ns, ns) == 0) return (long)i;
  }
  return -1;
}

static void item_free(mt_k8s_kind kind, void *item) {
  if (item == NULL) return;
  switch (kind) {
    case MT_K8S_KIND_POD: {
      pod_entry *e = item;
      mt_k8s_pod_clear(&e->pod);
      free(e->spiffe_id);
      break;
    }
    case MT_K8S_KIND_SERVICE: mt_k8s_service_clear(item); break;
    case MT_K8S_KIND_ENDPOINTSLICE: mt_k8s_endpointslice_clear(item); break;
    case MT_K8S_KIND_NAMESPACE: mt_k8s_namespace_clear(item); break;
    case MT_K8S_KIND_COUNT: break;
  }
  free(item);
}

mt_cluster_state *mt_cluster_state_new(const char *trust_domain) {
  mt_cluster_state *state = calloc(1, sizeof(*state));
  if (state == NULL) return NULL;
  state->trust_domain = strdup(trust_domain);
  if (state->trust_domain == NULL) {
    free(state);
    return NULL;
  }
  return state;
}

void mt_cluster_state_free(mt_cluster_state *state) {
  if (state == NULL) return;
  for (int k = 0; k < MT_K8S_KIND_COUNT; k++) {
    vec *v = table_of(state, (mt_k8s_kind)k);
    for (size_t i = 0; i < v->len; i++) item_free((mt_k8s_kind)k, v->items[i]);
    free(v->items);
  }
  free(state->trust_domain);
  free(state);
}

static int namespace_in_mesh(const mt_cluster_state *state, const char *ns) {
  long i = find(&state->namespaces, MT_K8S_KIND_NAMESPACE, "", ns);
  if (i < 0) return 0;
  const char *v = mt_k8s_meta_label(meta_of(MT_K8S_KIND_NAMESPACE, state->namespaces.items[i]),
                                    MT_CLUSTER_MESH_LABEL);
  return v != NULL && strcmp(v, MT_CLUSTER_MESH_ENABLED) == 0;
}

static int pod_qualifies(const mt_cluster_state *state, const mt_k8s_pod *pod) {
  return strcmp(pod->phase, "Running") == 0 && pod->num_ips > 0 && pod->node[0] != '\0' &&
         !pod->host_network && !pod->meta.deleting && namespace_in_mesh(state, pod->meta.ns);
}

/* Re-derives one pod's workload status, keeping the count right. */
static void rederive_pod(mt_cluster_state *state, pod_entry *e) {
  int now = pod_qualifies(state, &e->pod);
  state->num_workloads += (size_t)now;
  state->num_workloads -= (size_t)e->is_workload;
  e->is_workload = now;
}

static void *decode(const mt_cluster_state *state, mt_k8s_kind kind, const json_t *object,
                    char *err, size_t err_len) {
  switch (kind) {
    case MT_K8S_KIND_POD: {
      pod_entry *e = calloc(1, sizeof(*e));
      char id[SPIFFE_ID_MAX];
      if (e == NULL || !mt_k8s_pod_decode(object, &e->pod, err, err_len)) {
        if (e == NULL) snprintf(err, err_len, "out of memory");
        free(e);
        return NULL;
      }
      snprintf(id, sizeof(id), "spiffe://%s/ns/%s/sa/%s", state->trust_domain, e->pod.meta.ns,
               e->pod.service_account);
      e->spiffe_id = strdup(id);
      if (e->spiffe_id == NULL) {
        snprintf(err, err_len, "out of memory");
        item_free(kind, e);
        return NULL;
      }
      return e;
    }
    case MT_K8S_KIND_SERVICE: {
      mt_k8s_service *s = calloc(1, sizeof(*s));
      if (s != NULL && mt_k8s_service_decode(object, s, err, err_len)) return s;
      free(s);
      return NULL;
    }
    case MT_K8S_KIND_ENDPOINTSLICE: {
      mt_k8s_endpointslice *s = calloc(1, sizeof(*s));
      if (s != NULL && mt_k8s_endpointslice_decode(object, s, err, err_len)) return s;
      free(s);
      return NULL;
    }
    case MT_K8S_KIND_NAMESPACE: {
      mt_k8s_namespace *n = calloc(1, sizeof(*n));
      if (n != NULL && mt_k8s_namespace_decode(object, n, err, err_len)) return n;
      free(n);
      return NULL;
    }
    case MT_K8S_KIND_COUNT: break;
  }
  snprintf(err, err_len, "unknown kind");
  return NULL;
}

/* A namespace's labels changed (or it came or went): its pods re-derive. */
static void rederive_namespace(mt_cluster_state *state, const char *ns) {
  for (size_t i = 0; i < state->pods.len; i++) {
    pod_entry *e = state->pods.items[i];
    if (strcmp(e->pod.meta.ns, ns) == 0) rederive_pod(state, e);
  }
}

static void forget_pod(mt_cluster_state *state, pod_entry *e) {
  state->num_workloads -= (size_t)e->is_workload;
  item_free(MT_K8S_KIND_POD, e);
}

/* Drops the held object |ns|/|name| of |kind|, if there is one. */
static void drop_held(mt_cluster_state *state, mt_k8s_kind kind, vec *table, const char *ns,
                      const char *name) {
  long at = find(table, kind, ns, name);
  if (at < 0) return;
  void *old = vec_take(table, (size_t)at);
  if (kind == MT_K8S_KIND_POD)
    forget_pod(state, old);
  else
    item_free(kind, old);
}

/* A removal needs only the object's name: a relist's DELETED carries no
 * more, and an object whose spec would not decode must still leave. */
static int remove_object(mt_cluster_state *state, mt_k8s_kind kind, vec *table,
                         const json_t *object, char *err, size_t err_len) {
  mt_k8s_meta meta;
  memset(&meta, 0, sizeof(meta));
  if (!mt_k8s_meta_decode(object, kind != MT_K8S_KIND_NAMESPACE, &meta, err, err_len)) return 0;
  drop_held(state, kind, table, meta.ns, meta.name);
  if (kind == MT_K8S_KIND_NAMESPACE) rederive_namespace(state, meta.name);
  mt_k8s_meta_clear(&meta);
  return 1;
}

int mt_cluster_state_apply(mt_cluster_state *state, mt_k8s_kind kind, mt_cluster_change change,
                           const json_t *object, char *err, size_t err_len) {
  vec *table = table_of(state, kind);
  if (table == NULL) {
    snprintf(err, err_len, "unknown kind");
    return 0;
  }
  if (change == MT_CLUSTER_REMOVE) return remove_object(state, kind, table, object, err, err_len);
  void *item = decode(state, kind, object, err, err_len);
  if (item == NULL) return 0;
  const mt_k8s_meta *meta = meta_of(kind, item);
  char ns_name[MT_K8S_NAME_MAX + 1];
  snprintf(ns_name, sizeof(ns_name), "%s", meta->name);
  drop_held(state, kind, table, meta->ns, meta->name);
  if (!vec_push(table, item)) {
    item_free(kind, item);
    snprintf(err, err_len, "out of memory");
    return 0;
  } else if (kind == MT_K8S_KIND_POD) {
    rederive_pod(state, item);
  }
  if (kind == MT_K8S_KIND_NAMESPACE) rederive_namespace(state, ns_name);
  return 1;
}

size_t mt_cluster_state_num_workloads(const mt_cluster_state *state) {
  return state->num_workloads;
}

static void view_of(const pod_entry *e, mt_cluster_workload *out) {
  out->spiffe_id = e->spiffe_id;
  out->ns = e->pod.meta.ns;
  out->pod = e->pod.meta.name;
  out->node = e->pod.node;
  out->ips = (const char *const *)e->pod.ips;
  out->num_ips = e->pod.num_ips;
  out->labels = e->pod.meta.labels;
  out->num_labels = e->pod.meta.num_labels;
}

int mt_cluster_state_workload_by_ip(const mt_cluster_state *state, const char *ip,
                                    mt_cluster_workload *out) {
  char canonical[MT_K8S_IP_MAX];
  if (!mt_k8s_canonical_ip(ip, canonical, sizeof(canonical))) return 0;
  for (size_t i = 0; i < state->pods.len; i++) {
    const pod_entry *e = state->pods.items[i];
    if (!e->is_workload) continue;
    for (size_t j = 0; j < e->pod.num_ips; j++) {
      if (strcmp(e->pod.ips[j], canonical) == 0) {
        view_of(e, out);
        return 1;
      }
    }
  }
  return 0;
}

int mt_cluster_state_identity_on_node(const mt_cluster_state *state, const char *spiffe_id,
                                      const char *node) {
  for (size_t i = 0; i < state->pods.len; i++) {
    const pod_entry *e = state->pods.items[i];
    if (e->is_workload && strcmp(e->pod.node, node) == 0 && strcmp(e->spiffe_id, spiffe_id) == 0)
      return 1;
  }
  return 0;
}

/* Calls |on_workload| for every workload, or only those on |node| when it
 * is not NULL; returns how many. */
static size_t foreach_workload_on(const mt_cluster_state *state, const char *node,
                                  void (*on_workload)(void *ctx, const mt_cluster_workload *w),
                                  void *ctx) {
  size_t n = 0;
  for (size_t i = 0; i < state->pods.len; i++) {
    const pod_entry *e = state->pods.items[i];
    if (!e->is_workload || (node != NULL && strcmp(e->pod.node, node) != 0)) continue;
    mt_cluster_workload w;
    view_of(e, &w);
    on_workload(ctx, &w);
    n++;
  }
  return n;
}

size_t mt_cluster_state_foreach_on_node(const mt_cluster_state *state, const char *node,
                                        void (*on_workload)(void *ctx,
                                                            const mt_cluster_workload *w),
                                        void *ctx) {
  return foreach_workload_on(state, node, on_workload, ctx);
}

static const pod_entry *workload_named(const mt_cluster_state *state, const char *ns,
                                       const char *name) {
  long i = find(&state->pods, MT_K8S_KIND_POD, ns, name);
  if (i < 0) return NULL;
  const pod_entry *e = state->pods.items[i];
  return e->is_workload ? e : NULL;
}

/* Inserts |id| into the sorted unique set |ids| (|*n| used, |max| room);
 * counts it even when there is no room, so the caller learns the total. */
static void set_insert(const char **ids, size_t *n, size_t *total, size_t max, const char *id) {
  size_t lo = 0, hi = *n < max ? *n : max;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    int c = strcmp(ids[mid], id);
    if (c == 0) return;
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  (*total)++;
  if (*n >= max) return;
  memmove(&ids[lo + 1], &ids[lo], (*n - lo) * sizeof(*ids));
  ids[lo] = id;
  (*n)++;
}

/* The identities behind |svc|'s ready endpoints. */
static size_t service_identities(const mt_cluster_state *state, const mt_k8s_service *svc,
                                 const char **ids, size_t max) {
  size_t n = 0, total = 0;
  for (size_t i = 0; i < state->slices.len; i++) {
    const mt_k8s_endpointslice *s = state->slices.items[i];
    if (strcmp(s->meta.ns, svc->meta.ns) != 0 || strcmp(s->service_name, svc->meta.name) != 0)
      continue;
    for (size_t j = 0; j < s->num_endpoints; j++) {
      const mt_k8s_endpoint *ep = &s->endpoints[j];
      if (!ep->ready || ep->pod_name[0] == '\0') continue;
      const pod_entry *e = workload_named(state, s->meta.ns, ep->pod_name);
      if (e != NULL) set_insert(ids, &n, &total, max, e->spiffe_id);
    }
  }
  return total;
}

static int service_has_port(const mt_k8s_service *svc, uint16_t port) {
  for (size_t i = 0; i < svc->num_ports; i++) {
    if (svc->ports[i].port == port) return 1;
  }
  return 0;
}

size_t mt_cluster_state_service_ids(const mt_cluster_state *state, const char *ip, uint16_t port,
                                    const char **ids, size_t max) {
  char canonical[MT_K8S_IP_MAX];
  if (!mt_k8s_canonical_ip(ip, canonical, sizeof(canonical))) return 0;
  for (size_t i = 0; i < state->services.len; i++) {
    const mt_k8s_service *svc = state->services.items[i];
    if (!service_has_port(svc, port) || !namespace_in_mesh(state, svc->meta.ns)) continue;
    for (size_t j = 0; j < svc->num_cluster_ips; j++) {
      if (strcmp(svc->cluster_ips[j], canonical) == 0)
        return service_identities(state, svc, ids, max);
    }
  }
  return 0;
}

size_t mt_cluster_state_foreach_workload(const mt_cluster_state *state,
                                         void (*on_workload)(void *ctx,
                                                             const mt_cluster_workload *w),
                                         void *ctx) {
  return foreach_workload_on(state, NULL, on_workload, ctx);
}

/* Inserts |name| into the sorted |names| (|*n| of |max|), keeping the
 * smallest |max| when full. */
static void insert_sorted(const char **names, size_t *n, size_t max, const char *name) {
  size_t at = *n;
  while (at > 0 && strcmp(names[at - 1], name) > 0) at--;
  if (at >= max) return;
  size_t last = *n < max ? *n : max - 1;
  memmove(&names[at + 1], &names[at], (last - at) * sizeof(*names));
  names[at] = name;
  if (*n < max) (*n)++;
}

size_t mt_cluster_state_services_selecting(const mt_cluster_state *state,
                                           const mt_cluster_workload *w, const char **names,
                                           size_t max) {
  size_t total = 0, kept = 0;
  for (size_t i = 0; i < state->services.len; i++) {
    const mt_k8s_service *svc = state->services.items[i];
    if (strcmp(svc->meta.ns, w->ns) != 0 || !mt_k8s_service_selects(svc, w->labels, w->num_labels))
      continue;
    total++;
    if (max > 0) insert_sorted(names, &kept, max, svc->meta.name);
  }
  return total;
}

/* --- every service address at once, with sorted indexes --- */

static int compare_pods_by_name(const void *pa, const void *pb) {
  const pod_entry *a = *(const pod_entry *const *)pa, *b = *(const pod_entry *const *)pb;
  int c = strcmp(a->pod.meta.ns, b->pod.meta.ns);
  return c != 0 ? c : strcmp(a->pod.meta.name, b->pod.meta.name);
}

static int compare_slices_by_service(const void *pa, const void *pb) {
  const mt_k8s_endpointslice *a = *(const mt_k8s_endpointslice *const *)pa;
  const mt_k8s_endpointslice *b = *(const mt_k8s_endpointslice *const *)pb;
  int c = strcmp(a->meta.ns, b->meta.ns);
  return c != 0 ? c : strcmp(a->service_name, b->service_name);
}

/* Workloads sorted by (namespace, pod name), slices by (namespace, service). */
typedef struct {
  const pod_entry **workloads;
  size_t num_workloads;
  const mt_k8s_endpointslice **slices;
  size_t num_slices;
  const char **ids; /* scratch: room for every ready endpoint of one service */
  size_t ids_cap;
  mt_cluster_endpoint *endpoints; /* scratch, as large as ids */
} service_index;

static void service_index_clear(service_index *ix) {
  free(ix->workloads);
  free(ix->slices);
  free(ix->ids);
  free(ix->endpoints);
}

static int service_index_build(const mt_cluster_state *state, service_index *ix) {
  memset(ix, 0, sizeof(*ix));
  ix->workloads = malloc((state->pods.len + 1) * sizeof(*ix->workloads));
  ix->slices = malloc((state->slices.len + 1) * sizeof(*ix->slices));
  if (ix->workloads == NULL || ix->slices == NULL) return 0;
  for (size_t i = 0; i < state->pods.len; i++) {
    const pod_entry *e = state->pods.items[i];
    if (e->is_workload) ix->workloads[ix->num_workloads++] = e;
  }
  for (size_t i = 0; i < state->slices.len; i++)
    ix->slices[ix->num_slices++] = state->slices.items[i];
  if (ix->num_workloads > 1)
    qsort(ix->workloads, ix->num_workloads, sizeof(*ix->workloads), compare_pods_by_name);
  if (ix->num_slices > 1)
    qsort(ix->slices, ix->num_slices, sizeof(*ix->slices), compare_slices_by_service);
  return 1;
}

static const pod_entry *indexed_workload(const service_index *ix, const char *ns,
                                         const char *name) {
  size_t lo = 0, hi = ix->num_workloads;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    const mt_k8s_meta *m = &ix->workloads[mid]->pod.meta;
    int c = strcmp(m->ns, ns);
    if (c == 0) c = strcmp(m->name, name);
    if (c == 0) return ix->workloads[mid];
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

/* The first slice of |svc| in the index (slices of one service are adjacent). */
static size_t first_slice_of(const service_index *ix, const mt_k8s_service *svc) {
  size_t lo = 0, hi = ix->num_slices;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    const mt_k8s_endpointslice *s = ix->slices[mid];
    int c = strcmp(s->meta.ns, svc->meta.ns);
    if (c == 0) c = strcmp(s->service_name, svc->meta.name);
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* The slices of |svc| in the index: [*first, *end). Returns how many
 * endpoints they hold in all. */
static size_t slices_of(const service_index *ix, const mt_k8s_service *svc, size_t *first,
                        size_t *end) {
  size_t room = 0;
  *first = first_slice_of(ix, svc);
  for (*end = *first; *end < ix->num_slices; (*end)++) {
    const mt_k8s_endpointslice *s = ix->slices[*end];
    if (strcmp(s->meta.ns, svc->meta.ns) != 0 || strcmp(s->service_name, svc->meta.name) != 0)
      break;
    room += s->num_endpoints;
  }
  return room;
}

/* |svc|'s identities into ix->ids (sorted, unique); returns how many, or
 * (size_t)-1 when out of memory. Also makes room in ix->endpoints for
 * every endpoint of |svc|. */
static size_t indexed_service_ids(service_index *ix, const mt_k8s_service *svc) {
  size_t first, end;
  size_t room = slices_of(ix, svc, &first, &end);
  if (room > ix->ids_cap) {
    const char **grown = realloc(ix->ids, room * sizeof(*grown));
    if (grown == NULL) return (size_t)-1;
    ix->ids = grown;
    mt_cluster_endpoint *eps = realloc(ix->endpoints, room * sizeof(*eps));
    if (eps == NULL) return (size_t)-1;
    ix->endpoints = eps;
    ix->ids_cap = room;
  }
  size_t n = 0, total = 0;
  for (size_t i = first; i < end; i++) {
    const mt_k8s_endpointslice *s = ix->slices[i];
    for (size_t j = 0; j < s->num_endpoints; j++) {
      const mt_k8s_endpoint *ep = &s->endpoints[j];
      if (!ep->ready || ep->pod_name[0] == '\0') continue;
      const pod_entry *e = indexed_workload(ix, s->meta.ns, ep->pod_name);
      if (e != NULL) set_insert(ix->ids, &n, &total, ix->ids_cap, e->spiffe_id);
    }
  }
  return n;
}

static int compare_endpoints(const void *pa, const void *pb) {
  const mt_cluster_endpoint *a = pa, *b = pb;
  int c = strcmp(a->ip, b->ip);
  if (c == 0) c = (int)a->port - (int)b->port;
  return c != 0 ? c : strcmp(a->spiffe_id, b->spiffe_id);
}

/* The slice port that serves Service port |sp|: kube-proxy pairs them by
 * name (the slice's port number is the targetPort resolved, numeric or
 * named). NULL when |s| has none. */
static const mt_k8s_port *slice_port_for(const mt_k8s_endpointslice *s, const mt_k8s_port *sp) {
  for (size_t i = 0; i < s->num_ports; i++)
    if (strcmp(s->ports[i].name, sp->name) == 0) return &s->ports[i];
  return NULL;
}

/* The ready mesh endpoints of |svc| for |cluster_ip| (its family) and
 * Service port |sp| into ix->endpoints (room made by indexed_service_ids):
 * sorted, unique. Returns how many. */
static size_t indexed_endpoints(service_index *ix, const mt_k8s_service *svc,
                                const char *cluster_ip, const mt_k8s_port *sp) {
  if (strcmp(sp->protocol, "TCP") != 0) return 0; /* the agent proxies TCP only */
  const char *family = strchr(cluster_ip, ':') != NULL ? "IPv6" : "IPv4";
  size_t first, end, n = 0;
  slices_of(ix, svc, &first, &end);
  for (size_t i = first; i < end; i++) {
    const mt_k8s_endpointslice *s = ix->slices[i];
    const mt_k8s_port *port = strcmp(s->address_type, family) == 0 ? slice_port_for(s, sp) : NULL;
    if (port == NULL || strcmp(port->protocol, "TCP") != 0) continue;
    for (size_t j = 0; j < s->num_endpoints; j++) {
      const mt_k8s_endpoint *ep = &s->endpoints[j];
      if (!ep->ready || ep->pod_name[0] == '\0' || ep->num_addresses == 0) continue;
      const pod_entry *e = indexed_workload(ix, s->meta.ns, ep->pod_name);
      /* The API says consumers may use the first address only; kube-proxy does. */
      if (e != NULL)
        ix->endpoints[n++] = (mt_cluster_endpoint){ep->addresses[0], port->port, e->spiffe_id};
    }
  }
  if (n > 1) qsort(ix->endpoints, n, sizeof(*ix->endpoints), compare_endpoints);
  size_t unique = 0;
  for (size_t i = 0; i < n; i++) /* one endpoint in two slices (a slice being replaced) */
    if (unique == 0 || compare_endpoints(&ix->endpoints[unique - 1], &ix->endpoints[i]) != 0)
      ix->endpoints[unique++] = ix->endpoints[i];
  return unique;
}

int mt_cluster_state_foreach_service_address(const mt_cluster_state *state,
                                             mt_cluster_on_service_address on_address, void *ctx) {
  service_index ix;
  int ok = service_index_build(state, &ix);
  for (size_t i = 0; ok && i < state->services.len; i++) {
    const mt_k8s_service *svc = state->services.items[i];
    if (svc->num_cluster_ips == 0 || !namespace_in_mesh(state, svc->meta.ns)) continue;
    size_t n = indexed_service_ids(&ix, svc);
    if (n == (size_t)-1) {
      ok = 0;
      break;
    }
    for (size_t j = 0; j < svc->num_cluster_ips; j++) {
      for (size_t p = 0; p < svc->num_ports; p++) {
        size_t num_eps =
            n > 0 ? indexed_endpoints(&ix, svc, svc->cluster_ips[j], &svc->ports[p]) : 0;
        on_address(ctx, svc->cluster_ips[j], svc->ports[p].port, ix.ids, n, ix.endpoints, num_eps);
      }
    }
  }
  service_index_clear(&ix);
  return ok;
}

/* --- dump: canonical text --- */

typedef struct {
  char **lines;
  size_t len, cap;
  int failed;
} lines;

static void add_line(lines *l, char *line) {
  if (line == NULL || l->failed) {
    free(line);
    l->failed = 1;
    return;
  }
  if (l->len == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : INITIAL_CAPACITY;
    char **p = realloc(l->lines, cap * sizeof(*p));
    if (p == NULL) {
      free(line);
      l->failed = 1;
      return;
    }
    l->lines = p;
    l->cap = cap;
  }
  l->lines[l->len++] = line;
}

static int compare_lines(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static void dump_workloads(const mt_cluster_state *state, lines *out) {
  for (size_t i = 0; i < state->pods.len; i++) {
    const pod_entry *e = state->pods.items[i];
    if (!e->is_workload) continue;
    char ips[MT_K8S_MAX_POD_IPS * MT_K8S_IP_MAX] = "";
    for (size_t j = 0; j < e->pod.num_ips; j++) {
      size_t used = strlen(ips);
      snprintf(ips + used, sizeof(ips) - used, "%s%s", j ? "," : "", e->pod.ips[j]);
    }
    char *line = NULL;
    if (asprintf(&line, "workload %s/%s %s node=%s ips=%s", e->pod.meta.ns, e->pod.meta.name,
                 e->spiffe_id, e->pod.node, ips) < 0)
      line = NULL;
    add_line(out, line);
  }
}

static void dump_services(const mt_cluster_state *state, lines *out) {
  enum { MAX_IDS_SHOWN = 64 };
  for (size_t i = 0; i < state->services.len; i++) {
    const mt_k8s_service *svc = state->services.items[i];
    if (!namespace_in_mesh(state, svc->meta.ns)) continue;
    const char *ids[MAX_IDS_SHOWN];
    size_t n = service_identities(state, svc, ids, MAX_IDS_SHOWN);
    if (n > MAX_IDS_SHOWN) n = MAX_IDS_SHOWN;
    size_t len = 2;
    for (size_t k = 0; k < n; k++) len += strlen(ids[k]) + 1;
    char *joined = calloc(1, len);
    if (joined == NULL) {
      out->failed = 1;
      return;
    }
    for (size_t k = 0; k < n; k++) {
      if (k) strcat(joined, ",");
      strcat(joined, ids[k]);
    }
    if (n == 0) strcpy(joined, "-");
    for (size_t j = 0; j < svc->num_cluster_ips; j++) {
      int v6 = strchr(svc->cluster_ips[j], ':') != NULL;
      for (size_t p = 0; p < svc->num_ports; p++) {
        char *line = NULL;
        if (asprintf(&line, "service %s/%s %s%s%s:%u %s", svc->meta.ns, svc->meta.name,
                     v6 ? "[" : "", svc->cluster_ips[j], v6 ? "]" : "", svc->ports[p].port,
                     joined) < 0)
          line = NULL;
        add_line(out, line);
      }
    }
    free(joined);
  }
}

char *mt_cluster_state_dump(const mt_cluster_state *state) {
  lines l = {0};
  dump_workloads(state, &l);
  dump_services(state, &l);
  char *text = NULL;
  if (!l.failed) {
    if (l.len > 0) qsort(l.lines, l.len, sizeof(*l.lines), compare_lines); /* NULL when empty */
    size_t total = 1;
    for (size_t i = 0; i < l.len; i++) total += strlen(l.lines[i]) + 1;
    text = malloc(total);
    if (text != NULL) {
      char *p = text;
      for (size_t i = 0; i < l.len; i++) p += sprintf(p, "%s\n", l.lines[i]);
      *p = '\0';
    }
  }
  for (size_t i = 0; i < l.len; i++) free(l.lines[i]);
  free(l.lines);
  return text;
}
