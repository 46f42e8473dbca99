/* client: a gRPC client over HTTP/2 (nghttp2) on TLS (BoringSSL), driven by
 * the caller's libev loop. No call ever blocks and nothing runs on another
 * thread: every callback runs on the loop, never from inside an API call.
 *
 * The client owns at most one usable connection to its target. It connects
 * lazily on the first call, queues calls while connecting, and when the
 * connection breaks (connect refused, TLS verification failed, GOAWAY,
 * keepalive timeout, peer closed...) every call in flight ends with
 * UNAVAILABLE and a message saying why. The next call connects again;
 * reconnect policy and backoff are the caller's (see
 * mt_grpc_client_is_connected).
 *
 * A call sends one request message and receives 0..N response messages, so
 * unary and server-streaming methods look the same here. Message bodies are
 * opaque bytes (the caller does the protobuf encoding).
 *
 * Promises: on_close runs exactly once per call that start_call returned,
 * unless the call is cancelled or the client freed first; nothing runs for a
 * call after its on_close, its cancel, or the client's free. */
#ifndef MT_GRPC_CLIENT_H
#define MT_GRPC_CLIENT_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/base.h>

#include "grpc/frame.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_grpc_client mt_grpc_client;
typedef struct mt_grpc_call mt_grpc_call;

typedef struct {
  /* "ip:port", "[ipv6]:port" or "name:port": a name is looked up again
   * for every connection, off the loop (resolver.h). Or a Unix domain
   * socket "unix:/abs/path" / "unix:///abs/path" (a SPIRE agent's
   * Workload API). */
  const char *target;
  /* Borrowed; must outlive the client. The caller configures how the server
   * is verified (roots, verify mode or callback). The client offers ALPN
   * "h2" on each connection and refuses a server that does not select it.
   * NULL: plaintext HTTP/2 with prior knowledge, allowed only to a Unix
   * socket target. */
  SSL_CTX *ssl_ctx;
  const char *authority;     /* :authority; NULL = |target| ("localhost" for a Unix socket) */
  const char *server_name;   /* TLS SNI; NULL or an IP literal = none sent */
  int connect_timeout_ms;    /* TCP connect + TLS handshake; 0 = 10000 */
  int keepalive_interval_ms; /* send an HTTP/2 PING this often; 0 = never */
  int keepalive_timeout_ms;  /* no PING ACK within this: close; 0 = 20000 */
  /* 0: ping only while calls are in flight (gRPC servers police idle
   * pings, typically at most one per 5 minutes); 1: ping any time. */
  int keepalive_without_calls;
  size_t max_message_bytes; /* largest response message; 0 = 4 MiB */
} mt_grpc_client_options;

/* Returns NULL when an option is invalid (bad target, no SSL_CTX for a TCP
 * target) or out of memory. Nothing connects until the first call. */
mt_grpc_client *mt_grpc_client_new(struct ev_loop *loop, const mt_grpc_client_options *options);

/* Closes the connection (GOAWAY, best effort); calls in flight end without
 * callbacks. May be called from inside one of the client's callbacks (the
 * memory is then released when that callback returns). NULL is fine. */
void mt_grpc_client_free(mt_grpc_client *client);

/* 1 when a connection is established (TLS done, h2 selected) and usable for
 * new calls (no GOAWAY received). */
int mt_grpc_client_is_connected(const mt_grpc_client *client);

/* The server's leaf certificate on the current connection, borrowed (valid
 * until the connection ends); NULL when not connected. */
X509 *mt_grpc_client_peer_cert(const mt_grpc_client *client);

typedef struct {
  /* Each response message, in order; |msg| is valid during the callback. */
  void (*on_message)(void *arg, const uint8_t *msg, size_t len);
  /* The end of the call, exactly once: the server's grpc-status and decoded
   * grpc-message, or a status made up locally (DEADLINE_EXCEEDED,
   * UNAVAILABLE with why the connection broke, ...). |message| is never
   * NULL ("" when none) and valid during the callback. After it returns the
   * call pointer is invalid. */
  void (*on_close)(void *arg, mt_grpc_status status, const char *message);
} mt_grpc_call_handlers;

/* Starts a call of |path| ("/package.Service/Method") with |metadata|
 * (e.g. {"authorization", "Bearer ..."}; names lowercase) and one request
 * message. |deadline_ms| > 0 is sent as grpc-timeout and enforced locally
 * (the call ends with DEADLINE_EXCEEDED); 0 = no deadline. Everything is
 * copied. Returns NULL, and runs no callback, when an argument is invalid
 * (bad path, reserved or malformed metadata) or memory is exhausted; every
 * other failure is reported through on_close. */
mt_grpc_call *mt_grpc_client_start_call(mt_grpc_client *client, const char *path,
                                        const mt_grpc_metadata *metadata, size_t metadata_count,
                                        const uint8_t *request, size_t request_len,
                                        int64_t deadline_ms, const mt_grpc_call_handlers *handlers,
                                        void *arg);

/* Cancels a call that has not ended: RST_STREAM(CANCEL) goes to the server
 * and no callback runs for the call afterwards. Must not be called after the
 * call's on_close. NULL is fine. */
void mt_grpc_call_cancel(mt_grpc_call *call);

#ifdef __cplusplus
}
#endif

#endif /* MT_GRPC_CLIENT_H */
