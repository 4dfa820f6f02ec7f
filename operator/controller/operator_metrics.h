// OperatorMetrics: the operator's Prometheus metrics (kvcache_operator_*), registered on a
// prometheus-cpp Registry the binary serialises on /metrics.
//
//   kvcache_operator_reconcile_total{result="success|error|requeue"}  counter
//   kvcache_operator_reconcile_errors_total                          counter
//   kvcache_operator_reconcile_duration_seconds                      histogram
//   kvcache_operator_workqueue_depth                                 gauge (set by the binary)
//   kvcache_operator_leader                                          gauge (set by the binary)
//   kvcache_operator_failovers_total                                 counter
//   kvcache_operator_migrations_total                                counter (started)
//   kvcache_operator_migrations_completed_total                      counter
//   kvcache_operator_migration_failures_total                        counter
//   kvcache_operator_topology_pushes_total                           counter
//   kvcache_operator_writes_total{verb="apply|delete|status|patch"}  counter
//   kvcache_operator_kvcache_{ready_nodes,desired_nodes,available}{namespace,name}  gauges
// (docs/metrics.md lists them; the names match the shipped dashboards and alerts.)
//
// Thread safety: every method may be called from any thread (prometheus-cpp is thread-safe).
#pragma once

#include <memory>
#include <string>

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
  void SetLeader(bool leader) { leader_->Set(leader ? 1 : 0); }
  // Per-KVCache gauges, as of the last status written; Forget drops the series (deleted).
  void SetKVCache(const std::string& ns, const std::string& name, int ready_nodes,
                  int desired_nodes, bool available);
  void ForgetKVCache(const std::string& ns, const std::string& name);
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
  prometheus::Gauge* leader_ = nullptr;
  prometheus::Family<prometheus::Gauge>* ready_nodes_ = nullptr;
  prometheus::Family<prometheus::Gauge>* desired_nodes_ = nullptr;
  prometheus::Family<prometheus::Gauge>* available_ = nullptr;
  prometheus::Counter* failovers_ = nullptr;
  prometheus::Counter* migrations_started_ = nullptr;
  prometheus::Counter* migrations_done_ = nullptr;
  prometheus::Counter* migrations_failed_ = nullptr;
  prometheus::Counter* topology_pushes_ = nullptr;
};

}  // namespace kvcache::op
