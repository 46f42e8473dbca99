/* main.c: command line, start-up, signals, certificate-file watching and
 * shutdown. Everything else lives in the modules named after what they do. */
#include <ev.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "agent/admin.h"
#include "agent/cert_manager.h"
#include "agent/config.h"
#include "agent/explain.h"
#include "agent/identity.h"
#include "agent/identity_files.h"
#include "agent/log.h"
#include "agent/redirect.h"
#include "agent/sandbox.h"
#include "agent/worker.h"
#include "agent/workload_api.h"
#include "agent/workload_api_source.h"

#define MTLSD_VERSION "0.1.0"

enum {
  ERR_TEXT_MAX = 1024,
  DESCRIPTOR_HEADROOM = 64, /* listeners, admin, logs, control plane, files */
};

typedef struct {
  mt_config *config; /* in force now (owned reference); replaced by a good reload */
  struct ev_loop *loop;
  mt_workers *workers;
  mt_cert_manager *cert_manager; /* control-plane mode; NULL with certificate files */
  mt_workload_api_source *workload_api_source; /* SPIFFE Workload API (SPIRE) mode */
  mt_demand *demand;             /* destinations on demand; NULL: not configured */
  mt_admin *admin;
  mt_workload_api *workload_api; /* workload_api.socket; NULL: not served */
  mt_identity *identity;         /* what the workers currently serve; NULL = none */
  mt_workloads *workloads;       /* node mode: what the workers currently serve */
  uint64_t files_stamp, failed_stamp;
  uint64_t config_stamp, config_failed_stamp;
  ev_timer reload_timer; /* polls the config file (and certificate files) */
  ev_signal sigterm, sigint, sighup;
  int draining;        /* stopping: workers drain while the admin endpoint answers */
  ev_timer drain_poll; /* until every worker has finished */
  /* What the admin endpoint reports. */
  uint64_t identity_updates, identity_update_failures;
  uint64_t config_reloads, config_reload_failures;
  char last_reload_error[ERR_TEXT_MAX];
  time_t started;
} agent;

static void usage(FILE *out) {
  fprintf(out,
          "usage: mtlsd --config FILE        run the agent\n"
          "       mtlsd --check-config FILE  validate FILE (and the files it names), then exit\n"
          "       mtlsd init-iptables --config FILE (--apply | --remove | --print)\n"
          "       mtlsd explain --config FILE (--peer ID | --plaintext) --port PORT [--json]\n"
          "       mtlsd --version\n");
}

static void publish(agent *a, mt_identity *identity) {
  mt_workers_publish_identity(a->workers, identity);
  if (a->workload_api != NULL) mt_workload_api_set_identity(a->workload_api, identity);
  mt_identity_unref(a->identity);
  a->identity = identity;
}

/* Re-reads the certificate files when they changed. A bad new set is logged
 * and ignored: the last good identity keeps serving. */
static void reload_identity(agent *a, int force) {
  uint64_t stamp = mt_identity_files_stamp(a->config);
  if (!force && (stamp == a->files_stamp || stamp == a->failed_stamp)) return;
  char err[ERR_TEXT_MAX];
  mt_identity *next = mt_identity_files_load(a->config, err, sizeof(err));
  if (next == NULL) {
    a->failed_stamp = stamp;
    a->identity_update_failures++;
    MT_LOG_E("certificate reload failed, keeping the current identity: %s", err);
    return;
  }
  a->files_stamp = stamp;
  a->failed_stamp = 0;
  a->identity_updates++;
  MT_LOG_I("identity loaded: %s serial %s", mt_identity_spiffe_id(next), mt_identity_serial(next));
  publish(a, next);
}

/* An expired certificate is never presented: workers get "no identity" and
 * refuse new connections both ways until a valid one is loaded. */
