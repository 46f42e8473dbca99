/* client.c: gRPC calls over one HTTP/2 + TLS connection.
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
 * bracketed by enter()/leave(); a free requested inside takes effect at the
 * outermost leave(), and no user callback runs once it is requested. */
#include "grpc/client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "grpc/h2_transport.h"

enum {
  DEFAULT_CONNECT_TIMEOUT_MS = 10000,
  DEFAULT_KEEPALIVE_TIMEOUT_MS = 20000,
  MS_PER_SECOND = 1000,
  HTTP_OK = 200,
  HTTP_INFORMATIONAL_MIN = 100,
  HTTP_INFORMATIONAL_END = 200,
  /* :method :scheme :path :authority content-type te user-agent grpc-timeout */
  FIXED_REQUEST_HEADERS = 8,
  GRPC_STATUS_MAX_DIGITS = 3,
  DEBUG_DATA_SHOWN_MAX = 100,
  /* Room for any reason we compose: an address, two nested reasons. */
  WHY_MAX = 2 * MT_H2_ERROR_MAX + 2 * MT_H2_ADDRESS_TEXT_MAX + 64,
  /* 64 KiB of response headers per call is plenty for grpc-status and
   * grpc-message; advertised so servers do not send more. */
  MAX_HEADER_LIST_BYTES = 64 * 1024,
};

static const char kUserAgent[] = "mtlsd/0.1";
static const uint8_t kAlpnH2Wire[] = {2, 'h', '2'};

/* Headers the client sets itself, or that HTTP/2 forbids. */
static const char *const kReservedMetadata[] = {
    "content-type", "te",      "grpc-timeout", "user-agent",        "host",
    "connection",   "upgrade", "keep-alive",   "transfer-encoding", "proxy-connection",
};

typedef struct client_conn client_conn;

typedef struct {
  mt_grpc_call *head;
} call_list;

typedef enum {
  CALL_QUEUED, /* waiting for a connection */
  CALL_ACTIVE, /* submitted to nghttp2 */
  CALL_DONE,   /* on_close ran or cancelled; waiting for nghttp2 to let go */
} call_state;

struct mt_grpc_call {
  mt_grpc_client *client;
  client_conn *conn; /* NULL while queued or being failed */
  call_list *list;
  mt_grpc_call *prev, *next;
  call_state state;
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
  CONN_CONNECTING,  /* non-blocking TCP connect */
  CONN_HANDSHAKING, /* TLS */
  CONN_READY,       /* HTTP/2 session up */
  CONN_FAILED,      /* failed inside an API call; the phase timer reports it */
} conn_state;

struct client_conn {
  mt_grpc_client *client;
  conn_state state;
  mt_h2_transport t;
  /* Connect + handshake deadline, then the PING ACK deadline; or a 0 s
   * timer that reports a failure detected inside an API call. */
  ev_timer phase;
  ev_timer keepalive;
  int ping_outstanding;
  int goaway; /* received: no new calls; close once the last call ends */
  X509 *peer_cert;
  call_list calls;
  client_conn *prev, *next; /* the client's connections */
  char why[MT_H2_ERROR_MAX];
};

struct mt_grpc_client {
  struct ev_loop *loop;
  SSL_CTX *ssl_ctx;
  struct sockaddr_storage target;
  socklen_t target_len;
  char target_text[MT_H2_ADDRESS_TEXT_MAX];
  char *authority, *server_name;
  int connect_timeout_ms, keepalive_interval_ms, keepalive_timeout_ms, keepalive_without_calls;
  size_t max_message_bytes;
  client_conn *current; /* the connection new calls go to; NULL = none */
  client_conn *conns;   /* every connection, current and draining */
  call_list queued;     /* waiting for |current| to be ready */
  int depth;            /* nesting of loop callbacks in progress */
  int free_requested;
};

static void destroy(mt_grpc_client *c);
static void conn_pump(client_conn *conn);

static void enter(mt_grpc_client *c) { c->depth++; }

static void leave(mt_grpc_client *c) {
  if (--c->depth == 0 && c->free_requested) destroy(c);
}

/* ---- lists ---- */

static void list_push(call_list *list, mt_grpc_call *call) {
  call->list = list;
  call->prev = NULL;
  call->next = list->head;
  if (list->head) list->head->prev = call;
  list->head = call;
}

static void list_remove(mt_grpc_call *call) {
  if (call->list == NULL) return;
  if (call->prev) call->prev->next = call->next;
  if (call->next) call->next->prev = call->prev;
  if (call->list->head == call) call->list->head = call->next;
  call->list = NULL;
  call->prev = call->next = NULL;
}

/* ---- calls ---- */

static void call_free(mt_grpc_call *call) {
  list_remove(call);
  ev_timer_stop(call->client->loop, &call->deadline);
  mt_grpc_decoder_dispose(&call->decoder);
  free(call->grpc_message);
  free(call);
}

