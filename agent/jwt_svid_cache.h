/* jwt_svid_cache: JWT-SVIDs already signed, per (identity, impersonation,
 * audience set), so that applications asking again and again (the
 * Workload API's FetchJWTSVID) do not each cost a call to mtls-ca.
 *
 * Rules (time is passed in, Unix seconds):
 *   - an entry answers while more than half of its token's life is left
 *     (mt_jwt_svid_cache_fresh);
 *   - from MT_JWT_SVID_REFRESH_PERCENT of its life on it is "due": still
 *     answered, and the caller fetches a new one in the background so the
 *     next asker does not wait;
 *   - an entry not asked for in |idle_s| seconds, or expired, is dropped by
 *     mt_jwt_svid_cache_sweep; beyond |max_entries| the least recently used
 *     entry makes room.
 * The audience set is a set: order and repeats do not make another key.
 * Single-threaded; pure (no I/O, no logging). */
#ifndef MT_JWT_SVID_CACHE_H
#define MT_JWT_SVID_CACHE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  MT_JWT_SVID_REFRESH_PERCENT = 40, /* of the life gone: refresh in the background */
  MT_JWT_SVID_MAX_AUDIENCES = 32,   /* as mtls-ca accepts */
};

/* A cache key: identity, impersonation flag and the sorted, de-duplicated
 * audiences, in one comparable byte string. */
typedef struct {
  char *bytes;
  size_t len;
} mt_jwt_svid_key;

/* Builds |key| (free with mt_jwt_svid_key_dispose). |spiffe_id| may be ""
 * (the caller's own identity, whatever mtls-ca decides). Returns 0 for no
 * audience, an empty one, more than MT_JWT_SVID_MAX_AUDIENCES, or no
 * memory. */
int mt_jwt_svid_key_make(const char *spiffe_id, int impersonate, const char *const *audiences,
                         size_t num_audiences, mt_jwt_svid_key *key);
void mt_jwt_svid_key_dispose(mt_jwt_svid_key *key);
int mt_jwt_svid_key_equal(const mt_jwt_svid_key *a, const mt_jwt_svid_key *b);

/* One cached token, borrowed from the cache until its next change. */
typedef struct {
  const char *token;     /* compact JWS */
  const char *spiffe_id; /* its "sub", as mtls-ca reported it */
  int64_t issued_at_s, expires_at_s;
} mt_jwt_svid_entry;

typedef struct mt_jwt_svid_cache mt_jwt_svid_cache;

mt_jwt_svid_cache *mt_jwt_svid_cache_new(size_t max_entries, int64_t idle_s);
void mt_jwt_svid_cache_free(mt_jwt_svid_cache *cache); /* accepts NULL */

/* The entry of |key| when it is fresh at |now_s| (and marks it used), or
 * NULL. |*due| (may be NULL) is set to 1 when it is fresh but due for a
 * background refresh. */
const mt_jwt_svid_entry *mt_jwt_svid_cache_fresh(mt_jwt_svid_cache *cache,
                                                 const mt_jwt_svid_key *key, int64_t now_s,
                                                 int *due);

/* The entry of |key| when its token has not expired at |now_s| (fresh or
 * not), or NULL: what is still better than nothing when mtls-ca fails. */
const mt_jwt_svid_entry *mt_jwt_svid_cache_unexpired(mt_jwt_svid_cache *cache,
                                                     const mt_jwt_svid_key *key, int64_t now_s);

/* Stores (or replaces) the token of |key| received at |now_s| (everything
 * copied). Returns 0 when out of memory (the old entry, if any, stays). */
int mt_jwt_svid_cache_put(mt_jwt_svid_cache *cache, const mt_jwt_svid_key *key, const char *token,
                          const char *spiffe_id, int64_t expires_at_s, int64_t now_s);

/* Drops expired entries and entries idle for |idle_s|. Returns how many. */
size_t mt_jwt_svid_cache_sweep(mt_jwt_svid_cache *cache, int64_t now_s);

size_t mt_jwt_svid_cache_count(const mt_jwt_svid_cache *cache);

#ifdef __cplusplus
}
#endif

#endif /* MT_JWT_SVID_CACHE_H */
