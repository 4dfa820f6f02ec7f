#include "controller/kvcache_reconciler.h"

#include <set>

#include <gtest/gtest.h>

#include "controller/children.h"
#include "fake_admin_client.h"
#include "kube/clock.h"
#include "kube/fake_kube_client.h"

namespace kvcache::op {
namespace {

using kube::FakeKubeClient;
using kube::Verb;
using std::chrono::seconds;

Json KVCache(Json spec) {
  return {{"apiVersion", "kvcache.io/v1alpha1"},
          {"kind", "KVCache"},
          {"metadata", {{"name", "demo"}, {"namespace", "prod"}}},
          {"spec", std::move(spec)}};
}

// A KVCache, the fake API server, fake nodes, and a hand-driven "kubelet + StatefulSet
// controller" (RunPods) that turns StatefulSets into running pods and nodes.
class World {
 public:
  World() : kube(&clock), reconciler(kube, admin, clock, metrics, Recorder(), Options()) {}

  // Fake nodes never catch up by themselves: a switchover that waits for one gives up fast.
  static ReconcilerOptions Options() {
    ReconcilerOptions o;
    o.switchover_catch_up = std::chrono::milliseconds(100);
    return o;
  }

  EventFn Recorder() {
    return [this](const Json&, std::string_view type, std::string_view reason,
                  const std::string& message) {
      events.push_back(std::string(type) + " " + std::string(reason) + ": " + message);
    };
  }

  void Create(Json spec) { kube.Seed(kinds::kKVCache, KVCache(std::move(spec))); }
  Json Object() { return *kube.Peek(kinds::kKVCache, "prod", "demo"); }
  Json Status() { return Object().value("status", Json::object()); }
  void PatchSpec(const Json& patch) {
    Json o = Object();
    o["spec"].merge_patch(patch);
    kube.Seed(kinds::kKVCache, o);
  }

  ReconcileResult Reconcile() { return reconciler.Reconcile("prod", "demo"); }

  static std::string Ip(int shard, int ordinal) {
    return "10.0." + std::to_string(shard) + "." + std::to_string(ordinal + 10);
  }
  static std::string Addr(int shard, int ordinal) { return Ip(shard, ordinal) + ":8080"; }

  // Every StatefulSet gets its pods (Running, ready unless listed in `not_ready`) and its
  // nodes; pods of deleted StatefulSets go. The StatefulSet status says "rolled out".
  void RunPods() {
    std::set<std::string> wanted;
    for (Json sts : kube.Objects(kinds::kStatefulSet, "prod")) {
      int shard = std::stoi(sts["metadata"]["labels"]["kvcache.io/shard"].get<std::string>());
      int replicas = sts["spec"]["replicas"];
      // The StatefulSet controller's revision of the template; OnDelete: a pod keeps the
      // revision it was created with until it is deleted.
      const std::string revision =
          "rev-" + std::to_string(std::hash<std::string>()(sts["spec"]["template"].dump()) % 100000);
      bool all_current = true;
      for (int ordinal = 0; ordinal < replicas; ++ordinal) {
        std::string name = sts["metadata"]["name"].get<std::string>() + "-" + std::to_string(ordinal);
        wanted.insert(name);
        bool ready = !not_ready.count(name);
        bool running = !stopped.count(name);
        Json pod = {{"apiVersion", "v1"},
                    {"kind", "Pod"},
                    {"metadata",
                     {{"name", name},
                      {"namespace", "prod"},
                      {"labels", sts["spec"]["template"]["metadata"]["labels"]}}},
                    {"status",
                     {{"phase", running ? "Running" : "Pending"},
                      {"podIP", running ? Ip(shard, ordinal) : ""},
                      {"conditions", {{{"type", "Ready"}, {"status", ready ? "True" : "False"}}}}}}};
        auto live = kube.Peek(kinds::kPod, "prod", name);
        std::string pod_revision =
            live ? (*live)["metadata"]["labels"].value("controller-revision-hash", revision)
                 : revision;
        all_current = all_current && pod_revision == revision;
        pod["metadata"]["labels"]["controller-revision-hash"] = pod_revision;
        if (!live || live->value("status", Json()) != pod["status"] ||
            (*live)["metadata"]["labels"] != pod["metadata"]["labels"]) {
          kube.Seed(kinds::kPod, pod);
        }
        if (!admin.HasNode(Addr(shard, ordinal))) admin.AddNode(Addr(shard, ordinal), name);
        admin.At(Addr(shard, ordinal)).reachable = running;
        admin.At(Addr(shard, ordinal)).status.ready = ready;
      }
      int64_t gen = sts["metadata"]["generation"];
      Json status = {{"observedGeneration", gen}, {"replicas", replicas},
                     {"currentRevision", all_current ? revision : "old"},
                     {"updateRevision", revision}};
      if (sts.value("status", Json()) != status) {
        sts["status"] = status;
        kube.Seed(kinds::kStatefulSet, sts);
      }
    }
    for (const Json& pod : kube.Objects(kinds::kPod, "prod")) {
      std::string name = pod["metadata"]["name"];
      if (!wanted.count(name)) kube.Delete(kinds::kPod, "prod", name).ok();
    }
  }

  // Reconcile + RunPods until a pass asks for nothing but the resync. Returns the passes used.
  int Converge(int max_passes = 30) {
    for (int i = 1; i <= max_passes; ++i) {
      ReconcileResult r = Reconcile();
      EXPECT_TRUE(r.status.ok()) << r.status.ToString();
      RunPods();
      if (r.status.ok() && r.requeue_after == ReconcilerOptions{}.resync_interval) return i;
      clock.Advance(seconds(2));
    }
    ADD_FAILURE() << "did not converge; status: " << Status().dump(2);
    return max_passes;
  }

  std::string Condition(const std::string& type, std::string* reason = nullptr) {
    for (const Json& c : Status().value("conditions", Json::array())) {
      if (c["type"] == type) {
        if (reason) *reason = c["reason"];
        return c["status"];
      }
    }
    return "";
  }

