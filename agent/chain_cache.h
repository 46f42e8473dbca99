/* chain_cache: verify each intermediate CA once, not on every handshake.
 *
 * After a full X.509 verification of leaf -> intermediate -> root succeeds,
 * the intermediate is remembered under (SHA-256 of its DER, the key of the
 * trust that judged it: bundle fingerprint + trust domain + TLS role). A
 * later peer presenting the same single intermediate is then checked with
 * only what is per leaf: its validity period, its issuer name and key
 * identifiers against the intermediate (X509_check_issued), its purpose for
 * the role, no unknown critical or malformed extension, and its signature
 * under the intermediate's key. The SPIFFE rules (svid.h) run before this,
 * as for every peer.
 *
 * Fail closed: anything else (no entry, a different bundle or domain, more
 * or fewer intermediates, an entry past its intermediate's or root's
 * notAfter or older than its max age, name or policy constraints anywhere
 * on the path, any check failing) answers "verify in full", never "refuse":
 * the full verifier then decides and reports the reason. Entries whose
 * path carries name constraints or policy constraints are never stored,
 * because those apply to the leaf. Bounded: a fixed number of entries, the
 * oldest replaced first. Thread-safe. */
#ifndef MT_CHAIN_CACHE_H
#define MT_CHAIN_CACHE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/base.h>
#include <openssl/x509.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  MT_CHAIN_CACHE_ENTRIES = 64,     /* the process-wide cache */
  MT_CHAIN_CACHE_MAX_AGE_S = 3600, /* re-verify each intermediate at least hourly */
};

typedef struct mt_chain_cache mt_chain_cache;

mt_chain_cache *mt_chain_cache_new(size_t capacity, time_t max_age_s);
void mt_chain_cache_free(mt_chain_cache *cache); /* accepts NULL */

/* The agent's cache (made on first use). */
mt_chain_cache *mt_chain_cache_global(void);

/* The key of the trust that judges a path: |bundle_fp| (the whole bundle,
 * mt_trust_fingerprint), the trust domain whose roots were used and the
 * X509 purpose (X509_PURPOSE_SSL_CLIENT / _SSL_SERVER). */
void mt_chain_cache_trust_key(const uint8_t bundle_fp[32], const char *trust_domain,
                              size_t trust_domain_len, int purpose, uint8_t out[32]);

/* 1 when |leaf| with |untrusted| (exactly one intermediate) is valid at
 * |now| by a remembered intermediate (see the header); *out_not_after is
 * then the earliest notAfter on the path. 0: verify in full. */
int mt_chain_cache_verify(mt_chain_cache *cache, const uint8_t trust_key[32], X509 *leaf,
                          STACK_OF(X509) * untrusted, int purpose, time_t now,
                          int64_t *out_not_after);

/* After a successful full verification whose built |chain| is leaf,
 * intermediate, root: remembers the intermediate, when it may be. */
void mt_chain_cache_remember(mt_chain_cache *cache, const uint8_t trust_key[32],
                             STACK_OF(X509) * chain, time_t now);

/* Entries now, and fast-path answers so far (hits) / "verify in full" (misses). */
size_t mt_chain_cache_count(mt_chain_cache *cache);
uint64_t mt_chain_cache_hits(mt_chain_cache *cache);
uint64_t mt_chain_cache_misses(mt_chain_cache *cache);

#ifdef __cplusplus
}
#endif

#endif /* MT_CHAIN_CACHE_H */
