/* mesh_file.c: mesh YAML -> MeshSnapshot. The protobuf-c structures are
 * built by hand (every string and array malloc'd here) and freed by
 * mt_mesh_file_free(), which walks exactly what the builders allocate. */
#include "controlplane/mesh_file.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/sha.h>

#include "agent/policy.h"
#include "agent/svid.h"
#include "controlplane/ca_files.h"
#include "controlplane/yaml_doc.h"
#include "proto/mtlsd/mesh.pb-c.h"

enum {
  WHY_MAX = 512,
  WHERE_MAX = 64, /* "workload_policies[].policy.rules" and the like */
};

struct mt_mesh_file {
  Mtlsd__Mesh__V1__MeshSnapshot snap;
  Mtlsd__Mesh__V1__Policy policy;
  uint8_t *content;
  size_t content_len;
  uint8_t digest[MT_MESH_DIGEST_LEN];
  char **sources;
  size_t num_sources;
};

/* Parsing state: the value being built and the control plane's trust
 * domain (NULL: not known, so not checked). */
typedef struct {
  mt_mesh_file *mesh;
  const char *own_trust_domain;
} mesh_draft;

/* ---- freeing ----------------------------------------------------------- */

static void free_matcher(Mtlsd__Mesh__V1__Matcher *m) {
  if (m == NULL) return;
  switch (m->kind_case) {
    case MTLSD__MESH__V1__MATCHER__KIND_ID: free(m->id); break;
    case MTLSD__MESH__V1__MATCHER__KIND_PREFIX: free(m->prefix); break;
    case MTLSD__MESH__V1__MATCHER__KIND_NAMESPACE: free(m->namespace_); break;
    case MTLSD__MESH__V1__MATCHER__KIND_TRUST_DOMAIN: free(m->trust_domain); break;
    default: break;
  }
  free(m);
}

static void free_rule(Mtlsd__Mesh__V1__Rule *r) {
  if (r == NULL) return;
  if (r->name != protobuf_c_empty_string) free(r->name);
  free(r->ports);
  for (size_t i = 0; i < r->n_from; i++) free_matcher(r->from[i]);
  free(r->from);
  free(r);
}

/* The rules of |p|, not |p| itself (the top-level policy is embedded). */
static void free_policy_rules(Mtlsd__Mesh__V1__Policy *p) {
  for (size_t i = 0; i < p->n_rules; i++) free_rule(p->rules[i]);
  free(p->rules);
}

static void free_workload_policy(Mtlsd__Mesh__V1__WorkloadPolicy *wp) {
  if (wp == NULL) return;
  if (wp->spiffe_id != protobuf_c_empty_string) free(wp->spiffe_id);
  if (wp->policy != NULL) free_policy_rules(wp->policy);
  free(wp->policy);
  free(wp);
}

static void free_bundle(Mtlsd__Mesh__V1__TrustBundle *b) {
  if (b == NULL) return;
  if (b->trust_domain != protobuf_c_empty_string) free(b->trust_domain);
  for (size_t i = 0; i < b->n_roots_pem; i++) free(b->roots_pem[i]);
  free(b->roots_pem);
  free(b);
}

static void free_destination(Mtlsd__Mesh__V1__Destination *d) {
  if (d == NULL) return;
  if (d->address != protobuf_c_empty_string) free(d->address);
  if (d->spiffe_id != protobuf_c_empty_string) free(d->spiffe_id);
  for (size_t i = 0; i < d->n_spiffe_ids; i++) free(d->spiffe_ids[i]);
  free(d->spiffe_ids);
  free(d);
}

void mt_mesh_file_free(mt_mesh_file *mesh) {
  if (mesh == NULL) return;
  for (size_t i = 0; i < mesh->snap.n_trust_bundles; i++) free_bundle(mesh->snap.trust_bundles[i]);
  free(mesh->snap.trust_bundles);
  free_policy_rules(&mesh->policy);
  for (size_t i = 0; i < mesh->snap.n_destinations; i++)
    free_destination(mesh->snap.destinations[i]);
  free(mesh->snap.destinations);
  for (size_t i = 0; i < mesh->snap.n_workload_policies; i++)
    free_workload_policy(mesh->snap.workload_policies[i]);
  free(mesh->snap.workload_policies);
  for (size_t i = 0; i < mesh->num_sources; i++) free(mesh->sources[i]);
  free(mesh->sources);
  free(mesh->content);
  free(mesh);
}

/* ---- small helpers ----------------------------------------------------- */

