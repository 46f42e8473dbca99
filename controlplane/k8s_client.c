/* k8s_client.c: GETs to the Kubernetes API server as HTTP/2 streams on one
 * TLS connection (grpc/h2_transport: BoringSSL + nghttp2 on the libev loop).
 *
 * Ownership: the client owns its connections and the requests waiting for
 * one; a connection owns the requests whose stream it carries. A request is
 * in exactly one list at a time (queued, a connection's, or a list of
 * requests being ended), and is freed right after its on_done returns.
 * nghttp2 holds a borrowed pointer to a request as stream user data; it is
 * cleared whenever the request leaves before its stream closes (cancel,
 * timeout, free), so a late nghttp2 callback finds nothing. */
#include "controlplane/k8s_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/bytestring.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "controlplane/file_stamp.h"
#include "grpc/h2_transport.h"

enum {
  DEFAULT_CONNECT_TIMEOUT_MS = 5000,
  MS_PER_SECOND = 1000,
  /* TCP keepalive so a dead peer under a long watch is noticed by the kernel. */
  KEEPALIVE_IDLE_S = 30,
  KEEPALIVE_INTERVAL_S = 10,
  HTTPS_DEFAULT_PORT = 443,
  PORT_TEXT_MAX = 6,
  HTTP_STATUS_DIGITS = 3,
  DECIMAL_BASE = 10,
  /* Flow-control windows we grant the server: a LIST of a big cluster is
   * megabytes, and nghttp2's default 64 KiB would make it crawl. */
  STREAM_WINDOW_BYTES = 1 << 20,
  CONNECTION_WINDOW_BYTES = 4 << 20,
};

#define HTTPS_PREFIX "https://"
#define BEARER_PREFIX "Bearer "
static const uint8_t kAlpnH2Wire[] = {2, 'h', '2'};

typedef enum { CONN_CONNECTING, CONN_HANDSHAKING, CONN_READY, CONN_FAILED } conn_state;

typedef enum {
  REQ_QUEUED,  /* waiting for a ready connection */
  REQ_SENT,    /* its stream is open */
  REQ_ABORTED, /* on_data said stop: the stream is being reset */
} req_state;

typedef struct k8s_conn k8s_conn;

typedef struct {
  mt_k8s_request *head;
} req_list;

struct mt_k8s_request {
  mt_k8s_client *client;
  k8s_conn *conn; /* while REQ_SENT or REQ_ABORTED */
  req_list *list; /* the list holding it */
  mt_k8s_request *prev, *next;
  req_state state;
  int32_t stream_id;
  long status;
  int ended; /* END_STREAM arrived: the whole body is here */
  mt_k8s_request_callbacks cb;
  void *ctx;
  ev_timer timeout;
  int64_t timeout_ms;
  char *path; /* until submitted */
  char *auth; /* "Bearer <token>" until submitted; zeroed when freed */
};

struct k8s_conn {
  mt_k8s_client *client;
  mt_h2_transport t;
  conn_state state;
  int goaway;     /* the server is done with it: no new streams */
  ev_timer phase; /* connect + handshake deadline, or a deferred failure */
  char why[MT_K8S_ERROR_MAX];
  req_list requests;
  k8s_conn *prev, *next;
};

struct mt_k8s_client {
  struct ev_loop *loop;
  char server[MT_K8S_URL_MAX];
  char host[MT_K8S_URL_MAX];      /* for SNI and the certificate check */
  char authority[MT_K8S_URL_MAX]; /* host:port as in the URL */
  int host_is_ip;
  struct sockaddr_storage target;
  socklen_t target_len;
  char *token_file;
  char *ca_file;
  int64_t connect_timeout_ms;
  mt_file_stamp token_stamp;
  char token[MT_K8S_TOKEN_MAX_BYTES + 1];
  req_list queued;
  k8s_conn *conns;
  k8s_conn *current; /* where new requests go; NULL: start one */
};

/* --- request lists --- */

static void list_push(req_list *l, mt_k8s_request *r) {
  r->list = l;
  r->prev = NULL;
  r->next = l->head;
  if (l->head) l->head->prev = r;
  l->head = r;
}

