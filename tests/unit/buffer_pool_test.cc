// The relay buffer pool: bounded, cached, and giving memory back.
#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <vector>

extern "C" {
#include "agent/buffer_pool.h"
}

namespace {

constexpr size_t kBytes = 16 * 1024;

struct Pool {
  Pool(size_t max, size_t cache) : p(mt_buffer_pool_new(kBytes, max, cache)) {}
  ~Pool() { mt_buffer_pool_free(p); }
  mt_buffer_pool *p;
};

TEST(BufferPoolTest, LendsBuffersOfTheConfiguredSizeThatCanBeWrittenWhole) {
  Pool pool(2, 2);
  ASSERT_NE(pool.p, nullptr);
  EXPECT_EQ(mt_buffer_pool_buffer_bytes(pool.p), kBytes);
  uint8_t *a = mt_buffer_pool_get(pool.p);
  ASSERT_NE(a, nullptr);
  memset(a, 0xab, kBytes);  // ASan catches a short buffer
  EXPECT_EQ(mt_buffer_pool_stats_of(pool.p).in_use, 1u);
  mt_buffer_pool_put(pool.p, a);
  EXPECT_EQ(mt_buffer_pool_stats_of(pool.p).in_use, 0u);
}

TEST(BufferPoolTest, RefusesBeyondItsLimitAndCountsTheRefusal) {
  Pool pool(2, 2);
  uint8_t *a = mt_buffer_pool_get(pool.p);
  uint8_t *b = mt_buffer_pool_get(pool.p);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_NE(a, b);
  EXPECT_EQ(mt_buffer_pool_get(pool.p), nullptr);
  EXPECT_EQ(mt_buffer_pool_stats_of(pool.p).refused, 1u);
  mt_buffer_pool_put(pool.p, a);
  uint8_t *c = mt_buffer_pool_get(pool.p);  // a returned buffer makes room again
  EXPECT_NE(c, nullptr);
  mt_buffer_pool_put(pool.p, b);
  mt_buffer_pool_put(pool.p, c);
}

TEST(BufferPoolTest, AReturnedBufferIsLentAgainFromTheCache) {
  Pool pool(4, 4);
  uint8_t *a = mt_buffer_pool_get(pool.p);
  mt_buffer_pool_put(pool.p, a);
  EXPECT_EQ(mt_buffer_pool_stats_of(pool.p).cached, 1u);
  EXPECT_EQ(mt_buffer_pool_get(pool.p), a);
  EXPECT_EQ(mt_buffer_pool_stats_of(pool.p).cached, 0u);
  mt_buffer_pool_put(pool.p, a);
}

TEST(BufferPoolTest, KeepsNoMoreThanItsCacheAfterABurst) {
  Pool pool(100, 3);
  std::vector<uint8_t *> out;
  for (int i = 0; i < 100; i++) out.push_back(mt_buffer_pool_get(pool.p));
  std::set<uint8_t *> distinct(out.begin(), out.end());
  EXPECT_EQ(distinct.size(), 100u);
  EXPECT_EQ(distinct.count(nullptr), 0u);
  for (uint8_t *b : out) mt_buffer_pool_put(pool.p, b);
  mt_buffer_pool_stats s = mt_buffer_pool_stats_of(pool.p);
  EXPECT_EQ(s.in_use, 0u);
  EXPECT_EQ(s.cached, 3u);
}

TEST(BufferPoolTest, ReleaseFreesTheCacheButNotBorrowedBuffers) {
  Pool pool(4, 4);
  uint8_t *kept = mt_buffer_pool_get(pool.p);
  uint8_t *a = mt_buffer_pool_get(pool.p);
  mt_buffer_pool_put(pool.p, a);
  mt_buffer_pool_release(pool.p);
  mt_buffer_pool_stats s = mt_buffer_pool_stats_of(pool.p);
  EXPECT_EQ(s.cached, 0u);
  EXPECT_EQ(s.in_use, 1u);
  memset(kept, 1, kBytes);  // still ours
  mt_buffer_pool_put(pool.p, kept);
}

TEST(BufferPoolTest, ACacheOfZeroFreesEveryReturnedBuffer) {
  Pool pool(2, 0);
  mt_buffer_pool_put(pool.p, mt_buffer_pool_get(pool.p));
  EXPECT_EQ(mt_buffer_pool_stats_of(pool.p).cached, 0u);
}

TEST(BufferPoolTest, RejectsSizesThatCannotHoldItsLinkAndAZeroLimit) {
  EXPECT_EQ(mt_buffer_pool_new(1, 4, 4), nullptr);
  EXPECT_EQ(mt_buffer_pool_new(kBytes, 0, 4), nullptr);
}

TEST(BufferPoolTest, FreeAndPutAcceptNull) {
  mt_buffer_pool_free(nullptr);
  Pool pool(1, 1);
  mt_buffer_pool_put(pool.p, nullptr);
  EXPECT_EQ(mt_buffer_pool_stats_of(pool.p).in_use, 0u);
}

}  // namespace
