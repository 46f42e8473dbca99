/* auth.c: bearer token -> SPIFFE ID for mtls-ca's callers. */
#include "controlplane/auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { SHOWN_SUBJECT_MAX = 128 };

static const char kAuthorization[] = "authorization";
static const char kBearer[] = "bearer";

struct mt_ca_auth {
  char *trust_domain;
  char *issuer;
  char *audience;
  int64_t leeway_s;
  mt_jwt_keys *keys; /* NULL until the first set arrives */
  void (*on_key_miss)(void *arg);
  void *key_miss_arg;
  void (*on_issuer_miss)(void *arg);
  void *issuer_miss_arg;
};

mt_ca_auth *mt_ca_auth_new(const char *trust_domain, const char *issuer, const char *audience,
                           int64_t leeway_s, mt_jwt_keys *keys) {
  mt_ca_auth *a = calloc(1, sizeof(*a));
  if (a == NULL) {
    mt_jwt_keys_free(keys);
    return NULL;
  }
  a->keys = keys;
  a->leeway_s = leeway_s;
  a->trust_domain = strdup(trust_domain);
  a->issuer = issuer != NULL ? strdup(issuer) : NULL;
  a->audience = strdup(audience);
  if (a->trust_domain == NULL || (issuer != NULL && a->issuer == NULL) || a->audience == NULL) {
    mt_ca_auth_free(a);
    return NULL;
  }
  return a;
}

void mt_ca_auth_free(mt_ca_auth *a) {
  if (a == NULL) return;
  mt_jwt_keys_free(a->keys);
  free(a->trust_domain);
  free(a->issuer);
  free(a->audience);
  free(a);
}

void mt_ca_auth_set_keys(mt_ca_auth *a, mt_jwt_keys *keys) {
  mt_jwt_keys_free(a->keys);
  a->keys = keys;
}

int mt_ca_auth_set_issuer(mt_ca_auth *a, const char *issuer) {
  char *copy = strdup(issuer);
  if (copy == NULL) return 0;
  free(a->issuer);
  a->issuer = copy;
  return 1;
}

const char *mt_ca_auth_issuer(const mt_ca_auth *a) { return a->issuer; }

void mt_ca_auth_on_issuer_miss(mt_ca_auth *a, void (*hook)(void *arg), void *arg) {
  a->on_issuer_miss = hook;
  a->issuer_miss_arg = arg;
}

void mt_ca_auth_on_key_miss(mt_ca_auth *a, void (*hook)(void *arg), void *arg) {
  a->on_key_miss = hook;
  a->key_miss_arg = arg;
}

int mt_ca_auth_bearer(const char *value, const char **token, size_t *token_len) {
  size_t scheme = sizeof(kBearer) - 1;
  if (value == NULL || strncasecmp(value, kBearer, scheme) != 0 || value[scheme] != ' ') return 0;
  const char *t = value + scheme;
  while (*t == ' ') t++;
  size_t len = strlen(t);
  while (len > 0 && t[len - 1] == ' ') len--;
  if (len == 0) return 0;
  *token = t;
  *token_len = len;
  return 1;
}

/* What the caller reads first in grpc-message for each refusal. */
static const char *jwt_summary(mt_jwt_err code) {
  switch (code) {
    case MT_JWT_EXPIRED: return "token expired";
    case MT_JWT_NOT_YET_VALID: return "token not yet valid";
    case MT_JWT_BAD_SIGNATURE: return "bad signature";
    case MT_JWT_WRONG_AUDIENCE: return "wrong audience";
    case MT_JWT_WRONG_ISSUER: return "wrong issuer";
    case MT_JWT_MALFORMED: return "malformed token";
    case MT_JWT_UNSUPPORTED_ALG: return "unsupported token algorithm";
    case MT_JWT_UNKNOWN_KEY: return "unknown signing key";
    case MT_JWT_MISSING_CLAIM: return "missing claim";
    case MT_JWT_TOO_LARGE: return "token too large";
    case MT_JWT_OK:
    case MT_JWT_INVALID_ARGUMENT:
    case MT_JWT_INTERNAL: break;
  }
  return "internal error verifying the token";
}

