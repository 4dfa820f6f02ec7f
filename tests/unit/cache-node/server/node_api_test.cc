#include "server/node_api.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "server/http_util.h"

namespace kvcache::node {
namespace {

class NodeApiTest : public ::testing::Test {
 protected:
  explicit NodeApiTest(ApiOptions options = {}, StoreOptions store_options = {})
      : store_(store_options, clock_),
        api_(store_, clock_, options, [this] { return ready_; }, [] { return "m 1\n"; }) {}

  ApiResponse Call(HttpMethod method, std::string path, std::string body = "") {
    ApiRequest req;
    req.method = method;
    req.path = path;
    req.body = body;
    return Call(req);
  }
  ApiResponse Call(const ApiRequest& req) { return api_.Handle(req); }

  static std::string ErrorOf(const ApiResponse& r) {
    return nlohmann::json::parse(r.body).at("error").get<std::string>();
  }

  FakeClock clock_;
  Store store_;
  bool ready_ = true;
  NodeApi api_;
};

TEST_F(NodeApiTest, PutCreatesThenReplaces) {
  EXPECT_EQ(Call(HttpMethod::kPut, "/v1/k", "v1").code, 201);
  EXPECT_EQ(Call(HttpMethod::kPut, "/v1/k", "v2").code, 200);
  ApiResponse got = Call(HttpMethod::kGet, "/v1/k");
  EXPECT_EQ(got.code, 200);
  EXPECT_EQ(got.body, "v2");
  EXPECT_EQ(got.content_type, "text/plain");
  EXPECT_TRUE(got.etag.has_value());
}

TEST_F(NodeApiTest, GetMissingIsJson404) {
  ApiResponse r = Call(HttpMethod::kGet, "/v1/none");
  EXPECT_EQ(r.code, 404);
  EXPECT_EQ(r.content_type, "application/json");
  auto body = nlohmann::json::parse(r.body);
  EXPECT_EQ(body["code"], 404);
  EXPECT_EQ(body["error"], "key not found");
}

TEST_F(NodeApiTest, KeysArePercentDecoded) {
  EXPECT_EQ(Call(HttpMethod::kPut, "/v1/a%2Fb%20c", "v").code, 201);
  EXPECT_TRUE(store_.Get("a/b c").ok());
  EXPECT_EQ(Call(HttpMethod::kGet, "/v1/a%2fb%20c").body, "v");
}

TEST_F(NodeApiTest, BadKeysGetClearErrors) {
  EXPECT_EQ(Call(HttpMethod::kGet, "/v1/a/b").code, 400);
  EXPECT_EQ(Call(HttpMethod::kGet, "/v1/bad%zz").code, 400);
  EXPECT_EQ(Call(HttpMethod::kGet, "/v1/" + std::string(1025, 'k')).code, 414);
  EXPECT_EQ(Call(HttpMethod::kGet, "/v1/" + std::string(1024, 'k')).code, 404);
  EXPECT_EQ(Call(HttpMethod::kPut, "/v1/" + std::string(5000, 'k')).code, 414);
}

TEST_F(NodeApiTest, HeadHasNoBodyButSameHeaders) {
  ASSERT_EQ(Call(HttpMethod::kPut, "/v1/k", "value").code, 201);
  ApiResponse head = Call(HttpMethod::kHead, "/v1/k");
  EXPECT_EQ(head.code, 200);
  EXPECT_TRUE(head.body.empty());
  EXPECT_EQ(head.etag, Call(HttpMethod::kGet, "/v1/k").etag);
  EXPECT_EQ(Call(HttpMethod::kHead, "/v1/missing").code, 404);
}

TEST_F(NodeApiTest, StoresContentType) {
  ApiRequest put;
  put.method = HttpMethod::kPut;
  put.path = "/v1/doc";
  put.body = R"({"a":1})";
  put.content_type = "application/json; charset=utf-8";
  ASSERT_EQ(Call(put).code, 201);
  EXPECT_EQ(Call(HttpMethod::kGet, "/v1/doc").content_type, "application/json; charset=utf-8");
}

TEST_F(NodeApiTest, TtlExpiresKeys) {
  ApiRequest put;
  put.method = HttpMethod::kPut;
  put.path = "/v1/k";
  put.body = "v";
  put.ttl = "2";
  ASSERT_EQ(Call(put).code, 201);
  clock_.AdvanceMs(1999);
  EXPECT_EQ(Call(HttpMethod::kGet, "/v1/k").code, 200);
  clock_.AdvanceMs(1);
  EXPECT_EQ(Call(HttpMethod::kGet, "/v1/k").code, 404);
}

TEST_F(NodeApiTest, BadTtlIsRefusedAndNothingWritten) {
  for (const char* ttl : {"0", "-5", "abc", "1.5", "", "999999999999"}) {
    ApiRequest put;
    put.method = HttpMethod::kPut;
    put.path = "/v1/k";
    put.ttl = ttl;
    EXPECT_EQ(Call(put).code, 400) << ttl;
  }
  EXPECT_FALSE(store_.Get("k").ok());
}

TEST_F(NodeApiTest, ConditionalWrites) {
  ApiResponse created = Call(HttpMethod::kPut, "/v1/k", "v1");
  ASSERT_TRUE(created.etag);
  ApiRequest cas;
  cas.method = HttpMethod::kPut;
  cas.path = "/v1/k";
  cas.body = "v2";
  cas.if_match = FormatEtag(*created.etag + 1);
  EXPECT_EQ(Call(cas).code, 412);
  cas.if_match = FormatEtag(*created.etag);
  EXPECT_EQ(Call(cas).code, 200);
  EXPECT_EQ(Call(cas).code, 412);  // the tag moved on
  ApiRequest create_only;
  create_only.method = HttpMethod::kPut;
  create_only.path = "/v1/k";
  create_only.if_none_match = "*";
  EXPECT_EQ(Call(create_only).code, 412);
  create_only.path = "/v1/new";
  EXPECT_EQ(Call(create_only).code, 201);
  cas.if_match = "garbage";
  EXPECT_EQ(Call(cas).code, 400);
}

TEST_F(NodeApiTest, GetWithMatchingIfNoneMatchIs304) {
  ApiResponse created = Call(HttpMethod::kPut, "/v1/k", "v");
  ApiRequest get;
  get.method = HttpMethod::kGet;
  get.path = "/v1/k";
  get.if_none_match = FormatEtag(*created.etag);
  ApiResponse r = Call(get);
  EXPECT_EQ(r.code, 304);
  EXPECT_TRUE(r.body.empty());
}

TEST_F(NodeApiTest, DeleteAnswers204Then404) {
  Call(HttpMethod::kPut, "/v1/k", "v");
  EXPECT_EQ(Call(HttpMethod::kDelete, "/v1/k").code, 204);
  EXPECT_EQ(Call(HttpMethod::kDelete, "/v1/k").code, 404);
}

TEST_F(NodeApiTest, OtherMethodsGet405WithAllow) {
  for (HttpMethod m : {HttpMethod::kPost, HttpMethod::kPatch, HttpMethod::kOptions}) {
    ApiResponse r = Call(m, "/v1/k");
    EXPECT_EQ(r.code, 405);
    EXPECT_STREQ(r.allow, "GET, HEAD, PUT, DELETE");
  }
  EXPECT_EQ(Call(HttpMethod::kGet, "/flush").code, 405);
  EXPECT_EQ(Call(HttpMethod::kPut, "/v1").code, 405);
  EXPECT_EQ(Call(HttpMethod::kPost, "/healthz").code, 405);
}

TEST_F(NodeApiTest, UnknownPathsAre404) {
  EXPECT_EQ(Call(HttpMethod::kGet, "/").code, 404);
  EXPECT_EQ(Call(HttpMethod::kGet, "/v2/k").code, 404);
}

TEST_F(NodeApiTest, FlushEmptiesTheStore) {
  Call(HttpMethod::kPut, "/v1/a", "1");
  Call(HttpMethod::kPut, "/v1/b", "2");
  ApiResponse r = Call(HttpMethod::kDelete, "/flush");
  EXPECT_EQ(r.code, 200);
  EXPECT_EQ(nlohmann::json::parse(r.body)["flushed"], 2);
  EXPECT_EQ(Call(HttpMethod::kGet, "/v1/a").code, 404);
}

TEST_F(NodeApiTest, ListPagesWithCursor) {
  for (const char* k : {"a1", "a2", "a3", "b1"}) Call(HttpMethod::kPut, std::string("/v1/") + k);
  ApiRequest list;
  list.method = HttpMethod::kGet;
  list.path = "/v1";
  list.prefix = "a";
  list.limit = "2";
  auto page = nlohmann::json::parse(Call(list).body);
  EXPECT_EQ(page["keys"], nlohmann::json({"a1", "a2"}));
  ASSERT_TRUE(page["cursor"].is_string());
  list.cursor = page["cursor"].get<std::string>();
  page = nlohmann::json::parse(Call(list).body);
  EXPECT_EQ(page["keys"], nlohmann::json({"a3"}));
  EXPECT_TRUE(page["cursor"].is_null());
  list.limit = "0";
  EXPECT_EQ(Call(list).code, 400);
  list.limit = "2";
  list.cursor = "not-hex";
  EXPECT_EQ(Call(list).code, 400);
}

TEST_F(NodeApiTest, MergeFanoutUnitesBothRoundsOfAListing) {
  auto answer = [](const char* body) {
    ApiResponse r;
    r.body = body;
    return r;
  };
  // Round 1 missed "b" (it moved between the shards' answers); round 2 has it.
  std::vector<ApiResponse> rounds = {
      answer(R"({"keys": ["a", "c"], "count": 2, "cursor": null, "migrating": true})"),
      answer(R"({"keys": [], "count": 0, "cursor": null})"),
      answer(R"({"keys": ["a", "c"], "count": 2, "cursor": null, "migrating": true})"),
      answer(R"({"keys": ["b"], "count": 1, "cursor": null})")};
  EXPECT_TRUE(NodeApi::ListingNeedsSecondRound(rounds));
  EXPECT_FALSE(NodeApi::ListingNeedsSecondRound({rounds[1], rounds[3]}));
  ApiRequest list;
  list.method = HttpMethod::kGet;
  list.path = "/v1";
  list.limit = "10";
  auto merged = nlohmann::json::parse(api_.MergeFanout(list, rounds).body);
  EXPECT_EQ(merged["keys"], nlohmann::json({"a", "b", "c"}));
  EXPECT_TRUE(merged["cursor"].is_null());
  EXPECT_FALSE(merged.contains("migrating"));
  list.limit = "2";
  merged = nlohmann::json::parse(api_.MergeFanout(list, rounds).body);
  EXPECT_EQ(merged["keys"], nlohmann::json({"a", "b"}));
  EXPECT_EQ(merged["cursor"], HexEncode("b"));
}

// A shard's answer is input: keys that are not strings (or no listing at all) fail the listing
// with 503, never an exception on the forwarder's thread (which ended the node).
TEST_F(NodeApiTest, MergeFanoutRefusesAnAnswerThatIsNotAListing) {
  ApiRequest list;
  list.method = HttpMethod::kGet;
  list.path = "/v1";
  for (const char* bad : {R"({"keys": [1, "b"], "cursor": null})", R"({"keys": "a"})", "[]",
                          "not json"}) {
    ApiResponse own, other;
    own.body = R"({"keys": ["a"], "count": 1, "cursor": null})";
    other.body = bad;
    ApiResponse merged = api_.MergeFanout(list, {own, other});
    EXPECT_EQ(merged.code, 503) << bad;
    EXPECT_EQ(merged.retry_after_seconds, 1) << bad;
  }
}

TEST_F(NodeApiTest, HealthAndReadiness) {
  EXPECT_EQ(Call(HttpMethod::kGet, "/healthz").code, 200);
  EXPECT_EQ(Call(HttpMethod::kGet, "/readyz").code, 200);
  ready_ = false;
  EXPECT_EQ(Call(HttpMethod::kGet, "/readyz").code, 503);
  EXPECT_EQ(Call(HttpMethod::kGet, "/metrics").body, "m 1\n");
}

TEST_F(NodeApiTest, DocsAndSpecAreServed) {
  ApiResponse spec = Call(HttpMethod::kGet, "/openapi.json");
  EXPECT_EQ(spec.code, 200);
  EXPECT_EQ(nlohmann::json::parse(spec.body)["openapi"].get<std::string>().substr(0, 2), "3.");
  EXPECT_EQ(Call(HttpMethod::kGet, "/docs").code, 200);
  EXPECT_EQ(Call(HttpMethod::kGet, "/docs/swagger-ui-bundle.js").code, 200);
}

class NodeApiLimitsTest : public NodeApiTest {
 protected:
  static ApiOptions Options() {
    ApiOptions o;
    o.max_value_bytes = 10;
    o.max_key_bytes = 4;
    o.auth_token = "s3cret";
    return o;
  }
  static StoreOptions Store() {
    StoreOptions s;
    s.max_memory_bytes = 4096;
    s.eviction = EvictionPolicy::kNoEviction;
    return s;
  }
  NodeApiLimitsTest() : NodeApiTest(Options(), Store()) {}

