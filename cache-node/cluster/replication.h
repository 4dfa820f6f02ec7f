// Replication: this node's role in its shard (primary, replica, or none) and everything that
// follows from it.
//
// As primary it streams every write to the replicas the topology names: one sender thread per
// replica pushes batches of the ReplicationLog's backlog (POST /internal/replication, over a
// keep-alive cpprestsdk connection), sends a heartbeat when idle, and runs a full sync (the
// store, shard by shard, then the stream from the snapshot's offset) when the replica is new,
// follows another term, or is behind what the backlog holds. In sync mode a write is
// acknowledged once `min_acks` replicas have applied its offset (WaitAcked).
//
// As replica it applies batches in order through its store (and so through its own journal).
//
// Terms and fencing. A primary term has a random replication id; offsets are only compared
// within one. The node knows an epoch: the highest of its topology's, the one it was promoted
// in, and any it saw in a batch or reply. It refuses batches and forwarded writes from an older
// epoch (409 + its epoch). A primary that learns of a newer epoch in which it is not primary
// (a topology push, a replica's refusal, a batch from a newer primary) stops taking writes at
// once, fails the writes waiting for acks, forgets which term it followed, and so takes a full
// sync from the new primary: it may hold writes the new primary never got.
//
// Thread safety: every public method is thread-safe. Locks: apply_mu_ (replica state, one
// batch at a time) before mu_ (role, senders) before waiters_mu_; callbacks run with none held.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cluster/cluster_view.h"
#include "cluster/replication_log.h"
#include "cluster/replication_wire.h"
#include "protocol/admin.h"
#include "store/store.h"

namespace web::http::client {
class http_client;  // cpprestsdk, behind replication.cc
}  // namespace web::http::client

namespace kvcache::node {

enum class ReplicationMode { kAsync, kSync };
StatusOr<ReplicationMode> ParseReplicationMode(std::string_view name);

struct ReplicationOptions {
  ReplicationMode mode = ReplicationMode::kAsync;
  int min_acks = 1;  // sync mode: replicas that must have applied a write before its answer
  std::chrono::milliseconds ack_timeout{2000};      // sync: then 503, not acknowledged
  std::chrono::milliseconds request_timeout{3000};  // one batch POST
  std::chrono::milliseconds heartbeat{200};         // an idle sender's empty batch
  // Primary lease: when > 0 and replicas are configured, the primary refuses writes unless a
  // replica has answered within this time (bounds what an async primary cut off from its
  // replicas can still acknowledge). 0: off.
  std::chrono::milliseconds lease{0};
  uint64_t ready_lag_records = 1000;  // a replica is ready once synced and this close
  size_t batch_bytes = 512 * 1024;
  std::string cluster_token;
  // Partial resync after a replica restart (empty: off, e.g. without persistence): the replica
  // saves {replid, offset} here once its local log is durable past that offset, and resumes
  // from it at start instead of asking for a full sync. `durable_offset` is the local log's
  // last durable record (the ReplicationLog's numbering).
  std::string state_path;
  std::function<uint64_t()> durable_offset;
};

// Renders log lines (spdlog lives in main).
using ReplicationLogger = std::function<void(const std::string&)>;

class Replication {
 public:
  Replication(Store& store, ClusterView& cluster, ReplicationLog& log, ReplicationOptions options,
              ReplicationLogger logger);
  ~Replication();

  // Takes the role the installed topology gives and starts the background thread (topology
  // changes, ack timeouts). Until then batches are answered 503. REQUIRES: data recovered.
  void Start();
  // Stops the senders and the background thread; fails waiting writes. Idempotent.
  void Stop();

  // Re-reads the cluster view after a topology was installed (also polled every 10 ms).
  void OnTopology();

  protocol::Role role() const { return static_cast<protocol::Role>(role_.load()); }
  // Index into the topology's shards of this node's shard, -1 if none.
  int self_shard() const { return self_shard_.load(); }
  // The highest epoch this node knows; it refuses anything older.
  uint64_t epoch() const { return epoch_.load(); }

  // OK when this node may take a write now: it is the primary, holds its lease (if one is
  // configured), and in sync mode has at least min_acks replicas configured. Otherwise
  // Unavailable with the reason (the client retries: 503 + Retry-After).
  kvcache::Status CheckWritable() const;

  // Calls `done` once the write with `offset` is acknowledged as the mode requires: at once in
  // async mode or outside any topology; in sync mode when min_acks replicas applied it (OK), or Unavailable on timeout
  // or when this node stops being primary (the client must not count on the write).
  void WaitAcked(uint64_t offset, std::function<void(const Status&)> done);

  // /readyz: a replica is ready once it finished a full sync and is within ready_lag_records
  // of the primary; other roles are.
  bool CaughtUp() const;

  // True while the store holds only part of a full sync: from its syncBegin (which empties the
  // store) until its syncEnd. Unlike the stream state it describes the data, so a role change
  // does not clear it; only a completed full sync does. With a state_path it is also kept on
  // disk (state_path + ".partial-copy", fsynced before the store is emptied), so a restart in
  // the middle of a sync does not forget it. Such a store is not its shard: a key
  // missing here may exist, and a pass over it proves nothing (a slot move must not start).
  bool HoldsPartialCopy() const { return partial_copy_.load(); }

