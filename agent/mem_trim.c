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
  /* What an arena keeps above its top when it trims itself (glibc: 128 KB).
   * A thread arena's top is never trimmed by malloc_trim, only when a free
   * leaves more than the threshold there; then it keeps this much plus up
   * to the threshold. Small, so an idle worker's arena holds little. */
  MALLOC_TOP_PAD_BYTES = 16 * 1024,
};

struct mt_mem_trim {
  struct ev_loop *loop;
  mt_buffer_pool *buffers;
  mt_mem_trim_idle_fn idle_after_burst;
  void *arg;
  ev_timer timer;
  size_t live, peak; /* connections now, and the most since the last trim */
  size_t burst_peak; /* the most since the worker was last idle after a burst */
  size_t trims;
};

static void on_trim_due(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  mt_mem_trim *t = w->data;
  int idle_after_burst = t->live == 0 && t->burst_peak >= MT_MEM_TRIM_BURST_CONNS;
  if (t->peak - t->live < TRIM_MIN_DROP_CONNS && !idle_after_burst) return;
  if (t->buffers != NULL) mt_buffer_pool_release(t->buffers);
  t->peak = t->live;
  t->trims++;
  if (idle_after_burst) t->burst_peak = 0;
  if (idle_after_burst && t->idle_after_burst != NULL)
    t->idle_after_burst(t->arg); /* replaces the loop (and frees this), then trims */
  else
    malloc_trim(0);
}

/* The drop since the last trim is worth a trim, or the worker has just gone
 * idle after a burst. */
static int trim_due(const mt_mem_trim *t) {
  return t->peak - t->live >= TRIM_MIN_DROP_CONNS ||
         (t->live == 0 && t->burst_peak >= MT_MEM_TRIM_BURST_CONNS);
}

mt_mem_trim *mt_mem_trim_new(struct ev_loop *loop, mt_buffer_pool *buffers,
                             mt_mem_trim_idle_fn idle_after_burst, void *arg) {
  mallopt(M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES);
  mallopt(M_TOP_PAD, MALLOC_TOP_PAD_BYTES);
  mt_mem_trim *t = calloc(1, sizeof(*t));
  if (t == NULL) return NULL;
  t->loop = loop;
  t->buffers = buffers;
  t->idle_after_burst = idle_after_burst;
  t->arg = arg;
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
  if (t->live > t->burst_peak) t->burst_peak = t->live;
}

void mt_mem_trim_conn_closed(mt_mem_trim *t) {
  if (t->live > 0) t->live--;
  if (trim_due(t) && !ev_is_active(&t->timer)) ev_timer_start(t->loop, &t->timer);
}

size_t mt_mem_trim_count(const mt_mem_trim *t) { return t->trims; }