  // The claim a StatefulSet controller makes for pod demo-<shard>-<ordinal>.
  void SeedClaim(int shard, int ordinal, const std::string& size = "1Gi") {
    kube.Seed(kinds::kPvc,
              {{"apiVersion", "v1"},
               {"kind", "PersistentVolumeClaim"},
               {"metadata",
                {{"name", "data-demo-" + std::to_string(shard) + "-" + std::to_string(ordinal)},
                 {"namespace", "prod"},
                 {"labels", Labels(*ParseKVCacheSpec(Object()), "node", shard)}}},
               {"spec", {{"resources", {{"requests", {{"storage", size}}}}}}}});
  }

  bool HasEvent(const std::string& reason) {
    for (const std::string& e : events) {
      if (e.find(" " + reason + ":") != std::string::npos) return true;
    }
    return false;
  }

  kube::FakeClock clock;
  FakeKubeClient kube;
  FakeAdminClient admin;
  OperatorMetrics metrics;
  std::vector<std::string> events;
  std::set<std::string> not_ready, stopped;
  KVCacheReconciler reconciler;
};

TEST(KVCacheReconciler, MissingKVCacheIsDone) {
  World w;
  ReconcileResult r = w.Reconcile();
  EXPECT_TRUE(r.status.ok());
  EXPECT_FALSE(r.requeue_after.has_value());
  EXPECT_EQ(w.kube.WriteCount(), 0);
}

TEST(KVCacheReconciler, CreatesEveryChildOwnedByTheKVCache) {
  World w;
  w.Create({{"shards", 3}, {"replicasPerShard", 1}});
  ReconcileResult r = w.Reconcile();
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  ASSERT_TRUE(r.requeue_after.has_value());
  const std::string uid = w.Object()["metadata"]["uid"];
  struct Want {
    kube::ResourceRef ref;
    std::string name;
  };
  for (const Want& want : std::vector<Want>{{kinds::kSecret, "demo-cluster-token"},
                                            {kinds::kConfigMap, "demo-config"},
                                            {kinds::kService, "demo"},
                                            {kinds::kService, "demo-nodes"},
                                            {kinds::kStatefulSet, "demo-0"},
                                            {kinds::kStatefulSet, "demo-1"},
                                            {kinds::kStatefulSet, "demo-2"},
                                            {kinds::kPdb, "demo-0"},
                                            {kinds::kPdb, "demo-2"}}) {
    auto obj = w.kube.Peek(want.ref, "prod", want.name);
    ASSERT_TRUE(obj.has_value()) << want.ref.kind << " " << want.name;
    EXPECT_EQ((*obj)["metadata"]["ownerReferences"][0]["uid"], uid) << want.name;
    EXPECT_EQ((*obj)["metadata"]["ownerReferences"][0]["controller"], true);
  }
  EXPECT_FALSE(w.kube.Peek(kinds::kStatefulSet, "prod", "demo-3").has_value());
  EXPECT_FALSE(w.kube.Peek(kinds::kIngress, "prod", "demo").has_value());
  Json status = w.Status();
  EXPECT_EQ(status["phase"], "Creating");
  EXPECT_EQ(status["observedGeneration"], 1);
  EXPECT_EQ(status["topologyEpoch"], 0);
  EXPECT_EQ(status["shards"].size(), 3u);
  EXPECT_EQ(status["shards"][0]["slots"], "0-5460");
  EXPECT_EQ(w.Condition("Available"), "False");
  EXPECT_EQ(w.Condition("Progressing"), "True");
  EXPECT_TRUE(w.HasEvent("Created"));
}

TEST(KVCacheReconciler, PushesTheFirstTopologyOnceEveryNodeRunsThenIsAvailable) {
  World w;
  w.Create({{"shards", 3}, {"replicasPerShard", 1}});
  ASSERT_TRUE(w.Reconcile().status.ok());
  EXPECT_EQ(w.admin.Calls("topology"), 0);
  w.RunPods();
  w.Converge();
  EXPECT_EQ(w.admin.Calls("topology"), 6) << "one push per node";
  for (int shard = 0; shard < 3; ++shard) {
    for (int ordinal = 0; ordinal < 2; ++ordinal) {
      const auto& node = w.admin.At(World::Addr(shard, ordinal));
      ASSERT_TRUE(node.topology.has_value());
      EXPECT_EQ(node.topology->epoch, 1u);
      EXPECT_EQ(node.status.role, ordinal == 0 ? protocol::Role::kPrimary : protocol::Role::kReplica);
    }
  }
  Json status = w.Status();
  EXPECT_EQ(status["phase"], "Running");
  EXPECT_EQ(status["ready"], "6/6");
  EXPECT_EQ(status["readyNodes"], 6);
  EXPECT_EQ(status["shardCount"], 3);
  EXPECT_EQ(status["endpoint"], "demo.prod.svc:8080");
  EXPECT_EQ(status["topologyEpoch"], 1);
  EXPECT_EQ(status["shards"][1]["primary"], "demo-1-0");
  EXPECT_EQ(status["shards"][1]["replicas"], Json::array({"demo-1-1"}));
  std::string reason;
  EXPECT_EQ(w.Condition("Available", &reason), "True");
  EXPECT_EQ(reason, "AllShardsServing");
  EXPECT_EQ(w.Condition("Progressing"), "False");
  EXPECT_EQ(w.Condition("Degraded"), "False");
  for (const Json& c : status["conditions"]) EXPECT_EQ(c["observedGeneration"], 1);
}

TEST(KVCacheReconciler, SecondReconcileAfterConvergenceMakesZeroWrites) {
  World w;
  w.Create({{"shards", 3}, {"replicasPerShard", 1}, {"storage", {{"reclaimPolicy", "Delete"}}}});
  w.RunPods();
  w.Converge();
  w.kube.ResetCounts();
  w.kube.ClearRequests();
  w.admin.ResetCalls();
  Json before = w.Object();
  ReconcileResult r = w.Reconcile();
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(w.kube.WriteCount(), 0);
  for (const auto& req : w.kube.Requests()) {
    if (req.verb != Verb::kGet && req.verb != Verb::kList) ADD_FAILURE() << req.ToString();
  }
  EXPECT_EQ(w.admin.Calls("topology"), 0);
  EXPECT_EQ(w.Object()["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"]);
}

TEST(KVCacheReconciler, KeepsTheClusterTokenAcrossReconciles) {
  World w;
  w.Create({{"shards", 1}});
  ASSERT_TRUE(w.Reconcile().status.ok());
  std::string token = (*w.kube.Peek(kinds::kSecret, "prod", "demo-cluster-token"))["data"]["token"];
  EXPECT_FALSE(Base64Decode(token).empty());
  ASSERT_TRUE(w.Reconcile().status.ok());
  EXPECT_EQ((*w.kube.Peek(kinds::kSecret, "prod", "demo-cluster-token"))["data"]["token"], token);
}

TEST(KVCacheReconciler, ConfigChangeRollsThePodsViaTheChecksum) {
  World w;
  w.Create({{"shards", 1}});
  w.RunPods();
  w.Converge();
  auto hash = [&] {
    return (*w.kube.Peek(kinds::kStatefulSet, "prod", "demo-0"))["spec"]["template"]["metadata"]
        ["annotations"]["kvcache.io/config-hash"];
  };
  Json before = hash();
  w.PatchSpec({{"memory", {{"eviction", "lfu"}}}});
  w.Converge();
  EXPECT_EQ((*w.kube.Peek(kinds::kConfigMap, "prod", "demo-config"))["data"]["KVCACHE_EVICTION"], "lfu");
  EXPECT_NE(hash(), before);
}

TEST(KVCacheReconciler, FailsOverToTheMostCaughtUpReplicaAfterTheTimeout) {
  World w;
  w.Create({{"shards", 1}, {"replicasPerShard", 2}, {"failover", {{"timeoutSeconds", 10}}}});
  w.RunPods();
  w.Converge();
  w.admin.At(World::Addr(0, 1)).status.applied_offset = 90;
  w.admin.At(World::Addr(0, 2)).status.applied_offset = 120;

  // The primary stops: not ready, unreachable.
  w.stopped.insert("demo-0-0");
  w.not_ready.insert("demo-0-0");
  w.RunPods();
  ReconcileResult r = w.Reconcile();
  ASSERT_TRUE(r.status.ok());
  EXPECT_TRUE(w.admin.Promoted().empty()) << "not before the timeout";
  ASSERT_TRUE(r.requeue_after.has_value());
  EXPECT_LE(*r.requeue_after, std::chrono::milliseconds(10100));
  EXPECT_EQ(w.Status()["phase"], "Degraded");
  EXPECT_TRUE(w.Status()["shards"][0].contains("primaryNotReadySince"));

  w.clock.Advance(seconds(5));
  ASSERT_TRUE(w.Reconcile().status.ok());
  EXPECT_TRUE(w.admin.Promoted().empty());

  w.clock.Advance(seconds(6));
  ASSERT_TRUE(w.Reconcile().status.ok());
  ASSERT_EQ(w.admin.Promoted(), std::vector<std::string>{"demo-0-2"});
  EXPECT_EQ(w.metrics.Failovers(), 1);
  EXPECT_TRUE(w.HasEvent("PrimaryFailedOver"));
  Json status = w.Status();
  EXPECT_EQ(status["shards"][0]["primary"], "demo-0-2");
  EXPECT_EQ(status["topologyEpoch"], 2);
  EXPECT_FALSE(status["shards"][0].contains("primaryNotReadySince"));
  // The surviving replica follows the new primary in epoch 2.
  const auto& follower = w.admin.At(World::Addr(0, 1));
  ASSERT_TRUE(follower.topology.has_value());
  EXPECT_EQ(follower.topology->epoch, 2u);
  EXPECT_EQ(follower.topology->shards[0].primary.name, "demo-0-2");

  // The old primary comes back: it gets the new topology (fenced: now a replica).
  w.stopped.clear();
  w.not_ready.clear();
  w.RunPods();
  w.admin.At(World::Addr(0, 0)).status.epoch = 1;
  w.Converge();
  EXPECT_EQ(w.admin.At(World::Addr(0, 0)).status.role, protocol::Role::kReplica);
  EXPECT_EQ(w.Status()["phase"], "Running");
  EXPECT_FALSE(w.Status().contains("failover"));
}

// replicasPerShard 2 -> 0 after a failover left the primary on ordinal 2: the StatefulSet keeps
// that pod until the primary role has moved to ordinal 0, so the scale-in never deletes it.
TEST(KVCacheReconciler, ReplicaScaleInSwitchesOverBeforeRemovingThePrimary) {
  World w;
  w.Create({{"shards", 1}, {"replicasPerShard", 2}, {"failover", {{"timeoutSeconds", 1}}}});
  w.RunPods();
  w.Converge();
  w.admin.At(World::Addr(0, 2)).status.applied_offset = 50;
  w.stopped.insert("demo-0-0");
  w.not_ready.insert("demo-0-0");
  w.RunPods();
  ASSERT_TRUE(w.Reconcile().status.ok());
  w.clock.Advance(seconds(2));
  ASSERT_TRUE(w.Reconcile().status.ok());
  ASSERT_EQ(w.admin.Promoted(), std::vector<std::string>{"demo-0-2"});
  w.stopped.clear();
  w.not_ready.clear();
  w.RunPods();
  w.Converge();
  ASSERT_EQ(w.Status()["shards"][0]["primary"], "demo-0-2");

  w.PatchSpec({{"replicasPerShard", 0}});
  ASSERT_TRUE(w.Reconcile().status.ok());
  EXPECT_EQ((*w.kube.Peek(kinds::kStatefulSet, "prod", "demo-0"))["spec"]["replicas"], 3)
      << "the primary's pod stays until it hands over";
  // The primary's writes are paused first; the successor is promoted only once it has applied
  // everything the primary wrote (offset 50).
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(w.Reconcile().status.ok());
    w.RunPods();
    w.clock.Advance(seconds(2));
  }
  EXPECT_EQ(w.admin.Promoted(), std::vector<std::string>{"demo-0-2"}) << "not caught up yet";
  ASSERT_FALSE(w.admin.SteppedDown().empty());
  EXPECT_EQ(w.admin.SteppedDown().front(), "demo-0-2");
  EXPECT_NE(w.Status().dump().find("did not catch up"), std::string::npos) << w.Status().dump(2);
  w.admin.At(World::Addr(0, 0)).status.applied_offset = 50;
  w.Converge();
  EXPECT_EQ(w.admin.Promoted(), (std::vector<std::string>{"demo-0-2", "demo-0-0"}));
  EXPECT_EQ(w.Status()["shards"][0]["primary"], "demo-0-0");
  EXPECT_EQ((*w.kube.Peek(kinds::kStatefulSet, "prod", "demo-0"))["spec"]["replicas"], 1);
  EXPECT_EQ(w.Status()["phase"], "Running");
  EXPECT_TRUE(w.HasEvent("PrimarySwitchedOver"));
}

// A converged 1 shard x 1 replica KVCache with failover.timeoutSeconds 1, whose pods in
// `stopped` then stop (not ready, unreachable).
void ConvergeOneByOneThenStop(World& w, std::set<std::string> stopped) {
  w.Create({{"shards", 1}, {"replicasPerShard", 1}, {"failover", {{"timeoutSeconds", 1}}}});
  w.RunPods();
  w.Converge();
  w.stopped = stopped;
  w.not_ready = std::move(stopped);
  w.RunPods();
}

// Two passes 2 s apart (past the 1 s timeout) promote nobody: Degraded/NoPromotableReplica.
void ExpectNoPromotableReplica(World& w) {
  ASSERT_TRUE(w.Reconcile().status.ok());
  w.clock.Advance(seconds(2));
  ASSERT_TRUE(w.Reconcile().status.ok());
  EXPECT_TRUE(w.admin.Promoted().empty());
  std::string reason;
  EXPECT_EQ(w.Condition("Degraded", &reason), "True");
  EXPECT_EQ(reason, "NoPromotableReplica");
}

TEST(KVCacheReconciler, NoFailoverWithoutAReachableReplica) {
  World w;
  ConvergeOneByOneThenStop(w, {"demo-0-0", "demo-0-1"});
  ExpectNoPromotableReplica(w);
  EXPECT_EQ(w.Condition("Available"), "False");
}

// All pods came back with new IPs: for a while the replica's DNS name can lead to the pod that
// had its old IP. That pod's answer is not the replica's: it is never promoted in its place.
TEST(KVCacheReconciler, AnotherNodeAnsweringAtAReplicasAddressIsNotPromoted) {
  World w;
  ConvergeOneByOneThenStop(w, {"demo-0-0"});
  w.admin.At(World::Addr(0, 1)).status.name = "demo-7-1";  // someone else at that address
  ExpectNoPromotableReplica(w);
  // The name leads to the replica again: promoted.
  w.admin.At(World::Addr(0, 1)).status.name = "demo-0-1";
  ASSERT_TRUE(w.Reconcile().status.ok());
  EXPECT_EQ(w.admin.Promoted(), std::vector<std::string>{"demo-0-1"});
}

int OwnedSlots(const Json& status, int shard) {
  for (const Json& s : status["shards"]) {
    if (s["id"] == shard) return s["slotCount"];
  }
  return -1;
}

TEST(KVCacheReconciler, ScaleUpMovesSlotsOneMigrationAtATime) {
  World w;
  w.Create({{"shards", 3}, {"replicasPerShard", 0}});
  w.RunPods();
  w.Converge();
  // The target of every move already knows its shard from a pushed topology.
  w.admin.on_start = [&](const protocol::MigrationRequest& request) {
    const auto& target = w.admin.At(World::Addr(request.target_shard, 0));
    ASSERT_TRUE(target.topology.has_value());
    bool known = false;
    for (const auto& s : target.topology->shards) known = known || s.id == request.target_shard;
    EXPECT_TRUE(known) << "shard " << request.target_shard;
  };
  w.PatchSpec({{"shards", 5}});
  w.Converge(60);
  Json status = w.Status();
  EXPECT_EQ(status["phase"], "Running");
  EXPECT_EQ(status["shardCount"], 5);
  for (int shard = 0; shard < 5; ++shard) EXPECT_NEAR(OwnedSlots(status, shard), 16384 / 5, 1);
  EXPECT_FALSE(status.contains("resharding"));
  std::vector<protocol::MigrationRequest> started = w.admin.Started();
  EXPECT_FALSE(started.empty());
  std::set<int> targets;
  for (const auto& m : started) targets.insert(m.target_shard);
  EXPECT_EQ(targets, (std::set<int>{3, 4}));
  EXPECT_TRUE(w.HasEvent("ReshardCompleted"));
  // Every node has the final layout.
  const auto& node = w.admin.At(World::Addr(4, 0));
  ASSERT_TRUE(node.topology.has_value());
  EXPECT_EQ(node.topology->epoch, static_cast<uint64_t>(status["topologyEpoch"]));
  EXPECT_EQ(node.topology->shards.size(), 5u);
}

// Regression (e2e, timeoutSeconds 3): the primaries of shards added by a reshard were failed
// over while their pods started, before the shards owned a slot.
TEST(KVCacheReconciler, NoFailoverOfAShardThatOwnsNoSlots) {
  World w;
  w.Create({{"shards", 1}, {"replicasPerShard", 1}, {"failover", {{"timeoutSeconds", 1}}}});
  w.RunPods();
  w.Converge();
  w.PatchSpec({{"shards", 2}});
  w.not_ready.insert("demo-1-0");  // the new shard's primary starts slowly; its replica answers
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(w.Reconcile().status.ok());
    w.RunPods();
    w.clock.Advance(seconds(2));
  }
  EXPECT_TRUE(w.admin.Promoted().empty());
  EXPECT_EQ(OwnedSlots(w.Status(), 1), 0) << "no move before the target's primary is ready";
  w.not_ready.clear();
  w.Converge(60);
  EXPECT_TRUE(w.admin.Promoted().empty());
  EXPECT_EQ(w.metrics.Failovers(), 0);
  EXPECT_EQ(w.Status()["phase"], "Running");
  EXPECT_EQ(OwnedSlots(w.Status(), 1), 8192);
}

