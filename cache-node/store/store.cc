#include "store/store.h"

#include <malloc.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <new>
#include <queue>
#include <random>
#include <set>
#include <shared_mutex>

namespace kvcache::node {
namespace {

// Bookkeeping charged per entry besides its allocation: the table slot (8 bytes at <= 75%
// load) and the allocator's header.
constexpr int64_t kPerEntryOverhead = 8 + 8;
// An expiry-index node (std::set node: three pointers, colour, the pair).
constexpr int64_t kExpiryIndexOverhead = 48;
// LFU as Redis does it: a logarithmic 8-bit counter that new keys start at, decayed by one
// per minute without access.
constexpr uint32_t kLfuInitial = 5;
constexpr uint32_t kLfuLogFactor = 10;
constexpr size_t kExpireBatchPerShard = 256;

uint64_t FastRandom() {
  thread_local std::minstd_rand rng(std::random_device{}());
  return (static_cast<uint64_t>(rng()) << 31) ^ rng();
}

}  // namespace

std::string_view EvictionPolicyName(EvictionPolicy policy) {
  switch (policy) {
    case EvictionPolicy::kLru: return "lru";
    case EvictionPolicy::kLfu: return "lfu";
    case EvictionPolicy::kNoEviction: return "noeviction";
  }
  return "unknown";
}

StatusOr<EvictionPolicy> ParseEvictionPolicy(std::string_view name) {
  if (name == "lru") return EvictionPolicy::kLru;
  if (name == "lfu") return EvictionPolicy::kLfu;
  if (name == "noeviction") return EvictionPolicy::kNoEviction;
  return InvalidArgumentError("eviction policy must be lru, lfu or noeviction, got \"" +
                              std::string(name) + "\"");
}

bool EtagMatch::Matches(uint64_t etag) const {
  return match_any || std::find(etags.begin(), etags.end(), etag) != etags.end();
}

uint64_t ComputeEtag(std::string_view value, std::string_view content_type) {
  uint64_t seed = XXH3_64bits(content_type.data(), content_type.size());
  return XXH3_64bits_withSeed(value.data(), value.size(), seed);
}

// One allocation per entry: this header followed by key, value and content-type bytes.
struct Store::Entry {
  uint64_t hash;
  uint64_t etag;
  int64_t expire_at_ms;  // 0: never
  // LRU: seconds since the store's epoch at last access. LFU: minutes (high 24 bits, wrapping)
  // and the logarithmic counter (low 8 bits).
  std::atomic<uint32_t> access;
  uint32_t key_len;
  uint32_t value_len;
  uint16_t content_type_len;

  char* bytes() { return reinterpret_cast<char*>(this + 1); }
  const char* bytes() const { return reinterpret_cast<const char*>(this + 1); }
  std::string_view key() const { return {bytes(), key_len}; }
  std::string_view value() const { return {bytes() + key_len, value_len}; }
  std::string_view content_type() const {
    return {bytes() + key_len + value_len, content_type_len};
  }
  bool ExpiredAt(int64_t now_ms) const { return expire_at_ms != 0 && expire_at_ms <= now_ms; }

  static Entry* Create(uint64_t hash, const PutRequest& req, uint32_t access) {
    size_t size = sizeof(Entry) + req.key.size() + req.value.size() + req.content_type.size();
    auto* e = new (::operator new(size)) Entry;
    e->hash = hash;
    e->etag = ComputeEtag(req.value, req.content_type);
    e->expire_at_ms = req.expire_at_ms;
    e->access.store(access, std::memory_order_relaxed);
    e->key_len = static_cast<uint32_t>(req.key.size());
    e->value_len = static_cast<uint32_t>(req.value.size());
    e->content_type_len = static_cast<uint16_t>(req.content_type.size());
    char* p = e->bytes();
    std::memcpy(p, req.key.data(), req.key.size());
    std::memcpy(p + req.key.size(), req.value.data(), req.value.size());
    std::memcpy(p + req.key.size() + req.value.size(), req.content_type.data(),
                req.content_type.size());
    return e;
  }
  static void Destroy(Entry* e) {
    e->~Entry();
    ::operator delete(e);
  }
  int64_t Charge() const {
    return static_cast<int64_t>(malloc_usable_size(const_cast<Entry*>(this))) +
           kPerEntryOverhead + (expire_at_ms != 0 ? kExpiryIndexOverhead : 0);
  }
};

// Open addressing with linear probing and backward-shift deletion (no tombstones), holding
// entry pointers. Sized per shard, so growing it pauses one shard for a short time only.
// REQUIRES: callers hold the owning shard's lock (shared for const methods).
class Store::EntryTable {
 public:
  static constexpr size_t kNpos = ~size_t{0};

