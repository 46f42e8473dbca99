/* policy: compiled ALLOW/DENY rules over peer SPIFFE IDs and destination ports.
 *
 * Built once (from config) and then immutable, so every worker thread reads it
 * without locks. Evaluation order (Istio AuthorizationPolicy semantics, L4):
 *   1. a DENY rule that covers the port and matches the peer -> deny;
 *   2. if any ALLOW rule covers the port: allow iff one matches, else deny
 *      (rule name MT_POLICY_RULE_NO_ALLOW_MATCH);
 *   3. no ALLOW rule covers the port -> the policy's default action
 *      (rule name MT_POLICY_RULE_DEFAULT).
 * Every decision names the rule that made it.
 *
 * For explaining a decision (`mtlsd explain`), mt_policy_trace_init reports
 * what the decision saw, rule by rule, using the same matching code; its
 * decision is the one mt_policy_decide (or _unauthenticated) returns, so an
 * explanation never disagrees with the data path. */
#ifndef MT_POLICY_H
#define MT_POLICY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MT_POLICY_RULE_NO_ALLOW_MATCH "no-allow-rule-matched"
#define MT_POLICY_RULE_DEFAULT "default"
/* A NULL policy or an unparsable peer ID is denied (fail closed) under this name. */
#define MT_POLICY_RULE_INVALID_PEER "invalid-peer-id"

typedef enum { MT_ACTION_ALLOW, MT_ACTION_DENY } mt_action;

typedef enum {
  MT_MATCH_ANY,          /* any authenticated peer */
  MT_MATCH_EXACT,        /* value: a full SPIFFE ID */
  MT_MATCH_PREFIX,       /* value: "spiffe://td/ns/prod/" (the '*' already removed) */
  MT_MATCH_NAMESPACE,    /* value: "prod" (matches the ID path "/ns/prod/...") */
  MT_MATCH_TRUST_DOMAIN, /* value: "example.org" */
} mt_match_kind;

typedef struct {
  mt_match_kind kind;
  const char *value; /* copied by mt_policy_add_rule; NULL for MT_MATCH_ANY */
} mt_matcher;

typedef struct mt_policy mt_policy;

/* |default_action| applies to ports that no ALLOW rule covers. */
mt_policy *mt_policy_new(mt_action default_action);
void mt_policy_free(mt_policy *policy); /* accepts NULL */

/* Adds a rule. It matches when the destination port is one of |ports| (all
 * ports when |num_ports| is 0) and the peer matches ANY of |matchers|.
 * Strings are copied. Returns 1, or 0 with a message in |err| (rule without
 * matchers, empty name, duplicate name, malformed matcher value). */
int mt_policy_add_rule(mt_policy *policy, const char *name, mt_action action, const uint16_t *ports,
                       size_t num_ports, const mt_matcher *matchers, size_t num_matchers, char *err,
                       size_t err_len);

typedef struct {
  mt_action action;
  const char *rule;   /* borrowed from the policy (or a static name) */
  const char *reason; /* static text: "matched DENY rule", ... */
} mt_decision;

/* Decides for an already verified |peer_id| connecting to |port|. */
mt_decision mt_policy_decide(const mt_policy *policy, const char *peer_id, uint16_t port);

/* Decides for a peer without an identity (plaintext on a permissive port).
 * Fails closed: any rule covering |port| -- ALLOW or DENY -- speaks about
 * identities an unauthenticated peer cannot prove, so it denies (naming that
 * rule); otherwise the default action applies. */
mt_decision mt_policy_decide_unauthenticated(const mt_policy *policy, uint16_t port);

size_t mt_policy_rule_count(const mt_policy *policy);

