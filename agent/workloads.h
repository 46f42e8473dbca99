/* workloads: node mode's table of "which identity serves which pod".
 *
 * An immutable, reference-counted map from a workload's IP address to its
 * identity snapshot, published to the workers like a single identity is in
 * sidecar mode. Outbound connections look up their source address (the pod
 * that dialled), inbound ones their original destination (the pod being
 * called). Every pod the agent should serve is listed; one without a valid
 * certificate has no identity, so its traffic is held and then refused
 * (fail closed), and the table still tells it is one of ours. */
#ifndef MT_WORKLOADS_H
#define MT_WORKLOADS_H

#include <stddef.h>
#include <sys/socket.h>

#include "agent/identity.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_workloads mt_workloads;

/* An empty table with room for |capacity| entries; NULL when out of memory. */
mt_workloads *mt_workloads_new(size_t capacity);

/* While building (before the table is shared): lists the pod at |address|
 * (port ignored) as |spiffe_id| (copied), served by |identity| (a new
 * reference is taken; NULL: no valid certificate yet). Returns 1, or 0 when
 * full or out of memory. */
int mt_workloads_add(mt_workloads *table, const struct sockaddr *address, const char *spiffe_id,
                     mt_identity *identity);

mt_workloads *mt_workloads_ref(mt_workloads *table);
void mt_workloads_unref(mt_workloads *table); /* accepts NULL */

/* The identity serving the workload at |address| (port ignored), borrowed
 * from the table; NULL when it is not one of ours or has no certificate. */
mt_identity *mt_workloads_find(const mt_workloads *table, const struct sockaddr *address);

/* 1 when |address| is a pod of this node, with a certificate or not. */
int mt_workloads_lists(const mt_workloads *table, const struct sockaddr *address);

size_t mt_workloads_count(const mt_workloads *table);
mt_identity *mt_workloads_identity_at(const mt_workloads *table, size_t i); /* may be NULL */
const char *mt_workloads_spiffe_id_at(const mt_workloads *table, size_t i);
const struct sockaddr *mt_workloads_address_at(const mt_workloads *table, size_t i);

#ifdef __cplusplus
}
#endif

#endif /* MT_WORKLOADS_H */
