/* yaml_doc.c: libyaml document helpers with file:line errors. */
#include "controlplane/yaml_doc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/svid.h"

enum {
  FAIL_MESSAGE_MAX = 512,
  PORT_MAX = 65535,
  PORT_DIGITS_MAX = 5,
};

int mt_yaml_fail(mt_yaml_ctx *ctx, const yaml_node_t *node, const char *fmt, ...) {
  char msg[FAIL_MESSAGE_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  snprintf(ctx->err, ctx->err_len, "%s:%lu: %s", ctx->path, mt_yaml_line(node), msg);
  return 0;
}

unsigned long mt_yaml_line(const yaml_node_t *node) {
  return node != NULL ? (unsigned long)node->start_mark.line + 1 : 1;
}

const char *mt_yaml_scalar(const yaml_node_t *node) {
  return node != NULL && node->type == YAML_SCALAR_NODE ? (const char *)node->data.scalar.value
                                                        : NULL;
}

int mt_yaml_want_scalar(mt_yaml_ctx *ctx, const yaml_node_t *node, const char *key,
                        const char **out) {
  *out = mt_yaml_scalar(node);
  if (*out == NULL) return mt_yaml_fail(ctx, node, "'%s' must be a scalar value", key);
  return 1;
}

int mt_yaml_want_string(mt_yaml_ctx *ctx, const yaml_node_t *node, const char *key, char **out) {
  const char *s;
  if (!mt_yaml_want_scalar(ctx, node, key, &s)) return 0;
  if (*s == '\0') return mt_yaml_fail(ctx, node, "'%s' must not be empty", key);
  free(*out);
  *out = strdup(s);
  return *out != NULL || mt_yaml_fail(ctx, node, "out of memory");
}

int mt_yaml_want_int64(mt_yaml_ctx *ctx, const yaml_node_t *node, const char *key, int64_t min,
                       int64_t max, int64_t *out) {
  const char *s;
  if (!mt_yaml_want_scalar(ctx, node, key, &s)) return 0;
  char *end = NULL;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  int starts_ok = s[0] == '-' || (s[0] >= '0' && s[0] <= '9');
  if (errno != 0 || end == s || *end != '\0' || !starts_ok)
    return mt_yaml_fail(ctx, node, "'%s' must be an integer, got '%s'", key, s);
  if (v < min || v > max)
    return mt_yaml_fail(ctx, node, "'%s' must be between %lld and %lld, got %lld", key,
                        (long long)min, (long long)max, v);
  *out = (int64_t)v;
  return 1;
}

int mt_yaml_want_bool(mt_yaml_ctx *ctx, const yaml_node_t *node, const char *key, int *out) {
  const char *s;
  if (!mt_yaml_want_scalar(ctx, node, key, &s)) return 0;
  if (strcmp(s, "true") == 0)
    *out = 1;
  else if (strcmp(s, "false") == 0)
    *out = 0;
  else
    return mt_yaml_fail(ctx, node, "'%s' must be true or false, got '%s'", key, s);
  return 1;
}

int mt_yaml_want_workload_id(mt_yaml_ctx *ctx, const yaml_node_t *node, const char *key,
                             const char *trust_domain, char **out) {
  if (!mt_yaml_want_string(ctx, node, key, out)) return 0;
  mt_spiffe_id_view id;
  mt_spiffe_err rc = mt_spiffe_id_parse(*out, strlen(*out), &id);
  if (rc != MT_SPIFFE_OK)
    return mt_yaml_fail(ctx, node, "invalid SPIFFE ID '%s': %s", *out, mt_spiffe_err_str(rc));
  if (trust_domain != NULL && (id.trust_domain_len != strlen(trust_domain) ||
                               memcmp(id.trust_domain, trust_domain, id.trust_domain_len) != 0))
    return mt_yaml_fail(ctx, node, "SPIFFE ID '%s' is not in the trust domain '%s'", *out,
                        trust_domain);
  if (id.path_len == 0)
    return mt_yaml_fail(ctx, node, "SPIFFE ID '%s' has no path (a workload identity needs one)",
                        *out);
  return 1;
}

/* YAML allows a key twice in one mapping and libyaml keeps both; refused,
 * since which one "wins" would be an accident of parsing order. */
static int is_duplicate_key(mt_yaml_ctx *ctx, yaml_node_t *map, yaml_node_pair_t *upto,
                            const char *key) {
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < upto; p++) {
    const char *earlier = mt_yaml_scalar(yaml_document_get_node(ctx->doc, p->key));
    if (earlier != NULL && strcmp(earlier, key) == 0) return 1;
  }
  return 0;
}

