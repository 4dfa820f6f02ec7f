// RestKubeClient: KubeClient over HTTPS to a real API server, on cpprestsdk (kept behind this
// class: upstream is in maintenance mode). What it adds to plain HTTP:
//   - TLS verified against the cluster CA only (the system trust store is replaced), client
//     certificates or a bearer token (a token file is re-read when it changes: rotation).
//   - List follows continue tokens when a limit is given (unless single_page).
//   - Patch content types: merge-patch+json, json-patch+json, strategic-merge-patch+json,
//     apply-patch+yaml (fieldManager, force); fieldValidation=Strict on writes (configurable).
//   - Delete sends DeleteOptions (propagationPolicy, preconditions).
//   - 429 and 5xx answers carrying Retry-After are retried after that delay (capped), up to
//     max_retries times, as client-go does; then the error is returned.
//   - Watch streams NDJSON over its own http_client whose inactivity timeout exceeds the
//     server-side timeoutSeconds; a stop request cancels the blocked read at once.
//   - A transport failure is retried (up to 3 times, 20-60 ms apart) when resending cannot duplicate a write (GET,
//     PUT, or the request was never written): a pooled connection closed by an apiserver
//     restart otherwise fails the first call after it.
//   - Metrics (ClientMetrics): requests by verb/code, latency.
//
// Thread safety: every method may be called from any thread concurrently.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "kube/clock.h"
#include "kube/config.h"
#include "kube/kube_client.h"
#include "kube/metrics.h"

namespace kvcache::kube {

struct RestOptions {
  std::chrono::seconds request_timeout{30};
  int max_retries = 5;                        // for 429/5xx with Retry-After
  std::chrono::seconds max_retry_wait{30};    // a longer Retry-After is capped to this
  bool strict_field_validation = true;        // fieldValidation=Strict on create/update/patch
  std::string user_agent = "kvcache-operator";
  ClientMetrics* metrics = nullptr;           // not owned; null: no metrics
  Clock* clock = nullptr;                     // for Retry-After waits; null: the system clock
};

class RestKubeClient final : public KubeClient {
 public:
  // Returns InvalidArgument for a bad server URL or unusable PEM data.
  static StatusOr<std::unique_ptr<RestKubeClient>> Create(ClusterConfig config,
                                                          RestOptions options = {});
  ~RestKubeClient() override;

  StatusOr<Object> Get(const ResourceRef& ref, std::string_view ns, std::string_view name,
                       std::string_view subresource = "") override;
  StatusOr<ListResult> List(const ResourceRef& ref, std::string_view ns,
                            const ListOptions& options = {}) override;
  StatusOr<Object> Create(const ResourceRef& ref, std::string_view ns,
                          const Object& object) override;
  StatusOr<Object> Update(const ResourceRef& ref, std::string_view ns, const Object& object,
                          std::string_view subresource = "") override;
  StatusOr<Object> Patch(const ResourceRef& ref, std::string_view ns, std::string_view name,
                         PatchType type, const Object& body, const PatchOptions& options = {},
                         std::string_view subresource = "") override;
  Status Delete(const ResourceRef& ref, std::string_view ns, std::string_view name,
                const DeleteOptions& options = {}) override;
  Status Watch(const ResourceRef& ref, std::string_view ns, const WatchOptions& options,
               const std::function<bool(const WatchEvent&)>& on_event,
               std::stop_token stop) override;

  // GET of a raw path ("/version", "/readyz"); for probes and tests.
  StatusOr<Object> GetPath(const std::string& path);
  const ClusterConfig& config() const { return config_; }
  // Requests sent (retries included), for measurements.
  int64_t RequestCount() const { return request_count_.load(); }

  struct Impl;

 private:
  RestKubeClient(ClusterConfig config, RestOptions options, std::unique_ptr<Impl> impl);

  ClusterConfig config_;
  RestOptions options_;
  std::unique_ptr<Impl> impl_;
  std::atomic<int64_t> request_count_{0};
};

// Path of a collection or object: "/apis/apps/v1/namespaces/ns/statefulsets/name/status".
std::string ResourcePath(const ResourceRef& ref, std::string_view ns, std::string_view name = "",
                         std::string_view subresource = "");

}  // namespace kvcache::kube
