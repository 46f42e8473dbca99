/* mesh_watch: the agent's subscription to the control plane's mesh config
 * (mtlsd.mesh.v1.MeshConfig/Watch, server streaming).
 *
 * Every MeshSnapshot is validated in full before anything is used: trust
 * bundles (valid trust domains, parsable roots), policy and each workload's
 * policy (known actions, well-formed matchers, one entry per SPIFFE ID) and
 * destinations (IP:port, valid SPIFFE IDs). A
 * snapshot with any error is rejected as a whole with a message naming what
 * was wrong; the last good one stays in force. */
#ifndef MT_MESH_WATCH_H
#define MT_MESH_WATCH_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/base.h>
#include <openssl/x509.h>

#include "agent/mesh.h"
#include "grpc/client.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MT_MESH_WATCH_METHOD "/mtlsd.mesh.v1.MeshConfig/Watch"

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

/* One decoded, validated snapshot. */
typedef struct {
  mt_mesh *mesh; /* version, policy, destinations */
  mt_bundle *bundles;
  size_t num_bundles;
  mt_workload_mesh *workloads; /* workload_policies */
  size_t num_workloads;
} mt_mesh_update;

/* The mesh view that judges calls to |spiffe_id|: its workload policy if
 * the snapshot has one, else the snapshot's general one. Borrowed. */
mt_mesh *mt_mesh_update_for(const mt_mesh_update *update, const char *spiffe_id);

void mt_mesh_update_clear(mt_mesh_update *update);

/* Decodes and validates a MeshSnapshot. Returns 1, or 0 with a reason. */
int mt_mesh_decode_snapshot(const uint8_t *msg, size_t len, mt_mesh_update *out, char *err,
                            size_t err_len);

typedef struct {
  /* A valid snapshot; the callee may take its parts (set them to NULL). */
  void (*on_update)(void *arg, mt_mesh_update *update);
  /* A snapshot that failed validation (the stream goes on). */
  void (*on_rejected)(void *arg, const char *why);
  /* The stream ended (server closed, connection lost). Exactly once. */
  void (*on_end)(void *arg, mt_grpc_status status, const char *message);
} mt_mesh_watch_handlers;

typedef struct mt_mesh_watch mt_mesh_watch;

mt_mesh_watch *mt_mesh_watch_start(mt_grpc_client *grpc, const char *node_id, const char *spiffe_id,
                                   const char *last_version, const mt_grpc_metadata *metadata,
                                   size_t num_metadata, const mt_mesh_watch_handlers *handlers,
                                   void *arg);

/* Ends the subscription; no handler runs afterwards. NULL is fine. */
void mt_mesh_watch_cancel(mt_mesh_watch *watch);

#ifdef __cplusplus
}
#endif

#endif /* MT_MESH_WATCH_H */
