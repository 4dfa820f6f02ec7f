#include "kube/fake_kube_client.h"

#include <atomic>
#include <thread>

#include <gtest/gtest.h>

namespace kvcache::kube {
namespace {

using json = nlohmann::json;

const ResourceRef kConfigMaps{"", "v1", "configmaps", "ConfigMap", true};
const ResourceRef kStatefulSets{"apps", "v1", "statefulsets", "StatefulSet", true};
const ResourceRef kNamespaces{"", "v1", "namespaces", "Namespace", false};

json ConfigMap(const std::string& name, json labels = json::object()) {
  return {{"metadata", {{"name", name}, {"labels", labels}}}, {"data", {{"k", "v"}}}};
}

std::string Rv(const json& o) { return o["metadata"]["resourceVersion"].get<std::string>(); }
int64_t Gen(const json& o) { return o["metadata"]["generation"].get<int64_t>(); }

TEST(FakeKubeClient, CreateSetsServerFields) {
  FakeClock clock;
  FakeKubeClient kube(&clock);
  auto created = kube.Create(kConfigMaps, "ns", ConfigMap("a"));
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  const json& meta = (*created)["metadata"];
  EXPECT_EQ(meta["namespace"], "ns");
  EXPECT_FALSE(meta["uid"].get<std::string>().empty());
  EXPECT_EQ(meta["generation"], 1);
  EXPECT_EQ(meta["creationTimestamp"], "2023-11-14T23:13:20Z");
  EXPECT_EQ((*created)["apiVersion"], "v1");
  EXPECT_EQ((*created)["kind"], "ConfigMap");
  EXPECT_EQ(kube.Create(kConfigMaps, "ns", ConfigMap("a")).status().code(),
            StatusCode::kAlreadyExists);
  auto got = kube.Get(kConfigMaps, "ns", "a");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, *created);
  EXPECT_EQ(kube.Get(kConfigMaps, "other", "a").status().code(), StatusCode::kNotFound);
}

TEST(FakeKubeClient, GenerateNameAndClusterScope) {
  FakeKubeClient kube;
  auto created = kube.Create(kConfigMaps, "ns", {{"metadata", {{"generateName", "x-"}}}});
  ASSERT_TRUE(created.ok());
  EXPECT_EQ((*created)["metadata"]["name"].get<std::string>().rfind("x-", 0), 0u);
  auto ns = kube.Create(kNamespaces, "ignored", {{"metadata", {{"name", "prod"}}}});
  ASSERT_TRUE(ns.ok());
  EXPECT_FALSE((*ns)["metadata"].contains("namespace"));
  EXPECT_TRUE(kube.Get(kNamespaces, "", "prod").ok());
}

TEST(FakeKubeClient, UpdateBumpsVersionsAndDetectsConflicts) {
  FakeKubeClient kube;
  json sts = {{"metadata", {{"name", "s"}}}, {"spec", {{"replicas", 1}}}};
  auto v1 = kube.Create(kStatefulSets, "ns", sts);
  ASSERT_TRUE(v1.ok());

  json change = *v1;
  change["spec"]["replicas"] = 3;
  auto v2 = kube.Update(kStatefulSets, "ns", change);
  ASSERT_TRUE(v2.ok());
  EXPECT_NE(Rv(*v2), Rv(*v1));
  EXPECT_EQ(Gen(*v2), 2);

  // Metadata-only change: new resourceVersion, same generation.
  json labelled = *v2;
  labelled["metadata"]["labels"]["x"] = "y";
  auto v3 = kube.Update(kStatefulSets, "ns", labelled);
  ASSERT_TRUE(v3.ok());
  EXPECT_NE(Rv(*v3), Rv(*v2));
  EXPECT_EQ(Gen(*v3), 2);

  // Stale resourceVersion.
  EXPECT_EQ(kube.Update(kStatefulSets, "ns", change).status().code(), StatusCode::kConflict);
  // A no-op write changes nothing.
  auto v4 = kube.Update(kStatefulSets, "ns", *v3);
  ASSERT_TRUE(v4.ok());
  EXPECT_EQ(Rv(*v4), Rv(*v3));
  // Without a resourceVersion: unconditional.
  json blind = *v3;
  blind["metadata"].erase("resourceVersion");
  blind["spec"]["replicas"] = 5;
  EXPECT_TRUE(kube.Update(kStatefulSets, "ns", blind).ok());
  EXPECT_EQ(kube.Update(kStatefulSets, "ns", ConfigMap("missing")).status().code(),
            StatusCode::kNotFound);
}

TEST(FakeKubeClient, StatusSubresourceIsSeparate) {
  FakeKubeClient kube;
  json sts = {{"metadata", {{"name", "s"}}},
              {"spec", {{"replicas", 1}}},
              {"status", {{"readyReplicas", 9}}}};
  auto created = kube.Create(kStatefulSets, "ns", sts);
  ASSERT_TRUE(created.ok());
  EXPECT_FALSE(created->contains("status")) << "create ignores status";

  json with_status = *created;
  with_status["status"] = {{"readyReplicas", 1}};
  with_status["spec"]["replicas"] = 7;  // ignored by the status subresource
  auto s1 = kube.Update(kStatefulSets, "ns", with_status, "status");
  ASSERT_TRUE(s1.ok());
  EXPECT_EQ((*s1)["status"]["readyReplicas"], 1);
  EXPECT_EQ((*s1)["spec"]["replicas"], 1);
  EXPECT_EQ(Gen(*s1), 1);

  // The main resource ignores status.
  json main = *s1;
  main["status"]["readyReplicas"] = 42;
  auto m = kube.Update(kStatefulSets, "ns", main);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)["status"]["readyReplicas"], 1);

  auto p = kube.Patch(kStatefulSets, "ns", "s", PatchType::kMerge,
                      {{"status", {{"readyReplicas", 2}}}, {"spec", {{"replicas", 8}}}}, {},
                      "status");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ((*p)["status"]["readyReplicas"], 2);
  EXPECT_EQ((*p)["spec"]["replicas"], 1);
}

