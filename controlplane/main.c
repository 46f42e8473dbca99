/* main.c: mtls-ca's command line, start-up, signals and shutdown. One libev
 * loop, no threads.
 *
 *   mtls-ca --config FILE          run
 *   mtls-ca --check-config FILE    load and check the config and every file
 *                                  it names; exit 0, or 1 with "file:line: ..."
 *
 * Signals: SIGTERM / SIGINT stop and exit 0; SIGHUP re-reads the issuing CA
 * (signer + roots), the token keys (and asks the API server for the token
 * issuer again, when it comes from there), the server's TLS certificate,
 * the JWT-SVID signing key, the mesh file and the workloads file, each keeping its previous version
 * when the new one is refused;
 * SIGUSR1 prints the counters to stderr (they are printed at exit too). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ev.h>
#include <openssl/ssl.h>

#include "controlplane/auth.h"
#include "controlplane/ca_config.h"
#include "controlplane/ca_files.h"
#include "controlplane/ca_log.h"
#include "controlplane/ca_service.h"
#include "controlplane/issuer_source.h"
#include "controlplane/jwks_source.h"
#include "controlplane/jwt_signer.h"
#include "controlplane/jwt_svid_service.h"
#include "controlplane/k8s_source.h"
#include "controlplane/mesh_file.h"
#include "controlplane/mesh_service.h"
#include "controlplane/node_info_service.h"
#include "controlplane/node_source.h"
#include "controlplane/workload_registry.h"
#include "controlplane/workloads_file.h"
#include "grpc/server.h"

enum {
  ERR_MAX = 1536,
  WHY_MAX = 1024,
  /* How long a Node read for NodeInfo is reused (node_source.h): pod CIDRs
   * never change once set, so this only bounds how stale "no CIDRs yet"
   * or a re-created node can be. */
  NODE_CACHE_TTL_MS = 30000,
  EXIT_OK = 0,
  EXIT_FAILURE_CODE = 1,
  EXIT_USAGE = 2,
};

typedef struct {
  mt_ca_config *config;
  struct ev_loop *loop;
  mt_ca_log *log;
  SSL_CTX *ssl_ctx;
  mt_ca_auth *auth;
  mt_ca_service *ca;
  mt_mesh_service *mesh;
  mt_workload_registry *workloads; /* NULL without workloads_file */
  mt_k8s_source *cluster;          /* NULL without kubernetes */
  mt_jwks_source *token_keys;      /* the API server's keys; NULL with tokens.keys_file */
  /* The API server's token issuer (OpenID discovery): NULL without
   * kubernetes, or with both tokens.issuer and tokens.keys_file. */
  mt_issuer_source *token_issuer;
  mt_node_source *nodes;           /* Node objects for NodeInfo; NULL without kubernetes */
  mt_node_info_service *node_info; /* NULL without kubernetes */
  mt_jwt_svid_service *jwt_svids;
  mt_grpc_server *server;
  ev_signal on_term, on_int, on_hup, on_usr1;
} mt_ca_app;

static void usage(FILE *out) {
  fprintf(out,
          "usage: mtls-ca --config FILE        run the control plane\n"
          "       mtls-ca --check-config FILE  check FILE and the files it names; exit 0 or 1\n");
}

/* "config:line: section: path: what" for a problem in a file the config names. */
static void file_error(const mt_ca_config *c, unsigned long line, const char *section,
                       const char *why, char *err, size_t err_len) {
  snprintf(err, err_len, "%s:%lu: %s: %s", c->path, line ? line : 1, section, why);
}

