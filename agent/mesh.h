/* mesh: the mesh view that can change while the agent runs: the inbound
 * authorization policy and the SPIFFE ID expected at each outbound
 * destination, with the version it came from.
 *
 * Immutable once built and reference counted, like the identity snapshot
 * that carries it: a connection judges itself against the view it started
 * with. Built from the YAML config (version "static") or from the control
 * plane's Watch stream. */
#ifndef MT_MESH_H
#define MT_MESH_H

#include <stddef.h>
#include <sys/socket.h>

#include "agent/config.h"
#include "agent/policy.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_mesh mt_mesh;

/* Takes ownership of |policy| (freed here even on failure); copies
 * |version| and |destinations|. Returns NULL when out of memory. */
mt_mesh *mt_mesh_new(const char *version, mt_policy *policy,
                     const mt_destination_config *destinations, size_t num_destinations);

mt_mesh *mt_mesh_ref(mt_mesh *mesh);
void mt_mesh_unref(mt_mesh *mesh); /* accepts NULL */

const mt_policy *mt_mesh_policy(const mt_mesh *mesh);
const char *mt_mesh_version(const mt_mesh *mesh);
size_t mt_mesh_num_destinations(const mt_mesh *mesh);

/* The SPIFFE ID expected at |dest|, or NULL when none is configured. */
const char *mt_mesh_expected_id(const mt_mesh *mesh, const struct sockaddr *dest);

#ifdef __cplusplus
}
#endif

#endif /* MT_MESH_H */
