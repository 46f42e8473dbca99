/* chain_cache.c: remembered intermediates. See chain_cache.h. */
#include "agent/chain_cache.h"

#include <openssl/mem.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "agent/x509_util.h"

typedef struct {
  uint8_t cert_hash[32]; /* SHA-256 of the intermediate's DER */
  uint8_t trust_key[32];
  int64_t not_after; /* earliest of the intermediate's and the root's */
  int64_t expires;   /* min(not_after, remembered + max age) */
  int used;
} entry;

struct mt_chain_cache {
  pthread_mutex_t lock;
  entry *entries;
  size_t capacity;
  size_t next; /* the oldest slot, replaced next */
  time_t max_age;
  uint64_t hits, misses;
};

mt_chain_cache *mt_chain_cache_new(size_t capacity, time_t max_age_s) {
  mt_chain_cache *c = calloc(1, sizeof(*c));
  if (c == NULL) return NULL;
  c->entries = calloc(capacity ? capacity : 1, sizeof(entry));
  if (c->entries == NULL) {
    free(c);
    return NULL;
  }
  pthread_mutex_init(&c->lock, NULL);
  c->capacity = capacity ? capacity : 1;
  c->max_age = max_age_s;
  return c;
}

void mt_chain_cache_free(mt_chain_cache *c) {
  if (c == NULL) return;
  pthread_mutex_destroy(&c->lock);
  free(c->entries);
  free(c);
}

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static mt_chain_cache *g_cache;
static void make_global(void) {
  g_cache = mt_chain_cache_new(MT_CHAIN_CACHE_ENTRIES, MT_CHAIN_CACHE_MAX_AGE_S);
}

mt_chain_cache *mt_chain_cache_global(void) {
  pthread_once(&g_once, make_global);
  return g_cache;
}

void mt_chain_cache_trust_key(const uint8_t bundle_fp[32], const char *trust_domain,
                              size_t trust_domain_len, int purpose, uint8_t out[32]) {
  SHA256_CTX sha;
  SHA256_Init(&sha);
  SHA256_Update(&sha, bundle_fp, 32);
  uint8_t len[2] = {(uint8_t)(trust_domain_len >> 8), (uint8_t)trust_domain_len};
  SHA256_Update(&sha, len, sizeof(len));
  SHA256_Update(&sha, trust_domain, trust_domain_len);
  uint8_t p[4] = {(uint8_t)(purpose >> 24), (uint8_t)(purpose >> 16), (uint8_t)(purpose >> 8),
                  (uint8_t)purpose};
  SHA256_Update(&sha, p, sizeof(p));
  SHA256_Final(out, &sha);
}

static int cert_hash(X509 *cert, uint8_t out[32]) {
  uint8_t *der = NULL;
  int len = i2d_X509(cert, &der);
  if (len <= 0) return 0;
  SHA256(der, (size_t)len, out);
  OPENSSL_free(der);
  return 1;
}

/* Name constraints and policy constraints on the path apply to the leaf:
 * such a path is always verified in full. */
static int constrains_leaf(X509 *cert) {
  return X509_get_ext_by_NID(cert, NID_name_constraints, -1) >= 0 ||
         X509_get_ext_by_NID(cert, NID_policy_constraints, -1) >= 0 ||
         X509_get_ext_by_NID(cert, NID_inhibit_any_policy, -1) >= 0 ||
         X509_get_ext_by_NID(cert, NID_policy_mappings, -1) >= 0;
}

/* Under the lock: the live entry for (hash, key), or NULL. */
static entry *find(mt_chain_cache *c, const uint8_t hash[32], const uint8_t key[32], time_t now) {
  for (size_t i = 0; i < c->capacity; i++) {
    entry *e = &c->entries[i];
    if (!e->used || memcmp(e->cert_hash, hash, 32) != 0 || memcmp(e->trust_key, key, 32) != 0)
      continue;
    if ((int64_t)now >= e->expires) {
      memset(e, 0, sizeof(*e)); /* stale: the next full verification decides again */
      return NULL;
    }
    return e;
  }
  return NULL;
}

