/* k8s_conn.c: one connection to the API server: connect, TLS (verified
 * against the CA file and the server's name or address, ALPN h2), an
 * nghttp2 client session through grpc/h2_transport, and the requests'
 * streams on it. See k8s_client_internal.h for who owns what. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/bytestring.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "controlplane/k8s_client_internal.h"

enum {
  /* TCP keepalive so a dead peer under a long watch is noticed by the kernel. */
  KEEPALIVE_IDLE_S = 30,
  KEEPALIVE_INTERVAL_S = 10,
  HTTP_STATUS_DIGITS = 3,
  DECIMAL_BASE = 10,
  /* Flow-control windows we grant the server: a LIST of a big cluster is
   * megabytes, and nghttp2's default 64 KiB would make it crawl. */
  STREAM_WINDOW_BYTES = 1 << 20,
  CONNECTION_WINDOW_BYTES = 4 << 20,
};

static const uint8_t kAlpnH2Wire[] = {2, 'h', '2'};

/* Leaves the stream (if any) so that nghttp2 no longer reaches |r|; with
 * |reset| the server is told too. */
void mt_k8s_req_detach(mt_k8s_request *r, int reset) {
  mt_k8s_conn *conn = r->conn;
  if (conn != NULL && conn->t.session != NULL && r->stream_id > 0) {
    nghttp2_session_set_stream_user_data(conn->t.session, r->stream_id, NULL);
    if (reset) {
      nghttp2_submit_rst_stream(conn->t.session, NGHTTP2_FLAG_NONE, r->stream_id, NGHTTP2_CANCEL);
      mt_h2_transport_want_write(&conn->t);
    }
  }
  r->conn = NULL;
}

/* --- HTTP/2 session callbacks --- */

static mt_k8s_request *stream_request(nghttp2_session *session, int32_t stream_id) {
  return nghttp2_session_get_stream_user_data(session, stream_id);
}

