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
} mesh_destination;

struct mt_mesh {
  atomic_int refs;
  char *version;
  mt_policy *policy;
  mesh_destination *destinations; /* sorted by key */
  size_t num_destinations;
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

static void mesh_destroy(mt_mesh *m) {
  for (size_t i = 0; i < m->num_destinations; i++) {
    for (size_t j = 0; j < m->destinations[i].num_ids; j++) free(m->destinations[i].ids[j]);
    free(m->destinations[i].ids);
  }
  free(m->destinations);
  mt_policy_free(m->policy);
  free(m->version);
  free(m);
}

static int copy_destination(mesh_destination *to, const mt_destination_config *from) {
  to->address = from->address;
  make_key((const struct sockaddr *)&from->address.addr,
           mt_sockaddr_port((const struct sockaddr *)&from->address.addr), to->key);
  to->ids = calloc(from->num_spiffe_ids + 1, sizeof(*to->ids));
  if (to->ids == NULL) return 0;
  for (size_t j = 0; j < from->num_spiffe_ids; j++) {
    if ((to->ids[j] = strdup(from->spiffe_ids[j])) == NULL) return 0;
    to->num_ids = j + 1;
  }
  return 1;
}

mt_mesh *mt_mesh_new(const char *version, mt_policy *policy,
                     const mt_destination_config *destinations, size_t num_destinations) {
  mt_mesh *m = calloc(1, sizeof(*m));
  if (m == NULL) {
    mt_policy_free(policy);
    return NULL;
  }
  atomic_init(&m->refs, 1);
  m->policy = policy;
  m->version = strdup(version);
  m->destinations = calloc(num_destinations + 1, sizeof(*m->destinations));
  int ok = m->version != NULL && m->destinations != NULL;
  for (size_t i = 0; ok && i < num_destinations; i++) {
    m->num_destinations = i + 1;
    ok = copy_destination(&m->destinations[i], &destinations[i]);
  }
  if (!ok) {
    mesh_destroy(m);
    return NULL;
  }
  qsort(m->destinations, m->num_destinations, sizeof(*m->destinations), compare_destinations);
  return m;
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
const char *mt_mesh_version(const mt_mesh *m) { return m->version; }
size_t mt_mesh_num_destinations(const mt_mesh *m) { return m->num_destinations; }

static const mesh_destination *find(const mt_mesh *m, const struct sockaddr *dest, uint16_t port) {
  mesh_destination probe;
  make_key(dest, port, probe.key);
  return bsearch(&probe, m->destinations, m->num_destinations, sizeof(probe),
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

int mt_expected_ids_contain(const mt_expected_ids *ids, const char *spiffe_id) {
  for (size_t i = 0; i < ids->count; i++)
    if (strcmp(ids->ids[i], spiffe_id) == 0) return 1;
  return 0;
}

int mt_mesh_duplicate_destination(const mt_mesh *m, char *addr, size_t addr_len) {
  for (size_t i = 1; i < m->num_destinations; i++) {
    if (memcmp(m->destinations[i - 1].key, m->destinations[i].key, sizeof(m->destinations[i].key)))
      continue;
    mt_sockaddr_format((const struct sockaddr *)&m->destinations[i].address.addr, addr, addr_len);
    return 1;
  }
  return 0;
}
