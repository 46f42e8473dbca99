/* admin.c: libmicrohttpd on the main loop, routing, responses.
 *
 * libmicrohttpd runs in "external" mode with its own epoll set: the loop
 * watches that one descriptor and MHD's timeout, and calls MHD_run when
 * either fires. Requests are answered completely inside the handler. */
#include "agent/admin.h"

#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "agent/admin_metrics.h"
#include "agent/admin_pages.h"
#include "agent/admin_policy.h"
#include "agent/log.h"

enum {
  ADMIN_MAX_CONNECTIONS = 32,   /* an operator and a scraper, with room to spare */
  ADMIN_IDLE_TIMEOUT_S = 10,    /* a stuck client cannot hold a slot for long */
  ADMIN_MEMORY_PER_CONN = 32768 /* request headers only: no bodies are read */
};

typedef struct admin_listener admin_listener;

struct admin_listener {
  mt_admin *admin;
  struct MHD_Daemon *daemon;
  int telemetry_only;
  ev_io io;
  ev_timer timer;
};

struct mt_admin {
  struct ev_loop *loop;
  mt_admin_hooks hooks;
  admin_listener listeners[2];
  size_t num_listeners;
};

/* Per-request markers kept in MHD's request pointer. */
static char request_started, request_quit;

static void schedule(admin_listener *l);

static void on_mhd_io(struct ev_loop *loop, ev_io *w, int revents) {
  (void)loop;
  (void)revents;
  admin_listener *l = w->data;
  MHD_run(l->daemon);
  schedule(l);
}

static void on_mhd_timer(struct ev_loop *loop, ev_timer *t, int revents) {
  (void)loop;
  (void)revents;
  admin_listener *l = t->data;
  MHD_run(l->daemon);
  schedule(l);
}

/* Re-arms the timer with whatever MHD next needs (idle timeouts). */
static void schedule(admin_listener *l) {
  struct ev_loop *loop = l->admin->loop;
  ev_timer_stop(loop, &l->timer);
  MHD_UNSIGNED_LONG_LONG ms = 0;
  if (MHD_get_timeout(l->daemon, &ms) != MHD_YES) return;
  ev_timer_set(&l->timer, (double)ms / 1000.0, 0.0);
  ev_timer_start(loop, &l->timer);
}

/* |allow| (NULL = none) is the Allow header a 405 must carry (RFC 9110 15.5.6). */
static enum MHD_Result respond_with(struct MHD_Connection *c, unsigned int status,
                                    const char *content_type, const char *allow, const char *body,
                                    size_t len) {
  struct MHD_Response *r =
      MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
  if (r == NULL) return MHD_NO;
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
  MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
  if (allow != NULL) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
  enum MHD_Result rc = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return rc;
}

static enum MHD_Result respond(struct MHD_Connection *c, unsigned int status,
                               const char *content_type, const char *body, size_t len) {
  return respond_with(c, status, content_type, NULL, body, len);
}

static enum MHD_Result respond_text(struct MHD_Connection *c, unsigned int status, const char *fmt,
                                    ...) __attribute__((format(printf, 3, 4)));

static enum MHD_Result respond_text(struct MHD_Connection *c, unsigned int status, const char *fmt,
                                    ...) {
  char body[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(body, sizeof(body), fmt, ap);
  va_end(ap);
  size_t len = n < 0 ? 0 : (size_t)n >= sizeof(body) ? sizeof(body) - 1 : (size_t)n;
  return respond(c, status, "text/plain; charset=utf-8", body, len);
}

static enum MHD_Result respond_rendered(struct MHD_Connection *c, const char *content_type,
                                        mt_text *t) {
  enum MHD_Result rc = t->failed
                           ? respond_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n")
                           : respond(c, MHD_HTTP_OK, content_type, t->data ? t->data : "", t->len);
  mt_text_free(t);
  return rc;
}

static enum MHD_Result respond_not_allowed(struct MHD_Connection *c, const char *path,
                                           const char *want, const char *allow) {
  char body[256];
  int n = snprintf(body, sizeof(body), "%s needs %s\n", path, want);
  size_t len = n < 0 ? 0 : (size_t)n >= sizeof(body) ? sizeof(body) - 1 : (size_t)n;
  return respond_with(c, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", allow, body,
                      len);
}

typedef enum { PAGE_METRICS, PAGE_CERTS, PAGE_POLICY, PAGE_CONFIG } page;

static enum MHD_Result serve_page(admin_listener *l, struct MHD_Connection *c, page which) {
  mt_admin_view v;
  memset(&v, 0, sizeof(v));
  l->admin->hooks.view(l->admin->hooks.arg, &v);
  mt_text t;
  mt_text_init(&t);
  switch (which) {
    case PAGE_METRICS:
      mt_admin_render_metrics(&v, &t);
      return respond_rendered(c, "text/plain; version=0.0.4; charset=utf-8", &t);
    case PAGE_CERTS: mt_admin_render_certs(&v, &t); break;
    case PAGE_POLICY: {
      /* ?peer=ID&port=N (or ?plaintext=1&port=N) explains one decision;
       * in node mode &workload=IP names the destination pod. */
      const char *peer = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "peer");
      const char *plain = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "plaintext");
      const char *port = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "port");
      const char *workload = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "workload");
      if (peer == NULL && plain == NULL && port == NULL) {
        mt_admin_render_policy(&v, workload, &t);
        break;
      }
      char *end = NULL;
      long n = port ? strtol(port, &end, 10) : -1;
      if (port == NULL || *port == '\0' || *end != '\0' || n < 1 || n > 65535 ||
          (peer == NULL) == (plain == NULL))
        return respond_text(c, MHD_HTTP_BAD_REQUEST,
                            "use /policy?peer=SPIFFE_ID&port=N or /policy?plaintext=1&port=N\n");
      mt_admin_render_explain(&v, workload, peer, (uint16_t)n, &t);
      break;
    }
    case PAGE_CONFIG: mt_admin_render_config(&v, &t); break;
  }
  return respond_rendered(c, "application/json", &t);
}

