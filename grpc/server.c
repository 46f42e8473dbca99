/* server.c: the listener, routes and connections of the gRPC server. One
 * connection: accept -> TLS handshake (deadline) -> HTTP/2 session (idle
 * timer) -> GOAWAY and close; on a plaintext Unix socket the session starts
 * at accept, with the caller's credentials taken from the kernel. The calls themselves are
 * server_stream.c's.
 *
 * Re-entrancy: handlers run inside nghttp2 callbacks and may free the
 * server. Every entry from the loop is bracketed by mt_srv_enter/leave; a
 * free requested inside takes effect at the outermost leave. */
#include "grpc/server.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/bytestring.h>
#include <openssl/ssl.h>

#include "grpc/server_internal.h"

enum {
  DEFAULT_MAX_CONCURRENT_STREAMS = 100,
  DEFAULT_MAX_METADATA_BYTES = 16 * 1024,
  DEFAULT_MAX_CONNECTIONS = 1024,
  DEFAULT_HANDSHAKE_TIMEOUT_MS = 10000,
  DEFAULT_IDLE_TIMEOUT_MS = 300000,
  /* After our GOAWAY, how long the peer gets to take it before we close. */
  GOAWAY_FLUSH_MS = 1000,
  /* After running out of descriptors, how long before accepting again. */
  ACCEPT_RETRY_MS = 100,
  ACCEPT_BATCH = 64,
  LISTEN_BACKLOG = 128,
  MS_PER_SECOND = 1000,
  ERROR_TEXT_MAX = MT_H2_ERROR_MAX + 64,
};

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77 /* Linux 6.5; older C library headers lack it */
#endif

static void destroy(mt_grpc_server *server);

void mt_srv_enter(mt_grpc_server *server) { server->depth++; }

void mt_srv_leave(mt_grpc_server *server) {
  if (--server->depth == 0 && server->free_requested) destroy(server);
}

static void report(mt_grpc_server *server, const char *peer, const char *what) {
  if (server->on_connection_error && !server->free_requested)
    server->on_connection_error(server->on_connection_error_arg, peer, what);
}

/* The client's ALPN list must offer "h2" (parsed with CBS). A client that
 * sends no ALPN at all is let through; the HTTP/2 preface decides. */
