// Migrations: moves hash slots from this shard (the source) to another shard (the target)
// while clients keep reading and writing, and accepts such moves as the target.
//
// The hand-off, in order (docs/cluster.md, "Slot migration", is the operator's side):
//   1. POST /internal/migrations on the source primary A {slots S, target shard, its primary B}.
//      A checks that its shard owns S and that B is the target shard's primary, writes
//      migration.json (state streaming) to its data directory, and answers.
//   2. A registers the migration at B (an import with no entries). From then on B serves keys
//      of S that A forwards to it (hop header), although B does not own S yet.
//   3. A routes S specially (NodeApi asks MigratingTo()): a key present at A is served at A; a
//      PUT writes at A only if the key is present there (atomically, in the store); a key absent
//      at A goes one more hop to B. A key once gone from A therefore never comes back to A, so
//      "absent at A" always means "B has the newest version, or nobody does".
//   4. A streams S's keys to B in batches (POST /internal/import, cluster token): it marks the
//      batch's keys in flight, reads them, sends them with content type and absolute expiry; B
//      applies them through its normal write path (journal). Once B acknowledged, A deletes each
//      key only if it is unchanged (same ETag and expiry); a key written meanwhile stays and goes
//      again in a later pass. A DELETE at A of a key in flight answers 503 + Retry-After (else
//      the copy on its way to B would bring the key back); any other DELETE of a present key
//      deletes it at A and then at B (which may hold an older copy).
//   5. A pass that finds no key of S at A ends streaming: state done. A keeps refreshing the
//      registration at B (every second) so B still serves S after a restart. "No key here"
//      means "all at B" only if A's store is its whole shard: a node still recovering its data
//      directory, or holding part of a full sync (a replica made primary while its sync was
//      cut off: the new primary a move is handed to after a failover), would find nothing and
//      hand S over with keys never sent. So Start() refuses, and a pass never ends streaming,
//      while MigrationOptions::store_complete says the store is not whole.
//   6. The operator pushes a new-epoch topology in which B's shard owns S, to every node.
//   7. A sees the topology flip, deletes any stray key of S it still holds, drops the special
//      routing and marks the record finished. Requests for S now go to B by the topology.
//
// A restart of A resumes from migration.json (the special routing is back before the node is
// ready). B keeps no migration state on disk: the next registration restores it. A target
// that stays unreachable for give_up_after turns the migration failed; the special routing
// stays (some keys are at B) and the same request resumes it.
//
// Thread safety: every method may be called from any thread. MigratingTo() and Importing() are
// cheap and lock-free (the request path).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "cluster/cluster_view.h"
#include "cluster/forwarder.h"
#include "cluster/migration_plan.h"
#include "persist/env.h"
#include "protocol/admin.h"
#include "store/store.h"

