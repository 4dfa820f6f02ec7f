#include "kube/errors.h"

#include <cctype>
#include <ctime>

namespace kvcache::kube {
namespace {

StatusCode CodeFor(int http_code, std::string_view reason) {
  switch (http_code) {
    case 404: return StatusCode::kNotFound;
    case 409: return reason == "AlreadyExists" ? StatusCode::kAlreadyExists : StatusCode::kConflict;
    case 410: return StatusCode::kOutOfRange;
    case 401: return StatusCode::kUnauthenticated;
    case 403: return StatusCode::kPermissionDenied;
    case 429: return StatusCode::kResourceExhausted;
    default: break;
  }
  if (http_code >= 500 || http_code <= 0) return StatusCode::kUnavailable;
  // 400, 422 (Invalid), 405, 406, 413, 415 and the rest of 4xx: the request itself is wrong.
  return StatusCode::kInvalidArgument;
}

}  // namespace

Status StatusFromApiStatus(const nlohmann::json& status_object) {
  int code = 0;
  std::string reason, message;
  if (status_object.is_object()) {
    if (auto it = status_object.find("code"); it != status_object.end() && it->is_number()) {
      code = it->get<int>();
    }
    reason = status_object.value("reason", "");
    message = status_object.value("message", "");
  }
  if (code >= 200 && code < 300) return Status::Ok();
  std::string text = reason.empty() ? "" : reason + ": ";
  text += message.empty() ? status_object.dump() : message;
  text += " (HTTP " + std::to_string(code) + ")";
  return Status(CodeFor(code, reason), std::move(text));
}

Status StatusFromHttp(int http_code, std::string_view body) {
  if (http_code >= 200 && http_code < 300) return Status::Ok();
  nlohmann::json parsed = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_object() && parsed.value("kind", "") == "Status") {
    parsed["code"] = http_code;  // the HTTP code is the authority
    return StatusFromApiStatus(parsed);
  }
  std::string text(body.substr(0, 512));
  return Status(CodeFor(http_code, ""),
                "HTTP " + std::to_string(http_code) + (text.empty() ? "" : ": " + text));
}

bool IsRetriable(const Status& status) {
  return status.code() == StatusCode::kUnavailable ||
         status.code() == StatusCode::kResourceExhausted;
}

std::optional<std::chrono::seconds> ParseRetryAfter(std::string_view header,
                                                    std::chrono::system_clock::time_point now) {
  while (!header.empty() && std::isspace(static_cast<unsigned char>(header.front()))) {
    header.remove_prefix(1);
  }
  while (!header.empty() && std::isspace(static_cast<unsigned char>(header.back()))) {
    header.remove_suffix(1);
  }
  if (header.empty()) return std::nullopt;
  bool digits = true;
  for (char c : header) digits = digits && std::isdigit(static_cast<unsigned char>(c));
  if (digits) {
    if (header.size() > 9) return std::nullopt;
    return std::chrono::seconds(std::stoll(std::string(header)));
  }
  // HTTP-date, e.g. "Wed, 21 Oct 2015 07:28:00 GMT".
  std::tm tm{};
  std::string text(header);
  const char* end = strptime(text.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  if (end == nullptr || *end != '\0') return std::nullopt;
  auto when = std::chrono::system_clock::from_time_t(timegm(&tm));
  auto delta = std::chrono::duration_cast<std::chrono::seconds>(when - now);
  return delta.count() < 0 ? std::chrono::seconds(0) : delta;
}

}  // namespace kvcache::kube
