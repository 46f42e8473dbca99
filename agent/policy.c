/* policy: compiled ALLOW/DENY rules. See policy.h for the evaluation order. */
#include "agent/policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/policy_match.h"
#include "agent/svid.h"

static const char kMtSpiffeScheme[] = "spiffe://";
#define MT_SPIFFE_SCHEME_LEN (sizeof(kMtSpiffeScheme) - 1)

/* Namespace matchers look for the Kubernetes convention "/ns/<ns>[/...]". */
static const char kMtNamespacePathPrefix[] = "/ns/";
#define MT_NAMESPACE_PATH_PREFIX_LEN (sizeof(kMtNamespacePathPrefix) - 1)

/* Rule name used when the peer ID itself is unusable; not a configured rule. */
static const char kMtRuleInvalidPeer[] = MT_POLICY_RULE_INVALID_PEER;

typedef struct {
  mt_match_kind kind;
  char *value; /* owned; NULL for MT_MATCH_ANY */
  size_t value_len;
} mt_rule_matcher;

typedef struct {
  char *name; /* owned */
  mt_action action;
  uint16_t *ports; /* owned; NULL when the rule covers every port */
  size_t num_ports;
  mt_rule_matcher *matchers; /* owned */
  size_t num_matchers;
  /* Istio form (match != NULL): ports and matchers are empty. */
  mt_rule_match *match; /* owned */
  char *reduced;        /* owned; NULL when the control plane did not change the rule */
  int never_matches;
} mt_rule;

struct mt_policy {
  mt_action default_action;
  mt_rule *rules;
  size_t num_rules;
  size_t cap_rules;
  size_t num_native;     /* rules in the native form */
  char **allow_policies; /* owned: ALLOW policies selecting the workload (Istio) */
  size_t num_allow_policies;
};

/* A macro rather than a variadic function: the static analyzer mis-models
 * va_list in inlined variadic helpers, and the message is optional. */
#define MT_SET_ERR(err, err_len, ...)                \
  do {                                               \
    if ((err) != NULL && (err_len) > 0) {            \
      (void)snprintf((err), (err_len), __VA_ARGS__); \
    }                                                \
  } while (0)

static char *mt_strdup(const char *s) {
  size_t len = strlen(s);
  char *copy = malloc(len + 1);
  if (copy != NULL) {
    memcpy(copy, s, len + 1);
  }
  return copy;
}

static void mt_rule_dispose(mt_rule *rule) {
  for (size_t i = 0; i < rule->num_matchers; i++) {
    free(rule->matchers[i].value);
  }
  free(rule->matchers);
  free(rule->ports);
  free(rule->name);
  mt_rule_match_free(rule->match);
  free(rule->reduced);
}

mt_policy *mt_policy_new(mt_action default_action) {
  if (default_action != MT_ACTION_ALLOW && default_action != MT_ACTION_DENY) {
    return NULL;
  }
  mt_policy *policy = calloc(1, sizeof(*policy));
  if (policy != NULL) {
    policy->default_action = default_action;
  }
  return policy;
}

void mt_policy_free(mt_policy *policy) {
  if (policy == NULL) {
    return;
  }
  for (size_t i = 0; i < policy->num_rules; i++) {
    mt_rule_dispose(&policy->rules[i]);
  }
  free(policy->rules);
  for (size_t i = 0; i < policy->num_allow_policies; i++) free(policy->allow_policies[i]);
  free(policy->allow_policies);
  free(policy);
}

size_t mt_policy_rule_count(const mt_policy *policy) {
  return policy != NULL ? policy->num_rules : 0;
}

const char *mt_action_str(mt_action action) {
  switch (action) {
    case MT_ACTION_ALLOW: return "allow";
    case MT_ACTION_DENY: return "deny";
  }
  return "unknown";
}

/* ---- building ---------------------------------------------------------- */

const char *mt_match_kind_key(mt_match_kind kind) {
  switch (kind) {
    case MT_MATCH_ANY: return "any";
    case MT_MATCH_EXACT: return "id";
    case MT_MATCH_PREFIX: return "prefix";
    case MT_MATCH_NAMESPACE: return "namespace";
    case MT_MATCH_TRUST_DOMAIN: return "trust_domain";
  }
  return "unknown";
}

