// Specification of agent/jwt_svid_cache: when a cached JWT-SVID answers,
// when it is due for a background refresh, and how the cache stays bounded.
#include "agent/jwt_svid_cache.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

const int64_t kNow = 1700000000;
const char kId[] = "spiffe://example.org/ns/default/sa/frontend";

struct Key {
  mt_jwt_svid_key key{};
  explicit Key(std::vector<const char *> aud, const char *id = kId, int impersonate = 0) {
    EXPECT_TRUE(mt_jwt_svid_key_make(id, impersonate, aud.data(), aud.size(), &key));
  }
  ~Key() { mt_jwt_svid_key_dispose(&key); }
};

struct CacheDeleter {
  void operator()(mt_jwt_svid_cache *c) const { mt_jwt_svid_cache_free(c); }
};
using CachePtr = std::unique_ptr<mt_jwt_svid_cache, CacheDeleter>;

TEST(JwtSvidKey, AudienceOrderAndRepeatsDoNotMatter) {
  Key a({"x", "y"}), b({"y", "x", "y"}), c({"x"});
  EXPECT_TRUE(mt_jwt_svid_key_equal(&a.key, &b.key));
  EXPECT_FALSE(mt_jwt_svid_key_equal(&a.key, &c.key));
}

TEST(JwtSvidKey, IdentityAndImpersonationAreParts) {
  Key own({"x"}), impersonated({"x"}, kId, 1), other({"x"}, "spiffe://example.org/b");
  EXPECT_FALSE(mt_jwt_svid_key_equal(&own.key, &impersonated.key));
  EXPECT_FALSE(mt_jwt_svid_key_equal(&own.key, &other.key));
  // "a" + ["bc"] and "ab" + ["c"] must not collide.
  Key split1({"bc"}, "a"), split2({"c"}, "ab");
  EXPECT_FALSE(mt_jwt_svid_key_equal(&split1.key, &split2.key));
}

TEST(JwtSvidKey, RefusesNoOrEmptyOrTooManyAudiences) {
  mt_jwt_svid_key k;
  EXPECT_FALSE(mt_jwt_svid_key_make(kId, 0, nullptr, 0, &k));
  const char *empty[] = {"a", ""};
  EXPECT_FALSE(mt_jwt_svid_key_make(kId, 0, empty, 2, &k));
  std::vector<const char *> many(MT_JWT_SVID_MAX_AUDIENCES + 1, "a");
  EXPECT_FALSE(mt_jwt_svid_key_make(kId, 0, many.data(), many.size(), &k));
}

TEST(JwtSvidCache, AnswersWhileMoreThanHalfTheLifeIsLeft) {
  CachePtr c(mt_jwt_svid_cache_new(8, 600));
  Key k({"x"});
  ASSERT_TRUE(mt_jwt_svid_cache_put(c.get(), &k.key, "tok", kId, kNow + 300, kNow));
  int due = -1;
  const mt_jwt_svid_entry *e = mt_jwt_svid_cache_fresh(c.get(), &k.key, kNow, &due);
  ASSERT_NE(e, nullptr);
  EXPECT_STREQ("tok", e->token);
  EXPECT_STREQ(kId, e->spiffe_id);
  EXPECT_EQ(kNow + 300, e->expires_at_s);
  EXPECT_EQ(0, due);
  EXPECT_NE(nullptr, mt_jwt_svid_cache_fresh(c.get(), &k.key, kNow + 149, &due));
  EXPECT_EQ(nullptr, mt_jwt_svid_cache_fresh(c.get(), &k.key, kNow + 150, &due));
  // Past half its life it is still better than nothing until it expires.
  EXPECT_NE(nullptr, mt_jwt_svid_cache_unexpired(c.get(), &k.key, kNow + 299));
  EXPECT_EQ(nullptr, mt_jwt_svid_cache_unexpired(c.get(), &k.key, kNow + 300));
}