  // POST /internal/promote: this node becomes its shard's primary in `request.epoch` at once.
  // Conflict if the epoch is not newer than the one the node knows; FailedPrecondition if no
  // topology names this node, or if it holds a partial copy (HoldsPartialCopy: promoted, it
  // would serve and then replicate a shard with keys missing, and the old primary, which has
  // them, would be fenced and resynced from it: wait for that primary instead).
  kvcache::Status Promote(const protocol::PromoteRequest& request);
  // POST /internal/step-down: as primary, refuses writes (CheckWritable: Unavailable) for
  // `pause` while the replicas catch up, the first step of a planned switchover. The pause ends
  // by itself or when the node takes a new role. FailedPrecondition if not primary.
  kvcache::Status PauseWrites(std::chrono::milliseconds pause);

  // GET /internal/status (without `ready`, `keys` and `migration`, which the caller fills).
  protocol::NodeStatus Describe() const;

  // POST /internal/replication: applies a batch. Returns the HTTP code and JSON body.
  std::pair<int, std::string> HandleBatch(std::string_view body);

  // The kvcache_node_role / _shard / _topology_epoch / _replication_* metrics, text format.
  std::string MetricsText() const;

  // Last offset this node assigned (primary) or applied (replica).
  uint64_t offset() const;

 private:
  struct Sender;
  struct Waiter {
    std::chrono::steady_clock::time_point deadline;
    std::function<void(const kvcache::Status&)> done;
  };

  void RaiseEpoch(uint64_t epoch);
  // REQUIRES: apply_mu_ and mu_ held.
  void BecomePrimaryLocked(uint64_t epoch, const std::string& why);
  void DemoteLocked(uint64_t epoch, protocol::Role to, const std::string& why);
  void ReconcileSendersLocked();
  void RetireSendersLocked();
  // Demotes if `epoch` is newer than the epoch this node is primary in (a replica's refusal).
  void ObserveNewerEpoch(uint64_t epoch, const std::string& from);
  void OnTopologyLocked();

  // Sets partial_copy_ and, with a state_path, creates (fsynced) or removes its marker file.
  // REQUIRES: apply_mu_ held.
  void MarkPartialCopy(bool partial);
  std::string PartialMarkerPath() const;
  void RunSender(Sender& sender);
  // Sends one batch to sender's replica. A receiver that is not that replica (421) makes
  // it replace sender.client (a new connection, the name resolved again) and return
  // Unavailable. Called on the sender's own thread only, which alone uses sender.client.
  StatusOr<BatchReply> Post(Sender& sender, const BatchHeader& header,
                            const std::vector<ReplRecord>& records);
  std::shared_ptr<web::http::client::http_client> NewReplicaClient(const std::string& addr) const;
  kvcache::Status FullSync(Sender& sender, const BatchHeader& term, uint64_t* cursor);
  void OnAck();
  void FailWaiters(const kvcache::Status& why);
  void ControlLoop();
  kvcache::Status ApplyRecord(const ReplRecord& record);
  // Partial-resync state file (see ReplicationOptions::state_path).
  void Checkpoint(uint64_t applied);  // REQUIRES: apply_mu_ held
  void ForgetState();                 // REQUIRES: apply_mu_ held
  void SaveState();
  void LoadState();                   // REQUIRES: apply_mu_ held

  Store& store_;
  ClusterView& cluster_;
  ReplicationLog& log_;
  const ReplicationOptions options_;
  ReplicationLogger logger_;

  std::atomic<int> role_{static_cast<int>(protocol::Role::kNone)};
  std::atomic<int> self_shard_{-1};
  std::atomic<uint64_t> epoch_{0};
  std::atomic<bool> started_{false};
  std::atomic<size_t> sender_count_{0};
  std::atomic<int64_t> last_replica_answer_ms_{0};  // steady clock, any replica, this term
  std::atomic<int64_t> writes_paused_until_ms_{0};  // steady clock; PauseWrites
  std::atomic<uint64_t> full_syncs_{0};

  // Replica state, guarded by apply_mu_ (atomics so status and metrics read it without).
  std::mutex apply_mu_;
  std::string follow_replid_;
  std::string leader_;            // the primary of this node's shard as far as it knows
  uint64_t leader_epoch_ = 0;     // learned in this epoch
  std::atomic<bool> following_{false};  // completed a full sync from the current leader's term
  std::atomic<bool> syncing_{false};
  std::atomic<bool> partial_copy_{false};  // see HoldsPartialCopy(); not cleared by a role change
  std::atomic<uint64_t> applied_{0};
  std::atomic<uint64_t> primary_offset_{0};
  std::atomic<bool> contact_{false};  // a batch of the current leader was accepted

  // Checkpoints (primary offset applied, local log offset it needs) for the state file.
  std::mutex state_mu_;
  std::string state_replid_;
  std::vector<std::pair<uint64_t, uint64_t>> checkpoints_;
  uint64_t saved_offset_ = 0;

  // Role and senders.
  mutable std::mutex mu_;
  uint64_t role_epoch_ = 0;  // the epoch in which the current role was taken
  std::string replid_;       // this node's term, while primary
  std::atomic<const Routing*> seen_routing_{nullptr};
  std::map<std::string, std::shared_ptr<Sender>> senders_;
  std::vector<std::shared_ptr<Sender>> retired_;

  std::mutex waiters_mu_;
  std::multimap<uint64_t, Waiter> waiters_;
  std::vector<std::function<void(const kvcache::Status&)>> demoted_waiters_;  // to fail
  uint64_t quorum_offset_ = 0;

  std::mutex control_mu_;
  std::condition_variable control_cv_;
  bool stop_ = false;
  std::thread control_;
};

}  // namespace kvcache::node
