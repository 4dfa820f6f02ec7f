#include "server/metrics.h"

#include <unistd.h>

#include <fstream>

#include <prometheus/gauge.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

namespace kvcache::node {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

size_t CodeIndex(int code) {
  for (size_t i = 0; i < NodeMetrics::kCodes.size(); ++i) {
    if (NodeMetrics::kCodes[i] == code) return i;
  }
  return NodeMetrics::kCodes.size();
}

int StripeIndex() {
  static std::atomic<int> next{0};
  thread_local int index = next.fetch_add(1, std::memory_order_relaxed) % NodeMetrics::kStripes;
  return index;
}

MetricFamily Family(std::string name, std::string help, MetricType type) {
  MetricFamily family;
  family.name = std::move(name);
  family.help = std::move(help);
  family.type = type;
  return family;
}

void AddValue(MetricFamily& family, double value) {
  ClientMetric m;
  if (family.type == MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  family.metric.push_back(std::move(m));
}

double ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  long pages_total = 0, pages_resident = 0;
  statm >> pages_total >> pages_resident;
  return static_cast<double>(pages_resident) * static_cast<double>(sysconf(_SC_PAGESIZE));
}

}  // namespace

NodeMetrics::NodeMetrics(const Store& store, std::function<bool()> ready, std::string version,
                         const Persistence* persistence)
    : store_(store),
      ready_(std::move(ready)),
      persistence_(persistence),
      registry_(std::make_shared<prometheus::Registry>()),
      stripes_(new Stripe[kStripes]),
      start_time_(std::chrono::system_clock::now()) {
  prometheus::BuildGauge()
      .Name("kvcache_node_build_info")
      .Help("Build information; the value is always 1.")
      .Register(*registry_)
      .Add({{"version", std::move(version)}})
      .Set(1);
}

NodeMetrics::~NodeMetrics() = default;

void NodeMetrics::RecordRequest(HttpMethod method, int code, std::chrono::nanoseconds latency) {
  Stripe& s = stripes_[StripeIndex()];
  const int m = static_cast<int>(method);
  s.requests[m][CodeIndex(code)].fetch_add(1, std::memory_order_relaxed);
  const double seconds = std::chrono::duration<double>(latency).count();
  size_t bucket = 0;
  while (bucket < kLatencyBuckets.size() && seconds > kLatencyBuckets[bucket]) ++bucket;
  s.buckets[m][bucket].fetch_add(1, std::memory_order_relaxed);
  s.latency_ns[m].fetch_add(static_cast<uint64_t>(latency.count()), std::memory_order_relaxed);
}

void NodeMetrics::RecordForwarded(int code) {
  stripes_[StripeIndex()].forwarded[CodeIndex(code)].fetch_add(1, std::memory_order_relaxed);
}

