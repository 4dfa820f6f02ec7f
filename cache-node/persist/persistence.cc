#include "persist/persistence.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "persist/record.h"

namespace kvcache::node {
namespace {

constexpr char kFormatFile[] = "FORMAT";
constexpr char kFormatPrefix[] = "kvcache-data-format ";

std::string SnapshotName(uint64_t seq) {
  char name[48];
  std::snprintf(name, sizeof(name), "snapshot-%020llu.snap", static_cast<unsigned long long>(seq));
  return name;
}

// Parses "<prefix><20 digits><suffix>"; nullopt for other names.
std::optional<uint64_t> SeqOf(const std::string& name, std::string_view prefix,
                              std::string_view suffix) {
  if (name.size() != prefix.size() + 20 + suffix.size()) return std::nullopt;
  if (name.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  if (name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) return std::nullopt;
  uint64_t seq = 0;
  for (size_t i = prefix.size(); i < prefix.size() + 20; ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    seq = seq * 10 + static_cast<uint64_t>(name[i] - '0');
  }
  return seq;
}

struct DirListing {
  std::vector<std::pair<uint64_t, std::string>> snapshots;  // newest first
  std::vector<std::pair<uint64_t, std::string>> segments;   // oldest first
  std::vector<std::string> temporaries;
};

StatusOr<DirListing> ListDataDir(Env& env, const std::string& dir) {
  StatusOr<std::vector<std::string>> names = env.ListDir(dir);
  if (!names.ok()) return names.status();
  DirListing listing;
  for (const std::string& name : *names) {
    if (auto seq = SeqOf(name, "snapshot-", ".snap")) {
      listing.snapshots.emplace_back(*seq, name);
    } else if (auto first = SeqOf(name, "log-", ".seg")) {
      listing.segments.emplace_back(*first, name);
    } else if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) {
      listing.temporaries.push_back(name);
    }
  }
  std::sort(listing.snapshots.rbegin(), listing.snapshots.rend());
  std::sort(listing.segments.begin(), listing.segments.end());
  return listing;
}

// `path`.corrupt, or .corrupt.N when that exists: a file set aside never replaces another.
std::string SetAsideName(Env& env, const std::string& path) {
  std::string name = path + ".corrupt";
  for (int n = 1; env.FileExists(name); ++n) name = path + ".corrupt." + std::to_string(n);
  return name;
}

double UnixNow() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

}  // namespace

Persistence::Persistence(Env& env, Store& store, const Clock& clock, PersistenceOptions options,
                         ProgressLog log)
    : env_(env), store_(store), clock_(clock), options_(std::move(options)), log_(std::move(log)) {
  if (!log_) log_ = [](const std::string&) {};
}

Persistence::~Persistence() {
  {
    std::lock_guard lock(bg_mu_);
    bg_stop_ = true;
  }
  bg_cv_.notify_all();
  if (bg_.joinable()) bg_.join();
  store_.SetWriteLog(nullptr);
}

Status Persistence::CheckFormat() {
  const std::string path = options_.dir + "/" + kFormatFile;
  StatusOr<std::string> text = env_.ReadFile(path);
  if (text.ok()) {
    if (text->rfind(kFormatPrefix, 0) != 0) {
      return FailedPreconditionError(path + " is not a kvcache FORMAT file; refusing to use " +
                                     options_.dir);
    }
    unsigned long version = std::strtoul(text->c_str() + std::strlen(kFormatPrefix), nullptr, 10);
    if (version > kFormatVersion) {
      return FailedPreconditionError(
          "data directory " + options_.dir + " has format version " + std::to_string(version) +
          ", written by a newer kvcache; this binary reads up to version " +
          std::to_string(kFormatVersion) + ". Nothing was changed: run a newer kvcache-node.");
    }
    return Status::Ok();
  }
  if (text.status().code() != StatusCode::kNotFound) return text.status();
  StatusOr<std::unique_ptr<WritableFile>> file = env_.NewWritableFile(path + ".tmp");
  if (!file.ok()) return file.status();
  Status st = (*file)->Append(std::string(kFormatPrefix) + std::to_string(kFormatVersion) + "\n");
  if (st.ok()) st = (*file)->Sync();
  if (st.ok()) st = (*file)->Close();
  if (st.ok()) st = env_.RenameFile(path + ".tmp", path);
  if (st.ok()) st = env_.SyncDir(options_.dir);
  return st;
}

void Persistence::ApplyPut(const Record& r, int64_t now_ms) {
  if (r.expire_at_ms != 0 && r.expire_at_ms <= now_ms) {
    // Expired by now: an older value of the key (from the snapshot) must go too.
    (void)store_.Delete(r.key);
    ++recovery_.expired_dropped;
    return;
  }
  PutRequest put{r.key, r.value, r.content_type, r.expire_at_ms, std::nullopt, std::nullopt};
  if (StatusOr<PutResult> done = store_.Put(put); !done.ok()) {
    log_("Dropped key during recovery: " + done.status().ToString());
  }
}

Status Persistence::LoadSnapshot(const std::string& name, uint64_t* entries) {
  // Streamed in chunks: a snapshot is about as large as the data, and reading it whole would
  // double the memory a restarting node needs.
  constexpr size_t kChunk = 8 << 20;
  const std::string path = options_.dir + "/" + name;
  StatusOr<std::string> head = env_.ReadFileRange(path, 0, kFileHeaderSize);
  if (!head.ok()) return head.status();
  if (Status st = CheckFileHeader(*head, kSnapshotMagic); !st.ok()) return st;
  const int64_t now = clock_.NowMs();
  uint64_t offset = kFileHeaderSize;  // file offset of buffer[0]
  std::string buffer;
  bool eof = false;
  uint64_t count = 0;
  auto corrupt = [&name](const std::string& why) {
    return InvalidArgumentError("snapshot " + name + " is truncated or corrupt (" + why + ")");
  };
  while (true) {
    if (!eof) {
      StatusOr<std::string> chunk = env_.ReadFileRange(path, offset + buffer.size(), kChunk);
      if (!chunk.ok()) return chunk.status();
      eof = chunk->size() < kChunk;
      buffer += *chunk;
    }
    RecordReader reader(buffer, 0);
    while (std::optional<Record> r = reader.Next()) {
      if (r->type == RecordType::kEnd) {
        uint64_t expected = 0;
        if (r->value.size() == 8) std::memcpy(&expected, r->value.data(), 8);
        if (expected != count || !eof || reader.offset() != buffer.size()) {
          return InvalidArgumentError("snapshot " + name + " has " + std::to_string(count) +
                                      " entries but its end record says " +
                                      std::to_string(expected) + " or data follows it");
        }
        *entries = count;
        return Status::Ok();
      }
      if (r->type != RecordType::kPut) {
        return InvalidArgumentError("snapshot " + name + " holds a non-put record");
      }
      ++count;
      ApplyPut(*r, now);
    }
    if (reader.corrupt() && !reader.incomplete()) return corrupt(reader.error());
    if (eof) return corrupt(reader.corrupt() ? reader.error() : "no end record");
    // Keep the partial record for the next chunk.
    offset += reader.offset();
    buffer.erase(0, reader.offset());
  }
}

Status Persistence::Recover() {
  const auto started = std::chrono::steady_clock::now();
  if (Status st = env_.CreateDir(options_.dir); !st.ok()) return st;
  if (Status st = CheckFormat(); !st.ok()) return st;
  StatusOr<DirListing> listing = ListDataDir(env_, options_.dir);
  if (!listing.ok()) return listing.status();
  for (const std::string& tmp : listing->temporaries) {
    log_("Removing unfinished file " + tmp);
    (void)env_.RemoveFile(options_.dir + "/" + tmp);
  }

  // 1. The newest snapshot that reads back whole.
  uint64_t replay_from = 0;
  for (const auto& [seq, name] : listing->snapshots) {
    uint64_t entries = 0;
    Status st = LoadSnapshot(name, &entries);
    if (st.code() == StatusCode::kFailedPrecondition) return st;  // newer format: touch nothing
    if (st.ok()) {
      replay_from = seq;
      recovery_.snapshot_seq = seq;
      recovery_.snapshot_entries = entries;
      log_("Loaded snapshot name=" + name + " entries=" + std::to_string(entries));
      break;
    }
    ++recovery_.skipped_snapshots;
    // Set it aside, so it no longer counts as one of the two snapshots kept.
    const std::string path = options_.dir + "/" + name;
    const std::string aside = SetAsideName(env_, path);
    log_("Skipping corrupt snapshot name=" + name + " error=" + st.message() +
         "; renamed to " + aside);
    if (Status renamed = env_.RenameFile(path, aside); !renamed.ok()) return renamed;
    if (StatusOr<uint64_t> cleared = store_.Flush(); !cleared.ok()) return cleared.status();
  }

  if (replay_from == 0 && !listing->segments.empty() && listing->segments.front().first > 1) {
    // No valid snapshot covers the records before the first segment: they are gone.
    ++recovery_.corrupt_records;
    log_("No valid snapshot and the log starts at seq " +
         std::to_string(listing->segments.front().first) +
         ": entries written before it are lost; recovering what the log holds");
  }

  // 2. The log from there on, stopping at the first bad record.
  const int64_t now = clock_.NowMs();
  uint64_t last_seq = replay_from > 0 ? replay_from - 1 : 0;
  auto progress_at = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  const auto& segments = listing->segments;
  for (size_t i = 0; i < segments.size(); ++i) {
    const auto& [first, name] = segments[i];
    // A segment entirely before the snapshot needs no reading.
    if (i + 1 < segments.size() && segments[i + 1].first <= replay_from) continue;
    const std::string path = options_.dir + "/" + name;
    StatusOr<std::string> data = env_.ReadFile(path);
    if (!data.ok()) return data.status();
    size_t bad_offset = std::string::npos;
    std::string why;
    if (Status st = CheckFileHeader(*data, kLogMagic); !st.ok()) {
      if (st.code() == StatusCode::kFailedPrecondition) return st;
      bad_offset = 0;
      why = st.message();
    } else {
      RecordReader reader(*data, kFileHeaderSize);
      while (std::optional<Record> r = reader.Next()) {
        if (r->seq < replay_from) continue;
        last_seq = std::max(last_seq, r->seq);
        ++recovery_.replayed_records;
        switch (r->type) {
          case RecordType::kPut: ApplyPut(*r, now); break;
          case RecordType::kDelete: (void)store_.Delete(r->key); break;
          case RecordType::kFlush: (void)store_.Flush(); break;
          case RecordType::kEnd: break;
        }
        if (std::chrono::steady_clock::now() >= progress_at) {
          log_("Replaying log segment=" + name + " records=" +
               std::to_string(recovery_.replayed_records));
          progress_at = std::chrono::steady_clock::now() + std::chrono::seconds(2);
        }
      }
      if (reader.corrupt()) {
        bad_offset = reader.offset();
        why = reader.error();
      }
    }
    if (bad_offset == std::string::npos) continue;
    // The first bad record ends recovery: cut it and everything after it off.
    ++recovery_.corrupt_records;
    log_("Found a torn or corrupt log record segment=" + name + " " + why + "; truncating it" +
         (i + 1 < segments.size() ? " and setting later segments aside as *.corrupt" : ""));
    if (bad_offset < kFileHeaderSize) {
      if (Status st = env_.RenameFile(path, SetAsideName(env_, path)); !st.ok()) return st;
    } else if (Status st = env_.TruncateFile(path, bad_offset); !st.ok()) {
      return st;
    } else if (Status synced = env_.SyncFile(path); !synced.ok()) {
      return synced;
    }
    for (size_t j = i + 1; j < segments.size(); ++j) {
      const std::string later = options_.dir + "/" + segments[j].second;
      if (Status st = env_.RenameFile(later, SetAsideName(env_, later)); !st.ok()) return st;
    }
    // Durable before any new write is acknowledged: a second crash must not bring the torn
    // tail or the set-aside segments back.
    if (Status st = env_.SyncDir(options_.dir); !st.ok()) return st;
    break;
  }

  // 3. Open the journal after the last good record and start logging.
  const uint64_t next_seq = std::max(last_seq + 1, replay_from == 0 ? uint64_t{1} : replay_from);
  journal_ = std::make_unique<Journal>(env_, options_.dir, options_.journal, next_seq);
  if (Status st = journal_->Open(); !st.ok()) return st;
  store_.SetWriteLog(journal_.get());
  recovery_.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  recovered_.store(true, std::memory_order_release);
  log_("Recovered keys=" + std::to_string(store_.Stats().keys) +
       " snapshot_seq=" + std::to_string(recovery_.snapshot_seq) +
       " replayed_records=" + std::to_string(recovery_.replayed_records) +
       " corrupt_records=" + std::to_string(recovery_.corrupt_records) +
       " next_seq=" + std::to_string(next_seq) + " seconds=" + std::to_string(recovery_.seconds));
  return Status::Ok();
}

Status Persistence::WaitDurable(uint64_t seq) {
  if (!journal_) return UnavailableError("persistence is not open");
  return journal_->WaitDurable(seq);
}

void Persistence::OnDurable(uint64_t seq, std::function<void(const Status&)> done) {
  if (!journal_) {
    done(UnavailableError("persistence is not open"));
    return;
  }
  journal_->OnDurable(seq, std::move(done));
}

void Persistence::OnWritten(uint64_t seq, std::function<void(const Status&)> done) {
  if (!journal_) {
    done(UnavailableError("persistence is not open"));
    return;
  }
  journal_->OnWritten(seq, std::move(done));
}

Status Persistence::Snapshot() {
  std::lock_guard snapshot_lock(snapshot_mu_);
  if (!journal_) return UnavailableError("persistence is not open");
  const auto started = std::chrono::steady_clock::now();
  auto fail = [this](Status st) {
    std::lock_guard lock(stats_mu_);
    ++snapshot_failures_;
    log_("Snapshot failed: " + st.ToString());
    return st;
  };
  StatusOr<uint64_t> seq = journal_->Rotate();
  if (!seq.ok()) return fail(seq.status());
  const std::string name = SnapshotName(*seq);
  const std::string tmp = options_.dir + "/" + name + ".tmp";
  StatusOr<std::unique_ptr<WritableFile>> file = env_.NewWritableFile(tmp);
  if (!file.ok()) return fail(file.status());
  std::string buffer = FileHeader(kSnapshotMagic);
  uint64_t count = 0;
  Status st;
  for (size_t shard = 0; shard < store_.shard_count() && st.ok(); ++shard) {
    // Copy one shard under its shared lock, write it without any lock.
    store_.VisitShard(shard, [&](std::string_view key, std::string_view value,
                                 std::string_view content_type, int64_t expire_at_ms) {
      EncodeRecord(Record{RecordType::kPut, 0, expire_at_ms, key, value, content_type}, &buffer);
      ++count;
    });
    if (buffer.size() >= (1 << 20)) {
      st = (*file)->Append(buffer);
      buffer.clear();
    }
  }
  std::string count_bytes(8, '\0');
  std::memcpy(count_bytes.data(), &count, 8);
  EncodeRecord(Record{RecordType::kEnd, 0, 0, {}, count_bytes, {}}, &buffer);
  if (st.ok()) st = (*file)->Append(buffer);
  if (st.ok()) st = (*file)->Sync();
  if (st.ok()) st = (*file)->Close();
  if (st.ok()) st = env_.RenameFile(tmp, options_.dir + "/" + name);
  if (st.ok()) st = env_.SyncDir(options_.dir);
  if (!st.ok()) {
    (void)env_.RemoveFile(tmp);
    return fail(st);
  }
  if (Status dropped = DropObsoleteFiles(); !dropped.ok()) {
    log_("Could not remove old files: " + dropped.ToString());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  {
    std::lock_guard lock(stats_mu_);
    ++snapshots_;
    last_snapshot_seconds_ = seconds;
    last_snapshot_unix_ = UnixNow();
    log_bytes_at_snapshot_ = journal_->Stats().bytes_written;
  }
  log_("Wrote snapshot name=" + name + " entries=" + std::to_string(count) +
       " seconds=" + std::to_string(seconds));
  return Status::Ok();
}

Status Persistence::DropObsoleteFiles() {
  StatusOr<DirListing> listing = ListDataDir(env_, options_.dir);
  if (!listing.ok()) return listing.status();
  const auto& snapshots = listing->snapshots;
  if (snapshots.empty()) return Status::Ok();
  // Keep the two newest snapshots and the log from the older of them on.
  const uint64_t keep_from = snapshots[std::min<size_t>(1, snapshots.size() - 1)].first;
  Status result;
  for (size_t i = 2; i < snapshots.size(); ++i) {
    Status st = env_.RemoveFile(options_.dir + "/" + snapshots[i].second);
    if (result.ok()) result = st;
  }
  const auto& segments = listing->segments;
  for (size_t i = 0; i + 1 < segments.size(); ++i) {
    if (segments[i + 1].first > keep_from) break;  // this one still holds records >= keep_from
    Status st = env_.RemoveFile(options_.dir + "/" + segments[i].second);
    if (result.ok()) result = st;
  }
  return result;
}

void Persistence::StartBackground() {
  bg_ = std::thread([this] { BackgroundLoop(); });
}

void Persistence::BackgroundLoop() {
  auto next_check = std::chrono::steady_clock::now();
  auto last_snapshot = std::chrono::steady_clock::now();
  std::unique_lock lock(bg_mu_);
  while (!bg_stop_) {
    bg_cv_.wait_until(lock, next_check, [this] { return bg_stop_; });
    if (bg_stop_) break;
    uint64_t grown = 0;
    {
      std::lock_guard stats_lock(stats_mu_);
      grown = journal_->Stats().bytes_written - log_bytes_at_snapshot_;
    }
    const auto now = std::chrono::steady_clock::now();
    const bool due = now - last_snapshot >= options_.snapshot_interval ||
                     (options_.snapshot_log_bytes != 0 && grown >= options_.snapshot_log_bytes);
    next_check = now + std::chrono::seconds(1);
    if (!due) continue;
    lock.unlock();
    Status st = Snapshot();
    lock.lock();
    if (st.ok()) {
      last_snapshot = std::chrono::steady_clock::now();
    } else {
      next_check = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    }
  }
}

Status Persistence::Shutdown() {
  {
    std::lock_guard lock(bg_mu_);
    bg_stop_ = true;
  }
  bg_cv_.notify_all();
  if (bg_.joinable()) bg_.join();
  if (!journal_) return Status::Ok();
  Status st;
  if (options_.snapshot_on_shutdown) st = Snapshot();
  store_.SetWriteLog(nullptr);
  Status closed = journal_->Close();
  return st.ok() ? closed : st;
}

PersistenceStats Persistence::Stats() const {
  PersistenceStats stats;
  // Recover() fills journal_ and recovery_ without locks; /metrics may ask meanwhile.
  if (!recovered_.load(std::memory_order_acquire)) return stats;
  stats.journal = journal_->Stats();
  std::lock_guard lock(stats_mu_);
  stats.recovery = recovery_;
  stats.snapshots = snapshots_;
  stats.snapshot_failures = snapshot_failures_;
  stats.last_snapshot_seconds = last_snapshot_seconds_;
  stats.last_snapshot_unix = last_snapshot_unix_;
  return stats;
}

}  // namespace kvcache::node
