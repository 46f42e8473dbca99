/* jwks: a JSON Web Key Set (RFC 7517), as kube-apiserver publishes its
 * service-account signing keys at /openid/v1/jwks, turned into the key set
 * jwt.h verifies tokens with.
 *
 * Accepted: "kty":"RSA" ("n", "e"; at least 2048 bits, RS256) and
 * "kty":"EC" with "crv":"P-256" ("x", "y"; ES256). A key whose "use" is
 * neither "sig" nor "jwt-svid" (a SPIFFE bundle's JWT authorities), whose "alg" is not RS256/ES256,
 * or of another type or curve is skipped (counted, not fatal: an issuer may publish more than we
 * verify). A document that is not a JSON object with a "keys" array, a key of an accepted type with
 * bad members (missing, not base64url, a point not on the curve, a weak RSA modulus), or no usable
 * key at all is refused as a whole. The JSON parser (jansson) refuses duplicate member names. Pure:
 * no I/O. */
#ifndef MT_CP_JWKS_H
#define MT_CP_JWKS_H

#include <stddef.h>

#include "controlplane/jwt.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { MT_JWKS_MAX_BYTES = 256 * 1024, MT_JWKS_MAX_KEYS = 64 };

/* Returns the key set (|*skipped| = keys left out, may be NULL), or NULL
 * with the reason in |err|. */
mt_jwt_keys *mt_jwks_parse(const char *json, size_t len, size_t *skipped, char *err,
                           size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_JWKS_H */