std::string NodeMetrics::Render() const {
  std::vector<MetricFamily> families = registry_->Collect();

  // Requests by method and code, and latency by method, summed over the stripes.
  MetricFamily requests = Family("kvcache_node_http_requests_total",
                                 "HTTP requests answered, by method and status code.",
                                 MetricType::Counter);
  MetricFamily latency = Family("kvcache_node_http_request_duration_seconds",
                                "Time from a parsed request to its response being queued.",
                                MetricType::Histogram);
  for (int m = 0; m < kMethods; ++m) {
    const std::string method(MethodName(static_cast<HttpMethod>(m)));
    uint64_t per_code[kCodes.size() + 1] = {};
    uint64_t per_bucket[kLatencyBuckets.size() + 1] = {};
    uint64_t total_ns = 0;
    for (int i = 0; i < kStripes; ++i) {
      const Stripe& s = stripes_[i];
      for (size_t c = 0; c <= kCodes.size(); ++c) {
        per_code[c] += s.requests[m][c].load(std::memory_order_relaxed);
      }
      for (size_t b = 0; b <= kLatencyBuckets.size(); ++b) {
        per_bucket[b] += s.buckets[m][b].load(std::memory_order_relaxed);
      }
      total_ns += s.latency_ns[m].load(std::memory_order_relaxed);
    }
    uint64_t count = 0;
    for (size_t c = 0; c <= kCodes.size(); ++c) {
      if (per_code[c] == 0) continue;
      ClientMetric metric;
      metric.label = {{"code", c < kCodes.size() ? std::to_string(kCodes[c]) : "other"},
                      {"method", method}};
      metric.counter.value = static_cast<double>(per_code[c]);
      requests.metric.push_back(std::move(metric));
      count += per_code[c];
    }
    if (count == 0) continue;
    ClientMetric histogram;
    histogram.label = {{"method", method}};
    histogram.histogram.sample_count = count;
    histogram.histogram.sample_sum = static_cast<double>(total_ns) / 1e9;
    uint64_t cumulative = 0;
    for (size_t b = 0; b <= kLatencyBuckets.size(); ++b) {
      cumulative += per_bucket[b];
      ClientMetric::Bucket bucket;
      bucket.cumulative_count = cumulative;
      bucket.upper_bound = b < kLatencyBuckets.size() ? kLatencyBuckets[b]
                                                      : std::numeric_limits<double>::infinity();
      histogram.histogram.bucket.push_back(bucket);
    }
    latency.metric.push_back(std::move(histogram));
  }
  families.push_back(std::move(requests));
  families.push_back(std::move(latency));

  MetricFamily forwarded = Family("kvcache_node_forwarded_requests_total",
                                  "Requests passed to the owning shard's primary, by its answer "
                                  "(503: the owner could not be reached).",
                                  MetricType::Counter);
  for (size_t c = 0; c <= kCodes.size(); ++c) {
    uint64_t sum = 0;
    for (int i = 0; i < kStripes; ++i) sum += stripes_[i].forwarded[c].load(std::memory_order_relaxed);
    if (sum == 0) continue;
    ClientMetric metric;
    metric.label = {{"code", c < kCodes.size() ? std::to_string(kCodes[c]) : "other"}};
    metric.counter.value = static_cast<double>(sum);
    forwarded.metric.push_back(std::move(metric));
  }
  families.push_back(std::move(forwarded));

  const StoreStats stats = store_.Stats();
  struct Simple {
    const char* name;
    const char* help;
    MetricType type;
    double value;
  };
  const Simple simple[] = {
      {"kvcache_node_keys", "Keys held locally (including expired ones not yet reclaimed).",
       MetricType::Gauge, static_cast<double>(stats.keys)},
      {"kvcache_node_memory_bytes", "Bytes used by entries, as counted against --max-memory.",
       MetricType::Gauge, static_cast<double>(stats.memory_bytes)},
      {"kvcache_node_max_memory_bytes", "The --max-memory limit; 0 means no limit.",
       MetricType::Gauge, static_cast<double>(stats.max_memory_bytes)},
      {"kvcache_node_hits_total", "Reads that found a live key.", MetricType::Counter,
       static_cast<double>(stats.hits)},
      {"kvcache_node_misses_total", "Reads of absent or expired keys.", MetricType::Counter,
       static_cast<double>(stats.misses)},
      {"kvcache_node_evictions_total", "Keys evicted to stay under --max-memory.",
       MetricType::Counter, static_cast<double>(stats.evictions)},
      {"kvcache_node_expirations_total", "Expired keys reclaimed.", MetricType::Counter,
       static_cast<double>(stats.expirations)},
      {"kvcache_node_ready", "1 when /readyz answers 200.", MetricType::Gauge,
       ready_() ? 1.0 : 0.0},
      {"kvcache_node_resident_memory_bytes", "Resident set size of the node process.",
       MetricType::Gauge, ResidentBytes()},
      {"kvcache_node_start_time_seconds", "Unix time the node process started.",
       MetricType::Gauge,
       std::chrono::duration<double>(start_time_.time_since_epoch()).count()},
  };
  for (const Simple& s : simple) {
    MetricFamily family = Family(s.name, s.help, s.type);
    AddValue(family, s.value);
    families.push_back(std::move(family));
  }
  RenderPersistence(families);
  for (const auto& source : sources_) {
    for (const Sample& sample : source()) {
      MetricFamily family = Family(sample.name, sample.help,
                                   sample.counter ? MetricType::Counter : MetricType::Gauge);
      AddValue(family, sample.value);
      families.push_back(std::move(family));
    }
  }
  return prometheus::TextSerializer().Serialize(families);
}