/* Ends the call for the user: on_close runs unless the client is being freed. */
static void call_complete(mt_grpc_call *call, mt_grpc_status status, const char *message) {
  if (call->state == CALL_DONE) return;
  mt_grpc_client *c = call->client;
  call->state = CALL_DONE;
  ev_timer_stop(c->loop, &call->deadline);
  if (!c->free_requested && call->handlers.on_close)
    call->handlers.on_close(call->arg, status, message ? message : "");
}

/* Frees a finished call once nghttp2 has let go of its stream. */
static void call_release(mt_grpc_call *call) {
  if (call->state == CALL_DONE && !call->stream_live) call_free(call);
}

/* Tells the server to stop the call's stream. Before its HEADERS left, the
 * before-send callback drops them instead (nghttp2 forbids frames on a
 * stream before then). */
static void call_stop_stream(mt_grpc_call *call, uint32_t h2_error) {
  client_conn *conn = call->conn;
  if (conn == NULL || !call->stream_live) return;
  if (call->headers_sent)
    nghttp2_submit_rst_stream(conn->t.session, NGHTTP2_FLAG_NONE, call->stream_id, h2_error);
  mt_h2_transport_want_write(&conn->t);
}

/* Ends a call on our side: stream stopped, user told, memory released. */
static void call_abort(mt_grpc_call *call, mt_grpc_status status, const char *message) {
  call_stop_stream(call, NGHTTP2_CANCEL);
  call_complete(call, status, message);
  if (call->conn == NULL)
    call_free(call);
  else
    call_release(call);
}

static void on_call_deadline(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  mt_grpc_call *call = w->data;
  mt_grpc_client *c = call->client;
  enter(c);
  if (!c->free_requested && call->state != CALL_DONE)
    call_abort(call, MT_GRPC_DEADLINE_EXCEEDED, "deadline exceeded");
  leave(c);
}

static nghttp2_nv make_nv(const char *name, const char *value) {
  nghttp2_nv nv = {(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value),
                   NGHTTP2_NV_FLAG_NONE};
  return nv;
}

static ssize_t read_request_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                                 size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                                 void *user_data) {
  (void)session;
  (void)stream_id;
  (void)user_data;
  mt_grpc_call *call = source->ptr;
  size_t left = call->body_len - call->body_sent;
  size_t n = left < length ? left : length;
  memcpy(buf, call->body + call->body_sent, n);
  call->body_sent += n;
  if (call->body_sent == call->body_len) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
  return (ssize_t)n;
}

/* Submits the call's HEADERS and DATA to |conn|'s session. Returns the
 * nghttp2 result (a stream ID, or a negative error). */
static int32_t call_submit(client_conn *conn, mt_grpc_call *call) {
  mt_grpc_client *c = conn->client;
  nghttp2_nv *nva = malloc(sizeof(*nva) * (FIXED_REQUEST_HEADERS + call->metadata_count));
  if (nva == NULL) return NGHTTP2_ERR_NOMEM;
  size_t n = 0;
  char timeout[MT_GRPC_TIMEOUT_TEXT_MAX];
  nva[n++] = make_nv(":method", "POST");
  nva[n++] = make_nv(":scheme", "https");
  nva[n++] = make_nv(":path", call->path);
  nva[n++] = make_nv(":authority", c->authority);
  nva[n++] = make_nv("content-type", "application/grpc");
  nva[n++] = make_nv("te", "trailers");
  nva[n++] = make_nv("user-agent", kUserAgent);
  if (call->deadline_at > 0) {
    /* What is left of the deadline now, not what was asked at start. */
    double left_ms = (call->deadline_at - ev_now(c->loop)) * MS_PER_SECOND;
    mt_grpc_timeout_format(left_ms < 1 ? 1 : (int64_t)(left_ms + 0.999), timeout);
    nva[n++] = make_nv("grpc-timeout", timeout);
  }
  const char *p = call->metadata;
  for (size_t i = 0; i < call->metadata_count; i++) {
    const char *name = p;
    const char *value = name + strlen(name) + 1;
    nva[n++] = make_nv(name, value);
    p = value + strlen(value) + 1;
  }
  nghttp2_data_provider body;
  body.source.ptr = call;
  body.read_callback = read_request_body;
  int32_t id = nghttp2_submit_request(conn->t.session, NULL, nva, n, &body, call);
  free(nva);
  if (id < 0) return id;
  call->conn = conn;
  call->stream_id = id;
  call->stream_live = 1;
  call->state = CALL_ACTIVE;
  list_push(&conn->calls, call);
  mt_h2_transport_want_write(&conn->t);
  return id;
}

/* ---- connections ---- */

