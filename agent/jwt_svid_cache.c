/* jwt_svid_cache.c: JWT-SVIDs by (identity, audiences). See jwt_svid_cache.h.
 * A small array searched linearly: the entries are per application and
 * audience, a handful per workload, and max_entries bounds the scan. */
#include "agent/jwt_svid_cache.h"

#include <stdlib.h>
#include <string.h>

enum { PERCENT = 100 };

typedef struct {
  mt_jwt_svid_key key;
  char *token, *spiffe_id;
  mt_jwt_svid_entry view;
  int64_t last_used_s;
} slot;

struct mt_jwt_svid_cache {
  slot *slots;
  size_t count, max_entries;
  int64_t idle_s;
};

static int by_string(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Layout: flag byte, id, NUL, then each distinct audience and a NUL. NUL
 * cannot occur inside a C string, so different inputs never collide. */
int mt_jwt_svid_key_make(const char *spiffe_id, int impersonate, const char *const *audiences,
                         size_t num_audiences, mt_jwt_svid_key *key) {
  key->bytes = NULL;
  key->len = 0;
  if (num_audiences == 0 || num_audiences > MT_JWT_SVID_MAX_AUDIENCES) return 0;
  const char *sorted[MT_JWT_SVID_MAX_AUDIENCES];
  size_t len = 1 + strlen(spiffe_id) + 1;
  for (size_t i = 0; i < num_audiences; i++) {
    if (audiences[i] == NULL || audiences[i][0] == '\0') return 0;
    sorted[i] = audiences[i];
    len += strlen(audiences[i]) + 1;
  }
  qsort(sorted, num_audiences, sizeof(sorted[0]), by_string);
  char *p = key->bytes = malloc(len);
  if (p == NULL) return 0;
  *p++ = impersonate ? 'i' : 'o';
  size_t n = strlen(spiffe_id) + 1;
  memcpy(p, spiffe_id, n);
  p += n;
  for (size_t i = 0; i < num_audiences; i++) {
    if (i > 0 && strcmp(sorted[i], sorted[i - 1]) == 0) continue;
    n = strlen(sorted[i]) + 1;
    memcpy(p, sorted[i], n);
    p += n;
  }
  key->len = (size_t)(p - key->bytes);
  return 1;
}

void mt_jwt_svid_key_dispose(mt_jwt_svid_key *key) {
  free(key->bytes);
  key->bytes = NULL;
  key->len = 0;
}

int mt_jwt_svid_key_equal(const mt_jwt_svid_key *a, const mt_jwt_svid_key *b) {
  return a->len == b->len && memcmp(a->bytes, b->bytes, a->len) == 0;
}

mt_jwt_svid_cache *mt_jwt_svid_cache_new(size_t max_entries, int64_t idle_s) {
  mt_jwt_svid_cache *c = calloc(1, sizeof(*c));
  if (c == NULL) return NULL;
  c->slots = calloc(max_entries ? max_entries : 1, sizeof(*c->slots));
  if (c->slots == NULL) {
    free(c);
    return NULL;
  }
  c->max_entries = max_entries ? max_entries : 1;
  c->idle_s = idle_s;
  return c;
}

static void slot_dispose(slot *s) {
  mt_jwt_svid_key_dispose(&s->key);
  free(s->token);
  free(s->spiffe_id);
}

void mt_jwt_svid_cache_free(mt_jwt_svid_cache *c) {
  if (c == NULL) return;
  for (size_t i = 0; i < c->count; i++) slot_dispose(&c->slots[i]);
  free(c->slots);
  free(c);
}

static slot *find(mt_jwt_svid_cache *c, const mt_jwt_svid_key *key) {
  for (size_t i = 0; i < c->count; i++)
    if (mt_jwt_svid_key_equal(&c->slots[i].key, key)) return &c->slots[i];
  return NULL;
}

/* The moment |percent| of the entry's life has gone. */
static int64_t life_point(const mt_jwt_svid_entry *e, int percent) {
  return e->issued_at_s + (e->expires_at_s - e->issued_at_s) * percent / PERCENT;
}

const mt_jwt_svid_entry *mt_jwt_svid_cache_fresh(mt_jwt_svid_cache *c, const mt_jwt_svid_key *key,
                                                 int64_t now_s, int *due) {
  if (due != NULL) *due = 0;
  slot *s = find(c, key);
  if (s == NULL || now_s >= life_point(&s->view, PERCENT / 2)) return NULL;
  s->last_used_s = now_s;
  if (due != NULL) *due = now_s >= life_point(&s->view, MT_JWT_SVID_REFRESH_PERCENT);
  return &s->view;
}

const mt_jwt_svid_entry *mt_jwt_svid_cache_unexpired(mt_jwt_svid_cache *c,
                                                     const mt_jwt_svid_key *key, int64_t now_s) {
  slot *s = find(c, key);
  if (s == NULL || now_s >= s->view.expires_at_s) return NULL;
  s->last_used_s = now_s;
  return &s->view;
}

static void remove_at(mt_jwt_svid_cache *c, size_t i) {
  slot_dispose(&c->slots[i]);
  c->slots[i] = c->slots[--c->count];
}

static void evict_least_recently_used(mt_jwt_svid_cache *c) {
  size_t oldest = 0;
  for (size_t i = 1; i < c->count; i++)
    if (c->slots[i].last_used_s < c->slots[oldest].last_used_s) oldest = i;
  remove_at(c, oldest);
}

int mt_jwt_svid_cache_put(mt_jwt_svid_cache *c, const mt_jwt_svid_key *key, const char *token,
                          const char *spiffe_id, int64_t expires_at_s, int64_t now_s) {
  char *t = strdup(token), *id = strdup(spiffe_id), *k = malloc(key->len ? key->len : 1);
  if (t == NULL || id == NULL || k == NULL) {
    free(t);
    free(id);
    free(k);
    return 0;
  }
  memcpy(k, key->bytes, key->len);
  slot *s = find(c, key);
  if (s != NULL) {
    slot_dispose(s);
  } else {
    if (c->count == c->max_entries) evict_least_recently_used(c);
    s = &c->slots[c->count++];
  }
  s->key.bytes = k;
  s->key.len = key->len;
  s->token = t;
  s->spiffe_id = id;
  s->view.token = t;
  s->view.spiffe_id = id;
  s->view.issued_at_s = now_s;
  s->view.expires_at_s = expires_at_s;
  s->last_used_s = now_s;
  return 1;
}

size_t mt_jwt_svid_cache_sweep(mt_jwt_svid_cache *c, int64_t now_s) {
  size_t dropped = 0;
  for (size_t i = c->count; i > 0; i--) {
    const slot *s = &c->slots[i - 1];
    if (now_s >= s->view.expires_at_s || now_s - s->last_used_s >= c->idle_s) {
      remove_at(c, i - 1);
      dropped++;
    }
  }
  return dropped;
}

size_t mt_jwt_svid_cache_count(const mt_jwt_svid_cache *c) { return c->count; }
