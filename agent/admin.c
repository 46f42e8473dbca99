/* admin.c: routing and responses, on http_server.h on the main loop.
 *
 * Requests are answered completely inside the handler. */
#include "agent/admin.h"

#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "agent/admin_metrics.h"
#include "agent/admin_pages.h"
#include "agent/admin_policy.h"
#include "agent/http_server.h"
#include "agent/log.h"

enum {
  ADMIN_MAX_CONNECTIONS = 32, /* an operator and a scraper, with room to spare */
  QUERY_VALUE_MAX = 4096      /* a decoded query value (a SPIFFE ID is at most 2048) */
};
static const double kAdminRequestTimeoutS = 10.0; /* a stuck client cannot hold a slot long */
static const double kAdminIdleTimeoutS = 10.0;

typedef struct admin_listener admin_listener;

struct admin_listener {
  mt_admin *admin;
  mt_http_server *server;
  int telemetry_only;
};

struct mt_admin {
  struct ev_loop *loop;
  mt_admin_hooks hooks;
  admin_listener listeners[2];
  size_t num_listeners;
  mt_admin_http_view http[2];
};

static void respond(mt_http_exchange *ex, int status, const char *content_type, const char *body,
                    size_t len) {
  mt_http_respond(ex, status, content_type, NULL, body, len);
}

