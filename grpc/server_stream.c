/* server_stream.c: one gRPC call on the server side. The nghttp2 session
 * callbacks collect a request's headers and its message, validate them,
 * route the call to its handler, and feed the handler's replies to nghttp2
 * through a data provider (so HTTP/2 flow control paces them) followed by
 * trailers. Requests the server refuses get a trailers-only response. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/server_internal.h"

enum {
  HTTP_OK = 200,
  HTTP_METHOD_NOT_ALLOWED = 405,
  HTTP_UNSUPPORTED_MEDIA_TYPE = 415,
  /* RFC 9113 6.5.2: a header list's size counts 32 bytes per field. */
  HEADER_FIELD_OVERHEAD_BYTES = 32,
  ARENA_INITIAL_BYTES = 512,
  HEADERS_INITIAL_COUNT = 8,
  STATUS_TEXT_MAX = 12,
  MESSAGE_TEXT_MAX = 256,
  /* :status content-type grpc-status grpc-message */
  RESPONSE_HEADERS_MAX = 4,
};

/* Request headers that belong to the transport, not to the application. */
static const char *const kTransportHeaders[] = {
    "te", "content-type", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding",
};

static void on_stream_deadline(struct ev_loop *loop, ev_timer *w, int revents);

static nghttp2_nv make_nv(const char *name, const char *value) {
  nghttp2_nv nv = {(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value),
                   NGHTTP2_NV_FLAG_NONE};
  return nv;
}

static int name_is(const uint8_t *name, size_t len, const char *literal) {
  return len == strlen(literal) && memcmp(name, literal, len) == 0;
}

static mt_grpc_stream *stream_of(nghttp2_session *session, int32_t stream_id) {
  return nghttp2_session_get_stream_user_data(session, stream_id);
}

static void stream_unlink(mt_grpc_stream *s) {
  mt_srv_conn *conn = s->conn;
  if (s->prev) s->prev->next = s->next;
  if (s->next) s->next->prev = s->prev;
  if (conn->streams == s) conn->streams = s->next;
  s->prev = s->next = NULL;
  conn->stream_count--;
}

static void stream_free(mt_grpc_stream *s) {
  ev_timer_stop(s->conn->server->loop, &s->deadline);
  while (s->queue_head) {
    mt_srv_chunk *next = s->queue_head->next;
    free(s->queue_head);
    s->queue_head = next;
  }
  mt_grpc_decoder_dispose(&s->decoder);
  free(s->arena);
  free(s->headers);
  free(s->message);
  free(s->metadata);
  free(s->final_message);
  free(s);
}

/* ---- request headers ---- */

/* Grows |*buf| (|*cap| elements of |size|) to hold |need|. */
static int grow(void **buf, size_t *cap, size_t need, size_t size, size_t initial) {
  if (need <= *cap) return 1;
  size_t n = *cap ? *cap : initial;
  while (n < need) n *= 2;
  void *p = realloc(*buf, n * size);
  if (p == NULL) return 0;
  *buf = p;
  *cap = n;
  return 1;
}

/* Copies one header into the stream's arena. */
static int store_header(mt_grpc_stream *s, const uint8_t *name, size_t nlen, const uint8_t *value,
                        size_t vlen) {
  size_t need = s->arena_len + nlen + 1 + vlen + 1;
  if (!grow((void **)&s->arena, &s->arena_cap, need, 1, ARENA_INITIAL_BYTES) ||
      !grow((void **)&s->headers, &s->header_cap, s->header_count + 1, sizeof(mt_srv_header),
            HEADERS_INITIAL_COUNT))
    return 0;
  mt_srv_header *h = &s->headers[s->header_count++];
  h->name = (uint32_t)s->arena_len;
  memcpy(s->arena + s->arena_len, name, nlen);
  s->arena[s->arena_len + nlen] = '\0';
  h->value = (uint32_t)(s->arena_len + nlen + 1);
  memcpy(s->arena + h->value, value, vlen);
  s->arena[h->value + vlen] = '\0';
  s->arena_len = need;
  return 1;
}