/* ---- Istio-form rules (an AuthorizationPolicy rule at L4) ----------------
 *
 * Semantics (proto/mtlsd/mesh.proto, Rule, Source, Operation, Condition):
 * the rule matches when some source matches (or there is none), some
 * operation matches (or there is none) and every condition matches. In a
 * source every non-empty field must match, a field by any of its values,
 * a not_ field by none. Principals and namespaces take Istio's wildcards:
 * "*" (present), "prefix*", "*suffix", else exact; a principal is the peer
 * ID without "spiffe://", a namespace the ID's /ns/<ns>/ segment. An
 * unauthenticated peer (plaintext) has neither: positive principal and
 * namespace values never match it, not_ values always do. An unknown peer
 * address matches no ip_block and every not_ip_block.
 *
 * Decisions: a DENY Istio rule is consulted with the DENY rules, an ALLOW
 * one with the ALLOW rules, for authenticated and unauthenticated peers
 * alike (unlike native rules, which deny any unauthenticated peer on a
 * port they cover). An Istio ALLOW rule "covers" a port when one of its
 * operations admits it (or it has none). */

typedef struct {
  const char *const *principals;
  size_t num_principals;
  const char *const *not_principals;
  size_t num_not_principals;
  const char *const *namespaces;
  size_t num_namespaces;
  const char *const *not_namespaces;
  size_t num_not_namespaces;
  const char *const *ip_blocks; /* "a.b.c.d[/n]", "v6[/n]", host bits zero */
  size_t num_ip_blocks;
  const char *const *not_ip_blocks;
  size_t num_not_ip_blocks;
} mt_source_spec;

typedef struct {
  const uint16_t *ports;
  size_t num_ports;
  const uint16_t *not_ports;
  size_t num_not_ports;
} mt_operation_spec;

/* Keys: MT_CONDITION_* below; values as the matching source / operation
 * field takes them (destination.port: decimal ports). */
#define MT_CONDITION_SOURCE_IP "source.ip"
#define MT_CONDITION_SOURCE_NAMESPACE "source.namespace"
#define MT_CONDITION_SOURCE_PRINCIPAL "source.principal"
#define MT_CONDITION_DESTINATION_IP "destination.ip"
#define MT_CONDITION_DESTINATION_PORT "destination.port"

typedef struct {
  const char *key;
  const char *const *values;
  size_t num_values;
  const char *const *not_values;
  size_t num_not_values;
} mt_condition_spec;

typedef struct {
  const char *name; /* e.g. "default/backend-allow[0]"; unique in the policy */
  mt_action action;
  const mt_source_spec *sources;
  size_t num_sources;
  const mt_operation_spec *operations;
  size_t num_operations;
  const mt_condition_spec *conditions;
  size_t num_conditions;
  const char *reduced; /* why the control plane changed it; NULL or "" when it did not */
  int never_matches;   /* matches nothing (an ALLOW rule that needed HTTP) */
} mt_istio_rule_spec;

/* Adds an Istio-form rule (everything copied). Returns 1, or 0 with the
 * reason in |err| (empty or duplicate name, unknown action, an empty
 * value, a principal with "spiffe://", a malformed CIDR, port 0, an
 * unknown condition key, a condition without values). */
int mt_policy_add_istio_rule(mt_policy *policy, const mt_istio_rule_spec *spec, char *err,
                             size_t err_len);

/* Records an ALLOW policy ("ns/name") that selects the workload, so that
 * a denial for want of a matching ALLOW rule can name it. Returns 0 when
 * out of memory. */
int mt_policy_add_allow_policy(mt_policy *policy, const char *name);
size_t mt_policy_num_allow_policies(const mt_policy *policy);
const char *mt_policy_allow_policy(const mt_policy *policy, size_t i);

/* Rule |i| (position order): its name, and why the control plane reduced
 * it for L4 (NULL when it did not). 0 when |i| is out of range. */
int mt_policy_rule_note(const mt_policy *policy, size_t i, const char **name, const char **reduced);

/* What a decision looks at. Borrowed for the call. */
typedef struct {
  const char *peer_id;              /* verified SPIFFE ID; NULL: unauthenticated */
  const struct sockaddr *peer_addr; /* the peer's address; NULL: unknown */
  const struct sockaddr *dest_addr; /* where it connected; NULL: unknown */
  uint16_t port;                    /* destination (app) port */
} mt_policy_request;

/* The one decision function: mt_policy_decide and _unauthenticated are
 * this with only a peer ID (or none) and a port. */
