/* ca_config.c: YAML -> mt_ca_config. Unknown keys are errors: a typo must
 * never silently fall back to a default. */
#include "controlplane/ca_config.h"

#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/svid.h"
#include "controlplane/yaml_doc.h"
#include "controlplane/jwt.h"

enum { MT_NAMESPACE_MAX = 63 }; /* a DNS label, as Kubernetes limits namespace names */

enum {
  MESH_POLL_MIN_MS = 10,
  MESH_POLL_MAX_MS = 3600 * 1000,
};

static const char kDefaultListen[] = "0.0.0.0:15012";
static const char kDefaultAudience[] = "istio-ca";

/* A file path, resolved against the configuration file's directory. */
static int want_path(mt_yaml_ctx *ctx, const yaml_node_t *v, const char *key, char **out) {
  char *raw = NULL;
  if (!mt_yaml_want_string(ctx, v, key, &raw)) return 0;
  free(*out);
  *out = mt_yaml_resolve_path(ctx->path, raw);
  free(raw);
  return *out != NULL || mt_yaml_fail(ctx, v, "out of memory");
}

static int on_tls_key(mt_yaml_ctx *ctx, const char *key, yaml_node_t *k, yaml_node_t *v,
                      void *target) {
  mt_ca_config *c = target;
  if (strcmp(key, "cert_file") == 0) return want_path(ctx, v, key, &c->tls_cert_file);
  if (strcmp(key, "key_file") == 0) return want_path(ctx, v, key, &c->tls_key_file);
  if (strcmp(key, "min_version") == 0) {
    const char *s;
    if (!mt_yaml_want_scalar(ctx, v, key, &s)) return 0;
    if (strcmp(s, "1.3") == 0)
      c->tls_min_version = TLS1_3_VERSION;
    else if (strcmp(s, "1.2") == 0)
      c->tls_min_version = TLS1_2_VERSION;
    else
      return mt_yaml_fail(ctx, v, "'min_version' must be \"1.2\" or \"1.3\", got '%s'", s);
    return 1;
  }
  return mt_yaml_fail(ctx, k, "unknown key 'tls.%s'", key);
}

static int on_signer_key(mt_yaml_ctx *ctx, const char *key, yaml_node_t *k, yaml_node_t *v,
                         void *target) {
  mt_ca_config *c = target;
  if (strcmp(key, "cert_file") == 0) return want_path(ctx, v, key, &c->signer_cert_file);
  if (strcmp(key, "key_file") == 0) return want_path(ctx, v, key, &c->signer_key_file);
  return mt_yaml_fail(ctx, k, "unknown key 'signer.%s'", key);
}

static int on_tokens_key(mt_yaml_ctx *ctx, const char *key, yaml_node_t *k, yaml_node_t *v,
                         void *target) {
  mt_ca_config *c = target;
  if (strcmp(key, "issuer") == 0) return mt_yaml_want_string(ctx, v, key, &c->token_issuer);
  if (strcmp(key, "audience") == 0) return mt_yaml_want_string(ctx, v, key, &c->token_audience);
  if (strcmp(key, "keys_file") == 0) return want_path(ctx, v, key, &c->token_keys_file);
  if (strcmp(key, "leeway_s") == 0)
    return mt_yaml_want_int64(ctx, v, key, 0, MT_JWT_MAX_LEEWAY_S, &c->token_leeway_s);
  if (strcmp(key, "jwks_refresh_s") == 0)
    return mt_yaml_want_int64(ctx, v, key, 10, 86400, &c->jwks_refresh_s);
  if (strcmp(key, "jwks_min_interval_ms") == 0)
    return mt_yaml_want_int64(ctx, v, key, 100, 3600000, &c->jwks_min_interval_ms);
  return mt_yaml_fail(ctx, k, "unknown key 'tokens.%s'", key);
}

