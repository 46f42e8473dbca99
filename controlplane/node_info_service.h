/* node_info_service: /mtlsd.node.v1.NodeInfo/Get (proto/mtlsd/node.proto),
 * what a node agent's `mtlsd init-iptables` asks to learn its node's pod
 * CIDRs without calling the Kubernetes API itself.
 *
 * A call is authenticated with its bearer token (auth.h) and authorised by
 * node_auth.h (mt_node_auth_node_of): the caller must be one of the node
 * agents, and the node it learns about is the one its token names, never
 * one the request could choose (the request is empty). The Node is read
 * through node_source.h (a GET, shared and kept briefly). Answers:
 *   OK                   node_name + pod_cidrs (spec.podCIDRs, or podCIDR)
 *   UNAUTHENTICATED      no or bad token (auth.h's reasons)
 *   PERMISSION_DENIED    not a node agent, or no usable node claim
 *   INVALID_ARGUMENT     the request is not a NodeInfoRequest
 *   FAILED_PRECONDITION  the Node has no pod CIDRs ("no_pod_cidrs"): the
 *                        CNI does not allocate per-node CIDRs, so the
 *                        operator sets node_pod_cidrs by hand
 *   NOT_FOUND            the API has no such Node ("no_such_node")
 *   UNAVAILABLE          the API cannot be read now ("api_unavailable"):
 *                        retry
 * Every call is access-logged (caller, node) and counted; refusals also go
 * to stderr, answers to the info log with the CIDRs sent. Registered only
 * with the `kubernetes:` source: without it the server answers
 * UNIMPLEMENTED. */
#ifndef MT_CP_NODE_INFO_SERVICE_H
#define MT_CP_NODE_INFO_SERVICE_H

#include <stddef.h>

#include "controlplane/auth.h"
#include "controlplane/ca_log.h"
#include "controlplane/node_source.h"
#include "grpc/server.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_node_info_service mt_node_info_service;

/* Everything is borrowed and must outlive the service: the auth, the log,
 * the node source and the |count| node-agent SPIFFE IDs. Returns NULL when
 * out of memory. */
mt_node_info_service *mt_node_info_service_new(const mt_ca_auth *auth, mt_ca_log *log,
                                               mt_node_source *nodes,
                                               const char *const *node_agents, size_t count);

/* Forgets calls still waiting for the API (free the server first: it ends
 * their streams). Accepts NULL. */
void mt_node_info_service_free(mt_node_info_service *svc);

/* Routes NodeInfo/Get of |server| to this service. Returns 1 or 0. */
int mt_node_info_service_register(mt_node_info_service *svc, mt_grpc_server *server);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_NODE_INFO_SERVICE_H */