/* Returns NULL when |m| is well formed, else a static description of the
 * problem. Refusing values that could never match turns a silent
 * never-allow (or never-deny) into an error at load time. */
static const char *mt_matcher_problem(const mt_matcher *m) {
  if (m->kind == MT_MATCH_ANY) {
    return m->value == NULL ? NULL : "takes no value";
  }
  if (m->value == NULL || m->value[0] == '\0') {
    return "needs a non-empty value";
  }
  size_t len = strlen(m->value);
  switch (m->kind) {
    case MT_MATCH_EXACT:
      return mt_spiffe_id_parse(m->value, len, NULL) == MT_SPIFFE_OK ? NULL
                                                                     : "is not a valid SPIFFE ID";
    case MT_MATCH_PREFIX:
      return strncmp(m->value, kMtSpiffeScheme, MT_SPIFFE_SCHEME_LEN) == 0
                 ? NULL
                 : "does not start with \"spiffe://\"";
    case MT_MATCH_NAMESPACE: return strchr(m->value, '/') == NULL ? NULL : "contains '/'";
    case MT_MATCH_TRUST_DOMAIN:
      return mt_trust_domain_validate(m->value, len) == MT_SPIFFE_OK
                 ? NULL
                 : "is not a valid trust domain";
    case MT_MATCH_ANY: break;
  }
  return "has an unknown kind";
}

static int mt_validate_matchers(const char *name, const mt_matcher *matchers, size_t num, char *err,
                                size_t err_len) {
  for (size_t i = 0; i < num; i++) {
    const char *problem = mt_matcher_problem(&matchers[i]);
    if (problem != NULL) {
      MT_SET_ERR(err, err_len, "rule \"%s\": %s matcher \"%s\" %s", name,
                 mt_match_kind_key(matchers[i].kind),
                 matchers[i].value != NULL ? matchers[i].value : "", problem);
      return 0;
    }
  }
  return 1;
}

/* Port 0 is never a destination port, so listing it is a config mistake. */
static int mt_validate_ports(const char *name, const uint16_t *ports, size_t num, char *err,
                             size_t err_len) {
  if (num > 0 && ports == NULL) {
    MT_SET_ERR(err, err_len, "rule \"%s\": port list is missing", name);
    return 0;
  }
  for (size_t i = 0; i < num; i++) {
    if (ports[i] == 0) {
      MT_SET_ERR(err, err_len, "rule \"%s\": port 0 is not a destination port", name);
      return 0;
    }
  }
  return 1;
}

static const mt_rule *mt_find_rule(const mt_policy *policy, const char *name) {
  for (size_t i = 0; i < policy->num_rules; i++) {
    if (strcmp(policy->rules[i].name, name) == 0) {
      return &policy->rules[i];
    }
  }
  return NULL;
}

static int mt_validate_rule(const mt_policy *policy, const char *name, mt_action action,
                            const uint16_t *ports, size_t num_ports, const mt_matcher *matchers,
                            size_t num_matchers, char *err, size_t err_len) {
  if (name == NULL || name[0] == '\0') {
    MT_SET_ERR(err, err_len, "rule has an empty name");
    return 0;
  }
  if (mt_find_rule(policy, name) != NULL) {
    MT_SET_ERR(err, err_len, "rule \"%s\": duplicate rule name", name);
    return 0;
  }
  if (action != MT_ACTION_ALLOW && action != MT_ACTION_DENY) {
    MT_SET_ERR(err, err_len, "rule \"%s\": unknown action", name);
    return 0;
  }
  if (matchers == NULL || num_matchers == 0) {
    MT_SET_ERR(err, err_len, "rule \"%s\": has no matchers", name);
    return 0;
  }
  return mt_validate_ports(name, ports, num_ports, err, err_len) &&
         mt_validate_matchers(name, matchers, num_matchers, err, err_len);
}

