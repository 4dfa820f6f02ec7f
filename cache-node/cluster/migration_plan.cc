#include "cluster/migration_plan.h"

#include <cstring>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace kvcache::node {
namespace {

using nlohmann::json;

template <typename T>
void PutInt(std::string& out, T value) {
  for (size_t i = 0; i < sizeof(T); ++i) {
    out.push_back(static_cast<char>((static_cast<uint64_t>(value) >> (8 * i)) & 0xff));
  }
}

// Reads fixed-size little-endian integers and byte runs off the front of a buffer.
class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}
  template <typename T>
  bool Int(T* out) {
    if (data_.size() < sizeof(T)) return false;
    uint64_t v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) {
      v |= static_cast<uint64_t>(static_cast<unsigned char>(data_[i])) << (8 * i);
    }
    *out = static_cast<T>(v);
    data_.remove_prefix(sizeof(T));
    return true;
  }
  bool Bytes(size_t n, std::string_view* out) {
    if (data_.size() < n) return false;
    *out = data_.substr(0, n);
    data_.remove_prefix(n);
    return true;
  }
  bool done() const { return data_.empty(); }

 private:
  std::string_view data_;
};

constexpr size_t kEntryFixedBytes = 4 + 4 + 2 + 8;

}  // namespace

SlotSet SlotSet::FromRanges(const std::vector<protocol::SlotRange>& ranges) {
  SlotSet set;
  for (const protocol::SlotRange& r : ranges) {
    for (int s = std::max(r.first, 0); s <= r.last && s < protocol::kSlotCount; ++s) {
      set.bits_.set(static_cast<size_t>(s));
    }
  }
  return set;
}

SlotSet SlotSet::OwnedBy(const std::vector<int>& owners, int shard_index) {
  SlotSet set;
  for (size_t s = 0; s < owners.size() && s < protocol::kSlotCount; ++s) {
    if (owners[s] == shard_index) set.bits_.set(s);
  }
  return set;
}

SlotSet SlotSet::Minus(const SlotSet& other) const {
  SlotSet out;
  out.bits_ = bits_ & ~other.bits_;
  return out;
}

std::vector<protocol::SlotRange> SlotSet::Ranges() const {
  std::vector<protocol::SlotRange> out;
  for (int s = 0; s < protocol::kSlotCount; ++s) {
    if (!Contains(s)) continue;
    if (!out.empty() && out.back().last == s - 1) {
      out.back().last = s;
    } else {
      out.push_back({s, s});
    }
  }
  return out;
}

std::string SlotSet::Describe(size_t max_ranges) const {
  std::vector<protocol::SlotRange> ranges = Ranges();
  if (ranges.empty()) return "none";
  std::string out;
  for (size_t i = 0; i < ranges.size(); ++i) {
    if (i == max_ranges) {
      out += ",...";
      break;
    }
    if (i > 0) out += ',';
    out += std::to_string(ranges[i].first);
    if (ranges[i].last != ranges[i].first) out += "-" + std::to_string(ranges[i].last);
  }
  return out;
}

size_t EncodedEntrySize(const ImportEntry& e) {
  return kEntryFixedBytes + e.key.size() + e.value.size() + e.content_type.size();
}

std::string EncodeImportBatch(const ImportBatch& batch) {
  json slots = json::array();
  for (const protocol::SlotRange& r : batch.slots) slots.push_back({r.first, r.last});
  const std::string header = json{{"source", batch.source}, {"slots", slots}}.dump();
  size_t size = 4 + header.size();
  for (const ImportEntry& e : batch.entries) size += EncodedEntrySize(e);
  std::string out;
  out.reserve(size);
  PutInt<uint32_t>(out, static_cast<uint32_t>(header.size()));
  out += header;
  for (const ImportEntry& e : batch.entries) {
    PutInt<uint32_t>(out, static_cast<uint32_t>(e.key.size()));
    PutInt<uint32_t>(out, static_cast<uint32_t>(e.value.size()));
    PutInt<uint16_t>(out, static_cast<uint16_t>(e.content_type.size()));
    PutInt<int64_t>(out, e.expire_at_ms);
    out += e.key;
    out += e.value;
    out += e.content_type;
  }
  return out;
}