/* Appends |item| to a pointer array; 0 when out of memory. */
static int push_ptr(void ***array, size_t *count, void *item) {
  void **grown = realloc(*array, (*count + 1) * sizeof(void *));
  if (grown == NULL) return 0;
  grown[(*count)++] = item;
  *array = grown;
  return 1;
}

static int want_spiffe_id(mt_yaml_ctx *ctx, const yaml_node_t *v, const char *key, char **out) {
  if (!mt_yaml_want_string(ctx, v, key, out)) return 0;
  mt_spiffe_err e = mt_spiffe_id_parse(*out, strlen(*out), NULL);
  if (e != MT_SPIFFE_OK)
    return mt_yaml_fail(ctx, v, "invalid SPIFFE ID '%s': %s", *out, mt_spiffe_err_str(e));
  return 1;
}

static int parse_action(mt_yaml_ctx *ctx, const yaml_node_t *v, const char *key, mt_action *out) {
  const char *s;
  if (!mt_yaml_want_scalar(ctx, v, key, &s)) return 0;
  if (strcasecmp(s, "allow") == 0)
    *out = MT_ACTION_ALLOW;
  else if (strcasecmp(s, "deny") == 0)
    *out = MT_ACTION_DENY;
  else
    return mt_yaml_fail(ctx, v, "'%s' must be allow or deny, got '%s'", key, s);
  return 1;
}

static Mtlsd__Mesh__V1__Action proto_action(mt_action a) {
  return a == MT_ACTION_DENY ? MTLSD__MESH__V1__ACTION__DENY : MTLSD__MESH__V1__ACTION__ALLOW;
}

/* ---- trust bundles ----------------------------------------------------- */

typedef struct {
  mesh_draft *draft;
  Mtlsd__Mesh__V1__TrustBundle *bundle;
} bundle_target;

/* One roots file: every certificate becomes its own roots_pem entry. */
static int on_roots_file(mt_yaml_ctx *ctx, yaml_node_t *item, size_t i, void *target) {
  bundle_target *t = target;
  mt_mesh_file *mesh = t->draft->mesh;
  if (i >= MT_MESH_MAX_ROOTS_FILES)
    return mt_yaml_fail(ctx, item, "a trust bundle lists at most %d roots files",
                        MT_MESH_MAX_ROOTS_FILES);
  char *raw = NULL;
  if (!mt_yaml_want_string(ctx, item, "roots_files[]", &raw)) return 0;
  char *path = mt_yaml_resolve_path(ctx->path, raw);
  free(raw);
  if (path == NULL || !push_ptr((void ***)&mesh->sources, &mesh->num_sources, path)) {
    free(path);
    return mt_yaml_fail(ctx, item, "out of memory");
  }
  mt_pem_certs roots;
  char why[WHY_MAX];
  if (!mt_pem_roots_read(path, &roots, why, sizeof(why)))
    return mt_yaml_fail(ctx, item, "roots file %s", why);
  int ok = 1;
  for (size_t j = 0; ok && j < roots.count; j++) {
    ok = push_ptr((void ***)&t->bundle->roots_pem, &t->bundle->n_roots_pem, roots.pems[j]);
    if (ok) roots.pems[j] = NULL; /* now owned by the bundle */
  }
  mt_pem_certs_clear(&roots);
  return ok || mt_yaml_fail(ctx, item, "out of memory");
}

static int on_bundle_key(mt_yaml_ctx *ctx, const char *key, yaml_node_t *k, yaml_node_t *v,
                         void *target) {
  bundle_target *t = target;
  Mtlsd__Mesh__V1__TrustBundle *b = t->bundle;
  if (strcmp(key, "trust_domain") == 0) {
    char *td = NULL;
    if (!mt_yaml_want_string(ctx, v, key, &td)) return 0;
    b->trust_domain = td;
    mt_spiffe_err e = mt_trust_domain_validate(td, strlen(td));
    if (e != MT_SPIFFE_OK)
      return mt_yaml_fail(ctx, v, "invalid trust domain '%s': %s", td, mt_spiffe_err_str(e));
    return 1;
  }
  if (strcmp(key, "roots_files") == 0) {
    if (mt_yaml_seq_len(v) == 0 && v->type == YAML_SEQUENCE_NODE)
      return mt_yaml_fail(ctx, v, "'roots_files' must list at least one file");
    return mt_yaml_each_item(ctx, v, "roots_files", on_roots_file, t);
  }
  return mt_yaml_fail(ctx, k, "unknown key 'trust_bundles[].%s'", key);
}

