// FakeAdminClient: in-memory cache nodes for the reconciler's tests, addressed like the real
// ones ("10.0.1.2:8080"). Each node keeps the admin-protocol state the operator sees: role,
// epoch, applied offset, readiness and one migration. Topology pushes follow the node's rule
// (only a higher epoch is accepted: Conflict otherwise); Promote makes a node primary at the
// given epoch; a migration reports Streaming for `migration_polls` GetMigration calls, then Done.
//
// Thread safety: every method may be called from any thread.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "protocol/admin.h"

namespace kvcache::op {

class FakeAdminClient final : public protocol::AdminClient {
 public:
  struct Node {
    protocol::NodeStatus status;
    std::optional<protocol::Topology> topology;
    bool reachable = true;
    int polls_left = 0;
  };

  // Adds (or resets) the node at `addr` named `name`.
  void AddNode(const std::string& addr, const std::string& name) {
    std::lock_guard lock(mu_);
    Node n;
    n.status.name = name;
    nodes_[addr] = n;
  }
  bool HasNode(const std::string& addr) const {
    std::lock_guard lock(mu_);
    return nodes_.count(addr) > 0;
  }
  // Test access to a node's state. REQUIRES: the node exists; no concurrent calls.
  Node& At(const std::string& addr) { return nodes_.at(addr); }

  StatusOr<protocol::NodeStatus> GetStatus(const std::string& addr) override {
    std::lock_guard lock(mu_);
    ++calls_["status"];
    Node* n = Find(addr);
    if (n == nullptr) return UnavailableError("no node at " + addr);
    return n->status;
  }
  StatusOr<protocol::Topology> GetTopology(const std::string& addr) override {
    std::lock_guard lock(mu_);
    ++calls_["get-topology"];
    Node* n = Find(addr);
    if (n == nullptr) return UnavailableError("no node at " + addr);
    if (!n->topology) return NotFoundError("no topology installed");
    return *n->topology;
  }
  Status PutTopology(const std::string& addr, const protocol::Topology& topology) override {
    std::lock_guard lock(mu_);
    ++calls_["topology"];
    Node* n = Find(addr);
    if (n == nullptr) return UnavailableError("no node at " + addr);
    if (topology.epoch <= n->status.epoch) return ConflictError("epoch not newer");
    if (Status v = protocol::Validate(topology); !v.ok()) return v;
    n->topology = topology;
    n->status.epoch = topology.epoch;
    n->status.role = protocol::Role::kNone;
    for (const protocol::Shard& s : topology.shards) {
      if (s.primary.name == n->status.name) {
        n->status.role = protocol::Role::kPrimary;
        n->status.shard = s.id;
      }
      for (const protocol::Member& r : s.replicas) {
        if (r.name == n->status.name) {
          n->status.role = protocol::Role::kReplica;
          n->status.shard = s.id;
        }
      }
    }
    pushes_.push_back({addr, topology});
    return Status::Ok();
  }
  StatusOr<protocol::NodeStatus> Promote(const std::string& addr,
                                         const protocol::PromoteRequest& request) override {
    std::lock_guard lock(mu_);
    ++calls_["promote"];
    Node* n = Find(addr);
    if (n == nullptr) return UnavailableError("no node at " + addr);
    if (request.epoch <= n->status.epoch) return ConflictError("epoch not newer");
    n->status.role = protocol::Role::kPrimary;
    n->status.epoch = request.epoch;
    promoted_.push_back(n->status.name);
    return n->status;
  }
  // Records the step-down; the node stays primary (its writes are paused).
  StatusOr<protocol::NodeStatus> StepDown(const std::string& addr,
                                          const protocol::StepDownRequest&) override {
    std::lock_guard lock(mu_);
    ++calls_["step-down"];
    Node* n = Find(addr);
    if (n == nullptr) return UnavailableError("no node at " + addr);
    if (n->status.role != protocol::Role::kPrimary) return FailedPreconditionError("not primary");
    stepped_down_.push_back(n->status.name);
    return n->status;
  }
  std::vector<std::string> SteppedDown() const {
    std::lock_guard lock(mu_);
    return stepped_down_;
  }
  StatusOr<protocol::MigrationStatus> StartMigration(
      const std::string& addr, const protocol::MigrationRequest& request) override {
    std::lock_guard lock(mu_);
    ++calls_["start"];
    Node* n = Find(addr);
    if (n == nullptr) return UnavailableError("no node at " + addr);
    using State = protocol::MigrationStatus::State;
    if (n->status.migration.state == State::kStreaming) {
      return FailedPreconditionError("a migration is running");
    }
    if (on_start) on_start(request);
    n->status.migration = {State::kStreaming, request.target_shard, request.slots, 0, 100, ""};
    n->polls_left = migration_polls;
    started_.push_back(request);
    return n->status.migration;
  }
  StatusOr<protocol::MigrationStatus> GetMigration(const std::string& addr) override {
    std::lock_guard lock(mu_);
    ++calls_["get-migration"];
    Node* n = Find(addr);
    if (n == nullptr) return UnavailableError("no node at " + addr);
    using State = protocol::MigrationStatus::State;
    if (n->status.migration.state == State::kStreaming) {
      if (n->polls_left > 0) {
        --n->polls_left;
        n->status.migration.keys_moved += 50;
      } else {
        n->status.migration.state = fail_migrations ? State::kFailed : State::kDone;
        n->status.migration.keys_moved = 100;
        n->status.migration.keys_remaining = 0;
        if (fail_migrations) n->status.migration.error = "target refused";
      }
    }
    return n->status.migration;
  }

  int Calls(const std::string& what) const {
    std::lock_guard lock(mu_);
    auto it = calls_.find(what);
    return it == calls_.end() ? 0 : it->second;
  }
  void ResetCalls() {
    std::lock_guard lock(mu_);
    calls_.clear();
  }
  std::vector<std::string> Promoted() const {
    std::lock_guard lock(mu_);
    return promoted_;
  }
  std::vector<protocol::MigrationRequest> Started() const {
    std::lock_guard lock(mu_);
    return started_;
  }

  int migration_polls = 1;
  // Called (with the fake's lock held: use At(), not the AdminClient methods) on StartMigration.
  std::function<void(const protocol::MigrationRequest&)> on_start;
  bool fail_migrations = false;

 private:
  Node* Find(const std::string& addr) {
    auto it = nodes_.find(addr);
    if (it == nodes_.end() || !it->second.reachable) return nullptr;
    return &it->second;
  }

  mutable std::mutex mu_;
  std::map<std::string, Node> nodes_;
  std::map<std::string, int> calls_;
  std::vector<std::pair<std::string, protocol::Topology>> pushes_;
  std::vector<std::string> promoted_;
  std::vector<std::string> stepped_down_;
  std::vector<protocol::MigrationRequest> started_;
};

}  // namespace kvcache::op
