// Pure parts of replication: the backlog, offset assignment, the wire codec, and the fencing,
// full-sync and quorum decisions.
#include <gtest/gtest.h>

#include "cluster/replication_log.h"
#include "cluster/replication_wire.h"

namespace kvcache::node {
namespace {

ReplRecord Put(uint64_t offset, std::string key, std::string value = "v") {
  ReplRecord r;
  r.offset = offset;
  r.key = std::move(key);
  r.value = std::move(value);
  return r;
}

TEST(Backlog, ServesRecordsAfterAnOffsetInOrder) {
  Backlog b(1 << 20);
  for (uint64_t i = 1; i <= 5; ++i) b.Append(Put(i, "k" + std::to_string(i)));
  auto got = b.After(2, 1 << 20, 100);
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->size(), 3u);
  EXPECT_EQ((*got)[0].offset, 3u);
  EXPECT_EQ((*got)[2].offset, 5u);
  EXPECT_TRUE(b.After(5, 1 << 20, 100)->empty());
  EXPECT_EQ(b.After(0, 1 << 20, 2)->size(), 2u);  // max_records
}

TEST(Backlog, DropsOldestBeyondItsBytesAndSaysWhenAReaderIsTooFarBehind) {
  const size_t one = Put(1, "k1").Bytes();
  Backlog b(one * 3);
  for (uint64_t i = 1; i <= 5; ++i) b.Append(Put(i, "k" + std::to_string(i)));
  EXPECT_EQ(b.size(), 3u);
  EXPECT_EQ(b.dropped_up_to(), 2u);
  EXPECT_EQ(b.After(1, 1 << 20, 100).status().code(), StatusCode::kOutOfRange);
  auto got = b.After(2, 1 << 20, 100);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->front().offset, 3u);
}

TEST(Backlog, AlwaysServesAtLeastOneRecordEvenIfLargerThanTheBatch) {
  Backlog b(1 << 20);
  b.Append(Put(1, "k", std::string(1000, 'x')));
  b.Append(Put(2, "k", std::string(1000, 'x')));
  EXPECT_EQ(b.After(0, 10, 100)->size(), 1u);
}

TEST(Backlog, ReaderBeforeTheBaseNeedsAFullSync) {
  Backlog b(1 << 20, /*base_offset=*/10);
  EXPECT_EQ(b.After(9, 100, 100).status().code(), StatusCode::kOutOfRange);
  EXPECT_TRUE(b.After(10, 100, 100)->empty());
  b.Append(Put(11, "k"));
  EXPECT_EQ(b.After(10, 100, 100)->size(), 1u);
  b.Reset(20);
  EXPECT_EQ(b.After(11, 100, 100).status().code(), StatusCode::kOutOfRange);
}

// Numbers records as a journal does, and can refuse them.
class FakeJournal : public WriteLog {
 public:
  StatusOr<uint64_t> LogPut(std::string_view, std::string_view, std::string_view,
                            int64_t) override {
    return Next();
  }
  StatusOr<uint64_t> LogDelete(std::string_view) override { return Next(); }
  StatusOr<uint64_t> LogFlush() override { return Next(); }
  uint64_t seq = 100;
  bool fail = false;

 private:
  StatusOr<uint64_t> Next() {
    if (fail) return UnavailableError("disk full");
    return ++seq;
  }
};

TEST(ReplicationLog, CountsByItselfWithoutAJournal) {
  ReplicationLog log(1 << 20);
  log.SetRecording(true);
  EXPECT_EQ(*log.LogPut("a", "1", "", 0), 1u);
  EXPECT_EQ(*log.LogDelete("a"), 2u);
  EXPECT_EQ(*log.LogFlush(), 3u);
  auto got = log.Read(0, 1 << 20, 100, std::chrono::milliseconds(0));
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->size(), 3u);
  EXPECT_EQ((*got)[0].type, ReplRecord::Type::kPut);
  EXPECT_EQ((*got)[1].type, ReplRecord::Type::kDelete);
  EXPECT_EQ((*got)[2].type, ReplRecord::Type::kFlush);
}

TEST(ReplicationLog, OffsetIsTheJournalSequenceAndARefusedWriteGetsNone) {
  FakeJournal journal;
  ReplicationLog log(1 << 20);
  log.SetInner(&journal, journal.seq);
  log.SetRecording(true);
  EXPECT_EQ(*log.LogPut("a", "1", "text/plain", 5), 101u);
  journal.fail = true;
  EXPECT_FALSE(log.LogPut("b", "2", "", 0).ok());
  journal.fail = false;
  EXPECT_EQ(*log.LogPut("c", "3", "", 0), 102u);
  EXPECT_EQ(log.last_offset(), 102u);
  auto got = log.Read(100, 1 << 20, 100, std::chrono::milliseconds(0));
  ASSERT_EQ(got->size(), 2u);
  EXPECT_EQ((*got)[0].content_type, "text/plain");
  EXPECT_EQ((*got)[0].expire_at_ms, 5);
  EXPECT_EQ((*got)[1].key, "c");
}

