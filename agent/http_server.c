/* http_server.c: listener, connections and answers on one libev loop.
 *
 * A connection is a small state machine:
 *   READING    bytes gathered until http_request.h says the head is complete
 *              (or wrong); the handler answers at once
 *   WRITING    the answer goes out; reading waits (pipelined bytes stay
 *              buffered)
 *   LINGERING  after an answer that closes the connection: our side is shut
 *              for writing and what the client still sends is read and
 *              dropped until it closes, so the answer is not lost to a
 *              reset (bounded in bytes and time)
 * Each connection is one allocation, freed in conn_close only. */
#include "agent/http_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "agent/log.h"
#include "agent/low_fds.h"

enum {
  LISTEN_BACKLOG = 64,
  LOG_BURST = 10,               /* refusal log lines per second, per server */
  LINGER_MAX_BYTES = 64 * 1024, /* read and dropped after a closing answer */
  HEAD_OUT_MAX = 512,           /* the status line and headers we write */
  TEXT_BODY_MAX = 256,          /* the server's own refusal bodies */
  LOW_FDS = 4,                  /* connections kept on low descriptor numbers */
};
static const double kLingerTimeoutS = 2.0;
static const double kAcceptPauseS = 1.0; /* out of descriptors: stop accepting this long */

const int mt_http_refusal_status[MT_HTTP_NUM_REFUSALS] = {400, 408, 411, 413, 414, 417,
                                                          431, 500, 501, 503, 505};

typedef enum { CONN_READING, CONN_WRITING, CONN_LINGERING } conn_state;

typedef struct conn conn;

struct mt_http_exchange {
  conn *c;
  const mt_http_request *req;
  int answered;
};

struct conn {
  mt_http_server *server;
  conn *prev, *next;
  int fd;
  conn_state state;
  ev_io io;
  ev_timer timer;
  int request_timer_armed; /* the timer counts the request timeout, not idleness */
  uint8_t in[MT_HTTP_MAX_HEAD_BYTES];
  size_t in_len;
  char *out;
  size_t out_len, out_sent;
  int close_after;
  size_t lingered;
  mt_http_sent_cb on_sent;
  void *on_sent_arg;
};

struct mt_http_server {
  struct ev_loop *loop;
  mt_http_limits limits;
  mt_http_handler handler;
  void *arg;
  int fd;
  ev_io accept_io;
  ev_timer accept_pause; /* accept failed for want of resources */
  conn *conns;
  mt_low_fds *low_fds; /* connections on low descriptor numbers (low_fds.h) */
  mt_http_server_stats stats;
  char name[64]; /* the bound address, for log lines */
  ev_tstamp log_window;
  unsigned logged_in_window;
  uint64_t log_suppressed;
};

static void on_conn_io(struct ev_loop *loop, ev_io *w, int revents);
static void process(conn *c);

/* ---- small helpers ---- */