/* Loads the material every start needs; on success the app owns it. */
static int load_material(mt_ca_app *app, mt_ca_issuer **issuer, char *err, size_t err_len) {
  const mt_ca_config *c = app->config;
  char why[WHY_MAX];
  *issuer = mt_ca_issuer_load(c->signer_cert_file, c->signer_key_file, c->roots_file,
                              c->trust_domain, why, sizeof(why));
  if (*issuer == NULL) {
    file_error(c, c->signer_line, "signer", why, err, err_len);
    return 0;
  }
  /* Without a keys file the keys come from the API server once the cluster
   * source runs; until then every call is refused as retryable. */
  mt_jwt_keys *keys = NULL;
  if (c->token_keys_file != NULL) {
    keys = mt_ca_token_keys_load(c->token_keys_file, why, sizeof(why));
    if (keys == NULL) {
      file_error(c, c->tokens_line, "tokens.keys_file", why, err, err_len);
      return 0;
    }
  }
  app->auth =
      mt_ca_auth_new(c->trust_domain, c->token_issuer, c->token_audience, c->token_leeway_s, keys);
  app->ssl_ctx = mt_ca_tls_ctx_new(c->tls_min_version);
  if (app->auth == NULL || app->ssl_ctx == NULL) {
    snprintf(err, err_len, "%s:1: out of memory", c->path);
    return 0;
  }
  if (!mt_ca_tls_use_files(app->ssl_ctx, c->tls_cert_file, c->tls_key_file, why, sizeof(why))) {
    file_error(c, c->tls_line, "tls", why, err, err_len);
    return 0;
  }
  return 1;
}

/* The JWT-SVID signer with its key from jwt_svid.signing_key_file, or a
 * key generated now when there is none. */
static mt_jwt_signer *load_jwt_signer(const mt_ca_config *c, char *err, size_t err_len) {
  char why[WHY_MAX];
  mt_jwt_signer *signer = mt_jwt_signer_new(c->jwt_svid_max_ttl_s);
  if (signer == NULL) {
    snprintf(err, err_len, "%s:1: out of memory", c->path);
    return NULL;
  }
  int ok = c->jwt_svid_signing_key_file != NULL
               ? mt_jwt_signer_reload_file(signer, c->jwt_svid_signing_key_file,
                                           (int64_t)time(NULL), why, sizeof(why)) > 0
               : mt_jwt_signer_generate(signer, (int64_t)time(NULL), why, sizeof(why));
  if (!ok) {
    file_error(c, c->jwt_svid_line, "jwt_svid.signing_key_file", why, err, err_len);
    mt_jwt_signer_free(signer);
    return NULL;
  }
  return signer;
}

/* Frees in the order that keeps borrowed pointers valid: streams end before
 * the server goes, the server before what its handlers use. */
static void app_dispose(mt_ca_app *app, int dump_counters) {
  mt_mesh_service_free(app->mesh);
  mt_jwt_svid_service_free(app->jwt_svids); /* ends its streams while the server is up */
  mt_grpc_server_free(app->server);
  /* Only now: ending the Watch streams above counts and logs them. */
  if (dump_counters && app->log != NULL) mt_ca_log_dump_counters(app->log, stderr);
  mt_ca_service_free(app->ca);
  mt_node_info_service_free(app->node_info);
  mt_node_source_free(app->nodes); /* after the service that borrows it, before the client */
  mt_workload_registry_free(app->workloads); /* after the service that borrows it */
  mt_jwks_source_free(app->token_keys);      /* before the client it borrows */
  mt_issuer_source_free(app->token_issuer);  /* likewise */
  mt_k8s_source_free(app->cluster);          /* after the service that borrows it */
  mt_ca_auth_free(app->auth);
  SSL_CTX_free(app->ssl_ctx);
  mt_ca_log_free(app->log);
  mt_ca_config_free(app->config);
  memset(app, 0, sizeof(*app));
}