int mt_yaml_each_pair(mt_yaml_ctx *ctx, yaml_node_t *map, const char *what, mt_yaml_pair_fn on_pair,
                      void *target) {
  if (map == NULL || map->type != YAML_MAPPING_NODE)
    return mt_yaml_fail(ctx, map, "%s must be a mapping", what);
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
    yaml_node_t *k = yaml_document_get_node(ctx->doc, p->key);
    yaml_node_t *v = yaml_document_get_node(ctx->doc, p->value);
    const char *key = mt_yaml_scalar(k);
    if (key == NULL) return mt_yaml_fail(ctx, k, "%s keys must be scalars", what);
    if (is_duplicate_key(ctx, map, p, key)) return mt_yaml_fail(ctx, k, "duplicate key '%s'", key);
    if (!on_pair(ctx, key, k, v, target)) return 0;
  }
  return 1;
}

int mt_yaml_each_item(mt_yaml_ctx *ctx, yaml_node_t *seq, const char *what, mt_yaml_item_fn on_item,
                      void *target) {
  if (seq == NULL || seq->type != YAML_SEQUENCE_NODE)
    return mt_yaml_fail(ctx, seq, "%s must be a list", what);
  size_t i = 0;
  for (yaml_node_item_t *it = seq->data.sequence.items.start; it < seq->data.sequence.items.top;
       it++, i++) {
    if (!on_item(ctx, yaml_document_get_node(ctx->doc, *it), i, target)) return 0;
  }
  return 1;
}

size_t mt_yaml_seq_len(const yaml_node_t *seq) {
  return seq != NULL && seq->type == YAML_SEQUENCE_NODE
             ? (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start)
             : 0;
}

int mt_yaml_load_file(mt_yaml_ctx *ctx, yaml_document_t *doc, yaml_node_t **root) {
  FILE *f = fopen(ctx->path, "rb");
  if (f == NULL) return mt_yaml_fail(ctx, NULL, "cannot open: %s", strerror(errno));
  yaml_parser_t parser;
  if (!yaml_parser_initialize(&parser)) {
    fclose(f);
    return mt_yaml_fail(ctx, NULL, "out of memory");
  }
  yaml_parser_set_input_file(&parser, f);
  int ok = yaml_parser_load(&parser, doc);
  if (!ok) {
    snprintf(ctx->err, ctx->err_len, "%s:%lu: YAML syntax error: %s", ctx->path,
             (unsigned long)parser.problem_mark.line + 1,
             parser.problem ? parser.problem : "unknown");
  }
  yaml_parser_delete(&parser);
  fclose(f);
  if (!ok) return 0;
  *root = yaml_document_get_root_node(doc);
  if (*root == NULL) {
    yaml_document_delete(doc);
    return mt_yaml_fail(ctx, NULL, "the file is empty");
  }
  return 1;
}

char *mt_yaml_resolve_path(const char *base_file, const char *path) {
  const char *slash = strrchr(base_file, '/');
  if (path[0] == '/' || slash == NULL) return strdup(path);
  size_t dir_len = (size_t)(slash - base_file) + 1;
  size_t len = strlen(path);
  char *out = malloc(dir_len + len + 1);
  if (out == NULL) return NULL;
  memcpy(out, base_file, dir_len);
  memcpy(out + dir_len, path, len + 1);
  return out;
}

/* Digits only: strtol alone would take " 80", "+80" and "-0". */
static int parse_port(const char *s, int allow_zero) {
  unsigned long v = 0;
  size_t n = 0;
  for (; s[n] != '\0'; n++) {
    if (s[n] < '0' || s[n] > '9' || n >= PORT_DIGITS_MAX) return 0;
    v = v * 10 + (unsigned long)(s[n] - '0');
  }
  return n > 0 && v <= PORT_MAX && (v > 0 || allow_zero);
}

int mt_yaml_address_valid(const char *text, int allow_port_zero) {
  char host[INET6_ADDRSTRLEN + 1];
  unsigned char addr[sizeof(struct in6_addr)];
  const char *port;
  if (text[0] == '[') {
    const char *close = strchr(text, ']');
    if (close == NULL || close[1] != ':' || (size_t)(close - text - 1) >= sizeof(host)) return 0;
    memcpy(host, text + 1, (size_t)(close - text - 1));
    host[close - text - 1] = '\0';
    port = close + 2;
    return inet_pton(AF_INET6, host, addr) == 1 && parse_port(port, allow_port_zero);
  }
  const char *colon = strchr(text, ':');
  if (colon == NULL || (size_t)(colon - text) >= sizeof(host)) return 0;
  memcpy(host, text, (size_t)(colon - text));
  host[colon - text] = '\0';
  return inet_pton(AF_INET, host, addr) == 1 && parse_port(colon + 1, allow_port_zero);
}
