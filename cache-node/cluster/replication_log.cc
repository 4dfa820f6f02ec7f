#include "cluster/replication_log.h"

#include <algorithm>

namespace kvcache::node {

void Backlog::Append(ReplRecord record) {
  last_offset_ = record.offset;
  bytes_ += record.Bytes();
  records_.push_back(std::move(record));
  while (!records_.empty() && bytes_ > max_bytes_) {
    bytes_ -= records_.front().Bytes();
    dropped_up_to_ = records_.front().offset;
    records_.pop_front();
  }
}

StatusOr<std::vector<ReplRecord>> Backlog::After(uint64_t after, size_t max_bytes,
                                                 size_t max_records) const {
  if (after < dropped_up_to_) {
    return OutOfRangeError("records after offset " + std::to_string(after) +
                           " are no longer in the backlog (it starts after " +
                           std::to_string(dropped_up_to_) + ")");
  }
  std::vector<ReplRecord> out;
  auto it = std::upper_bound(records_.begin(), records_.end(), after,
                             [](uint64_t offset, const ReplRecord& r) { return offset < r.offset; });
  size_t bytes = 0;
  for (; it != records_.end() && out.size() < max_records; ++it) {
    if (!out.empty() && bytes + it->Bytes() > max_bytes) break;
    bytes += it->Bytes();
    out.push_back(*it);
  }
  return out;
}

void Backlog::Reset(uint64_t base_offset) {
  records_.clear();
  bytes_ = 0;
  dropped_up_to_ = base_offset;
  last_offset_ = base_offset;
}

void ReplicationLog::SetInner(WriteLog* inner, uint64_t last_offset) {
  std::lock_guard lock(mu_);
  inner_ = inner;
  last_offset_ = last_offset;
  backlog_.Reset(last_offset);
}

void ReplicationLog::SetRecording(bool on) {
  std::lock_guard lock(mu_);
  if (on && !recording_) backlog_.Reset(last_offset_);
  recording_ = on;
  ++wake_generation_;
  more_.notify_all();
}

StatusOr<uint64_t> ReplicationLog::Append(ReplRecord::Type type, std::string_view key,
                                          std::string_view value,
                                          std::string_view content_type, int64_t expire_at_ms) {
  // One mutex around the journal append too, so offsets enter the backlog in order (the
  // journal's own append is a short memcpy under its own mutex).
  std::lock_guard lock(mu_);
  uint64_t offset = 0;
  if (inner_ != nullptr) {
    StatusOr<uint64_t> seq = type == ReplRecord::Type::kPut
                                 ? inner_->LogPut(key, value, content_type, expire_at_ms)
                             : type == ReplRecord::Type::kDelete ? inner_->LogDelete(key)
                                                                 : inner_->LogFlush();
    if (!seq.ok()) return seq.status();
    offset = *seq;
  } else {
    offset = last_offset_ + 1;
  }
  last_offset_ = offset;
  if (recording_) {
    ReplRecord record;
    record.type = type;
    record.offset = offset;
    record.expire_at_ms = expire_at_ms;
    record.key.assign(key);
    record.value.assign(value);
    record.content_type.assign(content_type);
    backlog_.Append(std::move(record));
    more_.notify_all();
  } else {
    backlog_.Reset(offset);  // empty: a reader behind this offset needs a full sync
  }
  return offset;
}

StatusOr<uint64_t> ReplicationLog::LogPut(std::string_view key, std::string_view value,
                                          std::string_view content_type, int64_t expire_at_ms) {
  return Append(ReplRecord::Type::kPut, key, value, content_type, expire_at_ms);
}

StatusOr<uint64_t> ReplicationLog::LogDelete(std::string_view key) {
  return Append(ReplRecord::Type::kDelete, key, {}, {}, 0);
}

StatusOr<uint64_t> ReplicationLog::LogFlush() {
  return Append(ReplRecord::Type::kFlush, {}, {}, {}, 0);
}

StatusOr<std::vector<ReplRecord>> ReplicationLog::Read(uint64_t after, size_t max_bytes,
                                                       size_t max_records,
                                                       std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  const uint64_t generation = wake_generation_;
  more_.wait_for(lock, timeout, [&] {
    return backlog_.last_offset() > after || wake_generation_ != generation;
  });
  return backlog_.After(after, max_bytes, max_records);
}

void ReplicationLog::WakeReaders() {
  std::lock_guard lock(mu_);
  ++wake_generation_;
  more_.notify_all();
}

uint64_t ReplicationLog::last_offset() const {
  std::lock_guard lock(mu_);
  return last_offset_;
}

uint64_t ReplicationLog::backlog_bytes() const {
  std::lock_guard lock(mu_);
  return backlog_.bytes();
}

}  // namespace kvcache::node
