/* node_auth: which identity may a CreateCertificate caller have a
 * certificate for? One pure function (no I/O, no logging, no state) holding
 * the whole rule; ca_service.c applies its answer.
 *
 * A caller is already authenticated (auth.h) as |caller_id|, and its token
 * may name the node it runs on. Without an ImpersonatedIdentity the answer
 * is the caller's own identity. With one (a node agent asking on behalf of
 * a workload on its node, as Istio's ztunnel does), the checks run in this
 * order and the first failure decides:
 *   1. the caller is one of |node_agents|    else PERMISSION_DENIED "not_node_agent"
 *   2. its token names its node               else PERMISSION_DENIED "no_node_claim"
 *      as a valid Kubernetes node name        else PERMISSION_DENIED "bad_node_claim"
 *   3. the requested identity is a SPIFFE ID
 *      with a path, in |trust_domain|         else INVALID_ARGUMENT  "bad_impersonated_identity"
 *   4. with the cluster state: the API has
 *      been listed once (until then nobody
 *      can be told "not there")               else UNAVAILABLE       "cluster_not_synced"
 *   5. the registry (or the cluster state)
 *      lists it on that node                  else PERMISSION_DENIED "not_on_node"
 * and then the answer is the requested identity. Text the caller controls
 * appears in messages only after validation, or quoted with anything but
 * printable ASCII replaced. */
#ifndef MT_CP_NODE_AUTH_H
#define MT_CP_NODE_AUTH_H

#include <stddef.h>

#include "controlplane/cluster_state.h"
#include "controlplane/workloads_file.h"
#include "grpc/frame.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { MT_NODE_AUTH_MESSAGE_MAX = 640 };

/* The metadata key (in the request's `metadata` Struct) naming the
 * identity a node agent asks for. */
#define MT_NODE_AUTH_IMPERSONATION_KEY "ImpersonatedIdentity"

/* What the CA allows. Borrowed for the call. */
typedef struct {
  const char *trust_domain;       /* the CA's */
  const char *const *node_agents; /* SPIFFE IDs that may ask for others */
  size_t num_node_agents;
  const mt_workloads *workloads; /* NULL: no registry, nobody is on any node */
  /* When set, the Kubernetes API's view (cluster_state.h) replaces
   * |workloads|: a workload is on a node when a Running pod of that
   * identity is scheduled there. */
  const mt_cluster_state *cluster;
  /* With |cluster|: 1 until its first complete listing. Its state is
   * partial then, and an absent pod may just not be listed yet. */
  int cluster_not_synced;
} mt_node_auth_policy;

/* One call. Borrowed for the call. */
typedef struct {
  const char *caller_id;       /* the authenticated caller's SPIFFE ID */
  const char *caller_node;     /* its token's node name; NULL or "": none */
  const char *impersonated_id; /* the requested identity; NULL: none requested */
} mt_node_auth_request;

typedef struct {
  mt_grpc_status status; /* OK, PERMISSION_DENIED, INVALID_ARGUMENT or UNAVAILABLE */
  const char *reason;    /* static, stable: "ok" or a code above */
  char message[MT_NODE_AUTH_MESSAGE_MAX]; /* "" on OK; else for grpc-message and logs */
  const char *identity; /* on OK: the identity to certify (points into |request|) */
} mt_node_auth_decision;

void mt_node_auth_decide(const mt_node_auth_policy *policy, const mt_node_auth_request *request,
                         mt_node_auth_decision *out);

/* Which node may a caller ask about (NodeInfo, node_info_service.h)? Its
 * own, as its token names it, and only when it is a node agent: rules 1
 * and 2 above ("not_node_agent", "no_node_claim", "bad_node_claim", all
 * PERMISSION_DENIED). On OK, |out->identity| is the node's name (it points
 * into |request|); |request->impersonated_id| is not used. */
void mt_node_auth_node_of(const mt_node_auth_policy *policy, const mt_node_auth_request *request,
                          mt_node_auth_decision *out);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_NODE_AUTH_H */
