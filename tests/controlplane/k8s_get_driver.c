/* k8s_get_driver: one GET through mtls-ca's Kubernetes API client
 * (controlplane/k8s_client.h), for tests against the API server stand-in.
 *
 *   k8s_get_driver --server URL --token-file F --ca-file F --path P
 *                  [--timeout-ms N] [--abort-after-bytes N]
 *                  [--cancel-after-bytes N] [--body FILE]
 *
 * Prints "status=S bytes=N chunks=C error=TEXT" when the request ends (or
 * "cancelled bytes=N" after a cancel) and exits 0; exits 2 when the client
 * or the request could not be created. --body writes what arrived. */
#include <ev.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controlplane/k8s_client.h"

typedef struct {
  struct ev_loop *loop;
  mt_k8s_request *request;
  FILE *body;
  size_t bytes, chunks;
  long long abort_after, cancel_after; /* -1: never */
  ev_idle cancel_now;                  /* cancel is not allowed inside on_data */
} driver;

static int on_data(void *ctx, const char *data, size_t len) {
  driver *d = ctx;
  d->bytes += len;
  d->chunks++;
  if (d->body) fwrite(data, 1, len, d->body);
  if (d->abort_after >= 0 && (long long)d->bytes >= d->abort_after) return 0;
  if (d->cancel_after >= 0 && (long long)d->bytes >= d->cancel_after)
    ev_idle_start(d->loop, &d->cancel_now);
  return 1;
}

static void on_done(void *ctx, long status, const char *error) {
  driver *d = ctx;
  d->request = NULL;
  printf("status=%ld bytes=%zu chunks=%zu error=%s\n", status, d->bytes, d->chunks, error);
  ev_break(d->loop, EVBREAK_ALL);
}

static void on_cancel_now(struct ev_loop *loop, ev_idle *w, int revents) {
  (void)revents;
  driver *d = w->data;
  ev_idle_stop(loop, w);
  mt_k8s_request_cancel(d->request);
  d->request = NULL;
  printf("cancelled bytes=%zu\n", d->bytes);
  ev_break(loop, EVBREAK_ALL);
}

int main(int argc, char **argv) {
  mt_k8s_client_config config = {0};
  const char *path = NULL, *body_path = NULL;
  long long timeout_ms = 0;
  driver d = {.abort_after = -1, .cancel_after = -1};
  static const struct option options[] = {
      {"server", required_argument, NULL, 's'},
      {"token-file", required_argument, NULL, 't'},
      {"ca-file", required_argument, NULL, 'c'},
      {"path", required_argument, NULL, 'p'},
      {"timeout-ms", required_argument, NULL, 'T'},
      {"abort-after-bytes", required_argument, NULL, 'a'},
      {"cancel-after-bytes", required_argument, NULL, 'x'},
      {"body", required_argument, NULL, 'b'},
      {NULL, 0, NULL, 0},
  };
  int opt;
  while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
    switch (opt) {
      case 's': config.server = optarg; break;
      case 't': config.token_file = optarg; break;
      case 'c': config.ca_file = optarg; break;
      case 'p': path = optarg; break;
      case 'T': timeout_ms = atoll(optarg); break;
      case 'a': d.abort_after = atoll(optarg); break;
      case 'x': d.cancel_after = atoll(optarg); break;
      case 'b': body_path = optarg; break;
      default: return 2;
    }
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  d.loop = ev_default_loop(0);
  ev_idle_init(&d.cancel_now, on_cancel_now);
  d.cancel_now.data = &d;
  if (body_path != NULL && (d.body = fopen(body_path, "wb")) == NULL) return 2;
  char err[MT_K8S_ERROR_MAX];
  mt_k8s_client *client = mt_k8s_client_new(d.loop, &config, err, sizeof(err));
  if (client == NULL) {
    fprintf(stderr, "k8s_get_driver: %s\n", err);
    return 2;
  }
  static const mt_k8s_request_callbacks cb = {on_data, on_done, NULL};
  d.request = mt_k8s_client_get(client, path ? path : "/", timeout_ms, &cb, &d, err, sizeof(err));
  if (d.request == NULL) {
    fprintf(stderr, "k8s_get_driver: %s\n", err);
    mt_k8s_client_free(client);
    return 2;
  }
  ev_run(d.loop, 0);
  mt_k8s_client_free(client);
  if (d.body) fclose(d.body);
  return 0;
}