static enum MHD_Result serve_ready(admin_listener *l, struct MHD_Connection *c) {
  mt_admin_view v;
  memset(&v, 0, sizeof(v));
  l->admin->hooks.view(l->admin->hooks.arg, &v);
  char why[256];
  int ready = mt_admin_ready(&v, why, sizeof(why));
  return respond_text(c, ready ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, "%s\n", why);
}

typedef enum { ROUTE_GET, ROUTE_POST } route_method;

typedef enum {
  R_HEALTHZ,
  R_READY,
  R_METRICS,
  R_CERTS,
  R_POLICY,
  R_CONFIG,
  R_QUIT,
  R_RELOAD,
} route_id;

typedef struct {
  const char *path;
  route_method method;
  int telemetry; /* also served on the telemetry listener */
  route_id id;
} route;

static const route routes[] = {
    {"/healthz", ROUTE_GET, 1, R_HEALTHZ},    {"/ready", ROUTE_GET, 1, R_READY},
    {"/metrics", ROUTE_GET, 1, R_METRICS},    {"/certs", ROUTE_GET, 0, R_CERTS},
    {"/policy", ROUTE_GET, 0, R_POLICY},      {"/config", ROUTE_GET, 0, R_CONFIG},
    {"/quitquitquit", ROUTE_POST, 0, R_QUIT}, {"/reload", ROUTE_POST, 0, R_RELOAD},
};

static enum MHD_Result dispatch(admin_listener *l, struct MHD_Connection *c, const route *r,
                                void **state) {
  switch (r->id) {
    case R_HEALTHZ: return respond_text(c, MHD_HTTP_OK, "ok\n");
    case R_READY: return serve_ready(l, c);
    case R_METRICS: return serve_page(l, c, PAGE_METRICS);
    case R_CERTS: return serve_page(l, c, PAGE_CERTS);
    case R_POLICY: return serve_page(l, c, PAGE_POLICY);
    case R_CONFIG: return serve_page(l, c, PAGE_CONFIG);
    case R_QUIT:
      /* The agent stops once this answer has been sent (on_completed). */
      MT_LOG_I("admin: /quitquitquit received; draining and exiting");
      *state = &request_quit;
      return respond_text(c, MHD_HTTP_OK, "draining and exiting\n");
    case R_RELOAD: {
      char msg[768];
      int ok = l->admin->hooks.reload(l->admin->hooks.arg, msg, sizeof(msg));
      return respond_text(c, ok ? MHD_HTTP_OK : MHD_HTTP_BAD_REQUEST, "%s\n", msg);
    }
  }
  return respond_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "unrouted\n");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **state) {
  (void)version;
  (void)upload;
  admin_listener *l = cls;
  if (*state == NULL) { /* headers only so far */
    *state = &request_started;
    return MHD_YES;
  }
  if (*upload_size != 0) { /* no endpoint takes a body: discard it */
    *upload_size = 0;
    return MHD_YES;
  }
  for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
    const route *r = &routes[i];
    if (strcmp(url, r->path) != 0 || (l->telemetry_only && !r->telemetry)) continue;
    const char *want = r->method == ROUTE_GET ? MHD_HTTP_METHOD_GET : MHD_HTTP_METHOD_POST;
    int head_ok = r->method == ROUTE_GET && strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    if (strcmp(method, want) != 0 && !head_ok)
      return respond_not_allowed(c, r->path, want, r->method == ROUTE_GET ? "GET, HEAD" : "POST");
    return dispatch(l, c, r, state);
  }
  return respond_text(c, MHD_HTTP_NOT_FOUND, "no such endpoint: %s\n", url);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **state,
                         enum MHD_RequestTerminationCode code) {
  (void)c;
  admin_listener *l = cls;
  if (*state == &request_quit && code == MHD_REQUEST_TERMINATED_COMPLETED_OK)
    l->admin->hooks.quit(l->admin->hooks.arg);
  *state = NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
  (void)cls;
  char line[512];
  vsnprintf(line, sizeof(line), fmt, ap);
  size_t n = strlen(line);
  while (n > 0 && line[n - 1] == '\n') line[--n] = '\0';
  MT_LOG_W("admin: %s", line);
}

