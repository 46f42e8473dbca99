/* client.c: the client's connections (connect -> TLS -> HTTP/2, keepalive,
 * failure) and its public API. The calls are client_call.c's; the shared
 * types and the ownership and re-entrancy rules are in client_internal.h. */
#include "grpc/client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "grpc/client_internal.h"

enum {
  DEFAULT_CONNECT_TIMEOUT_MS = 10000,
  DEFAULT_KEEPALIVE_TIMEOUT_MS = 20000,
};

static const uint8_t kAlpnH2Wire[] = {2, 'h', '2'};

/* Headers the client sets itself, or that HTTP/2 forbids. */
static const char *const kReservedMetadata[] = {
    "content-type", "te",      "grpc-timeout", "user-agent",        "host",
    "connection",   "upgrade", "keep-alive",   "transfer-encoding", "proxy-connection",
};

static void destroy(mt_grpc_client *c);
static void conn_pump(mt_cli_conn *conn);

void mt_cli_enter(mt_grpc_client *c) { c->depth++; }

void mt_cli_leave(mt_grpc_client *c) {
  if (--c->depth == 0 && c->free_requested) destroy(c);
}

/* ---- connections ---- */

static void conn_destroy(mt_cli_conn *conn) {
  mt_grpc_client *c = conn->client;
  mt_resolve_cancel(conn->lookup);
  ev_timer_stop(c->loop, &conn->phase);
  ev_timer_stop(c->loop, &conn->keepalive);
  for (mt_grpc_call *call = conn->calls.head, *next; call != NULL; call = next) {
    next = call->next;
    mt_cli_call_free(call);
  }
  mt_h2_transport_dispose(&conn->t);
  X509_free(conn->peer_cert);
  if (conn->prev) conn->prev->next = conn->next;
  if (conn->next) conn->next->prev = conn->prev;
  if (c->conns == conn) c->conns = conn->next;
  if (c->current == conn) c->current = NULL;
  free(conn);
}

/* Tears |conn| down and ends its calls (and, if it was the connection being
 * set up, the queued calls) with UNAVAILABLE and |why|. */
static void conn_fail(mt_cli_conn *conn, const char *why) {
  mt_grpc_client *c = conn->client;
  char reason[MT_CLI_WHY_MAX];
  mt_h2_textf(reason, sizeof(reason), "%s", why); /* |why| may live in |conn| */
  mt_cli_call_list dying = {NULL};
  while (conn->calls.head) {
    mt_grpc_call *call = conn->calls.head;
    mt_cli_list_remove(call);
    call->conn = NULL;
    call->stream_live = 0;
    mt_cli_list_push(&dying, call);
  }
  if (c->current == conn) {
    while (c->queued.head) {
      mt_grpc_call *call = c->queued.head;
      mt_cli_list_remove(call);
      mt_cli_list_push(&dying, call);
    }
  }
  conn_destroy(conn);
  /* Callbacks may start calls (on a new connection) or cancel calls that
   * are still in |dying|, so take one call at a time. */
  while (dying.head) {
    mt_grpc_call *call = dying.head;
    mt_cli_list_remove(call);
    mt_cli_call_complete(call, MT_GRPC_UNAVAILABLE, reason);
    mt_cli_call_free(call);
  }
}

static void defer_failure(mt_cli_conn *conn, const char *why) {
  mt_grpc_client *c = conn->client;
  conn->state = MT_CLI_CONN_FAILED;
  mt_h2_textf(conn->why, sizeof(conn->why), "%s", why);
  ev_timer_stop(c->loop, &conn->phase);
  ev_timer_set(&conn->phase, 0.0, 0.0);
  ev_timer_start(c->loop, &conn->phase);
}

static void on_phase_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  mt_cli_conn *conn = w->data;
  mt_grpc_client *c = conn->client;
  char why[MT_CLI_WHY_MAX];
  mt_cli_enter(c);
  if (!c->free_requested) {
    switch (conn->state) {
      case MT_CLI_CONN_FAILED: mt_h2_textf(why, sizeof(why), "%s", conn->why); break;
      case MT_CLI_CONN_RESOLVING:
        mt_h2_textf(why, sizeof(why), "resolving %s timed out after %d ms", c->target_text,
                    c->connect_timeout_ms);
        break;
      case MT_CLI_CONN_CONNECTING:
        mt_h2_textf(why, sizeof(why), "connect to %s timed out after %d ms", conn->peer_text,
                    c->connect_timeout_ms);
        break;
      case MT_CLI_CONN_HANDSHAKING:
        mt_h2_textf(why, sizeof(why), "TLS handshake with %s timed out after %d ms",
                    conn->peer_text, c->connect_timeout_ms);
        break;
      case MT_CLI_CONN_READY:
        mt_h2_textf(why, sizeof(why), "keepalive timeout: no PING ACK from %s within %d ms",
                    conn->peer_text, c->keepalive_timeout_ms);
        break;
    }
    conn_fail(conn, why);
  }
  mt_cli_leave(c);
}

