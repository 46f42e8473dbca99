/* config.c: YAML -> mt_config, using libyaml's document (node graph) API so
 * every node keeps its source line for error messages. Unknown keys are
 * errors: a typo must never silently fall back to a default. */
#include "agent/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>
#include <yaml.h>

#include "agent/mesh.h"
#include "agent/svid.h"
#include "grpc/target.h"

enum {
  DEFAULT_MAX_CONNECTIONS = 10000,
  DEFAULT_HANDSHAKES_PER_SOURCE = 256,
  DEFAULT_RELOAD_INTERVAL_MS = 1000,
  DEFAULT_HANDSHAKE_TIMEOUT_MS = 10000,
  DEFAULT_CONNECT_TIMEOUT_MS = 5000,
  DEFAULT_IDLE_TIMEOUT_MS = 300000,
  DEFAULT_DRAIN_TIMEOUT_MS = 5000,
  MAX_WORKERS = 256,
  DEFAULT_CERT_TTL_S = 3600,
  DEFAULT_CP_REQUEST_TIMEOUT_MS = 10000,
  DEFAULT_CP_RETRY_INITIAL_MS = 500,
  DEFAULT_CP_RETRY_MAX_MS = 30000,
  DEFAULT_WORKLOAD_API_SOURCE_RETRY_INITIAL_MS = 500,
  DEFAULT_WORKLOAD_API_SOURCE_RETRY_MAX_MS = 30000,
  DEFAULT_CP_KEEPALIVE_MS = 30000,
  MAX_TIMEOUT_MS = 24 * 3600 * 1000,
  DEFAULT_SESSION_LIFETIME_S = 3600,
  MAX_SESSION_LIFETIME_S = 24 * 3600,
  MAX_RULE_PORTS = 64,
  MAX_RULE_MATCHERS = 64,
  DEFAULT_OUTBOUND_CAPTURE_PORT = 15001, /* Istio's conventions (PROTOCOL.md §5) */
  DEFAULT_INBOUND_CAPTURE_PORT = 15006,
  DEFAULT_ADMIN_PORT = 15000, /* Envoy's admin port: what operators reach for first */
  DEFAULT_NODE_POD_CIDRS_WAIT_S =
      180, /* a control plane rolled out with the agents starts meanwhile */
  MAX_NODE_POD_CIDRS_WAIT_S = 3600,
};

#define NODE_POD_CIDRS_FROM_CP "from_control_plane"

#define DEFAULT_APP_SOURCE_ADDRESS "127.0.0.6"

typedef struct {
  const char *path;
  yaml_document_t *doc;
  char *err;
  size_t err_len;
} parse_ctx;

/* Formats "file:line: message" and returns 0 so callers can `return fail(..)`. */
static int fail(parse_ctx *pc, const yaml_node_t *node, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(parse_ctx *pc, const yaml_node_t *node, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  unsigned long line = node ? (unsigned long)node->start_mark.line + 1 : 1;
  snprintf(pc->err, pc->err_len, "%s:%lu: %s", pc->path, line, msg);
  return 0;
}

static const char *scalar(const yaml_node_t *node) {
  return node && node->type == YAML_SCALAR_NODE ? (const char *)node->data.scalar.value : NULL;
}

static yaml_node_t *node_at(parse_ctx *pc, int index) {
  return yaml_document_get_node(pc->doc, index);
}

static int want_scalar(parse_ctx *pc, const yaml_node_t *node, const char *key, const char **out) {
  *out = scalar(node);
  if (*out == NULL) return fail(pc, node, "'%s' must be a scalar value", key);
  return 1;
}

static int want_string(parse_ctx *pc, const yaml_node_t *node, const char *key, char **out) {
  const char *s;
  if (!want_scalar(pc, node, key, &s)) return 0;
  if (*s == '\0') return fail(pc, node, "'%s' must not be empty", key);
  free(*out);
  *out = strdup(s);
  return *out != NULL || fail(pc, node, "out of memory");
}

static int want_int(parse_ctx *pc, const yaml_node_t *node, const char *key, long min, long max,
                    int *out) {
  const char *s;
  if (!want_scalar(pc, node, key, &s)) return 0;
  char *end = NULL;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0')
    return fail(pc, node, "'%s' must be an integer, got '%s'", key, s);
  if (v < min || v > max)
    return fail(pc, node, "'%s' must be between %ld and %ld, got %ld", key, min, max, v);
  *out = (int)v;
  return 1;
}

static int want_address(parse_ctx *pc, const yaml_node_t *node, const char *key, int require_port,
                        mt_sockaddr *out) {
  const char *s;
  if (!want_scalar(pc, node, key, &s)) return 0;
  if (!mt_sockaddr_parse(s, out, require_port))
    return fail(pc, node, "'%s' is not a valid %s: '%s'", key,
                require_port ? "IP:port address" : "IP address", s);
  return 1;
}

/* Iterates the pairs of a mapping node, calling |on_pair| for each. */
typedef int (*pair_fn)(parse_ctx *pc, const char *key, yaml_node_t *key_node, yaml_node_t *value,
                       void *target);

/* YAML allows a key twice in one mapping and libyaml keeps both; we refuse,
 * since which one "wins" would otherwise be an accident of parsing order. */
static int is_duplicate_key(parse_ctx *pc, yaml_node_t *map, yaml_node_pair_t *upto,
                            const char *key) {
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < upto; p++) {
    const char *earlier = scalar(node_at(pc, p->key));
    if (earlier != NULL && strcmp(earlier, key) == 0) return 1;
  }
  return 0;
}

static int each_pair(parse_ctx *pc, yaml_node_t *map, const char *what, pair_fn on_pair,
                     void *target) {
  if (map->type != YAML_MAPPING_NODE) return fail(pc, map, "%s must be a mapping", what);
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
    yaml_node_t *k = node_at(pc, p->key);
    yaml_node_t *v = node_at(pc, p->value);
    const char *key = scalar(k);
    if (key == NULL) return fail(pc, k, "%s keys must be scalars", what);
    if (is_duplicate_key(pc, map, p, key)) return fail(pc, k, "duplicate key '%s'", key);
    if (!on_pair(pc, key, k, v, target)) return 0;
  }
  return 1;
}

/* Iterates the items of a sequence node. */
typedef int (*item_fn)(parse_ctx *pc, yaml_node_t *item, size_t index, void *target);

static int each_item(parse_ctx *pc, yaml_node_t *seq, const char *what, item_fn on_item,
                     void *target) {
  if (seq->type != YAML_SEQUENCE_NODE) return fail(pc, seq, "%s must be a list", what);
  size_t i = 0;
  for (yaml_node_item_t *it = seq->data.sequence.items.start; it < seq->data.sequence.items.top;
       it++, i++) {
    if (!on_item(pc, node_at(pc, *it), i, target)) return 0;
  }
  return 1;
}

static size_t seq_len(const yaml_node_t *seq) {
  return seq->type == YAML_SEQUENCE_NODE
             ? (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start)
             : 0;
}

/* Allocates a zeroed array for a sequence; the caller's count is set later. */
static void *alloc_for(parse_ctx *pc, yaml_node_t *seq, const char *what, size_t elem) {
  if (seq->type != YAML_SEQUENCE_NODE) {
    fail(pc, seq, "%s must be a list", what);
    return NULL;
  }
  void *p = calloc(seq_len(seq) + 1, elem);
  if (p == NULL) fail(pc, seq, "out of memory");
  return p;
}

/* ---- identity ---------------------------------------------------------- */

/* What is wrong with a Workload API address, or NULL. The SPIFFE form is a
 * unix URI with an empty authority; the path must fit a sockaddr_un. */
static const char *workload_api_socket_problem(const char *s) {
  static const char scheme[] = "unix:";
  if (strncmp(s, scheme, sizeof(scheme) - 1) != 0)
    return "only Unix domain sockets are supported (no tcp: or other scheme)";
  const char *path = s + sizeof(scheme) - 1;
  if (strncmp(path, "//", 2) == 0) {
    if (path[2] != '/') return "a unix URI has no host: use three slashes";
    path += 2;
  }
  if (path[0] != '/' || path[1] == '\0') return "the socket path must be absolute";
  if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
    return "the socket path is longer than a Unix socket address holds (107 bytes)";
  if (strpbrk(path, "?#%") != NULL) return "no query, fragment or percent-encoding";
  return NULL;
}

static int on_identity_key(parse_ctx *pc, const char *key, yaml_node_t *k, yaml_node_t *v,
                           void *target) {
  mt_config *c = target;
  if (strcmp(key, "cert_file") == 0) return want_string(pc, v, key, &c->cert_file);
  if (strcmp(key, "key_file") == 0) return want_string(pc, v, key, &c->key_file);
  if (strcmp(key, "pkcs12_file") == 0) return want_string(pc, v, key, &c->pkcs12_file);
  if (strcmp(key, "pkcs12_password_file") == 0)
    return want_string(pc, v, key, &c->pkcs12_password_file);
  if (strcmp(key, "reload_interval_ms") == 0)
    return want_int(pc, v, key, 10, MAX_TIMEOUT_MS, &c->reload_interval_ms);
  if (strcmp(key, "spiffe_id") == 0) {
    if (!want_string(pc, v, key, &c->spiffe_id)) return 0;
    mt_spiffe_err e = mt_spiffe_id_parse(c->spiffe_id, strlen(c->spiffe_id), NULL);
    if (e != MT_SPIFFE_OK)
      return fail(pc, v, "invalid SPIFFE ID '%s': %s", c->spiffe_id, mt_spiffe_err_str(e));
    return 1;
  }
  if (strcmp(key, "workload_api_socket") == 0) {
    const char *s;
    if (!want_scalar(pc, v, key, &s)) return 0;
    const char *why = workload_api_socket_problem(s);
    if (why != NULL)
      return fail(pc, v,
                  "'workload_api_socket' must be unix:///absolute/path or unix:/absolute/path "
                  "(a SPIFFE Workload API Unix socket), got '%s': %s",
                  s, why);
    return want_string(pc, v, key, &c->workload_api_source_socket);
  }
  if (strcmp(key, "workload_api_retry_initial_ms") == 0)
    return want_int(pc, v, key, 1, MAX_TIMEOUT_MS, &c->workload_api_source_retry_initial_ms);
  if (strcmp(key, "workload_api_retry_max_ms") == 0)
    return want_int(pc, v, key, 1, MAX_TIMEOUT_MS, &c->workload_api_source_retry_max_ms);
  return fail(pc, k, "unknown key 'identity.%s'", key);
}