/* --check-config: everything a start would load, without listening. */
static int check_config(const char *path) {
  char err[ERR_MAX];
  mt_ca_app app;
  memset(&app, 0, sizeof(app));
  app.config = mt_ca_config_load(path, err, sizeof(err));
  mt_ca_issuer *issuer = NULL;
  int ok = app.config != NULL && load_material(&app, &issuer, err, sizeof(err));
  mt_ca_issuer_free(issuer);
  if (ok) {
    mt_jwt_signer *signer = load_jwt_signer(app.config, err, sizeof(err));
    ok = signer != NULL;
    mt_jwt_signer_free(signer);
  }
  if (ok && app.config->mesh_file != NULL) {
    char why[WHY_MAX];
    mt_mesh_file *mesh =
        mt_mesh_file_load(app.config->mesh_file, app.config->trust_domain, why, sizeof(why));
    ok = mesh != NULL;
    if (!ok) snprintf(err, sizeof(err), "%s", why);
    mt_mesh_file_free(mesh);
  }
  if (ok && app.config->workloads_file != NULL) {
    char why[WHY_MAX];
    mt_workloads *workloads =
        mt_workloads_load(app.config->workloads_file, app.config->trust_domain, why, sizeof(why));
    ok = workloads != NULL;
    if (!ok) snprintf(err, sizeof(err), "%s", why);
    mt_workloads_free(workloads);
  }
  if (ok && app.config->kubernetes) {
    /* Settings and files only: checking makes no request to the API. */
    char why[WHY_MAX];
    const mt_ca_config *c = app.config;
    mt_k8s_client_config kc = {c->k8s_server, c->k8s_token_file, c->k8s_ca_file, 0};
    struct ev_loop *loop = ev_loop_new(0);
    mt_k8s_client *client = loop ? mt_k8s_client_new(loop, &kc, why, sizeof(why)) : NULL;
    ok = client != NULL;
    if (!ok)
      file_error(c, c->kubernetes_line, "kubernetes", loop ? why : "no event loop", err,
                 sizeof(err));
    mt_k8s_client_free(client);
    if (loop) ev_loop_destroy(loop);
  }
  if (ok)
    printf("%s: ok\n", path);
  else
    fprintf(stderr, "%s\n", err);
  app_dispose(&app, 0);
  return ok ? EXIT_OK : EXIT_FAILURE_CODE;
}

/* ---- signals ----------------------------------------------------------- */

static void on_stop(struct ev_loop *loop, ev_signal *w, int revents) {
  (void)revents;
  mt_ca_app *app = w->data;
  mt_ca_log_info(app->log, "signal %d: stopping", w->signum);
  ev_break(loop, EVBREAK_ALL);
}

static void reload_issuer(mt_ca_app *app) {
  const mt_ca_config *c = app->config;
  char why[WHY_MAX];
  mt_ca_issuer *issuer = mt_ca_issuer_load(c->signer_cert_file, c->signer_key_file, c->roots_file,
                                           c->trust_domain, why, sizeof(why));
  if (issuer == NULL) {
    mt_ca_log_count(app->log, MT_CA_EV_ISSUER_RELOAD_FAILURES);
    mt_ca_log_error(app->log, "signer reload refused, the previous issuing CA stays: %s", why);
    return;
  }
  mt_ca_log_count(app->log, MT_CA_EV_ISSUER_RELOADS);
  mt_ca_log_info(app->log, "issuing CA (re)loaded: %s", mt_ca_issuer_describe(issuer));
  mt_ca_service_set_issuer(app->ca, issuer);
}

static void reload_token_keys(mt_ca_app *app) {
  char why[WHY_MAX];
  mt_issuer_source_refresh_soon(app->token_issuer);
  if (app->config->token_keys_file == NULL) { /* from the API server */
    mt_jwks_source_refresh_soon(app->token_keys);
    return;
  }
  mt_jwt_keys *keys = mt_ca_token_keys_load(app->config->token_keys_file, why, sizeof(why));
  if (keys == NULL) {
    mt_ca_log_count(app->log, MT_CA_EV_TOKEN_KEY_RELOAD_FAILURES);
    mt_ca_log_error(app->log, "token key reload refused, the previous keys stay: %s", why);
    return;
  }
  mt_ca_log_count(app->log, MT_CA_EV_TOKEN_KEY_RELOADS);
  mt_ca_log_info(app->log, "token keys (re)loaded: %zu key%s", mt_jwt_keys_count(keys),
                 mt_jwt_keys_count(keys) == 1 ? "" : "s");
  mt_ca_auth_set_keys(app->auth, keys);
}

static void reload_tls(mt_ca_app *app) {
  const mt_ca_config *c = app->config;
  char why[WHY_MAX];
  if (!mt_ca_tls_use_files(app->ssl_ctx, c->tls_cert_file, c->tls_key_file, why, sizeof(why))) {
    mt_ca_log_count(app->log, MT_CA_EV_TLS_RELOAD_FAILURES);
    mt_ca_log_error(app->log, "TLS certificate reload refused, the previous one stays: %s", why);
    return;
  }
  mt_ca_log_count(app->log, MT_CA_EV_TLS_RELOADS);
  mt_ca_log_info(app->log, "TLS certificate (re)loaded from %s", c->tls_cert_file);
}