void NodeMetrics::RenderPersistence(std::vector<MetricFamily>& families) const {
  if (persistence_ == nullptr) return;
  const PersistenceStats p = persistence_->Stats();
  const JournalStats& j = p.journal;
  auto add = [&families](const char* name, const char* help, MetricType type, double value) {
    MetricFamily family = Family(name, help, type);
    AddValue(family, value);
    families.push_back(std::move(family));
  };
  add("kvcache_node_log_bytes_total", "Bytes written to the append-only log.",
      MetricType::Counter, static_cast<double>(j.bytes_written));
  add("kvcache_node_log_records_total", "Records appended to the log.", MetricType::Counter,
      static_cast<double>(j.records));
  add("kvcache_node_log_write_errors_total", "Failed log writes or fsyncs (disk full, I/O).",
      MetricType::Counter, static_cast<double>(j.write_errors));
  add("kvcache_node_log_failed", "1 while the log cannot be written and writes are refused.",
      MetricType::Gauge, j.failed ? 1.0 : 0.0);
  MetricFamily fsync = Family("kvcache_node_fsync_duration_seconds",
                              "Time of each log fdatasync.", MetricType::Histogram);
  ClientMetric h;
  h.histogram.sample_count = j.fsyncs;
  h.histogram.sample_sum = j.fsync_seconds_sum;
  for (size_t b = 0; b < std::size(kFsyncBuckets); ++b) {
    ClientMetric::Bucket bucket;
    bucket.cumulative_count = j.fsync_buckets[b];
    bucket.upper_bound = kFsyncBuckets[b];
    h.histogram.bucket.push_back(bucket);
  }
  ClientMetric::Bucket inf;
  inf.cumulative_count = j.fsyncs;
  inf.upper_bound = std::numeric_limits<double>::infinity();
  h.histogram.bucket.push_back(inf);
  fsync.metric.push_back(std::move(h));
  families.push_back(std::move(fsync));
  add("kvcache_node_snapshots_total", "Snapshots written.", MetricType::Counter,
      static_cast<double>(p.snapshots));
  add("kvcache_node_snapshot_failures_total", "Snapshots that failed.", MetricType::Counter,
      static_cast<double>(p.snapshot_failures));
  add("kvcache_node_snapshot_duration_seconds", "Duration of the last snapshot.",
      MetricType::Gauge, p.last_snapshot_seconds);
  add("kvcache_node_snapshot_timestamp_seconds",
      "Unix time the last snapshot finished (0: none since start); age = time() - this.",
      MetricType::Gauge, p.last_snapshot_unix);
  add("kvcache_node_recovery_duration_seconds", "Time the last start spent recovering data.",
      MetricType::Gauge, p.recovery.seconds);
  add("kvcache_node_recovery_replayed_records", "Log records replayed at the last start.",
      MetricType::Gauge, static_cast<double>(p.recovery.replayed_records));
  add("kvcache_node_recovery_corrupt_records", "Torn or corrupt log records found at the last start.",
      MetricType::Gauge, static_cast<double>(p.recovery.corrupt_records));
  add("kvcache_node_recovery_skipped_snapshots", "Corrupt snapshots passed over at the last start.",
      MetricType::Gauge, static_cast<double>(p.recovery.skipped_snapshots));
}

}  // namespace kvcache::node
