// KVCacheReconciler: the level-triggered reconcile of one KVCache (DESIGN.md §6). Each call
// re-reads the KVCache, its children, its pods and its nodes, and moves the world one step
// towards the spec; it never branches on "created" or "updated". Start here.
//
// One Reconcile(namespace, name), in order:
//   1. KVCache gone -> done. Invalid spec -> status Failed/InvalidSpec, nothing applied.
//      Pause annotation -> status Paused, nothing else. Being deleted -> storage reclaim,
//      then the finalizer is removed (it is only present for reclaimPolicy Delete).
//   2. Children (Secret, ConfigMap, Services, one StatefulSet + PDB per shard, optional
//      Ingress/ServiceMonitor/PrometheusRule) are server-side applied only when the live object
//      does not already contain the desired fields: a converged KVCache costs zero writes.
//      PVCs grow in place when storage.size grows (the StatefulSet's templates are immutable).
//   3. Node state: GetStatus on every running pod (admin API, addressed by pod IP).
//   3b. Layout recovery: a KVCache that never pushed a topology (epoch 0) whose nodes already
//      have one (volumes kept from an earlier KVCache of the same name, or status lost) adopts
//      the newest of them instead of pushing an even layout over it.
//   4. Failover (per shard): primary unready for failover.timeoutSeconds -> Promote the
//      reachable replica with the highest applied offset at epoch+1; the new topology follows.
//   5. Resharding: spec.shards differs from the shards owning slots -> a plan of moves with
//      minimal movement; one migration at a time (StartMigration, then GetMigration until done;
//      the slots flip owner in a new epoch); a drained shard's StatefulSet goes afterwards.
//   5b. Replica scale-in: a primary whose ordinal replicasPerShard removes hands its role to
//      the most caught-up staying replica first; its StatefulSet keeps the pod until then.
//   6. Rolling update (StatefulSets use OnDelete): pods on an old template revision are
//      deleted one at a time on a settled, fully ready cluster, replicas first; before a
//      primary goes, its most caught-up replica is promoted (switchover).
//   7. Topology: pushed (PUT /internal/topology) to every node whose epoch is behind, with a new
//      epoch whenever its content changes.
//   8. Status (phase, conditions with observedGeneration, per-shard state, the operations in
//      progress) written only when it changed. Every step's progress lives in status, so an
//      operator restart resumes where the last one stopped.
//
// Thread safety: Reconcile may run concurrently for different KVCaches; the work queue never
// hands one key to two workers at once.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "controller/kvcache_spec.h"
#include "controller/operator_metrics.h"
#include "controller/topology_plan.h"
#include "kube/clock.h"
#include "kube/kube_client.h"
#include "protocol/admin.h"

namespace kvcache::op {

struct ReconcileResult {
  Status status;
  // Reconcile again after this long even without a watch event (something is in progress).
  // Errors: Conflict asks for an immediate retry (zero), others for the queue's backoff.
  std::optional<std::chrono::milliseconds> requeue_after;
};

// An Event about a KVCache: type "Normal" or "Warning", a CamelCase reason, a message.
using EventFn = std::function<void(const Json& kvcache, std::string_view type,
                                   std::string_view reason, const std::string& message)>;

struct ReconcilerOptions {
  // How often to look again while something is converging (pods starting, a migration).
  std::chrono::milliseconds progress_interval{2000};
  // Resync period of a converged KVCache (catches node-side drift the watches do not see).
  std::chrono::milliseconds resync_interval{60000};
  // A planned switchover: how long the successor may take to catch up with the paused primary
  // before the pass gives up (the primary's pause, kSwitchoverPauseMs, is longer).
  std::chrono::milliseconds switchover_catch_up{3000};
};

class KVCacheReconciler {
 public:
  using Options = ReconcilerOptions;

  // The AdminClient for one KVCache's nodes: each KVCache has its own cluster token, which the
  // reconciler reads (or generates) before any admin call. The returned client must live as
  // long as the reconciler.
  using AdminClientFor =
      std::function<protocol::AdminClient&(const KVCacheSpec& spec, const std::string& token)>;

  // All references must outlive the reconciler. `events` may be empty. The first form uses one
  // AdminClient for every KVCache (tests).
  KVCacheReconciler(kube::KubeClient& kube, protocol::AdminClient& admin, kube::Clock& clock,
                    OperatorMetrics& metrics, EventFn events = {}, Options options = {});
  KVCacheReconciler(kube::KubeClient& kube, AdminClientFor admin_for, kube::Clock& clock,
                    OperatorMetrics& metrics, EventFn events = {}, Options options = {});

  // Reconciles one KVCache. OK when the KVCache is absent. Returns the first error that stopped
  // the pass (Conflict: retry at once; others: back off).
  ReconcileResult Reconcile(std::string_view ns, std::string_view name);

 private:
  struct Pass;

  ReconcileResult RunPass(Pass& pass);
  Status ApplyChildren(Pass& pass);
  Status Apply(Pass& pass, const kube::ResourceRef& ref, const Json& desired);
  Status DeleteIfPresent(Pass& pass, const kube::ResourceRef& ref, const std::string& name);
  Status ReadPodsAndNodes(Pass& pass);
  void AdoptNodeLayout(Pass& pass);
  void StepFailover(Pass& pass);
  void StepResharding(Pass& pass);
  void StepReplicaScaleIn(Pass& pass);
  void StepRollout(Pass& pass);
  // Promotes the most caught-up ready replica of shard `id` that stays (ordinal below
  // NodesPerShard) at a new epoch: the planned hand-over before a primary's pod goes. Returns
  // false (and records why in status) when no replica qualifies or the promotion fails.
  bool SwitchOver(Pass& pass, int id, const std::string& why);
  // True once `replica` has applied everything `primary` (whose writes are paused) wrote:
  // polls both every kCatchUpPollInterval for at most options_.switchover_catch_up.
  bool AwaitCaughtUp(Pass& pass, const std::string& primary, const std::string& replica);
  static constexpr uint32_t kSwitchoverPauseMs = 5000;
  static constexpr std::chrono::milliseconds kCatchUpPollInterval{20};
  bool TopologySettled(const Pass& pass) const;
  void StepTopology(Pass& pass);
  // A failover of the current move's source: restarts that move on the new primary once it has
  // the topology naming it, before the other nodes route to it (called from StepTopology).
  void ResumeMoveOnNewPrimary(Pass& pass);
  Status WriteStatus(Pass& pass);
  ReconcileResult Finalize(Pass& pass);
  void Event(Pass& pass, std::string_view type, std::string_view reason, const std::string& msg);

  kube::KubeClient& kube_;
  AdminClientFor admin_for_;
  kube::Clock& clock_;
  OperatorMetrics& metrics_;
  EventFn events_;
  Options options_;
};

}  // namespace kvcache::op