static int on_bundle(mt_yaml_ctx *ctx, yaml_node_t *item, size_t i, void *target) {
  mesh_draft *d = target;
  Mtlsd__Mesh__V1__MeshSnapshot *s = &d->mesh->snap;
  Mtlsd__Mesh__V1__TrustBundle *b = malloc(sizeof(*b));
  if (b == NULL) return mt_yaml_fail(ctx, item, "out of memory");
  mtlsd__mesh__v1__trust_bundle__init(b);
  if (!push_ptr((void ***)&s->trust_bundles, &s->n_trust_bundles, b)) {
    free(b);
    return mt_yaml_fail(ctx, item, "out of memory");
  }
  bundle_target t = {d, b};
  if (!mt_yaml_each_pair(ctx, item, "a trust bundle", on_bundle_key, &t)) return 0;
  if (b->trust_domain == protobuf_c_empty_string)
    return mt_yaml_fail(ctx, item, "trust bundle needs 'trust_domain'");
  if (b->n_roots_pem == 0) return mt_yaml_fail(ctx, item, "trust bundle needs 'roots_files'");
  for (size_t j = 0; j < i; j++) {
    if (strcmp(s->trust_bundles[j]->trust_domain, b->trust_domain) == 0)
      return mt_yaml_fail(ctx, item, "trust domain '%s' has two bundles", b->trust_domain);
  }
  return 1;
}

/* ---- policy ------------------------------------------------------------ */

/* One policy being parsed (the top-level one or a workload's): the message
 * it fills, plus an agent policy that every rule is also added to, so the
 * agent's own checks run on the server first. |where| is the policy's path
 * in the file ("policy", "workload_policies[].policy"), for errors. */
typedef struct {
  Mtlsd__Mesh__V1__Policy *policy;
  mt_policy *check;
  const char *where;
} policy_draft;

typedef struct {
  policy_draft *draft;
  Mtlsd__Mesh__V1__Rule *rule;
  int has_action;
} rule_target;

static int on_port(mt_yaml_ctx *ctx, yaml_node_t *item, size_t i, void *target) {
  rule_target *t = target;
  Mtlsd__Mesh__V1__Rule *r = t->rule;
  int64_t port;
  if (i >= MT_MESH_MAX_RULE_PORTS)
    return mt_yaml_fail(ctx, item, "a rule lists at most %d ports", MT_MESH_MAX_RULE_PORTS);
  if (!mt_yaml_want_int64(ctx, item, "ports[]", 1, 65535, &port)) return 0;
  for (size_t j = 0; j < r->n_ports; j++)
    if (r->ports[j] == (uint32_t)port)
      return mt_yaml_fail(ctx, item, "port %lld is listed twice", (long long)port);
  r->ports[r->n_ports++] = (uint32_t)port;
  return 1;
}

/* A namespace is one SPIFFE path segment. */
static int namespace_valid(const char *ns) {
  if (strcmp(ns, ".") == 0 || strcmp(ns, "..") == 0) return 0;
  for (const char *p = ns; *p; p++) {
    int ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
             *p == '.' || *p == '-' || *p == '_';
    if (!ok) return 0;
  }
  return ns[0] != '\0';
}

/* "spiffe://td/path/" then "*": what precedes the final slash must be a SPIFFE ID. */
static int check_prefix(mt_yaml_ctx *ctx, const yaml_node_t *v, const char *s) {
  size_t n = strlen(s);
  if (n < 2 || s[n - 1] != '*' || s[n - 2] != '/')
    return mt_yaml_fail(ctx, v, "prefix must end in '/*', got '%s'", s);
  mt_spiffe_err e = mt_spiffe_id_parse(s, n - 2, NULL);
  if (e != MT_SPIFFE_OK)
    return mt_yaml_fail(ctx, v, "prefix '%s' is not a SPIFFE ID followed by '/*': %s", s,
                        mt_spiffe_err_str(e));
  return 1;
}

/* Fills |m| from one "kind: value" pair; the value is validated here when
 * the agent's policy would not catch it with a useful line. */
