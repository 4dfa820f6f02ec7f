// Topology planning as pure functions: the slot layout of a new cluster, reshard plans that move
// as few slots as possible, the replica to promote in a failover, the topology document pushed
// to the nodes, and the "0-5460,10923-11000" slot notation used in status.
//
// Thread safety: values and pure functions.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "controller/kvcache_spec.h"
#include "protocol/status.h"
#include "protocol/topology.h"

namespace kvcache::op {

using protocol::SlotRange;

// Sorts and merges adjacent or overlapping ranges.
std::vector<SlotRange> NormalizeSlots(std::vector<SlotRange> ranges);
int SlotCount(const std::vector<SlotRange>& ranges);
// "0-5460,10923-11000" ("7" for a single slot, "" for none).
std::string FormatSlots(const std::vector<SlotRange>& ranges);
// The inverse of FormatSlots. InvalidArgument on malformed text or slots outside [0, 16383].
StatusOr<std::vector<SlotRange>> ParseSlots(std::string_view text);

// Slots of each shard of a new cluster with `shards` shards: contiguous, near-equal ranges.
std::map<int, std::vector<SlotRange>> InitialSlots(int shards);

// One step of a reshard: `source`'s primary streams `slots` to `target`, then ownership flips.
struct SlotMove {
  int source = 0;
  int target = 0;
  std::vector<SlotRange> slots;
  bool operator==(const SlotMove&) const = default;
};

// Plans moves from `current` (shard id -> owned slots, covering all 16384) to a layout where
// exactly the shards `0 .. target_shards-1` own slots, each within one slot of an even share.
// Moves the minimum number of slots: a shard keeps its slots up to its share; shards above
// their share (or being removed) give their highest slots; receivers are served largest
// deficit first from the largest donor, so scale-up takes from the largest shards and
// scale-down spreads a drained shard across every remaining one. One move per (source,
// target) pair, ordered by source then target. Empty when nothing needs to move.
std::vector<SlotMove> PlanReshard(const std::map<int, std::vector<SlotRange>>& current,
                                  int target_shards);

// Applies a finished move to a slot map (slots leave `source`, join `target`).
void ApplyMove(std::map<int, std::vector<SlotRange>>* slots, const SlotMove& move);

// A replica that could become primary, as last reported by the node.
struct PromotionCandidate {
  std::string name;
  bool reachable = false;       // answered GetStatus
  uint64_t applied_offset = 0;  // replication offset applied on that node
};
// The reachable candidate with the highest applied offset (ties: the lowest name, so the
// choice is stable across reconciles). nullopt when none is reachable.
std::optional<std::string> ChoosePromotion(const std::vector<PromotionCandidate>& candidates);

// What the operator records per shard (in status) and turns into the topology document.
struct ShardLayout {
  int id = 0;
  std::vector<SlotRange> slots;  // may be empty while a new shard waits for its first move
  std::string primary;           // pod name
  bool operator==(const ShardLayout&) const = default;
};

// The topology document for the nodes: every given shard, with its primary and the other pods
// of its StatefulSet (ordinals 0 .. NodesPerShard-1) as replicas, addressed by their stable DNS
// names. A shard may own no slots yet (a new shard waiting for its first move): its nodes then
// know their roles and replicate before any key arrives.
protocol::Topology BuildTopology(const KVCacheSpec& spec, uint64_t epoch,
                                 const std::vector<ShardLayout>& shards);

// A short stable hash (hex) of a topology's content without its epoch: the operator pushes a
// new epoch only when this changes.
std::string TopologyHash(const protocol::Topology& topology);

}  // namespace kvcache::op
