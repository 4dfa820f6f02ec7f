#include "server/http_util.h"

#include <gtest/gtest.h>

namespace kvcache::node {
namespace {

TEST(PercentDecode, DecodesEscapesAndKeepsPlus) {
  EXPECT_EQ(*PercentDecode("a%20b+c%2F%00"), std::string("a b+c/\0", 7));
  EXPECT_EQ(*PercentDecode("%e2%9C%93"), "\xe2\x9c\x93");
}

TEST(PercentDecode, RejectsMalformedEscapes) {
  for (const char* bad : {"%", "%4", "%zz", "a%g1", "%%"}) {
    EXPECT_EQ(PercentDecode(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST(PercentEncode, RoundTripsEveryByte) {
  std::string all;
  for (int c = 0; c < 256; ++c) all.push_back(static_cast<char>(c));
  EXPECT_EQ(*PercentDecode(PercentEncode(all)), all);
}

TEST(Etag, FormatsAndParsesStrongTags) {
  std::string tag = FormatEtag(0x0123456789abcdefULL);
  EXPECT_EQ(tag, "\"0123456789abcdef\"");
  auto cond = ParseEtagCondition(" W/\"0000000000000001\", " + tag + " ,\"other\"");
  ASSERT_TRUE(cond.ok());
  EXPECT_FALSE(cond->any);
  EXPECT_EQ(cond->etags, (std::vector<uint64_t>{0x0123456789abcdefULL}));  // weak never matches
  EXPECT_TRUE(ParseEtagCondition("*")->any);
  EXPECT_EQ(ParseEtagCondition("abc").status().code(), StatusCode::kInvalidArgument);
}

TEST(JsonError, EscapesMessages) {
  EXPECT_EQ(JsonError(404, "no \"x\""), R"({"code":404,"error":"no \"x\""})");
  // Invalid UTF-8 never throws.
  EXPECT_FALSE(JsonError(400, "\xff").empty());
}

TEST(HttpCodeFor, MapsEveryCode) {
  EXPECT_EQ(HttpCodeFor(StatusCode::kNotFound), 404);
  EXPECT_EQ(HttpCodeFor(StatusCode::kFailedPrecondition), 412);
  EXPECT_EQ(HttpCodeFor(StatusCode::kResourceExhausted), 507);
  EXPECT_EQ(HttpCodeFor(StatusCode::kUnavailable), 503);
}

TEST(Hex, RoundTripsAndRejectsGarbage) {
  EXPECT_EQ(*HexDecode(HexEncode(std::string("\0\xff k", 4))), std::string("\0\xff k", 4));
  EXPECT_FALSE(HexDecode("abc").has_value());
  EXPECT_FALSE(HexDecode("zz").has_value());
}

TEST(ParseNonNegativeInt, AcceptsOnlyPlainDecimals) {
  EXPECT_EQ(*ParseNonNegativeInt("42"), 42);
  for (const char* bad : {"", "-1", "1.5", "1e3", " 1", "99999999999999999999"}) {
    EXPECT_FALSE(ParseNonNegativeInt(bad).has_value()) << bad;
  }
}

TEST(ConstantTimeEquals, ComparesWholeStrings) {
  EXPECT_TRUE(ConstantTimeEquals("secret", "secret"));
  EXPECT_FALSE(ConstantTimeEquals("secret", "secreT"));
  EXPECT_FALSE(ConstantTimeEquals("secret", "secret2"));
  EXPECT_FALSE(ConstantTimeEquals("", "x"));
}

}  // namespace
}  // namespace kvcache::node
