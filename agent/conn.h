/* conn: one proxied connection, shared by inbound.c, outbound.c and relay.c.
 *
 * A connection has two endpoints: "down" is the socket we accepted, "up" the
 * one we connect. Its memory (the struct, and a relay buffer per direction
 * only while bytes are in flight, see relay.h) is owned by the connection,
 * and mt_conn_close is the single place
 * where a connection ends: it writes the access-log line, closes sockets,
 * frees TLS state, drops its identity reference and frees the memory.
 * The phase a connection is in is the explicit `state`; inbound.c and
 * outbound.c each drive their own sequence of states through `on_event`. */
#ifndef MT_CONN_H
#define MT_CONN_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <openssl/base.h>

#include "agent/identity.h"
#include "agent/policy.h"
#include "agent/reason.h"
#include "agent/tls.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_worker mt_worker;
typedef struct mt_conn mt_conn;

typedef enum { MT_DIR_INBOUND, MT_DIR_OUTBOUND } mt_direction;

typedef enum {
  MT_CONN_AWAITING_IDENTITY, /* no certificate yet for the workload it speaks for: held */
  MT_CONN_PEEKING,           /* inbound: reading the first bytes without consuming them */
  MT_CONN_HANDSHAKING,       /* TLS handshake on the mesh side */
  MT_CONN_CONNECTING,        /* non-blocking TCP connect of the up endpoint */
  MT_CONN_RELAYING,          /* bytes flow both ways (relay.c) */
} mt_conn_state;

typedef struct {
  int fd;
  SSL *ssl; /* NULL on the plaintext side */
  ev_io io;
  int read_eof; /* FIN or close_notify received */
  /* The last read found the socket empty: the relay reads again only once
   * the loop reports it readable, instead of a read that returns EAGAIN. */
  int read_drained;
  int write_shut; /* FIN / close_notify sent */
  int events;     /* what the relay last asked the loop to watch */
} mt_endpoint;

/* One direction of the relay: a buffer filled from one endpoint and drained
 * into the other, borrowed from the worker's pool (NULL while empty). */
typedef struct {
  uint8_t *data;
  size_t head, tail, cap;
  uint64_t total;
} mt_pipe;

typedef void (*mt_conn_event_fn)(mt_conn *conn, mt_endpoint *ep, int revents);
/* Called when a held connection may find its identity (see mt_conn_hold). */
typedef void (*mt_conn_resume_fn)(mt_conn *conn);

struct mt_conn {
  mt_worker *worker;
  struct ev_loop *loop;
  mt_direction direction;
  mt_conn_state state;
  mt_conn_event_fn on_event; /* the direction's state machine */
  mt_endpoint down, up;
  mt_pipe to_up, to_down;
  ev_timer timer;
  mt_reason deadline_reason; /* what the timer means before the relay phase */
  ev_tstamp started, last_activity;
  ev_tstamp handshake_started; /* 0 until the first mesh-side handshake step */
  int handshake_done;
  int idle_timeout_ms;
  mt_identity *identity;   /* reference held for the connection's life */
  mt_identity *local_peer; /* node-local delivery: the destination pod's snapshot */
  mt_tls_peer peer;
  struct sockaddr_storage source, target; /* target: the original destination */
  /* Inbound: the address the peer connected to (the pod's, before any
   * redirect), for policy's destination.ip; ss_family 0 when unknown. */
  struct sockaddr_storage dialled;
  /* Node mode, a Service address routed by the agent itself: the endpoint
   * chosen (ss_family 0: none, |target| is dialled) and the one identity it
   * must present (borrowed from |identity|'s mesh). */
  struct sockaddr_storage endpoint;
  const char *endpoint_id;
  int admitted;          /* passed verification and policy */
  int holds_source_slot; /* inbound: counted among its source's handshakes */
  const char *rule;      /* static or owned by the config snapshot */
  mt_conn *prev, *next;  /* worker's list of live connections */
  /* Waiting for a certificate (MT_CONN_AWAITING_IDENTITY): */
  mt_conn_resume_fn resume;       /* what to do when an identity may be there */
  const char *hold_why;           /* static: which certificate it waits for */
  mt_reason hold_reason;          /* the close reason if the hold expires */
  ev_tstamp held_since;           /* 0 = not held now */
  double held_seconds;            /* total time spent held, for the access log */
  mt_conn *held_prev, *held_next; /* worker's list of held connections */
  int held_linked;                /* on that list now (not while being resumed) */
};