static int on_jwt_svid_key(mt_yaml_ctx *ctx, const char *key, yaml_node_t *k, yaml_node_t *v,
                           void *target) {
  mt_ca_config *c = target;
  if (strcmp(key, "ttl_s") == 0)
    return mt_yaml_want_int64(ctx, v, key, MT_CA_MIN_JWT_SVID_TTL_S, MT_CA_MAX_JWT_SVID_TTL_S,
                              &c->jwt_svid_ttl_s);
  if (strcmp(key, "max_ttl_s") == 0)
    return mt_yaml_want_int64(ctx, v, key, MT_CA_MIN_JWT_SVID_TTL_S, MT_CA_MAX_JWT_SVID_TTL_S,
                              &c->jwt_svid_max_ttl_s);
  if (strcmp(key, "signing_key_file") == 0)
    return want_path(ctx, v, key, &c->jwt_svid_signing_key_file);
  return mt_yaml_fail(ctx, k, "unknown key 'jwt_svid.%s'", key);
}

/* A namespace name (a DNS label), as policies name it in their metadata. */
static int want_root_namespace(mt_yaml_ctx *ctx, yaml_node_t *v, mt_ca_config *c) {
  char *ns = NULL;
  if (!mt_yaml_want_string(ctx, v, "root_namespace", &ns)) return 0;
  free(c->k8s_root_namespace);
  c->k8s_root_namespace = ns;
  size_t len = strlen(ns);
  int ok = len > 0 && len <= MT_NAMESPACE_MAX && ns[0] != '-' && ns[len - 1] != '-';
  for (const char *p = ns; ok && *p; p++)
    ok = (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-';
  if (!ok)
    return mt_yaml_fail(ctx, v,
                        "'kubernetes.root_namespace' must be a namespace name (lowercase letters, "
                        "digits and '-', at most %d), got '%s'",
                        MT_NAMESPACE_MAX, ns);
  return 1;
}

/* PERMISSIVE or STRICT: DISABLE as a mesh-wide default would turn mesh TLS
 * off for every workload no PeerAuthentication names, which no one means
 * by a default. */
static int want_mtls_mode(mt_yaml_ctx *ctx, yaml_node_t *v, mt_ca_config *c) {
  const char *s = v->type == YAML_SCALAR_NODE ? mt_yaml_scalar(v) : NULL;
  if (s != NULL && strcmp(s, "PERMISSIVE") == 0) {
    c->k8s_default_mtls_mode = MT_CA_MTLS_PERMISSIVE;
    return 1;
  }
  if (s != NULL && strcmp(s, "STRICT") == 0) {
    c->k8s_default_mtls_mode = MT_CA_MTLS_STRICT;
    return 1;
  }
  return mt_yaml_fail(ctx, v,
                      "'kubernetes.default_mtls_mode' must be PERMISSIVE or STRICT, got '%s'",
                      s != NULL ? s : "(not a scalar)");
}

static int on_kubernetes_key(mt_yaml_ctx *ctx, const char *key, yaml_node_t *k, yaml_node_t *v,
                             void *target) {
  mt_ca_config *c = target;
  if (strcmp(key, "server") == 0) {
    if (!mt_yaml_want_string(ctx, v, key, &c->k8s_server)) return 0;
    if (strncmp(c->k8s_server, "https://", strlen("https://")) != 0)
      return mt_yaml_fail(ctx, v, "'kubernetes.server' must be an https:// URL, got '%s'",
                          c->k8s_server);
    return 1;
  }
  if (strcmp(key, "token_file") == 0) return want_path(ctx, v, key, &c->k8s_token_file);
  if (strcmp(key, "ca_file") == 0) return want_path(ctx, v, key, &c->k8s_ca_file);
  if (strcmp(key, "watch_timeout_s") == 0)
    return mt_yaml_want_int64(ctx, v, key, MT_CA_K8S_MIN_WATCH_TIMEOUT_S,
                              MT_CA_K8S_MAX_WATCH_TIMEOUT_S, &c->k8s_watch_timeout_s);
  if (strcmp(key, "list_page_size") == 0)
    return mt_yaml_want_int64(ctx, v, key, 1, MT_CA_K8S_MAX_LIST_PAGE_SIZE, &c->k8s_list_page_size);
  if (strcmp(key, "istio_policies") == 0)
    return mt_yaml_want_bool(ctx, v, key, &c->k8s_istio_policies);
  if (strcmp(key, "root_namespace") == 0) return want_root_namespace(ctx, v, c);
  if (strcmp(key, "default_mtls_mode") == 0) return want_mtls_mode(ctx, v, c);
  return mt_yaml_fail(ctx, k, "unknown key 'kubernetes.%s'", key);
}

/* `kubernetes: {}` (or an empty `kubernetes:`) means: in a pod, all defaults. */
static int want_kubernetes(mt_yaml_ctx *ctx, yaml_node_t *k, yaml_node_t *v, mt_ca_config *c) {
  c->kubernetes = 1;
  c->kubernetes_line = mt_yaml_line(k);
  const char *s = v->type == YAML_SCALAR_NODE ? mt_yaml_scalar(v) : NULL;
  if (s != NULL && (s[0] == '\0' || strcmp(s, "~") == 0 || strcmp(s, "null") == 0)) return 1;
  return mt_yaml_each_pair(ctx, v, "kubernetes", on_kubernetes_key, c);
}

static int want_trust_domain(mt_yaml_ctx *ctx, const yaml_node_t *v, mt_ca_config *c) {
  if (!mt_yaml_want_string(ctx, v, "trust_domain", &c->trust_domain)) return 0;
  mt_spiffe_err e = mt_trust_domain_validate(c->trust_domain, strlen(c->trust_domain));
  if (e != MT_SPIFFE_OK)
    return mt_yaml_fail(ctx, v, "invalid trust domain '%s': %s", c->trust_domain,
                        mt_spiffe_err_str(e));
  return 1;
}

static int want_listen(mt_yaml_ctx *ctx, const yaml_node_t *v, mt_ca_config *c) {
  if (!mt_yaml_want_string(ctx, v, "listen", &c->listen)) return 0;
  if (!mt_yaml_address_valid(c->listen, 1))
    return mt_yaml_fail(ctx, v, "'listen' must be IP:port (port 0 = any free port), got '%s'",
                        c->listen);
  return 1;
}

/* One node_agents entry: a SPIFFE ID with a path, listed once. Its trust
 * domain is checked in validate(), once trust_domain is known. */
static int on_node_agent(mt_yaml_ctx *ctx, yaml_node_t *item, size_t i, void *target) {
  mt_ca_config *c = target;
  if (i >= MT_CA_MAX_NODE_AGENTS)
    return mt_yaml_fail(ctx, item, "'node_agents' lists at most %d identities",
                        MT_CA_MAX_NODE_AGENTS);
  char *id = NULL;
  if (!mt_yaml_want_string(ctx, item, "node_agents[]", &id)) return 0;
  c->node_agents[c->num_node_agents++] = id;
  mt_spiffe_id_view view;
  mt_spiffe_err e = mt_spiffe_id_parse(id, strlen(id), &view);
  if (e != MT_SPIFFE_OK)
    return mt_yaml_fail(ctx, item, "invalid SPIFFE ID '%s': %s", id, mt_spiffe_err_str(e));
  if (view.path_len == 0)
    return mt_yaml_fail(ctx, item, "node agent '%s' has no path (a service account's ID has one)",
                        id);
  for (size_t j = 0; j + 1 < c->num_node_agents; j++)
    if (strcmp(c->node_agents[j], id) == 0)
      return mt_yaml_fail(ctx, item, "node agent '%s' is listed twice", id);
  return 1;
}

static int want_node_agents(mt_yaml_ctx *ctx, yaml_node_t *v, mt_ca_config *c) {
  if (c->node_agents == NULL) {
    c->node_agents = calloc(MT_CA_MAX_NODE_AGENTS, sizeof(*c->node_agents));
    if (c->node_agents == NULL) return mt_yaml_fail(ctx, v, "out of memory");
  }
  return mt_yaml_each_item(ctx, v, "node_agents", on_node_agent, c);
}

static int on_top_key(mt_yaml_ctx *ctx, const char *key, yaml_node_t *k, yaml_node_t *v,
                      void *target) {
  mt_ca_config *c = target;
  if (strcmp(key, "trust_domain") == 0) return want_trust_domain(ctx, v, c);
  if (strcmp(key, "listen") == 0) return want_listen(ctx, v, c);
  if (strcmp(key, "tls") == 0) {
    c->tls_line = mt_yaml_line(k);
    return mt_yaml_each_pair(ctx, v, "tls", on_tls_key, c);
  }
  if (strcmp(key, "signer") == 0) {
    c->signer_line = mt_yaml_line(k);
    return mt_yaml_each_pair(ctx, v, "signer", on_signer_key, c);
  }
  if (strcmp(key, "roots_file") == 0) {
    c->roots_line = mt_yaml_line(k);
    return want_path(ctx, v, key, &c->roots_file);
  }
  if (strcmp(key, "max_cert_ttl_s") == 0)
    return mt_yaml_want_int64(ctx, v, key, MT_CA_MIN_CERT_TTL_S, MT_CA_MAX_CERT_TTL_S,
                              &c->max_cert_ttl_s);
  if (strcmp(key, "default_cert_ttl_s") == 0)
    return mt_yaml_want_int64(ctx, v, key, MT_CA_MIN_CERT_TTL_S, MT_CA_MAX_CERT_TTL_S,
                              &c->default_cert_ttl_s);
  if (strcmp(key, "tokens") == 0) {
    c->tokens_line = mt_yaml_line(k);
    return mt_yaml_each_pair(ctx, v, "tokens", on_tokens_key, c);
  }
  if (strcmp(key, "jwt_svid") == 0) {
    c->jwt_svid_line = mt_yaml_line(k);
    return mt_yaml_each_pair(ctx, v, "jwt_svid", on_jwt_svid_key, c);
  }
  if (strcmp(key, "mesh_file") == 0) {
    c->mesh_line = mt_yaml_line(k);
    return want_path(ctx, v, key, &c->mesh_file);
  }
  if (strcmp(key, "mesh_poll_ms") == 0)
    return mt_yaml_want_int64(ctx, v, key, MESH_POLL_MIN_MS, MESH_POLL_MAX_MS, &c->mesh_poll_ms);
  if (strcmp(key, "access_log") == 0) return mt_yaml_want_string(ctx, v, key, &c->access_log);
  if (strcmp(key, "node_agents") == 0) return want_node_agents(ctx, v, c);
  if (strcmp(key, "kubernetes") == 0) return want_kubernetes(ctx, k, v, c);
  if (strcmp(key, "workloads_file") == 0) {
    c->workloads_line = mt_yaml_line(k);
    return want_path(ctx, v, key, &c->workloads_file);
  }
  return mt_yaml_fail(ctx, k, "unknown key '%s'", key);
}

/* The key node |key| of the top-level mapping |root|, or NULL. */
static yaml_node_t *find_top_key(mt_yaml_ctx *ctx, yaml_node_t *root, const char *key,
                                 yaml_node_t **value) {
  for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top;
       p++) {
    yaml_node_t *k = yaml_document_get_node(ctx->doc, p->key);
    const char *name = mt_yaml_scalar(k);
    if (name != NULL && strcmp(name, key) == 0) {
      *value = yaml_document_get_node(ctx->doc, p->value);
      return k;
    }
  }
  return NULL;
}