static void list_remove(mt_k8s_request *r) {
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

static void request_free(mt_k8s_request *r) {
  list_remove(r);
  ev_timer_stop(r->client->loop, &r->timeout);
  free(r->path);
  zero_free(r->auth);
  free(r);
}

/* Leaves the stream (if any) so that nghttp2 no longer reaches |r|; with
 * |reset| the server is told too. */
static void request_detach(mt_k8s_request *r, int reset) {
  k8s_conn *conn = r->conn;
  if (conn != NULL && conn->t.session != NULL && r->stream_id > 0) {
    nghttp2_session_set_stream_user_data(conn->t.session, r->stream_id, NULL);
    if (reset) {
      nghttp2_submit_rst_stream(conn->t.session, NGHTTP2_FLAG_NONE, r->stream_id, NGHTTP2_CANCEL);
      mt_h2_transport_want_write(&conn->t);
    }
  }
  r->conn = NULL;
}

static void request_finish(mt_k8s_request *r, const char *error) {
  mt_k8s_request_callbacks cb = r->cb;
  void *ctx = r->ctx;
  long status = r->status;
  request_free(r);
  if (cb.on_done) cb.on_done(ctx, status, error);
}

/* --- HTTP/2 session callbacks --- */

static mt_k8s_request *stream_request(nghttp2_session *session, int32_t stream_id) {
  return nghttp2_session_get_stream_user_data(session, stream_id);
}

static ssize_t on_send(nghttp2_session *session, const uint8_t *data, size_t len, int flags,
                       void *user_data) {
  (void)session;
  (void)flags;
  k8s_conn *conn = user_data;
  return mt_h2_transport_buffer(&conn->t, data, len);
}

/* ":status" must be exactly three digits; anything else leaves 0. */
static long parse_status(const uint8_t *value, size_t len) {
  CBS cbs;
  CBS_init(&cbs, value, len);
  if (CBS_len(&cbs) != HTTP_STATUS_DIGITS) return 0;
  long status = 0;
  uint8_t digit;
  while (CBS_get_u8(&cbs, &digit)) {
    if (digit < '0' || digit > '9') return 0;
    status = status * DECIMAL_BASE + (digit - '0');
  }
  return status;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data) {
  (void)flags;
  (void)user_data;
  static const char kStatus[] = ":status";
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_RESPONSE) return 0;
  mt_k8s_request *r = stream_request(session, frame->hd.stream_id);
  if (r == NULL) return 0;
  if (namelen == sizeof(kStatus) - 1 && memcmp(name, kStatus, namelen) == 0)
    r->status = parse_status(value, valuelen);
  return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  k8s_conn *conn = user_data;
  if (frame->hd.type == NGHTTP2_GOAWAY) {
    conn->goaway = 1;
    mt_h2_textf(conn->why, sizeof(conn->why), "the server sent GOAWAY (%s)",
                mt_h2_error_name(frame->goaway.error_code));
    if (conn->client->current == conn) conn->client->current = NULL;
    return 0;
  }
  if ((frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) &&
      (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
    mt_k8s_request *r = stream_request(session, frame->hd.stream_id);
    if (r != NULL) r->ended = 1;
  }
  return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                         const uint8_t *data, size_t len, void *user_data) {
  (void)flags;
  (void)user_data;
  mt_k8s_request *r = stream_request(session, stream_id);
  if (r == NULL || r->state != REQ_SENT || r->cb.on_data == NULL) return 0;
  if (!r->cb.on_data(r->ctx, (const char *)data, len)) {
    /* on_done follows from on_stream_close, once the reset has left. */
    r->state = REQ_ABORTED;
    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_CANCEL);
  }
  return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user_data) {
  (void)user_data;
  mt_k8s_request *r = stream_request(session, stream_id);
  if (r == NULL) return 0;
  nghttp2_session_set_stream_user_data(session, stream_id, NULL);
  r->conn = NULL;
  char error[MT_K8S_ERROR_MAX] = "";
  if (r->state == REQ_ABORTED)
    mt_h2_textf(error, sizeof(error), "the transfer was aborted by its receiver");
  else if (error_code == NGHTTP2_REFUSED_STREAM)
    mt_h2_textf(error, sizeof(error), "the server refused the stream (GOAWAY or overload)");
  else if (error_code != NGHTTP2_NO_ERROR)
    mt_h2_textf(error, sizeof(error), "stream reset: %s", mt_h2_error_name(error_code));
  else if (!r->ended)
    mt_h2_textf(error, sizeof(error), "the stream closed before the response ended");
  request_finish(r, error);
  return 0;
}

