/* conn.c: connection lifetime, timers, connect and handshake steps. */
#include "agent/conn.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/log.h"
#include "agent/mem_trim.h"
#include "agent/metrics.h"
#include "agent/relay.h"
#include "agent/tls_resume.h"
#include "agent/worker.h"

/* From <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h>,
 * which cannot be included together with <netinet/in.h>. */
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

enum { ADDR_TEXT_MAX = 64 };

/* Each watcher's data points at its connection; which endpoint fired is
 * recovered from the watcher's address. */
static void on_endpoint_io(struct ev_loop *loop, ev_io *w, int revents) {
  (void)loop;
  mt_conn *conn = w->data;
  mt_endpoint *ep = (w == &conn->down.io) ? &conn->down : &conn->up;
  conn->on_event(conn, ep, revents);
}

/* What the access log says about a deadline that passed, so a flood of
 * half-open connections ("no byte received") tells itself apart from
 * slow handshakes and from an app that does not answer. */
static const char *deadline_detail(const mt_conn *conn, char *out, size_t len) {
  const mt_config *config = mt_worker_config(conn->worker);
  if (conn->peer.detail[0] != '\0') return NULL; /* the TLS side said more */
  switch (conn->deadline_reason) {
    case MT_REASON_HANDSHAKE_TIMEOUT:
      snprintf(out, len, "%s within the %d ms handshake deadline",
               conn->state == MT_CONN_PEEKING       ? "no byte received"
               : conn->state == MT_CONN_HANDSHAKING ? "TLS handshake not finished"
                                                    : "connection not established",
               config->handshake_timeout_ms);
      return out;
    case MT_REASON_CONNECT_TIMEOUT:
      snprintf(out, len, "TCP connect not answered within %d ms", config->connect_timeout_ms);
      return out;
    default: return NULL;
  }
}

/* Before the relay phase the timer is a hard deadline; during it, an idle
 * timer that is re-armed lazily (libev's "last activity" pattern) so data
 * transfer never touches the timer heap. */
static void on_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)revents;
  mt_conn *conn = w->data;
  if (conn->state == MT_CONN_AWAITING_IDENTITY) {
    char detail[MT_TLS_DETAIL_MAX];
    snprintf(detail, sizeof(detail), "%s (waited %.0f ms, up to the handshake deadline)",
             conn->hold_why, (ev_now(loop) - conn->held_since) * 1000.0);
    mt_conn_close(conn, conn->hold_reason, detail);
    return;
  }
  char detail[MT_TLS_DETAIL_MAX];
  if (conn->state != MT_CONN_RELAYING) {
    mt_conn_close(conn, conn->deadline_reason, deadline_detail(conn, detail, sizeof(detail)));
    return;
  }
  ev_tstamp due = conn->last_activity + conn->idle_timeout_ms / 1000.0;
  ev_tstamp now = ev_now(loop);
  if (due > now) {
    w->repeat = due - now;
    ev_timer_again(loop, w);
    return;
  }
  snprintf(detail, sizeof(detail), "no byte either way for %d ms", conn->idle_timeout_ms);
  mt_conn_close(conn, MT_REASON_IDLE_TIMEOUT, detail);
}

static void endpoint_init(mt_conn *conn, mt_endpoint *ep, int fd) {
  memset(ep, 0, sizeof(*ep));
  ep->fd = fd;
  ev_io_init(&ep->io, on_endpoint_io, fd < 0 ? 0 : fd, 0);
  ep->io.data = conn;
}