TEST(FakeKubeClient, ScaleSubresource) {
  FakeKubeClient kube;
  ASSERT_TRUE(kube.Seed(kStatefulSets, {{"metadata", {{"name", "s"}, {"namespace", "ns"}}},
                                        {"spec", {{"replicas", 2}}},
                                        {"status", {{"replicas", 1}}}})
                  .is_object());
  auto scale = kube.Get(kStatefulSets, "ns", "s", "scale");
  ASSERT_TRUE(scale.ok());
  EXPECT_EQ((*scale)["kind"], "Scale");
  EXPECT_EQ((*scale)["spec"]["replicas"], 2);
  EXPECT_EQ((*scale)["status"]["replicas"], 1);
  json next = *scale;
  next["spec"]["replicas"] = 4;
  auto updated = kube.Update(kStatefulSets, "ns", next, "scale");
  ASSERT_TRUE(updated.ok()) << updated.status().ToString();
  EXPECT_EQ((*updated)["spec"]["replicas"], 4);
  EXPECT_EQ((*kube.Peek(kStatefulSets, "ns", "s"))["spec"]["replicas"], 4);
}

TEST(FakeKubeClient, PatchKinds) {
  FakeKubeClient kube;
  ASSERT_TRUE(kube.Create(kConfigMaps, "ns", ConfigMap("a", {{"keep", "1"}, {"drop", "1"}})).ok());
  auto merged = kube.Patch(kConfigMaps, "ns", "a", PatchType::kMerge,
                           {{"metadata", {{"labels", {{"drop", nullptr}, {"new", "2"}}}}}});
  ASSERT_TRUE(merged.ok());
  EXPECT_EQ((*merged)["metadata"]["labels"], json({{"keep", "1"}, {"new", "2"}}));

  auto jsonpatch = kube.Patch(kConfigMaps, "ns", "a", PatchType::kJson,
                              json::array({{{"op", "replace"}, {"path", "/data/k"}, {"value", "w"}},
                                           {{"op", "add"}, {"path", "/data/z"}, {"value", "1"}}}));
  ASSERT_TRUE(jsonpatch.ok());
  EXPECT_EQ((*jsonpatch)["data"], json({{"k", "w"}, {"z", "1"}}));
  EXPECT_EQ(kube.Patch(kConfigMaps, "ns", "a", PatchType::kJson,
                       json::array({{{"op", "test"}, {"path", "/data/k"}, {"value", "no"}}}))
                .status()
                .code(),
            StatusCode::kInvalidArgument);

  // A patch carrying a stale resourceVersion is a Conflict.
  EXPECT_EQ(kube.Patch(kConfigMaps, "ns", "a", PatchType::kMerge,
                       {{"metadata", {{"resourceVersion", "1"}}}})
                .status()
                .code(),
            StatusCode::kConflict);
  EXPECT_EQ(kube.Patch(kConfigMaps, "ns", "nope", PatchType::kMerge, json::object()).status().code(),
            StatusCode::kNotFound);

  // Apply creates, then merges.
  json desired = {{"apiVersion", "v1"},
                  {"kind", "ConfigMap"},
                  {"metadata", {{"name", "b"}}},
                  {"data", {{"x", "1"}}}};
  auto applied = kube.Patch(kConfigMaps, "ns", "b", PatchType::kApply, desired, {.force = true});
  ASSERT_TRUE(applied.ok()) << applied.status().ToString();
  desired["data"]["x"] = "2";
  auto reapplied = kube.Patch(kConfigMaps, "ns", "b", PatchType::kApply, desired);
  ASSERT_TRUE(reapplied.ok());
  EXPECT_EQ((*reapplied)["data"]["x"], "2");
  auto again = kube.Patch(kConfigMaps, "ns", "b", PatchType::kApply, desired);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(Rv(*again), Rv(*reapplied)) << "an apply that changes nothing writes nothing";
}