/* ---- control plane ----------------------------------------------------- */

static int on_control_plane_key(parse_ctx *pc, const char *key, yaml_node_t *k, yaml_node_t *v,
                                void *target) {
  mt_config *c = target;
  if (strcmp(key, "address") == 0) {
    /* A Service name is the usual form in a cluster; it is looked up off
     * the loop, again at every reconnect (grpc/resolver.h). */
    const char *s;
    mt_resolve_target probe;
    if (!want_scalar(pc, v, key, &s)) return 0;
    if (!mt_resolve_parse(s, &probe))
      return fail(pc, v, "'address' must be IP:port, [IPv6]:port or name:port, got '%s'", s);
    return want_string(pc, v, key, &c->cp_address);
  }
  if (strcmp(key, "root_file") == 0) return want_string(pc, v, key, &c->cp_root_file);
  if (strcmp(key, "spiffe_id") == 0) {
    if (!want_string(pc, v, key, &c->cp_spiffe_id)) return 0;
    mt_spiffe_err e = mt_spiffe_id_parse(c->cp_spiffe_id, strlen(c->cp_spiffe_id), NULL);
    if (e != MT_SPIFFE_OK)
      return fail(pc, v, "invalid SPIFFE ID '%s': %s", c->cp_spiffe_id, mt_spiffe_err_str(e));
    return 1;
  }
  if (strcmp(key, "token_file") == 0) return want_string(pc, v, key, &c->cp_token_file);
  if (strcmp(key, "cluster_id") == 0) return want_string(pc, v, key, &c->cp_cluster_id);
  if (strcmp(key, "node_id") == 0) return want_string(pc, v, key, &c->cp_node_id);
  if (strcmp(key, "cert_ttl_s") == 0)
    return want_int(pc, v, key, 1, 365 * 24 * 3600, &c->cp_cert_ttl_s);
  if (strcmp(key, "request_timeout_ms") == 0)
    return want_int(pc, v, key, 1, MAX_TIMEOUT_MS, &c->cp_request_timeout_ms);
  if (strcmp(key, "retry_initial_ms") == 0)
    return want_int(pc, v, key, 1, MAX_TIMEOUT_MS, &c->cp_retry_initial_ms);
  if (strcmp(key, "retry_max_ms") == 0)
    return want_int(pc, v, key, 1, MAX_TIMEOUT_MS, &c->cp_retry_max_ms);
  if (strcmp(key, "keepalive_ms") == 0)
    return want_int(pc, v, key, 0, MAX_TIMEOUT_MS, &c->cp_keepalive_ms);
  if (strcmp(key, "watch") == 0) {
    const char *s;
    if (!want_scalar(pc, v, key, &s)) return 0;
    if (strcmp(s, "true") == 0)
      c->cp_watch = 1;
    else if (strcmp(s, "false") == 0)
      c->cp_watch = 0;
    else
      return fail(pc, v, "'watch' must be true or false, got '%s'", s);
    return 1;
  }
  if (strcmp(key, "destinations") == 0) {
    const char *s;
    if (!want_scalar(pc, v, key, &s)) return 0;
    if (strcmp(s, "all") == 0)
      c->cp_on_demand = 0;
    else if (strcmp(s, "on_demand") == 0)
      c->cp_on_demand = 1;
    else
      return fail(pc, v, "'destinations' must be all or on_demand, got '%s'", s);
    return 1;
  }
  return fail(pc, k, "unknown key 'control_plane.%s'", key);
}

/* ---- trust bundles ----------------------------------------------------- */

static int on_bundle_key(parse_ctx *pc, const char *key, yaml_node_t *k, yaml_node_t *v,
                         void *target) {
  mt_trust_bundle_config *b = target;
  if (strcmp(key, "trust_domain") == 0) {
    if (!want_string(pc, v, key, &b->trust_domain)) return 0;
    mt_spiffe_err e = mt_trust_domain_validate(b->trust_domain, strlen(b->trust_domain));
    if (e != MT_SPIFFE_OK)
      return fail(pc, v, "invalid trust domain '%s': %s", b->trust_domain, mt_spiffe_err_str(e));
    return 1;
  }
  if (strcmp(key, "file") == 0) return want_string(pc, v, key, &b->file);
  return fail(pc, k, "unknown key 'trust_bundles[].%s'", key);
}

static int on_bundle(parse_ctx *pc, yaml_node_t *item, size_t i, void *target) {
  mt_config *c = target;
  mt_trust_bundle_config *b = &c->trust_bundles[i];
  c->num_trust_bundles = i + 1;
  if (!each_pair(pc, item, "a trust bundle", on_bundle_key, b)) return 0;
  if (b->trust_domain == NULL) return fail(pc, item, "trust bundle needs 'trust_domain'");
  if (b->file == NULL) return fail(pc, item, "trust bundle needs 'file'");
  for (size_t j = 0; j < i; j++) {
    if (strcmp(c->trust_bundles[j].trust_domain, b->trust_domain) == 0)
      return fail(pc, item, "trust domain '%s' has two bundles", b->trust_domain);
  }
  return 1;
}

/* ---- tls / timeouts ---------------------------------------------------- */

static int want_bool(parse_ctx *pc, const yaml_node_t *v, const char *key, int *out);

static int on_tls_key(parse_ctx *pc, const char *key, yaml_node_t *k, yaml_node_t *v,
                      void *target) {
  mt_config *c = target;
  if (strcmp(key, "min_version") == 0) {
    const char *s;
    if (!want_scalar(pc, v, key, &s)) return 0;
    if (strcmp(s, "1.3") == 0)
      c->tls_min_version = TLS1_3_VERSION;
    else if (strcmp(s, "1.2") == 0)
      c->tls_min_version = TLS1_2_VERSION;
    else
      return fail(pc, v, "'min_version' must be \"1.2\" or \"1.3\", got '%s'", s);
    return 1;
  }
  if (strcmp(key, "session_resumption") == 0)
    return want_bool(pc, v, key, &c->tls_session_resumption);
  if (strcmp(key, "session_lifetime_s") == 0)
    return want_int(pc, v, key, 1, MAX_SESSION_LIFETIME_S, &c->tls_session_lifetime_s);
  return fail(pc, k, "unknown key 'tls.%s'", key);
}

static int on_timeout_key(parse_ctx *pc, const char *key, yaml_node_t *k, yaml_node_t *v,
                          void *target) {
  mt_config *c = target;
  if (strcmp(key, "handshake_ms") == 0)
    return want_int(pc, v, key, 1, MAX_TIMEOUT_MS, &c->handshake_timeout_ms);
  if (strcmp(key, "connect_ms") == 0)
    return want_int(pc, v, key, 1, MAX_TIMEOUT_MS, &c->connect_timeout_ms);
  if (strcmp(key, "idle_ms") == 0)
    return want_int(pc, v, key, 1, MAX_TIMEOUT_MS, &c->idle_timeout_ms);
  if (strcmp(key, "drain_ms") == 0)
    return want_int(pc, v, key, 0, MAX_TIMEOUT_MS, &c->drain_timeout_ms);
  return fail(pc, k, "unknown key 'timeouts.%s'", key);
}

/* ---- listeners --------------------------------------------------------- */

typedef struct {
  mt_config *config;
  mt_listener_config *list;
  size_t *count;
  int inbound;
} listeners_target;

static int on_listener_key(parse_ctx *pc, const char *key, yaml_node_t *k, yaml_node_t *v,
                           void *target) {
  listeners_target *t = target;
  mt_listener_config *l = &t->list[*t->count - 1];
  if (strcmp(key, "address") == 0) return want_address(pc, v, key, 1, &l->listen);
  if (t->inbound && strcmp(key, "app_port") == 0) {
    int port;
    if (!want_int(pc, v, key, 1, 65535, &port)) return 0;
    l->has_fixed_target = 1;
    l->app_port = (uint16_t)port;
    return 1;
  }
  if (!t->inbound && strcmp(key, "destination") == 0) {
    l->has_fixed_target = 1;
    return want_address(pc, v, key, 1, &l->destination);
  }
  return fail(pc, k, "unknown key '%s.listeners[].%s'", t->inbound ? "inbound" : "outbound", key);
}

static int on_listener(parse_ctx *pc, yaml_node_t *item, size_t i, void *target) {
  listeners_target *t = target;
  *t->count = i + 1;
  if (!each_pair(pc, item, "a listener", on_listener_key, t)) return 0;
  if (t->list[i].listen.addr_len == 0) return fail(pc, item, "listener needs 'address'");
  return 1;
}