/* The per-leaf rules X509_verify_cert would apply on this path. */
static int leaf_ok(X509 *leaf, X509 *issuer, int purpose, time_t now) {
  uint32_t flags = X509_get_extension_flags(leaf);
  if (flags & (EXFLAG_INVALID | EXFLAG_CRITICAL)) return 0; /* malformed or unknown critical */
  time_t t = now;
  if (X509_cmp_time(X509_get0_notBefore(leaf), &t) > 0) return 0;
  if (X509_cmp_time(X509_get0_notAfter(leaf), &t) <= 0) return 0;
  if (X509_check_issued(issuer, leaf) != X509_V_OK) return 0; /* names, AKID, keyCertSign */
  if (X509_check_purpose(leaf, purpose, 0) != 1) return 0;
  EVP_PKEY *key = X509_get_pubkey(issuer);
  int ok = key != NULL && X509_verify(leaf, key) == 1;
  EVP_PKEY_free(key);
  return ok;
}

int mt_chain_cache_verify(mt_chain_cache *c, const uint8_t trust_key[32], X509 *leaf,
                          STACK_OF(X509) * untrusted, int purpose, time_t now,
                          int64_t *out_not_after) {
  /* The peer's chain as BoringSSL hands it over may include the leaf. */
  X509 *inter = NULL;
  size_t others = 0;
  for (size_t i = 0; untrusted != NULL && leaf != NULL && i < sk_X509_num(untrusted); i++) {
    X509 *x = sk_X509_value(untrusted, i);
    if (X509_cmp(x, leaf) == 0) continue;
    inter = x;
    others++;
  }
  if (c == NULL || others != 1) {
    if (c != NULL) __atomic_add_fetch(&c->misses, 1, __ATOMIC_RELAXED);
    return 0;
  }
  uint8_t hash[32];
  int64_t path_not_after = 0;
  int known = 0;
  if (cert_hash(inter, hash)) {
    pthread_mutex_lock(&c->lock);
    entry *e = find(c, hash, trust_key, now);
    if (e != NULL) {
      known = 1;
      path_not_after = e->not_after;
    }
    pthread_mutex_unlock(&c->lock);
  }
  /* The signature check runs outside the lock: it is the expensive part. */
  int ok = known && leaf_ok(leaf, inter, purpose, now);
  if (ok) {
    int64_t leaf_na = mt_x509_time(X509_get0_notAfter(leaf), now);
    ok = leaf_na > 0;
    *out_not_after = leaf_na < path_not_after ? leaf_na : path_not_after;
  }
  __atomic_add_fetch(ok ? &c->hits : &c->misses, 1, __ATOMIC_RELAXED);
  return ok;
}

void mt_chain_cache_remember(mt_chain_cache *c, const uint8_t trust_key[32], STACK_OF(X509) * chain,
                             time_t now) {
  if (c == NULL || chain == NULL || sk_X509_num(chain) != 3) return;
  X509 *inter = sk_X509_value(chain, 1), *root = sk_X509_value(chain, 2);
  if (constrains_leaf(inter) || constrains_leaf(root)) return;
  int64_t inter_na = mt_x509_time(X509_get0_notAfter(inter), now);
  int64_t root_na = mt_x509_time(X509_get0_notAfter(root), now);
  uint8_t hash[32];
  if (inter_na <= (int64_t)now || root_na <= (int64_t)now || !cert_hash(inter, hash)) return;
  int64_t not_after = inter_na < root_na ? inter_na : root_na;
  int64_t expires = (int64_t)now + c->max_age;
  if (not_after < expires) expires = not_after;
  pthread_mutex_lock(&c->lock);
  entry *e = find(c, hash, trust_key, now);
  if (e == NULL) {
    e = &c->entries[c->next];
    c->next = (c->next + 1) % c->capacity;
  }
  memcpy(e->cert_hash, hash, 32);
  memcpy(e->trust_key, trust_key, 32);
  e->not_after = not_after;
  e->expires = expires;
  e->used = 1;
  pthread_mutex_unlock(&c->lock);
}

size_t mt_chain_cache_count(mt_chain_cache *c) {
  size_t n = 0;
  pthread_mutex_lock(&c->lock);
  for (size_t i = 0; i < c->capacity; i++) n += c->entries[i].used != 0;
  pthread_mutex_unlock(&c->lock);
  return n;
}

uint64_t mt_chain_cache_hits(mt_chain_cache *c) {
  return __atomic_load_n(&c->hits, __ATOMIC_RELAXED);
}
uint64_t mt_chain_cache_misses(mt_chain_cache *c) {
  return __atomic_load_n(&c->misses, __ATOMIC_RELAXED);
}
