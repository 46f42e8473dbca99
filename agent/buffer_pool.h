/* buffer_pool: the relay buffers of one worker thread.
 *
 * A connection borrows a buffer only while bytes are in flight in one
 * direction and gives it back when that direction drains, so an idle
 * connection holds none. The pool belongs to one thread and takes no lock.
 * It is bounded: at most |max_buffers| are out at once, and a get beyond
 * that (or a failed allocation) returns NULL for the caller to refuse.
 * Freed buffers wait in a small cache for the next get; buffers beyond the
 * cache are freed at once, and mt_buffer_pool_release frees the cache too,
 * so after a burst the memory can go back to the system. */
#ifndef MT_BUFFER_POOL_H
#define MT_BUFFER_POOL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_buffer_pool mt_buffer_pool;

typedef struct {
  size_t in_use;  /* buffers currently borrowed */
  size_t cached;  /* free buffers kept for the next get */
  size_t refused; /* gets that returned NULL (limit or allocation failure) */
} mt_buffer_pool_stats;

/* |buffer_bytes| per buffer, at most |max_buffers| borrowed at once, at most
 * |cache_max| kept free. NULL when out of memory or an argument is 0. */
mt_buffer_pool *mt_buffer_pool_new(size_t buffer_bytes, size_t max_buffers, size_t cache_max);

/* Frees the pool and its cache; accepts NULL. Every buffer must be back. */
void mt_buffer_pool_free(mt_buffer_pool *pool);

/* Borrows one buffer of mt_buffer_pool_buffer_bytes(); NULL when the pool is
 * at its limit or memory is short. */
uint8_t *mt_buffer_pool_get(mt_buffer_pool *pool);

/* Returns a buffer borrowed from |pool|; accepts NULL. */
void mt_buffer_pool_put(mt_buffer_pool *pool, uint8_t *buf);

/* Frees every cached buffer (the borrowed ones are not touched). */
void mt_buffer_pool_release(mt_buffer_pool *pool);

size_t mt_buffer_pool_buffer_bytes(const mt_buffer_pool *pool);
mt_buffer_pool_stats mt_buffer_pool_stats_of(const mt_buffer_pool *pool);

#ifdef __cplusplus
}
#endif

#endif /* MT_BUFFER_POOL_H */