  ApiRequest Authed(HttpMethod method, std::string_view path, std::string_view body = "") {
    ApiRequest r;
    r.method = method;
    r.path = path;
    r.body = body;
    r.authorization = "Bearer s3cret";
    return r;
  }
};

TEST_F(NodeApiLimitsTest, DataApiNeedsBearerToken) {
  ApiResponse r = Call(HttpMethod::kGet, "/v1/k");
  EXPECT_EQ(r.code, 401);
  EXPECT_TRUE(r.www_authenticate);
  ApiRequest wrong = Authed(HttpMethod::kGet, "/v1/k");
  wrong.authorization = "Bearer nope";
  EXPECT_EQ(Call(wrong).code, 401);
  EXPECT_EQ(Call(HttpMethod::kDelete, "/flush").code, 401);
  EXPECT_EQ(Call(Authed(HttpMethod::kGet, "/v1/k")).code, 404);
  // Probes and metrics stay open.
  EXPECT_EQ(Call(HttpMethod::kGet, "/healthz").code, 200);
}

TEST_F(NodeApiLimitsTest, LimitsAnswer413And414And507) {
  EXPECT_EQ(Call(Authed(HttpMethod::kPut, "/v1/k", std::string(11, 'x'))).code, 413);
  EXPECT_EQ(Call(Authed(HttpMethod::kPut, "/v1/kkkkk", "x")).code, 414);
  int code = 0;
  int written = 0;
  for (int i = 0; i < 1000 && code != 507; ++i) {
    code = Call(Authed(HttpMethod::kPut, "/v1/" + std::to_string(i), "0123456789")).code;
    if (code == 201) ++written;
  }
  EXPECT_EQ(code, 507);
  EXPECT_EQ(store_.Stats().keys, static_cast<uint64_t>(written));
}

}  // namespace
}  // namespace kvcache::node

namespace kvcache::node {
namespace {

TEST_F(NodeApiTest, ListPrefixIsFormDecoded) {
  Call(HttpMethod::kPut, "/v1/a%20b1");
  Call(HttpMethod::kPut, "/v1/a%2Bb2");
  ApiRequest list;
  list.method = HttpMethod::kGet;
  list.path = "/v1";
  list.prefix = "a+b";
  EXPECT_EQ(nlohmann::json::parse(Call(list).body)["keys"], nlohmann::json({"a b1"}));
  list.prefix = "a%2Bb";
  EXPECT_EQ(nlohmann::json::parse(Call(list).body)["keys"], nlohmann::json({"a+b2"}));
}

TEST_F(NodeApiTest, DataApiAnswers503WhileNotReady) {
  ready_ = false;
  ApiResponse r = Call(HttpMethod::kGet, "/v1/k");
  EXPECT_EQ(r.code, 503);
  EXPECT_EQ(r.retry_after_seconds, 1);
  EXPECT_EQ(Call(HttpMethod::kGet, "/healthz").code, 200);
}

}  // namespace
}  // namespace kvcache::node
