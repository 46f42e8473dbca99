/* outbound.c: the outbound state machine.
 *
 *   CONNECTING --connected--> HANDSHAKING --server verified--> [expected ID?]
 *                                                 yes --> RELAYING
 *                                                 no  --> closed
 * A destination with no expected ID under `unknown_destination: passthrough`
 * is outside the mesh: CONNECTING --connected--> RELAYING, no TLS.
 * Node mode, a Service address whose endpoints the control plane sent:
 * our capture ran before kube-proxy's DNAT, so the agent picks the endpoint
 * itself (at random, uniformly, like kube-proxy's iptables mode), dials it
 * and expects exactly its identity; the access log shows both addresses.
 * Node mode, destination (or chosen endpoint) on this node: both ends are
 * our workloads, so the destination's inbound policy is applied here (the
 * packets never pass an inbound listener) and the connection goes straight
 * to the pod:
 *   [policy] allow --> CONNECTING --connected--> RELAYING
 * No certificate yet for the calling workload (the agent is starting, a
 * node-mode pod is new), or for the destination pod of this node:
 *   AWAITING_IDENTITY --identity published--> looked up again from the start
 *                     --handshake deadline--> closed (no_identity)
 * Destinations on demand (destination_demand.h), an address the mesh has
 * no answer for: asked of the control plane, then
 *   AWAITING_IDENTITY --mesh published--> looked up again from the start
 *                     --handshake deadline--> closed (destination_unresolved)
 * The application's socket is not read until the mesh side is ready, so its
 * first bytes wait in the kernel (backpressure from the start). */
#include "agent/outbound.h"

#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <string.h>

#include "agent/conn.h"
#include "agent/log.h"
#include "agent/metrics.h"
#include "agent/relay.h"
#include "agent/svid.h"
#include "agent/tls_resume.h"

#define RULE_EXPECTED_ID "expected-id"
#define RULE_TRUST_DOMAIN_FALLBACK "trust-domain-fallback"
#define RULE_UNKNOWN_DESTINATION "unknown-destination"
#define RULE_PASSTHROUGH "passthrough"

static void count_decision(mt_conn *conn, mt_action action) {
  mt_metrics_decision(mt_worker_metrics_of(conn->worker), MT_DIR_OUTBOUND, action, conn->rule);
}

static int in_trust_domain(const char *id, const char *trust_domain) {
  mt_spiffe_id_view view;
  if (mt_spiffe_id_parse(id, strlen(id), &view) != MT_SPIFFE_OK) return 0;
  return view.trust_domain_len == strlen(trust_domain) &&
         memcmp(view.trust_domain, trust_domain, view.trust_domain_len) == 0;
}

/* Where the connection goes: the chosen Service endpoint, else the
 * original destination. */
static const struct sockaddr_storage *dial_address(const mt_conn *conn) {
  return conn->endpoint.ss_family ? &conn->endpoint : &conn->target;
}

/* The server proved an SVID of a known trust domain; is it the one we meant
 * to reach? */
static void check_server_identity(mt_conn *conn) {
  const mt_config *config = mt_worker_config(conn->worker);
  mt_expected_ids expected;
  char detail[MT_TLS_DETAIL_MAX];
  if (conn->endpoint_id != NULL) {
    /* A chosen endpoint: exactly its own identity, not any of the Service's. */
    expected.ids = &conn->endpoint_id;
    expected.count = 1;
  }
  if (conn->endpoint_id != NULL ||
      mt_mesh_expected_ids(mt_identity_mesh(conn->identity), (const struct sockaddr *)&conn->target,
                           &expected)) {
    conn->rule = RULE_EXPECTED_ID;
    if (!mt_expected_ids_contain(&expected, conn->peer.spiffe_id)) {
      if (expected.count == 1)
        snprintf(detail, sizeof(detail), "expected %.*s", 140, expected.ids[0]);
      else
        snprintf(detail, sizeof(detail), "expected one of %zu IDs, such as %.*s", expected.count,
                 120, expected.ids[0]);
      count_decision(conn, MT_ACTION_DENY);
      mt_conn_close(conn, MT_REASON_UNEXPECTED_SERVER_ID, detail);
      return;
    }
  } else {
    conn->rule = RULE_TRUST_DOMAIN_FALLBACK;
    if (!in_trust_domain(conn->peer.spiffe_id, config->trust_domain)) {
      snprintf(detail, sizeof(detail),
               "no expected ID for this destination; server is not in "
               "trust domain %.*s",
               60, config->trust_domain);
      count_decision(conn, MT_ACTION_DENY);
      mt_conn_close(conn, MT_REASON_UNEXPECTED_SERVER_ID, detail);
      return;
    }
  }
  conn->admitted = 1;
  count_decision(conn, MT_ACTION_ALLOW);
  mt_relay_start(conn);
}

