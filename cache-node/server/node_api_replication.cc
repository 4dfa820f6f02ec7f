// NodeApi's replication rules: role-aware routing of this node's own shard, write fencing, and
// the admin routes /internal/status, /internal/promote and /internal/replication.
#include <nlohmann/json.hpp>

#include "cluster/forwarder.h"
#include "server/http_util.h"
#include "server/node_api.h"

namespace kvcache::node {
namespace {

constexpr char kJson[] = "application/json";

ApiResponse JsonAnswer(int code, std::string body) {
  ApiResponse r;
  r.code = code;
  r.body = std::move(body);
  r.content_type = kJson;
  return r;
}

ApiResponse Refused(int code, std::string_view message, int retry_after = 0) {
  ApiResponse r = JsonAnswer(code, JsonError(code, message));
  r.retry_after_seconds = retry_after;
  return r;
}

}  // namespace

uint64_t NodeApi::Epoch() const {
  if (replication_ != nullptr) return replication_->epoch();
  const Routing* routing = cluster_ != nullptr ? cluster_->current() : nullptr;
  return routing != nullptr ? routing->topology.epoch : 0;
}

bool NodeApi::NotPrimary() const {
  return replication_ != nullptr && replication_->role() != protocol::Role::kPrimary &&
         cluster_ != nullptr && cluster_->current() != nullptr;
}

std::optional<ApiResponse> NodeApi::RouteOwnShard(const ApiRequest& req,
                                                  const RouteDecision& route) const {
  const bool read = req.method == HttpMethod::kGet || req.method == HttpMethod::kHead;
  if (replication_->role() != protocol::Role::kPrimary) {
    if (read && req.replica_read) return std::nullopt;  // served from this replica's copy
    if (req.hop || route.owner->name == cluster_->self_name()) {
      // The topology still names this node primary but it has stepped down (or the sender
      // thinks this node is primary): the new primary's topology is on its way.
      return Refused(503, "this node is not the primary of the key's shard (role changing)", 1);
    }
    ApiResponse r;
    r.forward_to = route.owner;
    r.owner = route.owner->name;
    return r;
  }
  if (read) return std::nullopt;
  // Fencing: a write forwarded by a node that knows only an older epoch was routed by a
  // topology that may no longer hold.
  if (req.hop && req.sender_epoch && *req.sender_epoch < replication_->epoch()) {
    ApiResponse r = Refused(409, "forwarded with epoch " + std::to_string(*req.sender_epoch) +
                                     " older than this node's epoch " +
                                     std::to_string(replication_->epoch()));
    r.extra_headers.emplace_back(kEpochHeader, std::to_string(replication_->epoch()));
    return r;
  }
  if (Status st = replication_->CheckWritable(); !st.ok()) {
    return Refused(503, st.message(), 1);
  }
  return std::nullopt;
}

protocol::NodeStatus NodeApi::DescribeNode() const {
  protocol::NodeStatus status = replication_->Describe();
  status.ready = ready_() && replication_->CaughtUp();
  status.keys = store_.Stats().keys;
  if (migrations_ != nullptr) status.migration = migrations_->status();
  return status;
}

std::optional<ApiResponse> NodeApi::HandleReplicationAdmin(const ApiRequest& req) const {
  if (req.path == "/internal/status") {
    if (req.method != HttpMethod::kGet && req.method != HttpMethod::kHead) {
      ApiResponse r = Refused(405, "method not allowed; allowed: GET, HEAD");
      r.allow = "GET, HEAD";
      return r;
    }
    return JsonAnswer(200, protocol::EncodeNodeStatus(DescribeNode()));
  }
  if (req.path == "/internal/promote" || req.path == "/internal/replication" ||
      req.path == "/internal/step-down") {
    if (req.method != HttpMethod::kPost) {
      ApiResponse r = Refused(405, "method not allowed; allowed: POST");
      r.allow = "POST";
      return r;
    }
    if (req.path == "/internal/replication") {
      auto [code, body] = replication_->HandleBatch(req.body);
      ApiResponse r = JsonAnswer(code, std::move(body));
      if (code == 503) r.retry_after_seconds = 1;
      return r;
    }
    if (req.path == "/internal/step-down") {
      StatusOr<protocol::StepDownRequest> step = protocol::ParseStepDownRequest(req.body);
      if (!step.ok()) return Refused(400, step.status().message());
      Status st = replication_->PauseWrites(std::chrono::milliseconds(step->pause_ms));
      if (!st.ok()) return Refused(HttpCodeFor(st.code()), st.message());
      return JsonAnswer(200, protocol::EncodeNodeStatus(DescribeNode()));
    }
    StatusOr<protocol::PromoteRequest> promote = protocol::ParsePromoteRequest(req.body);
    if (!promote.ok()) return Refused(400, promote.status().message());
    if (Status st = replication_->Promote(*promote); !st.ok()) {
      ApiResponse r = Refused(HttpCodeFor(st.code()), st.message());
      if (st.code() == StatusCode::kConflict) {
        r.extra_headers.emplace_back(kEpochHeader, std::to_string(replication_->epoch()));
      }
      return r;
    }
    return JsonAnswer(200, protocol::EncodeNodeStatus(DescribeNode()));
  }
  return std::nullopt;
}

}  // namespace kvcache::node
