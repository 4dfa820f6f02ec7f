// Small pure helpers for the HTTP layer: percent-decoding, ETag formatting and parsing, JSON
// error bodies, the Status -> HTTP code table.
//
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/status.h"

namespace kvcache::node {

// Decodes %XX escapes (and nothing else: '+' stays '+', as in a path). Returns
// InvalidArgument for a '%' not followed by two hex digits.
StatusOr<std::string> PercentDecode(std::string_view in);

// Encodes every byte outside RFC 3986 "unreserved" as %XX.
std::string PercentEncode(std::string_view in);

// "\"0123456789abcdef\"": a strong ETag.
std::string FormatEtag(uint64_t etag);

// A parsed If-Match / If-None-Match header: "*" or a list of entity tags.
struct EtagCondition {
  bool any = false;             // "*"
  std::vector<uint64_t> etags;  // strong tags of our format; others can never match
};
// Returns InvalidArgument when the header is not a valid entity-tag list.
StatusOr<EtagCondition> ParseEtagCondition(std::string_view header);

// {"error":"...","code":N} with the message safely escaped.
std::string JsonError(int http_code, std::string_view message);

// The one Status -> HTTP status table of the node.
int HttpCodeFor(StatusCode code);

// Hex encoding of bytes, used for opaque cursors.
std::string HexEncode(std::string_view in);
std::optional<std::string> HexDecode(std::string_view in);

// Parses a non-negative decimal integer that fits in int64; nullopt otherwise.
std::optional<int64_t> ParseNonNegativeInt(std::string_view in);

// Constant-time comparison (for tokens).
bool ConstantTimeEquals(std::string_view a, std::string_view b);

}  // namespace kvcache::node
