// WorkQueue: the controller's rate-limited, de-duplicating queue of keys ("ns/name"), with
// client-go's semantics (workqueue.TypedRateLimitingInterface):
//   - an item queued twice before it is handed out is handed out once (dirty set);
//   - an item being processed (between Get and Done) is never handed out to a second worker;
//     if it is added meanwhile it is queued again on Done;
//   - AddAfter delays an item (the earliest pending time wins); AddRateLimited delays it by the
//     larger of a per-item exponential backoff (5 ms doubling to 1000 s, reset by Forget) and
//     an overall token bucket (10 qps, burst 100), client-go's DefaultControllerRateLimiter;
//   - ShutDown stops new adds; Get still hands out what is queued, then returns nullopt.
// Time comes from a Clock so tests drive delays with FakeClock.
//
// Thread safety: every method may be called from any thread concurrently.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <stop_token>
#include <string>
#include <thread>

#include "kube/clock.h"

namespace kvcache::kube {

struct RateLimiterOptions {
  Clock::Duration base_delay = std::chrono::milliseconds(5);
  Clock::Duration max_delay = std::chrono::seconds(1000);
  double qps = 10;
  int burst = 100;
};

class WorkQueue {
 public:
  explicit WorkQueue(Clock& clock, RateLimiterOptions options = {});
  ~WorkQueue();  // ShutDown, then waits for the delay thread.
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  void Add(const std::string& item);
  void AddAfter(const std::string& item, Clock::Duration delay);
  void AddRateLimited(const std::string& item);
  // The item succeeded: its backoff starts again at base_delay.
  void Forget(const std::string& item);
  int NumRequeues(const std::string& item) const;

  // Blocks until an item is ready (returns it; the caller must call Done), or the queue is shut
  // down and empty, or `stop` is requested (nullopt).
  std::optional<std::string> Get(std::stop_token stop = {});
  void Done(const std::string& item);

  void ShutDown();
  bool ShuttingDown() const;
  // Items ready to be handed out (the queue-depth metric).
  size_t Len() const;
  // Items waiting for their delay.
  size_t Waiting() const;

 private:
  void AddLocked(const std::string& item);
  Clock::Duration RateLimitDelayLocked(const std::string& item);
  void DelayLoop(std::stop_token stop);

  Clock& clock_;
  RateLimiterOptions options_;
  mutable std::mutex mu_;
  std::condition_variable_any ready_cv_;
  std::deque<std::string> queue_;
  std::set<std::string> dirty_;
  std::set<std::string> processing_;
  std::map<std::string, Clock::TimePoint> waiting_;
  std::map<std::string, int> failures_;
  double tokens_;
  Clock::TimePoint tokens_at_;
  bool shutting_down_ = false;
  std::stop_source wake_;  // interrupts the delay thread's sleep
  std::jthread delay_thread_;
};

}  // namespace kvcache::kube