static void refuse(mt_ca_auth_result *out, mt_grpc_status status, const char *reason,
                   const char *message) {
  out->status = status;
  snprintf(out->reason, sizeof(out->reason), "%s", reason);
  snprintf(out->message, sizeof(out->message), "%s", message);
}

/* A verified token whose subject is not a service account of a valid name. */
static void refuse_subject(mt_ca_auth_result *out) {
  char message[MT_CA_AUTH_MESSAGE_MAX];
  snprintf(message, sizeof(message),
           "subject \"%.*s\" is not a Kubernetes service account "
           "(system:serviceaccount:NAMESPACE:NAME)",
           SHOWN_SUBJECT_MAX, out->subject);
  refuse(out, MT_GRPC_PERMISSION_DENIED, "not_service_account", message);
}

void mt_ca_auth_check(const mt_ca_auth *a, const mt_grpc_request *req, int64_t now_s,
                      mt_ca_auth_result *out) {
  memset(out, 0, sizeof(*out));
  const char *value = mt_grpc_request_metadata(req, kAuthorization);
  const char *token = NULL;
  size_t token_len = 0;
  if (value == NULL) {
    refuse(out, MT_GRPC_UNAUTHENTICATED, "no_token",
           "missing bearer token (\"authorization: Bearer <JWT>\" metadata)");
    return;
  }
  if (!mt_ca_auth_bearer(value, &token, &token_len)) {
    refuse(out, MT_GRPC_UNAUTHENTICATED, "malformed_authorization",
           "authorization metadata is not \"Bearer <JWT>\"");
    return;
  }
  if (a->keys == NULL) {
    refuse(out, MT_GRPC_UNAVAILABLE, "no_keys",
           "token signing keys not loaded yet (fetching the API server's JWKS); retry");
    if (a->on_key_miss) a->on_key_miss(a->key_miss_arg);
    return;
  }
  if (a->issuer == NULL) {
    refuse(out, MT_GRPC_UNAVAILABLE, "no_issuer",
           "token issuer not known yet (discovering it from the API server's "
           "/.well-known/openid-configuration); retry");
    if (a->on_issuer_miss) a->on_issuer_miss(a->issuer_miss_arg);
    return;
  }
  mt_jwt_expect expect;
  mt_jwt_expect_init(&expect, a->issuer, a->audience, now_s);
  expect.leeway_s = a->leeway_s;
  mt_jwt_claims claims;
  mt_jwt_error jerr;
  mt_jwt_err rc = mt_jwt_verify(a->keys, token, token_len, &expect, &claims, &jerr);
  if (rc != MT_JWT_OK) {
    char message[MT_CA_AUTH_MESSAGE_MAX];
    snprintf(message, sizeof(message), "%s: %s", jwt_summary(rc), jerr.message);
    int ours = rc == MT_JWT_INTERNAL || rc == MT_JWT_INVALID_ARGUMENT;
    refuse(out, ours ? MT_GRPC_INTERNAL : MT_GRPC_UNAUTHENTICATED, mt_jwt_err_name(rc), message);
    if ((rc == MT_JWT_UNKNOWN_KEY || rc == MT_JWT_BAD_SIGNATURE) && a->on_key_miss)
      a->on_key_miss(a->key_miss_arg);
    if (rc == MT_JWT_WRONG_ISSUER && a->on_issuer_miss) a->on_issuer_miss(a->issuer_miss_arg);
    return;
  }
  snprintf(out->subject, sizeof(out->subject), "%s", claims.sub);
  snprintf(out->node_name, sizeof(out->node_name), "%s", claims.node_name);
  if (!mt_jwt_sub_to_spiffe_id(claims.sub, a->trust_domain, out->spiffe_id,
                               sizeof(out->spiffe_id))) {
    refuse_subject(out);
    return;
  }
  refuse(out, MT_GRPC_OK, "ok", "");
}