static int mt_copy_matchers(mt_rule *rule, const mt_matcher *matchers, size_t num) {
  rule->matchers = calloc(num, sizeof(*rule->matchers));
  if (rule->matchers == NULL) {
    return 0;
  }
  rule->num_matchers = num;
  for (size_t i = 0; i < num; i++) {
    mt_rule_matcher *dst = &rule->matchers[i];
    dst->kind = matchers[i].kind;
    if (matchers[i].value == NULL) {
      continue;
    }
    dst->value = mt_strdup(matchers[i].value);
    if (dst->value == NULL) {
      return 0;
    }
    dst->value_len = strlen(dst->value);
  }
  return 1;
}

/* Fills |rule| with copies of the caller's data; on failure the caller
 * disposes of whatever was copied. */
static int mt_copy_rule(mt_rule *rule, const char *name, mt_action action, const uint16_t *ports,
                        size_t num_ports, const mt_matcher *matchers, size_t num_matchers) {
  rule->action = action;
  rule->name = mt_strdup(name);
  if (rule->name == NULL) {
    return 0;
  }
  if (num_ports > 0) {
    rule->ports = malloc(num_ports * sizeof(*rule->ports));
    if (rule->ports == NULL) {
      return 0;
    }
    memcpy(rule->ports, ports, num_ports * sizeof(*rule->ports));
    rule->num_ports = num_ports;
  }
  return mt_copy_matchers(rule, matchers, num_matchers);
}

static int mt_reserve_rule(mt_policy *policy) {
  if (policy->num_rules < policy->cap_rules) {
    return 1;
  }
  size_t cap = policy->cap_rules == 0 ? 8 : policy->cap_rules * 2;
  mt_rule *rules = realloc(policy->rules, cap * sizeof(*rules));
  if (rules == NULL) {
    return 0;
  }
  policy->rules = rules;
  policy->cap_rules = cap;
  return 1;
}

int mt_policy_add_rule(mt_policy *policy, const char *name, mt_action action, const uint16_t *ports,
                       size_t num_ports, const mt_matcher *matchers, size_t num_matchers, char *err,
                       size_t err_len) {
  if (policy == NULL) {
    MT_SET_ERR(err, err_len, "no policy to add the rule to");
    return 0;
  }
  if (!mt_validate_rule(policy, name, action, ports, num_ports, matchers, num_matchers, err,
                        err_len)) {
    return 0;
  }
  mt_rule rule;
  memset(&rule, 0, sizeof(rule));
  if (!mt_reserve_rule(policy) ||
      !mt_copy_rule(&rule, name, action, ports, num_ports, matchers, num_matchers)) {
    mt_rule_dispose(&rule);
    MT_SET_ERR(err, err_len, "rule \"%s\": out of memory", name);
    return 0;
  }
  policy->rules[policy->num_rules++] = rule;
  policy->num_native++;
  return 1;
}

int mt_policy_add_istio_rule(mt_policy *policy, const mt_istio_rule_spec *spec, char *err,
                             size_t err_len) {
  if (policy == NULL || spec == NULL) {
    MT_SET_ERR(err, err_len, "no policy to add the rule to");
    return 0;
  }
  if (spec->name == NULL || spec->name[0] == '\0') {
    MT_SET_ERR(err, err_len, "rule has an empty name");
    return 0;
  }
  if (mt_find_rule(policy, spec->name) != NULL) {
    MT_SET_ERR(err, err_len, "rule \"%s\": duplicate rule name", spec->name);
    return 0;
  }
  if (spec->action != MT_ACTION_ALLOW && spec->action != MT_ACTION_DENY) {
    MT_SET_ERR(err, err_len, "rule \"%s\": unknown action", spec->name);
    return 0;
  }
  char why[256];
  mt_rule rule;
  memset(&rule, 0, sizeof(rule));
  rule.action = spec->action;
  rule.never_matches = spec->never_matches != 0;
  rule.match = mt_rule_match_new(spec, why, sizeof(why));
  if (rule.match == NULL) {
    MT_SET_ERR(err, err_len, "rule \"%s\": %s", spec->name, why);
    return 0;
  }
  rule.name = mt_strdup(spec->name);
  if (spec->reduced != NULL && spec->reduced[0] != '\0') rule.reduced = mt_strdup(spec->reduced);
  if (rule.name == NULL ||
      (spec->reduced != NULL && spec->reduced[0] != '\0' && rule.reduced == NULL) ||
      !mt_reserve_rule(policy)) {
    mt_rule_dispose(&rule);
    MT_SET_ERR(err, err_len, "rule \"%s\": out of memory", spec->name);
    return 0;
  }
  policy->rules[policy->num_rules++] = rule;
  return 1;
}

