/* source_share.c: an open-addressing table (linear probing, backward-shift
 * deletion: no tombstones) of source address -> handshakes in progress. */
#include "agent/source_share.h"

#include <netinet/in.h>
#include <openssl/rand.h>
#include <openssl/siphash.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { MIN_CAPACITY = 16 }; /* a power of two */

typedef struct {
  uint8_t addr[16]; /* IPv6, or IPv4 mapped into it */
  unsigned count;   /* 0: empty slot */
} entry;

struct mt_source_share {
  entry *slots;
  size_t capacity; /* a power of two */
  size_t used;
  uint64_t key[2];
};

static void key_of(const struct sockaddr *sa, uint8_t out[16]) {
  memset(out, 0, 16);
  if (sa->sa_family == AF_INET6) {
    memcpy(out, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
  } else if (sa->sa_family == AF_INET) {
    out[10] = 0xff;
    out[11] = 0xff;
    memcpy(out + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
  }
}

static size_t home_of(const mt_source_share *s, const uint8_t addr[16]) {
  return (size_t)SIPHASH_24(s->key, addr, 16) & (s->capacity - 1);
}

/* The slot holding |addr|, or the empty slot where it would go. */
static size_t find(const mt_source_share *s, const uint8_t addr[16]) {
  size_t i = home_of(s, addr);
  while (s->slots[i].count != 0 && memcmp(s->slots[i].addr, addr, 16) != 0)
    i = (i + 1) & (s->capacity - 1);
  return i;
}

static int resize(mt_source_share *s, size_t capacity) {
  entry *slots = calloc(capacity, sizeof(entry));
  if (slots == NULL) return 0;
  entry *old = s->slots;
  size_t old_capacity = s->capacity;
  s->slots = slots;
  s->capacity = capacity;
  for (size_t i = 0; i < old_capacity; i++)
    if (old[i].count != 0) s->slots[find(s, old[i].addr)] = old[i];
  free(old);
  return 1;
}

mt_source_share *mt_source_share_new(void) {
  mt_source_share *s = calloc(1, sizeof(*s));
  if (s == NULL) return NULL;
  s->slots = calloc(MIN_CAPACITY, sizeof(entry));
  if (s->slots == NULL) {
    free(s);
    return NULL;
  }
  s->capacity = MIN_CAPACITY;
  RAND_bytes((uint8_t *)s->key, sizeof(s->key));
  return s;
}

void mt_source_share_free(mt_source_share *s) {
  if (s == NULL) return;
  free(s->slots);
  free(s);
}

int mt_source_share_take(mt_source_share *s, const struct sockaddr *source, unsigned limit) {
  uint8_t addr[16];
  key_of(source, addr);
  size_t i = find(s, addr);
  if (s->slots[i].count != 0) {
    if (limit != 0 && s->slots[i].count >= limit) return 0;
    s->slots[i].count++;
    return 1;
  }
  /* A new source: keep the table at most half full. */
  if ((s->used + 1) * 2 > s->capacity) {
    if (!resize(s, s->capacity * 2)) return 0;
    i = find(s, addr);
  }
  memcpy(s->slots[i].addr, addr, 16);
  s->slots[i].count = 1;
  s->used++;
  return 1;
}

/* Empties slot |hole| and moves later members of its probe run back, so
 * that every remaining entry is still reachable from its home slot. */
static void remove_at(mt_source_share *s, size_t hole) {
  size_t mask = s->capacity - 1;
  size_t j = hole;
  for (;;) {
    j = (j + 1) & mask;
    if (s->slots[j].count == 0) break;
    size_t home = home_of(s, s->slots[j].addr);
    /* j's entry may fill the hole unless its home lies cyclically in (hole, j]. */
    int home_after_hole = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
    if (home_after_hole) continue;
    s->slots[hole] = s->slots[j];
    hole = j;
  }
  s->slots[hole].count = 0;
  s->used--;
}

void mt_source_share_give(mt_source_share *s, const struct sockaddr *source) {
  uint8_t addr[16];
  key_of(source, addr);
  size_t i = find(s, addr);
  if (s->slots[i].count == 0) return; /* never taken: nothing to give */
  if (--s->slots[i].count != 0) return;
  remove_at(s, i);
  /* After a burst from many sources, give the table's memory back. */
  if (s->capacity > MIN_CAPACITY && s->used * 8 < s->capacity) resize(s, s->capacity / 2);
}

size_t mt_source_share_sources(const mt_source_share *s) { return s->used; }

unsigned mt_source_share_held(const mt_source_share *s, const struct sockaddr *source) {
  uint8_t addr[16];
  key_of(source, addr);
  return s->slots[find(s, addr)].count;
}
