// Migrations end to end inside one process: the target is a real NodeApi behind an HttpServer
// on 127.0.0.1:0; the source is a Migrations object and a NodeApi without a server (its answers
// are inspected, not sent). The on_acknowledged seam makes the races deterministic.
#include "cluster/migration.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <nlohmann/json.hpp>
#include <numeric>
#include <thread>

#include "server/http_server.h"
#include "server/metrics.h"
#include "server/node_api.h"

namespace kvcache::node {
namespace {

using State = protocol::MigrationStatus::State;
constexpr char kToken[] = "secret";

class MigrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ApiOptions api_options;
    api_options.cluster_token = kToken;
    target_api_ = std::make_unique<NodeApi>(
        target_store_, clock_, api_options, [] { return true; }, [] { return ""; });
    target_migrations_ = std::make_unique<Migrations>(target_store_, target_view_, forwarder_,
                                                      Env::Posix(), MigrationOptions{}, nullptr);
    target_api_->SetCluster(&target_view_);
    target_api_->SetMigrations(target_migrations_.get());
    ServerOptions server_options;
    server_options.listen = "127.0.0.1:0";
    server_options.threads = 1;
    target_server_ = std::make_unique<HttpServer>(*target_api_, target_metrics_, server_options,
                                                  nullptr, &forwarder_);
    ASSERT_TRUE(target_server_->Start().ok());

    protocol::Topology topology;
    topology.cluster = "t";
    topology.epoch = 1;
    topology.shards = {{0, {{0, 16383}}, {"a", "127.0.0.1:1"}, {}},
                       {1, {}, {"b", "127.0.0.1:" + std::to_string(target_server_->port())}, {}}};
    ASSERT_TRUE(source_view_.Update(topology).ok());
    ASSERT_TRUE(target_view_.Update(topology).ok());
    api_options.cluster_token = kToken;
    source_api_ = std::make_unique<NodeApi>(
        source_store_, clock_, api_options, [] { return true; }, [] { return ""; });
    source_api_->SetCluster(&source_view_);
  }

  void TearDown() override {
    if (source_migrations_) source_migrations_->Stop();
    target_server_->Shutdown();
  }

  void StartSource(MigrationOptions options) {
    options.cluster_token = kToken;
    options.batch_keys = 10;
    source_migrations_ = std::make_unique<Migrations>(source_store_, source_view_, forwarder_,
                                                      Env::Posix(), std::move(options), nullptr);
    source_api_->SetMigrations(source_migrations_.get());
  }

  protocol::MigrationRequest Request() const {
    return {{{0, 8191}}, 1, target_view_.current()->topology.shards[1].primary};
  }

  // Keys of slots 0-8191 (the migrating half).
  std::vector<std::string> MovingKeys(int n) {
    std::vector<std::string> keys;
    for (int i = 0; static_cast<int>(keys.size()) < n; ++i) {
      std::string key = "key" + std::to_string(i);
      if (protocol::KeySlot(key) < 8192) keys.push_back(key);
    }
    return keys;
  }

  void Put(Store& store, const std::string& key, const std::string& value,
           int64_t expire_at_ms = 0) {
    PutRequest put;
    put.key = key;
    put.value = value;
    put.content_type = "application/x-test";
    put.expire_at_ms = expire_at_ms;
    ASSERT_TRUE(store.Put(put).ok());
  }

