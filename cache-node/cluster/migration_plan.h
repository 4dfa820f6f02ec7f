// The pure parts of slot migration (see migration.h for the mechanism): slot sets, the import
// batch wire format, the state file kept in the data directory, batch accounting and pacing.
// No I/O, no clock of their own, no threads: unit-tested directly.
//
// Thread safety: values and pure functions; SlotSet and RatePacer are not synchronised.
#pragma once

#include <bitset>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/admin.h"
#include "protocol/status.h"
#include "protocol/topology.h"

namespace kvcache::node {

// A set of hash slots.
class SlotSet {
 public:
  SlotSet() = default;
  static SlotSet FromRanges(const std::vector<protocol::SlotRange>& ranges);
  // The slots of shard `shard_index` (an index into topology.shards) in `owners`
  // (Topology::SlotOwners()).
  static SlotSet OwnedBy(const std::vector<int>& owners, int shard_index);

  bool Contains(int slot) const { return bits_.test(static_cast<size_t>(slot)); }
  bool empty() const { return bits_.none(); }
  size_t size() const { return bits_.count(); }
  // Slots in this set and not in `other`.
  SlotSet Minus(const SlotSet& other) const;
  bool operator==(const SlotSet& other) const = default;

  // Maximal runs, ascending: {0-99, 200-200}.
  std::vector<protocol::SlotRange> Ranges() const;
  // "0-99,200" (at most `max_ranges` runs, then ",..."); "none" when empty.
  std::string Describe(size_t max_ranges = 8) const;

 private:
  std::bitset<protocol::kSlotCount> bits_;
};

// One entry of an import batch (views into the caller's buffers or the decoded body).
struct ImportEntry {
  std::string_view key;
  std::string_view value;
  std::string_view content_type;  // empty: none stored
  int64_t expire_at_ms = 0;       // absolute, wall-clock ms; 0: never
};

// POST /internal/import: the source's name, the migrating slots, and entries of those slots.
// A batch with no entries registers (or refreshes) the migration at the target.
struct ImportBatch {
  std::string source;
  std::vector<protocol::SlotRange> slots;
  std::vector<ImportEntry> entries;
};

// Wire format (application/octet-stream, integers little-endian):
//   u32 header length | header JSON {"source": name, "slots": [[first, last], ...]}
//   then per entry: u32 key length | u32 value length | u16 content-type length
//                   | i64 expire_at_ms | key | value | content type
std::string EncodeImportBatch(const ImportBatch& batch);
// InvalidArgument naming the problem for a truncated or malformed body. The entries point
// into `body`, which must outlive the result.
StatusOr<ImportBatch> DecodeImportBatch(std::string_view body);
// Bytes one entry adds to an encoded batch.
size_t EncodedEntrySize(const ImportEntry& entry);

// What the source keeps in its data directory (migration.json) so a restart resumes or reports
// the migration.
struct MigrationRecord {
  protocol::MigrationRequest request;
  protocol::MigrationStatus status;
  // The topology flipped and the source dropped its copy: nothing left to do.
  bool finished = false;
  bool operator==(const MigrationRecord&) const = default;
};
std::string EncodeMigrationRecord(const MigrationRecord& record);
StatusOr<MigrationRecord> ParseMigrationRecord(std::string_view json);

// The result of removing a batch's keys at the source after the target acknowledged them.
struct BatchOutcome {
  uint64_t moved = 0;     // deleted here: the target holds the same version
  uint64_t changed = 0;   // written meanwhile: stays here and goes in a later batch
  uint64_t vanished = 0;  // expired or evicted meanwhile
  // Counts one DeleteIfUnchanged() result; returns false for an unexpected error.
  bool Count(const Status& delete_result);
};

// Paces a stream of keys to at most `keys_per_second` (0: no limit), allowing a burst of one
// second's worth.
class RatePacer {
 public:
  using Clock = std::chrono::steady_clock;
  explicit RatePacer(uint64_t keys_per_second) : rate_(keys_per_second) {}
  // Records `keys` sent at `now`; returns how long to wait before sending more.
  Clock::duration Sent(uint64_t keys, Clock::time_point now);

 private:
  uint64_t rate_;
  Clock::time_point next_free_{};
};

}  // namespace kvcache::node
