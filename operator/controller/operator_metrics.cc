#include "controller/operator_metrics.h"

#include <map>

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
                      .Name("kvcache_operator_workqueue_depth")
                      .Help("KVCaches waiting in the work queue")
                      .Register(registry)
                      .Add({});
  leader_ = &prometheus::BuildGauge()
                 .Name("kvcache_operator_leader")
                 .Help("1 while this instance holds the leader lease (or runs without election)")
                 .Register(registry)
                 .Add({});
  ready_nodes_ = &prometheus::BuildGauge()
                      .Name("kvcache_operator_kvcache_ready_nodes")
                      .Help("Ready nodes of each KVCache")
                      .Register(registry);
  desired_nodes_ = &prometheus::BuildGauge()
                        .Name("kvcache_operator_kvcache_desired_nodes")
                        .Help("Nodes each KVCache should have (shards x (1 + replicas))")
                        .Register(registry);
  available_ = &prometheus::BuildGauge()
                    .Name("kvcache_operator_kvcache_available")
                    .Help("1 when the KVCache's Available condition is True")
                    .Register(registry);
  failovers_ = &prometheus::BuildCounter()
                    .Name("kvcache_operator_failovers_total")
                    .Help("Replicas promoted because a primary stayed unready")
                    .Register(registry)
                    .Add({});
  migrations_started_ = &prometheus::BuildCounter()
                             .Name("kvcache_operator_migrations_total")
                             .Help("Slot migrations started")
                             .Register(registry)
                             .Add({});
  migrations_done_ = &prometheus::BuildCounter()
                          .Name("kvcache_operator_migrations_completed_total")
                          .Help("Slot migrations finished (ownership flipped)")
                          .Register(registry)
                          .Add({});
  migrations_failed_ = &prometheus::BuildCounter()
                            .Name("kvcache_operator_migration_failures_total")
                            .Help("Slot migrations the source reported failed (retried)")
                            .Register(registry)
                            .Add({});
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

void OperatorMetrics::SetKVCache(const std::string& ns, const std::string& name,
                                 int ready_nodes, int desired_nodes, bool available) {
  const std::map<std::string, std::string> labels = {{"namespace", ns}, {"name", name}};
  ready_nodes_->Add(labels).Set(ready_nodes);
  desired_nodes_->Add(labels).Set(desired_nodes);
  available_->Add(labels).Set(available ? 1 : 0);
}

void OperatorMetrics::ForgetKVCache(const std::string& ns, const std::string& name) {
  const std::map<std::string, std::string> labels = {{"namespace", ns}, {"name", name}};
  for (auto* family : {ready_nodes_, desired_nodes_, available_}) {
    if (family->Has(labels)) family->Remove(&family->Add(labels));
  }
}

void OperatorMetrics::Write(const char* verb) { writes_->Add({{"verb", verb}}).Increment(); }

}  // namespace kvcache::op
