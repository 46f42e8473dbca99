/* mesh_view.c: the shared part of every caller's MeshSnapshot, encoded
 * once, and each caller's own fields appended to it. */
#include "controlplane/mesh_view.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "controlplane/istio_identities.h"
#include "controlplane/k8s_objects.h"
#include "proto/mtlsd/mesh.pb-c.h"

enum {
  ADDRESS_MAX = MT_MESH_ADDRESS_MAX,
  INITIAL_CAPACITY = 64,
};

/* A workload on a node, copied from the source; |msg| owns its strings.
 * One without an IP (a registry entry without address) is not sent as a
 * Workload but still selects its identity's workload policy. */
typedef struct {
  char *node;
  Mtlsd__Mesh__V1__Workload msg;
} node_workload;

/* A mesh file destination whose address text is not canonical. */
typedef struct {
  char canonical[ADDRESS_MAX];
  const char *as_sent; /* borrowed from the mesh file */
} address_alias;

struct mt_mesh_view {
  const mt_mesh_file *mesh;
  size_t max_bytes;
  uint8_t *shared;
  size_t shared_len;
  SHA256_CTX shared_hash;          /* SHA-256 state after the shared bytes */
  mt_mesh_entries *shared_entries; /* NULL: cannot be split (see the header) */
  /* Destinations on demand: the shared part without destinations, and the
   * mesh file's addresses by canonical form (sorted). */
  uint8_t *base;
  size_t base_len;
  address_alias *aliases;
  size_t num_aliases;
  size_t num_derived;
  /* The workload policies, sorted by identity: the mesh file's (borrowed)
   * and those compiled from Istio's objects (|istio|'s). */
  const Mtlsd__Mesh__V1__WorkloadPolicy **policies;
  size_t num_policies;
  mt_istio_identities *istio; /* NULL: no Istio policies */
  char *notes;                /* see mt_mesh_view_policy_notes */
  /* Sorted by (node, identity, pod, first IP); NULL source: none. */
  int has_workload_source;
  node_workload *workloads;
  size_t num_workloads, cap_workloads;
};

struct mt_mesh_view_snapshot {
  const mt_mesh_view *view;
  int has_shared; /* 0: |own| is the whole content (on demand) */
  uint8_t *own;   /* the caller's own fields, encoded */
  size_t own_len;
  uint8_t digest[MT_MESH_DIGEST_LEN];
};

/* ---- small helpers ----------------------------------------------------- */

