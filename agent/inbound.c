/* inbound.c: the inbound state machine.
 *
 *   PEEKING --TLS record--> HANDSHAKING --verified--> [authorize]
 *      |                                   allow --> CONNECTING --> RELAYING
 *      +--plaintext--> closed (strict)     deny  --> closed
 *      |
 *      +--no certificate for the called workload yet--> AWAITING_IDENTITY
 *            identity published --> PEEKING again (the peeked bytes are still queued)
 *            handshake deadline --> closed (no_identity)
 */
#include "agent/inbound.h"

#include <errno.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent/client_hello.h"
#include "agent/conn.h"
#include "agent/log.h"
#include "agent/metrics.h"
#include "agent/policy.h"
#include "agent/relay.h"

enum {
  PERMISSIVE_PEEK_BYTES = 4096, /* a ClientHello fits; a larger one takes the mTLS path */
  STRICT_PEEK_BYTES = 6,        /* record header + handshake type: enough to tell TLS */
};

static void on_event(mt_conn *conn, mt_endpoint *ep, int revents);

static void connect_app(mt_conn *conn);

/* The policy's view of this connection: who (|peer_id|, NULL when
 * unauthenticated), from where, to where. */
static mt_decision decide(const mt_conn *conn, const mt_identity *identity, const char *peer_id) {
  mt_policy_request req = {
      .peer_id = peer_id,
      .peer_addr = (const struct sockaddr *)&conn->source,
      .dest_addr = conn->dialled.ss_family != 0 ? (const struct sockaddr *)&conn->dialled : NULL,
      .port = mt_sockaddr_port((const struct sockaddr *)&conn->target),
  };
  return mt_policy_evaluate(mt_mesh_policy(mt_identity_mesh(identity)), &req);
}

static void authorize_and_connect(mt_conn *conn) {
  uint16_t port = mt_sockaddr_port((const struct sockaddr *)&conn->target);
  mt_decision d = decide(conn, conn->identity, conn->peer.spiffe_id);
  conn->rule = d.rule;
  mt_metrics_decision(mt_worker_metrics_of(conn->worker), MT_DIR_INBOUND, d.action, d.rule);
  MT_LOG_D("inbound %s -> port %u: %s by rule '%s' (%s)", conn->peer.spiffe_id, port,
           mt_action_str(d.action), d.rule, d.reason);
  if (d.action != MT_ACTION_ALLOW) {
    /* Tell the client's agent why (best effort; never waits on the socket). */
    SSL_send_fatal_alert(conn->down.ssl, SSL_AD_ACCESS_DENIED);
    mt_conn_close(conn, MT_REASON_POLICY_DENIED, d.reason);
    return;
  }
  connect_app(conn);
}

/* Admitted: plain TCP to the local application. */
static void connect_app(mt_conn *conn) {
  const mt_config *config = mt_worker_config(conn->worker);
  conn->admitted = 1;
  const struct sockaddr *source = NULL;
  socklen_t source_len = 0;
  if (config->has_inbound_source_address) {
    source = (const struct sockaddr *)&config->inbound_source_address.addr;
    source_len = config->inbound_source_address.addr_len;
  }
  socklen_t target_len =
      conn->target.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  if (!mt_conn_connect_up(conn, (const struct sockaddr *)&conn->target, target_len, source,
                          source_len))
    return;
  mt_conn_watch(conn, &conn->down, 0); /* nothing to read until the app is connected */
}

static void on_peek(mt_conn *conn);

/* An identity may have arrived: the ClientHello still waits in the kernel
 * (it was only peeked), so the connection starts over from the peek. */
static void resume_after_hold(mt_conn *conn) {
  conn->state = MT_CONN_PEEKING;
  mt_conn_watch(conn, &conn->down, EV_READ);
  on_peek(conn);
}

/* The identity answering for the workload being called: ours (sidecar) or,
 * in node mode, the destination pod's. NULL holds the connection until a
 * certificate arrives (or the handshake deadline refuses it). */
