// Clock: the kube library's only source of time (informer backoff, work queue delays, lease
// timing, event timestamps), a seam so unit tests move time by hand with FakeClock.
//
// Thread safety: every method may be called from any thread concurrently.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <stop_token>

namespace kvcache::kube {

class Clock {
 public:
  using Duration = std::chrono::steady_clock::duration;
  using TimePoint = std::chrono::steady_clock::time_point;

  virtual ~Clock() = default;
  // Monotonic time: every interval and deadline is measured on this.
  virtual TimePoint Now() const = 0;
  // Wall-clock time: only for timestamps written into objects (creationTimestamp, renewTime).
  virtual std::chrono::system_clock::time_point WallNow() const = 0;
  // Blocks until Now() >= deadline (returns true) or `stop` is requested (returns false).
  virtual bool SleepUntil(TimePoint deadline, std::stop_token stop) = 0;

  bool SleepFor(Duration d, std::stop_token stop) { return SleepUntil(Now() + d, stop); }
};

class SystemClock final : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::steady_clock::now(); }
  std::chrono::system_clock::time_point WallNow() const override {
    return std::chrono::system_clock::now();
  }
  bool SleepUntil(TimePoint deadline, std::stop_token stop) override {
    std::mutex mu;
    std::condition_variable_any cv;
    std::unique_lock lock(mu);
    // The predicate is false until the deadline: only the deadline or `stop` ends the wait.
    cv.wait_until(lock, stop, deadline, [] { return false; });
    return !stop.stop_requested();
  }

  // A process-wide instance for callers that do not inject one.
  static SystemClock& Instance() {
    static SystemClock clock;
    return clock;
  }
};

// A clock that moves only when told to. Sleepers wake when Advance() passes their deadline.
class FakeClock final : public Clock {
 public:
  FakeClock() = default;

  TimePoint Now() const override {
    std::lock_guard lock(mu_);
    return now_;
  }
  std::chrono::system_clock::time_point WallNow() const override {
    std::lock_guard lock(mu_);
    return wall_start_ + (now_ - TimePoint{});
  }
  bool SleepUntil(TimePoint deadline, std::stop_token stop) override {
    std::unique_lock lock(mu_);
    ++sleepers_;
    ++sleeps_started_;
    cv_.notify_all();
    bool reached = cv_.wait(lock, stop, [&] { return now_ >= deadline; });
    --sleepers_;
    cv_.notify_all();
    return reached;
  }

  void Advance(Duration d) {
    std::lock_guard lock(mu_);
    now_ += d;
    cv_.notify_all();
  }
  // Blocks until at least `n` threads are inside SleepUntil (so a test knows the code under
  // test has reached its wait before moving time). Returns false if `timeout` (real time)
  // passes first.
  bool AwaitSleepers(int n, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return sleepers_ >= n; });
  }
  // Total SleepUntil calls so far; with AwaitSleepStarts a test can wait for the *next* sleep.
  int64_t SleepsStarted() const {
    std::lock_guard lock(mu_);
    return sleeps_started_;
  }
  bool AwaitSleepsStarted(int64_t n, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return sleeps_started_ >= n; });
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable_any cv_;
  TimePoint now_ = TimePoint{} + std::chrono::hours(1);
  std::chrono::system_clock::time_point wall_start_ =
      std::chrono::system_clock::time_point{} + std::chrono::seconds(1'700'000'000);
  int sleepers_ = 0;
  int64_t sleeps_started_ = 0;
};

}  // namespace kvcache::kube
