/* jwt: verification of the bearer tokens (JWS compact serialization, RFC 7515
 * and 7519) that callers of mtls-ca present, typically Kubernetes projected
 * service-account tokens; and the mapping from their subject to the SPIFFE ID
 * the caller is entitled to.
 *
 * Promises: only ES256 and RS256 are accepted, and only with a key of the
 * matching type (no "none", no HMAC, no RS/ES confusion); every byte of the
 * token is parsed strictly (base64url without padding; JSON with jansson,
 * refusing duplicate member names at any level, data after the object,
 * "\u0000" in strings, nesting deeper than 16 and numbers no 64-bit integer
 * or double can hold); the signature is checked before any claim is read; a
 * token that fails any check is refused with an error code and a message
 * (token bytes in it only as printable ASCII). The key set is immutable once
 * loaded and may be shared by threads. Nothing here logs. */
#ifndef MT_JWT_H
#define MT_JWT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  MT_JWT_MAX_TOKEN_LEN = 16 * 1024, /* bytes of the compact form */
  MT_JWT_DEFAULT_LEEWAY_S = 60,     /* clock skew allowed on exp and nbf */
  MT_JWT_MAX_LEEWAY_S = 3600,       /* more than this is a configuration error */
  MT_JWT_CLAIM_MAX_LEN = 1024,      /* longest sub / iss copied out, bytes */
  MT_JWT_ERROR_MAX_LEN = 256,       /* message buffer in mt_jwt_error */
  MT_JWT_KID_MAX_LEN = 43,          /* our key ids: unpadded base64url of SHA-256 */
  MT_JWT_TYP_MAX_LEN = 15,          /* longest header "typ" copied out */
};

typedef enum {
  MT_JWT_OK = 0,
  MT_JWT_INVALID_ARGUMENT, /* NULL input or a bad mt_jwt_expect: the caller's bug */
  MT_JWT_TOO_LARGE,        /* longer than MT_JWT_MAX_TOKEN_LEN */
  MT_JWT_MALFORMED,        /* not three base64url parts of strict JSON, bad claim type */
  MT_JWT_UNSUPPORTED_ALG,  /* alg is not ES256 or RS256 (e.g. "none", HS256), or "crit" */
  MT_JWT_UNKNOWN_KEY,      /* no key of the kind alg requires (or kid names another kind) */
  MT_JWT_BAD_SIGNATURE,    /* no eligible key verifies the signature */
  MT_JWT_MISSING_CLAIM,    /* sub, iss, aud or exp absent */
  MT_JWT_WRONG_ISSUER,
  MT_JWT_WRONG_AUDIENCE,
  MT_JWT_EXPIRED,       /* exp <= now - leeway */
  MT_JWT_NOT_YET_VALID, /* nbf > now + leeway */
  MT_JWT_INTERNAL,      /* out of memory: not the token's fault */
} mt_jwt_err;

typedef struct {
  mt_jwt_err code;
  char message[MT_JWT_ERROR_MAX_LEN]; /* for logs: names the check that failed */
} mt_jwt_error;

/* Stable lowercase name of |code| ("bad_signature"), for counters and logs. */
const char *mt_jwt_err_name(mt_jwt_err code);

/* ---- Key set ---------------------------------------------------------------
 * Public keys that may sign tokens: EC P-256 (for ES256) and RSA of at least
 * 2048 bits (for RS256). Each key's id is Kubernetes' own: the unpadded
 * base64url SHA-256 of its DER SubjectPublicKeyInfo, so a kube-apiserver
 * token's "kid" names the PEM key it was signed with. */
typedef struct mt_jwt_keys mt_jwt_keys;

/* Loads one or more "PUBLIC KEY" PEM blocks from |pem| (|len| bytes). Any
 * other block, a weak or unsupported key, or no key at all fails the whole
 * load: returns NULL with the reason in |err|. */
mt_jwt_keys *mt_jwt_keys_load_pem(const char *pem, size_t len, char *err, size_t err_len);
void mt_jwt_keys_free(mt_jwt_keys *keys); /* accepts NULL */
size_t mt_jwt_keys_count(const mt_jwt_keys *keys);

/* ---- Verification ---------------------------------------------------------- */