static mt_identity *destination_identity(mt_conn *conn) {
  mt_identity *identity =
      mt_worker_identity_for(conn->worker, (const struct sockaddr *)&conn->target);
  if (identity == NULL)
    mt_conn_hold(conn, resume_after_hold,
                 mt_worker_config(conn->worker)->node_mode
                     ? "the destination is not a workload of this node with a valid certificate"
                     : "no valid workload certificate");
  else
    mt_conn_hold_over(conn);
  return identity;
}

/* |identity| answers for the workload called (destination_identity). */
static void start_handshake(mt_conn *conn, mt_identity *identity) {
  conn->identity = mt_identity_ref(identity);
  conn->down.ssl = mt_tls_new_session(mt_identity_server_ctx(identity), conn->down.fd,
                                      mt_worker_buffers(conn->worker), &conn->peer);
  if (conn->down.ssl == NULL) {
    mt_conn_close(conn, MT_REASON_INTERNAL, "SSL_new failed");
    return;
  }
  SSL_set_accept_state(conn->down.ssl);
  conn->state = MT_CONN_HANDSHAKING;
  if (mt_conn_handshake(conn, &conn->down) == MT_HANDSHAKE_DONE) authorize_and_connect(conn);
}

/* A permissive port admits a peer without mesh TLS as an unauthenticated
 * peer, and only where no policy rule asks for an identity. Its bytes reach
 * the app untouched (a non-mesh TLS client keeps its own end-to-end TLS). */
static void admit_unauthenticated(mt_conn *conn, mt_identity *identity) {
  mt_conn_leave_handshake_share(conn);
  conn->identity = mt_identity_ref(identity);
  snprintf(conn->peer.detail, sizeof(conn->peer.detail), "unauthenticated peer, permissive port");
  mt_decision d = decide(conn, identity, NULL);
  conn->rule = d.rule;
  mt_metrics_decision(mt_worker_metrics_of(conn->worker), MT_DIR_INBOUND, d.action, d.rule);
  if (d.action != MT_ACTION_ALLOW) {
    mt_conn_close(conn, MT_REASON_POLICY_DENIED, d.reason);
    return;
  }
  connect_app(conn);
}

static void on_peek_permissive(mt_conn *conn, mt_identity *identity) {
  uint8_t head[PERMISSIVE_PEEK_BYTES];
  ssize_t n = recv(conn->down.fd, head, sizeof(head), MSG_PEEK);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
  if (n <= 0) {
    mt_conn_close(conn, MT_REASON_HANDSHAKE_FAILED, "client closed before sending anything");
    return;
  }
  /* Anything that might be mesh TLS (including a ClientHello that has not
   * fully arrived) takes the mTLS path: a mesh peer must never be demoted
   * to plaintext by how its bytes were segmented. */
  mt_hello_kind kind = mt_client_hello_classify(head, (size_t)n, MT_ALPN_MESH);
  if (kind == MT_HELLO_NOT_TLS || kind == MT_HELLO_TLS_OTHER)
    admit_unauthenticated(conn, identity);
  else
    start_handshake(conn, identity);
}

static void on_peek(mt_conn *conn) {
  uint16_t port = mt_sockaddr_port((const struct sockaddr *)&conn->target);
  /* Whether plaintext is admitted is the destination workload's setting,
   * and its identity serves the handshake or judges the plaintext peer:
   * without one yet, hold (and come back here) rather than guess. */
  mt_identity *identity = destination_identity(conn);
  if (identity == NULL) return;
  if (mt_mesh_admits_plaintext(mt_identity_mesh(identity), mt_worker_config(conn->worker), port)) {
    on_peek_permissive(conn, identity);
    return;
  }
  uint8_t head[STRICT_PEEK_BYTES];
  ssize_t n = recv(conn->down.fd, head, sizeof(head), MSG_PEEK);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
  if (n <= 0) {
    mt_conn_close(conn, MT_REASON_HANDSHAKE_FAILED, "client closed before sending anything");
    return;
  }
  /* Only what is certainly not TLS is refused here; a short or odd prefix
   * goes to the TLS stack, which waits for the rest properly (peeking again
   * would spin on a readable socket) and fails the handshake if need be. */
  int tls = mt_client_hello_classify(head, (size_t)n, MT_ALPN_MESH) != MT_HELLO_NOT_TLS;
  if (!tls) {
    mt_conn_close(conn, MT_REASON_PLAINTEXT_ON_STRICT_PORT,
                  "first bytes are not a TLS ClientHello; this port requires mTLS");
    return;
  }
  start_handshake(conn, identity);
}