namespace kvcache::node {

struct MigrationOptions {
  // Where migration.json lives; empty: not persisted.
  std::string data_dir;
  // Sent to the target on imports.
  std::optional<std::string> cluster_token;
  size_t batch_keys = 1000;
  size_t batch_bytes = 512 << 10;    // a batch holds at least one key whatever its size
  uint64_t max_keys_per_second = 0;  // 0: as fast as the target acknowledges
  std::chrono::milliseconds give_up_after{60'000};
  std::chrono::milliseconds heartbeat{1'000};
  // Test seam: called on the worker thread once the target acknowledged a batch, before its
  // keys are removed here.
  std::function<void(const ImportBatch&)> on_acknowledged;
  // OK when this node's store holds all of its shard's data, so that a pass finding no key of
  // the slots proves they are all at the target; else Unavailable with the reason (the data
  // directory is still being recovered, or the store is part of a full sync). Called on the
  // request and worker threads. Unset: always OK.
  std::function<Status()> store_complete;
};

class Migrations {
 public:
  using Log = std::function<void(const std::string&)>;
  static constexpr char kStateFile[] = "migration.json";

  // All references must outlive the object.
  Migrations(Store& store, const ClusterView& cluster, Forwarder& forwarder, Env& env,
             MigrationOptions options, Log log);
  ~Migrations();

  // Source side ----------------------------------------------------------------------------

  // Reads migration.json; an unfinished migration's routing is active when this returns.
  // Returns the read or parse error (the node should not serve then). REQUIRES: before serving.
  Status Load();
  // Starts the background work Load() found unfinished. REQUIRES: after the store recovered.
  void Resume();

  // Starts moving request.slots to request.target. Returns InvalidArgument if this shard does
  // not own every slot or the target is not the named shard's primary (or is this shard),
  // FailedPrecondition if this node is not a shard primary, Unavailable while the store is not
  // the whole shard (options.store_complete; retry later), Conflict if a migration is running,
  // waiting for its topology flip, or failed with a different request (resume it first), or
  // the error writing migration.json.
  StatusOr<protocol::MigrationStatus> Start(const protocol::MigrationRequest& request);
  // The current or last migration (state idle if none).
  protocol::MigrationStatus status() const;

  // Null unless `slot` is migrating away from here: then the target's primary (valid for the
  // life of this object).
  const protocol::Member* MigratingTo(int slot) const {
    const Route* route = route_.load(std::memory_order_acquire);
    return route != nullptr && route->slots.Contains(slot) ? &route->target : nullptr;
  }
  // True while any slot is routed as migrating (streaming, done, or failed with keys on both
  // sides); a cheap check before MigratingTo().
  bool routing_active() const { return route_.load(std::memory_order_acquire) != nullptr; }
  // DELETE of a key of a migrating slot, at the source. Returns Unavailable while the key is
  // in a batch on its way to the target, NotFound if absent here.
  Status DeleteLocal(std::string_view key, uint64_t* seq);

  // Stops the background work (the state stays on disk for the next start).
  void Stop();

  // Target side ----------------------------------------------------------------------------

  // Applies an import batch (EncodeImportBatch) through the store's write path and returns the
  // highest log sequence written (0: none). Returns InvalidArgument for a malformed batch or an
  // entry outside its slots, FailedPrecondition if this node is not a shard primary, Conflict if
  // the slots are owned neither here nor by the source's shard, or the store's error.
  StatusOr<uint64_t> Import(std::string_view body);
  // True if a source registered `slot` with this node under the installed topology epoch.
  bool Importing(int slot) const;

  // Metrics ---------------------------------------------------------------------------------
  uint64_t keys_moved_total() const { return keys_moved_total_.load(std::memory_order_relaxed); }
  bool active() const { return active_.load(std::memory_order_relaxed); }
  uint64_t keys_remaining() const { return keys_remaining_.load(std::memory_order_relaxed); }

 private:
  struct Route {
    SlotSet slots;
    protocol::Member target;
  };
  struct Registration {
    uint64_t epoch = 0;
    SlotSet slots;
  };

  void PublishRoute(const protocol::MigrationRequest& request);
  void Run();
  // One pass over the store sending every key of the migrating slots. Returns how many keys
  // of those slots it found, or the error that made it give up.
  StatusOr<uint64_t> StreamPass();
  Status SendKeys(const std::vector<std::string>& keys);
  // POSTs one batch, retrying until give_up_after has passed since the first failure.
  Status PostWithRetry(const ImportBatch& batch);
  Status PostImport(const ImportBatch& batch);
  void FinishAfterFlip();
  void Fail(const std::string& error);
  // options_.store_complete(), or OK if unset.
  Status CheckStoreComplete() const;
  Status SaveLocked();
  bool Stopping();
  // Waits up to `d` or until Stop(); returns true if stopping.
  bool SleepFor(std::chrono::steady_clock::duration d);
  void SetActive(bool active);

  Store& store_;
  const ClusterView& cluster_;
  Forwarder& forwarder_;
  Env& env_;
  const MigrationOptions options_;
  Log log_;

  std::atomic<const Route*> route_{nullptr};
  std::vector<std::unique_ptr<Route>> routes_;  // every published route, kept (rare)

  std::mutex start_mu_;  // one Start() at a time
  mutable std::mutex mu_;
  std::optional<MigrationRecord> record_;
  // Snapshot of the migrating slots for the worker (immutable while it runs).
  SlotSet slots_;
  std::string source_name_;
  std::thread worker_;
  std::chrono::steady_clock::time_point last_saved_;
  bool stop_ = false;
  std::condition_variable cv_;

  std::mutex in_flight_mu_;
  std::unordered_set<std::string> in_flight_;

  mutable std::mutex import_mu_;
  std::map<std::string, Registration> registrations_;  // by source name

  std::atomic<uint64_t> keys_moved_total_{0};
  std::atomic<bool> active_{false};
  std::atomic<uint64_t> keys_remaining_{0};
};

}  // namespace kvcache::node