/* Node agents need the registry, and only identities of this trust domain
 * can ever be callers (each is reported at its own line). */
static int validate_node_agents(mt_yaml_ctx *ctx, const mt_ca_config *c, yaml_node_t *root) {
  if (c->num_node_agents == 0) return 1;
  yaml_node_t *list = NULL;
  yaml_node_t *key = find_top_key(ctx, root, "node_agents", &list);
  if (c->workloads_file == NULL && !c->kubernetes)
    return mt_yaml_fail(ctx, key,
                        "'node_agents' needs 'workloads_file' or 'kubernetes' (which workload "
                        "runs on which node)");
  size_t td_len = strlen(c->trust_domain);
  for (size_t i = 0; i < c->num_node_agents; i++) {
    mt_spiffe_id_view view;
    mt_spiffe_id_parse(c->node_agents[i], strlen(c->node_agents[i]), &view);
    if (view.trust_domain_len == td_len && memcmp(view.trust_domain, c->trust_domain, td_len) == 0)
      continue;
    yaml_node_t *item = list != NULL && i < mt_yaml_seq_len(list)
                            ? yaml_document_get_node(ctx->doc, list->data.sequence.items.start[i])
                            : key;
    return mt_yaml_fail(ctx, item, "node agent '%s' is not in the trust domain '%s'",
                        c->node_agents[i], c->trust_domain);
  }
  return 1;
}

