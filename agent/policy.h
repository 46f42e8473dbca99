/* policy: compiled ALLOW/DENY rules over peer SPIFFE IDs and destination ports.
 *
 * Built once (from config) and then immutable, so every worker thread reads it
 * without locks. Evaluation order (Istio AuthorizationPolicy semantics, L4):
 *   1. a DENY rule that covers the port and matches the peer -> deny;
 *   2. if any ALLOW rule covers the port: allow iff one matches, else deny
 *      (rule name MT_POLICY_RULE_NO_ALLOW_MATCH);
 *   3. no ALLOW rule covers the port -> the policy's default action
 *      (rule name MT_POLICY_RULE_DEFAULT).
 * Every decision names the rule that made it. */
#ifndef MT_POLICY_H
#define MT_POLICY_H

#include <stddef.h>
#include <stdint.h>

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

const char *mt_action_str(mt_action action); /* "allow" / "deny" */

#ifdef __cplusplus
}
#endif

#endif /* MT_POLICY_H */