static void on_hup(struct ev_loop *loop, ev_signal *w, int revents) {
  (void)loop;
  (void)revents;
  mt_ca_app *app = w->data;
  mt_ca_log_info(app->log,
                 "SIGHUP: re-reading the signer, roots, token keys, TLS certificate, JWT-SVID "
                 "signing key%s%s",
                 app->mesh != NULL ? ", mesh file" : "",
                 app->workloads != NULL ? ", workloads file" : "");
  reload_issuer(app);
  reload_token_keys(app);
  reload_tls(app);
  mt_jwt_svid_service_reload(app->jwt_svids);
  if (app->mesh != NULL) mt_mesh_service_reload(app->mesh);
  if (app->workloads != NULL) mt_workload_registry_reload(app->workloads);
}

static void on_usr1(struct ev_loop *loop, ev_signal *w, int revents) {
  (void)loop;
  (void)revents;
  mt_ca_app *app = w->data;
  mt_ca_log_dump_counters(app->log, stderr);
}

static void watch_signal(mt_ca_app *app, ev_signal *w, int signum,
                         void (*cb)(struct ev_loop *, ev_signal *, int)) {
  ev_signal_init(w, cb, signum);
  w->data = app;
  ev_signal_start(app->loop, w);
}

static void unwatch_signals(mt_ca_app *app) {
  ev_signal_stop(app->loop, &app->on_term);
  ev_signal_stop(app->loop, &app->on_int);
  ev_signal_stop(app->loop, &app->on_hup);
  ev_signal_stop(app->loop, &app->on_usr1);
}

/* ---- running ----------------------------------------------------------- */

static void on_connection_error(void *arg, const char *peer, const char *what) {
  mt_ca_app *app = arg;
  mt_ca_log_count(app->log, MT_CA_EV_CONNECTION_ERRORS);
  mt_ca_log_warn(app->log, "connection from %s closed: %s", peer, what);
}

/* The start-up line tests and operators wait for, with the bound port
 * (which differs from the configured one when that is 0). */
static void log_listening(mt_ca_app *app) {
  const char *listen = app->config->listen;
  const char *colon = strrchr(listen, ':');
  int host_len = colon != NULL ? (int)(colon - listen) : (int)strlen(listen);
  mt_ca_log_info(app->log, "listening on %.*s:%d (trust domain %s)", host_len, listen,
                 mt_grpc_server_port(app->server), app->config->trust_domain);
}

static int start_server(mt_ca_app *app, char *err, size_t err_len) {
  mt_grpc_server_options opts;
  memset(&opts, 0, sizeof(opts));
  opts.listen = app->config->listen;
  opts.ssl_ctx = app->ssl_ctx;
  opts.on_connection_error = on_connection_error;
  opts.on_connection_error_arg = app;
  app->server = mt_grpc_server_new(app->loop, &opts);
  if (app->server == NULL) {
    snprintf(err, err_len, "cannot listen on %s: %s", app->config->listen, strerror(errno));
    return 0;
  }
  if (!mt_ca_service_register(app->ca, app->server) ||
      !mt_jwt_svid_service_register(app->jwt_svids, app->server) ||
      (app->mesh != NULL && !mt_mesh_service_register(app->mesh, app->server)) ||
      (app->node_info != NULL && !mt_node_info_service_register(app->node_info, app->server))) {
    snprintf(err, err_len, "out of memory registering the methods");
    return 0;
  }
  return 1;
}

static void on_cluster_log(void *ctx, const char *line) {
  mt_ca_app *app = ctx;
  /* Events are many and routine; failures and syncs are what operators need. */
  if (strncmp(line, "event ", strlen("event ")) == 0) return;
  if (strncmp(line, "problem ", strlen("problem ")) == 0 ||
      strncmp(line, "refused ", strlen("refused ")) == 0 ||
      strncmp(line, "lost ", strlen("lost ")) == 0)
    mt_ca_log_warn(app->log, "kubernetes: %s", line);
  else
    mt_ca_log_info(app->log, "kubernetes: %s", line);
}

/* Certificates need the cluster state alone; snapshots, with Istio
 * policies, also need those listed (an unlisted policy would allow what it
 * denies). */