static int parse_listeners(parse_ctx *pc, yaml_node_t *v, listeners_target *t) {
  const char *what = t->inbound ? "inbound.listeners" : "outbound.listeners";
  mt_listener_config **slot =
      t->inbound ? &t->config->inbound_listeners : &t->config->outbound_listeners;
  free(*slot);
  *slot = alloc_for(pc, v, what, sizeof(mt_listener_config));
  if (*slot == NULL) return 0;
  *t->count = 0;
  t->list = *slot;
  return each_item(pc, v, what, on_listener, t);
}

static int on_permissive_port(parse_ctx *pc, yaml_node_t *item, size_t i, void *target) {
  (void)i;
  mt_config *c = target;
  int port;
  if (!want_int(pc, item, "permissive_ports[]", 1, 65535, &port)) return 0;
  c->permissive_ports[c->num_permissive_ports++] = (uint16_t)port;
  return 1;
}

static int on_inbound_key(parse_ctx *pc, const char *key, yaml_node_t *k, yaml_node_t *v,
                          void *target) {
  mt_config *c = target;
  if (strcmp(key, "listeners") == 0) {
    listeners_target t = {c, NULL, &c->num_inbound_listeners, 1};
    return parse_listeners(pc, v, &t);
  }
  if (strcmp(key, "app_address") == 0) return want_address(pc, v, key, 0, &c->inbound_app_address);
  if (strcmp(key, "permissive_ports") == 0) {
    free(c->permissive_ports);
    c->permissive_ports = alloc_for(pc, v, "inbound.permissive_ports", sizeof(uint16_t));
    c->num_permissive_ports = 0;
    return c->permissive_ports != NULL &&
           each_item(pc, v, "inbound.permissive_ports", on_permissive_port, c);
  }
  if (strcmp(key, "source_address") == 0) {
    c->has_inbound_source_address = 1;
    return want_address(pc, v, key, 0, &c->inbound_source_address);
  }
  return fail(pc, k, "unknown key 'inbound.%s'", key);
}

/* ---- outbound destinations --------------------------------------------- */

static int add_destination_id(parse_ctx *pc, yaml_node_t *v, mt_destination_config *d) {
  char *id = NULL;
  if (!want_string(pc, v, "spiffe_id", &id)) return 0;
  mt_spiffe_err e = mt_spiffe_id_parse(id, strlen(id), NULL);
  if (e != MT_SPIFFE_OK) {
    int r = fail(pc, v, "invalid SPIFFE ID '%s': %s", id, mt_spiffe_err_str(e));
    free(id);
    return r;
  }
  for (size_t i = 0; i < d->num_spiffe_ids; i++)
    if (strcmp(d->spiffe_ids[i], id) == 0) {
      free(id); /* listed twice: one is enough */
      return 1;
    }
  char **grown = realloc(d->spiffe_ids, (d->num_spiffe_ids + 1) * sizeof(*grown));
  if (grown == NULL) {
    free(id);
    return fail(pc, v, "out of memory");
  }
  d->spiffe_ids = grown;
  d->spiffe_ids[d->num_spiffe_ids++] = id;
  return 1;
}

static int on_destination_id(parse_ctx *pc, yaml_node_t *item, size_t i, void *target) {
  (void)i;
  return add_destination_id(pc, item, target);
}

static int on_destination_key(parse_ctx *pc, const char *key, yaml_node_t *k, yaml_node_t *v,
                              void *target) {
  mt_destination_config *d = target;
  if (strcmp(key, "address") == 0) return want_address(pc, v, key, 0, &d->address);
  if (strcmp(key, "spiffe_id") == 0) return add_destination_id(pc, v, d);
  if (strcmp(key, "spiffe_ids") == 0)
    return each_item(pc, v, "outbound.destinations[].spiffe_ids", on_destination_id, d);
  return fail(pc, k, "unknown key 'outbound.destinations[].%s'", key);
}

static int on_destination(parse_ctx *pc, yaml_node_t *item, size_t i, void *target) {
  mt_config *c = target;
  mt_destination_config *d = &c->destinations[i];
  c->num_destinations = i + 1;
  if (!each_pair(pc, item, "a destination", on_destination_key, d)) return 0;
  if (d->address.addr_len == 0) return fail(pc, item, "destination needs 'address'");
  if (d->num_spiffe_ids == 0)
    return fail(pc, item, "destination needs 'spiffe_id' or a non-empty 'spiffe_ids'");
  for (size_t j = 0; j < i; j++)
    if (mt_sockaddr_equal((const struct sockaddr *)&c->destinations[j].address.addr,
                          (const struct sockaddr *)&d->address.addr))
      return fail(pc, item, "destination address listed twice (entries %zu and %zu)", j + 1, i + 1);
  return 1;
}

static int on_outbound_key(parse_ctx *pc, const char *key, yaml_node_t *k, yaml_node_t *v,
                           void *target) {
  mt_config *c = target;
  if (strcmp(key, "listeners") == 0) {
    listeners_target t = {c, NULL, &c->num_outbound_listeners, 0};
    return parse_listeners(pc, v, &t);
  }
  if (strcmp(key, "destinations") == 0) {
    free(c->destinations);
    c->destinations = alloc_for(pc, v, "outbound.destinations", sizeof(mt_destination_config));
    c->num_destinations = 0;
    return c->destinations != NULL && each_item(pc, v, "outbound.destinations", on_destination, c);
  }
  if (strcmp(key, "unknown_destination") == 0) {
    const char *s;
    if (!want_scalar(pc, v, key, &s)) return 0;
    if (strcmp(s, "trust_domain") == 0)
      c->unknown_destination = MT_UNKNOWN_DEST_TRUST_DOMAIN;
    else if (strcmp(s, "deny") == 0)
      c->unknown_destination = MT_UNKNOWN_DEST_DENY;
    else if (strcmp(s, "passthrough") == 0)
      c->unknown_destination = MT_UNKNOWN_DEST_PASSTHROUGH;
    else
      return fail(pc, v,
                  "'unknown_destination' must be trust_domain, deny or passthrough, got '%s'", s);
    return 1;
  }
  return fail(pc, k, "unknown key 'outbound.%s'", key);
}

/* ---- interception ------------------------------------------------------ */

typedef struct {
  const char *key; /* the list's key, for messages */
  mt_port_list *ports;
  mt_cidr_list *cidrs;
} list_target;

static int on_list_port(parse_ctx *pc, yaml_node_t *item, size_t i, void *target) {
  list_target *t = target;
  char name[64];
  snprintf(name, sizeof(name), "%s[]", t->key);
  int port;
  if (!want_int(pc, item, name, 1, 65535, &port)) return 0;
  t->ports->ports[i] = (uint16_t)port;
  t->ports->count = i + 1;
  return 1;
}

/* A list of ports, or (when |star_ok|) "*" for every port. */
static int want_port_list(parse_ctx *pc, yaml_node_t *v, const char *key, int star_ok,
                          mt_port_list *out) {
  free(out->ports);
  memset(out, 0, sizeof(*out));
  const char *s = scalar(v);
  if (s != NULL && star_ok && strcmp(s, "*") == 0) return out->all = 1, 1;
  if (v->type != YAML_SEQUENCE_NODE)
    return fail(pc, v, "'%s' must be %sa list of ports", key, star_ok ? "\"*\" or " : "");
  out->ports = alloc_for(pc, v, key, sizeof(uint16_t));
  list_target t = {key, out, NULL};
  return out->ports != NULL && each_item(pc, v, key, on_list_port, &t);
}

/* "a.b.c.d/n", "v6/n", or a bare address (a single host). Host bits must be
 * zero: "10.0.0.1/8" is more likely a typo than a wish for 10.0.0.0/8. */

static int parse_cidr(parse_ctx *pc, yaml_node_t *node, const char *key, const char *text,
                      mt_cidr *out) {
  char why[160];
  if (mt_cidr_parse(text, out, why, sizeof(why))) return 1;
  return fail(pc, node, "'%s': %s", key, why); /* |why| quotes |text| */
}

static int on_list_cidr(parse_ctx *pc, yaml_node_t *item, size_t i, void *target) {
  list_target *t = target;
  char name[64];
  snprintf(name, sizeof(name), "%s[]", t->key);
  const char *s;
  if (!want_scalar(pc, item, name, &s) || !parse_cidr(pc, item, name, s, &t->cidrs->cidrs[i]))
    return 0;
  t->cidrs->count = i + 1;
  return 1;
}

/* A list of CIDRs, or (when |star_ok|) "*" for every address. */
static int want_cidr_list(parse_ctx *pc, yaml_node_t *v, const char *key, int star_ok,
                          mt_cidr_list *out) {
  free(out->cidrs);
  memset(out, 0, sizeof(*out));
  const char *s = scalar(v);
  if (s != NULL && star_ok && strcmp(s, "*") == 0) return out->all = 1, 1;
  if (v->type != YAML_SEQUENCE_NODE)
    return fail(pc, v, "'%s' must be %sa list of CIDRs", key, star_ok ? "\"*\" or " : "");
  out->cidrs = alloc_for(pc, v, key, sizeof(mt_cidr));
  list_target t = {key, NULL, out};
  return out->cidrs != NULL && each_item(pc, v, key, on_list_cidr, &t);
}

static int want_port(parse_ctx *pc, yaml_node_t *v, const char *key, uint16_t *out) {
  int port;
  if (!want_int(pc, v, key, 1, 65535, &port)) return 0;
  *out = (uint16_t)port;
  return 1;
}