static nghttp2_session *session_new(k8s_conn *conn) {
  nghttp2_session_callbacks *cbs = NULL;
  nghttp2_session *session = NULL;
  if (nghttp2_session_callbacks_new(&cbs) != 0) return NULL;
  nghttp2_session_callbacks_set_send_callback(cbs, on_send);
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
  int rv = nghttp2_session_client_new(&session, cbs, conn);
  nghttp2_session_callbacks_del(cbs);
  if (rv != 0) return NULL;
  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW_BYTES},
  };
  if (nghttp2_submit_settings(session, NGHTTP2_FLAG_NONE, settings,
                              sizeof(settings) / sizeof(settings[0])) != 0 ||
      nghttp2_session_set_local_window_size(session, NGHTTP2_FLAG_NONE, 0,
                                            CONNECTION_WINDOW_BYTES) != 0) {
    nghttp2_session_del(session);
    return NULL;
  }
  return session;
}

#define NV(name, value) \
  { (uint8_t *)(name), (uint8_t *)(value), sizeof(name) - 1, strlen(value), NGHTTP2_NV_FLAG_NONE }

/* Opens |r|'s stream on |conn|. Returns 1, or 0 when nghttp2 refused. */
static int request_submit(k8s_conn *conn, mt_k8s_request *r) {
  mt_k8s_client *c = conn->client;
  const nghttp2_nv headers[] = {
      NV(":method", "GET"),        NV(":scheme", "https"),       NV(":authority", c->authority),
      NV(":path", r->path),        NV("authorization", r->auth), NV("accept", "application/json"),
      NV("user-agent", "mtls-ca"),
  };
  int32_t id = nghttp2_submit_request(conn->t.session, NULL, headers,
                                      sizeof(headers) / sizeof(headers[0]), NULL, r);
  if (id < 0) return 0;
  /* nghttp2 copied the header block: the token need not stay here. */
  zero_free(r->auth);
  r->auth = NULL;
  free(r->path);
  r->path = NULL;
  r->stream_id = id;
  r->conn = conn;
  r->state = REQ_SENT;
  list_push(&conn->requests, r);
  mt_h2_transport_want_write(&conn->t);
  return 1;
}

/* --- connections --- */

/* Frees |conn| and the requests it still carries, without callbacks. */
static void conn_destroy(k8s_conn *conn) {
  mt_k8s_client *c = conn->client;
  ev_timer_stop(c->loop, &conn->phase);
  while (conn->requests.head != NULL) {
    mt_k8s_request *r = conn->requests.head;
    request_detach(r, 0);
    request_free(r);
  }
  mt_h2_transport_dispose(&conn->t);
  if (conn->prev) conn->prev->next = conn->next;
  if (conn->next) conn->next->prev = conn->prev;
  if (c->conns == conn) c->conns = conn->next;
  if (c->current == conn) c->current = NULL;
  free(conn);
}

/* Ends |conn| and its requests (and the queued ones, when it was the one
 * they waited for) with |why|. Callbacks may start or cancel requests, so
 * the dying ones are taken one at a time. */
static void conn_fail(k8s_conn *conn, const char *why) {
  mt_k8s_client *c = conn->client;
  char reason[MT_K8S_ERROR_MAX];
  mt_h2_textf(reason, sizeof(reason), "%s", why); /* |why| may live in |conn| */
  req_list dying = {NULL};
  while (conn->requests.head != NULL) {
    mt_k8s_request *r = conn->requests.head;
    request_detach(r, 0);
    list_remove(r);
    list_push(&dying, r);
  }
  if (c->current == conn) {
    while (c->queued.head != NULL) {
      mt_k8s_request *r = c->queued.head;
      list_remove(r);
      list_push(&dying, r);
    }
  }
  conn_destroy(conn);
  while (dying.head != NULL) request_finish(dying.head, reason);
}

static void defer_failure(k8s_conn *conn, const char *why) {
  mt_k8s_client *c = conn->client;
  conn->state = CONN_FAILED;
  mt_h2_textf(conn->why, sizeof(conn->why), "%s", why);
  ev_timer_stop(c->loop, &conn->phase);
  ev_timer_set(&conn->phase, 0.0, 0.0);
  ev_timer_start(c->loop, &conn->phase);
}

static void on_phase_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  k8s_conn *conn = w->data;
  mt_k8s_client *c = conn->client;
  char why[MT_K8S_ERROR_MAX];
  switch (conn->state) {
    case CONN_FAILED: mt_h2_textf(why, sizeof(why), "%s", conn->why); break;
    case CONN_CONNECTING:
    case CONN_HANDSHAKING:
    case CONN_READY:
      mt_h2_textf(why, sizeof(why), "%s to %s timed out after %lld ms",
                  conn->state == CONN_CONNECTING ? "connect" : "TLS handshake", c->server,
                  (long long)c->connect_timeout_ms);
      break;
  }
  conn_fail(conn, why);
}