// The not-ready start is kept to the millisecond: whole seconds would let the timer fire up to
// a second early.
TEST(KVCacheReconciler, FailoverTimerIsNotRoundedDown) {
  World w;
  w.Create({{"shards", 1}, {"replicasPerShard", 1}, {"failover", {{"timeoutSeconds", 10}}}});
  w.RunPods();
  w.Converge();
  w.clock.Advance(std::chrono::milliseconds(900));
  w.stopped.insert("demo-0-0");
  w.not_ready.insert("demo-0-0");
  w.RunPods();
  ASSERT_TRUE(w.Reconcile().status.ok());
  w.clock.Advance(std::chrono::milliseconds(9500));
  ASSERT_TRUE(w.Reconcile().status.ok());
  EXPECT_TRUE(w.admin.Promoted().empty()) << "9.5 s of a 10 s timeout";
  w.clock.Advance(std::chrono::milliseconds(600));
  ASSERT_TRUE(w.Reconcile().status.ok());
  EXPECT_EQ(w.admin.Promoted(), std::vector<std::string>{"demo-0-1"});
}

// A KVCache created again over kept volumes (reclaimPolicy Keep): its nodes still have the
// earlier KVCache's topology (epoch 5, uneven after a reshard, shard 1 failed over). The
// operator adopts it instead of pushing an even layout over it, then rebalances by moves.
TEST(KVCacheReconciler, AdoptsTheLayoutItsNodesAlreadyHave) {
  World w;
  w.Create({{"shards", 2}, {"replicasPerShard", 1}});
  ASSERT_TRUE(w.Reconcile().status.ok());
  w.RunPods();
  protocol::Topology old;
  old.cluster = "demo";
  old.epoch = 5;
  auto member = [](int shard, int ordinal) {
    return protocol::Member{"demo-" + std::to_string(shard) + "-" + std::to_string(ordinal),
                            World::Addr(shard, ordinal)};
  };
  old.shards.resize(2);
  old.shards[0].id = 0;
  old.shards[0].slots = {{0, 5999}};
  old.shards[0].primary = member(0, 0);
  old.shards[0].replicas = {member(0, 1)};
  old.shards[1].id = 1;
  old.shards[1].slots = {{6000, 16383}};
  old.shards[1].primary = member(1, 1);
  old.shards[1].replicas = {member(1, 0)};
  for (int shard = 0; shard < 2; ++shard) {
    for (int ordinal = 0; ordinal < 2; ++ordinal) {
      w.admin.At(World::Addr(shard, ordinal)).topology = old;
      w.admin.At(World::Addr(shard, ordinal)).status.epoch = 5;
    }
  }
  ASSERT_TRUE(w.Reconcile().status.ok());
  EXPECT_TRUE(w.HasEvent("LayoutRecovered"));
  Json status = w.Status();
  EXPECT_EQ(status["shards"][1]["primary"], "demo-1-1");
  EXPECT_EQ(OwnedSlots(status, 0), 6000);
  w.Converge(60);
  status = w.Status();
  EXPECT_EQ(status["shards"][1]["primary"], "demo-1-1");
  EXPECT_EQ(OwnedSlots(status, 0), 8192);
  EXPECT_EQ(OwnedSlots(status, 1), 8192);
  EXPECT_GT(status["topologyEpoch"].get<uint64_t>(), 5u);
  ASSERT_FALSE(w.admin.Started().empty());
  EXPECT_EQ(w.admin.Started().front().target_shard, 0) << "keys move by migration";
  EXPECT_TRUE(w.admin.Promoted().empty());
}

