/* http_server: a small HTTP/1.0 and 1.1 server on a caller's libev loop, for
 * the admin endpoint (plain TCP, no TLS, no request bodies).
 *
 * Owns one listening socket and its connections; never blocks the loop.
 * Promises:
 *   - Requests are parsed by http_request.h (its limits: head 8 KiB, target
 *     4 KiB, body 8 KiB, read and thrown away). A request with a body is
 *     answered without waiting for it, and the connection then closes.
 *   - Keep-alive (HTTP/1.1 by default, HTTP/1.0 with "Connection:
 *     keep-alive") and pipelining: requests on a connection are answered in
 *     order, one at a time.
 *   - Bad input is answered by the server itself with the parser's status
 *     (400, 411, 413, 414, 417, 431, 501, 505), or 408 when a request is not
 *     complete |request_timeout_s| after its first byte; then the connection
 *     closes. More than |max_connections| at once: 503 and close. Each of
 *     these is counted (mt_http_server_stats) and logged (at most
 *     LOG_BURST lines per second per server, the rest counted as suppressed).
 *   - An idle keep-alive connection, or one whose client stops reading an
 *     answer, is closed after |idle_timeout_s|.
 *   - When accept fails for want of descriptors or memory, the listener
 *     pauses for a second (logged) instead of spinning the loop.
 *   - Every answer has Date, Content-Type, Cache-Control: no-store and
 *     Content-Length; HEAD gets the headers of the GET answer and no body.
 *
 * The handler runs on the loop for each complete request and must call
 * mt_http_respond exactly once before it returns (else the client gets a
 * 500). */
#ifndef MT_HTTP_SERVER_H
#define MT_HTTP_SERVER_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "agent/http_request.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_http_server mt_http_server;
typedef struct mt_http_exchange mt_http_exchange; /* one request being answered */

typedef void (*mt_http_handler)(void *arg, const mt_http_request *req, mt_http_exchange *ex);
typedef void (*mt_http_sent_cb)(void *arg);

typedef struct {
  size_t max_connections;
  double request_timeout_s; /* first byte of a request -> its complete head */
  double idle_timeout_s;    /* between requests; an answer the client does not read */
} mt_http_limits;

/* Statuses the server answers by itself, in the order of the stats array. */
enum { MT_HTTP_NUM_REFUSALS = 11 };
extern const int mt_http_refusal_status[MT_HTTP_NUM_REFUSALS]; /* 400, 408, ..., 503 */

typedef struct {
  uint64_t requests;                      /* handed to the handler */
  uint64_t refused[MT_HTTP_NUM_REFUSALS]; /* by mt_http_refusal_status */
  uint64_t connections;                   /* accepted */
  uint64_t connections_active;
} mt_http_server_stats;

/* Listens on |addr| (IPv4 or IPv6; IPv6 sockets are v6-only). NULL with the
 * reason in |err| (e.g. "Address already in use"). |arg| must outlive the
 * server. */
mt_http_server *mt_http_server_new(struct ev_loop *loop, const struct sockaddr *addr,
                                   const mt_http_limits *limits, mt_http_handler handler, void *arg,
                                   char *err, size_t err_len);

/* The address actually bound (port 0 resolved). 0 on failure. */
int mt_http_server_address(const mt_http_server *server, struct sockaddr_storage *out);

const mt_http_server_stats *mt_http_server_get_stats(const mt_http_server *server);

/* Closes the listener and every connection (their answers are dropped).
 * Accepts NULL. */
void mt_http_server_free(mt_http_server *server);

/* The answer to |ex|'s request; |body| is copied. |allow| (NULL = none) is
 * the Allow header a 405 must carry. */
void mt_http_respond(mt_http_exchange *ex, int status, const char *content_type, const char *allow,
                     const char *body, size_t len);

/* |cb| runs once the whole answer has been written to the socket (not when
 * the connection dies first). */
void mt_http_on_sent(mt_http_exchange *ex, mt_http_sent_cb cb, void *arg);

#ifdef __cplusplus
}
#endif

#endif /* MT_HTTP_SERVER_H */