static void conn_pump(k8s_conn *conn) {
  char why[MT_K8S_ERROR_MAX];
  mt_h2_status st = mt_h2_transport_pump(&conn->t);
  if (st == MT_H2_FAILED) {
    mt_h2_textf(why, sizeof(why), "connection to %s lost: %s%s%s", conn->client->server,
                conn->t.error, conn->goaway ? " after " : "", conn->goaway ? conn->why : "");
    conn_fail(conn, why);
  } else if (st == MT_H2_DONE || (conn->goaway && conn->requests.head == NULL)) {
    conn_fail(conn, conn->goaway ? conn->why : "connection closed");
  }
}

/* TLS is up with h2: start the session and send the queued requests, the
 * oldest first (the queue is pushed at its head). */
static void conn_ready(k8s_conn *conn) {
  mt_k8s_client *c = conn->client;
  ev_timer_stop(c->loop, &conn->phase);
  conn->t.session = session_new(conn);
  if (conn->t.session == NULL) {
    conn_fail(conn, "out of memory starting the HTTP/2 session");
    return;
  }
  conn->state = CONN_READY;
  req_list waiting = {NULL};
  while (c->queued.head != NULL) {
    mt_k8s_request *r = c->queued.head;
    list_remove(r);
    list_push(&waiting, r);
  }
  while (waiting.head != NULL) {
    mt_k8s_request *r = waiting.head;
    list_remove(r);
    if (!request_submit(conn, r)) request_finish(r, "could not start an HTTP/2 stream");
  }
  conn_pump(conn);
}

static void on_conn_io(struct ev_loop *loop, ev_io *w, int revents) {
  (void)loop;
  (void)revents;
  k8s_conn *conn = w->data;
  mt_k8s_client *c = conn->client;
  char why[MT_K8S_ERROR_MAX];
  switch (conn->state) {
    case CONN_CONNECTING: {
      int err = 0;
      socklen_t len = sizeof(err);
      if (getsockopt(conn->t.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      if (err == EINPROGRESS) return;
      if (err != 0) {
        mt_h2_textf(why, sizeof(why), "connect to %s: %s", c->server, strerror(err));
        conn_fail(conn, why);
        return;
      }
      conn->state = CONN_HANDSHAKING;
    }
      /* fall through */
    case CONN_HANDSHAKING:
      switch (mt_h2_transport_handshake(&conn->t, 1)) {
        case MT_H2_STEP_AGAIN: return;
        case MT_H2_STEP_FAILED:
          mt_h2_textf(why, sizeof(why), "%s (server %s)", conn->t.error, c->server);
          conn_fail(conn, why);
          return;
        case MT_H2_STEP_DONE: conn_ready(conn); return;
      }
      return;
    case CONN_READY: conn_pump(conn); return;
    case CONN_FAILED: return;
  }
}

/* A TLS context per connection, so a rotated CA file is picked up. */
static SSL_CTX *ssl_ctx_new(const mt_k8s_client *c, char *why, size_t why_len) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_method());
  if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)) {
    mt_h2_textf(why, why_len, "cannot create a TLS context");
    SSL_CTX_free(ctx);
    return NULL;
  }
  if (!SSL_CTX_load_verify_locations(ctx, c->ca_file, NULL)) {
    mt_h2_textf(why, why_len, "CA file %s: no certificate could be loaded", c->ca_file);
    SSL_CTX_free(ctx);
    return NULL;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  return ctx;
}

/* An SSL that offers only h2 and checks the server's certificate against
 * the URL's host: an IP SAN for an address, else SNI and a DNS SAN. */
static SSL *ssl_new(const mt_k8s_client *c, int fd, char *why, size_t why_len) {
  SSL_CTX *ctx = ssl_ctx_new(c, why, why_len);
  if (ctx == NULL) return NULL;
  SSL *ssl = SSL_new(ctx);
  SSL_CTX_free(ctx); /* |ssl| holds its own reference */
  if (ssl == NULL) {
    mt_h2_textf(why, why_len, "cannot create the TLS session");
    return NULL;
  }
  X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
  int ok =
      mt_h2_ssl_attach(ssl, fd) && SSL_set_alpn_protos(ssl, kAlpnH2Wire, sizeof(kAlpnH2Wire)) == 0;
  if (ok && c->host_is_ip) {
    ok = X509_VERIFY_PARAM_set1_ip_asc(param, c->host);
  } else if (ok) {
    ok = SSL_set_tlsext_host_name(ssl, c->host) &&
         X509_VERIFY_PARAM_set1_host(param, c->host, strlen(c->host));
  }
  if (!ok) {
    mt_h2_textf(why, why_len, "cannot configure the TLS session");
    SSL_free(ssl);
    return NULL;
  }
  SSL_set_connect_state(ssl);
  return ssl;
}