static void conn_destroy(client_conn *conn) {
  mt_grpc_client *c = conn->client;
  ev_timer_stop(c->loop, &conn->phase);
  ev_timer_stop(c->loop, &conn->keepalive);
  for (mt_grpc_call *call = conn->calls.head, *next; call != NULL; call = next) {
    next = call->next;
    call_free(call);
  }
  mt_h2_transport_dispose(&conn->t);
  X509_free(conn->peer_cert);
  if (conn->prev) conn->prev->next = conn->next;
  if (conn->next) conn->next->prev = conn->prev;
  if (c->conns == conn) c->conns = conn->next;
  if (c->current == conn) c->current = NULL;
  free(conn);
}

/* Tears |conn| down and ends its calls (and, if it was the connection being
 * set up, the queued calls) with UNAVAILABLE and |why|. */
static void conn_fail(client_conn *conn, const char *why) {
  mt_grpc_client *c = conn->client;
  char reason[WHY_MAX];
  mt_h2_textf(reason, sizeof(reason), "%s", why); /* |why| may live in |conn| */
  call_list dying = {NULL};
  while (conn->calls.head) {
    mt_grpc_call *call = conn->calls.head;
    list_remove(call);
    call->conn = NULL;
    call->stream_live = 0;
    list_push(&dying, call);
  }
  if (c->current == conn) {
    while (c->queued.head) {
      mt_grpc_call *call = c->queued.head;
      list_remove(call);
      list_push(&dying, call);
    }
  }
  conn_destroy(conn);
  /* Callbacks may start calls (on a new connection) or cancel calls that
   * are still in |dying|, so take one call at a time. */
  while (dying.head) {
    mt_grpc_call *call = dying.head;
    list_remove(call);
    call_complete(call, MT_GRPC_UNAVAILABLE, reason);
    call_free(call);
  }
}

static void defer_failure(client_conn *conn, const char *why) {
  mt_grpc_client *c = conn->client;
  conn->state = CONN_FAILED;
  mt_h2_textf(conn->why, sizeof(conn->why), "%s", why);
  ev_timer_stop(c->loop, &conn->phase);
  ev_timer_set(&conn->phase, 0.0, 0.0);
  ev_timer_start(c->loop, &conn->phase);
}

static void on_phase_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  client_conn *conn = w->data;
  mt_grpc_client *c = conn->client;
  char why[WHY_MAX];
  enter(c);
  if (!c->free_requested) {
    switch (conn->state) {
      case CONN_FAILED: mt_h2_textf(why, sizeof(why), "%s", conn->why); break;
      case CONN_CONNECTING:
        mt_h2_textf(why, sizeof(why), "connect to %s timed out after %d ms", c->target_text,
                    c->connect_timeout_ms);
        break;
      case CONN_HANDSHAKING:
        mt_h2_textf(why, sizeof(why), "TLS handshake with %s timed out after %d ms", c->target_text,
                    c->connect_timeout_ms);
        break;
      case CONN_READY:
        mt_h2_textf(why, sizeof(why), "keepalive timeout: no PING ACK from %s within %d ms",
                    c->target_text, c->keepalive_timeout_ms);
        break;
    }
    conn_fail(conn, why);
  }
  leave(c);
}

static void on_keepalive(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)revents;
  client_conn *conn = w->data;
  mt_grpc_client *c = conn->client;
  enter(c);
  if (!c->free_requested && conn->state == CONN_READY && !conn->ping_outstanding &&
      (c->keepalive_without_calls || conn->calls.head != NULL) &&
      nghttp2_submit_ping(conn->t.session, NGHTTP2_FLAG_NONE, NULL) == 0) {
    conn->ping_outstanding = 1;
    ev_timer_set(&conn->phase, c->keepalive_timeout_ms / (double)MS_PER_SECOND, 0.0);
    ev_timer_start(loop, &conn->phase);
    mt_h2_transport_want_write(&conn->t);
  }
  leave(c);
}

/* ---- nghttp2 callbacks (user_data is the connection) ---- */

static ssize_t on_send(nghttp2_session *session, const uint8_t *data, size_t length, int flags,
                       void *user_data) {
  (void)session;
  (void)flags;
  client_conn *conn = user_data;
  return mt_h2_transport_buffer(&conn->t, data, length);
}

static mt_grpc_call *stream_call(nghttp2_session *session, int32_t stream_id) {
  return nghttp2_session_get_stream_user_data(session, stream_id);
}

static int name_is(const uint8_t *name, size_t len, const char *literal) {
  return len == strlen(literal) && memcmp(name, literal, len) == 0;
}