TEST(ReplicationLog, NotRecordingKeepsNothingSoReadersNeedAFullSync) {
  ReplicationLog log(1 << 20);
  ASSERT_TRUE(log.LogPut("a", "1", "", 0).ok());
  EXPECT_EQ(log.Read(0, 100, 100, std::chrono::milliseconds(0)).status().code(),
            StatusCode::kOutOfRange);
  log.SetRecording(true);  // starts after offset 1
  ASSERT_TRUE(log.LogPut("b", "2", "", 0).ok());
  EXPECT_EQ(log.Read(1, 100, 100, std::chrono::milliseconds(0))->size(), 1u);
}

TEST(ReplicationWire, BatchRoundTripsWithBinaryValues) {
  BatchHeader h{7, "demo-0-0", "abc", BatchKind::kStream, 41, 50, "demo-0-1"};
  std::vector<ReplRecord> records = {Put(42, std::string("k\0ey", 4), std::string("\xff\0v", 3))};
  records[0].content_type = "application/octet-stream";
  records[0].expire_at_ms = 1234;
  ReplRecord del;
  del.type = ReplRecord::Type::kDelete;
  del.offset = 43;
  del.key = "gone";
  records.push_back(del);
  auto batch = DecodeBatch(EncodeBatch(h, records));
  ASSERT_TRUE(batch.ok()) << batch.status().message();
  EXPECT_EQ(batch->header, h);
  EXPECT_EQ(batch->records, records);
}

TEST(ReplicationWire, TruncatedOrGarbageBatchesAreRefused) {
  std::string body = EncodeBatch(BatchHeader{}, {Put(1, "key", "value")});
  EXPECT_FALSE(DecodeBatch(body.substr(0, body.size() - 1)).ok());
  EXPECT_FALSE(DecodeBatch("xx").ok());
  EXPECT_FALSE(DecodeBatch(std::string("\x02\0\0\0{}", 6)).ok());
}

TEST(ReplicationWire, RepliesRoundTrip) {
  BatchReply ok{false, false, 17, 3, false, ""};
  auto got = DecodeBatchReply(200, EncodeBatchReply(ok));
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->applied_offset, 17u);
  EXPECT_FALSE(got->full_sync);
  auto fenced = DecodeBatchReply(409, EncodeBatchReply(BatchReply{true, false, 0, 9, false, ""}));
  ASSERT_TRUE(fenced.ok());
  EXPECT_TRUE(fenced->fenced);
  EXPECT_EQ(fenced->epoch, 9u);
  EXPECT_FALSE(DecodeBatchReply(500, R"({"error": "x"})").ok());
  BatchReply wrong_node;
  wrong_node.misdirected = true;
  wrong_node.answered_by = "demo-1-1";
  auto misdirected = DecodeBatchReply(421, EncodeBatchReply(wrong_node));
  ASSERT_TRUE(misdirected.ok());
  EXPECT_TRUE(misdirected->misdirected);
  EXPECT_EQ(misdirected->answered_by, "demo-1-1");
}

TEST(ReplicationWire, ABatchWithoutAReplicaNameIsForAnyReceiver) {
  // A sender from before the field: the header has no "replica".
  std::string body = EncodeBatch(BatchHeader{3, "demo-0-0", "r", BatchKind::kStream, 0, 0, ""}, {});
  EXPECT_EQ(body.find("replica"), std::string::npos);
  auto batch = DecodeBatch(body);
  ASSERT_TRUE(batch.ok());
  EXPECT_EQ(batch->header.replica, "");
}

BatchHeader From(std::string primary, uint64_t epoch, BatchKind kind, std::string replid = "r1",
                 uint64_t after = 0) {
  BatchHeader h;
  h.primary = std::move(primary);
  h.epoch = epoch;
  h.kind = kind;
  h.replid = std::move(replid);
  h.after = after;
  return h;
}

ReceiverState Replica(std::string leader, uint64_t leader_epoch, std::string replid = "r1") {
  ReceiverState s;
  s.role = protocol::Role::kReplica;
  s.epoch = leader_epoch;
  s.leader = std::move(leader);
  s.leader_epoch = leader_epoch;
  s.replid = std::move(replid);
  return s;
}

