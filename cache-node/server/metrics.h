// NodeMetrics: the node's Prometheus metrics, rendered in the text format for GET /metrics.
//
// The request path only touches per-thread stripes of relaxed atomics (no lock, no allocation);
// store figures are read from Store::Stats() at scrape time. prometheus-cpp builds the metric
// families and serialises them, so the output is what promtool expects.
//
// Thread safety: RecordRequest(), RecordForwarded() and Render() may be called concurrently from any thread.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "persist/persistence.h"
#include "server/node_api.h"
#include "store/store.h"

namespace prometheus {
class Registry;
struct MetricFamily;
}

namespace kvcache::node {

class NodeMetrics {
 public:
  // Status codes counted with their own label value; others are counted as "other".
  static constexpr std::array<int, 20> kCodes = {200, 201, 204, 304, 400, 401, 403, 404, 405, 408,
                                                 409, 412, 413, 414, 415, 429, 500, 501, 503, 507};
  static constexpr std::array<double, 14> kLatencyBuckets = {
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
  static constexpr int kMethods = 8;  // HttpMethod values
  static constexpr int kStripes = 16;

  // `persistence` may be null (no persistence metrics then).
  NodeMetrics(const Store& store, std::function<bool()> ready, std::string version,
              const Persistence* persistence = nullptr);
  ~NodeMetrics();

  void RecordRequest(HttpMethod method, int code, std::chrono::nanoseconds latency);
  // A request passed to its owner (cluster mode), by the owner's status code; 503 when the
  // owner could not be reached.
  void RecordForwarded(int code);

  // Values another part reports at scrape time (one sample each, no labels).
  struct Sample {
    std::string name;
    std::string help;
    bool counter = false;  // else a gauge
    double value = 0;
  };
  // Adds a source of samples, called on every Render(). REQUIRES: before serving.
  void AddSource(std::function<std::vector<Sample>()> source) {
    sources_.push_back(std::move(source));
  }

  // The whole exposition, text format 0.0.4.
  std::string Render() const;

 private:
  struct alignas(64) Stripe {
    std::atomic<uint64_t> requests[kMethods][kCodes.size() + 1] = {};
    std::atomic<uint64_t> buckets[kMethods][kLatencyBuckets.size() + 1] = {};
    std::atomic<uint64_t> latency_ns[kMethods] = {};
    std::atomic<uint64_t> forwarded[kCodes.size() + 1] = {};
  };

  void RenderPersistence(std::vector<prometheus::MetricFamily>& families) const;

  const Store& store_;
  std::function<bool()> ready_;
  const Persistence* persistence_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Stripe[]> stripes_;
  std::chrono::system_clock::time_point start_time_;
  std::vector<std::function<std::vector<Sample>()>> sources_;
};

}  // namespace kvcache::node
