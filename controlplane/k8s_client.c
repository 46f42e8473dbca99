/* k8s_client.c: the public API: settings (server URL, token, CA file),
 * requests and their lifecycle. The connection they travel on is
 * k8s_conn.c's; see k8s_client_internal.h for who owns what. */
#include "controlplane/k8s_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "controlplane/k8s_client_internal.h"

enum {
  DEFAULT_CONNECT_TIMEOUT_MS = 5000,
  HTTPS_DEFAULT_PORT = 443,
  PORT_TEXT_MAX = 6,
};

#define HTTPS_PREFIX "https://"
#define BEARER_PREFIX "Bearer "

/* --- request lists --- */

void mt_k8s_req_list_push(mt_k8s_req_list *l, mt_k8s_request *r) {
  r->list = l;
  r->prev = NULL;
  r->next = l->head;
  if (l->head) l->head->prev = r;
  l->head = r;
}

void mt_k8s_req_list_remove(mt_k8s_request *r) {
  if (r->list == NULL) return;
  if (r->prev) r->prev->next = r->next;
  if (r->next) r->next->prev = r->prev;
  if (r->list->head == r) r->list->head = r->next;
  r->list = NULL;
  r->prev = r->next = NULL;
}

static void zero_free(char *s) {
  if (s == NULL) return;
  explicit_bzero(s, strlen(s));
  free(s);
}

void mt_k8s_req_forget_headers(mt_k8s_request *r) {
  zero_free(r->auth);
  r->auth = NULL;
  free(r->path);
  r->path = NULL;
}

void mt_k8s_req_free(mt_k8s_request *r) {
  mt_k8s_req_list_remove(r);
  ev_timer_stop(r->client->loop, &r->timeout);
  free(r->path);
  zero_free(r->auth);
  free(r);
}

void mt_k8s_req_finish(mt_k8s_request *r, const char *error) {
  mt_k8s_request_callbacks cb = r->cb;
  void *ctx = r->ctx;
  long status = r->status;
  mt_k8s_req_free(r);
  if (cb.on_done) cb.on_done(ctx, status, error);
}

/* --- token --- */

/* Re-reads the token when its file changed since the last read. */
static int refresh_token(mt_k8s_client *c, char *err, size_t err_len) {
  mt_file_stamp now;
  mt_file_stamp_read(c->token_file, &now);
  if (c->token[0] != '\0' && mt_file_stamp_equal(&now, &c->token_stamp)) return 1;
  int fd = open(c->token_file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(err, err_len, "token file %s: %s", c->token_file, strerror(errno));
    return 0;
  }
  char buf[MT_K8S_TOKEN_MAX_BYTES + 1];
  size_t len = 0;
  ssize_t n;
  while (len < sizeof(buf) && (n = read(fd, buf + len, sizeof(buf) - len)) > 0) len += (size_t)n;
  close(fd);
  int ok = 0;
  while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' ')) len--;
  size_t bad = len;
  for (size_t i = 0; i < len && bad == len; i++)
    if (buf[i] < '!' || buf[i] > '~') bad = i; /* a header value: printable ASCII only */
  if (len > MT_K8S_TOKEN_MAX_BYTES) {
    snprintf(err, err_len, "token file %s: larger than %d bytes", c->token_file,
             MT_K8S_TOKEN_MAX_BYTES);
  } else if (bad != len) {
    snprintf(err, err_len, "token file %s: not a bearer token (byte %zu)", c->token_file, bad);
  } else if (len == 0) {
    snprintf(err, err_len, "token file %s: empty", c->token_file);
  } else {
    memcpy(c->token, buf, len);
    c->token[len] = '\0';
    c->token_stamp = now;
    ok = 1;
  }
  explicit_bzero(buf, sizeof(buf));
  return ok;
}

/* --- client --- */