static void on_keepalive(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)revents;
  mt_cli_conn *conn = w->data;
  mt_grpc_client *c = conn->client;
  mt_cli_enter(c);
  if (!c->free_requested && conn->state == MT_CLI_CONN_READY && !conn->ping_outstanding &&
      (c->keepalive_without_calls || conn->calls.head != NULL) &&
      nghttp2_submit_ping(conn->t.session, NGHTTP2_FLAG_NONE, NULL) == 0) {
    conn->ping_outstanding = 1;
    ev_timer_set(&conn->phase, c->keepalive_timeout_ms / (double)MT_CLI_MS_PER_SECOND, 0.0);
    ev_timer_start(loop, &conn->phase);
    mt_h2_transport_want_write(&conn->t);
  }
  mt_cli_leave(c);
}

/* TLS is up with h2: start the session and send the queued calls. */
static void conn_ready(mt_cli_conn *conn) {
  mt_grpc_client *c = conn->client;
  ev_timer_stop(c->loop, &conn->phase);
  if (conn->t.ssl != NULL) conn->peer_cert = SSL_get_peer_certificate(conn->t.ssl);
  conn->t.session = mt_cli_session_new(conn);
  if (conn->t.session == NULL) {
    conn_fail(conn, "out of memory starting the HTTP/2 session");
    return;
  }
  conn->state = MT_CLI_CONN_READY;
  if (c->keepalive_interval_ms > 0) {
    double interval = c->keepalive_interval_ms / (double)MT_CLI_MS_PER_SECOND;
    ev_timer_set(&conn->keepalive, interval, interval);
    ev_timer_start(c->loop, &conn->keepalive);
  }
  /* The queue is pushed at its head; reversing it into |waiting| sends the
   * oldest call first. A callback below may cancel a waiting call, so take
   * one at a time. */
  mt_cli_call_list waiting = {NULL};
  while (c->queued.head) {
    mt_grpc_call *call = c->queued.head;
    mt_cli_list_remove(call);
    mt_cli_list_push(&waiting, call);
  }
  while (waiting.head) {
    mt_grpc_call *call = waiting.head;
    mt_cli_list_remove(call);
    if (c->free_requested) {
      mt_cli_call_free(call);
    } else if (mt_cli_call_submit(conn, call) < 0) {
      mt_cli_call_complete(call, MT_GRPC_UNAVAILABLE, "could not start an HTTP/2 stream");
      mt_cli_call_free(call);
    }
  }
  conn_pump(conn);
}

static void conn_pump(mt_cli_conn *conn) {
  mt_grpc_client *c = conn->client;
  char why[MT_CLI_WHY_MAX];
  mt_h2_status st = mt_h2_transport_pump(&conn->t);
  if (c->free_requested) return;
  if (st == MT_H2_FAILED) {
    mt_h2_textf(why, sizeof(why), "connection to %s lost: %s%s%s", conn->peer_text, conn->t.error,
                conn->goaway ? " after " : "", conn->goaway ? conn->why : "");
    conn_fail(conn, why);
  } else if (st == MT_H2_DONE || (conn->goaway && conn->calls.head == NULL)) {
    conn_fail(conn, conn->goaway ? conn->why : "connection closed");
  }
}

/* The connection's socket is ready: advance whatever phase it is in. */
static void conn_try_next(mt_cli_conn *conn, const char *why);

static void conn_on_io(mt_cli_conn *conn) {
  char why[MT_CLI_WHY_MAX];
  switch (conn->state) {
    case MT_CLI_CONN_CONNECTING: {
      int err = mt_h2_transport_connect_error(&conn->t);
      if (err == EINPROGRESS) return;
      if (err != 0) {
        mt_h2_textf(why, sizeof(why), "connect to %s: %s", conn->peer_text, strerror(err));
        conn_try_next(conn, why);
        return;
      }
      if (conn->t.ssl == NULL) { /* plaintext (a Unix socket): HTTP/2 at once */
        conn_ready(conn);
        return;
      }
      conn->state = MT_CLI_CONN_HANDSHAKING;
    }
    /* fall through */
    case MT_CLI_CONN_HANDSHAKING:
      switch (mt_h2_transport_handshake(&conn->t, 1)) {
        case MT_H2_STEP_AGAIN: return;
        case MT_H2_STEP_FAILED:
          mt_h2_textf(why, sizeof(why), "%s (server %s)", conn->t.error, conn->peer_text);
          conn_fail(conn, why);
          return;
        case MT_H2_STEP_DONE: conn_ready(conn); return;
      }
      return;
    case MT_CLI_CONN_READY: conn_pump(conn); return;
    case MT_CLI_CONN_RESOLVING: /* no socket yet */
    case MT_CLI_CONN_FAILED: return;
  }
}

