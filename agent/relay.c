/* relay.c: the byte pump. Both endpoints are non-blocking; every readiness
 * event runs pump() until no direction can make progress, then re-derives the
 * events each socket must be watched for. TLS may need the opposite event to
 * the operation (a read that must write, and vice versa), which is why the
 * wanted events are recorded per operation rather than assumed.
 *
 * A direction holds a buffer from the worker's pool only while it carries
 * bytes: the buffer is borrowed just before a read and given back as soon as
 * the direction is empty again (the read found nothing, or the write drained
 * it), so an idle connection holds none. */
#include "agent/relay.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent/buffer_pool.h"
#include "agent/tls.h"
#include "agent/worker.h"

enum {
  /* What a direction carries at most: four TLS records' payload, so one
   * plaintext read becomes four full records in one SSL_write. */
  RELAY_CHUNK_BYTES = 64 * 1024,
  /* The pool's buffers also serve the TLS side's read-ahead (socket_bio),
   * which should hold four whole records: each a 5-byte header + 16 KiB +
   * AEAD expansion (at most 256 bytes). */
  POOL_BUFFER_BYTES = 66 * 1024,
  /* Free buffers a worker keeps for the next burst of traffic (528 KiB). */
  RELAY_BUFFER_CACHE = 8,
  BUFFERS_PER_CONN = 3, /* one per direction + the TLS side's read-ahead */
};

mt_buffer_pool *mt_relay_buffer_pool_new(size_t max_conns) {
  return mt_buffer_pool_new(POOL_BUFFER_BYTES, BUFFERS_PER_CONN * (max_conns ? max_conns : 1),
                            RELAY_BUFFER_CACHE);
}

void mt_relay_release(mt_conn *conn) {
  mt_buffer_pool *pool = mt_worker_buffers(conn->worker);
  mt_pipe *pipes[] = {&conn->to_up, &conn->to_down};
  for (size_t i = 0; i < sizeof(pipes) / sizeof(pipes[0]); i++) {
    mt_buffer_pool_put(pool, pipes[i]->data);
    pipes[i]->data = NULL;
    pipes[i]->head = pipes[i]->tail = pipes[i]->cap = 0;
  }
}

/* Borrows a buffer for an empty direction; 0 when the pool has none. */
static int pipe_borrow(mt_conn *conn, mt_pipe *pipe) {
  if (pipe->data != NULL) return 1;
  mt_buffer_pool *pool = mt_worker_buffers(conn->worker);
  pipe->data = mt_buffer_pool_get(pool);
  if (pipe->data == NULL) return 0;
  pipe->head = pipe->tail = 0;
  pipe->cap = RELAY_CHUNK_BYTES;
  return 1;
}

/* Gives the buffer back once the direction holds no byte. */
static void pipe_return_if_empty(mt_conn *conn, mt_pipe *pipe) {
  if (pipe->data == NULL || pipe->head != pipe->tail) return;
  mt_buffer_pool_put(mt_worker_buffers(conn->worker), pipe->data);
  pipe->data = NULL;
  pipe->head = pipe->tail = pipe->cap = 0;
}

typedef enum { IO_DONE, IO_WANT_READ, IO_WANT_WRITE, IO_EOF, IO_ERROR } io_status;

/* Maps an SSL call's failure to what the loop should wait for. */
static io_status ssl_status(SSL *ssl, int rc) {
  switch (SSL_get_error(ssl, rc)) {
    case SSL_ERROR_WANT_READ: return IO_WANT_READ;
    case SSL_ERROR_WANT_WRITE: return IO_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN: return IO_EOF;
    case SSL_ERROR_SYSCALL:
      /* A TCP FIN without close_notify: treat as end of stream; TCP-level
       * protocols carry their own framing, and the peer is authenticated. */
      if (ERR_peek_error() == 0 && (rc == 0 || errno == 0)) return IO_EOF;
      return IO_ERROR;
    default: return IO_ERROR;
  }
}

