/* mem_trim: gives a worker's freed heap back to the system after a burst.
 *
 * glibc keeps freed memory in its arenas; after thousands of connections
 * close, the free chunks are scattered between live ones and RSS stays at
 * the peak. When the worker's connection count has dropped well below its
 * recent peak, a one-shot timer on the worker's loop frees the relay-buffer
 * cache and calls malloc_trim(0), which returns every free page of every
 * arena. It runs at most once per delay, never on the data path, and
 * never while the connection count is steady. One per worker thread.
 * When a trim finds the worker idle after a large burst, it asks its owner
 * (the callback) to replace the event loop instead: libev never shrinks the
 * arrays a burst made it grow (see worker.c), and the owner trims after.
 * Creating one also fixes glibc's trim threshold for the process (see
 * mem_trim.c), so each arena gives back a large free top by itself. */
#ifndef MT_MEM_TRIM_H
#define MT_MEM_TRIM_H

#include <ev.h>
#include <stddef.h>

#include "agent/buffer_pool.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_mem_trim mt_mem_trim;

/* Called, on the loop, instead of malloc_trim when a trim finds no
 * connection left after at least MT_MEM_TRIM_BURST_CONNS. */
typedef void (*mt_mem_trim_idle_fn)(void *arg);
enum { MT_MEM_TRIM_BURST_CONNS = 256 };

/* Watches connection counts on |loop|; |buffers| (borrowed, may be NULL)
 * has its cache freed with every trim. |idle_after_burst| may be NULL. */
mt_mem_trim *mt_mem_trim_new(struct ev_loop *loop, mt_buffer_pool *buffers,
                             mt_mem_trim_idle_fn idle_after_burst, void *arg);

/* Stops the timer and frees; accepts NULL. Call before the loop is destroyed. */
void mt_mem_trim_free(mt_mem_trim *trim);

void mt_mem_trim_conn_opened(mt_mem_trim *trim);
void mt_mem_trim_conn_closed(mt_mem_trim *trim);

/* How many trims have run (for tests and diagnostics). */
size_t mt_mem_trim_count(const mt_mem_trim *trim);

#ifdef __cplusplus
}
#endif

#endif /* MT_MEM_TRIM_H */
