#include "controlplane/istio_identities.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
  SERVICES_ON_STACK = 16,
  PODS_NAMED_MAX = 4, /* pods named in a conflict's text; more are counted */
  TEXT_MAX = 1024,
};

/* One workload's compilation, before grouping by identity. The strings
 * are copies: the cluster state is not read after the build. */
typedef struct {
  char *spiffe_id;
  char *pod; /* "ns/name" */
  mt_istio_compiled *compiled;
  uint8_t *packed; /* policy then peer authentication, to compare */
  size_t packed_len;
} compiled_pod;

/* One identity's entry. |compiled| is borrowed into |msg| (NULL for a
 * conflict, whose parts are the entry's own). */
typedef struct {
  Mtlsd__Mesh__V1__WorkloadPolicy msg;
  mt_istio_compiled *compiled;
  Mtlsd__Mesh__V1__Policy deny_all;
  Mtlsd__Mesh__V1__Rule rule;
  Mtlsd__Mesh__V1__Rule *rules[1];
  Mtlsd__Mesh__V1__PeerAuthentication strict;
  char *reduced;
} identity_entry;

struct mt_istio_identities {
  identity_entry *entries;
  size_t num_entries;
  char *notes;
};

typedef struct {
  const mt_istio_policies *policies;
  const mt_cluster_state *cluster;
  compiled_pod *pods;
  size_t num_pods, cap_pods;
  int failed;
} build_ctx;

static uint8_t *pack_compiled(const mt_istio_compiled *c, size_t *len) {
  const Mtlsd__Mesh__V1__Policy *p = mt_istio_compiled_policy(c);
  const Mtlsd__Mesh__V1__PeerAuthentication *pa = mt_istio_compiled_peer_authentication(c);
  size_t a = mtlsd__mesh__v1__policy__get_packed_size(p);
  size_t b = mtlsd__mesh__v1__peer_authentication__get_packed_size(pa);
  uint8_t *out = malloc(a + b + 1);
  if (out == NULL) return NULL;
  mtlsd__mesh__v1__policy__pack(p, out);
  mtlsd__mesh__v1__peer_authentication__pack(pa, out + a);
  *len = a + b;
  return out;
}

static void compiled_pod_clear(compiled_pod *p) {
  free(p->spiffe_id);
  free(p->pod);
  mt_istio_compiled_free(p->compiled);
  free(p->packed);
}

/* Compiles one workload with the Services that select it. */
static void on_workload(void *ctx, const mt_cluster_workload *w) {
  build_ctx *b = ctx;
  if (b->failed) return;
  if (b->num_pods == b->cap_pods) {
    size_t cap = b->cap_pods ? 2 * b->cap_pods : 64;
    compiled_pod *grown = realloc(b->pods, cap * sizeof(*grown));
    if (grown == NULL) {
      b->failed = 1;
      return;
    }
    b->pods = grown;
    b->cap_pods = cap;
  }
  const char *on_stack[SERVICES_ON_STACK];
  const char **services = on_stack;
  size_t n = mt_cluster_state_services_selecting(b->cluster, w, on_stack, SERVICES_ON_STACK);
  if (n > SERVICES_ON_STACK) {
    services = calloc(n, sizeof(*services));
    if (services == NULL) {
      b->failed = 1;
      return;
    }
    mt_cluster_state_services_selecting(b->cluster, w, services, n);
  }
  mt_istio_workload iw = {w->ns, w->labels, w->num_labels, services, n};
  compiled_pod *p = &b->pods[b->num_pods];
  memset(p, 0, sizeof(*p));
  p->compiled = mt_istio_compile(b->policies, &iw);
  if (services != on_stack) free(services);
  size_t pod_len = strlen(w->ns) + strlen(w->pod) + 2;
  p->spiffe_id = strdup(w->spiffe_id);
  p->pod = malloc(pod_len);
  if (p->pod != NULL) snprintf(p->pod, pod_len, "%s/%s", w->ns, w->pod);
  if (p->compiled != NULL) p->packed = pack_compiled(p->compiled, &p->packed_len);
  if (p->spiffe_id == NULL || p->pod == NULL || p->packed == NULL) {
    compiled_pod_clear(p);
    b->failed = 1;
    return;
  }
  b->num_pods++;
}

static int compare_pods(const void *pa, const void *pb) {
  const compiled_pod *a = pa, *b = pb;
  int c = strcmp(a->spiffe_id, b->spiffe_id);
  return c != 0 ? c : strcmp(a->pod, b->pod);
}

static int same_compilation(const compiled_pod *a, const compiled_pod *b) {
  return a->packed_len == b->packed_len && memcmp(a->packed, b->packed, a->packed_len) == 0;
}

/* Appends |line| to the growing |*text|; 0 when out of memory. */
static int append(char **text, const char *line) {
  size_t old = *text != NULL ? strlen(*text) : 0, add = strlen(line);
  char *grown = realloc(*text, old + add + 1);
  if (grown == NULL) return 0;
  memcpy(grown + old, line, add + 1);
  *text = grown;
  return 1;
}

/* The pods [first, end) of one identity, which disagree: a fail-closed
 * entry and its note. */
