/* admin_pages: readiness and the JSON pages about the agent itself (/certs,
 * /config), rendered from one mt_admin_view. Pure functions of the view: no
 * I/O, no HTTP. /metrics is admin_metrics.h, /policy admin_policy.h.
 *
 * Each page is a single JSON object. No page ever contains a private key or
 * a token: /certs shows certificates, /config shows file paths. */
#ifndef MT_ADMIN_PAGES_H
#define MT_ADMIN_PAGES_H

#include <stddef.h>

#include "agent/admin_view.h"
#include "agent/text.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Room for /ready's line: the reason, plus (when a renewal is overdue) the
 * control plane's last error. */
enum { MT_ADMIN_READY_TEXT_MAX = 512 };

/* 1 when ready; |why| gets a one-line reason either way. A valid
 * certificate whose renewal is overdue is still ready; the line says so. */
int mt_admin_ready(const mt_admin_view *v, char *why, size_t why_len);

/* The certificates served (node mode: per workload) and the trust bundles. */
void mt_admin_render_certs(const mt_admin_view *v, mt_text *out);
/* The effective configuration and the reload counters. */
void mt_admin_render_config(const mt_admin_view *v, mt_text *out);

#ifdef __cplusplus
}
#endif

#endif /* MT_ADMIN_PAGES_H */
