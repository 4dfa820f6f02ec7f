#include <gtest/gtest.h>

#include <filesystem>
#include <future>
#include <stdlib.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "persist/env.h"
#include "persist/journal.h"
#include "persist/persistence.h"
#include "persist/record.h"

namespace kvcache::node {
namespace {

namespace fs = std::filesystem;

// A fresh directory under the test's temp dir, removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "kvcache-persist-XXXXXX").string();
    path_ = mkdtemp(pattern.data());
  }
  ~TempDir() { fs::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::vector<std::string> Files(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

// Full paths of the files in `dir` whose names end with `suffix`, sorted.
std::vector<std::string> PathsEndingWith(const std::string& dir, std::string_view suffix) {
  std::vector<std::string> paths;
  for (const auto& f : Files(dir)) {
    if (f.ends_with(suffix)) paths.push_back(dir + "/" + f);
  }
  return paths;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void WriteAll(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << data;
}

// Awaits the flusher's retry clearing a journal failure (it retries every 100 ms).
template <typename StatsFn>
bool AwaitRecovered(StatsFn failed) {
  for (int i = 0; i < 500; ++i) {
    if (!failed()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

PutRequest Put(std::string_view key, std::string_view value) {
  PutRequest p;
  p.key = key;
  p.value = value;
  return p;
}

// ---------------------------------------------------------------------------------- records

TEST(Record, RoundTripsEveryField) {
  std::string buf;
  EncodeRecord({RecordType::kPut, 42, 1234, "key", std::string("v\0v", 3), "text/x"}, &buf);
  EncodeRecord({RecordType::kDelete, 43, 0, "key", {}, {}}, &buf);
  RecordReader reader(buf, 0);
  auto a = reader.Next();
  ASSERT_TRUE(a);
  EXPECT_EQ(a->type, RecordType::kPut);
  EXPECT_EQ(a->seq, 42u);
  EXPECT_EQ(a->expire_at_ms, 1234);
  EXPECT_EQ(a->key, "key");
  EXPECT_EQ(a->value, std::string("v\0v", 3));
  EXPECT_EQ(a->content_type, "text/x");
  auto b = reader.Next();
  ASSERT_TRUE(b);
  EXPECT_EQ(b->type, RecordType::kDelete);
  EXPECT_FALSE(reader.Next());
  EXPECT_FALSE(reader.corrupt());
}

TEST(Record, EveryFlippedByteIsDetected) {
  std::string good;
  EncodeRecord({RecordType::kPut, 7, 0, "some-key", "some-value", ""}, &good);
  for (size_t i = 0; i < good.size(); ++i) {
    std::string bad = good;
    bad[i] ^= 0x40;
    RecordReader reader(bad, 0);
    EXPECT_FALSE(reader.Next()) << "flip at " << i;
    EXPECT_TRUE(reader.corrupt()) << "flip at " << i;
    EXPECT_EQ(reader.offset(), 0u);
  }
}

TEST(Record, TruncatedTailIsTornAtTheRecordStart) {
  std::string buf;
  EncodeRecord({RecordType::kPut, 1, 0, "a", "1", ""}, &buf);
  const size_t first = buf.size();
  EncodeRecord({RecordType::kPut, 2, 0, "b", "2", ""}, &buf);
  for (size_t cut = first + 1; cut < buf.size(); ++cut) {
    RecordReader reader(std::string_view(buf).substr(0, cut), 0);
    EXPECT_TRUE(reader.Next());
    EXPECT_FALSE(reader.Next());
    EXPECT_TRUE(reader.corrupt());
    EXPECT_EQ(reader.offset(), first);
  }
}

TEST(Record, Crc32cMatchesKnownVector) {
  // RFC 3720 B.4: 32 bytes of zeros.
  EXPECT_EQ(Crc32c(std::string(32, '\0')), 0x8a9136aau);
  EXPECT_EQ(Crc32c("123456789"), 0xe3069283u);
}

TEST(Record, NewerFormatIsRefusedWithAClearMessage) {
  std::string header = FileHeader(kLogMagic);
  header[8] = 9;
  Status st = CheckFileHeader(header, kLogMagic);
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(st.message().find("newer"), std::string::npos);
}

// ---------------------------------------------------------------------------------- journal

TEST(Journal, GroupCommitSharesFsyncs) {
  TempDir dir;
  Journal journal(Env::Posix(), dir.path(), {FsyncMode::kAlways, 64 << 20}, 1);
  ASSERT_TRUE(journal.Open().ok());
  constexpr int kThreads = 8, kWrites = 100;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kWrites; ++i) {
        auto seq = journal.LogPut("k", "v", "", 0);
        if (!seq.ok() || !journal.WaitDurable(*seq).ok()) failures++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  JournalStats stats = journal.Stats();
  EXPECT_EQ(stats.records, uint64_t{kThreads * kWrites});
  EXPECT_EQ(stats.durable_seq, uint64_t{kThreads * kWrites});
  EXPECT_LT(stats.fsyncs, uint64_t{kThreads * kWrites});  // shared, not one per write
  ASSERT_TRUE(journal.Close().ok());
}

TEST(Journal, DiskFullRefusesWritesThenRecoversByItself) {
  TempDir dir;
  FaultInjectionEnv env(Env::Posix());
  Journal journal(env, dir.path(), {FsyncMode::kAlways, 64 << 20}, 1);
  ASSERT_TRUE(journal.Open().ok());
  auto first = journal.LogPut("a", "1", "", 0);
  ASSERT_TRUE(first.ok() && journal.WaitDurable(*first).ok());

  env.SetWriteFault(FaultInjectionEnv::Fault::kShortWriteThenNoSpace);
  auto second = journal.LogPut("b", "2", "", 0);
  ASSERT_TRUE(second.ok());
  Status waited = journal.WaitDurable(*second);
  EXPECT_EQ(waited.code(), StatusCode::kResourceExhausted) << waited.ToString();
  // While failed, new writes are refused at once and change nothing.
  EXPECT_EQ(journal.LogPut("c", "3", "", 0).status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(journal.Stats().failed);

  env.SetWriteFault(FaultInjectionEnv::Fault::kNone);
  // The flusher's retry writes "b" and clears the failure.
  EXPECT_TRUE(AwaitRecovered([&] { return journal.Stats().failed; }));
  auto third = journal.LogPut("d", "4", "", 0);
  ASSERT_TRUE(third.ok());
  EXPECT_TRUE(journal.WaitDurable(*third).ok());
  ASSERT_TRUE(journal.Close().ok());

  // The log holds a, b, d in order with no torn record from the short write.
  std::string data = ReadAll(dir.path() + "/" + SegmentName(1));
  RecordReader reader(data, kFileHeaderSize);
  std::vector<std::string> keys;
  while (auto r = reader.Next()) keys.emplace_back(r->key);
  EXPECT_FALSE(reader.corrupt()) << reader.error();
  EXPECT_EQ(keys, (std::vector<std::string>{"a", "b", "d"}));
}

TEST(Journal, FsyncFailureRefusesWritesUntilRestart) {
  TempDir dir;
  FaultInjectionEnv env(Env::Posix());
  Journal journal(env, dir.path(), {FsyncMode::kAlways, 64 << 20}, 1);
  ASSERT_TRUE(journal.Open().ok());
  auto first = journal.LogPut("a", "1", "", 0);
  ASSERT_TRUE(first.ok() && journal.WaitDurable(*first).ok());
  env.SetSyncFault(true);
  auto seq = journal.LogPut("b", "2", "", 0);
  ASSERT_TRUE(seq.ok());
  EXPECT_EQ(journal.WaitDurable(*seq).code(), StatusCode::kUnavailable);
  env.SetSyncFault(false);
  // A retried fdatasync could "succeed" over pages the kernel dropped: never acknowledge.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_TRUE(journal.Stats().failed);
  EXPECT_EQ(journal.WaitDurable(*seq).code(), StatusCode::kUnavailable);
  EXPECT_EQ(journal.LogPut("c", "3", "", 0).status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(journal.Stats().durable_seq, *first);
  (void)journal.Close();
}

TEST(Journal, CloseAnswersEveryWaitingWrite) {
  TempDir dir;
  for (int round = 0; round < 5; ++round) {
    Journal journal(Env::Posix(), dir.path(), {FsyncMode::kAlways, 64 << 20}, 1 + round * 100000);
    ASSERT_TRUE(journal.Open().ok());
    std::atomic<int> answered{0}, failed{0};
    std::atomic<bool> stop{false};
    std::vector<std::thread> writers;
    for (int t = 0; t < 4; ++t) {
      writers.emplace_back([&] {
        while (!stop) {
          auto seq = journal.LogPut("k", "v", "", 0);
          if (!seq.ok()) break;
          journal.OnDurable(*seq, [&](const Status& st) {
            answered++;
            if (!st.ok()) failed++;
          });
        }
      });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    stop = true;
    for (auto& w : writers) w.join();
    ASSERT_TRUE(journal.Close().ok());
    const JournalStats stats = journal.Stats();
    EXPECT_EQ(static_cast<uint64_t>(answered.load()), stats.records);
    EXPECT_EQ(failed.load(), 0);  // Close made them all durable
  }
}

// Sync replication acknowledges after OnWritten: under everysec the record must already be in
// the file (a SIGKILL right after the ack keeps it), without waiting for the next fsync.
TEST(Journal, OnWrittenAnswersOnceTheRecordIsInTheFile) {
  TempDir dir;
  Journal journal(Env::Posix(), dir.path(), {FsyncMode::kEverySec, 64 << 20}, 1);
  ASSERT_TRUE(journal.Open().ok());
  auto seq = journal.LogPut("key", std::string(100, 'v'), "", 0);
  ASSERT_TRUE(seq.ok());
  std::promise<Status> written;
  journal.OnWritten(*seq, [&](const Status& st) { written.set_value(st); });
  auto answered = written.get_future();
  ASSERT_EQ(answered.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_TRUE(answered.get().ok());
  EXPECT_GE(journal.Stats().bytes_written, 100u);
  std::error_code ec;
  EXPECT_GE(std::filesystem::file_size(std::filesystem::path(dir.path()) / SegmentName(1), ec),
            100u);
  ASSERT_TRUE(journal.Close().ok());
}

TEST(Journal, RotatesSegmentsBySize) {
  TempDir dir;
  Journal journal(Env::Posix(), dir.path(), {FsyncMode::kAlways, 4096}, 1);
  ASSERT_TRUE(journal.Open().ok());
  for (int i = 0; i < 200; ++i) {
    auto seq = journal.LogPut("key", std::string(100, 'v'), "", 0);
    ASSERT_TRUE(seq.ok() && journal.WaitDurable(*seq).ok());
  }
  ASSERT_TRUE(journal.Close().ok());
  EXPECT_GT(Files(dir.path()).size(), 3u);
}

// ------------------------------------------------------------------------------- persistence

class PersistenceTest : public ::testing::Test {
 protected:
  PersistenceOptions Options(FsyncMode mode = FsyncMode::kAlways) {
    PersistenceOptions o;
    o.dir = dir_.path();
    o.journal.fsync = mode;
    o.snapshot_interval = std::chrono::hours(1);
    o.snapshot_log_bytes = 0;
    return o;
  }
  // A store + persistence pair, recovered from the directory.
  struct Node {
    Node(Env& env, const Clock& clock, PersistenceOptions options)
        : store({}, clock), persistence(env, store, clock, std::move(options), nullptr) {}
    Store store;
    Persistence persistence;
  };
  std::unique_ptr<Node> Open(Env& env = Env::Posix(), FsyncMode mode = FsyncMode::kAlways) {
    auto node = std::make_unique<Node>(env, clock_, Options(mode));
    Status st = node->persistence.Recover();
    EXPECT_TRUE(st.ok()) << st.ToString();
    return node;
  }
  void Write(Node& node, std::string_view key, std::string_view value) {
    auto put = node.store.Put(Put(key, value));
    ASSERT_TRUE(put.ok());
    ASSERT_TRUE(node.persistence.WaitDurable(put->seq).ok());
  }

  TempDir dir_;
  FakeClock clock_;
};

TEST_F(PersistenceTest, EmptyDirectoryStartsEmptyAndWritesFormat) {
  auto node = Open();
  EXPECT_EQ(node->store.Stats().keys, 0u);
  EXPECT_EQ(ReadAll(dir_.path() + "/FORMAT"), "kvcache-data-format 1\n");
}

TEST_F(PersistenceTest, LogReplayRestoresPutsDeletesAndFlushes) {
  {
    auto node = Open();
    Write(*node, "gone", "x");
    ASSERT_TRUE(node->store.Flush().ok());
    Write(*node, "a", "1");
    Write(*node, "b", "2");
    ASSERT_TRUE(node->store.Delete("b").ok());
    Write(*node, "a", "3");
    // No Shutdown: a crash.
  }
  auto node = Open();
  EXPECT_EQ(node->store.Get("a")->value, "3");
  EXPECT_FALSE(node->store.Get("b").ok());
  EXPECT_FALSE(node->store.Get("gone").ok());
  EXPECT_EQ(node->persistence.Stats().recovery.corrupt_records, 0u);
}

TEST_F(PersistenceTest, SnapshotPlusLogAndOldFilesDropped) {
  {
    auto node = Open();
    for (int i = 0; i < 100; ++i) Write(*node, "k" + std::to_string(i), "v");
    ASSERT_TRUE(node->persistence.Snapshot().ok());
    Write(*node, "after1", "x");
    ASSERT_TRUE(node->persistence.Snapshot().ok());
    Write(*node, "after2", "y");
    ASSERT_TRUE(node->persistence.Snapshot().ok());
    Write(*node, "k0", "changed");
    ASSERT_TRUE(node->persistence.Shutdown().ok());
  }
  std::vector<std::string> files = Files(dir_.path());
  EXPECT_EQ(std::count_if(files.begin(), files.end(),
                          [](const std::string& f) { return f.ends_with(".snap"); }),
            2);
  auto node = Open();
  EXPECT_EQ(node->store.Stats().keys, 102u);
  EXPECT_EQ(node->store.Get("k0")->value, "changed");
  EXPECT_EQ(node->store.Get("after2")->value, "y");
  EXPECT_GT(node->persistence.Stats().recovery.snapshot_seq, 0u);
}

TEST_F(PersistenceTest, ExpiredKeysAreDroppedOnRecovery) {
  {
    auto node = Open();
    PutRequest p = Put("ttl", "v");
    p.expire_at_ms = clock_.NowMs() + 1000;
    auto put = node->store.Put(p);
    ASSERT_TRUE(put.ok() && node->persistence.WaitDurable(put->seq).ok());
    Write(*node, "forever", "v");
  }
  clock_.AdvanceMs(2000);
  auto node = Open();
  EXPECT_FALSE(node->store.Get("ttl").ok());
  EXPECT_TRUE(node->store.Get("forever").ok());
  EXPECT_EQ(node->store.Stats().keys, 1u);
}

TEST_F(PersistenceTest, TornTailIsTruncatedCountedAndLaterWritesWork) {
  std::string segment;
  {
    auto node = Open();
    Write(*node, "a", "1");
    Write(*node, "b", "2");
  }
  segment = PathsEndingWith(dir_.path(), ".seg").back();
  std::string data = ReadAll(segment);
  WriteAll(segment, data.substr(0, data.size() - 3));  // a crash mid-record
  {
    auto node = Open();
    EXPECT_TRUE(node->store.Get("a").ok());
    EXPECT_FALSE(node->store.Get("b").ok());
    EXPECT_EQ(node->persistence.Stats().recovery.corrupt_records, 1u);
    Write(*node, "c", "3");
  }
  auto node = Open();
  EXPECT_TRUE(node->store.Get("a").ok());
  EXPECT_TRUE(node->store.Get("c").ok());
  EXPECT_EQ(node->persistence.Stats().recovery.corrupt_records, 0u);
}

TEST_F(PersistenceTest, FlippedByteStopsReplayAndSetsLaterSegmentsAside) {
  {
    auto node = Open();
    Write(*node, "a", "1");
    ASSERT_TRUE(node->persistence.Shutdown().ok());
  }
  {
    auto node = Open();
    Write(*node, "b", "2");
    ASSERT_TRUE(node->persistence.Shutdown().ok());
  }
  std::vector<std::string> segments = PathsEndingWith(dir_.path(), ".seg");
  ASSERT_GE(segments.size(), 2u);
  std::string data = ReadAll(segments[0]);
  data[data.size() - 2] ^= 1;  // inside "a"'s record
  WriteAll(segments[0], data);
  auto node = Open();
  EXPECT_FALSE(node->store.Get("a").ok());
  EXPECT_FALSE(node->store.Get("b").ok());
  EXPECT_EQ(node->persistence.Stats().recovery.corrupt_records, 1u);
  std::vector<std::string> files = Files(dir_.path());
  EXPECT_TRUE(std::any_of(files.begin(), files.end(),
                          [](const std::string& f) { return f.ends_with(".corrupt"); }));
}

TEST_F(PersistenceTest, CorruptSnapshotFallsBackToThePreviousOne) {
  {
    auto node = Open();
    Write(*node, "a", "1");
    ASSERT_TRUE(node->persistence.Snapshot().ok());
    Write(*node, "b", "2");
    ASSERT_TRUE(node->persistence.Snapshot().ok());
    ASSERT_TRUE(node->persistence.Shutdown().ok());
  }
  std::vector<std::string> snaps = PathsEndingWith(dir_.path(), ".snap");
  ASSERT_EQ(snaps.size(), 2u);
  std::string newest = ReadAll(snaps[1]);
  WriteAll(snaps[1], newest.substr(0, newest.size() / 2));  // half-written
  auto node = Open();
  EXPECT_EQ(node->persistence.Stats().recovery.skipped_snapshots, 1u);
  EXPECT_TRUE(node->store.Get("a").ok());
  EXPECT_TRUE(node->store.Get("b").ok());  // from the log after the older snapshot
}

TEST_F(PersistenceTest, LargeSnapshotIsStreamedAcrossChunks) {
  constexpr int kKeys = 100000;  // ~14 MB of records: more than one 8 MiB read
  {
    auto node = Open(Env::Posix(), FsyncMode::kNo);
    std::string value(120, 'v');
    for (int i = 0; i < kKeys; ++i) {
      ASSERT_TRUE(node->store.Put(Put("key-" + std::to_string(i), value)).ok());
    }
    ASSERT_TRUE(node->persistence.Snapshot().ok());
    ASSERT_TRUE(node->persistence.Shutdown().ok());
  }
  {
    auto node = Open();
    EXPECT_EQ(node->store.Stats().keys, uint64_t{kKeys});
    EXPECT_EQ(node->persistence.Stats().recovery.snapshot_entries, uint64_t{kKeys});
    EXPECT_TRUE(node->store.Get("key-99999").ok());
  }
  // Cut just after the first chunk: detected as truncated, not loaded half.
  for (const std::string& path : PathsEndingWith(dir_.path(), ".snap")) {
    WriteAll(path, ReadAll(path).substr(0, (8 << 20) + 5));
  }
  auto node = Open();
  EXPECT_EQ(node->persistence.Stats().recovery.skipped_snapshots, 1u);
}

TEST_F(PersistenceTest, UnfinishedSnapshotFileIsRemoved) {
  { auto node = Open(); Write(*node, "a", "1"); }
  WriteAll(dir_.path() + "/snapshot-00000000000000000009.snap.tmp", "partial");
  auto node = Open();
  EXPECT_TRUE(node->store.Get("a").ok());
  for (const auto& f : Files(dir_.path())) EXPECT_FALSE(f.ends_with(".tmp")) << f;
}

TEST_F(PersistenceTest, NewerFormatDirectoryIsRefusedAndUntouched) {
  { auto node = Open(); Write(*node, "a", "1"); }
  WriteAll(dir_.path() + "/FORMAT", "kvcache-data-format 7\n");
  std::vector<std::string> before = Files(dir_.path());
  Store store({}, clock_);
  Persistence persistence(Env::Posix(), store, clock_, Options(), nullptr);
  Status st = persistence.Recover();
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(st.message().find("newer"), std::string::npos) << st.message();
  EXPECT_EQ(Files(dir_.path()), before);
}

TEST_F(PersistenceTest, EvictedKeysStayGoneAfterRestart) {
  StoreOptions small;
  small.max_memory_bytes = 8 * 1024;
  small.eviction = EvictionPolicy::kLru;
  {
    Store store(small, clock_);
    Persistence persistence(Env::Posix(), store, clock_, Options(), nullptr);
    ASSERT_TRUE(persistence.Recover().ok());
    ASSERT_TRUE(store.Put(Put("victim", std::string(500, 'v'))).ok());
    clock_.AdvanceMs(5000);
    for (int i = 0; i < 100 && store.Get("victim").ok(); ++i) {
      clock_.AdvanceMs(1000);
      ASSERT_TRUE(store.Put(Put("filler" + std::to_string(i), std::string(500, 'f'))).ok());
    }
    ASSERT_FALSE(store.Get("victim").ok());
    EXPECT_EQ(store.Delete("victim").code(), StatusCode::kNotFound);
    ASSERT_TRUE(persistence.Shutdown().ok());
  }
  auto node = Open();
  EXPECT_FALSE(node->store.Get("victim").ok());
}

TEST_F(PersistenceTest, DiskFullGives507AndKeepsAcknowledgedData) {
  FaultInjectionEnv env(Env::Posix());
  {
    auto node = Open(env);
    Write(*node, "safe", "1");
    env.SetWriteFault(FaultInjectionEnv::Fault::kNoSpace);
    auto put = node->store.Put(Put("maybe", "2"));
    ASSERT_TRUE(put.ok());
    EXPECT_EQ(node->persistence.WaitDurable(put->seq).code(), StatusCode::kResourceExhausted);
    auto refused = node->store.Put(Put("refused", "3"));
    EXPECT_EQ(refused.status().code(), StatusCode::kResourceExhausted);
    EXPECT_FALSE(node->store.Get("refused").ok());
    EXPECT_TRUE(node->store.Get("safe").ok());  // reads keep working
    env.SetWriteFault(FaultInjectionEnv::Fault::kNone);
    EXPECT_TRUE(AwaitRecovered([&] { return node->persistence.Stats().journal.failed; }));
    Write(*node, "later", "4");
  }
  auto node = Open();
  EXPECT_TRUE(node->store.Get("safe").ok());
  EXPECT_TRUE(node->store.Get("later").ok());
}

}  // namespace
}  // namespace kvcache::node
