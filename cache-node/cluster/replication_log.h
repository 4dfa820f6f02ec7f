// Replication offsets and the primary's backlog.
//
// ReplicationLog is the store's WriteLog while replication is on: it gives every mutation an
// offset and keeps recent mutations in a Backlog for the senders to stream. With persistence
// on it wraps the journal and the offset IS the journal's sequence number (so one number
// serves both "durable?" and "acknowledged by replicas?"); with persistence off it counts by
// itself. Offsets only mean something together with the replication id of the primary that
// assigned them (see replication.h): a restarted or newly promoted primary starts a new id, and
// its replicas then resync in full.
//
// Thread safety: Backlog is a plain value (the log guards it); every ReplicationLog method is
// thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/status.h"
#include "store/write_log.h"

namespace kvcache::node {

struct ReplRecord {
  enum class Type : uint8_t { kPut = 1, kDelete = 2, kFlush = 3 };
  Type type = Type::kPut;
  uint64_t offset = 0;
  int64_t expire_at_ms = 0;
  std::string key;
  std::string value;
  std::string content_type;
  // Bytes it accounts for in a backlog or a batch.
  size_t Bytes() const { return key.size() + value.size() + content_type.size() + 32; }
  bool operator==(const ReplRecord&) const = default;
};

// The most recent records, oldest first, bounded by bytes. Offsets increase but need not be
// contiguous. Not thread-safe.
class Backlog {
 public:
  // `max_bytes` 0 keeps nothing (every reader that is behind needs a full sync).
  // `base_offset`: the last offset before the first record this backlog will hold.
  explicit Backlog(uint64_t max_bytes, uint64_t base_offset = 0)
      : max_bytes_(max_bytes), dropped_up_to_(base_offset), last_offset_(base_offset) {}

  // REQUIRES: record.offset > last_offset().
  void Append(ReplRecord record);

  // Records with offset > `after`, oldest first, up to `max_bytes` (at least one record when
  // there is one) and `max_records`. Returns OutOfRange when records after `after` were
  // already dropped (the reader needs a full sync).
  StatusOr<std::vector<ReplRecord>> After(uint64_t after, size_t max_bytes,
                                          size_t max_records) const;

  // Forgets every record; the next one follows `base_offset`.
  void Reset(uint64_t base_offset);

  uint64_t last_offset() const { return last_offset_; }
  // Readers at or past this offset can be served from the backlog.
  uint64_t dropped_up_to() const { return dropped_up_to_; }
  uint64_t bytes() const { return bytes_; }
  size_t size() const { return records_.size(); }

 private:
  uint64_t max_bytes_;
  uint64_t dropped_up_to_;
  uint64_t last_offset_;
  uint64_t bytes_ = 0;
  std::deque<ReplRecord> records_;
};

class ReplicationLog final : public WriteLog {
 public:
  ReplicationLog(uint64_t backlog_bytes) : backlog_(backlog_bytes) {}

  // Puts `inner` (the journal, or null) under this log; offsets continue after `last_offset`.
  // REQUIRES: no concurrent mutations (startup).
  void SetInner(WriteLog* inner, uint64_t last_offset);

  // Whether new records go to the backlog (only a primary with replicas needs them). Turning
  // it on starts an empty backlog after the current offset.
  void SetRecording(bool on);

  StatusOr<uint64_t> LogPut(std::string_view key, std::string_view value,
                            std::string_view content_type, int64_t expire_at_ms) override;
  StatusOr<uint64_t> LogDelete(std::string_view key) override;
  StatusOr<uint64_t> LogFlush() override;

  // Waits up to `timeout` for records after `after`, then returns what Backlog::After returns
  // (possibly nothing).
  StatusOr<std::vector<ReplRecord>> Read(uint64_t after, size_t max_bytes, size_t max_records,
                                         std::chrono::milliseconds timeout);
  // Wakes every Read() (shutdown, role change).
  void WakeReaders();

  uint64_t last_offset() const;
  uint64_t backlog_bytes() const;

 private:
  StatusOr<uint64_t> Append(ReplRecord::Type type, std::string_view key, std::string_view value,
                            std::string_view content_type, int64_t expire_at_ms);

  mutable std::mutex mu_;
  std::condition_variable more_;
  WriteLog* inner_ = nullptr;
  uint64_t last_offset_ = 0;
  bool recording_ = false;
  uint64_t wake_generation_ = 0;
  Backlog backlog_;
};

}  // namespace kvcache::node
