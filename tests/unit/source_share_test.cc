// source_share: per-source counts of handshakes in progress.
#include "agent/source_share.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>

#include <string>
#include <vector>

namespace {

struct Addr {
  sockaddr_storage ss{};
  const sockaddr *sa() const { return reinterpret_cast<const sockaddr *>(&ss); }
};

Addr V4(const char *ip, uint16_t port = 1) {
  Addr a;
  auto *in = reinterpret_cast<sockaddr_in *>(&a.ss);
  in->sin_family = AF_INET;
  in->sin_port = htons(port);
  EXPECT_EQ(1, inet_pton(AF_INET, ip, &in->sin_addr));
  return a;
}

Addr V6(const char *ip, uint16_t port = 1) {
  Addr a;
  auto *in = reinterpret_cast<sockaddr_in6 *>(&a.ss);
  in->sin6_family = AF_INET6;
  in->sin6_port = htons(port);
  EXPECT_EQ(1, inet_pton(AF_INET6, ip, &in->sin6_addr));
  return a;
}

struct Share {
  mt_source_share *s = mt_source_share_new();
  ~Share() { mt_source_share_free(s); }
};

TEST(SourceShare, RefusesASourceAtItsLimitAndNoOtherSource) {
  Share t;
  Addr a = V4("10.0.0.1", 1000), b = V4("10.0.0.2", 1000);
  for (int i = 0; i < 3; i++) EXPECT_EQ(1, mt_source_share_take(t.s, a.sa(), 3));
  EXPECT_EQ(0, mt_source_share_take(t.s, V4("10.0.0.1", 2000).sa(), 3)) << "port is ignored";
  EXPECT_EQ(1, mt_source_share_take(t.s, b.sa(), 3));
  EXPECT_EQ(3u, mt_source_share_held(t.s, a.sa()));
  EXPECT_EQ(1u, mt_source_share_held(t.s, b.sa()));
  EXPECT_EQ(2u, mt_source_share_sources(t.s));
  mt_source_share_give(t.s, a.sa());
  EXPECT_EQ(1, mt_source_share_take(t.s, a.sa(), 3)) << "a slot given back is free again";
}

TEST(SourceShare, ZeroMeansNoLimitButStillCounts) {
  Share t;
  Addr a = V6("2001:db8::1");
  for (int i = 0; i < 1000; i++) ASSERT_EQ(1, mt_source_share_take(t.s, a.sa(), 0));
  EXPECT_EQ(1000u, mt_source_share_held(t.s, a.sa()));
}

TEST(SourceShare, Ipv4AndItsMappedIpv6AreOneSource) {
  Share t;
  EXPECT_EQ(1, mt_source_share_take(t.s, V4("192.0.2.7").sa(), 2));
  EXPECT_EQ(1, mt_source_share_take(t.s, V6("::ffff:192.0.2.7").sa(), 2));
  EXPECT_EQ(0, mt_source_share_take(t.s, V4("192.0.2.7").sa(), 2));
  EXPECT_EQ(1u, mt_source_share_sources(t.s));
}

TEST(SourceShare, GivingBackWhatWasNeverTakenChangesNothing) {
  Share t;
  mt_source_share_give(t.s, V4("10.9.9.9").sa());
  EXPECT_EQ(0u, mt_source_share_sources(t.s));
  EXPECT_EQ(1, mt_source_share_take(t.s, V4("10.9.9.9").sa(), 1));
  mt_source_share_give(t.s, V4("10.9.9.9").sa());
  mt_source_share_give(t.s, V4("10.9.9.9").sa());
  EXPECT_EQ(0u, mt_source_share_held(t.s, V4("10.9.9.9").sa()));
}

// Many sources (growth), then removal in an order that exercises the
// backward shift: every remaining count must stay findable and exact.
TEST(SourceShare, ManySourcesGrowAndShrinkWithoutLosingAnyCount) {
  Share t;
  std::vector<Addr> addrs;
  for (int i = 0; i < 5000; i++) {
    char ip[32];
    snprintf(ip, sizeof(ip), "10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
    addrs.push_back(V4(ip));
  }
  for (size_t i = 0; i < addrs.size(); i++)
    for (size_t k = 0; k <= i % 3; k++) ASSERT_EQ(1, mt_source_share_take(t.s, addrs[i].sa(), 3));
  EXPECT_EQ(addrs.size(), mt_source_share_sources(t.s));
  // Remove every source whose index is not a multiple of 7, interleaved.
  for (size_t i = 0; i < addrs.size(); i++) {
    if (i % 7 == 0) continue;
    for (size_t k = 0; k <= i % 3; k++) mt_source_share_give(t.s, addrs[i].sa());
  }
  size_t left = 0;
  for (size_t i = 0; i < addrs.size(); i++) {
    unsigned want = i % 7 == 0 ? static_cast<unsigned>(i % 3 + 1) : 0;
    ASSERT_EQ(want, mt_source_share_held(t.s, addrs[i].sa())) << i;
    left += want != 0;
  }
  EXPECT_EQ(left, mt_source_share_sources(t.s));
  for (size_t i = 0; i < addrs.size(); i += 7)
    for (size_t k = 0; k <= i % 3; k++) mt_source_share_give(t.s, addrs[i].sa());
  EXPECT_EQ(0u, mt_source_share_sources(t.s));
}

}  // namespace