static io_status ep_read(mt_endpoint *ep, uint8_t *buf, size_t len, size_t *n) {
  errno = 0;
  if (ep->ssl) {
    /* SSL_read returns one record at most; take every record already in user
     * space, so the plaintext side gets them with one send. */
    size_t got = 0;
    while (got < len) {
      size_t want = len - got;
      int rc = SSL_read(ep->ssl, buf + got, want > INT32_MAX ? INT32_MAX : (int)want);
      if (rc <= 0) {
        if (got > 0) break; /* the failure (or EOF) comes back on the next read */
        return ssl_status(ep->ssl, rc);
      }
      got += (size_t)rc;
      if (!mt_tls_read_ready(ep->ssl)) break;
    }
    return *n = got, IO_DONE;
  }
  ssize_t rc = recv(ep->fd, buf, len, 0);
  if (rc > 0) return *n = (size_t)rc, IO_DONE;
  if (rc == 0) return IO_EOF;
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return IO_WANT_READ;
  return IO_ERROR;
}

static io_status ep_write(mt_endpoint *ep, const uint8_t *buf, size_t len, size_t *n) {
  errno = 0;
  if (ep->ssl) {
    int rc = SSL_write(ep->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
    if (rc > 0) return *n = (size_t)rc, IO_DONE;
    return ssl_status(ep->ssl, rc);
  }
  ssize_t rc = send(ep->fd, buf, len, MSG_NOSIGNAL);
  if (rc >= 0) return *n = (size_t)rc, IO_DONE;
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return IO_WANT_WRITE;
  return IO_ERROR;
}

/* Sends close_notify (TLS) and/or FIN. We keep reading afterwards: the other
 * direction may still be flowing (half-close). */
static io_status ep_shutdown_write(mt_endpoint *ep) {
  if (ep->ssl) {
    int rc = SSL_shutdown(ep->ssl);
    if (rc < 0) {
      io_status st = ssl_status(ep->ssl, rc);
      if (st == IO_WANT_READ || st == IO_WANT_WRITE) return st;
      ERR_clear_error(); /* peer already gone: the FIN below still goes out */
    }
  }
  shutdown(ep->fd, SHUT_WR);
  return IO_DONE;
}

static int events_for(io_status st) {
  return st == IO_WANT_READ ? EV_READ : st == IO_WANT_WRITE ? EV_WRITE : 0;
}

typedef struct {
  int progress;
  int failed_src; /* 1: source endpoint failed, 2: destination failed */
  int no_buffer;  /* the worker's buffer pool had none to lend */
} pump_result;

/* Ends the connection after an I/O failure on |ep|, keeping what the TLS
 * stack or the kernel said about it. */
static void close_failed(mt_conn *conn, mt_endpoint *ep) {
  mt_reason fallback = ep == &conn->down ? MT_REASON_DOWNSTREAM_ERROR : MT_REASON_UPSTREAM_ERROR;
  char detail[MT_TLS_DETAIL_MAX];
  snprintf(detail, sizeof(detail), "%s", errno ? strerror(errno) : "connection failed");
  mt_reason reason =
      ep->ssl ? mt_tls_io_failure(ep->ssl, fallback, detail, sizeof(detail)) : fallback;
  mt_conn_close(conn, reason, detail);
}

/* Moves bytes src -> pipe -> dst once; records the events each side needs. */
static pump_result pump_once(mt_conn *conn, mt_endpoint *src, mt_pipe *pipe, mt_endpoint *dst,
                             int *src_events, int *dst_events) {
  pump_result r = {0, 0, 0};
  int has_room = pipe->data == NULL || pipe->tail < pipe->cap;
  if (!src->read_eof && has_room && src->read_drained) {
    *src_events |= EV_READ; /* found empty last time: wait for the loop */
  } else if (!src->read_eof && has_room) {
    if (!pipe_borrow(conn, pipe)) {
      r.no_buffer = 1;
      return r;
    }
    size_t n = 0, room = pipe->cap - pipe->tail;
    io_status st = ep_read(src, pipe->data + pipe->tail, room, &n);
    if (st == IO_DONE) {
      pipe->tail += n;
      src->read_drained = src->ssl != NULL ? mt_tls_read_drained(src->ssl) : n < room;
      r.progress = 1;
    } else if (st == IO_EOF) {
      src->read_eof = 1;
      r.progress = 1;
    } else if (st == IO_ERROR) {
      r.failed_src = 1;
      return r;
    } else {
      /* WANT_WRITE (a TLS read that must write first) is not "empty". */
      src->read_drained = st == IO_WANT_READ;
      *src_events |= events_for(st);
    }
    pipe_return_if_empty(conn, pipe);
  }
  if (pipe->head < pipe->tail) {
    size_t n = 0;
    io_status st = ep_write(dst, pipe->data + pipe->head, pipe->tail - pipe->head, &n);
    if (st == IO_DONE) {
      pipe->head += n;
      pipe->total += n;
      pipe_return_if_empty(conn, pipe);
      r.progress = 1;
    } else if (st == IO_ERROR || st == IO_EOF) {
      r.failed_src = 2;
      return r;
    } else {
      *dst_events |= events_for(st);
    }
  }
  if (src->read_eof && pipe->head == pipe->tail && !dst->write_shut) {
    io_status st = ep_shutdown_write(dst);
    if (st == IO_DONE) {
      dst->write_shut = 1;
      r.progress = 1;
    } else {
      *dst_events |= events_for(st);
    }
  }
  return r;
}

static int finished(const mt_conn *conn) {
  return conn->down.read_eof && conn->up.write_shut && conn->up.read_eof && conn->down.write_shut;
}

/* The relay cannot go on without a buffer; end the connection rather than
 * stall it with bytes waiting in the kernel. */
static void close_no_buffer(mt_conn *conn) {
  mt_conn_close(conn, MT_REASON_OUT_OF_MEMORY, "no relay buffer (pool limit or malloc failure)");
}

static void pump(mt_conn *conn) {
  int down_events, up_events;
  for (;;) {
    down_events = up_events = 0;
    pump_result a = pump_once(conn, &conn->down, &conn->to_up, &conn->up, &down_events, &up_events);
    if (a.no_buffer) {
      close_no_buffer(conn);
      return;
    }
    if (a.failed_src) {
      close_failed(conn, a.failed_src == 1 ? &conn->down : &conn->up);
      return;
    }
    pump_result b =
        pump_once(conn, &conn->up, &conn->to_down, &conn->down, &up_events, &down_events);
    if (b.no_buffer) {
      close_no_buffer(conn);
      return;
    }
    if (b.failed_src) {
      close_failed(conn, b.failed_src == 1 ? &conn->up : &conn->down);
      return;
    }
    if (a.progress || b.progress) conn->last_activity = ev_now(conn->loop);
    if (finished(conn)) {
      mt_conn_close(conn, MT_REASON_OK, NULL);
      return;
    }
    if (!a.progress && !b.progress) break;
  }
  mt_conn_watch(conn, &conn->down, down_events);
  mt_conn_watch(conn, &conn->up, up_events);
}

void mt_relay_start(mt_conn *conn) {
  conn->state = MT_CONN_RELAYING;
  mt_conn_start_idle_timer(conn, mt_worker_config(conn->worker)->idle_timeout_ms);
  /* The handshake's last recv tells whether the TLS side is worth a read
   * now: the peer's first bytes may have come with its last flight. */
  mt_endpoint *eps[] = {&conn->down, &conn->up};
  for (size_t i = 0; i < 2; i++)
    if (eps[i]->ssl != NULL) eps[i]->read_drained = mt_tls_read_drained(eps[i]->ssl);
  pump(conn);
}

void mt_relay_on_event(mt_conn *conn, mt_endpoint *ep, int revents) {
  if (revents & EV_READ) ep->read_drained = 0;
  pump(conn);
}
