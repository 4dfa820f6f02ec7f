#include "server/metrics.h"

#include <gtest/gtest.h>

namespace kvcache::node {
namespace {

TEST(NodeMetrics, CountsRequestsByMethodAndCode) {
  FakeClock clock;
  Store store({}, clock);
  NodeMetrics metrics(store, [] { return true; }, "test");
  metrics.RecordRequest(HttpMethod::kGet, 200, std::chrono::microseconds(50));
  metrics.RecordRequest(HttpMethod::kGet, 200, std::chrono::microseconds(50));
  metrics.RecordRequest(HttpMethod::kPut, 599, std::chrono::milliseconds(3));
  std::string text = metrics.Render();
  EXPECT_NE(text.find(R"(kvcache_node_http_requests_total{code="200",method="GET"} 2)"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find(R"(kvcache_node_http_requests_total{code="other",method="PUT"} 1)"),
            std::string::npos);
  EXPECT_NE(text.find(R"(kvcache_node_http_request_duration_seconds_bucket{method="GET",le="0.0001"} 2)"),
            std::string::npos);
  EXPECT_NE(text.find(R"(kvcache_node_http_request_duration_seconds_count{method="PUT"} 1)"),
            std::string::npos);
}

TEST(NodeMetrics, CountsForwardedRequestsByTheOwnersAnswer) {
  FakeClock clock;
  Store store({}, clock);
  NodeMetrics metrics(store, [] { return true; }, "test");
  EXPECT_EQ(metrics.Render().find("kvcache_node_forwarded_requests_total{"), std::string::npos);
  metrics.RecordForwarded(200);
  metrics.RecordForwarded(200);
  metrics.RecordForwarded(503);
  std::string text = metrics.Render();
  EXPECT_NE(text.find(R"(kvcache_node_forwarded_requests_total{code="200"} 2)"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find(R"(kvcache_node_forwarded_requests_total{code="503"} 1)"),
            std::string::npos);
}

TEST(NodeMetrics, ExportsStoreFigures) {
  FakeClock clock;
  Store store({}, clock);
  PutRequest put;
  put.key = "k";
  put.value = "v";
  ASSERT_TRUE(store.Put(put).ok());
  ASSERT_TRUE(store.Get("k").ok());
  ASSERT_FALSE(store.Get("missing").ok());
  NodeMetrics metrics(store, [] { return false; }, "test");
  std::string text = metrics.Render();
  for (const char* line : {"kvcache_node_keys 1", "kvcache_node_hits_total 1",
                           "kvcache_node_misses_total 1", "kvcache_node_ready 0",
                           "kvcache_node_build_info{version=\"test\"} 1"}) {
    EXPECT_NE(text.find(line), std::string::npos) << line << "\n" << text;
  }
}

}  // namespace
}  // namespace kvcache::node
