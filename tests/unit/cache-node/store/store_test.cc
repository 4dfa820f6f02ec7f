#include "store/store.h"

#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace kvcache::node {
namespace {

PutRequest Put(std::string_view key, std::string_view value) {
  PutRequest req;
  req.key = key;
  req.value = value;
  return req;
}

class StoreTest : public ::testing::Test {
 protected:
  FakeClock clock_;
};

TEST_F(StoreTest, PutThenGetReturnsValueAndContentType) {
  Store store({}, clock_);
  PutRequest req = Put("k", "v");
  req.content_type = "application/json";
  auto put = store.Put(req);
  ASSERT_TRUE(put.ok());
  EXPECT_TRUE(put->created);
  auto got = store.Get("k");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->value, "v");
  EXPECT_EQ(got->content_type, "application/json");
  EXPECT_EQ(got->etag, put->etag);
}

TEST_F(StoreTest, ReplaceReportsNotCreatedAndChangesEtag) {
  Store store({}, clock_);
  auto first = store.Put(Put("k", "one"));
  auto second = store.Put(Put("k", "two"));
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_TRUE(first->created);
  EXPECT_FALSE(second->created);
  EXPECT_NE(first->etag, second->etag);
  EXPECT_EQ(store.Stats().keys, 1u);
}

TEST_F(StoreTest, EtagDependsOnlyOnContent) {
  Store a({}, clock_), b({}, clock_);
  EXPECT_EQ(a.Put(Put("x", "same"))->etag, b.Put(Put("y", "same"))->etag);
}

TEST_F(StoreTest, KeysAndValuesAreBinarySafe) {
  Store store({}, clock_);
  std::string key("a\0b\xff", 4);
  std::string value("\0\1\2\0", 4);
  ASSERT_TRUE(store.Put(Put(key, value)).ok());
  EXPECT_FALSE(store.Get(std::string("a", 1)).ok());
  auto got = store.Get(key);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->value, value);
}

TEST_F(StoreTest, DeleteIfUnchangedComparesEtagAndExpiry) {
  Store store({}, clock_);
  PutRequest req = Put("k", "one");
  req.expire_at_ms = clock_.NowMs() + 60'000;
  const uint64_t etag = store.Put(req)->etag;
  // Same value, another expiry: a different version.
  EXPECT_EQ(store.DeleteIfUnchanged("k", etag, req.expire_at_ms + 1).code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(store.DeleteIfUnchanged("k", etag + 1, req.expire_at_ms).code(),
            StatusCode::kFailedPrecondition);
  EXPECT_TRUE(store.Get("k").ok());
  EXPECT_TRUE(store.DeleteIfUnchanged("k", etag, req.expire_at_ms).ok());
  EXPECT_EQ(store.DeleteIfUnchanged("k", etag, req.expire_at_ms).code(), StatusCode::kNotFound);
}

TEST_F(StoreTest, GetOfAbsentKeyIsNotFound) {
  Store store({}, clock_);
  EXPECT_EQ(store.Get("nope").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store.Stats().misses, 1u);
}

TEST_F(StoreTest, DeleteRemovesAndReportsAbsence) {
  Store store({}, clock_);
  ASSERT_TRUE(store.Put(Put("k", "v")).ok());
  EXPECT_TRUE(store.Delete("k").ok());
  EXPECT_EQ(store.Delete("k").code(), StatusCode::kNotFound);
  EXPECT_FALSE(store.Get("k").ok());
  EXPECT_EQ(store.Stats().keys, 0u);
  EXPECT_EQ(store.Stats().memory_bytes, 0u);
}

TEST_F(StoreTest, ExpiredKeysAreNeverServed) {
  Store store({}, clock_);
  PutRequest req = Put("k", "v");
  req.expire_at_ms = clock_.NowMs() + 1000;
  ASSERT_TRUE(store.Put(req).ok());
  clock_.AdvanceMs(999);
  EXPECT_TRUE(store.Get("k").ok());
  clock_.AdvanceMs(1);
  EXPECT_EQ(store.Get("k").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store.Delete("k").code(), StatusCode::kNotFound);
  EXPECT_TRUE(store.List("", "", 10).keys.empty());
}

TEST_F(StoreTest, PutOverExpiredKeyCreates) {
  Store store({}, clock_);
  PutRequest req = Put("k", "v");
  req.expire_at_ms = clock_.NowMs() + 10;
  ASSERT_TRUE(store.Put(req).ok());
  clock_.AdvanceMs(10);
  auto again = store.Put(Put("k", "w"));
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->created);
  EXPECT_EQ(store.Stats().expirations, 1u);
}

TEST_F(StoreTest, ReplaceWithoutTtlClearsExpiry) {
  Store store({}, clock_);
  PutRequest req = Put("k", "v");
  req.expire_at_ms = clock_.NowMs() + 10;
  ASSERT_TRUE(store.Put(req).ok());
  ASSERT_TRUE(store.Put(Put("k", "w")).ok());
  clock_.AdvanceMs(100);
  EXPECT_TRUE(store.Get("k").ok());
  EXPECT_EQ(store.ExpireSome(100), 0u);
}

