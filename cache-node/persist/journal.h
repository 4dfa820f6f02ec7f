// Journal: the append-only log of mutations, in segment files "log-<first seq>.seg" of the
// data directory. It is the store's WriteLog.
//
// Appends only copy the encoded record into a memory buffer (under a short mutex: the log is
// one sequence); a flusher thread writes the buffer and, depending on the fsync mode, calls
// fdatasync:
//   always    after every batch, and writers wait for it (WaitDurable): group commit, one
//             fdatasync covers every record appended while the previous one ran;
//   everysec  at most once a second; writers do not wait;
//   no        never; the kernel writes back when it likes.
// When a write fails (disk full, I/O error) the journal becomes failed: the partial write is cut
// off, new appends are refused with the error (so clients get 507/503 and nothing changes), the
// flusher retries every 100 ms, and the first successful retry clears the failure. A failed
// fdatasync (or a partial write that cannot be cut off) is not retried: the kernel may have
// dropped the data and would not say so twice, so the log refuses writes until a restart
// recovers from what is really on disk. Nothing unsynced is ever acknowledged.
//
// Thread safety: all public methods are thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "persist/env.h"
#include "store/write_log.h"

namespace kvcache::node {

enum class FsyncMode { kAlways, kEverySec, kNo };
std::string_view FsyncModeName(FsyncMode mode);
StatusOr<FsyncMode> ParseFsyncMode(std::string_view name);

struct JournalOptions {
  FsyncMode fsync = FsyncMode::kEverySec;
  uint64_t segment_bytes = 64 << 20;  // a new segment starts after this many bytes
};

struct JournalStats {
  uint64_t bytes_written = 0;
  uint64_t records = 0;
  uint64_t fsyncs = 0;
  uint64_t write_errors = 0;
  double fsync_seconds_sum = 0;
  // fsync latency histogram (cumulative counts per bucket upper bound in kFsyncBuckets).
  uint64_t fsync_buckets[12] = {};
  bool failed = false;
  uint64_t last_seq = 0;
  uint64_t durable_seq = 0;
};
inline constexpr double kFsyncBuckets[12] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                             0.01,   0.025,   0.05,   0.1,   0.5,    1};

std::string SegmentName(uint64_t first_seq);

class Journal final : public WriteLog {
 public:
  // The first record appended gets `next_seq`.
  Journal(Env& env, std::string dir, JournalOptions options, uint64_t next_seq);
  ~Journal() override;

  // Creates the first segment and starts the flusher.
  Status Open();

  StatusOr<uint64_t> LogPut(std::string_view key, std::string_view value,
                            std::string_view content_type, int64_t expire_at_ms) override;
  StatusOr<uint64_t> LogDelete(std::string_view key) override;
  StatusOr<uint64_t> LogFlush() override;

  // Under fsync=always: blocks until record `seq` is on disk, or returns the journal's error.
  // Under other modes returns at once (OK unless the journal is failed).
  Status WaitDurable(uint64_t seq);

  // Calls `done` once record `seq` is durable (OK) or the journal has failed (its error): at
  // once, on the calling thread, when that is already known or fsync is not "always";
  // otherwise later on the flusher thread, so `done` must be quick and must not call back
  // into the journal.
  void OnDurable(uint64_t seq, std::function<void(const Status&)> done);

  // Like OnDurable, but under fsync everysec/no calls `done` once record `seq` has been written
  // to the file (the kernel holds it: a crash of this process cannot lose it, a crash of the
  // machine can); under fsync=always it is OnDurable. Sync replication acknowledges writes
  // only after this, so a primary killed and restarted at once still has every write its
  // replicas acknowledged (otherwise its new term's full sync would erase them there too).
  void OnWritten(uint64_t seq, std::function<void(const Status&)> done);

  // Writes and fsyncs everything appended so far, then starts a new segment. Returns the first
  // sequence number of the new segment: every record before it is in an older segment.
  StatusOr<uint64_t> Rotate();

  // Writes and fsyncs everything appended so far (for shutdown). Stops the flusher.
  Status Close();

  JournalStats Stats() const;
  FsyncMode fsync_mode() const { return options_.fsync; }

 private:
  StatusOr<uint64_t> Append(const struct Record& record);
  void FlusherLoop();
  // REQUIRES: mu_ held. Writes pending_ (and fsyncs if asked), dropping and retaking mu_.
  Status FlushLocked(std::unique_lock<std::mutex>& lock, bool sync);
  Status OpenSegmentLocked(uint64_t first_seq);
  // REQUIRES: mu_ held. Removes the callbacks that can be answered now (all when `closing`).
  std::vector<std::pair<std::function<void(const Status&)>, Status>> TakeAnsweredLocked(
      bool closing);

  Env& env_;
  const std::string dir_;
  const JournalOptions options_;

  mutable std::mutex mu_;
  std::condition_variable work_cv_;     // flusher waits here
  std::condition_variable durable_cv_;  // WaitDurable waits here
  std::string pending_;                 // encoded records not yet handed to write()
  uint64_t next_seq_;
  uint64_t last_seq_;         // last sequence appended
  uint64_t written_seq_;      // last sequence written to the file
  uint64_t durable_seq_;      // last sequence fsynced (or written, under fsync=no)
  bool flushing_ = false;     // a write is in progress without mu_
  Status error_;              // sticky write failure, cleared by a successful retry
  bool fatal_ = false;        // a failure no retry can repair (fdatasync): until restart
  bool stop_ = false;
  int durable_waiters_ = 0;
  std::multimap<uint64_t, std::function<void(const Status&)>> on_durable_;
  std::multimap<uint64_t, std::function<void(const Status&)>> on_written_;
  std::unique_ptr<WritableFile> file_;
  uint64_t file_size_ = 0;
  std::chrono::steady_clock::time_point last_sync_;
  JournalStats stats_;
  std::thread flusher_;
};

}  // namespace kvcache::node