static void tune_socket(int fd) {
  int one = 1, idle = KEEPALIVE_IDLE_S, interval = KEEPALIVE_INTERVAL_S;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
}

/* Opens the new current connection. Failures found here are reported on
 * the next loop iteration, so no callback runs inside mt_k8s_client_get. */
static k8s_conn *conn_start(mt_k8s_client *c) {
  char why[MT_K8S_ERROR_MAX];
  k8s_conn *conn = calloc(1, sizeof(*conn));
  if (conn == NULL) return NULL;
  conn->client = c;
  conn->t.fd = -1;
  ev_init(&conn->phase, on_phase_timer);
  conn->phase.data = conn;
  conn->next = c->conns;
  if (c->conns) c->conns->prev = conn;
  c->conns = conn;
  c->current = conn;
  conn->state = CONN_CONNECTING;
  int fd = socket(c->target.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    mt_h2_textf(why, sizeof(why), "socket: %s", strerror(errno));
    defer_failure(conn, why);
    return conn;
  }
  tune_socket(fd);
  SSL *ssl = ssl_new(c, fd, why, sizeof(why));
  if (ssl == NULL) {
    close(fd);
    defer_failure(conn, why);
    return conn;
  }
  if (!mt_h2_transport_init(&conn->t, c->loop, fd, ssl, on_conn_io, conn)) {
    defer_failure(conn, "out of memory");
    return conn;
  }
  if (connect(fd, (const struct sockaddr *)&c->target, c->target_len) != 0 &&
      errno != EINPROGRESS) {
    mt_h2_textf(why, sizeof(why), "connect to %s: %s", c->server, strerror(errno));
    defer_failure(conn, why);
    return conn;
  }
  mt_h2_transport_watch(&conn->t, EV_WRITE);
  ev_timer_set(&conn->phase, (double)c->connect_timeout_ms / MS_PER_SECOND, 0.0);
  ev_timer_start(c->loop, &conn->phase);
  return conn;
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
  while (client->conns != NULL) {
    k8s_conn *conn = client->conns;
    /* Requests first: the GOAWAY below must find no stream to report on. */
    while (conn->requests.head != NULL) {
      mt_k8s_request *r = conn->requests.head;
      request_detach(r, 0);
      request_free(r);
    }
    if (conn->t.session != NULL) {
      nghttp2_session_terminate_session(conn->t.session, NGHTTP2_NO_ERROR);
      mt_h2_transport_flush_best_effort(&conn->t);
    }
    conn_destroy(conn);
  }
  while (client->queued.head != NULL) request_free(client->queued.head);
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
  request_detach(r, 1);
  request_finish(r, error);
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
  r->state = REQ_QUEUED;
  r->timeout_ms = total_timeout_ms;
  ev_init(&r->timeout, on_request_timeout);
  r->timeout.data = r;
  if (total_timeout_ms > 0) {
    ev_timer_set(&r->timeout, (double)total_timeout_ms / MS_PER_SECOND, 0.0);
    ev_timer_start(client->loop, &r->timeout);
  }
  k8s_conn *conn = client->current;
  if (conn != NULL && conn->state == CONN_READY && !conn->goaway) {
    if (request_submit(conn, r)) return r;
    /* Stream IDs used up (or nghttp2 out of memory): a fresh connection. */
    conn->goaway = 1;
    mt_h2_textf(conn->why, sizeof(conn->why), "no more HTTP/2 streams on this connection");
    client->current = NULL;
  }
  list_push(&client->queued, r);
  if (client->current == NULL && conn_start(client) == NULL) {
    snprintf(err, err_len, "out of memory");
    request_free(r);
    return NULL;
  }
  return r;
}

long mt_k8s_request_status(const mt_k8s_request *request) { return request->status; }

void mt_k8s_request_cancel(mt_k8s_request *request) {
  if (request == NULL) return;
  request_detach(request, 1);
  request_free(request);
}
