#include "controller/topology_plan.h"

#include <algorithm>
#include <charconv>
#include <cstdio>

namespace kvcache::op {
namespace {

// Quota of shard `index` among `shards`: the size EvenSlotRanges gives it, so a cluster laid
// out by InitialSlots is already balanced.
int Quota(int shards, int index) {
  int size = 0;
  for (const SlotRange& r : protocol::EvenSlotRanges(shards, index)) size += r.last - r.first + 1;
  return size;
}

// Removes the highest `count` slots from `ranges` (sorted) and returns them.
std::vector<SlotRange> TakeHighest(std::vector<SlotRange>* ranges, int count) {
  std::vector<SlotRange> taken;
  while (count > 0 && !ranges->empty()) {
    SlotRange& last = ranges->back();
    int size = last.last - last.first + 1;
    if (size <= count) {
      taken.push_back(last);
      count -= size;
      ranges->pop_back();
    } else {
      taken.push_back({last.last - count + 1, last.last});
      last.last -= count;
      count = 0;
    }
  }
  return NormalizeSlots(std::move(taken));
}

std::vector<SlotRange> Subtract(const std::vector<SlotRange>& from,
                                const std::vector<SlotRange>& remove) {
  std::vector<bool> gone(protocol::kSlotCount, false);
  for (const SlotRange& r : remove) {
    for (int s = std::max(0, r.first); s <= std::min(protocol::kSlotCount - 1, r.last); ++s) {
      gone[s] = true;
    }
  }
  std::vector<SlotRange> out;
  for (const SlotRange& r : from) {
    int s = r.first;
    while (s <= r.last) {
      while (s <= r.last && gone[s]) ++s;
      if (s > r.last) break;
      int start = s;
      while (s <= r.last && !gone[s]) ++s;
      out.push_back({start, s - 1});
    }
  }
  return out;
}

}  // namespace

std::vector<SlotRange> NormalizeSlots(std::vector<SlotRange> ranges) {
  std::sort(ranges.begin(), ranges.end(),
            [](const SlotRange& a, const SlotRange& b) { return a.first < b.first; });
  std::vector<SlotRange> out;
  for (const SlotRange& r : ranges) {
    if (!out.empty() && r.first <= out.back().last + 1) {
      out.back().last = std::max(out.back().last, r.last);
    } else {
      out.push_back(r);
    }
  }
  return out;
}

int SlotCount(const std::vector<SlotRange>& ranges) {
  int n = 0;
  for (const SlotRange& r : ranges) n += r.last - r.first + 1;
  return n;
}

std::string FormatSlots(const std::vector<SlotRange>& ranges) {
  std::string out;
  for (const SlotRange& r : ranges) {
    if (!out.empty()) out += ",";
    out += std::to_string(r.first);
    if (r.last != r.first) out += "-" + std::to_string(r.last);
  }
  return out;
}

StatusOr<std::vector<SlotRange>> ParseSlots(std::string_view text) {
  std::vector<SlotRange> out;
  auto number = [](std::string_view s, int* n) {
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), *n);
    return ec == std::errc() && ptr == s.data() + s.size() && !s.empty();
  };
  while (!text.empty()) {
    size_t comma = text.find(',');
    std::string_view part = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    SlotRange r;
    size_t dash = part.find('-');
    bool ok = dash == std::string_view::npos
                  ? number(part, &r.first)
                  : number(part.substr(0, dash), &r.first) && number(part.substr(dash + 1), &r.last);
    if (dash == std::string_view::npos) r.last = r.first;
    if (!ok || r.first < 0 || r.last >= protocol::kSlotCount || r.first > r.last) {
      return InvalidArgumentError("bad slot range \"" + std::string(part) + "\"");
    }
    out.push_back(r);
  }
  return NormalizeSlots(std::move(out));
}

std::map<int, std::vector<SlotRange>> InitialSlots(int shards) {
  std::map<int, std::vector<SlotRange>> out;
  for (int i = 0; i < shards; ++i) out[i] = protocol::EvenSlotRanges(shards, i);
  return out;
}