static void on_conn_io(struct ev_loop *loop, ev_io *w, int revents) {
  (void)loop;
  (void)revents;
  mt_cli_conn *conn = w->data;
  mt_grpc_client *c = conn->client;
  mt_cli_enter(c);
  if (!c->free_requested) conn_on_io(conn);
  mt_cli_leave(c);
}

static int is_ip_literal(const char *name) {
  struct in6_addr a6;
  struct in_addr a4;
  return inet_pton(AF_INET, name, &a4) == 1 || inet_pton(AF_INET6, name, &a6) == 1;
}

static SSL *ssl_new(mt_grpc_client *c, int fd) {
  SSL *ssl = SSL_new(c->ssl_ctx);
  if (ssl == NULL) return NULL;
  int ok =
      mt_h2_ssl_attach(ssl, fd) && SSL_set_alpn_protos(ssl, kAlpnH2Wire, sizeof(kAlpnH2Wire)) == 0;
  if (ok && c->server_name != NULL) {
    /* The name is checked only if the SSL_CTX uses the built-in verifier. */
    X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
    if (is_ip_literal(c->server_name)) {
      ok = X509_VERIFY_PARAM_set1_ip_asc(param, c->server_name);
    } else {
      ok = SSL_set_tlsext_host_name(ssl, c->server_name) &&
           X509_VERIFY_PARAM_set1_host(param, c->server_name, strlen(c->server_name));
    }
  }
  if (!ok) {
    SSL_free(ssl);
    return NULL;
  }
  SSL_set_connect_state(ssl);
  return ssl;
}

/* Opens the socket to |addr| and starts connecting. Failures are reported
 * on the next loop iteration, so no user callback runs inside an API call. */
static void conn_connect(mt_cli_conn *conn, const struct sockaddr *addr, socklen_t addr_len) {
  mt_grpc_client *c = conn->client;
  char why[MT_CLI_WHY_MAX];
  conn->state = MT_CLI_CONN_CONNECTING;
  char ip[MT_H2_ADDRESS_TEXT_MAX];
  mt_h2_format_address(addr, ip, sizeof(ip));
  if (c->target.numeric)
    mt_h2_textf(conn->peer_text, sizeof(conn->peer_text), "%s", ip);
  else
    mt_h2_textf(conn->peer_text, sizeof(conn->peer_text), "%s (%s)", c->target_text, ip);
  int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    mt_h2_textf(why, sizeof(why), "socket: %s", strerror(errno));
    defer_failure(conn, why);
    return;
  }
  int one = 1;
  if (addr->sa_family != AF_UNIX) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  SSL *ssl = c->ssl_ctx != NULL ? ssl_new(c, fd) : NULL;
  if (ssl == NULL && c->ssl_ctx != NULL) {
    close(fd);
    defer_failure(conn, "cannot create the TLS session (SSL_new failed)");
    return;
  }
  if (!mt_h2_transport_init(&conn->t, c->loop, fd, ssl, on_conn_io, conn)) {
    defer_failure(conn, "out of memory");
    return;
  }
  if (connect(fd, addr, addr_len) != 0 && errno != EINPROGRESS) {
    mt_h2_textf(why, sizeof(why), "connect to %s: %s", conn->peer_text, strerror(errno));
    defer_failure(conn, why);
    return;
  }
  mt_h2_transport_watch(&conn->t, EV_WRITE);
}

/* Connects to the address at conn->target_index. */
static void conn_connect_current(mt_cli_conn *conn) {
  const mt_resolve_result *r = &conn->targets;
  conn_connect(conn, (const struct sockaddr *)&r->addresses[conn->target_index],
               r->lengths[conn->target_index]);
}

/* A TCP connect failed: the next address of the name, if any, else fail
 * the connection with |why| (inside a loop callback). */