static int is_transport_header(const uint8_t *name, size_t len) {
  for (size_t i = 0; i < sizeof(kTransportHeaders) / sizeof(kTransportHeaders[0]); i++)
    if (name_is(name, len, kTransportHeaders[i])) return 1;
  return 0;
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  mt_srv_conn *conn = user_data;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  mt_grpc_stream *s = calloc(1, sizeof(*s));
  if (s == NULL) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* the stream is reset */
  s->conn = conn;
  s->id = frame->hd.stream_id;
  s->path_index = -1;
  s->timeout_ms = -1;
  mt_grpc_decoder_init(&s->decoder, conn->server->max_message_bytes);
  ev_init(&s->deadline, on_stream_deadline);
  s->deadline.data = s;
  s->next = conn->streams;
  if (conn->streams) conn->streams->prev = s;
  conn->streams = s;
  conn->stream_count++;
  nghttp2_session_set_stream_user_data(session, s->id, s);
  return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data) {
  (void)flags;
  mt_srv_conn *conn = user_data;
  /* Only the request's header block; trailers from a client carry nothing
   * a unary or server-streaming call needs. */
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  mt_grpc_stream *s = stream_of(session, frame->hd.stream_id);
  if (s == NULL || s->headers_too_large) return 0;
  s->header_bytes += namelen + valuelen + HEADER_FIELD_OVERHEAD_BYTES;
  if (s->header_bytes > conn->server->max_metadata_bytes) {
    s->headers_too_large = 1;
    return 0;
  }
  if (name_is(name, namelen, ":method")) {
    s->method_post = name_is(value, valuelen, "POST");
  } else if (name_is(name, namelen, ":path")) {
    s->path_index = (int)s->header_count;
    if (!store_header(s, name, namelen, value, valuelen)) s->headers_too_large = 1;
  } else if (namelen > 0 && name[0] == ':') {
    /* :scheme and :authority: nghttp2 has validated them; nothing to keep. */
  } else if (name_is(name, namelen, "content-type")) {
    s->content_type_ok = mt_grpc_content_type_valid((const char *)value, valuelen);
  } else if (name_is(name, namelen, "grpc-timeout")) {
    s->bad_timeout = !mt_grpc_timeout_parse((const char *)value, valuelen, &s->timeout_ms);
  } else if (name_is(name, namelen, "grpc-encoding")) {
    s->bad_encoding = !name_is(value, valuelen, "identity");
  } else if (!is_transport_header(name, namelen)) {
    if (!store_header(s, name, namelen, value, valuelen)) s->headers_too_large = 1;
  }
  return 0;
}

/* ---- responses ---- */

static void want_write(mt_grpc_stream *s) { mt_h2_transport_want_write(&s->conn->t); }

/* Percent-encodes |message| into a new string ("" for NULL). */
static char *encode_message(const char *message) {
  if (message == NULL) message = "";
  size_t len = strlen(message);
  size_t cap = mt_grpc_percent_encoded_len(message, len) + 1;
  char *out = malloc(cap);
  if (out != NULL) mt_grpc_percent_encode(message, len, out, cap);
  return out;
}

/* HEADERS with END_STREAM carrying the status: for refusals, and for calls
 * finished before any message. */
static int respond_trailers_only(mt_grpc_stream *s, int http_status, mt_grpc_status status,
                                 const char *encoded_message) {
  char http_text[STATUS_TEXT_MAX], status_text[STATUS_TEXT_MAX];
  snprintf(http_text, sizeof(http_text), "%d", http_status);
  snprintf(status_text, sizeof(status_text), "%d", (int)status);
  nghttp2_nv nva[RESPONSE_HEADERS_MAX];
  size_t n = 0;
  nva[n++] = make_nv(":status", http_text);
  nva[n++] = make_nv("content-type", "application/grpc");
  nva[n++] = make_nv("grpc-status", status_text);
  if (encoded_message && encoded_message[0]) nva[n++] = make_nv("grpc-message", encoded_message);
  s->headers_submitted = 1;
  int rv = nghttp2_submit_response(s->conn->t.session, s->id, nva, n, NULL);
  want_write(s);
  return rv == 0;
}

