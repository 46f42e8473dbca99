/* policy_match: the L4 match of one Istio-form rule (an AuthorizationPolicy
 * rule: from[].source, to[].operation, when[]), compiled once from its
 * text (wildcards split, CIDRs parsed, condition keys resolved) and then
 * immutable, so worker threads evaluate it without locks. Semantics in
 * policy.h ("Istio-form rules"); this module is their only implementation,
 * used by both the decision and its explanation. */
#ifndef MT_POLICY_MATCH_H
#define MT_POLICY_MATCH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "agent/policy.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_rule_match mt_rule_match;

/* Compiles the match part of |spec| (name, action and notes are the
 * caller's). Returns NULL with the reason in |err|, naming the clause
 * ("from[1].source.ipBlocks: '10.0.0.1/8' has address bits set ..."). */
mt_rule_match *mt_rule_match_new(const mt_istio_rule_spec *spec, char *err, size_t err_len);
void mt_rule_match_free(mt_rule_match *match); /* accepts NULL */

/* The request as the matchers see it. Borrowed for the call. */
typedef struct {
  const char *principal; /* the peer ID without "spiffe://"; NULL: unauthenticated */
  size_t principal_len;
  const char *ns; /* the ID's /ns/<ns>/ segment; NULL: it has none (or no ID) */
  size_t ns_len;
  const struct sockaddr *peer_addr; /* NULL: unknown */
  const struct sockaddr *dest_addr; /* NULL: unknown */
  uint16_t port;
} mt_match_input;

/* 1 when the rule matches |in| (0 when it was compiled never_matches). */
int mt_rule_match_eval(const mt_rule_match *match, const mt_match_input *in);

/* 1 when some operation admits |port| (or there is none). */
int mt_rule_match_covers_port(const mt_rule_match *match, uint16_t port);

/* ---- explaining ---- */

/* How many clauses (sources + operations + conditions) and fields (the
 * non-empty lists in them) the match has: the sizes mt_rule_match_trace
 * needs. */
void mt_rule_match_trace_size(const mt_rule_match *match, size_t *num_clauses, size_t *num_fields);

/* Fills |clauses| and |fields| (sized as above) with what each clause and
 * field of the match says about |in| (NULL |in|: nothing evaluated, every
 * `matches` 0). Values are borrowed from |match|. */
void mt_rule_match_trace(const mt_rule_match *match, const mt_match_input *in,
                         mt_clause_trace *clauses, mt_field_trace *fields);

#ifdef __cplusplus
}
#endif

#endif /* MT_POLICY_MATCH_H */