static int start_listener(mt_admin *admin, admin_listener *l, const mt_sockaddr *addr,
                          int telemetry_only, char *err, size_t err_len) {
  char text[64];
  mt_sockaddr_format((const struct sockaddr *)&addr->addr, text, sizeof(text));
  l->admin = admin;
  l->telemetry_only = telemetry_only;
  unsigned int flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
  if (addr->addr.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
  l->daemon = MHD_start_daemon(
      flags, 0, NULL, NULL, on_request, l, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
      MHD_OPTION_SOCK_ADDR, (const struct sockaddr *)&addr->addr, MHD_OPTION_CONNECTION_LIMIT,
      (unsigned int)ADMIN_MAX_CONNECTIONS, MHD_OPTION_CONNECTION_TIMEOUT,
      (unsigned int)ADMIN_IDLE_TIMEOUT_S, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
      (size_t)ADMIN_MEMORY_PER_CONN, MHD_OPTION_NOTIFY_COMPLETED, on_completed, l, MHD_OPTION_END);
  if (l->daemon == NULL) {
    snprintf(err, err_len, "admin: cannot listen on %s (address in use or not local?)", text);
    return 0;
  }
  const union MHD_DaemonInfo *epoll_info = MHD_get_daemon_info(l->daemon, MHD_DAEMON_INFO_EPOLL_FD);
  const union MHD_DaemonInfo *listen_info =
      MHD_get_daemon_info(l->daemon, MHD_DAEMON_INFO_LISTEN_FD);
  if (epoll_info == NULL || listen_info == NULL) {
    snprintf(err, err_len, "admin: libmicrohttpd has no epoll support");
    return 0;
  }
  struct sockaddr_storage bound;
  socklen_t len = sizeof(bound);
  if (getsockname(listen_info->listen_fd, (struct sockaddr *)&bound, &len) == 0)
    mt_sockaddr_format((const struct sockaddr *)&bound, text, sizeof(text));
  MT_LOG_I("admin listening on %s%s", text, telemetry_only ? " (health and metrics only)" : "");
  ev_io_init(&l->io, on_mhd_io, epoll_info->epoll_fd, EV_READ);
  l->io.data = l;
  ev_io_start(admin->loop, &l->io);
  ev_init(&l->timer, on_mhd_timer);
  l->timer.data = l;
  schedule(l);
  return 1;
}

mt_admin *mt_admin_start(struct ev_loop *loop, const mt_config *config, const mt_admin_hooks *hooks,
                         char *err, size_t err_len) {
  mt_admin *admin = calloc(1, sizeof(*admin));
  if (admin == NULL) {
    snprintf(err, err_len, "admin: out of memory");
    return NULL;
  }
  admin->loop = loop;
  admin->hooks = *hooks;
  int ok = start_listener(admin, &admin->listeners[admin->num_listeners++], &config->admin_address,
                          0, err, err_len);
  if (ok && config->has_admin_telemetry_address)
    ok = start_listener(admin, &admin->listeners[admin->num_listeners++],
                        &config->admin_telemetry_address, 1, err, err_len);
  if (!ok) {
    mt_admin_free(admin);
    return NULL;
  }
  return admin;
}

void mt_admin_free(mt_admin *admin) {
  if (admin == NULL) return;
  for (size_t i = 0; i < admin->num_listeners; i++) {
    admin_listener *l = &admin->listeners[i];
    if (l->daemon == NULL) continue;
    ev_io_stop(admin->loop, &l->io);
    ev_timer_stop(admin->loop, &l->timer);
    MHD_stop_daemon(l->daemon);
  }
  free(admin);
}