/* A cached session for this destination and the IDs expected there, if any
 * (tls_resume.h); check_server_identity judges a resumed peer all the same. */
static void offer_session(mt_conn *conn) {
  mt_expected_ids expected = {.ids = NULL, .count = 0};
  if (conn->endpoint_id != NULL) {
    expected.ids = &conn->endpoint_id;
    expected.count = 1;
  } else if (!mt_mesh_expected_ids(mt_identity_mesh(conn->identity),
                                   (const struct sockaddr *)&conn->target, &expected)) {
    expected.count = 0;
  }
  mt_tls_resume_offer(conn->up.ssl, (const struct sockaddr *)dial_address(conn), expected.ids,
                      expected.count, conn->identity);
}

static void start_handshake(mt_conn *conn) {
  conn->up.ssl = mt_tls_new_session(mt_identity_client_ctx(conn->identity), conn->up.fd,
                                    mt_worker_buffers(conn->worker), &conn->peer);
  if (conn->up.ssl == NULL) {
    mt_conn_close(conn, MT_REASON_INTERNAL, "SSL_new failed");
    return;
  }
  SSL_set_connect_state(conn->up.ssl);
  offer_session(conn);
  conn->state = MT_CONN_HANDSHAKING;
  mt_conn_set_deadline(conn, mt_worker_config(conn->worker)->handshake_timeout_ms,
                       MT_REASON_HANDSHAKE_TIMEOUT);
  if (mt_conn_handshake(conn, &conn->up) == MT_HANDSHAKE_DONE) check_server_identity(conn);
}

static void on_event(mt_conn *conn, mt_endpoint *ep, int revents) {
  switch (conn->state) {
    case MT_CONN_CONNECTING:
      if (ep != &conn->up || !mt_conn_finish_connect(conn)) return;
      if (conn->admitted) /* node-local delivery or passthrough: no mesh TLS */
        mt_relay_start(conn);
      else
        start_handshake(conn);
      return;
    case MT_CONN_HANDSHAKING:
      if (ep == &conn->up && mt_conn_handshake(conn, ep) == MT_HANDSHAKE_DONE)
        check_server_identity(conn);
      return;
    case MT_CONN_RELAYING: mt_relay_on_event(conn, ep, revents); return;
    case MT_CONN_PEEKING: return;           /* not used on outbound */
    case MT_CONN_AWAITING_IDENTITY: return; /* nothing is watched while held */
  }
}

/* A destination that is one of our own listeners means traffic was
 * redirected back into the agent (a missing exclusion rule): relaying it
 * would loop until descriptors run out. */
static int is_own_listener(const mt_config *config, const struct sockaddr *target) {
  for (size_t i = 0; i < config->num_outbound_listeners; i++)
    if (mt_sockaddr_equal((const struct sockaddr *)&config->outbound_listeners[i].listen.addr,
                          target))
      return 1;
  for (size_t i = 0; i < config->num_inbound_listeners; i++)
    if (mt_sockaddr_equal((const struct sockaddr *)&config->inbound_listeners[i].listen.addr,
                          target))
      return 1;
  return 0;
}

static socklen_t sockaddr_len(const struct sockaddr_storage *ss);
static void resume_after_hold(mt_conn *conn);

