/* client_call.c: one gRPC call on the client side: its memory, its request
 * (HEADERS with the gRPC headers, DATA from a data provider), and the
 * nghttp2 callbacks that turn response HEADERS, DATA and trailers into the
 * user's on_message / on_close. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/client_internal.h"

enum {
  HTTP_OK = 200,
  HTTP_INFORMATIONAL_MIN = 100,
  HTTP_INFORMATIONAL_END = 200,
  /* :method :scheme :path :authority content-type te user-agent grpc-timeout */
  FIXED_REQUEST_HEADERS = 8,
  GRPC_STATUS_MAX_DIGITS = 3,
  DEBUG_DATA_SHOWN_MAX = 100,
  /* 64 KiB of response headers per call is plenty for grpc-status and
   * grpc-message; advertised so servers do not send more. */
  MAX_HEADER_LIST_BYTES = 64 * 1024,
};

static const char kUserAgent[] = "mtlsd/0.1";

/* ---- lists and memory ---- */

static void on_call_deadline(struct ev_loop *loop, ev_timer *w, int revents);

void mt_cli_list_push(mt_cli_call_list *list, mt_grpc_call *call) {
  call->list = list;
  call->prev = NULL;
  call->next = list->head;
  if (list->head) list->head->prev = call;
  list->head = call;
}

void mt_cli_list_remove(mt_grpc_call *call) {
  if (call->list == NULL) return;
  if (call->prev) call->prev->next = call->next;
  if (call->next) call->next->prev = call->prev;
  if (call->list->head == call) call->list->head = call->next;
  call->list = NULL;
  call->prev = call->next = NULL;
}

void mt_cli_call_free(mt_grpc_call *call) {
  mt_cli_list_remove(call);
  ev_timer_stop(call->client->loop, &call->deadline);
  mt_grpc_decoder_dispose(&call->decoder);
  free(call->grpc_message);
  free(call);
}

