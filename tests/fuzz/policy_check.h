/* What the istio_policy and policy_proto fuzz targets share: building an
 * agent policy from a mesh.proto Policy the way an agent does, and one
 * request decided and traced, with the oracles every decision must meet.
 * Header-only (static functions): each target is one translation unit. */
#ifndef MT_TESTS_FUZZ_POLICY_CHECK_H
#define MT_TESTS_FUZZ_POLICY_CHECK_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "agent/policy.h"
#include "agent/policy_proto.h"
#include "proto/mtlsd/mesh.pb-c.h"

#define FUZZ_CHECK(cond)                                                             \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      fprintf(stderr, "invariant failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                                       \
    }                                                                                \
  } while (0)

/* A NUL-terminated, non-empty message within |len| bytes. */
static int fuzz_is_message(const char *s, size_t len) {
  return memchr(s, '\0', len) != NULL && s[0] != '\0';
}

/* "a.b.c.d" or "v6" and a port into |ss|; 0 when |text| is neither. */
static int fuzz_sockaddr(const char *text, uint16_t port, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof(*ss));
  struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
  if (inet_pton(AF_INET, text, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    return 1;
  }
  if (inet_pton(AF_INET6, text, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    return 1;
  }
  return 0;
}

/* Whether |name| is one of |policy|'s rules. */
static int fuzz_names_a_rule(const mt_policy *policy, const char *name) {
  const char *rule, *reduced;
  for (size_t i = 0; mt_policy_rule_note(policy, i, &rule, &reduced); i++)
    if (strcmp(rule, name) == 0) return 1;
  return 0;
}

/* Decides |req| under |policy| and traces it; the decision names a rule of
 * the policy or one of policy.h's own names, the trace agrees with it (one
 * rule decided, of the decision's action but for a native rule facing a
 * peer without an identity, exactly when a rule decided),
 * and a request without addresses decides as mt_policy_decide(_unauth.)
 * does. */
static void fuzz_decide(const mt_policy *policy, const mt_policy_request *req) {
  mt_decision d = mt_policy_evaluate(policy, req);
  FUZZ_CHECK(d.rule != NULL && d.rule[0] != '\0' && d.reason != NULL && d.reason[0] != '\0');
  FUZZ_CHECK(d.action == MT_ACTION_ALLOW || d.action == MT_ACTION_DENY);
  int by_rule = fuzz_names_a_rule(policy, d.rule);
  FUZZ_CHECK(by_rule || strcmp(d.rule, MT_POLICY_RULE_DEFAULT) == 0 ||
             strcmp(d.rule, MT_POLICY_RULE_NO_ALLOW_MATCH) == 0 ||
             strcmp(d.rule, MT_POLICY_RULE_INVALID_PEER) == 0);
  if (!by_rule && (strcmp(d.rule, MT_POLICY_RULE_NO_ALLOW_MATCH) == 0 ||
                   strcmp(d.rule, MT_POLICY_RULE_INVALID_PEER) == 0))
    FUZZ_CHECK(d.action == MT_ACTION_DENY);

  mt_policy_trace trace;
  FUZZ_CHECK(mt_policy_trace_request(&trace, policy, req) == 1);
  FUZZ_CHECK(trace.decision.action == d.action && strcmp(trace.decision.rule, d.rule) == 0);
  FUZZ_CHECK(trace.num_rules == mt_policy_rule_count(policy));
  size_t decided = 0;
  for (size_t i = 0; i < trace.num_rules; i++) {
    const mt_rule_trace *r = &trace.rules[i];
    FUZZ_CHECK(r->name != NULL && r->position < mt_policy_rule_count(policy));
    for (size_t c = 0; c < r->num_clauses; c++) {
      const mt_clause_trace *ct = &r->clauses[c];
      FUZZ_CHECK(ct->kind != NULL && (ct->num_fields == 0 || ct->fields != NULL));
      for (size_t f = 0; f < ct->num_fields; f++)
        FUZZ_CHECK(ct->fields[f].field != NULL && ct->fields[f].num_values > 0);
    }
    if (r->decided) {
      decided++;
      FUZZ_CHECK(strcmp(r->name, d.rule) == 0);
      /* A native rule covering the port denies a peer without an identity
       * whatever its action (policy.h: it fails closed); otherwise the
       * deciding rule's action is the decision's. */
      FUZZ_CHECK(r->action == d.action ||
                 (req->peer_id == NULL && !r->istio && d.action == MT_ACTION_DENY));
    }
  }
  /* A rule may carry one of policy.h's own names ("default", ...): the
   * agent accepts that, so a decision by that name may be either. */
  int reserved = strcmp(d.rule, MT_POLICY_RULE_DEFAULT) == 0 ||
                 strcmp(d.rule, MT_POLICY_RULE_NO_ALLOW_MATCH) == 0 ||
                 strcmp(d.rule, MT_POLICY_RULE_INVALID_PEER) == 0;
  FUZZ_CHECK(reserved ? decided <= 1 : decided == (size_t)(by_rule && trace.num_rules > 0));
  mt_policy_trace_dispose(&trace);

  if (req->peer_addr == NULL && req->dest_addr == NULL) {
    mt_decision plain = req->peer_id != NULL ? mt_policy_decide(policy, req->peer_id, req->port)
                                             : mt_policy_decide_unauthenticated(policy, req->port);
    FUZZ_CHECK(plain.action == d.action && strcmp(plain.rule, d.rule) == 0);
  }
}

#endif /* MT_TESTS_FUZZ_POLICY_CHECK_H */
