#include "kube/selector.h"

#include <gtest/gtest.h>

namespace kvcache::kube {
namespace {

using json = nlohmann::json;

TEST(LabelSelector, EqualityInAndExists) {
  json labels = {{"app", "kvcache"}, {"shard", "1"}};
  auto sel = [&](const char* s) {
    auto parsed = LabelSelector::Parse(s);
    EXPECT_TRUE(parsed.ok()) << s;
    return parsed->Matches(labels);
  };
  EXPECT_TRUE(sel(""));
  EXPECT_TRUE(sel("app=kvcache"));
  EXPECT_TRUE(sel("app==kvcache,shard=1"));
  EXPECT_FALSE(sel("app=other"));
  EXPECT_TRUE(sel("app!=other"));
  EXPECT_FALSE(sel("app!=kvcache"));
  EXPECT_TRUE(sel("shard in (0, 1)"));
  EXPECT_FALSE(sel("shard notin (0,1)"));
  EXPECT_TRUE(sel("app, shard"));
  EXPECT_FALSE(sel("!app"));
  EXPECT_TRUE(sel("!missing"));
  EXPECT_FALSE(sel("missing in (x)"));
  EXPECT_TRUE(sel("missing notin (x)"));
}

TEST(LabelSelector, RejectsMalformed) {
  EXPECT_FALSE(LabelSelector::Parse("a in (x").ok());
  EXPECT_FALSE(LabelSelector::Parse("a,,b").ok());
  EXPECT_FALSE(LabelSelector::Parse("a foo (x)").ok());
}

TEST(LabelSelector, FromMetav1Object) {
  auto sel = LabelSelector::FromObject(
      {{"matchLabels", {{"app", "x"}}},
       {"matchExpressions", {{{"key", "tier"}, {"operator", "In"}, {"values", {"a", "b"}}}}}});
  ASSERT_TRUE(sel.ok());
  EXPECT_TRUE(sel->Matches({{"app", "x"}, {"tier", "b"}}));
  EXPECT_FALSE(sel->Matches({{"app", "x"}, {"tier", "c"}}));
  EXPECT_FALSE(LabelSelector::FromObject({{"matchExpressions", {{{"operator", "Nope"}}}}}).ok());
}

TEST(FieldSelector, DottedPaths) {
  json pod = {{"metadata", {{"name", "p"}}}, {"status", {{"phase", "Running"}}}};
  auto sel = FieldSelector::Parse("metadata.name=p,status.phase!=Failed");
  ASSERT_TRUE(sel.ok());
  EXPECT_TRUE(sel->Matches(pod));
  EXPECT_FALSE(FieldSelector::Parse("status.phase=Pending")->Matches(pod));
  EXPECT_FALSE(FieldSelector::Parse("nonsense").ok());
}

}  // namespace
}  // namespace kvcache::kube