static void enforce_expiry(agent *a) {
  if (a->identity == NULL || mt_identity_not_after(a->identity) > time(NULL)) return;
  MT_LOG_E(
      "workload certificate %s expired; new connections wait for a replacement up to the "
      "handshake deadline, then are refused",
      mt_identity_serial(a->identity));
  publish(a, NULL);
}

/* The control-plane and Workload API sources hand over snapshots (they own
 * their timing, expiry included). */
static void on_source_publish(void *arg, mt_identity *identity) { publish(arg, identity); }

/* Whether the identity comes from a source that runs by itself (not files
 * this module polls). */
static int has_live_source(const agent *a) {
  return a->cert_manager != NULL || a->workload_api_source != NULL;
}

static const char *identity_source_name(const mt_config *c) {
  if (c->has_control_plane) return "control-plane";
  if (c->workload_api_source_socket != NULL) return "workload_api";
  return "files";
}

static void on_cert_manager_workloads(void *arg, mt_workloads *table) {
  agent *a = arg;
  mt_workers_publish_workloads(a->workers, table);
  if (a->workload_api != NULL) mt_workload_api_set_workloads(a->workload_api, table);
  mt_workloads_unref(a->workloads);
  a->workloads = table;
}

static void on_cert_manager_app_svid(void *arg, const char *spiffe_id, mt_identity *svid) {
  agent *a = arg;
  if (a->workload_api != NULL) mt_workload_api_app_svid(a->workload_api, spiffe_id, svid);
}

static int refuse_reload(agent *a, uint64_t stamp, char *msg, size_t msg_len) {
  a->config_failed_stamp = stamp;
  a->config_reload_failures++;
  snprintf(a->last_reload_error, sizeof(a->last_reload_error), "%s", msg);
  MT_LOG_E("config reload refused, the running config stays in force: %s", msg);
  (void)msg_len;
  return 0;
}

/* Loads the config file again and, if it is valid and changes nothing that
 * needs a restart, puts it in force: policy, destinations, timeouts, TLS
 * settings, trust bundles, log level and (with certificate files) the
 * identity files. Live connections finish under the snapshot they started
 * with. Anything wrong leaves the running config untouched. */
static int reload_config(agent *a, int force, char *msg, size_t msg_len) {
  uint64_t stamp = mt_file_stamp(a->config->path);
  if (!force && (stamp == a->config_stamp || stamp == a->config_failed_stamp)) return 1;
  a->config_stamp = stamp;
  char err[ERR_TEXT_MAX];
  mt_config *next = mt_config_load(a->config->path, err, sizeof(err));
  if (next == NULL) {
    snprintf(msg, msg_len, "%s", err);
    return refuse_reload(a, stamp, msg, msg_len);
  }
  char changed[512];
  if (mt_config_restart_changes(a->config, next, changed, sizeof(changed)) > 0) {
    snprintf(msg, msg_len, "%s: %s changed; these take effect only at start, restart the agent",
             next->path, changed);
    mt_config_free(next);
    return refuse_reload(a, stamp, msg, msg_len);
  }
  mt_identity *identity = NULL;
  if (!has_live_source(a)) {
    identity = mt_identity_files_load(next, err, sizeof(err));
    if (identity == NULL) {
      snprintf(msg, msg_len, "%s: identity: %s", next->path, err);
      mt_config_free(next);
      return refuse_reload(a, stamp, msg, msg_len);
    }
  }
  mt_log_set_level(next->log_level);
  mt_workers_publish_config(a->workers, next);
  mt_config_free(a->config);
  a->config = next;
  if (a->cert_manager != NULL) {
    mt_cert_manager_set_config(a->cert_manager, next);
  } else if (a->workload_api_source != NULL) {
    mt_workload_api_source_set_config(a->workload_api_source, next);
  } else {
    /* The files were re-read with the new settings; only a different
     * certificate counts as a rotation. */
    if (a->identity == NULL ||
        strcmp(mt_identity_serial(a->identity), mt_identity_serial(identity)) != 0)
      a->identity_updates++;
    a->files_stamp = mt_identity_files_stamp(next);
    a->failed_stamp = 0;
    publish(a, identity);
  }
  if (a->reload_timer.repeat != next->reload_interval_ms / 1000.0) {
    a->reload_timer.repeat = next->reload_interval_ms / 1000.0;
    ev_timer_again(a->loop, &a->reload_timer);
  }
  a->config_failed_stamp = 0;
  a->config_reloads++;
  a->last_reload_error[0] = '\0';
  snprintf(msg, msg_len, "%s: reloaded (%zu policy rules)", next->path,
           mt_policy_rule_count(next->policy));
  MT_LOG_I("config reloaded from %s", msg);
  return 1;
}

