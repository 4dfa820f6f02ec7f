#include "protocol/admin.h"

#include <array>
#include <stdexcept>
#include <utility>

#include <nlohmann/json.hpp>

namespace kvcache::protocol {
namespace {

using nlohmann::json;

constexpr std::array<std::string_view, 3> kRoleNames = {"none", "primary", "replica"};
constexpr std::array<std::string_view, 4> kMigrationStateNames = {"idle", "streaming", "done",
                                                                   "failed"};

template <typename Enum, size_t N>
Enum EnumFromName(const std::array<std::string_view, N>& names, const std::string& name,
                  const char* what) {
  for (size_t i = 0; i < N; ++i) {
    if (names[i] == name) return static_cast<Enum>(i);
  }
  throw std::invalid_argument(std::string("unknown ") + what + " \"" + name + "\"");
}

json SlotsJson(const std::vector<SlotRange>& slots) {
  json out = json::array();
  for (const SlotRange& r : slots) out.push_back({r.first, r.last});
  return out;
}

std::vector<SlotRange> SlotsFrom(const json& j) {
  std::vector<SlotRange> out;
  for (const json& r : j) {
    if (!r.is_array() || r.size() != 2) throw std::invalid_argument("a slot range is [first, last]");
    SlotRange range{r.at(0).get<int>(), r.at(1).get<int>()};
    if (range.first < 0 || range.last >= kSlotCount || range.first > range.last) {
      throw std::invalid_argument("slot range out of [0, 16383] or reversed");
    }
    out.push_back(range);
  }
  return out;
}

json MigrationJson(const MigrationStatus& m) {
  json out = {{"state", kMigrationStateNames[static_cast<size_t>(m.state)]},
              {"targetShard", m.target_shard},
              {"slots", SlotsJson(m.slots)},
              {"keysMoved", m.keys_moved},
              {"keysRemaining", m.keys_remaining}};
  if (!m.error.empty()) out["error"] = m.error;
  return out;
}

MigrationStatus MigrationFrom(const json& j) {
  MigrationStatus m;
  m.state = EnumFromName<MigrationStatus::State>(kMigrationStateNames,
                                                 j.at("state").get<std::string>(), "state");
  m.target_shard = j.value("targetShard", -1);
  m.slots = SlotsFrom(j.value("slots", json::array()));
  m.keys_moved = j.value("keysMoved", uint64_t{0});
  m.keys_remaining = j.value("keysRemaining", uint64_t{0});
  m.error = j.value("error", std::string());
  return m;
}

// Runs `parse` on the document, turning every parse or type error into InvalidArgument.
template <typename T, typename Fn>
StatusOr<T> ParseWith(std::string_view text, const char* what, Fn parse) {
  json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    return InvalidArgumentError(std::string(what) + ": not a JSON object");
  }
  try {
    return parse(doc);
  } catch (const std::exception& e) {
    return InvalidArgumentError(std::string(what) + ": " + e.what());
  }
}

}  // namespace

std::string_view RoleName(Role role) { return kRoleNames[static_cast<size_t>(role)]; }

std::string EncodeNodeStatus(const NodeStatus& s) {
  return json{{"name", s.name},
              {"role", RoleName(s.role)},
              {"shard", s.shard},
              {"epoch", s.epoch},
              {"fenceEpoch", s.fence_epoch},
              {"appliedOffset", s.applied_offset},
              {"primaryOffset", s.primary_offset},
              {"ready", s.ready},
              {"keys", s.keys},
              {"migration", MigrationJson(s.migration)}}
      .dump();
}

StatusOr<NodeStatus> ParseNodeStatus(std::string_view text) {
  return ParseWith<NodeStatus>(text, "node status", [](const json& j) {
    NodeStatus s;
    s.name = j.at("name").get<std::string>();
    s.role = EnumFromName<Role>(kRoleNames, j.at("role").get<std::string>(), "role");
    s.shard = j.value("shard", -1);
    s.epoch = j.at("epoch").get<uint64_t>();
    s.fence_epoch = j.value("fenceEpoch", s.epoch);
    s.applied_offset = j.at("appliedOffset").get<uint64_t>();
    s.primary_offset = j.value("primaryOffset", uint64_t{0});
    s.ready = j.at("ready").get<bool>();
    s.keys = j.value("keys", uint64_t{0});
    if (j.contains("migration")) s.migration = MigrationFrom(j.at("migration"));
    return s;
  });
}

std::string EncodePromoteRequest(const PromoteRequest& r) { return json{{"epoch", r.epoch}}.dump(); }

StatusOr<PromoteRequest> ParsePromoteRequest(std::string_view text) {
  return ParseWith<PromoteRequest>(text, "promote request", [](const json& j) {
    PromoteRequest r{j.at("epoch").get<uint64_t>()};
    if (r.epoch == 0) throw std::invalid_argument("epoch must be >= 1");
    return r;
  });
}

std::string EncodeStepDownRequest(const StepDownRequest& r) {
  return json{{"pauseMs", r.pause_ms}}.dump();
}

StatusOr<StepDownRequest> ParseStepDownRequest(std::string_view text) {
  return ParseWith<StepDownRequest>(text, "step-down request", [](const json& j) {
    const uint64_t ms = j.at("pauseMs").get<uint64_t>();
    if (ms < 1 || ms > 60000) throw std::invalid_argument("pauseMs must be 1 to 60000");
    return StepDownRequest{static_cast<uint32_t>(ms)};
  });
}

std::string EncodeMigrationRequest(const MigrationRequest& r) {
  return json{{"slots", SlotsJson(r.slots)},
              {"targetShard", r.target_shard},
              {"target", {{"name", r.target.name}, {"addr", r.target.addr}}}}
      .dump();
}

StatusOr<MigrationRequest> ParseMigrationRequest(std::string_view text) {
  return ParseWith<MigrationRequest>(text, "migration request", [](const json& j) {
    MigrationRequest r;
    r.slots = SlotsFrom(j.at("slots"));
    if (r.slots.empty()) throw std::invalid_argument("no slots to migrate");
    r.target_shard = j.at("targetShard").get<int>();
    r.target.name = j.at("target").at("name").get<std::string>();
    r.target.addr = j.at("target").at("addr").get<std::string>();
    if (r.target.name.empty() || r.target.addr.empty()) {
      throw std::invalid_argument("target needs a name and an addr");
    }
    return r;
  });
}

std::string EncodeMigrationStatus(const MigrationStatus& s) { return MigrationJson(s).dump(); }

StatusOr<MigrationStatus> ParseMigrationStatus(std::string_view text) {
  return ParseWith<MigrationStatus>(text, "migration status",
                                    [](const json& j) { return MigrationFrom(j); });
}

}  // namespace kvcache::protocol
