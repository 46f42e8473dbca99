/* h2_transport: one connection carrying an HTTP/2 session on a libev
 * loop; shared by the gRPC client and server and by mtls-ca's Kubernetes
 * API client (controlplane/k8s_client.c). Nothing here is gRPC-specific.
 *
 * A connection is TLS (TCP) or plaintext HTTP/2 with prior knowledge (a
 * Unix domain socket: the SPIFFE Workload API); |ssl| NULL means plaintext.
 *
 * The transport owns the socket, the SSL (its owner creates and configures
 * it), the nghttp2 session (its owner creates it once the handshake is done)
 * and a fixed output buffer. It moves bytes: TLS records in -> nghttp2, and
 * nghttp2's frames -> the output buffer -> TLS records out, never blocking.
 * The owner's nghttp2 send callback hands frames to
 * mt_h2_transport_buffer(), which takes what fits and otherwise asks nghttp2
 * to wait (so output is bounded per connection). The owner decides what a
 * failure means; the transport only says what happened, in |error|.
 *
 * Rule for owners: nothing calls into nghttp2's send/recv from inside an
 * nghttp2 callback. API calls that queue frames call mt_h2_transport_want_write,
 * and the next loop iteration flushes them. */
#ifndef MT_GRPC_H2_TRANSPORT_H
#define MT_GRPC_H2_TRANSPORT_H

#include <ev.h>
#include <nghttp2/nghttp2.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <openssl/base.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { MT_H2_ERROR_MAX = 256, MT_H2_ADDRESS_TEXT_MAX = 64 };

typedef struct {
  struct ev_loop *loop;
  int fd;
  SSL *ssl;
  nghttp2_session *session; /* NULL until the owner creates it */
  ev_io io;                 /* the owner's callback; io.data is the owner's */
  int events;               /* what io currently watches */
  uint8_t *out;             /* frames nghttp2 produced that TLS has not taken */
  size_t out_head, out_tail, out_cap;
  int read_eof;
  int stop;                /* set by the owner (from a callback) to stop reading */
  ev_tstamp last_activity; /* bytes arrived, or the owner noted activity */
  char error[MT_H2_ERROR_MAX];
} mt_h2_transport;

/* Takes |fd| and |ssl| (both, even on failure; |ssl| NULL: plaintext). |cb| with |data| as the
 * watcher's data receives readiness events. Returns 1, or 0 when out of memory
 * (the socket and SSL are then already released). */
int mt_h2_transport_init(mt_h2_transport *t, struct ev_loop *loop, int fd, SSL *ssl,
                         void (*cb)(struct ev_loop *, ev_io *, int), void *data);

/* Releases everything: watcher, nghttp2 session (no callbacks run), SSL,
 * socket and buffer. Safe on a zeroed or already disposed transport. */
void mt_h2_transport_dispose(mt_h2_transport *t);

/* Watches |events| (EV_READ | EV_WRITE, or 0). */
void mt_h2_transport_watch(mt_h2_transport *t, int events);

/* Asks for a flush on the next loop iteration (by watching EV_WRITE). */
void mt_h2_transport_want_write(mt_h2_transport *t);

typedef enum { MT_H2_STEP_DONE, MT_H2_STEP_AGAIN, MT_H2_STEP_FAILED } mt_h2_step;

/* One step of the TLS handshake. AGAIN: the right events are watched.
 * DONE: the handshake finished and ALPN selected "h2" (|require_alpn| 0
 * also accepts no ALPN at all). FAILED: |error| says why (certificate
 * verification, alert from the peer, connection closed...). */
/* After EV_WRITE on a connecting socket: 0 once connected, EINPROGRESS while
 * still connecting, else the errno that ended the connect. */
int mt_h2_transport_connect_error(const mt_h2_transport *t);

mt_h2_step mt_h2_transport_handshake(mt_h2_transport *t, int require_alpn);

typedef enum {
  MT_H2_OPEN,   /* keep going; the right events are watched */
  MT_H2_DONE,   /* both sides are done with the session (GOAWAY exchanged) */
  MT_H2_FAILED, /* I/O or protocol failure, or the peer closed: see |error| */
} mt_h2_status;

/* Reads what TLS has, feeds nghttp2 (whose callbacks run now), then writes
 * what nghttp2 has to send. Call from the watcher's callback once the session
 * exists. */
mt_h2_status mt_h2_transport_pump(mt_h2_transport *t);

/* For the owner's nghttp2 send callback: copies what fits of |data|;
 * returns the count or NGHTTP2_ERR_WOULDBLOCK. */
ssize_t mt_h2_transport_buffer(mt_h2_transport *t, const uint8_t *data, size_t len);

/* A last attempt to put queued frames (a GOAWAY) and, if they all left, a
 * TLS close_notify on the wire before a close; never blocks, ignores errors. */
void mt_h2_transport_flush_best_effort(mt_h2_transport *t);

/* Attaches |fd| to |ssl| through a socket BIO that writes with MSG_NOSIGNAL
 * (a peer that vanished is an error to report, not a SIGPIPE that kills the
 * process), and sets the SSL_MODE flags the transport relies on. The owner
 * calls it on every SSL it creates; the caller's SSL_CTX is left untouched.
 * Returns 1, or 0 when out of memory. */
int mt_h2_ssl_attach(SSL *ssl, int fd);

/* "ip:port", "[ipv6]:port" (numeric only; no name resolution, which would
 * block), or a Unix domain socket "unix:/abs/path" / "unix:///abs/path"
 * (path shorter than sun_path, no NUL). Returns 1, or 0 when malformed. */
int mt_h2_parse_address(const char *text, struct sockaddr_storage *out, socklen_t *out_len);

/* Writes "ip:port" / "[ipv6]:port" / "unix:/path" ("unix" for an unnamed
 * socket, as an accepted Unix connection's peer is). */
void mt_h2_format_address(const struct sockaddr *addr, char *out, size_t out_len);

/* snprintf for diagnostic text, where cutting a long reason short is fine
 * (and the compiler need not prove it cannot happen). */
void mt_h2_textf(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The text nghttp2 gives an HTTP/2 error code ("CANCEL", "REFUSED_STREAM"...). */
const char *mt_h2_error_name(uint32_t h2_error_code);

#ifdef __cplusplus
}
#endif

#endif /* MT_GRPC_H2_TRANSPORT_H */
