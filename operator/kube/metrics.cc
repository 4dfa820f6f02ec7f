#include "kube/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace kvcache::kube {

ClientMetrics::ClientMetrics(prometheus::Registry* registry) {
  if (registry == nullptr) return;
  requests_family_ = &prometheus::BuildCounter()
                          .Name("kvcache_operator_kube_requests_total")
                          .Help("Requests sent to the Kubernetes API server, by verb and code.")
                          .Register(*registry);
  latency_family_ = &prometheus::BuildHistogram()
                         .Name("kvcache_operator_kube_request_duration_seconds")
                         .Help("Latency of Kubernetes API requests (watch: until headers).")
                         .Register(*registry);
  restarts_family_ = &prometheus::BuildCounter()
                          .Name("kvcache_operator_kube_watch_restarts_total")
                          .Help("Informer watches started again, by resource and reason.")
                          .Register(*registry);
  retries_family_ = &prometheus::BuildCounter()
                         .Name("kvcache_operator_kube_request_retries_total")
                         .Help("Requests sent again after a 429/5xx with Retry-After.")
                         .Register(*registry);
}

ClientMetrics::~ClientMetrics() = default;

void ClientMetrics::ObserveRequest(std::string_view verb, int code, double seconds) {
  ++requests_;
  {
    std::lock_guard lock(mu_);
    auto it = by_verb_.find(verb);
    if (it == by_verb_.end()) it = by_verb_.emplace(std::string(verb), 0).first;
    ++it->second;
  }
  if (requests_family_ == nullptr) return;
  std::string v(verb);
  requests_family_->Add({{"verb", v}, {"code", code == 0 ? "error" : std::to_string(code)}})
      .Increment();
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
  latency_family_->Add({{"verb", v}}, kBuckets).Observe(seconds);
}

void ClientMetrics::ObserveRetry(int code) {
  if (retries_family_ != nullptr) retries_family_->Add({{"code", std::to_string(code)}}).Increment();
}

void ClientMetrics::ObserveWatchRestart(std::string_view resource, std::string_view reason) {
  ++watch_restarts_;
  if (restarts_family_ == nullptr) return;
  restarts_family_->Add({{"resource", std::string(resource)}, {"reason", std::string(reason)}})
      .Increment();
}

int64_t ClientMetrics::Requests(std::string_view verb) const {
  std::lock_guard lock(mu_);
  auto it = by_verb_.find(verb);
  return it == by_verb_.end() ? 0 : it->second;
}

}  // namespace kvcache::kube