static const char *stream_path(const mt_grpc_stream *s) {
  return s->path_index < 0 ? NULL : s->arena + s->headers[s->path_index].value;
}

/* Refuses a request that has not been dispatched, and tells the application
 * (on_call_refused) once the response is queued. If the client is still
 * sending, RST_STREAM(NO_ERROR) once the response has left tells it to stop
 * (see on_frame_send: queued any earlier, it would cancel the response).
 * Runs inside nghttp2 callbacks, within mt_srv_enter/leave: the application
 * may free the server from its hook. */
static void reject(mt_grpc_stream *s, int http_status, mt_grpc_status status, const char *message) {
  mt_grpc_server *server = s->conn->server;
  char *encoded = encode_message(message);
  s->state = MT_SRV_STREAM_RESPONDED;
  mt_grpc_decoder_dispose(&s->decoder);
  s->reset_after_response = !s->client_done;
  if (!respond_trailers_only(s, http_status, status, encoded))
    nghttp2_submit_rst_stream(s->conn->t.session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
  free(encoded);
  if (server->on_call_refused != NULL && !server->free_requested) {
    const char *path = stream_path(s);
    server->on_call_refused(server->on_call_refused_arg, s->conn->peer_text, path ? path : "",
                            status, message ? message : "");
  }
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  (void)user_data;
  if (frame->hd.type != NGHTTP2_HEADERS || !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) return 0;
  mt_grpc_stream *s = stream_of(session, frame->hd.stream_id);
  if (s != NULL && s->reset_after_response &&
      nghttp2_session_get_stream_remote_close(session, s->id) == 0)
    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
  return 0;
}

static int submit_trailers(nghttp2_session *session, mt_grpc_stream *s) {
  char status_text[STATUS_TEXT_MAX];
  snprintf(status_text, sizeof(status_text), "%d", (int)s->final_status);
  nghttp2_nv nva[2];
  size_t n = 0;
  nva[n++] = make_nv("grpc-status", status_text);
  if (s->final_message && s->final_message[0]) nva[n++] = make_nv("grpc-message", s->final_message);
  return nghttp2_submit_trailer(session, s->id, nva, n) == 0;
}

/* nghttp2 asks for response DATA: hand it queued messages; when the queue
 * is empty, either end with trailers (finished) or wait for more. */
static ssize_t read_response(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                             size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                             void *user_data) {
  (void)stream_id;
  (void)user_data;
  mt_grpc_stream *s = source->ptr;
  size_t n = 0;
  while (n < length && s->queue_head) {
    mt_srv_chunk *c = s->queue_head;
    size_t take = c->len - c->off < length - n ? c->len - c->off : length - n;
    memcpy(buf + n, c->data + c->off, take);
    c->off += take;
    n += take;
    if (c->off == c->len) {
      s->queue_head = c->next;
      if (s->queue_head == NULL) s->queue_tail = NULL;
      free(c);
    }
  }
  s->queued_bytes -= n;
  if (s->queue_head == NULL && s->finish_pending) {
    s->finish_pending = 0;
    *data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    if (!submit_trailers(session, s)) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return (ssize_t)n;
  }
  if (n == 0) {
    s->data_deferred = 1;
    return NGHTTP2_ERR_DEFERRED;
  }
  return (ssize_t)n;
}

/* Makes sure nghttp2 will pull from the queue: the response HEADERS with a
 * data provider the first time, a resume after it ran dry. */
static int start_or_resume_data(mt_grpc_stream *s) {
  nghttp2_session *session = s->conn->t.session;
  if (!s->headers_submitted) {
    nghttp2_nv nva[2] = {make_nv(":status", "200"), make_nv("content-type", "application/grpc")};
    nghttp2_data_provider provider;
    provider.source.ptr = s;
    provider.read_callback = read_response;
    if (nghttp2_submit_response(session, s->id, nva, 2, &provider) != 0) return 0;
    s->headers_submitted = 1;
  } else if (s->data_deferred) {
    s->data_deferred = 0;
    if (nghttp2_session_resume_data(session, s->id) != 0) return 0;
  }
  want_write(s);
  return 1;
}

/* ---- dispatch ---- */

static void on_stream_deadline(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  mt_grpc_stream *s = w->data;
  mt_grpc_server *server = s->conn->server;
  mt_srv_enter(server);
  if (s->state == MT_SRV_STREAM_DISPATCHED && !server->free_requested) {
    nghttp2_submit_rst_stream(s->conn->t.session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
    want_write(s);
    s->state = MT_SRV_STREAM_ABANDONED; /* freed when nghttp2 closes the stream */
    if (s->on_closed) s->on_closed(s->on_closed_arg, MT_GRPC_DEADLINE_EXCEEDED);
  }
  mt_srv_leave(server);
}

static const mt_srv_route *find_route(const mt_grpc_server *server, const char *path) {
  for (const mt_srv_route *r = server->routes; r; r = r->next)
    if (strcmp(r->path, path) == 0) return r;
  return NULL;
}

/* The header block is complete: refuse what is not a gRPC call we serve. */
static void on_request_headers(mt_grpc_stream *s) {
  char message[MESSAGE_TEXT_MAX];
  const char *path = stream_path(s);
  if (!s->method_post) {
    reject(s, HTTP_METHOD_NOT_ALLOWED, MT_GRPC_INTERNAL, "gRPC requires the POST method");
  } else if (!s->content_type_ok) {
    reject(s, HTTP_UNSUPPORTED_MEDIA_TYPE, MT_GRPC_INTERNAL,
           "content-type must be application/grpc");
  } else if (s->headers_too_large) {
    snprintf(message, sizeof(message), "request headers exceed %zu bytes",
             s->conn->server->max_metadata_bytes);
    reject(s, HTTP_OK, MT_GRPC_RESOURCE_EXHAUSTED, message);
  } else if (s->bad_timeout) {
    reject(s, HTTP_OK, MT_GRPC_INTERNAL, "malformed grpc-timeout");
  } else if (s->bad_encoding) {
    reject(s, HTTP_OK, MT_GRPC_UNIMPLEMENTED, "compressed requests are not supported");
  } else if (path == NULL) {
    reject(s, HTTP_OK, MT_GRPC_INTERNAL, "missing :path");
  } else if ((s->route = find_route(s->conn->server, path)) == NULL) {
    snprintf(message, sizeof(message), "unknown method %.200s", path);
    reject(s, HTTP_OK, MT_GRPC_UNIMPLEMENTED, message);
  }
}

static int build_request(mt_grpc_stream *s) {
  mt_srv_conn *conn = s->conn;
  s->metadata = calloc(s->header_count ? s->header_count : 1, sizeof(*s->metadata));
  if (s->metadata == NULL) return 0;
  size_t n = 0;
  for (size_t i = 0; i < s->header_count; i++) {
    const char *name = s->arena + s->headers[i].name;
    if (name[0] == ':') continue;
    s->metadata[n].name = name;
    s->metadata[n].value = s->arena + s->headers[i].value;
    n++;
  }
  mt_grpc_request *req = &s->req;
  req->path = stream_path(s);
  req->metadata = s->metadata;
  req->metadata_count = n;
  req->message = s->message;
  req->message_len = s->message_len;
  req->timeout_ms = s->timeout_ms;
  req->peer_cert = conn->peer_cert;
  req->peer_chain = conn->peer_chain;
  req->ssl = conn->t.ssl;
  req->peer_addr = (const struct sockaddr *)&conn->peer;
  req->peer_address = conn->peer_text;
  req->peer_cred = conn->has_cred ? &conn->cred : NULL;
  req->peer_key = conn->peer_key;
  return 1;
}

/* The request is complete: hand the call to its handler. */
static void dispatch(mt_grpc_stream *s) {
  mt_grpc_server *server = s->conn->server;
  if (!build_request(s)) {
    reject(s, HTTP_OK, MT_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  mt_grpc_decoder_dispose(&s->decoder);
  s->state = MT_SRV_STREAM_DISPATCHED;
  if (s->timeout_ms >= 0) {
    ev_timer_set(&s->deadline, (double)s->timeout_ms / 1000.0, 0.0);
    ev_timer_start(server->loop, &s->deadline);
  }
  s->route->on_call(s->route->arg, s, &s->req);
}

/* The client half-closed: exactly one message must have arrived. */
static void on_request_end(mt_grpc_stream *s) {
  if (s->state != MT_SRV_STREAM_READING || s->route == NULL) return;
  if (mt_grpc_decoder_in_message(&s->decoder))
    reject(s, HTTP_OK, MT_GRPC_INTERNAL, "request ended in the middle of a message");
  else if (!s->have_message)
    reject(s, HTTP_OK, MT_GRPC_INTERNAL, "request carried no message");
  else if (!s->conn->server->free_requested)
    dispatch(s);
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  (void)user_data;
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
  mt_grpc_stream *s = stream_of(session, frame->hd.stream_id);
  if (s == NULL) return 0;
  if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) s->client_done = 1;
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST &&
      s->state == MT_SRV_STREAM_READING)
    on_request_headers(s);
  if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) on_request_end(s);
  return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                         const uint8_t *data, size_t len, void *user_data) {
  (void)flags;
  (void)user_data;
  mt_grpc_stream *s = stream_of(session, stream_id);
  CBS in;
  CBS_init(&in, data, len);
  while (s != NULL && s->state == MT_SRV_STREAM_READING) {
    const uint8_t *msg = NULL;
    size_t msg_len = 0;
    mt_grpc_decode_result r = mt_grpc_decoder_next(&s->decoder, &in, &msg, &msg_len);
    if (r == MT_GRPC_DECODE_NEED_MORE) break;
    if (r == MT_GRPC_DECODE_ERROR) {
      const char *why = NULL;
      mt_grpc_status status = mt_grpc_decoder_error(&s->decoder, &why);
      reject(s, HTTP_OK, status, why);
      break;
    }
    if (s->have_message) {
      reject(s, HTTP_OK, MT_GRPC_UNIMPLEMENTED,
             "more than one request message (client streaming is not supported)");
      break;
    }
    s->message = malloc(msg_len ? msg_len : 1);
    if (s->message == NULL) {
      reject(s, HTTP_OK, MT_GRPC_RESOURCE_EXHAUSTED, "out of memory for the request message");
      break;
    }
    memcpy(s->message, msg, msg_len);
    s->message_len = msg_len;
    s->have_message = 1;
  }
  return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user_data) {
  (void)error_code;
  mt_srv_conn *conn = user_data;
  mt_grpc_stream *s = stream_of(session, stream_id);
  if (s == NULL) return 0;
  stream_unlink(s);
  conn->t.last_activity = ev_now(conn->server->loop);
  if (s->state == MT_SRV_STREAM_DISPATCHED) {
    /* The handler had not finished: the client cancelled or reset it. */
    s->state = MT_SRV_STREAM_ABANDONED;
    if (s->on_closed) s->on_closed(s->on_closed_arg, MT_GRPC_CANCELLED);
  }
  stream_free(s);
  return 0;
}

static ssize_t on_send(nghttp2_session *session, const uint8_t *data, size_t length, int flags,
                       void *user_data) {
  (void)session;
  (void)flags;
  mt_srv_conn *conn = user_data;
  return mt_h2_transport_buffer(&conn->t, data, length);
}

nghttp2_session *mt_srv_session_new(mt_srv_conn *conn) {
  mt_grpc_server *server = conn->server;
  nghttp2_session_callbacks *cbs = NULL;
  nghttp2_session *session = NULL;
  if (nghttp2_session_callbacks_new(&cbs) != 0) return NULL;
  nghttp2_session_callbacks_set_send_callback(cbs, on_send);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
  int rv = nghttp2_session_server_new(&session, cbs, conn);
  nghttp2_session_callbacks_del(cbs);
  if (rv != 0) return NULL;
  nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, server->max_concurrent_streams},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)server->max_metadata_bytes},
  };
  if (nghttp2_submit_settings(session, NGHTTP2_FLAG_NONE, settings,
                              sizeof(settings) / sizeof(settings[0])) != 0) {
    nghttp2_session_del(session);
    return NULL;
  }
  return session;
}