// A node whose topology cannot be adopted (another cluster's) is never overwritten.
TEST(KVCacheReconciler, ForeignNodeTopologyIsReportedNotOverwritten) {
  World w;
  w.Create({{"shards", 1}, {"replicasPerShard", 0}});
  ASSERT_TRUE(w.Reconcile().status.ok());
  w.RunPods();
  protocol::Topology other;
  other.cluster = "someone-else";
  other.epoch = 9;
  other.shards.resize(1);
  other.shards[0].id = 0;
  other.shards[0].slots = {{0, 16383}};
  other.shards[0].primary = {"demo-0-0", World::Addr(0, 0)};
  w.admin.At(World::Addr(0, 0)).topology = other;
  w.admin.At(World::Addr(0, 0)).status.epoch = 9;
  ASSERT_TRUE(w.Reconcile().status.ok());
  std::string reason;
  EXPECT_EQ(w.Condition("Degraded", &reason), "True");
  EXPECT_EQ(reason, "LayoutUnreadable");
  EXPECT_EQ(w.admin.At(World::Addr(0, 0)).topology->cluster, "someone-else");
  EXPECT_FALSE(w.HasEvent("TopologyChanged"));
}

TEST(KVCacheReconciler, ScaleDownDrainsTheShardBeforeDeletingItsStatefulSet) {
  World w;
  w.Create({{"shards", 3}, {"replicasPerShard", 0}});
  w.RunPods();
  w.Converge();
  w.PatchSpec({{"shards", 2}});
  // While shard 2 owns slots its StatefulSet stays.
  ASSERT_TRUE(w.Reconcile().status.ok());
  EXPECT_TRUE(w.kube.Peek(kinds::kStatefulSet, "prod", "demo-2").has_value());
  EXPECT_EQ(w.Status()["phase"], "Resharding");
  EXPECT_TRUE(w.Status()["resharding"].contains("current"));
  w.Converge(60);
  EXPECT_FALSE(w.kube.Peek(kinds::kStatefulSet, "prod", "demo-2").has_value());
  EXPECT_FALSE(w.kube.Peek(kinds::kPdb, "prod", "demo-2").has_value());
  Json status = w.Status();
  EXPECT_EQ(status["shards"].size(), 2u);
  EXPECT_EQ(OwnedSlots(status, 0) + OwnedSlots(status, 1), 16384);
  EXPECT_EQ(status["phase"], "Running");
  std::set<int> targets;
  for (const auto& m : w.admin.Started()) {
    targets.insert(m.target_shard);
    EXPECT_EQ(m.target.name, "demo-" + std::to_string(m.target_shard) + "-0");
  }
  EXPECT_EQ(targets, (std::set<int>{0, 1})) << "the drained shard spreads over both";
}

