#include "kube/retry.h"

#include <gtest/gtest.h>

#include "kube/fake_kube_client.h"

namespace kvcache::kube {
namespace {

TEST(RetryOnConflict, RereadsAndRetriesOnlyConflicts) {
  FakeKubeClient kube;
  const ResourceRef cms{"", "v1", "configmaps", "ConfigMap", true};
  ASSERT_TRUE(kube.Create(cms, "ns", {{"metadata", {{"name", "a"}}}, {"data", {{"n", "0"}}}}).ok());
  kube.InjectError(Verb::kUpdate, ConflictError("modified"), 2);
  int attempts = 0;
  Status s = RetryOnConflict([&]() -> Status {
    ++attempts;
    auto fresh = kube.Get(cms, "ns", "a");
    if (!fresh.ok()) return fresh.status();
    (*fresh)["data"]["n"] = "1";
    auto updated = kube.Update(cms, "ns", *fresh);
    return updated.ok() ? Status::Ok() : updated.status();
  });
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(attempts, 3);
  EXPECT_EQ(RetryOnConflict([] { return NotFoundError("x"); }).code(), StatusCode::kNotFound);
  int n = 0;
  EXPECT_EQ(RetryOnConflict([&] { ++n; return ConflictError("x"); }, 3).code(),
            StatusCode::kConflict);
  EXPECT_EQ(n, 3);
}

}  // namespace
}  // namespace kvcache::kube
