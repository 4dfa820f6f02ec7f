#include "kube/work_queue.h"

#include <algorithm>
#include <cmath>

namespace kvcache::kube {

WorkQueue::WorkQueue(Clock& clock, RateLimiterOptions options)
    : clock_(clock),
      options_(options),
      tokens_(options.burst),
      tokens_at_(clock.Now()),
      delay_thread_([this](std::stop_token stop) { DelayLoop(stop); }) {}

WorkQueue::~WorkQueue() {
  ShutDown();
  delay_thread_.request_stop();
  delay_thread_.join();
}

void WorkQueue::AddLocked(const std::string& item) {
  if (shutting_down_ || dirty_.count(item) != 0) return;
  dirty_.insert(item);
  if (processing_.count(item) != 0) return;  // queued again by Done
  queue_.push_back(item);
  ready_cv_.notify_one();
}

void WorkQueue::Add(const std::string& item) {
  std::lock_guard lock(mu_);
  AddLocked(item);
}

void WorkQueue::AddAfter(const std::string& item, Clock::Duration delay) {
  std::lock_guard lock(mu_);
  if (shutting_down_) return;
  if (delay <= Clock::Duration::zero()) {
    AddLocked(item);
    return;
  }
  Clock::TimePoint when = clock_.Now() + delay;
  auto [it, inserted] = waiting_.emplace(item, when);
  if (!inserted) {
    if (when >= it->second) return;  // an earlier time is already pending
    it->second = when;
  }
  wake_.request_stop();
}

Clock::Duration WorkQueue::RateLimitDelayLocked(const std::string& item) {
  // Per item: base * 2^failures, capped.
  int failures = failures_[item]++;
  double per_item = std::chrono::duration<double>(options_.base_delay).count() *
                    std::pow(2.0, std::min(failures, 62));
  per_item = std::min(per_item, std::chrono::duration<double>(options_.max_delay).count());
  // Overall: a token bucket that may go into debt, like golang.org/x/time/rate's Reserve.
  Clock::TimePoint now = clock_.Now();
  double elapsed = std::chrono::duration<double>(now - tokens_at_).count();
  tokens_ = std::min<double>(options_.burst, tokens_ + elapsed * options_.qps);
  tokens_at_ = now;
  tokens_ -= 1;
  double bucket = tokens_ >= 0 ? 0 : -tokens_ / options_.qps;
  double delay = std::max(per_item, bucket);
  return std::chrono::duration_cast<Clock::Duration>(std::chrono::duration<double>(delay));
}

void WorkQueue::AddRateLimited(const std::string& item) {
  Clock::Duration delay;
  {
    std::lock_guard lock(mu_);
    if (shutting_down_) return;
    delay = RateLimitDelayLocked(item);
  }
  AddAfter(item, delay);
}

void WorkQueue::Forget(const std::string& item) {
  std::lock_guard lock(mu_);
  failures_.erase(item);
}

int WorkQueue::NumRequeues(const std::string& item) const {
  std::lock_guard lock(mu_);
  auto it = failures_.find(item);
  return it == failures_.end() ? 0 : it->second;
}

std::optional<std::string> WorkQueue::Get(std::stop_token stop) {
  std::unique_lock lock(mu_);
  ready_cv_.wait(lock, stop, [&] { return !queue_.empty() || shutting_down_; });
  if (queue_.empty()) return std::nullopt;
  std::string item = std::move(queue_.front());
  queue_.pop_front();
  processing_.insert(item);
  dirty_.erase(item);
  return item;
}

void WorkQueue::Done(const std::string& item) {
  std::lock_guard lock(mu_);
  processing_.erase(item);
  if (dirty_.count(item) != 0) {
    queue_.push_back(item);
    ready_cv_.notify_one();
  }
}

void WorkQueue::ShutDown() {
  std::lock_guard lock(mu_);
  shutting_down_ = true;
  waiting_.clear();
  wake_.request_stop();
  ready_cv_.notify_all();
}

bool WorkQueue::ShuttingDown() const {
  std::lock_guard lock(mu_);
  return shutting_down_;
}

size_t WorkQueue::Len() const {
  std::lock_guard lock(mu_);
  return queue_.size();
}

size_t WorkQueue::Waiting() const {
  std::lock_guard lock(mu_);
  return waiting_.size();
}

void WorkQueue::DelayLoop(std::stop_token stop) {
  std::unique_lock lock(mu_);
  while (!stop.stop_requested() && !shutting_down_) {
    Clock::TimePoint now = clock_.Now();
    Clock::TimePoint next = now + std::chrono::hours(24);
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      if (it->second <= now) {
        AddLocked(it->first);
        it = waiting_.erase(it);
      } else {
        next = std::min(next, it->second);
        ++it;
      }
    }
    wake_ = std::stop_source();
    std::stop_token woken = wake_.get_token();
    lock.unlock();
    {
      // Either an earlier item arrived (wake_) or the queue is going away (stop).
      std::stop_source either;
      std::stop_callback a(woken, [&] { either.request_stop(); });
      std::stop_callback b(stop, [&] { either.request_stop(); });
      clock_.SleepUntil(next, either.get_token());
    }
    lock.lock();
  }
}

}  // namespace kvcache::kube
