#include "protocol/rest_admin_client.h"

#include <cpprest/http_client.h>

namespace kvcache::protocol {

using web::http::http_request;
using web::http::http_response;
using web::http::client::http_client;
using web::http::client::http_client_config;

Status AdminStatusFromHttp(int code, const std::string& body) {
  std::string message = "HTTP " + std::to_string(code) + ": " + body.substr(0, 500);
  switch (code) {
    case 400: return InvalidArgumentError(message);
    case 401: return UnauthenticatedError(message);
    case 403: return PermissionDeniedError(message);
    case 404: return NotFoundError(message);
    case 409: return ConflictError(message);
    case 412: return FailedPreconditionError(message);
    default:
      if (code >= 500) return UnavailableError(message);
      return InternalError(message);
  }
}

RestAdminClient::RestAdminClient(std::string token, std::chrono::milliseconds timeout)
    : token_(std::move(token)), timeout_(timeout) {}

RestAdminClient::~RestAdminClient() = default;

std::shared_ptr<http_client> RestAdminClient::ClientFor(const std::string& addr) {
  std::lock_guard lock(mu_);
  auto it = clients_.find(addr);
  if (it != clients_.end()) return it->second;
  http_client_config config;
  config.set_timeout(timeout_);
  auto client = std::make_shared<http_client>("http://" + addr, config);
  clients_.emplace(addr, client);
  return client;
}

StatusOr<std::string> RestAdminClient::Call(const std::string& addr, const std::string& method,
                                            const std::string& path, const std::string* body) {
  try {
    http_request req{web::http::method(method)};
    req.set_request_uri(path);
    req.headers().add("Authorization", "Bearer " + token_);
    if (body != nullptr) req.set_body(*body, "application/json");
    http_response resp = ClientFor(addr)->request(req).get();
    std::vector<unsigned char> bytes = resp.extract_vector().get();
    std::string text(bytes.begin(), bytes.end());
    const int code = resp.status_code();
    if (code < 200 || code > 299) return AdminStatusFromHttp(code, text);
    return text;
  } catch (const std::exception& e) {
    return UnavailableError("node " + addr + " unreachable: " + e.what());
  }
}

namespace {

// An admin call's answer, parsed by `parse`; the call's error as it is.
template <typename T>
StatusOr<T> Parsed(StatusOr<std::string> text, StatusOr<T> (*parse)(std::string_view)) {
  if (!text.ok()) return text.status();
  return parse(*text);
}

}  // namespace

StatusOr<NodeStatus> RestAdminClient::GetStatus(const std::string& addr) {
  return Parsed(Call(addr, "GET", "/internal/status", nullptr), ParseNodeStatus);
}

StatusOr<Topology> RestAdminClient::GetTopology(const std::string& addr) {
  return Parsed(Call(addr, "GET", "/internal/topology", nullptr), ParseTopology);
}

Status RestAdminClient::PutTopology(const std::string& addr, const Topology& topology) {
  const std::string body = EncodeTopology(topology);
  StatusOr<std::string> text = Call(addr, "PUT", "/internal/topology", &body);
  return text.ok() ? Status::Ok() : text.status();
}

StatusOr<NodeStatus> RestAdminClient::Promote(const std::string& addr,
                                              const PromoteRequest& request) {
  const std::string body = EncodePromoteRequest(request);
  return Parsed(Call(addr, "POST", "/internal/promote", &body), ParseNodeStatus);
}

StatusOr<NodeStatus> RestAdminClient::StepDown(const std::string& addr,
                                               const StepDownRequest& request) {
  const std::string body = EncodeStepDownRequest(request);
  return Parsed(Call(addr, "POST", "/internal/step-down", &body), ParseNodeStatus);
}

StatusOr<MigrationStatus> RestAdminClient::StartMigration(const std::string& addr,
                                                          const MigrationRequest& request) {
  const std::string body = EncodeMigrationRequest(request);
  return Parsed(Call(addr, "POST", "/internal/migrations", &body), ParseMigrationStatus);
}

StatusOr<MigrationStatus> RestAdminClient::GetMigration(const std::string& addr) {
  return Parsed(Call(addr, "GET", "/internal/migrations", nullptr), ParseMigrationStatus);
}

}  // namespace kvcache::protocol