static int select_h2(SSL *ssl, const uint8_t **out, uint8_t *out_len, const uint8_t *in,
                     unsigned in_len, void *arg) {
  (void)ssl;
  (void)arg;
  CBS list, proto;
  CBS_init(&list, in, in_len);
  while (CBS_len(&list) > 0) {
    if (!CBS_get_u8_length_prefixed(&list, &proto)) return SSL_TLSEXT_ERR_ALERT_FATAL;
    if (CBS_len(&proto) == 2 && memcmp(CBS_data(&proto), "h2", 2) == 0) {
      *out = CBS_data(&proto);
      *out_len = 2;
      return SSL_TLSEXT_ERR_OK;
    }
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* ---- connections ---- */

static void timer_in(mt_srv_conn *conn, double seconds) {
  ev_timer_stop(conn->server->loop, &conn->timer);
  ev_timer_set(&conn->timer, seconds, 0.0);
  ev_timer_start(conn->server->loop, &conn->timer);
}

/* Ends a connection: handlers holding its streams hear |why|. */
static void conn_close(mt_srv_conn *conn, mt_grpc_status why) {
  mt_grpc_server *server = conn->server;
  ev_timer_stop(server->loop, &conn->timer);
  mt_h2_transport_dispose(&conn->t);
  mt_srv_conn_end_streams(conn, why);
  X509_free(conn->peer_cert);
  if (conn->has_cred && conn->cred.pidfd >= 0) close(conn->cred.pidfd);
  if (conn->prev) conn->prev->next = conn->next;
  if (conn->next) conn->next->prev = conn->prev;
  if (server->conns == conn) server->conns = conn->next;
  server->conn_count--;
  free(conn);
}

/* Sends GOAWAY; the connection closes once it has left (or after
 * GOAWAY_FLUSH_MS). */
static void conn_goaway(mt_srv_conn *conn) {
  nghttp2_session_terminate_session(conn->t.session, NGHTTP2_NO_ERROR);
  conn->state = MT_SRV_CONN_CLOSING;
  timer_in(conn, GOAWAY_FLUSH_MS / (double)MS_PER_SECOND);
  mt_h2_transport_want_write(&conn->t);
}

static void conn_pump(mt_srv_conn *conn) {
  mt_grpc_server *server = conn->server;
  mt_h2_status st = mt_h2_transport_pump(&conn->t);
  if (server->free_requested) return;
  if (st == MT_H2_FAILED) {
    /* A client that simply hangs up is not an error. */
    if (!conn->t.read_eof) report(server, conn->peer_text, conn->t.error);
    conn_close(conn, MT_GRPC_CANCELLED);
  } else if (st == MT_H2_DONE) {
    mt_h2_transport_flush_best_effort(&conn->t);
    conn_close(conn, MT_GRPC_UNAVAILABLE);
  }
}

static void conn_ready(mt_srv_conn *conn) {
  mt_grpc_server *server = conn->server;
  if (conn->t.ssl != NULL) {
    conn->peer_cert = SSL_get_peer_certificate(conn->t.ssl);
    conn->peer_chain = SSL_get_peer_full_cert_chain(conn->t.ssl);
  }
  conn->t.session = mt_srv_session_new(conn);
  if (conn->t.session == NULL) {
    report(server, conn->peer_text, "out of memory starting the HTTP/2 session");
    conn_close(conn, MT_GRPC_UNAVAILABLE);
    return;
  }
  conn->state = MT_SRV_CONN_READY;
  conn->t.last_activity = ev_now(server->loop);
  timer_in(conn, server->idle_timeout_ms / (double)MS_PER_SECOND);
  conn_pump(conn);
}

static void on_conn_io(struct ev_loop *loop, ev_io *w, int revents) {
  (void)loop;
  (void)revents;
  mt_srv_conn *conn = w->data;
  mt_grpc_server *server = conn->server;
  mt_srv_enter(server);
  if (!server->free_requested) {
    switch (conn->state) {
      case MT_SRV_CONN_HANDSHAKING:
        switch (mt_h2_transport_handshake(&conn->t, 0)) {
          case MT_H2_STEP_AGAIN: break;
          case MT_H2_STEP_FAILED:
            report(server, conn->peer_text, conn->t.error);
            conn_close(conn, MT_GRPC_UNAVAILABLE);
            break;
          case MT_H2_STEP_DONE: conn_ready(conn); break;
        }
        break;
      case MT_SRV_CONN_READY:
      case MT_SRV_CONN_CLOSING: conn_pump(conn); break;
    }
  }
  mt_srv_leave(server);
}

/* Handshake deadline; idle check (re-armed lazily from the last activity,
 * so traffic never touches the timer); GOAWAY flush deadline. */
static void on_conn_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)revents;
  mt_srv_conn *conn = w->data;
  mt_grpc_server *server = conn->server;
  char what[ERROR_TEXT_MAX];
  mt_srv_enter(server);
  if (!server->free_requested) {
    double idle = server->idle_timeout_ms / (double)MS_PER_SECOND;
    switch (conn->state) {
      case MT_SRV_CONN_HANDSHAKING:
        snprintf(what, sizeof(what), "TLS handshake timed out after %d ms",
                 server->handshake_timeout_ms);
        report(server, conn->peer_text, what);
        conn_close(conn, MT_GRPC_UNAVAILABLE);
        break;
      case MT_SRV_CONN_READY:
        if (conn->stream_count > 0) {
          timer_in(conn, idle);
        } else if (conn->t.last_activity + idle > ev_now(loop)) {
          timer_in(conn, conn->t.last_activity + idle - ev_now(loop));
        } else {
          conn_goaway(conn);
        }
        break;
      case MT_SRV_CONN_CLOSING: conn_close(conn, MT_GRPC_UNAVAILABLE); break;
    }
  }
  mt_srv_leave(server);
}

/* Unix socket peers: who connected, from the kernel. The pidfd pins the
 * process itself, so a PID reused after the caller exits is told apart. */
static int read_peer_cred(int fd, mt_grpc_peer_cred *cred, char *text, size_t text_len) {
  struct ucred uc;
  socklen_t len = sizeof(uc);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) != 0 || len != sizeof(uc)) return 0;
  cred->pid = uc.pid;
  cred->uid = uc.uid;
  cred->gid = uc.gid;
  /* Only a kernel without SO_PEERPIDFD (before 6.5) goes without: any other
   * failure leaves the caller unidentifiable, and it is refused. */
  int pidfd = -1;
  len = sizeof(pidfd);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) != 0) {
    if (errno != ENOPROTOOPT) return 0;
    pidfd = -1;
  } else if (len != sizeof(pidfd)) {
    if (pidfd >= 0) close(pidfd);
    return 0;
  }
  cred->pidfd = pidfd;
  snprintf(text, text_len, "pid %ld uid %lu gid %lu", (long)uc.pid, (unsigned long)uc.uid,
           (unsigned long)uc.gid);
  return 1;
}