int mt_policy_add_allow_policy(mt_policy *policy, const char *name) {
  char **grown = realloc(policy->allow_policies, (policy->num_allow_policies + 1) * sizeof(*grown));
  if (grown == NULL) return 0;
  policy->allow_policies = grown;
  char *copy = mt_strdup(name);
  if (copy == NULL) return 0;
  policy->allow_policies[policy->num_allow_policies++] = copy;
  return 1;
}

int mt_policy_rule_note(const mt_policy *policy, size_t i, const char **name,
                        const char **reduced) {
  if (policy == NULL || i >= policy->num_rules) return 0;
  *name = policy->rules[i].name;
  *reduced = policy->rules[i].reduced;
  return 1;
}

size_t mt_policy_num_allow_policies(const mt_policy *policy) {
  return policy != NULL ? policy->num_allow_policies : 0;
}

const char *mt_policy_allow_policy(const mt_policy *policy, size_t i) {
  return policy != NULL && i < policy->num_allow_policies ? policy->allow_policies[i] : NULL;
}

/* ---- deciding ---------------------------------------------------------- */

/* The peer as the matchers see it: the full ID and its parsed parts, and
 * the request as Istio-form rules see it. */
typedef struct {
  const char *id; /* NULL: unauthenticated */
  size_t id_len;
  mt_spiffe_id_view view;
  mt_match_input in;
} mt_peer;

/* The namespace segment of a SPIFFE path "/ns/<ns>[/...]", or NULL. */
static const char *mt_path_namespace(const mt_spiffe_id_view *v, size_t *len) {
  const size_t pre = MT_NAMESPACE_PATH_PREFIX_LEN;
  if (v->path_len <= pre || memcmp(v->path, kMtNamespacePathPrefix, pre) != 0) return NULL;
  const char *ns = v->path + pre;
  const char *end = memchr(ns, '/', v->path_len - pre);
  *len = end != NULL ? (size_t)(end - ns) : v->path_len - pre;
  return *len > 0 ? ns : NULL;
}

/* Fills |peer| from |req|. Returns 0 when the peer ID is not a SPIFFE ID. */
static int mt_peer_init_request(mt_peer *peer, const mt_policy_request *req) {
  memset(peer, 0, sizeof(*peer));
  peer->in.peer_addr = req->peer_addr;
  peer->in.dest_addr = req->dest_addr;
  peer->in.port = req->port;
  if (req->peer_id == NULL) return 1;
  peer->id = req->peer_id;
  peer->id_len = strlen(req->peer_id);
  if (mt_spiffe_id_parse(peer->id, peer->id_len, &peer->view) != MT_SPIFFE_OK) return 0;
  peer->in.principal = peer->id + MT_SPIFFE_SCHEME_LEN;
  peer->in.principal_len = peer->id_len - MT_SPIFFE_SCHEME_LEN;
  peer->in.ns = mt_path_namespace(&peer->view, &peer->in.ns_len);
  return 1;
}

static int mt_rule_covers_port(const mt_rule *rule, uint16_t port) {
  if (rule->match != NULL) {
    return mt_rule_match_covers_port(rule->match, port);
  }
  if (rule->num_ports == 0) {
    return 1;
  }
  for (size_t i = 0; i < rule->num_ports; i++) {
    if (rule->ports[i] == port) {
      return 1;
    }
  }
  return 0;
}

/* "/ns/<ns>" exactly, or "/ns/<ns>/..." — so "prod" never matches
 * "/ns/production". */