static int fill_matcher(mt_yaml_ctx *ctx, const char *key, yaml_node_t *k, yaml_node_t *v,
                        Mtlsd__Mesh__V1__Matcher *m) {
  const char *s;
  if (!mt_yaml_want_scalar(ctx, v, key, &s)) return 0;
  if (strcmp(key, "any") == 0) {
    if (strcmp(s, "true") != 0) return mt_yaml_fail(ctx, v, "'any' only takes the value true");
    m->kind_case = MTLSD__MESH__V1__MATCHER__KIND_ANY;
    m->any = 1;
    return 1;
  }
  char **slot;
  if (strcmp(key, "id") == 0) {
    m->kind_case = MTLSD__MESH__V1__MATCHER__KIND_ID;
    slot = &m->id;
  } else if (strcmp(key, "prefix") == 0) {
    if (!check_prefix(ctx, v, s)) return 0;
    m->kind_case = MTLSD__MESH__V1__MATCHER__KIND_PREFIX;
    slot = &m->prefix;
  } else if (strcmp(key, "namespace") == 0) {
    if (!namespace_valid(s))
      return mt_yaml_fail(ctx, v, "namespace '%s' is not a valid SPIFFE path segment", s);
    m->kind_case = MTLSD__MESH__V1__MATCHER__KIND_NAMESPACE;
    slot = &m->namespace_;
  } else if (strcmp(key, "trust_domain") == 0) {
    m->kind_case = MTLSD__MESH__V1__MATCHER__KIND_TRUST_DOMAIN;
    slot = &m->trust_domain;
  } else {
    return mt_yaml_fail(
        ctx, k, "unknown matcher '%s' (want id, prefix, namespace, trust_domain, any)", key);
  }
  *slot = strdup(s);
  return *slot != NULL || mt_yaml_fail(ctx, v, "out of memory");
}

static int on_matcher_key(mt_yaml_ctx *ctx, const char *key, yaml_node_t *k, yaml_node_t *v,
                          void *target) {
  Mtlsd__Mesh__V1__Matcher *m = target;
  return fill_matcher(ctx, key, k, v, m);
}

static int on_matcher(mt_yaml_ctx *ctx, yaml_node_t *item, size_t i, void *target) {
  rule_target *t = target;
  Mtlsd__Mesh__V1__Rule *r = t->rule;
  if (i >= MT_MESH_MAX_RULE_MATCHERS)
    return mt_yaml_fail(ctx, item, "a rule has at most %d 'from' entries",
                        MT_MESH_MAX_RULE_MATCHERS);
  if (item->type != YAML_MAPPING_NODE ||
      item->data.mapping.pairs.top - item->data.mapping.pairs.start != 1)
    return mt_yaml_fail(ctx, item, "each 'from' entry is one 'kind: value' pair");
  Mtlsd__Mesh__V1__Matcher *m = malloc(sizeof(*m));
  if (m == NULL) return mt_yaml_fail(ctx, item, "out of memory");
  mtlsd__mesh__v1__matcher__init(m);
  r->from[r->n_from++] = m;
  return mt_yaml_each_pair(ctx, item, "a 'from' entry", on_matcher_key, m);
}

static int on_rule_key(mt_yaml_ctx *ctx, const char *key, yaml_node_t *k, yaml_node_t *v,
                       void *target) {
  rule_target *t = target;
  Mtlsd__Mesh__V1__Rule *r = t->rule;
  if (strcmp(key, "name") == 0) {
    char *name = NULL;
    if (!mt_yaml_want_string(ctx, v, key, &name)) return 0;
    r->name = name;
    return 1;
  }
  if (strcmp(key, "action") == 0) {
    mt_action a = MT_ACTION_ALLOW;
    if (!parse_action(ctx, v, key, &a)) return 0;
    r->action = proto_action(a);
    t->has_action = 1;
    return 1;
  }
  if (strcmp(key, "ports") == 0) return mt_yaml_each_item(ctx, v, "ports", on_port, t);
  if (strcmp(key, "from") == 0) return mt_yaml_each_item(ctx, v, "from", on_matcher, t);
  return mt_yaml_fail(ctx, k, "unknown key '%s.rules[].%s'", t->draft->where, key);
}

