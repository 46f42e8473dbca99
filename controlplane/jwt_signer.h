/* jwt_signer: mtls-ca's JWT-SVID signing keys and the JWKS that publishes
 * them (SPIFFE JWT-SVID and bundle formats).
 *
 * Owns one current ES256 (EC P-256) private key, which signs every token,
 * and the keys it replaced, each kept in the published JWKS until every
 * token it can have signed has expired (rotation time + the maximum token
 * lifetime + MT_JWT_DEFAULT_LEEWAY_S): a validator never holds a token
 * that is still valid while its key is gone. Keys are named as jwt.h names
 * them (unpadded base64url SHA-256 of the DER SubjectPublicKeyInfo).
 *
 * The key comes from a PEM file (reloaded when the file changes: a rename
 * over it, an edit) or is generated. Time is always passed in (Unix
 * seconds), so every rule here is testable without waiting. Single-
 * threaded; nothing here logs. */
#ifndef MT_CP_JWT_SIGNER_H
#define MT_CP_JWT_SIGNER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  /* Retired keys still published; a rotation past it drops the oldest
   * (only when keys rotate faster than max_ttl, i.e. misuse). */
  MT_JWT_SIGNER_MAX_RETIRED = 8,
  MT_JWT_SIGNER_MAX_AUDIENCES = 32,
  MT_JWT_SIGNER_ERR_MAX = 256,
};

typedef struct mt_jwt_signer mt_jwt_signer;

/* An empty signer (no key yet) for tokens that live at most |max_ttl_s|.
 * Returns NULL when out of memory. */
mt_jwt_signer *mt_jwt_signer_new(int64_t max_ttl_s);
void mt_jwt_signer_free(mt_jwt_signer *signer); /* accepts NULL */

/* Makes a fresh P-256 key the current one at |now_s|. Returns 1, or 0 with
 * the reason in |err|. */
int mt_jwt_signer_generate(mt_jwt_signer *signer, int64_t now_s, char *err, size_t err_len);

/* Makes the EC P-256 private key in |pem| ("EC PRIVATE KEY" or "PRIVATE
 * KEY") the current one at |now_s|. The same key as the current one
 * changes nothing (returns 1, |*rotated| 0). Anything else (not PEM, not
 * P-256, several keys) is refused: 0 with the reason in |err|, and the
 * keys in force stay. |rotated| may be NULL. */
int mt_jwt_signer_use_pem(mt_jwt_signer *signer, const char *pem, size_t len, int64_t now_s,
                          int *rotated, char *err, size_t err_len);

/* Reads |path| when it has changed since the last call (file_stamp.h) and
 * uses its key as mt_jwt_signer_use_pem does. Returns 1 when the key in
 * force changed, 0 when nothing did (file unchanged, or the same key),
 * -1 when the file is unreadable or refused (reason in |err|; the keys in
 * force stay, and the same file content is not read again). */
int mt_jwt_signer_reload_file(mt_jwt_signer *signer, const char *path, int64_t now_s, char *err,
                              size_t err_len);

/* Drops retired keys no token can still need at |now_s|. Returns 1 when
 * any was dropped (the JWKS changed). */
int mt_jwt_signer_expire(mt_jwt_signer *signer, int64_t now_s);

/* The earliest time a retired key can be dropped, or 0 when none waits. */
int64_t mt_jwt_signer_next_expiry(const mt_jwt_signer *signer);

/* Changes whenever the published key set does (a rotation, an expiry). */
uint64_t mt_jwt_signer_generation(const mt_jwt_signer *signer);

/* The current key's id, or "" before there is one. */
const char *mt_jwt_signer_kid(const mt_jwt_signer *signer);

/* The JWKS document (JSON text, NUL-terminated, borrowed until the key set
 * next changes): {"keys":[{"kty":"EC","crv":"P-256","x":...,"y":...,
 * "kid":...,"use":"jwt-svid","alg":"ES256"}, ...]}, the current key first.
 * NULL before there is a key or when out of memory. */
const char *mt_jwt_signer_jwks(mt_jwt_signer *signer, size_t *len);

/* What a token says. Borrowed for the call. */
typedef struct {
  const char *subject;               /* "sub": the SPIFFE ID */
  const char *const *audiences;      /* "aud": a string when one, else an array */
  size_t num_audiences;              /* 1 .. MT_JWT_SIGNER_MAX_AUDIENCES */
  int64_t issued_at_s, expires_at_s; /* "iat", "exp" */
} mt_jwt_svid_claims;

/* Signs a JWT-SVID with the current key: header {"alg":"ES256","kid":...,
 * "typ":"JWT"}, claims sub, aud, exp, iat. Returns the compact form
 * (malloc'd; the caller frees it), or NULL with the reason in |err| (no
 * key yet, bad claims, out of memory). */
char *mt_jwt_signer_sign(const mt_jwt_signer *signer, const mt_jwt_svid_claims *claims, char *err,
                         size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_JWT_SIGNER_H */