static int resolve_server_url(const mt_k8s_client_config *config, char *out, size_t out_len,
                              char *err, size_t err_len) {
  if (config->server != NULL && config->server[0] != '\0') {
    if (strncmp(config->server, HTTPS_PREFIX, strlen(HTTPS_PREFIX)) != 0) {
      snprintf(err, err_len, "server %s: must be an https:// URL", config->server);
      return 0;
    }
    if ((size_t)snprintf(out, out_len, "%s", config->server) >= out_len) {
      snprintf(err, err_len, "server URL too long");
      return 0;
    }
    size_t len = strlen(out);
    if (len > 0 && out[len - 1] == '/') out[len - 1] = '\0';
    return 1;
  }
  const char *host = getenv("KUBERNETES_SERVICE_HOST");
  const char *port = getenv("KUBERNETES_SERVICE_PORT");
  if (host == NULL || host[0] == '\0' || port == NULL || port[0] == '\0') {
    snprintf(err, err_len,
             "no server given and KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set "
             "(not in a pod?)");
    return 0;
  }
  int v6 = strchr(host, ':') != NULL;
  if ((size_t)snprintf(out, out_len, "https://%s%s%s:%s", v6 ? "[" : "", host, v6 ? "]" : "",
                       port) >= out_len) {
    snprintf(err, err_len, "server URL too long");
    return 0;
  }
  return 1;
}

/* Splits "https://host[:port]" (host may be "[v6]") into host, port and
 * the :authority, then finds the address: numeric, or resolved now. */
static int resolve_target(mt_k8s_client *c, char *err, size_t err_len) {
  const char *a = c->server + strlen(HTTPS_PREFIX);
  if (strchr(a, '/') != NULL || strchr(a, '?') != NULL || strchr(a, '@') != NULL) {
    snprintf(err, err_len, "server %s: only https://host[:port] is supported", c->server);
    return 0;
  }
  snprintf(c->authority, sizeof(c->authority), "%s", a);
  const char *host = a, *host_end, *port_text = NULL;
  if (a[0] == '[') {
    host = a + 1;
    host_end = strchr(host, ']');
    if (host_end == NULL || (host_end[1] != '\0' && host_end[1] != ':')) goto bad;
    if (host_end[1] == ':') port_text = host_end + 2;
  } else {
    host_end = strchr(a, ':');
    if (host_end != NULL)
      port_text = host_end + 1;
    else
      host_end = a + strlen(a);
  }
  size_t host_len = (size_t)(host_end - host);
  if (host_len == 0 || host_len >= sizeof(c->host)) goto bad;
  memcpy(c->host, host, host_len);
  c->host[host_len] = '\0';
  char port[PORT_TEXT_MAX];
  if (port_text == NULL) {
    snprintf(port, sizeof(port), "%d", HTTPS_DEFAULT_PORT);
  } else {
    size_t n = strlen(port_text);
    if (n == 0 || n >= sizeof(port) || strspn(port_text, "0123456789") != n) goto bad;
    memcpy(port, port_text, n + 1);
  }
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  struct in6_addr a6;
  struct in_addr a4;
  c->host_is_ip = inet_pton(AF_INET, c->host, &a4) == 1 || inet_pton(AF_INET6, c->host, &a6) == 1;
  if (c->host_is_ip) hints.ai_flags |= AI_NUMERICHOST;
  int rv = getaddrinfo(c->host, port, &hints, &res);
  if (rv != 0 || res == NULL || res->ai_addrlen > sizeof(c->target)) {
    snprintf(err, err_len, "server %s: cannot resolve %s: %s", c->server, c->host,
             rv ? gai_strerror(rv) : "no address");
    if (res) freeaddrinfo(res);
    return 0;
  }
  memcpy(&c->target, res->ai_addr, res->ai_addrlen);
  c->target_len = res->ai_addrlen;
  freeaddrinfo(res);
  return 1;
bad:
  snprintf(err, err_len, "server %s: not https://host[:port]", c->server);
  return 0;
}

mt_k8s_client *mt_k8s_client_new(struct ev_loop *loop, const mt_k8s_client_config *config,
                                 char *err, size_t err_len) {
  mt_k8s_client *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    snprintf(err, err_len, "out of memory");
    return NULL;
  }
  c->loop = loop;
  c->connect_timeout_ms =
      config->connect_timeout_ms > 0 ? config->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
  int has_token = config->token_file && config->token_file[0];
  int has_ca = config->ca_file && config->ca_file[0];
  c->token_file = strdup(has_token ? config->token_file : MT_K8S_SA_DIR "/token");
  c->ca_file = strdup(has_ca ? config->ca_file : MT_K8S_SA_DIR "/ca.crt");
  if (c->token_file == NULL || c->ca_file == NULL) {
    snprintf(err, err_len, "out of memory");
    mt_k8s_client_free(c);
    return NULL;
  }
  if (!resolve_server_url(config, c->server, sizeof(c->server), err, err_len) ||
      !resolve_target(c, err, err_len) || !refresh_token(c, err, err_len)) {
    mt_k8s_client_free(c);
    return NULL;
  }
  if (access(c->ca_file, R_OK) != 0) {
    snprintf(err, err_len, "CA file %s: %s", c->ca_file, strerror(errno));
    mt_k8s_client_free(c);
    return NULL;
  }
  return c;
}