mt_conn *mt_conn_new(mt_worker *worker, mt_direction direction, int fd,
                     const struct sockaddr *source, mt_conn_event_fn on_event) {
  /* Relay buffers are borrowed later, only while bytes are in flight. */
  mt_conn *conn = calloc(1, sizeof(*conn));
  if (conn == NULL) {
    close(fd);
    return NULL;
  }
  conn->worker = worker;
  conn->loop = mt_worker_loop(worker);
  conn->direction = direction;
  conn->on_event = on_event;
  conn->started = conn->last_activity = ev_now(conn->loop);
  memcpy(&conn->source, source,
         source->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
  endpoint_init(conn, &conn->down, fd);
  endpoint_init(conn, &conn->up, -1);
  ev_init(&conn->timer, on_timer);
  conn->timer.data = conn;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  mt_worker_link(worker, conn);
  mt_mem_trim_conn_opened(mt_worker_mem_trim(worker));
  mt_metrics_conn_opened(mt_worker_metrics_of(worker), direction);
  return conn;
}

static const char *tls_side_version(const mt_conn *conn, const char **cipher) {
  const SSL *ssl = conn->down.ssl ? conn->down.ssl : conn->up.ssl;
  *cipher = "";
  if (ssl == NULL || !SSL_is_init_finished(ssl)) return "";
  const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
  *cipher = c ? SSL_CIPHER_standard_name(c) : "";
  return SSL_get_version(ssl);
}

static void write_access_record(mt_conn *conn, mt_reason reason, const char *detail) {
  char source[ADDR_TEXT_MAX], target[ADDR_TEXT_MAX], endpoint[ADDR_TEXT_MAX] = "";
  mt_sockaddr_format((const struct sockaddr *)&conn->source, source, sizeof(source));
  mt_sockaddr_format((const struct sockaddr *)&conn->target, target, sizeof(target));
  if (conn->endpoint.ss_family)
    mt_sockaddr_format((const struct sockaddr *)&conn->endpoint, endpoint, sizeof(endpoint));
  mt_access_record rec;
  rec.direction = conn->direction == MT_DIR_INBOUND ? "inbound" : "outbound";
  rec.source = source;
  rec.destination = conn->target.ss_family ? target : "";
  rec.endpoint = endpoint;
  rec.peer_id = conn->peer.spiffe_id;
  rec.local_id = conn->identity ? mt_identity_spiffe_id(conn->identity) : "";
  rec.decision = conn->admitted ? "allow" : "deny";
  rec.rule = conn->rule ? conn->rule : "";
  rec.reason = mt_reason_str(reason);
  rec.detail = detail ? detail : conn->peer.detail;
  rec.tls_version = tls_side_version(conn, &rec.cipher);
  rec.peer_serial = conn->peer.serial;
  rec.tls_session = rec.tls_version[0] == '\0' ? "" : conn->peer.resumed ? "resumed" : "full";
  rec.bytes_to_upstream = conn->to_up.total;
  rec.bytes_to_downstream = conn->to_down.total;
  ev_tstamp elapsed = ev_time() - conn->started;
  rec.duration_ms = elapsed > 0 ? (uint64_t)(elapsed * 1000.0) : 0;
  rec.held_ms = (uint64_t)(conn->held_seconds * 1000.0);
  mt_access_log_write(&rec);
}

/* How a failure travels: a plaintext peer (the application) always gets a
 * TCP reset, so a refused or broken connection never looks like a complete
 * reply. A TLS peer that was refused has been told by an alert (which a reset
 * could destroy in flight), but once a connection was admitted a later
 * failure (app down, peer reset, timeout) is passed on as a reset too, and
 * the agent at the other end turns it into a reset for its application. */
static void reset_if_failed(const mt_conn *conn, mt_endpoint *ep, mt_reason reason) {
  if (reason == MT_REASON_OK || ep->fd < 0) return;
  if (ep->ssl != NULL && !conn->admitted) return;
  struct linger lg = {1, 0};
  setsockopt(ep->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

static void endpoint_dispose(mt_conn *conn, mt_endpoint *ep) {
  ev_io_stop(conn->loop, &ep->io);
  SSL_free(ep->ssl);
  ep->ssl = NULL;
  if (ep->fd >= 0) close(ep->fd);
  ep->fd = -1;
}

/* Leaves the worker's held list and records how long the hold lasted. */
static void end_hold(mt_conn *conn, int resumed) {
  if (conn->held_since == 0) return;
  double seconds = ev_now(conn->loop) - conn->held_since;
  if (seconds < 0) seconds = 0;
  conn->held_seconds += seconds;
  conn->held_since = 0;
  mt_worker_unhold(conn->worker, conn);
  mt_metrics_hold_ended(mt_worker_metrics_of(conn->worker), conn->direction, resumed, seconds);
}

void mt_conn_hold(mt_conn *conn, mt_conn_resume_fn resume, const char *why) {
  mt_conn_hold_for(conn, resume, why, MT_REASON_NO_IDENTITY);
}

void mt_conn_hold_for(mt_conn *conn, mt_conn_resume_fn resume, const char *why,
                      mt_reason reason_on_expiry) {
  mt_conn_watch(conn, &conn->down, 0);
  mt_conn_watch(conn, &conn->up, 0);
  conn->state = MT_CONN_AWAITING_IDENTITY;
  conn->resume = resume;
  conn->hold_why = why;
  conn->hold_reason = reason_on_expiry;
  if (!ev_is_active(&conn->timer))
    mt_conn_set_deadline(conn, mt_worker_config(conn->worker)->handshake_timeout_ms,
                         reason_on_expiry);
  conn->deadline_reason = reason_on_expiry;
  if (conn->held_since == 0) { /* a new hold; a resume that holds again continues it */
    mt_metrics_hold_began(mt_worker_metrics_of(conn->worker), conn->direction);
    conn->held_since = ev_now(conn->loop);
  }
  mt_worker_hold(conn->worker, conn);
}

void mt_conn_hold_over(mt_conn *conn) {
  conn->deadline_reason = MT_REASON_HANDSHAKE_TIMEOUT;
  end_hold(conn, 1);
}

void mt_conn_leave_handshake_share(mt_conn *conn) {
  if (!conn->holds_source_slot) return;
  conn->holds_source_slot = 0;
  mt_worker_give_source_slot(conn->worker, (const struct sockaddr *)&conn->source);
}

void mt_conn_close(mt_conn *conn, mt_reason reason, const char *detail) {
  end_hold(conn, 0);
  mt_conn_leave_handshake_share(conn);
  write_access_record(conn, reason, detail);
  mt_worker_metrics *metrics = mt_worker_metrics_of(conn->worker);
  if (conn->state == MT_CONN_HANDSHAKING && !conn->handshake_done)
    mt_metrics_handshake(metrics, conn->direction, 0, 0, NULL, NULL);
  mt_metrics_conn_closed(metrics, conn->direction, reason, conn->to_up.total, conn->to_down.total);
  if (reason != MT_REASON_OK)
    MT_LOG_D("%s connection closed: %s", conn->direction == MT_DIR_INBOUND ? "inbound" : "outbound",
             mt_reason_str(reason));
  ev_timer_stop(conn->loop, &conn->timer);
  reset_if_failed(conn, &conn->down, reason);
  reset_if_failed(conn, &conn->up, reason);
  endpoint_dispose(conn, &conn->down);
  endpoint_dispose(conn, &conn->up);
  ERR_clear_error(); /* never leak one connection's errors into the next */
  mt_identity_unref(conn->identity);
  mt_identity_unref(conn->local_peer);
  mt_relay_release(conn);
  mt_worker_unlink(conn->worker, conn);
  mt_mem_trim_conn_closed(mt_worker_mem_trim(conn->worker));
  free(conn);
}

void mt_conn_watch(mt_conn *conn, mt_endpoint *ep, int events) {
  if (ep->fd < 0) return;
  if (ev_is_active(&ep->io) && ep->events == events) return;
  ev_io_stop(conn->loop, &ep->io);
  ep->events = events;
  if (events == 0) return;
  ev_io_set(&ep->io, ep->fd, events);
  ev_io_start(conn->loop, &ep->io);
}

void mt_conn_set_deadline(mt_conn *conn, int timeout_ms, mt_reason reason_on_expiry) {
  ev_timer_stop(conn->loop, &conn->timer);
  conn->deadline_reason = reason_on_expiry;
  ev_timer_set(&conn->timer, timeout_ms / 1000.0, 0.0);
  ev_timer_start(conn->loop, &conn->timer);
}

void mt_conn_start_idle_timer(mt_conn *conn, int idle_ms) {
  ev_timer_stop(conn->loop, &conn->timer);
  conn->idle_timeout_ms = idle_ms;
  conn->last_activity = ev_now(conn->loop);
  conn->timer.repeat = idle_ms / 1000.0;
  ev_timer_again(conn->loop, &conn->timer);
}

int mt_conn_connect_up(mt_conn *conn, const struct sockaddr *target, socklen_t target_len,
                       const struct sockaddr *source, socklen_t source_len) {
  char detail[128];
  int fd = socket(target->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(detail, sizeof(detail), "socket: %s", strerror(errno));
    mt_conn_close(conn, MT_REASON_CONNECT_FAILED, detail);
    return 0;
  }
  conn->up.fd = fd;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (source != NULL && bind(fd, source, source_len) != 0) {
    snprintf(detail, sizeof(detail), "bind source address: %s", strerror(errno));
    mt_conn_close(conn, MT_REASON_CONNECT_FAILED, detail);
    return 0;
  }
  if (connect(fd, target, target_len) != 0 && errno != EINPROGRESS) {
    snprintf(detail, sizeof(detail), "connect: %s", strerror(errno));
    mt_conn_close(conn, MT_REASON_CONNECT_FAILED, detail);
    return 0;
  }
  conn->state = MT_CONN_CONNECTING;
  mt_conn_set_deadline(conn, mt_worker_config(conn->worker)->connect_timeout_ms,
                       MT_REASON_CONNECT_TIMEOUT);
  mt_conn_watch(conn, &conn->up, EV_WRITE);
  return 1;
}

int mt_conn_finish_connect(mt_conn *conn) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(conn->up.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err == 0) return 1;
  char detail[128];
  snprintf(detail, sizeof(detail), "connect: %s", strerror(err));
  mt_conn_close(conn, MT_REASON_CONNECT_FAILED, detail);
  return 0;
}

mt_handshake_result mt_conn_handshake(mt_conn *conn, mt_endpoint *ep) {
  if (conn->handshake_started == 0) conn->handshake_started = ev_time();
  int rc = SSL_do_handshake(ep->ssl);
  if (rc == 1) {
    /* A resumed session's peer is the one its record vouches for, re-checked
     * now; policy and expected IDs are judged after this, as for any. */
    if (!mt_tls_resume_established(ep->ssl, &conn->peer)) {
      mt_conn_close(conn, MT_REASON_HANDSHAKE_FAILED, NULL);
      return MT_HANDSHAKE_FAILED;
    }
    conn->handshake_done = 1;
    mt_conn_leave_handshake_share(conn);
    mt_metrics_handshake_mode(mt_worker_metrics_of(conn->worker), conn->direction,
                              conn->peer.resumed);
    const char *cipher;
    const char *version = tls_side_version(conn, &cipher);
    mt_metrics_handshake(mt_worker_metrics_of(conn->worker), conn->direction, 1,
                         ev_time() - conn->handshake_started, version, cipher);
    return MT_HANDSHAKE_DONE;
  }
  int err = SSL_get_error(ep->ssl, rc);
  if (err == SSL_ERROR_WANT_READ) {
    mt_conn_watch(conn, ep, EV_READ);
    return MT_HANDSHAKE_AGAIN;
  }
  if (err == SSL_ERROR_WANT_WRITE) {
    mt_conn_watch(conn, ep, EV_WRITE);
    return MT_HANDSHAKE_AGAIN;
  }
  mt_reason reason = mt_tls_failure_reason(ep->ssl, &conn->peer);
  if (reason == MT_REASON_HANDSHAKE_FAILED && err == SSL_ERROR_SYSCALL &&
      conn->peer.detail[0] == '\0')
    snprintf(conn->peer.detail, sizeof(conn->peer.detail), "connection closed by peer");
  mt_conn_close(conn, reason, NULL);
  return MT_HANDSHAKE_FAILED;
}

int mt_original_dst(int fd, struct sockaddr_storage *out) {
  struct sockaddr_storage local;
  socklen_t len = sizeof(local);
  if (getsockname(fd, (struct sockaddr *)&local, &len) != 0) return 0;
  memset(out, 0, sizeof(*out));
  len = sizeof(*out);
  int rc = local.ss_family == AF_INET6 ? getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, out, &len)
                                       : getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, out, &len);
  if (rc != 0) return 0;
  /* Without NAT, conntrack reports the listener itself: not a redirection. */
  return !mt_sockaddr_equal((const struct sockaddr *)out, (const struct sockaddr *)&local);
}
