/* h2_transport.c: TLS records <-> nghttp2 on a non-blocking socket. */
#include "grpc/h2_transport.h"

#include "grpc/target.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/* Big enough for several full DATA frames, so one SSL_write carries many
 * small frames; the cap is what bounds a connection's pending output. */
enum {
  OUT_BUFFER_BYTES = 64 * 1024,
  /* One TLS record's plaintext at most: each SSL_read takes a whole record,
   * so nothing stays buffered inside TLS out of the loop's sight. */
  READ_CHUNK_BYTES = 16 * 1024,
  /* Bytes one pump reads before letting other connections have the loop;
   * the rest waits in the kernel, and the level-triggered watcher returns. */
  READ_BUDGET_BYTES = 256 * 1024,
  PORT_MAX = 65535,
};

static const uint8_t kAlpnH2[] = {'h', '2'};

int mt_h2_transport_init(mt_h2_transport *t, struct ev_loop *loop, int fd, SSL *ssl,
                         void (*cb)(struct ev_loop *, ev_io *, int), void *data) {
  memset(t, 0, sizeof(*t));
  t->loop = loop;
  t->fd = fd;
  t->ssl = ssl;
  t->out_cap = OUT_BUFFER_BYTES;
  t->out = malloc(t->out_cap);
  t->last_activity = ev_now(loop);
  ev_io_init(&t->io, cb, fd, 0);
  t->io.data = data;
  if (t->out == NULL) {
    mt_h2_transport_dispose(t);
    return 0;
  }
  return 1;
}

void mt_h2_transport_dispose(mt_h2_transport *t) {
  if (t->loop != NULL) ev_io_stop(t->loop, &t->io);
  nghttp2_session_del(t->session);
  t->session = NULL;
  SSL_free(t->ssl);
  t->ssl = NULL;
  if (t->fd >= 0 && t->loop != NULL) close(t->fd);
  t->fd = -1;
  free(t->out);
  t->out = NULL;
  t->out_head = t->out_tail = 0;
  ERR_clear_error(); /* never leak one connection's errors into the next */
}

void mt_h2_transport_watch(mt_h2_transport *t, int events) {
  if (t->fd < 0) return;
  if (ev_is_active(&t->io) && t->events == events) return;
  ev_io_stop(t->loop, &t->io);
  t->events = events;
  if (events == 0) return;
  ev_io_set(&t->io, t->fd, events);
  ev_io_start(t->loop, &t->io);
}

void mt_h2_transport_want_write(mt_h2_transport *t) {
  mt_h2_transport_watch(t, t->events | EV_WRITE);
}

/* The socket BIO: BoringSSL's own writes with write(2), which raises SIGPIPE
 * on a reset connection; a library must not impose SIG_IGN on its process. */
static pthread_once_t g_bio_once = PTHREAD_ONCE_INIT;
static BIO_METHOD *g_bio_method;

static int bio_fd(BIO *bio) { return (int)(intptr_t)BIO_get_data(bio); }

static int is_transient(int err) { return err == EAGAIN || err == EWOULDBLOCK || err == EINTR; }

static int bio_write(BIO *bio, const char *buf, int len) {
  BIO_clear_retry_flags(bio);
  ssize_t n = send(bio_fd(bio), buf, (size_t)len, MSG_NOSIGNAL);
  if (n < 0 && is_transient(errno)) BIO_set_retry_write(bio);
  return (int)n;
}

static int bio_read(BIO *bio, char *buf, int len) {
  BIO_clear_retry_flags(bio);
  ssize_t n = recv(bio_fd(bio), buf, (size_t)len, 0);
  if (n < 0 && is_transient(errno)) BIO_set_retry_read(bio);
  return (int)n;
}

static long bio_ctrl(BIO *bio, int cmd, long num, void *ptr) {
  (void)bio;
  (void)num;
  (void)ptr;
  return cmd == BIO_CTRL_FLUSH; /* nothing is buffered here */
}

static void make_bio_method(void) {
  BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "mt_h2_socket");
  if (m != NULL && BIO_meth_set_write(m, bio_write) && BIO_meth_set_read(m, bio_read) &&
      BIO_meth_set_ctrl(m, bio_ctrl))
    g_bio_method = m;
}

int mt_h2_ssl_attach(SSL *ssl, int fd) {
  pthread_once(&g_bio_once, make_bio_method);
  BIO *bio = g_bio_method ? BIO_new(g_bio_method) : NULL;
  if (bio == NULL) return 0;
  BIO_set_data(bio, (void *)(intptr_t)fd);
  BIO_set_init(bio, 1);
  SSL_set_bio(ssl, bio, bio); /* |ssl| takes the one reference */
  /* Partial writes let a large buffer drain record by record; the moving
   * buffer flag allows the buffer to be compacted between retries (the
   * retried bytes are always the same, only their address changes). */
  SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  return 1;
}

