// The node's admin protocol (/internal/*, cluster token required): the types the operator and
// the node exchange, their JSON codec, and the AdminClient interface the operator's controller
// uses (its cpprestsdk implementation lives beside it in a separate library so the controller
// never includes cpprestsdk). docs/cluster.md documents the HTTP side.
//
//   GET  /internal/status            -> NodeStatus
//   GET  /internal/topology          -> the node's installed Topology (404 when none)
//   PUT  /internal/topology          body Topology -> {"epoch": N}
//   POST /internal/promote           body PromoteRequest -> NodeStatus (now primary)
//   POST /internal/step-down         body StepDownRequest -> NodeStatus (primary, writes paused)
//   POST /internal/migrations        body MigrationRequest -> MigrationStatus (source primary)
//   GET  /internal/migrations        -> MigrationStatus of the current or last migration
//
// Thread safety: values and pure functions; AdminClient implementations are thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/status.h"
#include "protocol/topology.h"

namespace kvcache::protocol {

enum class Role { kNone, kPrimary, kReplica };  // kNone: no topology names this node
std::string_view RoleName(Role role);             // "none" | "primary" | "replica"

struct MigrationStatus {
  enum class State { kIdle, kStreaming, kDone, kFailed };
  State state = State::kIdle;
  int target_shard = -1;
  std::vector<SlotRange> slots;
  uint64_t keys_moved = 0;
  uint64_t keys_remaining = 0;  // estimate while streaming
  std::string error;            // set when kFailed
  bool operator==(const MigrationStatus&) const = default;
};

struct NodeStatus {
  std::string name;
  Role role = Role::kNone;
  int shard = -1;
  uint64_t epoch = 0;           // of the installed topology
  uint64_t fence_epoch = 0;     // the highest epoch the node knows (>= epoch after a promote):
                                // it refuses batches and forwarded writes from older ones
  uint64_t applied_offset = 0;  // replication offset of the last write applied here
  uint64_t primary_offset = 0;  // replica: last offset heard from the primary
  bool ready = false;           // same as /readyz
  uint64_t keys = 0;
  MigrationStatus migration;
  bool operator==(const NodeStatus&) const = default;
};

struct PromoteRequest {
  uint64_t epoch = 0;  // the epoch of the topology that will name this node primary
  bool operator==(const PromoteRequest&) const = default;
};

// A planned switchover's first step, on the primary: it refuses writes (503 + Retry-After) for
// pause_ms while its replicas catch up, so the successor can be promoted with every write the
// primary acknowledged. The pause ends by itself, or when the node stops being primary.
struct StepDownRequest {
  uint32_t pause_ms = 5000;  // 1..60000
  bool operator==(const StepDownRequest&) const = default;
};

struct MigrationRequest {
  std::vector<SlotRange> slots;  // all owned by the receiving node's shard
  int target_shard = -1;
  Member target;                 // the target shard's primary
  bool operator==(const MigrationRequest&) const = default;
};

std::string EncodeNodeStatus(const NodeStatus& status);
StatusOr<NodeStatus> ParseNodeStatus(std::string_view json);
std::string EncodePromoteRequest(const PromoteRequest& request);
StatusOr<PromoteRequest> ParsePromoteRequest(std::string_view json);
std::string EncodeStepDownRequest(const StepDownRequest& request);
StatusOr<StepDownRequest> ParseStepDownRequest(std::string_view json);
std::string EncodeMigrationRequest(const MigrationRequest& request);
StatusOr<MigrationRequest> ParseMigrationRequest(std::string_view json);
std::string EncodeMigrationStatus(const MigrationStatus& status);
StatusOr<MigrationStatus> ParseMigrationStatus(std::string_view json);

// What the operator calls on a node, addressed by "host:port". Errors: Unavailable when the
// node cannot be reached, Unauthenticated/PermissionDenied for token problems, Conflict when an
// epoch is not newer, FailedPrecondition when the node cannot do it in its state.
class AdminClient {
 public:
  virtual ~AdminClient() = default;
  virtual StatusOr<NodeStatus> GetStatus(const std::string& addr) = 0;
  // NotFound when the node has no topology installed.
  virtual StatusOr<Topology> GetTopology(const std::string& addr) = 0;
  virtual Status PutTopology(const std::string& addr, const Topology& topology) = 0;
  virtual StatusOr<NodeStatus> Promote(const std::string& addr, const PromoteRequest& request) = 0;
  // FailedPrecondition when the node is not a primary.
  virtual StatusOr<NodeStatus> StepDown(const std::string& addr,
                                        const StepDownRequest& request) = 0;
  virtual StatusOr<MigrationStatus> StartMigration(const std::string& addr,
                                                   const MigrationRequest& request) = 0;
  virtual StatusOr<MigrationStatus> GetMigration(const std::string& addr) = 0;
};

}  // namespace kvcache::protocol
