/* policy_proto: mesh.proto Policy -> mt_policy. See policy_proto.h. */
#include "agent/policy_proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
  MAX_MATCHERS_PER_RULE = 256,
  MAX_CLAUSES_PER_RULE = 1024, /* sources, operations or conditions of one rule */
};

static int decode_action(Mtlsd__Mesh__V1__Action a, mt_action *out) {
  if (a == MTLSD__MESH__V1__ACTION__ALLOW)
    *out = MT_ACTION_ALLOW;
  else if (a == MTLSD__MESH__V1__ACTION__DENY)
    *out = MT_ACTION_DENY;
  else
    return 0;
  return 1;
}

/* Fills |m| from a protobuf matcher; prefix values lose their "*" into
 * |prefix_buf|. */
static int decode_matcher(const Mtlsd__Mesh__V1__Matcher *pm, mt_matcher *m, char **owned) {
  switch (pm->kind_case) {
    case MTLSD__MESH__V1__MATCHER__KIND_ID: *m = (mt_matcher){MT_MATCH_EXACT, pm->id}; return 1;
    case MTLSD__MESH__V1__MATCHER__KIND_NAMESPACE:
      *m = (mt_matcher){MT_MATCH_NAMESPACE, pm->namespace_};
      return 1;
    case MTLSD__MESH__V1__MATCHER__KIND_TRUST_DOMAIN:
      *m = (mt_matcher){MT_MATCH_TRUST_DOMAIN, pm->trust_domain};
      return 1;
    case MTLSD__MESH__V1__MATCHER__KIND_ANY: *m = (mt_matcher){MT_MATCH_ANY, NULL}; return pm->any;
    case MTLSD__MESH__V1__MATCHER__KIND_PREFIX: {
      size_t n = strlen(pm->prefix);
      if (n < 2 || pm->prefix[n - 1] != '*' || pm->prefix[n - 2] != '/') return 0;
      *owned = strndup(pm->prefix, n - 1);
      *m = (mt_matcher){MT_MATCH_PREFIX, *owned};
      return *owned != NULL;
    }
    default: return 0;
  }
}

/* Ports of an Operation, 1..65535, into a fresh array (NULL when none). */
static int copy_ports(const uint32_t *in, size_t n, uint16_t **out, const char *what,
                      const char *rule, char *err, size_t err_len) {
  *out = NULL;
  if (n == 0) return 1;
  *out = calloc(n, sizeof(**out));
  if (*out == NULL) return snprintf(err, err_len, "out of memory"), 0;
  for (size_t i = 0; i < n; i++) {
    if (in[i] == 0 || in[i] > 65535)
      return snprintf(err, err_len, "rule '%.64s': %s port %u out of range", rule, what, in[i]), 0;
    (*out)[i] = (uint16_t)in[i];
  }
  return 1;
}

typedef const char *const *strv;

static int decode_istio_rule(mt_policy *policy, const Mtlsd__Mesh__V1__Rule *r, size_t index,
                             char *err, size_t err_len) {
  mt_action action;
  if (!decode_action(r->action, &action))
    return snprintf(err, err_len, "rule %zu ('%.64s'): action must be ALLOW or DENY", index,
                    r->name),
           0;
  if (r->n_ports > 0 || r->n_from > 0)
    return snprintf(err, err_len, "rule '%.64s': native ports/from in an Istio-form rule", r->name),
           0;
  if (r->n_sources > MAX_CLAUSES_PER_RULE || r->n_operations > MAX_CLAUSES_PER_RULE ||
      r->n_conditions > MAX_CLAUSES_PER_RULE)
    return snprintf(err, err_len, "rule '%.64s': more than %d clauses of one kind", r->name,
                    MAX_CLAUSES_PER_RULE),
           0;
  mt_source_spec *sources = calloc(r->n_sources + 1, sizeof(*sources));
  mt_operation_spec *ops = calloc(r->n_operations + 1, sizeof(*ops));
  mt_condition_spec *conds = calloc(r->n_conditions + 1, sizeof(*conds));
  int ok = sources != NULL && ops != NULL && conds != NULL;
  if (!ok) snprintf(err, err_len, "out of memory");
  for (size_t i = 0; ok && i < r->n_sources; i++) {
    const Mtlsd__Mesh__V1__Source *src = r->sources[i];
    sources[i] = (mt_source_spec){
        (strv)src->principals, src->n_principals, (strv)src->not_principals, src->n_not_principals,
        (strv)src->namespaces, src->n_namespaces, (strv)src->not_namespaces, src->n_not_namespaces,
        (strv)src->ip_blocks,  src->n_ip_blocks,  (strv)src->not_ip_blocks,  src->n_not_ip_blocks};
  }
  for (size_t i = 0; ok && i < r->n_operations; i++) {
    const Mtlsd__Mesh__V1__Operation *op = r->operations[i];
    uint16_t *ports = NULL, *not_ports = NULL;
    ok = copy_ports(op->ports, op->n_ports, &ports, "ports", r->name, err, err_len) &&
         copy_ports(op->not_ports, op->n_not_ports, &not_ports, "notPorts", r->name, err, err_len);
    ops[i] = (mt_operation_spec){ports, op->n_ports, not_ports, op->n_not_ports};
    if (!ok) {
      free(ports);
      free(not_ports);
      ops[i] = (mt_operation_spec){0};
    }
  }
  for (size_t i = 0; ok && i < r->n_conditions; i++) {
    const Mtlsd__Mesh__V1__Condition *c = r->conditions[i];
    conds[i] = (mt_condition_spec){c->key, (strv)c->values, c->n_values, (strv)c->not_values,
                                   c->n_not_values};
  }
  if (ok) {
    mt_istio_rule_spec spec = {r->name,    action,          sources, r->n_sources,
                               ops,        r->n_operations, conds,   r->n_conditions,
                               r->reduced, r->never_matches};
    char why[384];
    ok = mt_policy_add_istio_rule(policy, &spec, why, sizeof(why));
    if (!ok) snprintf(err, err_len, "%s", why);
  }
  for (size_t i = 0; ops != NULL && i < r->n_operations; i++) {
    free((void *)ops[i].ports);
    free((void *)ops[i].not_ports);
  }
  free(sources);
  free(ops);
  free(conds);
  return ok;
}