TEST(FakeKubeClient, DeletePreconditionsFinalizersAndOwners) {
  FakeKubeClient kube;
  auto owner = kube.Create(kConfigMaps, "ns", ConfigMap("owner"));
  ASSERT_TRUE(owner.ok());
  json child = ConfigMap("child");
  child["metadata"]["ownerReferences"] = {{{"apiVersion", "v1"},
                                           {"kind", "ConfigMap"},
                                           {"name", "owner"},
                                           {"uid", (*owner)["metadata"]["uid"]},
                                           {"controller", true}}};
  ASSERT_TRUE(kube.Create(kConfigMaps, "ns", child).ok());

  EXPECT_EQ(kube.Delete(kConfigMaps, "ns", "owner", {.precondition_uid = "wrong"}).code(),
            StatusCode::kConflict);
  EXPECT_EQ(kube.Delete(kConfigMaps, "ns", "owner", {.precondition_resource_version = "1"}).code(),
            StatusCode::kConflict);
  EXPECT_TRUE(kube.Delete(kConfigMaps, "ns", "owner",
                          {.precondition_uid = (*owner)["metadata"]["uid"].get<std::string>()})
                  .ok());
  EXPECT_FALSE(kube.Peek(kConfigMaps, "ns", "child")) << "dependents are garbage-collected";
  EXPECT_EQ(kube.Delete(kConfigMaps, "ns", "owner").code(), StatusCode::kNotFound);

  // Finalizers hold the object until removed.
  json held = ConfigMap("held");
  held["metadata"]["finalizers"] = {"kvcache.io/finalizer"};
  ASSERT_TRUE(kube.Create(kConfigMaps, "ns", held).ok());
  ASSERT_TRUE(kube.Delete(kConfigMaps, "ns", "held").ok());
  auto deleting = kube.Get(kConfigMaps, "ns", "held");
  ASSERT_TRUE(deleting.ok());
  EXPECT_TRUE((*deleting)["metadata"].contains("deletionTimestamp"));
  json released = *deleting;
  released["metadata"]["finalizers"] = json::array();
  ASSERT_TRUE(kube.Update(kConfigMaps, "ns", released).ok());
  EXPECT_EQ(kube.Get(kConfigMaps, "ns", "held").status().code(), StatusCode::kNotFound);
}

TEST(FakeKubeClient, OrphanKeepsDependents) {
  FakeKubeClient kube;
  auto owner = kube.Create(kConfigMaps, "ns", ConfigMap("owner"));
  json child = ConfigMap("child");
  child["metadata"]["ownerReferences"] = {{{"uid", (*owner)["metadata"]["uid"]}}};
  ASSERT_TRUE(kube.Create(kConfigMaps, "ns", child).ok());
  ASSERT_TRUE(kube.Delete(kConfigMaps, "ns", "owner", {.propagation = PropagationPolicy::kOrphan})
                  .ok());
  auto kept = kube.Peek(kConfigMaps, "ns", "child");
  ASSERT_TRUE(kept);
  EXPECT_TRUE((*kept)["metadata"]["ownerReferences"].empty());
}

