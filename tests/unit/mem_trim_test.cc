// The trim timer: memory goes back only after the connection count dropped.
#include <gtest/gtest.h>

#include <ev.h>

extern "C" {
#include "agent/buffer_pool.h"
#include "agent/mem_trim.h"
}

namespace {

constexpr double kLongerThanTheTrimDelayS = 1.3;  // TRIM_DELAY_MS is 1000

struct Bed {
  Bed() : loop(ev_loop_new(EVFLAG_AUTO)), pool(mt_buffer_pool_new(1024, 8, 8)) {
    trim = mt_mem_trim_new(loop, pool, nullptr, nullptr);
  }
  ~Bed() {
    mt_mem_trim_free(trim);
    mt_buffer_pool_free(pool);
    ev_loop_destroy(loop);
  }
  // Runs the loop until nothing but our guard timer is left, or the guard fires.
  void RunPastTheDelay() {
    ev_timer guard;
    ev_timer_init(
        &guard, [](struct ev_loop *l, ev_timer *, int) { ev_break(l, EVBREAK_ALL); },
        kLongerThanTheTrimDelayS, 0.0);
    ev_timer_start(loop, &guard);
    ev_run(loop, 0);
    ev_timer_stop(loop, &guard);
  }
  struct ev_loop *loop;
  mt_buffer_pool *pool;
  mt_mem_trim *trim;
};

TEST(MemTrimTest, TrimsAndEmptiesTheBufferCacheAfterManyConnectionsClose) {
  Bed bed;
  mt_buffer_pool_put(bed.pool, mt_buffer_pool_get(bed.pool));
  ASSERT_EQ(mt_buffer_pool_stats_of(bed.pool).cached, 1u);
  for (int i = 0; i < 100; i++) mt_mem_trim_conn_opened(bed.trim);
  for (int i = 0; i < 100; i++) mt_mem_trim_conn_closed(bed.trim);
  bed.RunPastTheDelay();
  EXPECT_EQ(mt_mem_trim_count(bed.trim), 1u);
  EXPECT_EQ(mt_buffer_pool_stats_of(bed.pool).cached, 0u);
}

TEST(MemTrimTest, DoesNotTrimWhileTheConnectionCountIsSteady) {
  Bed bed;
  for (int i = 0; i < 100; i++) mt_mem_trim_conn_opened(bed.trim);
  for (int i = 0; i < 1000; i++) {  // churn: one closes, one opens
    mt_mem_trim_conn_closed(bed.trim);
    mt_mem_trim_conn_opened(bed.trim);
  }
  bed.RunPastTheDelay();
  EXPECT_EQ(mt_mem_trim_count(bed.trim), 0u);
}

TEST(MemTrimTest, TrimsAgainOnlyAfterAnotherDrop) {
  Bed bed;
  for (int i = 0; i < 200; i++) mt_mem_trim_conn_opened(bed.trim);
  for (int i = 0; i < 100; i++) mt_mem_trim_conn_closed(bed.trim);
  bed.RunPastTheDelay();
  ASSERT_EQ(mt_mem_trim_count(bed.trim), 1u);
  mt_mem_trim_conn_closed(bed.trim);  // one more close is no burst
  bed.RunPastTheDelay();
  EXPECT_EQ(mt_mem_trim_count(bed.trim), 1u);
  for (int i = 0; i < 99; i++) mt_mem_trim_conn_closed(bed.trim);
  bed.RunPastTheDelay();
  EXPECT_EQ(mt_mem_trim_count(bed.trim), 2u);
}

struct IdleBed : Bed {
  IdleBed() {
    mt_mem_trim_free(trim);
    trim = mt_mem_trim_new(loop, pool, [](void *arg) { ++*static_cast<int *>(arg); }, &idle_calls);
  }
  int idle_calls = 0;
};

TEST(MemTrimTest, AskForAFreshLoopOnceIdleAfterABurstEvenAfterASmallLastDrop) {
  IdleBed bed;
  for (int i = 0; i < 300; i++) mt_mem_trim_conn_opened(bed.trim);
  for (int i = 0; i < 250; i++) mt_mem_trim_conn_closed(bed.trim);
  bed.RunPastTheDelay();
  ASSERT_EQ(mt_mem_trim_count(bed.trim), 1u);
  EXPECT_EQ(bed.idle_calls, 0) << "50 connections are still open";
  for (int i = 0; i < 50; i++) mt_mem_trim_conn_closed(bed.trim);  // fewer than a trim's drop
  bed.RunPastTheDelay();
  EXPECT_EQ(bed.idle_calls, 1);
  bed.RunPastTheDelay();
  EXPECT_EQ(bed.idle_calls, 1) << "once per burst";
}

TEST(MemTrimTest, NoFreshLoopAfterASmallBurst) {
  IdleBed bed;
  for (int i = 0; i < MT_MEM_TRIM_BURST_CONNS - 1; i++) mt_mem_trim_conn_opened(bed.trim);
  for (int i = 0; i < MT_MEM_TRIM_BURST_CONNS - 1; i++) mt_mem_trim_conn_closed(bed.trim);
  bed.RunPastTheDelay();
  EXPECT_EQ(mt_mem_trim_count(bed.trim), 1u);
  EXPECT_EQ(bed.idle_calls, 0);
}

}  // namespace