void mt_k8s_client_free(mt_k8s_client *client) {
  if (client == NULL) return;
  while (client->conns != NULL) mt_k8s_conn_close(client->conns);
  /* Walked by saved next pointers: no callback runs here. */
  for (mt_k8s_request *r = client->queued.head, *next; r != NULL; r = next) {
    next = r->next;
    r->list = NULL;
    mt_k8s_req_free(r);
  }
  client->queued.head = NULL;
  free(client->token_file);
  free(client->ca_file);
  explicit_bzero(client->token, sizeof(client->token));
  free(client);
}

const char *mt_k8s_client_server(const mt_k8s_client *client) { return client->server; }

static void on_request_timeout(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  mt_k8s_request *r = w->data;
  char error[MT_K8S_ERROR_MAX];
  mt_h2_textf(error, sizeof(error), "timed out after %lld ms", (long long)r->timeout_ms);
  mt_k8s_req_detach(r, 1);
  mt_k8s_req_finish(r, error);
}

static int path_valid(const char *path) {
  if (path == NULL || path[0] != '/') return 0;
  for (const unsigned char *p = (const unsigned char *)path; *p; p++)
    if (*p <= ' ' || *p > '~') return 0;
  return 1;
}

mt_k8s_request *mt_k8s_client_get(mt_k8s_client *client, const char *path_and_query,
                                  int64_t total_timeout_ms, const mt_k8s_request_callbacks *cb,
                                  void *ctx, char *err, size_t err_len) {
  if (!refresh_token(client, err, err_len)) return NULL;
  if (!path_valid(path_and_query)) {
    snprintf(err, err_len, "bad request path");
    return NULL;
  }
  mt_k8s_request *r = calloc(1, sizeof(*r));
  size_t auth_len = strlen(BEARER_PREFIX) + strlen(client->token) + 1;
  if (r != NULL) {
    r->path = strdup(path_and_query);
    r->auth = malloc(auth_len);
  }
  if (r == NULL || r->path == NULL || r->auth == NULL) {
    snprintf(err, err_len, "out of memory");
    if (r != NULL) {
      free(r->path);
      free(r->auth);
    }
    free(r);
    return NULL;
  }
  snprintf(r->auth, auth_len, BEARER_PREFIX "%s", client->token);
  r->client = client;
  r->cb = *cb;
  r->ctx = ctx;
  r->state = MT_K8S_REQ_QUEUED;
  r->timeout_ms = total_timeout_ms;
  ev_init(&r->timeout, on_request_timeout);
  r->timeout.data = r;
  if (total_timeout_ms > 0) {
    ev_timer_set(&r->timeout, (double)total_timeout_ms / MT_K8S_MS_PER_SECOND, 0.0);
    ev_timer_start(client->loop, &r->timeout);
  }
  mt_k8s_conn *conn = client->current;
  if (conn != NULL && conn->state == MT_K8S_CONN_READY && !conn->goaway) {
    if (mt_k8s_conn_submit(conn, r)) return r;
    /* Stream IDs used up (or nghttp2 out of memory): a fresh connection. */
    conn->goaway = 1;
    mt_h2_textf(conn->why, sizeof(conn->why), "no more HTTP/2 streams on this connection");
    client->current = NULL;
  }
  mt_k8s_req_list_push(&client->queued, r);
  if (client->current == NULL && mt_k8s_conn_start(client) == NULL) {
    snprintf(err, err_len, "out of memory");
    mt_k8s_req_free(r);
    return NULL;
  }
  return r;
}

long mt_k8s_request_status(const mt_k8s_request *request) { return request->status; }

void mt_k8s_request_cancel(mt_k8s_request *request) {
  if (request == NULL) return;
  mt_k8s_req_detach(request, 1);
  mt_k8s_req_free(request);
}