static int decode_rule(mt_policy *policy, const Mtlsd__Mesh__V1__Rule *r, size_t index, char *err,
                       size_t err_len) {
  if (r->istio) return decode_istio_rule(policy, r, index, err, err_len);
  if (r->n_sources > 0 || r->n_operations > 0 || r->n_conditions > 0 || r->never_matches)
    return snprintf(err, err_len, "rule '%.64s': Istio fields without istio = true", r->name), 0;
  mt_action action;
  if (!decode_action(r->action, &action))
    return snprintf(err, err_len, "rule %zu ('%.64s'): action must be ALLOW or DENY", index,
                    r->name),
           0;
  if (r->n_from == 0 || r->n_from > MAX_MATCHERS_PER_RULE)
    return snprintf(err, err_len, "rule '%.64s': needs 1..%d 'from' matchers", r->name,
                    MAX_MATCHERS_PER_RULE),
           0;
  uint16_t ports[64];
  if (r->n_ports > sizeof(ports) / sizeof(ports[0]))
    return snprintf(err, err_len, "rule '%.64s': more than 64 ports", r->name), 0;
  for (size_t i = 0; i < r->n_ports; i++) {
    if (r->ports[i] == 0 || r->ports[i] > 65535)
      return snprintf(err, err_len, "rule '%.64s': port %u out of range", r->name, r->ports[i]), 0;
    ports[i] = (uint16_t)r->ports[i];
  }
  mt_matcher matchers[MAX_MATCHERS_PER_RULE];
  char *owned[MAX_MATCHERS_PER_RULE] = {0};
  int ok = 1;
  for (size_t i = 0; ok && i < r->n_from; i++) {
    ok = decode_matcher(r->from[i], &matchers[i], &owned[i]);
    if (!ok) snprintf(err, err_len, "rule '%.64s': matcher %zu is empty or malformed", r->name, i);
  }
  char why[256];
  if (ok && !mt_policy_add_rule(policy, r->name, action, ports, r->n_ports, matchers, r->n_from,
                                why, sizeof(why))) {
    snprintf(err, err_len, "rule '%.64s': %s", r->name, why);
    ok = 0;
  }
  for (size_t i = 0; i < r->n_from; i++) free(owned[i]);
  return ok;
}

mt_policy *mt_policy_from_proto(const Mtlsd__Mesh__V1__Policy *p, char *err, size_t err_len) {
  mt_action def = MT_ACTION_ALLOW; /* unset: Istio's default, allow verified peers */
  if (p != NULL && p->default_action != MTLSD__MESH__V1__ACTION__ACTION_UNSPECIFIED &&
      !decode_action(p->default_action, &def)) {
    snprintf(err, err_len, "policy.default_action %d is not ALLOW or DENY", p->default_action);
    return NULL;
  }
  mt_policy *policy = mt_policy_new(def);
  for (size_t i = 0; policy != NULL && p != NULL && i < p->n_allow_policies; i++) {
    if (p->allow_policies[i][0] == '\0') {
      snprintf(err, err_len, "allow_policies[%zu] is empty", i);
      mt_policy_free(policy);
      return NULL;
    }
    if (!mt_policy_add_allow_policy(policy, p->allow_policies[i])) {
      snprintf(err, err_len, "out of memory");
      mt_policy_free(policy);
      return NULL;
    }
  }
  for (size_t i = 0; policy != NULL && p != NULL && i < p->n_rules; i++) {
    if (!decode_rule(policy, p->rules[i], i, err, err_len)) {
      mt_policy_free(policy);
      return NULL;
    }
  }
  return policy;
}
