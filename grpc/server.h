/* server: a gRPC server over HTTP/2 (nghttp2) on TLS (BoringSSL), driven by
 * the caller's libev loop. No call ever blocks and nothing runs on another
 * thread; handlers run on the loop.
 *
 * Handlers are registered per method path. A handler is called once a
 * call's headers and its one request message (unary and server-streaming
 * methods) have arrived. It replies with 0..N messages and one finish, at
 * once or later (server streaming, e.g. configuration pushes).
 *
 * What the server promises: unknown methods get UNIMPLEMENTED; a non-POST
 * request gets HTTP 405, a non-gRPC content-type HTTP 415; a request
 * message over the limit gets RESOURCE_EXHAUSTED; malformed frames, bytes
 * that are not an HTTP/2 preface, TLS failures, handshake and idle timeouts
 * close that one connection and never disturb the others. Response bytes
 * queued per stream are capped; HTTP/2 flow control decides when they leave.
 * Memory held per connection is bounded by max_concurrent_streams times
 * (max_message_bytes + max_metadata_bytes + max_send_queue_bytes). */
#ifndef MT_GRPC_SERVER_H
#define MT_GRPC_SERVER_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <openssl/base.h>
#include <openssl/x509.h>

#include "grpc/frame.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_grpc_server mt_grpc_server;
typedef struct mt_grpc_stream mt_grpc_stream;

/* What the kernel recorded about a Unix socket's client when it connected
 * (SO_PEERCRED, SO_PEERPIDFD): who the caller is, whatever it says. */
typedef struct {
  pid_t pid;
  uid_t uid;
  gid_t gid;
  /* A pidfd of that very process (not of a later one reusing its PID), or
   * -1 when the kernel has none (before Linux 6.5). Owned by the
   * connection: valid while the handler holds the stream. */
  int pidfd;
} mt_grpc_peer_cred;

typedef struct {
  /* "ip:port" or "[ipv6]:port"; port 0 picks a free port (see
   * mt_grpc_server_port). Or a Unix domain socket "unix:/abs/path" (also
   * "unix:///abs/path"): a stale socket file left there by a process that
   * is gone is replaced; a live listener there (EADDRINUSE) or a file that
   * is not a socket (EEXIST) is an error. The file is removed by
   * mt_grpc_server_free (if it is still ours). */
  const char *listen;
  /* Borrowed; must outlive the server. Its certificate, key and client-
   * certificate policy are the caller's. mt_grpc_server_new installs an
   * ALPN callback on it that selects "h2" (replacing any other). NULL:
   * plaintext HTTP/2 with prior knowledge, allowed only on a Unix socket
   * (the SPIFFE Workload API), where the kernel, not TLS, says who the
   * peer is (mt_grpc_request.peer_cred). */
  SSL_CTX *ssl_ctx;
  /* A Unix socket's file mode (e.g. 0666: who may connect is then decided
   * per call from peer_cred); 0 = as the umask leaves it. */
  unsigned unix_socket_mode;
  /* Unix sockets, optional: who a caller is for per-caller limits (its
   * uid, its pod...), asked once at accept. A caller already holding
   * max_connections_per_key connections under the same key has its new
   * one closed at once (told to on_connection_error), so no caller can
   * take every connection from the others. The key is on each request
   * (mt_grpc_request.peer_key) for the caller's own per-key limits. */
  uint64_t (*peer_key)(void *arg, const mt_grpc_peer_cred *cred);
  void *peer_key_arg;
  size_t max_connections_per_key;  /* 0 = no per-key limit */
  size_t max_message_bytes;        /* largest request message; 0 = 4 MiB */
  uint32_t max_concurrent_streams; /* per connection; 0 = 100 */
  size_t max_metadata_bytes;       /* request headers per stream; 0 = 16 KiB */
  size_t max_send_queue_bytes;     /* queued response bytes per stream; 0 = 4 MiB + 5 */
  size_t max_connections;          /* beyond it, new connections are closed; 0 = 1024 */
  int handshake_timeout_ms;        /* accept to end of TLS handshake; 0 = 10000 */
  int idle_timeout_ms;             /* no stream and no byte for this long; 0 = 300000 */
  /* Optional: told about every connection that ends in error (TLS failure,
   * protocol error, timeout, connection limit), for the caller's log and
   * counters. |peer| is "ip:port"; both strings valid during the call. */
  void (*on_connection_error)(void *arg, const char *peer, const char *what);
  void *on_connection_error_arg;
  /* Optional: told about every call the server answers itself, before any
   * handler sees it, for the caller's access log and counters:
   *   unknown method                         UNIMPLEMENTED
   *   a request message over max_message_bytes, request headers over
   *   max_metadata_bytes                     RESOURCE_EXHAUSTED
   *   non-POST (sent as HTTP 405), content-type not application/grpc
   *   (HTTP 415), malformed grpc-timeout, no :path, a truncated request
   *   message or none                        INTERNAL
   *   grpc-encoding other than identity, a second request message
   *                                          UNIMPLEMENTED
   *   no memory for the request              RESOURCE_EXHAUSTED
   * |status| and |message| are what the client is sent (|message| as plain
   * text, before percent-encoding; it tells the cases apart, e.g. "gRPC
   * requires the POST method"). |peer_address| is "ip:port"; |path| is the
   * request's :path as received, "" when it had none. All strings are valid
   * during the call only. It runs once per refused call, on the loop, after
   * the refusal is queued; it may call mt_grpc_server_free. Not told:
   * calls a handler finishes with an error (the handler knows), streams
   * nghttp2 refuses on its own (over max_concurrent_streams:
   * RST_STREAM(REFUSED_STREAM)), and connection failures (on_connection_error). */
  void (*on_call_refused)(void *arg, const char *peer_address, const char *path,
                          mt_grpc_status status, const char *message);
  void *on_call_refused_arg;
} mt_grpc_server_options;

