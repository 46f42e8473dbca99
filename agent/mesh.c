/* mesh.c: refcounted policy + destination identities. */
#include "agent/mesh.h"

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One destination, keyed for binary search: family, address bytes, port
 * (0 = every port), so that "ip:port" and "ip alone" of one address sit side
 * by side and both are found with one comparison function. */
enum { KEY_LEN = 1 + 16 + 2 }; /* family, address, port */

typedef struct {
  uint8_t key[KEY_LEN];
  size_t first_id; /* its IDs: table->ids[first_id .. first_id + num_ids) */
  size_t num_ids;
  size_t first_endpoint; /* a Service address's endpoints, in the order sent */
  size_t num_endpoints;
} mesh_destination;

/* The destinations, shared by every mesh of one snapshot (the general one
 * and each workload's): a node agent holds one copy, not one per pod.
 * Four allocations whatever its size: entries, ID pointers, endpoints, and
 * the bytes of every ID (the endpoints' IDs point there too). */
typedef struct {
  atomic_int refs;
  mesh_destination *entries; /* sorted by key */
  size_t num_entries;
  const char **ids; /* into |id_bytes| */
  mt_service_endpoint *endpoints;
  size_t num_endpoints;
  char *id_bytes;
  /* Destinations on demand: set by mt_mesh_set_on_demand before the table
   * is shared; |unresolved| holds KEY_LEN-byte keys, sorted. */
  int on_demand;
  uint8_t *unresolved;
  size_t num_unresolved;
} dest_table;