static int mesh_inputs_synced(const mt_ca_app *app) {
  return mt_k8s_source_synced(app->cluster) && mt_k8s_source_istio_synced(app->cluster);
}

static void on_cluster_synced(void *ctx) {
  mt_ca_app *app = ctx;
  mt_ca_log_info(app->log, "kubernetes: cluster state synced: %zu workloads",
                 mt_cluster_state_num_workloads(mt_k8s_source_state(app->cluster)));
  mt_ca_service_cluster_synced(app->ca);
  if (app->mesh != NULL && mesh_inputs_synced(app)) mt_mesh_service_cluster_synced(app->mesh);
}

static void on_istio_synced(void *ctx) {
  mt_ca_app *app = ctx;
  mt_ca_log_info(app->log, "kubernetes: Istio policies synced");
  if (app->mesh != NULL && mesh_inputs_synced(app)) mt_mesh_service_cluster_synced(app->mesh);
}

/* One line and one count per status change of an Istio object. */
static void on_istio_status(void *ctx, mt_istio_kind kind, const char *ns, const char *name,
                            mt_istio_status status, const char *detail, int removed) {
  mt_ca_app *app = ctx;
  if (removed) {
    mt_ca_log_info(app->log, "%s %s/%s: removed", mt_istio_kind_words(kind), ns, name);
    return;
  }
  static const mt_ca_event kCounted[] = {[MT_ISTIO_APPLIED] = MT_CA_EV_ISTIO_OBJECTS_APPLIED,
                                         [MT_ISTIO_REDUCED] = MT_CA_EV_ISTIO_OBJECTS_REDUCED,
                                         [MT_ISTIO_REFUSED] = MT_CA_EV_ISTIO_OBJECTS_REFUSED};
  mt_ca_log_count(app->log, kCounted[status]);
  if (status == MT_ISTIO_APPLIED)
    mt_ca_log_info(app->log, "%s %s/%s: applied", mt_istio_kind_words(kind), ns, name);
  else
    mt_ca_log_warn(app->log, "%s %s/%s: %s: %s", mt_istio_kind_words(kind), ns, name,
                   mt_istio_status_str(status), detail);
}

/* Every applied event; the mesh service coalesces them into rounds. */
static void on_cluster_change(void *ctx) {
  mt_ca_app *app = ctx;
  if (app->mesh != NULL) mt_mesh_service_sources_changed(app->mesh);
}

static void on_registry_change(void *ctx) {
  mt_ca_app *app = ctx;
  if (app->mesh != NULL) mt_mesh_service_sources_changed(app->mesh);
}

static void on_api_token_keys(void *ctx, mt_jwt_keys *keys, size_t skipped) {
  mt_ca_app *app = ctx;
  mt_ca_log_count(app->log, MT_CA_EV_TOKEN_KEY_RELOADS);
  mt_ca_log_info(app->log, "token keys (re)loaded from the API server (%s): %zu key%s%s",
                 MT_JWKS_PATH, mt_jwt_keys_count(keys), mt_jwt_keys_count(keys) == 1 ? "" : "s",
                 skipped ? ", others skipped (not RS256 or ES256 P-256)" : "");
  mt_ca_auth_set_keys(app->auth, keys);
}

static void on_api_token_keys_error(void *ctx, const char *line) {
  mt_ca_app *app = ctx;
  mt_ca_log_count(app->log, MT_CA_EV_TOKEN_KEY_RELOAD_FAILURES);
  mt_ca_log_warn(app->log, "%s", line);
}

/* A token failed on its key: the API server may have rotated it. */
static void on_token_key_miss(void *ctx) {
  mt_ca_app *app = ctx;
  mt_jwks_source_refresh_soon(app->token_keys);
}

/* The API server's own service-account keys, when no key file is given. */
static int start_api_token_keys(mt_ca_app *app, char *err, size_t err_len) {
  const mt_ca_config *c = app->config;
  static const mt_jwks_source_callbacks cb = {on_api_token_keys, on_api_token_keys_error};
  app->token_keys = mt_jwks_source_new(app->loop, mt_k8s_source_client(app->cluster),
                                       c->jwks_refresh_s * 1000, c->jwks_min_interval_ms, &cb, app);
  if (app->token_keys == NULL) {
    snprintf(err, err_len, "%s:1: out of memory", c->path);
    return 0;
  }
  mt_ca_auth_on_key_miss(app->auth, on_token_key_miss, app);
  mt_ca_log_info(app->log, "token keys: from the API server's %s (refreshed every %lld s)",
                 MT_JWKS_PATH, (long long)c->jwks_refresh_s);
  return 1;
}