/* The rule as the agent will see it, added to the draft's check policy. */
static int agent_accepts(mt_yaml_ctx *ctx, yaml_node_t *item, policy_draft *d,
                         const Mtlsd__Mesh__V1__Rule *r) {
  uint16_t ports[MT_MESH_MAX_RULE_PORTS];
  mt_matcher matchers[MT_MESH_MAX_RULE_MATCHERS];
  char *owned[MT_MESH_MAX_RULE_MATCHERS] = {0};
  int ok = 1;
  for (size_t i = 0; i < r->n_ports; i++) ports[i] = (uint16_t)r->ports[i];
  for (size_t i = 0; ok && i < r->n_from; i++) {
    const Mtlsd__Mesh__V1__Matcher *m = r->from[i];
    switch (m->kind_case) {
      case MTLSD__MESH__V1__MATCHER__KIND_ID:
        matchers[i] = (mt_matcher){MT_MATCH_EXACT, m->id};
        break;
      case MTLSD__MESH__V1__MATCHER__KIND_PREFIX:
        owned[i] = strndup(m->prefix, strlen(m->prefix) - 1); /* the agent drops the '*' */
        ok = owned[i] != NULL;
        matchers[i] = (mt_matcher){MT_MATCH_PREFIX, owned[i]};
        break;
      case MTLSD__MESH__V1__MATCHER__KIND_NAMESPACE:
        matchers[i] = (mt_matcher){MT_MATCH_NAMESPACE, m->namespace_};
        break;
      case MTLSD__MESH__V1__MATCHER__KIND_TRUST_DOMAIN:
        matchers[i] = (mt_matcher){MT_MATCH_TRUST_DOMAIN, m->trust_domain};
        break;
      default: matchers[i] = (mt_matcher){MT_MATCH_ANY, NULL}; break;
    }
  }
  char why[WHY_MAX] = "out of memory";
  mt_action action = r->action == MTLSD__MESH__V1__ACTION__DENY ? MT_ACTION_DENY : MT_ACTION_ALLOW;
  if (ok)
    ok = mt_policy_add_rule(d->check, r->name, action, ports, r->n_ports, matchers, r->n_from, why,
                            sizeof(why));
  for (size_t i = 0; i < r->n_from; i++) free(owned[i]);
  return ok || mt_yaml_fail(ctx, item, "policy rule '%s': %s", r->name, why);
}

static int on_rule(mt_yaml_ctx *ctx, yaml_node_t *item, size_t i, void *target) {
  policy_draft *d = target;
  Mtlsd__Mesh__V1__Policy *p = d->policy;
  (void)i;
  Mtlsd__Mesh__V1__Rule *r = malloc(sizeof(*r));
  if (r == NULL) return mt_yaml_fail(ctx, item, "out of memory");
  mtlsd__mesh__v1__rule__init(r);
  if (!push_ptr((void ***)&p->rules, &p->n_rules, r)) {
    free(r);
    return mt_yaml_fail(ctx, item, "out of memory");
  }
  r->ports = calloc(MT_MESH_MAX_RULE_PORTS, sizeof(*r->ports));
  r->from = calloc(MT_MESH_MAX_RULE_MATCHERS, sizeof(*r->from));
  if (r->ports == NULL || r->from == NULL) return mt_yaml_fail(ctx, item, "out of memory");
  rule_target t = {d, r, 0};
  if (!mt_yaml_each_pair(ctx, item, "a policy rule", on_rule_key, &t)) return 0;
  if (r->name == protobuf_c_empty_string)
    return mt_yaml_fail(ctx, item, "policy rule needs 'name'");
  if (!t.has_action) return mt_yaml_fail(ctx, item, "policy rule '%s' needs 'action'", r->name);
  if (r->n_from == 0) return mt_yaml_fail(ctx, item, "policy rule '%s' needs 'from'", r->name);
  return agent_accepts(ctx, item, d, r);
}

static int on_policy_key(mt_yaml_ctx *ctx, const char *key, yaml_node_t *k, yaml_node_t *v,
                         void *target) {
  policy_draft *d = target;
  if (strcmp(key, "default") == 0) {
    mt_action a = MT_ACTION_ALLOW;
    if (!parse_action(ctx, v, key, &a)) return 0;
    d->policy->default_action = proto_action(a);
    return 1;
  }
  if (strcmp(key, "rules") == 0) {
    char what[WHERE_MAX];
    snprintf(what, sizeof(what), "%s.rules", d->where);
    return mt_yaml_each_item(ctx, v, what, on_rule, d);
  }
  return mt_yaml_fail(ctx, k, "unknown key '%s.%s'", d->where, key);
}

/* Fills |p| (freshly initialised) from the policy mapping |v|: without
 * 'default', ALLOW; without 'rules', none. Each policy gets its own agent
 * check, so rule names need only be unique within one policy. */
static int parse_policy(mt_yaml_ctx *ctx, yaml_node_t *v, const char *where,
                        Mtlsd__Mesh__V1__Policy *p) {
  policy_draft d = {p, mt_policy_new(MT_ACTION_ALLOW), where};
  if (d.check == NULL) return mt_yaml_fail(ctx, v, "out of memory");
  p->default_action = MTLSD__MESH__V1__ACTION__ALLOW;
  int ok = mt_yaml_each_pair(ctx, v, where, on_policy_key, &d);
  mt_policy_free(d.check);
  return ok;
}

