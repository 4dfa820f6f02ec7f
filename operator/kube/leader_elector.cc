#include "kube/leader_elector.h"

#include <cstdio>
#include <ctime>
#include <thread>

namespace kvcache::kube {
namespace {

using json = nlohmann::json;

int64_t Seconds(Clock::Duration d) {
  return std::chrono::duration_cast<std::chrono::seconds>(d).count();
}

}  // namespace

std::string FormatMicroTime(std::chrono::system_clock::time_point t) {
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(us / 1'000'000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  size_t n = std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof(buf) - n, ".%06lldZ", static_cast<long long>(us % 1'000'000));
  return buf;
}

Status LeaderElector::Validate(const LeaderElectionOptions& o) {
  if (o.lease_namespace.empty() || o.lease_name.empty() || o.identity.empty()) {
    return InvalidArgumentError("leader election needs a lease namespace, name and identity");
  }
  if (o.renew_deadline >= o.lease_duration) {
    return InvalidArgumentError("renew deadline must be shorter than the lease duration");
  }
  if (o.retry_period <= Clock::Duration::zero() || o.retry_period >= o.renew_deadline) {
    return InvalidArgumentError("retry period must be positive and shorter than renew deadline");
  }
  return Status::Ok();
}

LeaderElector::LeaderElector(KubeClient& client, LeaderElectionOptions options,
                             LeaderCallbacks callbacks, Clock& clock)
    : client_(client),
      options_(std::move(options)),
      callbacks_(std::move(callbacks)),
      clock_(clock) {}

bool LeaderElector::IsLeader() const { return leading_.load(); }

std::string LeaderElector::Holder() const {
  std::lock_guard lock(mu_);
  return holder_;
}

std::string LeaderElector::Now() const { return FormatMicroTime(clock_.WallNow()); }

void LeaderElector::Observe(const Object& lease) {
  std::string holder = lease.contains("spec") ? lease["spec"].value("holderIdentity", "") : "";
  bool changed;
  {
    std::lock_guard lock(mu_);
    observed_ = lease;
    observed_time_ = clock_.Now();
    changed = holder != holder_;
    holder_ = holder;
  }
  if (changed && callbacks_.on_new_leader && !holder.empty()) callbacks_.on_new_leader(holder);
}

bool LeaderElector::TryAcquireOrRenew() {
  std::string now = Now();
  json spec = {{"holderIdentity", options_.identity},
               {"leaseDurationSeconds", Seconds(options_.lease_duration)},
               {"acquireTime", now},
               {"renewTime", now},
               {"leaseTransitions", 0}};

  auto current = client_.Get(kLeaseResource, options_.lease_namespace, options_.lease_name);
  if (!current.ok()) {
    if (current.status().code() != StatusCode::kNotFound) return false;
    json lease = {{"apiVersion", kLeaseResource.ApiVersion()},
                  {"kind", "Lease"},
                  {"metadata", {{"name", options_.lease_name},
                                {"namespace", options_.lease_namespace}}},
                  {"spec", spec}};
    auto created = client_.Create(kLeaseResource, options_.lease_namespace, lease);
    if (!created.ok()) return false;
    Observe(*created);
    return true;
  }

  const json old_spec = current->contains("spec") ? (*current)["spec"] : json::object();
  std::string old_holder = old_spec.value("holderIdentity", "");
  bool held_by_other = false;
  bool holder_changed = false;
  {
    // The observed time moves only when the record changed: expiry is judged on our own clock,
    // never on the holder's renewTime (clocks may disagree).
    std::lock_guard lock(mu_);
    if (!observed_.contains("spec") || observed_["spec"] != old_spec) {
      observed_time_ = clock_.Now();
    }
    observed_ = *current;
    auto lease_seconds = std::chrono::seconds(old_spec.value("leaseDurationSeconds", int64_t{0}));
    if (!old_holder.empty() && old_holder != options_.identity &&
        observed_time_ + lease_seconds > clock_.Now()) {
      held_by_other = true;
      holder_changed = holder_ != old_holder;
      holder_ = old_holder;
    }
  }
  if (held_by_other) {
    if (holder_changed && callbacks_.on_new_leader) callbacks_.on_new_leader(old_holder);
    return false;
  }

  int64_t transitions = old_spec.value("leaseTransitions", int64_t{0});
  if (old_spec.value("holderIdentity", "") == options_.identity) {
    spec["acquireTime"] = old_spec.value("acquireTime", now);
    spec["leaseTransitions"] = transitions;
  } else {
    spec["leaseTransitions"] = transitions + 1;
  }
  json next = *current;
  next["spec"] = spec;
  auto updated = client_.Update(kLeaseResource, options_.lease_namespace, next);
  if (!updated.ok()) return false;
  Observe(*updated);
  return true;
}

void LeaderElector::Release() {
  json next;
  {
    std::lock_guard lock(mu_);
    if (!observed_.contains("spec") ||
        observed_["spec"].value("holderIdentity", "") != options_.identity) {
      return;
    }
    next = observed_;
  }
  std::string now = Now();
  json spec = {{"leaseDurationSeconds", 1},
               {"acquireTime", now},
               {"renewTime", now},
               {"leaseTransitions", next["spec"].value("leaseTransitions", int64_t{0})}};
  next["spec"] = spec;  // holderIdentity absent: nobody holds it
  auto updated = client_.Update(kLeaseResource, options_.lease_namespace, next);
  if (updated.ok()) Observe(*updated);
}

Status LeaderElector::Run(std::stop_token stop) {
  if (Status s = Validate(options_); !s.ok()) return s;
  // Campaign.
  while (!stop.stop_requested()) {
    if (TryAcquireOrRenew()) break;
    clock_.SleepFor(options_.retry_period, stop);
  }
  if (stop.stop_requested()) return Status::Ok();

  leading_ = true;
  std::stop_source leading;
  std::jthread worker;
  if (callbacks_.on_started_leading) {
    worker = std::jthread([this, token = leading.get_token()] {
      callbacks_.on_started_leading(token);
    });
  }

  // Renew: every retry_period; give up when no renewal succeeded within renew_deadline.
  Status result;
  Clock::TimePoint last_renew = clock_.Now();
  while (true) {
    if (!clock_.SleepFor(options_.retry_period, stop)) break;
    if (TryAcquireOrRenew()) {
      last_renew = clock_.Now();
      continue;
    }
    if (clock_.Now() - last_renew >= options_.renew_deadline) {
      result = UnavailableError("leader election lost: lease " + options_.lease_namespace + "/" +
                                options_.lease_name + " not renewed within the deadline");
      break;
    }
  }
  // Order: stop our work first, then give the lease away, so two leaders never act at once.
  leading.request_stop();
  if (worker.joinable()) worker.join();
  leading_ = false;
  if (result.ok() && options_.release_on_cancel) Release();
  if (callbacks_.on_stopped_leading) callbacks_.on_stopped_leading();
  return result;
}

}  // namespace kvcache::kube
