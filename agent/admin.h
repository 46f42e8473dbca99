/* admin: the operator's HTTP endpoint, served by http_server.h on the main
 * thread's libev loop (no extra thread, no locks: every handler runs where
 * the agent's state lives).
 *
 * Two listeners share the handler:
 *   admin.address            the full API (loopback unless allowed otherwise)
 *     GET  /healthz /ready /metrics /certs /policy[?peer=ID&port=N] /config
 *     POST /quitquitquit     drain and exit 0 (a Job's sidecar, like Istio's)
 *     POST /reload           the same as SIGHUP
 *   admin.telemetry_address  /healthz /ready /metrics only (for kubelet
 *                            probes and Prometheus from outside the pod)
 * Anything else is 404; a known path with the wrong method is 405. Bodies
 * are never read: POST endpoints take no arguments (a request with a body
 * is answered, then its connection closes). The server's own refusals
 * (malformed, too large, too slow, too many connections) are counted in
 * /metrics as mtlsd_admin_refused_total.
 *
 * The admin module owns no agent state. For each request it asks the agent
 * for a fresh mt_admin_view (borrowed pointers valid for that call) and
 * renders it with admin_pages.h, admin_metrics.h and admin_policy.h. */
#ifndef MT_ADMIN_H
#define MT_ADMIN_H

#include <ev.h>
#include <stddef.h>

#include "agent/admin_view.h"
#include "agent/config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_admin mt_admin;

typedef struct {
  void (*view)(void *arg, mt_admin_view *out); /* fill the current view */
  void (*quit)(void *arg);                     /* POST /quitquitquit */
  /* POST /reload: 1 applied, 0 refused; |msg| says what happened. */
  int (*reload)(void *arg, char *msg, size_t msg_len);
  void *arg;
} mt_admin_hooks;

/* Binds the configured listeners and serves them on |loop|. |config| and
 * |hooks->arg| must outlive the admin. Returns NULL with a reason in |err|
 * (e.g. the port is taken). Logs "admin listening on IP:PORT". */
mt_admin *mt_admin_start(struct ev_loop *loop, const mt_config *config, const mt_admin_hooks *hooks,
                         char *err, size_t err_len);

void mt_admin_free(mt_admin *admin); /* accepts NULL */

#ifdef __cplusplus
}
#endif

#endif /* MT_ADMIN_H */
