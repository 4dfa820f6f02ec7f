#include "protocol/admin.h"

#include <gtest/gtest.h>

namespace kvcache::protocol {
namespace {

TEST(AdminCodec, NodeStatusRoundTrips) {
  NodeStatus s;
  s.name = "demo-1-0";
  s.role = Role::kReplica;
  s.shard = 1;
  s.epoch = 9;
  s.applied_offset = 1234;
  s.primary_offset = 1300;
  s.ready = true;
  s.keys = 42;
  s.migration.state = MigrationStatus::State::kStreaming;
  s.migration.target_shard = 2;
  s.migration.slots = {{0, 99}, {200, 299}};
  s.migration.keys_moved = 7;
  auto parsed = ParseNodeStatus(EncodeNodeStatus(s));
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(*parsed, s);
}

TEST(AdminCodec, MigrationRequestRoundTripsAndRefusesBadRanges) {
  MigrationRequest r{{{10, 20}}, 3, {"demo-3-0", "127.0.1.9:8080"}};
  auto parsed = ParseMigrationRequest(EncodeMigrationRequest(r));
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(*parsed, r);
  for (const char* bad : {R"({"slots":[[20,10]],"targetShard":1,"target":{"name":"a","addr":"b"}})",
                          R"({"slots":[[0,16384]],"targetShard":1,"target":{"name":"a","addr":"b"}})",
                          R"({"slots":[],"targetShard":1,"target":{"name":"a","addr":"b"}})",
                          R"({"slots":[[1,2]],"targetShard":1})", "[]", "{"}) {
    EXPECT_EQ(ParseMigrationRequest(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST(AdminCodec, StepDownRoundTripsAndBoundsItsPause) {
  EXPECT_EQ(ParseStepDownRequest(EncodeStepDownRequest({2500}))->pause_ms, 2500u);
  for (const char* bad : {R"({"pauseMs":0})", R"({"pauseMs":60001})", R"({})", "[]"}) {
    EXPECT_EQ(ParseStepDownRequest(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST(AdminCodec, PromoteNeedsAnEpochAndRoleNamesAreKnown) {
  EXPECT_EQ(ParsePromoteRequest(R"({"epoch":0})").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParsePromoteRequest(R"({"epoch":5})")->epoch, 5u);
  EXPECT_EQ(ParseNodeStatus(R"({"name":"a","role":"boss","epoch":1,"appliedOffset":0,"ready":true})")
                .status()
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(RoleName(Role::kPrimary), "primary");
}

}  // namespace
}  // namespace kvcache::protocol