static void respond_text(mt_http_exchange *ex, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void respond_text(mt_http_exchange *ex, int status, const char *fmt, ...) {
  char body[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(body, sizeof(body), fmt, ap);
  va_end(ap);
  size_t len = n < 0 ? 0 : (size_t)n >= sizeof(body) ? sizeof(body) - 1 : (size_t)n;
  respond(ex, status, "text/plain; charset=utf-8", body, len);
}

static void respond_rendered(mt_http_exchange *ex, const char *content_type, mt_text *t) {
  if (t->failed)
    respond_text(ex, 500, "out of memory\n");
  else
    respond(ex, 200, content_type, t->data ? t->data : "", t->len);
  mt_text_free(t);
}

/* |allow| is the Allow header a 405 must carry (RFC 9110 15.5.6). */
static void respond_not_allowed(mt_http_exchange *ex, const char *path, const char *want,
                                const char *allow) {
  char body[256];
  int n = snprintf(body, sizeof(body), "%s needs %s\n", path, want);
  size_t len = n < 0 ? 0 : (size_t)n >= sizeof(body) ? sizeof(body) - 1 : (size_t)n;
  mt_http_respond(ex, 405, "text/plain; charset=utf-8", allow, body, len);
}

/* Fills the view: the agent's state, then this endpoint's own counters. */
static void get_view(mt_admin *admin, mt_admin_view *v) {
  memset(v, 0, sizeof(*v));
  admin->hooks.view(admin->hooks.arg, v);
  v->http = admin->http;
  v->num_http = admin->num_listeners;
}

/* GET /policy?...: the whole policy, or one decision explained. */
static void serve_policy(const mt_admin_view *v, const mt_http_request *req, mt_http_exchange *ex,
                         mt_text *t) {
  /* ?peer=ID&port=N (or ?plaintext=1&port=N) explains one decision; in node
   * mode &workload=IP names the destination pod. */
  static char peer[QUERY_VALUE_MAX], plain[QUERY_VALUE_MAX], port[QUERY_VALUE_MAX],
      workload[QUERY_VALUE_MAX], source_ip[QUERY_VALUE_MAX],
      format[QUERY_VALUE_MAX]; /* main thread only */
  int has_peer = mt_http_query_get(req->query, "peer", peer, sizeof(peer));
  int has_plain = mt_http_query_get(req->query, "plaintext", plain, sizeof(plain));
  int has_port = mt_http_query_get(req->query, "port", port, sizeof(port));
  int has_workload = mt_http_query_get(req->query, "workload", workload, sizeof(workload));
  int has_source = mt_http_query_get(req->query, "source_ip", source_ip, sizeof(source_ip));
  int has_format = mt_http_query_get(req->query, "format", format, sizeof(format));
  if (has_peer < 0 || has_plain < 0 || has_port < 0 || has_workload < 0 || has_source < 0 ||
      has_format < 0) {
    respond_text(ex, 400,
                 "bad percent escape or value too long in the query; "
                 "use /policy?peer=SPIFFE_ID&port=N or /policy?plaintext=1&port=N\n");
    mt_text_free(t);
    return;
  }
  const char *wl = has_workload ? workload : NULL;
  if (!has_peer && !has_plain && !has_port) {
    mt_admin_render_policy(v, wl, t);
    respond_rendered(ex, "application/json", t);
    return;
  }
  char *end = NULL;
  long n = has_port ? strtol(port, &end, 10) : -1;
  if (!has_port || *port == '\0' || *end != '\0' || n < 1 || n > 65535 || has_peer == has_plain) {
    respond_text(ex, 400, "use /policy?peer=SPIFFE_ID&port=N or /policy?plaintext=1&port=N\n");
    mt_text_free(t);
    return;
  }
  mt_sockaddr source;
  if (has_source && !mt_sockaddr_parse(source_ip, &source, 0)) {
    respond_text(ex, 400, "source_ip must be an IP address\n");
    mt_text_free(t);
    return;
  }
  int text = has_format && strcmp(format, "text") == 0;
  if (has_format && !text && strcmp(format, "json") != 0) {
    respond_text(ex, 400, "format must be json or text\n");
    mt_text_free(t);
    return;
  }
  mt_admin_render_explain(v, wl, has_peer ? peer : NULL, (uint16_t)n,
                          has_source ? (const struct sockaddr *)&source.addr : NULL, text, t);
  respond_rendered(ex, text ? "text/plain; charset=utf-8" : "application/json", t);
}

typedef enum { PAGE_METRICS, PAGE_CERTS, PAGE_POLICY, PAGE_CONFIG } page;

static void serve_page(admin_listener *l, const mt_http_request *req, mt_http_exchange *ex,
                       page which) {
  mt_admin_view v;
  get_view(l->admin, &v);
  mt_text t;
  mt_text_init(&t);
  switch (which) {
    case PAGE_METRICS:
      mt_admin_render_metrics(&v, &t);
      respond_rendered(ex, "text/plain; version=0.0.4; charset=utf-8", &t);
      return;
    case PAGE_CERTS: mt_admin_render_certs(&v, &t); break;
    case PAGE_POLICY: serve_policy(&v, req, ex, &t); return;
    case PAGE_CONFIG: mt_admin_render_config(&v, &t); break;
  }
  respond_rendered(ex, "application/json", &t);
}

static void serve_ready(admin_listener *l, mt_http_exchange *ex) {
  mt_admin_view v;
  get_view(l->admin, &v);
  char why[MT_ADMIN_READY_TEXT_MAX];
  int ready = mt_admin_ready(&v, why, sizeof(why));
  respond_text(ex, ready ? 200 : 503, "%s\n", why);
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

/* The agent stops once the answer to /quitquitquit has been sent. */
static void on_quit_sent(void *arg) {
  mt_admin *admin = arg;
  admin->hooks.quit(admin->hooks.arg);
}

static void dispatch(admin_listener *l, const mt_http_request *req, mt_http_exchange *ex,
                     const route *r) {
  switch (r->id) {
    case R_HEALTHZ: respond_text(ex, 200, "ok\n"); return;
    case R_READY: serve_ready(l, ex); return;
    case R_METRICS: serve_page(l, req, ex, PAGE_METRICS); return;
    case R_CERTS: serve_page(l, req, ex, PAGE_CERTS); return;
    case R_POLICY: serve_page(l, req, ex, PAGE_POLICY); return;
    case R_CONFIG: serve_page(l, req, ex, PAGE_CONFIG); return;
    case R_QUIT:
      MT_LOG_I("admin: /quitquitquit received; draining and exiting");
      mt_http_on_sent(ex, on_quit_sent, l->admin);
      respond_text(ex, 200, "draining and exiting\n");
      return;
    case R_RELOAD: {
      char msg[768];
      int ok = l->admin->hooks.reload(l->admin->hooks.arg, msg, sizeof(msg));
      respond_text(ex, ok ? 200 : 400, "%s\n", msg);
      return;
    }
  }
  respond_text(ex, 500, "unrouted\n");
}

/* A path not served here is 404 whatever the method; a served path with the
 * wrong method is 405 with Allow. HEAD is GET without the body. */
static void on_request(void *arg, const mt_http_request *req, mt_http_exchange *ex) {
  admin_listener *l = arg;
  for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
    const route *r = &routes[i];
    if (strcmp(req->path, r->path) != 0 || (l->telemetry_only && !r->telemetry)) continue;
    const char *want = r->method == ROUTE_GET ? "GET" : "POST";
    int head_ok = r->method == ROUTE_GET && strcmp(req->method, "HEAD") == 0;
    if (strcmp(req->method, want) != 0 && !head_ok) {
      respond_not_allowed(ex, r->path, want, r->method == ROUTE_GET ? "GET, HEAD" : "POST");
      return;
    }
    dispatch(l, req, ex, r);
    return;
  }
  respond_text(ex, 404, "no such endpoint: %s\n", req->path);
}

static int start_listener(mt_admin *admin, admin_listener *l, const mt_sockaddr *addr,
                          int telemetry_only, char *err, size_t err_len) {
  char text[64];
  mt_sockaddr_format((const struct sockaddr *)&addr->addr, text, sizeof(text));
  l->admin = admin;
  l->telemetry_only = telemetry_only;
  const mt_http_limits limits = {ADMIN_MAX_CONNECTIONS, kAdminRequestTimeoutS, kAdminIdleTimeoutS};
  char why[128];
  l->server = mt_http_server_new(admin->loop, (const struct sockaddr *)&addr->addr, &limits,
                                 on_request, l, why, sizeof(why));
  if (l->server == NULL) {
    snprintf(err, err_len, "admin: cannot listen on %s: %s", text, why);
    return 0;
  }
  admin->http[admin->num_listeners - 1] = (mt_admin_http_view){
      telemetry_only ? "telemetry" : "admin", mt_http_server_get_stats(l->server)};
  struct sockaddr_storage bound;
  if (mt_http_server_address(l->server, &bound))
    mt_sockaddr_format((const struct sockaddr *)&bound, text, sizeof(text));
  MT_LOG_I("admin listening on %s%s", text, telemetry_only ? " (health and metrics only)" : "");
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
  for (size_t i = 0; i < admin->num_listeners; i++) mt_http_server_free(admin->listeners[i].server);
  free(admin);
}