// A drained shard's claims go once its StatefulSet is gone: a later scale-up reusing the shard
// id must not bring back the stale keys they hold.
TEST(KVCacheReconciler, DrainedShardClaimsAreDeletedAfterItsStatefulSet) {
  World w;
  w.Create({{"shards", 3}, {"replicasPerShard", 0}, {"storage", {{"reclaimPolicy", "Keep"}}}});
  w.RunPods();
  w.Converge();
  for (int shard = 0; shard < 3; ++shard) w.SeedClaim(shard, 0);
  w.PatchSpec({{"shards", 2}});
  ASSERT_TRUE(w.Reconcile().status.ok());
  EXPECT_TRUE(w.kube.Peek(kinds::kPvc, "prod", "data-demo-2-0").has_value()) << "still draining";
  w.Converge(60);
  EXPECT_FALSE(w.kube.Peek(kinds::kStatefulSet, "prod", "demo-2").has_value());
  EXPECT_FALSE(w.kube.Peek(kinds::kPvc, "prod", "data-demo-2-0").has_value());
  EXPECT_TRUE(w.kube.Peek(kinds::kPvc, "prod", "data-demo-0-0").has_value());
  EXPECT_TRUE(w.kube.Peek(kinds::kPvc, "prod", "data-demo-1-0").has_value());
  EXPECT_TRUE(w.HasEvent("StorageReclaimed"));
}