static int on_interception_key(parse_ctx *pc, const char *key, yaml_node_t *k, yaml_node_t *v,
                               void *target) {
  mt_interception_config *ic = target;
  if (strcmp(key, "proxy_uid") == 0) return want_int(pc, v, key, 0, INT_MAX, &ic->proxy_uid);
  if (strcmp(key, "proxy_gid") == 0) {
    ic->has_proxy_gid = 1;
    return want_int(pc, v, key, 0, INT_MAX, &ic->proxy_gid);
  }
  if (strcmp(key, "outbound_port") == 0) return want_port(pc, v, key, &ic->outbound_port);
  if (strcmp(key, "inbound_port") == 0) return want_port(pc, v, key, &ic->inbound_port);
  if (strcmp(key, "include_inbound_ports") == 0)
    return want_port_list(pc, v, key, 1, &ic->include_inbound_ports);
  if (strcmp(key, "exclude_inbound_ports") == 0)
    return want_port_list(pc, v, key, 0, &ic->exclude_inbound_ports);
  if (strcmp(key, "exclude_outbound_ports") == 0)
    return want_port_list(pc, v, key, 0, &ic->exclude_outbound_ports);
  if (strcmp(key, "include_outbound_cidrs") == 0)
    return want_cidr_list(pc, v, key, 1, &ic->include_outbound_cidrs);
  if (strcmp(key, "exclude_outbound_cidrs") == 0)
    return want_cidr_list(pc, v, key, 0, &ic->exclude_outbound_cidrs);
  if (strcmp(key, "node_pod_cidrs") == 0) {
    const char *text = scalar(v);
    ic->node_pod_cidrs_from_cp = text != NULL && strcmp(text, NODE_POD_CIDRS_FROM_CP) == 0;
    if (ic->node_pod_cidrs_from_cp) return 1;
    if (v->type != YAML_SEQUENCE_NODE)
      return fail(pc, v,
                  "'node_pod_cidrs' must be a list of CIDRs or \"" NODE_POD_CIDRS_FROM_CP
                  "\" (the node's spec.podCIDRs, asked of the control plane)");
    return want_cidr_list(pc, v, key, 0, &ic->node_pod_cidrs);
  }
  if (strcmp(key, "node_pod_cidrs_wait_s") == 0)
    return want_int(pc, v, key, 1, MAX_NODE_POD_CIDRS_WAIT_S, &ic->node_pod_cidrs_wait_s);
  if (strcmp(key, "app_source_address") == 0) {
    if (!want_address(pc, v, key, 0, &ic->app_source_address)) return 0;
    if (mt_sockaddr_port((const struct sockaddr *)&ic->app_source_address.addr) != 0)
      return fail(pc, v, "'app_source_address' is an IP address without a port");
    return 1;
  }
  return fail(pc, k, "unknown key 'interception.%s'", key);
}

/* proxy_uid has no default: excluding the wrong UID would make the agent
 * capture its own traffic, a loop. */
static int parse_interception(parse_ctx *pc, yaml_node_t *v, mt_config *c) {
  mt_interception_config *ic = &c->interception;
  c->has_interception = 1;
  ic->proxy_uid = -1;
  ic->node_pod_cidrs_wait_s = DEFAULT_NODE_POD_CIDRS_WAIT_S;
  if (!each_pair(pc, v, "interception", on_interception_key, ic)) return 0;
  if (ic->proxy_uid < 0) return fail(pc, v, "interception needs 'proxy_uid'");
  for (size_t i = 0; i < ic->node_pod_cidrs.count; i++)
    if (ic->node_pod_cidrs.cidrs[i].prefix_len == 0)
      return fail(pc, v, "interception.node_pod_cidrs: a pod CIDR cannot be everything");
  return 1;
}

/* The first listener that serves redirected traffic (a fixed mapping ignores
 * the original destination, so it cannot be a capture target). */
static uint16_t first_redirect_port(const mt_listener_config *l, size_t n, uint16_t fallback) {
  for (size_t i = 0; i < n; i++) {
    if (!l[i].has_fixed_target) return mt_sockaddr_port((const struct sockaddr *)&l[i].listen.addr);
  }
  return fallback;
}

static void resolve_interception(mt_config *c) {
  mt_interception_config *ic = &c->interception;
  if (!c->has_interception) return;
  if (ic->outbound_port == 0)
    ic->outbound_port = first_redirect_port(c->outbound_listeners, c->num_outbound_listeners,
                                            DEFAULT_OUTBOUND_CAPTURE_PORT);
  if (ic->inbound_port == 0)
    ic->inbound_port = first_redirect_port(c->inbound_listeners, c->num_inbound_listeners,
                                           DEFAULT_INBOUND_CAPTURE_PORT);
}

/* ---- policy ------------------------------------------------------------ */

typedef struct {
  char *name;
  mt_action action;
  int has_action;
  uint16_t ports[MAX_RULE_PORTS];
  size_t num_ports;
  mt_matcher matchers[MAX_RULE_MATCHERS];
  char *owned[MAX_RULE_MATCHERS]; /* prefix values with the '*' removed */
  size_t num_matchers;
} rule_draft;

static int parse_action(parse_ctx *pc, yaml_node_t *v, mt_action *out) {
  const char *s;
  if (!want_scalar(pc, v, "action", &s)) return 0;
  if (strcasecmp(s, "allow") == 0)
    *out = MT_ACTION_ALLOW;
  else if (strcasecmp(s, "deny") == 0)
    *out = MT_ACTION_DENY;
  else
    return fail(pc, v, "action must be allow or deny, got '%s'", s);
  return 1;
}

static int on_port(parse_ctx *pc, yaml_node_t *item, size_t i, void *target) {
  rule_draft *r = target;
  int port;
  (void)i;
  if (r->num_ports >= MAX_RULE_PORTS)
    return fail(pc, item, "a rule lists at most %d ports", MAX_RULE_PORTS);
  if (!want_int(pc, item, "ports[]", 1, 65535, &port)) return 0;
  r->ports[r->num_ports++] = (uint16_t)port;
  return 1;
}

static int on_matcher_key(parse_ctx *pc, const char *key, yaml_node_t *k, yaml_node_t *v,
                          void *target) {
  rule_draft *r = target;
  if (r->num_matchers >= MAX_RULE_MATCHERS)
    return fail(pc, k, "a rule has at most %d matchers", MAX_RULE_MATCHERS);
  mt_matcher *m = &r->matchers[r->num_matchers];
  const char *s;
  if (!want_scalar(pc, v, key, &s)) return 0;
  if (strcmp(key, "any") == 0) {
    if (strcmp(s, "true") != 0) return fail(pc, v, "'any' only takes the value true");
    m->kind = MT_MATCH_ANY;
    m->value = NULL;
  } else if (strcmp(key, "id") == 0) {
    m->kind = MT_MATCH_EXACT;
    m->value = s;
  } else if (strcmp(key, "prefix") == 0) {
    size_t n = strlen(s);
    if (n < 2 || s[n - 1] != '*' || s[n - 2] != '/')
      return fail(pc, v, "prefix must end in '/*', got '%s'", s);
    m->kind = MT_MATCH_PREFIX;
    r->owned[r->num_matchers] = strndup(s, n - 1); /* the policy wants it without '*' */
    if (r->owned[r->num_matchers] == NULL) return fail(pc, v, "out of memory");
    m->value = r->owned[r->num_matchers];
  } else if (strcmp(key, "namespace") == 0) {
    m->kind = MT_MATCH_NAMESPACE;
    m->value = s;
  } else if (strcmp(key, "trust_domain") == 0) {
    m->kind = MT_MATCH_TRUST_DOMAIN;
    m->value = s;
  } else {
    return fail(pc, k, "unknown matcher '%s' (want id, prefix, namespace, trust_domain, any)", key);
  }
  r->num_matchers++;
  return 1;
}

static int on_matcher(parse_ctx *pc, yaml_node_t *item, size_t i, void *target) {
  (void)i;
  rule_draft *r = target;
  if (item->type != YAML_MAPPING_NODE ||
      item->data.mapping.pairs.top - item->data.mapping.pairs.start != 1)
    return fail(pc, item, "each 'from' entry is one 'kind: value' pair");
  return each_pair(pc, item, "a 'from' entry", on_matcher_key, r);
}

static int on_rule_key(parse_ctx *pc, const char *key, yaml_node_t *k, yaml_node_t *v,
                       void *target) {
  rule_draft *r = target;
  if (strcmp(key, "name") == 0) return want_string(pc, v, key, &r->name);
  if (strcmp(key, "action") == 0) return r->has_action = 1, parse_action(pc, v, &r->action);
  if (strcmp(key, "ports") == 0) return each_item(pc, v, "ports", on_port, r);
  if (strcmp(key, "from") == 0) return each_item(pc, v, "from", on_matcher, r);
  return fail(pc, k, "unknown key 'policy.rules[].%s'", key);
}

static int on_rule(parse_ctx *pc, yaml_node_t *item, size_t i, void *target) {
  (void)i;
  mt_policy **policy = target;
  rule_draft r;
  memset(&r, 0, sizeof(r));
  int ok = each_pair(pc, item, "a policy rule", on_rule_key, &r);
  if (ok && r.name == NULL) ok = fail(pc, item, "policy rule needs 'name'");
  if (ok && !r.has_action) ok = fail(pc, item, "policy rule '%s' needs 'action'", r.name);
  if (ok && r.num_matchers == 0) ok = fail(pc, item, "policy rule '%s' needs 'from'", r.name);
  char why[256];
  if (ok && !mt_policy_add_rule(*policy, r.name, r.action, r.ports, r.num_ports, r.matchers,
                                r.num_matchers, why, sizeof(why)))
    ok = fail(pc, item, "policy rule '%s': %s", r.name, why);
  free(r.name);
  for (size_t m = 0; m < r.num_matchers; m++) free(r.owned[m]);
  return ok;
}