/* Parses a short decimal number; -1 when it is not one. */
static int parse_small_uint(const uint8_t *text, size_t len, size_t max_digits) {
  if (len == 0 || len > max_digits) return -1;
  int v = 0;
  for (size_t i = 0; i < len; i++) {
    if (text[i] < '0' || text[i] > '9') return -1;
    v = v * 10 + (text[i] - '0');
  }
  return v;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data) {
  (void)flags;
  (void)user_data;
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  mt_grpc_call *call = stream_call(session, frame->hd.stream_id);
  if (call == NULL || call->state != CALL_ACTIVE) return 0;
  if (name_is(name, namelen, ":status")) {
    call->http_status = parse_small_uint(value, valuelen, 3);
  } else if (name_is(name, namelen, "content-type")) {
    call->bad_content_type = !mt_grpc_content_type_valid((const char *)value, valuelen);
  } else if (name_is(name, namelen, "grpc-status")) {
    int s = parse_small_uint(value, valuelen, GRPC_STATUS_MAX_DIGITS);
    /* Codes we do not know are UNKNOWN, as the spec asks. */
    call->grpc_status = (s < 0 || s > MT_GRPC_STATUS_MAX) ? MT_GRPC_UNKNOWN : s;
  } else if (name_is(name, namelen, "grpc-message")) {
    char *text = malloc(valuelen + 1);
    if (text == NULL) return 0;
    mt_grpc_percent_decode((const char *)value, valuelen, text, valuelen + 1);
    free(call->grpc_message);
    call->grpc_message = text;
  }
  return 0;
}

/* The call failed on our side of a live stream: stop it, tell the user. */
static void call_fail_stream(mt_grpc_call *call, mt_grpc_status status, const char *message) {
  call_stop_stream(call, NGHTTP2_CANCEL);
  call_complete(call, status, message);
}

/* The response HEADERS (not trailers) arrived. */
static void on_response_headers(mt_grpc_call *call) {
  char message[64];
  if (call->http_status >= HTTP_INFORMATIONAL_MIN && call->http_status < HTTP_INFORMATIONAL_END) {
    call->http_status = 0; /* 1xx: the real response follows */
    return;
  }
  if (call->grpc_status >= 0) return; /* trailers-only: its status wins */
  if (call->http_status != HTTP_OK) {
    mt_h2_textf(message, sizeof(message), "HTTP status %d from server", call->http_status);
    call_fail_stream(call, mt_grpc_status_from_http(call->http_status), message);
  } else if (call->bad_content_type) {
    call_fail_stream(call, MT_GRPC_UNKNOWN, "response content-type is not application/grpc");
  }
}

/* The server closed its side of the stream: the call's outcome is known. */
static void on_response_end(client_conn *conn, mt_grpc_call *call) {
  char message[64];
  if (call->state != CALL_ACTIVE) return;
  if (mt_grpc_decoder_in_message(&call->decoder)) {
    call_fail_stream(call, MT_GRPC_INTERNAL, "response ended in the middle of a message");
  } else if (call->grpc_status >= 0) {
    call_complete(call, (mt_grpc_status)call->grpc_status, call->grpc_message);
  } else if (call->http_status != HTTP_OK) {
    mt_h2_textf(message, sizeof(message), "HTTP status %d from server", call->http_status);
    call_complete(call, mt_grpc_status_from_http(call->http_status), message);
  } else {
    call_complete(call, MT_GRPC_UNKNOWN, "response ended without grpc-status");
  }
  /* The server is done; if our request is still going out, stop it. */
  if (call->stream_live && call->headers_sent &&
      !nghttp2_session_get_stream_local_close(conn->t.session, call->stream_id)) {
    nghttp2_submit_rst_stream(conn->t.session, NGHTTP2_FLAG_NONE, call->stream_id,
                              NGHTTP2_NO_ERROR);
    mt_h2_transport_want_write(&conn->t);
  }
}

