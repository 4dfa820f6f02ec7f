#include "kube/informer.h"

#include <condition_variable>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include "kube/fake_kube_client.h"

namespace kvcache::kube {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

const ResourceRef kConfigMaps{"", "v1", "configmaps", "ConfigMap", true};

json ConfigMap(const std::string& ns, const std::string& name, json labels = json::object()) {
  return {{"metadata", {{"name", name}, {"namespace", ns}, {"labels", labels}}},
          {"data", {{"v", "0"}}}};
}

// Records handler calls as "add ns/name", "update ns/name", "delete ns/name".
class Recorder {
 public:
  EventHandlers Handlers() {
    return {[this](const Object& o) { Push("add " + ObjectKey(o)); },
            [this](const Object&, const Object& o) { Push("update " + ObjectKey(o)); },
            [this](const Object& o) { Push("delete " + ObjectKey(o)); }};
  }
  bool AwaitCount(size_t n) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, 10s, [&] { return log_.size() >= n; });
  }
  std::vector<std::string> Log() {
    std::lock_guard lock(mu_);
    return log_;
  }

 private:
  void Push(std::string s) {
    std::lock_guard lock(mu_);
    log_.push_back(std::move(s));
    cv_.notify_all();
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> log_;
};

std::vector<std::string> Names(const std::vector<Object>& objects) {
  std::vector<std::string> out;
  for (const auto& o : objects) out.push_back(ObjectKey(o));
  return out;
}

TEST(Informer, ListsThenWatchesAndIndexes) {
  FakeClock clock;
  FakeKubeClient kube(&clock);
  ASSERT_TRUE(kube.Create(kConfigMaps, "a", ConfigMap("a", "one", {{"app", "x"}})).ok());
  Recorder rec;
  Informer informer(kube, kConfigMaps, {}, clock);
  informer.AddHandler(rec.Handlers());
  informer.Start();
  ASSERT_TRUE(informer.WaitForSync(10s));
  ASSERT_TRUE(kube.AwaitActiveWatches(1));

  auto owner = kube.Create(kConfigMaps, "b", ConfigMap("b", "owner"));
  json child = ConfigMap("b", "two", {{"app", "x"}});
  child["metadata"]["ownerReferences"] = {{{"uid", (*owner)["metadata"]["uid"]}}};
  ASSERT_TRUE(kube.Create(kConfigMaps, "b", child).ok());
  ASSERT_TRUE(kube.Patch(kConfigMaps, "a", "one", PatchType::kMerge, {{"data", {{"v", "1"}}}}).ok());
  ASSERT_TRUE(rec.AwaitCount(4));
  EXPECT_EQ(rec.Log(), (std::vector<std::string>{"add a/one", "add b/owner", "add b/two",
                                                 "update a/one"}));
  EXPECT_EQ(informer.Size(), 3u);
  EXPECT_EQ((*informer.Get("a", "one"))["data"]["v"], "1");
  EXPECT_EQ(Names(informer.List("b")), (std::vector<std::string>{"b/owner", "b/two"}));
  EXPECT_EQ(Names(informer.ListByLabel(*LabelSelector::Parse("app=x"))),
            (std::vector<std::string>{"a/one", "b/two"}));
  EXPECT_EQ(Names(informer.ListByLabel(*LabelSelector::Parse("app=x"), "a")),
            (std::vector<std::string>{"a/one"}));
  EXPECT_EQ(Names(informer.ListByOwner((*owner)["metadata"]["uid"].get<std::string>())),
            (std::vector<std::string>{"b/two"}));

  ASSERT_TRUE(kube.Delete(kConfigMaps, "b", "owner").ok());  // the child goes with it
  ASSERT_TRUE(rec.AwaitCount(6));
  EXPECT_EQ(informer.Size(), 1u);
  EXPECT_TRUE(informer.ListByOwner((*owner)["metadata"]["uid"].get<std::string>()).empty());
  EXPECT_EQ(informer.stats().lists, 1);
}

TEST(Informer, ResumesWatchFromLastVersionWhenServerCloses) {
  FakeClock clock;
  FakeKubeClient kube(&clock);
  Recorder rec;
  Informer informer(kube, kConfigMaps, {}, clock);
  informer.AddHandler(rec.Handlers());
  informer.Start();
  ASSERT_TRUE(informer.WaitForSync(10s));
  ASSERT_TRUE(kube.AwaitActiveWatches(1));
  ASSERT_TRUE(kube.Create(kConfigMaps, "a", ConfigMap("a", "one")).ok());
  ASSERT_TRUE(rec.AwaitCount(1));
  kube.CloseWatches();  // server-side timeout
  // Changes while no watch is open are replayed from the resourceVersion: none lost.
  ASSERT_TRUE(kube.Create(kConfigMaps, "a", ConfigMap("a", "two")).ok());
  ASSERT_TRUE(rec.AwaitCount(2));
  EXPECT_EQ(rec.Log(), (std::vector<std::string>{"add a/one", "add a/two"}));
  EXPECT_EQ(informer.stats().lists, 1) << "no relist for a closed watch";
  EXPECT_GE(informer.stats().watches, 2);
}