static void conn_new(mt_grpc_server *server, int fd, const struct sockaddr_storage *peer) {
  char peer_text[MT_H2_ADDRESS_TEXT_MAX];
  mt_grpc_peer_cred cred = {.pidfd = -1};
  int has_cred = 0;
  if (peer->ss_family == AF_UNIX) {
    has_cred = read_peer_cred(fd, &cred, peer_text, sizeof(peer_text));
    if (!has_cred) {
      snprintf(peer_text, sizeof(peer_text), "unix");
      report(server, peer_text, "cannot read the peer's credentials (SO_PEERCRED, SO_PEERPIDFD)");
      close(fd);
      return;
    }
  } else {
    mt_h2_format_address((const struct sockaddr *)peer, peer_text, sizeof(peer_text));
  }
  uint64_t key = has_cred && server->peer_key ? server->peer_key(server->peer_key_arg, &cred) : 0;
  size_t same_key = 0;
  if (has_cred && server->peer_key && server->max_connections_per_key > 0)
    for (const mt_srv_conn *c = server->conns; c != NULL; c = c->next)
      same_key += c->has_cred && c->peer_key == key;
  if (same_key >= server->max_connections_per_key && server->max_connections_per_key > 0 &&
      server->peer_key && has_cred) {
    char what[ERROR_TEXT_MAX];
    snprintf(what, sizeof(what), "per-caller connection limit (%zu) reached",
             server->max_connections_per_key);
    report(server, peer_text, what);
    if (cred.pidfd >= 0) close(cred.pidfd);
    close(fd);
    return;
  }
  if (server->conn_count >= server->max_connections) {
    char what[ERROR_TEXT_MAX];
    snprintf(what, sizeof(what), "connection limit (%zu) reached", server->max_connections);
    report(server, peer_text, what);
    if (cred.pidfd >= 0) close(cred.pidfd);
    close(fd);
    return;
  }
  mt_srv_conn *conn = calloc(1, sizeof(*conn));
  SSL *ssl = NULL;
  if (conn != NULL && server->ssl_ctx != NULL) {
    ssl = SSL_new(server->ssl_ctx);
    if (ssl != NULL && !mt_h2_ssl_attach(ssl, fd)) {
      SSL_free(ssl);
      ssl = NULL;
    }
  }
  if (conn == NULL || (server->ssl_ctx != NULL && ssl == NULL)) {
    report(server, peer_text, "out of memory for a new connection");
    free(conn);
    if (cred.pidfd >= 0) close(cred.pidfd);
    close(fd);
    return;
  }
  if (ssl != NULL) SSL_set_accept_state(ssl);
  if (!mt_h2_transport_init(&conn->t, server->loop, fd, ssl, on_conn_io, conn)) {
    report(server, peer_text, "out of memory for a new connection");
    free(conn);
    if (cred.pidfd >= 0) close(cred.pidfd);
    return;
  }
  if (peer->ss_family != AF_UNIX) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  conn->server = server;
  conn->state = MT_SRV_CONN_HANDSHAKING;
  conn->peer = *peer;
  conn->cred = cred;
  conn->has_cred = has_cred;
  conn->peer_key = key;
  memcpy(conn->peer_text, peer_text, sizeof(peer_text));
  conn->next = server->conns;
  if (server->conns) server->conns->prev = conn;
  server->conns = conn;
  server->conn_count++;
  ev_init(&conn->timer, on_conn_timer);
  conn->timer.data = conn;
  if (ssl == NULL) {
    conn_ready(conn); /* plaintext: the client's preface is the first thing read */
    return;
  }
  timer_in(conn, server->handshake_timeout_ms / (double)MS_PER_SECOND);
  mt_h2_transport_watch(&conn->t, EV_READ);
}

/* ---- listener ---- */