static int make_conflict(identity_entry *e, const compiled_pod *pods, size_t first, size_t end,
                         char **notes) {
  char names[TEXT_MAX] = "";
  size_t used = 0;
  for (size_t i = first; i < end && i - first < PODS_NAMED_MAX; i++)
    used += (size_t)snprintf(names + used, used < sizeof(names) ? sizeof(names) - used : 0, "%s%s",
                             i > first ? ", " : "", pods[i].pod);
  if (end - first > PODS_NAMED_MAX && used < sizeof(names))
    snprintf(names + used, sizeof(names) - used, " and %zu more", end - first - PODS_NAMED_MAX);
  char text[2 * TEXT_MAX];
  snprintf(text, sizeof(text),
           "pods %s share the identity %s but different Istio policies select them; mtlsd keys "
           "policy by service account (give them distinct service accounts): denying everything "
           "to that identity until they agree",
           names, e->msg.spiffe_id);
  e->reduced = strdup(text);
  if (e->reduced == NULL) return 0;
  mtlsd__mesh__v1__rule__init(&e->rule);
  e->rule.name = (char *)MT_ISTIO_CONFLICT_RULE;
  e->rule.action = MTLSD__MESH__V1__ACTION__DENY;
  e->rule.istio = 1; /* no source, operation or condition: matches every peer */
  e->rule.reduced = e->reduced;
  e->rules[0] = &e->rule;
  mtlsd__mesh__v1__policy__init(&e->deny_all);
  e->deny_all.default_action = MTLSD__MESH__V1__ACTION__DENY;
  e->deny_all.rules = e->rules;
  e->deny_all.n_rules = 1;
  mtlsd__mesh__v1__peer_authentication__init(&e->strict);
  e->strict.mode = MTLSD__MESH__V1__MTLS_MODE__STRICT;
  e->strict.source = (char *)MT_ISTIO_CONFLICT_RULE;
  e->msg.policy = &e->deny_all;
  e->msg.peer_authentication = &e->strict;
  char line[2 * TEXT_MAX + 64];
  snprintf(line, sizeof(line), "istio policies: %s\n", text);
  return append(notes, line);
}

/* Groups the sorted pods by identity into |ids|' entries. */
static int group(mt_istio_identities *ids, compiled_pod *pods, size_t n) {
  ids->entries = calloc(n + 1, sizeof(*ids->entries));
  if (ids->entries == NULL) return 0;
  for (size_t i = 0; i < n;) {
    size_t end = i + 1, agree = 1;
    for (; end < n && strcmp(pods[end].spiffe_id, pods[i].spiffe_id) == 0; end++)
      if (!same_compilation(&pods[i], &pods[end])) agree = 0;
    identity_entry *e = &ids->entries[ids->num_entries++];
    mtlsd__mesh__v1__workload_policy__init(&e->msg);
    e->msg.spiffe_id = pods[i].spiffe_id;
    pods[i].spiffe_id = NULL; /* taken */
    if (agree) {
      e->compiled = pods[i].compiled;
      pods[i].compiled = NULL; /* taken */
      e->msg.policy = (Mtlsd__Mesh__V1__Policy *)mt_istio_compiled_policy(e->compiled);
      e->msg.peer_authentication =
          (Mtlsd__Mesh__V1__PeerAuthentication *)mt_istio_compiled_peer_authentication(e->compiled);
    } else if (!make_conflict(e, pods, i, end, &ids->notes)) {
      return 0;
    }
    i = end;
  }
  return 1;
}

mt_istio_identities *mt_istio_identities_build(const mt_istio_policies *policies,
                                               const mt_cluster_state *cluster, char *err,
                                               size_t err_len) {
  mt_istio_identities *ids = calloc(1, sizeof(*ids));
  build_ctx b = {policies, cluster, NULL, 0, 0, ids == NULL};
  if (!b.failed) mt_cluster_state_foreach_workload(cluster, on_workload, &b);
  if (!b.failed && b.num_pods > 1) qsort(b.pods, b.num_pods, sizeof(*b.pods), compare_pods);
  int ok = !b.failed && group(ids, b.pods, b.num_pods) && append(&ids->notes, "");
  for (size_t i = 0; i < b.num_pods; i++) compiled_pod_clear(&b.pods[i]);
  free(b.pods);
  if (!ok) {
    snprintf(err, err_len, "out of memory compiling the Istio policies");
    mt_istio_identities_free(ids);
    return NULL;
  }
  return ids;
}

void mt_istio_identities_free(mt_istio_identities *ids) {
  if (ids == NULL) return;
  for (size_t i = 0; i < ids->num_entries; i++) {
    identity_entry *e = &ids->entries[i];
    free(e->msg.spiffe_id);
    mt_istio_compiled_free(e->compiled);
    free(e->reduced);
  }
  free(ids->entries);
  free(ids->notes);
  free(ids);
}

size_t mt_istio_identities_count(const mt_istio_identities *ids) { return ids->num_entries; }

const Mtlsd__Mesh__V1__WorkloadPolicy *mt_istio_identities_get(const mt_istio_identities *ids,
                                                               size_t index) {
  return &ids->entries[index].msg;
}

const Mtlsd__Mesh__V1__WorkloadPolicy *mt_istio_identities_find(const mt_istio_identities *ids,
                                                                const char *spiffe_id) {
  size_t lo = 0, hi = ids->num_entries;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    int c = strcmp(ids->entries[mid].msg.spiffe_id, spiffe_id);
    if (c == 0) return &ids->entries[mid].msg;
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

const char *mt_istio_identities_notes(const mt_istio_identities *ids) { return ids->notes; }