TEST(Informer, BookmarksAdvanceTheResourceVersion) {
  FakeClock clock;
  FakeKubeClient kube(&clock);
  Informer informer(kube, kConfigMaps, {.ns = "a"}, clock);
  informer.Start();
  ASSERT_TRUE(informer.WaitForSync(10s));
  ASSERT_TRUE(kube.AwaitActiveWatches(1));
  // Writes elsewhere move the global version; only a bookmark tells this informer.
  ASSERT_TRUE(kube.Create(kConfigMaps, "other", ConfigMap("other", "x")).ok());
  kube.SendBookmark();
  std::string want = std::to_string(kube.ResourceVersion());
  for (int i = 0; i < 1000 && informer.ResourceVersion() != want; ++i) {
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(informer.ResourceVersion(), want);
}

TEST(Informer, RelistsAfterGoneAndDiffsTheCache) {
  FakeClock clock;
  FakeKubeClient kube(&clock);
  ASSERT_TRUE(kube.Create(kConfigMaps, "a", ConfigMap("a", "keep")).ok());
  ASSERT_TRUE(kube.Create(kConfigMaps, "a", ConfigMap("a", "change")).ok());
  ASSERT_TRUE(kube.Create(kConfigMaps, "a", ConfigMap("a", "remove")).ok());
  Recorder rec;
  Informer informer(kube, kConfigMaps, {}, clock);
  informer.AddHandler(rec.Handlers());
  informer.Start();
  ASSERT_TRUE(informer.WaitForSync(10s));
  ASSERT_TRUE(rec.AwaitCount(3));
  ASSERT_TRUE(kube.AwaitActiveWatches(1));

  // The watch breaks with 410 and history is compacted; meanwhile objects change.
  kube.InjectError(Verb::kWatch, OutOfRangeError("too old"), 1);
  kube.CloseWatches(OutOfRangeError("too old resource version"));
  ASSERT_TRUE(kube.Patch(kConfigMaps, "a", "change", PatchType::kMerge, {{"data", {{"v", "9"}}}})
                  .ok());
  ASSERT_TRUE(kube.Delete(kConfigMaps, "a", "remove").ok());
  ASSERT_TRUE(kube.Create(kConfigMaps, "a", ConfigMap("a", "new")).ok());
  kube.Compact();
  ASSERT_TRUE(rec.AwaitCount(6));
  auto log = rec.Log();
  std::vector<std::string> after(log.begin() + 3, log.end());
  std::sort(after.begin(), after.end());
  EXPECT_EQ(after, (std::vector<std::string>{"add a/new", "delete a/remove", "update a/change"}))
      << "the relist diff: exactly what changed, nothing for a/keep";
  EXPECT_EQ(Names(informer.List()), Names(kube.Objects(kConfigMaps)));
  EXPECT_GE(informer.stats().relists, 1);
}

TEST(Informer, BacksOffOnErrorsWithJitter) {
  FakeClock clock;
  FakeKubeClient kube(&clock);
  kube.InjectError(Verb::kList, UnavailableError("down"), 2);
  Informer informer(kube, kConfigMaps, {}, clock);
  informer.Start();
  // First failure: backoff in [800ms, 1600ms).
  ASSERT_TRUE(clock.AwaitSleepers(1));
  EXPECT_FALSE(informer.HasSynced());
  clock.Advance(799ms);
  EXPECT_EQ(kube.CallCount(Verb::kList), 1);
  clock.Advance(801ms);
  // Second failure: [1600ms, 3200ms).
  ASSERT_TRUE(clock.AwaitSleepsStarted(2));
  EXPECT_EQ(kube.CallCount(Verb::kList), 2);
  clock.Advance(3200ms);
  ASSERT_TRUE(informer.WaitForSync(10s));
  EXPECT_EQ(kube.CallCount(Verb::kList), 3);
}

TEST(Informer, ResyncRedeliversEveryObject) {
  FakeClock clock;
  FakeKubeClient kube(&clock);
  ASSERT_TRUE(kube.Create(kConfigMaps, "a", ConfigMap("a", "one")).ok());
  Recorder rec;
  Informer informer(kube, kConfigMaps, {.resync_period = 30s}, clock);
  informer.AddHandler(rec.Handlers());
  informer.Start();
  ASSERT_TRUE(informer.WaitForSync(10s));
  ASSERT_TRUE(clock.AwaitSleepers(1));
  clock.Advance(30s);
  ASSERT_TRUE(rec.AwaitCount(2));
  EXPECT_EQ(rec.Log(), (std::vector<std::string>{"add a/one", "update a/one"}));
}

TEST(Informer, StripsManagedFieldsUnlessAsked) {
  FakeClock clock;
  FakeKubeClient kube(&clock);
  json cm = ConfigMap("a", "one");
  cm["metadata"]["managedFields"] = {{{"manager", "kubectl"}}};
  kube.Seed(kConfigMaps, cm);
  Informer stripped(kube, kConfigMaps, {}, clock);
  Informer kept(kube, kConfigMaps, {.strip_managed_fields = false}, clock);
  stripped.Start();
  kept.Start();
  ASSERT_TRUE(stripped.WaitForSync(10s));
  ASSERT_TRUE(kept.WaitForSync(10s));
  EXPECT_FALSE((*stripped.Get("a", "one"))["metadata"].contains("managedFields"));
  EXPECT_TRUE((*kept.Get("a", "one"))["metadata"].contains("managedFields"));
}

TEST(Informer, LateHandlerGetsTheCacheAsAdds) {
  FakeClock clock;
  FakeKubeClient kube(&clock);
  ASSERT_TRUE(kube.Create(kConfigMaps, "a", ConfigMap("a", "one")).ok());
  Recorder rec;
  Informer informer(kube, kConfigMaps, {}, clock);
  informer.Start();
  ASSERT_TRUE(informer.WaitForSync(10s));
  informer.AddHandler(rec.Handlers());
  EXPECT_EQ(rec.Log(), (std::vector<std::string>{"add a/one"}));
}

}  // namespace
}  // namespace kvcache::kube