static void on_accept_retry(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)revents;
  mt_grpc_server *server = w->data;
  ev_io_start(loop, &server->listen_io);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents) {
  (void)revents;
  mt_grpc_server *server = w->data;
  mt_srv_enter(server);
  for (int i = 0; i < ACCEPT_BATCH && !server->free_requested; i++) {
    struct sockaddr_storage peer;
    socklen_t len = sizeof(peer);
    int fd =
        accept4(server->listen_fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      conn_new(server, fd, &peer);
      continue;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
      /* Out of descriptors: pause instead of spinning on a ready socket. */
      char what[ERROR_TEXT_MAX];
      snprintf(what, sizeof(what), "accept: %s (pausing %d ms)", strerror(errno), ACCEPT_RETRY_MS);
      report(server, "-", what);
      ev_io_stop(loop, &server->listen_io);
      ev_timer_set(&server->accept_retry, ACCEPT_RETRY_MS / (double)MS_PER_SECOND, 0.0);
      ev_timer_start(loop, &server->accept_retry);
    }
    break;
  }
  mt_srv_leave(server);
}

/* A socket file already at |addr|'s path: one nobody listens on any more
 * (a previous process died) is removed; a live one or another kind of file
 * is left alone and reported. */
static int clear_stale_socket(const struct sockaddr_storage *addr, socklen_t len) {
  const char *path = ((const struct sockaddr_un *)addr)->sun_path;
  struct stat st;
  if (lstat(path, &st) != 0) return errno == ENOENT;
  if (!S_ISSOCK(st.st_mode)) {
    errno = EEXIST;
    return 0;
  }
  int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (probe < 0) return 0;
  int live = connect(probe, (const struct sockaddr *)addr, len) == 0;
  int probe_errno = errno;
  close(probe);
  if (live) {
    errno = EADDRINUSE;
    return 0;
  }
  if (probe_errno != ECONNREFUSED) {
    errno = probe_errno;
    return 0;
  }
  return unlink(path) == 0 || errno == ENOENT;
}

static int listen_on(mt_grpc_server *server, const char *address, unsigned unix_mode) {
  struct sockaddr_storage addr;
  socklen_t len = 0;
  if (!mt_h2_parse_address(address, &addr, &len)) {
    errno = EINVAL;
    return 0;
  }
  int is_unix = addr.ss_family == AF_UNIX;
  if (is_unix && !clear_stale_socket(&addr, len)) return 0;
  if (!is_unix && server->ssl_ctx == NULL) {
    errno = EINVAL; /* plaintext only where the kernel vouches for the peer */
    return 0;
  }
  int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  int one = 1;
  if (!is_unix) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  struct sockaddr_storage bound;
  memset(&bound, 0, sizeof(bound));
  socklen_t bound_len = sizeof(bound);
  const char *path = ((const struct sockaddr_un *)&addr)->sun_path;
  struct stat st;
  int bound_ok = bind(fd, (struct sockaddr *)&addr, len) == 0;
  if (!bound_ok || (is_unix && unix_mode != 0 && chmod(path, (mode_t)unix_mode) != 0) ||
      (is_unix && stat(path, &st) != 0) || listen(fd, LISTEN_BACKLOG) != 0 ||
      getsockname(fd, (struct sockaddr *)&bound, &bound_len) != 0) {
    int saved = errno;
    if (is_unix && bound_ok) unlink(path);
    close(fd);
    errno = saved;
    return 0;
  }
  if (is_unix) {
    server->unix_path = strdup(path);
    server->unix_dev = st.st_dev;
    server->unix_ino = st.st_ino;
    if (server->unix_path == NULL) {
      unlink(path);
      close(fd);
      errno = ENOMEM;
      return 0;
    }
  }
  server->listen_fd = fd;
  if (bound.ss_family == AF_INET6)
    server->port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
  else if (bound.ss_family == AF_INET)
    server->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
  return 1;
}

/* ---- public API ---- */

