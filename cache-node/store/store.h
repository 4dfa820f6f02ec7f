// Store: the node's in-memory key-value map. Keys and values are arbitrary bytes; each entry
// also carries a content type, an ETag (a hash of value and content type, so equal data has an
// equal tag on every node and after restarts) and an optional absolute expiry time.
//
// Thread safety: every method may be called from any thread. The map is split into shards,
// each with its own reader-writer lock; there is no global lock on the data path. Memory
// accounting and eviction are global (one atomic counter), eviction samples a few entries of
// one shard at a time as Redis does.
#pragma once

#include <atomic>
#include <functional>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/status.h"
#include "store/clock.h"
#include "store/write_log.h"

namespace kvcache::node {

enum class EvictionPolicy { kLru, kLfu, kNoEviction };

// "lru" | "lfu" | "noeviction".
std::string_view EvictionPolicyName(EvictionPolicy policy);
StatusOr<EvictionPolicy> ParseEvictionPolicy(std::string_view name);

struct StoreOptions {
  // Bytes the entries may use in total (keys, values, bookkeeping); 0 means no limit.
  uint64_t max_memory_bytes = 0;
  // What a write does when the limit would be exceeded: evict (lru, lfu) or fail (noeviction).
  EvictionPolicy eviction = EvictionPolicy::kLru;
  // 2^shard_bits shards; more shards mean less lock contention and smaller resize pauses.
  int shard_bits = 8;
  // Entries looked at to choose one victim.
  int eviction_samples = 5;
};

// "*" or a list of ETags, as in If-Match / If-None-Match.
struct EtagMatch {
  bool match_any = false;
  std::vector<uint64_t> etags;
  bool Matches(uint64_t etag) const;
};

struct PutRequest {
  std::string_view key;
  std::string_view value;
  // Empty means "not given"; reads then answer text/plain.
  std::string_view content_type;
  // Absolute expiry in wall-clock ms since the epoch; 0 means the entry never expires.
  int64_t expire_at_ms = 0;
  // Compare-and-set (If-Match): when set, write only if the key exists and, unless the list
  // is "*" (match_any), its ETag is one of `etags`.
  std::optional<EtagMatch> if_match;
  // If-None-Match: when set, write only if the key is absent (match_any) or its ETag is none
  // of `etags`.
  std::optional<EtagMatch> if_none_match;
};

struct PutResult {
  bool created = false;  // false: an existing entry was replaced
  uint64_t etag = 0;
  uint64_t seq = 0;  // the WriteLog's sequence number; 0 without a log
};

struct GetResult {
  std::string value;  // empty when the caller asked for metadata only
  uint64_t value_size = 0;
  std::string content_type;  // empty when none was stored
  uint64_t etag = 0;
  int64_t expire_at_ms = 0;
};

struct ListResult {
  std::vector<std::string> keys;  // sorted bytewise
  bool more = false;              // true if keys after the last one also match
};

struct StoreStats {
  uint64_t keys = 0;
  uint64_t memory_bytes = 0;
  uint64_t max_memory_bytes = 0;
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t evictions = 0;
  uint64_t expirations = 0;
};

// Computes the ETag of a value with its content type (stable across processes and versions).
uint64_t ComputeEtag(std::string_view value, std::string_view content_type);

class Store {
 public:
  Store(const StoreOptions& options, const Clock& clock);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Writes the entry. Returns FailedPrecondition if if_match / if_none_match_any do not hold,
  // ResourceExhausted if the memory limit would be exceeded and nothing can be evicted (always
  // so under noeviction); in both cases nothing changes. An expired entry counts as absent.
  StatusOr<PutResult> Put(const PutRequest& request);

  // Returns the entry, or NotFound if it is absent or expired. With copy_value false only the
  // metadata is returned (for HEAD).
  StatusOr<GetResult> Get(std::string_view key, bool copy_value = true);

  // Returns NotFound if the key is absent or expired. `seq` receives the log sequence number.
  Status Delete(std::string_view key, uint64_t* seq = nullptr);

  // Deletes the entry only if it is still the version the caller read: same ETag and same
  // expiry (a slot migration removes a key it has copied only if no write came in between).
  // Returns NotFound if the key is absent or expired, FailedPrecondition if it changed.
  Status DeleteIfUnchanged(std::string_view key, uint64_t etag, int64_t expire_at_ms,
                           uint64_t* seq = nullptr);

  // Removes every entry, holding every shard's lock for the moment it takes, so no write is
  // half-before, half-after. Returns how many live entries were removed, or the log's error.
  StatusOr<uint64_t> Flush(uint64_t* seq = nullptr);

  // Reports every mutation to `log` from now on (nullptr: none). Writes the log refuses fail.
  // REQUIRES: no concurrent mutations (call at startup, after recovery).
  void SetWriteLog(WriteLog* log) { log_ = log; }
  WriteLog* write_log() const { return log_; }

  // Calls `fn(key, value, content_type, expire_at_ms)` for each live entry of one shard, with
  // that shard's lock held shared: `fn` must be quick (copy, do not write files).
  using EntryVisitor = std::function<void(std::string_view key, std::string_view value,
                                          std::string_view content_type, int64_t expire_at_ms)>;
  void VisitShard(size_t shard, const EntryVisitor& fn) const;
  size_t shard_count() const { return shard_mask_ + 1; }

  // Up to `limit` live keys starting with `prefix` and bytewise greater than `after`, sorted.
  // Cost: one pass over all entries, so it is meant for administration, not the hot path.
  ListResult List(std::string_view prefix, std::string_view after, size_t limit) const;

  // Active expiry: removes up to `budget` entries whose time has passed, oldest first, locking
  // one shard at a time for a bounded batch. Returns how many were removed; call again soon
  // if that equals the budget.
  size_t ExpireSome(size_t budget);

  StoreStats Stats() const;
  const StoreOptions& options() const { return options_; }

 private:
  struct Entry;
  class EntryTable;
  struct Shard;

  Shard& ShardFor(uint64_t hash) const;
  Status MakeRoom(int64_t needed);
  bool EvictOne();
  bool ReserveStrict(int64_t delta);
  // Access stamps: LRU seconds, LFU minutes (24 bits) since the store's epoch.
  uint32_t LruSeconds(int64_t now_ms) const;
  uint32_t LfuMinutes(int64_t now_ms) const;
  void Touch(Entry* e, int64_t now_ms) const;
  uint32_t EvictionScore(const Entry* e, int64_t now_ms) const;
  // REQUIRES: the shard's lock is held exclusively. Unlinks the entry at `slot` and returns it.
  Entry* RemoveLocked(Shard& shard, size_t slot);
  // Delete(), refused with FailedPrecondition when `condition` (if set) is false for the live
  // entry.
  Status DeleteWhere(std::string_view key, const std::function<bool(const Entry&)>& condition,
                     uint64_t* seq);

  const StoreOptions options_;
  const Clock& clock_;
  const int64_t epoch_ms_;
  const size_t shard_mask_;
  std::unique_ptr<Shard[]> shards_;
  std::atomic<int64_t> used_bytes_{0};
  std::atomic<uint64_t> evict_cursor_{0};
  std::atomic<uint64_t> expire_cursor_{0};
  WriteLog* log_ = nullptr;
};

}  // namespace kvcache::node