  void AwaitState(State state) {
    for (int i = 0; i < 1000 && source_migrations_->status().state != state; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_EQ(source_migrations_->status().state, state) << source_migrations_->status().error;
  }

  ApiResponse SourceCall(HttpMethod method, const std::string& key, std::string body = "") {
    ApiRequest req;
    req.method = method;
    const std::string path = "/v1/" + key;
    req.path = path;
    req.body = body;
    return source_api_->Handle(req);
  }

  SystemClock clock_;
  Forwarder forwarder_{std::chrono::milliseconds(500)};
  Store source_store_{StoreOptions{}, clock_};
  Store target_store_{StoreOptions{}, clock_};
  ClusterView source_view_{"a"};
  ClusterView target_view_{"b"};
  NodeMetrics target_metrics_{target_store_, [] { return true; }, "test"};
  std::unique_ptr<NodeApi> target_api_;
  std::unique_ptr<Migrations> target_migrations_;
  std::unique_ptr<HttpServer> target_server_;
  std::unique_ptr<NodeApi> source_api_;
  std::unique_ptr<Migrations> source_migrations_;
};

TEST_F(MigrationTest, MovesEveryKeyWithItsContentTypeAndExpiry) {
  StartSource({});
  const int64_t expiry = clock_.NowMs() + 3'600'000;
  for (const std::string& key : MovingKeys(55)) Put(source_store_, key, "v-" + key, expiry);
  std::string stays = "stays";
  while (protocol::KeySlot(stays) < 8192) stays += "+";
  Put(source_store_, stays, "here");
  ASSERT_TRUE(source_migrations_->Start(Request()).ok());
  AwaitState(State::kDone);
  EXPECT_EQ(source_migrations_->status().keys_moved, 55u);
  EXPECT_EQ(source_migrations_->keys_moved_total(), 55u);
  EXPECT_EQ(source_store_.Stats().keys, 1u);
  for (const std::string& key : MovingKeys(55)) {
    StatusOr<GetResult> got = target_store_.Get(key);
    ASSERT_TRUE(got.ok()) << key;
    EXPECT_EQ(got->value, "v-" + key);
    EXPECT_EQ(got->content_type, "application/x-test");
    EXPECT_EQ(got->expire_at_ms, expiry);
  }
  // A second migration waits for the topology flip first.
  EXPECT_EQ(source_migrations_->Start(Request()).status().code(), StatusCode::kConflict);
}

TEST_F(MigrationTest, APacedMoveSendsATenthOfASecondsKeysPerBatch) {
  MigrationOptions options;
  // Batches of 6 at most, below batch_keys (10 here); 30 keys fit the first second's burst.
  options.max_keys_per_second = 60;
  std::vector<size_t> sizes;
  options.on_acknowledged = [&](const ImportBatch& batch) { sizes.push_back(batch.entries.size()); };
  StartSource(std::move(options));
  for (const std::string& key : MovingKeys(30)) Put(source_store_, key, "v");
  ASSERT_TRUE(source_migrations_->Start(Request()).ok());
  AwaitState(State::kDone);
  ASSERT_FALSE(sizes.empty());
  EXPECT_EQ(*std::max_element(sizes.begin(), sizes.end()), 6u);
  EXPECT_EQ(std::accumulate(sizes.begin(), sizes.end(), size_t{0}), 30u);
}

TEST_F(MigrationTest, AKeyWrittenWhileInFlightStaysAndIsSentAgain) {
  std::vector<std::string> keys = MovingKeys(5);
  MigrationOptions options;
  bool once = false;
  options.on_acknowledged = [&](const ImportBatch&) {
    if (once) return;
    once = true;
    // The target has v1 now; a client writes v2 here before the source removes its copy.
    ApiResponse r = SourceCall(HttpMethod::kPut, keys[0], "v2");
    EXPECT_EQ(r.code, 200);
    EXPECT_EQ(r.forward_to, nullptr);
    // A DELETE of a key in flight is refused with a retryable 503.
    ApiResponse d = SourceCall(HttpMethod::kDelete, keys[1]);
    EXPECT_EQ(d.code, 503);
    EXPECT_EQ(d.retry_after_seconds, 1);
  };
  StartSource(std::move(options));
  for (const std::string& key : keys) Put(source_store_, key, "v1");
  ASSERT_TRUE(source_migrations_->Start(Request()).ok());
  AwaitState(State::kDone);
  EXPECT_EQ(target_store_.Get(keys[0])->value, "v2");
  EXPECT_EQ(target_store_.Get(keys[1])->value, "v1");
  EXPECT_EQ(source_store_.Stats().keys, 0u);
}

TEST_F(MigrationTest, SourceServesPresentKeysAndForwardsAbsentOnes) {
  StartSource({});
  std::vector<std::string> keys = MovingKeys(3);
  Put(source_store_, keys[0], "v");
  ASSERT_TRUE(source_migrations_->Start(Request()).ok());
  AwaitState(State::kDone);
  // keys[0] moved: everything about it goes one hop to the target.
  for (HttpMethod method : {HttpMethod::kGet, HttpMethod::kHead, HttpMethod::kPut}) {
    ApiResponse r = SourceCall(method, keys[0], "x");
    ASSERT_NE(r.forward_to, nullptr);
    EXPECT_EQ(r.forward_to->name, "b");
    EXPECT_EQ(r.owner, "a");
  }
  ApiResponse absent_delete = SourceCall(HttpMethod::kDelete, keys[0]);
  ASSERT_NE(absent_delete.forward_to, nullptr);
  EXPECT_EQ(absent_delete.forward_not_found_code, 0);
  // A key that is here (written around the move) is served here; its DELETE also goes to the
  // target, where an older copy may be, and a 404 there still means "deleted".
  Put(source_store_, keys[1], "here");
  ApiResponse got = SourceCall(HttpMethod::kGet, keys[1]);
  EXPECT_EQ(got.code, 200);
  EXPECT_EQ(got.body, "here");
  ApiResponse deleted = SourceCall(HttpMethod::kDelete, keys[1]);
  ASSERT_NE(deleted.forward_to, nullptr);
  EXPECT_EQ(deleted.forward_not_found_code, 204);
  EXPECT_FALSE(source_store_.Get(keys[1]).ok());
  // Create-only where the key is here: refused here.
  Put(source_store_, keys[2], "here");
  ApiRequest create;
  create.method = HttpMethod::kPut;
  const std::string path = "/v1/" + keys[2];
  create.path = path;
  create.if_none_match = "*";
  EXPECT_EQ(source_api_->Handle(create).code, 412);
}

TEST_F(MigrationTest, TargetServesForwardedKeysOnlyWhileRegistered) {
  StartSource({});
  std::vector<std::string> keys = MovingKeys(1);
  ApiRequest hop;
  hop.method = HttpMethod::kGet;
  const std::string path = "/v1/" + keys[0];
  hop.path = path;
  hop.hop = true;
  EXPECT_EQ(target_api_->Handle(hop).code, 503);  // not the owner, not importing
  ASSERT_TRUE(source_migrations_->Start(Request()).ok());
  AwaitState(State::kDone);
  EXPECT_TRUE(target_migrations_->Importing(protocol::KeySlot(keys[0])));
  EXPECT_EQ(target_api_->Handle(hop).code, 404);  // served here: the key does not exist
  // Slots the target does not import are still refused.
  EXPECT_FALSE(target_migrations_->Importing(9000));
}

TEST_F(MigrationTest, ASourceMarksItsFanoutListingWhileSlotsAreRouted) {
  StartSource({});
  for (const std::string& key : MovingKeys(3)) Put(source_store_, key, "v");
  ApiRequest hop_list;
  hop_list.method = HttpMethod::kGet;
  hop_list.path = "/v1";
  hop_list.hop = true;
  auto answers = [&] {
    return std::vector<ApiResponse>{source_api_->Handle(hop_list), target_api_->Handle(hop_list)};
  };
  std::vector<ApiResponse> before = answers();
  ASSERT_EQ(before[0].code, 200);
  EXPECT_FALSE(nlohmann::json::parse(before[0].body).contains("migrating"));
  EXPECT_FALSE(NodeApi::ListingNeedsSecondRound(before));
  ASSERT_TRUE(source_migrations_->Start(Request()).ok());
  AwaitState(State::kDone);
  // Until the topology flip, keys of the moved slots can have left the source after a
  // target's answer: the fan-out asks again.
  std::vector<ApiResponse> during = answers();
  EXPECT_EQ(nlohmann::json::parse(during[0].body).value("migrating", false), true);
  EXPECT_FALSE(nlohmann::json::parse(during[1].body).contains("migrating"));
  EXPECT_TRUE(NodeApi::ListingNeedsSecondRound(during));
}

TEST_F(MigrationTest, AFailedMigrationKeepsRoutingAndResumesOnlyAsItWas) {
  std::vector<std::string> keys = MovingKeys(25);
  MigrationOptions options;
  options.give_up_after = std::chrono::milliseconds(200);
  // The target goes away after the first batch (10 keys).
  options.on_acknowledged = [&](const ImportBatch&) { target_server_->Shutdown(); };
  StartSource(std::move(options));
  for (const std::string& key : keys) Put(source_store_, key, "v");
  ASSERT_TRUE(source_migrations_->Start(Request()).ok());
  AwaitState(State::kFailed);
  EXPECT_NE(source_migrations_->status().error.find("unreachable"), std::string::npos)
      << source_migrations_->status().error;
  EXPECT_FALSE(source_migrations_->active());
  EXPECT_EQ(source_migrations_->status().keys_moved, 10u);
  // Keys already at the target are still looked for there.
  int forwarded = 0;
  for (const std::string& key : keys) {
    if (SourceCall(HttpMethod::kGet, key).forward_to != nullptr) ++forwarded;
  }
  EXPECT_EQ(forwarded, 10);
  protocol::MigrationRequest other = Request();
  other.slots = {{0, 100}};
  EXPECT_EQ(source_migrations_->Start(other).status().code(), StatusCode::kConflict);
  StatusOr<protocol::MigrationStatus> resumed = source_migrations_->Start(Request());
  ASSERT_TRUE(resumed.ok()) << resumed.status().message();
  EXPECT_EQ(resumed->state, State::kStreaming);
  EXPECT_EQ(resumed->keys_moved, 10u);
}

// The node failed a move as a primary that was replaced; the new primary finished it and the
// slots went to the target. Leading its shard again later, it starts other moves.
TEST_F(MigrationTest, AFailedMoveWhoseSlotsWereGivenAwayDoesNotBlockTheNext) {
  MigrationOptions options;
  options.give_up_after = std::chrono::milliseconds(200);
  options.on_acknowledged = [&](const ImportBatch&) { target_server_->Shutdown(); };
  StartSource(std::move(options));
  for (const std::string& key : MovingKeys(25)) Put(source_store_, key, "v");
  ASSERT_TRUE(source_migrations_->Start(Request()).ok());
  AwaitState(State::kFailed);
  protocol::MigrationRequest next = Request();
  next.slots = {{8192, 9000}};
  EXPECT_EQ(source_migrations_->Start(next).status().code(), StatusCode::kConflict)
      << "slots 0-8191 are still this shard's: the failed move must be resumed first";

  protocol::Topology flipped = source_view_.current()->topology;
  flipped.epoch = 2;
  flipped.shards[0].slots = {{8192, 16383}};
  flipped.shards[1].slots = {{0, 8191}};
  ASSERT_TRUE(source_view_.Update(flipped).ok());
  StatusOr<protocol::MigrationStatus> started = source_migrations_->Start(next);
  ASSERT_TRUE(started.ok()) << started.status().message();
  EXPECT_EQ(started->state, State::kStreaming);
  EXPECT_EQ(started->slots, next.slots);
}

// A source ends a move when a pass over its store finds none of the slots' keys. From a store
// that is not its whole shard (still recovering, or part of a full sync: a new primary handed
// the move after a failover, see ReplicationApiTest.AReplicaCutOffInAFullSyncIsNotPromoted)
// that pass finds nothing and the slots would go to a target that never got their keys. Such a
// store neither starts a move (503 + Retry-After: the operator asks again) nor ends one.
TEST_F(MigrationTest, AStoreThatIsNotTheWholeShardNeitherStartsNorEndsAMove) {
  std::atomic<bool> complete{false};
  std::vector<std::string> keys = MovingKeys(25);
  MigrationOptions options;
  options.store_complete = [&complete]() -> Status {
    return complete ? Status::Ok() : UnavailableError("still recovering its data directory");
  };
  // Once the first batch (10 keys) is acknowledged, the store stops being the whole shard: the
  // other keys go, as when a full sync starts over it.
  std::atomic<bool> emptied{false};
  std::vector<std::string> gone;
  options.on_acknowledged = [&](const ImportBatch& batch) {
    if (emptied) return;
    complete = false;
    for (const std::string& key : keys) {
      bool in_batch = std::any_of(batch.entries.begin(), batch.entries.end(),
                                  [&](const ImportEntry& e) { return e.key == key; });
      if (!in_batch && source_store_.Delete(key).ok()) gone.push_back(key);
    }
    emptied = true;
  };
  StartSource(std::move(options));
  for (const std::string& key : keys) Put(source_store_, key, "v");

  ApiRequest post;
  post.method = HttpMethod::kPost;
  post.path = "/internal/migrations";
  const std::string body = protocol::EncodeMigrationRequest(Request());
  post.body = body;
  post.authorization = std::string("Bearer ") + kToken;
  ApiResponse refused = source_api_->Handle(post);
  EXPECT_EQ(refused.code, 503) << refused.body;
  EXPECT_EQ(refused.retry_after_seconds, 1);
  EXPECT_NE(refused.body.find("still recovering"), std::string::npos) << refused.body;
  EXPECT_EQ(source_migrations_->status().state, State::kIdle);
  EXPECT_FALSE(source_migrations_->routing_active());

  complete = true;
  ApiResponse started = source_api_->Handle(post);
  ASSERT_EQ(started.code, 200) << started.body;
  for (int i = 0; i < 1000 && !emptied; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(emptied);
  ASSERT_EQ(gone.size(), 15u);
  // The passes after it find no key here, yet the move is not done: a pass over a store that
  // is not the whole shard proves nothing. (Only a wait can show that something does not
  // happen; a pass takes microseconds here.)
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(source_migrations_->status().state, State::kStreaming);
  EXPECT_TRUE(source_migrations_->routing_active());
  EXPECT_EQ(target_store_.Stats().keys, 10u);
  // The sync completes (the rest of the keys are back) and the store is whole again: the move
  // ends with every key at the target.
  for (const std::string& key : gone) Put(source_store_, key, "v");
  complete = true;
  AwaitState(State::kDone);
  EXPECT_EQ(source_migrations_->status().keys_moved, 25u);
  EXPECT_EQ(target_store_.Stats().keys, 25u);
}

TEST_F(MigrationTest, RefusesBadRequests) {
  StartSource({});
  protocol::MigrationRequest foreign = Request();
  foreign.target_shard = 0;
  foreign.target = {"a", "127.0.0.1:1"};
  EXPECT_EQ(source_migrations_->Start(foreign).status().code(), StatusCode::kInvalidArgument);
  protocol::MigrationRequest unknown = Request();
  unknown.target_shard = 9;
  EXPECT_EQ(source_migrations_->Start(unknown).status().code(), StatusCode::kInvalidArgument);
  // The target cannot send slots: it owns none.
  Migrations from_target(target_store_, target_view_, forwarder_, Env::Posix(), {}, nullptr);
  protocol::MigrationRequest back = Request();
  back.target_shard = 0;
  back.target = {"a", "127.0.0.1:1"};
  StatusOr<protocol::MigrationStatus> refused = from_target.Start(back);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("not owned by shard 1"), std::string::npos);
  EXPECT_EQ(source_migrations_->status().state, State::kIdle);
}

}  // namespace
}  // namespace kvcache::node