StatusOr<ImportBatch> DecodeImportBatch(std::string_view body) {
  Reader in(body);
  uint32_t header_size = 0;
  std::string_view header;
  if (!in.Int(&header_size) || !in.Bytes(header_size, &header)) {
    return InvalidArgumentError("import batch: truncated header");
  }
  ImportBatch batch;
  json doc = json::parse(header, nullptr, /*allow_exceptions=*/false);
  if (!doc.is_object()) return InvalidArgumentError("import batch: header is not a JSON object");
  try {
    batch.source = doc.at("source").get<std::string>();
    for (const json& r : doc.at("slots")) {
      protocol::SlotRange range{r.at(0).get<int>(), r.at(1).get<int>()};
      if (range.first < 0 || range.last >= protocol::kSlotCount || range.first > range.last) {
        return InvalidArgumentError("import batch: slot range out of [0, 16383] or reversed");
      }
      batch.slots.push_back(range);
    }
  } catch (const std::exception& e) {
    return InvalidArgumentError(std::string("import batch: ") + e.what());
  }
  if (batch.source.empty() || batch.slots.empty()) {
    return InvalidArgumentError("import batch: needs a source and slots");
  }
  while (!in.done()) {
    uint32_t key_size = 0, value_size = 0;
    uint16_t type_size = 0;
    ImportEntry e;
    if (!in.Int(&key_size) || !in.Int(&value_size) || !in.Int(&type_size) ||
        !in.Int(&e.expire_at_ms) || !in.Bytes(key_size, &e.key) ||
        !in.Bytes(value_size, &e.value) || !in.Bytes(type_size, &e.content_type)) {
      return InvalidArgumentError("import batch: truncated entry " +
                                  std::to_string(batch.entries.size()));
    }
    batch.entries.push_back(e);
  }
  return batch;
}

std::string EncodeMigrationRecord(const MigrationRecord& record) {
  return json{{"request", json::parse(protocol::EncodeMigrationRequest(record.request))},
              {"status", json::parse(protocol::EncodeMigrationStatus(record.status))},
              {"finished", record.finished}}
      .dump();
}

StatusOr<MigrationRecord> ParseMigrationRecord(std::string_view text) {
  json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!doc.is_object() || !doc.contains("request") || !doc.contains("status")) {
    return InvalidArgumentError("migration record: not an object with request and status");
  }
  MigrationRecord record;
  StatusOr<protocol::MigrationRequest> request =
      protocol::ParseMigrationRequest(doc["request"].dump());
  if (!request.ok()) return request.status();
  StatusOr<protocol::MigrationStatus> status = protocol::ParseMigrationStatus(doc["status"].dump());
  if (!status.ok()) return status.status();
  record.request = std::move(*request);
  record.status = std::move(*status);
  record.finished = doc.value("finished", false);
  return record;
}

bool BatchOutcome::Count(const Status& result) {
  if (result.ok()) {
    ++moved;
  } else if (result.code() == StatusCode::kFailedPrecondition) {
    ++changed;
  } else if (result.code() == StatusCode::kNotFound) {
    ++vanished;
  } else {
    return false;
  }
  return true;
}

RatePacer::Clock::duration RatePacer::Sent(uint64_t keys, Clock::time_point now) {
  if (rate_ == 0) return Clock::duration::zero();
  // Idle time banks at most one second of sending.
  Clock::time_point start = std::max(next_free_, now - std::chrono::seconds(1));
  next_free_ = start + std::chrono::duration_cast<Clock::duration>(
                           std::chrono::duration<double>(static_cast<double>(keys) / rate_));
  return next_free_ > now ? next_free_ - now : Clock::duration::zero();
}

}  // namespace kvcache::node