/* |target| is the mt_policy ** being filled (the top level's or a node
 * workload's own). */
static int on_policy_key(parse_ctx *pc, const char *key, yaml_node_t *k, yaml_node_t *v,
                         void *target) {
  mt_policy **policy = target;
  if (strcmp(key, "default") == 0) {
    mt_action a;
    if (!parse_action(pc, v, &a)) return 0;
    if (mt_policy_rule_count(*policy) != 0)
      return fail(pc, k, "'policy.default' must come before 'policy.rules'");
    mt_policy_free(*policy);
    *policy = mt_policy_new(a);
    return *policy != NULL || fail(pc, v, "out of memory");
  }
  if (strcmp(key, "rules") == 0) return each_item(pc, v, "policy.rules", on_rule, policy);
  return fail(pc, k, "unknown key 'policy.%s'", key);
}

/* ---- top level --------------------------------------------------------- */

static int parse_log_level(parse_ctx *pc, yaml_node_t *v, mt_log_level *out) {
  static const char *const names[] = {"debug", "info", "warn", "error"};
  const char *s;
  if (!want_scalar(pc, v, "log_level", &s)) return 0;
  for (int i = 0; i < 4; i++) {
    if (strcmp(s, names[i]) == 0) {
      *out = (mt_log_level)i;
      return 1;
    }
  }
  return fail(pc, v, "'log_level' must be debug, info, warn or error, got '%s'", s);
}

/* ---- node mode ----------------------------------------------------------- */

static int on_workload_key(parse_ctx *pc, const char *key, yaml_node_t *k, yaml_node_t *v,
                           void *target) {
  mt_node_workload_config *w = target;
  if (strcmp(key, "address") == 0) return want_address(pc, v, key, 0, &w->address);
  if (strcmp(key, "spiffe_id") == 0) {
    if (!want_string(pc, v, key, &w->spiffe_id)) return 0;
    mt_spiffe_id_view view;
    mt_spiffe_err e = mt_spiffe_id_parse(w->spiffe_id, strlen(w->spiffe_id), &view);
    if (e != MT_SPIFFE_OK)
      return fail(pc, v, "invalid SPIFFE ID '%s': %s", w->spiffe_id, mt_spiffe_err_str(e));
    return 1;
  }
  if (strcmp(key, "policy") == 0) {
    w->policy = mt_policy_new(MT_ACTION_ALLOW);
    if (w->policy == NULL) return fail(pc, v, "out of memory");
    return each_pair(pc, v, "policy", on_policy_key, &w->policy);
  }
  return fail(pc, k, "unknown key 'node.workloads[].%s'", key);
}

static int on_workload(parse_ctx *pc, yaml_node_t *item, size_t i, void *target) {
  mt_config *c = target;
  mt_node_workload_config *w = &c->node_workloads[i];
  c->num_node_workloads = i + 1;
  if (!each_pair(pc, item, "a node workload", on_workload_key, w)) return 0;
  if (w->address.addr.ss_family == 0) return fail(pc, item, "node workload needs 'address'");
  if (w->spiffe_id == NULL) return fail(pc, item, "node workload needs 'spiffe_id'");
  for (size_t j = 0; j < i; j++)
    if (mt_sockaddr_equal((const struct sockaddr *)&c->node_workloads[j].address.addr,
                          (const struct sockaddr *)&w->address.addr))
      return fail(pc, item, "node workload address listed twice");
  return 1;
}

static int on_node_key(parse_ctx *pc, const char *key, yaml_node_t *k, yaml_node_t *v,
                       void *target) {
  mt_config *c = target;
  if (strcmp(key, "name") == 0) return want_string(pc, v, key, &c->node_name);
  if (strcmp(key, "workloads") == 0) {
    c->node_workloads = alloc_for(pc, v, key, sizeof(mt_node_workload_config));
    return c->node_workloads != NULL && each_item(pc, v, key, on_workload, c);
  }
  return fail(pc, k, "unknown key 'node.%s'", key);
}

static int parse_node(parse_ctx *pc, yaml_node_t *v, mt_config *c) {
  c->node_mode = 1;
  if (!each_pair(pc, v, "node", on_node_key, c)) return 0;
  if (c->node_name == NULL) {
    /* One config for every node of a DaemonSet: the pod spec passes
     * spec.nodeName as NODE_NAME (downward API); else the host name, which
     * a hostNetwork pod shares with its node. */
    const char *env = getenv("NODE_NAME");
    char host[HOST_NAME_MAX + 1] = "";
    if (env != NULL && env[0] != '\0')
      c->node_name = strdup(env);
    else if (gethostname(host, sizeof(host)) == 0 && host[0] != '\0')
      c->node_name = strdup(host);
    if (c->node_name == NULL)
      return fail(pc, v, "node needs 'name' (or NODE_NAME in the environment)");
  }
  return 1;
}

/* ---- admin ------------------------------------------------------------ */

static int want_bool(parse_ctx *pc, const yaml_node_t *v, const char *key, int *out) {
  const char *s;
  if (!want_scalar(pc, v, key, &s)) return 0;
  if (strcmp(s, "true") == 0 || strcmp(s, "false") == 0) {
    *out = strcmp(s, "true") == 0;
    return 1;
  }
  return fail(pc, v, "'%s' must be true or false, not '%s'", key, s);
}

static int parse_sockaddr(const char *text, mt_sockaddr *out, int require_port, int allow_any_port);

/* Like want_address, but port 0 ("any free port", logged at start) is allowed. */
static int want_bindable_address(parse_ctx *pc, const yaml_node_t *node, const char *key,
                                 mt_sockaddr *out) {
  const char *s;
  if (!want_scalar(pc, node, key, &s)) return 0;
  if (!parse_sockaddr(s, out, 1, 1))
    return fail(pc, node, "'%s' is not a valid IP:port address: '%s'", key, s);
  return 1;
}

static int on_admin_key(parse_ctx *pc, const char *key, yaml_node_t *k, yaml_node_t *v,
                        void *target) {
  mt_config *c = target;
  if (strcmp(key, "enabled") == 0) return want_bool(pc, v, key, &c->admin_enabled);
  if (strcmp(key, "address") == 0) return want_bindable_address(pc, v, key, &c->admin_address);
  if (strcmp(key, "telemetry_address") == 0) {
    c->has_admin_telemetry_address = 1;
    return want_bindable_address(pc, v, key, &c->admin_telemetry_address);
  }
  if (strcmp(key, "allow_non_local") == 0) return want_bool(pc, v, key, &c->admin_allow_non_local);
  return fail(pc, k, "unknown key 'admin.%s'", key);
}

static int is_loopback(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET)
    return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
  return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr);
}

/* The admin API shows identities, policy and config and can stop the agent:
 * it stays on loopback unless the operator says otherwise. The telemetry
 * listener (health and metrics only) is what probes and Prometheus reach from
 * outside the pod, so it may bind anywhere. */
static int parse_admin(parse_ctx *pc, yaml_node_t *v, mt_config *c) {
  if (!each_pair(pc, v, "admin", on_admin_key, c)) return 0;
  if (c->admin_enabled && !c->admin_allow_non_local &&
      !is_loopback((const struct sockaddr *)&c->admin_address.addr)) {
    char text[64];
    mt_sockaddr_format((const struct sockaddr *)&c->admin_address.addr, text, sizeof(text));
    return fail(pc, v,
                "admin.address %s is not a loopback address; the admin API exposes identities "
                "and can stop the agent (set admin.allow_non_local: true to allow it)",
                text);
  }
  return 1;
}

/* ---- workload_api ------------------------------------------------------ */

typedef struct {
  const char *key;
  unsigned *values;
  size_t *count;
} id_list_target;

static int on_id(parse_ctx *pc, yaml_node_t *item, size_t i, void *target) {
  id_list_target *t = target;
  char name[64];
  snprintf(name, sizeof(name), "workload_api.%s[]", t->key);
  int id;
  /* 0 (root) is a valid uid/gid, but never one to hand an identity to by
   * accident: it must be listed deliberately like any other. */
  if (!want_int(pc, item, name, 0, INT32_MAX, &id)) return 0;
  t->values[i] = (unsigned)id;
  *t->count = i + 1;
  return 1;
}

static int want_id_list(parse_ctx *pc, yaml_node_t *v, const char *key, unsigned **values,
                        size_t *count) {
  free(*values);
  *values = NULL;
  *count = 0;
  if (v->type != YAML_SEQUENCE_NODE)
    return fail(pc, v, "'workload_api.%s' must be a list of numeric ids", key);
  *values = alloc_for(pc, v, key, sizeof(unsigned));
  id_list_target t = {key, *values, count};
  return *values != NULL && each_item(pc, v, key, on_id, &t);
}

static int on_workload_api_key(parse_ctx *pc, const char *key, yaml_node_t *k, yaml_node_t *v,
                               void *target) {
  mt_config *c = target;
  if (strcmp(key, "socket") == 0) {
    if (!want_string(pc, v, key, &c->workload_api_socket)) return 0;
    if (c->workload_api_socket[0] != '/' || strlen(c->workload_api_socket) >= 108)
      return fail(pc, v, "'workload_api.socket' must be an absolute path shorter than 108 bytes");
    return 1;
  }
  if (strcmp(key, "allowed_uids") == 0)
    return want_id_list(pc, v, key, &c->workload_api_uids, &c->num_workload_api_uids);
  if (strcmp(key, "allowed_gids") == 0)
    return want_id_list(pc, v, key, &c->workload_api_gids, &c->num_workload_api_gids);
  return fail(pc, k, "unknown key 'workload_api.%s'", key);
}

