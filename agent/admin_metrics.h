/* admin_metrics: the /metrics page, in the Prometheus text format 0.0.4.
 *
 * The workers' counters (metrics.h) followed by the agent-wide gauges: build
 * info, readiness, served certificates, trust bundles, control-plane stream,
 * config reloads and the admin endpoint's own HTTP counters. Every family's
 * samples follow its own HELP/TYPE lines. A pure function of the view. */
#ifndef MT_ADMIN_METRICS_H
#define MT_ADMIN_METRICS_H

#include "agent/admin_view.h"
#include "agent/text.h"

#ifdef __cplusplus
extern "C" {
#endif

void mt_admin_render_metrics(const mt_admin_view *v, mt_text *out);

#ifdef __cplusplus
}
#endif

#endif /* MT_ADMIN_METRICS_H */
