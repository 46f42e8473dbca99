/* k8s_watch_driver: mtls-ca's Kubernetes source (controlplane/k8s_source.h)
 * alone, for tests against the API server stand-in (tests/k8s).
 *
 *   k8s_watch_driver --server URL --token-file F --ca-file F
 *                    --trust-domain TD --dump FILE [--watch-timeout-s N]
 *                    [--backoff-max-ms N] [--idle-grace-ms N] [--list-page-size N]
 *
 * Prints one line per event, sync and problem on stdout (line-buffered),
 * and rewrites FILE atomically with the derived state
 * (mt_cluster_state_dump) after every change and sync, preceded by a
 * "synced=0|1 events=N" header line. SIGTERM or SIGINT: stop, print the
 * watch counters, exit 0. */
#include <ev.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controlplane/k8s_source.h"

typedef struct {
  mt_k8s_source *source;
  const char *dump_path;
  unsigned long changes;
} driver;

static void write_dump(driver *d) {
  char tmp[4096];
  snprintf(tmp, sizeof(tmp), "%s.tmp", d->dump_path);
  FILE *f = fopen(tmp, "w");
  if (f == NULL) return;
  char *text = mt_cluster_state_dump(mt_k8s_source_state(d->source));
  fprintf(f, "synced=%d changes=%lu\n%s", mt_k8s_source_synced(d->source), d->changes,
          text ? text : "");
  free(text);
  fclose(f);
  rename(tmp, d->dump_path);
}

static void on_change(void *ctx) {
  driver *d = ctx;
  d->changes++;
  if (d->source) write_dump(d);
}

static void on_synced(void *ctx) {
  driver *d = ctx;
  printf("all synced\n");
  write_dump(d);
}

static void on_log(void *ctx, const char *line) {
  driver *d = ctx;
  printf("%s\n", line);
  /* A LIST that changed nothing still moves the dump's synced flag. */
  if (d->source && strncmp(line, "synced ", strlen("synced ")) == 0) write_dump(d);
}

static void on_stop(struct ev_loop *loop, ev_signal *w, int revents) {
  (void)w;
  (void)revents;
  ev_break(loop, EVBREAK_ALL);
}

int main(int argc, char **argv) {
  static const struct option options[] = {
      {"server", required_argument, NULL, 's'},
      {"token-file", required_argument, NULL, 't'},
      {"ca-file", required_argument, NULL, 'c'},
      {"trust-domain", required_argument, NULL, 'd'},
      {"dump", required_argument, NULL, 'o'},
      {"watch-timeout-s", required_argument, NULL, 'w'},
      {"backoff-max-ms", required_argument, NULL, 'b'},
      {"idle-grace-ms", required_argument, NULL, 'g'},
      {"list-page-size", required_argument, NULL, 'p'},
      {NULL, 0, NULL, 0},
  };
  mt_k8s_source_config config = {.trust_domain = "example.org"};
  driver d = {0};
  int opt;
  while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
    switch (opt) {
      case 's': config.client.server = optarg; break;
      case 't': config.client.token_file = optarg; break;
      case 'c': config.client.ca_file = optarg; break;
      case 'd': config.trust_domain = optarg; break;
      case 'o': d.dump_path = optarg; break;
      case 'w': config.watch_timeout_s = atoll(optarg); break;
      case 'b': config.backoff_max_ms = atoll(optarg); break;
      case 'g': config.idle_grace_ms = atoll(optarg); break;
      case 'p': config.list_page_size = (size_t)atoll(optarg); break;
      default: return 2;
    }
  }
  if (d.dump_path == NULL) {
    fprintf(stderr, "k8s_watch_driver: --dump is required\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  struct ev_loop *loop = ev_default_loop(0);
  ev_signal term, intr;
  ev_signal_init(&term, on_stop, SIGTERM);
  ev_signal_init(&intr, on_stop, SIGINT);
  ev_signal_start(loop, &term);
  ev_signal_start(loop, &intr);
  static const mt_k8s_source_callbacks cb = {on_change, on_synced, on_log, NULL, NULL};
  char err[512];
  d.source = mt_k8s_source_new(loop, &config, &cb, &d, err, sizeof(err));
  if (d.source == NULL) {
    fprintf(stderr, "k8s_watch_driver: %s\n", err);
    return 1;
  }
  write_dump(&d);
  printf("started\n");
  ev_run(loop, 0);
  static const struct {
    mt_k8s_kind kind;
    const char *name;
  } kinds[] = {{MT_K8S_KIND_NAMESPACE, "namespaces"},
               {MT_K8S_KIND_POD, "pods"},
               {MT_K8S_KIND_SERVICE, "services"},
               {MT_K8S_KIND_ENDPOINTSLICE, "endpointslices"}};
  for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
    mt_k8s_watch_stats st;
    mt_k8s_source_watch_stats(d.source, kinds[i].kind, &st);
    printf(
        "stats %s lists=%llu list_pages=%llu relists_gone=%llu watches=%llu events=%llu "
        "bookmarks=%llu idle_restarts=%llu failures=%llu\n",
        kinds[i].name, (unsigned long long)st.lists, (unsigned long long)st.list_pages,
        (unsigned long long)st.relists_gone,
        (unsigned long long)st.watches, (unsigned long long)st.events,
        (unsigned long long)st.bookmarks, (unsigned long long)st.idle_restarts,
        (unsigned long long)st.failures);
  }
  mt_k8s_source_free(d.source);
  printf("stopped\n");
  return 0;
}