/* ---- security --------------------------------------------------------- */

static int on_security_key(parse_ctx *pc, const char *key, yaml_node_t *k, yaml_node_t *v,
                           void *target) {
  mt_config *c = target;
  if (strcmp(key, "seccomp") == 0) {
    const char *s;
    if (!want_scalar(pc, v, key, &s)) return 0;
    /* The spellings of mt_seccomp_mode_str (config.c links without sandbox.c
     * in the config fuzzer). */
    static const struct {
      const char *text;
      mt_seccomp_mode mode;
    } modes[] = {{"true", MT_SECCOMP_ON}, {"false", MT_SECCOMP_OFF}, {"log", MT_SECCOMP_LOG}};
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
      if (strcmp(s, modes[i].text) == 0) {
        c->seccomp = modes[i].mode;
        return 1;
      }
    }
    return fail(pc, v, "'security.seccomp' must be true, false or log, not '%s'", s);
  }
  return fail(pc, k, "unknown key 'security.%s'", key);
}

static int on_top_key(parse_ctx *pc, const char *key, yaml_node_t *k, yaml_node_t *v,
                      void *target) {
  mt_config *c = target;
  if (strcmp(key, "trust_domain") == 0) {
    if (!want_string(pc, v, key, &c->trust_domain)) return 0;
    mt_spiffe_err e = mt_trust_domain_validate(c->trust_domain, strlen(c->trust_domain));
    if (e != MT_SPIFFE_OK)
      return fail(pc, v, "invalid trust domain '%s': %s", c->trust_domain, mt_spiffe_err_str(e));
    return 1;
  }
  if (strcmp(key, "workers") == 0) return want_int(pc, v, key, 0, MAX_WORKERS, &c->workers);
  if (strcmp(key, "max_connections") == 0)
    return want_int(pc, v, key, 1, 1000000, &c->max_connections);
  if (strcmp(key, "handshakes_per_source") == 0)
    return want_int(pc, v, key, 0, 1000000, &c->handshakes_per_source);
  if (strcmp(key, "log_level") == 0) return parse_log_level(pc, v, &c->log_level);
  if (strcmp(key, "access_log") == 0) return want_string(pc, v, key, &c->access_log);
  if (strcmp(key, "identity") == 0) return each_pair(pc, v, "identity", on_identity_key, c);
  if (strcmp(key, "control_plane") == 0) {
    c->has_control_plane = 1;
    return each_pair(pc, v, "control_plane", on_control_plane_key, c);
  }
  if (strcmp(key, "trust_bundles") == 0) {
    free(c->trust_bundles);
    c->trust_bundles = alloc_for(pc, v, key, sizeof(mt_trust_bundle_config));
    c->num_trust_bundles = 0;
    return c->trust_bundles != NULL && each_item(pc, v, key, on_bundle, c);
  }
  if (strcmp(key, "tls") == 0) return each_pair(pc, v, "tls", on_tls_key, c);
  if (strcmp(key, "timeouts") == 0) return each_pair(pc, v, "timeouts", on_timeout_key, c);
  if (strcmp(key, "inbound") == 0) return each_pair(pc, v, "inbound", on_inbound_key, c);
  if (strcmp(key, "outbound") == 0) return each_pair(pc, v, "outbound", on_outbound_key, c);
  if (strcmp(key, "policy") == 0) return each_pair(pc, v, "policy", on_policy_key, &c->policy);
  if (strcmp(key, "node") == 0) return parse_node(pc, v, c);
  if (strcmp(key, "interception") == 0) return parse_interception(pc, v, c);
  if (strcmp(key, "admin") == 0) return parse_admin(pc, v, c);
  if (strcmp(key, "security") == 0) return each_pair(pc, v, "security", on_security_key, c);
  if (strcmp(key, "workload_api") == 0)
    return each_pair(pc, v, "workload_api", on_workload_api_key, c);
  return fail(pc, k, "unknown key '%s'", key);
}

/* Whether the valid SPIFFE ID |id| names |trust_domain|. */
static int in_trust_domain(const char *id, const char *trust_domain) {
  mt_spiffe_id_view view;
  mt_spiffe_id_parse(id, strlen(id), &view);
  return view.trust_domain_len == strlen(trust_domain) &&
         memcmp(view.trust_domain, trust_domain, view.trust_domain_len) == 0;
}

/* Cross-field rules that no single key can check. */
/* With a control plane, certificates come from the CA and bundles may come
 * from the mesh stream, so neither files nor bundles are required. */
static int validate_control_plane(parse_ctx *pc, mt_config *c, yaml_node_t *root) {
  if (c->cp_address == NULL) return fail(pc, root, "control_plane needs 'address'");
  if (c->cp_root_file == NULL) return fail(pc, root, "control_plane needs 'root_file'");
  if (c->cp_spiffe_id == NULL) return fail(pc, root, "control_plane needs 'spiffe_id'");
  if (c->spiffe_id == NULL)
    return fail(pc, root, "identity.spiffe_id is required with a control plane");
  if (c->cert_file != NULL || c->key_file != NULL || c->pkcs12_file != NULL)
    return fail(pc, root, "identity: certificate files and control_plane are exclusive");
  if (!in_trust_domain(c->spiffe_id, c->trust_domain))
    return fail(pc, root, "identity.spiffe_id '%s' is not in trust domain '%s'", c->spiffe_id,
                c->trust_domain);
  if (c->num_inbound_listeners == 0 && c->num_outbound_listeners == 0)
    return fail(pc, root, "no listeners: configure inbound.listeners and/or outbound.listeners");
  return 1;
}

/* Node mode: certificates for the node's workloads come from the control
 * plane (the agent has no files for them), and every workload must belong
 * to our trust domain. */
static int validate_node(parse_ctx *pc, mt_config *c, yaml_node_t *root) {
  if (!c->has_control_plane)
    return fail(pc, root, "node mode needs 'control_plane' (workload certificates come from it)");
  if (c->num_node_workloads == 0 && !c->cp_watch)
    return fail(pc, root,
                "node mode needs 'node.workloads', or control_plane.watch (the control plane "
                "then says which pods run on this node)");
  for (size_t i = 0; i < c->num_node_workloads; i++) {
    const char *id = c->node_workloads[i].spiffe_id;
    if (!in_trust_domain(id, c->trust_domain))
      return fail(pc, root, "node workload '%s' is not in trust domain '%s'", id, c->trust_domain);
  }
  /* The policy travels with the identity's snapshot, so pods sharing an
   * identity (one service account) cannot have different policies. */
  for (size_t i = 0; i < c->num_node_workloads; i++)
    for (size_t j = i + 1; j < c->num_node_workloads; j++)
      if (strcmp(c->node_workloads[i].spiffe_id, c->node_workloads[j].spiffe_id) == 0 &&
          (c->node_workloads[i].policy != NULL || c->node_workloads[j].policy != NULL))
        return fail(pc, root,
                    "node workloads %zu and %zu share the identity '%s' and so must share the "
                    "top-level policy (remove their own 'policy:')",
                    i + 1, j + 1, c->node_workloads[i].spiffe_id);
  for (size_t i = 0; i < c->num_inbound_listeners; i++)
    if (c->inbound_listeners[i].has_fixed_target)
      return fail(pc, root, "node mode: inbound listeners must be redirected (no app_port)");
  return 1;
}

/* The Workload API hands out application SVIDs the control plane issues
 * (never the agent's own key), so it needs the control plane; in a pod it
 * needs to know which local users are the application. */
static int validate_workload_api(parse_ctx *pc, mt_config *c, yaml_node_t *root) {
  if (c->workload_api_socket == NULL) {
    if (c->num_workload_api_uids || c->num_workload_api_gids)
      return fail(pc, root, "workload_api needs 'socket'");
    return 1;
  }
  if (!c->has_control_plane)
    return fail(pc, root,
                "workload_api needs 'control_plane': application SVIDs are issued by the control "
                "plane (the agent's own key is never handed out)");
  if (c->node_mode && (c->num_workload_api_uids || c->num_workload_api_gids))
    return fail(pc, root,
                "workload_api.allowed_uids/allowed_gids are for sidecar mode; in node mode a "
                "caller is identified by the pod its process runs in");
  if (!c->node_mode && c->num_workload_api_uids == 0 && c->num_workload_api_gids == 0)
    return fail(pc, root,
                "workload_api needs 'allowed_uids' or 'allowed_gids': the local users that are "
                "the application (nobody else gets the pod's identity)");
  return 1;
}

/* The Workload API is the whole identity source: the SVID, its key and
 * every trust bundle come from it, so nothing else may claim to be one. */
static int validate_workload_api_source(parse_ctx *pc, mt_config *c, yaml_node_t *root) {
  if (c->node_mode)
    return fail(pc, root,
                "identity.workload_api_socket: node mode cannot take identities from the "
                "Workload API (a SPIRE agent answers with the caller's own SVIDs, so it serves "
                "sidecars only); use control_plane for node mode");
  if (c->has_control_plane)
    return fail(pc, root,
                "identity.workload_api_socket and control_plane are exclusive: take identities "
                "from one source");
  if (c->cert_file != NULL || c->key_file != NULL || c->pkcs12_file != NULL)
    return fail(pc, root,
                "identity.workload_api_socket and certificate files (cert_file, key_file, "
                "pkcs12_file) are exclusive: take identities from one source");
  if (c->num_trust_bundles > 0)
    return fail(pc, root,
                "trust_bundles: with identity.workload_api_socket the trust bundles come from "
                "the Workload API (own and federated trust domains); remove 'trust_bundles'");
  if (c->workload_api_source_retry_initial_ms > c->workload_api_source_retry_max_ms)
    return fail(pc, root,
                "identity.workload_api_retry_initial_ms (%d) is larger than "
                "workload_api_retry_max_ms (%d)",
                c->workload_api_source_retry_initial_ms, c->workload_api_source_retry_max_ms);
  if (c->spiffe_id != NULL && !in_trust_domain(c->spiffe_id, c->trust_domain))
    return fail(pc, root, "identity.spiffe_id '%s' is not in trust domain '%s'", c->spiffe_id,
                c->trust_domain);
  if (c->num_inbound_listeners == 0 && c->num_outbound_listeners == 0)
    return fail(pc, root, "no listeners: configure inbound.listeners and/or outbound.listeners");
  return 1;
}

