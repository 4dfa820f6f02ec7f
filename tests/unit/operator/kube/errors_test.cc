#include "kube/errors.h"

#include <gtest/gtest.h>

namespace kvcache::kube {
namespace {

std::string ApiStatus(int code, const std::string& reason, const std::string& message) {
  return nlohmann::json{{"kind", "Status"}, {"apiVersion", "v1"}, {"status", "Failure"},
                        {"reason", reason}, {"message", message}, {"code", code}}
      .dump();
}

TEST(Errors, MapsHttpCodesInOnePlace) {
  struct Case {
    int http;
    std::string reason;
    StatusCode want;
    bool retriable;
  };
  for (const Case& c : std::vector<Case>{
           {200, "", StatusCode::kOk, false},
           {404, "NotFound", StatusCode::kNotFound, false},
           {409, "AlreadyExists", StatusCode::kAlreadyExists, false},
           {409, "Conflict", StatusCode::kConflict, false},
           {410, "Expired", StatusCode::kOutOfRange, false},
           {400, "BadRequest", StatusCode::kInvalidArgument, false},
           {422, "Invalid", StatusCode::kInvalidArgument, false},
           {415, "UnsupportedMediaType", StatusCode::kInvalidArgument, false},
           {401, "Unauthorized", StatusCode::kUnauthenticated, false},
           {403, "Forbidden", StatusCode::kPermissionDenied, false},
           {429, "TooManyRequests", StatusCode::kResourceExhausted, true},
           {500, "InternalError", StatusCode::kUnavailable, true},
           {503, "ServiceUnavailable", StatusCode::kUnavailable, true},
           {504, "Timeout", StatusCode::kUnavailable, true},
       }) {
    Status s = StatusFromHttp(c.http, ApiStatus(c.http, c.reason, "msg"));
    EXPECT_EQ(s.code(), c.want) << c.http << " " << c.reason;
    EXPECT_EQ(IsRetriable(s), c.retriable) << c.http;
    if (!s.ok()) {
      EXPECT_NE(s.message().find("msg"), std::string::npos);
    }
  }
  // Not a Status body (a proxy's HTML page): still mapped by code, body quoted.
  Status s = StatusFromHttp(502, "<html>bad gateway</html>");
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_NE(s.message().find("bad gateway"), std::string::npos);
}

TEST(Errors, WatchErrorEventStatus) {
  Status s = StatusFromApiStatus(
      {{"kind", "Status"}, {"code", 410}, {"reason", "Expired"}, {"message", "too old"}});
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
}

TEST(Errors, RetryAfter) {
  EXPECT_EQ(ParseRetryAfter("3"), std::chrono::seconds(3));
  EXPECT_EQ(ParseRetryAfter(" 0 "), std::chrono::seconds(0));
  EXPECT_EQ(ParseRetryAfter(""), std::nullopt);
  EXPECT_EQ(ParseRetryAfter("soon"), std::nullopt);
  auto now = std::chrono::system_clock::from_time_t(1445412470);  // 07:27:50 GMT
  EXPECT_EQ(ParseRetryAfter("Wed, 21 Oct 2015 07:28:00 GMT", now), std::chrono::seconds(10));
  EXPECT_EQ(ParseRetryAfter("Wed, 21 Oct 2015 07:27:00 GMT", now), std::chrono::seconds(0));
}

}  // namespace
}  // namespace kvcache::kube