/* Every accepted discovery document. An explicit tokens.issuer wins; a
 * discovered one that differs is worth a warning (tokens would be refused
 * as wrong_issuer), once per change. */
static void on_api_token_issuer(void *ctx, const char *issuer, int changed) {
  mt_ca_app *app = ctx;
  const char *configured = app->config->token_issuer;
  mt_ca_log_count(app->log, MT_CA_EV_TOKEN_ISSUER_RELOADS);
  if (!changed) return;
  if (configured != NULL) {
    if (strcmp(configured, issuer) != 0)
      mt_ca_log_warn(app->log,
                     "token issuer: tokens.issuer is \"%s\" but the API server's %s says \"%s\"; "
                     "keeping tokens.issuer (tokens the API server signs now are refused as "
                     "wrong_issuer)",
                     configured, MT_OIDC_DISCOVERY_PATH, issuer);
    return;
  }
  if (!mt_ca_auth_set_issuer(app->auth, issuer)) {
    mt_ca_log_count(app->log, MT_CA_EV_TOKEN_ISSUER_RELOAD_FAILURES);
    mt_ca_log_error(app->log, "token issuer: out of memory taking \"%s\"", issuer);
    return;
  }
  mt_ca_log_info(app->log, "token issuer: %s (from the API server's %s)", issuer,
                 MT_OIDC_DISCOVERY_PATH);
}

static void on_api_token_issuer_error(void *ctx, const char *line) {
  mt_ca_app *app = ctx;
  mt_ca_log_count(app->log, MT_CA_EV_TOKEN_ISSUER_RELOAD_FAILURES);
  mt_ca_log_warn(app->log, "%s", line);
}

/* A token was refused for want of the issuer, or named another one. */
static void on_token_issuer_miss(void *ctx) {
  mt_ca_app *app = ctx;
  mt_issuer_source_refresh_soon(app->token_issuer);
}

/* The token issuer from the API server's OpenID discovery document: when
 * tokens.issuer is not set, and as a cross-check when it is but the keys
 * come from the API anyway (the same role allows both GETs). Refreshed on
 * the JWKS schedule. */
static int start_api_token_issuer(mt_ca_app *app, char *err, size_t err_len) {
  const mt_ca_config *c = app->config;
  static const mt_issuer_source_callbacks cb = {on_api_token_issuer, on_api_token_issuer_error};
  if (c->token_issuer != NULL && c->token_keys_file != NULL) return 1;
  app->token_issuer =
      mt_issuer_source_new(app->loop, mt_k8s_source_client(app->cluster), c->jwks_refresh_s * 1000,
                           c->jwks_min_interval_ms, &cb, app);
  if (app->token_issuer == NULL) {
    snprintf(err, err_len, "%s:1: out of memory", c->path);
    return 0;
  }
  if (c->token_issuer != NULL) {
    mt_ca_log_info(app->log,
                   "token issuer: %s (tokens.issuer; checked against the API server's %s)",
                   c->token_issuer, MT_OIDC_DISCOVERY_PATH);
    return 1;
  }
  mt_ca_auth_on_issuer_miss(app->auth, on_token_issuer_miss, app);
  mt_ca_log_info(app->log,
                 "token issuer: from the API server's %s (refreshed every %lld s); calls are "
                 "refused UNAVAILABLE until it answers",
                 MT_OIDC_DISCOVERY_PATH, (long long)c->jwks_refresh_s);
  return 1;
}

