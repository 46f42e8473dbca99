/* server_internal: the types shared by server.c (listener, connections) and
 * server_stream.c (one call: request assembly, dispatch, response). Private
 * to grpc/.
 *
 * Ownership: the server owns its connections, a connection owns its streams.
 * A stream is freed in one place, when nghttp2 closes it (or when its
 * connection is torn down); a handler holding a stream learns of that
 * through on_closed, unless it has finished the stream first. */
#ifndef MT_GRPC_SERVER_INTERNAL_H
#define MT_GRPC_SERVER_INTERNAL_H

#include <ev.h>
#include <nghttp2/nghttp2.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "grpc/frame.h"
#include "grpc/h2_transport.h"
#include "grpc/server.h"

typedef struct mt_srv_route {
  char *path;
  mt_grpc_handler_fn on_call;
  void *arg;
  struct mt_srv_route *next;
} mt_srv_route;

typedef enum {
  MT_SRV_CONN_HANDSHAKING, /* TLS; the timer is the handshake deadline */
  MT_SRV_CONN_READY,       /* HTTP/2; the timer watches for idleness */
  MT_SRV_CONN_CLOSING,     /* GOAWAY sent; the timer bounds the flush */
} mt_srv_conn_state;

typedef struct mt_srv_conn {
  mt_grpc_server *server;
  mt_srv_conn_state state;
  mt_h2_transport t;
  ev_timer timer;
  X509 *peer_cert;             /* reference held for the connection's life */
  STACK_OF(X509) * peer_chain; /* borrowed from the SSL */
  struct sockaddr_storage peer;
  char peer_text[MT_H2_ADDRESS_TEXT_MAX];
  /* Unix socket peers: the kernel's record of the caller at connect. */
  mt_grpc_peer_cred cred; /* cred.pidfd owned, closed with the connection */
  int has_cred;
  uint64_t peer_key; /* options.peer_key's answer at accept (0: none) */
  mt_grpc_stream *streams;
  size_t stream_count;
  struct mt_srv_conn *prev, *next;
} mt_srv_conn;

struct mt_grpc_server {
  struct ev_loop *loop;
  SSL_CTX *ssl_ctx;
  size_t max_message_bytes, max_metadata_bytes, max_send_queue_bytes, max_connections;
  uint32_t max_concurrent_streams;
  int handshake_timeout_ms, idle_timeout_ms;
  void (*on_connection_error)(void *arg, const char *peer, const char *what);
  void *on_connection_error_arg;
  void (*on_call_refused)(void *arg, const char *peer_address, const char *path,
                          mt_grpc_status status, const char *message);
  void *on_call_refused_arg;
  int listen_fd;
  int port;
  uint64_t (*peer_key)(void *arg, const mt_grpc_peer_cred *cred);
  void *peer_key_arg;
  size_t max_connections_per_key;
  char *unix_path; /* a Unix socket file we created and remove at the end */
  dev_t unix_dev;
  ino_t unix_ino;
  ev_io listen_io;
  ev_timer accept_retry; /* re-enables accepting after running out of descriptors */
  mt_srv_route *routes;
  mt_srv_conn *conns;
  size_t conn_count;
  int depth; /* nesting of loop callbacks in progress */
  int free_requested;
};

typedef enum {
  MT_SRV_STREAM_READING,    /* headers and the request message arriving */
  MT_SRV_STREAM_DISPATCHED, /* the handler owns the reply */
  MT_SRV_STREAM_RESPONDED,  /* the final response is queued; nobody holds it */
  MT_SRV_STREAM_ABANDONED,  /* ended for the handler (on_closed ran) */
} mt_srv_stream_state;

/* One queued response message, prefix included. */
typedef struct mt_srv_chunk {
  struct mt_srv_chunk *next;
  size_t len, off;
  uint8_t data[];
} mt_srv_chunk;

/* Where one request header lives in the stream's arena. */
typedef struct {
  uint32_t name, value;
} mt_srv_header;

struct mt_grpc_stream {
  mt_srv_conn *conn;
  int32_t id;
  mt_srv_stream_state state;
  mt_grpc_stream *prev, *next;
  /* Request headers: path and custom metadata, as offsets into |arena|. */
  char *arena;
  size_t arena_len, arena_cap;
  mt_srv_header *headers;
  size_t header_count, header_cap;
  size_t header_bytes; /* counted as HTTP/2 counts a header list */
  int path_index;      /* -1 until :path arrived */
  int method_post, content_type_ok, headers_too_large, bad_timeout, bad_encoding;
  int client_done;          /* END_STREAM received */
  int reset_after_response; /* refused while the client was still sending */
  int64_t timeout_ms;
  const mt_srv_route *route;
  /* The request message. */
  mt_grpc_decoder decoder;
  uint8_t *message;
  size_t message_len;
  int have_message;
  mt_grpc_metadata *metadata; /* built at dispatch, points into |arena| */
  mt_grpc_request req;
  ev_timer deadline;
  /* The response. */
  int headers_submitted, data_deferred, finish_pending;
  mt_grpc_status final_status;
  char *final_message; /* percent-encoded */
  mt_srv_chunk *queue_head, *queue_tail;
  size_t queued_bytes;
  void (*on_closed)(void *arg, mt_grpc_status why);
  void *on_closed_arg;
  int notify_closed; /* teardown: on_closed is still owed */
};

/* server.c */
void mt_srv_enter(mt_grpc_server *server);
void mt_srv_leave(mt_grpc_server *server);

/* server_stream.c */

/* A server session whose callbacks assemble and dispatch calls on |conn|. */
nghttp2_session *mt_srv_session_new(mt_srv_conn *conn);

/* Ends every stream of a connection being torn down (its session is gone):
 * handlers holding one get on_closed(|why|), then all are freed. */
void mt_srv_conn_end_streams(mt_srv_conn *conn, mt_grpc_status why);

#endif /* MT_GRPC_SERVER_INTERNAL_H */
