#include "cluster/migration_plan.h"

#include <gtest/gtest.h>

namespace kvcache::node {
namespace {

using protocol::SlotRange;

TEST(SlotSet, RangesMergeAdjacentAndOverlappingRuns) {
  SlotSet set = SlotSet::FromRanges({{10, 20}, {21, 30}, {25, 40}, {100, 100}});
  EXPECT_EQ(set.size(), 32u);
  EXPECT_EQ(set.Ranges(), (std::vector<SlotRange>{{10, 40}, {100, 100}}));
  EXPECT_EQ(set.Describe(), "10-40,100");
  EXPECT_TRUE(set.Contains(10));
  EXPECT_FALSE(set.Contains(41));
  EXPECT_EQ(SlotSet().Describe(), "none");
  EXPECT_TRUE(SlotSet().empty());
}

TEST(SlotSet, MinusAndOwnership) {
  std::vector<int> owners(protocol::kSlotCount, 0);
  for (int s = 8192; s < protocol::kSlotCount; ++s) owners[s] = 1;
  SlotSet mine = SlotSet::OwnedBy(owners, 0);
  EXPECT_EQ(mine.Ranges(), (std::vector<SlotRange>{{0, 8191}}));
  SlotSet wanted = SlotSet::FromRanges({{8000, 8300}});
  EXPECT_EQ(wanted.Minus(mine).Describe(), "8192-8300");
  EXPECT_TRUE(SlotSet::FromRanges({{0, 5}}).Minus(mine).empty());
  // The edges of the slot space.
  EXPECT_EQ(SlotSet::FromRanges({{0, 0}, {16383, 16383}}).Describe(), "0,16383");
}

TEST(SlotSet, DescribeStopsAfterManyRanges) {
  std::vector<SlotRange> ranges;
  for (int i = 0; i < 20; ++i) ranges.push_back({i * 10, i * 10});
  EXPECT_EQ(SlotSet::FromRanges(ranges).Describe(3), "0,10,20,...");
}

TEST(ImportBatch, RoundTripsBinaryEntries) {
  const std::string binary_key("k\0\xff", 3);
  const std::string value(70000, '\0');
  ImportBatch batch{
      "demo-0",
      {{0, 99}, {200, 300}},
      {{binary_key, value, "application/json", 1700000000123}, {"plain", "v", "", 0}}};
  const std::string wire = EncodeImportBatch(batch);
  StatusOr<ImportBatch> back = DecodeImportBatch(wire);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->source, "demo-0");
  EXPECT_EQ(back->slots, batch.slots);
  ASSERT_EQ(back->entries.size(), 2u);
  EXPECT_EQ(back->entries[0].key, binary_key);
  EXPECT_EQ(back->entries[0].value, value);
  EXPECT_EQ(back->entries[0].content_type, "application/json");
  EXPECT_EQ(back->entries[0].expire_at_ms, 1700000000123);
  EXPECT_EQ(back->entries[1].key, "plain");
  EXPECT_EQ(back->entries[1].expire_at_ms, 0);
  size_t expected =
      wire.size() - EncodedEntrySize(batch.entries[0]) - EncodedEntrySize(batch.entries[1]);
  EXPECT_EQ(expected, EncodeImportBatch({"demo-0", batch.slots, {}}).size());
}

TEST(ImportBatch, RefusesTruncatedAndMalformedBodies) {
  const std::string wire = EncodeImportBatch({"a", {{0, 1}}, {{"key", "value", "", 0}}});
  for (size_t cut : {size_t{0}, size_t{3}, size_t{10}, wire.size() - 1}) {
    StatusOr<ImportBatch> got = DecodeImportBatch(std::string_view(wire).substr(0, cut));
    EXPECT_EQ(got.status().code(), StatusCode::kInvalidArgument) << cut;
  }
  std::string no_slots = EncodeImportBatch({"a", {}, {}});
  EXPECT_FALSE(DecodeImportBatch(no_slots).ok());
  std::string bad_json("\x02\0\0\0{]", 6);
  EXPECT_FALSE(DecodeImportBatch(bad_json).ok());
}

TEST(MigrationRecord, RoundTrips) {
  MigrationRecord record;
  record.request.slots = {{0, 10}};
  record.request.target_shard = 3;
  record.request.target = {"demo-3", "10.0.0.3:8080"};
  record.status.state = protocol::MigrationStatus::State::kDone;
  record.status.target_shard = 3;
  record.status.slots = {{0, 10}};
  record.status.keys_moved = 42;
  record.finished = true;
  StatusOr<MigrationRecord> back = ParseMigrationRecord(EncodeMigrationRecord(record));
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(*back, record);
  EXPECT_FALSE(ParseMigrationRecord("{}").ok());
  EXPECT_FALSE(ParseMigrationRecord("not json").ok());
}

TEST(BatchOutcome, CountsEachDeleteResult) {
  BatchOutcome outcome;
  EXPECT_TRUE(outcome.Count(Status::Ok()));
  EXPECT_TRUE(outcome.Count(Status::Ok()));
  EXPECT_TRUE(outcome.Count(FailedPreconditionError("changed")));
  EXPECT_TRUE(outcome.Count(NotFoundError("gone")));
  EXPECT_FALSE(outcome.Count(UnavailableError("disk")));
  EXPECT_EQ(outcome.moved, 2u);
  EXPECT_EQ(outcome.changed, 1u);
  EXPECT_EQ(outcome.vanished, 1u);
}

TEST(RatePacer, AllowsOneSecondBurstThenPaces) {
  using namespace std::chrono;
  RatePacer::Clock::time_point now{seconds(100)};
  RatePacer unlimited(0);
  EXPECT_EQ(unlimited.Sent(1'000'000, now), RatePacer::Clock::duration::zero());

  RatePacer pacer(1000);
  // A second's worth goes at once after idling.
  EXPECT_EQ(pacer.Sent(1000, now), RatePacer::Clock::duration::zero());
  // The next 500 keys must wait half a second.
  EXPECT_EQ(duration_cast<milliseconds>(pacer.Sent(500, now)).count(), 500);
  // Having waited, the next batch is due again.
  now += milliseconds(500);
  EXPECT_EQ(duration_cast<milliseconds>(pacer.Sent(100, now)).count(), 100);
  // Long idle banks no more than one second.
  now += seconds(60);
  EXPECT_EQ(pacer.Sent(1000, now), RatePacer::Clock::duration::zero());
  EXPECT_GT(pacer.Sent(1, now), RatePacer::Clock::duration::zero());
}

}  // namespace
}  // namespace kvcache::node