  size_t size() const { return size_; }
  size_t capacity() const { return slots_.size(); }
  Entry* at(size_t slot) const { return slots_[slot]; }

  size_t Find(uint64_t hash, std::string_view key) const {
    if (slots_.empty()) return kNpos;
    for (size_t i = hash & mask_;; i = (i + 1) & mask_) {
      Entry* e = slots_[i];
      if (e == nullptr) return kNpos;
      if (e->hash == hash && e->key() == key) return i;
    }
  }
  // REQUIRES: the entry's key is absent.
  void Insert(Entry* entry) {
    if ((size_ + 1) * 4 > slots_.size() * 3) Grow();
    size_t i = entry->hash & mask_;
    while (slots_[i] != nullptr) i = (i + 1) & mask_;
    slots_[i] = entry;
    ++size_;
  }
  void Replace(size_t slot, Entry* entry) { slots_[slot] = entry; }
  Entry* Erase(size_t slot) {
    Entry* removed = slots_[slot];
    // Backward shift: pull later members of the probe run into the hole.
    size_t hole = slot;
    for (size_t i = (slot + 1) & mask_; slots_[i] != nullptr; i = (i + 1) & mask_) {
      size_t home = slots_[i]->hash & mask_;
      // Move slots_[i] into the hole unless its home lies cyclically in (hole, i].
      bool home_in_range = hole <= i ? (hole < home && home <= i) : (hole < home || home <= i);
      if (!home_in_range) {
        slots_[hole] = slots_[i];
        hole = i;
      }
    }
    slots_[hole] = nullptr;
    --size_;
    return removed;
  }
  // Index of the first occupied slot at or after `from` (wrapping), or kNpos if empty.
  size_t NextOccupied(size_t from) const {
    if (size_ == 0) return kNpos;
    for (size_t i = from & mask_;; i = (i + 1) & mask_) {
      if (slots_[i] != nullptr) return i;
    }
  }
  std::vector<Entry*> TakeAll() {
    std::vector<Entry*> out;
    out.reserve(size_);
    for (Entry* e : slots_) {
      if (e != nullptr) out.push_back(e);
    }
    slots_.clear();
    mask_ = 0;
    size_ = 0;
    return out;
  }

 private:
  void Grow() {
    std::vector<Entry*> old = std::move(slots_);
    slots_.assign(old.empty() ? 16 : old.size() * 2, nullptr);
    mask_ = slots_.size() - 1;
    for (Entry* e : old) {
      if (e == nullptr) continue;
      size_t i = e->hash & mask_;
      while (slots_[i] != nullptr) i = (i + 1) & mask_;
      slots_[i] = e;
    }
  }

