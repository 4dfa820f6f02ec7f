// RestAdminClient: the HTTP -> Status table, and an unreachable node is Unavailable.
#include <gtest/gtest.h>

#include "protocol/rest_admin_client.h"

namespace kvcache::protocol {
namespace {

TEST(RestAdminClient, MapsAdminAnswersToStatusCodes) {
  EXPECT_EQ(AdminStatusFromHttp(400, "").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(AdminStatusFromHttp(401, "").code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(AdminStatusFromHttp(403, "").code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(AdminStatusFromHttp(404, "").code(), StatusCode::kNotFound);
  EXPECT_EQ(AdminStatusFromHttp(409, "epoch").code(), StatusCode::kConflict);
  EXPECT_EQ(AdminStatusFromHttp(412, "").code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(AdminStatusFromHttp(503, "").code(), StatusCode::kUnavailable);
  EXPECT_NE(AdminStatusFromHttp(409, "epoch 7").message().find("epoch 7"), std::string::npos);
}

TEST(RestAdminClient, UnreachableNodeIsUnavailable) {
  RestAdminClient client("token", std::chrono::milliseconds(500));
  // Port 1 on loopback: nothing listens, the connection is refused at once.
  auto status = client.GetStatus("127.0.0.1:1");
  EXPECT_EQ(status.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(client.Promote("127.0.0.1:1", PromoteRequest{2}).status().code(),
            StatusCode::kUnavailable);
}

}  // namespace
}  // namespace kvcache::protocol