static const char *reason_text(uint32_t e) {
  const char *reason = ERR_reason_error_string(e);
  return reason ? reason : "TLS error";
}

/* Describes a failed TLS operation in one line and empties the error queue.
 *
 * Certificate verification comes first, but only when it happened and
 * failed: before there is a session (bytes that are not TLS, no common
 * protocol, no ALPN match) BoringSSL answers X509_V_ERR_INVALID_CALL, which
 * is not a verdict. Then an alert the peer sent (it says why the peer gave
 * up). Then the library's errors: the newest (what failed) with the oldest
 * (where it started) when they differ, e.g. "DECRYPTION_FAILED_OR_BAD_RECORD_MAC
 * (BAD_PACKET_LENGTH)". Last, the socket.
 *
 * The queue holds this operation's errors only: BoringSSL empties it on entry
 * to SSL_do_handshake, SSL_read and SSL_write, and it is emptied here, so no
 * connection's errors (nor the application's) show up in another's text. */
static void describe_tls_failure(mt_h2_transport *t, int ssl_error, const char *what) {
  int saved_errno = errno;
  long verify = SSL_get_verify_result(t->ssl);
  uint32_t e, oldest = 0, newest = 0, alert = 0;
  while ((e = ERR_get_error()) != 0) {
    if (oldest == 0) oldest = e;
    newest = e;
    if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) >= SSL_AD_REASON_OFFSET) alert = e;
  }
  if (verify != X509_V_OK && verify != X509_V_ERR_INVALID_CALL) {
    snprintf(t->error, sizeof(t->error), "%s: certificate verification failed: %s", what,
             X509_verify_cert_error_string(verify));
  } else if (alert != 0) {
    snprintf(t->error, sizeof(t->error), "%s: peer sent alert %s", what, reason_text(alert));
  } else if (newest != 0 && newest != oldest) {
    snprintf(t->error, sizeof(t->error), "%s: %s (%s)", what, reason_text(newest),
             reason_text(oldest));
  } else if (newest != 0) {
    snprintf(t->error, sizeof(t->error), "%s: %s", what, reason_text(newest));
  } else if (ssl_error == SSL_ERROR_SYSCALL && saved_errno != 0) {
    snprintf(t->error, sizeof(t->error), "%s: %s", what, strerror(saved_errno));
  } else {
    snprintf(t->error, sizeof(t->error), "%s: connection closed by peer", what);
  }
  ERR_clear_error();
}

int mt_h2_transport_connect_error(const mt_h2_transport *t) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  return err;
}

mt_h2_step mt_h2_transport_handshake(mt_h2_transport *t, int require_alpn) {
  errno = 0;
  int rc = SSL_do_handshake(t->ssl);
  if (rc != 1) {
    int err = SSL_get_error(t->ssl, rc);
    if (err == SSL_ERROR_WANT_READ) {
      mt_h2_transport_watch(t, EV_READ);
      return MT_H2_STEP_AGAIN;
    }
    if (err == SSL_ERROR_WANT_WRITE) {
      mt_h2_transport_watch(t, EV_WRITE);
      return MT_H2_STEP_AGAIN;
    }
    describe_tls_failure(t, err, "TLS handshake failed");
    return MT_H2_STEP_FAILED;
  }
  const uint8_t *alpn = NULL;
  unsigned alpn_len = 0;
  SSL_get0_alpn_selected(t->ssl, &alpn, &alpn_len);
  int is_h2 = alpn_len == sizeof(kAlpnH2) && memcmp(alpn, kAlpnH2, sizeof(kAlpnH2)) == 0;
  if (!is_h2 && (require_alpn || alpn_len != 0)) {
    snprintf(t->error, sizeof(t->error), "TLS: peer did not negotiate ALPN \"h2\"%s",
             alpn_len ? " (it chose another protocol)" : "");
    return MT_H2_STEP_FAILED;
  }
  return MT_H2_STEP_DONE;
}

ssize_t mt_h2_transport_buffer(mt_h2_transport *t, const uint8_t *data, size_t len) {
  if (t->out_head > 0 && t->out_tail + len > t->out_cap) {
    memmove(t->out, t->out + t->out_head, t->out_tail - t->out_head);
    t->out_tail -= t->out_head;
    t->out_head = 0;
  }
  size_t room = t->out_cap - t->out_tail;
  if (room == 0) return NGHTTP2_ERR_WOULDBLOCK;
  size_t n = len < room ? len : room;
  memcpy(t->out + t->out_tail, data, n);
  t->out_tail += n;
  return (ssize_t)n;
}

