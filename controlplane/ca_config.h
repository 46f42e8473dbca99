/* ca_config: mtls-ca's YAML configuration, parsed into an immutable value.
 *
 * mt_ca_config_load checks everything it can from the YAML alone (types,
 * ranges, required keys, unknown keys, SPIFFE trust domain, addresses); the
 * files it names are read by their owners (ca_files.c, mesh_file.c), which
 * report problems at the line of the key that named the file. Relative paths
 * are taken from the directory of the configuration file. Every error reads
 * "file:line: what is wrong". Keys are documented in controlplane/README.md. */
#ifndef MT_CP_CA_CONFIG_H
#define MT_CP_CA_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  MT_CA_DEFAULT_CERT_TTL_S = 3600,
  MT_CA_DEFAULT_MAX_CERT_TTL_S = 24 * 3600,
  MT_CA_MIN_CERT_TTL_S = 60,
  MT_CA_MAX_CERT_TTL_S = 365 * 24 * 3600,
  MT_CA_DEFAULT_MESH_POLL_MS = 500,
  MT_CA_DEFAULT_LEEWAY_S = 60,
  MT_CA_DEFAULT_JWKS_REFRESH_S = 600,
  MT_CA_DEFAULT_JWKS_MIN_INTERVAL_MS = 10000,
  MT_CA_MAX_NODE_AGENTS = 64,
  MT_CA_K8S_MIN_WATCH_TIMEOUT_S = 1,
  MT_CA_K8S_MAX_WATCH_TIMEOUT_S = 3600,
  MT_CA_K8S_MAX_LIST_PAGE_SIZE = 100000,
  /* JWT-SVIDs are bearer tokens: short-lived by default. */
  MT_CA_DEFAULT_JWT_SVID_TTL_S = 5 * 60,
  MT_CA_DEFAULT_MAX_JWT_SVID_TTL_S = 3600,
  MT_CA_MIN_JWT_SVID_TTL_S = 10,
  MT_CA_MAX_JWT_SVID_TTL_S = 24 * 3600,
};

/* kubernetes.default_mtls_mode: Istio's default is PERMISSIVE. */
typedef enum {
  MT_CA_MTLS_PERMISSIVE,
  MT_CA_MTLS_STRICT,
} mt_ca_mtls_mode;

#define MT_CA_DEFAULT_ROOT_NAMESPACE "istio-system"

typedef struct {
  char *path; /* the configuration file, for messages */

  char *trust_domain;
  char *listen;        /* "ip:port" / "[v6]:port"; port 0 = any free port */
  int tls_min_version; /* TLS1_2_VERSION or TLS1_3_VERSION */
  char *tls_cert_file; /* the CA server's own chain (PEM, leaf first) */
  char *tls_key_file;
  char *signer_cert_file; /* issuing CA first, then the chain up to (excluding) the root */
  char *signer_key_file;
  char *roots_file; /* PEM roots returned as root_cert */
  int64_t max_cert_ttl_s;
  int64_t default_cert_ttl_s;
  char *token_issuer; /* NULL: discovered from the API server (kubernetes) */
  char *token_audience;
  char *token_keys_file; /* PEM public keys; NULL: the API server's JWKS (kubernetes) */
  int64_t token_leeway_s;
  /* Keys from the API server (no keys_file, kubernetes set): fetched every
   * jwks_refresh_s, and again after a token failed on its key, at most once
   * per jwks_min_interval_ms. */
  int64_t jwks_refresh_s;
  int64_t jwks_min_interval_ms;
  char *mesh_file;      /* NULL: no mesh config stream (Watch is not served) */
  int64_t mesh_poll_ms; /* how often mesh_file (and its roots) and workloads_file are checked */
  char *access_log;     /* path (appended) or "-" for stdout */
  /* Node agents: SPIFFE IDs (in trust_domain) that may ask for certificates
   * of workloads on their own node (node_auth.h); none by default. */
  char **node_agents;
  size_t num_node_agents;
  char *workloads_file; /* the workload registry (workloads_file.h); NULL: none */
  /* The Kubernetes API as the source of which workload runs where
   * (k8s_source.h); exclusive with workloads_file. NULL fields: in-cluster
   * defaults. */
  int kubernetes;
  char *k8s_server;
  char *k8s_token_file;
  char *k8s_ca_file;
  int64_t k8s_watch_timeout_s; /* 0: the watch's default */
  int64_t k8s_list_page_size;  /* 0: the watch's default (500) */
  /* Istio's AuthorizationPolicy and PeerAuthentication objects as the
   * workloads' policy (istio_source.h): off by default. */
  int k8s_istio_policies;
  char *k8s_root_namespace;              /* mesh-wide policies live here; "istio-system" */
  mt_ca_mtls_mode k8s_default_mtls_mode; /* when no PeerAuthentication applies */

  /* JWT-SVIDs (jwt_svid_service.h): lifetime of a token when the request
   * asks for none, the most it may ask for, and the ES256 signing key (PEM
   * EC P-256 private key; NULL: generated at start, lost at restart). */
  int64_t jwt_svid_ttl_s;
  int64_t jwt_svid_max_ttl_s;
  char *jwt_svid_signing_key_file;

  /* Lines of the keys that name files, for errors found reading them. */
  unsigned long jwt_svid_line;
  unsigned long tls_line, signer_line, roots_line, tokens_line, mesh_line, workloads_line,
      kubernetes_line;
} mt_ca_config;

/* Loads and validates |path|. Returns NULL with "file:line: reason" in |err|. */
mt_ca_config *mt_ca_config_load(const char *path, char *err, size_t err_len);
void mt_ca_config_free(mt_ca_config *config); /* accepts NULL */

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_CA_CONFIG_H */
