#include "server/http_util.h"

#include <charconv>

#include <nlohmann/json.hpp>

namespace kvcache::node {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

constexpr char kHexDigits[] = "0123456789abcdef";

bool IsUnreserved(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         c == '-' || c == '.' || c == '_' || c == '~';
}

}  // namespace

StatusOr<std::string> PercentDecode(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out.push_back(in[i]);
      continue;
    }
    int hi = i + 2 < in.size() ? HexValue(in[i + 1]) : -1;
    int lo = i + 2 < in.size() ? HexValue(in[i + 2]) : -1;
    if (hi < 0 || lo < 0) {
      return InvalidArgumentError("bad percent-encoding at byte " + std::to_string(i) +
                                  ": '%' must be followed by two hex digits");
    }
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return out;
}

std::string PercentEncode(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (unsigned char c : in) {
    if (IsUnreserved(c)) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHexDigits[c >> 4]);
      out.push_back(kHexDigits[c & 15]);
    }
  }
  return out;
}

std::string FormatEtag(uint64_t etag) {
  std::string out(18, '"');
  for (int i = 0; i < 16; ++i) out[16 - i] = kHexDigits[(etag >> (4 * i)) & 15];
  return out;
}

StatusOr<EtagCondition> ParseEtagCondition(std::string_view header) {
  EtagCondition cond;
  auto trim = [](std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
  };
  std::string_view rest = trim(header);
  if (rest == "*") {
    cond.any = true;
    return cond;
  }
  while (!rest.empty()) {
    size_t comma = rest.find(',');
    std::string_view item = trim(rest.substr(0, comma));
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    if (item.empty()) continue;
    bool weak = item.substr(0, 2) == "W/";
    if (weak) item.remove_prefix(2);
    if (item.size() < 2 || item.front() != '"' || item.back() != '"') {
      return InvalidArgumentError("ETag condition must be * or a list of quoted entity tags");
    }
    std::string_view tag = item.substr(1, item.size() - 2);
    uint64_t value = 0;
    auto [ptr, ec] = std::from_chars(tag.data(), tag.data() + tag.size(), value, 16);
    // Weak tags and tags not of our format are valid syntax but can never match.
    if (!weak && ec == std::errc() && ptr == tag.data() + tag.size() && tag.size() == 16) {
      cond.etags.push_back(value);
    }
  }
  return cond;
}

std::string JsonError(int http_code, std::string_view message) {
  nlohmann::json body = {{"error", message}, {"code", http_code}};
  return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

int HttpCodeFor(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return 200;
    case StatusCode::kNotFound: return 404;
    case StatusCode::kAlreadyExists: return 409;
    case StatusCode::kConflict: return 409;
    case StatusCode::kInvalidArgument: return 400;
    case StatusCode::kFailedPrecondition: return 412;
    case StatusCode::kPermissionDenied: return 403;
    case StatusCode::kUnauthenticated: return 401;
    case StatusCode::kResourceExhausted: return 507;
    case StatusCode::kOutOfRange: return 416;
    case StatusCode::kUnavailable: return 503;
    case StatusCode::kInternal: return 500;
  }
  return 500;
}

std::string HexEncode(std::string_view in) {
  std::string out;
  out.reserve(in.size() * 2);
  for (unsigned char c : in) {
    out.push_back(kHexDigits[c >> 4]);
    out.push_back(kHexDigits[c & 15]);
  }
  return out;
}

std::optional<std::string> HexDecode(std::string_view in) {
  if (in.size() % 2 != 0) return std::nullopt;
  std::string out;
  out.reserve(in.size() / 2);
  for (size_t i = 0; i < in.size(); i += 2) {
    int hi = HexValue(in[i]);
    int lo = HexValue(in[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out.push_back(static_cast<char>(hi * 16 + lo));
  }
  return out;
}

std::optional<int64_t> ParseNonNegativeInt(std::string_view in) {
  int64_t value = 0;
  if (in.empty()) return std::nullopt;
  auto [ptr, ec] = std::from_chars(in.data(), in.data() + in.size(), value, 10);
  if (ec != std::errc() || ptr != in.data() + in.size() || value < 0) return std::nullopt;
  return value;
}

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  }
  return diff == 0;
}

}  // namespace kvcache::node