static void on_reload_timer(struct ev_loop *loop, ev_timer *t, int revents) {
  (void)loop;
  (void)revents;
  agent *a = t->data;
  char msg[ERR_TEXT_MAX];
  reload_config(a, 0, msg, sizeof(msg));
  if (has_live_source(a)) return;
  reload_identity(a, 0);
  enforce_expiry(a);
}

static void on_sighup(struct ev_loop *loop, ev_signal *s, int revents) {
  (void)loop;
  (void)revents;
  agent *a = s->data;
  char msg[ERR_TEXT_MAX];
  MT_LOG_I("SIGHUP: reloading the config%s", has_live_source(a) ? "" : " and certificate files");
  reload_config(a, 1, msg, sizeof(msg)); /* with files, this re-reads them too */
}

static void on_drain_poll(struct ev_loop *loop, ev_timer *t, int revents) {
  (void)revents;
  agent *a = t->data;
  if (mt_workers_drained(a->workers)) ev_break(loop, EVBREAK_ALL);
}

/* Stop accepting and let live connections finish (each worker closes what
 * is left at the drain deadline); meanwhile the loop keeps running, so the
 * admin endpoint reports "draining" and certificates stay fresh. */
static void begin_drain(agent *a, const char *why) {
  if (a->draining) return;
  a->draining = 1;
  MT_LOG_I("%s: draining connections for up to %d ms, then stopping", why,
           a->config->drain_timeout_ms);
  mt_workers_begin_stop(a->workers, a->config->drain_timeout_ms);
  ev_timer_init(&a->drain_poll, on_drain_poll, 0.02, 0.02);
  a->drain_poll.data = a;
  ev_timer_start(a->loop, &a->drain_poll);
}