static void conn_try_next(mt_cli_conn *conn, const char *why) {
  if (conn->target_index + 1 >= conn->targets.count) {
    conn_fail(conn, why);
    return;
  }
  mt_h2_transport_dispose(&conn->t);
  conn->target_index++;
  conn_connect_current(conn);
}

/* The target's name was looked up (on the loop). */
static void on_resolved(void *arg, const mt_resolve_result *result) {
  mt_cli_conn *conn = arg;
  mt_grpc_client *c = conn->client;
  conn->lookup = NULL;
  mt_cli_enter(c);
  if (!c->free_requested) {
    if (result->count == 0) {
      conn_fail(conn, result->error);
    } else {
      /* Several addresses (dual stack, several A records): tried in the
       * resolver's order until one accepts the TCP connection. */
      conn->targets = *result;
      conn->target_index = 0;
      conn_connect_current(conn);
    }
  }
  mt_cli_leave(c);
}

/* Opens a new current connection: a numeric target connects at once, a
 * name is looked up first (again for every connection, so a moved server
 * is found). The phase timer bounds lookup, connect and handshake together.
 * Failures found here are reported on the next loop iteration, so no user
 * callback runs inside an API call. */
static mt_cli_conn *conn_start(mt_grpc_client *c) {
  mt_cli_conn *conn = calloc(1, sizeof(*conn));
  if (conn == NULL) return NULL;
  conn->client = c;
  conn->t.fd = -1;
  ev_init(&conn->phase, on_phase_timer);
  conn->phase.data = conn;
  ev_init(&conn->keepalive, on_keepalive);
  conn->keepalive.data = conn;
  conn->next = c->conns;
  if (c->conns) c->conns->prev = conn;
  c->conns = conn;
  c->current = conn;
  mt_h2_textf(conn->peer_text, sizeof(conn->peer_text), "%s", c->target_text);
  ev_timer_set(&conn->phase, c->connect_timeout_ms / (double)MT_CLI_MS_PER_SECOND, 0.0);
  ev_timer_start(c->loop, &conn->phase);
  if (c->target.numeric) {
    conn->targets.addresses[0] = c->target.address;
    conn->targets.lengths[0] = c->target.address_len;
    conn->targets.count = 1;
    conn_connect_current(conn);
    return conn;
  }
  conn->state = MT_CLI_CONN_RESOLVING;
  conn->lookup = mt_resolve_start(c->loop, &c->target, on_resolved, conn);
  if (conn->lookup == NULL)
    defer_failure(conn, "cannot start a name lookup (out of memory or threads)");
  return conn;
}

/* ---- public API ---- */

mt_grpc_client *mt_grpc_client_new(struct ev_loop *loop, const mt_grpc_client_options *options) {
  if (loop == NULL || options == NULL || options->target == NULL) return NULL;
  mt_grpc_client *c = calloc(1, sizeof(*c));
  if (c == NULL) return NULL;
  c->loop = loop;
  c->ssl_ctx = options->ssl_ctx;
  if (!mt_resolve_parse(options->target, &c->target)) {
    free(c);
    return NULL;
  }
  int is_unix = c->target.address.ss_family == AF_UNIX;
  if (c->ssl_ctx == NULL && !is_unix) { /* plaintext only to a Unix socket */
    free(c);
    return NULL;
  }
  if (c->target.numeric)
    mt_h2_format_address((const struct sockaddr *)&c->target.address, c->target_text,
                         sizeof(c->target_text));
  else
    mt_h2_textf(c->target_text, sizeof(c->target_text), "%s:%s", c->target.host, c->target.port);
  c->authority = strdup(options->authority ? options->authority
                        : is_unix          ? "localhost"
                                           : options->target);
  c->server_name = options->server_name ? strdup(options->server_name) : NULL;
  c->connect_timeout_ms =
      options->connect_timeout_ms > 0 ? options->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
  c->keepalive_interval_ms =
      options->keepalive_interval_ms > 0 ? options->keepalive_interval_ms : 0;
  c->keepalive_timeout_ms = options->keepalive_timeout_ms > 0 ? options->keepalive_timeout_ms
                                                              : DEFAULT_KEEPALIVE_TIMEOUT_MS;
  c->keepalive_without_calls = options->keepalive_without_calls;
  c->max_message_bytes = options->max_message_bytes;
  if (c->authority == NULL || (options->server_name && c->server_name == NULL) ||
      !mt_grpc_metadata_value_valid(c->authority)) {
    destroy(c);
    return NULL;
  }
  return c;
}

