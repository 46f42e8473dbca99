/* auth: who is calling mtls-ca. A caller presents a bearer token (a
 * Kubernetes service-account JWT) in the "authorization" metadata; the
 * token is verified with jwt.h against the configured issuer, audience and
 * keys, and its subject is mapped to the SPIFFE ID the caller is entitled
 * to. Shared by every method the server offers.
 *
 * The key set and the issuer can be replaced at run time (SIGHUP, the API
 * server); until both are known every call is refused as retryable
 * (UNAVAILABLE), never judged without them. The verdict of one call never
 * depends on state kept from an earlier call. Nothing here logs. */
#ifndef MT_CP_AUTH_H
#define MT_CP_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "agent/svid.h"
#include "controlplane/jwt.h"
#include "grpc/server.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  MT_CA_AUTH_REASON_MAX = 32,
  MT_CA_AUTH_MESSAGE_MAX = MT_JWT_ERROR_MAX_LEN + 64,
};

typedef struct mt_ca_auth mt_ca_auth;

/* The verdict on one call. */
typedef struct {
  mt_grpc_status status; /* OK, UNAUTHENTICATED, PERMISSION_DENIED, UNAVAILABLE or INTERNAL */
  /* Stable code for counters and the access log: "ok", "no_token",
   * "malformed_authorization", "not_service_account", "no_keys", "no_issuer", or a jwt.h error name
   * ("expired", "bad_signature", "wrong_audience", ...). */
  char reason[MT_CA_AUTH_REASON_MAX];
  /* For the caller (grpc-message) and the logs, e.g. "token expired: ...". */
  char message[MT_CA_AUTH_MESSAGE_MAX];
  char subject[MT_JWT_CLAIM_MAX_LEN + 1];   /* the token's sub, "" before verification */
  char spiffe_id[MT_SPIFFE_ID_MAX_LEN + 1]; /* set when status is OK */
  /* The token's kubernetes.io.node.name (the caller's node), as the token
   * says it (unvalidated); "" when it has none or was not verified. */
  char node_name[MT_JWT_CLAIM_MAX_LEN + 1];
} mt_ca_auth_result;

/* Strings are copied. Takes |keys|, which may be NULL: the keys come later
 * (from the API server, jwks_source.h) and until then every call is refused
 * with UNAVAILABLE "no_keys", which callers retry. |issuer| may be NULL
 * too: it comes later (issuer_source.h), and until then every call is
 * refused with UNAVAILABLE "no_issuer". Returns NULL when out of memory
 * (|keys| is then freed). */
mt_ca_auth *mt_ca_auth_new(const char *trust_domain, const char *issuer, const char *audience,
                           int64_t leeway_s, mt_jwt_keys *keys);
void mt_ca_auth_free(mt_ca_auth *auth); /* accepts NULL */

/* Replaces the key set (takes |keys|; the old one is freed). */
void mt_ca_auth_set_keys(mt_ca_auth *auth, mt_jwt_keys *keys);

/* Replaces the issuer ("iss" must equal it; copied). Returns 0 when out of
 * memory (the issuer in force stays). */
int mt_ca_auth_set_issuer(mt_ca_auth *auth, const char *issuer);

/* The issuer in force (borrowed until the next mt_ca_auth_set_issuer), or
 * NULL while none is known. */
const char *mt_ca_auth_issuer(const mt_ca_auth *auth);

/* |hook| runs from inside mt_ca_auth_check whenever a token was refused
 * for a reason a newer issuer could cure (none known yet, or a token whose
 * signature verified names another issuer: the API server's may have
 * changed), so the owner can discover it again. NULL removes it. */
void mt_ca_auth_on_issuer_miss(mt_ca_auth *auth, void (*hook)(void *arg), void *arg);

/* |hook| runs from inside mt_ca_auth_check whenever a token was refused
 * for a reason a newer key set could cure (no key set yet, no key of the
 * token's kind, a signature no key verifies), so the owner can fetch the
 * keys again. NULL removes it. */
void mt_ca_auth_on_key_miss(mt_ca_auth *auth, void (*hook)(void *arg), void *arg);

/* Judges the call |req| at |now_s| (Unix seconds). */
void mt_ca_auth_check(const mt_ca_auth *auth, const mt_grpc_request *req, int64_t now_s,
                      mt_ca_auth_result *out);

/* The bearer token in an "authorization" value: "Bearer <token>" (scheme
 * case-insensitive, one or more spaces). Returns 1 with the token's bounds,
 * or 0 for any other form. */
int mt_ca_auth_bearer(const char *value, const char **token, size_t *token_len);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_AUTH_H */
