/* worker.c: worker threads, their loops and listeners, and the hand-over of
 * identity snapshots and stop requests from the main thread. */
#include "agent/worker.h"

#include <errno.h>
#include <malloc.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent/inbound.h"
#include "agent/log.h"
#include "agent/mem_trim.h"
#include "agent/outbound.h"
#include "agent/relay.h"
#include "agent/source_share.h"

enum {
  LISTEN_BACKLOG = 1024,
  ACCEPTS_PER_EVENT = 64,
  ACCEPT_PAUSE_FIRST_MS = 10, /* out of descriptors: first pause, doubled each retry... */
  ACCEPT_PAUSE_MAX_MS = 1000, /* ...up to this */
  ACCEPT_EPISODE_QUIET_MS = 3000, /* an episode ends this long after its last refusal */
};

typedef struct {
  int fd;
  ev_io io;
  ev_timer pause;          /* out of file descriptors: stop accepting for a moment */
  int pause_ms;            /* the current pause of an episode */
  ev_tstamp paused_since;  /* when the episode began; 0 = accepting normally */
  ev_tstamp last_refusal;  /* the episode's latest EMFILE/ENFILE */
  const mt_listener_config *config;
  int inbound;
  mt_worker *worker;
} listener;

struct mt_worker {
  mt_workers *pool;
  pthread_t thread;
  int thread_started;
  struct ev_loop *loop;
  listener *listeners;
  size_t num_listeners;
  ev_async wake;
  ev_timer drain_timer;
  mt_identity *identity;      /* owned reference; NULL = fail closed */
  mt_worker_metrics *metrics; /* written by this thread only */
  mt_config *config;          /* owned reference: the current config */
  mt_workloads *workloads;    /* node mode: owned reference; NULL = none */
  mt_buffer_pool *buffers;    /* relay buffers, lent to connections while bytes are in flight */
  mt_mem_trim *trim;          /* gives freed memory back after a burst */
  mt_source_share *handshakes; /* inbound handshakes in progress per source address */
  uint64_t random_state;      /* mt_worker_random's generator (splitmix64) */
  int stopping;
  int refresh_requested; /* idle after a burst: replace the loop (refresh_loop) */
  /* The thread this one took over from (hand_over), joined on start. */
  pthread_t predecessor;
  int has_predecessor;
  mt_conn *conns;
  size_t num_conns, max_conns;
  mt_conn *held; /* connections waiting for an identity */
  /* Mailbox written by the main thread under pool->lock. */
  int has_pending_identity;
  mt_identity *pending_identity;
  mt_config *pending_config; /* NULL = none */
  int has_pending_workloads;
  mt_workloads *pending_workloads;
  int stop_requested;
  int drain_ms;
};

struct mt_workers {
  mt_config *config; /* the start config: listeners point into it */
  pthread_mutex_t lock;
  mt_worker *workers;
  mt_worker_metrics **metrics; /* one per worker, same order */
  size_t count;
  atomic_int finished; /* worker threads whose loop has ended */
  mt_demand *demand;   /* borrowed; NULL: destinations are not on demand */
};

struct ev_loop *mt_worker_loop(mt_worker *w) {
  return w->loop;
}
const mt_config *mt_worker_config(const mt_worker *w) { return w->config; }
mt_worker_metrics *mt_worker_metrics_of(mt_worker *w) { return w->metrics; }
mt_demand *mt_worker_demand(mt_worker *w) { return w->pool->demand; }

/* splitmix64 (Steele, Lea, Flood 2014): one add and three multiply-xorshift
 * steps per number, no lock, good enough to spread connections; nothing
 * secret depends on it. */