static int compare_strings(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* "ip:port" (brackets for IPv6) or "ip" alone when |port| is 0. */
static void format_address(const char *ip, uint16_t port, char *out, size_t out_len) {
  int v6 = strchr(ip, ':') != NULL;
  if (port == 0)
    snprintf(out, out_len, "%s", ip);
  else
    snprintf(out, out_len, "%s%s%s:%u", v6 ? "[" : "", ip, v6 ? "]" : "", (unsigned)port);
}

/* A mesh file address ("ip:port", "[v6]:port") in the form format_address
 * gives, so that an override matches whatever case or zeros it was
 * written with. 0 when it does not parse (the file checked it already). */
static int canonical_address(const char *text, char *out, size_t out_len) {
  char ip[ADDRESS_MAX], canonical[MT_K8S_IP_MAX];
  const char *colon = strrchr(text, ':');
  if (colon == NULL) return 0;
  size_t ip_len = (size_t)(colon - text);
  int bracketed = text[0] == '[';
  if (bracketed) {
    if (ip_len < 2 || text[ip_len - 1] != ']') return 0;
    text++;
    ip_len -= 2;
  }
  if (ip_len >= sizeof(ip)) return 0;
  memcpy(ip, text, ip_len);
  ip[ip_len] = '\0';
  if (!bracketed && strchr(ip, ':') != NULL) return 0; /* IPv6 needs brackets */
  char *end = NULL;
  unsigned long port = strtoul(colon + 1, &end, 10);
  if (end == colon + 1 || *end != '\0' || port == 0 || port > 65535) return 0;
  if (!mt_k8s_canonical_ip(ip, canonical, sizeof(canonical))) return 0;
  format_address(canonical, (uint16_t)port, out, out_len);
  return 1;
}

/* An address as the mesh file may write it ("ip:port" or an IP alone) in
 * canonical form. */
static int canonical_any(const char *text, char *out, size_t out_len) {
  return canonical_address(text, out, out_len) || mt_k8s_canonical_ip(text, out, out_len);
}

int mt_mesh_view_canonical_address(const char *text, char out[MT_MESH_ADDRESS_MAX]) {
  return canonical_address(text, out, MT_MESH_ADDRESS_MAX);
}

int mt_mesh_view_canonical_key(const char *text, size_t len, char out[MT_MESH_ADDRESS_MAX]) {
  char copy[MT_MESH_ADDRESS_MAX];
  if (len >= sizeof(copy)) return 0;
  memcpy(copy, text, len);
  copy[len] = '\0';
  return canonical_any(copy, out, MT_MESH_ADDRESS_MAX);
}

/* ---- derived destinations ---------------------------------------------- */

/* One (address, identity) pair; grouped by address into a Destination.
 * |address| is owned by the pair list's |addresses|, |id| borrowed from
 * the cluster state for the duration of mt_mesh_view_new. */
typedef struct {
  const char *address;
  const char *id;
} dest_pair;

/* A Service address's endpoints as Endpoint messages; |address| and the
 * messages' addresses are owned, the identities borrowed like dest_pair's. */
typedef struct {
  const char *address;
  Mtlsd__Mesh__V1__Endpoint *msgs;
  Mtlsd__Mesh__V1__Endpoint **ptrs;
  char *texts; /* n "ip:port" strings of ADDRESS_MAX bytes */
  size_t n;
} service_endpoints;

typedef struct {
  dest_pair *pairs;
  size_t len, cap;
  char **addresses;
  size_t num_addresses, cap_addresses;
  service_endpoints *endpoints; /* sorted by address before grouping */
  size_t num_endpoints, cap_endpoints;
  int failed;
} pair_list;

static int grow(void **items, size_t *cap, size_t need, size_t size) {
  if (need <= *cap) return 1;
  size_t cap2 = *cap ? *cap * 2 : INITIAL_CAPACITY;
  while (cap2 < need) cap2 *= 2;
  void *p = realloc(*items, cap2 * size);
  if (p == NULL) return 0;
  *items = p;
  *cap = cap2;
  return 1;
}

/* Adds |address| (copied) with |ids|; a no-op once out of memory. */
static void add_pairs(pair_list *l, const char *address, const char *const *ids, size_t n) {
  if (l->failed || n == 0) return;
  char *copy = strdup(address);
  if (copy == NULL ||
      !grow((void **)&l->addresses, &l->cap_addresses, l->num_addresses + 1, sizeof(char *)) ||
      !grow((void **)&l->pairs, &l->cap, l->len + n, sizeof(dest_pair))) {
    free(copy);
    l->failed = 1;
    return;
  }
  l->addresses[l->num_addresses++] = copy;
  for (size_t i = 0; i < n; i++) l->pairs[l->len++] = (dest_pair){copy, ids[i]};
}

/* Adds the endpoints of the address add_pairs added last. */
static void add_endpoints(pair_list *l, const mt_cluster_endpoint *eps, size_t n) {
  if (l->failed || n == 0) return;
  if (!grow((void **)&l->endpoints, &l->cap_endpoints, l->num_endpoints + 1,
            sizeof(service_endpoints))) {
    l->failed = 1;
    return;
  }
  service_endpoints *se = &l->endpoints[l->num_endpoints];
  se->address = l->addresses[l->num_addresses - 1];
  se->msgs = calloc(n, sizeof(*se->msgs));
  se->ptrs = calloc(n, sizeof(*se->ptrs));
  se->texts = calloc(n, ADDRESS_MAX);
  se->n = n;
  l->num_endpoints++; /* freed by pair_list_clear even when incomplete */
  if (se->msgs == NULL || se->ptrs == NULL || se->texts == NULL) {
    l->failed = 1;
    return;
  }
  for (size_t i = 0; i < n; i++) {
    char *text = se->texts + i * ADDRESS_MAX;
    format_address(eps[i].ip, eps[i].port, text, ADDRESS_MAX);
    mtlsd__mesh__v1__endpoint__init(&se->msgs[i]);
    se->msgs[i].address = text;
    se->msgs[i].spiffe_id = (char *)eps[i].spiffe_id;
    se->ptrs[i] = &se->msgs[i];
  }
}

static void on_service_address(void *ctx, const char *ip, uint16_t port, const char *const *ids,
                               size_t num_ids, const mt_cluster_endpoint *eps, size_t num_eps) {
  char address[ADDRESS_MAX];
  format_address(ip, port, address, sizeof(address));
  add_pairs(ctx, address, ids, num_ids); /* none ready: no entry */
  if (num_ids > 0) add_endpoints(ctx, eps, num_eps);
}

static int compare_endpoint_sets(const void *pa, const void *pb) {
  return strcmp(((const service_endpoints *)pa)->address, ((const service_endpoints *)pb)->address);
}

/* The endpoints of |address|, or NULL. */
static const service_endpoints *endpoints_of(const pair_list *l, const char *address) {
  if (l->num_endpoints == 0) return NULL;
  service_endpoints probe = {.address = address};
  return bsearch(&probe, l->endpoints, l->num_endpoints, sizeof(probe), compare_endpoint_sets);
}

static void on_workload_ips(void *ctx, const mt_cluster_workload *w) {
  for (size_t i = 0; i < w->num_ips; i++) add_pairs(ctx, w->ips[i], &w->spiffe_id, 1);
}

static int compare_pairs(const void *pa, const void *pb) {
  const dest_pair *a = pa, *b = pb;
  int c = strcmp(a->address, b->address);
  return c != 0 ? c : strcmp(a->id, b->id);
}

static void pair_list_clear(pair_list *l) {
  for (size_t i = 0; i < l->num_addresses; i++) free(l->addresses[i]);
  free(l->addresses);
  free(l->pairs);
  for (size_t i = 0; i < l->num_endpoints; i++) {
    free(l->endpoints[i].msgs);
    free(l->endpoints[i].ptrs);
    free(l->endpoints[i].texts);
  }
  free(l->endpoints);
}

/* The mesh file's destination addresses, canonical and sorted. */
static char **file_addresses(const Mtlsd__Mesh__V1__MeshSnapshot *file, size_t *n) {
  char **out = calloc(file->n_destinations + 1, sizeof(*out));
  if (out == NULL) return NULL;
  *n = 0;
  for (size_t i = 0; i < file->n_destinations; i++) {
    char canonical[ADDRESS_MAX];
    const char *a = file->destinations[i]->address;
    if (!canonical_address(a, canonical, sizeof(canonical)))
      snprintf(canonical, sizeof(canonical), "%s", a);
    if ((out[*n] = strdup(canonical)) == NULL) {
      for (size_t j = 0; j < *n; j++) free(out[j]);
      free(out);
      return NULL;
    }
    (*n)++;
  }
  if (*n > 1) qsort(out, *n, sizeof(*out), compare_strings);
  return out;
}

/* Destination messages for the sorted pairs, one per address, leaving out
 * the addresses in |overrides|. The messages and their arrays are
 * malloc'd; their strings are borrowed from |l|. */
typedef struct {
  Mtlsd__Mesh__V1__Destination *msgs;
  Mtlsd__Mesh__V1__Destination **ptrs;
  const char **ids;
  size_t n;
} derived_set;

static int group_pairs(const pair_list *l, char **overrides, size_t num_overrides,
                       derived_set *out) {
  memset(out, 0, sizeof(*out));
  out->msgs = calloc(l->len + 1, sizeof(*out->msgs));
  out->ptrs = calloc(l->len + 1, sizeof(*out->ptrs));
  out->ids = calloc(l->len + 1, sizeof(*out->ids));
  if (out->msgs == NULL || out->ptrs == NULL || out->ids == NULL) return 0;
  size_t used_ids = 0;
  for (size_t i = 0; i < l->len;) {
    size_t j = i;
    const char *address = l->pairs[i].address;
    Mtlsd__Mesh__V1__Destination *d = &out->msgs[out->n];
    mtlsd__mesh__v1__destination__init(d);
    d->address = (char *)address;
    d->spiffe_ids = (char **)&out->ids[used_ids];
    for (; j < l->len && strcmp(l->pairs[j].address, address) == 0; j++) {
      if (d->n_spiffe_ids > 0 && strcmp(d->spiffe_ids[d->n_spiffe_ids - 1], l->pairs[j].id) == 0)
        continue; /* the same identity twice (several IPs, several slices) */
      out->ids[used_ids++] = l->pairs[j].id;
      d->n_spiffe_ids++;
    }
    const service_endpoints *eps = endpoints_of(l, address);
    if (eps != NULL) {
      d->endpoints = eps->ptrs;
      d->n_endpoints = eps->n;
    }
    int overridden = num_overrides > 0 && bsearch(&address, overrides, num_overrides,
                                                  sizeof(*overrides), compare_strings) != NULL;
    if (overridden) {
      used_ids -= d->n_spiffe_ids;
    } else {
      out->ptrs[out->n] = d;
      out->n++;
    }
    i = j;
  }
  return 1;
}

static void derived_set_clear(derived_set *s) {
  free(s->msgs);
  free(s->ptrs);
  free(s->ids);
}

/* ---- node workloads ---------------------------------------------------- */

static void node_workload_clear(node_workload *w) {
  free(w->node);
  free(w->msg.spiffe_id);
  for (size_t i = 0; i < w->msg.n_ips; i++) free(w->msg.ips[i]);
  free(w->msg.ips);
  free(w->msg.namespace_);
  free(w->msg.pod);
}

/* Copies one workload into the view; 0 when out of memory. */
static int add_workload(mt_mesh_view *v, const char *node, const char *spiffe_id,
                        const char *const *ips, size_t num_ips, const char *ns, const char *pod) {
  if (!grow((void **)&v->workloads, &v->cap_workloads, v->num_workloads + 1, sizeof(node_workload)))
    return 0;
  node_workload *w = &v->workloads[v->num_workloads];
  memset(w, 0, sizeof(*w));
  mtlsd__mesh__v1__workload__init(&w->msg);
  w->node = strdup(node);
  w->msg.spiffe_id = strdup(spiffe_id);
  w->msg.namespace_ = strdup(ns);
  w->msg.pod = strdup(pod);
  w->msg.ips = calloc(num_ips + 1, sizeof(char *));
  int ok = w->node && w->msg.spiffe_id && w->msg.namespace_ && w->msg.pod && w->msg.ips;
  for (size_t i = 0; ok && i < num_ips; i++)
    ok = (w->msg.ips[w->msg.n_ips++] = strdup(ips[i])) != NULL;
  if (!ok) {
    node_workload_clear(w);
    return 0;
  }
  v->num_workloads++;
  return 1;
}

typedef struct {
  mt_mesh_view *view;
  int failed;
} copy_ctx;

static void on_cluster_workload(void *ctx, const mt_cluster_workload *w) {
  copy_ctx *c = ctx;
  if (!c->failed &&
      !add_workload(c->view, w->node, w->spiffe_id, w->ips, w->num_ips, w->ns, w->pod))
    c->failed = 1;
}

static void on_registry_entry(void *ctx, const char *node, const char *spiffe_id,
                              const char *address) {
  copy_ctx *c = ctx;
  if (c->failed) return;
  if (!add_workload(c->view, node, spiffe_id, &address, address != NULL, "", "")) c->failed = 1;
}

static int compare_workloads(const void *pa, const void *pb) {
  const node_workload *a = pa, *b = pb;
  int c = strcmp(a->node, b->node);
  if (c == 0) c = strcmp(a->msg.spiffe_id, b->msg.spiffe_id);
  if (c == 0) c = strcmp(a->msg.pod, b->msg.pod);
  if (c == 0) c = strcmp(a->msg.n_ips ? a->msg.ips[0] : "", b->msg.n_ips ? b->msg.ips[0] : "");
  return c;
}

static int copy_workloads(mt_mesh_view *v, const mt_mesh_view_inputs *in) {
  copy_ctx c = {v, 0};
  if (in->cluster != NULL) {
    v->has_workload_source = 1;
    mt_cluster_state_foreach_workload(in->cluster, on_cluster_workload, &c);
  } else if (in->workloads != NULL) {
    v->has_workload_source = 1;
    mt_workloads_foreach(in->workloads, on_registry_entry, &c);
  }
  if (c.failed) return 0;
  if (v->num_workloads > 1)
    qsort(v->workloads, v->num_workloads, sizeof(*v->workloads), compare_workloads);
  return 1;
}

/* The first workload of |node| (or num_workloads). */
static size_t first_on_node(const mt_mesh_view *v, const char *node) {
  size_t lo = 0, hi = v->num_workloads;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (strcmp(v->workloads[mid].node, node) < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* ---- workload policies ------------------------------------------------- */

static int compare_policies(const void *pa, const void *pb) {
  const Mtlsd__Mesh__V1__WorkloadPolicy *a = *(const Mtlsd__Mesh__V1__WorkloadPolicy *const *)pa;
  const Mtlsd__Mesh__V1__WorkloadPolicy *b = *(const Mtlsd__Mesh__V1__WorkloadPolicy *const *)pb;
  return strcmp(a->spiffe_id, b->spiffe_id);
}

static const Mtlsd__Mesh__V1__WorkloadPolicy *policy_of(const mt_mesh_view *v, const char *id) {
  size_t lo = 0, hi = v->num_policies;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    int c = strcmp(v->policies[mid]->spiffe_id, id);
    if (c == 0) return v->policies[mid];
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

/* Appends one line to the notes; 0 when out of memory. */
static int add_note(mt_mesh_view *v, const char *line) {
  size_t old = v->notes != NULL ? strlen(v->notes) : 0, add = strlen(line);
  char *grown = realloc(v->notes, old + add + 1);
  if (grown == NULL) return 0;
  memcpy(grown + old, line, add + 1);
  v->notes = grown;
  return 1;
}

/* The mesh file's policies, then (with Istio policies) the compiled ones,
 * which replace the file's entry of an identity they cover. */
static int index_policies(mt_mesh_view *v, const mt_mesh_view_inputs *in) {
  const Mtlsd__Mesh__V1__MeshSnapshot *file = mt_mesh_file_message(in->mesh);
  char err[MT_MESH_VIEW_ERR_MAX];
  if (in->istio != NULL && in->cluster != NULL &&
      (v->istio = mt_istio_identities_build(in->istio, in->cluster, err, sizeof(err))) == NULL)
    return 0;
  size_t num_istio = v->istio != NULL ? mt_istio_identities_count(v->istio) : 0;
  v->policies = calloc(file->n_workload_policies + num_istio + 1, sizeof(*v->policies));
  if (v->policies == NULL || !add_note(v, "")) return 0;
  if (v->istio != NULL && !add_note(v, mt_istio_identities_notes(v->istio))) return 0;
  for (size_t i = 0; i < file->n_workload_policies; i++) {
    const Mtlsd__Mesh__V1__WorkloadPolicy *p = file->workload_policies[i];
    if (v->istio != NULL && mt_istio_identities_find(v->istio, p->spiffe_id) != NULL) {
      char line[MT_MESH_VIEW_ERR_MAX + 128];
      snprintf(line, sizeof(line),
               "istio policies: the mesh file's workload_policies entry for %.200s is replaced "
               "by what the Istio policies compile to\n",
               p->spiffe_id);
      if (!add_note(v, line)) return 0;
      continue;
    }
    v->policies[v->num_policies++] = p;
  }
  for (size_t i = 0; i < num_istio; i++)
    v->policies[v->num_policies++] = mt_istio_identities_get(v->istio, i);
  if (v->num_policies > 1)
    qsort(v->policies, v->num_policies, sizeof(*v->policies), compare_policies);
  return 1;
}

/* ---- the shared part --------------------------------------------------- */

/* Encodes bundles, policy and every destination (the file's, then the
 * derived ones not overridden). */
static int encode_shared(mt_mesh_view *v, const mt_mesh_view_inputs *in, char *err,
                         size_t err_len) {
  const Mtlsd__Mesh__V1__MeshSnapshot *file = mt_mesh_file_message(in->mesh);
  pair_list pairs;
  memset(&pairs, 0, sizeof(pairs));
  derived_set derived;
  memset(&derived, 0, sizeof(derived));
  size_t num_overrides = 0;
  char **overrides = NULL;
  Mtlsd__Mesh__V1__Destination **all = NULL;
  int ok = 1;
  if (in->cluster != NULL) {
    ok = mt_cluster_state_foreach_service_address(in->cluster, on_service_address, &pairs);
    mt_cluster_state_foreach_workload(in->cluster, on_workload_ips, &pairs);
    ok = ok && !pairs.failed;
    if (ok && pairs.len > 1) qsort(pairs.pairs, pairs.len, sizeof(*pairs.pairs), compare_pairs);
    if (ok && pairs.num_endpoints > 1)
      qsort(pairs.endpoints, pairs.num_endpoints, sizeof(*pairs.endpoints), compare_endpoint_sets);
    ok = ok && (overrides = file_addresses(file, &num_overrides)) != NULL;
    ok = ok && group_pairs(&pairs, overrides, num_overrides, &derived);
  }
  if (ok) ok = (all = calloc(file->n_destinations + derived.n + 1, sizeof(*all))) != NULL;
  if (ok) {
    Mtlsd__Mesh__V1__MeshSnapshot snap = *file; /* shallow: the parts stay the file's */
    snap.version = (char *)protobuf_c_empty_string;
    snap.n_workload_policies = 0;
    snap.workload_policies = NULL;
    snap.node_workloads = NULL;
    /* Either array may be NULL when empty (memcpy must not see that). */
    for (size_t i = 0; i < file->n_destinations; i++) all[i] = file->destinations[i];
    for (size_t i = 0; i < derived.n; i++) all[file->n_destinations + i] = derived.ptrs[i];
    snap.destinations = all;
    snap.n_destinations = file->n_destinations + derived.n;
    v->num_derived = derived.n;
    v->shared_len = mtlsd__mesh__v1__mesh_snapshot__get_packed_size(&snap);
    if (v->shared_len > v->max_bytes) {
      snprintf(err, err_len,
               "the shared part of the snapshot would be %zu bytes (%zu destinations, %zu "
               "derived from the cluster); agents accept at most %zu",
               v->shared_len, snap.n_destinations, derived.n, v->max_bytes);
      ok = 0;
    } else if ((v->shared = malloc(v->shared_len + 1)) == NULL) {
      ok = 0;
    } else {
      mtlsd__mesh__v1__mesh_snapshot__pack(&snap, v->shared);
      SHA256_Init(&v->shared_hash);
      SHA256_Update(&v->shared_hash, v->shared, v->shared_len);
      char why[MT_MESH_VIEW_ERR_MAX];
      v->shared_entries = mt_mesh_entries_parse(v->shared, v->shared_len, why, sizeof(why));
    }
  }
  if (!ok && err[0] == '\0') snprintf(err, err_len, "out of memory building the snapshot");
  free(all);
  derived_set_clear(&derived);
  for (size_t i = 0; i < num_overrides; i++) free(overrides[i]);
  free(overrides);
  pair_list_clear(&pairs);
  return ok;
}

static int compare_aliases(const void *pa, const void *pb) {
  return strcmp(((const address_alias *)pa)->canonical, ((const address_alias *)pb)->canonical);
}

/* What callers with destinations on demand need of the view: the shared
 * part without destinations, and the mesh file's addresses that are not
 * written canonically. */
static int index_for_on_demand(mt_mesh_view *v) {
  v->base =
      mt_mesh_entries_encode_except(v->shared_entries, MT_MESH_FIELD_DESTINATIONS, &v->base_len);
  const Mtlsd__Mesh__V1__MeshSnapshot *file = mt_mesh_file_message(v->mesh);
  v->aliases = calloc(file->n_destinations + 1, sizeof(*v->aliases));
  if (v->base == NULL || v->aliases == NULL) return 0;
  for (size_t i = 0; i < file->n_destinations; i++) {
    address_alias *a = &v->aliases[v->num_aliases];
    const char *text = file->destinations[i]->address;
    if (!canonical_any(text, a->canonical, sizeof(a->canonical)) || strcmp(a->canonical, text) == 0)
      continue;
    a->as_sent = text;
    v->num_aliases++;
  }
  if (v->num_aliases > 1) qsort(v->aliases, v->num_aliases, sizeof(*v->aliases), compare_aliases);
  return 1;
}

mt_mesh_view *mt_mesh_view_new(const mt_mesh_view_inputs *in, char *err, size_t err_len) {
  if (err_len > 0) err[0] = '\0';
  mt_mesh_view *v = calloc(1, sizeof(*v));
  if (v == NULL) {
    snprintf(err, err_len, "out of memory building the snapshot");
    return NULL;
  }
  v->mesh = in->mesh;
  v->max_bytes = in->max_bytes ? in->max_bytes : (size_t)MT_MESH_SNAPSHOT_MAX_BYTES;
  int ok = index_policies(v, in) && copy_workloads(v, in);
  if (!ok) snprintf(err, err_len, "out of memory building the snapshot");
  if (ok) ok = encode_shared(v, in, err, err_len);
  if (ok && v->shared_entries != NULL && !index_for_on_demand(v)) {
    snprintf(err, err_len, "out of memory building the snapshot");
    ok = 0;
  }
  if (!ok) {
    mt_mesh_view_free(v);
    return NULL;
  }
  return v;
}

void mt_mesh_view_free(mt_mesh_view *v) {
  if (v == NULL) return;
  for (size_t i = 0; i < v->num_workloads; i++) node_workload_clear(&v->workloads[i]);
  free(v->workloads);
  free(v->policies);
  mt_istio_identities_free(v->istio);
  free(v->notes);
  free(v->shared);
  mt_mesh_entries_free(v->shared_entries);
  free(v->base);
  free(v->aliases);
  free(v);
}

size_t mt_mesh_view_shared_len(const mt_mesh_view *v) { return v->shared_len; }

const char *mt_mesh_view_policy_notes(const mt_mesh_view *v) { return v->notes; }

size_t mt_mesh_view_num_derived_destinations(const mt_mesh_view *v) { return v->num_derived; }

const mt_mesh_entries *mt_mesh_view_shared_entries(const mt_mesh_view *v) {
  return v->shared_entries;
}

void mt_mesh_view_shared_digest(const mt_mesh_view *v, uint8_t out[MT_MESH_DIGEST_LEN]) {
  SHA256_CTX hash = v->shared_hash;
  SHA256_Final(out, &hash);
}

/* ---- one caller -------------------------------------------------------- */

static int is_scoped_node_agent(const mt_mesh_caller *c) {
  return c->node_agent && c->node_name != NULL && c->node_name[0] != '\0';
}

/* The caller's own fields, encoded into |s->own|. */
static int encode_own(const mt_mesh_view *v, const mt_mesh_caller *caller,
                      mt_mesh_view_snapshot *s) {
  Mtlsd__Mesh__V1__MeshSnapshot own = MTLSD__MESH__V1__MESH_SNAPSHOT__INIT;
  Mtlsd__Mesh__V1__NodeWorkloads nw = MTLSD__MESH__V1__NODE_WORKLOADS__INIT;
  size_t first = 0, end = 0;
  int node_agent = is_scoped_node_agent(caller);
  if (node_agent) {
    first = first_on_node(v, caller->node_name);
    for (end = first; end < v->num_workloads; end++)
      if (strcmp(v->workloads[end].node, caller->node_name) != 0) break;
  }
  size_t room = node_agent ? end - first : 1;
  Mtlsd__Mesh__V1__WorkloadPolicy **policies = calloc(room + 1, sizeof(*policies));
  Mtlsd__Mesh__V1__Workload **workloads = calloc(room + 1, sizeof(*workloads));
  int ok = policies != NULL && workloads != NULL;
  if (ok && node_agent) {
    /* Workloads of one node are sorted by identity: repeats are adjacent. */
    for (size_t i = first; i < end; i++) {
      const node_workload *w = &v->workloads[i];
      /* Without an IP the agent could not tell the workload's traffic. */
      if (w->msg.n_ips > 0) workloads[nw.n_workloads++] = (Mtlsd__Mesh__V1__Workload *)&w->msg;
      if (i > first && strcmp(v->workloads[i - 1].msg.spiffe_id, w->msg.spiffe_id) == 0) continue;
      const Mtlsd__Mesh__V1__WorkloadPolicy *p = policy_of(v, w->msg.spiffe_id);
      if (p != NULL) policies[own.n_workload_policies++] = (Mtlsd__Mesh__V1__WorkloadPolicy *)p;
    }
    nw.node_name = (char *)caller->node_name;
    nw.workloads = workloads;
    if (v->has_workload_source) own.node_workloads = &nw;
  } else if (ok) {
    const Mtlsd__Mesh__V1__WorkloadPolicy *p = policy_of(v, caller->spiffe_id);
    if (p != NULL) policies[own.n_workload_policies++] = (Mtlsd__Mesh__V1__WorkloadPolicy *)p;
  }
  own.workload_policies = policies;
  if (ok) {
    s->own_len = mtlsd__mesh__v1__mesh_snapshot__get_packed_size(&own);
    ok = (s->own = malloc(s->own_len + 1)) != NULL;
    if (ok) mtlsd__mesh__v1__mesh_snapshot__pack(&own, s->own);
  }
  free(policies);
  free(workloads);
  return ok;
}

/* ---- destinations on demand ----------------------------------------- */

typedef struct {
  const uint8_t *bytes;
  size_t len;
} entry_ref;

static int compare_entry_refs(const void *pa, const void *pb) {
  const uint8_t *a = ((const entry_ref *)pa)->bytes, *b = ((const entry_ref *)pb)->bytes;
  return a < b ? -1 : a > b;
}

/* The encoded destination entry at |canonical| ("ip:port" or an IP alone),
 * or NULL. */
static const uint8_t *find_destination(const mt_mesh_view *v, const char *canonical, size_t *len) {
  address_alias probe;
  snprintf(probe.canonical, sizeof(probe.canonical), "%s", canonical);
  const address_alias *alias =
      bsearch(&probe, v->aliases, v->num_aliases, sizeof(probe), compare_aliases);
  const char *key = alias != NULL ? alias->as_sent : canonical;
  return mt_mesh_entries_find(v->shared_entries, MT_MESH_FIELD_DESTINATIONS, key, strlen(key), len);
}

/* The IP of a canonical "ip:port" (brackets dropped). */
static void ip_of(const char *address, char out[ADDRESS_MAX]) {
  const char *colon = strrchr(address, ':');
  size_t n = colon != NULL ? (size_t)(colon - address) : strlen(address);
  if (address[0] == '[' && n >= 2) {
    address++;
    n -= 2;
  }
  if (n >= ADDRESS_MAX) n = ADDRESS_MAX - 1;
  memcpy(out, address, n);
  out[n] = '\0';
}

void mt_mesh_view_address_ip(const char *address, char out[MT_MESH_ADDRESS_MAX]) {
  ip_of(address, out);
}

/* The destination entries of |caller|'s wanted addresses (each entry once,
 * in the view's order), and its wanted addresses that have none. */
static int select_wanted(const mt_mesh_view *v, const mt_mesh_caller *caller, entry_ref **found,
                         size_t *num_found, const char ***unresolved, size_t *num_unresolved) {
  *found = calloc(2 * caller->num_wanted + 1, sizeof(**found));
  *unresolved = calloc(caller->num_wanted + 1, sizeof(**unresolved));
  if (*found == NULL || *unresolved == NULL) return 0;
  for (size_t i = 0; i < caller->num_wanted; i++) {
    char ip[ADDRESS_MAX];
    size_t len = 0;
    int any = 0;
    ip_of(caller->wanted[i], ip);
    const char *keys[2] = {caller->wanted[i], ip};
    for (size_t k = 0; k < 2; k++) {
      const uint8_t *bytes = find_destination(v, keys[k], &len);
      if (bytes == NULL) continue;
      (*found)[(*num_found)++] = (entry_ref){bytes, len};
      any = 1;
    }
    if (!any) (*unresolved)[(*num_unresolved)++] = caller->wanted[i];
  }
  /* Two ports of one IP find its IP-alone entry twice. */
  if (*num_found > 1) qsort(*found, *num_found, sizeof(**found), compare_entry_refs);
  size_t kept = 0;
  for (size_t i = 0; i < *num_found; i++)
    if (kept == 0 || (*found)[kept - 1].bytes != (*found)[i].bytes) (*found)[kept++] = (*found)[i];
  *num_found = kept;
  return 1;
}

/* A caller's whole content when its destinations are on demand: the view's
 * base, its destinations, its own fields (|own|), the flag and its
 * unresolved addresses. */
static uint8_t *encode_on_demand(const mt_mesh_view *v, const mt_mesh_caller *caller,
                                 const uint8_t *own, size_t own_len, size_t *len) {
  entry_ref *found = NULL;
  const char **unresolved = NULL;
  size_t num_found = 0, num_unresolved = 0;
  uint8_t *out = NULL;
  if (select_wanted(v, caller, &found, &num_found, &unresolved, &num_unresolved)) {
    Mtlsd__Mesh__V1__MeshSnapshot tail = MTLSD__MESH__V1__MESH_SNAPSHOT__INIT;
    Mtlsd__Mesh__V1__UnresolvedDestination *items = calloc(num_unresolved + 1, sizeof(*items));
    Mtlsd__Mesh__V1__UnresolvedDestination **ptrs = calloc(num_unresolved + 1, sizeof(*ptrs));
    size_t tail_len = 0;
    if (items != NULL && ptrs != NULL) {
      for (size_t i = 0; i < num_unresolved; i++) {
        mtlsd__mesh__v1__unresolved_destination__init(&items[i]);
        items[i].address = (char *)unresolved[i];
        ptrs[i] = &items[i];
      }
      tail.on_demand_destinations = 1;
      tail.unresolved = ptrs;
      tail.n_unresolved = num_unresolved;
      tail_len = mtlsd__mesh__v1__mesh_snapshot__get_packed_size(&tail);
      *len = v->base_len + own_len + tail_len;
      for (size_t i = 0; i < num_found; i++) *len += found[i].len;
      out = malloc(*len + 1);
    }
    if (out != NULL) {
      size_t at = 0;
      memcpy(out, v->base, v->base_len);
      at += v->base_len;
      for (size_t i = 0; i < num_found; i++) {
        memcpy(out + at, found[i].bytes, found[i].len);
        at += found[i].len;
      }
      if (own_len) memcpy(out + at, own, own_len);
      mtlsd__mesh__v1__mesh_snapshot__pack(&tail, out + at + own_len);
    }
    free(items);
    free(ptrs);
  }
  free(found);
  free(unresolved);
  return out;
}

mt_mesh_view_snapshot *mt_mesh_view_for(const mt_mesh_view *v, const mt_mesh_caller *caller,
                                        char *err, size_t err_len) {
  mt_mesh_view_snapshot *s = calloc(1, sizeof(*s));
  int ok = s != NULL && encode_own(v, caller, s);
  if (ok) {
    s->view = v;
    s->has_shared = !caller->on_demand || v->shared_entries == NULL;
  }
  if (ok && !s->has_shared) {
    size_t len = 0;
    uint8_t *whole = encode_on_demand(v, caller, s->own, s->own_len, &len);
    ok = whole != NULL;
    if (ok) {
      free(s->own);
      s->own = whole;
      s->own_len = len;
    }
  }
  if (!ok) {
    snprintf(err, err_len, "out of memory building the snapshot for %s", caller->spiffe_id);
    mt_mesh_view_snapshot_free(s);
    return NULL;
  }
  size_t total = mt_mesh_view_snapshot_len(s);
  if (total > v->max_bytes) {
    snprintf(err, err_len,
             "the snapshot for %s would be %zu bytes (%zu of them its own); agents accept at "
             "most %zu",
             caller->spiffe_id, total, s->own_len, v->max_bytes);
    mt_mesh_view_snapshot_free(s);
    return NULL;
  }
  SHA256_CTX hash;
  if (s->has_shared)
    hash = v->shared_hash;
  else
    SHA256_Init(&hash);
  SHA256_Update(&hash, s->own, s->own_len);
  SHA256_Final(s->digest, &hash);
  return s;
}

int mt_mesh_view_snapshot_has_shared(const mt_mesh_view_snapshot *s) { return s->has_shared; }

int mt_mesh_view_own_digest(const mt_mesh_view *v, const mt_mesh_caller *caller,
                            uint8_t out[MT_MESH_DIGEST_LEN]) {
  mt_mesh_view_snapshot s;
  memset(&s, 0, sizeof(s));
  if (!encode_own(v, caller, &s)) return 0;
  SHA256(s.own, s.own_len, out);
  free(s.own);
  return 1;
}

void mt_mesh_view_snapshot_free(mt_mesh_view_snapshot *s) {
  if (s == NULL) return;
  free(s->own);
  free(s);
}

const uint8_t *mt_mesh_view_snapshot_digest(const mt_mesh_view_snapshot *s) { return s->digest; }

size_t mt_mesh_view_snapshot_len(const mt_mesh_view_snapshot *s) {
  return (s->has_shared ? s->view->shared_len : 0) + s->own_len;
}

const uint8_t *mt_mesh_view_snapshot_own(const mt_mesh_view_snapshot *s, size_t *len) {
  *len = s->own_len;
  return s->own;
}

uint8_t *mt_mesh_view_snapshot_encode(const mt_mesh_view_snapshot *s, const char *version,
                                      size_t *len) {
  Mtlsd__Mesh__V1__MeshSnapshot head = MTLSD__MESH__V1__MESH_SNAPSHOT__INIT;
  head.version = (char *)version;
  size_t head_len = mtlsd__mesh__v1__mesh_snapshot__get_packed_size(&head);
  const mt_mesh_view *v = s->view;
  size_t shared_len = s->has_shared ? v->shared_len : 0;
  *len = head_len + shared_len + s->own_len;
  uint8_t *out = malloc(*len + 1);
  if (out == NULL) return NULL;
  mtlsd__mesh__v1__mesh_snapshot__pack(&head, out);
  if (shared_len) memcpy(out + head_len, v->shared, shared_len);
  if (s->own_len) memcpy(out + head_len + shared_len, s->own, s->own_len);
  return out;
}