TEST(FakeKubeClient, ListSelectorsAndPaging) {
  FakeKubeClient kube;
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(kube.Create(kConfigMaps, "a", ConfigMap("cm" + std::to_string(i),
                                                        {{"idx", std::to_string(i)}}))
                    .ok());
  }
  ASSERT_TRUE(kube.Create(kConfigMaps, "b", ConfigMap("other")).ok());
  EXPECT_EQ(kube.List(kConfigMaps, "")->items.size(), 6u);
  EXPECT_EQ(kube.List(kConfigMaps, "a")->items.size(), 5u);
  EXPECT_EQ(kube.List(kConfigMaps, "a", {.label_selector = "idx in (1,3)"})->items.size(), 2u);
  EXPECT_EQ(kube.List(kConfigMaps, "", {.field_selector = "metadata.namespace=b"})->items.size(),
            1u);
  EXPECT_EQ(kube.List(kConfigMaps, "a", {.label_selector = "idx in (1"}).status().code(),
            StatusCode::kInvalidArgument);

  // Paging by hand.
  std::vector<std::string> names;
  ListOptions page{.limit = 2, .single_page = true};
  int pages = 0;
  do {
    auto r = kube.List(kConfigMaps, "a", page);
    ASSERT_TRUE(r.ok());
    ++pages;
    for (const auto& item : r->items) names.push_back(item["metadata"]["name"]);
    page.continue_token = r->continue_token;
  } while (!page.continue_token.empty());
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(names, (std::vector<std::string>{"cm0", "cm1", "cm2", "cm3", "cm4"}));
  // limit without single_page: the client follows the pages itself.
  EXPECT_EQ(kube.List(kConfigMaps, "a", {.limit = 2})->items.size(), 5u);
}

TEST(FakeKubeClient, InjectedErrorsAndCounters) {
  FakeKubeClient kube;
  ASSERT_TRUE(kube.Create(kConfigMaps, "ns", ConfigMap("a")).ok());
  kube.ResetCounts();
  kube.InjectError(Verb::kGet, UnavailableError("boom"), 2);
  kube.InjectError(Verb::kUpdate, ConflictError("409"), 1, kStatefulSets);
  EXPECT_EQ(kube.Get(kConfigMaps, "ns", "a").status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(kube.Get(kConfigMaps, "ns", "a").status().code(), StatusCode::kUnavailable);
  auto ok = kube.Get(kConfigMaps, "ns", "a");
  ASSERT_TRUE(ok.ok());
  EXPECT_TRUE(kube.Update(kConfigMaps, "ns", *ok).ok()) << "injection limited to statefulsets";
  EXPECT_EQ(kube.CallCount(Verb::kGet), 3);
  EXPECT_EQ(kube.WriteCount(), 1);
  auto log = kube.Requests();
  ASSERT_GE(log.size(), 2u);
  EXPECT_EQ(log.back().verb, Verb::kUpdate);
  EXPECT_EQ(log.back().ToString(), "update v1 configmaps ns/a");
  EXPECT_EQ(log[log.size() - 2].result, StatusCode::kOk);
}

// Collects events from a Watch running on its own thread.
class WatchThread {
 public:
  WatchThread(FakeKubeClient& kube, const ResourceRef& ref, WatchOptions options)
      : thread_([&kube, ref, options, this](std::stop_token stop) {
          result_ = kube.Watch(
              ref, "", options,
              [this](const WatchEvent& e) {
                std::lock_guard lock(mu_);
                events_.push_back(e);
                cv_.notify_all();
                return true;
              },
              stop);
          done_ = true;
          cv_.notify_all();
        }) {}
  ~WatchThread() { thread_.request_stop(); }

  bool AwaitEvents(size_t n) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] { return events_.size() >= n; });
  }
  bool AwaitDone() {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] { return done_.load(); });
  }
  std::vector<WatchEvent> Events() {
    std::lock_guard lock(mu_);
    return events_;
  }
  Status result() { return result_; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<WatchEvent> events_;
  std::atomic<bool> done_{false};
  Status result_;
  std::jthread thread_;
};

TEST(FakeKubeClient, WatchStreamsChangesInOrder) {
  FakeKubeClient kube;
  auto a = kube.Create(kConfigMaps, "ns", ConfigMap("a"));
  WatchThread watch(kube, kConfigMaps, {.resource_version = Rv(*a)});
  ASSERT_TRUE(kube.AwaitActiveWatches(1));
  json changed = *a;
  changed["data"]["k"] = "2";
  ASSERT_TRUE(kube.Update(kConfigMaps, "ns", changed).ok());
  ASSERT_TRUE(kube.Create(kStatefulSets, "ns", ConfigMap("other-kind")).ok());
  ASSERT_TRUE(kube.Delete(kConfigMaps, "ns", "a").ok());
  kube.SendBookmark();
  ASSERT_TRUE(watch.AwaitEvents(3));
  auto events = watch.Events();
  EXPECT_EQ(events[0].type, WatchEvent::Type::kModified);
  EXPECT_EQ(events[1].type, WatchEvent::Type::kDeleted);
  EXPECT_EQ(events[2].type, WatchEvent::Type::kBookmark);
  EXPECT_EQ(Rv(events[2].object), std::to_string(kube.ResourceVersion()));
  kube.CloseWatches();
  ASSERT_TRUE(watch.AwaitDone());
  EXPECT_TRUE(watch.result().ok());
}

