#include "server/node_api.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "server/http_util.h"
#include "server/static_assets.h"

namespace kvcache::node {
namespace {

constexpr char kJson[] = "application/json";
constexpr std::string_view kKeyPrefix = "/v1/";

ApiResponse Error(int code, std::string_view message) {
  ApiResponse r;
  r.code = code;
  r.body = JsonError(code, message);
  r.content_type = kJson;
  return r;
}

ApiResponse ErrorFrom(const Status& status) {
  return Error(HttpCodeFor(status.code()), status.message());
}

ApiResponse MethodNotAllowed(const char* allow) {
  ApiResponse r = Error(405, std::string("method not allowed; allowed: ") + allow);
  r.allow = allow;
  return r;
}

ApiResponse Text(int code, std::string body, std::string content_type = "text/plain") {
  ApiResponse r;
  r.code = code;
  r.body = std::move(body);
  r.content_type = std::move(content_type);
  return r;
}

// True if the Authorization header is "Bearer <token>".
bool BearerMatches(const std::optional<std::string>& authorization, std::string_view token) {
  constexpr std::string_view kBearer = "Bearer ";
  if (!authorization || authorization->size() <= kBearer.size()) return false;
  std::string_view header(*authorization);
  return header.substr(0, kBearer.size()) == kBearer &&
         ConstantTimeEquals(header.substr(kBearer.size()), token);
}

}  // namespace

std::string_view MethodName(HttpMethod method) {
  switch (method) {
    case HttpMethod::kGet: return "GET";
    case HttpMethod::kHead: return "HEAD";
    case HttpMethod::kPut: return "PUT";
    case HttpMethod::kPost: return "POST";
    case HttpMethod::kDelete: return "DELETE";
    case HttpMethod::kPatch: return "PATCH";
    case HttpMethod::kOptions: return "OPTIONS";
    case HttpMethod::kOther: return "OTHER";
  }
  return "OTHER";
}

NodeApi::NodeApi(Store& store, const Clock& clock, ApiOptions options,
                 std::function<bool()> ready, std::function<std::string()> metrics_text)
    : store_(store),
      clock_(clock),
      options_(std::move(options)),
      ready_(std::move(ready)),
      metrics_text_(std::move(metrics_text)) {}

std::optional<ApiResponse> NodeApi::CheckServing() const {
  if (ready_()) return std::nullopt;
  ApiResponse r = Error(503, "node is not serving data yet (recovering) or is stopping");
  r.retry_after_seconds = 1;
  return r;
}

ApiResponse NodeApi::Handle(const ApiRequest& req) const {
  if (req.hop_to && cluster_ != nullptr && *req.hop_to != cluster_->self_name()) {
    // Pods that came back with new IPs: the sender's DNS answer (or kept-alive connection)
    // for that node still led to the pod that had its address before, i.e. here.
    return Error(421, "this node is " + cluster_->self_name() + ", not " + *req.hop_to +
                          ": the address used for " + *req.hop_to + " led here");
  }
  std::string_view path = req.path;
  // The data API first: it is the hot path.
  if (path.substr(0, kKeyPrefix.size()) == kKeyPrefix && path.size() > kKeyPrefix.size()) {
    if (auto denied = CheckAuth(req)) return *denied;
    if (auto unavailable = CheckServing()) return *unavailable;
    return HandleKey(req, path.substr(kKeyPrefix.size()));
  }
  if (path == "/v1" || path == "/v1/") {
    if (auto denied = CheckAuth(req)) return *denied;
    if (req.method != HttpMethod::kGet && req.method != HttpMethod::kHead) {
      return MethodNotAllowed("GET, HEAD");
    }
    if (auto unavailable = CheckServing()) return *unavailable;
    if (!req.hop && cluster_ != nullptr && cluster_->current() != nullptr) {
      ApiResponse r;
      r.fanout = true;
      return r;
    }
    // A replica's keys are its primary's, which answers for them in a fan-out.
    if (NotPrimary()) return Text(200, R"({"keys": [], "count": 0, "cursor": null})", kJson);
    return HandleList(req);
  }
  if (path == "/flush") {
    if (auto denied = CheckAuth(req)) return *denied;
    if (req.method != HttpMethod::kDelete) return MethodNotAllowed("DELETE");
    if (auto unavailable = CheckServing()) return *unavailable;
    if (!req.hop && cluster_ != nullptr && cluster_->current() != nullptr) {
      ApiResponse r;
      r.fanout = true;
      return r;
    }
    // A replica flushes when its primary's flush reaches it through the stream.
    if (NotPrimary()) return Text(200, R"({"flushed": 0})", kJson);
    return HandleFlush();
  }
  if (path.substr(0, 10) == "/internal/") return HandleInternal(req);
  const bool read_method = req.method == HttpMethod::kGet || req.method == HttpMethod::kHead;
  if (path == "/healthz") {
    if (!read_method) return MethodNotAllowed("GET, HEAD");
    return Text(200, "ok\n");
  }
  if (path == "/readyz") {
    if (!read_method) return MethodNotAllowed("GET, HEAD");
    if (ready_() && replication_ != nullptr && !replication_->CaughtUp()) {
      return Error(503, "not ready: replica catching up with its primary");
    }
    return ready_() ? Text(200, "ok\n") : Error(503, "not ready");
  }
  if (path == "/metrics") {
    if (!read_method) return MethodNotAllowed("GET, HEAD");
    return Text(200, metrics_text_(), "text/plain; version=0.0.4; charset=utf-8");
  }
  return HandleStatic(req);
}

std::optional<ApiResponse> NodeApi::CheckAuth(const ApiRequest& req) const {
  if (!options_.auth_token || BearerMatches(req.authorization, *options_.auth_token)) {
    return std::nullopt;
  }
  ApiResponse r = Error(401, req.authorization ? "invalid bearer token"
                                               : "missing Authorization: Bearer <token> header");
  r.www_authenticate = true;
  return r;
}

ApiResponse NodeApi::HandleKey(const ApiRequest& req, std::string_view raw_key) const {
  if (raw_key.find('/') != std::string_view::npos) {
    return Error(400, "a key is one path segment: encode '/' in keys as %2F");
  }
  // Check the size before decoding: an encoded key is at least as long as the decoded one,
  // and a key longer than the limit three times over cannot be valid however it is encoded.
  if (raw_key.size() > options_.max_key_bytes * 3) {
    return Error(414, "key longer than " + std::to_string(options_.max_key_bytes) + " bytes");
  }
  StatusOr<std::string> key = PercentDecode(raw_key);
  if (!key.ok()) return ErrorFrom(key.status());
  if (key->size() > options_.max_key_bytes) {
    return Error(414, "key longer than " + std::to_string(options_.max_key_bytes) + " bytes");
  }
  if (req.method != HttpMethod::kGet && req.method != HttpMethod::kHead &&
      req.method != HttpMethod::kPut && req.method != HttpMethod::kDelete) {
    return MethodNotAllowed("GET, HEAD, PUT, DELETE");
  }
  std::string_view owner;
  if (cluster_ != nullptr) {
    RouteDecision route = cluster_->Route(*key);
    if (replication_ != nullptr && route.owner != nullptr && route.shard >= 0 &&
        route.shard == replication_->self_shard()) {
      if (std::optional<ApiResponse> r = RouteOwnShard(req, route)) return *r;
      route.local = true;
    }
    if (route.owner != nullptr) {
      if (!route.local) {
        if (req.hop && migrations_ != nullptr &&
            migrations_->Importing(protocol::KeySlot(*key))) {
          // Sent on by the source of a slot migration to this node, its target.
          ApiResponse r = HandleLocalKey(req, *key);
          r.owner = cluster_->self_name();
          return r;
        }
        if (req.hop) {
          // Sender and receiver disagree about the owner (a topology change in flight):
          // never a second hop; the client retries once the topologies agree.
          ApiResponse r = Error(503, "this node does not own the key (topology changing)");
          r.retry_after_seconds = 1;
          return r;
        }
        ApiResponse r;
        r.forward_to = route.owner;
        r.owner = route.owner->name;
        return r;
      }
      owner = route.owner->name;
      if (replication_ != nullptr && route.shard == replication_->self_shard() && !NotPrimary()) {
        owner = cluster_->self_name();
      }
      if (migrations_ != nullptr && migrations_->routing_active()) {
        if (const protocol::Member* target = migrations_->MigratingTo(protocol::KeySlot(*key))) {
          ApiResponse r = HandleMigratingKey(req, *key, *target);
          r.owner = owner;
          return r;
        }
      }
    }
  }
  ApiResponse r = HandleLocalKey(req, *key);
  r.owner = owner;
  return r;
}

ApiResponse NodeApi::HandleLocalKey(const ApiRequest& req, const std::string& key) const {
  switch (req.method) {
    case HttpMethod::kPut: return HandlePut(req, key);
    case HttpMethod::kDelete: return HandleDelete(key);
    default: return HandleGet(req, key);
  }
}

ApiResponse NodeApi::HandleMigratingKey(const ApiRequest& req, const std::string& key,
                                        const protocol::Member& target) const {
  // Present here: served here. Absent: the target has the newest version or nobody has, since
  // a key gone from here never comes back (PUTs here only overwrite). One more hop, even for a
  // request that was forwarded already: the target never forwards it again.
  ApiResponse forward;
  forward.forward_to = &target;
  if (req.method == HttpMethod::kDelete) {
    uint64_t seq = 0;
    Status deleted = migrations_->DeleteLocal(key, &seq);
    if (deleted.code() == StatusCode::kUnavailable) {
      ApiResponse r = ErrorFrom(deleted);
      r.retry_after_seconds = 1;
      return r;
    }
    if (!deleted.ok() && deleted.code() != StatusCode::kNotFound) return ErrorFrom(deleted);
    // Deleted here: the target may hold an older copy (a batch sent before the key changed).
    if (deleted.ok()) forward.forward_not_found_code = 204;
    return forward;
  }
  if (req.method == HttpMethod::kPut) {
    ApiResponse r = HandlePut(req, key, /*only_if_present=*/true);
    if (r.code == 412 && store_.Get(key, /*copy_value=*/false).status().code() ==
                             StatusCode::kNotFound) {
      return forward;
    }
    return r;
  }
  ApiResponse r = HandleGet(req, key);
  return r.code == 404 ? forward : r;
}

ApiResponse NodeApi::HandleGet(const ApiRequest& req, const std::string& key) const {
  StatusOr<GetResult> got = store_.Get(key, req.method == HttpMethod::kGet);
  if (!got.ok()) return ErrorFrom(got.status());
  if (req.if_none_match) {
    StatusOr<EtagCondition> cond = ParseEtagCondition(*req.if_none_match);
    if (!cond.ok()) return ErrorFrom(cond.status());
    if (cond->any || std::find(cond->etags.begin(), cond->etags.end(), got->etag) !=
                         cond->etags.end()) {
      ApiResponse r;
      r.code = 304;
      r.etag = got->etag;
      return r;
    }
  }
  ApiResponse r;
  r.code = 200;
  r.body = std::move(got->value);
  if (req.method == HttpMethod::kHead) r.head_content_length = got->value_size;
  r.content_type = got->content_type.empty() ? "text/plain" : std::move(got->content_type);
  r.etag = got->etag;
  return r;
}

ApiResponse NodeApi::HandlePut(const ApiRequest& req, const std::string& key,
                               bool only_if_present) const {
  if (req.body.size() > options_.max_value_bytes) {
    return Error(413, "value larger than " + std::to_string(options_.max_value_bytes) + " bytes");
  }
  PutRequest put;
  put.key = key;
  put.value = req.body;
  if (req.content_type) put.content_type = *req.content_type;
  if (put.content_type.size() > 255) return Error(400, "Content-Type longer than 255 bytes");
  if (req.ttl) {
    std::optional<int64_t> ttl = ParseNonNegativeInt(*req.ttl);
    if (!ttl || *ttl == 0 || *ttl > options_.max_ttl_seconds) {
      return Error(400, "ttl must be a whole number of seconds from 1 to " +
                            std::to_string(options_.max_ttl_seconds));
    }
    put.expire_at_ms = clock_.NowMs() + *ttl * 1000;
  }
  for (auto [header, target] : {std::pair{&req.if_match, &put.if_match},
                                std::pair{&req.if_none_match, &put.if_none_match}}) {
    if (!*header) continue;
    StatusOr<EtagCondition> cond = ParseEtagCondition(**header);
    if (!cond.ok()) return ErrorFrom(cond.status());
    *target = EtagMatch{cond->any, std::move(cond->etags)};
  }
  if (only_if_present && !put.if_match) put.if_match = EtagMatch{/*match_any=*/true, {}};
  StatusOr<PutResult> result = store_.Put(put);
  if (!result.ok()) return ErrorFrom(result.status());
  ApiResponse r;
  r.code = result->created ? 201 : 200;
  r.etag = result->etag;
  r.durable_seq = result->seq;
  return r;
}

ApiResponse NodeApi::HandleDelete(const std::string& key) const {
  uint64_t seq = 0;
  Status status = store_.Delete(key, &seq);
  if (!status.ok()) return ErrorFrom(status);
  ApiResponse r;
  r.code = 204;
  r.durable_seq = seq;
  return r;
}

std::optional<size_t> NodeApi::ListLimit(const ApiRequest& req) const {
  if (!req.limit) return options_.default_list_limit;
  std::optional<int64_t> parsed = ParseNonNegativeInt(*req.limit);
  if (!parsed || *parsed < 1 || static_cast<size_t>(*parsed) > options_.max_list_limit) {
    return std::nullopt;
  }
  return static_cast<size_t>(*parsed);
}

ApiResponse NodeApi::HandleList(const ApiRequest& req) const {
  std::string prefix;
  if (req.prefix) {
    // In a query string '+' means a space (HTML form encoding); a literal '+' is %2B.
    std::string form = *req.prefix;
    std::replace(form.begin(), form.end(), '+', ' ');
    StatusOr<std::string> decoded = PercentDecode(form);
    if (!decoded.ok()) return ErrorFrom(decoded.status());
    prefix = std::move(*decoded);
  }
  std::optional<size_t> limit = ListLimit(req);
  if (!limit) {
    return Error(400, "limit must be a whole number from 1 to " +
                          std::to_string(options_.max_list_limit));
  }
  std::string after;
  if (req.cursor && !req.cursor->empty()) {
    std::optional<std::string> decoded = HexDecode(*req.cursor);
    if (!decoded) return Error(400, "cursor is not one this server returned");
    after = std::move(*decoded);
  }
  // A migration that starts or ends while the store is listed counts too.
  auto migration_routed = [&] {
    return req.hop && migrations_ != nullptr && migrations_->routing_active();
  };
  bool migrating = migration_routed();
  ListResult listed = store_.List(prefix, after, *limit);
  migrating = migrating || migration_routed();
  nlohmann::json body;
  body["keys"] = listed.keys;
  body["count"] = listed.keys.size();
  if (listed.more && !listed.keys.empty()) {
    body["cursor"] = HexEncode(listed.keys.back());
  } else {
    body["cursor"] = nullptr;
  }
  // For the fan-out only (see ListingNeedsSecondRound); MergeFanout does not pass it on.
  if (migrating) body["migrating"] = true;
  ApiResponse r;
  r.code = 200;
  // Keys are bytes; ones that are not UTF-8 are shown with U+FFFD in their place.
  r.body = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  r.content_type = kJson;
  return r;
}

ApiResponse NodeApi::HandleFlush() const {
  uint64_t seq = 0;
  StatusOr<uint64_t> flushed = store_.Flush(&seq);
  if (!flushed.ok()) return ErrorFrom(flushed.status());
  uint64_t removed = *flushed;
  ApiResponse r;
  r.code = 200;
  r.durable_seq = seq;
  r.body = nlohmann::json{{"flushed", removed}}.dump();
  r.content_type = kJson;
  return r;
}

ApiResponse NodeApi::HandleInternal(const ApiRequest& req) const {
  if (!options_.cluster_token) {
    return Error(403, "the admin API is disabled: start the node with --cluster-token-file");
  }
  if (!BearerMatches(req.authorization, *options_.cluster_token)) {
    ApiResponse r = Error(401, "the admin API needs Authorization: Bearer <cluster token>");
    r.www_authenticate = true;
    return r;
  }
  // Until the data directory is recovered and the journal attached (and again once the node
  // is stopping), an admin write would reach the store but no log: an import acknowledged
  // with sequence 0, which the source then deletes, lost at the next restart or overwritten by
  // the replay; a replication batch or a promotion racing the replay likewise. Reads of state
  // and topology pushes (not data) are served.
  const bool reads_state = req.method == HttpMethod::kGet || req.method == HttpMethod::kHead;
  if (!reads_state && req.path != "/internal/topology") {
    if (auto unavailable = CheckServing()) return *unavailable;
  }
  if (migrations_ != nullptr &&
      (req.path == "/internal/migrations" || req.path == "/internal/import")) {
    return HandleMigrationAdmin(req);
  }
  if (replication_ != nullptr) {
    if (std::optional<ApiResponse> r = HandleReplicationAdmin(req)) return *r;
  }
  if (req.path != "/internal/topology" || cluster_ == nullptr) {
    return Error(404, "no such admin route");
  }
  if (req.method == HttpMethod::kGet || req.method == HttpMethod::kHead) {
    const Routing* routing = cluster_->current();
    if (routing == nullptr) return Error(404, "no topology installed");
    return Text(200, protocol::EncodeTopology(routing->topology), kJson);
  }
  if (req.method != HttpMethod::kPut) return MethodNotAllowed("GET, HEAD, PUT");
  StatusOr<protocol::Topology> topology = protocol::ParseTopology(req.body);
  if (!topology.ok()) return ErrorFrom(topology.status());
  const uint64_t epoch = topology->epoch;
  protocol::Topology copy = *topology;
  if (Status st = cluster_->Update(std::move(*topology)); !st.ok()) {
    // A stale epoch is a conflict with what this node already knows.
    return Error(st.code() == StatusCode::kFailedPrecondition ? 409 : HttpCodeFor(st.code()),
                 st.message());
  }
  if (replication_ != nullptr) replication_->OnTopology();
  if (save_topology_) {
    if (Status saved = save_topology_(copy); !saved.ok()) {
      return ErrorFrom(Status(saved.code(), "topology installed but not persisted: " +
                                                saved.message()));
    }
  }
  return Text(200, nlohmann::json{{"epoch", epoch}}.dump(), kJson);
}

ApiResponse NodeApi::HandleMigrationAdmin(const ApiRequest& req) const {
  if (req.path == "/internal/import") {
    if (req.method != HttpMethod::kPost) return MethodNotAllowed("POST");
    StatusOr<uint64_t> imported = migrations_->Import(req.body);
    if (!imported.ok()) {
      return Error(imported.status().code() == StatusCode::kFailedPrecondition
                       ? 409
                       : HttpCodeFor(imported.status().code()),
                   imported.status().message());
    }
    ApiResponse r = Text(200, "{}", kJson);
    r.durable_seq = *imported;
    return r;
  }
  if (req.method == HttpMethod::kGet || req.method == HttpMethod::kHead) {
    return Text(200, protocol::EncodeMigrationStatus(migrations_->status()), kJson);
  }
  if (req.method != HttpMethod::kPost) return MethodNotAllowed("GET, HEAD, POST");
  StatusOr<protocol::MigrationRequest> request = protocol::ParseMigrationRequest(req.body);
  if (!request.ok()) return ErrorFrom(request.status());
  StatusOr<protocol::MigrationStatus> started = migrations_->Start(*request);
  if (!started.ok()) {
    ApiResponse r = Error(started.status().code() == StatusCode::kFailedPrecondition
                              ? 409
                              : HttpCodeFor(started.status().code()),
                          started.status().message());
    // Unavailable: this node's store is not its whole shard yet (recovering, or part of a full
    // sync); the same request succeeds later.
    if (r.code == 503) r.retry_after_seconds = 1;
    return r;
  }
  return Text(200, protocol::EncodeMigrationStatus(*started), kJson);
}

std::vector<const protocol::Member*> NodeApi::FanoutTargets() const {
  std::vector<const protocol::Member*> targets;
  const Routing* routing = cluster_ ? cluster_->current() : nullptr;
  if (routing == nullptr) return targets;
  for (const protocol::Shard& shard : routing->topology.shards) {
    if (shard.primary.name != cluster_->self_name()) targets.push_back(&shard.primary);
  }
  return targets;
}

bool NodeApi::ListingNeedsSecondRound(const std::vector<ApiResponse>& answers) {
  for (const ApiResponse& a : answers) {
    if (a.code != 200) continue;
    nlohmann::json doc = nlohmann::json::parse(a.body, nullptr, false);
    if (doc.is_object() && doc.contains("migrating") && doc["migrating"] == true) return true;
  }
  return false;
}

ApiResponse NodeApi::MergeFanout(const ApiRequest& req, std::vector<ApiResponse> answers) const {
  const bool flush = req.path == "/flush";
  for (const ApiResponse& a : answers) {
    if (a.code != 200) {
      // Pass a client error (bad limit, bad cursor) on as it is; anything else is the cluster's.
      if (a.code >= 400 && a.code < 500) return a;
      ApiResponse r = Error(503, std::string("a shard could not answer") +
                                     (flush ? " (the flush may have happened on some shards)"
                                            : "") +
                                     ": HTTP " + std::to_string(a.code) + " " + a.body);
      r.retry_after_seconds = 1;
      return r;
    }
  }
  if (flush) {
    uint64_t total = 0;
    for (const ApiResponse& a : answers) {
      nlohmann::json doc = nlohmann::json::parse(a.body, nullptr, false);
      if (doc.is_object() && doc["flushed"].is_number_unsigned()) {
        total += doc["flushed"].get<uint64_t>();
      }
    }
    return Text(200, nlohmann::json{{"flushed", total}}.dump(), kJson);
  }
  // Reached only when every shard accepted the request, so the limit is valid.
  const size_t limit = ListLimit(req).value_or(options_.default_list_limit);
  // Every shard answered its first `limit` keys after the same cursor, so the first `limit`
  // of their sorted union are the cluster's.
  std::vector<std::string> keys;
  bool more = false;
  for (const ApiResponse& a : answers) {
    nlohmann::json doc = nlohmann::json::parse(a.body, nullptr, false);
    // Another node's answer is input like a client's: one that is not a listing of string
    // keys fails the listing (a throw here would end the forwarder's loop thread, and the node).
    const bool listing = doc.is_object() && doc["keys"].is_array() &&
                         std::all_of(doc["keys"].begin(), doc["keys"].end(),
                                     [](const nlohmann::json& k) { return k.is_string(); });
    if (!listing) {
      ApiResponse r = Error(503, "a shard answered something that is not a listing: " +
                                     a.body.substr(0, 200));
      r.retry_after_seconds = 1;
      return r;
    }
    for (const auto& k : doc["keys"]) keys.push_back(k.get<std::string>());
    more = more || !doc["cursor"].is_null();
  }
  std::sort(keys.begin(), keys.end());
  // During a slot migration a key can be on two shards for a moment.
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  if (keys.size() > limit) {
    keys.resize(limit);
    more = true;
  }
  nlohmann::json body;
  body["keys"] = keys;
  body["count"] = keys.size();
  body["cursor"] = more && !keys.empty() ? nlohmann::json(HexEncode(keys.back())) : nullptr;
  return Text(200, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), kJson);
}

ApiResponse NodeApi::HandleStatic(const ApiRequest& req) const {
  const StaticAsset* asset = FindStaticAsset(req.path);
  if (asset == nullptr) return Error(404, "no such route: see /docs for the API");
  if (req.method != HttpMethod::kGet && req.method != HttpMethod::kHead) {
    return MethodNotAllowed("GET, HEAD");
  }
  ApiResponse r;
  r.code = 200;
  if (req.method == HttpMethod::kGet) {
    r.body.assign(asset->body);
  } else {
    r.head_content_length = asset->body.size();
  }
  r.content_type = std::string(asset->content_type);
  r.cache_control = "public, max-age=300";
  return r;
}

}  // namespace kvcache::node
