#include "persist/journal.h"

#include <cstdio>

#include "persist/record.h"

namespace kvcache::node {
namespace {

constexpr size_t kWakeFlusherBytes = 1 << 20;
constexpr auto kFlushInterval = std::chrono::milliseconds(10);
constexpr auto kRetryInterval = std::chrono::milliseconds(100);

}  // namespace

std::string_view FsyncModeName(FsyncMode mode) {
  switch (mode) {
    case FsyncMode::kAlways: return "always";
    case FsyncMode::kEverySec: return "everysec";
    case FsyncMode::kNo: return "no";
  }
  return "unknown";
}

StatusOr<FsyncMode> ParseFsyncMode(std::string_view name) {
  if (name == "always") return FsyncMode::kAlways;
  if (name == "everysec") return FsyncMode::kEverySec;
  if (name == "no") return FsyncMode::kNo;
  return InvalidArgumentError("fsync mode must be always, everysec or no");
}

std::string SegmentName(uint64_t first_seq) {
  char name[48];
  std::snprintf(name, sizeof(name), "log-%020llu.seg", static_cast<unsigned long long>(first_seq));
  return name;
}

Journal::Journal(Env& env, std::string dir, JournalOptions options, uint64_t next_seq)
    : env_(env),
      dir_(std::move(dir)),
      options_(options),
      next_seq_(next_seq),
      last_seq_(next_seq - 1),
      written_seq_(next_seq - 1),
      durable_seq_(next_seq - 1),
      last_sync_(std::chrono::steady_clock::now()) {}

Journal::~Journal() { (void)Close(); }

Status Journal::Open() {
  std::unique_lock lock(mu_);
  if (Status st = OpenSegmentLocked(next_seq_); !st.ok()) return st;
  flusher_ = std::thread([this] { FlusherLoop(); });
  return Status::Ok();
}

Status Journal::OpenSegmentLocked(uint64_t first_seq) {
  StatusOr<std::unique_ptr<WritableFile>> file =
      env_.NewWritableFile(dir_ + "/" + SegmentName(first_seq));
  if (!file.ok()) return file.status();
  std::string header = FileHeader(kLogMagic);
  if (Status st = (*file)->Append(header); !st.ok()) return st;
  if (Status st = env_.SyncDir(dir_); !st.ok()) return st;
  if (file_) (void)file_->Close();
  file_ = std::move(*file);
  file_size_ = header.size();
  return Status::Ok();
}

StatusOr<uint64_t> Journal::Append(const Record& record) {
  std::lock_guard lock(mu_);
  if (!error_.ok()) return error_;
  if (stop_) return UnavailableError("journal is closed");
  Record numbered = record;
  numbered.seq = next_seq_++;
  EncodeRecord(numbered, &pending_);
  last_seq_ = numbered.seq;
  ++stats_.records;
  if (options_.fsync == FsyncMode::kAlways || pending_.size() >= kWakeFlusherBytes) {
    work_cv_.notify_one();
  }
  return numbered.seq;
}

StatusOr<uint64_t> Journal::LogPut(std::string_view key, std::string_view value,
                                   std::string_view content_type, int64_t expire_at_ms) {
  return Append(Record{RecordType::kPut, 0, expire_at_ms, key, value, content_type});
}

StatusOr<uint64_t> Journal::LogDelete(std::string_view key) {
  return Append(Record{RecordType::kDelete, 0, 0, key, {}, {}});
}

StatusOr<uint64_t> Journal::LogFlush() { return Append(Record{RecordType::kFlush, 0, 0, {}, {}, {}}); }

Status Journal::FlushLocked(std::unique_lock<std::mutex>& lock, bool sync) {
  while (flushing_) durable_cv_.wait(lock);
  if (fatal_ || (pending_.empty() && (!sync || durable_seq_ == written_seq_))) return error_;
  flushing_ = true;
  std::string batch;
  batch.swap(pending_);
  const uint64_t upto = last_seq_;
  WritableFile* file = file_.get();
  const uint64_t size_before = file_size_;
  lock.unlock();

  Status written = batch.empty() ? Status::Ok() : file->Append(batch);
  bool fatal = false;
  if (!written.ok()) {
    // Cut off whatever part of the batch reached the file, so the retry does not leave a
    // torn record in the middle of the log. If even that fails, a retry would append after
    // torn bytes: give up on this log until restart.
    if (Status cut = file->Truncate(size_before); !cut.ok()) {
      fatal = true;
      written = UnavailableError("log write failed (" + written.message() +
                                 ") and the partial write could not be cut off (" +
                                 cut.message() + "); restart the node");
    }
  }
  Status synced;
  double sync_seconds = 0;
  if (written.ok() && sync) {
    auto start = std::chrono::steady_clock::now();
    synced = file->Sync();
    sync_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }

  lock.lock();
  flushing_ = false;
  if (written.ok()) {
    file_size_ += batch.size();
    stats_.bytes_written += batch.size();
    written_seq_ = upto;
    if (options_.fsync == FsyncMode::kNo) durable_seq_ = upto;
    if (sync && synced.ok()) {
      durable_seq_ = upto;
      last_sync_ = std::chrono::steady_clock::now();
      ++stats_.fsyncs;
      stats_.fsync_seconds_sum += sync_seconds;
      for (size_t b = 0; b < std::size(kFsyncBuckets); ++b) {
        if (sync_seconds <= kFsyncBuckets[b]) ++stats_.fsync_buckets[b];
      }
    }
    if (!synced.ok()) {
      // After a failed fdatasync Linux may have dropped the dirty pages and reports the error
      // only once, so a retry could "succeed" over a hole. Nothing after durable_seq_ is
      // acknowledged, ever: the log stays failed until the node restarts and recovers.
      fatal_ = true;
      error_ = UnavailableError("log fdatasync failed (" + synced.message() +
                                "); writes are refused until the node restarts");
      ++stats_.write_errors;
    } else {
      error_ = Status::Ok();
    }
    if (synced.ok() && file_size_ >= options_.segment_bytes) {
      // A failed rotation is retried after the next batch; the current segment stays usable.
      Status rotated = file->Sync();
      if (rotated.ok()) rotated = OpenSegmentLocked(written_seq_ + 1);
      if (!rotated.ok()) ++stats_.write_errors;
    }
  } else {
    // Keep the batch, ahead of anything appended meanwhile, for the retry.
    batch += pending_;
    pending_.swap(batch);
    error_ = written;
    if (fatal) fatal_ = true;
    ++stats_.write_errors;
  }
  durable_cv_.notify_all();
  return error_;
}

std::vector<std::pair<std::function<void(const Status&)>, Status>> Journal::TakeAnsweredLocked(
    bool closing) {
  std::vector<std::pair<std::function<void(const Status&)>, Status>> answered;
  // Durable ones are answered OK; the rest only when the journal failed or is closing.
  auto end = error_.ok() && !closing ? on_durable_.upper_bound(durable_seq_) : on_durable_.end();
  const Status not_durable =
      !error_.ok() ? error_ : UnavailableError("node stopped before the write was durable");
  for (auto it = on_durable_.begin(); it != end; ++it) {
    answered.emplace_back(std::move(it->second),
                          it->first <= durable_seq_ ? Status::Ok() : not_durable);
  }
  on_durable_.erase(on_durable_.begin(), end);
  auto written_end =
      error_.ok() && !closing ? on_written_.upper_bound(written_seq_) : on_written_.end();
  for (auto it = on_written_.begin(); it != written_end; ++it) {
    answered.emplace_back(std::move(it->second),
                          it->first <= written_seq_ ? Status::Ok() : not_durable);
  }
  on_written_.erase(on_written_.begin(), written_end);
  return answered;
}

void Journal::OnDurable(uint64_t seq, std::function<void(const Status&)> done) {
  Status now;
  {
    std::lock_guard lock(mu_);
    if (options_.fsync == FsyncMode::kAlways && seq > durable_seq_ && error_.ok()) {
      on_durable_.emplace(seq, std::move(done));
      work_cv_.notify_one();
      return;
    }
    now = options_.fsync == FsyncMode::kAlways && seq <= durable_seq_ ? Status::Ok() : error_;
  }
  done(now);
}

void Journal::OnWritten(uint64_t seq, std::function<void(const Status&)> done) {
  if (options_.fsync == FsyncMode::kAlways) {
    OnDurable(seq, std::move(done));
    return;
  }
  Status now;
  {
    std::lock_guard lock(mu_);
    if (seq > written_seq_ && error_.ok()) {
      on_written_.emplace(seq, std::move(done));
      work_cv_.notify_one();
      return;
    }
    now = error_;
  }
  done(now);
}

void Journal::FlusherLoop() {
  std::unique_lock lock(mu_);
  while (!stop_) {
    const bool always = options_.fsync == FsyncMode::kAlways;
    work_cv_.wait_for(lock, error_.ok() ? kFlushInterval : kRetryInterval, [&] {
      return stop_ || (error_.ok() && ((always && !pending_.empty()) ||
                                        pending_.size() >= kWakeFlusherBytes)) ||
             (!on_durable_.empty() && on_durable_.begin()->first <= durable_seq_) ||
             (error_.ok() && !on_written_.empty());
    });
    if (stop_) break;
    bool sync = always;
    if (options_.fsync == FsyncMode::kEverySec &&
        std::chrono::steady_clock::now() - last_sync_ >= std::chrono::seconds(1)) {
      sync = true;
    }
    if (fatal_) continue;  // see FlushLocked: nothing more is written until restart
    (void)FlushLocked(lock, sync);
    if (!on_durable_.empty() || !on_written_.empty()) {
      auto answered = TakeAnsweredLocked(/*closing=*/false);
      lock.unlock();
      for (auto& [done, status] : answered) done(status);
      lock.lock();
    }
  }
}

Status Journal::WaitDurable(uint64_t seq) {
  std::unique_lock lock(mu_);
  if (options_.fsync != FsyncMode::kAlways) return error_;
  work_cv_.notify_one();
  while (durable_seq_ < seq) {
    if (!error_.ok()) return error_;
    durable_cv_.wait(lock);
  }
  return Status::Ok();
}

StatusOr<uint64_t> Journal::Rotate() {
  std::unique_lock lock(mu_);
  if (Status st = FlushLocked(lock, true); !st.ok()) return st;
  // Records appended while FlushLocked wrote are still in pending_: they start the new segment.
  const uint64_t first = written_seq_ + 1;
  // On failure the current segment stays in use (nothing is lost); the snapshot is retried.
  if (Status st = OpenSegmentLocked(first); !st.ok()) return st;
  return first;
}

Status Journal::Close() {
  std::unique_lock lock(mu_);
  if (stop_ && !flusher_.joinable()) return error_;
  stop_ = true;
  work_cv_.notify_all();
  Status st = file_ ? FlushLocked(lock, options_.fsync != FsyncMode::kNo) : Status::Ok();
  lock.unlock();
  if (flusher_.joinable()) flusher_.join();
  lock.lock();
  if (file_) {
    Status closed = file_->Close();
    if (st.ok()) st = closed;
    file_.reset();
  }
  auto answered = TakeAnsweredLocked(/*closing=*/true);
  lock.unlock();
  for (auto& [done, status] : answered) done(status);
  return st;
}

JournalStats Journal::Stats() const {
  std::lock_guard lock(mu_);
  JournalStats stats = stats_;
  stats.failed = !error_.ok();
  stats.last_seq = last_seq_;
  stats.durable_seq = durable_seq_;
  return stats;
}

}  // namespace kvcache::node