/* The Kubernetes API as the source of which workload runs where. */
static int start_cluster(mt_ca_app *app, char *err, size_t err_len) {
  const mt_ca_config *c = app->config;
  static const mt_k8s_source_callbacks cb = {on_cluster_change, on_cluster_synced, on_cluster_log,
                                             on_istio_status, on_istio_synced};
  mt_k8s_source_config kc;
  memset(&kc, 0, sizeof(kc));
  kc.client.server = c->k8s_server;
  kc.client.token_file = c->k8s_token_file;
  kc.client.ca_file = c->k8s_ca_file;
  kc.trust_domain = c->trust_domain;
  kc.watch_timeout_s = c->k8s_watch_timeout_s;
  kc.list_page_size = (size_t)c->k8s_list_page_size;
  kc.istio_policies = c->k8s_istio_policies;
  kc.istio.root_namespace = c->k8s_root_namespace;
  kc.istio.default_mode = c->k8s_default_mtls_mode == MT_CA_MTLS_STRICT
                              ? MTLSD__MESH__V1__MTLS_MODE__STRICT
                              : MTLSD__MESH__V1__MTLS_MODE__PERMISSIVE;
  char why[WHY_MAX];
  app->cluster = mt_k8s_source_new(app->loop, &kc, &cb, app, why, sizeof(why));
  if (app->cluster == NULL) {
    file_error(c, c->kubernetes_line, "kubernetes", why, err, err_len);
    return 0;
  }
  mt_ca_log_info(
      app->log, "kubernetes: watching %s%s",
      c->k8s_server ? c->k8s_server : "the in-cluster API server",
      c->k8s_istio_policies ? ", with Istio's AuthorizationPolicy and PeerAuthentication" : "");
  mt_ca_service_use_cluster(app->ca, mt_k8s_source_state(app->cluster));
  app->nodes = mt_node_source_new(app->loop, mt_k8s_source_client(app->cluster), NODE_CACHE_TTL_MS);
  app->node_info = app->nodes != NULL ? mt_node_info_service_new(
                                            app->auth, app->log, app->nodes,
                                            (const char *const *)c->node_agents, c->num_node_agents)
                                      : NULL;
  if (app->node_info == NULL) {
    snprintf(err, err_len, "%s:1: out of memory", c->path);
    return 0;
  }
  if (c->token_keys_file == NULL && !start_api_token_keys(app, err, err_len)) return 0;
  return start_api_token_issuer(app, err, err_len);
}

/* The workload registry (or the cluster) and the node agents that may use it. */
static int start_node_agents(mt_ca_app *app, char *err, size_t err_len) {
  const mt_ca_config *c = app->config;
  if (c->kubernetes) {
    if (!start_cluster(app, err, err_len)) return 0;
    mt_ca_service_allow_node_agents(app->ca, c->trust_domain, (const char *const *)c->node_agents,
                                    c->num_node_agents, NULL);
    for (size_t i = 0; i < c->num_node_agents; i++)
      mt_ca_log_info(app->log, "node agent: %s", c->node_agents[i]);
    return 1;
  }
  if (c->workloads_file == NULL) return 1;
  app->workloads = mt_workload_registry_new(app->loop, c->workloads_file, c->trust_domain,
                                            c->mesh_poll_ms, app->log, err, err_len);
  if (app->workloads == NULL) return 0;
  mt_workload_registry_set_on_change(app->workloads, on_registry_change, app);
  mt_ca_service_allow_node_agents(app->ca, c->trust_domain, (const char *const *)c->node_agents,
                                  c->num_node_agents, app->workloads);
  for (size_t i = 0; i < c->num_node_agents; i++)
    mt_ca_log_info(app->log, "node agent: %s", c->node_agents[i]);
  return 1;
}

/* SignJwtSvid and WatchJwtBundles, with the configured or a fresh key. */
static int start_jwt_svids(mt_ca_app *app, char *err, size_t err_len) {
  const mt_ca_config *c = app->config;
  mt_jwt_signer *signer = load_jwt_signer(c, err, err_len);
  if (signer == NULL) return 0;
  if (c->jwt_svid_signing_key_file != NULL)
    mt_ca_log_info(app->log, "JWT-SVID signing key %s from %s (checked every %lld ms)",
                   mt_jwt_signer_kid(signer), c->jwt_svid_signing_key_file,
                   (long long)c->mesh_poll_ms);
  else
    mt_ca_log_warn(app->log,
                   "JWT-SVID signing key %s generated at start (no jwt_svid.signing_key_file): "
                   "tokens it signs will not validate after a restart",
                   mt_jwt_signer_kid(signer));
  mt_jwt_svid_service_options o = {c->trust_domain, c->jwt_svid_ttl_s, c->jwt_svid_max_ttl_s,
                                   c->jwt_svid_signing_key_file, c->mesh_poll_ms};
  app->jwt_svids = mt_jwt_svid_service_new(app->loop, app->auth, app->ca, app->log, signer, &o);
  if (app->jwt_svids == NULL) return snprintf(err, err_len, "out of memory"), 0;
  return 1;
}

