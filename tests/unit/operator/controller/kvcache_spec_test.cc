#include "controller/kvcache_spec.h"

#include <gtest/gtest.h>

namespace kvcache::op {
namespace {

Json Object(Json spec) {
  return {{"apiVersion", "kvcache.io/v1alpha1"},
          {"kind", "KVCache"},
          {"metadata", {{"name", "demo"}, {"namespace", "prod"}, {"uid", "u1"}, {"generation", 3}}},
          {"spec", std::move(spec)}};
}

TEST(KVCacheSpec, AppliesTheCrdDefaultsToAnEmptySpec) {
  auto spec = ParseKVCacheSpec(Object(Json::object()));
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->name, "demo");
  EXPECT_EQ(spec->ns, "prod");
  EXPECT_EQ(spec->generation, 3);
  EXPECT_EQ(spec->shards, 3);
  EXPECT_EQ(spec->replicas_per_shard, 1);
  EXPECT_EQ(spec->NodesPerShard(), 2);
  EXPECT_EQ(spec->image, "kvcache/kvcache-node:0.1.0");
  EXPECT_EQ(spec->storage.size, "1Gi");
  EXPECT_FALSE(spec->storage.delete_on_removal);
  EXPECT_EQ(spec->persistence.fsync, "everysec");
  EXPECT_EQ(spec->memory.eviction, "lru");
  EXPECT_FALSE(spec->replication.sync);
  EXPECT_TRUE(spec->failover.enabled);
  EXPECT_EQ(spec->failover.timeout_seconds, 15);
  EXPECT_EQ(spec->service.type, "ClusterIP");
  EXPECT_EQ(spec->service.port, 8080);
  EXPECT_TRUE(spec->pdb.enabled);
  EXPECT_FALSE(spec->paused);
  EXPECT_FALSE(spec->deleting);
}

TEST(KVCacheSpec, ReadsEveryField) {
  Json o = Object({{"shards", 5},
                   {"replicasPerShard", 2},
                   {"image", "reg/kvcache-node:2"},
                   {"storage", {{"size", "5Gi"}, {"storageClassName", "fast"}, {"reclaimPolicy", "Delete"}}},
                   {"persistence", {{"fsync", "always"}, {"snapshotIntervalSeconds", 60}}},
                   {"memory", {{"limit", "512Mi"}, {"eviction", "noeviction"}}},
                   {"replication", {{"mode", "sync"}, {"minAcks", 2}}},
                   {"auth", {{"secretName", "tok"}}},
                   {"service", {{"type", "NodePort"}, {"nodePort", 30080}, {"annotations", {{"a", "b"}}}}},
                   {"ingress", {{"enabled", true}, {"host", "cache.example"}}},
                   {"failover", {{"timeoutSeconds", 30}}},
                   {"resharding", {{"maxKeysPerSecond", 2000}}},
                   {"pod", {{"antiAffinity", "Required"}, {"nodeSelector", {{"disk", "ssd"}}}}},
                   {"monitoring", {{"serviceMonitor", {{"enabled", true}}}}}});
  o["metadata"]["annotations"] = {{"kvcache.io/pause-reconcile", "true"}};
  o["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z";
  auto spec = ParseKVCacheSpec(o);
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->shards, 5);
  EXPECT_EQ(spec->NodesPerShard(), 3);
  EXPECT_EQ(spec->image, "reg/kvcache-node:2");
  EXPECT_EQ(spec->resharding.max_keys_per_second, 2000);
  EXPECT_EQ(spec->storage.storage_class, "fast");
  EXPECT_TRUE(spec->storage.delete_on_removal);
  EXPECT_EQ(spec->persistence.snapshot_interval_seconds, 60);
  EXPECT_EQ(spec->memory.limit, "512Mi");
  EXPECT_TRUE(spec->replication.sync);
  EXPECT_EQ(spec->replication.min_acks, 2);
  EXPECT_EQ(spec->auth.secret_name, "tok");
  EXPECT_EQ(spec->auth.key, "token");
  EXPECT_EQ(spec->service.node_port, 30080);
  EXPECT_EQ(spec->service.annotations.at("a"), "b");
  EXPECT_TRUE(spec->ingress.enabled);
  EXPECT_EQ(spec->failover.timeout_seconds, 30);
  EXPECT_EQ(spec->pod.anti_affinity, "Required");
  EXPECT_EQ(spec->pod.node_selector["disk"], "ssd");
  EXPECT_TRUE(spec->monitoring.service_monitor);
  EXPECT_TRUE(spec->paused);
  EXPECT_TRUE(spec->deleting);
}

TEST(KVCacheSpec, RefusesBadValuesNamingTheField) {
  struct Case {
    Json spec;
    std::string field;
  };
  for (const Case& c : std::vector<Case>{
           {{{"shards", 0}}, "spec.shards"},
           {{{"shards", 129}}, "spec.shards"},
           {{{"shards", "3"}}, "spec.shards"},
           {{{"replicasPerShard", -1}}, "spec.replicasPerShard"},
           {{{"memory", {{"eviction", "random"}}}}, "spec.memory.eviction"},
           {{{"memory", {{"limit", "lots"}}}}, "spec.memory.limit"},
           {{{"storage", {{"size", "big"}}}}, "spec.storage.size"},
           {{{"replicasPerShard", 1}, {"replication", {{"mode", "sync"}, {"minAcks", 2}}}},
            "spec.replication.minAcks"},
           {{{"ingress", {{"enabled", true}}}}, "spec.ingress.host"},
           {{{"service", {{"annotations", {{"a", 1}}}}}}, "spec.service.annotations"},
       }) {
    auto spec = ParseKVCacheSpec(Object(c.spec));
    ASSERT_FALSE(spec.ok()) << c.spec.dump();
    EXPECT_EQ(spec.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(spec.status().message().rfind(c.field, 0), 0u) << spec.status().message();
  }
}

TEST(KVCacheSpec, ChildNames) {
  KVCacheSpec spec;
  spec.name = "demo";
  spec.ns = "prod";
  EXPECT_EQ(StatefulSetName(spec, 2), "demo-2");
  EXPECT_EQ(PodName(spec, 2, 1), "demo-2-1");
  EXPECT_EQ(PodAddress(spec, "demo-2-1"), "demo-2-1.demo-nodes.prod.svc:8080");
  EXPECT_EQ(Endpoint(spec), "demo.prod.svc:8080");
  int shard = -1, ordinal = -1;
  EXPECT_TRUE(ParsePodName(spec, "demo-12-3", &shard, &ordinal));
  EXPECT_EQ(shard, 12);
  EXPECT_EQ(ordinal, 3);
  for (const char* other : {"demo-1", "other-1-0", "demo-x-0", "demo-1-0-0", "demo--0"}) {
    EXPECT_FALSE(ParsePodName(spec, other, &shard, &ordinal)) << other;
  }
}

}  // namespace
}  // namespace kvcache::op