/* Required keys and cross-field rules, reported at the top of the file or
 * at the section that is incomplete. */
static int validate(mt_yaml_ctx *ctx, mt_ca_config *c, yaml_node_t *root) {
  if (c->trust_domain == NULL)
    return mt_yaml_fail(ctx, root, "missing required key 'trust_domain'");
  if (c->tls_cert_file == NULL || c->tls_key_file == NULL)
    return mt_yaml_fail(ctx, root,
                        "'tls' needs 'cert_file' and 'key_file' (the CA server's own "
                        "certificate chain and key)");
  if (c->signer_cert_file == NULL || c->signer_key_file == NULL)
    return mt_yaml_fail(ctx, root, "'signer' needs 'cert_file' and 'key_file' (the issuing CA)");
  if (c->roots_file == NULL) return mt_yaml_fail(ctx, root, "missing required key 'roots_file'");
  if (c->token_issuer == NULL && !c->kubernetes)
    return mt_yaml_fail(ctx, root,
                        "'tokens' needs 'issuer' (with 'kubernetes', it may come from the API "
                        "server's /.well-known/openid-configuration instead)");
  if (c->token_keys_file == NULL && !c->kubernetes)
    return mt_yaml_fail(ctx, root,
                        "'tokens' needs 'keys_file' (with 'kubernetes', the keys may come from "
                        "the API server's /openid/v1/jwks instead)");
  if (c->default_cert_ttl_s > c->max_cert_ttl_s)
    return mt_yaml_fail(ctx, root, "default_cert_ttl_s (%lld) exceeds max_cert_ttl_s (%lld)",
                        (long long)c->default_cert_ttl_s, (long long)c->max_cert_ttl_s);
  if (c->jwt_svid_ttl_s > c->jwt_svid_max_ttl_s) {
    yaml_node_t *v = NULL;
    return mt_yaml_fail(ctx, find_top_key(ctx, root, "jwt_svid", &v),
                        "'jwt_svid.ttl_s' (%lld) exceeds 'jwt_svid.max_ttl_s' (%lld)",
                        (long long)c->jwt_svid_ttl_s, (long long)c->jwt_svid_max_ttl_s);
  }
  if (c->kubernetes && c->workloads_file != NULL) {
    yaml_node_t *v = NULL;
    return mt_yaml_fail(ctx, find_top_key(ctx, root, "workloads_file", &v),
                        "'workloads_file' and 'kubernetes' both say which workload runs where; "
                        "keep one");
  }
  if (c->k8s_istio_policies && c->mesh_file == NULL) {
    yaml_node_t *v = NULL;
    return mt_yaml_fail(ctx, find_top_key(ctx, root, "kubernetes", &v),
                        "'kubernetes.istio_policies' needs 'mesh_file': policies reach the agents "
                        "in the mesh config stream, which mesh_file turns on");
  }
  return validate_node_agents(ctx, c, root);
}