static const char *reason_phrase(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 417: return "Expectation Failed";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

static void count_refusal(mt_http_server *s, int status) {
  for (size_t i = 0; i < MT_HTTP_NUM_REFUSALS; i++)
    if (mt_http_refusal_status[i] == status) s->stats.refused[i]++;
}

/* A warning per refusal, at most LOG_BURST a second: a hostile client must
 * not be able to flood the log. */
static void log_refusal(mt_http_server *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void log_refusal(mt_http_server *s, const char *fmt, ...) {
  ev_tstamp now = ev_now(s->loop);
  if (now - s->log_window >= 1.0) {
    if (s->log_suppressed > 0)
      MT_LOG_W("admin %s: %llu more refused requests not logged", s->name,
               (unsigned long long)s->log_suppressed);
    s->log_window = now;
    s->logged_in_window = 0;
    s->log_suppressed = 0;
  }
  if (s->logged_in_window >= LOG_BURST) {
    s->log_suppressed++;
    return;
  }
  s->logged_in_window++;
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  MT_LOG_W("admin %s: %s", s->name, line);
}

static void set_timer(conn *c, double seconds, int request_timer) {
  ev_timer_stop(c->server->loop, &c->timer);
  ev_timer_set(&c->timer, seconds, 0.0);
  ev_timer_start(c->server->loop, &c->timer);
  c->request_timer_armed = request_timer;
}

static void watch(conn *c, int events) {
  ev_io_stop(c->server->loop, &c->io);
  ev_io_set(&c->io, c->fd, events);
  ev_io_start(c->server->loop, &c->io);
}

/* The one place a connection ends. */
static void conn_close(conn *c) {
  mt_http_server *s = c->server;
  ev_io_stop(s->loop, &c->io);
  ev_timer_stop(s->loop, &c->timer);
  mt_low_fds_close(s->low_fds, c->fd);
  if (c->prev != NULL)
    c->prev->next = c->next;
  else
    s->conns = c->next;
  if (c->next != NULL) c->next->prev = c->prev;
  s->stats.connections_active--;
  free(c->out);
  free(c);
}

/* ---- answers ---- */

/* Queues status line, headers and (unless |head_only|) body for writing. */
static int queue_answer(conn *c, int status, const char *content_type, const char *allow,
                        const char *body, size_t len, int head_only, int keep_alive_10) {
  char date[64];
  time_t now = time(NULL);
  struct tm tm;
  if (gmtime_r(&now, &tm) == NULL ||
      strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm) == 0)
    date[0] = '\0';
  char head[HEAD_OUT_MAX];
  int n = snprintf(head, sizeof(head),
                   "HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: %s\r\nCache-Control: no-store\r\n"
                   "%s%s%sContent-Length: %zu\r\n%s\r\n",
                   status, reason_phrase(status), date, content_type, allow ? "Allow: " : "",
                   allow ? allow : "", allow ? "\r\n" : "", len,
                   c->close_after  ? "Connection: close\r\n"
                   : keep_alive_10 ? "Connection: keep-alive\r\n"
                                   : "");
  if (n < 0 || (size_t)n >= sizeof(head)) return 0;
  size_t body_len = head_only ? 0 : len;
  char *out = malloc((size_t)n + body_len);
  if (out == NULL) return 0;
  memcpy(out, head, (size_t)n);
  if (body_len > 0) memcpy(out + n, body, body_len);
  free(c->out);
  c->out = out;
  c->out_len = (size_t)n + body_len;
  c->out_sent = 0;
  return 1;
}

static void start_writing(conn *c) {
  c->state = CONN_WRITING;
  set_timer(c, c->server->limits.idle_timeout_s, 0);
  watch(c, EV_WRITE);
}

/* The server's own answer to a request it will not hand on; closes after. */
static void refuse(conn *c, int status, const char *why) {
  mt_http_server *s = c->server;
  count_refusal(s, status);
  log_refusal(s, "%d %s: %s", status, reason_phrase(status), why);
  char body[TEXT_BODY_MAX];
  int n = snprintf(body, sizeof(body), "%s\n", why);
  size_t len = n < 0 ? 0 : (size_t)n >= sizeof(body) ? sizeof(body) - 1 : (size_t)n;
  c->close_after = 1;
  c->on_sent = NULL;
  if (!queue_answer(c, status, "text/plain; charset=utf-8", NULL, body, len, 0, 0)) {
    conn_close(c);
    return;
  }
  start_writing(c);
}

void mt_http_respond(mt_http_exchange *ex, int status, const char *content_type, const char *allow,
                     const char *body, size_t len) {
  if (ex->answered) return;
  conn *c = ex->c;
  const mt_http_request *req = ex->req;
  int head_only = strcmp(req->method, "HEAD") == 0;
  int keep_alive_10 = !c->close_after && req->version_minor == 0;
  if (!queue_answer(c, status, content_type, allow, body, len, head_only, keep_alive_10)) return;
  ex->answered = 1;
}

void mt_http_on_sent(mt_http_exchange *ex, mt_http_sent_cb cb, void *arg) {
  ex->c->on_sent = cb;
  ex->c->on_sent_arg = arg;
}

/* ---- reading requests ---- */

/* Hands one complete head to the handler and starts writing its answer. */
static void answer(conn *c, const mt_http_request *req) {
  mt_http_server *s = c->server;
  /* A body is never read: answer now, then close (lingering drops it). */
  c->close_after = !req->keep_alive || req->content_length > 0;
  c->on_sent = NULL;
  size_t rest = c->in_len - req->head_bytes;
  memmove(c->in, c->in + req->head_bytes, rest);
  c->in_len = rest;
  s->stats.requests++;
  mt_http_exchange ex = {c, req, 0};
  s->handler(s->arg, req, &ex);
  if (!ex.answered) {
    refuse(c, 500, "the request was not answered (out of memory?)");
    return;
  }
  start_writing(c);
}

static void process(conn *c) {
  if (c->in_len == 0) {
    set_timer(c, c->server->limits.idle_timeout_s, 0);
    watch(c, EV_READ);
    return;
  }
  mt_http_request *req = malloc(sizeof(*req)); /* ~8 KiB: not on the loop's stack */
  if (req == NULL) {
    conn_close(c);
    return;
  }
  switch (mt_http_parse_request(c->in, c->in_len, req)) {
    case MT_HTTP_PARSE_OK: answer(c, req); break;
    case MT_HTTP_PARSE_ERROR: refuse(c, req->status, req->error); break;
    case MT_HTTP_PARSE_INCOMPLETE:
      if (!c->request_timer_armed) set_timer(c, c->server->limits.request_timeout_s, 1);
      watch(c, EV_READ);
      break;
  }
  free(req);
}

static void on_readable(conn *c) {
  ssize_t n = read(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
  if (n <= 0) { /* the client closed (or failed): nothing to answer */
    conn_close(c);
    return;
  }
  c->in_len += (size_t)n;
  process(c);
}

/* ---- writing answers, closing ---- */

static void start_lingering(conn *c) {
  c->state = CONN_LINGERING;
  shutdown(c->fd, SHUT_WR);
  set_timer(c, kLingerTimeoutS, 0);
  watch(c, EV_READ);
}

static void on_writable(conn *c) {
  while (c->out_sent < c->out_len) {
    ssize_t n = send(c->fd, c->out + c->out_sent, c->out_len - c->out_sent, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      set_timer(c, c->server->limits.idle_timeout_s, 0); /* it made progress or just began */
      return;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      conn_close(c);
      return;
    }
    c->out_sent += (size_t)n;
  }
  free(c->out);
  c->out = NULL;
  c->out_len = c->out_sent = 0;
  mt_http_sent_cb cb = c->on_sent;
  void *cb_arg = c->on_sent_arg;
  c->on_sent = NULL;
  if (c->close_after) {
    start_lingering(c);
  } else {
    c->state = CONN_READING;
    c->request_timer_armed = 0;
    process(c); /* a pipelined request may be waiting */
  }
  if (cb != NULL) cb(cb_arg); /* last: it may stop things, never this connection */
}

static void on_linger_readable(conn *c) {
  uint8_t drop[4096];
  ssize_t n = read(c->fd, drop, sizeof(drop));
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
  c->lingered += n > 0 ? (size_t)n : 0;
  if (n <= 0 || c->lingered >= LINGER_MAX_BYTES) conn_close(c);
}

static void on_conn_io(struct ev_loop *loop, ev_io *w, int revents) {
  (void)loop;
  (void)revents;
  conn *c = w->data;
  switch (c->state) {
    case CONN_READING: on_readable(c); break;
    case CONN_WRITING: on_writable(c); break;
    case CONN_LINGERING: on_linger_readable(c); break;
  }
}

static void on_conn_timer(struct ev_loop *loop, ev_timer *t, int revents) {
  (void)loop;
  (void)revents;
  conn *c = t->data;
  if (c->state == CONN_READING && c->request_timer_armed && c->in_len > 0) {
    refuse(c, 408, "request not complete in time");
    return;
  }
  conn_close(c); /* idle, a stalled reader, or the linger is over */
}

/* ---- accepting ---- */

/* Over the connection limit: a short 503 (best effort, never waits) and close. */
static void refuse_busy(mt_http_server *s, int fd) {
  static const char kBusy[] =
      "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
      "Cache-Control: no-store\r\nContent-Length: 32\r\nConnection: close\r\n\r\n"
      "too many admin connections open\n";
  ssize_t n = send(fd, kBusy, sizeof(kBusy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
  (void)n;
  close(fd);
  count_refusal(s, 503);
  log_refusal(s, "503 Service Unavailable: more than %zu connections at once",
              s->limits.max_connections);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents) {
  (void)revents;
  mt_http_server *s = w->data;
  for (int i = 0; i < LISTEN_BACKLOG; i++) { /* bounded: the loop has other work */
    int fd = accept4(s->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED)
        return;
      /* Out of descriptors or memory: the listener stays readable, so pause
       * rather than spin the loop on it. */
      log_refusal(s, "accept: %s; not accepting for %.0f s", strerror(errno), kAcceptPauseS);
      ev_io_stop(loop, &s->accept_io);
      ev_timer_set(&s->accept_pause, kAcceptPauseS, 0.0);
      ev_timer_start(loop, &s->accept_pause);
      return;
    }
    if (s->stats.connections_active >= s->limits.max_connections) {
      refuse_busy(s, fd);
      continue;
    }
    conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
      close(fd);
      continue;
    }
    fd = mt_low_fds_take(s->low_fds, fd);
    c->server = s;
    c->fd = fd;
    c->state = CONN_READING;
    ev_io_init(&c->io, on_conn_io, fd, EV_READ);
    c->io.data = c;
    ev_init(&c->timer, on_conn_timer);
    c->timer.data = c;
    c->next = s->conns;
    if (s->conns != NULL) s->conns->prev = c;
    s->conns = c;
    s->stats.connections++;
    s->stats.connections_active++;
    set_timer(c, s->limits.idle_timeout_s, 0);
    ev_io_start(loop, &c->io);
  }
}

static void on_accept_pause_over(struct ev_loop *loop, ev_timer *t, int revents) {
  (void)revents;
  mt_http_server *s = t->data;
  ev_io_start(loop, &s->accept_io);
}

/* ---- the server ---- */

static int listen_on(const struct sockaddr *addr, char *err, size_t err_len) {
  socklen_t len =
      addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(err, err_len, "socket: %s", strerror(errno));
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (addr->sa_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  if (bind(fd, addr, len) != 0 || listen(fd, LISTEN_BACKLOG) != 0) {
    snprintf(err, err_len, "%s", strerror(errno));
    close(fd);
    return -1;
  }
  return fd;
}

mt_http_server *mt_http_server_new(struct ev_loop *loop, const struct sockaddr *addr,
                                   const mt_http_limits *limits, mt_http_handler handler, void *arg,
                                   char *err, size_t err_len) {
  if (addr->sa_family != AF_INET && addr->sa_family != AF_INET6) {
    snprintf(err, err_len, "not an IPv4 or IPv6 address");
    return NULL;
  }
  mt_http_server *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    snprintf(err, err_len, "out of memory");
    return NULL;
  }
  s->fd = listen_on(addr, err, err_len);
  if (s->fd < 0) {
    free(s);
    return NULL;
  }
  s->loop = loop;
  s->limits = *limits;
  /* Without the reserve (no /dev/null?) connections keep their numbers. */
  s->low_fds = mt_low_fds_new(limits->max_connections < LOW_FDS ? limits->max_connections : LOW_FDS);
  s->handler = handler;
  s->arg = arg;
  struct sockaddr_storage bound;
  if (mt_http_server_address(s, &bound)) {
    int v6 = bound.ss_family == AF_INET6;
    const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)&bound;
    const struct sockaddr_in *a4 = (const struct sockaddr_in *)&bound;
    char host[INET6_ADDRSTRLEN] = "?";
    inet_ntop(bound.ss_family, v6 ? (const void *)&a6->sin6_addr : (const void *)&a4->sin_addr,
              host, sizeof(host));
    snprintf(s->name, sizeof(s->name), v6 ? "[%s]:%u" : "%s:%u", host,
             ntohs(v6 ? a6->sin6_port : a4->sin_port));
  }
  ev_io_init(&s->accept_io, on_accept, s->fd, EV_READ);
  s->accept_io.data = s;
  ev_io_start(loop, &s->accept_io);
  ev_init(&s->accept_pause, on_accept_pause_over);
  s->accept_pause.data = s;
  return s;
}

int mt_http_server_address(const mt_http_server *server, struct sockaddr_storage *out) {
  socklen_t len = sizeof(*out);
  return getsockname(server->fd, (struct sockaddr *)out, &len) == 0;
}

const mt_http_server_stats *mt_http_server_get_stats(const mt_http_server *server) {
  return &server->stats;
}

void mt_http_server_free(mt_http_server *server) {
  if (server == NULL) return;
  while (server->conns != NULL) conn_close(server->conns);
  ev_io_stop(server->loop, &server->accept_io);
  ev_timer_stop(server->loop, &server->accept_pause);
  close(server->fd);
  mt_low_fds_free(server->low_fds);
  free(server);
}