TEST_F(StoreTest, ActiveExpiryReclaimsMemoryInBoundedBatches) {
  Store store({}, clock_);
  for (int i = 0; i < 5000; ++i) {
    std::string key = "k" + std::to_string(i);
    PutRequest req = Put(key, "value");
    req.expire_at_ms = clock_.NowMs() + 1 + (i % 2) * 100000;  // half expire soon
    ASSERT_TRUE(store.Put(req).ok());
  }
  const uint64_t before = store.Stats().memory_bytes;
  clock_.AdvanceMs(10);
  EXPECT_EQ(store.ExpireSome(1000), 1000u);  // bounded by the budget
  size_t total = 1000;
  while (size_t n = store.ExpireSome(1000)) total += n;
  EXPECT_EQ(total, 2500u);
  StoreStats stats = store.Stats();
  EXPECT_EQ(stats.keys, 2500u);
  EXPECT_EQ(stats.expirations, 2500u);
  EXPECT_LT(stats.memory_bytes, before * 6 / 10);
}

TEST_F(StoreTest, IfNoneMatchAnyIsCreateOnly) {
  Store store({}, clock_);
  PutRequest req = Put("k", "v");
  req.if_none_match = EtagMatch{true, {}};
  ASSERT_TRUE(store.Put(req).ok());
  req.value = "other";
  EXPECT_EQ(store.Put(req).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(store.Get("k")->value, "v");
}

TEST_F(StoreTest, IfMatchIsCompareAndSet) {
  Store store({}, clock_);
  uint64_t etag = store.Put(Put("k", "v1"))->etag;
  PutRequest stale = Put("k", "v2");
  stale.if_match = EtagMatch{false, {etag + 1}};
  EXPECT_EQ(store.Put(stale).status().code(), StatusCode::kFailedPrecondition);
  PutRequest fresh = Put("k", "v2");
  fresh.if_match = EtagMatch{false, {etag}};
  EXPECT_TRUE(store.Put(fresh).ok());
  EXPECT_EQ(store.Get("k")->value, "v2");
  PutRequest absent = Put("other", "x");
  absent.if_match = EtagMatch{true, {}};
  EXPECT_EQ(store.Put(absent).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_FALSE(store.Get("other").ok());
}

TEST_F(StoreTest, NoEvictionRefusesWritesOverLimitAndChangesNothing) {
  StoreOptions options;
  options.max_memory_bytes = 64 * 1024;
  options.eviction = EvictionPolicy::kNoEviction;
  Store store(options, clock_);
  std::string value(1000, 'x');
  int accepted = 0;
  Status last;
  for (int i = 0; i < 1000; ++i) {
    auto put = store.Put(Put("k" + std::to_string(i), value));
    if (!put.ok()) {
      last = put.status();
      break;
    }
    ++accepted;
  }
  EXPECT_EQ(last.code(), StatusCode::kResourceExhausted);
  EXPECT_GT(accepted, 40);
  StoreStats stats = store.Stats();
  EXPECT_LE(stats.memory_bytes, options.max_memory_bytes);
  EXPECT_EQ(stats.keys, static_cast<uint64_t>(accepted));
  EXPECT_EQ(stats.evictions, 0u);
  // A replacement that does not grow still works, and every accepted key is intact.
  EXPECT_TRUE(store.Put(Put("k0", std::string(1000, 'y'))).ok());
  for (int i = 1; i < accepted; ++i) EXPECT_TRUE(store.Get("k" + std::to_string(i)).ok());
}

TEST_F(StoreTest, LruEvictsToStayUnderLimitAndKeepsRecentKeys) {
  StoreOptions options;
  options.max_memory_bytes = 256 * 1024;
  options.eviction = EvictionPolicy::kLru;
  options.shard_bits = 2;
  options.eviction_samples = 10;
  Store store(options, clock_);
  std::string value(1000, 'x');
  // A hot key read every "second" survives a stream of new keys.
  ASSERT_TRUE(store.Put(Put("hot", value)).ok());
  for (int i = 0; i < 2000; ++i) {
    ASSERT_TRUE(store.Put(Put("k" + std::to_string(i), value)).ok());
    clock_.AdvanceMs(1000);
    ASSERT_TRUE(store.Get("hot").ok()) << "hot key evicted at i=" << i;
  }
  StoreStats stats = store.Stats();
  EXPECT_LE(stats.memory_bytes, options.max_memory_bytes);
  EXPECT_GT(stats.evictions, 1000u);
  EXPECT_TRUE(store.Get("k1999").ok());
  EXPECT_FALSE(store.Get("k0").ok());
}

TEST_F(StoreTest, LfuKeepsFrequentlyReadKeys) {
  StoreOptions options;
  options.max_memory_bytes = 128 * 1024;
  options.eviction = EvictionPolicy::kLfu;
  options.shard_bits = 2;
  options.eviction_samples = 10;
  Store store(options, clock_);
  std::string value(1000, 'x');
  ASSERT_TRUE(store.Put(Put("popular", value)).ok());
  for (int r = 0; r < 2000; ++r) ASSERT_TRUE(store.Get("popular").ok());
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(store.Put(Put("k" + std::to_string(i), value)).ok());
  }
  EXPECT_TRUE(store.Get("popular").ok());
  EXPECT_GT(store.Stats().evictions, 500u);
}

TEST_F(StoreTest, ValueLargerThanMemoryIsRefused) {
  StoreOptions options;
  options.max_memory_bytes = 1000;
  Store store(options, clock_);
  EXPECT_EQ(store.Put(Put("big", std::string(5000, 'x'))).status().code(),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(store.Stats().keys, 0u);
}

TEST_F(StoreTest, ListIsSortedFilteredAndPaged) {
  Store store({}, clock_);
  for (const char* k : {"user:3", "user:1", "order:1", "user:2", "user:10"}) {
    ASSERT_TRUE(store.Put(Put(k, "v")).ok());
  }
  ListResult page = store.List("user:", "", 2);
  EXPECT_EQ(page.keys, (std::vector<std::string>{"user:1", "user:10"}));
  EXPECT_TRUE(page.more);
  page = store.List("user:", page.keys.back(), 2);
  EXPECT_EQ(page.keys, (std::vector<std::string>{"user:2", "user:3"}));
  EXPECT_FALSE(page.more);
}

TEST_F(StoreTest, FlushRemovesEverything) {
  Store store({}, clock_);
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(store.Put(Put(std::to_string(i), "v")).ok());
  EXPECT_EQ(*store.Flush(), 100u);
  EXPECT_EQ(store.Stats().keys, 0u);
  EXPECT_EQ(store.Stats().memory_bytes, 0u);
  EXPECT_FALSE(store.Get("1").ok());
  EXPECT_TRUE(store.Put(Put("1", "again")).ok());
}

TEST_F(StoreTest, TableGrowsAndShrinksWithoutLosingKeys) {
  StoreOptions options;
  options.shard_bits = 0;  // one shard: exercise resizing and backward-shift deletion hard
  Store store(options, clock_);
  for (int i = 0; i < 20000; ++i) ASSERT_TRUE(store.Put(Put(std::to_string(i), "v")).ok());
  for (int i = 0; i < 20000; i += 2) ASSERT_TRUE(store.Delete(std::to_string(i)).ok());
  for (int i = 0; i < 20000; ++i) {
    EXPECT_EQ(store.Get(std::to_string(i)).ok(), i % 2 == 1) << i;
  }
  EXPECT_EQ(store.Stats().keys, 10000u);
}

TEST_F(StoreTest, ConcurrentWritersAndReadersAgree) {
  StoreOptions options;
  options.shard_bits = 3;
  Store store(options, clock_);
  constexpr int kThreads = 8;
  constexpr int kKeysPerThread = 5000;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kKeysPerThread; ++i) {
        std::string key = std::to_string(t) + ":" + std::to_string(i);
        if (!store.Put(Put(key, key)).ok()) failures++;
        auto got = store.Get(key);
        if (!got.ok() || got->value != key) failures++;
        // Readers of other threads' keys see either nothing or the right value.
        auto other = store.Get(std::to_string((t + 1) % kThreads) + ":" + std::to_string(i));
        if (other.ok() && other->value.find(':') == std::string::npos) failures++;
        if (i % 3 == 0 && !store.Delete(key).ok()) failures++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  int expected = 0;
  for (int i = 0; i < kKeysPerThread; ++i) expected += i % 3 != 0;
  EXPECT_EQ(store.Stats().keys, static_cast<uint64_t>(expected * kThreads));
}

TEST_F(StoreTest, ConcurrentEvictionStaysNearLimit) {
  StoreOptions options;
  options.max_memory_bytes = 1 << 20;
  options.eviction = EvictionPolicy::kLru;
  Store store(options, clock_);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::string value(500, 'v');
      for (int i = 0; i < 20000; ++i) {
        ASSERT_TRUE(store.Put(Put(std::to_string(t) + "/" + std::to_string(i), value)).ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  // Concurrent writers may overshoot by at most one in-flight entry each.
  EXPECT_LE(store.Stats().memory_bytes, options.max_memory_bytes + 4 * 1024);
}

TEST(EvictionPolicy, ParsesNamesAndRejectsOthers) {
  EXPECT_EQ(*ParseEvictionPolicy("lfu"), EvictionPolicy::kLfu);
  EXPECT_EQ(ParseEvictionPolicy("random").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(EvictionPolicyName(EvictionPolicy::kNoEviction), "noeviction");
}

}  // namespace
}  // namespace kvcache::node
