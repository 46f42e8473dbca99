/* node_info_client: asks the control plane for this node's pod CIDRs
 * (/mtlsd.node.v1.NodeInfo/Get, proto/mtlsd/node.proto), for `mtlsd
 * init-iptables` with `interception.node_pod_cidrs: from_control_plane`.
 *
 * The call goes over the agent's own gRPC client with the control_plane
 * settings of the config: its address, the TLS check of cp_tls.h (roots +
 * expected SPIFFE ID) and the bearer token file, read afresh per attempt.
 * The node is the one the token names; nothing in the request says which.
 *
 * Blocking by design (init-iptables has nothing else to do): it runs its
 * own event loop until an answer, a refusal that retrying cannot cure, or
 * the overall wait (interception.node_pod_cidrs_wait_s) has passed.
 * Retried, with exponential backoff from control_plane.retry_initial_ms to
 * retry_max_ms: UNAVAILABLE (the control plane or its API unreachable, not
 * synced, no keys yet), DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED.
 * Final: everything else (not a node agent, a node without pod CIDRs, no
 * such node, a control plane without NodeInfo, an unreadable token) and an
 * answer that is not a usable list of CIDRs. Nothing is printed here: each
 * retry is told to the caller (on_retry), the final reason comes back in
 * |err|. */
#ifndef MT_NODE_INFO_CLIENT_H
#define MT_NODE_INFO_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "agent/config.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MT_NODE_INFO_METHOD "/mtlsd.node.v1.NodeInfo/Get"

enum {
  MT_NODE_INFO_MAX_CIDRS = 4, /* one per family on a dual-stack node: 2 */
  MT_NODE_INFO_NAME_MAX = 253,
};

typedef struct {
  char node_name[MT_NODE_INFO_NAME_MAX + 1];
  mt_cidr cidrs[MT_NODE_INFO_MAX_CIDRS];
  size_t num_cidrs;
} mt_node_info;

/* Told before each retry: why the last attempt failed and the delay. */
typedef void (*mt_node_info_retry_fn)(void *ctx, const char *why, int64_t delay_ms);

/* Asks until an answer or a final refusal, for at most |config|'s
 * interception.node_pod_cidrs_wait_s. |config| needs a control_plane.
 * Returns 1 with |out| filled (at least one CIDR), or 0 with the reason
 * in |err|. */
int mt_node_info_fetch(const mt_config *config, mt_node_info_retry_fn on_retry, void *ctx,
                       mt_node_info *out, char *err, size_t err_len);

/* Decodes and checks a NodeInfoResponse: a node name, 1 to
 * MT_NODE_INFO_MAX_CIDRS CIDRs, each valid, none /0, none twice. Returns
 * 1, or 0 with the reason in |why|. Exposed for tests. */
int mt_node_info_decode(const uint8_t *msg, size_t len, mt_node_info *out, char *why,
                        size_t why_len);

#ifdef __cplusplus
}
#endif

#endif /* MT_NODE_INFO_CLIENT_H */
