#include "controller/operator_metrics.h"

namespace kvcache::op {

OperatorMetrics::OperatorMetrics(prometheus::Registry& registry) { Register(registry); }

OperatorMetrics::OperatorMetrics() : own_registry_(std::make_shared<prometheus::Registry>()) {
  Register(*own_registry_);
}

void OperatorMetrics::Register(prometheus::Registry& registry) {
  reconciles_ = &prometheus::BuildCounter()
                     .Name("kvcache_operator_reconcile_total")
                     .Help("KVCache reconciles by result")
                     .Register(registry);
  success_ = &reconciles_->Add({{"result", "success"}});
  error_ = &reconciles_->Add({{"result", "error"}});
  requeue_ = &reconciles_->Add({{"result", "requeue"}});
  errors_ = &prometheus::BuildCounter()
                 .Name("kvcache_operator_reconcile_errors_total")
                 .Help("KVCache reconciles that returned an error")
                 .Register(registry)
                 .Add({});
  duration_ = &prometheus::BuildHistogram()
                   .Name("kvcache_operator_reconcile_duration_seconds")
                   .Help("Time spent in one KVCache reconcile")
                   .Register(registry)
                   .Add({}, prometheus::Histogram::BucketBoundaries{0.005, 0.01, 0.025, 0.05, 0.1,
                                                                    0.25, 0.5, 1, 2.5, 5, 10});
  queue_depth_ = &prometheus::BuildGauge()
                      .Name("kvcache_operator_queue_depth")
                      .Help("KVCaches waiting in the work queue")
                      .Register(registry)
                      .Add({});
  failovers_ = &prometheus::BuildCounter()
                    .Name("kvcache_operator_failovers_total")
                    .Help("Replicas promoted because a primary stayed unready")
                    .Register(registry)
                    .Add({});
  auto& migrations = prometheus::BuildCounter()
                         .Name("kvcache_operator_migrations_total")
                         .Help("Slot migrations by outcome")
                         .Register(registry);
  migrations_started_ = &migrations.Add({{"result", "started"}});
  migrations_done_ = &migrations.Add({{"result", "done"}});
  migrations_failed_ = &migrations.Add({{"result", "failed"}});
  topology_pushes_ = &prometheus::BuildCounter()
                          .Name("kvcache_operator_topology_pushes_total")
                          .Help("Topology documents pushed to nodes")
                          .Register(registry)
                          .Add({});
  writes_ = &prometheus::BuildCounter()
                 .Name("kvcache_operator_writes_total")
                 .Help("Writes to the Kubernetes API by kind of write")
                 .Register(registry);
}

void OperatorMetrics::ReconcileDone(bool ok, bool requeue, double seconds) {
  if (!ok) {
    error_->Increment();
    errors_->Increment();
  } else if (requeue) {
    requeue_->Increment();
  } else {
    success_->Increment();
  }
  duration_->Observe(seconds);
}

void OperatorMetrics::Write(const char* verb) { writes_->Add({{"verb", verb}}).Increment(); }

}  // namespace kvcache::op
