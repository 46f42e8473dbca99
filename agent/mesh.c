/* mesh.c: refcounted policy + destination identities. */
#include "agent/mesh.h"

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* One destination, keyed for binary search: family, address bytes, port
 * (0 = every port), so that "ip:port" and "ip alone" of one address sit side
 * by side and both are found with one comparison function. */
enum { KEY_LEN = 1 + 16 + 2 }; /* family, address, port */

typedef struct {
  uint8_t key[KEY_LEN];
  mt_sockaddr address;
  char **ids;
  size_t num_ids;
  mt_service_endpoint *endpoints; /* a Service address's, in the order sent */
  size_t num_endpoints;
} mesh_destination;

/* The destinations and version, shared by the views of one snapshot (the
 * general one and each workload's). */
typedef struct {
  atomic_int refs;
  char *version;
  mesh_destination *destinations; /* sorted by key */
  size_t num_destinations;
  size_t num_endpoints; /* over every destination */
} dest_table;

struct mt_mesh {
  atomic_int refs;
  mt_policy *policy;
  dest_table *table;
};

static void make_key(const struct sockaddr *sa, uint16_t port, uint8_t key[KEY_LEN]) {
  memset(key, 0, KEY_LEN);
  if (sa->sa_family == AF_INET) {
    key[0] = 4;
    memcpy(key + 1, &((const struct sockaddr_in *)sa)->sin_addr, 4);
  } else if (sa->sa_family == AF_INET6) {
    key[0] = 6;
    memcpy(key + 1, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
  }
  key[KEY_LEN - 2] = (uint8_t)(port >> 8);
  key[KEY_LEN - 1] = (uint8_t)port;
}

static int compare_destinations(const void *a, const void *b) {
  return memcmp(((const mesh_destination *)a)->key, ((const mesh_destination *)b)->key, KEY_LEN);
}

static void table_unref(dest_table *t) {
  if (t == NULL || atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1) return;
  for (size_t i = 0; i < t->num_destinations; i++) {
    mesh_destination *d = &t->destinations[i];
    for (size_t j = 0; j < d->num_ids; j++) free(d->ids[j]);
    free(d->ids);
    for (size_t j = 0; j < d->num_endpoints; j++) free(d->endpoints[j].spiffe_id);
    free(d->endpoints);
  }
  free(t->destinations);
  free(t->version);
  free(t);
}

static void mesh_destroy(mt_mesh *m) {
  table_unref(m->table);
  mt_policy_free(m->policy);
  free(m);
}

static int copy_destination(mesh_destination *to, const mt_destination_config *from) {
  to->address = from->address;
  make_key((const struct sockaddr *)&from->address.addr,
           mt_sockaddr_port((const struct sockaddr *)&from->address.addr), to->key);
  to->ids = calloc(from->num_spiffe_ids + 1, sizeof(*to->ids));
  to->endpoints = calloc(from->num_endpoints + 1, sizeof(*to->endpoints));
  if (to->ids == NULL || to->endpoints == NULL) return 0;
  for (size_t j = 0; j < from->num_spiffe_ids; j++) {
    if ((to->ids[j] = strdup(from->spiffe_ids[j])) == NULL) return 0;
    to->num_ids = j + 1;
  }
  for (size_t j = 0; j < from->num_endpoints; j++) {
    to->endpoints[j].address = from->endpoints[j].address;
    if ((to->endpoints[j].spiffe_id = strdup(from->endpoints[j].spiffe_id)) == NULL) return 0;
    to->num_endpoints = j + 1;
  }
  return 1;
}

static dest_table *table_new(const char *version, const mt_destination_config *destinations,
                             size_t num_destinations) {
  dest_table *t = calloc(1, sizeof(*t));
  if (t == NULL) return NULL;
  atomic_init(&t->refs, 1);
  t->version = strdup(version);
  t->destinations = calloc(num_destinations + 1, sizeof(*t->destinations));
  int ok = t->version != NULL && t->destinations != NULL;
  for (size_t i = 0; ok && i < num_destinations; i++) {
    t->num_destinations = i + 1;
    ok = copy_destination(&t->destinations[i], &destinations[i]);
    t->num_endpoints += destinations[i].num_endpoints;
  }
  if (!ok) {
    table_unref(t);
    return NULL;
  }
  qsort(t->destinations, t->num_destinations, sizeof(*t->destinations), compare_destinations);
  return t;
}

/* Takes |policy| and |table| (both released on failure). */
static mt_mesh *mesh_of(mt_policy *policy, dest_table *table) {
  mt_mesh *m = table != NULL ? calloc(1, sizeof(*m)) : NULL;
  if (m == NULL) {
    mt_policy_free(policy);
    table_unref(table);
    return NULL;
  }
  atomic_init(&m->refs, 1);
  m->policy = policy;
  m->table = table;
  return m;
}

mt_mesh *mt_mesh_new(const char *version, mt_policy *policy,
                     const mt_destination_config *destinations, size_t num_destinations) {
  return mesh_of(policy, table_new(version, destinations, num_destinations));
}

mt_mesh *mt_mesh_new_like(const mt_mesh *base, mt_policy *policy) {
  atomic_fetch_add_explicit(&base->table->refs, 1, memory_order_relaxed);
  return mesh_of(policy, base->table);
}

mt_mesh *mt_mesh_ref(mt_mesh *m) {
  atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
  return m;
}

void mt_mesh_unref(mt_mesh *m) {
  if (m == NULL) return;
  if (atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1) mesh_destroy(m);
}

const mt_policy *mt_mesh_policy(const mt_mesh *m) { return m->policy; }
const char *mt_mesh_version(const mt_mesh *m) { return m->table->version; }
size_t mt_mesh_num_destinations(const mt_mesh *m) { return m->table->num_destinations; }
size_t mt_mesh_num_service_endpoints(const mt_mesh *m) { return m->table->num_endpoints; }

static const mesh_destination *find(const mt_mesh *m, const struct sockaddr *dest, uint16_t port) {
  mesh_destination probe;
  make_key(dest, port, probe.key);
  return bsearch(&probe, m->table->destinations, m->table->num_destinations, sizeof(probe),
                 compare_destinations);
}

int mt_mesh_expected_ids(const mt_mesh *m, const struct sockaddr *dest, mt_expected_ids *out) {
  if (dest->sa_family != AF_INET && dest->sa_family != AF_INET6) return 0;
  const mesh_destination *d = find(m, dest, mt_sockaddr_port(dest));
  if (d == NULL) d = find(m, dest, 0);
  if (d == NULL) return 0;
  out->ids = (const char *const *)d->ids;
  out->count = d->num_ids;
  return 1;
}

size_t mt_mesh_service_endpoints(const mt_mesh *m, const struct sockaddr *dest,
                                 const mt_service_endpoint **out) {
  if (dest->sa_family != AF_INET && dest->sa_family != AF_INET6) return 0;
  uint16_t port = mt_sockaddr_port(dest);
  const mesh_destination *d = port != 0 ? find(m, dest, port) : NULL;
  if (d == NULL) return 0;
  *out = d->endpoints;
  return d->num_endpoints;
}

const mt_service_endpoint *mt_mesh_choose_endpoint(const mt_mesh *m, const struct sockaddr *dest,
                                                   uint64_t random) {
  const mt_service_endpoint *endpoints;
  size_t n = mt_mesh_service_endpoints(m, dest, &endpoints);
  /* The modulo's bias is below 2^-40 for any realistic n. */
  return n > 0 ? &endpoints[random % n] : NULL;
}

int mt_expected_ids_contain(const mt_expected_ids *ids, const char *spiffe_id) {
  for (size_t i = 0; i < ids->count; i++)
    if (strcmp(ids->ids[i], spiffe_id) == 0) return 1;
  return 0;
}

int mt_mesh_duplicate_destination(const mt_mesh *m, char *addr, size_t addr_len) {
  const mesh_destination *d = m->table->destinations;
  for (size_t i = 1; i < m->table->num_destinations; i++) {
    if (memcmp(d[i - 1].key, d[i].key, sizeof(d[i].key))) continue;
    mt_sockaddr_format((const struct sockaddr *)&d[i].address.addr, addr, addr_len);
    return 1;
  }
  return 0;
}