TEST(JwtSvidCache, IsDueForRefreshBeforeItStopsAnswering) {
  CachePtr c(mt_jwt_svid_cache_new(8, 600));
  Key k({"x"});
  ASSERT_TRUE(mt_jwt_svid_cache_put(c.get(), &k.key, "tok", kId, kNow + 100, kNow));
  int due = -1;
  ASSERT_NE(nullptr, mt_jwt_svid_cache_fresh(c.get(), &k.key, kNow + 39, &due));
  EXPECT_EQ(0, due);
  ASSERT_NE(nullptr, mt_jwt_svid_cache_fresh(c.get(), &k.key, kNow + 40, &due));
  EXPECT_EQ(1, due);
}

TEST(JwtSvidCache, PutReplacesTheEntryOfTheSameKey) {
  CachePtr c(mt_jwt_svid_cache_new(8, 600));
  Key k({"x"}), same({"x", "x"});
  ASSERT_TRUE(mt_jwt_svid_cache_put(c.get(), &k.key, "old", kId, kNow + 100, kNow));
  ASSERT_TRUE(mt_jwt_svid_cache_put(c.get(), &same.key, "new", kId, kNow + 200, kNow + 60));
  EXPECT_EQ(1u, mt_jwt_svid_cache_count(c.get()));
  EXPECT_STREQ("new", mt_jwt_svid_cache_fresh(c.get(), &k.key, kNow + 60, nullptr)->token);
}

TEST(JwtSvidCache, SweepDropsIdleAndExpiredEntries) {
  CachePtr c(mt_jwt_svid_cache_new(8, 100));
  Key used({"used"}), idle({"idle"}), expiring({"expiring"});
  mt_jwt_svid_cache_put(c.get(), &used.key, "t1", kId, kNow + 3600, kNow);
  mt_jwt_svid_cache_put(c.get(), &idle.key, "t2", kId, kNow + 3600, kNow);
  mt_jwt_svid_cache_put(c.get(), &expiring.key, "t3", kId, kNow + 120, kNow);
  ASSERT_NE(nullptr, mt_jwt_svid_cache_fresh(c.get(), &used.key, kNow + 50, nullptr));
  ASSERT_NE(nullptr, mt_jwt_svid_cache_fresh(c.get(), &expiring.key, kNow + 50, nullptr));
  EXPECT_EQ(0u, mt_jwt_svid_cache_sweep(c.get(), kNow + 99));
  EXPECT_EQ(1u, mt_jwt_svid_cache_sweep(c.get(), kNow + 100));  // idle
  EXPECT_EQ(nullptr, mt_jwt_svid_cache_unexpired(c.get(), &idle.key, kNow + 100));
  EXPECT_EQ(1u, mt_jwt_svid_cache_sweep(c.get(), kNow + 120));  // expired
  EXPECT_EQ(1u, mt_jwt_svid_cache_count(c.get()));
}

TEST(JwtSvidCache, AtTheMaximumTheLeastRecentlyUsedMakesRoom) {
  CachePtr c(mt_jwt_svid_cache_new(2, 600));
  Key a({"a"}), b({"b"}), d({"d"});
  mt_jwt_svid_cache_put(c.get(), &a.key, "ta", kId, kNow + 3600, kNow);
  mt_jwt_svid_cache_put(c.get(), &b.key, "tb", kId, kNow + 3600, kNow + 1);
  ASSERT_NE(nullptr, mt_jwt_svid_cache_fresh(c.get(), &a.key, kNow + 2, nullptr));
  mt_jwt_svid_cache_put(c.get(), &d.key, "td", kId, kNow + 3600, kNow + 3);
  EXPECT_EQ(2u, mt_jwt_svid_cache_count(c.get()));
  EXPECT_NE(nullptr, mt_jwt_svid_cache_fresh(c.get(), &a.key, kNow + 4, nullptr));
  EXPECT_EQ(nullptr, mt_jwt_svid_cache_fresh(c.get(), &b.key, kNow + 4, nullptr));
  EXPECT_NE(nullptr, mt_jwt_svid_cache_fresh(c.get(), &d.key, kNow + 4, nullptr));
}

}  // namespace