static void on_event(mt_conn *conn, mt_endpoint *ep, int revents) {
  (void)revents;
  switch (conn->state) {
    case MT_CONN_PEEKING: on_peek(conn); return;
    case MT_CONN_HANDSHAKING:
      if (mt_conn_handshake(conn, ep) == MT_HANDSHAKE_DONE) authorize_and_connect(conn);
      return;
    case MT_CONN_CONNECTING:
      if (ep == &conn->up && mt_conn_finish_connect(conn)) mt_relay_start(conn);
      return;
    case MT_CONN_RELAYING: mt_relay_on_event(conn, ep, revents); return;
    case MT_CONN_AWAITING_IDENTITY: return; /* nothing is watched while held */
  }
}

/* Where allowed traffic goes: the configured app address, on the original
 * destination port (redirected) or the listener's mapped port; in node mode
 * the original destination itself (a pod on this node). */
static int resolve_target(mt_conn *conn, const mt_listener_config *listener) {
  const mt_config *config = mt_worker_config(conn->worker);
  if (config->node_mode) { /* the pod itself, at the address and port the peer dialled */
    if (!mt_original_dst(conn->down.fd, &conn->target)) return 0;
    conn->dialled = conn->target;
    return 1;
  }
  uint16_t port = listener->app_port;
  if (!listener->has_fixed_target) {
    struct sockaddr_storage orig;
    if (!mt_original_dst(conn->down.fd, &orig)) return 0;
    port = mt_sockaddr_port((const struct sockaddr *)&orig);
    conn->dialled = orig;
  } else {
    socklen_t len = sizeof(conn->dialled);
    if (getsockname(conn->down.fd, (struct sockaddr *)&conn->dialled, &len) != 0)
      conn->dialled.ss_family = 0;
  }
  memcpy(&conn->target, &config->inbound_app_address.addr, config->inbound_app_address.addr_len);
  if (conn->target.ss_family == AF_INET6)
    ((struct sockaddr_in6 *)&conn->target)->sin6_port = htons(port);
  else
    ((struct sockaddr_in *)&conn->target)->sin_port = htons(port);
  return 1;
}

void mt_inbound_accept(mt_worker *worker, const mt_listener_config *listener, int fd,
                       const struct sockaddr *source) {
  mt_conn *conn = mt_conn_new(worker, MT_DIR_INBOUND, fd, source, on_event);
  if (conn == NULL) return;
  /* Before anything else costs us: one source cannot hold every handshake. */
  if (!mt_worker_take_source_slot(worker, source)) {
    mt_conn_close(conn, MT_REASON_SOURCE_LIMIT,
                  "this source address already has its share of handshakes in progress "
                  "(handshakes_per_source)");
    return;
  }
  conn->holds_source_slot = 1;
  if (!resolve_target(conn, listener)) {
    mt_conn_close(conn, MT_REASON_NO_ORIGINAL_DST,
                  "listener expects redirected traffic but the socket has no original "
                  "destination");
    return;
  }
  conn->state = MT_CONN_PEEKING;
  mt_conn_set_deadline(conn, mt_worker_config(worker)->handshake_timeout_ms,
                       MT_REASON_HANDSHAKE_TIMEOUT);
  mt_conn_watch(conn, &conn->down, EV_READ);
}
