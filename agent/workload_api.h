/* workload_api: the SPIFFE Workload API, served on a Unix socket to the
 * applications of the pod (sidecar mode) or of the node's pods (node mode).
 *
 * Who a caller is comes from the kernel, never from the request: the
 * socket's peer credentials (SO_PEERCRED, SO_PEERPIDFD; grpc/server.h).
 *   sidecar  the caller's uid or gid must be in workload_api.allowed_uids /
 *            allowed_gids; it then gets the pod's identity.
 *   node     the caller's process must run in the network namespace of one
 *            of the node's pods (workload_attest.h); it gets that pod's
 *            identity. A caller in no pod's namespace (the host's, another
 *            node's, a namespace nobody listed) is refused.
 * Failures answer as the specification says: no security header ->
 * INVALID_ARGUMENT; a caller that is not admitted or has no identity ->
 * PERMISSION_DENIED (the stream ends). Every call is counted by method and
 * status and every refusal logged with the caller's pid, uid and gid.
 *
 * What callers get: an application SVID, with a key of its own requested
 * from the control plane for the caller's identity (cert_manager.h; the
 * agent's own key is never handed out), the trust bundles the agent uses,
 * and JWT-SVIDs and JWT bundles from the control plane (jwt_svid.h).
 * FetchX509SVID, FetchX509Bundles and FetchJWTBundles stream: a first
 * message once there is something to send (the stream stays open and
 * silent until then), and a new one on every rotation or bundle change.
 * A client that stops reading is cut off once its unread responses pass a
 * bound (RESOURCE_EXHAUSTED), so it cannot hold memory.
 *
 * Runs on the main loop, beside the identity source that feeds it. */
#ifndef MT_WORKLOAD_API_H
#define MT_WORKLOAD_API_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/cert_manager.h"
#include "agent/config.h"
#include "agent/identity.h"
#include "agent/workload_api_request.h"
#include "agent/workloads.h"
#include "grpc/frame.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_workload_api mt_workload_api;

/* Binds config->workload_api_socket and starts serving. |manager| is
 * borrowed and must outlive the server. Returns NULL with a reason in
 * |err| (the socket cannot be bound: path, errno text). */
mt_workload_api *mt_workload_api_start(struct ev_loop *loop, mt_config *config,
                                       mt_cert_manager *manager, char *err, size_t err_len);

/* Closes every stream (UNAVAILABLE) and removes the socket. NULL is fine. */
void mt_workload_api_free(mt_workload_api *api);

/* What the agent serves now (sidecar: its identity; node mode: the
 * workload table), for the trust bundles and, in node mode, the pods
 * callers are matched to. Takes its own references. */
void mt_workload_api_set_identity(mt_workload_api *api, mt_identity *identity);
void mt_workload_api_set_workloads(mt_workload_api *api, mt_workloads *table);

/* cert_manager's sink.app_svid: an application SVID changed. */
void mt_workload_api_app_svid(mt_workload_api *api, const char *spiffe_id, mt_identity *svid);

typedef struct {
  /* Calls by method and final status (a stream counts when it ends). */
  uint64_t calls[MT_WL_NUM_METHODS][MT_GRPC_STATUS_MAX + 1];
  uint64_t attestation_failures; /* callers refused PERMISSION_DENIED */
  uint64_t streams;              /* open now (a gauge) */
  uint64_t x509_svid_updates;    /* FetchX509SVID messages sent */
  uint64_t bundle_updates;       /* FetchX509Bundles / FetchJWTBundles messages sent */
  uint64_t slow_readers;         /* streams cut off for not reading */
} mt_workload_api_stats;

void mt_workload_api_get_stats(const mt_workload_api *api, mt_workload_api_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* MT_WORKLOAD_API_H */
