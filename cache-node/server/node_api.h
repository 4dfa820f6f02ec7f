// NodeApi: the node's HTTP API as a function from request to response, with no HTTP library in
// sight. The Pistache adapter (http_server.h) only copies fields in and out, so every rule of
// the API (routes, status codes, limits, auth, conditional writes) is here and unit-testable.
//
// Thread safety: Handle() may be called concurrently from any number of threads.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cluster/cluster_view.h"
#include "cluster/migration.h"
#include "cluster/replication.h"
#include "store/store.h"

namespace kvcache::node {

enum class HttpMethod { kGet, kHead, kPut, kPost, kDelete, kPatch, kOptions, kOther };

struct ApiRequest {
  HttpMethod method = HttpMethod::kGet;
  std::string_view path;  // raw, still percent-encoded, without the query string
  std::string_view body;
  // Query parameters the API reads (raw, still percent-encoded).
  std::optional<std::string> ttl, prefix, limit, cursor;
  // Request headers the API reads.
  std::optional<std::string> content_type, if_match, if_none_match, authorization;
  bool hop = false;  // forwarded by another node (X-KVCache-Hop): never forward it again
  // The node a forwarding node meant (X-KVCache-Hop's value; unset for the "1" of older
  // nodes). Another name: 421, the sender's address for that node led here.
  std::optional<std::string> hop_to;
  std::optional<uint64_t> sender_epoch;  // X-KVCache-Epoch of a forwarded request
  bool replica_read = false;             // ?replica=ok: a replica may answer a read itself
};

struct ApiResponse {
  int code = 200;
  std::string body;
  std::string content_type;  // empty: no Content-Type header
  std::optional<uint64_t> etag;
  const char* allow = nullptr;  // Allow header, set on 405
  bool www_authenticate = false;
  // Cache-Control for static assets; empty for everything else.
  const char* cache_control = nullptr;
  // For HEAD: the Content-Length a GET would have had (the body itself is empty).
  std::optional<uint64_t> head_content_length;
  int retry_after_seconds = 0;  // Retry-After header when > 0
  // Non-zero: the response may only be sent once this log record is durable (fsync=always);
  // if it cannot be made durable the caller answers with that error instead.
  uint64_t durable_seq = 0;
  // Set: the key belongs to another node; the caller forwards the request there (one hop) and
  // answers with the owner's response. Points into the ClusterView's routing table.
  const protocol::Member* forward_to = nullptr;
  // With forward_to: a 404 from there is answered with this code and no body instead (a DELETE
  // that removed the key here, during a slot migration, also removes the target's copy).
  int forward_not_found_code = 0;
  // X-KVCache-Owner: the name of the node that owns the key (cluster mode only).
  std::string_view owner;
  // Set: a cluster-wide request (listing, flush). The caller also sends it, with the hop
  // header, to every node of FanoutTargets(), then answers with MergeFanout() of all answers
  // (this node's own first: Handle() of the request with hop set).
  bool fanout = false;
  // Further headers, passed through from a forwarded answer.
  std::vector<std::pair<std::string, std::string>> extra_headers;
};

struct ApiOptions {
  size_t max_key_bytes = 1024;
  size_t max_value_bytes = 1 << 20;
  // When set, /v1/* and /flush require "Authorization: Bearer <token>".
  std::optional<std::string> auth_token;
  // The admin API (/internal/*) requires "Authorization: Bearer <cluster token>"; without a
  // token it is disabled (403).
  std::optional<std::string> cluster_token;
  // Longest accepted ?ttl=, in seconds (ten years).
  int64_t max_ttl_seconds = 10LL * 365 * 24 * 3600;
  size_t max_list_limit = 10000;
  size_t default_list_limit = 100;
};

// The method group a request is counted under in metrics ("GET", ..., "OTHER").
std::string_view MethodName(HttpMethod method);

class NodeApi {
 public:
  // `ready` answers /readyz and gates the data API (503 while recovering or stopping);
  // `metrics_text` renders /metrics. Both must outlive the API.
  NodeApi(Store& store, const Clock& clock, ApiOptions options, std::function<bool()> ready,
          std::function<std::string()> metrics_text);

  ApiResponse Handle(const ApiRequest& request) const;