static int mt_match_namespace(const mt_rule_matcher *m, const mt_spiffe_id_view *v) {
  const size_t pre = MT_NAMESPACE_PATH_PREFIX_LEN;
  if (v->path_len < pre + m->value_len || memcmp(v->path, kMtNamespacePathPrefix, pre) != 0 ||
      memcmp(v->path + pre, m->value, m->value_len) != 0) {
    return 0;
  }
  size_t end = pre + m->value_len;
  return v->path_len == end || v->path[end] == '/';
}

static int mt_matcher_matches(const mt_rule_matcher *m, const mt_peer *peer) {
  switch (m->kind) {
    case MT_MATCH_ANY: return 1;
    case MT_MATCH_EXACT:
      return peer->id_len == m->value_len && memcmp(peer->id, m->value, m->value_len) == 0;
    case MT_MATCH_PREFIX:
      return peer->id_len >= m->value_len && memcmp(peer->id, m->value, m->value_len) == 0;
    case MT_MATCH_NAMESPACE: return mt_match_namespace(m, &peer->view);
    case MT_MATCH_TRUST_DOMAIN:
      return peer->view.trust_domain_len == m->value_len &&
             memcmp(peer->view.trust_domain, m->value, m->value_len) == 0;
  }
  return 0;
}

/* Whether |rule| matches the request (the port included). A native rule
 * never matches an unauthenticated peer: those are handled before. */
static int mt_rule_matches(const mt_rule *rule, const mt_peer *peer) {
  if (rule->match != NULL) {
    return mt_rule_match_eval(rule->match, &peer->in);
  }
  if (peer->id == NULL || !mt_rule_covers_port(rule, peer->in.port)) {
    return 0;
  }
  for (size_t i = 0; i < rule->num_matchers; i++) {
    if (mt_matcher_matches(&rule->matchers[i], peer)) {
      return 1;
    }
  }
  return 0;
}

static mt_decision mt_make_decision(mt_action action, const char *rule, const char *reason) {
  mt_decision d;
  d.action = action;
  d.rule = rule;
  d.reason = reason;
  return d;
}

/* First matching rule of |action|, or NULL. Sets |*covered| when any rule
 * of that action covers the port. */
static const mt_rule *mt_first_match(const mt_policy *policy, mt_action action, const mt_peer *peer,
                                     int *covered) {
  *covered = 0;
  for (size_t i = 0; i < policy->num_rules; i++) {
    const mt_rule *rule = &policy->rules[i];
    if (rule->action != action) {
      continue;
    }
    if (mt_rule_covers_port(rule, peer->in.port)) {
      *covered = 1;
    }
    if (mt_rule_matches(rule, peer)) {
      return rule;
    }
  }
  return NULL;
}

/* An unauthenticated peer on a port a native rule covers: that rule speaks
 * about identities the peer cannot prove, so it denies (fail closed). */
static const mt_rule *mt_native_rule_covering(const mt_policy *policy, uint16_t port) {
  for (size_t i = 0; policy->num_native > 0 && i < policy->num_rules; i++) {
    const mt_rule *rule = &policy->rules[i];
    if (rule->match == NULL && mt_rule_covers_port(rule, port)) {
      return rule;
    }
  }
  return NULL;
}