mt_grpc_server *mt_grpc_server_new(struct ev_loop *loop, const mt_grpc_server_options *options) {
  if (loop == NULL || options == NULL || options->listen == NULL) {
    errno = EINVAL;
    return NULL;
  }
  mt_grpc_server *server = calloc(1, sizeof(*server));
  if (server == NULL) return NULL;
  server->loop = loop;
  server->ssl_ctx = options->ssl_ctx;
  server->listen_fd = -1;
#define OR_DEFAULT(value, fallback) ((value) > 0 ? (value) : (fallback))
  server->max_message_bytes =
      OR_DEFAULT(options->max_message_bytes, (size_t)MT_GRPC_DEFAULT_MAX_MESSAGE_BYTES);
  server->max_concurrent_streams =
      OR_DEFAULT(options->max_concurrent_streams, (uint32_t)DEFAULT_MAX_CONCURRENT_STREAMS);
  server->max_metadata_bytes =
      OR_DEFAULT(options->max_metadata_bytes, (size_t)DEFAULT_MAX_METADATA_BYTES);
  server->max_send_queue_bytes =
      OR_DEFAULT(options->max_send_queue_bytes,
                 (size_t)MT_GRPC_DEFAULT_MAX_MESSAGE_BYTES + MT_GRPC_PREFIX_BYTES);
  server->max_connections = OR_DEFAULT(options->max_connections, (size_t)DEFAULT_MAX_CONNECTIONS);
  server->handshake_timeout_ms =
      OR_DEFAULT(options->handshake_timeout_ms, DEFAULT_HANDSHAKE_TIMEOUT_MS);
  server->idle_timeout_ms = OR_DEFAULT(options->idle_timeout_ms, DEFAULT_IDLE_TIMEOUT_MS);
#undef OR_DEFAULT
  server->on_connection_error = options->on_connection_error;
  server->on_connection_error_arg = options->on_connection_error_arg;
  server->on_call_refused = options->on_call_refused;
  server->on_call_refused_arg = options->on_call_refused_arg;
  server->peer_key = options->peer_key;
  server->peer_key_arg = options->peer_key_arg;
  server->max_connections_per_key = options->max_connections_per_key;
  if (server->max_metadata_bytes > UINT32_MAX ||
      !listen_on(server, options->listen, options->unix_socket_mode)) {
    int saved = errno ? errno : EINVAL;
    free(server);
    errno = saved;
    return NULL;
  }
  if (server->ssl_ctx != NULL) SSL_CTX_set_alpn_select_cb(server->ssl_ctx, select_h2, NULL);
  ev_io_init(&server->listen_io, on_accept, server->listen_fd, EV_READ);
  server->listen_io.data = server;
  ev_io_start(loop, &server->listen_io);
  ev_init(&server->accept_retry, on_accept_retry);
  server->accept_retry.data = server;
  return server;
}

static void destroy(mt_grpc_server *server) {
  /* Handlers told below may call back into the server; keep it alive and
   * refusing until the end. */
  server->free_requested = 1;
  server->depth++;
  ev_io_stop(server->loop, &server->listen_io);
  ev_timer_stop(server->loop, &server->accept_retry);
  if (server->listen_fd >= 0) close(server->listen_fd);
  if (server->unix_path != NULL) {
    /* Only our own socket: another process may have taken the path since. */
    struct stat st;
    if (lstat(server->unix_path, &st) == 0 && st.st_dev == server->unix_dev &&
        st.st_ino == server->unix_ino)
      unlink(server->unix_path);
    free(server->unix_path);
  }
  /* Handlers told below can only queue frames, never close a connection, so
   * the saved next pointer stays valid. */
  for (mt_srv_conn *conn = server->conns, *next; conn != NULL; conn = next) {
    next = conn->next;
    if (conn->t.session != NULL) {
      nghttp2_session_terminate_session(conn->t.session, NGHTTP2_NO_ERROR);
      mt_h2_transport_flush_best_effort(&conn->t);
    }
    conn_close(conn, MT_GRPC_UNAVAILABLE);
  }
  while (server->routes) {
    mt_srv_route *next = server->routes->next;
    free(server->routes->path);
    free(server->routes);
    server->routes = next;
  }
  free(server);
}

void mt_grpc_server_free(mt_grpc_server *server) {
  if (server == NULL) return;
  if (server->depth > 0) {
    server->free_requested = 1;
    for (mt_srv_conn *conn = server->conns; conn; conn = conn->next) conn->t.stop = 1;
    return;
  }
  destroy(server);
}

int mt_grpc_server_port(const mt_grpc_server *server) { return server ? server->port : 0; }

int mt_grpc_server_handle(mt_grpc_server *server, const char *path, mt_grpc_handler_fn on_call,
                          void *arg) {
  if (server == NULL || path == NULL || path[0] != '/' || on_call == NULL) return 0;
  for (const mt_srv_route *r = server->routes; r; r = r->next)
    if (strcmp(r->path, path) == 0) return 0;
  mt_srv_route *route = calloc(1, sizeof(*route));
  if (route == NULL || (route->path = strdup(path)) == NULL) {
    free(route);
    return 0;
  }
  route->on_call = on_call;
  route->arg = arg;
  route->next = server->routes;
  server->routes = route;
  return 1;
}