/* ---- destinations ------------------------------------------------------ */

/* An IP alone (a pod: every port of it), as the agent takes it. */
static int ip_alone_valid(const char *text) {
  unsigned char addr[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, text, addr) == 1 || inet_pton(AF_INET6, text, addr) == 1;
}

static int on_destination_id(mt_yaml_ctx *ctx, yaml_node_t *item, size_t i, void *target) {
  (void)i;
  Mtlsd__Mesh__V1__Destination *dst = target;
  char *s = NULL;
  int ok = want_spiffe_id(ctx, item, "spiffe_ids[]", &s);
  if (s == NULL) return ok;
  if (!push_ptr((void ***)&dst->spiffe_ids, &dst->n_spiffe_ids, s)) {
    free(s);
    return mt_yaml_fail(ctx, item, "out of memory");
  }
  for (size_t j = 0; ok && j + 1 < dst->n_spiffe_ids; j++)
    if (strcmp(dst->spiffe_ids[j], s) == 0)
      return mt_yaml_fail(ctx, item, "'%s' is listed twice in spiffe_ids", s);
  return ok;
}

static int on_destination_key(mt_yaml_ctx *ctx, const char *key, yaml_node_t *k, yaml_node_t *v,
                              void *target) {
  Mtlsd__Mesh__V1__Destination *dst = target;
  char *s = NULL;
  if (strcmp(key, "address") == 0) {
    if (!mt_yaml_want_string(ctx, v, key, &s)) return 0;
    dst->address = s;
    if (!mt_yaml_address_valid(s, 0) && !ip_alone_valid(s))
      return mt_yaml_fail(ctx, v, "'address' must be IP:port or an IP alone, got '%s'", s);
    return 1;
  }
  if (strcmp(key, "spiffe_id") == 0) {
    int ok = want_spiffe_id(ctx, v, key, &s);
    if (s != NULL) dst->spiffe_id = s;
    return ok;
  }
  if (strcmp(key, "spiffe_ids") == 0)
    return mt_yaml_each_item(ctx, v, "destinations[].spiffe_ids", on_destination_id, dst);
  return mt_yaml_fail(ctx, k, "unknown key 'destinations[].%s'", key);
}

static int on_destination(mt_yaml_ctx *ctx, yaml_node_t *item, size_t i, void *target) {
  mesh_draft *d = target;
  Mtlsd__Mesh__V1__MeshSnapshot *s = &d->mesh->snap;
  Mtlsd__Mesh__V1__Destination *dst = malloc(sizeof(*dst));
  if (dst == NULL) return mt_yaml_fail(ctx, item, "out of memory");
  mtlsd__mesh__v1__destination__init(dst);
  if (!push_ptr((void ***)&s->destinations, &s->n_destinations, dst)) {
    free(dst);
    return mt_yaml_fail(ctx, item, "out of memory");
  }
  if (!mt_yaml_each_pair(ctx, item, "a destination", on_destination_key, dst)) return 0;
  if (dst->address == protobuf_c_empty_string)
    return mt_yaml_fail(ctx, item, "destination needs 'address'");
  if (dst->spiffe_id == protobuf_c_empty_string && dst->n_spiffe_ids == 0)
    return mt_yaml_fail(ctx, item, "destination needs 'spiffe_id' or a non-empty 'spiffe_ids'");
  for (size_t j = 0; j < i; j++) {
    if (strcmp(s->destinations[j]->address, dst->address) == 0)
      return mt_yaml_fail(ctx, item, "destination '%s' is listed twice", dst->address);
  }
  return 1;
}

/* ---- workload policies ------------------------------------------------- */

typedef struct {
  mesh_draft *draft;
  Mtlsd__Mesh__V1__WorkloadPolicy *wp;
} workload_policy_target;

static int on_workload_policy_key(mt_yaml_ctx *ctx, const char *key, yaml_node_t *k, yaml_node_t *v,
                                  void *target) {
  workload_policy_target *t = target;
  Mtlsd__Mesh__V1__WorkloadPolicy *wp = t->wp;
  if (strcmp(key, "spiffe_id") == 0) {
    char *id = NULL;
    int ok = mt_yaml_want_workload_id(ctx, v, key, t->draft->own_trust_domain, &id);
    if (id != NULL) wp->spiffe_id = id;
    return ok;
  }
  if (strcmp(key, "policy") == 0) {
    wp->policy = malloc(sizeof(*wp->policy));
    if (wp->policy == NULL) return mt_yaml_fail(ctx, v, "out of memory");
    mtlsd__mesh__v1__policy__init(wp->policy);
    return parse_policy(ctx, v, "workload_policies[].policy", wp->policy);
  }
  return mt_yaml_fail(ctx, k, "unknown key 'workload_policies[].%s'", key);
}

