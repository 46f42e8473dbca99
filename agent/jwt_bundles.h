/* jwt_bundles: the JWT bundles an agent validates JWT-SVIDs with: per trust
 * domain, the JWKS document as mtls-ca sent it (served as is by the
 * Workload API's FetchJWTBundles) and its keys parsed for verification;
 * and the JWT-SVID validation rules (SPIFFE JWT-SVID spec, section 4) over
 * them.
 *
 * A set is immutable once built; a newer set replaces it whole. Pure: no
 * I/O, no logging, no clock (time is passed in). */
#ifndef MT_JWT_BUNDLES_H
#define MT_JWT_BUNDLES_H

#include <stddef.h>
#include <stdint.h>

#include "agent/svid.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  MT_JWT_BUNDLES_MAX = 64, /* trust domains in one set */
  MT_JWT_BUNDLES_ERR_MAX = 320,
};

typedef struct mt_jwt_bundles mt_jwt_bundles;

/* One trust domain's bundle, borrowed from its set. */
typedef struct {
  const char *trust_domain_id; /* "spiffe://example.org" */
  const uint8_t *jwks;         /* the JWKS document, as received */
  size_t jwks_len;
} mt_jwt_bundle_view;

/* Builds a set from a JwtBundles message (proto/mtlsd/jwt.proto, encoded).
 * Every key must be "spiffe://<valid trust domain>" (no path) and every
 * document a JWKS jwks.h accepts; anything else refuses the whole message
 * (NULL, the reason in |err|): a partial set would make valid tokens look
 * forged. An empty map is a valid, empty set. */
mt_jwt_bundles *mt_jwt_bundles_decode(const uint8_t *msg, size_t len, char *err, size_t err_len);
void mt_jwt_bundles_free(mt_jwt_bundles *bundles); /* accepts NULL */

size_t mt_jwt_bundles_count(const mt_jwt_bundles *bundles);
/* The |i|th bundle, in trust-domain order. */
mt_jwt_bundle_view mt_jwt_bundles_at(const mt_jwt_bundles *bundles, size_t i);

/* 1 when both sets hold the same documents (NULL is the empty set). */
int mt_jwt_bundles_equal(const mt_jwt_bundles *a, const mt_jwt_bundles *b);

/* A JWT-SVID that passed validation. */
typedef struct {
  char spiffe_id[MT_SPIFFE_ID_MAX_LEN + 1]; /* "sub" */
  int64_t expires_at;                       /* "exp", Unix seconds */
  char *claims_json;                        /* the payload, JSON text (owned) */
  size_t claims_json_len;
} mt_jwt_svid_valid;

/* Frees what |v| owns (not |v|). */
void mt_jwt_svid_valid_dispose(mt_jwt_svid_valid *v);

/* Validates |token| for |audience| at |now_s| (JWT-SVID spec 4): the
 * signature verifies with a key of the bundle of the trust domain of its
 * "sub" (alg ES256 or RS256: controlplane/jwt.h); "typ", when present, is
 * "JWT" or "JOSE"; "sub" is a SPIFFE ID; "aud" contains |audience|; "exp"
 * is after |now_s| minus MT_JWT_DEFAULT_LEEWAY_S. No issuer is required.
 * Returns 1 and fills |out| (dispose it), or 0 with the reason in |err|. */
int mt_jwt_bundles_validate(const mt_jwt_bundles *bundles, const char *token, size_t len,
                            const char *audience, int64_t now_s, mt_jwt_svid_valid *out, char *err,
                            size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* MT_JWT_BUNDLES_H */
