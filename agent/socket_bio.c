/* socket_bio.c: a read-ahead socket BIO over the worker's buffer pool.
 *
 * State per BIO: the borrowed buffer (NULL while empty), the unread span
 * [head, tail) in it, and whether the last recv found the socket empty. The
 * invariant that keeps the event loop honest: the BIO reports "retry read"
 * only when it holds no byte and the kernel said EAGAIN, so a caller that
 * waits for EV_READ after SSL_ERROR_WANT_READ never waits on bytes that are
 * already in user space. */
#include "agent/socket_bio.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef struct {
  int fd;
  mt_buffer_pool *pool; /* borrowed; NULL: exact reads */
  uint8_t *buf;         /* from |pool| while it holds bytes, else NULL */
  size_t head, tail;
  int found_empty; /* the last recv returned less than asked (or EOF / EAGAIN) */
} socket_bio;

static BIO_METHOD *g_method;
static int g_type;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static int is_retriable(int err) { return err == EAGAIN || err == EWOULDBLOCK || err == EINTR; }

static void give_back(socket_bio *s) {
  mt_buffer_pool_put(s->pool, s->buf);
  s->buf = NULL;
  s->head = s->tail = 0;
}

/* One recv into |dst|; returns what BIO_read must return and sets the retry
 * flag on EAGAIN. */
static int recv_into(BIO *bio, socket_bio *s, uint8_t *dst, size_t len) {
  ssize_t n = recv(s->fd, dst, len, 0);
  if (n < 0) {
    if (is_retriable(errno)) {
      BIO_set_retry_read(bio);
      s->found_empty = 1;
    }
    return -1;
  }
  s->found_empty = (size_t)n < len; /* includes 0: the peer's FIN */
  return (int)n;
}

static int socket_bio_read(BIO *bio, char *out, int len) {
  socket_bio *s = BIO_get_data(bio);
  BIO_clear_retry_flags(bio);
  if (len <= 0) return 0;
  if (s->buf == NULL) {
    s->buf = s->pool != NULL ? mt_buffer_pool_get(s->pool) : NULL;
    if (s->buf == NULL) return recv_into(bio, s, (uint8_t *)out, (size_t)len);
    int n = recv_into(bio, s, s->buf, mt_buffer_pool_buffer_bytes(s->pool));
    if (n <= 0) {
      give_back(s);
      return n;
    }
    s->tail = (size_t)n;
  }
  size_t take = s->tail - s->head;
  if ((size_t)len < take) take = (size_t)len;
  memcpy(out, s->buf + s->head, take);
  s->head += take;
  if (s->head == s->tail) give_back(s);
  return (int)take;
}

static int socket_bio_write(BIO *bio, const char *in, int len) {
  socket_bio *s = BIO_get_data(bio);
  BIO_clear_retry_flags(bio);
  ssize_t n = send(s->fd, in, (size_t)len, MSG_NOSIGNAL);
  if (n < 0) {
    if (is_retriable(errno)) BIO_set_retry_write(bio);
    return -1;
  }
  return (int)n;
}

static long socket_bio_ctrl(BIO *bio, int cmd, long larg, void *parg) {
  (void)larg;
  socket_bio *s = BIO_get_data(bio);
  switch (cmd) {
    case BIO_CTRL_FLUSH: return 1;
    case BIO_CTRL_PENDING: return (long)(s->tail - s->head);
    case BIO_CTRL_WPENDING: return 0;
    case BIO_C_GET_FD:
      if (parg != NULL) *(int *)parg = s->fd;
      return s->fd;
    default: return 0;
  }
}

static int socket_bio_destroy(BIO *bio) {
  socket_bio *s = BIO_get_data(bio);
  if (s != NULL) {
    give_back(s);
    free(s);
  }
  BIO_set_data(bio, NULL);
  return 1;
}

static void make_method(void) {
  g_type = BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR;
  BIO_METHOD *m = BIO_meth_new(g_type, "mtlsd read-ahead socket");
  if (m == NULL) return;
  if (!BIO_meth_set_read(m, socket_bio_read) || !BIO_meth_set_write(m, socket_bio_write) ||
      !BIO_meth_set_ctrl(m, socket_bio_ctrl) || !BIO_meth_set_destroy(m, socket_bio_destroy)) {
    BIO_meth_free(m);
    return;
  }
  g_method = m;
}

BIO *mt_socket_bio_new(int fd, mt_buffer_pool *pool) {
  pthread_once(&g_once, make_method);
  if (g_method == NULL) return NULL;
  socket_bio *s = calloc(1, sizeof(*s));
  BIO *bio = s != NULL ? BIO_new(g_method) : NULL;
  if (bio == NULL) {
    free(s);
    return NULL;
  }
  s->fd = fd;
  s->pool = pool;
  BIO_set_data(bio, s);
  BIO_set_init(bio, 1);
  return bio;
}

static socket_bio *state_of(const BIO *bio) {
  if (bio == NULL || g_method == NULL || BIO_method_type(bio) != g_type) return NULL;
  return BIO_get_data((BIO *)bio);
}

int mt_socket_bio_drained(const BIO *bio) {
  socket_bio *s = state_of(bio);
  return s != NULL && s->buf == NULL && s->found_empty;
}

size_t mt_socket_bio_buffered(const BIO *bio) {
  socket_bio *s = state_of(bio);
  return s != NULL ? s->tail - s->head : 0;
}
