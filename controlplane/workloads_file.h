/* workloads_file: mtls-ca's workload registry, the answer to "which
 * workload identities run on which Kubernetes node", read from YAML:
 *
 *   workloads:
 *     - node: node-1
 *       spiffe_id: spiffe://example.org/ns/demo/sa/frontend
 *       address: 10.77.1.2          # optional, informational
 *
 * A node agent may obtain a certificate for an identity only when the
 * registry lists that identity on the agent's own node (node_auth.h).
 *
 * Parsing is strict and every error reads "file:line: what is wrong":
 * unknown or duplicate keys, a node name Kubernetes would refuse, a SPIFFE
 * ID that is invalid, has no path or lies outside the trust domain, an
 * address that is not an IP address, and an entry listed twice. A loaded
 * registry is immutable; nothing here logs. */
#ifndef MT_CP_WORKLOADS_FILE_H
#define MT_CP_WORKLOADS_FILE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  MT_WORKLOADS_MAX = 100000,  /* entries in one file */
  MT_NODE_NAME_MAX_LEN = 253, /* a DNS subdomain (RFC 1123), as Kubernetes names nodes */
};

typedef struct mt_workloads mt_workloads;

/* Parses |path|; every spiffe_id must be in |trust_domain|. Returns NULL
 * with "path:line: reason" in |err|. */
mt_workloads *mt_workloads_load(const char *path, const char *trust_domain, char *err,
                                size_t err_len);
void mt_workloads_free(mt_workloads *workloads); /* accepts NULL */

/* Entries, and distinct nodes among them (for logs). */
size_t mt_workloads_count(const mt_workloads *workloads);
size_t mt_workloads_node_count(const mt_workloads *workloads);

/* 1 when the registry lists |spiffe_id| on |node| (exact, byte for byte). */
int mt_workloads_on_node(const mt_workloads *workloads, const char *node, const char *spiffe_id);

/* Calls |on_entry| for every entry, in (node, identity, address) order;
 * |address| is NULL when the entry has none. Strings are borrowed for the
 * call. Returns how many. */
size_t mt_workloads_foreach(const mt_workloads *workloads,
                            void (*on_entry)(void *ctx, const char *node, const char *spiffe_id,
                                             const char *address),
                            void *ctx);

/* 1 when |name| is a valid Kubernetes node name: a DNS subdomain of at most
 * MT_NODE_NAME_MAX_LEN bytes, dot-separated labels of lowercase letters,
 * digits and '-', each starting and ending with a letter or digit. */
int mt_node_name_valid(const char *name);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_WORKLOADS_FILE_H */
