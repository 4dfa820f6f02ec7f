// LeaderElector: one active operator among replicas, through a coordination.k8s.io/v1 Lease,
// with client-go's leaderelection semantics:
//   - try: GET the Lease; 404 -> CREATE it holding it; else if another identity holds it and
//     our *locally observed* time of its last change + leaseDurationSeconds is still ahead,
//     wait; else UPDATE the observed object (its resourceVersion: a concurrent writer gets 409
//     and loses). A new holder increments leaseTransitions; renewals keep acquireTime.
//   - the leader renews every retry_period; if no renewal succeeds within renew_deadline it
//     stops leading (its work is cancelled) — before another candidate may take over, since
//     renew_deadline < lease_duration.
//   - on shutdown the leader releases: the Lease is written with an empty holderIdentity (and
//     leaseDurationSeconds 1), so the next candidate takes over at once.
// Defaults are controller-runtime's: lease 15 s, renew deadline 10 s, retry 2 s.
//
// Thread safety: Run blocks its caller; IsLeader/Holder may be called from any thread.
#pragma once

#include <atomic>
#include <functional>
#include <mutex>
#include <stop_token>
#include <string>

#include "kube/clock.h"
#include "kube/kube_client.h"

namespace kvcache::kube {

inline const ResourceRef kLeaseResource{"coordination.k8s.io", "v1", "leases", "Lease", true};

struct LeaderElectionOptions {
  std::string lease_namespace;
  std::string lease_name;
  std::string identity;  // unique per process: pod name + a random suffix
  Clock::Duration lease_duration = std::chrono::seconds(15);
  Clock::Duration renew_deadline = std::chrono::seconds(10);
  Clock::Duration retry_period = std::chrono::seconds(2);
  bool release_on_cancel = true;
};

struct LeaderCallbacks {
  // Runs on its own thread while we lead; `stop` is requested when leadership ends.
  std::function<void(std::stop_token stop)> on_started_leading;
  // Called (on Run's thread) after leading ended, once on_started_leading has returned.
  std::function<void()> on_stopped_leading;
  // Called when the observed holder changes (including to us).
  std::function<void(const std::string& identity)> on_new_leader;
};

class LeaderElector {
 public:
  // Returns InvalidArgument for empty names or renew_deadline >= lease_duration.
  static Status Validate(const LeaderElectionOptions& options);
  LeaderElector(KubeClient& client, LeaderElectionOptions options, LeaderCallbacks callbacks,
                Clock& clock = SystemClock::Instance());

  // Campaigns until elected, leads until leadership is lost or `stop` is requested, then
  // returns: OK after a stop (the lease released when release_on_cancel), Unavailable when
  // leadership was lost (the caller should exit, as controller-runtime does).
  Status Run(std::stop_token stop);

  bool IsLeader() const;
  // The holder last observed ("" = none known).
  std::string Holder() const;

 private:
  // One attempt; true when we hold the lease afterwards.
  bool TryAcquireOrRenew();
  void Release();
  void Observe(const Object& lease);
  std::string Now() const;

  KubeClient& client_;
  const LeaderElectionOptions options_;
  const LeaderCallbacks callbacks_;
  Clock& clock_;

  mutable std::mutex mu_;
  Object observed_;  // the Lease as last read or written
  Clock::TimePoint observed_time_{};
  std::string holder_;
  std::atomic<bool> leading_{false};
};

// MicroTime as the API server writes it: "2026-11-25T12:00:00.123456Z".
std::string FormatMicroTime(std::chrono::system_clock::time_point t);

}  // namespace kvcache::kube