/* Creates a connection for accepted socket |fd|; takes |fd| in every case. */
mt_conn *mt_conn_new(mt_worker *worker, mt_direction direction, int fd,
                     const struct sockaddr *source, mt_conn_event_fn on_event);

/* The connection's handshake phase is over (done, or a permissive port
 * admitted it without one): gives back its source slot, if it holds one
 * (mt_worker_take_source_slot). Idempotent; mt_conn_close calls it too. */
void mt_conn_leave_handshake_share(mt_conn *conn);

/* Ends the connection (see header comment); |detail| may be NULL. */
void mt_conn_close(mt_conn *conn, mt_reason reason, const char *detail);

/* No certificate is there yet for the workload this connection speaks for
 * (the agent is starting, or a node-mode pod is new): parks the connection
 * instead of refusing it. It stops watching its sockets (the peer's first
 * bytes wait in the kernel) and joins the worker's held list; whenever the
 * worker receives a new identity, workload table or config, |resume| runs
 * and looks again (and may hold again). A hold ends at the connection's
 * current deadline (armed here with handshake_ms when none is running), and
 * the connection is then closed with MT_REASON_NO_IDENTITY and |why| (a
 * static string: which certificate is missing) in the access log. */
void mt_conn_hold(mt_conn *conn, mt_conn_resume_fn resume, const char *why);

/* mt_conn_hold for another wait (destinations on demand: the control
 * plane's answer for its destination), closed with |reason_on_expiry|. */
void mt_conn_hold_for(mt_conn *conn, mt_conn_resume_fn resume, const char *why,
                      mt_reason reason_on_expiry);

/* The identity was found: ends the hold accounting (metrics, access log) of
 * a connection that had been held; no-op otherwise. */
void mt_conn_hold_over(mt_conn *conn);

/* Watches |events| (EV_READ|EV_WRITE, 0 = none) on |ep|. */
void mt_conn_watch(mt_conn *conn, mt_endpoint *ep, int events);

/* Arms the single connection timer for a phase deadline. */
void mt_conn_set_deadline(mt_conn *conn, int timeout_ms, mt_reason reason_on_expiry);

/* Switches the timer to idle tracking (relay phase). */
void mt_conn_start_idle_timer(mt_conn *conn, int idle_ms);

/* Starts a non-blocking connect of the up endpoint to |target|, optionally
 * from |source| (NULL = any). Returns 1, or 0 with the connection closed. */
int mt_conn_connect_up(mt_conn *conn, const struct sockaddr *target, socklen_t target_len,
                       const struct sockaddr *source, socklen_t source_len);

/* After EV_WRITE on a connecting socket: 1 connected, 0 closed with reason. */
int mt_conn_finish_connect(mt_conn *conn);

typedef enum { MT_HANDSHAKE_DONE, MT_HANDSHAKE_AGAIN, MT_HANDSHAKE_FAILED } mt_handshake_result;

/* Drives the TLS handshake of |ep| one step; on AGAIN the right events are
 * watched, on FAILED the connection is already closed with its reason. */
mt_handshake_result mt_conn_handshake(mt_conn *conn, mt_endpoint *ep);

/* The pre-NAT destination of a redirected socket (SO_ORIGINAL_DST, IPv4 and
 * IPv6). Returns 1, or 0 when the socket was not redirected. */
int mt_original_dst(int fd, struct sockaddr_storage *out);

#ifdef __cplusplus
}
#endif

#endif /* MT_CONN_H */