TEST(Fencing, ReplicaAcceptsItsPrimaryEvenFromAnOlderEpoch) {
  // A topology push that keeps the roles reaches the replica before the primary.
  ReceiverState s = Replica("p", 6);
  EXPECT_EQ(JudgeBatch(s, From("p", 5, BatchKind::kStream)), BatchVerdict::kApply);
}

TEST(Fencing, ReplicaFencesAnOldPrimaryOnceItKnowsANewOne) {
  ReceiverState s = Replica("new", 6);
  EXPECT_EQ(JudgeBatch(s, From("old", 5, BatchKind::kStream)), BatchVerdict::kFence);
  EXPECT_EQ(JudgeBatch(s, From("old", 6, BatchKind::kSyncBegin)), BatchVerdict::kFence);
  // A newer primary than the one it knows is followed (the operator's push may lag).
  EXPECT_EQ(JudgeBatch(s, From("newer", 7, BatchKind::kSyncBegin)), BatchVerdict::kApply);
}

TEST(Fencing, DemotedNodeWithoutAKnownPrimaryFollowsTheEpochThatDemotedIt) {
  ReceiverState s = Replica("", 6, "");
  EXPECT_EQ(JudgeBatch(s, From("new", 6, BatchKind::kSyncBegin)), BatchVerdict::kApply);
  EXPECT_EQ(JudgeBatch(s, From("old", 5, BatchKind::kStream)), BatchVerdict::kFence);
}

TEST(Fencing, PrimaryDemotesOnlyForANewerEpoch) {
  ReceiverState s;
  s.role = protocol::Role::kPrimary;
  s.epoch = 5;
  EXPECT_EQ(JudgeBatch(s, From("other", 6, BatchKind::kSyncBegin)),
            BatchVerdict::kDemoteAndApply);
  EXPECT_EQ(JudgeBatch(s, From("other", 5, BatchKind::kStream)), BatchVerdict::kFence);
  EXPECT_EQ(JudgeBatch(s, From("other", 4, BatchKind::kStream)), BatchVerdict::kFence);
}

TEST(Fencing, StreamNeedsTheSameTermAndAFinishedSync) {
  ReceiverState s = Replica("p", 5, "r1");
  EXPECT_EQ(JudgeBatch(s, From("p", 5, BatchKind::kStream, "r2")), BatchVerdict::kNeedFullSync);
  s.replid = "";
  EXPECT_EQ(JudgeBatch(s, From("p", 5, BatchKind::kStream, "r1")), BatchVerdict::kNeedFullSync);
  s.replid = "r1";
  s.syncing = true;
  EXPECT_EQ(JudgeBatch(s, From("p", 5, BatchKind::kStream, "r1")), BatchVerdict::kNeedFullSync);
  EXPECT_EQ(JudgeBatch(s, From("p", 5, BatchKind::kSyncData, "r1")), BatchVerdict::kApply);
  EXPECT_EQ(JudgeBatch(s, From("p", 5, BatchKind::kSyncEnd, "r2")), BatchVerdict::kNeedFullSync);
  s.syncing = false;
  EXPECT_EQ(JudgeBatch(s, From("p", 5, BatchKind::kSyncData, "r1")), BatchVerdict::kNeedFullSync);
}

TEST(SenderDecisions, ReplyDecidesAdvanceFullSyncDemoteOrRetry) {
  EXPECT_EQ(JudgeReply(BatchReply{false, false, 10, 5, false, ""}, 5, 0), SenderAction::kAdvance);
  EXPECT_EQ(JudgeReply(BatchReply{false, true, 0, 5, false, ""}, 5, 0), SenderAction::kFullSync);
  EXPECT_EQ(JudgeReply(BatchReply{false, false, 3, 5, false, ""}, 5, 4), SenderAction::kFullSync);
  EXPECT_EQ(JudgeReply(BatchReply{true, false, 0, 6, false, ""}, 5, 0), SenderAction::kDemote);
  EXPECT_EQ(JudgeReply(BatchReply{true, false, 0, 5, false, ""}, 5, 0), SenderAction::kRetry);
}

TEST(SenderDecisions, QuorumIsTheMinAcksThLargestOffset) {
  EXPECT_EQ(QuorumOffset({5, 9, 7}, 1), 9u);
  EXPECT_EQ(QuorumOffset({5, 9, 7}, 2), 7u);
  EXPECT_EQ(QuorumOffset({5, 9, 7}, 3), 5u);
  EXPECT_EQ(QuorumOffset({5, 9}, 3), 0u);
  EXPECT_EQ(QuorumOffset({}, 0), UINT64_MAX);
}

}  // namespace
}  // namespace kvcache::node