TEST(KVCacheReconciler, ReshardResumesWithANewReconcilerMidMigration) {
  World w;
  w.admin.migration_polls = 3;
  w.Create({{"shards", 1}, {"replicasPerShard", 0}});
  w.RunPods();
  w.Converge();
  w.PatchSpec({{"shards", 2}});
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(w.Reconcile().status.ok());
    w.RunPods();
  }
  ASSERT_TRUE(w.Status().contains("resharding"));
  ASSERT_TRUE(w.Status()["resharding"].contains("current"));
  int started = static_cast<int>(w.admin.Started().size());
  // The operator restarts: a new reconciler continues from status, without restarting the move.
  KVCacheReconciler second(w.kube, w.admin, w.clock, w.metrics);
  for (int i = 0; i < 20 && w.Status().contains("resharding"); ++i) {
    ASSERT_TRUE(second.Reconcile("prod", "demo").status.ok());
    w.RunPods();
  }
  EXPECT_FALSE(w.Status().contains("resharding"));
  EXPECT_EQ(static_cast<int>(w.admin.Started().size()), started);
  EXPECT_NEAR(OwnedSlots(w.Status(), 1), 8192, 1);
}

// The source's primary of a streaming move fails: its new primary takes the same move over in
// the failover's own pass, before any other node has the topology that routes to it (else moved
// keys answer 404 there, and a DELETE of one misses the target's copy).
TEST(KVCacheReconciler, ANewSourcePrimaryTakesOverTheMoveBeforeOthersRouteToIt) {
  World w;
  w.admin.migration_polls = 1000;  // the move streams until the test lets it finish
  w.Create({{"shards", 1}, {"replicasPerShard", 1}, {"failover", {{"timeoutSeconds", 1}}}});
  w.RunPods();
  w.Converge();
  w.PatchSpec({{"shards", 2}});
  for (int i = 0; i < 10 && !w.Status()["resharding"].contains("current"); ++i) {
    ASSERT_TRUE(w.Reconcile().status.ok());
    w.RunPods();
  }
  ASSERT_TRUE(w.Status()["resharding"].contains("current"));
  const std::vector<protocol::MigrationRequest> first = w.admin.Started();
  ASSERT_EQ(first.size(), 1u);

  w.stopped.insert("demo-0-0");
  w.not_ready.insert("demo-0-0");
  w.RunPods();
  ASSERT_TRUE(w.Reconcile().status.ok());
  w.clock.Advance(seconds(2));
  uint64_t others_epoch_at_start = 0;
  w.admin.on_start = [&](const protocol::MigrationRequest&) {
    others_epoch_at_start = w.admin.At(World::Addr(1, 0)).status.epoch;
  };
  const uint64_t epoch_before = w.admin.At(World::Addr(1, 0)).status.epoch;
  ASSERT_TRUE(w.Reconcile().status.ok());
  ASSERT_EQ(w.admin.Promoted(), std::vector<std::string>{"demo-0-1"});
  const std::vector<protocol::MigrationRequest> started = w.admin.Started();
  ASSERT_EQ(started.size(), 2u);
  EXPECT_EQ(started[1].slots, first[0].slots);
  EXPECT_EQ(started[1].target_shard, first[0].target_shard);
  EXPECT_EQ(started[1].target.name, first[0].target.name);
  EXPECT_EQ(others_epoch_at_start, epoch_before) << "the move ran again before others routed";
  EXPECT_GT(w.admin.At(World::Addr(1, 0)).status.epoch, epoch_before);
  EXPECT_EQ(w.admin.At(World::Addr(0, 1)).status.migration.state,
            protocol::MigrationStatus::State::kStreaming);
  EXPECT_TRUE(w.HasEvent("MigrationResumed"));

  // Once: later passes follow the move on the new primary and finish the reshard (after the
  // old primary is back as a replica: moves wait for a settled cluster).
  w.admin.migration_polls = 0;
  w.admin.At(World::Addr(0, 1)).polls_left = 0;
  w.stopped.clear();
  w.not_ready.clear();
  w.RunPods();
  w.Converge(60);
  EXPECT_EQ(w.admin.Started().size(), 2u);
  EXPECT_FALSE(w.Status().contains("resharding"));
  EXPECT_NEAR(OwnedSlots(w.Status(), 1), 8192, 1);
}

TEST(KVCacheReconciler, FailedMigrationIsReportedAndRetried) {
  World w;
  w.Create({{"shards", 1}, {"replicasPerShard", 0}});
  w.RunPods();
  w.Converge();
  w.admin.fail_migrations = true;
  w.PatchSpec({{"shards", 2}});
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(w.Reconcile().status.ok());
    w.RunPods();
  }
  EXPECT_TRUE(w.HasEvent("MigrationFailed"));
  EXPECT_GE(w.admin.Started().size(), 2u) << "retried";
  EXPECT_EQ(OwnedSlots(w.Status(), 1), 0) << "no ownership flip without a finished move";
  w.admin.fail_migrations = false;
  w.Converge(40);
  EXPECT_NEAR(OwnedSlots(w.Status(), 1), 8192, 1);
}