static void on_stop_signal(struct ev_loop *loop, ev_signal *s, int revents) {
  (void)loop;
  (void)revents;
  begin_drain(s->data, s->signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* ---- admin endpoint hooks ---- */

static void admin_view(void *arg, mt_admin_view *v) {
  agent *a = arg;
  static mt_cert_manager_stats cp;           /* main thread only; valid for the request */
  static mt_workload_api_source_stats wlapi; /* likewise */
  v->config = a->config;
  v->identity = a->identity;
  v->workloads = a->workloads;
  v->identity_source = identity_source_name(a->config);
  v->worker_metrics = mt_workers_metrics(a->workers, &v->num_workers);
  v->identity_updates = a->identity_updates;
  v->identity_update_failures = a->identity_update_failures;
  if (a->cert_manager != NULL) {
    mt_cert_manager_get_stats(a->cert_manager, &cp);
    v->control_plane = &cp;
    v->identity_updates = cp.certificates_issued;
    v->identity_update_failures = cp.certificate_failures;
  }
  static mt_workload_api_stats wl; /* main thread only; valid for the request */
  if (a->workload_api != NULL) {
    mt_workload_api_get_stats(a->workload_api, &wl);
    v->workload_api = &wl;
  }
  if (a->workload_api_source != NULL) {
    mt_workload_api_source_get_stats(a->workload_api_source, &wlapi);
    v->workload_api_source = &wlapi;
    v->identity_updates = wlapi.svids_served;
    v->identity_update_failures = wlapi.refusals_total;
  }
  v->config_reloads = a->config_reloads;
  v->config_reload_failures = a->config_reload_failures;
  v->last_reload_error = a->last_reload_error;
  v->started = a->started;
  v->draining = a->draining;
  v->now = time(NULL);
}

static void admin_quit(void *arg) { begin_drain(arg, "POST /quitquitquit"); }

static int admin_reload(void *arg, char *msg, size_t msg_len) {
  agent *a = arg;
  MT_LOG_I("admin: reload requested");
  return reload_config(a, 1, msg, msg_len); /* with files, this re-reads them too */
}

static int check_config(const char *path) {
  char err[ERR_TEXT_MAX];
  mt_config *config = mt_config_load(path, err, sizeof(err));
  if (config == NULL) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  int rc = 0;
  if (config->has_control_plane) {
    printf("%s: OK (identity %s from control plane %s)\n", path, config->spiffe_id,
           config->cp_address);
  } else if (config->workload_api_source_socket != NULL) {
    printf("%s: OK (identity %s from the SPIFFE Workload API at %s)\n", path,
           config->spiffe_id ? config->spiffe_id : "(the first SVID)",
           config->workload_api_source_socket);
  } else {
    mt_identity *identity = mt_identity_files_load(config, err, sizeof(err));
    if (identity == NULL)
      fprintf(stderr, "%s: identity: %s\n", path, err);
    else
      printf("%s: OK (identity %s)\n", path, mt_identity_spiffe_id(identity));
    rc = identity == NULL;
    mt_identity_unref(identity);
  }
  mt_config_free(config);
  return rc;
}

static void watch_signals(agent *a) {
  ev_signal_init(&a->sigterm, on_stop_signal, SIGTERM);
  ev_signal_init(&a->sigint, on_stop_signal, SIGINT);
  ev_signal_init(&a->sighup, on_sighup, SIGHUP);
  a->sigterm.data = a->sigint.data = a->sighup.data = a;
  ev_signal_start(a->loop, &a->sigterm);
  ev_signal_start(a->loop, &a->sigint);
  ev_signal_start(a->loop, &a->sighup);
}

/* Certificate files: loaded before the listeners exist (a bad set stops
 * start-up, and no connection is ever accepted without an identity), then
 * polled. */
static int load_file_source(agent *a, char *err, size_t err_len) {
  a->files_stamp = mt_identity_files_stamp(a->config);
  a->identity = mt_identity_files_load(a->config, err, err_len);
  if (a->identity == NULL) return 0;
  a->identity_updates++;
  MT_LOG_I("serving as %s (serial %s)", mt_identity_spiffe_id(a->identity),
           mt_identity_serial(a->identity));
  return 1;
}

static void start_polling(agent *a) {
  a->config_stamp = mt_file_stamp(a->config->path);
  ev_timer_init(&a->reload_timer, on_reload_timer, 0.0, a->config->reload_interval_ms / 1000.0);
  a->reload_timer.data = a;
  ev_timer_again(a->loop, &a->reload_timer);
}

static int start_admin(agent *a, char *err, size_t err_len) {
  if (!a->config->admin_enabled) return 1;
  mt_admin_hooks hooks = {admin_view, admin_quit, admin_reload, a};
  a->admin = mt_admin_start(a->loop, a->config, &hooks, err, err_len);
  return a->admin != NULL;
}

/* After the drain (or a failed start). Order matters: the admin endpoint
 * goes first (it reads the workers), the identity source next, then the
 * workers are joined. */
static void stop_agent(agent *a) {
  if (a->draining) ev_timer_stop(a->loop, &a->drain_poll);
  mt_admin_free(a->admin);
  mt_workload_api_free(a->workload_api); /* before the manager it asks */
  mt_cert_manager_free(a->cert_manager);
  mt_workload_api_source_free(a->workload_api_source);
  mt_workers_stop(a->workers, a->config->drain_timeout_ms);
  mt_demand_free(a->demand); /* after the workers that ask and the manager that sends */
  mt_identity_unref(a->identity);
  mt_workloads_unref(a->workloads);
  ev_loop_destroy(a->loop);
}

/* Whether binding any listener needs CAP_NET_BIND_SERVICE. */
static int needs_bind_capability(const mt_config *c) {
  int need = 0;
  for (size_t i = 0; i < c->num_inbound_listeners; i++)
    need |= mt_sandbox_port_is_privileged(
        mt_sockaddr_port((const struct sockaddr *)&c->inbound_listeners[i].listen.addr));
  for (size_t i = 0; i < c->num_outbound_listeners; i++)
    need |= mt_sandbox_port_is_privileged(
        mt_sockaddr_port((const struct sockaddr *)&c->outbound_listeners[i].listen.addr));
  if (c->admin_enabled) {
    need |= mt_sandbox_port_is_privileged(
        mt_sockaddr_port((const struct sockaddr *)&c->admin_address.addr));
    if (c->has_admin_telemetry_address)
      need |= mt_sandbox_port_is_privileged(
          mt_sockaddr_port((const struct sockaddr *)&c->admin_telemetry_address.addr));
  }
  return need;
}

/* Step one of sandbox.h, before any thread or file of the agent's own:
 * what start-up reads, it reads as the serving agent would on a reload. */
static int enter_sandbox(const mt_config *config, const char *path) {
  char err[ERR_TEXT_MAX];
  if (mt_sandbox_enter(needs_bind_capability(config), err, sizeof(err))) return 1;
  MT_LOG_E("%s: least privilege: %s", path, err);
  return 0;
}

/* Step two, once every listener is bound and the identity source runs. */
static int lock_sandbox(const mt_config *config, char *err, size_t err_len) {
  if (!mt_sandbox_lock(config->seccomp, err, err_len)) return 0;
  if (config->seccomp == MT_SECCOMP_OFF)
    MT_LOG_I(
        "least privilege: capabilities dropped, no_new_privs set; seccomp off "
        "(security.seccomp: false)");
  else
    MT_LOG_I(
        "least privilege: capabilities dropped, no_new_privs set, seccomp filter %s "
        "(%zu system calls allowed)",
        config->seccomp == MT_SECCOMP_LOG ? "logging (security.seccomp: log)" : "on",
        mt_sandbox_allowed_count());
  return 1;
}

/* Each proxied connection takes two descriptors. Service managers often
 * start processes with a soft limit of 1024 and a much higher hard one;
 * take the hard one, and say when even that cannot hold max_connections
 * (accepting then pauses at the limit: worker.c). */
static void raise_descriptor_limit(const mt_config *config) {
  struct rlimit lim;
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return;
  if (lim.rlim_cur < lim.rlim_max) {
    struct rlimit raised = {lim.rlim_max, lim.rlim_max};
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) lim = raised;
  }
  rlim_t needed = (rlim_t)config->max_connections * 2 + DESCRIPTOR_HEADROOM;
  if (lim.rlim_cur != RLIM_INFINITY && lim.rlim_cur < needed)
    MT_LOG_W(
        "open file limit is %llu; max_connections %d needs about %llu (two per connection); "
        "beyond the limit new connections wait in the listen backlog",
        (unsigned long long)lim.rlim_cur, config->max_connections, (unsigned long long)needed);
}

static int run(const char *path) {
  char err[ERR_TEXT_MAX];
  mt_config *config = mt_config_load(path, err, sizeof(err));
  if (config == NULL) {
    MT_LOG_E("%s", err);
    return 1;
  }
  mt_log_set_level(config->log_level);
  raise_descriptor_limit(config);
  if (!enter_sandbox(config, path)) {
    mt_config_free(config);
    return 1;
  }
  if (!mt_access_log_open(config->access_log)) {
    MT_LOG_E("%s: cannot open access log '%s'", path, config->access_log);
    mt_config_free(config);
    return 1;
  }
  agent a;
  memset(&a, 0, sizeof(a));
  a.config = config;
  a.started = time(NULL);
  a.loop = ev_default_loop(0);
  /* Before anything can be observed from outside (listeners, the "started"
   * line): a SIGTERM sent as soon as the agent looks up is queued by libev
   * and handled by the loop, never the default action. */
  watch_signals(&a);
  /* With the control plane or the Workload API, workers start with no
   * identity: a connection that arrives first is held until the certificate
   * is published (or refused at its handshake deadline: fail closed). */
  int live_source = config->has_control_plane || config->workload_api_source_socket != NULL;
  int ok = live_source || load_file_source(&a, err, sizeof(err));
  if (ok && config->has_control_plane && config->cp_watch && config->cp_on_demand) {
    a.demand = mt_demand_new(a.loop);
    ok = a.demand != NULL;
    if (!ok) snprintf(err, sizeof(err), "out of memory");
  }
  if (ok) {
    a.workers = mt_workers_start(config, a.identity, a.demand, err, sizeof(err));
    ok = a.workers != NULL && start_admin(&a, err, sizeof(err));
  }
  if (ok && config->has_control_plane) {
    mt_cert_manager_sink sink = {on_source_publish, on_cert_manager_workloads, &a, a.demand,
                                 on_cert_manager_app_svid};
    a.cert_manager = mt_cert_manager_start(a.loop, config, &sink, err, sizeof(err));
    ok = a.cert_manager != NULL;
  }
  if (ok && config->workload_api_socket != NULL) {
    a.workload_api = mt_workload_api_start(a.loop, config, a.cert_manager, err, sizeof(err));
    ok = a.workload_api != NULL;
  }
  if (ok && config->workload_api_source_socket != NULL) {
    mt_workload_api_source_sink sink = {on_source_publish, &a};
    a.workload_api_source = mt_workload_api_source_start(a.loop, config, &sink, err, sizeof(err));
    ok = a.workload_api_source != NULL;
  }
  ok = ok && lock_sandbox(config, err, sizeof(err));
  int rc = 1;
  if (ok) {
    MT_LOG_I("mtlsd " MTLSD_VERSION " started (%s)",
             config->has_control_plane ? "certificates from the control plane"
             : config->workload_api_source_socket != NULL
                 ? "certificates from the SPIFFE Workload API"
                 : "certificates from files");
    start_polling(&a);
    ev_run(a.loop, 0);
    rc = 0;
  } else {
    MT_LOG_E("%s: %s", path, err);
  }
  stop_agent(&a);
  mt_access_log_close();
  mt_config_free(a.config);
  if (rc == 0) MT_LOG_I("stopped");
  return rc;
}

int main(int argc, char **argv) {
  static const struct option options[] = {
      {"config", required_argument, NULL, 'c'},
      {"check-config", required_argument, NULL, 'k'},
      {"version", no_argument, NULL, 'v'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  signal(SIGPIPE, SIG_IGN);
  if (argc > 1 && strcmp(argv[1], "init-iptables") == 0)
    return mt_redirect_main(argc - 1, argv + 1);
  if (argc > 1 && strcmp(argv[1], "explain") == 0) return mt_explain_main(argc - 1, argv + 1);
  const char *config_path = NULL;
  int opt;
  while ((opt = getopt_long(argc, argv, "c:k:vh", options, NULL)) != -1) {
    switch (opt) {
      case 'c': config_path = optarg; break;
      case 'k': return check_config(optarg);
      case 'v': printf("mtlsd %s\n", MTLSD_VERSION); return 0;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  }
  if (config_path == NULL || optind != argc) {
    usage(stderr);
    return 2;
  }
  return run(config_path);
}