std::vector<SlotMove> PlanReshard(const std::map<int, std::vector<SlotRange>>& current,
                                  int target_shards) {
  // What each shard must give away (surplus) or receive (deficit).
  std::map<int, std::vector<SlotRange>> remaining;
  std::map<int, std::vector<SlotRange>> surplus;
  std::map<int, int> deficit;
  for (int i = 0; i < target_shards; ++i) deficit[i] = Quota(target_shards, i);
  for (const auto& [id, ranges] : current) {
    std::vector<SlotRange> owned = NormalizeSlots(ranges);
    int have = SlotCount(owned);
    if (id >= target_shards) {
      surplus[id] = owned;
      continue;
    }
    int quota = deficit[id];
    if (have > quota) {
      surplus[id] = TakeHighest(&owned, have - quota);
      deficit[id] = 0;
    } else {
      deficit[id] = quota - have;
    }
  }

  // Serve the largest deficit from the largest surplus until every receiver is full. Ties go
  // to the lower shard id, so the plan is deterministic.
  std::map<std::pair<int, int>, std::vector<SlotRange>> pairs;
  for (;;) {
    auto receiver = std::max_element(deficit.begin(), deficit.end(), [](auto& a, auto& b) {
      return a.second < b.second;
    });
    if (receiver == deficit.end() || receiver->second == 0) break;
    auto donor = std::max_element(surplus.begin(), surplus.end(), [](auto& a, auto& b) {
      return SlotCount(a.second) < SlotCount(b.second);
    });
    if (donor == surplus.end() || SlotCount(donor->second) == 0) break;  // inconsistent input
    int n = std::min(receiver->second, SlotCount(donor->second));
    // Give the receiver slots from the low end of what the donor gives away, so that repeated
    // plans hand out contiguous ranges.
    std::vector<SlotRange> give;
    int need = n;
    for (const SlotRange& r : donor->second) {
      if (need == 0) break;
      int size = r.last - r.first + 1;
      int take = std::min(size, need);
      give.push_back({r.first, r.first + take - 1});
      need -= take;
    }
    donor->second = Subtract(donor->second, give);
    receiver->second -= n;
    auto& slots = pairs[{donor->first, receiver->first}];
    slots.insert(slots.end(), give.begin(), give.end());
  }

  std::vector<SlotMove> moves;
  for (auto& [key, slots] : pairs) moves.push_back({key.first, key.second, NormalizeSlots(slots)});
  return moves;
}

void ApplyMove(std::map<int, std::vector<SlotRange>>* slots, const SlotMove& move) {
  (*slots)[move.source] = Subtract((*slots)[move.source], move.slots);
  std::vector<SlotRange>& target = (*slots)[move.target];
  target.insert(target.end(), move.slots.begin(), move.slots.end());
  target = NormalizeSlots(std::move(target));
}

std::optional<std::string> ChoosePromotion(const std::vector<PromotionCandidate>& candidates) {
  const PromotionCandidate* best = nullptr;
  for (const PromotionCandidate& c : candidates) {
    if (!c.reachable) continue;
    if (best == nullptr || c.applied_offset > best->applied_offset ||
        (c.applied_offset == best->applied_offset && c.name < best->name)) {
      best = &c;
    }
  }
  if (best == nullptr) return std::nullopt;
  return best->name;
}

protocol::Topology BuildTopology(const KVCacheSpec& spec, uint64_t epoch,
                                 const std::vector<ShardLayout>& shards) {
  protocol::Topology t;
  t.cluster = spec.name;
  t.epoch = epoch;
  for (const ShardLayout& layout : shards) {
    protocol::Shard shard;
    shard.id = layout.id;
    shard.slots = layout.slots;
    std::string primary = layout.primary.empty() ? PodName(spec, layout.id, 0) : layout.primary;
    shard.primary = {primary, PodAddress(spec, primary)};
    for (int ordinal = 0; ordinal < spec.NodesPerShard(); ++ordinal) {
      std::string pod = PodName(spec, layout.id, ordinal);
      if (pod != primary) shard.replicas.push_back({pod, PodAddress(spec, pod)});
    }
    t.shards.push_back(std::move(shard));
  }
  return t;
}

std::string TopologyHash(const protocol::Topology& topology) {
  protocol::Topology copy = topology;
  copy.epoch = 0;
  std::string text = protocol::EncodeTopology(copy);
  uint64_t h = 1469598103934665603ULL;  // FNV-1a: stable across builds and platforms
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace kvcache::op
