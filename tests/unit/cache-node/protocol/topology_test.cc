#include "protocol/topology.h"

#include <gtest/gtest.h>

namespace kvcache::protocol {
namespace {

TEST(SlotMap, MatchesRedisCluster) {
  EXPECT_EQ(Crc16("123456789"), 0x31C3);  // the XMODEM check value
  EXPECT_EQ(KeySlot("foo"), 12182);       // CLUSTER KEYSLOT foo
  EXPECT_EQ(KeySlot("bar"), 5061);
  EXPECT_EQ(KeySlot(""), 0);
}

TEST(SlotMap, HonoursHashTags) {
  EXPECT_EQ(KeySlot("{user1000}.following"), KeySlot("{user1000}.followers"));
  EXPECT_EQ(KeySlot("{user1000}.following"), KeySlot("user1000"));
  EXPECT_EQ(KeySlot("foo{}{bar}"), Crc16("foo{}{bar}") & 16383);  // empty tag: whole key
  EXPECT_EQ(KeySlot("foo{{bar}}zap"), KeySlot("{bar"));           // up to the first '}'
  EXPECT_EQ(KeySlot("foo{bar}{zap}"), KeySlot("bar"));            // the first tag only
  EXPECT_EQ(KeySlot("no-close{brace"), Crc16("no-close{brace") & 16383);
}

Topology TwoShards() {
  Topology t;
  t.cluster = "demo";
  t.epoch = 7;
  t.shards.push_back({0, {{0, 8191}}, {"demo-0-0", "127.0.1.1:8080"}, {{"demo-0-1", "127.0.1.2:8080"}}});
  t.shards.push_back({1, {{8192, 16383}}, {"demo-1-0", "127.0.1.3:8080"}, {}});
  return t;
}

TEST(Topology, RoundTripsTheDesignDocument) {
  const char* doc = R"({"cluster": "demo", "epoch": 7,
   "shards": [{"id": 0, "slots": [[0, 8191]],
               "primary":  {"name": "demo-0-0", "addr": "127.0.1.1:8080"},
               "replicas": [{"name": "demo-0-1", "addr": "127.0.1.2:8080"}]},
              {"id": 1, "slots": [[8192, 16383]],
               "primary":  {"name": "demo-1-0", "addr": "127.0.1.3:8080"}, "replicas": []}]})";
  StatusOr<Topology> parsed = ParseTopology(doc);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(*parsed, TwoShards());
  EXPECT_EQ(*ParseTopology(EncodeTopology(*parsed)), *parsed);
  std::vector<int> owners = parsed->SlotOwners();
  EXPECT_EQ(owners[KeySlot("foo")], 1);
  EXPECT_EQ(owners[KeySlot("bar")], 0);
}

TEST(Topology, RefusesBrokenDocumentsWithAReason) {
  struct Case {
    const char* what;
    std::function<void(Topology&)> breakit;
    const char* message;
  };
  const Case cases[] = {
      {"gap", [](Topology& t) { t.shards[1].slots = {{8193, 16383}}; }, "slot 8192 has no owner"},
      {"overlap", [](Topology& t) { t.shards[1].slots = {{8191, 16383}}; }, "owned by shards"},
      {"range", [](Topology& t) { t.shards[1].slots = {{8192, 16384}}; }, "outside"},
      {"epoch", [](Topology& t) { t.epoch = 0; }, "epoch"},
      {"dup member", [](Topology& t) { t.shards[1].primary.name = "demo-0-1"; }, "twice"},
      {"dup shard", [](Topology& t) { t.shards[1].id = 0; }, "twice"},
      {"no addr", [](Topology& t) { t.shards[0].primary.addr = ""; }, "no primary"},
  };
  for (const Case& c : cases) {
    Topology t = TwoShards();
    c.breakit(t);
    Status st = Validate(t);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << c.what;
    EXPECT_NE(st.message().find(c.message), std::string::npos) << c.what << ": " << st.message();
  }
  EXPECT_FALSE(ParseTopology("{").ok());
  EXPECT_FALSE(ParseTopology(R"({"cluster": 1, "epoch": 1, "shards": []})").ok());
  EXPECT_FALSE(ParseTopology(R"({"cluster": "c", "epoch": 1, "shards": [{"id": 0, "slots": [[1]]}]})").ok());
}

TEST(Topology, EvenSlotRangesCoverEverySlotOnce) {
  for (int shards : {1, 3, 7, 16}) {
    int next = 0;
    for (int i = 0; i < shards; ++i) {
      std::vector<SlotRange> r = EvenSlotRanges(shards, i);
      ASSERT_EQ(r.size(), 1u);
      EXPECT_EQ(r[0].first, next);
      next = r[0].last + 1;
    }
    EXPECT_EQ(next, kSlotCount);
  }
}

}  // namespace
}  // namespace kvcache::protocol
