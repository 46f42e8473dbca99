/* oidc_discovery: the service-account issuer's OpenID provider
 * configuration, as kube-apiserver serves it at
 * /.well-known/openid-configuration, reduced to what mtls-ca uses: the
 * "issuer" (the "iss" claim of every service-account token it signs).
 *
 * kube-apiserver's document is a JSON object with "issuer", "jwks_uri",
 * "response_types_supported", "subject_types_supported" and
 * "id_token_signing_alg_values_supported"; members other than "issuer" are
 * not looked at. Refused: a body that is not JSON or not an object
 * (duplicate member names included), no "issuer" or one that is not a
 * string, and an issuer that is not an https URL as OpenID Connect
 * Discovery 1.0 requires (https scheme, a host, no query, no fragment, no
 * whitespace or control characters), or longer than a token's "iss" can
 * be (MT_JWT_CLAIM_MAX_LEN). Pure: no I/O. */
#ifndef MT_CP_OIDC_DISCOVERY_H
#define MT_CP_OIDC_DISCOVERY_H

#include <stddef.h>

#include "controlplane/jwt.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MT_OIDC_DISCOVERY_PATH "/.well-known/openid-configuration"

enum {
  MT_OIDC_DISCOVERY_MAX_BYTES = 64 * 1024, /* kube-apiserver's is about 300 bytes */
  MT_OIDC_ISSUER_MAX_LEN = MT_JWT_CLAIM_MAX_LEN,
};

/* Copies the document's issuer into |issuer| (|issuer_len| at least
 * MT_OIDC_ISSUER_MAX_LEN + 1) and returns 1, or returns 0 with the reason
 * in |err|. */
int mt_oidc_discovery_issuer(const char *json, size_t len, char *issuer, size_t issuer_len,
                             char *err, size_t err_len);

/* 1 when |url| is an issuer this module accepts (the rules above), else 0
 * with the reason in |err|. */
int mt_oidc_issuer_check(const char *url, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_OIDC_DISCOVERY_H */