uint64_t mt_worker_random(mt_worker *w) {
  uint64_t z = (w->random_state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
mt_buffer_pool *mt_worker_buffers(mt_worker *w) { return w->buffers; }
mt_mem_trim *mt_worker_mem_trim(mt_worker *w) { return w->trim; }

mt_worker_metrics *const *mt_workers_metrics(const mt_workers *pool, size_t *count) {
  *count = pool->count;
  return pool->metrics;
}
/* An expired snapshot is never used, even before the main thread notices:
 * handing it out would present (or accept peers with) a dead certificate. */
mt_identity *mt_worker_identity(mt_worker *w) {
  if (w->identity != NULL && (double)mt_identity_not_after(w->identity) <= ev_now(w->loop))
    return NULL;
  return w->identity;
}

int mt_worker_lists_workload(mt_worker *w, const struct sockaddr *workload) {
  return mt_workloads_lists(w->workloads, workload);
}

mt_identity *mt_worker_identity_for(mt_worker *w, const struct sockaddr *workload) {
  if (!w->config->node_mode) return mt_worker_identity(w);
  mt_identity *id = mt_workloads_find(w->workloads, workload);
  if (id != NULL && (double)mt_identity_not_after(id) <= ev_now(w->loop)) return NULL;
  return id;
}

/* Each worker enforces its share of the agent-wide limit: the kernel spreads
 * one source's connections over the workers (SO_REUSEPORT hashes ports too). */
int mt_worker_take_source_slot(mt_worker *w, const struct sockaddr *source) {
  unsigned limit = (unsigned)w->config->handshakes_per_source;
  if (limit != 0) limit = (unsigned)((limit + w->pool->count - 1) / w->pool->count);
  return mt_source_share_take(w->handshakes, source, limit);
}

void mt_worker_give_source_slot(mt_worker *w, const struct sockaddr *source) {
  mt_source_share_give(w->handshakes, source);
}

void mt_worker_link(mt_worker *w, mt_conn *conn) {
  conn->prev = NULL;
  conn->next = w->conns;
  if (w->conns) w->conns->prev = conn;
  w->conns = conn;
  w->num_conns++;
}

void mt_worker_unlink(mt_worker *w, mt_conn *conn) {
  if (conn->prev)
    conn->prev->next = conn->next;
  else
    w->conns = conn->next;
  if (conn->next) conn->next->prev = conn->prev;
  w->num_conns--;
  if (w->stopping && w->num_conns == 0) ev_break(w->loop, EVBREAK_ALL);
}

void mt_worker_hold(mt_worker *w, mt_conn *conn) {
  if (conn->held_linked) return;
  conn->held_linked = 1;
  conn->held_prev = NULL;
  conn->held_next = w->held;
  if (w->held) w->held->held_prev = conn;
  w->held = conn;
}

void mt_worker_unhold(mt_worker *w, mt_conn *conn) {
  if (!conn->held_linked) return;
  conn->held_linked = 0;
  if (conn->held_prev)
    conn->held_prev->held_next = conn->held_next;
  else
    w->held = conn->held_next;
  if (conn->held_next) conn->held_next->held_prev = conn->held_prev;
  conn->held_prev = conn->held_next = NULL;
}

/* Something a held connection may be waiting for has arrived. The list is
 * taken whole first: a resumed connection that still finds no identity is
 * held again, onto the fresh list, and is not looked at twice. */
static void resume_held(mt_worker *w) {
  mt_conn *list = w->held;
  w->held = NULL;
  for (mt_conn *c = list; c != NULL; c = c->held_next) c->held_linked = 0;
  while (list != NULL) {
    mt_conn *conn = list;
    list = conn->held_next;
    conn->held_prev = conn->held_next = NULL;
    conn->resume(conn); /* may close the connection, or hold it again */
  }
}

static void close_all(mt_worker *w, mt_reason reason) {
  while (w->conns) mt_conn_close(w->conns, reason, "agent stopping");
}

static void on_pause_over(struct ev_loop *loop, ev_timer *t, int revents) {
  (void)revents;
  listener *l = t->data;
  if (l->fd >= 0) ev_io_start(loop, &l->io);
}

/* With no descriptor left, a level-triggered listener would wake the loop
 * forever; park it instead, retrying after 10 ms, 20 ms, ... 1 s until an
 * accept works again. One episode, one warning and one count, however long
 * it lasts (the pending connections wait in the kernel's backlog). */
static void pause_listener(listener *l, int err) {
  mt_worker *w = l->worker;
  if (l->paused_since == 0) {
    char where[MT_SOCKADDR_TEXT_MAX];
    mt_sockaddr_format((const struct sockaddr *)&l->config->listen.addr, where, sizeof(where));
    MT_LOG_W("accept on %s: %s; pausing this listener and retrying with a backoff "
             "(%d ms doubling to %d ms) until descriptors are free again",
             where, strerror(err), ACCEPT_PAUSE_FIRST_MS, ACCEPT_PAUSE_MAX_MS);
    l->paused_since = ev_now(w->loop);
    l->pause_ms = ACCEPT_PAUSE_FIRST_MS;
    mt_metrics_accept_paused(w->metrics);
  } else {
    l->pause_ms = l->pause_ms * 2 > ACCEPT_PAUSE_MAX_MS ? ACCEPT_PAUSE_MAX_MS : l->pause_ms * 2;
  }
  l->last_refusal = ev_now(w->loop);
  ev_io_stop(w->loop, &l->io);
  ev_timer_set(&l->pause, l->pause_ms / 1000.0, 0.0);
  ev_timer_start(w->loop, &l->pause);
}

/* An accept worked: the next pause starts short again. The episode is over
 * when the backlog is empty (|drained|) or nothing was refused for a while;
 * until then a refusal continues it (no new warning, no new count). */
static void end_pause(listener *l, int drained) {
  if (l->paused_since == 0) return;
  l->pause_ms = ACCEPT_PAUSE_FIRST_MS / 2;
  ev_tstamp now = ev_now(l->worker->loop);
  if (!drained && now - l->last_refusal < ACCEPT_EPISODE_QUIET_MS / 1000.0) return;
  double seconds = now - l->paused_since;
  l->paused_since = 0;
  mt_metrics_accept_resumed(l->worker->metrics, seconds);
  MT_LOG_D("accepting again after %.3f s without descriptors", seconds);
}

static void on_accept(struct ev_loop *loop, ev_io *io, int revents) {
  (void)loop;
  (void)revents;
  listener *l = io->data;
  mt_worker *w = l->worker;
  for (int i = 0; i < ACCEPTS_PER_EVENT; i++) {
    struct sockaddr_storage src;
    socklen_t len = sizeof(src);
    int fd = accept4(l->fd, (struct sockaddr *)&src, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
        pause_listener(l, errno);
      else if (errno == EAGAIN || errno == EWOULDBLOCK)
        end_pause(l, 1);
      else if (errno != EINTR && errno != ECONNABORTED)
        MT_LOG_W("accept: %s", strerror(errno));
      return;
    }
    end_pause(l, 0);
    if (w->num_conns >= w->max_conns) {
      mt_conn *conn = mt_conn_new(w, l->inbound ? MT_DIR_INBOUND : MT_DIR_OUTBOUND, fd,
                                  (struct sockaddr *)&src, NULL);
      if (conn) mt_conn_close(conn, MT_REASON_CONNECTION_LIMIT, "too many connections");
      continue;
    }
    if (l->inbound)
      mt_inbound_accept(w, l->config, fd, (struct sockaddr *)&src);
    else
      mt_outbound_accept(w, l->config, fd, (struct sockaddr *)&src);
  }
}

static void stop_listeners(mt_worker *w) {
  for (size_t i = 0; i < w->num_listeners; i++) {
    listener *l = &w->listeners[i];
    if (l->fd < 0) continue;
    ev_io_stop(w->loop, &l->io);
    ev_timer_stop(w->loop, &l->pause);
    close(l->fd);
    l->fd = -1;
  }
}

static void on_drain_deadline(struct ev_loop *loop, ev_timer *t, int revents) {
  (void)revents;
  mt_worker *w = t->data;
  close_all(w, MT_REASON_SHUTDOWN);
  ev_break(loop, EVBREAK_ALL);
}

static void begin_stop(mt_worker *w, int drain_ms) {
  if (w->stopping) return;
  w->stopping = 1;
  stop_listeners(w);
  if (w->num_conns == 0) {
    ev_break(w->loop, EVBREAK_ALL);
    return;
  }
  ev_timer_init(&w->drain_timer, on_drain_deadline, drain_ms / 1000.0, 0.0);
  w->drain_timer.data = w;
  ev_timer_start(w->loop, &w->drain_timer);
}

/* Main thread -> worker: take whatever the mailbox holds. */
static void on_wake(struct ev_loop *loop, ev_async *a, int revents) {
  (void)loop;
  (void)revents;
  mt_worker *w = a->data;
  pthread_mutex_lock(&w->pool->lock);
  int has_identity = w->has_pending_identity;
  mt_identity *identity = w->pending_identity;
  mt_config *config = w->pending_config;
  w->pending_config = NULL;
  int has_workloads = w->has_pending_workloads;
  mt_workloads *workloads = w->pending_workloads;
  w->has_pending_workloads = 0;
  w->pending_workloads = NULL;
  int stop = w->stop_requested;
  int drain_ms = w->drain_ms;
  w->has_pending_identity = 0;
  w->pending_identity = NULL;
  pthread_mutex_unlock(&w->pool->lock);
  if (config != NULL) { /* before the identity built from it */
    mt_config_free(w->config);
    w->config = config;
  }
  if (has_workloads) {
    mt_workloads_unref(w->workloads);
    w->workloads = workloads;
  }
  if (has_identity) {
    mt_identity_unref(w->identity);
    w->identity = identity; /* the mailbox's reference becomes ours */
  }
  if (has_identity || has_workloads || config != NULL) resume_held(w);
  if (stop) begin_stop(w, drain_ms);
}

/* mem_trim found this worker idle after a burst: leave ev_run so that
 * worker_main can replace the loop. */
static void on_idle_after_burst(void *arg) {
  mt_worker *w = arg;
  w->refresh_requested = 1;
  ev_break(w->loop, EVBREAK_ALL);
}

/* libev sizes a loop's per-descriptor table for the highest descriptor it
 * ever watched (16,000 after a burst of 8,000 proxied connections) and its
 * event, pending and timer arrays for the most it ever held, and never
 * shrinks them: about 1 MB per worker that would stay resident for good.
 * An idle worker moves its few watchers (listeners, mailbox) to a fresh
 * loop and destroys the old one, then trims. The main thread sends to the
 * mailbox only under the pool lock, so it never sees a loop being
 * destroyed; a send that reached the old loop is picked up right after. */
static int refresh_loop(mt_worker *w) {
  if (w->num_conns != 0 || w->stopping) return 0;
  for (size_t i = 0; i < w->num_listeners; i++)
    if (ev_is_active(&w->listeners[i].pause)) return 0; /* out of descriptors: not now */
  struct ev_loop *fresh = ev_loop_new(EVFLAG_AUTO);
  mt_mem_trim *trim = fresh ? mt_mem_trim_new(fresh, w->buffers, on_idle_after_burst, w) : NULL;
  if (trim == NULL) {
    if (fresh != NULL) ev_loop_destroy(fresh);
    return 0;
  }
  struct ev_loop *old = w->loop;
  pthread_mutex_lock(&w->pool->lock);
  ev_async_stop(old, &w->wake);
  for (size_t i = 0; i < w->num_listeners; i++) ev_io_stop(old, &w->listeners[i].io);
  mt_mem_trim_free(w->trim);
  w->trim = trim;
  w->loop = fresh;
  ev_async_start(fresh, &w->wake);
  for (size_t i = 0; i < w->num_listeners; i++)
    if (w->listeners[i].fd >= 0) ev_io_start(fresh, &w->listeners[i].io);
  pthread_mutex_unlock(&w->pool->lock);
  ev_loop_destroy(old);
  on_wake(fresh, &w->wake, 0);
  return 1;
}

static void *worker_main(void *arg);

/* glibc's per-thread cache keeps up to 7 freed chunks of each small size
 * for its thread; after a burst they sit all over the arena and pin its
 * pages (0.3-0.7 MB per worker, measured), and only the thread's exit
 * gives them back. So an idle worker, its loop replaced, continues on a
 * new thread: the successor joins this one, whose cache is then back in
 * the arena, and trims. Not once a stop is requested: mt_workers_stop
 * joins whichever thread runs the worker when it reads w->thread under the
 * lock, and nobody else joins that one. 1 when this thread must return. */
static int hand_over(mt_worker *w) {
  pthread_mutex_lock(&w->pool->lock);
  int handed = 0;
  if (!w->stop_requested) {
    w->predecessor = pthread_self();
    w->has_predecessor = 1;
    pthread_t next; /* inherits this thread's blocked signals and sandbox */
    handed = pthread_create(&next, NULL, worker_main, w) == 0;
    if (handed)
      w->thread = next;
    else
      w->has_predecessor = 0;
  }
  pthread_mutex_unlock(&w->pool->lock);
  return handed;
}

/* The watchers were started by setup_worker before this thread existed: an
 * ev_async_send that arrives before ev_run is then kept, not lost (starting
 * an ev_async clears any pending send). */
static void *worker_main(void *arg) {
  mt_worker *w = arg;
  if (w->has_predecessor) { /* set before this thread was created */
    pthread_join(w->predecessor, NULL);
    w->has_predecessor = 0;
    malloc_trim(0);
  }
  for (;;) {
    ev_run(w->loop, 0);
    if (!w->refresh_requested || w->stopping) break; /* a stopping worker's loop ends for good */
    w->refresh_requested = 0;
    if (refresh_loop(w)) {
      MT_LOG_D("worker idle after a burst: event loop replaced");
      if (hand_over(w)) return NULL;
    }
    malloc_trim(0);
  }
  close_all(w, MT_REASON_SHUTDOWN);
  stop_listeners(w);
  atomic_fetch_add(&w->pool->finished, 1);
  return NULL;
}

static int bind_listener(const mt_sockaddr *addr, char *err, size_t err_len) {
  char text[64];
  mt_sockaddr_format((const struct sockaddr *)&addr->addr, text, sizeof(text));
  int fd = socket(addr->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
      (addr->addr.ss_family == AF_INET6 &&
       setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0) ||
      bind(fd, (const struct sockaddr *)&addr->addr, addr->addr_len) != 0 ||
      listen(fd, LISTEN_BACKLOG) != 0) {
    snprintf(err, err_len, "listen on %s: %s", text, strerror(errno));
    if (fd >= 0) close(fd);
    return -1;
  }
  return fd;
}

static int setup_worker(mt_workers *pool, mt_worker *w, mt_identity *identity, size_t max_conns,
                        char *err, size_t err_len) {
  const mt_config *c = pool->config;
  w->pool = pool;
  w->max_conns = max_conns;
  w->identity = identity ? mt_identity_ref(identity) : NULL;
  w->config = mt_config_ref(pool->config);
  w->metrics = pool->metrics[w - pool->workers];
  /* Each worker its own sequence; without getrandom, any distinct seed will do. */
  if (getrandom(&w->random_state, sizeof(w->random_state), GRND_NONBLOCK) !=
      (ssize_t)sizeof(w->random_state))
    w->random_state = (uint64_t)(uintptr_t)w ^ (uint64_t)getpid() << 32;
  w->loop = ev_loop_new(EVFLAG_AUTO);
  w->num_listeners = c->num_inbound_listeners + c->num_outbound_listeners;
  w->listeners = calloc(w->num_listeners, sizeof(listener));
  w->buffers = mt_relay_buffer_pool_new(max_conns);
  if (w->loop != NULL) w->trim = mt_mem_trim_new(w->loop, w->buffers, on_idle_after_burst, w);
  w->handshakes = mt_source_share_new();
  if (w->loop == NULL || w->listeners == NULL || w->metrics == NULL || w->buffers == NULL ||
      w->trim == NULL || w->handshakes == NULL) {
    snprintf(err, err_len, "out of memory creating a worker");
    return 0;
  }
  ev_async_init(&w->wake, on_wake);
  w->wake.data = w;
  ev_async_start(w->loop, &w->wake);
  for (size_t i = 0; i < w->num_listeners; i++) {
    listener *l = &w->listeners[i];
    l->inbound = i < c->num_inbound_listeners;
    l->config = l->inbound ? &c->inbound_listeners[i]
                           : &c->outbound_listeners[i - c->num_inbound_listeners];
    l->worker = w;
    l->fd = bind_listener(&l->config->listen, err, err_len);
    if (l->fd < 0) {
      for (size_t j = i + 1; j < w->num_listeners; j++) w->listeners[j].fd = -1;
      return 0;
    }
    ev_io_init(&l->io, on_accept, l->fd, EV_READ);
    l->io.data = l;
    ev_io_start(w->loop, &l->io);
    ev_timer_init(&l->pause, on_pause_over, 0.0, 0.0);
    l->pause.data = l;
  }
  return 1;
}

static void free_worker(mt_worker *w) {
  if (w->loop) {
    stop_listeners(w);
    mt_mem_trim_free(w->trim);
    ev_loop_destroy(w->loop);
  }
  mt_buffer_pool_free(w->buffers);
  mt_source_share_free(w->handshakes);
  free(w->listeners);
  mt_identity_unref(w->identity);
  mt_identity_unref(w->pending_identity);
  mt_config_free(w->config);
  mt_config_free(w->pending_config);
  mt_workloads_unref(w->workloads);
  mt_workloads_unref(w->pending_workloads);
}

static void free_pool(mt_workers *pool) {
  for (size_t i = 0; i < pool->count; i++) free_worker(&pool->workers[i]);
  for (size_t i = 0; pool->metrics && i < pool->count; i++)
    mt_worker_metrics_free(pool->metrics[i]);
  free(pool->metrics);
  free(pool->workers);
  mt_config_free(pool->config);
  pthread_mutex_destroy(&pool->lock);
  free(pool);
}

/* Worker threads must never take process signals: the main thread handles
 * them on its own loop. */
static int start_threads(mt_workers *pool, char *err, size_t err_len) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  int ok = 1;
  for (size_t i = 0; ok && i < pool->count; i++) {
    mt_worker *w = &pool->workers[i];
    int rc = pthread_create(&w->thread, NULL, worker_main, w);
    if (rc != 0) {
      snprintf(err, err_len, "starting worker thread: %s", strerror(rc));
      ok = 0;
    }
    w->thread_started = rc == 0;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return ok;
}

mt_workers *mt_workers_start(mt_config *config, mt_identity *identity, mt_demand *demand,
                             char *err, size_t err_len) {
  mt_workers *pool = calloc(1, sizeof(*pool));
  if (pool == NULL) return NULL;
  pool->demand = demand;
  pthread_mutex_init(&pool->lock, NULL);
  pool->config = mt_config_ref(config);
  atomic_init(&pool->finished, 0);
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  pool->count = config->workers > 0 ? (size_t)config->workers : (size_t)(cores > 0 ? cores : 1);
  pool->workers = calloc(pool->count, sizeof(mt_worker));
  pool->metrics = calloc(pool->count, sizeof(mt_worker_metrics *));
  if (pool->workers == NULL || pool->metrics == NULL) {
    free_pool(pool);
    return NULL;
  }
  for (size_t i = 0; i < pool->count; i++) pool->metrics[i] = mt_worker_metrics_new();
  size_t share = ((size_t)config->max_connections + pool->count - 1) / pool->count;
  int ok = 1;
  for (size_t i = 0; ok && i < pool->count; i++)
    ok = setup_worker(pool, &pool->workers[i], identity, share, err, err_len);
  if (ok) ok = start_threads(pool, err, err_len);
  if (!ok) {
    mt_workers_stop(pool, 0);
    return NULL;
  }
  return pool;
}

/* Main thread -> every worker: |put| fills one worker's mailbox under the
 * pool lock (replacing what it held), then every loop is woken. */
typedef void (*mailbox_put_fn)(mt_worker *w, void *arg);

static void post_to_all(mt_workers *pool, mailbox_put_fn put, void *arg) {
  /* Sent under the lock: a worker replaces its loop under it (refresh_loop). */
  pthread_mutex_lock(&pool->lock);
  for (size_t i = 0; i < pool->count; i++) put(&pool->workers[i], arg);
  for (size_t i = 0; i < pool->count; i++)
    if (pool->workers[i].loop) ev_async_send(pool->workers[i].loop, &pool->workers[i].wake);
  pthread_mutex_unlock(&pool->lock);
}

static void put_config(mt_worker *w, void *arg) {
  mt_config_free(w->pending_config);
  w->pending_config = mt_config_ref(arg);
}

static void put_workloads(mt_worker *w, void *arg) {
  mt_workloads_unref(w->pending_workloads);
  w->pending_workloads = arg ? mt_workloads_ref(arg) : NULL;
  w->has_pending_workloads = 1;
}

static void put_identity(mt_worker *w, void *arg) {
  mt_identity_unref(w->pending_identity);
  w->pending_identity = arg ? mt_identity_ref(arg) : NULL;
  w->has_pending_identity = 1;
}

void mt_workers_publish_config(mt_workers *pool, mt_config *config) {
  post_to_all(pool, put_config, config);
}

void mt_workers_publish_workloads(mt_workers *pool, mt_workloads *table) {
  post_to_all(pool, put_workloads, table);
}

void mt_workers_publish_identity(mt_workers *pool, mt_identity *identity) {
  post_to_all(pool, put_identity, identity);
}

void mt_workers_begin_stop(mt_workers *pool, int drain_ms) {
  if (pool == NULL) return;
  pthread_mutex_lock(&pool->lock);
  for (size_t i = 0; i < pool->count; i++) {
    if (pool->workers[i].stop_requested) continue; /* the first deadline stands */
    pool->workers[i].stop_requested = 1;
    pool->workers[i].drain_ms = drain_ms;
  }
  /* Wake every worker, so they all drain concurrently (under the lock: see
   * refresh_loop). */
  for (size_t i = 0; i < pool->count; i++)
    if (pool->workers[i].thread_started)
      ev_async_send(pool->workers[i].loop, &pool->workers[i].wake);
  pthread_mutex_unlock(&pool->lock);
}

int mt_workers_drained(const mt_workers *pool) {
  return atomic_load(&((mt_workers *)pool)->finished) == (int)pool->count;
}

void mt_workers_stop(mt_workers *pool, int drain_ms) {
  if (pool == NULL) return;
  mt_workers_begin_stop(pool, drain_ms);
  for (size_t i = 0; i < pool->count; i++) {
    if (!pool->workers[i].thread_started) continue;
    /* Read under the lock: an idle worker may have moved to a new thread
     * (hand_over), which it can no longer do now that a stop is requested. */
    pthread_mutex_lock(&pool->lock);
    pthread_t thread = pool->workers[i].thread;
    pthread_mutex_unlock(&pool->lock);
    pthread_join(thread, NULL);
  }
  free_pool(pool);
}
