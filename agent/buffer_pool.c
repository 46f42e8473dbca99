/* buffer_pool.c: a bounded free list of equal-sized buffers. A cached
 * buffer's first bytes hold the link to the next one, so the cache needs no
 * memory of its own. */
#include "agent/buffer_pool.h"

#include <stdlib.h>

typedef struct free_buffer {
  struct free_buffer *next;
} free_buffer;

struct mt_buffer_pool {
  size_t buffer_bytes, max_buffers, cache_max;
  free_buffer *cache;
  mt_buffer_pool_stats stats;
};

mt_buffer_pool *mt_buffer_pool_new(size_t buffer_bytes, size_t max_buffers, size_t cache_max) {
  if (buffer_bytes < sizeof(free_buffer) || max_buffers == 0) return NULL;
  mt_buffer_pool *pool = calloc(1, sizeof(*pool));
  if (pool == NULL) return NULL;
  pool->buffer_bytes = buffer_bytes;
  pool->max_buffers = max_buffers;
  pool->cache_max = cache_max;
  return pool;
}

void mt_buffer_pool_free(mt_buffer_pool *pool) {
  if (pool == NULL) return;
  mt_buffer_pool_release(pool);
  free(pool);
}

uint8_t *mt_buffer_pool_get(mt_buffer_pool *pool) {
  if (pool->stats.in_use >= pool->max_buffers) {
    pool->stats.refused++;
    return NULL;
  }
  uint8_t *buf;
  if (pool->cache != NULL) {
    free_buffer *b = pool->cache;
    pool->cache = b->next;
    pool->stats.cached--;
    buf = (uint8_t *)b;
  } else {
    buf = malloc(pool->buffer_bytes);
    if (buf == NULL) {
      pool->stats.refused++;
      return NULL;
    }
  }
  pool->stats.in_use++;
  return buf;
}

void mt_buffer_pool_put(mt_buffer_pool *pool, uint8_t *buf) {
  if (buf == NULL) return;
  pool->stats.in_use--;
  if (pool->stats.cached >= pool->cache_max) {
    free(buf);
    return;
  }
  free_buffer *b = (free_buffer *)(void *)buf;
  b->next = pool->cache;
  pool->cache = b;
  pool->stats.cached++;
}

void mt_buffer_pool_release(mt_buffer_pool *pool) {
  while (pool->cache != NULL) {
    free_buffer *b = pool->cache;
    pool->cache = b->next;
    free(b);
  }
  pool->stats.cached = 0;
}

size_t mt_buffer_pool_buffer_bytes(const mt_buffer_pool *pool) { return pool->buffer_bytes; }

mt_buffer_pool_stats mt_buffer_pool_stats_of(const mt_buffer_pool *pool) { return pool->stats; }