  // The other shards' primaries, for a fan-out. Pointers into the ClusterView's routing table.
  std::vector<const protocol::Member*> FanoutTargets() const;
  // Combines the answers of a fan-out of `request` (a listing or a flush) into one: keys merged
  // in order under the request's limit, flush counts summed; any failed answer makes the whole
  // a 503 naming it (a flush may then have happened on some shards only).
  ApiResponse MergeFanout(const ApiRequest& request, std::vector<ApiResponse> answers) const;
  // True if a listing fan-out's answers need a second round: one came from a slot migration's
  // source. A key can leave the source after the target answered and before the source did,
  // so it is in neither answer; asking every shard again and merging both rounds finds it
  // (the target has every key the source deleted before its first answer).
  static bool ListingNeedsSecondRound(const std::vector<ApiResponse>& answers);

  // Cluster mode: keys owned by other nodes are answered with forward_to set, and
  // PUT /internal/topology installs a newer topology, then calls `save` (to persist it; a
  // failure is reported to the caller, the topology stays installed). Both must outlive the
  // API. REQUIRES: called before serving.
  void SetCluster(ClusterView* cluster,
                  std::function<Status(const protocol::Topology&)> save = nullptr) {
    cluster_ = cluster;
    save_topology_ = std::move(save);
  }

  // Slot migration, both as source and as target (routes keys of migrating slots, serves
  // /internal/migrations and /internal/import). Must outlive the API. REQUIRES: called before
  // serving.
  void SetMigrations(Migrations* migrations) { migrations_ = migrations; }
  // Replication (cluster mode): this node's own shard is served by role (a promoted replica
  // takes writes before the topology names it), writes are refused while not primary or
  // without the primary lease (503 + Retry-After), forwarded writes from an older epoch get 409
  // + X-KVCache-Epoch, /readyz waits for a replica to catch up, and the admin routes
  // /internal/status, /internal/promote and /internal/replication are served. Must outlive
  // the API. REQUIRES: called before serving.
  void SetReplication(Replication* replication) { replication_ = replication; }
  // The epoch stamped on forwarded requests (X-KVCache-Epoch); 0 outside cluster mode.
  uint64_t Epoch() const;

  const ApiOptions& options() const { return options_; }

 private:
  ApiResponse HandleKey(const ApiRequest& request, std::string_view raw_key) const;
  ApiResponse HandleLocalKey(const ApiRequest& request, const std::string& key) const;
  ApiResponse HandleGet(const ApiRequest& request, const std::string& key) const;
  // only_if_present: write only over an existing entry (the source of a slot migration).
  ApiResponse HandlePut(const ApiRequest& request, const std::string& key,
                        bool only_if_present = false) const;
  // A key of a slot migrating from here to `target` (see cluster/migration.h, step 3).
  ApiResponse HandleMigratingKey(const ApiRequest& request, const std::string& key,
                                 const protocol::Member& target) const;
  ApiResponse HandleMigrationAdmin(const ApiRequest& request) const;
  ApiResponse HandleDelete(const std::string& key) const;
  ApiResponse HandleList(const ApiRequest& request) const;
  ApiResponse HandleFlush() const;
  ApiResponse HandleStatic(const ApiRequest& request) const;
  std::optional<ApiResponse> CheckAuth(const ApiRequest& request) const;
  std::optional<ApiResponse> CheckServing() const;

  Store& store_;
  const Clock& clock_;
  const ApiOptions options_;
  std::function<bool()> ready_;
  std::function<std::string()> metrics_text_;
  ApiResponse HandleInternal(const ApiRequest& request) const;
  // ?limit= of a listing, or the default; nullopt if it is not 1..max_list_limit.
  std::optional<size_t> ListLimit(const ApiRequest& request) const;

  ClusterView* cluster_ = nullptr;
  std::function<Status(const protocol::Topology&)> save_topology_;
  Migrations* migrations_ = nullptr;

  // node_api_replication.cc
  std::optional<ApiResponse> HandleReplicationAdmin(const ApiRequest& request) const;
  // GET /internal/status's answer. REQUIRES: replication set.
  protocol::NodeStatus DescribeNode() const;
  // For a key of this node's own shard: nullopt to serve it here, else the answer (a forward
  // to the primary, a fenced or refused write).
  std::optional<ApiResponse> RouteOwnShard(const ApiRequest& request,
                                           const RouteDecision& route) const;
  bool NotPrimary() const;
  Replication* replication_ = nullptr;
};

}  // namespace kvcache::node