static mt_decision mt_decide_peer(const mt_policy *policy, const mt_peer *peer) {
  if (peer->id == NULL) {
    const mt_rule *native = mt_native_rule_covering(policy, peer->in.port);
    if (native != NULL) {
      return mt_make_decision(MT_ACTION_DENY, native->name,
                              "rule needs a peer identity; the peer is unauthenticated");
    }
  }
  int covered;
  const mt_rule *rule = mt_first_match(policy, MT_ACTION_DENY, peer, &covered);
  if (rule != NULL) {
    return mt_make_decision(MT_ACTION_DENY, rule->name, "matched DENY rule");
  }
  rule = mt_first_match(policy, MT_ACTION_ALLOW, peer, &covered);
  if (rule != NULL) {
    return mt_make_decision(MT_ACTION_ALLOW, rule->name, "matched ALLOW rule");
  }
  if (policy->num_allow_policies > 0 && policy->default_action == MT_ACTION_DENY) {
    return mt_make_decision(MT_ACTION_DENY, MT_POLICY_RULE_NO_ALLOW_MATCH,
                            "ALLOW policies select this workload and none of their rules matched");
  }
  if (covered) {
    return mt_make_decision(MT_ACTION_DENY, MT_POLICY_RULE_NO_ALLOW_MATCH,
                            "no ALLOW rule matched for this port");
  }
  return mt_make_decision(policy->default_action, MT_POLICY_RULE_DEFAULT,
                          peer->id != NULL ? "no ALLOW rule covers this port; default action"
                                           : "no rule covers this port; default action");
}

mt_decision mt_policy_evaluate(const mt_policy *policy, const mt_policy_request *req) {
  /* The caller promises a verified ID; if that promise is broken, fail
   * closed rather than let matchers guess at a malformed string. */
  if (policy == NULL || req == NULL) {
    return mt_make_decision(MT_ACTION_DENY, kMtRuleInvalidPeer, "no policy");
  }
  mt_peer peer;
  if (!mt_peer_init_request(&peer, req)) {
    return mt_make_decision(MT_ACTION_DENY, kMtRuleInvalidPeer, "peer ID is not a valid SPIFFE ID");
  }
  return mt_decide_peer(policy, &peer);
}

mt_decision mt_policy_decide(const mt_policy *policy, const char *peer_id, uint16_t port) {
  if (policy == NULL || peer_id == NULL) {
    return mt_make_decision(MT_ACTION_DENY, kMtRuleInvalidPeer, "no policy or no peer ID");
  }
  mt_policy_request req = {peer_id, NULL, NULL, port};
  return mt_policy_evaluate(policy, &req);
}

mt_decision mt_policy_decide_unauthenticated(const mt_policy *policy, uint16_t port) {
  mt_policy_request req = {NULL, NULL, NULL, port};
  return mt_policy_evaluate(policy, &req);
}

/* ---- explaining -------------------------------------------------------- */

/* Where a trace's rules take their matcher, clause and field traces from. */
typedef struct {
  mt_matcher_trace *matchers;
  mt_clause_trace *clauses;
  mt_field_trace *fields;
} mt_trace_storage;

/* Appends the trace of rule |position|. |peer| is NULL when nothing can be
 * evaluated (an invalid peer ID). Uses the predicates the decision uses. */
static void mt_trace_rule(mt_policy_trace *trace, const mt_policy *policy, size_t position,
                          const mt_peer *peer, uint16_t port, mt_trace_storage *storage) {
  const mt_rule *rule = &policy->rules[position];
  mt_rule_trace *out = &trace->rules[trace->num_rules++];
  memset(out, 0, sizeof(*out));
  int native_evaluated = peer != NULL && peer->id != NULL;
  mt_matcher_trace *matchers = storage->matchers;
  for (size_t i = 0; i < rule->num_matchers; i++) {
    matchers[i].kind = rule->matchers[i].kind;
    matchers[i].value = rule->matchers[i].value;
    matchers[i].matches = native_evaluated && mt_matcher_matches(&rule->matchers[i], peer);
  }
  storage->matchers += rule->num_matchers;
  out->name = rule->name;
  out->action = rule->action;
  out->position = position;
  out->ports = rule->ports;
  out->num_ports = rule->num_ports;
  out->covers_port = mt_rule_covers_port(rule, port);
  out->matchers = matchers;
  out->num_matchers = rule->num_matchers;
  if (rule->match != NULL) {
    size_t num_clauses, num_fields;
    mt_rule_match_trace_size(rule->match, &num_clauses, &num_fields);
    mt_rule_match_trace(rule->match, peer != NULL ? &peer->in : NULL, storage->clauses,
                        storage->fields);
    out->istio = 1;
    out->never_matches = rule->never_matches;
    out->reduced = rule->reduced;
    out->clauses = storage->clauses;
    out->num_clauses = num_clauses;
    storage->clauses += num_clauses;
    storage->fields += num_fields;
    out->matches_peer = peer != NULL && mt_rule_match_eval(rule->match, &peer->in);
  } else {
    /* A native rule's "peer matches" ignores the port: some matcher does. */
    for (size_t i = 0; i < rule->num_matchers; i++) {
      out->matches_peer |= matchers[i].matches;
    }
  }
  /* Decisions borrow rule names, so identity (not spelling) tells which
   * rule decided: a rule named "default" never takes the default's credit. */
  out->decided = trace->decision.rule == rule->name;
}