TEST(KVCacheReconciler, PauseAnnotationStopsEveryChange) {
  World w;
  w.Create({{"shards", 2}});
  w.RunPods();
  w.Converge();
  Json o = w.Object();
  o["metadata"]["annotations"] = {{"kvcache.io/pause-reconcile", "true"}};
  w.kube.Seed(kinds::kKVCache, o);
  w.PatchSpec({{"shards", 4}, {"image", "kvcache/kvcache-node:0.2.0"}});
  ASSERT_TRUE(w.Reconcile().status.ok());
  w.kube.ResetCounts();
  ASSERT_TRUE(w.Reconcile().status.ok());
  EXPECT_EQ(w.kube.WriteCount(), 0);
  EXPECT_FALSE(w.kube.Peek(kinds::kStatefulSet, "prod", "demo-3").has_value());
  EXPECT_EQ(w.Status()["phase"], "Paused");
  EXPECT_EQ((*w.kube.Peek(kinds::kStatefulSet, "prod", "demo-0"))["spec"]["template"]["spec"]
                ["containers"][0]["image"],
            "kvcache/kvcache-node:0.1.0");
}

TEST(KVCacheReconciler, InvalidSpecIsReportedNotApplied) {
  World w;
  w.Create({{"shards", 0}});
  ReconcileResult r = w.Reconcile();
  EXPECT_TRUE(r.status.ok());
  EXPECT_FALSE(r.requeue_after.has_value());
  EXPECT_TRUE(w.kube.Objects(kinds::kStatefulSet, "prod").empty());
  EXPECT_EQ(w.Status()["phase"], "Failed");
  std::string reason;
  EXPECT_EQ(w.Condition("Degraded", &reason), "True");
  EXPECT_EQ(reason, "InvalidSpec");
  EXPECT_TRUE(w.HasEvent("InvalidSpec"));
}

TEST(KVCacheReconciler, FinalizerOnlyForStorageReclaimDeletesTheClaims) {
  World w;
  w.Create({{"shards", 1}, {"storage", {{"reclaimPolicy", "Keep"}}}});
  ASSERT_TRUE(w.Reconcile().status.ok());
  EXPECT_FALSE(w.Object()["metadata"].contains("finalizers"));

  w.PatchSpec({{"storage", {{"reclaimPolicy", "Delete"}}}});
  ASSERT_TRUE(w.Reconcile().status.ok());
  EXPECT_EQ(w.Object()["metadata"]["finalizers"], Json::array({"kvcache.io/finalizer"}));

  // The claims the StatefulSet made (not owned by the KVCache: only the finalizer removes them).
  for (int ordinal = 0; ordinal < 2; ++ordinal) w.SeedClaim(0, ordinal);
  ASSERT_TRUE(w.kube.Delete(kinds::kKVCache, "prod", "demo").ok());
  ASSERT_TRUE(w.kube.Peek(kinds::kKVCache, "prod", "demo").has_value()) << "held by the finalizer";
  ASSERT_TRUE(w.Reconcile().status.ok());
  EXPECT_TRUE(w.kube.Objects(kinds::kPvc, "prod").empty());
  EXPECT_FALSE(w.kube.Peek(kinds::kKVCache, "prod", "demo").has_value());
  EXPECT_TRUE(w.HasEvent("StorageReclaimed"));
}

TEST(KVCacheReconciler, StorageGrowthExpandsTheClaimsNotTheTemplate) {
  World w;
  w.Create({{"shards", 1}, {"replicasPerShard", 0}});
  ASSERT_TRUE(w.Reconcile().status.ok());
  w.SeedClaim(0, 0);
  w.PatchSpec({{"storage", {{"size", "2Gi"}}}});
  ASSERT_TRUE(w.Reconcile().status.ok());
  EXPECT_EQ((*w.kube.Peek(kinds::kPvc, "prod", "data-demo-0-0"))["spec"]["resources"]["requests"]
                ["storage"],
            "2Gi");
  EXPECT_EQ((*w.kube.Peek(kinds::kStatefulSet, "prod", "demo-0"))["spec"]["volumeClaimTemplates"][0]
                ["spec"]["resources"]["requests"]["storage"],
            "1Gi");
  EXPECT_TRUE(w.HasEvent("VolumeExpanded"));
}

// A StorageClass without allowVolumeExpansion refuses the patch for good: reported, and the
// rest of the reconcile (failover, topology, status) goes on.
TEST(KVCacheReconciler, RefusedVolumeExpansionIsReportedNotFatal) {
  World w;
  w.Create({{"shards", 1}, {"replicasPerShard", 0}});
  w.RunPods();
  w.Converge();
  w.SeedClaim(0, 0);
  w.PatchSpec({{"storage", {{"size", "2Gi"}}}});
  w.kube.InjectError(Verb::kPatch, InvalidArgumentError("only dynamically provisioned pvc can be resized"),
                     1000, kinds::kPvc);
  ReconcileResult r = w.Reconcile();
  EXPECT_TRUE(r.status.ok()) << r.status.ToString();
  std::string reason;
  EXPECT_EQ(w.Condition("Degraded", &reason), "True");
  EXPECT_EQ(reason, "VolumeExpansionFailed");
  EXPECT_EQ(w.Status()["observedGeneration"], w.Object()["metadata"]["generation"]);
}

TEST(KVCacheReconciler, ConflictOnStatusAsksForAnImmediateRetry) {
  World w;
  w.Create({{"shards", 1}});
  w.kube.InjectError(Verb::kUpdate, ConflictError("stale"), 1, kinds::kKVCache);
  ReconcileResult r = w.Reconcile();
  EXPECT_EQ(r.status.code(), StatusCode::kConflict);
  ASSERT_TRUE(r.requeue_after.has_value());
  EXPECT_EQ(*r.requeue_after, std::chrono::milliseconds(0));
  EXPECT_TRUE(w.Reconcile().status.ok());
}

TEST(KVCacheReconciler, ApiErrorsAreReturnedForBackoff) {
  World w;
  w.Create({{"shards", 1}});
  w.kube.InjectError(Verb::kPatch, UnavailableError("apiserver down"), 1);
  ReconcileResult r = w.Reconcile();
  EXPECT_EQ(r.status.code(), StatusCode::kUnavailable);
  EXPECT_FALSE(r.requeue_after.has_value());
  EXPECT_EQ(w.metrics.ReconcileErrors(), 1);
}

