#include "kube/work_queue.h"

#include <atomic>
#include <thread>

#include <gtest/gtest.h>

namespace kvcache::kube {
namespace {

using namespace std::chrono_literals;

TEST(WorkQueue, DeduplicatesQueuedItems) {
  FakeClock clock;
  WorkQueue q(clock);
  q.Add("a");
  q.Add("b");
  q.Add("a");
  EXPECT_EQ(q.Len(), 2u);
  EXPECT_EQ(q.Get(), "a");
  EXPECT_EQ(q.Get(), "b");
  EXPECT_EQ(q.Len(), 0u);
}

TEST(WorkQueue, ItemBeingProcessedIsNotHandedOutTwice) {
  FakeClock clock;
  WorkQueue q(clock);
  q.Add("a");
  auto item = q.Get();
  ASSERT_EQ(item, "a");
  q.Add("a");  // changed while being processed
  EXPECT_EQ(q.Len(), 0u) << "not handed to a second worker";
  std::stop_source stop;
  std::atomic<bool> got{false};
  std::thread other([&] {
    auto again = q.Get(stop.get_token());
    got = again.has_value();
    if (again) q.Done(*again);
  });
  std::this_thread::sleep_for(20ms);  // a chance to (wrongly) take it
  EXPECT_FALSE(got);
  q.Done("a");  // now it is queued again
  other.join();
  EXPECT_TRUE(got);
}

TEST(WorkQueue, AddAfterWaitsForTheClock) {
  FakeClock clock;
  WorkQueue q(clock);
  q.AddAfter("late", 10s);
  q.AddAfter("late", 20s);  // the earlier time wins
  EXPECT_EQ(q.Waiting(), 1u);
  ASSERT_TRUE(clock.AwaitSleepers(1));
  clock.Advance(9s);
  EXPECT_EQ(q.Len(), 0u);
  clock.Advance(1s);
  EXPECT_EQ(q.Get(), "late");
  EXPECT_EQ(q.Waiting(), 0u);
}

TEST(WorkQueue, PerItemExponentialBackoffAndForget) {
  FakeClock clock;
  WorkQueue q(clock, {.base_delay = 5ms, .max_delay = 40ms, .qps = 1e9, .burst = 1000000});
  for (int i = 0; i < 6; ++i) q.AddRateLimited("x");  // 5, 10, 20, 40, 40, 40 ms
  EXPECT_EQ(q.NumRequeues("x"), 6);
  q.Forget("x");
  EXPECT_EQ(q.NumRequeues("x"), 0);

  // Fresh item: first retry after 5 ms, not before.
  q.AddRateLimited("y");
  ASSERT_TRUE(clock.AwaitSleepers(1));
  clock.Advance(4ms);
  EXPECT_EQ(q.Len(), 0u);
  clock.Advance(1ms);
  EXPECT_EQ(q.Get(), "x");  // x's 5 ms had passed too
  EXPECT_EQ(q.Get(), "y");
}

TEST(WorkQueue, OverallTokenBucketLimitsBursts) {
  FakeClock clock;
  WorkQueue q(clock, {.base_delay = 0ms, .max_delay = 0ms, .qps = 10, .burst = 2});
  q.AddRateLimited("a");  // token
  q.AddRateLimited("b");  // token
  q.AddRateLimited("c");  // bucket empty: 100 ms
  EXPECT_EQ(q.Get(), "a");
  EXPECT_EQ(q.Get(), "b");
  EXPECT_EQ(q.Waiting(), 1u);
  ASSERT_TRUE(clock.AwaitSleepers(1));
  clock.Advance(99ms);
  EXPECT_EQ(q.Len(), 0u);
  clock.Advance(1ms);
  EXPECT_EQ(q.Get(), "c");
}

TEST(WorkQueue, ShutDownDrainsThenEnds) {
  FakeClock clock;
  WorkQueue q(clock);
  q.Add("a");
  q.ShutDown();
  q.Add("b");  // ignored
  EXPECT_EQ(q.Get(), "a");
  EXPECT_EQ(q.Get(), std::nullopt);
  EXPECT_TRUE(q.ShuttingDown());

  WorkQueue blocked(clock);
  std::thread waiter([&] { EXPECT_EQ(blocked.Get(), std::nullopt); });
  blocked.ShutDown();
  waiter.join();
}

}  // namespace
}  // namespace kvcache::kube