/* Lists the rules in the order the deciding function consults them. */
static void mt_trace_rules(mt_policy_trace *trace, const mt_policy *policy, const mt_peer *peer,
                           int position_order, uint16_t port, mt_trace_storage *storage) {
  if (position_order) {
    for (size_t i = 0; i < policy->num_rules; i++) {
      mt_trace_rule(trace, policy, i, peer, port, storage);
    }
    return;
  }
  static const mt_action kOrder[] = {MT_ACTION_DENY, MT_ACTION_ALLOW};
  for (size_t a = 0; a < sizeof(kOrder) / sizeof(kOrder[0]); a++) {
    for (size_t i = 0; i < policy->num_rules; i++) {
      if (policy->rules[i].action == kOrder[a]) {
        mt_trace_rule(trace, policy, i, peer, port, storage);
      }
    }
  }
}

int mt_policy_trace_request(mt_policy_trace *trace, const mt_policy *policy,
                            const mt_policy_request *req) {
  memset(trace, 0, sizeof(*trace));
  trace->decision = mt_policy_evaluate(policy, req);
  trace->default_action = policy != NULL ? policy->default_action : MT_ACTION_DENY;
  if (policy == NULL || policy->num_rules == 0) {
    return 1;
  }
  mt_peer peer;
  int valid = mt_peer_init_request(&peer, req);
  trace->peer_evaluated = req->peer_id != NULL && valid;
  size_t num_matchers = 0, num_clauses = 0, num_fields = 0;
  for (size_t i = 0; i < policy->num_rules; i++) {
    num_matchers += policy->rules[i].num_matchers;
    if (policy->rules[i].match != NULL) {
      size_t c, f;
      mt_rule_match_trace_size(policy->rules[i].match, &c, &f);
      num_clauses += c;
      num_fields += f;
    }
  }
  trace->rules = calloc(policy->num_rules, sizeof(*trace->rules));
  trace->matcher_storage = calloc(num_matchers + 1, sizeof(*trace->matcher_storage));
  trace->clause_storage = calloc(num_clauses + 1, sizeof(*trace->clause_storage));
  trace->field_storage = calloc(num_fields + 1, sizeof(*trace->field_storage));
  if (trace->rules == NULL || trace->matcher_storage == NULL || trace->clause_storage == NULL ||
      trace->field_storage == NULL) {
    mt_policy_trace_dispose(trace);
    return 0;
  }
  mt_trace_storage storage = {trace->matcher_storage, trace->clause_storage, trace->field_storage};
  /* Native rules judge an unauthenticated peer in policy order. */
  int position_order = req->peer_id == NULL && policy->num_native > 0;
  mt_trace_rules(trace, policy, valid ? &peer : NULL, position_order, req->port, &storage);
  return 1;
}

int mt_policy_trace_init(mt_policy_trace *trace, const mt_policy *policy, const char *peer_id,
                         uint16_t port) {
  mt_policy_request req = {peer_id, NULL, NULL, port};
  return mt_policy_trace_request(trace, policy, &req);
}

void mt_policy_trace_dispose(mt_policy_trace *trace) {
  if (trace == NULL) {
    return;
  }
  free(trace->rules);
  free(trace->matcher_storage);
  free(trace->clause_storage);
  free(trace->field_storage);
  trace->rules = NULL;
  trace->matcher_storage = NULL;
  trace->clause_storage = NULL;
  trace->field_storage = NULL;
  trace->num_rules = 0;
}
