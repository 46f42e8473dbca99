/* workloads.c: the node-mode address -> identity table. */
#include "agent/workloads.h"

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  struct sockaddr_storage address;
  char *spiffe_id;
  mt_identity *identity; /* NULL: listed, no valid certificate */
} entry;

struct mt_workloads {
  atomic_int refs;
  size_t count, capacity;
  entry entries[]; /* a node has tens of pods: a linear scan beats hashing */
};

mt_workloads *mt_workloads_new(size_t capacity) {
  mt_workloads *t = calloc(1, sizeof(*t) + capacity * sizeof(entry));
  if (t == NULL) return NULL;
  atomic_init(&t->refs, 1);
  t->capacity = capacity;
  return t;
}

int mt_workloads_add(mt_workloads *t, const struct sockaddr *address, const char *spiffe_id,
                     mt_identity *identity) {
  if (t->count == t->capacity) return 0;
  char *id = strdup(spiffe_id);
  if (id == NULL) return 0;
  entry *e = &t->entries[t->count++];
  memcpy(&e->address, address,
         address->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
  e->spiffe_id = id;
  e->identity = identity != NULL ? mt_identity_ref(identity) : NULL;
  return 1;
}

mt_workloads *mt_workloads_ref(mt_workloads *t) {
  atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
  return t;
}

void mt_workloads_unref(mt_workloads *t) {
  if (t == NULL || atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1) return;
  for (size_t i = 0; i < t->count; i++) {
    mt_identity_unref(t->entries[i].identity);
    free(t->entries[i].spiffe_id);
  }
  free(t);
}

mt_identity *mt_workloads_find(const mt_workloads *t, const struct sockaddr *address) {
  for (size_t i = 0; t != NULL && i < t->count; i++)
    if (mt_sockaddr_same_host(address, (const struct sockaddr *)&t->entries[i].address))
      return t->entries[i].identity;
  return NULL;
}

int mt_workloads_lists(const mt_workloads *t, const struct sockaddr *address) {
  for (size_t i = 0; t != NULL && i < t->count; i++)
    if (mt_sockaddr_same_host(address, (const struct sockaddr *)&t->entries[i].address)) return 1;
  return 0;
}

size_t mt_workloads_count(const mt_workloads *t) { return t ? t->count : 0; }
const char *mt_workloads_spiffe_id_at(const mt_workloads *t, size_t i) {
  return t->entries[i].spiffe_id;
}
mt_identity *mt_workloads_identity_at(const mt_workloads *t, size_t i) {
  return t->entries[i].identity;
}
const struct sockaddr *mt_workloads_address_at(const mt_workloads *t, size_t i) {
  return (const struct sockaddr *)&t->entries[i].address;
}