/* What a valid token must say. Strings are borrowed for the call. */
typedef struct {
  /* "iss" must equal it exactly; NULL: no issuer is required (JWT-SVIDs,
   * whose spec leaves iss out) and "iss", when present, is not checked. */
  const char *issuer;
  const char *audience; /* "aud" (string, or array of strings) must contain it */
  int64_t now_s;        /* current time, Unix seconds, >= 0 */
  int64_t leeway_s;     /* 0..MT_JWT_MAX_LEEWAY_S; mt_jwt_expect_init sets the default */
} mt_jwt_expect;

/* Fills |expect| with the given values and MT_JWT_DEFAULT_LEEWAY_S. */
void mt_jwt_expect_init(mt_jwt_expect *expect, const char *issuer, const char *audience,
                        int64_t now_s);

/* The claims of a verified token, copied out (NUL-terminated). */
typedef struct {
  char sub[MT_JWT_CLAIM_MAX_LEN + 1];
  char iss[MT_JWT_CLAIM_MAX_LEN + 1];
  int64_t exp; /* Unix seconds */
  /* "kubernetes.io": {"node": {"name": ...}}: the node of the pod the token
   * is bound to (Kubernetes 1.30+); "" when the token has none. */
  char node_name[MT_JWT_CLAIM_MAX_LEN + 1];
  /* The header's "typ" ("" when absent; "~" when longer than
   * MT_JWT_TYP_MAX_LEN): informational here, JWT-SVID validators check it. */
  char typ[MT_JWT_TYP_MAX_LEN + 1];
} mt_jwt_claims;

/* Verifies |token| (|len| bytes, compact form "header.payload.signature",
 * need not be NUL-terminated). Header: "alg" ES256 (signature is raw r||s,
 * 64 bytes) or RS256 (PKCS#1 v1.5, SHA-256); "kid" optional: when it names a
 * key of the set only that key is tried, otherwise every key of alg's type.
 * A "crit" header is refused. Claims: iss, aud, exp, sub required; nbf
 * optional; exp and nbf must be integers (a fraction or exponent is
 * refused, not rounded); "kubernetes.io" optional, and when present it must
 * be an object whose "node" (optional) is an object whose "name" (optional)
 * is a string; other claims (iat, jti, ...) are not read, whatever their type.
 * Returns MT_JWT_OK and fills |out| (may be NULL), or the first failed check
 * with its message in |err| (may be NULL); |out| is zeroed on failure. */
mt_jwt_err mt_jwt_verify(const mt_jwt_keys *keys, const char *token, size_t len,
                         const mt_jwt_expect *expect, mt_jwt_claims *out, mt_jwt_error *err);

/* mt_jwt_verify, and on MT_JWT_OK also the verified payload: its JSON text
 * (decoded, NUL-terminated, malloc'd: the caller frees it) in |*payload|
 * and its length in |*payload_len|, for callers that hand every claim on.
 * |*payload| is NULL on failure. */
mt_jwt_err mt_jwt_verify_payload(const mt_jwt_keys *keys, const char *token, size_t len,
                                 const mt_jwt_expect *expect, mt_jwt_claims *out, char **payload,
                                 size_t *payload_len, mt_jwt_error *err);

/* ---- Producing tokens (mtls-ca's JWT-SVIDs) -------------------------------- */

/* Unpadded base64url of |len| bytes into |out|, which has room for
 * 4 * ceil(len / 3) + 1 bytes; NUL-terminated. */
void mt_jwt_b64url_encode(const uint8_t *in, size_t len, char *out);

/* |pkey|'s key id (see "Key set"), NUL-terminated into |kid|
 * (MT_JWT_KID_MAX_LEN + 1 bytes). |pkey| is an EVP_PKEY. Returns 1, or 0
 * when out of memory. */
struct evp_pkey_st;
int mt_jwt_key_id_of(const struct evp_pkey_st *pkey, char *kid);

/* Maps a Kubernetes service-account subject "system:serviceaccount:NS:SA"
 * to "spiffe://TD/ns/NS/sa/SA". NS and SA must be non-empty valid SPIFFE path
 * segments (so no ':' or '/' inside), TD a valid trust domain, and the result
 * must fit |out_len| including the NUL. Returns 1, or 0 (|out| then holds "")
 * for any other subject: a user, a node, a malformed name. */
int mt_jwt_sub_to_spiffe_id(const char *sub, const char *trust_domain, char *out, size_t out_len);

#ifdef __cplusplus
}
#endif

#endif /* MT_JWT_H */
