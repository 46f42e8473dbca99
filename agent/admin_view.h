/* admin_view: one consistent look at the agent's state, filled by the agent
 * for a single admin request (admin.h's view hook) and read by the page
 * renderers (admin_pages.h, admin_metrics.h, admin_policy.h).
 *
 * Every pointer is borrowed and valid for that request only; the renderers
 * are pure functions of the view, so they are tested without HTTP. */
#ifndef MT_ADMIN_VIEW_H
#define MT_ADMIN_VIEW_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "agent/cert_manager.h"
#include "agent/config.h"
#include "agent/http_server.h"
#include "agent/identity.h"
#include "agent/metrics.h"
#include "agent/workload_api.h"
#include "agent/workload_api_source.h"
#include "agent/workloads.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One admin listener's HTTP counters (filled by admin.c, not the agent). */
typedef struct {
  const char *listener; /* "admin" or "telemetry" */
  const mt_http_server_stats *stats;
} mt_admin_http_view;

typedef struct {
  const mt_config *config;
  mt_identity *identity;         /* served now; NULL = none (fail closed) */
  const mt_workloads *workloads; /* node mode: the workloads served now (NULL = none) */
  const char *identity_source;   /* "files", "control-plane" or "workload_api" */
  mt_worker_metrics *const *worker_metrics;
  size_t num_workers;
  const mt_cert_manager_stats *control_plane; /* NULL unless the control plane is the source */
  const mt_workload_api_stats *workload_api;  /* NULL: the Workload API is not served */
  /* NULL unless the Workload API (a SPIRE agent) is the identity source */
  const mt_workload_api_source_stats *workload_api_source;
  uint64_t identity_updates;                  /* new certificates served (files or CA) */
  uint64_t identity_update_failures;          /* reloads / requests that failed */
  uint64_t config_reloads;
  uint64_t config_reload_failures;
  const char *last_reload_error; /* "" when the last reload worked */
  time_t started;
  time_t now;
  int draining;                   /* stopping: not ready, whatever else holds */
  const mt_admin_http_view *http; /* the admin listeners themselves */
  size_t num_http;
} mt_admin_view;

#ifdef __cplusplus
}
#endif

#endif /* MT_ADMIN_VIEW_H */