static int validate(parse_ctx *pc, mt_config *c, yaml_node_t *root) {
  if (c->trust_domain == NULL) return fail(pc, root, "missing required key 'trust_domain'");
  if (!validate_workload_api(pc, c, root)) return 0;
  if (c->workload_api_source_socket != NULL) return validate_workload_api_source(pc, c, root);
  if (c->interception.node_pod_cidrs_from_cp && (!c->has_control_plane || c->cp_token_file == NULL))
    return fail(pc, root,
                "interception.node_pod_cidrs: " NODE_POD_CIDRS_FROM_CP
                " needs control_plane with a token_file (the node agent's token names its node)");
  if (c->node_mode && !validate_node(pc, c, root)) return 0;
  if (c->has_control_plane) return validate_control_plane(pc, c, root);
  int has_pair = c->cert_file != NULL || c->key_file != NULL;
  if (has_pair && c->pkcs12_file != NULL)
    return fail(pc, root, "identity: use either cert_file + key_file or pkcs12_file, not both");
  if (!has_pair && c->pkcs12_file == NULL)
    return fail(pc, root, "identity: set cert_file + key_file, or pkcs12_file");
  if (has_pair && (c->cert_file == NULL || c->key_file == NULL))
    return fail(pc, root, "identity: cert_file and key_file go together");
  if (c->num_trust_bundles == 0)
    return fail(pc, root, "missing required key 'trust_bundles' (at least one)");
  if (c->num_inbound_listeners == 0 && c->num_outbound_listeners == 0)
    return fail(pc, root, "no listeners: configure inbound.listeners and/or outbound.listeners");
  int own_bundle = 0;
  for (size_t i = 0; i < c->num_trust_bundles; i++)
    own_bundle |= strcmp(c->trust_bundles[i].trust_domain, c->trust_domain) == 0;
  if (!own_bundle)
    return fail(pc, root, "no trust bundle for the agent's own trust domain '%s'", c->trust_domain);
  return 1;
}

static void set_defaults(mt_config *c) {
  c->max_connections = DEFAULT_MAX_CONNECTIONS;
  c->handshakes_per_source = DEFAULT_HANDSHAKES_PER_SOURCE;
  c->log_level = MT_LOG_INFO;
  c->reload_interval_ms = DEFAULT_RELOAD_INTERVAL_MS;
  c->tls_min_version = TLS1_3_VERSION;
  c->tls_session_resumption = 1;
  c->tls_session_lifetime_s = DEFAULT_SESSION_LIFETIME_S;
  c->handshake_timeout_ms = DEFAULT_HANDSHAKE_TIMEOUT_MS;
  c->connect_timeout_ms = DEFAULT_CONNECT_TIMEOUT_MS;
  c->idle_timeout_ms = DEFAULT_IDLE_TIMEOUT_MS;
  c->drain_timeout_ms = DEFAULT_DRAIN_TIMEOUT_MS;
  c->unknown_destination = MT_UNKNOWN_DEST_TRUST_DOMAIN;
  c->cp_cert_ttl_s = DEFAULT_CERT_TTL_S;
  c->cp_request_timeout_ms = DEFAULT_CP_REQUEST_TIMEOUT_MS;
  c->cp_retry_initial_ms = DEFAULT_CP_RETRY_INITIAL_MS;
  c->cp_retry_max_ms = DEFAULT_CP_RETRY_MAX_MS;
  c->workload_api_source_retry_initial_ms = DEFAULT_WORKLOAD_API_SOURCE_RETRY_INITIAL_MS;
  c->workload_api_source_retry_max_ms = DEFAULT_WORKLOAD_API_SOURCE_RETRY_MAX_MS;
  c->cp_keepalive_ms = DEFAULT_CP_KEEPALIVE_MS;
  c->cp_watch = 1;
  c->admin_enabled = 1;
  c->seccomp = MT_SECCOMP_ON;
  mt_sockaddr_parse("127.0.0.1", &c->admin_address, 0);
  ((struct sockaddr_in *)&c->admin_address.addr)->sin_port = htons(DEFAULT_ADMIN_PORT);
  mt_sockaddr_parse("127.0.0.1", &c->inbound_app_address, 0);
  c->interception.include_inbound_ports.all = 1;
  c->interception.include_outbound_cidrs.all = 1;
  mt_sockaddr_parse(DEFAULT_APP_SOURCE_ADDRESS, &c->interception.app_source_address, 0);
}

static int load_document(parse_ctx *pc, FILE *f, yaml_document_t *doc) {
  yaml_parser_t parser;
  if (!yaml_parser_initialize(&parser)) return fail(pc, NULL, "out of memory");
  yaml_parser_set_input_file(&parser, f);
  int ok = yaml_parser_load(&parser, doc);
  if (!ok) {
    snprintf(pc->err, pc->err_len, "%s:%lu: YAML syntax error: %s", pc->path,
             (unsigned long)parser.problem_mark.line + 1,
             parser.problem ? parser.problem : "unknown");
  }
  yaml_parser_delete(&parser);
  return ok;
}

mt_config *mt_config_load(const char *path, char *err, size_t err_len) {
  parse_ctx pc = {path, NULL, err, err_len};
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    snprintf(err, err_len, "%s:1: cannot open: %s", path, strerror(errno));
    return NULL;
  }
  mt_config *c = calloc(1, sizeof(*c));
  yaml_document_t doc;
  int ok = c != NULL && load_document(&pc, f, &doc);
  fclose(f);
  if (!ok) {
    if (c == NULL) snprintf(err, err_len, "%s:1: out of memory", path);
    free(c);
    return NULL;
  }
  pc.doc = &doc;
  c->refs_ = 1;
  set_defaults(c);
  c->path = strdup(path);
  c->policy = mt_policy_new(MT_ACTION_ALLOW);
  yaml_node_t *root = yaml_document_get_root_node(&doc);
  if (root == NULL)
    ok = fail(&pc, NULL, "empty configuration");
  else
    ok = c->path != NULL && c->policy != NULL &&
         each_pair(&pc, root, "the configuration", on_top_key, c) && validate(&pc, c, root);
  yaml_document_delete(&doc);
  if (!ok) {
    mt_config_free(c);
    return NULL;
  }
  resolve_interception(c);
  if (c->access_log == NULL) c->access_log = strdup("-");
  c->mesh = mt_mesh_new("static", c->policy, c->destinations, c->num_destinations);
  int meshes_ok = c->mesh != NULL;
  for (size_t i = 0; meshes_ok && i < c->num_node_workloads; i++) {
    mt_node_workload_config *w = &c->node_workloads[i];
    w->mesh = w->policy ? mt_mesh_with_policy(c->mesh, w->policy) : mt_mesh_ref(c->mesh);
    w->policy = NULL; /* owned by the mesh now (freed by mt_mesh_with_policy on failure) */
    meshes_ok = w->mesh != NULL;
  }
  if (c->access_log == NULL || !meshes_ok) {
    snprintf(err, err_len, "%s:1: out of memory", path);
    c->policy = NULL; /* mt_mesh_new took it */
    mt_config_free(c);
    return NULL;
  }
  return c;
}

mt_config *mt_config_ref(mt_config *c) {
  __atomic_fetch_add(&c->refs_, 1, __ATOMIC_RELAXED);
  return c;
}

void mt_config_free(mt_config *c) {
  if (c == NULL) return;
  if (__atomic_fetch_sub(&c->refs_, 1, __ATOMIC_ACQ_REL) != 1) return;
  free(c->path);
  free(c->trust_domain);
  free(c->access_log);
  free(c->cert_file);
  free(c->key_file);
  free(c->pkcs12_file);
  free(c->pkcs12_password_file);
  free(c->spiffe_id);
  free(c->workload_api_source_socket);
  free(c->cp_address);
  free(c->cp_root_file);
  free(c->cp_spiffe_id);
  free(c->cp_token_file);
  free(c->cp_cluster_id);
  free(c->cp_node_id);
  for (size_t i = 0; i < c->num_trust_bundles; i++) {
    free(c->trust_bundles[i].trust_domain);
    free(c->trust_bundles[i].file);
  }
  free(c->trust_bundles);
  free(c->inbound_listeners);
  free(c->permissive_ports);
  free(c->outbound_listeners);
  for (size_t i = 0; i < c->num_destinations; i++) {
    for (size_t j = 0; j < c->destinations[i].num_spiffe_ids; j++)
      free(c->destinations[i].spiffe_ids[j]);
    free(c->destinations[i].spiffe_ids);
  }
  free(c->destinations);
  free(c->interception.include_inbound_ports.ports);
  free(c->interception.exclude_inbound_ports.ports);
  free(c->interception.exclude_outbound_ports.ports);
  free(c->interception.include_outbound_cidrs.cidrs);
  free(c->interception.exclude_outbound_cidrs.cidrs);
  free(c->interception.node_pod_cidrs.cidrs);
  if (c->mesh != NULL)
    mt_mesh_unref(c->mesh);
  else
    mt_policy_free(c->policy);
  for (size_t i = 0; i < c->num_node_workloads; i++) {
    free(c->node_workloads[i].spiffe_id);
    mt_policy_free(c->node_workloads[i].policy);
    mt_mesh_unref(c->node_workloads[i].mesh);
  }
  free(c->node_workloads);
  free(c->node_name);
  free(c->workload_api_socket);
  free(c->workload_api_uids);
  free(c->workload_api_gids);
  free(c);
}

