/* admin_pages: what the admin endpoint says, rendered from one view of the
 * agent's state. Pure functions of the view: no I/O, no HTTP, so they are
 * tested directly and the HTTP glue (admin.c) stays small.
 *
 * JSON pages are single objects; /metrics is the Prometheus text format
 * 0.0.4. No page ever contains a private key or a token. */
#ifndef MT_ADMIN_PAGES_H
#define MT_ADMIN_PAGES_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "agent/cert_manager.h"
#include "agent/config.h"
#include "agent/identity.h"
#include "agent/metrics.h"
#include "agent/workloads.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A consistent look at the agent, filled by the agent for one request. */
typedef struct {
  const mt_config *config;
  mt_identity *identity;       /* served now; NULL = none (fail closed) */
  const mt_workloads *workloads; /* node mode: the workloads served now (NULL = none) */
  const char *identity_source; /* "files" or "control-plane" */
  mt_worker_metrics *const *worker_metrics;
  size_t num_workers;
  const mt_cert_manager_stats *control_plane; /* NULL with certificate files */
  uint64_t identity_updates;         /* new certificates served (files or CA) */
  uint64_t identity_update_failures; /* reloads / requests that failed */
  uint64_t config_reloads;
  uint64_t config_reload_failures;
  const char *last_reload_error; /* "" when the last reload worked */
  time_t started;
  time_t now;
  int draining; /* stopping: not ready, whatever else holds */
} mt_admin_view;

/* 1 when ready; |why| gets a one-line reason either way. */
int mt_admin_ready(const mt_admin_view *v, char *why, size_t why_len);

void mt_admin_render_metrics(const mt_admin_view *v, mt_text *out);
void mt_admin_render_certs(const mt_admin_view *v, mt_text *out);
void mt_admin_render_config(const mt_admin_view *v, mt_text *out);
/* The policy in force (mesh version, rules, destinations). Node mode:
 * that of the pod at |workload| (an IP), or every pod's when NULL;
 * |workload| is ignored in sidecar mode. */
void mt_admin_render_policy(const mt_admin_view *v, const char *workload, mt_text *out);
/* Why the policy in force (node mode: |workload|'s) allows or denies
 * |peer_id| (NULL = plaintext) on |port|, as `mtlsd explain --json` says it.
 * Returns 1 allow, 0 deny. */
int mt_admin_render_explain(const mt_admin_view *v, const char *workload, const char *peer_id,
                            uint16_t port, mt_text *out);

#ifdef __cplusplus
}
#endif

#endif /* MT_ADMIN_PAGES_H */
