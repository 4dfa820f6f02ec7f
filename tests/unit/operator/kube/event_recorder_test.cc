#include "kube/event_recorder.h"

#include <gtest/gtest.h>

#include "kube/fake_kube_client.h"

namespace kvcache::kube {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

const json kRegarding = {{"apiVersion", "kvcache.io/v1alpha1"},
                         {"kind", "KVCache"},
                         {"metadata",
                          {{"name", "demo"},
                           {"namespace", "prod"},
                           {"uid", "u-1"},
                           {"resourceVersion", "7"}}}};

TEST(EventRecorder, CreatesAnEventsV1Event) {
  FakeClock clock;
  FakeKubeClient kube(&clock);
  EventRecorder recorder(kube, {.reporting_instance = "op-0"}, clock);
  ASSERT_TRUE(recorder.Record(kRegarding, "Warning", "PrimaryFailedOver", "Failover",
                              "shard 1: node-1 promoted")
                  .ok());
  auto events = kube.Objects(kEventResource, "prod");
  ASSERT_EQ(events.size(), 1u);
  const json& e = events[0];
  EXPECT_EQ(e["type"], "Warning");
  EXPECT_EQ(e["reason"], "PrimaryFailedOver");
  EXPECT_EQ(e["action"], "Failover");
  EXPECT_EQ(e["reportingController"], "kvcache.io/operator");
  EXPECT_EQ(e["reportingInstance"], "op-0");
  EXPECT_EQ(e["regarding"]["kind"], "KVCache");
  EXPECT_EQ(e["regarding"]["uid"], "u-1");
  EXPECT_EQ(e["eventTime"].get<std::string>().size(), 27u);
  EXPECT_EQ(e["metadata"]["name"].get<std::string>().rfind("demo.", 0), 0u);
}

TEST(EventRecorder, AggregatesRepeatsSoALoopDoesNotFlood) {
  FakeClock clock;
  FakeKubeClient kube(&clock);
  EventRecorder recorder(kube, {}, clock);
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(recorder.Record(kRegarding, "Warning", "ReconcileError", "Reconcile", "boom").ok());
    clock.Advance(100ms);
  }
  // One create + the first repeat as a series; the rest counted locally.
  EXPECT_EQ(recorder.Writes(), 2);
  auto events = kube.Objects(kEventResource, "prod");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0]["series"]["count"], 2);

  clock.Advance(30s);  // the flush interval passed: the next repeat writes the count
  ASSERT_TRUE(recorder.Record(kRegarding, "Warning", "ReconcileError", "Reconcile", "boom").ok());
  EXPECT_EQ(recorder.Writes(), 3);
  EXPECT_EQ(kube.Objects(kEventResource, "prod")[0]["series"]["count"], 101);

  // A different message is a different event.
  ASSERT_TRUE(recorder.Record(kRegarding, "Warning", "ReconcileError", "Reconcile", "other").ok());
  EXPECT_EQ(kube.Objects(kEventResource, "prod").size(), 2u);

  // After the aggregation window a fresh Event is created.
  clock.Advance(7min);
  ASSERT_TRUE(recorder.Record(kRegarding, "Warning", "ReconcileError", "Reconcile", "boom").ok());
  EXPECT_EQ(kube.Objects(kEventResource, "prod").size(), 3u);
}

TEST(EventRecorder, FlushWritesPendingCounts) {
  FakeClock clock;
  FakeKubeClient kube(&clock);
  {
    EventRecorder recorder(kube, {}, clock);
    for (int i = 0; i < 5; ++i) {
      ASSERT_TRUE(recorder.Record(kRegarding, "Normal", "Scaled", "Scale", "3 shards").ok());
    }
  }  // destructor flushes
  EXPECT_EQ(kube.Objects(kEventResource, "prod")[0]["series"]["count"], 5);
}

TEST(EventRecorder, ReturnsApiErrors) {
  FakeClock clock;
  FakeKubeClient kube(&clock);
  EventRecorder recorder(kube, {}, clock);
  kube.InjectError(Verb::kCreate, PermissionDeniedError("forbidden"));
  EXPECT_EQ(recorder.Record(kRegarding, "Normal", "X", "Y", "z").code(),
            StatusCode::kPermissionDenied);
  EXPECT_TRUE(recorder.Record(kRegarding, "Normal", "X", "Y", "z").ok()) << "not cached on failure";
}

}  // namespace
}  // namespace kvcache::kube