static void on_goaway(client_conn *conn, const nghttp2_goaway *goaway) {
  mt_grpc_client *c = conn->client;
  size_t shown = goaway->opaque_data_len < DEBUG_DATA_SHOWN_MAX ? goaway->opaque_data_len
                                                                : DEBUG_DATA_SHOWN_MAX;
  conn->goaway = 1;
  mt_h2_textf(conn->why, sizeof(conn->why), "server %s sent GOAWAY (%s%s%.*s)", c->target_text,
              mt_h2_error_name(goaway->error_code), shown ? ": " : "", (int)shown,
              (const char *)goaway->opaque_data);
  if (c->current == conn) c->current = NULL; /* new calls get a new connection */
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  client_conn *conn = user_data;
  mt_grpc_client *c = conn->client;
  mt_grpc_call *call = NULL;
  switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
      call = stream_call(session, frame->hd.stream_id);
      if (call == NULL) break;
      if (frame->headers.cat == NGHTTP2_HCAT_RESPONSE && call->state == CALL_ACTIVE)
        on_response_headers(call);
      if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) on_response_end(conn, call);
      break;
    case NGHTTP2_DATA:
      call = stream_call(session, frame->hd.stream_id);
      if (call != NULL && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) on_response_end(conn, call);
      break;
    case NGHTTP2_PING:
      if (frame->hd.flags & NGHTTP2_FLAG_ACK) {
        conn->ping_outstanding = 0;
        ev_timer_stop(c->loop, &conn->phase);
      }
      break;
    case NGHTTP2_GOAWAY: on_goaway(conn, &frame->goaway); break;
    default: break;
  }
  return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                         const uint8_t *data, size_t len, void *user_data) {
  (void)flags;
  client_conn *conn = user_data;
  mt_grpc_call *call = stream_call(session, stream_id);
  if (call == NULL) return 0;
  CBS in;
  CBS_init(&in, data, len);
  while (call->state == CALL_ACTIVE && !conn->client->free_requested) {
    const uint8_t *msg = NULL;
    size_t msg_len = 0;
    mt_grpc_decode_result r = mt_grpc_decoder_next(&call->decoder, &in, &msg, &msg_len);
    if (r == MT_GRPC_DECODE_NEED_MORE) break;
    if (r == MT_GRPC_DECODE_ERROR) {
      const char *why = NULL;
      mt_grpc_status status = mt_grpc_decoder_error(&call->decoder, &why);
      call_fail_stream(call, status, why);
      break;
    }
    if (call->handlers.on_message) call->handlers.on_message(call->arg, msg, msg_len);
  }
  return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user_data) {
  client_conn *conn = user_data;
  mt_grpc_call *call = stream_call(session, stream_id);
  if (call == NULL) return 0;
  call->stream_live = 0;
  if (call->state != CALL_DONE) {
    char message[WHY_MAX];
    if (call->grpc_status >= 0) {
      call_complete(call, (mt_grpc_status)call->grpc_status, call->grpc_message);
    } else if (error_code == NGHTTP2_REFUSED_STREAM && conn->goaway) {
      mt_h2_textf(message, sizeof(message), "call refused: %s", conn->why);
      call_complete(call, MT_GRPC_UNAVAILABLE, message);
    } else if (error_code != NGHTTP2_NO_ERROR) {
      mt_h2_textf(message, sizeof(message), "stream reset by server (%s)",
                  mt_h2_error_name(error_code));
      call_complete(call, mt_grpc_status_from_h2_error(error_code), message);
    } else {
      call_complete(call, MT_GRPC_UNKNOWN, "stream closed without grpc-status");
    }
  }
  call_release(call);
  return 0;
}

/* A cancelled call's HEADERS never leave; otherwise note that they did. */
static int before_frame_send(nghttp2_session *session, const nghttp2_frame *frame,
                             void *user_data) {
  (void)user_data;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  mt_grpc_call *call = stream_call(session, frame->hd.stream_id);
  if (call == NULL) return 0;
  if (call->state == CALL_DONE) return NGHTTP2_ERR_CANCEL;
  call->headers_sent = 1;
  return 0;
}

static mt_grpc_call *find_call(client_conn *conn, int32_t stream_id) {
  for (mt_grpc_call *call = conn->calls.head; call; call = call->next)
    if (call->stream_id == stream_id) return call;
  return NULL;
}

/* Request HEADERS that never left (cancelled, or the session is going
 * away). If nghttp2 has no stream for them, no close callback will follow,
 * so the call ends here. */
static int on_frame_not_send(nghttp2_session *session, const nghttp2_frame *frame, int lib_error,
                             void *user_data) {
  client_conn *conn = user_data;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  mt_grpc_call *call = find_call(conn, frame->hd.stream_id);
  if (call == NULL || stream_call(session, frame->hd.stream_id) != NULL) return 0;
  call->stream_live = 0;
  if (call->state != CALL_DONE) {
    char message[WHY_MAX];
    mt_h2_textf(message, sizeof(message), "request not sent: %s",
                conn->goaway ? conn->why : nghttp2_strerror(lib_error));
    call_complete(call, MT_GRPC_UNAVAILABLE, message);
  }
  call_release(call);
  return 0;
}

static nghttp2_session *session_new(client_conn *conn) {
  nghttp2_session_callbacks *cbs = NULL;
  nghttp2_session *session = NULL;
  if (nghttp2_session_callbacks_new(&cbs) != 0) return NULL;
  nghttp2_session_callbacks_set_send_callback(cbs, on_send);
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
  nghttp2_session_callbacks_set_before_frame_send_callback(cbs, before_frame_send);
  nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, on_frame_not_send);
  int rv = nghttp2_session_client_new(&session, cbs, conn);
  nghttp2_session_callbacks_del(cbs);
  if (rv != 0) return NULL;
  nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST_BYTES},
  };
  if (nghttp2_submit_settings(session, NGHTTP2_FLAG_NONE, settings,
                              sizeof(settings) / sizeof(settings[0])) != 0) {
    nghttp2_session_del(session);
    return NULL;
  }
  return session;
}

