// ClientMetrics: what the kube client reports about its own traffic, registered in the
// registry the operator serves on /metrics:
//   kvcache_operator_kube_requests_total{verb,code}          requests sent (code "error" for
//                                                            transport failures)
//   kvcache_operator_kube_request_duration_seconds{verb}     latency histogram
//   kvcache_operator_kube_watch_restarts_total{resource,reason}  informer re-watches/relists
//   kvcache_operator_kube_request_retries_total{code}        429/503 retries after Retry-After
// Also keeps plain counters so tests and measurements can read totals without scraping.
//
// Thread safety: every method may be called from any thread concurrently.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>

namespace prometheus {
class Registry;
class Counter;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace kvcache::kube {

class ClientMetrics {
 public:
  // `registry` may be null: only the plain counters are kept. The registry must outlive this.
  explicit ClientMetrics(prometheus::Registry* registry);
  ~ClientMetrics();

  // `code` 0 means the request failed before an HTTP answer.
  void ObserveRequest(std::string_view verb, int code, double seconds);
  void ObserveRetry(int code);
  void ObserveWatchRestart(std::string_view resource, std::string_view reason);

  int64_t Requests() const { return requests_.load(); }
  int64_t Requests(std::string_view verb) const;
  int64_t WatchRestarts() const { return watch_restarts_.load(); }

 private:
  prometheus::Family<prometheus::Counter>* requests_family_ = nullptr;
  prometheus::Family<prometheus::Histogram>* latency_family_ = nullptr;
  prometheus::Family<prometheus::Counter>* restarts_family_ = nullptr;
  prometheus::Family<prometheus::Counter>* retries_family_ = nullptr;
  std::atomic<int64_t> requests_{0};
  std::atomic<int64_t> watch_restarts_{0};
  mutable std::mutex mu_;
  std::map<std::string, int64_t, std::less<>> by_verb_;
};

}  // namespace kvcache::kube