static ssize_t on_send(nghttp2_session *session, const uint8_t *data, size_t len, int flags,
                       void *user_data) {
  (void)session;
  (void)flags;
  mt_k8s_conn *conn = user_data;
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
  mt_k8s_conn *conn = user_data;
  if (frame->hd.type == NGHTTP2_GOAWAY) {
    conn->goaway = 1;
    mt_h2_textf(conn->why, sizeof(conn->why), "the server sent GOAWAY (%s)",
                mt_h2_error_name(frame->goaway.error_code));
    if (conn->client->current == conn) conn->client->current = NULL;
    return 0;
  }
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_RESPONSE) {
    mt_k8s_request *r = stream_request(session, frame->hd.stream_id);
    if (r != NULL && r->state == MT_K8S_REQ_SENT && r->cb.on_response != NULL)
      r->cb.on_response(r->ctx, r->status);
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
  if (r == NULL || r->state != MT_K8S_REQ_SENT || r->cb.on_data == NULL) return 0;
  if (!r->cb.on_data(r->ctx, (const char *)data, len)) {
    /* on_done follows from on_stream_close, once the reset has left. */
    r->state = MT_K8S_REQ_ABORTED;
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
  if (r->state == MT_K8S_REQ_ABORTED)
    mt_h2_textf(error, sizeof(error), "the transfer was aborted by its receiver");
  else if (error_code == NGHTTP2_REFUSED_STREAM)
    mt_h2_textf(error, sizeof(error), "the server refused the stream (GOAWAY or overload)");
  else if (error_code != NGHTTP2_NO_ERROR)
    mt_h2_textf(error, sizeof(error), "stream reset: %s", mt_h2_error_name(error_code));
  else if (!r->ended)
    mt_h2_textf(error, sizeof(error), "the stream closed before the response ended");
  mt_k8s_req_finish(r, error);
  return 0;
}

static nghttp2_session *session_new(mt_k8s_conn *conn) {
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
int mt_k8s_conn_submit(mt_k8s_conn *conn, mt_k8s_request *r) {
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
  mt_k8s_req_forget_headers(r);
  r->stream_id = id;
  r->conn = conn;
  r->state = MT_K8S_REQ_SENT;
  mt_k8s_req_list_push(&conn->requests, r);
  mt_h2_transport_want_write(&conn->t);
  return 1;
}

/* --- connections --- */

/* Frees |conn| and the requests it still carries, without callbacks. */
static void conn_destroy(mt_k8s_conn *conn) {
  mt_k8s_client *c = conn->client;
  ev_timer_stop(c->loop, &conn->phase);
  while (conn->requests.head != NULL) {
    mt_k8s_request *r = conn->requests.head;
    mt_k8s_req_detach(r, 0);
    mt_k8s_req_free(r);
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
static void conn_fail(mt_k8s_conn *conn, const char *why) {
  mt_k8s_client *c = conn->client;
  char reason[MT_K8S_ERROR_MAX];
  mt_h2_textf(reason, sizeof(reason), "%s", why); /* |why| may live in |conn| */
  mt_k8s_req_list dying = {NULL};
  while (conn->requests.head != NULL) {
    mt_k8s_request *r = conn->requests.head;
    mt_k8s_req_detach(r, 0);
    mt_k8s_req_list_remove(r);
    mt_k8s_req_list_push(&dying, r);
  }
  if (c->current == conn) {
    while (c->queued.head != NULL) {
      mt_k8s_request *r = c->queued.head;
      mt_k8s_req_list_remove(r);
      mt_k8s_req_list_push(&dying, r);
    }
  }
  conn_destroy(conn);
  while (dying.head != NULL) mt_k8s_req_finish(dying.head, reason);
}

static void defer_failure(mt_k8s_conn *conn, const char *why) {
  mt_k8s_client *c = conn->client;
  conn->state = MT_K8S_CONN_FAILED;
  mt_h2_textf(conn->why, sizeof(conn->why), "%s", why);
  ev_timer_stop(c->loop, &conn->phase);
  ev_timer_set(&conn->phase, 0.0, 0.0);
  ev_timer_start(c->loop, &conn->phase);
}

static void on_phase_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  mt_k8s_conn *conn = w->data;
  mt_k8s_client *c = conn->client;
  char why[MT_K8S_ERROR_MAX];
  switch (conn->state) {
    case MT_K8S_CONN_FAILED: mt_h2_textf(why, sizeof(why), "%s", conn->why); break;
    case MT_K8S_CONN_CONNECTING:
    case MT_K8S_CONN_HANDSHAKING:
    case MT_K8S_CONN_READY:
      mt_h2_textf(why, sizeof(why), "%s to %s timed out after %lld ms",
                  conn->state == MT_K8S_CONN_CONNECTING ? "connect" : "TLS handshake", c->server,
                  (long long)c->connect_timeout_ms);
      break;
  }
  conn_fail(conn, why);
}

static void conn_pump(mt_k8s_conn *conn) {
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
static void conn_ready(mt_k8s_conn *conn) {
  mt_k8s_client *c = conn->client;
  ev_timer_stop(c->loop, &conn->phase);
  conn->t.session = session_new(conn);
  if (conn->t.session == NULL) {
    conn_fail(conn, "out of memory starting the HTTP/2 session");
    return;
  }
  conn->state = MT_K8S_CONN_READY;
  mt_k8s_req_list waiting = {NULL};
  while (c->queued.head != NULL) {
    mt_k8s_request *r = c->queued.head;
    mt_k8s_req_list_remove(r);
    mt_k8s_req_list_push(&waiting, r);
  }
  while (waiting.head != NULL) {
    mt_k8s_request *r = waiting.head;
    mt_k8s_req_list_remove(r);
    if (!mt_k8s_conn_submit(conn, r)) mt_k8s_req_finish(r, "could not start an HTTP/2 stream");
  }
  conn_pump(conn);
}

static void on_conn_io(struct ev_loop *loop, ev_io *w, int revents) {
  (void)loop;
  (void)revents;
  mt_k8s_conn *conn = w->data;
  mt_k8s_client *c = conn->client;
  char why[MT_K8S_ERROR_MAX];
  switch (conn->state) {
    case MT_K8S_CONN_CONNECTING: {
      int err = mt_h2_transport_connect_error(&conn->t);
      if (err == EINPROGRESS) return;
      if (err != 0) {
        mt_h2_textf(why, sizeof(why), "connect to %s: %s", c->server, strerror(err));
        conn_fail(conn, why);
        return;
      }
      conn->state = MT_K8S_CONN_HANDSHAKING;
    }
      /* fall through */
    case MT_K8S_CONN_HANDSHAKING:
      switch (mt_h2_transport_handshake(&conn->t, 1)) {
        case MT_H2_STEP_AGAIN: return;
        case MT_H2_STEP_FAILED:
          mt_h2_textf(why, sizeof(why), "%s (server %s)", conn->t.error, c->server);
          conn_fail(conn, why);
          return;
        case MT_H2_STEP_DONE: conn_ready(conn); return;
      }
      return;
    case MT_K8S_CONN_READY: conn_pump(conn); return;
    case MT_K8S_CONN_FAILED: return;
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
mt_k8s_conn *mt_k8s_conn_start(mt_k8s_client *c) {
  char why[MT_K8S_ERROR_MAX];
  mt_k8s_conn *conn = calloc(1, sizeof(*conn));
  if (conn == NULL) return NULL;
  conn->client = c;
  conn->t.fd = -1;
  ev_init(&conn->phase, on_phase_timer);
  conn->phase.data = conn;
  conn->next = c->conns;
  if (c->conns) c->conns->prev = conn;
  c->conns = conn;
  c->current = conn;
  conn->state = MT_K8S_CONN_CONNECTING;
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
  ev_timer_set(&conn->phase, (double)c->connect_timeout_ms / MT_K8S_MS_PER_SECOND, 0.0);
  ev_timer_start(c->loop, &conn->phase);
  return conn;
}

void mt_k8s_conn_close(mt_k8s_conn *conn) {
  /* Requests first: the GOAWAY below must find no stream to report on. */
  while (conn->requests.head != NULL) {
    mt_k8s_request *r = conn->requests.head;
    mt_k8s_req_detach(r, 0);
    mt_k8s_req_free(r);
  }
  if (conn->t.session != NULL) {
    nghttp2_session_terminate_session(conn->t.session, NGHTTP2_NO_ERROR);
    mt_h2_transport_flush_best_effort(&conn->t);
  }
  conn_destroy(conn);
}