static void destroy(mt_grpc_client *c) {
  /* The GOAWAY below runs nghttp2 callbacks: they must not reach the user. */
  c->free_requested = 1;
  c->depth++;
  /* No callback runs here, so the saved next pointers stay valid. */
  for (mt_cli_conn *conn = c->conns, *next; conn != NULL; conn = next) {
    next = conn->next;
    if (conn->t.session != NULL) {
      nghttp2_session_terminate_session(conn->t.session, NGHTTP2_NO_ERROR);
      mt_h2_transport_flush_best_effort(&conn->t);
    }
    conn_destroy(conn);
  }
  for (mt_grpc_call *call = c->queued.head, *next; call != NULL; call = next) {
    next = call->next;
    mt_cli_call_free(call);
  }
  free(c->authority);
  free(c->server_name);
  free(c);
}

void mt_grpc_client_free(mt_grpc_client *client) {
  if (client == NULL) return;
  if (client->depth > 0) {
    client->free_requested = 1;
    for (mt_cli_conn *conn = client->conns; conn; conn = conn->next) conn->t.stop = 1;
    return;
  }
  destroy(client);
}

int mt_grpc_client_is_connected(const mt_grpc_client *client) {
  return client != NULL && client->current != NULL && client->current->state == MT_CLI_CONN_READY &&
         !client->current->goaway;
}

X509 *mt_grpc_client_peer_cert(const mt_grpc_client *client) {
  return mt_grpc_client_is_connected(client) ? client->current->peer_cert : NULL;
}

static int path_valid(const char *path) {
  if (path == NULL || path[0] != '/') return 0;
  for (const unsigned char *p = (const unsigned char *)path; *p; p++)
    if (*p <= 0x20 || *p > 0x7e) return 0;
  return 1;
}

static int metadata_allowed(const mt_grpc_metadata *md) {
  if (!mt_grpc_metadata_name_valid(md->name) || !mt_grpc_metadata_value_valid(md->value)) return 0;
  for (size_t i = 0; i < sizeof(kReservedMetadata) / sizeof(kReservedMetadata[0]); i++)
    if (strcmp(md->name, kReservedMetadata[i]) == 0) return 0;
  return 1;
}

mt_grpc_call *mt_grpc_client_start_call(mt_grpc_client *client, const char *path,
                                        const mt_grpc_metadata *metadata, size_t metadata_count,
                                        const uint8_t *request, size_t request_len,
                                        int64_t deadline_ms, const mt_grpc_call_handlers *handlers,
                                        void *arg) {
  if (client == NULL || client->free_requested || handlers == NULL || !path_valid(path) ||
      (request == NULL && request_len > 0) || (metadata == NULL && metadata_count > 0) ||
      request_len > UINT32_MAX)
    return NULL;
  for (size_t i = 0; i < metadata_count; i++)
    if (!metadata_allowed(&metadata[i])) return NULL;
  mt_grpc_call *call =
      mt_cli_call_new(client, path, metadata, metadata_count, request, request_len);
  if (call == NULL) return NULL;
  call->handlers = *handlers;
  call->arg = arg;
  if (deadline_ms > 0) {
    double seconds = (double)deadline_ms / MT_CLI_MS_PER_SECOND;
    call->deadline_at = ev_now(client->loop) + seconds;
    ev_timer_set(&call->deadline, seconds, 0.0);
    ev_timer_start(client->loop, &call->deadline);
  }
  mt_cli_conn *conn = client->current;
  if (conn != NULL && conn->state == MT_CLI_CONN_READY) {
    int32_t rv = mt_cli_call_submit(conn, call);
    if (rv >= 0) return call;
    if (rv != NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE) {
      mt_cli_call_free(call);
      return NULL;
    }
    /* Stream IDs are used up: retire the connection like after a GOAWAY. */
    conn->goaway = 1;
    mt_h2_textf(conn->why, sizeof(conn->why), "HTTP/2 stream IDs exhausted");
    client->current = NULL;
  }
  mt_cli_list_push(&client->queued, call);
  call->state = MT_CLI_CALL_QUEUED;
  if (client->current == NULL && conn_start(client) == NULL) {
    mt_cli_call_free(call);
    return NULL;
  }
  return call;
}

void mt_grpc_call_cancel(mt_grpc_call *call) {
  if (call == NULL || call->state == MT_CLI_CALL_DONE) return;
  call->state = MT_CLI_CALL_DONE;
  ev_timer_stop(call->client->loop, &call->deadline);
  mt_cli_call_stop_stream(call, NGHTTP2_CANCEL);
  if (call->conn == NULL)
    mt_cli_call_free(call);
  else
    mt_cli_call_release(call);
}