static int on_workload_policy(mt_yaml_ctx *ctx, yaml_node_t *item, size_t i, void *target) {
  mesh_draft *d = target;
  Mtlsd__Mesh__V1__MeshSnapshot *s = &d->mesh->snap;
  (void)i;
  Mtlsd__Mesh__V1__WorkloadPolicy *wp = malloc(sizeof(*wp));
  if (wp == NULL) return mt_yaml_fail(ctx, item, "out of memory");
  mtlsd__mesh__v1__workload_policy__init(wp);
  if (!push_ptr((void ***)&s->workload_policies, &s->n_workload_policies, wp)) {
    free(wp);
    return mt_yaml_fail(ctx, item, "out of memory");
  }
  workload_policy_target t = {d, wp};
  if (!mt_yaml_each_pair(ctx, item, "a workload policy", on_workload_policy_key, &t)) return 0;
  if (wp->spiffe_id == protobuf_c_empty_string)
    return mt_yaml_fail(ctx, item, "workload policy needs 'spiffe_id'");
  if (wp->policy == NULL)
    return mt_yaml_fail(ctx, item, "workload policy for '%s' needs 'policy'", wp->spiffe_id);
  return 1;
}

/* An entry of workload_policies: its ID and its item (for the line). */
typedef struct {
  const char *spiffe_id;
  const yaml_node_t *item;
} workload_seen;

/* By ID, then by position in the file. */
static int compare_seen(const void *pa, const void *pb) {
  const workload_seen *a = pa, *b = pb;
  int c = strcmp(a->spiffe_id, b->spiffe_id);
  if (c != 0) return c;
  return (a->item->start_mark.index > b->item->start_mark.index) -
         (a->item->start_mark.index < b->item->start_mark.index);
}

/* One policy per workload: refuses an ID listed twice, reported at the
 * repeat that comes first in the file. Sorted rather than compared pairwise,
 * so a list of every workload of a large mesh still loads quickly. */
static int workload_ids_unique(mt_yaml_ctx *ctx, yaml_node_t *seq,
                               const Mtlsd__Mesh__V1__MeshSnapshot *s) {
  size_t n = s->n_workload_policies;
  if (n < 2) return 1;
  workload_seen *seen = malloc(n * sizeof(*seen));
  if (seen == NULL) return mt_yaml_fail(ctx, seq, "out of memory");
  for (size_t i = 0; i < n; i++)
    seen[i] = (workload_seen){s->workload_policies[i]->spiffe_id,
                              yaml_document_get_node(ctx->doc, seq->data.sequence.items.start[i])};
  qsort(seen, n, sizeof(*seen), compare_seen);
  const workload_seen *repeat = NULL, *original = NULL;
  for (size_t i = 1; i < n; i++) {
    if (strcmp(seen[i - 1].spiffe_id, seen[i].spiffe_id) == 0 &&
        (repeat == NULL || seen[i].item->start_mark.index < repeat->item->start_mark.index)) {
      repeat = &seen[i];
      original = &seen[i - 1];
    }
  }
  int ok =
      repeat == NULL || mt_yaml_fail(ctx, repeat->item,
                                     "workload policy for '%s' is listed twice (first at line %lu)",
                                     repeat->spiffe_id, mt_yaml_line(original->item));
  free(seen);
  return ok;
}

/* ---- top level --------------------------------------------------------- */

static int on_top_key(mt_yaml_ctx *ctx, const char *key, yaml_node_t *k, yaml_node_t *v,
                      void *target) {
  mesh_draft *d = target;
  if (strcmp(key, "trust_bundles") == 0)
    return mt_yaml_each_item(ctx, v, "trust_bundles", on_bundle, d);
  if (strcmp(key, "policy") == 0) return parse_policy(ctx, v, "policy", &d->mesh->policy);
  if (strcmp(key, "destinations") == 0)
    return mt_yaml_each_item(ctx, v, "destinations", on_destination, d);
  if (strcmp(key, "workload_policies") == 0)
    return mt_yaml_each_item(ctx, v, "workload_policies", on_workload_policy, d) &&
           workload_ids_unique(ctx, v, &d->mesh->snap);
  return mt_yaml_fail(ctx, k, "unknown key '%s'", key);
}

