#include "controller/topology_plan.h"

#include <set>

#include <gtest/gtest.h>

namespace kvcache::op {
namespace {

using Slots = std::map<int, std::vector<SlotRange>>;

int Moved(const std::vector<SlotMove>& moves) {
  int n = 0;
  for (const SlotMove& m : moves) n += SlotCount(m.slots);
  return n;
}

// Every slot owned exactly once, only by shards < n, each within one slot of an even share.
void ExpectBalanced(const Slots& slots, int n) {
  std::vector<int> owner(protocol::kSlotCount, -1);
  for (const auto& [id, ranges] : slots) {
    if (SlotCount(ranges) == 0) continue;
    EXPECT_LT(id, n) << "shard " << id << " still owns slots";
    EXPECT_NEAR(SlotCount(ranges), protocol::kSlotCount / n, 1) << "shard " << id;
    for (const SlotRange& r : ranges) {
      for (int s = r.first; s <= r.last; ++s) {
        EXPECT_EQ(owner[s], -1) << "slot " << s << " owned twice";
        owner[s] = id;
      }
    }
  }
  for (int s = 0; s < protocol::kSlotCount; ++s) ASSERT_NE(owner[s], -1) << "slot " << s;
}

TEST(SlotNotation, RoundTrips) {
  struct Case {
    std::string text;
    std::vector<SlotRange> ranges;
  };
  for (const Case& c : std::vector<Case>{{"", {}},
                                         {"7", {{7, 7}}},
                                         {"0-5460", {{0, 5460}}},
                                         {"0-10,12-20,16383", {{0, 10}, {12, 20}, {16383, 16383}}}}) {
    EXPECT_EQ(FormatSlots(c.ranges), c.text);
    auto parsed = ParseSlots(c.text);
    ASSERT_TRUE(parsed.ok()) << c.text;
    EXPECT_EQ(*parsed, c.ranges) << c.text;
  }
}

TEST(SlotNotation, RefusesBadText) {
  for (const char* bad : {"x", "5-", "-5", "10-5", "0-16384", "1,,2", "1-2-3"}) {
    EXPECT_EQ(ParseSlots(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST(SlotNotation, NormalizeMergesAdjacentRanges) {
  EXPECT_EQ(NormalizeSlots({{10, 20}, {0, 9}, {21, 21}, {30, 40}, {35, 50}}),
            (std::vector<SlotRange>{{0, 21}, {30, 50}}));
}

TEST(ReshardPlan, BalancedLayoutMovesNothing) {
  for (int n : {1, 2, 3, 5, 7, 128}) EXPECT_TRUE(PlanReshard(InitialSlots(n), n).empty()) << n;
}

TEST(ReshardPlan, MovesTheMinimumAndEndsBalanced) {
  struct Case {
    int from, to;
  };
  for (Case c : std::vector<Case>{{3, 5}, {5, 2}, {3, 4}, {4, 3}, {1, 3}, {3, 1}, {2, 7}, {7, 6}}) {
    SCOPED_TRACE(std::to_string(c.from) + " -> " + std::to_string(c.to));
    Slots slots = InitialSlots(c.from);
    std::vector<SlotMove> moves = PlanReshard(slots, c.to);
    // Lower bound: every slot above a kept shard's share, plus all of every removed shard.
    int must_move = 0;
    for (const auto& [id, ranges] : slots) {
      int have = SlotCount(ranges);
      int quota = id < c.to ? SlotCount(protocol::EvenSlotRanges(c.to, id)) : 0;
      if (have > quota) must_move += have - quota;
    }
    EXPECT_EQ(Moved(moves), must_move);
    for (const SlotMove& m : moves) {
      EXPECT_NE(m.source, m.target);
      EXPECT_LT(m.target, c.to);
      ApplyMove(&slots, m);
    }
    ExpectBalanced(slots, c.to);
    EXPECT_TRUE(PlanReshard(slots, c.to).empty());
  }
}

TEST(ReshardPlan, ScaleUpTakesFromEveryOldShard) {
  std::vector<SlotMove> moves = PlanReshard(InitialSlots(3), 4);
  std::set<int> sources;
  for (const SlotMove& m : moves) {
    EXPECT_EQ(m.target, 3);
    sources.insert(m.source);
  }
  EXPECT_EQ(sources, (std::set<int>{0, 1, 2}));
}

TEST(ReshardPlan, ScaleDownSpreadsTheDrainedShardAcrossTheRest) {
  std::vector<SlotMove> moves = PlanReshard(InitialSlots(4), 3);
  std::set<int> targets;
  for (const SlotMove& m : moves) {
    EXPECT_EQ(m.source, 3);
    targets.insert(m.target);
  }
  EXPECT_EQ(targets, (std::set<int>{0, 1, 2}));
}

TEST(ReshardPlan, UnevenLayoutIsRebalanced) {
  Slots slots = {{0, {{0, 15000}}}, {1, {{15001, 16383}}}};
  std::vector<SlotMove> moves = PlanReshard(slots, 2);
  ASSERT_EQ(moves.size(), 1u);
  EXPECT_EQ(moves[0].source, 0);
  EXPECT_EQ(moves[0].target, 1);
  for (const SlotMove& m : moves) ApplyMove(&slots, m);
  ExpectBalanced(slots, 2);
}

TEST(Promotion, ChoosesTheMostCaughtUpReachableReplica) {
  struct Case {
    std::string name;
    std::vector<PromotionCandidate> candidates;
    std::optional<std::string> want;
  };
  for (const Case& c : std::vector<Case>{
           {"none", {}, std::nullopt},
           {"unreachable", {{"a", false, 100}}, std::nullopt},
           {"highest offset", {{"a", true, 5}, {"b", true, 9}, {"c", true, 7}}, "b"},
           {"skips unreachable", {{"a", true, 5}, {"b", false, 9}}, "a"},
           {"tie by name", {{"d", true, 9}, {"b", true, 9}}, "b"},
       }) {
    EXPECT_EQ(ChoosePromotion(c.candidates), c.want) << c.name;
  }
}

KVCacheSpec Spec(int shards, int replicas) {
  KVCacheSpec spec;
  spec.name = "demo";
  spec.ns = "prod";
  spec.shards = shards;
  spec.replicas_per_shard = replicas;
  return spec;
}

TEST(BuildTopology, NamesPrimaryAndReplicasByStableDnsName) {
  KVCacheSpec spec = Spec(2, 2);
  protocol::Topology t = BuildTopology(
      spec, 4, {{0, {{0, 8191}}, "demo-0-1"}, {1, {{8192, 16383}}, ""}, {2, {}, ""}});
  ASSERT_TRUE(protocol::Validate(t).ok()) << protocol::Validate(t).ToString();
  EXPECT_EQ(t.cluster, "demo");
  EXPECT_EQ(t.epoch, 4u);
  ASSERT_EQ(t.shards.size(), 3u);  // shard 2 owns nothing yet but is named
  EXPECT_TRUE(t.shards[2].slots.empty());
  EXPECT_EQ(t.shards[0].primary.name, "demo-0-1");
  EXPECT_EQ(t.shards[0].primary.addr, "demo-0-1.demo-nodes.prod.svc:8080");
  ASSERT_EQ(t.shards[0].replicas.size(), 2u);
  EXPECT_EQ(t.shards[0].replicas[0].name, "demo-0-0");
  EXPECT_EQ(t.shards[0].replicas[1].name, "demo-0-2");
  EXPECT_EQ(t.shards[1].primary.name, "demo-1-0");
}

TEST(BuildTopology, HashIgnoresTheEpochOnly) {
  KVCacheSpec spec = Spec(1, 1);
  auto a = BuildTopology(spec, 1, {{0, {{0, 16383}}, "demo-0-0"}});
  auto b = BuildTopology(spec, 2, {{0, {{0, 16383}}, "demo-0-0"}});
  auto c = BuildTopology(spec, 1, {{0, {{0, 16383}}, "demo-0-1"}});
  EXPECT_EQ(TopologyHash(a), TopologyHash(b));
  EXPECT_NE(TopologyHash(a), TopologyHash(c));
}

}  // namespace
}  // namespace kvcache::op
