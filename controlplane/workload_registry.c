/* workload_registry.c: the workloads file, polled and reloaded. */
#include "controlplane/workload_registry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controlplane/file_stamp.h"

enum {
  ERR_MAX = 1024,
  MS_PER_SECOND = 1000,
};

struct mt_workload_registry {
  struct ev_loop *loop;
  char *path;
  char *trust_domain;
  mt_ca_log *log;
  ev_timer poll;
  mt_workloads *current;
  mt_file_stamp stamp; /* the file as last read, loaded or refused */
  void (*on_change)(void *ctx);
  void *on_change_ctx;
};

static void log_in_force(mt_workload_registry *r) {
  size_t n = mt_workloads_count(r->current), nodes = mt_workloads_node_count(r->current);
  mt_ca_log_info(r->log, "workload registry (re)loaded from %s: %zu workload%s on %zu node%s",
                 r->path, n, n == 1 ? "" : "s", nodes, nodes == 1 ? "" : "s");
}

/* The stamp is taken before reading, so an edit racing the read is seen
 * as a change by the next poll rather than missed. */
static void reload(mt_workload_registry *r) {
  char err[ERR_MAX];
  mt_file_stamp_read(r->path, &r->stamp);
  mt_workloads *loaded = mt_workloads_load(r->path, r->trust_domain, err, sizeof(err));
  if (loaded == NULL) {
    mt_ca_log_count(r->log, MT_CA_EV_WORKLOADS_LOAD_FAILURES);
    mt_ca_log_error(r->log,
                    "workloads file refused, the previous registry (%zu workloads) stays: %s",
                    mt_workloads_count(r->current), err);
    return;
  }
  mt_workloads_free(r->current);
  r->current = loaded;
  mt_ca_log_count(r->log, MT_CA_EV_WORKLOADS_LOADS);
  log_in_force(r);
  if (r->on_change != NULL) r->on_change(r->on_change_ctx);
}

static void on_poll(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  mt_workload_registry *r = w->data;
  mt_file_stamp now;
  mt_file_stamp_read(r->path, &now);
  if (!mt_file_stamp_equal(&now, &r->stamp)) reload(r);
}

mt_workload_registry *mt_workload_registry_new(struct ev_loop *loop, const char *path,
                                               const char *trust_domain, int64_t poll_ms,
                                               mt_ca_log *log, char *err, size_t err_len) {
  mt_workload_registry *r = calloc(1, sizeof(*r));
  if (r == NULL || (r->path = strdup(path)) == NULL ||
      (r->trust_domain = strdup(trust_domain)) == NULL) {
    snprintf(err, err_len, "%s:1: out of memory", path);
    mt_workload_registry_free(r);
    return NULL;
  }
  r->log = log;
  mt_file_stamp_read(path, &r->stamp);
  r->current = mt_workloads_load(path, trust_domain, err, err_len);
  if (r->current == NULL) {
    mt_workload_registry_free(r);
    return NULL;
  }
  mt_ca_log_count(log, MT_CA_EV_WORKLOADS_LOADS);
  log_in_force(r);
  double seconds = (double)poll_ms / MS_PER_SECOND;
  ev_timer_init(&r->poll, on_poll, seconds, seconds);
  r->poll.data = r;
  r->loop = loop;
  ev_timer_start(loop, &r->poll);
  return r;
}

void mt_workload_registry_free(mt_workload_registry *r) {
  if (r == NULL) return;
  if (r->loop != NULL) ev_timer_stop(r->loop, &r->poll);
  mt_workloads_free(r->current);
  free(r->path);
  free(r->trust_domain);
  free(r);
}

void mt_workload_registry_set_on_change(mt_workload_registry *r, void (*on_change)(void *ctx),
                                        void *ctx) {
  r->on_change = on_change;
  r->on_change_ctx = ctx;
}

void mt_workload_registry_reload(mt_workload_registry *r) { reload(r); }

const mt_workloads *mt_workload_registry_current(const mt_workload_registry *r) {
  return r->current;
}