TEST(KVCacheReconciler, OptionalChildrenFollowTheSpec) {
  World w;
  w.Create({{"shards", 1},
            {"ingress", {{"enabled", true}, {"host", "cache.example"}}},
            {"podDisruptionBudget", {{"enabled", false}}},
            {"monitoring", {{"serviceMonitor", {{"enabled", true}}}}}});
  ASSERT_TRUE(w.Reconcile().status.ok());
  EXPECT_TRUE(w.kube.Peek(kinds::kIngress, "prod", "demo").has_value());
  EXPECT_FALSE(w.kube.Peek(kinds::kPdb, "prod", "demo-0").has_value());
  // No ServiceMonitor CRD: nothing created, and the status says why.
  EXPECT_FALSE(w.kube.Peek(kinds::kServiceMonitor, "prod", "demo").has_value());
  std::string reason;
  EXPECT_EQ(w.Condition("Degraded", &reason), "True");
  EXPECT_EQ(reason, "MonitoringCrdMissing");
  w.kube.Seed(kinds::kCrd, {{"apiVersion", "apiextensions.k8s.io/v1"},
                            {"kind", "CustomResourceDefinition"},
                            {"metadata", {{"name", "servicemonitors.monitoring.coreos.com"}}}});
  ASSERT_TRUE(w.Reconcile().status.ok());
  EXPECT_TRUE(w.kube.Peek(kinds::kServiceMonitor, "prod", "demo").has_value());
  w.PatchSpec({{"ingress", {{"enabled", false}}}});
  ASSERT_TRUE(w.Reconcile().status.ok());
  EXPECT_FALSE(w.kube.Peek(kinds::kIngress, "prod", "demo").has_value());
}

TEST(KVCacheReconciler, NewReplicasAreProgressNotDegradation) {
  World w;
  w.Create({{"shards", 2}, {"replicasPerShard", 0}});
  w.RunPods();
  w.Converge();
  w.PatchSpec({{"replicasPerShard", 1}});
  w.not_ready = {"demo-0-1", "demo-1-1"};
  ASSERT_TRUE(w.Reconcile().status.ok());
  w.RunPods();
  ASSERT_TRUE(w.Reconcile().status.ok());
  std::string reason;
  EXPECT_EQ(w.Condition("Degraded"), "False");
  EXPECT_EQ(w.Condition("Progressing", &reason), "True");
  EXPECT_EQ(reason, "NodesStarting");
  EXPECT_EQ(w.Status()["ready"], "2/4");
  w.not_ready.clear();
  w.RunPods();
  w.Converge();
  EXPECT_EQ(w.Status()["ready"], "4/4");
  EXPECT_EQ(w.Condition("Progressing"), "False");
}

std::vector<std::string> DeletedPods(FakeKubeClient& kube) {
  std::vector<std::string> out;
  for (const auto& r : kube.Requests()) {
    if (r.verb == Verb::kDelete && r.ref == kinds::kPod) out.push_back(r.name);
  }
  return out;
}

TEST(KVCacheReconciler, RollingUpdateRestartsReplicasFirstThenSwitchesOver) {
  World w;
  w.Create({{"shards", 1}, {"replicasPerShard", 2}});
  w.RunPods();
  w.Converge();
  w.admin.At(World::Addr(0, 1)).status.applied_offset = 50;
  w.admin.At(World::Addr(0, 2)).status.applied_offset = 40;
  w.kube.ClearRequests();
  w.PatchSpec({{"image", "kvcache/kvcache-node:0.2.0"}});
  // The StatefulSet controller publishes the new revision; the next pass sees old pods.
  ASSERT_TRUE(w.Reconcile().status.ok());
  w.RunPods();
  ASSERT_TRUE(w.Reconcile().status.ok());
  EXPECT_EQ(w.Status()["phase"], "Upgrading");
  w.RunPods();
  w.Converge(40);
  EXPECT_EQ(DeletedPods(w.kube), (std::vector<std::string>{"demo-0-2", "demo-0-1", "demo-0-0"}))
      << "one at a time, replicas first, the old primary last";
  ASSERT_EQ(w.admin.Promoted(), std::vector<std::string>{"demo-0-1"})
      << "switchover to the most caught-up replica before the primary restarts";
  EXPECT_TRUE(w.HasEvent("PrimarySwitchedOver"));
  Json status = w.Status();
  EXPECT_EQ(status["shards"][0]["primary"], "demo-0-1");
  EXPECT_EQ(status["phase"], "Running");
  for (const Json& pod : w.kube.Objects(kinds::kPod, "prod")) {
    EXPECT_EQ(pod["metadata"]["labels"]["controller-revision-hash"],
              (*w.kube.Peek(kinds::kStatefulSet, "prod", "demo-0"))["status"]["updateRevision"]);
  }
  // The new primary's topology reached every node.
  EXPECT_EQ(w.admin.At(World::Addr(0, 0)).topology->shards[0].primary.name, "demo-0-1");
}

TEST(KVCacheReconciler, RollingUpdateWaitsForEveryNodeToBeReady) {
  World w;
  w.Create({{"shards", 2}, {"replicasPerShard", 1}});
  w.RunPods();
  w.Converge();
  w.not_ready = {"demo-1-0"};
  w.RunPods();
  w.kube.ClearRequests();
  w.PatchSpec({{"image", "kvcache/kvcache-node:0.2.0"}});
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(w.Reconcile().status.ok());
    w.RunPods();
  }
  EXPECT_TRUE(DeletedPods(w.kube).empty()) << "no restart while a node is not ready";
  w.not_ready.clear();
  w.RunPods();
  w.Converge(40);
  EXPECT_EQ(DeletedPods(w.kube).size(), 4u);
}

TEST(KVCacheReconciler, RollingUpdateWithoutReplicasRestartsThePrimary) {
  World w;
  w.Create({{"shards", 1}, {"replicasPerShard", 0}});
  w.RunPods();
  w.Converge();
  w.kube.ClearRequests();
  w.PatchSpec({{"image", "kvcache/kvcache-node:0.2.0"}});
  ASSERT_TRUE(w.Reconcile().status.ok());
  w.RunPods();
  w.Converge(20);
  EXPECT_EQ(DeletedPods(w.kube), std::vector<std::string>{"demo-0-0"});
  EXPECT_TRUE(w.admin.Promoted().empty());
}

}  // namespace
}  // namespace kvcache::op
