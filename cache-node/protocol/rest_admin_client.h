// RestAdminClient: the cpprestsdk implementation of AdminClient. It speaks to a node's
// /internal/* API over HTTP with the cluster token, one pooled keep-alive client per node
// address. Lives in its own library (kvcache_admin_client) so the operator's controller, which
// only sees AdminClient, never links cpprestsdk.
//
// Errors: Unavailable when the node cannot be reached or answers 5xx, Unauthenticated (401),
// PermissionDenied (403: the node's admin API is off), Conflict (409: epoch not newer),
// NotFound (404), FailedPrecondition (412), InvalidArgument (400 or an answer that does not
// parse).
//
// Thread safety: every method may be called from any thread.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "protocol/admin.h"

namespace web::http::client {
class http_client;
}

namespace kvcache::protocol {

class RestAdminClient final : public AdminClient {
 public:
  // `token`: the cluster token (sent as "Authorization: Bearer <token>"). `timeout`: per
  // request.
  explicit RestAdminClient(std::string token,
                           std::chrono::milliseconds timeout = std::chrono::seconds(5));
  ~RestAdminClient() override;

  StatusOr<NodeStatus> GetStatus(const std::string& addr) override;
  StatusOr<Topology> GetTopology(const std::string& addr) override;
  Status PutTopology(const std::string& addr, const Topology& topology) override;
  StatusOr<NodeStatus> Promote(const std::string& addr, const PromoteRequest& request) override;
  StatusOr<NodeStatus> StepDown(const std::string& addr, const StepDownRequest& request) override;
  StatusOr<MigrationStatus> StartMigration(const std::string& addr,
                                           const MigrationRequest& request) override;
  StatusOr<MigrationStatus> GetMigration(const std::string& addr) override;

 private:
  // Sends one request; non-2xx answers become the Status of the table above.
  StatusOr<std::string> Call(const std::string& addr, const std::string& method,
                             const std::string& path, const std::string* body);
  std::shared_ptr<web::http::client::http_client> ClientFor(const std::string& addr);

  const std::string token_;
  const std::chrono::milliseconds timeout_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<web::http::client::http_client>> clients_;
};

// The Status for a non-2xx answer of the admin API (exposed for tests).
Status AdminStatusFromHttp(int code, const std::string& body);

}  // namespace kvcache::protocol
