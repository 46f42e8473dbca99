/* istio_identities: the WorkloadPolicy (proto/mtlsd/mesh.proto) of every
 * identity of the cluster, compiled from Istio's objects (istio_policy.h)
 * for the pods that carry it. Pure: no I/O, no clock, no logging.
 *
 * Istio decides per pod (labels, namespace, the Services selecting it);
 * mtlsd's agents key policy by SPIFFE ID, which is per service account.
 * Every pod of an identity is compiled; when they all compile to the same
 * policy and peer authentication, that is the identity's. When they do
 * not (pods of one service account with labels that different policies
 * select), the identity fails closed: one DENY rule named
 * MT_ISTIO_CONFLICT_RULE that matches everything, with `reduced` naming
 * the pods that disagree, peer authentication STRICT, and a note (below)
 * for the log. */
#ifndef MT_CP_ISTIO_IDENTITIES_H
#define MT_CP_ISTIO_IDENTITIES_H

#include <stddef.h>

#include "controlplane/cluster_state.h"
#include "controlplane/istio_policy.h"
#include "proto/mtlsd/mesh.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MT_ISTIO_CONFLICT_RULE "identity-conflict"

typedef struct mt_istio_identities mt_istio_identities;

/* Compiles |policies| for every workload of |cluster| (both read during
 * the call only). Returns NULL with the reason in |err| when out of
 * memory. */
mt_istio_identities *mt_istio_identities_build(const mt_istio_policies *policies,
                                               const mt_cluster_state *cluster, char *err,
                                               size_t err_len);
void mt_istio_identities_free(mt_istio_identities *ids); /* accepts NULL */

/* The entries, sorted by spiffe_id, each identity once; borrowed from
 * |ids|. */
size_t mt_istio_identities_count(const mt_istio_identities *ids);
const Mtlsd__Mesh__V1__WorkloadPolicy *mt_istio_identities_get(const mt_istio_identities *ids,
                                                               size_t index);

/* The entry of |spiffe_id|, or NULL. */
const Mtlsd__Mesh__V1__WorkloadPolicy *mt_istio_identities_find(const mt_istio_identities *ids,
                                                                const char *spiffe_id);

/* One line per identity in conflict ("" when none), sorted, for the log;
 * borrowed. */
const char *mt_istio_identities_notes(const mt_istio_identities *ids);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_ISTIO_IDENTITIES_H */
