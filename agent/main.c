/* main.c: command line, start-up, signals, certificate-file watching and
 * shutdown. Everything else lives in the modules named after what they do. */
#include <ev.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/cert_manager.h"
#include "agent/config.h"
#include "agent/identity.h"
#include "agent/identity_files.h"
#include "agent/log.h"
#include "agent/redirect.h"
#include "agent/worker.h"

#define MTLSD_VERSION "0.1.0"

enum { ERR_TEXT_MAX = 1024 };

typedef struct {
  const mt_config *config;
  mt_workers *workers;
  mt_cert_manager *cert_manager; /* control-plane mode; NULL with certificate files */
  mt_identity *identity;         /* what the workers currently serve; NULL = none */
  uint64_t files_stamp;
  uint64_t failed_stamp;
  ev_timer reload_timer;
  ev_signal sigterm, sigint, sighup;
} agent;

static void usage(FILE *out) {
  fprintf(out,
          "usage: mtlsd --config FILE        run the agent\n"
          "       mtlsd --check-config FILE  validate FILE (and the files it names), then exit\n"
          "       mtlsd init-iptables --config FILE (--apply | --remove | --print)\n"
          "       mtlsd --version\n");
}

static void publish(agent *a, mt_identity *identity) {
  mt_workers_publish_identity(a->workers, identity);
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
    MT_LOG_E("certificate reload failed, keeping the current identity: %s", err);
    return;
  }
  a->files_stamp = stamp;
  a->failed_stamp = 0;
  MT_LOG_I("identity loaded: %s serial %s", mt_identity_spiffe_id(next), mt_identity_serial(next));
  publish(a, next);
}

/* An expired certificate is never presented: workers get "no identity" and
 * refuse new connections both ways until a valid one is loaded. */
static void enforce_expiry(agent *a) {
  if (a->identity == NULL || mt_identity_not_after(a->identity) > time(NULL)) return;
  MT_LOG_E("workload certificate %s expired; refusing new connections until it is replaced",
           mt_identity_serial(a->identity));
  publish(a, NULL);
}

/* The control-plane source hands over snapshots (it owns their timing). */
static void on_cert_manager_publish(void *arg, mt_identity *identity) { publish(arg, identity); }

static void on_reload_timer(struct ev_loop *loop, ev_timer *t, int revents) {
  (void)loop;
  (void)revents;
  agent *a = t->data;
  reload_identity(a, 0);
  enforce_expiry(a);
}

static void on_sighup(struct ev_loop *loop, ev_signal *s, int revents) {
  (void)loop;
  (void)revents;
  agent *a = s->data;
  if (a->cert_manager != NULL) return; /* certificates come from the control plane */
  MT_LOG_I("SIGHUP: reloading certificate files");
  reload_identity(a, 1);
}

static void on_stop_signal(struct ev_loop *loop, ev_signal *s, int revents) {
  (void)revents;
  MT_LOG_I("signal %d: draining connections and stopping", s->signum);
  ev_break(loop, EVBREAK_ALL);
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

static void watch_signals(struct ev_loop *loop, agent *a) {
  ev_signal_init(&a->sigterm, on_stop_signal, SIGTERM);
  ev_signal_init(&a->sigint, on_stop_signal, SIGINT);
  ev_signal_init(&a->sighup, on_sighup, SIGHUP);
  a->sighup.data = a;
  ev_signal_start(loop, &a->sigterm);
  ev_signal_start(loop, &a->sigint);
  ev_signal_start(loop, &a->sighup);
}

/* Certificate files: loaded now (a bad set stops start-up), then polled. */
static int start_file_source(agent *a, struct ev_loop *loop, char *err, size_t err_len) {
  a->files_stamp = mt_identity_files_stamp(a->config);
  mt_identity *identity = mt_identity_files_load(a->config, err, err_len);
  if (identity == NULL) return 0;
  publish(a, identity);
  MT_LOG_I("serving as %s (serial %s)", mt_identity_spiffe_id(identity),
           mt_identity_serial(identity));
  ev_timer_init(&a->reload_timer, on_reload_timer, 0.0, a->config->reload_interval_ms / 1000.0);
  a->reload_timer.data = a;
  ev_timer_again(loop, &a->reload_timer);
  return 1;
}

static void stop_agent(agent *a, struct ev_loop *loop) {
  mt_cert_manager_free(a->cert_manager);
  mt_workers_stop(a->workers, a->config->drain_timeout_ms);
  mt_identity_unref(a->identity);
  ev_loop_destroy(loop);
}

static int run(const char *path) {
  char err[ERR_TEXT_MAX];
  mt_config *config = mt_config_load(path, err, sizeof(err));
  if (config == NULL) {
    MT_LOG_E("%s", err);
    return 1;
  }
  mt_log_set_level(config->log_level);
  if (!mt_access_log_open(config->access_log)) {
    MT_LOG_E("%s: cannot open access log '%s'", path, config->access_log);
    mt_config_free(config);
    return 1;
  }
  agent a;
  memset(&a, 0, sizeof(a));
  a.config = config;
  struct ev_loop *loop = ev_default_loop(0);
  /* Workers start with no identity: they refuse connections until one is
   * published (fail closed while the control plane has not answered). */
  a.workers = mt_workers_start(config, NULL, err, sizeof(err));
  int ok = a.workers != NULL;
  if (ok && config->has_control_plane) {
    a.cert_manager =
        mt_cert_manager_start(loop, config, on_cert_manager_publish, &a, err, sizeof(err));
    ok = a.cert_manager != NULL;
  } else if (ok) {
    ok = start_file_source(&a, loop, err, sizeof(err));
  }
  int rc = 1;
  if (ok) {
    MT_LOG_I("mtlsd " MTLSD_VERSION " started (%s)", config->has_control_plane
                                                         ? "certificates from the control plane"
                                                         : "certificates from files");
    watch_signals(loop, &a);
    ev_run(loop, 0);
    rc = 0;
  } else {
    MT_LOG_E("%s: %s", path, err);
  }
  stop_agent(&a, loop);
  mt_access_log_close();
  mt_config_free(config);
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
