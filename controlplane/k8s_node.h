/* k8s_node: a Kubernetes Node object (the body of GET /api/v1/nodes/NAME,
 * JSON) -> its name and the pod CIDRs allocated to it, the one thing about
 * a node that mtls-ca tells node agents (node_info_service.h).
 *
 * spec.podCIDRs is read (in API order; IPv4 and IPv6 on a dual-stack node),
 * or spec.podCIDR alone for objects written before the list existed. Each
 * CIDR is parsed (address, "/", prefix length in range, host bits zero)
 * and kept in canonical text ("fd00:10:244:1::/64"), so the agent can
 * install it as it is. A node without either field has no CIDRs: that is
 * not an error here (CNIs such as Calico's own IPAM allocate without it);
 * the service decides what to answer.
 *
 * Input is untrusted: duplicate member names, a kind other than Node, a
 * name that is not a DNS subdomain, more than MT_K8S_MAX_POD_CIDRS CIDRs,
 * the same CIDR twice, or a CIDR that does not parse refuse the whole
 * object with "node refused: <field>: <why>". Everything else in the
 * object (status, images, conditions, labels) is ignored. Pure: no I/O, no
 * allocation that outlives the call. */
#ifndef MT_CP_K8S_NODE_H
#define MT_CP_K8S_NODE_H

#include <stddef.h>

#include "controlplane/k8s_objects.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  MT_K8S_MAX_POD_CIDRS = 4,        /* the API allows one per family: 2 */
  MT_K8S_CIDR_MAX = 46 + 4 + 1,    /* INET6_ADDRSTRLEN + "/128" + NUL */
  MT_K8S_NODE_MAX_BYTES = 4 << 20, /* a Node with a long image list is ~100 KB */
};

typedef struct {
  char name[MT_K8S_NAME_MAX + 1];
  char pod_cidrs[MT_K8S_MAX_POD_CIDRS][MT_K8S_CIDR_MAX];
  size_t num_pod_cidrs;
} mt_k8s_node;

/* Decodes |len| bytes of JSON into |out| (zeroed first). Returns 1, or 0
 * with the reason in |err|. */
int mt_k8s_node_parse(const char *json, size_t len, mt_k8s_node *out, char *err, size_t err_len);

/* "address/prefix" in canonical form into |out| (MT_K8S_CIDR_MAX bytes
 * suffice). Returns 1, or 0 with the reason in |why| (not an address, a
 * prefix out of range or missing, host bits set). */
int mt_k8s_canonical_cidr(const char *text, char *out, size_t out_len, char *why, size_t why_len);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_K8S_NODE_H */
