// OperatorMetrics: the operator's Prometheus metrics (kvcache_operator_*), registered on a
// prometheus-cpp Registry the binary serialises on /metrics.
//
//   kvcache_operator_reconcile_total{result="success|error|requeue"}  counter
//   kvcache_operator_reconcile_errors_total                          counter
//   kvcache_operator_reconcile_duration_seconds                      histogram
//   kvcache_operator_queue_depth                                     gauge (set by the binary)
//   kvcache_operator_failovers_total                                 counter
//   kvcache_operator_migrations_total{result="started|done|failed"}  counter
//   kvcache_operator_topology_pushes_total                           counter
//   kvcache_operator_writes_total{verb="apply|delete|status|patch"}  counter
//
// Thread safety: every method may be called from any thread (prometheus-cpp is thread-safe).
#pragma once

#include <memory>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace kvcache::op {

class OperatorMetrics {
 public:
  explicit OperatorMetrics(prometheus::Registry& registry);
  // For tests and callers without a registry: metrics kept in a private one.
  OperatorMetrics();

  void ReconcileDone(bool ok, bool requeue, double seconds);
  void SetQueueDepth(double depth) { queue_depth_->Set(depth); }
  void Failover() { failovers_->Increment(); }
  void MigrationStarted() { migrations_started_->Increment(); }
  void MigrationDone() { migrations_done_->Increment(); }
  void MigrationFailed() { migrations_failed_->Increment(); }
  void TopologyPushed() { topology_pushes_->Increment(); }
  void Write(const char* verb);

  double Failovers() const { return failovers_->Value(); }
  double ReconcileErrors() const { return errors_->Value(); }

 private:
  void Register(prometheus::Registry& registry);

  std::shared_ptr<prometheus::Registry> own_registry_;
  prometheus::Family<prometheus::Counter>* reconciles_ = nullptr;
  prometheus::Family<prometheus::Counter>* writes_ = nullptr;
  prometheus::Counter* success_ = nullptr;
  prometheus::Counter* error_ = nullptr;
  prometheus::Counter* requeue_ = nullptr;
  prometheus::Counter* errors_ = nullptr;
  prometheus::Histogram* duration_ = nullptr;
  prometheus::Gauge* queue_depth_ = nullptr;
  prometheus::Counter* failovers_ = nullptr;
  prometheus::Counter* migrations_started_ = nullptr;
  prometheus::Counter* migrations_done_ = nullptr;
  prometheus::Counter* migrations_failed_ = nullptr;
  prometheus::Counter* topology_pushes_ = nullptr;
};

}  // namespace kvcache::op