/* TLS is up with h2: start the session and send the queued calls. */
static void conn_ready(client_conn *conn) {
  mt_grpc_client *c = conn->client;
  ev_timer_stop(c->loop, &conn->phase);
  conn->peer_cert = SSL_get_peer_certificate(conn->t.ssl);
  conn->t.session = session_new(conn);
  if (conn->t.session == NULL) {
    conn_fail(conn, "out of memory starting the HTTP/2 session");
    return;
  }
  conn->state = CONN_READY;
  if (c->keepalive_interval_ms > 0) {
    double interval = c->keepalive_interval_ms / (double)MS_PER_SECOND;
    ev_timer_set(&conn->keepalive, interval, interval);
    ev_timer_start(c->loop, &conn->keepalive);
  }
  /* The queue is pushed at its head; reversing it into |waiting| sends the
   * oldest call first. A callback below may cancel a waiting call, so take
   * one at a time. */
  call_list waiting = {NULL};
  while (c->queued.head) {
    mt_grpc_call *call = c->queued.head;
    list_remove(call);
    list_push(&waiting, call);
  }
  while (waiting.head) {
    mt_grpc_call *call = waiting.head;
    list_remove(call);
    if (c->free_requested) {
      call_free(call);
    } else if (call_submit(conn, call) < 0) {
      call_complete(call, MT_GRPC_UNAVAILABLE, "could not start an HTTP/2 stream");
      call_free(call);
    }
  }
  conn_pump(conn);
}

static void conn_pump(client_conn *conn) {
  mt_grpc_client *c = conn->client;
  char why[WHY_MAX];
  mt_h2_status st = mt_h2_transport_pump(&conn->t);
  if (c->free_requested) return;
  if (st == MT_H2_FAILED) {
    mt_h2_textf(why, sizeof(why), "connection to %s lost: %s%s%s", c->target_text, conn->t.error,
                conn->goaway ? " after " : "", conn->goaway ? conn->why : "");
    conn_fail(conn, why);
  } else if (st == MT_H2_DONE || (conn->goaway && conn->calls.head == NULL)) {
    conn_fail(conn, conn->goaway ? conn->why : "connection closed");
  }
}