/* Node mode: when the destination is a pod of this node, judge the call by
 * that pod's inbound policy with the caller's identity (we hold both
 * certificates, so both identities are proven to us) and connect to the pod
 * directly. Returns 0 when the destination is not local. */
static int deliver_on_node(mt_conn *conn) {
  const struct sockaddr *target = (const struct sockaddr *)dial_address(conn);
  mt_identity *dest = mt_worker_identity_for(conn->worker, target);
  if (dest == NULL) {
    if (!mt_worker_lists_workload(conn->worker, target)) return 0;
    mt_conn_hold(conn, resume_after_hold, /* the pod's certificate may be on its way */
                 "the destination pod of this node has no valid certificate");
    return 1;
  }
  mt_conn_hold_over(conn);
  /* Held for the connection's life: its policy decides, and the access log
   * names the deciding rule at close. */
  conn->local_peer = mt_identity_ref(dest);
  const char *caller = mt_identity_spiffe_id(conn->identity);
  snprintf(conn->peer.spiffe_id, sizeof(conn->peer.spiffe_id), "%s", mt_identity_spiffe_id(dest));
  if (conn->endpoint_id != NULL && strcmp(conn->endpoint_id, mt_identity_spiffe_id(dest)) != 0) {
    char detail[MT_TLS_DETAIL_MAX];
    snprintf(detail, sizeof(detail), "expected %.*s; this node's pod there is %.*s", 60,
             conn->endpoint_id, 60, mt_identity_spiffe_id(dest));
    conn->rule = RULE_EXPECTED_ID;
    count_decision(conn, MT_ACTION_DENY);
    mt_conn_close(conn, MT_REASON_UNEXPECTED_SERVER_ID, detail);
    return 1;
  }
  uint16_t port = mt_sockaddr_port(target); /* a chosen endpoint's: the pod's own port */
  mt_policy_request req = {caller, (const struct sockaddr *)&conn->source, target, port};
  mt_decision d = mt_policy_evaluate(mt_mesh_policy(mt_identity_mesh(dest)), &req);
  conn->rule = d.rule;
  count_decision(conn, d.action);
  if (d.action != MT_ACTION_ALLOW) {
    mt_conn_close(conn, MT_REASON_POLICY_DENIED, d.reason);
    return 1;
  }
  conn->admitted = 1;
  snprintf(conn->peer.detail, sizeof(conn->peer.detail), "node-local delivery from %s", caller);
  mt_conn_connect_up(conn, target, sockaddr_len(dial_address(conn)), NULL, 0);
  return 1;
}

/* Node mode: the original destination is a Service address (our capture ran
 * before kube-proxy's DNAT), so we pick one of its ready endpoints, as
 * kube-proxy would have after us; without endpoints the address is dialled
 * as it is. A new choice each time the connection starts over. */
static void choose_endpoint(mt_conn *conn) {
  const mt_service_endpoint *ep = mt_mesh_choose_endpoint(mt_identity_mesh(conn->identity),
                                                          (const struct sockaddr *)&conn->target,
                                                          mt_worker_random(conn->worker));
  if (ep == NULL) return;
  memcpy(&conn->endpoint, &ep->address.addr, ep->address.addr_len);
  conn->endpoint_id = ep->spiffe_id;
}