void mt_srv_conn_end_streams(mt_srv_conn *conn, mt_grpc_status why) {
  /* Mark first: a handler told about one stream may touch another. */
  for (mt_grpc_stream *s = conn->streams; s; s = s->next) {
    s->notify_closed = s->state == MT_SRV_STREAM_DISPATCHED;
    s->state = MT_SRV_STREAM_ABANDONED;
  }
  /* Handlers can only queue frames here (the session is gone), never free a
   * stream, so the saved next pointer stays valid. */
  for (mt_grpc_stream *s = conn->streams, *next; s != NULL; s = next) {
    next = s->next;
    stream_unlink(s);
    if (s->notify_closed && s->on_closed) s->on_closed(s->on_closed_arg, why);
    stream_free(s);
  }
}

/* ---- handler API ---- */

mt_grpc_send_result mt_grpc_stream_send(mt_grpc_stream *stream, const uint8_t *msg, size_t len) {
  if (stream == NULL || stream->state != MT_SRV_STREAM_DISPATCHED || stream->finish_pending)
    return MT_GRPC_SEND_FINISHED;
  if (len > UINT32_MAX || (msg == NULL && len > 0)) return MT_GRPC_SEND_TOO_LARGE;
  size_t framed = MT_GRPC_PREFIX_BYTES + len;
  if (stream->queued_bytes + framed > stream->conn->server->max_send_queue_bytes)
    return MT_GRPC_SEND_QUEUE_FULL;
  mt_srv_chunk *c = malloc(sizeof(*c) + framed);
  if (c == NULL) return MT_GRPC_SEND_NO_MEMORY;
  c->next = NULL;
  c->len = framed;
  c->off = 0;
  mt_grpc_prefix_encode(c->data, (uint32_t)len);
  if (len) memcpy(c->data + MT_GRPC_PREFIX_BYTES, msg, len);
  if (stream->queue_tail)
    stream->queue_tail->next = c;
  else
    stream->queue_head = c;
  stream->queue_tail = c;
  stream->queued_bytes += framed;
  return start_or_resume_data(stream) ? MT_GRPC_SEND_OK : MT_GRPC_SEND_NO_MEMORY;
}