static int set_defaults(mt_ca_config *c) {
  c->tls_min_version = TLS1_3_VERSION;
  c->token_leeway_s = MT_CA_DEFAULT_LEEWAY_S;
  c->jwks_refresh_s = MT_CA_DEFAULT_JWKS_REFRESH_S;
  c->jwks_min_interval_ms = MT_CA_DEFAULT_JWKS_MIN_INTERVAL_MS;
  c->mesh_poll_ms = MT_CA_DEFAULT_MESH_POLL_MS;
  c->listen = strdup(kDefaultListen);
  c->token_audience = strdup(kDefaultAudience);
  c->access_log = strdup("-");
  c->k8s_root_namespace = strdup(MT_CA_DEFAULT_ROOT_NAMESPACE);
  return c->listen != NULL && c->token_audience != NULL && c->access_log != NULL &&
         c->k8s_root_namespace != NULL;
}

/* Unset TTLs: certificates default 1 h, maximum 24 h; JWT-SVIDs default
 * 5 min, maximum 1 h; never a default above the configured maximum. */
static void settle_ttls(mt_ca_config *c) {
  if (c->jwt_svid_max_ttl_s == 0) {
    c->jwt_svid_max_ttl_s = MT_CA_DEFAULT_MAX_JWT_SVID_TTL_S;
    if (c->jwt_svid_ttl_s > c->jwt_svid_max_ttl_s) c->jwt_svid_max_ttl_s = c->jwt_svid_ttl_s;
  }
  if (c->jwt_svid_ttl_s == 0)
    c->jwt_svid_ttl_s = c->jwt_svid_max_ttl_s < MT_CA_DEFAULT_JWT_SVID_TTL_S
                            ? c->jwt_svid_max_ttl_s
                            : MT_CA_DEFAULT_JWT_SVID_TTL_S;
  if (c->max_cert_ttl_s == 0) {
    c->max_cert_ttl_s = MT_CA_DEFAULT_MAX_CERT_TTL_S;
    if (c->default_cert_ttl_s > c->max_cert_ttl_s) c->max_cert_ttl_s = c->default_cert_ttl_s;
  }
  if (c->default_cert_ttl_s == 0)
    c->default_cert_ttl_s =
        c->max_cert_ttl_s < MT_CA_DEFAULT_CERT_TTL_S ? c->max_cert_ttl_s : MT_CA_DEFAULT_CERT_TTL_S;
}