/* What a handler gets. Everything is borrowed and valid during on_call
 * (and, through mt_grpc_stream_request, while the handler holds the
 * stream). */
typedef struct {
  const char *path;
  const mt_grpc_metadata *metadata; /* custom headers, names lowercase */
  size_t metadata_count;
  const uint8_t *message; /* the request message */
  size_t message_len;
  int64_t timeout_ms; /* from grpc-timeout; -1 when the client set none */
  /* The client's certificate as verified by the caller's SSL_CTX, or NULL
   * when it sent none; |peer_chain| is the chain it sent, leaf first. */
  X509 *peer_cert;
  STACK_OF(X509) * peer_chain;
  const SSL *ssl; /* the connection, e.g. for ex_data set by a verify callback */
  const struct sockaddr *peer_addr;
  const char *peer_address;           /* "ip:port"; on a Unix socket "pid P uid U gid G" */
  const mt_grpc_peer_cred *peer_cred; /* Unix sockets only; NULL on TCP */
  uint64_t peer_key;                  /* options.peer_key's answer; 0 without one */
} mt_grpc_request;

typedef void (*mt_grpc_handler_fn)(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req);

/* Binds and listens. Returns NULL with errno set: EINVAL for bad options,
 * EADDRINUSE and friends from bind(2), ENOMEM. */
mt_grpc_server *mt_grpc_server_new(struct ev_loop *loop, const mt_grpc_server_options *options);

/* Closes the listener and every connection (with a GOAWAY, best effort).
 * Handlers still holding streams get on_closed(UNAVAILABLE) first. May be
 * called from inside a handler or callback (it then completes when that
 * returns). NULL is fine. */
void mt_grpc_server_free(mt_grpc_server *server);

/* The bound port (useful after listening on port 0); 0 on a Unix socket. */
int mt_grpc_server_port(const mt_grpc_server *server);

/* Routes calls of |path| ("/package.Service/Method") to |on_call|. Returns
 * 1, or 0 for a bad or already registered path or no memory. */
int mt_grpc_server_handle(mt_grpc_server *server, const char *path, mt_grpc_handler_fn on_call,
                          void *arg);

typedef enum {
  MT_GRPC_SEND_OK = 0,
  MT_GRPC_SEND_QUEUE_FULL, /* over max_send_queue_bytes: retry after bytes leave */
  MT_GRPC_SEND_FINISHED,   /* finish was called, or the stream has ended */
  MT_GRPC_SEND_TOO_LARGE,  /* longer than a gRPC message can be */
  MT_GRPC_SEND_NO_MEMORY,
} mt_grpc_send_result;

/* Queues one response message (copied). The response headers go out with
 * the first one. */
mt_grpc_send_result mt_grpc_stream_send(mt_grpc_stream *stream, const uint8_t *msg, size_t len);

/* Bytes queued on the stream that HTTP/2 has not taken yet. */
size_t mt_grpc_stream_queued_bytes(const mt_grpc_stream *stream);

/* Ends the call with |status| and |message| (NULL or "" for none; it is
 * percent-encoded) after the queued messages. A call finished before any
 * message is sent gets a trailers-only response. After this the handler must
 * forget the stream: no on_closed follows. Returns 1, or 0 when already
 * finished or ended. */
int mt_grpc_stream_finish(mt_grpc_stream *stream, mt_grpc_status status, const char *message);

/* For handlers that keep a stream past on_call: |on_closed| runs once if the
 * stream ends before the handler finishes it (client cancel, reset or
 * disconnect: CANCELLED; the call's deadline: DEADLINE_EXCEEDED; server
 * freed: UNAVAILABLE). After on_closed returns the stream pointer is
 * invalid. */
void mt_grpc_stream_set_on_closed(mt_grpc_stream *stream,
                                  void (*on_closed)(void *arg, mt_grpc_status why), void *arg);

/* The request the stream was dispatched with (see mt_grpc_request). */
const mt_grpc_request *mt_grpc_stream_request(const mt_grpc_stream *stream);

/* First value of request metadata |name| (lowercase), or NULL. */
const char *mt_grpc_request_metadata(const mt_grpc_request *req, const char *name);

#ifdef __cplusplus
}
#endif

#endif /* MT_GRPC_SERVER_H */
