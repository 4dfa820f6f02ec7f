// Persistence: makes a Store survive crashes and restarts in its data directory.
//
// Files in the data directory:
//   FORMAT                       "kvcache-data-format 1": refuses directories of newer formats
//   log-<first seq>.seg          the journal (see journal.h), one sequence across segments
//   snapshot-<seq>.snap          every live entry, taken without stopping writers
//   *.tmp, *.corrupt             a snapshot being written; log segments skipped by recovery
//
// A snapshot named <S> is started right after the journal rotates to a segment beginning at
// S, so every record before S is in it or older; it is "fuzzy" (writes continue while shards
// are copied one by one), and replaying the log from S over it gives the exact final state,
// because replaying puts, deletes and flushes in order is idempotent. The two newest snapshots
// are kept, and the log from the older one on, so a corrupt newest snapshot falls back to the
// previous one.
//
// Recovery = newest valid snapshot + log replay, stopping at the first bad record: a torn tail
// is truncated (counted and logged), later segments are renamed *.corrupt, never deleted.
//
// Thread safety: Recover() once, before serving; the rest may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "persist/env.h"
#include "persist/journal.h"
#include "store/store.h"

namespace kvcache::node {

struct PersistenceOptions {
  std::string dir;
  JournalOptions journal;
  // A snapshot is taken when this much time has passed since the last one...
  std::chrono::seconds snapshot_interval{300};
  // ...or the log has grown by this many bytes (0: no size trigger).
  uint64_t snapshot_log_bytes = 256ull << 20;
  bool snapshot_on_shutdown = false;
};

struct RecoveryStats {
  uint64_t snapshot_seq = 0;          // 0: no snapshot used
  uint64_t snapshot_entries = 0;
  uint64_t skipped_snapshots = 0;     // corrupt ones passed over
  uint64_t replayed_records = 0;
  uint64_t corrupt_records = 0;       // torn or corrupt records found (at most one per run)
  uint64_t expired_dropped = 0;
  double seconds = 0;
};

struct PersistenceStats {
  JournalStats journal;
  RecoveryStats recovery;
  uint64_t snapshots = 0;
  uint64_t snapshot_failures = 0;
  double last_snapshot_seconds = 0;
  double last_snapshot_unix = 0;  // 0: none yet in this process
};

// Receives progress lines ("Replaying log segment=... records=...").
using ProgressLog = std::function<void(const std::string&)>;

class Persistence {
 public:
  Persistence(Env& env, Store& store, const Clock& clock, PersistenceOptions options,
              ProgressLog log);
  ~Persistence();

  // Loads the data directory into the (empty) store, opens the journal and attaches it as the
  // store's WriteLog. Returns FailedPrecondition for a directory written by a newer format
  // (nothing is changed then), or the I/O error that stopped it.
  Status Recover();

  // See Journal::WaitDurable and Journal::OnDurable.
  Status WaitDurable(uint64_t seq);
  void OnDurable(uint64_t seq, std::function<void(const Status&)> done);
  void OnWritten(uint64_t seq, std::function<void(const Status&)> done);

  // Takes a snapshot now and drops files no longer needed. One at a time.
  Status Snapshot();

  // Starts the thread that takes snapshots on the interval and log-size triggers.
  void StartBackground();

  // Stops the background thread, takes the final snapshot if configured, then writes and
  // fsyncs the log. REQUIRES: no more writes (the server has stopped).
  Status Shutdown();

  PersistenceStats Stats() const;
  FsyncMode fsync_mode() const { return options_.journal.fsync; }

 private:
  Status CheckFormat();
  Status LoadSnapshot(const std::string& name, uint64_t* entries);
  // Recovery: puts a snapshot or log record into the store, or drops it if it has expired.
  void ApplyPut(const struct Record& record, int64_t now_ms);
  Status DropObsoleteFiles();
  void BackgroundLoop();

  Env& env_;
  Store& store_;
  const Clock& clock_;
  const PersistenceOptions options_;
  ProgressLog log_;
  std::unique_ptr<Journal> journal_;
  std::atomic<bool> recovered_{false};

  std::mutex snapshot_mu_;  // one snapshot at a time
  mutable std::mutex stats_mu_;
  RecoveryStats recovery_;
  uint64_t snapshots_ = 0;
  uint64_t snapshot_failures_ = 0;
  double last_snapshot_seconds_ = 0;
  double last_snapshot_unix_ = 0;
  uint64_t log_bytes_at_snapshot_ = 0;

  std::mutex bg_mu_;
  std::condition_variable bg_cv_;
  bool bg_stop_ = false;
  std::thread bg_;
};

}  // namespace kvcache::node
