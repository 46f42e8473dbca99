/* resolver.c: getaddrinfo on a detached thread, the answer handed to the
 * loop through an eventfd. The request is shared by the two sides and
 * reference counted: whichever lets go last (the loop on completion or
 * cancel, the thread when it has written its answer) closes and frees. */
#include "grpc/resolver.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct mt_resolve {
  atomic_int refs; /* the loop's side and the thread's */
  struct ev_loop *loop;
  ev_io ready; /* the eventfd: the thread has answered (or numeric) */
  int fd;
  mt_resolve_target target;
  mt_resolve_result result; /* written by the thread before it signals */
  mt_resolve_done on_done;
  void *arg;
};

static void release(mt_resolve *r) {
  if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1) return;
  close(r->fd);
  free(r);
}

static void lookup(mt_resolve *r) {
  struct addrinfo hints, *list = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG;
  int rc = getaddrinfo(r->target.host, r->target.port, &hints, &list);
  if (rc != 0) {
    snprintf(r->result.error, sizeof(r->result.error), "cannot resolve '%.100s': %s",
             r->target.host, rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
    return;
  }
  for (struct addrinfo *ai = list; ai != NULL && r->result.count < MT_RESOLVE_MAX_ADDRESSES;
       ai = ai->ai_next) {
    if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
        ai->ai_addrlen > sizeof(struct sockaddr_storage))
      continue;
    memcpy(&r->result.addresses[r->result.count], ai->ai_addr, ai->ai_addrlen);
    r->result.lengths[r->result.count++] = (socklen_t)ai->ai_addrlen;
  }
  freeaddrinfo(list);
  if (r->result.count == 0)
    snprintf(r->result.error, sizeof(r->result.error), "'%.100s' has no IPv4 or IPv6 address",
             r->target.host);
}

static void signal_loop(mt_resolve *r) {
  uint64_t one = 1;
  ssize_t n;
  do n = write(r->fd, &one, sizeof(one));
  while (n < 0 && errno == EINTR);
}

static void *lookup_thread(void *arg) {
  mt_resolve *r = arg;
  lookup(r);
  signal_loop(r);
  release(r);
  return NULL;
}

static void on_ready(struct ev_loop *loop, ev_io *w, int revents) {
  (void)revents;
  mt_resolve *r = w->data;
  uint64_t value;
  ssize_t n = read(r->fd, &value, sizeof(value));
  (void)n;
  ev_io_stop(loop, &r->ready);
  mt_resolve_done on_done = r->on_done;
  void *arg = r->arg;
  mt_resolve_result result = r->result; /* the callback may free nothing of ours */
  release(r);
  on_done(arg, &result);
}

static int start_thread(mt_resolve *r) {
  /* Signals belong to the main thread (libev's signal watchers). */
  sigset_t all, previous;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &previous);
  pthread_attr_t attr;
  pthread_t thread;
  int ok = pthread_attr_init(&attr) == 0;
  if (ok) {
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    ok = pthread_create(&thread, &attr, lookup_thread, r) == 0;
    pthread_attr_destroy(&attr);
  }
  pthread_sigmask(SIG_SETMASK, &previous, NULL);
  return ok;
}

mt_resolve *mt_resolve_start(struct ev_loop *loop, const mt_resolve_target *target,
                             mt_resolve_done on_done, void *arg) {
  mt_resolve *r = calloc(1, sizeof(*r));
  if (r == NULL) return NULL;
  r->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (r->fd < 0) {
    free(r);
    return NULL;
  }
  r->loop = loop;
  r->target = *target;
  r->on_done = on_done;
  r->arg = arg;
  ev_io_init(&r->ready, on_ready, r->fd, EV_READ);
  r->ready.data = r;
  if (target->numeric) {
    atomic_init(&r->refs, 1);
    r->result.addresses[0] = target->address;
    r->result.lengths[0] = target->address_len;
    r->result.count = 1;
    signal_loop(r); /* answered on the next loop iteration, like a lookup */
  } else {
    atomic_init(&r->refs, 2);
    if (!start_thread(r)) {
      close(r->fd);
      free(r);
      return NULL;
    }
  }
  ev_io_start(loop, &r->ready);
  return r;
}

void mt_resolve_cancel(mt_resolve *r) {
  if (r == NULL) return;
  ev_io_stop(r->loop, &r->ready);
  release(r);
}