/* One allocation: the call, then path, metadata pairs and the framed body. */
mt_grpc_call *mt_cli_call_new(mt_grpc_client *c, const char *path, const mt_grpc_metadata *metadata,
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

/* Ends the call for the user: on_close runs unless the client is being freed. */
void mt_cli_call_complete(mt_grpc_call *call, mt_grpc_status status, const char *message) {
  if (call->state == MT_CLI_CALL_DONE) return;
  mt_grpc_client *c = call->client;
  call->state = MT_CLI_CALL_DONE;
  ev_timer_stop(c->loop, &call->deadline);
  if (!c->free_requested && call->handlers.on_close)
    call->handlers.on_close(call->arg, status, message ? message : "");
}

/* Frees a finished call once nghttp2 has let go of its stream. */
void mt_cli_call_release(mt_grpc_call *call) {
  if (call->state == MT_CLI_CALL_DONE && !call->stream_live) mt_cli_call_free(call);
}

/* Tells the server to stop the call's stream. Before its HEADERS left, the
 * before-send callback drops them instead (nghttp2 forbids frames on a
 * stream before then). */
void mt_cli_call_stop_stream(mt_grpc_call *call, uint32_t h2_error) {
  mt_cli_conn *conn = call->conn;
  if (conn == NULL || !call->stream_live) return;
  if (call->headers_sent)
    nghttp2_submit_rst_stream(conn->t.session, NGHTTP2_FLAG_NONE, call->stream_id, h2_error);
  mt_h2_transport_want_write(&conn->t);
}

/* Ends a call on our side: stream stopped, user told, memory released. */
static void call_abort(mt_grpc_call *call, mt_grpc_status status, const char *message) {
  mt_cli_call_stop_stream(call, NGHTTP2_CANCEL);
  mt_cli_call_complete(call, status, message);
  if (call->conn == NULL)
    mt_cli_call_free(call);
  else
    mt_cli_call_release(call);
}

static void on_call_deadline(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  mt_grpc_call *call = w->data;
  mt_grpc_client *c = call->client;
  mt_cli_enter(c);
  if (!c->free_requested && call->state != MT_CLI_CALL_DONE)
    call_abort(call, MT_GRPC_DEADLINE_EXCEEDED, "deadline exceeded");
  mt_cli_leave(c);
}

/* ---- the request ---- */

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
int32_t mt_cli_call_submit(mt_cli_conn *conn, mt_grpc_call *call) {
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
    double left_ms = (call->deadline_at - ev_now(c->loop)) * MT_CLI_MS_PER_SECOND;
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
  call->state = MT_CLI_CALL_ACTIVE;
  mt_cli_list_push(&conn->calls, call);
  mt_h2_transport_want_write(&conn->t);
  return id;
}

/* ---- nghttp2 callbacks (user_data is the connection) ---- */

static ssize_t on_send(nghttp2_session *session, const uint8_t *data, size_t length, int flags,
                       void *user_data) {
  (void)session;
  (void)flags;
  mt_cli_conn *conn = user_data;
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
  if (call == NULL || call->state != MT_CLI_CALL_ACTIVE) return 0;
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
  mt_cli_call_stop_stream(call, NGHTTP2_CANCEL);
  mt_cli_call_complete(call, status, message);
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
static void on_response_end(mt_cli_conn *conn, mt_grpc_call *call) {
  char message[64];
  if (call->state != MT_CLI_CALL_ACTIVE) return;
  if (mt_grpc_decoder_in_message(&call->decoder)) {
    call_fail_stream(call, MT_GRPC_INTERNAL, "response ended in the middle of a message");
  } else if (call->grpc_status >= 0) {
    mt_cli_call_complete(call, (mt_grpc_status)call->grpc_status, call->grpc_message);
  } else if (call->http_status != HTTP_OK) {
    mt_h2_textf(message, sizeof(message), "HTTP status %d from server", call->http_status);
    mt_cli_call_complete(call, mt_grpc_status_from_http(call->http_status), message);
  } else {
    mt_cli_call_complete(call, MT_GRPC_UNKNOWN, "response ended without grpc-status");
  }
  /* The server is done; if our request is still going out, stop it. */
  if (call->stream_live && call->headers_sent &&
      !nghttp2_session_get_stream_local_close(conn->t.session, call->stream_id)) {
    nghttp2_submit_rst_stream(conn->t.session, NGHTTP2_FLAG_NONE, call->stream_id,
                              NGHTTP2_NO_ERROR);
    mt_h2_transport_want_write(&conn->t);
  }
}

static void on_goaway(mt_cli_conn *conn, const nghttp2_goaway *goaway) {
  mt_grpc_client *c = conn->client;
  size_t shown = goaway->opaque_data_len < DEBUG_DATA_SHOWN_MAX ? goaway->opaque_data_len
                                                                : DEBUG_DATA_SHOWN_MAX;
  conn->goaway = 1;
  mt_h2_textf(conn->why, sizeof(conn->why), "server %s sent GOAWAY (%s%s%.*s)", conn->peer_text,
              mt_h2_error_name(goaway->error_code), shown ? ": " : "", (int)shown,
              (const char *)goaway->opaque_data);
  if (c->current == conn) c->current = NULL; /* new calls get a new connection */
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  mt_cli_conn *conn = user_data;
  mt_grpc_client *c = conn->client;
  mt_grpc_call *call = NULL;
  switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
      call = stream_call(session, frame->hd.stream_id);
      if (call == NULL) break;
      if (frame->headers.cat == NGHTTP2_HCAT_RESPONSE && call->state == MT_CLI_CALL_ACTIVE)
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
  mt_cli_conn *conn = user_data;
  mt_grpc_call *call = stream_call(session, stream_id);
  if (call == NULL) return 0;
  CBS in;
  CBS_init(&in, data, len);
  while (call->state == MT_CLI_CALL_ACTIVE && !conn->client->free_requested) {
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
  mt_cli_conn *conn = user_data;
  mt_grpc_call *call = stream_call(session, stream_id);
  if (call == NULL) return 0;
  call->stream_live = 0;
  if (call->state != MT_CLI_CALL_DONE) {
    char message[MT_CLI_WHY_MAX];
    if (call->grpc_status >= 0) {
      mt_cli_call_complete(call, (mt_grpc_status)call->grpc_status, call->grpc_message);
    } else if (error_code == NGHTTP2_REFUSED_STREAM && conn->goaway) {
      mt_h2_textf(message, sizeof(message), "call refused: %s", conn->why);
      mt_cli_call_complete(call, MT_GRPC_UNAVAILABLE, message);
    } else if (error_code != NGHTTP2_NO_ERROR) {
      mt_h2_textf(message, sizeof(message), "stream reset by server (%s)",
                  mt_h2_error_name(error_code));
      mt_cli_call_complete(call, mt_grpc_status_from_h2_error(error_code), message);
    } else {
      mt_cli_call_complete(call, MT_GRPC_UNKNOWN, "stream closed without grpc-status");
    }
  }
  mt_cli_call_release(call);
  return 0;
}

/* A cancelled call's HEADERS never leave; otherwise note that they did. */
static int before_frame_send(nghttp2_session *session, const nghttp2_frame *frame,
                             void *user_data) {
  (void)user_data;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  mt_grpc_call *call = stream_call(session, frame->hd.stream_id);
  if (call == NULL) return 0;
  if (call->state == MT_CLI_CALL_DONE) return NGHTTP2_ERR_CANCEL;
  call->headers_sent = 1;
  return 0;
}

static mt_grpc_call *find_call(mt_cli_conn *conn, int32_t stream_id) {
  for (mt_grpc_call *call = conn->calls.head; call; call = call->next)
    if (call->stream_id == stream_id) return call;
  return NULL;
}

/* Request HEADERS that never left (cancelled, or the session is going
 * away). If nghttp2 has no stream for them, no close callback will follow,
 * so the call ends here. */
static int on_frame_not_send(nghttp2_session *session, const nghttp2_frame *frame, int lib_error,
                             void *user_data) {
  mt_cli_conn *conn = user_data;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  mt_grpc_call *call = find_call(conn, frame->hd.stream_id);
  if (call == NULL || stream_call(session, frame->hd.stream_id) != NULL) return 0;
  call->stream_live = 0;
  if (call->state != MT_CLI_CALL_DONE) {
    char message[MT_CLI_WHY_MAX];
    mt_h2_textf(message, sizeof(message), "request not sent: %s",
                conn->goaway ? conn->why : nghttp2_strerror(lib_error));
    mt_cli_call_complete(call, MT_GRPC_UNAVAILABLE, message);
  }
  mt_cli_call_release(call);
  return 0;
}

nghttp2_session *mt_cli_session_new(mt_cli_conn *conn) {
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
