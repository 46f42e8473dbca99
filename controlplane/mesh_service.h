/* mesh_service: the server side of /mtlsd.mesh.v1.MeshConfig/Watch.
 *
 * Owns the snapshot in force (from mesh_file.c) and every open Watch
 * stream. A caller authenticates like any other (bearer token, auth.h); it
 * gets the current snapshot at once, then every new one, until it cancels
 * or disconnects. Every stream gets the same complete snapshot, all
 * workload policies included: nothing is scoped to the caller (policies are
 * not secret; each agent picks its own). The mesh file and the roots files
 * it names are polled (stat) every |poll_ms|; a change that parses becomes a
 * new version ("<counter>-<first 12 hex digits of the content's SHA-256>",
 * the counter starting at 1 with every start of the server), a change that
 * does not is logged with file:line and the last good snapshot stays in
 * force. A stream whose send queue is full is retried on the next poll with
 * whatever snapshot is then current (snapshots are complete, so skipping one
 * loses nothing). Runs on one libev loop; no threads. */
#ifndef MT_CP_MESH_SERVICE_H
#define MT_CP_MESH_SERVICE_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include "controlplane/auth.h"
#include "controlplane/ca_log.h"
#include "grpc/server.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_mesh_service mt_mesh_service;

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

/* Routes the Watch method of |server| to this service. Returns 1 or 0. */
int mt_mesh_service_register(mt_mesh_service *svc, mt_grpc_server *server);

/* Re-reads the files now even if they look unchanged (SIGHUP). */
void mt_mesh_service_reload(mt_mesh_service *svc);

/* The version in force and the number of open streams (for tests, logs). */
const char *mt_mesh_service_version(const mt_mesh_service *svc);
size_t mt_mesh_service_stream_count(const mt_mesh_service *svc);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_MESH_SERVICE_H */