typedef enum { IO_OK, IO_WANT_WRITE, IO_EOF, IO_FAILED } io_result;

/* Bytes that arrived, to nghttp2 (whose callbacks run now). 0: protocol error. */
static int feed(mt_h2_transport *t, const uint8_t *buf, size_t n) {
  t->last_activity = ev_now(t->loop);
  ssize_t rv = nghttp2_session_mem_recv(t->session, buf, n);
  if (rv >= 0) return 1;
  snprintf(t->error, sizeof(t->error), "HTTP/2 protocol error: %s", nghttp2_strerror((int)rv));
  return 0;
}

/* Plaintext: the bytes the socket has (up to a budget) go to nghttp2. */
static io_result read_phase_plain(mt_h2_transport *t) {
  uint8_t buf[READ_CHUNK_BYTES];
  size_t budget = READ_BUDGET_BYTES;
  while (!t->stop && !t->read_eof && budget > 0) {
    ssize_t n = recv(t->fd, buf, sizeof(buf), 0);
    if (n > 0) {
      budget = (size_t)n < budget ? budget - (size_t)n : 0;
      if (!feed(t, buf, (size_t)n)) return IO_FAILED;
      continue;
    }
    if (n == 0) {
      t->read_eof = 1;
      snprintf(t->error, sizeof(t->error), "connection closed by peer");
      return IO_EOF;
    }
    if (is_transient(errno)) return IO_OK;
    if (errno == ECONNRESET) t->read_eof = 1; /* a client that hung up */
    snprintf(t->error, sizeof(t->error), "read failed: %s", strerror(errno));
    return t->read_eof ? IO_EOF : IO_FAILED;
  }
  return IO_OK;
}

/* Reads the TLS records available (up to a budget) and feeds them to nghttp2. */
static io_result read_phase(mt_h2_transport *t) {
  if (t->ssl == NULL) return read_phase_plain(t);
  uint8_t buf[READ_CHUNK_BYTES];
  size_t budget = READ_BUDGET_BYTES;
  while (!t->stop && !t->read_eof) {
    /* Only stop while TLS holds nothing decrypted: epoll cannot see that. */
    if (budget == 0 && SSL_pending(t->ssl) == 0) return IO_OK;
    errno = 0;
    int n = SSL_read(t->ssl, buf, sizeof(buf));
    if (n > 0) {
      budget = (size_t)n < budget ? budget - (size_t)n : 0;
      if (!feed(t, buf, (size_t)n)) return IO_FAILED;
      continue;
    }
    int err = SSL_get_error(t->ssl, n);
    if (err == SSL_ERROR_WANT_READ) return IO_OK;
    if (err == SSL_ERROR_WANT_WRITE) return IO_WANT_WRITE;
    if (err == SSL_ERROR_ZERO_RETURN ||
        (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && errno == 0)) {
      t->read_eof = 1;
      snprintf(t->error, sizeof(t->error), "connection closed by peer");
      ERR_clear_error();
      return IO_EOF;
    }
    describe_tls_failure(t, err, "TLS read failed");
    return IO_FAILED;
  }
  return IO_OK;
}

/* Lets nghttp2 fill the output buffer and writes it, until TLS or nghttp2
 * has nothing more to do. */
static io_result write_phase(mt_h2_transport *t) {
  for (;;) {
    if (t->session != NULL) {
      int rv = nghttp2_session_send(t->session);
      if (rv != 0) {
        snprintf(t->error, sizeof(t->error), "HTTP/2 send failed: %s", nghttp2_strerror(rv));
        return IO_FAILED;
      }
    }
    if (t->out_head == t->out_tail) return IO_OK;
    errno = 0;
    size_t pending = t->out_tail - t->out_head;
    if (t->ssl == NULL) {
      ssize_t sent = send(t->fd, t->out + t->out_head, pending, MSG_NOSIGNAL);
      if (sent > 0) {
        t->out_head += (size_t)sent;
        if (t->out_head == t->out_tail) t->out_head = t->out_tail = 0;
        continue;
      }
      if (sent < 0 && is_transient(errno)) return IO_WANT_WRITE;
      snprintf(t->error, sizeof(t->error), "write failed: %s", strerror(errno));
      return IO_FAILED;
    }
    int n = SSL_write(t->ssl, t->out + t->out_head, pending > INT32_MAX ? INT32_MAX : (int)pending);
    if (n > 0) {
      t->out_head += (size_t)n;
      if (t->out_head == t->out_tail) t->out_head = t->out_tail = 0;
      continue;
    }
    int err = SSL_get_error(t->ssl, n);
    if (err == SSL_ERROR_WANT_WRITE) return IO_WANT_WRITE;
    if (err == SSL_ERROR_WANT_READ) return IO_OK;
    describe_tls_failure(t, err, "TLS write failed");
    return IO_FAILED;
  }
}