static int has_bundle_for(const mt_mesh_file *mesh, const char *td) {
  for (size_t i = 0; i < mesh->snap.n_trust_bundles; i++)
    if (strcmp(mesh->snap.trust_bundles[i]->trust_domain, td) == 0) return 1;
  return 0;
}

/* Encodes the content (version "") and its digest. */
static int finish(mt_mesh_file *mesh) {
  mesh->snap.policy = &mesh->policy;
  mesh->content_len = mtlsd__mesh__v1__mesh_snapshot__get_packed_size(&mesh->snap);
  mesh->content = malloc(mesh->content_len ? mesh->content_len : 1);
  if (mesh->content == NULL) return 0;
  mtlsd__mesh__v1__mesh_snapshot__pack(&mesh->snap, mesh->content);
  SHA256(mesh->content, mesh->content_len, mesh->digest);
  return 1;
}

static mt_mesh_file *mesh_new(const char *path) {
  mt_mesh_file *mesh = calloc(1, sizeof(*mesh));
  if (mesh == NULL) return NULL;
  mtlsd__mesh__v1__mesh_snapshot__init(&mesh->snap);
  mtlsd__mesh__v1__policy__init(&mesh->policy);
  mesh->policy.default_action = MTLSD__MESH__V1__ACTION__ALLOW; /* without 'policy' */
  char *copy = strdup(path);
  if (copy == NULL || !push_ptr((void ***)&mesh->sources, &mesh->num_sources, copy)) {
    free(copy);
    mt_mesh_file_free(mesh);
    return NULL;
  }
  return mesh;
}

mt_mesh_file *mt_mesh_file_load(const char *path, const char *own_trust_domain, char *err,
                                size_t err_len) {
  mt_yaml_ctx ctx = {path, NULL, err, err_len};
  mesh_draft d = {mesh_new(path), own_trust_domain};
  yaml_document_t doc;
  yaml_node_t *root = NULL;
  ctx.doc = &doc;
  int ok = d.mesh != NULL;
  if (!ok) mt_yaml_fail(&ctx, NULL, "out of memory");
  if (ok && mt_yaml_load_file(&ctx, &doc, &root)) {
    ok = mt_yaml_each_pair(&ctx, root, "the mesh file", on_top_key, &d);
    if (ok && own_trust_domain != NULL && !has_bundle_for(d.mesh, own_trust_domain))
      ok = mt_yaml_fail(&ctx, root, "no trust bundle for the control plane's trust domain '%s'",
                        own_trust_domain);
    if (ok && !finish(d.mesh)) ok = mt_yaml_fail(&ctx, root, "out of memory");
    /* An agent refuses a message over its limit, and would then never get
     * any snapshot again: refuse the file here, with the numbers. */
    if (ok && d.mesh->content_len > MT_MESH_SNAPSHOT_MAX_BYTES)
      ok = mt_yaml_fail(&ctx, root,
                        "the snapshot would be %zu bytes; agents accept at most %d (fewer roots "
                        "or workload policies, or split the mesh)",
                        d.mesh->content_len, MT_MESH_SNAPSHOT_MAX_BYTES);
    yaml_document_delete(&doc);
  } else {
    ok = 0;
  }
  if (!ok) {
    mt_mesh_file_free(d.mesh);
    return NULL;
  }
  return d.mesh;
}

const uint8_t *mt_mesh_file_content(const mt_mesh_file *mesh, size_t *len) {
  *len = mesh->content_len;
  return mesh->content;
}

const uint8_t *mt_mesh_file_digest(const mt_mesh_file *mesh) { return mesh->digest; }

const Mtlsd__Mesh__V1__MeshSnapshot *mt_mesh_file_message(const mt_mesh_file *mesh) {
  return &mesh->snap;
}

size_t mt_mesh_file_sources(const mt_mesh_file *mesh, const char *const **paths) {
  *paths = (const char *const *)mesh->sources;
  return mesh->num_sources;
}

uint8_t *mt_mesh_file_encode(const mt_mesh_file *mesh, const char *version, size_t *len) {
  /* A shallow copy with the version set: the parts stay the mesh's. */
  Mtlsd__Mesh__V1__MeshSnapshot snap = mesh->snap;
  snap.version = (char *)version;
  *len = mtlsd__mesh__v1__mesh_snapshot__get_packed_size(&snap);
  uint8_t *out = malloc(*len ? *len : 1);
  if (out != NULL) mtlsd__mesh__v1__mesh_snapshot__pack(&snap, out);
  return out;
}