struct mt_mesh {
  atomic_int refs;
  char *version;
  mt_policy *policy;
  mt_peer_auth *peer_auth; /* NULL: the static permissive ports */
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

/* The address a key stands for (port 0: the IP alone). */
static void key_address(const uint8_t key[KEY_LEN], mt_sockaddr *out) {
  memset(out, 0, sizeof(*out));
  uint16_t port = (uint16_t)(key[KEY_LEN - 2] << 8 | key[KEY_LEN - 1]);
  if (key[0] == 4) {
    struct sockaddr_in *in = (struct sockaddr_in *)&out->addr;
    in->sin_family = AF_INET;
    memcpy(&in->sin_addr, key + 1, 4);
    in->sin_port = htons(port);
    out->addr_len = sizeof(*in);
  } else {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&out->addr;
    in6->sin6_family = AF_INET6;
    memcpy(&in6->sin6_addr, key + 1, 16);
    in6->sin6_port = htons(port);
    out->addr_len = sizeof(*in6);
  }
}

static int compare_destinations(const void *a, const void *b) {
  return memcmp(((const mesh_destination *)a)->key, ((const mesh_destination *)b)->key, KEY_LEN);
}

static void table_unref(dest_table *t) {
  if (t == NULL || atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1) return;
  free(t->entries);
  free(t->ids);
  free(t->endpoints);
  free(t->id_bytes);
  free(t->unresolved);
  free(t);
}

/* A table with room for |n| entries, |num_ids| IDs, |num_endpoints|
 * endpoints and |bytes| bytes of ID text; filled by table_put. */
typedef struct {
  dest_table *t;
  size_t next_id, next_endpoint, used;
} table_builder;

static dest_table *table_alloc(size_t n, size_t num_ids, size_t num_endpoints, size_t bytes) {
  dest_table *t = calloc(1, sizeof(*t));
  if (t == NULL) return NULL;
  atomic_init(&t->refs, 1);
  t->entries = calloc(n + 1, sizeof(*t->entries));
  t->ids = calloc(num_ids + 1, sizeof(*t->ids));
  t->endpoints = calloc(num_endpoints + 1, sizeof(*t->endpoints));
  t->id_bytes = malloc(bytes + 1);
  if (t->entries == NULL || t->ids == NULL || t->endpoints == NULL || t->id_bytes == NULL) {
    table_unref(t);
    return NULL;
  }
  return t;
}

static const char *put_text(table_builder *b, const char *text) {
  size_t len = strlen(text) + 1;
  char *at = b->t->id_bytes + b->used;
  memcpy(at, text, len);
  b->used += len;
  return at;
}

/* Appends one entry: |key|, its IDs and its endpoints (copied). */
static void table_put(table_builder *b, const uint8_t key[KEY_LEN], const char *const *ids,
                      size_t num_ids, const mt_service_endpoint *endpoints, size_t num_endpoints) {
  dest_table *t = b->t;
  mesh_destination *d = &t->entries[t->num_entries++];
  memcpy(d->key, key, KEY_LEN);
  d->first_id = b->next_id;
  d->num_ids = num_ids;
  for (size_t j = 0; j < num_ids; j++) t->ids[b->next_id++] = put_text(b, ids[j]);
  d->first_endpoint = b->next_endpoint;
  d->num_endpoints = num_endpoints;
  for (size_t j = 0; j < num_endpoints; j++) {
    mt_service_endpoint *e = &t->endpoints[b->next_endpoint++];
    e->address = endpoints[j].address;
    e->spiffe_id = (char *)put_text(b, endpoints[j].spiffe_id);
  }
  t->num_endpoints = b->next_endpoint;
}

static size_t text_bytes(const char *const *texts, size_t n) {
  size_t bytes = 0;
  for (size_t j = 0; j < n; j++) bytes += strlen(texts[j]) + 1;
  return bytes;
}

static size_t endpoint_bytes(const mt_service_endpoint *e, size_t n) {
  size_t bytes = 0;
  for (size_t j = 0; j < n; j++) bytes += strlen(e[j].spiffe_id) + 1;
  return bytes;
}

static dest_table *table_new(const mt_destination_config *from, size_t n) {
  size_t num_ids = 0, num_endpoints = 0, bytes = 0;
  for (size_t i = 0; i < n; i++) {
    num_ids += from[i].num_spiffe_ids;
    num_endpoints += from[i].num_endpoints;
    bytes += text_bytes((const char *const *)from[i].spiffe_ids, from[i].num_spiffe_ids) +
             endpoint_bytes(from[i].endpoints, from[i].num_endpoints);
  }
  table_builder b = {table_alloc(n, num_ids, num_endpoints, bytes), 0, 0, 0};
  if (b.t == NULL) return NULL;
  for (size_t i = 0; i < n; i++) {
    uint8_t key[KEY_LEN];
    make_key((const struct sockaddr *)&from[i].address.addr,
             mt_sockaddr_port((const struct sockaddr *)&from[i].address.addr), key);
    table_put(&b, key, (const char *const *)from[i].spiffe_ids, from[i].num_spiffe_ids,
              from[i].endpoints, from[i].num_endpoints);
  }
  if (n > 1) qsort(b.t->entries, n, sizeof(*b.t->entries), compare_destinations);
  return b.t;
}

static mt_mesh *mesh_with_table(const char *version, mt_policy *policy, dest_table *table) {
  mt_mesh *m = calloc(1, sizeof(*m));
  if (m == NULL || (m->version = strdup(version)) == NULL) {
    free(m);
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
  dest_table *table = table_new(destinations, num_destinations);
  if (table == NULL) {
    mt_policy_free(policy);
    return NULL;
  }
  return mesh_with_table(version, policy, table);
}

mt_mesh *mt_mesh_with_policy(const mt_mesh *base, mt_policy *policy) {
  atomic_fetch_add_explicit(&base->table->refs, 1, memory_order_relaxed);
  return mesh_with_table(base->version, policy, base->table);
}

/* ---- patching: a sorted merge of the held table and the changes ---------- */

typedef struct {
  uint8_t key[KEY_LEN];
} bare_key;

static int compare_bare_keys(const void *a, const void *b) {
  return memcmp(((const bare_key *)a)->key, ((const bare_key *)b)->key, KEY_LEN);
}

static bare_key *sorted_keys(const mt_sockaddr *addresses, const mt_destination_config *dests,
                             const int *only, size_t n, size_t *count) {
  bare_key *keys = calloc(n + 1, sizeof(*keys));
  if (keys == NULL) return NULL;
  *count = 0;
  for (size_t i = 0; i < n; i++) {
    if (only != NULL && !only[i]) continue;
    const mt_sockaddr *a = addresses ? &addresses[i] : &dests[i].address;
    make_key((const struct sockaddr *)&a->addr, mt_sockaddr_port((const struct sockaddr *)&a->addr),
             keys[(*count)++].key);
  }
  if (*count > 1) qsort(keys, *count, sizeof(*keys), compare_bare_keys);
  return keys;
}

static int has_key(const bare_key *keys, size_t n, const uint8_t key[KEY_LEN]) {
  return n > 0 && bsearch(key, keys, n, sizeof(*keys), compare_bare_keys) != NULL;
}

static void describe_key(const uint8_t key[KEY_LEN], char *out, size_t out_len) {
  mt_sockaddr a;
  key_address(key, &a);
  mt_sockaddr_format((const struct sockaddr *)&a.addr, out, out_len);
}

typedef struct {
  const dest_table *from;
  const mesh_destination *entry;
} merged_entry;

/* The entries of the patched table, in key order, each pointing into the
 * table it comes from; 0 with the reason on refusal. */
static int merge(const dest_table *base, const dest_table *changes, const bare_key *replaced,
                 size_t num_replaced, const bare_key *removed, size_t num_removed,
                 merged_entry *out, size_t *n, char *err, size_t err_len) {
  char text[MT_SOCKADDR_TEXT_MAX];
  size_t i = 0, j = 0, used_removals = 0;
  *n = 0;
  for (size_t k = 1; k < changes->num_entries; k++) {
    if (memcmp(changes->entries[k - 1].key, changes->entries[k].key, KEY_LEN) != 0) continue;
    describe_key(changes->entries[k].key, text, sizeof(text));
    return snprintf(err, err_len, "destinations: address %s listed twice", text), 0;
  }
  while (i < base->num_entries || j < changes->num_entries) {
    const mesh_destination *b = i < base->num_entries ? &base->entries[i] : NULL;
    const mesh_destination *c = j < changes->num_entries ? &changes->entries[j] : NULL;
    int cmp = b == NULL ? 1 : c == NULL ? -1 : memcmp(b->key, c->key, KEY_LEN);
    if (cmp < 0) {
      i++;
      if (has_key(removed, num_removed, b->key)) {
        used_removals++;
        continue;
      }
      out[(*n)++] = (merged_entry){base, b};
      continue;
    }
    if (cmp == 0) { /* the held entry of that address goes, unless... */
      i++;
      int removed_too = has_key(removed, num_removed, b->key);
      used_removals += removed_too;
      if (!removed_too && !has_key(replaced, num_replaced, b->key)) {
        describe_key(b->key, text, sizeof(text));
        return snprintf(err, err_len, "destinations: address %s listed twice", text), 0;
      }
    }
    j++;
    out[(*n)++] = (merged_entry){changes, c};
  }
  if (used_removals != num_removed)
    return snprintf(err, err_len, "destinations: %zu removed addresses are not held",
                    num_removed - used_removals),
           0;
  return 1;
}

/* A table of |entries| (in order; IDs and endpoints copied). */
static dest_table *table_of(const merged_entry *entries, size_t n) {
  size_t num_ids = 0, num_endpoints = 0, bytes = 0;
  for (size_t i = 0; i < n; i++) {
    const dest_table *from = entries[i].from;
    const mesh_destination *d = entries[i].entry;
    num_ids += d->num_ids;
    num_endpoints += d->num_endpoints;
    bytes += text_bytes(from->ids + d->first_id, d->num_ids) +
             endpoint_bytes(from->endpoints + d->first_endpoint, d->num_endpoints);
  }
  table_builder b = {table_alloc(n, num_ids, num_endpoints, bytes), 0, 0, 0};
  if (b.t == NULL) return NULL;
  for (size_t i = 0; i < n; i++) {
    const dest_table *from = entries[i].from;
    const mesh_destination *d = entries[i].entry;
    table_put(&b, d->key, from->ids + d->first_id, d->num_ids, from->endpoints + d->first_endpoint,
              d->num_endpoints);
  }
  return b.t;
}

mt_mesh *mt_mesh_patched(const mt_mesh *base, const char *version, mt_policy *policy,
                         const mt_destination_config *changed, const int *replaces,
                         size_t num_changed, const mt_sockaddr *removed, size_t num_removed,
                         char *err, size_t err_len) {
  size_t num_replaced = 0, num_removed_keys = 0, n = 0;
  dest_table *changes = table_new(changed, num_changed);
  bare_key *replaced_keys = sorted_keys(NULL, changed, replaces, num_changed, &num_replaced);
  bare_key *removed_keys = sorted_keys(removed, NULL, NULL, num_removed, &num_removed_keys);
  merged_entry *entries = calloc(base->table->num_entries + num_changed + 1, sizeof(*entries));
  dest_table *table = NULL;
  int ok = changes != NULL && replaced_keys != NULL && removed_keys != NULL && entries != NULL;
  if (!ok) snprintf(err, err_len, "out of memory");
  if (ok)
    ok = merge(base->table, changes, replaced_keys, num_replaced, removed_keys, num_removed_keys,
               entries, &n, err, err_len);
  if (ok && (table = table_of(entries, n)) == NULL) snprintf(err, err_len, "out of memory");
  free(entries);
  free(removed_keys);
  free(replaced_keys);
  table_unref(changes);
  if (table == NULL) {
    mt_policy_free(policy);
    return NULL;
  }
  mt_mesh *m = mesh_with_table(version, policy, table);
  if (m == NULL) snprintf(err, err_len, "out of memory");
  return m;
}

mt_mesh *mt_mesh_ref(mt_mesh *m) {
  atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
  return m;
}

void mt_mesh_unref(mt_mesh *m) {
  if (m == NULL) return;
  if (atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) != 1) return;
  table_unref(m->table);
  mt_policy_free(m->policy);
  mt_peer_auth_free(m->peer_auth);
  free(m->version);
  free(m);
}

static int compare_keys(const void *a, const void *b) { return memcmp(a, b, KEY_LEN); }

int mt_mesh_set_on_demand(mt_mesh *m, const mt_sockaddr *unresolved, size_t n) {
  dest_table *t = m->table;
  uint8_t *keys = calloc(n + 1, KEY_LEN);
  if (keys == NULL) return 0;
  for (size_t i = 0; i < n; i++) {
    const struct sockaddr *sa = (const struct sockaddr *)&unresolved[i].addr;
    make_key(sa, mt_sockaddr_port(sa), keys + i * KEY_LEN);
  }
  if (n > 1) qsort(keys, n, KEY_LEN, compare_keys);
  free(t->unresolved);
  t->on_demand = 1;
  t->unresolved = keys;
  t->num_unresolved = n;
  return 1;
}

int mt_mesh_on_demand(const mt_mesh *m) { return m->table->on_demand; }

int mt_mesh_unresolved(const mt_mesh *m, const struct sockaddr *dest) {
  if (dest->sa_family != AF_INET && dest->sa_family != AF_INET6) return 0;
  uint8_t key[KEY_LEN];
  make_key(dest, mt_sockaddr_port(dest), key);
  const dest_table *t = m->table;
  return t->num_unresolved > 0 &&
         bsearch(key, t->unresolved, t->num_unresolved, KEY_LEN, compare_keys) != NULL;
}

const mt_policy *mt_mesh_policy(const mt_mesh *m) { return m->policy; }

void mt_mesh_set_peer_auth(mt_mesh *m, mt_peer_auth *peer_auth) {
  mt_peer_auth_free(m->peer_auth);
  m->peer_auth = peer_auth;
}

const mt_peer_auth *mt_mesh_peer_auth(const mt_mesh *m) { return m->peer_auth; }

int mt_mesh_admits_plaintext(const mt_mesh *m, const mt_config *config, uint16_t port) {
  if (m->peer_auth != NULL) return mt_peer_auth_admits_plaintext(m->peer_auth, port);
  for (size_t i = 0; i < config->num_permissive_ports; i++)
    if (config->permissive_ports[i] == port) return 1;
  return 0;
}
const char *mt_mesh_version(const mt_mesh *m) { return m->version; }
size_t mt_mesh_num_destinations(const mt_mesh *m) { return m->table->num_entries; }
size_t mt_mesh_num_service_endpoints(const mt_mesh *m) { return m->table->num_endpoints; }

static const mesh_destination *find(const mt_mesh *m, const struct sockaddr *dest, uint16_t port) {
  mesh_destination probe;
  make_key(dest, port, probe.key);
  return bsearch(&probe, m->table->entries, m->table->num_entries, sizeof(probe),
                 compare_destinations);
}

int mt_mesh_expected_ids(const mt_mesh *m, const struct sockaddr *dest, mt_expected_ids *out) {
  if (dest->sa_family != AF_INET && dest->sa_family != AF_INET6) return 0;
  const mesh_destination *d = find(m, dest, mt_sockaddr_port(dest));
  if (d == NULL) d = find(m, dest, 0);
  if (d == NULL) return 0;
  out->ids = m->table->ids + d->first_id;
  out->count = d->num_ids;
  return 1;
}

size_t mt_mesh_service_endpoints(const mt_mesh *m, const struct sockaddr *dest,
                                 const mt_service_endpoint **out) {
  if (dest->sa_family != AF_INET && dest->sa_family != AF_INET6) return 0;
  uint16_t port = mt_sockaddr_port(dest);
  const mesh_destination *d = port != 0 ? find(m, dest, port) : NULL;
  if (d == NULL) return 0;
  *out = m->table->endpoints + d->first_endpoint;
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
  const mesh_destination *d = m->table->entries;
  for (size_t i = 1; i < m->table->num_entries; i++) {
    if (memcmp(d[i - 1].key, d[i].key, KEY_LEN) != 0) continue;
    mt_sockaddr address;
    key_address(d[i].key, &address);
    mt_sockaddr_format((const struct sockaddr *)&address.addr, addr, addr_len);
    return 1;
  }
  return 0;
}
