/* workload_registry: the workload registry in force (workloads_file.h),
 * kept current while mtls-ca runs.
 *
 * The file is checked (stat) every |poll_ms| and re-read when it changed,
 * or at once on mt_workload_registry_reload (SIGHUP). A version that loads
 * replaces the one in force; one that does not is logged with its
 * "file:line: reason" and counted, and the last good registry stays in
 * force (a refused version is not retried until the file changes again).
 * Runs on one libev loop; no threads. */
#ifndef MT_CP_WORKLOAD_REGISTRY_H
#define MT_CP_WORKLOAD_REGISTRY_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include "controlplane/ca_log.h"
#include "controlplane/workloads_file.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_workload_registry mt_workload_registry;

/* Loads |path| (every identity in |trust_domain|) and starts polling.
 * |log| is borrowed and must outlive the registry. Returns NULL with
 * "file:line: reason" in |err|. */
mt_workload_registry *mt_workload_registry_new(struct ev_loop *loop, const char *path,
                                               const char *trust_domain, int64_t poll_ms,
                                               mt_ca_log *log, char *err, size_t err_len);

/* Stops polling and frees everything; accepts NULL. */
void mt_workload_registry_free(mt_workload_registry *registry);

/* |on_change| (may be NULL) is called after each reload that put a new
 * registry in force (not after a refused one). */
void mt_workload_registry_set_on_change(mt_workload_registry *registry,
                                        void (*on_change)(void *ctx), void *ctx);

/* Re-reads the file now, even if it looks unchanged. */
void mt_workload_registry_reload(mt_workload_registry *registry);

/* The registry in force; borrowed until the next reload or poll. */
const mt_workloads *mt_workload_registry_current(const mt_workload_registry *registry);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_WORKLOAD_REGISTRY_H */
