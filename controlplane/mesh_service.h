/* mesh_service: the server side of /mtlsd.mesh.v1.MeshConfig/Watch.
 *
 * Owns the mesh file in force (mesh_file.h), the view built from it and
 * from the cluster (mesh_view.h), and every open Watch stream. A caller
 * authenticates like any other (bearer token, auth.h); each stream gets
 * its own snapshot, scoped to its caller as mesh_view.h says (a node agent
 * is a caller listed in node_agents, its node the one its token names). A
 * stream is sent a snapshot only when that caller's content changed, so a
 * change one caller cannot see sends it nothing.
 *
 * Versions read "<N>-<first 12 hex digits of SHA-256 of that caller's
 * content>", N counting the views put in force (from 1 at each start of
 * the server): a mesh file edit that changed the content, a Kubernetes
 * round, a registry reload. The mesh file and the roots files it names
 * are polled (stat) every |poll_ms|; a change that does not parse is
 * logged with file:line and the last good snapshot stays in force.
 *
 * With a Kubernetes source nothing is sent before the source has synced
 * (before that its state is partial); its changes, and registry reloads,
 * are coalesced for MT_MESH_SERVICE_DEBOUNCE_MS before one round
 * recomputes and pushes. Each round logs one line (version, how many
 * streams got a new snapshot). A snapshot over the size limit is refused
 * with a logged error: that caller keeps what it has. A stream whose send
 * queue is full is retried on the next poll with whatever is then current
 * (snapshots are complete, so skipping one loses nothing). Runs on one
 * libev loop; no threads. */
#ifndef MT_CP_MESH_SERVICE_H
#define MT_CP_MESH_SERVICE_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include "controlplane/auth.h"
#include "controlplane/ca_log.h"
#include "controlplane/cluster_state.h"
#include "controlplane/istio_policy.h"
#include "controlplane/workload_registry.h"
#include "grpc/server.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Destinations on demand (mesh.proto, Want): the most addresses one
 * stream may ask for; more are refused RESOURCE_EXHAUSTED. */
enum { MT_MESH_SERVICE_DEBOUNCE_MS = 100, MT_MESH_SERVICE_WANTED_MAX = 4096 };

typedef struct mt_mesh_service mt_mesh_service;

/* Where the view's cluster part comes from. Everything is borrowed and
 * must outlive the service. */
typedef struct {
  const char *const *node_agents; /* SPIFFE IDs, as configured */
  size_t num_node_agents;
  const mt_cluster_state *cluster;      /* the Kubernetes source's state; NULL: none */
  int cluster_synced;                   /* 0: hold every stream until _cluster_synced */
  const mt_workload_registry *registry; /* NULL: none; unused with |cluster| */
  /* Istio's objects compiled into every cluster workload's policy
   * (mesh_view.h); NULL: none. Used with |cluster|; |cluster_synced| must
   * then cover their listing too. */
  const mt_istio_policies *istio;
} mt_mesh_sources;

/* Loads |mesh_path| (refusing it when it lacks a bundle for |trust_domain|)
 * and starts polling. |auth| and |log| are borrowed and must outlive the
 * service. Returns NULL with "file:line: reason" in |err|. */
mt_mesh_service *mt_mesh_service_new(struct ev_loop *loop, const char *mesh_path,
                                     const char *trust_domain, int64_t poll_ms,
                                     const mt_ca_auth *auth, mt_ca_log *log, char *err,
                                     size_t err_len);

/* Ends every open stream with UNAVAILABLE ("server shutting down"), stops
 * polling and frees everything. Call before freeing the gRPC server. NULL
 * is fine. */
void mt_mesh_service_free(mt_mesh_service *svc);

/* Routes the Watch and Want methods of |server| to this service. Returns
 * 1 or 0. */
int mt_mesh_service_register(mt_mesh_service *svc, mt_grpc_server *server);

/* Takes the cluster part from |sources| from now on (call once, before
 * the loop serves anyone). Returns 0 when the view cannot be built (out of
 * memory, over the size limit), with the reason in |err|. */
int mt_mesh_service_use_sources(mt_mesh_service *svc, const mt_mesh_sources *sources, char *err,
                                size_t err_len);

/* The cluster state, the Istio objects or the registry changed: recompute and push after the
 * debounce delay (changes within it share one round). */
void mt_mesh_service_sources_changed(mt_mesh_service *svc);

/* The Kubernetes source has listed everything (with Istio policies, those
 * too): streams held so far get their first snapshot now. */
void mt_mesh_service_cluster_synced(mt_mesh_service *svc);

/* Re-reads the files now even if they look unchanged (SIGHUP). */
void mt_mesh_service_reload(mt_mesh_service *svc);

/* The version in force ("<N>-<12 hex digits of the shared part's
 * SHA-256>"; callers' versions share N) and the number of open streams. */
const char *mt_mesh_service_version(const mt_mesh_service *svc);
size_t mt_mesh_service_stream_count(const mt_mesh_service *svc);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_MESH_SERVICE_H */