const char *mt_unknown_destination_str(mt_unknown_dest_mode mode) {
  switch (mode) {
    case MT_UNKNOWN_DEST_TRUST_DOMAIN: return "trust_domain";
    case MT_UNKNOWN_DEST_DENY: return "deny";
    case MT_UNKNOWN_DEST_PASSTHROUGH: return "passthrough";
  }
  return "unknown";
}

/* ---- socket addresses -------------------------------------------------- */

/* Digits only, 1..65535: strtol alone would take " 80", "+80" and "-0". */
/* |allow_any|: a lone "0" (the kernel picks the port) is accepted too. */
static int parse_port(const char *s, int allow_any, uint16_t *out) {
  unsigned long v = 0;
  size_t n = 0;
  for (; s[n] != '\0'; n++) {
    if (s[n] < '0' || s[n] > '9' || n >= 5) return 0;
    v = v * 10 + (unsigned long)(s[n] - '0');
  }
  if (n == 0 || v > 65535 || (v == 0 && !(allow_any && n == 1))) return 0;
  *out = (uint16_t)v;
  return 1;
}

static int parse_sockaddr(const char *text, mt_sockaddr *out, int require_port,
                          int allow_any_port) {
  char host[INET6_ADDRSTRLEN + 1];
  const char *port = NULL;
  size_t len = strlen(text);
  memset(out, 0, sizeof(*out));
  if (text[0] == '[') {
    const char *close = strchr(text, ']');
    if (close == NULL || (size_t)(close - text - 1) >= sizeof(host)) return 0;
    memcpy(host, text + 1, (size_t)(close - text - 1));
    host[close - text - 1] = '\0';
    if (close[1] == ':')
      port = close + 2;
    else if (close[1] != '\0')
      return 0;
  } else {
    const char *colon = strrchr(text, ':');
    if (colon != NULL && strchr(text, ':') != colon) colon = NULL; /* bare IPv6 */
    size_t hlen = colon ? (size_t)(colon - text) : len;
    if (hlen >= sizeof(host)) return 0;
    memcpy(host, text, hlen);
    host[hlen] = '\0';
    if (colon) port = colon + 1;
  }
  if (require_port && port == NULL) return 0;
  uint16_t p = 0;
  if (port != NULL && !parse_port(port, allow_any_port, &p)) return 0;
  struct sockaddr_in *v4 = (struct sockaddr_in *)&out->addr;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&out->addr;
  if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(p);
    out->addr_len = sizeof(*v4);
    return 1;
  }
  if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(p);
    out->addr_len = sizeof(*v6);
    return 1;
  }
  return 0;
}

int mt_sockaddr_parse(const char *text, mt_sockaddr *out, int require_port) {
  return parse_sockaddr(text, out, require_port, 0);
}

void mt_sockaddr_format(const struct sockaddr *sa, char *buf, size_t len) {
  char host[INET6_ADDRSTRLEN];
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *v4 = (const struct sockaddr_in *)sa;
    inet_ntop(AF_INET, &v4->sin_addr, host, sizeof(host));
    snprintf(buf, len, "%s:%u", host, ntohs(v4->sin_port));
  } else if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)sa;
    inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof(host));
    snprintf(buf, len, "[%s]:%u", host, ntohs(v6->sin6_port));
  } else {
    snprintf(buf, len, "-");
  }
}

uint16_t mt_sockaddr_port(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET) return ntohs(((const struct sockaddr_in *)sa)->sin_port);
  if (sa->sa_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
  return 0;
}

int mt_sockaddr_same_host(const struct sockaddr *a, const struct sockaddr *b) {
  if (a->sa_family != b->sa_family) return 0;
  if (a->sa_family == AF_INET) {
    const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
    return x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  if (a->sa_family == AF_INET6) {
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
  }
  return 0;
}

int mt_sockaddr_equal(const struct sockaddr *a, const struct sockaddr *b) {
  return mt_sockaddr_same_host(a, b) && mt_sockaddr_port(a) == mt_sockaddr_port(b);
}

/* ---- reload --------------------------------------------------------------- */

static int str_differs(const char *a, const char *b) {
  if (a == NULL || b == NULL) return a != b;
  return strcmp(a, b) != 0;
}

static int addr_differs(const mt_sockaddr *a, const mt_sockaddr *b) {
  if (a->addr.ss_family == 0 && b->addr.ss_family == 0) return 0; /* both unset */
  return !mt_sockaddr_equal((const struct sockaddr *)&a->addr, (const struct sockaddr *)&b->addr);
}

static int listeners_differ(const mt_listener_config *a, size_t na, const mt_listener_config *b,
                            size_t nb) {
  if (na != nb) return 1;
  for (size_t i = 0; i < na; i++)
    if (addr_differs(&a[i].listen, &b[i].listen) ||
        a[i].has_fixed_target != b[i].has_fixed_target || a[i].app_port != b[i].app_port ||
        addr_differs(&a[i].destination, &b[i].destination))
      return 1;
  return 0;
}

static int bundles_differ(const mt_config *a, const mt_config *b) {
  if (a->num_trust_bundles != b->num_trust_bundles) return 1;
  for (size_t i = 0; i < a->num_trust_bundles; i++)
    if (str_differs(a->trust_bundles[i].trust_domain, b->trust_bundles[i].trust_domain) ||
        str_differs(a->trust_bundles[i].file, b->trust_bundles[i].file))
      return 1;
  return 0;
}

int mt_config_restart_changes(const mt_config *o, const mt_config *n, char *out, size_t out_len) {
  struct {
    const char *name;
    int differs;
  } checks[] = {
      {"trust_domain", str_differs(o->trust_domain, n->trust_domain)},
      /* node.workloads may change: pods come and go (cert_manager reconciles). */
      {"node", o->node_mode != n->node_mode || str_differs(o->node_name, n->node_name)},
      {"workers", o->workers != n->workers},
      {"max_connections", o->max_connections != n->max_connections},
      {"access_log", str_differs(o->access_log, n->access_log)},
      {"identity.spiffe_id", str_differs(o->spiffe_id, n->spiffe_id)},
      {"identity.workload_api_socket",
       str_differs(o->workload_api_source_socket, n->workload_api_source_socket) ||
           o->workload_api_source_retry_initial_ms != n->workload_api_source_retry_initial_ms ||
           o->workload_api_source_retry_max_ms != n->workload_api_source_retry_max_ms},
      {"control_plane",
       o->has_control_plane != n->has_control_plane || str_differs(o->cp_address, n->cp_address) ||
           str_differs(o->cp_root_file, n->cp_root_file) ||
           str_differs(o->cp_spiffe_id, n->cp_spiffe_id) ||
           str_differs(o->cp_token_file, n->cp_token_file) ||
           str_differs(o->cp_cluster_id, n->cp_cluster_id) ||
           str_differs(o->cp_node_id, n->cp_node_id) || o->cp_cert_ttl_s != n->cp_cert_ttl_s ||
           o->cp_watch != n->cp_watch || o->cp_on_demand != n->cp_on_demand},
      /* With a control plane the bundles are loaded once, by the cert manager. */
      {"trust_bundles", o->has_control_plane && bundles_differ(o, n)},
      {"inbound.listeners", listeners_differ(o->inbound_listeners, o->num_inbound_listeners,
                                             n->inbound_listeners, n->num_inbound_listeners)},
      {"outbound.listeners", listeners_differ(o->outbound_listeners, o->num_outbound_listeners,
                                              n->outbound_listeners, n->num_outbound_listeners)},
      /* The filter is installed once, at start, and cannot be lifted. */
      {"security.seccomp", o->seccomp != n->seccomp},
      {"workload_api",
       str_differs(o->workload_api_socket, n->workload_api_socket) ||
           o->num_workload_api_uids != n->num_workload_api_uids ||
           o->num_workload_api_gids != n->num_workload_api_gids ||
           (o->num_workload_api_uids && memcmp(o->workload_api_uids, n->workload_api_uids,
                                               o->num_workload_api_uids * sizeof(unsigned)) != 0) ||
           (o->num_workload_api_gids && memcmp(o->workload_api_gids, n->workload_api_gids,
                                               o->num_workload_api_gids * sizeof(unsigned)) != 0)},
      {"admin", o->admin_enabled != n->admin_enabled ||
                    addr_differs(&o->admin_address, &n->admin_address) ||
                    o->has_admin_telemetry_address != n->has_admin_telemetry_address ||
                    (o->has_admin_telemetry_address &&
                     addr_differs(&o->admin_telemetry_address, &n->admin_telemetry_address))},
  };
  int count = 0;
  size_t pos = 0;
  if (out_len > 0) out[0] = '\0';
  for (size_t i = 0; i < sizeof(checks) / sizeof(checks[0]); i++) {
    if (!checks[i].differs) continue;
    int w = snprintf(out + pos, out_len > pos ? out_len - pos : 0, "%s%s", count ? ", " : "",
                     checks[i].name);
    if (w > 0 && pos + (size_t)w < out_len) pos += (size_t)w;
    count++;
  }
  return count;
}