/* The connection's socket is ready: advance whatever phase it is in. */
static void conn_on_io(client_conn *conn) {
  mt_grpc_client *c = conn->client;
  char why[WHY_MAX];
  switch (conn->state) {
    case CONN_CONNECTING: {
      int err = 0;
      socklen_t len = sizeof(err);
      if (getsockopt(conn->t.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      if (err == EINPROGRESS) return;
      if (err != 0) {
        mt_h2_textf(why, sizeof(why), "connect to %s: %s", c->target_text, strerror(err));
        conn_fail(conn, why);
        return;
      }
      conn->state = CONN_HANDSHAKING;
    }
    /* fall through */
    case CONN_HANDSHAKING:
      switch (mt_h2_transport_handshake(&conn->t, 1)) {
        case MT_H2_STEP_AGAIN: return;
        case MT_H2_STEP_FAILED:
          mt_h2_textf(why, sizeof(why), "%s (server %s)", conn->t.error, c->target_text);
          conn_fail(conn, why);
          return;
        case MT_H2_STEP_DONE: conn_ready(conn); return;
      }
      return;
    case CONN_READY: conn_pump(conn); return;
    case CONN_FAILED: return;
  }
}

static void on_conn_io(struct ev_loop *loop, ev_io *w, int revents) {
  (void)loop;
  (void)revents;
  client_conn *conn = w->data;
  mt_grpc_client *c = conn->client;
  enter(c);
  if (!c->free_requested) conn_on_io(conn);
  leave(c);
}

static int is_ip_literal(const char *name) {
  struct in6_addr a6;
  struct in_addr a4;
  return inet_pton(AF_INET, name, &a4) == 1 || inet_pton(AF_INET6, name, &a6) == 1;
}

static SSL *ssl_new(mt_grpc_client *c, int fd) {
  SSL *ssl = SSL_new(c->ssl_ctx);
  if (ssl == NULL) return NULL;
  int ok =
      mt_h2_ssl_attach(ssl, fd) && SSL_set_alpn_protos(ssl, kAlpnH2Wire, sizeof(kAlpnH2Wire)) == 0;
  if (ok && c->server_name != NULL) {
    /* The name is checked only if the SSL_CTX uses the built-in verifier. */
    X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
    if (is_ip_literal(c->server_name)) {
      ok = X509_VERIFY_PARAM_set1_ip_asc(param, c->server_name);
    } else {
      ok = SSL_set_tlsext_host_name(ssl, c->server_name) &&
           X509_VERIFY_PARAM_set1_host(param, c->server_name, strlen(c->server_name));
    }
  }
  if (!ok) {
    SSL_free(ssl);
    return NULL;
  }
  SSL_set_connect_state(ssl);
  return ssl;
}

/* Opens a new current connection. Failures found here are reported on the
 * next loop iteration, so no user callback runs inside an API call. */
static client_conn *conn_start(mt_grpc_client *c) {
  char why[WHY_MAX];
  client_conn *conn = calloc(1, sizeof(*conn));
  if (conn == NULL) return NULL;
  conn->client = c;
  conn->t.fd = -1;
  ev_init(&conn->phase, on_phase_timer);
  conn->phase.data = conn;
  ev_init(&conn->keepalive, on_keepalive);
  conn->keepalive.data = conn;
  conn->next = c->conns;
  if (c->conns) c->conns->prev = conn;
  c->conns = conn;
  c->current = conn;
  conn->state = CONN_CONNECTING;
  int fd = socket(c->target.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    mt_h2_textf(why, sizeof(why), "socket: %s", strerror(errno));
    defer_failure(conn, why);
    return conn;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  SSL *ssl = ssl_new(c, fd);
  if (ssl == NULL) {
    close(fd);
    defer_failure(conn, "cannot create the TLS session (SSL_new failed)");
    return conn;
  }
  if (!mt_h2_transport_init(&conn->t, c->loop, fd, ssl, on_conn_io, conn)) {
    defer_failure(conn, "out of memory");
    return conn;
  }
  if (connect(fd, (const struct sockaddr *)&c->target, c->target_len) != 0 &&
      errno != EINPROGRESS) {
    mt_h2_textf(why, sizeof(why), "connect to %s: %s", c->target_text, strerror(errno));
    defer_failure(conn, why);
    return conn;
  }
  mt_h2_transport_watch(&conn->t, EV_WRITE);
  ev_timer_set(&conn->phase, c->connect_timeout_ms / (double)MS_PER_SECOND, 0.0);
  ev_timer_start(c->loop, &conn->phase);
  return conn;
}

/* ---- public API ---- */

mt_grpc_client *mt_grpc_client_new(struct ev_loop *loop, const mt_grpc_client_options *options) {
  if (loop == NULL || options == NULL || options->ssl_ctx == NULL || options->target == NULL)
    return NULL;
  mt_grpc_client *c = calloc(1, sizeof(*c));
  if (c == NULL) return NULL;
  c->loop = loop;
  c->ssl_ctx = options->ssl_ctx;
  if (!mt_h2_parse_address(options->target, &c->target, &c->target_len)) {
    free(c);
    return NULL;
  }
  mt_h2_format_address((const struct sockaddr *)&c->target, c->target_text, sizeof(c->target_text));
  c->authority = strdup(options->authority ? options->authority : options->target);
  c->server_name = options->server_name ? strdup(options->server_name) : NULL;
  c->connect_timeout_ms =
      options->connect_timeout_ms > 0 ? options->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
  c->keepalive_interval_ms =
      options->keepalive_interval_ms > 0 ? options->keepalive_interval_ms : 0;
  c->keepalive_timeout_ms = options->keepalive_timeout_ms > 0 ? options->keepalive_timeout_ms
                                                              : DEFAULT_KEEPALIVE_TIMEOUT_MS;
  c->keepalive_without_calls = options->keepalive_without_calls;
  c->max_message_bytes = options->max_message_bytes;
  if (c->authority == NULL || (options->server_name && c->server_name == NULL) ||
      !mt_grpc_metadata_value_valid(c->authority)) {
    destroy(c);
    return NULL;
  }
  return c;
}

static void destroy(mt_grpc_client *c) {
  /* The GOAWAY below runs nghttp2 callbacks: they must not reach the user. */
  c->free_requested = 1;
  c->depth++;
  /* No callback runs here, so the saved next pointers stay valid. */
  for (client_conn *conn = c->conns, *next; conn != NULL; conn = next) {
    next = conn->next;
    if (conn->t.session != NULL) {
      nghttp2_session_terminate_session(conn->t.session, NGHTTP2_NO_ERROR);
      mt_h2_transport_flush_best_effort(&conn->t);
    }
    conn_destroy(conn);
  }
  for (mt_grpc_call *call = c->queued.head, *next; call != NULL; call = next) {
    next = call->next;
    call_free(call);
  }
  free(c->authority);
  free(c->server_name);
  free(c);
}

void mt_grpc_client_free(mt_grpc_client *client) {
  if (client == NULL) return;
  if (client->depth > 0) {
    client->free_requested = 1;
    for (client_conn *conn = client->conns; conn; conn = conn->next) conn->t.stop = 1;
    return;
  }
  destroy(client);
}

int mt_grpc_client_is_connected(const mt_grpc_client *client) {
  return client != NULL && client->current != NULL && client->current->state == CONN_READY &&
         !client->current->goaway;
}

X509 *mt_grpc_client_peer_cert(const mt_grpc_client *client) {
  return mt_grpc_client_is_connected(client) ? client->current->peer_cert : NULL;
}

static int path_valid(const char *path) {
  if (path == NULL || path[0] != '/') return 0;
  for (const unsigned char *p = (const unsigned char *)path; *p; p++)
    if (*p <= 0x20 || *p > 0x7e) return 0;
  return 1;
}

static int metadata_allowed(const mt_grpc_metadata *md) {
  if (!mt_grpc_metadata_name_valid(md->name) || !mt_grpc_metadata_value_valid(md->value)) return 0;
  for (size_t i = 0; i < sizeof(kReservedMetadata) / sizeof(kReservedMetadata[0]); i++)
    if (strcmp(md->name, kReservedMetadata[i]) == 0) return 0;
  return 1;
}

/* One allocation: the call, then path, metadata pairs and the framed body. */
static mt_grpc_call *call_new(mt_grpc_client *c, const char *path, const mt_grpc_metadata *metadata,
                              size_t metadata_count, const uint8_t *request, size_t request_len) {
  size_t path_len = strlen(path) + 1, md_len = 0;
  for (size_t i = 0; i < metadata_count; i++)
    md_len += strlen(metadata[i].name) + 1 + strlen(metadata[i].value) + 1;
  mt_grpc_call *call =
      calloc(1, sizeof(*call) + path_len + md_len + MT_GRPC_PREFIX_BYTES + request_len);
  if (call == NULL) return NULL;
  char *p = (char *)(call + 1);
  memcpy(p, path, path_len);
  call->path = p;
  p += path_len;
  call->metadata = p;
  call->metadata_count = metadata_count;
  for (size_t i = 0; i < metadata_count; i++) {
    size_t n = strlen(metadata[i].name) + 1, v = strlen(metadata[i].value) + 1;
    memcpy(p, metadata[i].name, n);
    memcpy(p + n, metadata[i].value, v);
    p += n + v;
  }
  uint8_t *body = (uint8_t *)p;
  mt_grpc_prefix_encode(body, (uint32_t)request_len);
  if (request_len) memcpy(body + MT_GRPC_PREFIX_BYTES, request, request_len);
  call->body = body;
  call->body_len = MT_GRPC_PREFIX_BYTES + request_len;
  call->client = c;
  call->grpc_status = -1;
  mt_grpc_decoder_init(&call->decoder, c->max_message_bytes);
  ev_init(&call->deadline, on_call_deadline);
  call->deadline.data = call;
  return call;
}

mt_grpc_call *mt_grpc_client_start_call(mt_grpc_client *client, const char *path,
                                        const mt_grpc_metadata *metadata, size_t metadata_count,
                                        const uint8_t *request, size_t request_len,
                                        int64_t deadline_ms, const mt_grpc_call_handlers *handlers,
                                        void *arg) {
  if (client == NULL || client->free_requested || handlers == NULL || !path_valid(path) ||
      (request == NULL && request_len > 0) || (metadata == NULL && metadata_count > 0) ||
      request_len > UINT32_MAX)
    return NULL;
  for (size_t i = 0; i < metadata_count; i++)
    if (!metadata_allowed(&metadata[i])) return NULL;
  mt_grpc_call *call = call_new(client, path, metadata, metadata_count, request, request_len);
  if (call == NULL) return NULL;
  call->handlers = *handlers;
  call->arg = arg;
  if (deadline_ms > 0) {
    double seconds = (double)deadline_ms / MS_PER_SECOND;
    call->deadline_at = ev_now(client->loop) + seconds;
    ev_timer_set(&call->deadline, seconds, 0.0);
    ev_timer_start(client->loop, &call->deadline);
  }
  client_conn *conn = client->current;
  if (conn != NULL && conn->state == CONN_READY) {
    int32_t rv = call_submit(conn, call);
    if (rv >= 0) return call;
    if (rv != NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE) {
      call_free(call);
      return NULL;
    }
    /* Stream IDs are used up: retire the connection like after a GOAWAY. */
    conn->goaway = 1;
    mt_h2_textf(conn->why, sizeof(conn->why), "HTTP/2 stream IDs exhausted");
    client->current = NULL;
  }
  list_push(&client->queued, call);
  call->state = CALL_QUEUED;
  if (client->current == NULL && conn_start(client) == NULL) {
    call_free(call);
    return NULL;
  }
  return call;
}

void mt_grpc_call_cancel(mt_grpc_call *call) {
  if (call == NULL || call->state == CALL_DONE) return;
  call->state = CALL_DONE;
  ev_timer_stop(call->client->loop, &call->deadline);
  call_stop_stream(call, NGHTTP2_CANCEL);
  if (call->conn == NULL)
    call_free(call);
  else
    call_release(call);
}