mt_ca_config *mt_ca_config_load(const char *path, char *err, size_t err_len) {
  mt_yaml_ctx ctx = {path, NULL, err, err_len};
  mt_ca_config *c = calloc(1, sizeof(*c));
  if (c == NULL || (c->path = strdup(path)) == NULL || !set_defaults(c)) {
    snprintf(err, err_len, "%s:1: out of memory", path);
    mt_ca_config_free(c);
    return NULL;
  }
  yaml_document_t doc;
  yaml_node_t *root = NULL;
  ctx.doc = &doc;
  if (!mt_yaml_load_file(&ctx, &doc, &root)) {
    mt_ca_config_free(c);
    return NULL;
  }
  int ok = mt_yaml_each_pair(&ctx, root, "the configuration", on_top_key, c);
  if (ok) settle_ttls(c);
  ok = ok && validate(&ctx, c, root);
  yaml_document_delete(&doc);
  if (!ok) {
    mt_ca_config_free(c);
    return NULL;
  }
  return c;
}

void mt_ca_config_free(mt_ca_config *c) {
  if (c == NULL) return;
  free(c->path);
  free(c->trust_domain);
  free(c->listen);
  free(c->tls_cert_file);
  free(c->tls_key_file);
  free(c->signer_cert_file);
  free(c->signer_key_file);
  free(c->roots_file);
  free(c->token_issuer);
  free(c->token_audience);
  free(c->token_keys_file);
  free(c->mesh_file);
  free(c->jwt_svid_signing_key_file);
  free(c->access_log);
  for (size_t i = 0; i < c->num_node_agents; i++) free(c->node_agents[i]);
  free(c->node_agents);
  free(c->workloads_file);
  free(c->k8s_server);
  free(c->k8s_token_file);
  free(c->k8s_ca_file);
  free(c->k8s_root_namespace);
  free(c);
}
