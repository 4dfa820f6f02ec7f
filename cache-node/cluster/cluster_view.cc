#include "cluster/cluster_view.h"

namespace kvcache::node {

Status ClusterView::Update(protocol::Topology topology) {
  if (Status st = protocol::Validate(topology); !st.ok()) return st;
  std::lock_guard lock(update_mu_);
  const Routing* now = current();
  if (now != nullptr && topology.epoch <= now->topology.epoch) {
    return FailedPreconditionError("topology epoch " + std::to_string(topology.epoch) +
                                   " is not newer than the current epoch " +
                                   std::to_string(now->topology.epoch));
  }
  auto routing = std::make_unique<Routing>();
  routing->owners = topology.SlotOwners();
  for (size_t i = 0; i < topology.shards.size(); ++i) {
    const protocol::Shard& shard = topology.shards[i];
    if (shard.primary.name == self_name_) {
      routing->self_shard = static_cast<int>(i);
      routing->self_primary = true;
    }
    for (const protocol::Member& r : shard.replicas) {
      if (r.name == self_name_) routing->self_shard = static_cast<int>(i);
    }
  }
  routing->topology = std::move(topology);
  current_.store(routing.get(), std::memory_order_release);
  published_.push_back(std::move(routing));
  return Status::Ok();
}

RouteDecision ClusterView::Route(std::string_view key) const {
  const Routing* routing = current();
  if (routing == nullptr) return {};
  const int shard = routing->owners[protocol::KeySlot(key)];
  const protocol::Member& primary = routing->topology.shards[shard].primary;
  return {shard == routing->self_shard && routing->self_primary, &primary, shard};
}

}  // namespace kvcache::node
