/* mem_trim.c: the "connections dropped, give memory back" timer. */
#include "agent/mem_trim.h"

#include <malloc.h>
#include <stdlib.h>

enum {
  /* Wait this long after a close before trimming: a burst that is closing
   * closes many connections in a row, and one trim after them is enough. */
  TRIM_DELAY_MS = 1000,
  /* Trim only when at least this many connections have gone since the last
   * peak: a few closes free little, and a trim walks the whole heap. */
  TRIM_MIN_DROP_CONNS = 64,
  /* glibc's default, made fixed. Left dynamic, freeing one mmapped block
   * (libev grows its per-fd arrays past the mmap threshold in a burst)
   * raises the trim threshold to twice that block's size, after which every
   * worker arena keeps that much free memory at its top for good; and
   * malloc_trim(0) does not trim the top of a thread's arena. */
  MALLOC_TRIM_THRESHOLD_BYTES = 128 * 1024,
};

struct mt_mem_trim {
  struct ev_loop *loop;
  mt_buffer_pool *buffers;
  ev_timer timer;
  size_t live, peak; /* connections now, and the most since the last trim */
  size_t trims;
};

static void on_trim_due(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  mt_mem_trim *t = w->data;
  if (t->peak - t->live < TRIM_MIN_DROP_CONNS) return;
  if (t->buffers != NULL) mt_buffer_pool_release(t->buffers);
  malloc_trim(0);
  t->peak = t->live;
  t->trims++;
}

mt_mem_trim *mt_mem_trim_new(struct ev_loop *loop, mt_buffer_pool *buffers) {
  mallopt(M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES);
  mt_mem_trim *t = calloc(1, sizeof(*t));
  if (t == NULL) return NULL;
  t->loop = loop;
  t->buffers = buffers;
  ev_timer_init(&t->timer, on_trim_due, TRIM_DELAY_MS / 1000.0, 0.0);
  t->timer.data = t;
  return t;
}

void mt_mem_trim_free(mt_mem_trim *t) {
  if (t == NULL) return;
  ev_timer_stop(t->loop, &t->timer);
  free(t);
}

void mt_mem_trim_conn_opened(mt_mem_trim *t) {
  t->live++;
  if (t->live > t->peak) t->peak = t->live;
}

void mt_mem_trim_conn_closed(mt_mem_trim *t) {
  if (t->live > 0) t->live--;
  if (t->peak - t->live >= TRIM_MIN_DROP_CONNS && !ev_is_active(&t->timer))
    ev_timer_start(t->loop, &t->timer);
}

size_t mt_mem_trim_count(const mt_mem_trim *t) { return t->trims; }