static socklen_t sockaddr_len(const struct sockaddr_storage *ss) {
  return ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

/* Destinations on demand: the mesh has no answer yet for the address
 * (neither an entry nor "unresolved"), so the control plane is asked and
 * the connection waits for the answer (see the header). A pod of this
 * node needs no entry (node-local delivery). Returns 1 when held. */
static int awaits_destination(mt_conn *conn, const mt_identity *identity) {
  const mt_mesh *mesh = mt_identity_mesh(identity);
  const struct sockaddr *target = (const struct sockaddr *)&conn->target;
  mt_demand *demand = mt_worker_demand(conn->worker);
  mt_expected_ids ids;
  if (demand == NULL || !mt_mesh_on_demand(mesh) || mt_mesh_expected_ids(mesh, target, &ids) ||
      mt_mesh_unresolved(mesh, target))
    return 0;
  if (mt_worker_config(conn->worker)->node_mode && mt_worker_lists_workload(conn->worker, target))
    return 0;
  mt_demand_ask(demand, target);
  mt_conn_hold_for(conn, resume_after_hold,
                   "the control plane has not answered for the destination",
                   MT_REASON_DESTINATION_UNRESOLVED);
  return 1;
}

/* From here on the connection speaks for the calling workload, whose
 * certificate must be there; without one it is held (see the header). */
static void proceed_with_identity(mt_conn *conn) {
  const mt_config *config = mt_worker_config(conn->worker);
  mt_identity *identity =
      mt_worker_identity_for(conn->worker, (const struct sockaddr *)&conn->source);
  if (identity == NULL) {
    mt_conn_hold(conn, resume_after_hold,
                 config->node_mode
                     ? "the source is not a workload of this node with a valid certificate"
                     : "no valid workload certificate");
    return;
  }
  if (awaits_destination(conn, identity)) return;
  mt_conn_hold_over(conn);
  conn->identity = mt_identity_ref(identity);
  if (config->node_mode) choose_endpoint(conn);
  if (config->node_mode && deliver_on_node(conn)) return;
  mt_expected_ids expected;
  int known = conn->endpoint_id != NULL ||
              mt_mesh_expected_ids(mt_identity_mesh(identity),
                                   (const struct sockaddr *)&conn->target, &expected);
  if (!known && config->unknown_destination == MT_UNKNOWN_DEST_DENY) {
    conn->rule = RULE_UNKNOWN_DESTINATION;
    count_decision(conn, MT_ACTION_DENY);
    mt_conn_close(conn, MT_REASON_UNKNOWN_DESTINATION,
                  "no expected SPIFFE ID configured for this destination");
    return;
  }
  if (!known && config->unknown_destination == MT_UNKNOWN_DEST_PASSTHROUGH) {
    /* Outside the mesh: the app's bytes go out as they are (its own TLS, if
     * any, stays end to end); the access log says so. */
    conn->rule = RULE_PASSTHROUGH;
    conn->admitted = 1;
    count_decision(conn, MT_ACTION_ALLOW);
    snprintf(conn->peer.detail, sizeof(conn->peer.detail), "passthrough: outside the mesh");
  }
  mt_conn_connect_up(conn, (const struct sockaddr *)dial_address(conn),
                     sockaddr_len(dial_address(conn)), NULL, 0);
}

/* Held, and something was published: start over from the identity lookup
 * with whatever the worker holds now (the caller's snapshot may have been
 * replaced meanwhile). */
static void resume_after_hold(mt_conn *conn) {
  mt_identity_unref(conn->identity);
  conn->identity = NULL;
  mt_identity_unref(conn->local_peer);
  conn->local_peer = NULL;
  conn->peer.spiffe_id[0] = '\0';
  memset(&conn->endpoint, 0, sizeof(conn->endpoint)); /* chosen again from the new mesh */
  conn->endpoint_id = NULL;
  proceed_with_identity(conn);
}

void mt_outbound_accept(mt_worker *worker, const mt_listener_config *listener, int fd,
                        const struct sockaddr *source) {
  mt_conn *conn = mt_conn_new(worker, MT_DIR_OUTBOUND, fd, source, on_event);
  if (conn == NULL) return;
  const mt_config *config = mt_worker_config(worker);
  if (listener->has_fixed_target) {
    memcpy(&conn->target, &listener->destination.addr, listener->destination.addr_len);
  } else if (!mt_original_dst(fd, &conn->target)) {
    mt_conn_close(conn, MT_REASON_NO_ORIGINAL_DST,
                  "listener expects redirected traffic but the socket has no original "
                  "destination");
    return;
  }
  if (is_own_listener(config, (const struct sockaddr *)&conn->target)) {
    mt_conn_close(conn, MT_REASON_NO_ORIGINAL_DST,
                  "the destination is this agent's own listener (redirect loop)");
    return;
  }
  proceed_with_identity(conn);
}