TEST(FakeKubeClient, WatchReplaysFromResourceVersionAndHonoursSelectors) {
  FakeKubeClient kube;
  auto a = kube.Create(kConfigMaps, "ns", ConfigMap("a", {{"app", "x"}}));
  std::string start = Rv(*a);
  ASSERT_TRUE(kube.Create(kConfigMaps, "ns", ConfigMap("b", {{"app", "y"}})).ok());
  // a leaves the selector, b enters it.
  ASSERT_TRUE(kube.Patch(kConfigMaps, "ns", "a", PatchType::kMerge,
                         {{"metadata", {{"labels", {{"app", "z"}}}}}})
                  .ok());
  ASSERT_TRUE(kube.Patch(kConfigMaps, "ns", "b", PatchType::kMerge,
                         {{"metadata", {{"labels", {{"app", "x"}}}}}})
                  .ok());
  WatchThread watch(kube, kConfigMaps, {.resource_version = start, .label_selector = "app=x"});
  ASSERT_TRUE(watch.AwaitEvents(2));
  auto events = watch.Events();
  EXPECT_EQ(events[0].type, WatchEvent::Type::kDeleted);
  EXPECT_EQ(events[0].object["metadata"]["name"], "a");
  EXPECT_EQ(events[1].type, WatchEvent::Type::kAdded);
  EXPECT_EQ(events[1].object["metadata"]["name"], "b");
}

TEST(FakeKubeClient, WatchFromCompactedVersionIsOutOfRange) {
  FakeKubeClient kube;
  auto a = kube.Create(kConfigMaps, "ns", ConfigMap("a"));
  ASSERT_TRUE(kube.Create(kConfigMaps, "ns", ConfigMap("b")).ok());
  kube.Compact();
  Status s = kube.Watch(kConfigMaps, "", {.resource_version = Rv(*a)},
                        [](const WatchEvent&) { return true; }, {});
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);

  // A running watch told 410 gets an ERROR event first.
  WatchThread watch(kube, kConfigMaps, {.resource_version = std::to_string(kube.ResourceVersion())});
  ASSERT_TRUE(kube.AwaitActiveWatches(1));
  kube.CloseWatches(OutOfRangeError("too old"));
  ASSERT_TRUE(watch.AwaitDone());
  EXPECT_EQ(watch.result().code(), StatusCode::kOutOfRange);
  ASSERT_EQ(watch.Events().size(), 1u);
  EXPECT_EQ(watch.Events()[0].type, WatchEvent::Type::kError);
  EXPECT_EQ(watch.Events()[0].object["code"], 410);
}

TEST(FakeKubeClient, WatchStopsOnStopTokenAndCallbackFalse) {
  FakeKubeClient kube;
  std::stop_source stop;
  std::thread t([&] {
    EXPECT_TRUE(kube.Watch(kConfigMaps, "", {}, [](const WatchEvent&) { return true; },
                           stop.get_token())
                    .ok());
  });
  ASSERT_TRUE(kube.AwaitActiveWatches(1));
  stop.request_stop();
  t.join();

  ASSERT_TRUE(kube.Create(kConfigMaps, "ns", ConfigMap("a")).ok());
  int seen = 0;
  EXPECT_TRUE(kube.Watch(kConfigMaps, "", {.resource_version = "0"},
                         [&](const WatchEvent& e) {
                           ++seen;
                           EXPECT_EQ(e.type, WatchEvent::Type::kAdded);
                           return false;
                         },
                         {})
                  .ok());
  EXPECT_EQ(seen, 1);
  EXPECT_EQ(kube.ActiveWatches(), 0);
}

TEST(FakeKubeClient, WatchCallbackMayCallBackIntoTheClient) {
  FakeKubeClient kube;
  std::atomic<bool> got{false};
  std::jthread t([&](std::stop_token stop) {
    Status s = kube.Watch(kConfigMaps, "", {},
                          [&](const WatchEvent& e) {
                            got = kube.Get(kConfigMaps, "ns", e.object["metadata"]["name"].get<std::string>()).ok();
                            return false;
                          },
                          stop);
    EXPECT_TRUE(s.ok());
  });
  ASSERT_TRUE(kube.AwaitActiveWatches(1));
  ASSERT_TRUE(kube.Create(kConfigMaps, "ns", ConfigMap("a")).ok());
  t.join();
  EXPECT_TRUE(got);
}

}  // namespace
}  // namespace kvcache::kube
