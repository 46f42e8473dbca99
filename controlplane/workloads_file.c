/* workloads_file.c: workloads YAML -> a sorted, immutable registry. */
#include "controlplane/workloads_file.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controlplane/yaml_doc.h"

enum { NODE_LABEL_MAX_LEN = 63 };

typedef struct {
  char *node;
  char *spiffe_id;
  char *address; /* NULL when the file gives none */
  unsigned long line;
} workload_entry;

/* Entries sorted by (node, spiffe_id, address), so a lookup is a binary
 * search and duplicates sit next to each other. */
struct mt_workloads {
  workload_entry *entries;
  size_t count, capacity;
  size_t nodes;
};

/* Parsing state: the registry being built and the CA's trust domain. */
typedef struct {
  mt_workloads *workloads;
  const char *trust_domain;
  int have_workloads_key;
} workloads_draft;

void mt_workloads_free(mt_workloads *w) {
  if (w == NULL) return;
  for (size_t i = 0; i < w->count; i++) {
    free(w->entries[i].node);
    free(w->entries[i].spiffe_id);
    free(w->entries[i].address);
  }
  free(w->entries);
  free(w);
}

size_t mt_workloads_count(const mt_workloads *w) { return w->count; }

size_t mt_workloads_node_count(const mt_workloads *w) { return w->nodes; }

/* ---- validation -------------------------------------------------------- */

static int is_lower_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

/* One DNS label (RFC 1123) of |len| bytes. */
static int node_label_valid(const char *label, size_t len) {
  if (len == 0 || len > NODE_LABEL_MAX_LEN) return 0;
  if (!is_lower_alnum(label[0]) || !is_lower_alnum(label[len - 1])) return 0;
  for (size_t i = 1; i + 1 < len; i++)
    if (!is_lower_alnum(label[i]) && label[i] != '-') return 0;
  return 1;
}

int mt_node_name_valid(const char *name) {
  if (name == NULL) return 0;
  size_t len = strlen(name);
  if (len == 0 || len > MT_NODE_NAME_MAX_LEN) return 0;
  const char *label = name;
  for (;;) {
    const char *dot = strchr(label, '.');
    size_t label_len = dot != NULL ? (size_t)(dot - label) : strlen(label);
    if (!node_label_valid(label, label_len)) return 0;
    if (dot == NULL) return 1;
    label = dot + 1;
  }
}

static int want_node(mt_yaml_ctx *ctx, const yaml_node_t *v, workload_entry *e) {
  if (!mt_yaml_want_string(ctx, v, "node", &e->node)) return 0;
  if (!mt_node_name_valid(e->node))
    return mt_yaml_fail(ctx, v,
                        "'node' must be a Kubernetes node name (lowercase DNS subdomain, at most "
                        "%d bytes), got '%s'",
                        MT_NODE_NAME_MAX_LEN, e->node);
  return 1;
}

static int want_address(mt_yaml_ctx *ctx, const yaml_node_t *v, workload_entry *e) {
  unsigned char addr[sizeof(struct in6_addr)];
  if (!mt_yaml_want_string(ctx, v, "address", &e->address)) return 0;
  if (inet_pton(AF_INET, e->address, addr) != 1 && inet_pton(AF_INET6, e->address, addr) != 1)
    return mt_yaml_fail(ctx, v, "'address' must be an IPv4 or IPv6 address, got '%s'", e->address);
  return 1;
}

/* ---- parsing ----------------------------------------------------------- */

typedef struct {
  workloads_draft *draft;
  workload_entry *entry;
} entry_target;

static int on_workload_key(mt_yaml_ctx *ctx, const char *key, yaml_node_t *k, yaml_node_t *v,
                           void *target) {
  entry_target *t = target;
  if (strcmp(key, "node") == 0) return want_node(ctx, v, t->entry);
  if (strcmp(key, "spiffe_id") == 0)
    return mt_yaml_want_workload_id(ctx, v, key, t->draft->trust_domain, &t->entry->spiffe_id);
  if (strcmp(key, "address") == 0) return want_address(ctx, v, t->entry);
  return mt_yaml_fail(ctx, k, "unknown key 'workloads[].%s'", key);
}

/* A zeroed entry at the end of the array; NULL when out of memory. */
static workload_entry *append_entry(mt_workloads *w) {
  if (w->count == w->capacity) {
    size_t capacity = w->capacity ? 2 * w->capacity : 16;
    workload_entry *grown = realloc(w->entries, capacity * sizeof(*grown));
    if (grown == NULL) return NULL;
    w->entries = grown;
    w->capacity = capacity;
  }
  workload_entry *e = &w->entries[w->count++];
  memset(e, 0, sizeof(*e));
  return e;
}

static int on_workload(mt_yaml_ctx *ctx, yaml_node_t *item, size_t i, void *target) {
  workloads_draft *d = target;
  if (i >= MT_WORKLOADS_MAX)
    return mt_yaml_fail(ctx, item, "at most %d workloads per file", MT_WORKLOADS_MAX);
  workload_entry *e = append_entry(d->workloads);
  if (e == NULL) return mt_yaml_fail(ctx, item, "out of memory");
  e->line = mt_yaml_line(item);
  entry_target t = {d, e};
  if (!mt_yaml_each_pair(ctx, item, "a workload", on_workload_key, &t)) return 0;
  if (e->node == NULL) return mt_yaml_fail(ctx, item, "workload needs 'node'");
  if (e->spiffe_id == NULL) return mt_yaml_fail(ctx, item, "workload needs 'spiffe_id'");
  return 1;
}

