/* yaml_doc: the small toolkit mtls-ca's two YAML files (the config and the
 * mesh file) are parsed with. libyaml's document API keeps every node's
 * source line, so each helper reports "file:line: what is wrong"; mappings
 * refuse duplicate keys. Nothing here logs or keeps state between calls.
 *
 * Same approach as the agent's config.c (agent/config.c). */
#ifndef MT_CP_YAML_DOC_H
#define MT_CP_YAML_DOC_H

#include <stddef.h>
#include <stdint.h>
#include <yaml.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One file being parsed. |err| receives the first error. */
typedef struct {
  const char *path;
  yaml_document_t *doc;
  char *err;
  size_t err_len;
} mt_yaml_ctx;

/* Formats "path:line: message" into the context's error buffer and returns 0,
 * so callers can `return mt_yaml_fail(...)`. |node| NULL means line 1. */
int mt_yaml_fail(mt_yaml_ctx *ctx, const yaml_node_t *node, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* 1-based source line of |node| (1 for NULL). */
unsigned long mt_yaml_line(const yaml_node_t *node);

/* The scalar's text, or NULL when |node| is not a scalar. */
const char *mt_yaml_scalar(const yaml_node_t *node);

int mt_yaml_want_scalar(mt_yaml_ctx *ctx, const yaml_node_t *node, const char *key,
                        const char **out);
/* A non-empty scalar, copied into |*out| (any previous value freed). */
int mt_yaml_want_string(mt_yaml_ctx *ctx, const yaml_node_t *node, const char *key, char **out);
/* A decimal integer within [min, max]. */
int mt_yaml_want_int64(mt_yaml_ctx *ctx, const yaml_node_t *node, const char *key, int64_t min,
                       int64_t max, int64_t *out);
/* "true" or "false". */
int mt_yaml_want_bool(mt_yaml_ctx *ctx, const yaml_node_t *node, const char *key, int *out);
/* A workload identity: a valid SPIFFE ID with a path, in |trust_domain|
 * (not checked when NULL), copied into |*out| (any previous value freed; on
 * a refusal |*out| may still hold the copy, for the caller to free). */
int mt_yaml_want_workload_id(mt_yaml_ctx *ctx, const yaml_node_t *node, const char *key,
                             const char *trust_domain, char **out);

/* Calls |on_pair| for each key/value of the mapping |map| ("what" names it
 * in errors). Refuses non-scalar and duplicate keys. Stops at the first 0. */
typedef int (*mt_yaml_pair_fn)(mt_yaml_ctx *ctx, const char *key, yaml_node_t *key_node,
                               yaml_node_t *value, void *target);
int mt_yaml_each_pair(mt_yaml_ctx *ctx, yaml_node_t *map, const char *what, mt_yaml_pair_fn on_pair,
                      void *target);

/* Calls |on_item| for each item of the sequence |seq|. */
typedef int (*mt_yaml_item_fn)(mt_yaml_ctx *ctx, yaml_node_t *item, size_t index, void *target);
int mt_yaml_each_item(mt_yaml_ctx *ctx, yaml_node_t *seq, const char *what, mt_yaml_item_fn on_item,
                      void *target);

/* Items in |seq| (0 when it is not a sequence). */
size_t mt_yaml_seq_len(const yaml_node_t *seq);

/* Reads |ctx->path| into |doc| (the first YAML document). On failure returns
 * 0 with "path:line: ..." in the context (unreadable file, syntax error,
 * empty document); |doc| then needs no yaml_document_delete. On success
 * returns the root node through |*root|. */
int mt_yaml_load_file(mt_yaml_ctx *ctx, yaml_document_t *doc, yaml_node_t **root);

/* |path| as named in |base_file|: absolute paths unchanged, relative ones
 * taken from the directory holding |base_file|. malloc'd; NULL when out of
 * memory. */
char *mt_yaml_resolve_path(const char *base_file, const char *path);

/* 1 when |text| is "ipv4:port" or "[ipv6]:port" with a decimal port in
 * 1..65535 (or 0..65535 when |allow_port_zero|); no host names. */
int mt_yaml_address_valid(const char *text, int allow_port_zero);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_YAML_DOC_H */
