/* mesh.c: refcounted policy + destination identities. */
#include "agent/mesh.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct mt_mesh {
  atomic_int refs;
  char *version;
  mt_policy *policy;
  mt_destination_config *destinations;
  size_t num_destinations;
};

static void mesh_destroy(mt_mesh *m) {
  for (size_t i = 0; i < m->num_destinations; i++) free(m->destinations[i].spiffe_id);
  free(m->destinations);
  mt_policy_free(m->policy);
  free(m->version);
  free(m);
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
    m->destinations[i].address = destinations[i].address;
    m->destinations[i].spiffe_id = strdup(destinations[i].spiffe_id);
    ok = m->destinations[i].spiffe_id != NULL;
    m->num_destinations = i + 1;
  }
  if (!ok) {
    mesh_destroy(m);
    return NULL;
  }
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

const char *mt_mesh_expected_id(const mt_mesh *m, const struct sockaddr *dest) {
  for (size_t i = 0; i < m->num_destinations; i++) {
    if (mt_sockaddr_equal((const struct sockaddr *)&m->destinations[i].address.addr, dest))
      return m->destinations[i].spiffe_id;
  }
  return NULL;
}