mt_h2_status mt_h2_transport_pump(mt_h2_transport *t) {
  io_result r = read_phase(t);
  int want_write = r == IO_WANT_WRITE;
  /* Even after a failed read, nghttp2 may have queued a GOAWAY that says
   * why: give it one chance to leave. */
  io_result w = write_phase(t);
  if (r == IO_FAILED) return MT_H2_FAILED;
  if (w == IO_FAILED) return MT_H2_FAILED;
  int out_empty = t->out_head == t->out_tail;
  if (!nghttp2_session_want_read(t->session) && !nghttp2_session_want_write(t->session) &&
      out_empty)
    return MT_H2_DONE;
  if (r == IO_EOF) return MT_H2_FAILED;
  if (w == IO_WANT_WRITE) want_write = 1;
  mt_h2_transport_watch(t, EV_READ | (want_write ? EV_WRITE : 0));
  return MT_H2_OPEN;
}

void mt_h2_transport_flush_best_effort(mt_h2_transport *t) {
  if (t->fd < 0) return;
  if (t->ssl == NULL) {
    if (t->session != NULL) (void)write_phase(t);
    return;
  }
  if (!SSL_is_init_finished(t->ssl)) return;
  if (write_phase(t) == IO_OK && t->out_head == t->out_tail) SSL_shutdown(t->ssl);
  ERR_clear_error();
}

int mt_h2_parse_address(const char *text, struct sockaddr_storage *out, socklen_t *out_len) {
  if (text != NULL && strncmp(text, "unix:", strlen("unix:")) == 0)
    return mt_unix_address_parse(text, out, out_len);
  char host[INET6_ADDRSTRLEN + 1];
  const char *colon = text ? strrchr(text, ':') : NULL;
  if (colon == NULL || colon == text) return 0;
  const char *h = text;
  size_t hlen = (size_t)(colon - text);
  if (h[0] == '[') {
    if (hlen < 2 || h[hlen - 1] != ']') return 0;
    h++;
    hlen -= 2;
  }
  if (hlen == 0 || hlen >= sizeof(host)) return 0;
  memcpy(host, h, hlen);
  host[hlen] = '\0';
  const char *p = colon + 1;
  if (*p == '\0' || strlen(p) > 5) return 0;
  long port = 0;
  for (; *p; p++) {
    if (*p < '0' || *p > '9') return 0;
    port = port * 10 + (*p - '0');
  }
  if (port > PORT_MAX) return 0;
  memset(out, 0, sizeof(*out));
  struct sockaddr_in *v4 = (struct sockaddr_in *)out;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
  if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons((uint16_t)port);
    *out_len = sizeof(*v4);
    return 1;
  }
  if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)port);
    *out_len = sizeof(*v6);
    return 1;
  }
  return 0;
}

void mt_h2_format_address(const struct sockaddr *addr, char *out, size_t out_len) {
  char ip[INET6_ADDRSTRLEN];
  if (addr->sa_family == AF_INET6) {
    const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)addr;
    inet_ntop(AF_INET6, &v6->sin6_addr, ip, sizeof(ip));
    snprintf(out, out_len, "[%s]:%u", ip, ntohs(v6->sin6_port));
  } else if (addr->sa_family == AF_INET) {
    const struct sockaddr_in *v4 = (const struct sockaddr_in *)addr;
    inet_ntop(AF_INET, &v4->sin_addr, ip, sizeof(ip));
    snprintf(out, out_len, "%s:%u", ip, ntohs(v4->sin_port));
  } else if (addr->sa_family == AF_UNIX) {
    const struct sockaddr_un *un = (const struct sockaddr_un *)addr;
    if (un->sun_path[0] == '/')
      snprintf(out, out_len, "unix:%.*s", (int)sizeof(un->sun_path), un->sun_path);
    else
      snprintf(out, out_len, "unix");
  } else {
    snprintf(out, out_len, "?");
  }
}

const char *mt_h2_error_name(uint32_t h2_error_code) {
  return nghttp2_http2_strerror(h2_error_code);
}

void mt_h2_textf(char *out, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(out, cap, fmt, ap); /* NOLINT(clang-analyzer-valist.Uninitialized): false positive */
  va_end(ap);
}
