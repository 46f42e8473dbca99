/* client_internal: the types shared by client.c (connections, public API)
 * and client_call.c (one call: request, response, nghttp2 callbacks).
 * Private to grpc/.
 *
 * Ownership: the client owns its connections (the current one and those
 * draining after a GOAWAY) and every call. A call lives in exactly one list:
 * the client's queue (waiting for a connection), its connection's list
 * (submitted to nghttp2), or a local list while its connection is torn down.
 * A call's memory goes when both the user is done with it (on_close ran, or
 * cancel) and nghttp2 no longer knows its stream.
 *
 * Re-entrancy: user callbacks run inside nghttp2 callbacks and timers and may
 * start calls, cancel calls or free the client. Every entry from the loop is
 * bracketed by mt_cli_enter/leave; a free requested inside takes effect at
 * the outermost leave, and no user callback runs once it is requested. */
#ifndef MT_GRPC_CLIENT_INTERNAL_H
#define MT_GRPC_CLIENT_INTERNAL_H

#include <ev.h>
#include <nghttp2/nghttp2.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <openssl/base.h>

#include "grpc/client.h"
#include "grpc/frame.h"
#include "grpc/h2_transport.h"
#include "grpc/resolver.h"

enum {
  MT_CLI_MS_PER_SECOND = 1000,
  /* Room for any reason we compose: an address, two nested reasons. */
  MT_CLI_WHY_MAX = 2 * MT_H2_ERROR_MAX + 2 * MT_H2_ADDRESS_TEXT_MAX + 64,
};

typedef struct mt_cli_conn mt_cli_conn;

typedef struct {
  mt_grpc_call *head;
} mt_cli_call_list;

typedef enum {
  MT_CLI_CALL_QUEUED, /* waiting for a connection */
  MT_CLI_CALL_ACTIVE, /* submitted to nghttp2 */
  MT_CLI_CALL_DONE,   /* on_close ran or cancelled; waiting for nghttp2 to let go */
} mt_cli_call_state;

struct mt_grpc_call {
  mt_grpc_client *client;
  mt_cli_conn *conn; /* NULL while queued or being failed */
  mt_cli_call_list *list;
  mt_grpc_call *prev, *next;
  mt_cli_call_state state;
  int32_t stream_id;
  int headers_sent; /* RST_STREAM may only follow the request HEADERS */
  int stream_live;  /* nghttp2 holds a stream or a queued HEADERS for it */
  mt_grpc_call_handlers handlers;
  void *arg;
  ev_timer deadline;
  ev_tstamp deadline_at; /* 0 = no deadline */
  /* The request, stored after the struct in the same allocation. */
  const char *path;
  const char *metadata; /* metadata_count "name\0value\0" pairs */
  size_t metadata_count;
  const uint8_t *body; /* prefix + message */
  size_t body_len, body_sent;
  /* The response. */
  int http_status;
  int grpc_status; /* -1 until received */
  char *grpc_message;
  int bad_content_type;
  mt_grpc_decoder decoder;
};

typedef enum {
  MT_CLI_CONN_RESOLVING,   /* looking the target's name up (resolver.h) */
  MT_CLI_CONN_CONNECTING,  /* non-blocking TCP connect */
  MT_CLI_CONN_HANDSHAKING, /* TLS */
  MT_CLI_CONN_READY,       /* HTTP/2 session up */
  MT_CLI_CONN_FAILED,      /* failed inside an API call; the phase timer reports it */
} mt_cli_conn_state;

struct mt_cli_conn {
  mt_grpc_client *client;
  mt_cli_conn_state state;
  mt_resolve *lookup;        /* while RESOLVING */
  mt_resolve_result targets; /* the addresses to try, in order */
  size_t target_index;       /* the one being tried */
  /* The server as messages name it: "ip:port", or "name:port (ip:port)"
   * once a name was resolved. */
  char peer_text[MT_RESOLVE_HOST_MAX + 2 * MT_H2_ADDRESS_TEXT_MAX];
  mt_h2_transport t;
  /* Connect + handshake deadline, then the PING ACK deadline; or a 0 s
   * timer that reports a failure detected inside an API call. */
  ev_timer phase;
  ev_timer keepalive;
  int ping_outstanding;
  int goaway; /* received: no new calls; close once the last call ends */
  X509 *peer_cert;
  mt_cli_call_list calls;
  mt_cli_conn *prev, *next; /* the client's connections */
  char why[MT_H2_ERROR_MAX];
};

struct mt_grpc_client {
  struct ev_loop *loop;
  SSL_CTX *ssl_ctx;
  mt_resolve_target target;
  char target_text[MT_RESOLVE_HOST_MAX + MT_H2_ADDRESS_TEXT_MAX];
  char *authority, *server_name;
  int connect_timeout_ms, keepalive_interval_ms, keepalive_timeout_ms, keepalive_without_calls;
  size_t max_message_bytes;
  mt_cli_conn *current;    /* the connection new calls go to; NULL = none */
  mt_cli_conn *conns;      /* every connection, current and draining */
  mt_cli_call_list queued; /* waiting for |current| to be ready */
  int depth;               /* nesting of loop callbacks in progress */
  int free_requested;
};

/* client.c */
void mt_cli_enter(mt_grpc_client *c);
void mt_cli_leave(mt_grpc_client *c);

/* client_call.c: lists */
void mt_cli_list_push(mt_cli_call_list *list, mt_grpc_call *call);
void mt_cli_list_remove(mt_grpc_call *call);

/* client_call.c: calls */

/* A queued call holding copies of everything (NULL when out of memory). */
mt_grpc_call *mt_cli_call_new(mt_grpc_client *c, const char *path, const mt_grpc_metadata *metadata,
                              size_t metadata_count, const uint8_t *request, size_t request_len);
/* Unlinks and frees, without callbacks. */
void mt_cli_call_free(mt_grpc_call *call);
/* Ends the call for the user: on_close runs unless the client is being freed. */
void mt_cli_call_complete(mt_grpc_call *call, mt_grpc_status status, const char *message);
/* Frees a finished call once nghttp2 has let go of its stream. */
void mt_cli_call_release(mt_grpc_call *call);
/* Tells the server to stop the call's stream (RST_STREAM |h2_error|). */
void mt_cli_call_stop_stream(mt_grpc_call *call, uint32_t h2_error);
/* Submits the call to |conn|'s session: a stream ID, or a negative
 * nghttp2 error. */
int32_t mt_cli_call_submit(mt_cli_conn *conn, mt_grpc_call *call);

/* client_call.c: a client session whose callbacks drive |conn|'s calls. */
nghttp2_session *mt_cli_session_new(mt_cli_conn *conn);

#endif /* MT_GRPC_CLIENT_INTERNAL_H */
