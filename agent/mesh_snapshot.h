/* mesh_snapshot: decoding and validating one MeshSnapshot
 * (proto/mtlsd/mesh.proto) into what the agent applies.
 *
 * Everything is validated before anything is used: trust bundles (valid
 * trust domains, parsable roots), the policy and each workload's policy
 * (known actions, well-formed matchers, one entry per SPIFFE ID) and the
 * destinations (IP:port or IP, valid SPIFFE IDs, no address twice; a
 * Service address's endpoints: IP:port of its family, each with a valid
 * SPIFFE ID that the address accepts) and the node workloads (valid IDs,
 * IPs, no IP in two workloads). A snapshot with any error is refused as a
 * whole with a message naming what was wrong. Pure: no I/O. */
#ifndef MT_MESH_SNAPSHOT_H
#define MT_MESH_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/base.h>
#include <openssl/x509.h>

#include "agent/mesh.h"
#include "agent/mesh_delta.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  char *trust_domain;
  STACK_OF(X509) * roots;
} mt_bundle;

/* A workload's own inbound policy, as a mesh view of its own (same
 * version and destinations as the snapshot's). */
typedef struct {
  char *spiffe_id;
  mt_mesh *mesh;
} mt_workload_mesh;

/* A workload the control plane says runs on this node (node mode). */
typedef struct {
  char *spiffe_id;
  mt_sockaddr *addresses; /* its IPs, port 0; at least one */
  size_t num_addresses;
  char *name; /* "namespace/pod" for logs, "" when the server sent none */
} mt_pushed_workload;

/* One decoded, validated snapshot. */
typedef struct {
  mt_mesh *mesh; /* version, policy, destinations */
  mt_bundle *bundles;
  size_t num_bundles;
  mt_workload_mesh *workloads; /* workload_policies */
  size_t num_workloads;
  /* node_workloads: present (1) even when empty, absent (0) when the server
   * sent none (the agent then keeps its static node.workloads). */
  int has_node_workloads;
  mt_pushed_workload *node_workloads;
  size_t num_node_workloads;
} mt_mesh_update;

/* The mesh view that judges calls to |spiffe_id|: its workload policy if
 * the snapshot has one, else the snapshot's general one. Borrowed. */
mt_mesh *mt_mesh_update_for(const mt_mesh_update *update, const char *spiffe_id);

void mt_mesh_update_clear(mt_mesh_update *update);

/* Decodes and validates a MeshSnapshot. Returns 1, or 0 with a reason. */
int mt_mesh_decode_snapshot(const uint8_t *msg, size_t len, mt_mesh_update *out, char *err,
                            size_t err_len);

/* The same result as decoding the complete snapshot a delta makes, at the
 * cost of the delta's destinations rather than all of them: |rest| is that
 * complete snapshot without its destinations (mesh_delta.h,
 * mt_mesh_entries_encode_except), |delta| the delta (only its destinations
 * and its removals of destinations are read), |held| the general mesh of
 * the snapshot the delta applies to and |held_entries| that snapshot's
 * entries (to tell a changed address from one written two ways). */
int mt_mesh_decode_patched(const uint8_t *rest, size_t rest_len, const uint8_t *delta,
                           size_t delta_len, const mt_mesh *held, const mt_mesh_entries *held_entries,
                           mt_mesh_update *out, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* MT_MESH_SNAPSHOT_H */