size_t mt_grpc_stream_queued_bytes(const mt_grpc_stream *stream) {
  return stream ? stream->queued_bytes : 0;
}

int mt_grpc_stream_finish(mt_grpc_stream *stream, mt_grpc_status status, const char *message) {
  if (stream == NULL || stream->state != MT_SRV_STREAM_DISPATCHED) return 0;
  ev_timer_stop(stream->conn->server->loop, &stream->deadline);
  stream->state = MT_SRV_STREAM_RESPONDED;
  stream->final_status = status;
  stream->final_message = encode_message(message);
  if (!stream->headers_submitted) {
    if (!respond_trailers_only(stream, HTTP_OK, status, stream->final_message))
      nghttp2_submit_rst_stream(stream->conn->t.session, NGHTTP2_FLAG_NONE, stream->id,
                                NGHTTP2_INTERNAL_ERROR);
    return 1;
  }
  stream->finish_pending = 1;
  if (!start_or_resume_data(stream))
    nghttp2_submit_rst_stream(stream->conn->t.session, NGHTTP2_FLAG_NONE, stream->id,
                              NGHTTP2_INTERNAL_ERROR);
  return 1;
}

void mt_grpc_stream_set_on_closed(mt_grpc_stream *stream,
                                  void (*on_closed)(void *arg, mt_grpc_status why), void *arg) {
  if (stream == NULL) return;
  stream->on_closed = on_closed;
  stream->on_closed_arg = arg;
}

const mt_grpc_request *mt_grpc_stream_request(const mt_grpc_stream *stream) {
  return stream ? &stream->req : NULL;
}

const char *mt_grpc_request_metadata(const mt_grpc_request *req, const char *name) {
  if (req == NULL || name == NULL) return NULL;
  for (size_t i = 0; i < req->metadata_count; i++)
    if (strcmp(req->metadata[i].name, name) == 0) return req->metadata[i].value;
  return NULL;
}
