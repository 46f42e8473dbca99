/* node_auth.c: the CreateCertificate identity decision. See node_auth.h. */
#include "controlplane/node_auth.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "agent/svid.h"

enum { SHOWN_MAX = 128 }; /* bytes of untrusted text quoted in a message */

/* |s| for a message: at most SHOWN_MAX bytes, anything but printable ASCII
 * (and '"', '\\') turned into '?', "..." when cut. |out| holds SHOWN_MAX + 4. */
static const char *shown(const char *s, char out[SHOWN_MAX + 4]) {
  size_t len = strlen(s);
  size_t n = len < SHOWN_MAX ? len : SHOWN_MAX;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    out[i] = (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? (char)c : '?';
  }
  snprintf(out + n, 4, "%s", len > n ? "..." : "");
  return out;
}

static void decide(mt_node_auth_decision *out, mt_grpc_status status, const char *reason,
                   const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void decide(mt_node_auth_decision *out, mt_grpc_status status, const char *reason,
                   const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  out->status = status;
  out->reason = reason;
  vsnprintf(out->message, sizeof(out->message), fmt, ap);
  va_end(ap);
}

static int is_node_agent(const mt_node_auth_policy *p, const char *id) {
  for (size_t i = 0; i < p->num_node_agents; i++)
    if (strcmp(p->node_agents[i], id) == 0) return 1;
  return 0;
}

/* Step 3: a workload identity in the CA's trust domain. Returns 1, or 0
 * with the refusal set. */
static int check_requested_id(const mt_node_auth_policy *p, const char *id,
                              mt_node_auth_decision *out) {
  char quoted[SHOWN_MAX + 4];
  mt_spiffe_id_view view;
  mt_spiffe_err rc = mt_spiffe_id_parse(id, strlen(id), &view);
  if (rc != MT_SPIFFE_OK) {
    decide(out, MT_GRPC_INVALID_ARGUMENT, "bad_impersonated_identity",
           "%s \"%s\" is not a valid SPIFFE ID: %s", MT_NODE_AUTH_IMPERSONATION_KEY,
           shown(id, quoted), mt_spiffe_err_str(rc));
    return 0;
  }
  size_t td_len = strlen(p->trust_domain);
  if (view.trust_domain_len != td_len || memcmp(view.trust_domain, p->trust_domain, td_len) != 0) {
    decide(out, MT_GRPC_INVALID_ARGUMENT, "bad_impersonated_identity",
           "%s %s is not in this CA's trust domain %s", MT_NODE_AUTH_IMPERSONATION_KEY,
           shown(id, quoted), p->trust_domain);
    return 0;
  }
  if (view.path_len == 0) {
    decide(out, MT_GRPC_INVALID_ARGUMENT, "bad_impersonated_identity",
           "%s %s has no path (a workload identity needs one)", MT_NODE_AUTH_IMPERSONATION_KEY,
           shown(id, quoted));
    return 0;
  }
  return 1;
}

/* Rules 1 and 2: a node agent whose token names its node. |what| is what
 * it asked for, |use| what needs the claim, both for the messages. Returns
 * 1, or 0 with the refusal set. */
static int check_node_agent(const mt_node_auth_policy *p, const mt_node_auth_request *r,
                            const char *what, const char *use, mt_node_auth_decision *out) {
  char quoted[SHOWN_MAX + 4];
  if (!is_node_agent(p, r->caller_id)) {
    decide(out, MT_GRPC_PERMISSION_DENIED, "not_node_agent",
           "caller %s is not a node agent (node_agents), so it may not ask for %s", r->caller_id,
           what);
    return 0;
  }
  const char *node = r->caller_node != NULL ? r->caller_node : "";
  if (node[0] == '\0') {
    decide(out, MT_GRPC_PERMISSION_DENIED, "no_node_claim",
           "the token of node agent %s has no node name claim (kubernetes.io.node.name); "
           "%s needs a token bound to a pod on a node",
           r->caller_id, use);
    return 0;
  }
  if (!mt_node_name_valid(node)) {
    decide(out, MT_GRPC_PERMISSION_DENIED, "bad_node_claim",
           "the node name claim of node agent %s is not a valid Kubernetes node name: \"%s\"",
           r->caller_id, shown(node, quoted));
    return 0;
  }
  return 1;
}

void mt_node_auth_decide(const mt_node_auth_policy *p, const mt_node_auth_request *r,
                         mt_node_auth_decision *out) {
  char quoted[SHOWN_MAX + 4];
  memset(out, 0, sizeof(*out));
  if (r->impersonated_id == NULL) {
    decide(out, MT_GRPC_OK, "ok", "%s", "");
    out->identity = r->caller_id;
    return;
  }
  char what[SHOWN_MAX + 96];
  snprintf(what, sizeof(what), "a certificate of another identity (%s %s)",
           MT_NODE_AUTH_IMPERSONATION_KEY, shown(r->impersonated_id, quoted));
  if (!check_node_agent(p, r, what, "impersonation", out)) return;
  const char *node = r->caller_node;
  if (!check_requested_id(p, r->impersonated_id, out)) return;
  if (p->cluster != NULL && p->cluster_not_synced) {
    decide(out, MT_GRPC_UNAVAILABLE, "cluster_not_synced",
           "the Kubernetes API has not been listed yet, so whether %s runs on node %s is not "
           "known; retry",
           r->impersonated_id, node);
    return;
  }
  int on_node = p->cluster != NULL
                    ? mt_cluster_state_identity_on_node(p->cluster, r->impersonated_id, node)
                    : mt_workloads_on_node(p->workloads, node, r->impersonated_id);
  if (!on_node) {
    decide(out, MT_GRPC_PERMISSION_DENIED, "not_on_node", "identity %s has no workload on node %s",
           r->impersonated_id, node);
    return;
  }
  decide(out, MT_GRPC_OK, "ok", "%s", "");
  out->identity = r->impersonated_id;
}

void mt_node_auth_node_of(const mt_node_auth_policy *p, const mt_node_auth_request *r,
                          mt_node_auth_decision *out) {
  memset(out, 0, sizeof(*out));
  if (!check_node_agent(p, r, "a node's pod CIDRs", "NodeInfo", out)) return;
  decide(out, MT_GRPC_OK, "ok", "%s", "");
  out->identity = r->caller_node;
}