  std::vector<Entry*> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

struct alignas(64) Store::Shard {
  mutable std::shared_mutex mu;
  EntryTable table;
  // Entries with an expiry, soonest first; the active expiry cycle pops from the front.
  std::set<std::pair<int64_t, Entry*>> expiry;
  std::atomic<uint64_t> keys{0};
  mutable std::atomic<uint64_t> hits{0};
  mutable std::atomic<uint64_t> misses{0};
  std::atomic<uint64_t> evictions{0};
  std::atomic<uint64_t> expirations{0};
};

Store::Store(const StoreOptions& options, const Clock& clock)
    : options_(options),
      clock_(clock),
      epoch_ms_(clock.NowMs()),
      shard_mask_((size_t{1} << options.shard_bits) - 1),
      shards_(new Shard[size_t{1} << options.shard_bits]) {}

Store::~Store() {
  for (size_t i = 0; i <= shard_mask_; ++i) {
    for (Entry* e : shards_[i].table.TakeAll()) Entry::Destroy(e);
  }
}

Store::Shard& Store::ShardFor(uint64_t hash) const {
  // High bits choose the shard, low bits the slot, so the two stay independent.
  return shards_[(hash >> 48) & shard_mask_];
}

uint32_t Store::LruSeconds(int64_t now_ms) const {
  return static_cast<uint32_t>((now_ms - epoch_ms_) / 1000);
}

uint32_t Store::LfuMinutes(int64_t now_ms) const {
  return static_cast<uint32_t>((now_ms - epoch_ms_) / 60000) & 0xFFFFFF;  // 24 bits, wrapping
}

void Store::Touch(Entry* e, int64_t now_ms) const {
  uint32_t old = e->access.load(std::memory_order_relaxed);
  uint32_t updated;
  if (options_.eviction == EvictionPolicy::kLfu) {
    uint32_t minutes = LfuMinutes(now_ms);
    uint32_t counter = EvictionScore(e, now_ms);
    if (counter < 255) {
      uint32_t base = counter > kLfuInitial ? counter - kLfuInitial : 0;
      double p = 1.0 / (base * kLfuLogFactor + 1);
      if (static_cast<double>(FastRandom() % 1'000'000) / 1'000'000.0 < p) ++counter;
    }
    updated = (minutes << 8) | counter;
  } else {
    updated = LruSeconds(now_ms);
  }
  // Skip the store when nothing changed: hot keys then do not bounce a cache line per read.
  if (updated != old) e->access.store(updated, std::memory_order_relaxed);
}

uint32_t Store::EvictionScore(const Entry* e, int64_t now_ms) const {
  uint32_t access = e->access.load(std::memory_order_relaxed);
  if (options_.eviction != EvictionPolicy::kLfu) return access;
  uint32_t now_minutes = LfuMinutes(now_ms);
  uint32_t idle_minutes = (now_minutes - (access >> 8)) & 0xFFFFFF;
  uint32_t counter = access & 0xFF;
  return counter > idle_minutes ? counter - idle_minutes : 0;
}

Store::Entry* Store::RemoveLocked(Shard& shard, size_t slot) {
  Entry* e = shard.table.Erase(slot);
  if (e->expire_at_ms != 0) shard.expiry.erase({e->expire_at_ms, e});
  shard.keys.fetch_sub(1, std::memory_order_relaxed);
  used_bytes_.fetch_sub(e->Charge(), std::memory_order_relaxed);
  return e;
}

bool Store::ReserveStrict(int64_t delta) {
  const int64_t max = static_cast<int64_t>(options_.max_memory_bytes);
  int64_t current = used_bytes_.load(std::memory_order_relaxed);
  do {
    if (max != 0 && current + delta > max) return false;
  } while (!used_bytes_.compare_exchange_weak(current, current + delta,
                                              std::memory_order_relaxed));
  return true;
}

bool Store::EvictOne() {
  Shard& shard = shards_[evict_cursor_.fetch_add(1, std::memory_order_relaxed) & shard_mask_];
  Entry* victim = nullptr;
  {
    std::unique_lock lock(shard.mu);
    if (shard.table.size() == 0) return false;
    const int64_t now = clock_.NowMs();
    size_t best_slot = EntryTable::kNpos;
    uint32_t best_score = 0;
    size_t pos = FastRandom();
    for (int i = 0; i < options_.eviction_samples; ++i) {
      size_t slot = shard.table.NextOccupied(pos);
      Entry* e = shard.table.at(slot);
      // An expired entry is the best victim of all.
      uint32_t score = e->ExpiredAt(now) ? 0 : EvictionScore(e, now) + 1;
      if (best_slot == EntryTable::kNpos || score < best_score) {
        best_slot = slot;
        best_score = score;
      }
      pos = FastRandom();
    }
    // An eviction is logged like a delete (as Redis does): otherwise the key would come back
    // after a restart, and a client's later DELETE of it (answered 404) would be undone.
    // If the log refuses, writes are being refused too; evicting anyway frees the memory.
    if (best_score != 0 && log_ != nullptr) {
      (void)log_->LogDelete(shard.table.at(best_slot)->key());
    }
    victim = RemoveLocked(shard, best_slot);
    if (best_score == 0) {
      shard.expirations.fetch_add(1, std::memory_order_relaxed);
    } else {
      shard.evictions.fetch_add(1, std::memory_order_relaxed);
    }
  }
  Entry::Destroy(victim);
  return true;
}

Status Store::MakeRoom(int64_t needed) {
  const int64_t max = static_cast<int64_t>(options_.max_memory_bytes);
  if (max == 0 || options_.eviction == EvictionPolicy::kNoEviction) return Status::Ok();
  if (needed > max) {
    return ResourceExhaustedError("entry of " + std::to_string(needed) +
                                  " bytes is larger than max memory (" + std::to_string(max) +
                                  " bytes)");
  }
  size_t empty_shards_seen = 0;
  while (used_bytes_.load(std::memory_order_relaxed) + needed > max) {
    if (EvictOne()) {
      empty_shards_seen = 0;
    } else if (++empty_shards_seen > shard_mask_ + 1) {
      return ResourceExhaustedError("memory limit reached and nothing left to evict");
    }
  }
  return Status::Ok();
}

StatusOr<PutResult> Store::Put(const PutRequest& req) {
  if (req.content_type.size() > 0xFFFF) return InvalidArgumentError("content type too long");
  const uint64_t hash = XXH3_64bits(req.key.data(), req.key.size());
  const int64_t now = clock_.NowMs();
  uint32_t initial_access = options_.eviction == EvictionPolicy::kLfu
                                ? (LfuMinutes(now) << 8) | kLfuInitial
                                : LruSeconds(now);
  // Build the entry before taking the lock: the copy is the expensive part.
  Entry* fresh = Entry::Create(hash, req, initial_access);
  const int64_t charge = fresh->Charge();
  if (Status room = MakeRoom(charge); !room.ok()) {
    Entry::Destroy(fresh);
    return room;
  }

  Shard& shard = ShardFor(hash);
  Entry* old = nullptr;
  Status failure;
  bool created = false;
  uint64_t seq = 0;
  {
    std::unique_lock lock(shard.mu);
    size_t slot = shard.table.Find(hash, req.key);
    if (slot != EntryTable::kNpos && shard.table.at(slot)->ExpiredAt(now)) {
      Entry* expired = RemoveLocked(shard, slot);
      shard.expirations.fetch_add(1, std::memory_order_relaxed);
      Entry::Destroy(expired);
      slot = EntryTable::kNpos;
    }
    Entry* current = slot == EntryTable::kNpos ? nullptr : shard.table.at(slot);
    if (req.if_none_match && current != nullptr && req.if_none_match->Matches(current->etag)) {
      failure = FailedPreconditionError(req.if_none_match->match_any
                                            ? "key already exists (If-None-Match: *)"
                                            : "ETag matches (If-None-Match)");
    } else if (req.if_match && (current == nullptr || !req.if_match->Matches(current->etag))) {
      failure = FailedPreconditionError(current == nullptr ? "key does not exist (If-Match)"
                                                           : "ETag does not match (If-Match)");
    } else {
      const int64_t delta = charge - (current ? current->Charge() : 0);
      const bool strict = options_.eviction == EvictionPolicy::kNoEviction;
      if (strict && delta > 0 && !ReserveStrict(delta)) {
        failure = ResourceExhaustedError("memory limit of " +
                                         std::to_string(options_.max_memory_bytes) +
                                         " bytes reached (eviction policy noeviction)");
      } else if (StatusOr<uint64_t> logged =
                     log_ ? log_->LogPut(req.key, req.value, req.content_type, req.expire_at_ms)
                          : StatusOr<uint64_t>(uint64_t{0});
                 !logged.ok()) {
        if (strict && delta > 0) used_bytes_.fetch_sub(delta, std::memory_order_relaxed);
        failure = logged.status();
      } else {
        seq = *logged;
        if (!strict || delta <= 0) used_bytes_.fetch_add(delta, std::memory_order_relaxed);
        if (current != nullptr) {
          old = current;
          if (old->expire_at_ms != 0) shard.expiry.erase({old->expire_at_ms, old});
          shard.table.Replace(slot, fresh);
        } else {
          shard.table.Insert(fresh);
          shard.keys.fetch_add(1, std::memory_order_relaxed);
          created = true;
        }
        if (fresh->expire_at_ms != 0) shard.expiry.insert({fresh->expire_at_ms, fresh});
      }
    }
  }
  if (!failure.ok()) {
    Entry::Destroy(fresh);
    return failure;
  }
  PutResult result{created, fresh->etag, seq};
  if (old != nullptr) Entry::Destroy(old);
  return result;
}

StatusOr<GetResult> Store::Get(std::string_view key, bool copy_value) {
  const uint64_t hash = XXH3_64bits(key.data(), key.size());
  const int64_t now = clock_.NowMs();
  Shard& shard = ShardFor(hash);
  std::shared_lock lock(shard.mu);
  size_t slot = shard.table.Find(hash, key);
  if (slot == EntryTable::kNpos || shard.table.at(slot)->ExpiredAt(now)) {
    // An expired entry is left for a writer or the active expiry cycle to remove: readers
    // only hold the shared lock.
    shard.misses.fetch_add(1, std::memory_order_relaxed);
    return NotFoundError("key not found");
  }
  Entry* e = shard.table.at(slot);
  Touch(e, now);
  shard.hits.fetch_add(1, std::memory_order_relaxed);
  GetResult result;
  if (copy_value) result.value.assign(e->value());
  result.value_size = e->value_len;
  result.content_type.assign(e->content_type());
  result.etag = e->etag;
  result.expire_at_ms = e->expire_at_ms;
  return result;
}

Status Store::Delete(std::string_view key, uint64_t* seq) {
  return DeleteWhere(key, nullptr, seq);
}

Status Store::DeleteIfUnchanged(std::string_view key, uint64_t etag, int64_t expire_at_ms,
                                uint64_t* seq) {
  const auto unchanged = [etag, expire_at_ms](const Entry& e) {
    return e.etag == etag && e.expire_at_ms == expire_at_ms;
  };
  return DeleteWhere(key, unchanged, seq);
}

Status Store::DeleteWhere(std::string_view key,
                          const std::function<bool(const Entry&)>& condition, uint64_t* seq) {
  const uint64_t hash = XXH3_64bits(key.data(), key.size());
  const int64_t now = clock_.NowMs();
  Shard& shard = ShardFor(hash);
  Entry* removed = nullptr;
  bool expired = false;
  {
    std::unique_lock lock(shard.mu);
    size_t slot = shard.table.Find(hash, key);
    if (slot == EntryTable::kNpos) return NotFoundError("key not found");
    if (condition && !shard.table.at(slot)->ExpiredAt(now) &&
        !condition(*shard.table.at(slot))) {
      return FailedPreconditionError("key changed");
    }
    // An expired entry needs no log record: its expiry is in the log already.
    if (log_ && !shard.table.at(slot)->ExpiredAt(now)) {
      StatusOr<uint64_t> logged = log_->LogDelete(key);
      if (!logged.ok()) return logged.status();
      if (seq) *seq = *logged;
    }
    removed = RemoveLocked(shard, slot);
    expired = removed->ExpiredAt(now);
    if (expired) shard.expirations.fetch_add(1, std::memory_order_relaxed);
  }
  Entry::Destroy(removed);
  return expired ? NotFoundError("key not found") : Status::Ok();
}

StatusOr<uint64_t> Store::Flush(uint64_t* seq) {
  const int64_t now = clock_.NowMs();
  std::vector<std::unique_lock<std::shared_mutex>> locks;
  locks.reserve(shard_mask_ + 1);
  // Every shard, in index order (the only place more than one shard lock is held).
  for (size_t i = 0; i <= shard_mask_; ++i) locks.emplace_back(shards_[i].mu);
  if (log_) {
    StatusOr<uint64_t> logged = log_->LogFlush();
    if (!logged.ok()) return logged.status();
    if (seq) *seq = *logged;
  }
  std::vector<Entry*> taken;
  for (size_t i = 0; i <= shard_mask_; ++i) {
    Shard& shard = shards_[i];
    for (Entry* e : shard.table.TakeAll()) taken.push_back(e);
    shard.expiry.clear();
    shard.keys.store(0, std::memory_order_relaxed);
  }
  int64_t freed = 0;
  for (Entry* e : taken) freed += e->Charge();
  used_bytes_.fetch_sub(freed, std::memory_order_relaxed);
  locks.clear();
  uint64_t live = 0;
  for (Entry* e : taken) {
    if (!e->ExpiredAt(now)) ++live;
    Entry::Destroy(e);
  }
  return live;
}

void Store::VisitShard(size_t index, const EntryVisitor& fn) const {
  const int64_t now = clock_.NowMs();
  const Shard& shard = shards_[index & shard_mask_];
  std::shared_lock lock(shard.mu);
  for (size_t s = 0; s < shard.table.capacity(); ++s) {
    const Entry* e = shard.table.at(s);
    if (e == nullptr || e->ExpiredAt(now)) continue;
    fn(e->key(), e->value(), e->content_type(), e->expire_at_ms);
  }
}

ListResult Store::List(std::string_view prefix, std::string_view after, size_t limit) const {
  const int64_t now = clock_.NowMs();
  // Keep the `limit + 1` smallest matching keys in a max-heap; the extra one says "more".
  std::priority_queue<std::string> heap;
  for (size_t i = 0; i <= shard_mask_; ++i) {
    const Shard& shard = shards_[i];
    std::shared_lock lock(shard.mu);
    for (size_t s = 0; s < shard.table.capacity(); ++s) {
      const Entry* e = shard.table.at(s);
      if (e == nullptr || e->ExpiredAt(now)) continue;
      std::string_view key = e->key();
      if (key.substr(0, prefix.size()) != prefix) continue;
      if (!after.empty() && key <= after) continue;
      if (heap.size() <= limit) {
        heap.emplace(key);
      } else if (key < heap.top()) {
        heap.pop();
        heap.emplace(key);
      }
    }
  }
  ListResult result;
  result.more = heap.size() > limit;
  if (result.more) heap.pop();
  result.keys.resize(heap.size());
  for (size_t i = heap.size(); i > 0; --i) {
    result.keys[i - 1] = heap.top();
    heap.pop();
  }
  return result;
}

size_t Store::ExpireSome(size_t budget) {
  const int64_t now = clock_.NowMs();
  size_t removed_total = 0;
  for (size_t visited = 0; visited <= shard_mask_ && removed_total < budget; ++visited) {
    Shard& shard = shards_[expire_cursor_.fetch_add(1, std::memory_order_relaxed) & shard_mask_];
    std::vector<Entry*> removed;
    {
      std::unique_lock lock(shard.mu);
      size_t batch = std::min(kExpireBatchPerShard, budget - removed_total);
      while (removed.size() < batch && !shard.expiry.empty() &&
             shard.expiry.begin()->first <= now) {
        Entry* e = shard.expiry.begin()->second;
        size_t slot = shard.table.Find(e->hash, e->key());
        removed.push_back(RemoveLocked(shard, slot));
      }
      shard.expirations.fetch_add(removed.size(), std::memory_order_relaxed);
    }
    removed_total += removed.size();
    for (Entry* e : removed) Entry::Destroy(e);
  }
  return removed_total;
}

StoreStats Store::Stats() const {
  StoreStats stats;
  for (size_t i = 0; i <= shard_mask_; ++i) {
    const Shard& shard = shards_[i];
    stats.keys += shard.keys.load(std::memory_order_relaxed);
    stats.hits += shard.hits.load(std::memory_order_relaxed);
    stats.misses += shard.misses.load(std::memory_order_relaxed);
    stats.evictions += shard.evictions.load(std::memory_order_relaxed);
    stats.expirations += shard.expirations.load(std::memory_order_relaxed);
  }
  stats.memory_bytes = static_cast<uint64_t>(std::max<int64_t>(0, used_bytes_.load()));
  stats.max_memory_bytes = options_.max_memory_bytes;
  return stats;
}

}  // namespace kvcache::node