static int on_top_key(mt_yaml_ctx *ctx, const char *key, yaml_node_t *k, yaml_node_t *v,
                      void *target) {
  workloads_draft *d = target;
  if (strcmp(key, "workloads") == 0) {
    d->have_workloads_key = 1;
    return mt_yaml_each_item(ctx, v, "workloads", on_workload, d);
  }
  return mt_yaml_fail(ctx, k, "unknown key '%s'", key);
}

/* ---- sorting, duplicates, lookup --------------------------------------- */

static int compare_optional(const char *a, const char *b) {
  if (a == NULL || b == NULL) return (a != NULL) - (b != NULL);
  return strcmp(a, b);
}

/* Order of the array: node, then identity, then address; ties (true
 * duplicates) by line, so the earlier line comes first. */
static int compare_entries(const void *pa, const void *pb) {
  const workload_entry *a = pa, *b = pb;
  int c = strcmp(a->node, b->node);
  if (c == 0) c = strcmp(a->spiffe_id, b->spiffe_id);
  if (c == 0) c = compare_optional(a->address, b->address);
  if (c == 0) c = (a->line > b->line) - (a->line < b->line);
  return c;
}

static int same_workload(const workload_entry *a, const workload_entry *b) {
  return strcmp(a->node, b->node) == 0 && strcmp(a->spiffe_id, b->spiffe_id) == 0 &&
         compare_optional(a->address, b->address) == 0;
}

/* Sorts, refuses an entry listed twice (reported at the repeat that comes
 * first in the file), and counts the nodes. */
static int settle(mt_yaml_ctx *ctx, mt_workloads *w) {
  if (w->count > 1) qsort(w->entries, w->count, sizeof(*w->entries), compare_entries);
  const workload_entry *repeat = NULL, *original = NULL;
  for (size_t i = 1; i < w->count; i++) {
    const workload_entry *prev = &w->entries[i - 1], *cur = &w->entries[i];
    if (same_workload(prev, cur) && (repeat == NULL || cur->line < repeat->line)) {
      repeat = cur;
      original = prev;
    }
  }
  if (repeat != NULL) {
    snprintf(ctx->err, ctx->err_len,
             "%s:%lu: workload '%s' on node '%s' is listed twice (first at line %lu)", ctx->path,
             repeat->line, repeat->spiffe_id, repeat->node, original->line);
    return 0;
  }
  for (size_t i = 0; i < w->count; i++)
    if (i == 0 || strcmp(w->entries[i - 1].node, w->entries[i].node) != 0) w->nodes++;
  return 1;
}

mt_workloads *mt_workloads_load(const char *path, const char *trust_domain, char *err,
                                size_t err_len) {
  mt_yaml_ctx ctx = {path, NULL, err, err_len};
  workloads_draft d = {calloc(1, sizeof(mt_workloads)), trust_domain, 0};
  if (d.workloads == NULL) {
    mt_yaml_fail(&ctx, NULL, "out of memory");
    return NULL;
  }
  yaml_document_t doc;
  yaml_node_t *root = NULL;
  ctx.doc = &doc;
  int ok = mt_yaml_load_file(&ctx, &doc, &root);
  if (ok) {
    ok = mt_yaml_each_pair(&ctx, root, "the workloads file", on_top_key, &d);
    if (ok && !d.have_workloads_key)
      ok = mt_yaml_fail(&ctx, root, "missing required key 'workloads'");
    ok = ok && settle(&ctx, d.workloads);
    yaml_document_delete(&doc);
  }
  if (!ok) {
    mt_workloads_free(d.workloads);
    return NULL;
  }
  return d.workloads;
}

/* bsearch key: (node, identity), address ignored. */
typedef struct {
  const char *node;
  const char *spiffe_id;
} lookup_key;

static int compare_key(const void *pk, const void *pe) {
  const lookup_key *k = pk;
  const workload_entry *e = pe;
  int c = strcmp(k->node, e->node);
  return c != 0 ? c : strcmp(k->spiffe_id, e->spiffe_id);
}

int mt_workloads_on_node(const mt_workloads *w, const char *node, const char *spiffe_id) {
  if (w == NULL || node == NULL || spiffe_id == NULL || w->count == 0) return 0;
  lookup_key key = {node, spiffe_id};
  return bsearch(&key, w->entries, w->count, sizeof(*w->entries), compare_key) != NULL;
}

size_t mt_workloads_foreach(const mt_workloads *w,
                            void (*on_entry)(void *ctx, const char *node, const char *spiffe_id,
                                             const char *address),
                            void *ctx) {
  if (w == NULL) return 0;
  for (size_t i = 0; i < w->count; i++)
    on_entry(ctx, w->entries[i].node, w->entries[i].spiffe_id, w->entries[i].address);
  return w->count;
}
