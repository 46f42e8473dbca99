/* explain: why the inbound policy allows or denies a peer on a port, for a
 * person debugging a denial (`mtlsd explain`) and, later, the admin endpoint.
 *
 * The answer is the data path's own: the decision comes from policy.h
 * (mt_policy_evaluate) and the per-rule detail from
 * mt_policy_trace_request, never from matching code of this module's own.
 * Plaintext on a port that is not permissive is refused before policy, as
 * inbound.c does; the explanation says so.
 *
 * Rendering writes into a caller's buffer (no FILE*, no allocation beyond
 * the trace), so any front end can reuse it. Only mt_explain_main prints. */
#ifndef MT_EXPLAIN_H
#define MT_EXPLAIN_H

#include <stddef.h>
#include <stdint.h>

#include <sys/socket.h>

#include "agent/policy.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What to explain, and the facts about the port that live outside the
 * policy. Strings are borrowed for the call. */
typedef struct {
  const char *source;  /* where the policy came from, e.g. the config path */
  const char *version; /* its version: "static" for a config file's policy */
  int may_be_replaced; /* a control-plane Watch may give the agent a different policy */
  int live;            /* the policy the running agent enforces (admin endpoint) */
  const char *peer_id; /* the peer's SPIFFE ID; NULL for an unauthenticated (plaintext) peer */
  uint16_t port;       /* destination (app) port */
  int permissive;      /* |port| admits plaintext */
  /* Why |permissive| is what it is: NULL when it comes from the static
   * inbound.permissive_ports, else the PeerAuthentication mode in force
   * ("STRICT", ...) and where it came from ("ns/name", "default"). */
  const char *mtls_mode;
  const char *mtls_source;
  /* The peer's address and the address it connected to (ipBlocks,
   * source.ip, destination.ip); NULL: unknown (ipBlocks never match). */
  const struct sockaddr *peer_addr;
  const struct sockaddr *dest_addr;
} mt_explain_query;

/* The agent's decision for |query| under |policy|. Plaintext on a strict
 * port is denied with the rule "" (no rule: policy is never consulted). */
mt_decision mt_explain_decide(const mt_policy *policy, const mt_explain_query *query);

/* Writes the explanation -- human-readable text, or one JSON object (with
 * "decision", "rule", "reason" and "rules") when |json| is set -- into
 * |buf|, NUL-terminated and cut to fit |len| like snprintf. Returns the full
 * length (a value >= |len| means it was cut), or -1 when out of memory. */
int mt_explain_render(const mt_policy *policy, const mt_explain_query *query, int json, char *buf,
                      size_t len);

/* `mtlsd explain --config FILE (--peer SPIFFE_ID | --plaintext) --port PORT
 * [--source-ip IP] [--json]`: loads FILE as the agent does and explains its
 * static policy; `mtlsd explain --admin IP:PORT [--workload IP] ...` asks a
 * running agent's admin endpoint (GET /policy?...) about the policy in
 * force, which the control plane may have pushed (Istio policies). argv[0]
 * is "explain". Returns the exit status: 0 allowed, 1 denied, 2 usage,
 * config or connection error (printed to stderr). */
int mt_explain_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif /* MT_EXPLAIN_H */
