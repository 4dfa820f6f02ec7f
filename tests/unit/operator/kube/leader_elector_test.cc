#include "kube/leader_elector.h"

#include <atomic>
#include <thread>

#include <gtest/gtest.h>

#include "kube/fake_kube_client.h"

namespace kvcache::kube {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

template <typename Pred>
bool Eventually(Pred pred) {
  for (int i = 0; i < 10000; ++i) {
    if (pred()) return true;
    std::this_thread::sleep_for(1ms);
  }
  return pred();
}

LeaderElectionOptions Options(const std::string& id, bool release = true) {
  LeaderElectionOptions o;
  o.lease_namespace = "kube-system";
  o.lease_name = "kvcache-operator";
  o.identity = id;
  o.release_on_cancel = release;
  return o;
}

json Lease(FakeKubeClient& kube) {
  auto lease = kube.Peek(kLeaseResource, "kube-system", "kvcache-operator");
  return lease ? (*lease)["spec"] : json();
}

// Runs one candidate on its own thread.
struct Candidate {
  Candidate(FakeKubeClient& kube, FakeClock& clock, LeaderElectionOptions options)
      : elector(kube, std::move(options),
                {[this](std::stop_token stop) {
                   ++started;
                   std::mutex mu;
                   std::condition_variable_any cv;
                   std::unique_lock lock(mu);
                   cv.wait(lock, stop, [] { return false; });
                   ++work_stopped;
                 },
                 [this] { ++stopped; }, nullptr},
                clock),
        thread([this](std::stop_token stop) {
          result = elector.Run(stop);
          done = true;
        }) {}
  LeaderElector elector;
  std::atomic<int> started{0}, stopped{0}, work_stopped{0};
  std::atomic<bool> done{false};
  Status result;
  std::jthread thread;
};

TEST(LeaderElector, ValidatesTimings) {
  auto o = Options("a");
  EXPECT_TRUE(LeaderElector::Validate(o).ok());
  o.renew_deadline = o.lease_duration;
  EXPECT_EQ(LeaderElector::Validate(o).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(LeaderElector::Validate(Options("")).code(), StatusCode::kInvalidArgument);
}

TEST(LeaderElector, AcquiresRenewsAndReleasesOnShutdown) {
  FakeClock clock;
  FakeKubeClient kube(&clock);
  auto a = std::make_unique<Candidate>(kube, clock, Options("a"));
  ASSERT_TRUE(Eventually([&] { return a->started == 1; }));
  EXPECT_TRUE(a->elector.IsLeader());
  json lease = Lease(kube);
  EXPECT_EQ(lease["holderIdentity"], "a");
  EXPECT_EQ(lease["leaseDurationSeconds"], 15);
  EXPECT_EQ(lease["leaseTransitions"], 0);
  std::string acquired = lease["acquireTime"];

  ASSERT_TRUE(clock.AwaitSleepers(1));
  int64_t sleeps = clock.SleepsStarted();
  clock.Advance(2s);
  ASSERT_TRUE(clock.AwaitSleepsStarted(sleeps + 1));
  ASSERT_TRUE(Eventually([&] { return Lease(kube)["renewTime"] != acquired; }));
  EXPECT_EQ(Lease(kube)["acquireTime"], acquired) << "renewals keep acquireTime";

  a->thread.request_stop();
  a->thread.join();
  EXPECT_TRUE(a->result.ok());
  EXPECT_EQ(a->work_stopped, 1);
  EXPECT_EQ(a->stopped, 1);
  EXPECT_FALSE(Lease(kube).contains("holderIdentity")) << "released: empty holder";
}

TEST(LeaderElector, SecondCandidateTakesOverOnlyAfterLeaseExpires) {
  FakeClock clock;
  FakeKubeClient kube(&clock);
  auto a = std::make_unique<Candidate>(kube, clock, Options("a", /*release=*/false));
  ASSERT_TRUE(Eventually([&] { return a->started == 1; }));
  ASSERT_TRUE(clock.AwaitSleepers(1));

  auto b = std::make_unique<Candidate>(kube, clock, Options("b"));
  ASSERT_TRUE(clock.AwaitSleepers(2));  // b saw a's lease and waits
  EXPECT_FALSE(b->elector.IsLeader());
  EXPECT_EQ(b->elector.Holder(), "a");

  // a dies without releasing (SIGKILL): its lease is simply not renewed any more.
  a->thread.request_stop();
  a->thread.join();
  ASSERT_TRUE(clock.AwaitSleepers(1));
  // b tries every 2 s; the lease counts as held until b's observed time + 15 s.
  for (int i = 0; i < 7; ++i) {
    int64_t sleeps = clock.SleepsStarted();
    clock.Advance(2s);
    ASSERT_TRUE(clock.AwaitSleepsStarted(sleeps + 1));
    EXPECT_FALSE(b->elector.IsLeader()) << "after " << (i + 1) * 2 << " s";
    EXPECT_EQ(Lease(kube)["holderIdentity"], "a");
  }
  clock.Advance(2s);  // 16 s: expired
  ASSERT_TRUE(Eventually([&] { return b->started == 1; }));
  EXPECT_EQ(Lease(kube)["holderIdentity"], "b");
  EXPECT_EQ(Lease(kube)["leaseTransitions"], 1);
}

TEST(LeaderElector, TakesOverAtOnceAfterRelease) {
  FakeClock clock;
  FakeKubeClient kube(&clock);
  auto a = std::make_unique<Candidate>(kube, clock, Options("a"));
  ASSERT_TRUE(Eventually([&] { return a->started == 1; }));
  a->thread.request_stop();
  a->thread.join();
  auto b = std::make_unique<Candidate>(kube, clock, Options("b"));
  ASSERT_TRUE(Eventually([&] { return b->started == 1; })) << "no wait for an empty holder";
}

TEST(LeaderElector, StopsLeadingWhenRenewalsFailPastTheDeadline) {
  FakeClock clock;
  FakeKubeClient kube(&clock);
  auto a = std::make_unique<Candidate>(kube, clock, Options("a"));
  ASSERT_TRUE(Eventually([&] { return a->started == 1; }));
  kube.InjectError(Verb::kGet, UnavailableError("apiserver down"), 1000);
  for (int i = 0; i < 5 && !a->done; ++i) {
    ASSERT_TRUE(clock.AwaitSleepers(1));
    int64_t sleeps = clock.SleepsStarted();
    clock.Advance(2s);
    if (i < 4) {
      ASSERT_TRUE(clock.AwaitSleepsStarted(sleeps + 1));
      EXPECT_TRUE(a->elector.IsLeader()) << "still within the renew deadline";
    }
  }
  ASSERT_TRUE(Eventually([&] { return a->done.load(); }));
  EXPECT_EQ(a->result.code(), StatusCode::kUnavailable);
  EXPECT_EQ(a->work_stopped, 1);
  EXPECT_FALSE(a->elector.IsLeader());
}

TEST(LeaderElector, ConcurrentWriterLosesOnResourceVersion) {
  FakeClock clock;
  FakeKubeClient kube(&clock);
  // A stale lease (expired holder "old") and a conflicting write between GET and PUT.
  kube.Seed(kLeaseResource, {{"metadata", {{"name", "kvcache-operator"},
                                           {"namespace", "kube-system"}}},
                             {"spec", {{"holderIdentity", ""}, {"leaseTransitions", 3}}}});
  kube.InjectError(Verb::kUpdate, ConflictError("the object has been modified"), 1);
  auto a = std::make_unique<Candidate>(kube, clock, Options("a"));
  ASSERT_TRUE(clock.AwaitSleepers(1));
  EXPECT_FALSE(a->elector.IsLeader());
  clock.Advance(2s);
  ASSERT_TRUE(Eventually([&] { return a->started == 1; }));
  EXPECT_EQ(Lease(kube)["leaseTransitions"], 4);
}

TEST(LeaderElector, MicroTimeFormat) {
  auto t = std::chrono::system_clock::from_time_t(1700000000) + std::chrono::microseconds(42);
  EXPECT_EQ(FormatMicroTime(t), "2023-11-14T22:13:20.000042Z");
}

}  // namespace
}  // namespace kvcache::kube