static int app_start(mt_ca_app *app, const char *path, char *err, size_t err_len) {
  const mt_ca_config *c;
  mt_ca_issuer *issuer = NULL;
  app->config = mt_ca_config_load(path, err, err_len);
  if (app->config == NULL) return 0;
  c = app->config;
  app->log = mt_ca_log_new(c->access_log);
  if (app->log == NULL) {
    snprintf(err, err_len, "%s: access_log '%s': %s", c->path, c->access_log, strerror(errno));
    return 0;
  }
  if (!load_material(app, &issuer, err, err_len)) {
    mt_ca_issuer_free(issuer);
    return 0;
  }
  mt_ca_log_info(app->log, "issuing CA: %s", mt_ca_issuer_describe(issuer));
  app->ca =
      mt_ca_service_new(app->auth, app->log, issuer, c->default_cert_ttl_s, c->max_cert_ttl_s);
  if (app->ca == NULL) return snprintf(err, err_len, "out of memory"), 0;
  if (!start_node_agents(app, err, err_len)) return 0;
  if (!start_jwt_svids(app, err, err_len)) return 0;
  if (c->mesh_file != NULL) {
    app->mesh = mt_mesh_service_new(app->loop, c->mesh_file, c->trust_domain, c->mesh_poll_ms,
                                    app->auth, app->log, err, err_len);
    if (app->mesh == NULL) return 0;
    /* Snapshots follow the cluster (or the registry) and are scoped per
     * caller; with the API, nothing is sent before its first full listing. */
    mt_mesh_sources src = {(const char *const *)c->node_agents,
                           c->num_node_agents,
                           app->cluster != NULL ? mt_k8s_source_state(app->cluster) : NULL,
                           app->cluster != NULL && mesh_inputs_synced(app),
                           app->workloads,
                           app->cluster != NULL ? mt_k8s_source_istio(app->cluster) : NULL};
    char why[WHY_MAX];
    if (!mt_mesh_service_use_sources(app->mesh, &src, why, sizeof(why))) {
      snprintf(err, err_len, "%s: %s", c->mesh_file, why);
      return 0;
    }
    mt_ca_log_info(app->log, "mesh snapshot version %s from %s", mt_mesh_service_version(app->mesh),
                   c->mesh_file);
  }
  return start_server(app, err, err_len);
}

int main(int argc, char **argv) {
  if (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
    usage(stdout);
    return EXIT_OK;
  }
  if (argc != 3 || (strcmp(argv[1], "--config") != 0 && strcmp(argv[1], "--check-config") != 0)) {
    usage(stderr);
    return EXIT_USAGE;
  }
  if (strcmp(argv[1], "--check-config") == 0) return check_config(argv[2]);
  signal(SIGPIPE, SIG_IGN); /* a peer that hangs up must not kill the CA */
  mt_ca_app app;
  memset(&app, 0, sizeof(app));
  struct ev_loop *loop = ev_default_loop(0);
  app.loop = loop;
  /* Watched before anything slow happens, so a stop request that arrives
   * during start-up is handled as soon as the loop runs, not lost. */
  watch_signal(&app, &app.on_term, SIGTERM, on_stop);
  watch_signal(&app, &app.on_int, SIGINT, on_stop);
  watch_signal(&app, &app.on_hup, SIGHUP, on_hup);
  watch_signal(&app, &app.on_usr1, SIGUSR1, on_usr1);
  char err[ERR_MAX];
  int ok = app_start(&app, argv[2], err, sizeof(err));
  if (ok) {
    log_listening(&app);
    ev_run(loop, 0);
  } else {
    fprintf(stderr, "mtls-ca: %s\n", err);
  }
  unwatch_signals(&app);
  app_dispose(&app, ok);
  ev_loop_destroy(loop);
  return ok ? EXIT_OK : EXIT_FAILURE_CODE;
}
