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
#include <stdint.h>
#include <sys/socket.h>

#include "agent/config.h"
#include "agent/peer_auth.h"
#include "agent/policy.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_mesh mt_mesh;

/* Takes ownership of |policy| (freed here even on failure); copies
 * |version| and |destinations|. Returns NULL when out of memory. */
mt_mesh *mt_mesh_new(const char *version, mt_policy *policy,
                     const mt_destination_config *destinations, size_t num_destinations);

/* A mesh with |base|'s version and destinations (shared, not copied: a
 * workload's own policy costs only the policy) and |policy| (taken, freed
 * even on failure). Returns NULL when out of memory. */
mt_mesh *mt_mesh_with_policy(const mt_mesh *base, mt_policy *policy);

/* A mesh with |base|'s destinations changed, without rebuilding those that
 * stay (what a delta needs): |changed| replace the entries of their
 * address or are added, |removed| addresses leave. A changed entry whose
 * address |base| already has is refused unless its |replaces| flag is set
 * (the sender's text for it is another one: two texts, one address), as
 * are two changed entries with one address and a removed address |base|
 * does not have; the reason goes to |err|. Takes |policy| (freed even on
 * failure); copies |version|. Returns NULL on refusal or out of memory. */
mt_mesh *mt_mesh_patched(const mt_mesh *base, const char *version, mt_policy *policy,
                         const mt_destination_config *changed, const int *replaces,
                         size_t num_changed, const mt_sockaddr *removed, size_t num_removed,
                         char *err, size_t err_len);

/* Sets the workload's PeerAuthentication (taken; freed with the mesh).
 * Call on a freshly built mesh, before it is shared. */
void mt_mesh_set_peer_auth(mt_mesh *mesh, mt_peer_auth *peer_auth);
/* The control plane's PeerAuthentication for this workload, or NULL: the
 * static inbound.permissive_ports apply. Borrowed. */
const mt_peer_auth *mt_mesh_peer_auth(const mt_mesh *mesh);

/* Whether app |port| of the workload this mesh view judges admits a peer
 * without mesh TLS: its PeerAuthentication when the control plane sent
 * one, else |config|'s inbound.permissive_ports. The one rule inbound,
 * /policy and explain apply. */
int mt_mesh_admits_plaintext(const mt_mesh *mesh, const mt_config *config, uint16_t port);

mt_mesh *mt_mesh_ref(mt_mesh *mesh);
void mt_mesh_unref(mt_mesh *mesh); /* accepts NULL */

const mt_policy *mt_mesh_policy(const mt_mesh *mesh);
const char *mt_mesh_version(const mt_mesh *mesh);
size_t mt_mesh_num_destinations(const mt_mesh *mesh);
size_t mt_mesh_num_service_endpoints(const mt_mesh *mesh); /* over every destination */

/* The server identities allowed at a destination (any one of them). */
typedef struct {
  const char *const *ids; /* borrowed from the mesh */
  size_t count;           /* at least 1 */
} mt_expected_ids;

/* The identities allowed at |dest|: its "ip:port" entry, else the entry of
 * its IP alone (a pod: every port). Returns 1 with |out| filled, or 0 when
 * none is configured. O(log n). */
int mt_mesh_expected_ids(const mt_mesh *mesh, const struct sockaddr *dest, mt_expected_ids *out);

/* The ready endpoints of Service address |dest| (its exact "ip:port"
 * entry; never an IP-alone entry), as the control plane sent them, sorted.
 * Returns how many (0: none), with |*out| borrowed from the mesh. */
size_t mt_mesh_service_endpoints(const mt_mesh *mesh, const struct sockaddr *dest,
                                 const mt_service_endpoint **out);

/* One of |dest|'s endpoints chosen by |random| (uniform when |random| is:
 * the caller brings the randomness, see mt_worker_random), or NULL when
 * |dest| has none. Borrowed from the mesh. */
const mt_service_endpoint *mt_mesh_choose_endpoint(const mt_mesh *mesh, const struct sockaddr *dest,
                                                   uint64_t random);

/* 1 when two destinations have the same address (the same "ip:port", or
 * the same IP alone), with that address as text in |addr|; else 0. */
int mt_mesh_duplicate_destination(const mt_mesh *mesh, char *addr, size_t addr_len);

/* Destinations on demand (mesh.proto, WatchRequest.on_demand_destinations):
 * the mesh holds only the destinations the agent asked the control plane
 * for, and |unresolved| (copied) are asked-for "ip:port" addresses the
 * control plane has no entry for. Call on a freshly built mesh, before
 * mt_mesh_with_policy shares its destinations (they then share this
 * too). Returns 0 when out of memory. */
int mt_mesh_set_on_demand(mt_mesh *mesh, const mt_sockaddr *unresolved, size_t num_unresolved);
int mt_mesh_on_demand(const mt_mesh *mesh);
/* 1 when |dest| ("ip:port") is one of the mesh's unresolved addresses: the
 * control plane was asked and has no entry (unknown_destination applies).
 * An on-demand mesh with neither an entry nor this for an address has not
 * been asked yet. */
int mt_mesh_unresolved(const mt_mesh *mesh, const struct sockaddr *dest);

/* 1 when |spiffe_id| is one of |ids|. */
int mt_expected_ids_contain(const mt_expected_ids *ids, const char *spiffe_id);

#ifdef __cplusplus
}
#endif

#endif /* MT_MESH_H */
