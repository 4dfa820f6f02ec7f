// ClusterView: this node's current picture of the cluster (a validated Topology plus its own
// name), answering "who owns this key?" on the request path without a lock.
//
// A new topology is accepted only with a higher epoch. Published routing tables are kept for
// the life of the view (topologies change rarely), so a reader holding one never sees it freed.
//
// Thread safety: Route() from any thread, lock-free; Update() serialised internally.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/topology.h"

namespace kvcache::node {

struct Routing {
  protocol::Topology topology;
  std::vector<int> owners;  // slot -> index into topology.shards
  int self_shard = -1;      // index of the shard this node belongs to, or -1
  bool self_primary = false;
};

struct RouteDecision {
  bool local = true;           // serve here
  const protocol::Member* owner = nullptr;  // the owning primary (null when not clustered)
  int shard = -1;              // index of the key's shard in the topology (-1 when not clustered)
};

class ClusterView {
 public:
  explicit ClusterView(std::string self_name) : self_name_(std::move(self_name)) {}

  // Installs `topology` if its epoch is higher than the current one. Returns
  // FailedPrecondition for a stale epoch, InvalidArgument if it does not validate.
  Status Update(protocol::Topology topology);

  // Null until a topology was installed.
  const Routing* current() const { return current_.load(std::memory_order_acquire); }

  // Where a request for `key` goes. Writes (and reads, for now) are served by the primary of
  // the key's shard.
  RouteDecision Route(std::string_view key) const;

  const std::string& self_name() const { return self_name_; }

 private:
  const std::string self_name_;
  std::atomic<const Routing*> current_{nullptr};
  std::mutex update_mu_;
  std::vector<std::unique_ptr<Routing>> published_;
};

}  // namespace kvcache::node