mt_decision mt_policy_evaluate(const mt_policy *policy, const mt_policy_request *request);

/* ---- explaining a decision (read-only) ---- */

typedef struct {
  mt_match_kind kind;
  const char *value; /* borrowed from the policy; NULL for MT_MATCH_ANY;
                        a prefix without its '*' */
  int matches;       /* the peer matches it; 0 when the peer was not evaluated */
} mt_matcher_trace;

/* An Istio-form rule's clause, for explaining: one source ("from"), one
 * operation ("to") or one condition ("when"), and its non-empty fields. */
typedef struct {
  const char *field;         /* "principals", "notIpBlocks", "ports", a when key, ... */
  int negated;               /* a not_ field (or a when's notValues) */
  const char *const *values; /* as written; borrowed from the policy */
  size_t num_values;
  int matches; /* the field holds (a not_ field: no value matched) */
} mt_field_trace;

typedef struct {
  const char *kind; /* "from", "to" or "when" */
  size_t index;     /* within its kind */
  int matches;      /* every field holds */
  const mt_field_trace *fields;
  size_t num_fields;
} mt_clause_trace;

typedef struct {
  const char *name; /* borrowed from the policy */
  mt_action action;
  size_t position;       /* 0-based, in the order the rules were added */
  const uint16_t *ports; /* borrowed; NULL when the rule covers every port */
  size_t num_ports;
  int covers_port;                  /* the traced port is one of |ports| (or every port is) */
  int matches_peer;                 /* some matcher matches, whether or not the port is covered */
  int decided;                      /* this rule is the decision's rule */
  const mt_matcher_trace *matchers; /* owned by the trace, in the rule's order */
  size_t num_matchers;
  /* Istio-form rules (native rules: istio 0, the rest empty). */
  int istio;
  int never_matches;
  const char *reduced;            /* NULL when the control plane did not change the rule */
  const mt_clause_trace *clauses; /* owned by the trace: from..., to..., when... */
  size_t num_clauses;
} mt_rule_trace;

/* Embeddable; filled by mt_policy_trace_init, released by _dispose. */
typedef struct {
  mt_decision decision; /* what mt_policy_decide(_unauthenticated) returns */
  mt_action default_action;
  int peer_evaluated;   /* a peer ID that parses as a SPIFFE ID: matchers were run */
  mt_rule_trace *rules; /* every rule, in evaluation order (below) */
  size_t num_rules;
  mt_matcher_trace *matcher_storage; /* private: behind rules[].matchers */
  mt_clause_trace *clause_storage;   /* private: behind rules[].clauses */
  mt_field_trace *field_storage;     /* private: behind the clauses' fields */
} mt_policy_trace;

/* Traces the decision for |peer_id| on |port|; a NULL |peer_id| traces
 * mt_policy_decide_unauthenticated. Evaluation order: for a peer ID, every
 * DENY rule, then every ALLOW rule, each group by position; for an
 * unauthenticated peer, all rules by position. An unparsable peer ID is
 * decided MT_POLICY_RULE_INVALID_PEER and no matcher is evaluated. The trace
 * borrows from |policy|: dispose of it first. Returns 1, or 0 when out of
 * memory (the trace then holds the decision but no rules). */
int mt_policy_trace_init(mt_policy_trace *trace, const mt_policy *policy, const char *peer_id,
                         uint16_t port);
/* The same for a whole request (addresses too): what mt_policy_evaluate
 * decides. */
int mt_policy_trace_request(mt_policy_trace *trace, const mt_policy *policy,
                            const mt_policy_request *request);
void mt_policy_trace_dispose(mt_policy_trace *trace); /* accepts NULL */

const char *mt_action_str(mt_action action); /* "allow" / "deny" */
/* The config key that writes |kind| ("id", "prefix", "namespace",
 * "trust_domain", "any"), so messages and reports read like the YAML. */
const char *mt_match_kind_key(mt_match_kind kind);

#ifdef __cplusplus
}
#endif

#endif /* MT_POLICY_H */
