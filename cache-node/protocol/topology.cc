#include "protocol/topology.h"

#include <set>

#include <nlohmann/json.hpp>

namespace kvcache::protocol {
namespace {

using nlohmann::json;

constexpr std::array<uint16_t, 256> MakeCrc16Table() {
  std::array<uint16_t, 256> table{};
  for (int i = 0; i < 256; ++i) {
    uint16_t crc = static_cast<uint16_t>(i << 8);
    for (int k = 0; k < 8; ++k) {
      crc = static_cast<uint16_t>((crc & 0x8000) ? (crc << 1) ^ 0x1021 : crc << 1);
    }
    table[i] = crc;
  }
  return table;
}

constexpr std::array<uint16_t, 256> kCrc16Table = MakeCrc16Table();

json MemberJson(const Member& m) { return {{"name", m.name}, {"addr", m.addr}}; }

}  // namespace

uint16_t Crc16(std::string_view data) {
  uint16_t crc = 0;
  for (unsigned char c : data) {
    crc = static_cast<uint16_t>((crc << 8) ^ kCrc16Table[((crc >> 8) ^ c) & 0xff]);
  }
  return crc;
}

uint16_t KeySlot(std::string_view key) {
  size_t open = key.find('{');
  if (open != std::string_view::npos) {
    size_t close = key.find('}', open + 1);
    if (close != std::string_view::npos && close > open + 1) {
      key = key.substr(open + 1, close - open - 1);
    }
  }
  return Crc16(key) & (kSlotCount - 1);
}

std::vector<int> Topology::SlotOwners() const {
  std::vector<int> owners(kSlotCount, -1);
  for (size_t i = 0; i < shards.size(); ++i) {
    for (const SlotRange& r : shards[i].slots) {
      for (int s = r.first; s <= r.last; ++s) owners[s] = static_cast<int>(i);
    }
  }
  return owners;
}

Status Validate(const Topology& t) {
  if (t.cluster.empty()) return InvalidArgumentError("topology: cluster name is empty");
  if (t.epoch == 0) return InvalidArgumentError("topology: epoch must be at least 1");
  if (t.shards.empty()) return InvalidArgumentError("topology: no shards");
  std::set<int> ids;
  std::set<std::string> names;
  std::vector<int> owner(kSlotCount, -1);
  for (const Shard& shard : t.shards) {
    const std::string where = "topology: shard " + std::to_string(shard.id);
    if (!ids.insert(shard.id).second) return InvalidArgumentError(where + " appears twice");
    if (shard.primary.name.empty() || shard.primary.addr.empty()) {
      return InvalidArgumentError(where + " has no primary name and addr");
    }
    std::vector<const Member*> members = {&shard.primary};
    for (const Member& r : shard.replicas) members.push_back(&r);
    for (const Member* m : members) {
      if (m->name.empty() || m->addr.empty()) {
        return InvalidArgumentError(where + " has a member without name or addr");
      }
      if (!names.insert(m->name).second) {
        return InvalidArgumentError("topology: member " + m->name + " appears twice");
      }
    }
    for (const SlotRange& r : shard.slots) {
      if (r.first < 0 || r.last >= kSlotCount || r.first > r.last) {
        return InvalidArgumentError(where + " has slot range [" + std::to_string(r.first) + ", " +
                                    std::to_string(r.last) + "] outside [0, 16383] or reversed");
      }
      for (int s = r.first; s <= r.last; ++s) {
        if (owner[s] != -1) {
          return InvalidArgumentError("topology: slot " + std::to_string(s) +
                                      " is owned by shards " + std::to_string(owner[s]) +
                                      " and " + std::to_string(shard.id));
        }
        owner[s] = shard.id;
      }
    }
  }
  for (int s = 0; s < kSlotCount; ++s) {
    if (owner[s] == -1) {
      return InvalidArgumentError("topology: slot " + std::to_string(s) + " has no owner");
    }
  }
  return Status::Ok();
}

StatusOr<Topology> ParseTopology(std::string_view text) {
  json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return InvalidArgumentError("topology: not valid JSON");
  try {
    Topology t;
    t.cluster = doc.at("cluster").get<std::string>();
    t.epoch = doc.at("epoch").get<uint64_t>();
    auto member = [](const json& j) {
      return Member{j.at("name").get<std::string>(), j.at("addr").get<std::string>()};
    };
    for (const json& s : doc.at("shards")) {
      Shard shard;
      shard.id = s.at("id").get<int>();
      for (const json& r : s.at("slots")) {
        if (!r.is_array() || r.size() != 2) {
          return InvalidArgumentError("topology: a slot range is [first, last]");
        }
        shard.slots.push_back({r[0].get<int>(), r[1].get<int>()});
      }
      shard.primary = member(s.at("primary"));
      if (s.contains("replicas")) {
        for (const json& m : s.at("replicas")) shard.replicas.push_back(member(m));
      }
      t.shards.push_back(std::move(shard));
    }
    if (Status st = Validate(t); !st.ok()) return st;
    return t;
  } catch (const json::exception& e) {
    return InvalidArgumentError(std::string("topology: ") + e.what());
  }
}

std::string EncodeTopology(const Topology& t) {
  json shards = json::array();
  for (const Shard& s : t.shards) {
    json slots = json::array();
    for (const SlotRange& r : s.slots) slots.push_back({r.first, r.last});
    json replicas = json::array();
    for (const Member& m : s.replicas) replicas.push_back(MemberJson(m));
    shards.push_back({{"id", s.id},
                      {"slots", slots},
                      {"primary", MemberJson(s.primary)},
                      {"replicas", replicas}});
  }
  return json{{"cluster", t.cluster}, {"epoch", t.epoch}, {"shards", shards}}.dump();
}

std::vector<SlotRange> EvenSlotRanges(int shards, int index) {
  if (shards <= 0 || index < 0 || index >= shards) return {};
  const int first = static_cast<int>(static_cast<int64_t>(kSlotCount) * index / shards);
  const int end = static_cast<int>(static_cast<int64_t>(kSlotCount) * (index + 1) / shards);
  return {{first, end - 1}};
}

}  // namespace kvcache::protocol
